"""Hot-plugged devices get exactly what deploy gives them: real libvirtd + qemu, the VM's disks
block volumes of the StorPool and LINSTOR simulators made by the TM drivers, oned's side played
by tests/sim/frontend.py (deployment file, TM lines, the VMM local overrides with oned's argv).

The same VM (same id, so the same paths and serials) is deployed twice: once with all its
disks and its NIC (deploy-tweaks shapes them), once without them, after which they are
hot-plugged through ``attach_disk-tweaks`` (a virtio-blk and a virtio-scsi disk) and
``attach_nic-tweaks``. libvirt's own live XML of each device is then compared, device by
device (libvirt's ``<alias>`` and ``<address>`` aside): driver (cache, io, discard,
iothread, queues, ioeventfd), serial, target, source.

This machine has no /dev/vhost-net, so a NIC with virtio queues (``<driver name='vhost'
queues=...>``, what nic_queues writes) cannot start here: the NIC compared live is a plain
virtio NIC; its queue count is compared without qemu in tests/test_device_rules.py.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from linstor_env import LinstorCloud, lcloud
from livevm import dumpxml, libvirtd, virsh
from lxml import etree
from sim.frontend import Frontend
from storage_env import Cloud, cloud, sshd
from test_drift import drift
from test_vmm_disks import run_vmm

from tweaks import provenance

# VM ids (so domain names) of this session: concurrent pytest sessions share one libvirtd
BASE_ID = 100000 + os.getpid() % 100000 * 8
FIXTURES = (cloud, lcloud, sshd, libvirtd)
pytestmark = [pytest.mark.libvirtd, pytest.mark.usefixtures("libvirtd")]

USER = {"T_IOTHREADS_OVERRIDE": "2", "T_BLK_QUEUES": "yes", "T_DISKSERIAL": "yes", "T_IOEVENTFD": "yes"}
DISK_DRIVER = """name: disk-driver
tweaks:
  - disk_driver:
      tm_mads: storpool, linstor_un
      cache: writeback
      io: threads
      discard: ignore
"""


def _rules(cloud: Cloud, tmp_path: Path) -> None:
    rules = tmp_path / "site-rules"
    rules.mkdir()
    (rules / "52-disk-driver.yaml").write_text(DISK_DRIVER)
    cloud.configure(TWEAKS_RULES_DIRS=str(rules), DELAY_DELETE=0)


def _register(cloud: Cloud, vm_id: int, images: tuple[int, int, int]) -> etree._Element:
    boot, blk, scsi = images
    vm = cloud.make_vm(vm_id, disks=[{"image": boot, "size": 16}, {"image": blk, "size": 16},
                                     {"image": scsi, "size": 16, "TARGET": "sda", "DEV_PREFIX": "sd"}],
                       context=False, user=USER, template={"VCPU": 2, "MEMORY": 128})
    for el in vm.findall("TEMPLATE/GRAPHICS"):
        el.getparent().remove(el)  # type: ignore[union-attr]
    nic = vm.find("TEMPLATE/NIC")
    assert nic is not None
    for tag, value in (("TARGET", f"one-{vm_id}-0"), ("MAC", f"02:00:0a:{vm_id % 100:02d}:00:01"),
                       ("VN_MAD", "ethernet"), ("MODEL", "virtio")):
        nic.find(tag).text = value  # type: ignore[union-attr]
    for tag in ("BRIDGE", "BRIDGE_TYPE"):  # no bridge here: type ethernet (a tap libvirt makes)
        nic.remove(nic.find(tag))  # type: ignore[arg-type]
    return vm


def _device(el: etree._Element) -> bytes:
    """A live device without what libvirt assigns per plug (alias, PCI/drive address, the
    block node index of its source); source paths with oned's "//" collapsed (the overrides
    get the path checked and normalised, the deployment file has DATASTORE_LOCATION as is)."""
    el = copy.deepcopy(el)
    for tag in ("alias", "address"):
        for found in el.findall(tag):
            el.remove(found)
    for source in el.findall("source"):
        source.attrib.pop("index", None)
        for attr in ("dev", "file"):
            if source.get(attr):
                source.set(attr, re.sub("/{2,}", "/", source.get(attr, "")))
    for node in el.iter():
        node.tail = None
        if node.text is not None and not node.text.strip():
            node.text = None
    return etree.tostring(el, method="c14n")


def _devices(name: str) -> dict[str, bytes]:
    live = dumpxml(name)
    out = {f"disk {d.find('target').get('dev')}": _device(d) for d in live.iterfind("devices/disk")}
    out.update({f"nic {i.find('mac').get('address')}": _device(i) for i in live.iterfind("devices/interface")})
    return out


@dataclass
class AfterHotplug:
    stamp: provenance.Provenance | None          # the running domain's, after the hot-plugs
    drift: subprocess.CompletedProcess[str]      # one-tweaks drift of the untouched VM


def _deploy_then_hotplug(cloud: Cloud, vm_id: int, images: tuple[int, int, int],
                         nic: bool) -> tuple[dict[str, bytes], dict[str, bytes], AfterHotplug]:
    fe = Frontend(cloud, nics=True)
    name = f"one-{vm_id}"
    try:
        _register(cloud, vm_id, images)
        fe.deploy(vm_id)
        deployed = _devices(name)
        stamp = provenance.read(dumpxml(name))
        assert stamp is not None and stamp.changed_by()["disk-driver"] == ["disk_driver"]
        _gone(name)  # before the epilog; a loaded machine can need more than one destroy
        fe.terminate(vm_id)

        vm = _register(cloud, vm_id, images)
        later = vm.findall("TEMPLATE/DISK")[1:]
        for disk in later:
            disk.getparent().remove(disk)  # type: ignore[union-attr]
        late_nic = vm.find("TEMPLATE/NIC")
        assert late_nic is not None
        if nic:
            late_nic.getparent().remove(late_nic)  # type: ignore[union-attr]
        fe.deploy(vm_id)
        assert sorted(_devices(name)) == ["disk vda"] + ([] if nic else [f"nic {late_nic.findtext('MAC')}"])
        for disk in later:
            fe.attach_disk(vm_id, disk)
        if nic:
            fe.attach_nic(vm_id, late_nic)
        assert not [err for _, err in fe.stderr if b"provenance not recorded" in err]
        after = AfterHotplug(provenance.read(dumpxml(name)), drift(cloud, "--host", "node1", str(vm_id)))
        return deployed, _devices(name), after
    finally:
        virsh("destroy", name, check=False, timeout=120)


def _gone(name: str) -> None:
    deadline = time.monotonic() + 180
    while virsh("domstate", name, check=False).returncode == 0:
        assert time.monotonic() < deadline, f"{name} would not go away"
        virsh("destroy", name, check=False, timeout=120)
        time.sleep(1)


def _same(deployed: dict[str, bytes], hotplugged: dict[str, bytes]) -> None:
    assert sorted(hotplugged) == sorted(deployed)
    for key in sorted(deployed):
        assert hotplugged[key] == deployed[key], (
            f"{key}:\n deployed   {deployed[key]!r}\n hotplugged {hotplugged[key]!r}")


def test_storpool_disks_and_a_nic_hot_plugged_equal_the_deployed_ones(cloud: Cloud, tmp_path: Path) -> None:
    _rules(cloud, tmp_path)
    for image in (71, 72, 73):
        cloud.make_volume(f"one-img-{image}", 16, data=f"image {image}".encode() * 64)
    deployed, hotplugged, after = _deploy_then_hotplug(cloud, BASE_ID + 0, (71, 72, 73), nic=True)
    _same(deployed, hotplugged)
    # the running domain's provenance names each hot-plug and the rule files that shaped it
    # (setMetadata, live); drift still finds nothing: the deploy's stamp and inputs are as they were
    assert after.stamp is not None and after.stamp.changed_by()["disk-driver"] == ["disk_driver"]
    mac = f"02:00:0a:{(BASE_ID + 0) % 100:02d}:00:01"
    plugs = {(p.device, p.target, p.action): p for p in after.stamp.hotplugs}
    assert sorted(plugs) == [("disk", "sda", "attach_disk-tweaks"), ("disk", "vdb", "attach_disk-tweaks"),
                             ("interface", mac, "attach_nic-tweaks")]
    vdb = plugs["disk", "vdb", "attach_disk-tweaks"]
    by_rule = {r.name: r for r in vdb.rules}
    assert by_rule["disk-driver"].tweaks == ["disk_driver"] and by_rule["disk-driver"].file == "52-disk-driver.yaml"
    assert by_rule["disk-driver"].sha256 == hashlib.sha256(DISK_DRIVER.encode()).hexdigest()
    assert {"iothreads", "disk_serial"} & {t for r in vdb.rules for t in r.tweaks}, vdb.rules
    assert all(r.status == "applied" and r.tweaks for p in plugs.values() for r in p.rules)
    assert after.drift.returncode == 0, after.drift.stdout + after.drift.stderr
    assert after.drift.stdout.endswith(": no drift\n") and after.drift.stderr == ""
    vdb = etree.fromstring(hotplugged["disk vdb"])
    drv = vdb.find("driver")
    # what the rules gave it: iothread round-robin (2nd virtio disk), one queue per vCPU, the
    # site rule's driver settings, ioeventfd, a serial
    assert (drv.get("iothread"), drv.get("queues"), drv.get("cache"), drv.get("io"), drv.get("discard"),
            drv.get("ioeventfd")) == ("2", "2", "writeback", "threads", "ignore", "on")
    assert vdb.findtext("serial")
    sda = etree.fromstring(hotplugged["disk sda"])
    assert sda.find("target").get("bus") == "scsi" and sda.find("driver").get("cache") == "writeback"
    assert sda.findtext("serial") and sda.find("driver").get("queues") is None


def test_linstor_disks_hot_plugged_equal_the_deployed_ones(lcloud: LinstorCloud, tmp_path: Path) -> None:
    _rules(lcloud, tmp_path)
    for image in (81, 82, 83):
        lcloud.make_image(image, size_mb=16)
        lcloud.make_volume(f"one-image-{image}", 16, data=f"image {image}".encode() * 64, tags={"virt": "one"})
    deployed, hotplugged, _ = _deploy_then_hotplug(lcloud, BASE_ID + 1, (81, 82, 83), nic=False)
    _same(deployed, hotplugged)
    drv = etree.fromstring(hotplugged["disk vdb"]).find("driver")
    assert (drv.get("iothread"), drv.get("queues"), drv.get("cache")) == ("2", "2", "writeback")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("bad-mac", "MAC '02:00:zz' is not a MAC address"),
        ("other-mac", "the attached NIC has MAC '02:00:0a:93:00:01', not 02:00:0a:93:00:02"),
        ("queues", "NIC VIRTIO_QUEUES='4; reboot' is not a whole number or auto"),
        ("model", "NIC MODEL='virtio\"/><x' is not a model name"),
    ],
)
def test_attach_nic_bad_input_fails_with_one_line(cloud: Cloud, case: str, expected: str) -> None:
    vm = _register(cloud, 7393, (71, 72, 73))  # no domain: a fixed id is fine
    nic = vm.find("TEMPLATE/NIC")
    etree.SubElement(nic, "ATTACH").text = "YES"
    mac = nic.findtext("MAC")
    if case == "queues":
        etree.SubElement(nic, "VIRTIO_QUEUES").text = "4; reboot"
    if case == "model":
        nic.find("MODEL").text = 'virtio"/><x'
    argv = ["one-7393", {"bad-mac": "02:00:zz", "other-mac": "02:00:0a:93:00:02"}.get(case, mac),
            "-", "virtio", "ethernet", "one-7393-0", "7393", "node1"]
    msg = base64.b64encode(Frontend(cloud, nics=True).message(7393))
    proc = run_vmm(cloud, "attach_nic-tweaks", *argv, stdin=msg)
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and expected in lines[0], lines
    assert not cloud.libvirt_tunnels(), "nothing reached libvirt"
