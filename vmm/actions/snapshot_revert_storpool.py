"""``snapshot_revert-storpool``: addon-storpool's name for ``snapshot_revert`` (its oned.conf lines keep working)."""

from __future__ import annotations

from .snapshot_revert import run

__all__ = ["run"]
