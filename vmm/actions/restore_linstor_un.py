"""addon-linstor_un's ``restore_linstor_un`` (``-l restore=restore_linstor_un``):
the same code as ``restore``, so existing oned.conf lines keep working."""

from __future__ import annotations

from .restore import run

__all__ = ["run"]
