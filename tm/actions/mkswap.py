"""MKSWAP ``size_mb host:.../disk.N vmid sys_dsid``: a swap volume (``...-swap``)."""

from .mkimage import run

__all__ = ["run"]
