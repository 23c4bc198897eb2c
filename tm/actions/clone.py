"""CLONE ``fe:SOURCE host:.../disk.N vmid image_dsid``: a non-persistent disk.

A new volume ``<px>-img-<IMG>-<VM>-<DISK>`` with the image's content, grown to the
disk's size, in the image datastore's template; attached to the host; ``disk.N``
linked to it. Backend calls: create (1) + attach (1).
"""

from __future__ import annotations

from onelib.errors import DriverError

from ..common import MIB, disk_path, driver_for, ds_id_arg, fetch_vm, vm_disk, vm_id_arg
from ..entry import TmRequest
from ..provision import provision, volume_name


def run(req: TmRequest) -> None:
    raw_source = req.arg(0, "source")
    vm_id, ds_id = vm_id_arg(req.arg(2, "vm id")), ds_id_arg(req.arg(3, "datastore id"))
    dst = disk_path(req.arg(1, "destination"), "destination", vm_id)
    drv = driver_for(req.driver, ds_id)
    source = volume_name(raw_source, drv.names)
    disk = vm_disk(fetch_vm(drv, vm_id), dst.disk_id)
    if disk.source and drv.names.source_volume(disk.source) != source:
        raise DriverError(f"disk {dst.disk_id} of VM {vm_id} is {disk.source}, not {source}")
    mode = "attach" if disk.persistent else "clone"
    provision(drv, disk, dst, vm_id, placement=drv.placement(ds_id), size=disk.size_mb * MIB, mode=mode,
              source=source)
