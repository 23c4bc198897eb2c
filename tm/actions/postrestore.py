"""POSTRESTORE (after ``virsh restore``): removes the checkpoint file or link on the host and
deletes the checkpoint volume. The checkpoint override also runs it, with the save argv, to
remove what presave made when the save itself failed."""

from __future__ import annotations

from datastore.checkpoint import CheckpointVolume, parse_any

from ..entry import TmRequest


def run(req: TmRequest) -> None:
    CheckpointVolume(req.driver, parse_any(req.args, req.stdin)).discard()
