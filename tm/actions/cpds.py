"""CPDS ``host:.../disk.N NEW_SOURCE snap_id vmid img_dsid`` (disk-saveas): the new image's
volume NEW_SOURCE (named by the DS mkfs save_as step) becomes a copy of the disk, or of
its snapshot ``snap_id`` (-1: the current state). Backend calls: 1.

A re-run after a crash finds the copy it made (tagged with the disk it copies) and is
done; a volume of that name made by anything else is never overwritten."""

from __future__ import annotations

from datastore.naming import TYPE_PERSISTENT, tags
from onelib.errors import Conflict, DriverError
from onelib.paths import number

from ..common import disk_path, driver_for, ds_id_arg, fetch_vm, vm_disk, vm_id_arg
from ..entry import TmRequest
from ..provision import volume_name


def run(req: TmRequest) -> None:
    raw_target = req.arg(1, "new source")
    snap_id = number(req.arg(2, "snapshot id"), "snapshot id")
    vm_id, ds_id = vm_id_arg(req.arg(3, "vm id")), ds_id_arg(req.arg(4, "datastore id"))
    src = disk_path(req.arg(0, "disk"), "disk", vm_id)
    if snap_id < -1:
        raise DriverError(f"snapshot id {snap_id} is not -1 or a snapshot")
    drv = driver_for(req.driver, ds_id)
    target = volume_name(raw_target, drv.names)
    name = vm_disk(fetch_vm(drv, vm_id), src.disk_id).volume(drv.names, vm_id)
    if target == name:
        raise DriverError(f"cannot copy volume {name} onto itself")
    source, from_snapshot = (name, False) if snap_id < 0 else (drv.names.disk_snapshot(name, snap_id), True)
    wanted = tags(drv.names, kind=TYPE_PERSISTENT)
    wanted["copyof"] = source
    with drv.lock(target):
        try:
            drv.backend.clone(source, target, placement=drv.placement(ds_id), from_snapshot=from_snapshot,
                              tags=wanted)
        except Conflict:
            found = drv.backend.get(target)
            if found is None or found.snapshot or found.tags.get("copyof") != source:
                raise DriverError(f"volume {target} already exists; not overwritten") from None
