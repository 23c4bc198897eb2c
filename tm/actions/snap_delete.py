"""SNAP_DELETE ``host:.../disk.N snap_id vmid dsid``: delete ``<volume>-snap<ID>``. Calls: 2.
An absent snapshot is not an error (a re-run after the delete)."""

from __future__ import annotations

from onelib.errors import DriverError
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
    name = vm_disk(fetch_vm(drv, vm_id), dst.disk_id).volume(drv.names, vm_id)
    with drv.lock(name):
        drv.backend.delete(drv.names.disk_snapshot(name, snap_id), snapshot=True)
