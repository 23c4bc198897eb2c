"""``attach_disk <deploy_id> <disk_target_path> <target> <target_index> <b64 drv_message> <vmid>
<host>`` (local: ``-l attach_disk=attach_disk-tweaks``; also installed as addon-storpool's
``attach_disk.storpool`` and ``attach_disk.cdrom``). oned's CLONE/LN line has already made
``disk_target_path`` (``<system_dir>/disk.N``) a link to the volume's device on the host.

- A disk of a block datastore (its TM_MAD is one of this project's block drivers, or its
  DISK_TYPE/TYPE is BLOCK) is attached as ``type='block'`` whatever oned's DISK says (what
  addon-storpool's ``attach_disk.storpool`` forces): hot-plugged through libvirt on the
  host (``onelib.hypervisor``: ``attach-device --live``): source dev = the disk path, target and
  bus from the disk's TARGET, driver raw with CACHE/IO/DISCARD from the DISK (defaults:
  DEFAULT_ATTACH_CACHE/_IO/_DISCARD of the configuration, as in kvmrc, else none/native/
  unmap), read-only for CD-ROMs and READONLY=YES, SHAREABLE, SERIAL, IOTHREAD and the
  iotune attributes.
- A CD-ROM goes into an EMPTY CD-ROM drive of the domain if it has one (the persistent_cdrom
  tweak's slots): the one on the disk's own target, else the first: the drive's live XML
  with the medium as a block source, given to libvirt's update-device (what ``virsh
  change-media --insert --block --live`` does; libvirt 9.0 keeps an empty block drive as
  type file). The guest sees a medium change, no hot-plug.
- Any other disk (file, qcow2, network) is left to OpenNebula's own remote ``attach_disk``
  on the host (same argv, the plain driver message on stdin).

Re-runnable: a disk already attached from the same path is done.
"""

from __future__ import annotations

import re

from lxml import etree

from datastore.backends import find
from onelib import log, numbers, xmldoc
from onelib.config import Config
from onelib.errors import DriverError
from onelib.hypervisor import Hypervisor, forward

from .. import domain_ops as ops
from .. import hotplug
from ..entry import VmmRequest

CACHE = ("default", "none", "writethrough", "writeback", "directsync", "unsafe")
IO = ("threads", "native", "io_uring")
DISCARD = ("ignore", "unmap")
_SERIAL = re.compile(r"[A-Za-z0-9_.+-]{1,36}")
IOTUNE = ("TOTAL_BYTES_SEC", "READ_BYTES_SEC", "WRITE_BYTES_SEC", "TOTAL_IOPS_SEC", "READ_IOPS_SEC",
          "WRITE_IOPS_SEC", "TOTAL_BYTES_SEC_MAX", "READ_BYTES_SEC_MAX", "WRITE_BYTES_SEC_MAX",
          "TOTAL_IOPS_SEC_MAX", "READ_IOPS_SEC_MAX", "WRITE_IOPS_SEC_MAX", "TOTAL_BYTES_SEC_MAX_LENGTH",
          "READ_BYTES_SEC_MAX_LENGTH", "WRITE_BYTES_SEC_MAX_LENGTH", "TOTAL_IOPS_SEC_MAX_LENGTH",
          "READ_IOPS_SEC_MAX_LENGTH", "WRITE_IOPS_SEC_MAX_LENGTH", "SIZE_IOPS_SEC")
TRUE = ("yes", "true", "1", "on")


def run(req: VmmRequest) -> str:
    deploy_id = ops.deploy_id(req.arg(0, "deploy id"))
    target = ops.target(req.arg(2, "target"))
    ops.whole(req.arg(3, "target index"), "target index")
    vm_id = ops.vm_id(req.arg(5, "vm id"))
    host = ops.host(req.arg(6, "host"))
    raw = req.arg(4, "driver message")
    data = req.stdin if raw in ("", "-") else raw.encode()
    msg = ops.parse_message(data, "driver message")
    vm = ops.message_vm(msg, vm_id)
    disk = attached_disk(vm)
    disk_id = xmldoc.integer(disk, "DISK_ID", "attached DISK")
    path = ops.disk_target_path(req.arg(1, "disk path"), vm_id, disk_id)
    if xmldoc.text(disk, "TARGET") != target:
        raise DriverError(f"disk {disk_id} has TARGET {xmldoc.text(disk, 'TARGET')!r}, not {target}")
    config = Config.load()
    if not is_block(disk, msg, vm):
        log.info(f"VM {vm_id}: disk {disk_id} is not a block disk: OpenNebula's attach_disk attaches it")
        return forward(config, host, "attach_disk", list(req.args), etree.tostring(msg)).strip()
    cdrom = xmldoc.text(disk, "TYPE").upper() == "CDROM"
    dom = Hypervisor(config, host).domain(deploy_id)
    live = dom.xml()
    for present in ops.live_disks(live):
        if ops.disk_source(present) == path:
            if cdrom or ops.disk_target(present) == target:
                log.info(f"VM {vm_id}: {path} is attached already ({ops.disk_target(present)})")
                return ""
            raise DriverError(f"{path} is attached to {deploy_id} as {ops.disk_target(present)} already")
    if cdrom:
        slot = _empty_slot(live, target)
        if slot is not None:
            dom.update(insert_medium(live, slot, path))
            log.info(f"VM {vm_id}: CD-ROM disk {disk_id} inserted into drive {slot}")
            return ""
    for present in ops.live_disks(live):
        if ops.disk_target(present) == target:
            raise DriverError(f"target {target} of {deploy_id} is in use by {ops.disk_source(present) or 'a drive'}")
    el = disk_element(disk, path, target, live, config, cdrom=cdrom,
                      sd_bus=xmldoc.text(vm, "TEMPLATE/OS/SD_DISK_BUS").lower(), vm=vm)
    # the same rule files as deploy: the disk gets what it would have got deployed with the VM
    shaped = hotplug.shape(el, live, vm, vm_id, config, "attach_disk-tweaks", target=target)
    dom.attach(etree.tostring(shaped.device))
    hotplug.stamp(dom, shaped, vm_id, "attach_disk-tweaks")
    log.info(f"VM {vm_id}: disk {disk_id} attached as {target}")
    return ""


def attached_disk(vm: etree._Element) -> etree._Element:
    """The DISK oned marked ATTACH=YES (exactly one)."""
    found = [d for d in vm.iterfind("TEMPLATE/DISK") if xmldoc.text(d, "ATTACH").upper() == "YES"]
    if len(found) != 1:
        raise DriverError(f"the driver message has {len(found)} DISKs with ATTACH=YES, not one")
    return found[0]


def is_block(disk: etree._Element, msg: etree._Element, vm: etree._Element) -> bool:
    """A disk of a block datastore: kept by one of this project's block drivers (volatile
    disks: the system datastore's), or oned says DISK_TYPE/TYPE BLOCK."""
    tm_mad = xmldoc.text(disk, "TM_MAD")
    if xmldoc.text(disk, "TYPE").lower() in ("fs", "swap") or not tm_mad:
        history = vm.findall("HISTORY_RECORDS/HISTORY")
        tm_mad = tm_mad or xmldoc.text(msg, "DATASTORE/TM_MAD") or (
            xmldoc.text(history[-1], "TM_MAD") if history else "")
    if "BLOCK" in (xmldoc.text(disk, "DISK_TYPE").upper(), xmldoc.text(disk, "TYPE").upper()):
        return True
    backend = find(tm_mad) if tm_mad else None
    return backend is not None and backend.disk_form == "block"


def insert_medium(live: etree._Element, slot: str, path: str) -> bytes:
    """The CD-ROM drive ``slot`` of the live domain with ``path`` as its block medium."""
    drive = next(d for d in ops.live_disks(live) if ops.disk_target(d) == slot)
    drive = etree.fromstring(etree.tostring(drive))
    drive.set("type", "block")
    for old in drive.findall("source"):
        drive.remove(old)
    source = etree.Element("source", dev=path)
    driver = drive.find("driver")
    drive.insert(drive.index(driver) + 1 if driver is not None else 0, source)
    return etree.tostring(drive)


def _empty_slot(live: etree._Element, target: str) -> str | None:
    slots = [ops.disk_target(d) for d in ops.live_disks(live) if ops.is_empty_cdrom(d) and ops.disk_target(d)]
    if target in slots:
        return target
    return slots[0] if slots else None


def _choice(disk: etree._Element, attr: str, config: Config, allowed: tuple[str, ...], default: str) -> str:
    value = xmldoc.text(disk, attr).lower() or config.get(f"DEFAULT_ATTACH_{attr}").lower() or default
    if value and value not in allowed:
        raise DriverError(f"disk {attr}={value!r} is not one of {', '.join(allowed)}")
    return value


def _bus(target: str, live: etree._Element, sd_bus: str) -> str:
    """oned's rules: vd* virtio, sd* OS/SD_DISK_BUS (scsi unless sata), hd* sata on q35
    machines and ide otherwise."""
    if target.startswith("vd"):
        return "virtio"
    if target.startswith("sd"):
        return "sata" if sd_bus == "sata" else "scsi"
    if target.startswith("hd"):
        os_type = live.find("os/type")
        machine = os_type.get("machine", "") if os_type is not None else ""
        return "sata" if "q35" in machine else "ide"
    raise DriverError(f"target {target}: no bus for it on KVM")


def disk_element(disk: etree._Element, path: str, target: str, live: etree._Element, config: Config, *,
                 cdrom: bool, sd_bus: str = "", vm: etree._Element | None = None) -> etree._Element:
    """The libvirt ``<disk type='block'>`` for the attached DISK, as oned writes a disk into a
    deployment file (plus the attach defaults of the configuration); the rules come after."""
    el = etree.Element("disk", type="block", device="cdrom" if cdrom else "disk")
    cache = _choice(disk, "CACHE", config, CACHE, "none")
    io = _choice(disk, "IO", config, IO, "native" if cache in ("none", "directsync") else "")
    discard = _choice(disk, "DISCARD", config, DISCARD, "unmap")
    driver = etree.SubElement(el, "driver", name="qemu", type="raw", cache=cache)
    if io:
        driver.set("io", io)
    if discard and not cdrom:
        driver.set("discard", discard)
    bus = _bus(target, live, sd_bus)
    iothread = xmldoc.text(disk, "IOTHREAD")
    if iothread and bus == "virtio":
        threads = xmldoc.text(live, "iothreads")
        valid = numbers.is_whole(iothread, 6) and numbers.is_whole(threads, 6)
        if not valid or not 1 <= int(iothread) <= int(threads):
            raise DriverError(f"disk IOTHREAD={iothread!r} is not an iothread of the domain")
        driver.set("iothread", iothread)
    elif bus == "virtio" and vm is not None:
        robin = _oned_iothread(vm, disk)
        if robin is not None:
            driver.set("iothread", robin)
    etree.SubElement(el, "source", dev=path)
    etree.SubElement(el, "target", dev=target, bus=bus)
    if cdrom or xmldoc.text(disk, "READONLY").lower() in TRUE:
        etree.SubElement(el, "readonly")
    if xmldoc.text(disk, "SHAREABLE").lower() in TRUE:
        etree.SubElement(el, "shareable")
    serial = xmldoc.text(disk, "SERIAL")
    if serial:
        if not _SERIAL.fullmatch(serial):
            raise DriverError(f"disk SERIAL={serial!r} has characters a disk serial cannot have")
        etree.SubElement(el, "serial").text = serial
    tune = None
    for attr in IOTUNE:
        value = xmldoc.text(disk, attr)
        if not value:
            continue
        if not numbers.is_whole(value):
            raise DriverError(f"disk {attr}={value!r} is not a whole number")
        if tune is None:
            tune = etree.SubElement(el, "iotune")
        etree.SubElement(tune, attr.lower()).text = value
    return el


def _oned_iothread(vm: etree._Element, attached: etree._Element) -> str | None:
    """The iothread oned gives a virtio disk at deploy when FEATURES/IOTHREADS is set and the
    disk names none: round-robin over the virtio disks (in template order) that name no
    iothread of their own."""
    count = xmldoc.text(vm, "TEMPLATE/FEATURES/IOTHREADS")
    if not numbers.is_whole(count, 6) or int(count) < 1:
        return None
    threads = int(count)
    robin = 1
    for disk in vm.iterfind("TEMPLATE/DISK"):
        if disk is attached:
            return str(robin)
        if not xmldoc.text(disk, "TARGET").startswith("vd"):
            continue
        own = xmldoc.text(disk, "IOTHREAD")
        if not (numbers.is_whole(own, 6) and 1 <= int(own) <= threads):
            robin = robin % threads + 1
    return None
