"""Synthetic oned-shaped inputs for benchmarks: a VM with N disks, as deployment + VM XML."""

from __future__ import annotations

from pathlib import Path

from lxml import etree

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "opennebula"
USER = {
    "T_IOTHREADS_OVERRIDE": "4", "T_BLK_QUEUES": "YES", "T_CPU_MODEL": "EPYC-Rome:allow",
    "T_CPU_SOCKETS": "2", "T_CPU_FEATURES": "vmx:disable,invtsc", "T_VIDEO_MODEL": "type=qxl heads=2",
    "T_CPU_MODE": "custom", "T_SCSI_QUEUES": "VCPU",
}


def _target(i: int, prefix: str) -> str:
    letters = ""
    n = i
    while True:
        letters = chr(ord("a") + n % 26) + letters
        n = n // 26 - 1
        if n < 0:
            return prefix + letters


def make(disks: int, user: dict[str, str] | None = None) -> tuple[bytes, bytes]:
    parser = etree.XMLParser(strip_cdata=False)
    dom = etree.parse(str(FIXTURES / "deployment.0.xml"), parser).getroot()
    vm = etree.parse(str(FIXTURES / "vm-42.xml"), parser).getroot()
    devices = dom.find("devices")
    template = vm.find("TEMPLATE")
    for old in devices.findall("disk[@device='disk']"):
        devices.remove(old)
    for old in template.findall("DISK"):
        template.remove(old)
    ds = "/var/lib/one//datastores/101/42"
    for i in range(disks):
        volatile = i % 4 == 3
        bus_virtio = i % 2 == 0
        target = _target(i // 2, "vd" if bus_virtio else "sd")
        disk = etree.Element("disk", type="file" if volatile else "block", device="disk")
        etree.SubElement(disk, "source", {"file" if volatile else "dev": f"{ds}/disk.{i}"})
        etree.SubElement(disk, "target", dev=target, **({"bus": "virtio"} if bus_virtio else {}))
        etree.SubElement(disk, "driver", name="qemu", type="raw", cache="none", io="native", discard="unmap")
        devices.insert(1 + i, disk)
        d = etree.SubElement(template, "DISK")
        for key, value in (("DISK_ID", str(i)), ("TARGET", target), ("TM_MAD", "storpool"),
                           ("DATASTORE_ID", "101" if volatile else "100"),
                           ("TYPE", "fs" if volatile else "BLOCK"), ("DISK_TYPE", "BLOCK"),
                           ("IMAGE_ID", "" if volatile else str(100 + i)), ("SIZE", "1024")):
            if value:
                etree.SubElement(d, key).text = value
    history = vm.find("HISTORY_RECORDS/HISTORY/TM_MAD")
    history.text = "storpool"
    ut = vm.find("USER_TEMPLATE")
    for key, value in (USER if user is None else user).items():
        etree.SubElement(ut, key).text = value
    return etree.tostring(dom), etree.tostring(vm)
