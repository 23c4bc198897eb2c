"""addon-linstor_un's ``save_linstor_un`` (``-l save=save_linstor_un``):
the same code as ``save``, so existing oned.conf lines keep working."""

from __future__ import annotations

from .save import run

__all__ = ["run"]
