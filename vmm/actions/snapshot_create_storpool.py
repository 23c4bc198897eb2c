"""``snapshot_create-storpool``: addon-storpool's name for ``snapshot_create`` (its oned.conf lines keep working)."""

from __future__ import annotations

from .snapshot_create import run

__all__ = ["run"]
