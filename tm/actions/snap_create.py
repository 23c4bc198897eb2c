"""SNAP_CREATE ``host:.../disk.N snap_id vmid dsid``: snapshot ``<volume>-snap<ID>``.

DISKSNAPSHOT_LIMIT (the VM's USER_TEMPLATE, then its TEMPLATE, then the VM's system
datastore, then the configuration overlaid with the disk datastore's attribute) caps the
snapshots of one disk.
SNAP_CREATE_LIVE (running VM) freezes the guest's file systems through qemu-guest-agent
(libvirt-python's fsFreeze/fsThaw on the host's libvirt, ``onelib.hypervisor``) around the snapshot when the VM has
FEATURES/GUEST_AGENT=yes or VMSNAPSHOT_FSFREEZE is set; a guest whose agent does not
answer is snapshotted unfrozen, with an INFO line for the VM log, as oned's own drivers do.

A re-run after a crash finds the snapshot it took (tagged with this VM and disk) and is done.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from lxml import etree

from datastore.driver import Driver
from onelib import log, numbers, xmldoc
from onelib.config import SANE_MAX
from onelib.errors import Conflict, DriverError
from onelib.hypervisor import Freeze, fs_frozen
from onelib.paths import number

from ..common import DiskPath, disk_path, driver_for, ds_id_arg, fetch_vm, vm_disk, vm_id_arg
from ..entry import TmRequest

_DEPLOY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
TRUE = ("1", "yes", "true", "on")


def run(req: TmRequest) -> None:
    snap_id = number(req.arg(1, "snapshot id"), "snapshot id")
    vm_id, ds_id = vm_id_arg(req.arg(2, "vm id")), ds_id_arg(req.arg(3, "datastore id"))
    dst = disk_path(req.arg(0, "disk"), "disk", vm_id)
    if snap_id < 0:
        raise DriverError(f"snapshot id {snap_id} is negative")
    drv = driver_for(req.driver, ds_id)
    vm = fetch_vm(drv, vm_id)
    name = vm_disk(vm, dst.disk_id).volume(drv.names, vm_id)
    snapshot = drv.names.disk_snapshot(name, snap_id)
    tags = {"virt": "one", "nloc": drv.names.px, "nvm": str(vm_id), "diskid": str(dst.disk_id)}
    with drv.lock(name):
        limit = _limit(drv, vm)
        if limit is not None:
            existing = [s for s in drv.backend.snapshots(drv.names.disk_snapshot_prefix(name))
                        if drv.names.disk_snapshot_id(name, s.name) is not None]
            if any(s.name == snapshot for s in existing):
                _check_ours(drv, snapshot, tags)
                return
            if len(existing) >= limit:
                raise DriverError(f"disk {dst.disk_id} already has {len(existing)} snapshots "
                                  f"(DISKSNAPSHOT_LIMIT={limit})")
        freeze = req.action == "snap_create_live" and _wants_freeze(drv, vm)
        with _frozen(drv, dst, vm) if freeze else contextlib.nullcontext():
            try:
                drv.backend.snapshot(name, snapshot, tags=tags)
            except Conflict:
                _check_ours(drv, snapshot, tags)


def _check_ours(drv: Driver, snapshot: str, tags: dict[str, str]) -> None:
    found = drv.backend.get(snapshot)
    if found is None or not found.snapshot or any(found.tags.get(k) != v for k, v in tags.items()):
        raise DriverError(f"{snapshot} already exists and is not this disk's snapshot") from None


def _limit(drv: Driver, vm: etree._Element) -> int | None:
    """The VM's own DISKSNAPSHOT_LIMIT, else its system datastore's, else the configuration's
    (overlaid with the disk's datastore attributes)."""
    raw = xmldoc.text(vm, "USER_TEMPLATE/DISKSNAPSHOT_LIMIT") or xmldoc.text(vm, "TEMPLATE/DISKSNAPSHOT_LIMIT")
    history = vm.findall("HISTORY_RECORDS/HISTORY")
    system_ds = xmldoc.text(history[-1], "DS_ID") if history else ""
    if not raw and numbers.is_whole(system_ds, 10) and int(system_ds) != drv.ds_id:
        raw = xmldoc.text(drv.oned.datastore(int(system_ds)), "TEMPLATE/DISKSNAPSHOT_LIMIT")
    if raw:
        return numbers.whole(raw, "DISKSNAPSHOT_LIMIT=", maximum=SANE_MAX)
    return drv.config.integer("DISKSNAPSHOT_LIMIT")


def _wants_freeze(drv: Driver, vm: etree._Element) -> bool:
    agent = xmldoc.text(vm, "TEMPLATE/FEATURES/GUEST_AGENT").lower() in TRUE
    return agent or drv.config.get("VMSNAPSHOT_FSFREEZE", "0").lower() in TRUE


def _deploy_id(vm: etree._Element) -> str:
    deploy_id = xmldoc.text(vm, "DEPLOY_ID")
    if deploy_id and not _DEPLOY_ID.fullmatch(deploy_id):
        raise DriverError(f"VM {xmldoc.text(vm, 'ID')} has an unusable DEPLOY_ID {deploy_id!r}")
    return deploy_id


@contextlib.contextmanager
def _frozen(drv: Driver, dst: DiskPath, vm: etree._Element) -> Iterator[None]:
    """The guest's file systems frozen for the block (``onelib.hypervisor.fs_frozen``);
    unfrozen, with an INFO line for the VM log, when that is not possible."""
    vm_id = xmldoc.text(vm, "ID")
    deploy_id = _deploy_id(vm)
    if not deploy_id:
        log.vm_log(vm_id, "no libvirt domain known (DEPLOY_ID): disk snapshot taken without fsfreeze")
        yield
        return
    state: Freeze | None = None
    try:
        with fs_frozen(drv.config, dst.host, deploy_id) as state:
            if not state.frozen:
                log.vm_log(vm_id, f"guest file systems not frozen ({state.why_not}): "
                           "disk snapshot taken without fsfreeze")
            yield
    finally:
        if state is not None and state.thaw_error:
            log.vm_log(vm_id, f"guest file systems not thawed ({state.thaw_error}): run virsh domfsthaw",
                       severity="ERROR")
