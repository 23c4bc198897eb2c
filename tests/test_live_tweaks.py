"""The shipped rules reach qemu: boot the engine's output paused under the real libvirtd and
ask qemu (QMP, its command line) and libvirt (dumpxml) what the VM really got.

Every test compares against ``untweaked``: the same oned 6.10 deployment without any T_*
attribute, booted once per module. That control proves each assertion would fail if the
tweak were removed (oned's own values differ from what the tweak asks for).
"""

from __future__ import annotations

import copy as copy_module
from collections.abc import Callable, Iterator
from typing import Any

import livevm
import pytest
from conftest import apply, vm_xml
from livevm import (
    Daemon,
    LiveVMs,
    LoopDevices,
    bootable,
    deployment_disks,
    dumpxml,
    fixture_disks,
    iothreads,
    libvirtd,
    live,
    loopdev,
    peripherals,
    qemu_devices,
    qmp,
    qom_get,
    small_domain,
    start,
    vcpus,
)
from lxml import etree

from tweaks.engine import Outcome
from tweaks.report import APPLIED

live_vm = pytest.mark.libvirtd  # every test that boots a VM; the bootable() checks below need no daemon
# pytest fixtures from livevm: imported so pytest finds them here (named so the import counts as used)
FIXTURES = (libvirtd, live, loopdev, start, deployment_disks)

VCPU = 4
EVERY_TWEAK = {
    "T_IOTHREADS_OVERRIDE": "4", "T_SCSI_QUEUES": "2", "T_BLK_QUEUES": "yes",
    "T_CPU_SOCKETS": "2", "T_CPU_THREADS": "2", "T_CPU_MODEL": "EPYC-Rome",
    "T_CPU_FEATURES": "x2apic:disable,hypervisor:disable", "T_VIDEO_MODEL": "type=qxl heads=2",
}
MEMORY_MIB = 256
PERIPHERAL = "/machine/peripheral"


def tweaked(user: dict[str, str]) -> Outcome:
    """The shipped rules applied to the (shrunk) oned fixture for a VM with these attributes."""
    return apply(small_domain(vcpu=VCPU, memory_mib=MEMORY_MIB), vm_xml(user=user, vcpu=VCPU))


def status(outcome: Outcome, rule: str) -> str:
    found = [r for r in outcome.report.results if r.name == rule]
    assert found, f"rule {rule} did not run"
    return found[0].status


def device_args(name: str, dev_id: str) -> dict[str, Any]:
    """The JSON -device argument libvirt gave qemu for the device with this id."""
    found = [d for d in qemu_devices(name) if d.get("id") == dev_id]
    assert len(found) == 1, f"no -device with id {dev_id}"
    return found[0]


def cpu0(name: str) -> str:
    path: str = vcpus(name)[0]["qom-path"]
    return path


def topology(name: str) -> list[tuple[int, int, int]]:
    return sorted((c["props"]["socket-id"], c["props"]["core-id"], c["props"]["thread-id"]) for c in vcpus(name))


def observe(name: str) -> dict[str, Any]:
    """Everything the tests compare, read from the running qemu."""
    devices = peripherals(name)
    cpu = cpu0(name)
    return {
        "iothreads": sorted(t["id"] for t in iothreads(name)),
        "bindings": {dev: qom_get(name, f"{PERIPHERAL}/{dev}", "iothread")
                     for dev in ("virtio-disk0", "virtio-disk1", "scsi0")},
        "scsi_queues": qom_get(name, f"{PERIPHERAL}/scsi0", "num_queues"),
        "blk_queue_args": {dev: device_args(name, dev).get("num-queues") for dev in ("virtio-disk0", "virtio-disk1")},
        "topology": topology(name),
        "node_ids": sorted({c["props"].get("node-id") for c in vcpus(name)}, key=str),
        "memdevs": sorted(m["size"] for m in qmp(name, "query-memdev")),
        "cpu_type": qom_get(name, cpu, "type"),
        "x2apic": qom_get(name, cpu, "x2apic"),
        "hypervisor": qom_get(name, cpu, "hypervisor"),
        "video": devices["video0"],
    }


@pytest.fixture(scope="module")
def untweaked(libvirtd: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """What qemu gets from oned's deployment when no T_* attribute is set (booted once)."""
    directory = tmp_path_factory.mktemp("untweaked")
    loops = LoopDevices(directory)
    vms = LiveVMs(directory)
    try:
        outcome = tweaked({})
        assert not any(r.status == APPLIED for r in outcome.report.results
                       if r.name in ("iothreads", "scsi-queues", "blk-queues", "cpu-model", "cpu-topology",
                                     "cpu-features", "video"))
        name = vms.start(bootable(outcome.tree, fixture_disks(loops.attach, directory)))
        seen = observe(name)
        seen["blk_queues"] = {dev: qom_get(name, f"{PERIPHERAL}/{dev}", "num-queues")
                              for dev in ("virtio-disk0", "virtio-disk1")}
        yield seen
    finally:
        try:
            vms.destroy_all()
        finally:
            loops.detach_all()


@pytest.fixture
def boot(start: Callable[..., str], deployment_disks: dict[str, str],
         assert_valid: Callable[[bytes], None]) -> Callable[..., str]:
    """``boot(outcome, **bootable_options) -> name``: validated, started paused, destroyed at teardown."""
    def run(outcome: Outcome, **options: Any) -> str:
        assert_valid(outcome.tree)
        xml = bootable(outcome.tree, deployment_disks, **options)
        assert_valid(xml)
        return start(xml)

    return run


def live_element(name: str, xpath: str, root: etree._Element | None = None) -> etree._Element:
    """The one element at ``xpath`` in libvirt's live XML of the domain (or in ``root``)."""
    found = (dumpxml(name) if root is None else root).xpath(xpath)
    assert isinstance(found, list) and len(found) == 1, f"libvirt's live XML has {found!r} at {xpath}"
    element = found[0]
    assert isinstance(element, etree._Element)
    return element


# --------------------------------------------------------------------------- control


@live_vm
def test_untweaked_vm_gets_oneds_values(untweaked: dict[str, Any]) -> None:
    """The control: oned's <iothreads>2, queues 4, host CPU, 4 sockets, virtio video."""
    assert untweaked["iothreads"] == ["iothread1", "iothread2"]
    assert untweaked["scsi_queues"] == 4
    assert untweaked["blk_queue_args"] == {"virtio-disk0": None, "virtio-disk1": None}
    assert untweaked["topology"] == [(s, 0, 0) for s in range(VCPU)]
    assert untweaked["node_ids"] == [None]
    assert untweaked["memdevs"] == [MEMORY_MIB * 1024 * 1024]  # one RAM backend, no NUMA
    assert untweaked["cpu_type"] == "host-x86_64-cpu"
    assert untweaked["video"] == "virtio-vga"


# --------------------------------------------------------------------------- one tweak each


@live_vm
def test_iothreads_override_reaches_qemu(boot: Callable[..., str], untweaked: dict[str, Any]) -> None:
    outcome = tweaked({"T_IOTHREADS_OVERRIDE": "4"})
    assert status(outcome, "iothreads") == APPLIED
    name = boot(outcome)

    wanted = ["iothread1", "iothread2", "iothread3", "iothread4"]
    assert untweaked["iothreads"] != wanted
    assert sorted(t["id"] for t in iothreads(name)) == wanted
    assert live_element(name, "iothreads").text == "4"
    # every virtio disk and the virtio-scsi controller sits on its own iothread, as libvirt says
    bindings = observe(name)["bindings"]
    assert set(bindings.values()) <= {f"/objects/{t}" for t in wanted}
    assert len(set(bindings.values())) == 3, bindings
    live_xml = dumpxml(name)
    for dev, target in (("virtio-disk0", "vda"), ("virtio-disk1", "vdb")):
        iothread = live_element(name, f"devices/disk[target/@dev='{target}']/driver", live_xml).get("iothread")
        assert bindings[dev] == f"/objects/iothread{iothread}"
    controller = live_element(name, "devices/controller[@type='scsi'][@model='virtio-scsi']/driver", live_xml)
    assert bindings["scsi0"] == f"/objects/iothread{controller.get('iothread')}"


@live_vm
def test_scsi_queues_reach_qemu(boot: Callable[..., str], untweaked: dict[str, Any]) -> None:
    outcome = tweaked({"T_SCSI_QUEUES": "2"})
    assert status(outcome, "scsi-queues") == APPLIED
    name = boot(outcome)

    assert peripherals(name)["scsi0"] == "virtio-scsi-pci"
    assert untweaked["scsi_queues"] == 4
    assert qom_get(name, f"{PERIPHERAL}/scsi0", "num_queues") == 2
    assert live_element(name, "devices/controller[@type='scsi']/driver").get("queues") == "2"


@live_vm
def test_blk_queues_reach_qemu(boot: Callable[..., str], untweaked: dict[str, Any]) -> None:
    """T_BLK_QUEUES=YES: one queue per vCPU on each virtio-blk disk. qemu 7.2 would pick
    vCPUs queues by itself, so what proves the tweak is that libvirt passes num-queues."""
    outcome = tweaked({"T_BLK_QUEUES": "YES"})
    assert status(outcome, "blk-queues") == APPLIED
    name = boot(outcome)

    assert untweaked["blk_queue_args"] == {"virtio-disk0": None, "virtio-disk1": None}
    for dev, target in (("virtio-disk0", "vda"), ("virtio-disk1", "vdb")):
        assert peripherals(name)[dev] == "virtio-blk-pci"
        assert device_args(name, dev)["num-queues"] == VCPU
        assert qom_get(name, f"{PERIPHERAL}/{dev}", "num-queues") == VCPU
        assert live_element(name, f"devices/disk[target/@dev='{target}']/driver").get("queues") == str(VCPU)


@live_vm
def test_cpu_topology_reaches_qemu(boot: Callable[..., str], untweaked: dict[str, Any]) -> None:
    outcome = tweaked({"T_CPU_SOCKETS": "2", "T_CPU_THREADS": "2"})
    assert status(outcome, "cpu-topology") == APPLIED
    name = boot(outcome)

    wanted = [(0, 0, 0), (0, 0, 1), (1, 0, 0), (1, 0, 1)]  # 2 sockets x 1 core x 2 threads
    assert untweaked["topology"] != wanted
    assert topology(name) == wanted
    # one NUMA node per socket, memory split evenly
    assert all(c["props"]["node-id"] == c["props"]["socket-id"] for c in vcpus(name))
    assert sorted(m["size"] for m in qmp(name, "query-memdev")) == [MEMORY_MIB // 2 * 1024 * 1024] * 2
    assert untweaked["memdevs"] == [MEMORY_MIB * 1024 * 1024]
    topo = live_element(name, "cpu/topology")
    assert (topo.get("sockets"), topo.get("cores"), topo.get("threads")) == ("2", "1", "2")


@live_vm
def test_cpu_model_reaches_qemu(boot: Callable[..., str], untweaked: dict[str, Any]) -> None:
    """A named model (check='none' added by bootable(): this nested KVM lacks most features)."""
    outcome = tweaked({"T_CPU_MODEL": "EPYC-Rome"})
    assert status(outcome, "cpu-model") == APPLIED
    name = boot(outcome)

    assert untweaked["cpu_type"] == "host-x86_64-cpu"
    for cpu in vcpus(name):
        assert qom_get(name, cpu["qom-path"], "type") == "EPYC-Rome-x86_64-cpu"
    assert "EPYC-Rome" in qom_get(name, cpu0(name), "model-id")
    cpu = live_element(name, "cpu")
    assert cpu.get("mode") == "custom"
    assert cpu.findtext("model") == "EPYC-Rome"


@live_vm
def test_cpu_features_reach_qemu(boot: Callable[..., str], untweaked: dict[str, Any]) -> None:
    outcome = tweaked({"T_CPU_FEATURES": "x2apic:disable,hypervisor:disable"})
    assert status(outcome, "cpu-features") == APPLIED
    name = boot(outcome)

    assert (untweaked["x2apic"], untweaked["hypervisor"]) == (True, True)
    for cpu in vcpus(name):
        assert qom_get(name, cpu["qom-path"], "x2apic") is False
        assert qom_get(name, cpu["qom-path"], "hypervisor") is False
    live_cpu = live_element(name, "cpu")
    assert live_cpu.get("mode") == "host-passthrough"
    for feature in ("x2apic", "hypervisor"):
        assert live_cpu.find(f"feature[@name='{feature}']").get("policy") == "disable"


@live_vm
def test_video_model_reaches_qemu(boot: Callable[..., str], untweaked: dict[str, Any]) -> None:
    outcome = tweaked({"T_VIDEO_MODEL": "type=qxl heads=2"})
    assert status(outcome, "video") == APPLIED
    name = boot(outcome)

    assert untweaked["video"] == "virtio-vga"
    assert peripherals(name)["video0"] == "qxl-vga"
    assert qom_get(name, f"{PERIPHERAL}/video0", "max_outputs") == 2
    assert [d["class_info"].get("desc") for bus in qmp(name, "query-pci") for d in bus["devices"]
            if d["id"]["device"] == 0x0100 and d["id"]["vendor"] == 0x1B36]  # Red Hat QXL
    model = live_element(name, "devices/video/model")
    assert (model.get("type"), model.get("heads")) == ("qxl", "2")


# --------------------------------------------------------------------------- all at once


@live_vm
def test_all_tweaks_together_reach_qemu(boot: Callable[..., str], untweaked: dict[str, Any]) -> None:
    """The rules compose: one VM with every attribute gets every setting."""
    outcome = tweaked(EVERY_TWEAK)
    name = boot(outcome)

    seen = observe(name)
    expected = {
        "iothreads": ["iothread1", "iothread2", "iothread3", "iothread4"],
        "scsi_queues": 2,
        "blk_queue_args": {"virtio-disk0": VCPU, "virtio-disk1": VCPU},
        "topology": [(0, 0, 0), (0, 0, 1), (1, 0, 0), (1, 0, 1)],
        "node_ids": [0, 1],
        "memdevs": [MEMORY_MIB // 2 * 1024 * 1024] * 2,  # the control has one 256 MiB backend
        "cpu_type": "EPYC-Rome-x86_64-cpu",
        "x2apic": False,
        "hypervisor": False,
        "video": "qxl-vga",
    }
    for key, value in expected.items():
        assert untweaked[key] != value, f"control already has {key}={value}"
        assert seen[key] == value, key


# --------------------------------------------------------------------------- bootable() itself (no daemon)

HOST_DISKS = {"vda": "/dev/loop-fake", "sda": "/var/tmp/sda.img", "vdb": "/var/tmp/vdb.img", "hda": ""}


def _canonical(element: etree._Element) -> bytes:
    """The element alone (no tail), CDATA as text: equal bytes mean equal XML."""
    copy = copy_module.deepcopy(element)
    copy.tail = None
    return etree.tostring(copy, method="c14n")


def _without_quirks(cpu: etree._Element) -> bytes:
    cpu = copy_module.deepcopy(cpu)
    for attr in ("check", "migratable"):
        cpu.attrib.pop(attr, None)
    for feature in cpu.findall("feature[@name='arch-capabilities']"):
        cpu.remove(feature)
    return _canonical(cpu)


@pytest.mark.parametrize("user", [{}, EVERY_TWEAK], ids=["untweaked", "every-tweak"])
def test_bootable_keeps_what_the_rules_wrote(user: dict[str, str], assert_valid: Callable[[bytes], None],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(livevm, "_is_block", lambda path: path == "/dev/loop-fake")
    tree = tweaked(user).tree
    before = tree.getroot()
    after = etree.fromstring(bootable(tree, HOST_DISKS, accel="kvm"))
    assert_valid(etree.tostring(after))
    assert etree.tostring(tree) == etree.tostring(before.getroottree()), "bootable() changed its input"

    def same(xpath: str) -> None:
        old, new = before.xpath(xpath), after.xpath(xpath)
        assert old or not user, f"nothing at {xpath} to compare"
        assert [_canonical(e) for e in old] == [_canonical(e) for e in new], xpath

    for xpath in ("iothreads", "vcpu", "devices/disk/driver", "devices/disk/target", "devices/disk/iotune",
                  "devices/controller", "devices/video", "devices/interface/model", "devices/channel",
                  "cpu/model", "cpu/topology", "cpu/numa", "cpu/feature[@name!='arch-capabilities']"):
        same(xpath)
    assert _without_quirks(before.find("cpu")) == _without_quirks(after.find("cpu"))
    # what was changed: identity, emulator, backing, network, graphics, firmware
    assert after.findtext("name") != before.findtext("name")
    assert after.findtext("name").startswith("one-tweaks-live-") and after.findtext("uuid")
    assert after.findtext("devices/emulator") == "/usr/bin/qemu-system-x86_64"
    assert after.xpath("devices/disk[target/@dev='vda']/source/@dev") == ["/dev/loop-fake"]
    assert after.xpath("devices/disk[target/@dev='vda']/@type") == ["block"]
    assert after.xpath("devices/disk[target/@dev='sda']/source/@file") == ["/var/tmp/sda.img"]
    assert after.find("devices/disk[@device='cdrom']/source") is None
    assert after.xpath("devices/interface/@type") == ["ethernet"]
    assert after.find("devices/interface/source") is None and after.find("devices/interface/target") is None
    assert after.xpath("devices/graphics/@listen") == ["127.0.0.1"]
    assert after.find("devices/graphics").get("port") is None
    assert after.find("os/loader") is None and after.find("os/nvram") is None
    cpu = after.find("cpu")
    if cpu.get("mode") == "host-passthrough":
        assert (cpu.get("check"), cpu.get("migratable")) == ("none", "on")
        assert cpu.find("feature[@name='arch-capabilities']").get("policy") == "disable"
    else:
        assert cpu.get("check") == "none"


def test_bootable_refuses_a_disk_without_backing() -> None:
    with pytest.raises(ValueError, match="vdb"):
        bootable(tweaked({}).tree, {"vda": "/var/tmp/a", "sda": "/var/tmp/b", "hda": ""})
    dropped = etree.fromstring(bootable(tweaked({}).tree, {**HOST_DISKS, "vdb": None}, network="none"))
    assert dropped.xpath("devices/disk/target/@dev") == ["vda", "sda", "hda"]
    assert dropped.find("devices/interface") is None
