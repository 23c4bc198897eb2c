"""SNAP_CREATE ``host:.../disk.N snap_id vmid dsid``: snapshot ``<volume>-snap<ID>``.

DISKSNAPSHOT_LIMIT (configuration, then the system datastore's attribute, then the VM's
own) caps the snapshots of one disk. SNAP_CREATE_LIVE (running VM) freezes the guest's
file systems through qemu-guest-agent around the snapshot when VMSNAPSHOT_FSFREEZE or the
VM's GUEST_AGENT says so; a guest without an agent is snapshotted unfrozen, as oned's
own drivers do.
"""

from __future__ import annotations

from datastore.driver import Driver
from onelib import log, xmldoc
from onelib.errors import DriverError
from onelib.paths import number

from ..common import DiskPath, disk_path, driver_for, ds_id_arg, vm_disk, vm_id_arg
from ..entry import TmRequest


def run(req: TmRequest) -> None:
    dst = disk_path(req.arg(0, "disk"))
    snap_id = number(req.arg(1, "snapshot id"), "snapshot id")
    vm_id, ds_id = vm_id_arg(req.arg(2, "vm id")), ds_id_arg(req.arg(3, "datastore id"))
    drv = driver_for(req.driver, ds_id)
    vm = drv.oned.vm(vm_id)
    name = vm_disk(vm, dst.disk_id).volume(drv.names, vm_id)
    snapshot = drv.names.disk_snapshot(name, snap_id)
    with drv.lock(name):
        limit = _limit(drv, vm)
        if limit is not None:
            existing = drv.backend.snapshots(f"{name}-snap")
            if len(existing) >= limit:
                raise DriverError(f"disk {dst.disk_id} already has {len(existing)} snapshots "
                                  f"(DISKSNAPSHOT_LIMIT={limit})")
        freeze = req.action == "snap_create_live" and _wants_freeze(drv, vm)
        if freeze:
            _fsfreeze(drv, dst, vm, True)
        try:
            drv.backend.snapshot(name, snapshot, tags={"virt": "one", "nloc": drv.names.px, "nvm": str(vm_id),
                                                       "diskid": str(dst.disk_id)})
        finally:
            if freeze:
                _fsfreeze(drv, dst, vm, False)


def _limit(drv: Driver, vm) -> int | None:  # type: ignore[no-untyped-def]
    raw = xmldoc.text(vm, "USER_TEMPLATE/DISKSNAPSHOT_LIMIT") or xmldoc.text(vm, "TEMPLATE/DISKSNAPSHOT_LIMIT")
    if raw:
        if not raw.isdigit():
            raise DriverError(f"DISKSNAPSHOT_LIMIT={raw!r} is not a whole number")
        return int(raw)
    return drv.config.integer("DISKSNAPSHOT_LIMIT")


def _wants_freeze(drv: Driver, vm) -> bool:  # type: ignore[no-untyped-def]
    agent = xmldoc.text(vm, "TEMPLATE/FEATURES/GUEST_AGENT").lower() == "yes"
    return agent and drv.config.get("VMSNAPSHOT_FSFREEZE", "1") not in ("0", "no", "")


def _fsfreeze(drv: Driver, dst: DiskPath, vm, freeze: bool) -> None:  # type: ignore[no-untyped-def]
    deploy_id = xmldoc.text(vm, "DEPLOY_ID")
    if not deploy_id:
        return
    verb = "domfsfreeze" if freeze else "domfsthaw"
    uri = drv.config.get("LIBVIRT_URI") or "qemu:///system"
    result = drv.shell(dst.host).run(["virsh", "--connect", uri, verb, deploy_id], check=not freeze)
    if freeze and result.returncode != 0:
        log.vm_log(xmldoc.text(vm, "ID"), "guest file systems not frozen (no guest agent answer); "
                   "snapshot taken without freeze", severity="INFO")
