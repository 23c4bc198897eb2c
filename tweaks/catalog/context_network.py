"""context_network: the context CD-ROM on a network system datastore becomes ``type='network'``.

oned writes the context ISO as ``<disk type='file' device='cdrom'><source
file='<system_dir>/disk.<CONTEXT/DISK_ID>'/>``. When the system datastore's TM_MAD is in
``tm_mads`` (default: ``storage.network_tm_mads``) and its driver put the ISO in a volume and
named it in the disk's facts (``disk.storage_protocol``, ``storage_name``, ...; see
volatile_network), the CD-ROM becomes ``<disk type='network' device='cdrom'><source
protocol=P name=N>...``. A driver that keeps the ISO as the file ``disk.N`` (as OpenNebula's
ceph driver does) names no volume, and the CD-ROM stays a file. Shipped enabled
(rules.d/51-context-network.yaml).
"""

from __future__ import annotations

from ..tweak import Context, Tweak
from ._disks import file_to_network, tm_mads_param


class ContextNetwork(Tweak):
    summary = "context CD-ROM on a network system TM_MAD whose driver keeps it in a volume: -> type='network'"
    fragments = ("disk",)
    attributes = ()
    params = (tm_mads_param("system datastore TM_MAD names that keep the context ISO in a network volume"),)

    def apply(self, ctx: Context) -> None:
        file_to_network(ctx, "context")


TWEAK = ContextNetwork()
