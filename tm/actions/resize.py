"""RESIZE ``host:.../disk.N size_mb vmid dsid``: grow the disk's volume (never shrink).
On a running VM the VMM ``resize_disk`` step then tells qemu. Backend calls: 1; growing
to the size the volume already has is a no-op, so a re-run is harmless."""

from __future__ import annotations

from onelib.errors import DriverError
from onelib.paths import number

from ..common import MIB, disk_path, driver_for, ds_id_arg, fetch_vm, vm_disk, vm_id_arg
from ..entry import TmRequest

MAX_MB = 64 * 1024 * 1024  # 64 TiB


def run(req: TmRequest) -> None:
    size_mb = number(req.arg(1, "size"), "size")
    vm_id, ds_id = vm_id_arg(req.arg(2, "vm id")), ds_id_arg(req.arg(3, "datastore id"))
    dst = disk_path(req.arg(0, "disk"), "disk", vm_id)
    if not 0 < size_mb <= MAX_MB:
        raise DriverError(f"new size {size_mb} MB is out of range")
    drv = driver_for(req.driver, ds_id)
    name = vm_disk(fetch_vm(drv, vm_id), dst.disk_id).volume(drv.names, vm_id)
    with drv.lock(name):
        try:
            drv.backend.resize(name, size_mb * MIB)
        except DriverError:
            found = drv.backend.get(name)
            if found is not None and not found.snapshot and found.size > size_mb * MIB:
                raise DriverError(f"volume {name} is {found.size // MIB} MB: disks are never shrunk "
                                  f"(asked {size_mb} MB)") from None
            raise
