"""MKIMAGE ``size_mb format host:.../disk.N vmid sys_dsid``: a volatile disk.

An empty volume ``<px>-sys-<VM>-<DISK>-raw`` in the system datastore's template,
formatted on the host when the disk has FS, linked as ``disk.N``.
"""

from __future__ import annotations

from onelib.paths import number

from ..common import MIB, disk_path, driver_for, ds_id_arg, vm_disk, vm_id_arg
from ..entry import TmRequest
from ..provision import provision


def run(req: TmRequest) -> None:
    size_mb = number(req.arg(0, "size"), "size")
    offset = 1 if req.action == "mkswap" else 2
    dst = disk_path(req.arg(offset, "destination"))
    vm_id, ds_id = vm_id_arg(req.arg(offset + 1, "vm id")), ds_id_arg(req.arg(offset + 2, "datastore id"))
    if size_mb <= 0:
        from onelib.errors import DriverError

        raise DriverError(f"volatile disk size {size_mb} MB is not positive")
    drv = driver_for(req.driver, ds_id)
    disk = vm_disk(drv.oned.vm(vm_id), dst.disk_id)
    disk.kind = "volatile"
    disk.swap = disk.swap or req.action == "mkswap"
    provision(drv, disk, dst, vm_id, placement=drv.placement(ds_id), size=size_mb * MIB, mode="create")
