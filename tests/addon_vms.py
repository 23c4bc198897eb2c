"""Generated VMs for the differential suite: a domain XML as oned 6.10 writes it and the VM document.

Each variant is a VM a cloud really runs: q35 or i440fx, virtio-blk (vd*) or virtio-scsi (sd*)
disks, an image disk (clone or persistent), a volatile disk, a CD-ROM image, the context CD-ROM,
several NICs, PCI passthrough devices, Hyper-V features, on StorPool or on a file TM_MAD.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree


@dataclass(frozen=True)
class Variant:
    name: str
    machine: str = "q35"  # q35 | pc-i440fx-7.2
    bus: str = "virtio"  # virtio (vd*) | scsi (sd*)
    tm_mad: str = "storpool"
    vcpu: int = 4
    memory_mib: int = 4096
    nics: tuple[str, ...] = ("virtio", "virtio")
    pci: tuple[str, ...] = ()  # one entry per PCI device: its TEMPLATE/PCI/MAC or ""
    hyperv: bool = False
    iothreads: int = 0  # oned's <iothreads> from FEATURES/IOTHREADS
    cdrom: bool = True
    persistent: bool = False
    raw_features: bool = False  # RAW/DATA with a <features> block of its own (oned appends it: a second block)
    extra: dict[str, str] = field(default_factory=dict)


VARIANTS = (
    Variant("q35-blk-sp", nics=("virtio", "virtio", "e1000"), pci=("02:00:11:ab:cd:01", "")),
    Variant("pc-scsi-sp", machine="pc-i440fx-7.2", bus="scsi", vcpu=2, memory_mib=2048, persistent=True),
    Variant("q35-scsi-ssh", bus="scsi", tm_mad="ssh", vcpu=8, nics=("virtio",), iothreads=2, raw_features=True),
    Variant("pc-blk-hv", machine="pc-i440fx-7.2", vcpu=6, hyperv=True, nics=("virtio", "e1000"),
            pci=("", "")),
)

VM_ID = 7
SYS_DS = 0
DS_DIR = f"/var/lib/one//datastores/{SYS_DS}/{VM_ID}"


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    el = etree.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def _tpl(parent: etree._Element, tag: str, values: dict[str, str]) -> etree._Element:
    el = etree.SubElement(parent, tag)
    for k, v in values.items():
        _sub(el, k, v)
    return el


def build(v: Variant) -> tuple[bytes, bytes]:
    """(domain XML, VM document) for one variant."""
    prefix = "vd" if v.bus == "virtio" else "sd"
    block = v.tm_mad == "storpool"
    dom = etree.Element("domain", type="kvm", nsmap={"qemu": "http://libvirt.org/schemas/domain/qemu/1.0"})
    _sub(dom, "name", f"one-{VM_ID}")
    _sub(dom, "title", f"gen-{v.name}")
    _sub(dom, "vcpu", str(v.vcpu))
    _sub(_sub(dom, "cputune"), "shares", str(v.vcpu * 1024 // 10 or 1))
    _sub(dom, "memory", str(v.memory_mib * 1024))
    os_ = _sub(dom, "os")
    _sub(os_, "type", "hvm", arch="x86_64", machine=v.machine)
    _sub(os_, "boot", dev="hd")
    _sub(dom, "cpu", mode="host-passthrough")
    if v.iothreads:
        _sub(dom, "iothreads", str(v.iothreads))
    dev = _sub(dom, "devices")
    _sub(dev, "emulator", "/usr/bin/qemu-kvm-one")
    vm = etree.Element("VM")
    for tag, val in (("ID", str(VM_ID)), ("UID", "0"), ("GID", "0"), ("UNAME", "oneadmin"),
                     ("GNAME", "oneadmin"), ("NAME", f"gen-{v.name}"), ("STATE", "3"), ("LCM_STATE", "2")):
        _sub(vm, tag, val)
    tpl = _sub(vm, "TEMPLATE")
    disk_id = 0
    targets = iter(f"{prefix}{c}" for c in "abcdefgh")

    def disk(kind: str, values: dict[str, str]) -> None:
        nonlocal disk_id
        target = next(targets)
        path = f"{DS_DIR}/disk.{disk_id}"
        use_block = block and kind == "image"
        d = _sub(dev, "disk", type="block" if use_block else "file", device="disk")
        _sub(d, "source", **({"dev": path} if use_block else {"file": path}))
        _sub(d, "target", dev=target, **({"bus": "virtio"} if v.bus == "virtio" else {}))
        if disk_id == 0:
            _sub(d, "boot", order="1")
        _sub(d, "driver", name="qemu", type="raw", cache="none", discard="unmap",
             **({"io": "native"} if use_block else {}))
        if v.bus == "scsi":
            _sub(d, "address", type="drive", controller="0", bus="0", target=str(disk_id), unit="0")
        values = {"DISK_ID": str(disk_id), "TARGET": target, "DEV_PREFIX": prefix, "TM_MAD": v.tm_mad,
                  "DATASTORE_ID": "1" if kind == "image" else str(SYS_DS), **values}
        _tpl(tpl, "DISK", values)
        disk_id += 1

    disk("image", {"IMAGE_ID": "11", "CLONE": "NO" if v.persistent else "YES", "PERSISTENT": "YES"
                   if v.persistent else "NO", "DISK_TYPE": "BLOCK" if block else "FILE", "TYPE": "BLOCK"})
    disk("image", {"IMAGE_ID": "12", "CLONE": "YES", "DISK_TYPE": "BLOCK" if block else "FILE"})
    disk("volatile", {"TYPE": "fs", "SIZE": "1024", "FORMAT": "raw"})
    hd = iter(("hda", "hdb", "hdc"))
    cd_bus = "sata" if "q35" in v.machine else "ide"
    if v.cdrom:
        target = next(hd)
        c = _sub(dev, "disk", type="block" if block else "file", device="cdrom")
        _sub(c, "source", **({"dev" if block else "file": f"{DS_DIR}/disk.{disk_id}"}))
        _sub(c, "target", dev=target, bus=cd_bus)
        _sub(c, "readonly")
        _sub(c, "driver", name="qemu", type="raw")
        _tpl(tpl, "DISK", {"DISK_ID": str(disk_id), "TARGET": target, "TM_MAD": v.tm_mad, "IMAGE_ID": "13",
                           "TYPE": "CDROM", "CLONE": "YES", "READONLY": "YES"})
        disk_id += 1
    ctx_target = next(hd)
    c = _sub(dev, "disk", type="file", device="cdrom")
    _sub(c, "source", file=f"{DS_DIR}/disk.{disk_id}")
    _sub(c, "target", dev=ctx_target, bus=cd_bus)
    _sub(c, "readonly")
    _sub(c, "driver", name="qemu", type="raw")
    _tpl(tpl, "CONTEXT", {"DISK_ID": str(disk_id), "TARGET": ctx_target, "NETWORK": "YES"})
    if v.bus == "scsi":
        _sub(dev, "controller", type="scsi", index="0", model="virtio-scsi")
    for i, model in enumerate(v.nics):
        mac = f"02:00:0a:00:{VM_ID:02x}:{i:02x}"
        n = _sub(dev, "interface", type="bridge")
        _sub(n, "source", bridge="br0")
        _sub(n, "mac", address=mac)
        _sub(n, "target", dev=f"one-{VM_ID}-{i}")
        _sub(n, "model", type=model)
        _tpl(tpl, "NIC", {"NIC_ID": str(i), "MAC": mac, "MODEL": model, "BRIDGE": "br0", "NETWORK": "public",
                          "TARGET": f"one-{VM_ID}-{i}"})
    for i, mac in enumerate(v.pci):
        h = _sub(dev, "hostdev", mode="subsystem", type="pci", managed="yes")
        _sub(_sub(h, "source"), "address", domain="0x0000", bus="0xd8", slot="0x00", function=f"0x{i + 5:x}")
        _sub(h, "address", type="pci", domain="0x0000", bus="0x01", slot=f"0x{i + 1:02x}", function="0")
        _tpl(tpl, "PCI", {"PCI_ID": str(i), "DEVICE": "154c", "VENDOR": "8086", "CLASS": "0200",
                          "SHORT_ADDRESS": f"d8:00.{i + 5}", **({"MAC": mac} if mac else {})})
    _sub(dev, "graphics", type="vnc", listen="0.0.0.0", port=str(5900 + VM_ID))
    _sub(_sub(dev, "video"), "model", type="virtio")
    if "q35" in v.machine:
        # oned 6.x writes the q35 PCIe controllers in a second <devices> block
        more = _sub(dom, "devices")
        _sub(more, "controller", type="pci", index="0", model="pcie-root")
        for _ in range(4):
            _sub(more, "controller", type="pci", model="pcie-root-port")
        _sub(more, "controller", type="pci", model="pcie-to-pci-bridge")
    feats = _sub(dom, "features")
    _sub(feats, "acpi")
    if v.hyperv:
        hv = _sub(feats, "hyperv")
        _sub(hv, "relaxed", state="on")
        _sub(hv, "vapic", state="on")
        _sub(hv, "spinlocks", state="on", retries="4096")
        clock = _sub(dom, "clock", offset="localtime")
        _sub(clock, "timer", name="hypervclock", present="yes")
    if v.raw_features:
        _sub(_sub(dom, "features"), "pmu", state="off")
    meta = etree.SubElement(_sub(dom, "metadata"), "{http://opennebula.org/xmlns/libvirt/1.0}vm",
                            nsmap={"one": "http://opennebula.org/xmlns/libvirt/1.0"})
    _sub(meta, "{http://opennebula.org/xmlns/libvirt/1.0}system_datastore", DS_DIR)
    _sub(meta, "{http://opennebula.org/xmlns/libvirt/1.0}name", f"gen-{v.name}")
    _sub(tpl, "CPU", str(v.vcpu / 2))
    _sub(tpl, "VCPU", str(v.vcpu))
    _sub(tpl, "MEMORY", str(v.memory_mib))
    _tpl(tpl, "OS", {"MACHINE": v.machine, "ARCH": "x86_64"})
    feats_tpl = {"ACPI": "yes"}
    if v.hyperv:
        feats_tpl["HYPERV"] = "yes"
        feats_tpl["LOCALTIME"] = "yes"  # oned writes offset='localtime' from it
    if v.iothreads:
        feats_tpl["IOTHREADS"] = str(v.iothreads)
    _tpl(tpl, "FEATURES", feats_tpl)
    if v.raw_features:
        _tpl(tpl, "RAW", {"TYPE": "kvm", "DATA": "<features><pmu state='off'/></features>"})
    for k, val in v.extra.items():
        _sub(tpl, k, val)
    _sub(vm, "USER_TEMPLATE")
    hist = _sub(_sub(vm, "HISTORY_RECORDS"), "HISTORY")
    for tag, val in (("OID", str(VM_ID)), ("SEQ", "0"), ("HOSTNAME", "node1"), ("HID", "1"), ("VM_MAD", "kvm"),
                     ("TM_MAD", v.tm_mad), ("DS_ID", str(SYS_DS))):
        _sub(hist, tag, val)
    return (etree.tostring(dom, pretty_print=True), etree.tostring(vm, pretty_print=True))
