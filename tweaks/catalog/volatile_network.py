"""volatile_network: volatile disks on network storage drivers become ``type='network'``.

oned writes a volatile disk as ``<disk type='file'><source file='<system_dir>/disk.N'/>``
when the system datastore's DISK_TYPE is FILE, although a network storage driver (whose
volumes qemu opens itself, e.g. over RBD) made it a volume of its own and linked nothing on
the host. When the disk's TM_MAD (DISK/TM_MAD, else the system datastore's HISTORY TM_MAD)
is in ``tm_mads`` (default: ``storage.network_tm_mads``) and the driver named its volume in
the disk's facts (``disk.storage_protocol``, ``storage_name``, optional ``storage_hosts``,
``storage_user``, ``storage_secret``, ``storage_secret_type``), the disk becomes
``<disk type='network'><source protocol=P name=N><host .../></source><auth username=U><secret
type=T uuid=S/></auth>``; driver, target and every other child stay. The tweak never names a
backend: it reads what the storage side supplies. Shipped enabled (rules.d/50-volatile-network.yaml).
"""

from __future__ import annotations

from ..tweak import Context, Tweak
from ._disks import file_to_network, tm_mads_param


class VolatileNetwork(Tweak):
    summary = "volatile disks on network TM_MADs: type='file' -> type='network' (the driver's volume)"
    fragments = ("disk",)
    attributes = ()
    params = (tm_mads_param("TM_MAD names whose volatile disks are network volumes"),)

    def apply(self, ctx: Context) -> None:
        file_to_network(ctx, "volatile")


TWEAK = VolatileNetwork()
