"""``snapshot_create <deploy_id> <one_snap_id> <vmid> <host>`` (local: ``-l snapshotcreate=snapshot_create-tweaks``;
stdin the base64 driver message): one atomic group snapshot of the VM's volumes (see
``vmm.vmsnap``); prints the HYPERVISOR_ID ``snap-<snap_id>-<time>``.

- VMSNAPSHOT_LIMIT (VM, system datastore, configuration): a VM with that many snapshots
  gets no more (LIMIT n allows exactly n); nothing is made and the reason is one line.
- Guest fsfreeze (libvirt's fsFreeze/fsThaw, ``virsh domfsfreeze``/``domfsthaw``) around the snapshot
  when VMSNAPSHOT_FSFREEZE or FEATURES/GUEST_AGENT asks for it; a guest that cannot freeze
  is snapshotted unfrozen with an INFO line for the VM log.
- Re-runnable: a group already taken for this snapshot id is reported again; a lost
  reply is recognised by the snapshots it made; a failure leaves no partial group.
"""

from __future__ import annotations

import time

from onelib import log
from onelib.errors import DriverError
from onelib.hypervisor import Hypervisor

from .. import domain_ops as ops
from .. import vmsnap
from ..entry import VmmRequest


def run(req: VmmRequest) -> str:
    ctx = vmsnap.SnapContext(req)
    snap_id = ops.whole(req.arg(1, "snapshot id"), "snapshot id")
    if ctx.driver is None:
        return ctx.forward("snapshot_create").strip()
    drv = ctx.drv
    wanted = ctx.wanted()
    with ctx.locked([v.name for v in wanted]):
        listing = ctx.listing(wanted)
        volumes = ctx.present(wanted, listing)
        groups = ctx.groups(listing, wanted)
        mine = [g for (sid, _), g in groups.items() if sid == snap_id]
        for group in mine:
            if all(v.name in group.members for v in volumes):
                log.info(f"VM {ctx.vm_id}: snapshot {snap_id} already taken as {group.hypervisor_id}")
                return group.hypervisor_id
        limit = ctx.limit()
        taken = {sid for sid, _ in groups if sid != snap_id}
        if limit is not None and len(taken) >= limit:
            raise DriverError(f"VM {ctx.vm_id} already has {len(taken)} snapshots (VMSNAPSHOT_LIMIT={limit}): "
                              f"delete one first")
        for group in mine:  # an incomplete group of this id (disks attached since): replaced
            for snap in group.members.values():
                drv.backend.delete(snap.name, snapshot=True)
        ts = int(time.time())
        while any(key[1] == ts for key in groups):
            ts += 1
        items = [(v.name, drv.names.vm_snapshot(v.name, snap_id, ts),
                  {"diskid": str(v.disk_id)} if v.disk_id is not None else {"type": "NVRAM"})
                 for v in volumes]
        frozen = _freeze(ctx) if ctx.wants_freeze() else False
        error: DriverError | None = None
        try:
            vmsnap.group_snapshot(drv.backend, items, vmsnap.snapshot_tags(ctx, snap_id))
        except DriverError as exc:
            error = exc
        finally:
            if frozen:  # the guest is frozen for the one call only
                _thaw(ctx)
        if error is not None:
            made = {s.name for s in drv.backend.snapshots(f"{drv.names.px}-")}
            names = {snap for _, snap, _ in items}
            if not names <= made:
                for name in sorted(names & made):
                    drv.backend.delete(name, snapshot=True)
                raise DriverError(f"VM {ctx.vm_id} snapshot {snap_id} not taken: {error}")
            log.info(f"VM {ctx.vm_id}: group snapshot reply lost ({error}); its snapshots exist")
            vmsnap.retag(drv.backend, items, vmsnap.snapshot_tags(ctx, snap_id))
    return vmsnap.hypervisor_id(snap_id, ts)


def _freeze(ctx: vmsnap.SnapContext) -> bool:
    try:
        Hypervisor(ctx.config, ctx.host).domain(ctx.deploy_id).fs_freeze()
    except DriverError as exc:
        log.vm_log(ctx.vm_id, f"guest file systems not frozen ({exc}): VM snapshot taken without fsfreeze")
        return False
    return True


def _thaw(ctx: vmsnap.SnapContext) -> None:
    try:
        Hypervisor(ctx.config, ctx.host).domain(ctx.deploy_id).fs_thaw()
    except DriverError as exc:
        log.vm_log(ctx.vm_id, f"guest file systems not thawed ({exc}): run virsh domfsthaw", severity="ERROR")
