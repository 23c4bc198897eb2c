"""PRERESTORE (before ``virsh restore``): the restore argv ``<checkpoint_file> <host>
<deploy_id> <vmid> <host>`` and the base64 VMM driver message on stdin. Attaches the
checkpoint volume to the (possibly new) host and links the checkpoint file to it; without a
volume (a checkpoint kept as a file) it does nothing."""

from __future__ import annotations

from datastore.checkpoint import CheckpointVolume, parse_any

from ..entry import TmRequest


def run(req: TmRequest) -> None:
    CheckpointVolume(req.driver, parse_any(req.args, req.stdin)).attach()
