"""volatile_block: volatile disks on block-device storage drivers become ``type='block'``.

OpenNebula writes a volatile disk (TEMPLATE/DISK with TYPE fs or swap) as
``<disk type='file'><source file='<system_dir>/disk.N'/>`` when the system datastore's
DISK_TYPE is FILE. Drivers such as StorPool and LINSTOR make ``disk.N`` a symlink to a
block device, so the disk is really ``<disk type='block'><source dev='...disk.N'/>``
(addon-storpool's volatile2dev.py). The domain disk is matched to its OpenNebula disk by
the ``/<vmid>/disk.<DISK_ID>`` source path; its TM_MAD (DISK/TM_MAD, else the system
datastore's HISTORY TM_MAD) must be in ``tm_mads``. Every other child and attribute of
the disk stays. No VM attribute: shipped enabled (rules.d/50-volatile-block.yaml).
"""

from __future__ import annotations

from ..tweak import Context, Tweak
from ._disks import file_to_block, tm_mads_param


class VolatileBlock(Tweak):
    summary = "volatile disks on listed TM_MADs: type='file' -> type='block' (source dev)"
    fragments = ("disk",)
    attributes = ()
    params = (tm_mads_param("TM_MAD names whose volatile disks are block devices"),)

    def apply(self, ctx: Context) -> None:
        file_to_block(ctx, "volatile")


TWEAK = VolatileBlock()
