"""MKIMAGE ``size_mb format host:.../disk.N vmid sys_dsid``: a volatile disk.

An empty volume ``<px>-sys-<VM>-<DISK>-raw`` in the system datastore's template,
formatted on the host when the disk has FS, linked as ``disk.N``.
"""

from __future__ import annotations

from onelib.errors import DriverError
from onelib.paths import number

from ..common import MIB, disk_path, driver_for, ds_id_arg, fetch_vm, vm_disk, vm_id_arg
from ..entry import TmRequest
from ..provision import provision

MAX_MB = 64 * 1024 * 1024  # 64 TiB


def run(req: TmRequest) -> None:
    swap = req.action == "mkswap"
    size_mb = number(req.arg(0, "size"), "size")
    offset = 1 if swap else 2
    vm_id, ds_id = vm_id_arg(req.arg(offset + 1, "vm id")), ds_id_arg(req.arg(offset + 2, "datastore id"))
    dst = disk_path(req.arg(offset, "destination"), "destination", vm_id)
    if not 0 < size_mb <= MAX_MB:
        raise DriverError(f"volatile disk size {size_mb} MB is out of range")
    drv = driver_for(req.driver, ds_id)
    disk = vm_disk(fetch_vm(drv, vm_id), dst.disk_id)
    disk.kind = "volatile"
    disk.swap = disk.swap or swap
    disk.persistent = False
    provision(drv, disk, dst, vm_id, placement=drv.placement(ds_id), size=size_mb * MIB, mode="create")
