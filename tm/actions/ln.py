"""LN ``fe:SOURCE host:.../disk.N vmid image_dsid``: a persistent image, attached as it is.

A CD-ROM gets its own clone per attachment (addon-storpool), so ejecting or deleting
one VM's copy never touches the image. Backend calls: attach (1); CD-ROM: create + attach.
"""

from __future__ import annotations

from onelib.errors import DriverError

from ..common import disk_path, driver_for, ds_id_arg, fetch_vm, vm_disk, vm_id_arg
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
    if disk.kind == "cdrom":
        disk.persistent = False
        provision(drv, disk, dst, vm_id, placement=drv.placement(ds_id), size=0, mode="clone", source=source)
    else:
        disk.persistent = True
        provision(drv, disk, dst, vm_id, placement="", size=0, mode="attach")
