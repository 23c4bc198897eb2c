"""POSTSAVE (after ``virsh save``; same argv and stdin as presave): detaches the checkpoint
volume from the host and removes the link; the volume keeps the VM's memory. The checkpoint
override also runs it to release the checkpoint after a failed restore."""

from __future__ import annotations

from datastore.checkpoint import CheckpointVolume, parse_any

from ..entry import TmRequest


def run(req: TmRequest) -> None:
    CheckpointVolume(req.driver, parse_any(req.args, req.stdin)).release()
