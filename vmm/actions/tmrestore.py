"""addon-storpool's ``tmrestore`` (``-l restore=tmrestore``):
the same code as ``restore``, so existing oned.conf lines keep working."""

from __future__ import annotations

from .restore import run

__all__ = ["run"]
