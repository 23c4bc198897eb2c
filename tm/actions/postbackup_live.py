"""POSTBACKUP_LIVE: the same cleanup as postbackup (see tm/backup.py)."""

from ..backup import run

__all__ = ["run"]
