"""``resize_disk <deploy_id> <disk_id> <size_mb> <b64 drv_message> <host> <vmid> <host>``
(local: ``-l resize_disk=resize_disk-tweaks``), after the TM RESIZE line grew the volume:
libvirt's block resize (``virsh blockresize DOMAIN <target> <size>M``) on the host through
``onelib.hypervisor``, so the running guest sees the new size. The target is the DISK's
TARGET in oned's message, checked against the live domain (it must be ``disk.<disk_id>``
there). Re-runnable: resizing to the size the disk already has is a no-op for qemu.
"""

from __future__ import annotations

import posixpath

from onelib import log, xmldoc
from onelib.config import Config
from onelib.errors import DriverError
from onelib.hypervisor import Hypervisor

from .. import domain_ops as ops
from ..entry import VmmRequest

MAX_MB = 64 * 1024 * 1024  # 64 TiB


def run(req: VmmRequest) -> str:
    deploy_id = ops.deploy_id(req.arg(0, "deploy id"))
    disk_id = ops.whole(req.arg(1, "disk id"), "disk id", 999999)
    size_mb = ops.whole(req.arg(2, "size"), "size", MAX_MB)
    vm_id = ops.vm_id(req.arg(5, "vm id"))
    host = ops.host(req.arg(6, "host"))
    if size_mb == 0:
        raise DriverError("new size 0 MB is out of range")
    raw = req.arg(3, "driver message")
    msg = ops.parse_message(req.stdin if raw in ("", "-") else raw.encode(), "driver message")
    vm = ops.message_vm(msg, vm_id)
    disk = next((d for d in vm.iterfind("TEMPLATE/DISK") if xmldoc.text(d, "DISK_ID") == str(disk_id)), None)
    if disk is None:
        raise DriverError(f"VM {vm_id} has no disk {disk_id}")
    target = ops.target(xmldoc.text(disk, "TARGET"))
    dom = Hypervisor(Config.load(), host).domain(deploy_id)
    live = dom.xml()
    found = next((d for d in ops.live_disks(live) if ops.disk_target(d) == target), None)
    if found is None:
        raise DriverError(f"{deploy_id} has no disk {target} (disk {disk_id})")
    source = ops.disk_source(found)
    if source and posixpath.basename(source) != f"disk.{disk_id}":
        raise DriverError(f"{target} of {deploy_id} is {source}, not disk.{disk_id}")
    dom.block_resize(target, size_mb * 1024 * 1024)
    log.info(f"VM {vm_id}: disk {disk_id} ({target}) resized to {size_mb} MB")
    return ""
