"""Idempotence as a property: generated OpenNebula-like VMs (q35 and i440fx; virtio-blk and
virtio-scsi image disks, volatile, context and CD-ROM disks; several NICs; PCI hostdevs,
some with TEMPLATE/PCI/MAC; oned's extra <devices> block) with generated T_* combinations,
every shipped rule enabled: a second apply changes nothing, no rule fails with an
exception, the (valid) domain stays valid, nothing is lost (tests/idempotence.py)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import deployment, vm_xml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from idempotence import VALUES, check, vm_document
from lxml import etree

VM_ID = 7
SYSTEM = f"/var/lib/one//datastores/0/{VM_ID}"
PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def vms(draw: Any) -> tuple[bytes, dict[str, Any]]:
    """A domain as oned writes it, and what its VM document needs (disks, NICs, PCIs)."""
    q35 = draw(st.booleans())
    vcpu = draw(st.integers(1, 8))
    current = draw(st.one_of(st.none(), st.integers(1, vcpu)))
    memory_mib = draw(st.sampled_from([256, 1024, 4096]))
    dom = etree.Element("domain", type="kvm")
    etree.SubElement(dom, "name").text = f"one-{VM_ID}"
    vcpu_el = etree.SubElement(dom, "vcpu")
    vcpu_el.text = str(vcpu)
    if current is not None and current < vcpu:
        vcpu_el.set("current", str(current))
    etree.SubElement(dom, "memory").text = str(memory_mib * 1024)
    if draw(st.booleans()):
        etree.SubElement(dom, "iothreads").text = str(draw(st.integers(1, 2)))
    os_el = etree.SubElement(dom, "os")
    etree.SubElement(os_el, "type", arch="x86_64", machine="q35" if q35 else "pc-i440fx-7.2").text = "hvm"
    features = etree.SubElement(dom, "features")
    etree.SubElement(features, "acpi")
    if draw(st.booleans()):
        hyperv = etree.SubElement(features, "hyperv")
        etree.SubElement(hyperv, "relaxed", state="on")
        etree.SubElement(hyperv, "vapic", state="on")
        etree.SubElement(hyperv, "spinlocks", state="on", retries="4096")
    etree.SubElement(dom, "cpu", mode=draw(st.sampled_from(["host-passthrough", "host-model"])))
    devices = etree.SubElement(dom, "devices")
    etree.SubElement(devices, "emulator").text = "/usr/bin/qemu-kvm-one"

    disks: list[dict[str, str]] = []
    kinds = draw(st.lists(st.sampled_from(["virtio", "scsi", "volatile", "cdrom"]), min_size=1, max_size=5)
                 .filter(lambda k: k.count("cdrom") <= 2))  # IDE has hda..hdd; the context CD-ROM needs one
    used: set[str] = set()
    scsi = False
    for disk_id, kind in enumerate(kinds):
        prefix = {"virtio": "vd", "scsi": "sd", "volatile": draw(st.sampled_from(["vd", "sd"])), "cdrom": "hd"}[kind]
        letter = next(c for c in "abcdefgh" if prefix + c not in used)
        target = prefix + letter
        used.add(target)
        disk_type = "file" if kind in ("volatile", "cdrom") else draw(st.sampled_from(["block", "file"]))
        el = etree.SubElement(devices, "disk", type=disk_type, device="cdrom" if kind == "cdrom" else "disk")
        etree.SubElement(el, "source", **{"file" if disk_type == "file" else "dev": f"{SYSTEM}/disk.{disk_id}"})
        bus = {"vd": "virtio", "sd": "scsi", "hd": "sata" if q35 else "ide"}[prefix]
        etree.SubElement(el, "target", dev=target, bus=bus)
        if kind == "cdrom":
            etree.SubElement(el, "readonly")
        etree.SubElement(el, "driver", name="qemu", type="raw", cache="none")
        scsi = scsi or bus == "scsi"
        entry = {"DISK_ID": str(disk_id), "TARGET": target, "TM_MAD": draw(st.sampled_from(["storpool", "ssh"])),
                 "DATASTORE_ID": "1"}
        if kind == "volatile":
            entry["TYPE"] = "FS"
        elif kind == "cdrom":
            entry.update(TYPE="CDROM", IMAGE_ID="3", CLONE="NO", READONLY="YES")
        else:
            persistent = draw(st.booleans())
            entry.update(TYPE="BLOCK", IMAGE_ID=str(10 + disk_id), CLONE="NO" if persistent else "YES",
                         PERSISTENT="YES" if persistent else "NO")
        disks.append(entry)
    context = None
    if draw(st.booleans()):
        context_id = len(kinds)
        target = next("hd" + c for c in "abcd" if "hd" + c not in used)
        el = etree.SubElement(devices, "disk", type="file", device="cdrom")
        etree.SubElement(el, "source", file=f"{SYSTEM}/disk.{context_id}")
        etree.SubElement(el, "target", dev=target, bus="sata" if q35 else "ide")
        etree.SubElement(el, "readonly")
        etree.SubElement(el, "driver", name="qemu", type="raw")
        context = {"DISK_ID": str(context_id), "TARGET": target}
    if scsi or draw(st.booleans()):
        ctl = etree.SubElement(devices, "controller", type="scsi", index="0", model="virtio-scsi")
        if draw(st.booleans()):
            etree.SubElement(ctl, "driver", queues=str(vcpu))

    nics: list[dict[str, str]] = []
    for nic_id in range(draw(st.integers(0, 3))):
        mac = f"02:00:0a:00:00:{nic_id + 1:02x}"
        el = etree.SubElement(devices, "interface", type="bridge")
        etree.SubElement(el, "source", bridge="br0")
        etree.SubElement(el, "mac", address=mac)
        etree.SubElement(el, "target", dev=f"one-{VM_ID}-{nic_id}")
        etree.SubElement(el, "model", type=draw(st.sampled_from(["virtio", "virtio", "e1000"])))
        nics.append({"NIC_ID": str(nic_id), "MAC": mac, "BRIDGE": "br0", "TARGET": f"one-{VM_ID}-{nic_id}"})
    pcis: list[dict[str, str]] = []
    for slot in range(draw(st.integers(0, 2))):
        el = etree.SubElement(devices, "hostdev", mode="subsystem", type="pci", managed="yes")
        src = etree.SubElement(el, "source")
        etree.SubElement(src, "address", domain="0x0000", bus="0xd8", slot="0x00", function=f"0x{slot + 5:x}")
        pci = {"DEVICE": "1515", "VENDOR": "8086", "CLASS": "0200", "SHORT_ADDRESS": f"d8:00.{slot + 5}"}
        if draw(st.booleans()):
            pci["MAC"] = f"02:00:11:ab:cd:{slot + 0x10:02x}"
        pcis.append(pci)
    etree.SubElement(devices, "graphics", type="vnc", listen="0.0.0.0", port="5907")
    if q35 and draw(st.booleans()):
        extra = etree.SubElement(dom, "devices")  # oned 6.x writes the q35 controllers in a second block
        etree.SubElement(extra, "controller", index="0", type="pci", model="pcie-root")
        for _ in range(draw(st.integers(0, 3))):
            etree.SubElement(extra, "controller", type="pci", model="pcie-root-port")
    meta = etree.SubElement(dom, "metadata")
    one = etree.SubElement(meta, "{http://opennebula.org/xmlns/libvirt/1.0}vm")
    etree.SubElement(one, "{http://opennebula.org/xmlns/libvirt/1.0}system_datastore").text = SYSTEM
    etree.SubElement(one, "{http://opennebula.org/xmlns/libvirt/1.0}name").text = f"vm-{VM_ID}"
    return etree.tostring(dom), {"disks": disks, "nics": nics, "pcis": pcis, "context": context}


attributes = st.sets(st.sampled_from(sorted(VALUES)), max_size=20).flatmap(
    lambda names: st.fixed_dictionaries({name: st.sampled_from(VALUES[name]) for name in sorted(names)}))


@PROPERTY
@given(vm=vms(), user=attributes)
def test_second_apply_changes_nothing(vm: tuple[bytes, dict[str, Any]], user: dict[str, str]) -> None:
    domain, parts = vm
    document = vm_document(etree.fromstring(domain), user, vm_id=VM_ID, **parts)
    problems = check(domain, document)
    assert not problems, "\n".join(problems)


@PROPERTY
@given(vm=vms())
def test_generated_domains_are_valid_inputs(vm: tuple[bytes, dict[str, Any]]) -> None:
    """The generator makes what oned makes: schema-valid once the <devices> blocks are merged
    (else the property above would test less than it claims)."""
    from idempotence import schema

    from tweaks import engine
    from tweaks.normalize import normalize
    from tweaks.xmledit import Editor

    tree = engine.parse_xml(vm[0], "domain")
    normalize(Editor(tree))
    assert schema().errors(tree) == frozenset()


SECURE = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"


@pytest.mark.parametrize("user", [
    {"T_CPU_MODEL": "EPYC-Rome:allow", "T_CPU_MODE": "delete"},
    {"T_CPU_MODEL": "EPYC-Rome:allow", "T_CPU_MODE": "host-model"},
    {"T_OS_LOADER": f"{SECURE}:secure=yes", "T_OS_SECURE_BOOT": "no"},
    {"T_OS_LOADER": f"{SECURE}:secure=no", "T_OS_SECURE_BOOT": "yes"},
    {"T_OS_LOADER": f"{SECURE}:secure=yes", "T_FEATURE_SMM": "on", "smm": "off"},
    {"T_FEATURE_SMM": "off", "T_OS_SECURE_BOOT": "no", "secure": "yes"},
    {"T_BLK_QUEUES": "yes", "T_SCSI_QUEUES": "2", "T_VCPU_MAX": "8"},
    {"T_IOTHREADS_OVERRIDE": "2", "T_SCSI_QUEUES": "1", "scsi": "none"},
    {"T_CPU_SOCKETS": "4", "T_VCPU_MAX": "8"},
    {"T_HV_CLOCK": "yes", "T_HV_TIME": "off", "hyperv": "yes"},
])
def test_attributes_that_pull_against_each_other(user: dict[str, str]) -> None:
    """Pairs of attributes whose rules used to undo each other, or to decide differently on
    their own output (found by the corpus test): one run gives the fixed point."""
    user = dict(user)
    root = etree.fromstring(deployment(), etree.XMLParser(strip_cdata=False))
    smm, secure, scsi = user.pop("smm", None), user.pop("secure", None), user.pop("scsi", None)
    features = root.find("features")
    if user.pop("hyperv", None):
        etree.SubElement(features, "hyperv").append(etree.Element("relaxed", state="on"))
    if smm is not None:
        etree.SubElement(features, "smm", state=smm)
    if secure is not None:
        root.find("os/loader").set("secure", secure)
    if scsi is not None:
        for ctl in root.findall("devices/controller[@type='scsi']"):
            ctl.getparent().remove(ctl)
    vm = etree.fromstring(vm_xml(user, vcpu=2))
    problems = check(etree.tostring(root), etree.tostring(vm))
    assert not problems, "\n".join(problems)
