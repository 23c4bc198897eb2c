"""SNAP_CREATE_LIVE: a disk snapshot of a running VM, with guest fsfreeze (see snap_create)."""

from .snap_create import run

__all__ = ["run"]
