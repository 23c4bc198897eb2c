"""SNAP_DELETE ``host:.../disk.N snap_id vmid dsid``: delete ``<volume>-snap<ID>``. Calls: 2."""

from __future__ import annotations

from onelib.paths import number

from ..common import disk_path, driver_for, ds_id_arg, vm_disk, vm_id_arg
from ..entry import TmRequest


def run(req: TmRequest) -> None:
    dst = disk_path(req.arg(0, "disk"))
    snap_id = number(req.arg(1, "snapshot id"), "snapshot id")
    vm_id, ds_id = vm_id_arg(req.arg(2, "vm id")), ds_id_arg(req.arg(3, "datastore id"))
    drv = driver_for(req.driver, ds_id)
    name = vm_disk(drv.oned.vm(vm_id), dst.disk_id).volume(drv.names, vm_id)
    with drv.lock(name):
        drv.backend.delete(drv.names.disk_snapshot(name, snap_id), snapshot=True)
