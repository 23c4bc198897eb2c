"""``detach_disk <deploy_id> <disk_target_path> <target> <target_index> <vmid> <host>``
(local: ``-l detach_disk=detach_disk-tweaks``; also installed as addon-storpool's
``detach_disk.cdrom``). oned runs the TM DELETE/MVDS line afterwards, so the disk must
really be gone from qemu when this succeeds.

- A CD-ROM medium in an IDE/SATA drive (the persistent_cdrom tweak's slots, which cannot
  be hot-unplugged) is ejected: the drive's live XML without its source, given to libvirt's
  update-device (``virsh change-media --eject --live``); the empty drive stays for the
  next CD-ROM.
- Any other disk: its live XML given to libvirt's detach-device (``virsh detach-disk
  DOMAIN <target> --live``; all through ``onelib.hypervisor``), then wait until qemu has
  let go of it (the guest must acknowledge a PCI unplug; DETACH_TIMEOUT seconds, default
  20). A guest that does not gives a one-line error, and oned keeps the disk.

Re-runnable: a disk no longer in the domain is done; an unplug already under way is waited for.
"""

from __future__ import annotations

import time

from lxml import etree

from onelib import log
from onelib.config import Config
from onelib.errors import DriverError
from onelib.hypervisor import Domain, Hypervisor

from .. import domain_ops as ops
from ..entry import VmmRequest

SLOT_BUSES = ("ide", "sata", "fdc")


def run(req: VmmRequest) -> str:
    deploy_id = ops.deploy_id(req.arg(0, "deploy id"))
    target = ops.target(req.arg(2, "target"))
    ops.whole(req.arg(3, "target index"), "target index")
    vm_id = ops.vm_id(req.arg(4, "vm id"))
    host = ops.host(req.arg(5, "host"))
    path = ops.disk_target_path(req.arg(1, "disk path"), vm_id)
    config = Config.load()
    dom = Hypervisor(config, host).domain(deploy_id)
    live = dom.xml()
    for disk in ops.live_disks(live):
        if disk.get("device") == "cdrom" and ops.disk_source(disk) == path and _bus(disk) in SLOT_BUSES:
            slot = ops.disk_target(disk)
            dom.update(_ejected(disk))
            log.info(f"VM {vm_id}: CD-ROM {path} ejected from drive {slot}")
            return ""
    found = _by_target(live, target)
    if found is None:
        # the disk may sit on another target than oned's (a CD-ROM drive, a re-run)
        found = next((d for d in ops.live_disks(live) if ops.disk_source(d) == path), None)
        if found is None:
            log.info(f"VM {vm_id}: {target} ({path}) is not attached to {deploy_id}")
            return ""
    source = ops.disk_source(found)
    if source and source != path:
        raise DriverError(f"{target} of {deploy_id} is {source}, not {path}")
    name = ops.disk_target(found)
    try:
        dom.detach(etree.tostring(found))
    except DriverError as exc:
        if "in the process of unplug" not in str(exc):
            raise
    wait = config.integer("DETACH_TIMEOUT")
    deadline = time.monotonic() + (20 if wait is None else wait)
    while _by_target(dom.xml(), name) is not None:
        if time.monotonic() >= deadline:
            raise DriverError(f"the guest of {deploy_id} did not release {name} ({path}): "
                              f"the disk is still attached")
        time.sleep(0.5)
    log.info(f"VM {vm_id}: {name} ({path}) detached")
    _unstamp(dom, vm_id, name)
    return ""


def _unstamp(dom: Domain, vm_id: int, name: str) -> None:
    """Drop the disk's hot-plug entry from the running domain's provenance: the stamp
    describes the devices the domain has."""
    from tweaks import provenance

    try:
        element = provenance.without_hotplug(dom.xml(), "disk", name)
        if element is not None:
            dom.set_metadata(element, key=provenance.PREFIX, namespace=provenance.NAMESPACE)
    except DriverError as exc:
        log.vm_log(vm_id, f"detach_disk: disk detached, its provenance entry kept: {exc}", severity="ERROR")


def _ejected(drive: etree._Element) -> bytes:
    """The drive as it is, without its medium."""
    empty = etree.fromstring(etree.tostring(drive))
    for source in empty.findall("source"):
        empty.remove(source)
    return etree.tostring(empty)


def _bus(disk: etree._Element) -> str:
    tgt = disk.find("target")
    return (tgt.get("bus") or "") if tgt is not None else ""


def _by_target(live: etree._Element, target: str) -> etree._Element | None:
    return next((d for d in ops.live_disks(live) if ops.disk_target(d) == target), None)
