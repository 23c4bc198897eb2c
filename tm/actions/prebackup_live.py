"""PREBACKUP_LIVE: prebackup of a running VM, with guest fsfreeze around the group snapshot when
the VM has a guest agent (see tm/backup.py)."""

from ..backup import run

__all__ = ["run"]
