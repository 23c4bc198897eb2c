"""``snapshot_revert <deploy_id> <HYPERVISOR_ID> <vmid> <host>`` (local: ``-l snapshotrevert=snapshot_revert-tweaks``):
the VM's disks back to a VM snapshot (see ``vmm.vmsnap``). Disk state only: the guest is
restarted, as after a power cut at the moment of the snapshot (no memory image is kept).

1. Checks first, changing nothing: the group exists and covers every volume the VM has
   now (a disk attached after the snapshot has nothing to go back to: detach it first),
   and the host has the VM's deployment file (``<system_dir>/deployment.<N>``, the latest).
2. The domain destroyed (a paused domain is restarted paused).
3. Every volume detached from the host, reverted to its snapshot, attached again: the
   device path, and so the ``disk.N`` links, stay the same.
4. The deployment file started again (``virsh create``), keeping the domain's UUID (oned's
   DEPLOY_ID). libvirt is reached through ``onelib.hypervisor``; the files over ssh.

Re-runnable: a run that stopped anywhere is completed by the next one (a missing domain is
not an error, reverting again to the same snapshot gives the same data). When a revert
fails, the volumes are attached again and the VM is left stopped with a one-line reason.
"""

from __future__ import annotations

import posixpath
import re

from lxml import etree

from onelib import log, xmldoc
from onelib.errors import DriverError
from onelib.hypervisor import Hypervisor, vm_dir

from .. import domain_ops as ops
from .. import vmsnap
from ..entry import VmmRequest

_DEPLOYMENT = re.compile(r"deployment\.([0-9]{1,6})")
_RUNNING = ("running", "paused", "blocked", "in shutdown", "pmsuspended", "idle", "crashed")


def run(req: VmmRequest) -> str:
    ctx = vmsnap.SnapContext(req)
    raw_id = req.arg(1, "snapshot id")
    vmsnap.parse_hypervisor_id(raw_id)
    if ctx.driver is None:
        return ctx.forward("snapshot_revert").strip()
    drv = ctx.drv
    wanted = ctx.wanted()
    with ctx.locked([v.name for v in wanted]):
        listing = ctx.listing(wanted)
        volumes = ctx.present(wanted, listing)
        group = ctx.find_group(ctx.groups(listing, wanted), raw_id)
        if group is None:
            raise DriverError(f"VM {ctx.vm_id} has no snapshot {raw_id}")
        missing = [v for v in volumes if v.name not in group.members]
        if missing:
            what = ", ".join(f"disk {v.disk_id}" if v.disk_id is not None else "NVRAM" for v in missing)
            raise DriverError(f"snapshot {raw_id} of VM {ctx.vm_id} has nothing for {what} "
                              f"(added after the snapshot): detach it before reverting")
        hv = Hypervisor(ctx.config, ctx.host)
        deployment = _latest_deployment(hv, vm_dir(ctx.oned, ctx.host, ctx.config, ctx.ds_id, ctx.vm_id))
        dom = hv.lookup(ctx.deploy_id)
        uuid = dom.uuid if dom else (ctx.deploy_id if ops.is_uuid(ctx.deploy_id) else "")
        state = dom.state() if dom else ""
        xml = _with_uuid(hv.shell.run(["cat", "--", deployment]).stdout, uuid, deployment)
        if dom is not None and state in _RUNNING:
            dom.destroy()
        host = drv.host(ctx.host)
        names = [v.name for v in volumes]
        drv.backend.detach_many(names, host)
        try:
            drv.backend.vm_snapshot_revert([(name, group.members[name].name) for name in names])
        except DriverError as exc:
            drv.backend.attach_many([(name, False) for name in names], host)
            raise DriverError(f"VM {ctx.vm_id} not reverted to {raw_id} ({exc}); the VM is stopped: "
                              f"run the revert again") from None
        drv.backend.attach_many([(name, False) for name in names], host)
        hv.create(xml, paused=state == "paused")
        log.info(f"VM {ctx.vm_id}: reverted to {group.hypervisor_id} and started from {deployment}")
    return ""


def _latest_deployment(hv: Hypervisor, vm_dir: str) -> str:
    proc = hv.shell.run(["ls", "-1", "--", vm_dir], check=False)
    numbers = []
    for name in proc.stdout.decode(errors="replace").split():
        match = _DEPLOYMENT.fullmatch(name)
        if match:
            numbers.append(int(match.group(1)))
    if not numbers:
        raise DriverError(f"no deployment file in {vm_dir} on {hv.name}: the VM cannot be started again")
    return posixpath.join(vm_dir, f"deployment.{max(numbers)}")


def _with_uuid(data: bytes, uuid: str, path: str) -> bytes:
    """The deployment file with the running domain's UUID, so that oned's DEPLOY_ID still
    names it (oned's files carry no <uuid> unless the VM template sets one)."""
    root = xmldoc.parse(data, path)
    if root.tag != "domain":
        raise DriverError(f"{path} is not a libvirt domain")
    if uuid and root.find("uuid") is None:
        el = etree.Element("uuid")
        el.text = uuid
        name = root.find("name")
        root.insert(root.index(name) + 1 if name is not None else 0, el)
    return etree.tostring(root)
