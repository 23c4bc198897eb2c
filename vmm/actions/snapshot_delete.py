"""``snapshot_delete <deploy_id> <HYPERVISOR_ID> <vmid> <host>`` (local: ``-l snapshotdelete=snapshot_delete-tweaks``):
delete every snapshot of a VM snapshot group (see ``vmm.vmsnap``), also those of volumes
the VM no longer has. Re-runnable: snapshots already gone are not an error, and a group
that is gone entirely is done. Backend calls: 2 to list, 2 per snapshot."""

from __future__ import annotations

from onelib import log

from .. import vmsnap
from ..entry import VmmRequest


def run(req: VmmRequest) -> str:
    ctx = vmsnap.SnapContext(req)
    raw_id = req.arg(1, "snapshot id")
    vmsnap.parse_hypervisor_id(raw_id)
    if ctx.driver is None:
        return ctx.forward("snapshot_delete").strip()
    drv = ctx.drv
    wanted = ctx.wanted(strict=False)
    listing = ctx.listing(wanted)
    group = ctx.find_group(ctx.groups(listing, wanted), raw_id)
    if group is None:
        log.info(f"VM {ctx.vm_id}: no snapshot {raw_id} left to delete")
        return ""
    with ctx.locked(list(group.members)):
        drv.backend.vm_snapshot_delete([snap.name for snap in group.members.values()])
    log.info(f"VM {ctx.vm_id}: snapshot {group.hypervisor_id} deleted ({len(group.members)} volumes)")
    return ""
