"""MONITOR of a system datastore (``tm/<driver>/monitor <ds_id>``, called like a DS action:
base64 DS_DRIVER_ACTION_DATA with DATASTORE, DATASTORE_LOCATION and MONITOR_VM_DISKS).

Prints the template's USED_MB/TOTAL_MB/FREE_MB and, when oned asks for VM disks, one
``VM = [ ID = n, MONITOR = "<base64>" ]`` line per VM with DISK_SIZE and SNAPSHOT_SIZE
(MB actually stored), the way OpenNebula 6.10/7.x read a shared system datastore's
monitor. A constant number of calls however many volumes exist: template status,
volume space and snapshot space (3 backend calls) and the VM pool (1 oned call).
"""

from __future__ import annotations

import base64

from datastore.backend import Usage
from datastore.driver import Driver
from datastore.entry import parse_request
from onelib import numbers, xmldoc
from onelib.errors import DriverError, NotFound

from ..entry import TmRequest

MIB = 1024 * 1024


def run(req: TmRequest) -> str:
    request = parse_request(req.driver, "monitor", req.args, req.stdin)
    drv = Driver(req.driver, request.datastore)
    if drv.ds_id != request.id:
        raise DriverError(f"monitor: the DATASTORE sent is {drv.ds_id}, not {request.id}")
    try:
        cap = drv.backend.capacity(drv.placement())
        lines = [f"USED_MB={cap.used // MIB}", f"TOTAL_MB={cap.total // MIB}", f"FREE_MB={cap.free // MIB}"]
    except NotFound:
        lines = ["USED_MB=0", "TOTAL_MB=0", "FREE_MB=0"]
    if xmldoc.text(request.root, "MONITOR_VM_DISKS") == "1":
        lines += vm_lines(drv, drv.backend.usage())
    return "\n".join(lines)


def vm_lines(drv: Driver, usage: dict[str, Usage]) -> list[str]:
    """One line per VM of this system datastore (its last history record's DS_ID) with the
    stored size of each disk volume and disk snapshot, in MB."""
    names = drv.names
    here: set[int] = set()
    persistent: dict[str, tuple[int, int]] = {}
    for vm in drv.oned.vms().iterfind("VM"):
        raw_id = xmldoc.text(vm, "ID")
        history = vm.findall("HISTORY_RECORDS/HISTORY")
        if not numbers.is_whole(raw_id, 10) or not history or xmldoc.text(history[-1], "DS_ID") != str(drv.ds_id):
            continue
        vm_id = int(raw_id)
        here.add(vm_id)
        for disk in vm.iterfind("TEMPLATE/DISK"):
            if xmldoc.text(disk, "PERSISTENT").upper() == "YES":
                source = xmldoc.text(disk, "SOURCE")
                disk_id = xmldoc.text(disk, "DISK_ID")
                if source and numbers.is_whole(disk_id, 10):
                    persistent[names.source_volume(source) or source] = (vm_id, int(disk_id))

    def owner(volume: str) -> tuple[int, int] | None:
        return names.disk_owner(volume) or persistent.get(volume)

    disks: dict[int, list[str]] = {}
    for name, use in sorted(usage.items()):
        match = names.split_disk_snapshot(name)
        found = owner(match[0] if match else name)
        if found is None or found[0] not in here:
            continue
        size = -(-use.stored // MIB)
        if match:
            item = f"SNAPSHOT_SIZE=[ID={match[1]},DISK_ID={found[1]},SIZE={size}]"
        else:
            item = f"DISK_SIZE=[ID={found[1]},SIZE={size}]"
        disks.setdefault(found[0], []).append(item)
    out = []
    for owner_vm, items in sorted(disks.items()):
        payload = base64.b64encode("\n".join(items).encode()).decode()
        out.append(f'VM = [ ID = {owner_vm}, MONITOR = "{payload}" ]')
    return out
