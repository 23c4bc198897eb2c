"""context_block: the context CD-ROM on a block-device system datastore becomes ``type='block'``.

oned writes the context ISO as ``<disk type='file' device='cdrom'><source
file='<system_dir>/disk.<CONTEXT/DISK_ID>'/>`` unless the system datastore sets
CONTEXT_DISK_TYPE=BLOCK. When the system datastore's TM_MAD (the last HISTORY's TM_MAD)
is in ``tm_mads`` the driver puts the ISO on a block device and links ``disk.N`` to it
(addon-storpool's tm/context + volatile2dev.py), so the CD-ROM becomes
``<disk type='block' device='cdrom'><source dev='...'/>``; every other child stays.
No VM attribute: shipped enabled (rules.d/51-context-block.yaml).
"""

from __future__ import annotations

from ..tweak import Context, Tweak
from ._disks import file_to_block, tm_mads_param


class ContextBlock(Tweak):
    summary = "context CD-ROM on a listed system TM_MAD: type='file' -> type='block' (source dev)"
    fragments = ("disk",)
    attributes = ()
    params = (tm_mads_param("system datastore TM_MAD names that keep the context ISO on a block device"),)

    def apply(self, ctx: Context) -> None:
        file_to_block(ctx, "context")


TWEAK = ContextBlock()
