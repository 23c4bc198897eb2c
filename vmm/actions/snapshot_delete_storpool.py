"""``snapshot_delete-storpool``: addon-storpool's name for ``snapshot_delete`` (its oned.conf lines keep working)."""

from __future__ import annotations

from .snapshot_delete import run

__all__ = ["run"]
