"""PRESAVE (the checkpoint override runs it before ``virsh save``; addon-storpool's name and
calling convention): the save argv ``<deploy_id> <checkpoint_file> <host> <vmid> <host>`` and
the base64 VMM driver message on stdin. Creates ``<px>-sys-<VM>-rawcheckpoint`` sized from
the VM's memory, attaches it to the host and makes the checkpoint file a link to it
(see ``datastore.checkpoint.CheckpointVolume``). A failure removes the volume it made."""

from __future__ import annotations

from datastore.checkpoint import CheckpointVolume, parse_any

from ..entry import TmRequest


def run(req: TmRequest) -> None:
    CheckpointVolume(req.driver, parse_any(req.args, req.stdin)).create()
