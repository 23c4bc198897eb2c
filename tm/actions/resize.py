"""RESIZE ``host:.../disk.N size_mb vmid dsid``: grow the disk's volume (never shrink).
On a running VM the VMM ``resize_disk`` step then tells qemu. Backend calls: 1."""

from __future__ import annotations

from onelib.errors import DriverError
from onelib.paths import number

from ..common import MIB, disk_path, driver_for, ds_id_arg, vm_disk, vm_id_arg
from ..entry import TmRequest


def run(req: TmRequest) -> None:
    dst = disk_path(req.arg(0, "disk"))
    size_mb = number(req.arg(1, "size"), "size")
    vm_id, ds_id = vm_id_arg(req.arg(2, "vm id")), ds_id_arg(req.arg(3, "datastore id"))
    if size_mb <= 0:
        raise DriverError(f"new size {size_mb} MB is not positive")
    drv = driver_for(req.driver, ds_id)
    name = vm_disk(drv.oned.vm(vm_id), dst.disk_id).volume(drv.names, vm_id)
    with drv.lock(name):
        drv.backend.resize(name, size_mb * MIB)
