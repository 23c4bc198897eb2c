"""SNAP_REVERT ``host:.../disk.N snap_id vmid dsid`` (VM powered off or suspended): the
disk's volume gets ``<volume>-snap<ID>``'s content back; the other snapshots stay.

The volume is detached from the host for the revert and attached again (the device
path, so ``disk.N``, does not change). Backend calls: detach + revert + attach (3).
"""

from __future__ import annotations

from onelib.errors import DriverError, NotFound
from onelib.paths import number

from ..common import disk_path, driver_for, ds_id_arg, fetch_vm, vm_disk, vm_id_arg
from ..entry import TmRequest


def run(req: TmRequest) -> None:
    snap_id = number(req.arg(1, "snapshot id"), "snapshot id")
    vm_id, ds_id = vm_id_arg(req.arg(2, "vm id")), ds_id_arg(req.arg(3, "datastore id"))
    dst = disk_path(req.arg(0, "disk"), "disk", vm_id)
    if snap_id < 0:
        raise DriverError(f"snapshot id {snap_id} is negative")
    drv = driver_for(req.driver, ds_id)
    disk = vm_disk(fetch_vm(drv, vm_id), dst.disk_id)
    name = disk.volume(drv.names, vm_id)
    host = drv.host(dst.host)
    snapshot = drv.names.disk_snapshot(name, snap_id)
    readonly = disk.attach_readonly
    with drv.lock(name):
        drv.backend.detach(name, host)
        try:
            drv.backend.revert(name, snapshot)
        except NotFound:
            raise NotFound(f"disk {dst.disk_id} has no snapshot {snap_id} ({snapshot})") from None
        finally:
            drv.backend.attach(name, host, readonly=readonly)
