"""addon-storpool's ``tmsave`` (``-l save=tmsave``):
the same code as ``save``, so existing oned.conf lines keep working."""

from __future__ import annotations

from .save import run

__all__ = ["run"]
