"""Disk and device tweaks reach qemu: the engine's output is booted (paused unless running
matters) under the real libvirtd and qemu is asked (QMP, its command line) what it got.

Each test compares with a control: ``untweaked`` (oned's deployment, shipped rules, no T_*
attribute, booted once per module) or a control built in the test (the same document with
values the rule does not act on), so every assertion would fail if the tweak or its rule
file were gone. Exact values are asserted. Machine limits (no /dev/vhost-net, no SR-IOV VFs)
are explained where a test cannot reach qemu itself.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import uuid as uuid_module
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, apply, vm_xml, write_rule
from livevm import (
    EMULATOR,
    NAME_PREFIX,
    Daemon,
    LiveVMs,
    LoopDevices,
    bootable,
    deployment_disks,
    domain_name,
    dumpxml,
    fixture_disks,
    libvirtd,
    live,
    loopdev,
    peripherals,
    qemu_argv,
    qemu_devices,
    qmp,
    qom_get,
    small_domain,
    start,
    virsh,
)
from lxml import etree

from tweaks.engine import Outcome
from tweaks.report import APPLIED, DISABLED, UNCHANGED

live_vm = pytest.mark.libvirtd
# pytest fixtures from livevm: imported so pytest finds them here (named so the import counts as used)
FIXTURES = (libvirtd, live, loopdev, start, deployment_disks)

VCPU = 4
MEMORY_MIB = 256
PERIPHERAL = "/machine/peripheral"
ONED_SYSTEM_DIR = "/var/lib/one//datastores/101/42"  # oned's <system_dir> in deployment.0.xml
VIRTIO_DEVICES = ("virtio-disk0", "virtio-disk1", "scsi0")  # vda, vdb, the virtio-scsi controller
SERIAL_DISKS = {"vda": "virtio-disk0", "vdb": "virtio-disk1", "sda": "scsi0-0-0-0"}
RED_HAT = 0x1B36
PCIE_ROOT_PORT = 0x000C  # qemu's pcie-root-port PCI device id
MQ_FEATURE = "VIRTIO_NET_F_MQ"


# --------------------------------------------------------------------------- documents


def tweaked(user: dict[str, str] | None = None, *, domain: bytes | None = None, vm: bytes | None = None,
            rules: list[str] | None = None) -> Outcome:
    """The shipped rules (plus ``rules`` dirs) applied to the shrunk oned fixture."""
    return apply(domain or small_domain(vcpu=VCPU, memory_mib=MEMORY_MIB),
                 vm or vm_xml(user=user or {}, vcpu=VCPU), rules or [])


def status(outcome: Outcome, rule: str) -> str:
    found = [r for r in outcome.report.results if r.name == rule]
    assert found, f"rule {rule} did not run"
    return found[0].status


def one(root: etree._Element, xpath: str) -> etree._Element:
    found = root.xpath(xpath)
    assert isinstance(found, list) and len(found) == 1, f"{found!r} at {xpath}"
    element = found[0]
    assert isinstance(element, etree._Element)
    return element


def disk_el(root: etree._Element, target: str) -> etree._Element:
    return one(root, f"devices/disk[target/@dev='{target}']")


def on_system_datastore(system_dir: Path, *, strip_driver: bool = False) -> bytes:
    """oned's deployment with ``<system_dir>`` = ``system_dir`` (a DATASTORE_LOCATION elsewhere),
    the volatile disk vdb written ``type='file'`` as oned does for a system datastore with
    DISK_TYPE=FILE, and with ``strip_driver`` no cache/io/discard on any driver (an oned without
    DISK defaults in vmm_exec_kvm.conf)."""
    data = small_domain(vcpu=VCPU, memory_mib=MEMORY_MIB).replace(ONED_SYSTEM_DIR.encode(), str(system_dir).encode())
    root = etree.fromstring(data)
    vdb = disk_el(root, "vdb")
    vdb.set("type", "file")
    source = vdb.find("source")
    del source.attrib["dev"]
    source.set("file", str(system_dir / "disk.2"))
    if strip_driver:
        for driver in root.iter("driver"):
            for attr in ("cache", "io", "discard"):
                driver.attrib.pop(attr, None)
    return etree.tostring(root)


def vm_on(tm_mad: str, *, drop_disk_io: bool = False) -> bytes:
    """vm-42 with every DISK/TM_MAD and the HISTORY TM_MAD (the system datastore's) = ``tm_mad``;
    ``drop_disk_io`` removes DISK/IO (oned's native value would win over the rule's)."""
    root = etree.fromstring(vm_xml(vcpu=VCPU))
    for path in ("TEMPLATE/DISK/TM_MAD", "HISTORY_RECORDS/HISTORY/TM_MAD"):
        for element in root.iterfind(path):
            element.text = tm_mad
    if drop_disk_io:
        for disk in root.iterfind("TEMPLATE/DISK"):
            io = disk.find("IO")
            if io is not None:
                disk.remove(io)
    return etree.tostring(root)


def without_iothreads() -> tuple[bytes, bytes]:
    """oned's deployment and VM for a VM without FEATURES/IOTHREADS (no <iothreads>, no iothread=)."""
    domain = etree.fromstring(small_domain(vcpu=VCPU, memory_mib=MEMORY_MIB))
    domain.remove(domain.find("iothreads"))
    for driver in domain.iter("driver"):
        driver.attrib.pop("iothread", None)
    vm = etree.fromstring(vm_xml(user={"T_IOEVENTFD": "no"}, vcpu=VCPU))
    features = vm.find("TEMPLATE/FEATURES")
    features.remove(features.find("IOTHREADS"))
    return etree.tostring(domain), etree.tostring(vm)


def enabled_copy(directory: Path, shipped: str) -> str:
    """The shipped (disabled) rule file, switched on, in an operator's rules dir of the same name."""
    text = (ROOT / "rules.d" / shipped).read_text()
    assert text.count("enabled: false") == 1, f"rules.d/{shipped} is no longer a disabled rule"
    write_rule(directory, shipped, text.replace("enabled: false", "enabled: true"))
    return str(directory)


def as_engine_wrote(engine: etree._ElementTree, booted: bytes, targets: tuple[str, ...], keep_uuid: bool) -> bytes:
    """bootable() output with the engine's own ``<disk>`` for ``targets`` (bootable() would
    pick type='block'/'file' itself, i.e. do the tweak's work) and the engine's ``<uuid>``."""
    root = etree.fromstring(booted)
    wrote = engine.getroot()
    for target in targets:
        mine = disk_el(root, target)
        theirs = copy.deepcopy(disk_el(wrote, target))
        theirs.tail = mine.tail
        mine.getparent().replace(mine, theirs)
    if keep_uuid:
        wanted = wrote.findtext("uuid")
        if wanted is None:
            root.remove(root.find("uuid"))
        else:
            root.find("uuid").text = wanted
    return etree.tostring(root)


def definable(engine: etree._ElementTree) -> bytes:
    """The engine's output as it is, with a unique name, no <uuid> and this machine's qemu."""
    root = copy.deepcopy(engine.getroot())
    root.find("name").text = f"{NAME_PREFIX}def-{uuid_module.uuid4().hex[:8]}"
    found = root.find("uuid")
    if found is not None:
        root.remove(found)
    root.find("devices/emulator").text = EMULATOR
    return etree.tostring(root)


# --------------------------------------------------------------------------- asking qemu


def json_args(name: str, flag: str) -> list[dict[str, Any]]:
    """The JSON values of every ``flag`` (-blockdev, -netdev, -device) on qemu's command line."""
    return [json.loads(value) for option, value in itertools.pairwise(qemu_argv(name))
            if option == flag and value.startswith("{")]


def plain_args(name: str, flag: str) -> list[str]:
    return [value for option, value in itertools.pairwise(qemu_argv(name)) if option == flag]


def device_args(name: str, dev_id: str) -> dict[str, Any]:
    found = [d for d in qemu_devices(name) if d.get("id") == dev_id]
    assert len(found) == 1, f"no -device with id {dev_id}"
    return found[0]


def storage_node(name: str, path: str) -> dict[str, Any]:
    """The -blockdev protocol node qemu opened ``path`` with."""
    found = [b for b in json_args(name, "-blockdev") if b.get("filename") == path]
    assert len(found) == 1, f"no single -blockdev for {path}: {found}"
    return found[0]


def format_node(name: str, storage: dict[str, Any]) -> dict[str, Any]:
    found = [b for b in json_args(name, "-blockdev") if b.get("file") == storage["node-name"]]
    assert len(found) == 1, f"no format node over {storage['node-name']}"
    return found[0]


def opened_as(name: str) -> dict[str, str]:
    """``{path: qemu protocol driver}`` of every open block node (query-named-block-nodes)."""
    return {n["file"]: n["drv"] for n in qmp(name, "query-named-block-nodes") if n["node-name"].endswith("-storage")}


def drives(name: str) -> dict[str, dict[str, Any]]:
    """query-block entries by qdev id (virtio-blk drives are listed as .../virtio-disk0/virtio-backend)."""
    found = {}
    for entry in qmp(name, "query-block"):
        qdev = entry["qdev"].removeprefix(f"{PERIPHERAL}/").removesuffix("/virtio-backend")
        found[qdev] = entry
    return found


def removable(name: str) -> dict[str, str | None]:
    """Removable drives: ``{qdev: inserted file or None}``."""
    return {qdev: e["inserted"]["file"] if "inserted" in e else None
            for qdev, e in drives(name).items() if e["removable"]}


def root_ports(name: str) -> tuple[int, int]:
    """pcie-root-port devices: (by libvirt's -device, by qemu's PCI bus 0 scan)."""
    by_libvirt = sum(1 for d in qemu_devices(name) if d["driver"] == "pcie-root-port")
    on_bus = sum(1 for bus in qmp(name, "query-pci") for d in bus["devices"]
                 if (d["id"]["vendor"], d["id"]["device"]) == (RED_HAT, PCIE_ROOT_PORT))
    return by_libvirt, on_bus


def nic_queues(name: str, nic: str) -> dict[str, Any]:
    """What qemu got for a NIC: tap fds (one per queue), mq, MSI-X vectors, MQ host feature."""
    device = device_args(name, nic)
    netdev = next(n for n in json_args(name, "-netdev") if n["id"] == device["netdev"])
    fds = netdev["fds"].split(":") if "fds" in netdev else [netdev["fd"]]
    status = qmp(name, "x-query-virtio-status", {"path": f"{PERIPHERAL}/{nic}/virtio-backend"})
    features = [f.split(":")[0] for f in status["host-features"]["dev-features"]]
    return {"taps": len(fds), "mq": device.get("mq"), "vectors": device.get("vectors"),
            "mq_feature": MQ_FEATURE in features, "qom_mq": qom_get(name, f"{PERIPHERAL}/{nic}", "mq")}


def md5_20(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()[:20]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def untweaked(libvirtd: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """oned's deployment with the shipped rules and no attribute, booted once: what qemu gets
    when no tweak acts."""
    directory = tmp_path_factory.mktemp("untweaked-disks")
    loops = LoopDevices(directory)
    vms = LiveVMs(directory)
    try:
        outcome = tweaked({})
        changed = [r.name for r in outcome.report.results if r.status == APPLIED]
        assert changed == [], f"shipped rules changed a VM without attributes: {changed}"
        disks = fixture_disks(loops.attach, directory)
        name = vms.start(bootable(outcome.tree, disks))
        insert = virsh("change-media", name, "hdb", disks["hda"], "--insert", check=False)
        yield {
            "engine": outcome.tree,
            "disks": disks,
            "serials": {dev: qom_get(name, f"{PERIPHERAL}/{dev}", "serial") for dev in SERIAL_DISKS.values()},
            "devices": {d["id"]: d for d in qemu_devices(name) if "id" in d},
            "ioeventfd": {dev: qom_get(name, f"{PERIPHERAL}/{dev}", "ioeventfd") for dev in VIRTIO_DEVICES},
            "removable": removable(name),
            "insert_hdb": (insert.returncode, insert.stderr.strip()),
            "root_ports": root_ports(name),
            "smbios": plain_args(name, "-smbios"),
            "uuid": qmp(name, "query-uuid")["UUID"],
            "net0": nic_queues(name, "net0"),
            "hda_storage": storage_node(name, disks["hda"]),
            "hda_cache": drives(name)["sata0-0-0"]["inserted"]["cache"],
        }
    finally:
        try:
            vms.destroy_all()
        finally:
            loops.detach_all()


@pytest.fixture
def launch(start: Callable[..., str], deployment_disks: dict[str, str],
           assert_valid: Callable[[bytes | etree._ElementTree], None]) -> Callable[..., str]:
    """``launch(outcome, disks=None, keep=(), keep_uuid=False, edit=None, paused=True) -> name``.

    bootable() with ``disks`` (default: ``deployment_disks``), then the engine's own disks for
    the targets in ``keep``, its own uuid with ``keep_uuid``, and ``edit(root)`` if given;
    validated, started, destroyed at teardown."""

    def run(outcome: Outcome, *, disks: dict[str, str] | None = None, keep: tuple[str, ...] = (),
            keep_uuid: bool = False, edit: Callable[[etree._Element], None] | None = None,
            paused: bool = True) -> str:
        assert_valid(outcome.tree)
        xml = bootable(outcome.tree, {**(deployment_disks if disks is None else disks), **dict.fromkeys(keep, "")})
        xml = as_engine_wrote(outcome.tree, xml, keep, keep_uuid)
        if edit is not None:
            root = etree.fromstring(xml)
            edit(root)
            xml = etree.tostring(root)
        assert_valid(xml)
        return start(xml, paused=paused)

    return run


@pytest.fixture
def system_dir(loopdev: Callable[..., str], tmp_path: Path) -> Path:
    """A system datastore dir ``.../101/42`` whose disk.0..disk.3 are symlinks to loop devices,
    as the StorPool and LINSTOR TM drivers leave them."""
    directory = tmp_path / "datastores" / "101" / "42"
    directory.mkdir(parents=True)
    for n in range(4):
        (directory / f"disk.{n}").symlink_to(loopdev(16))
    return directory


@pytest.fixture
def define(libvirtd: Daemon, tmp_path: Path) -> Iterator[Callable[[bytes], str]]:
    """``define(xml) -> name``: ``virsh define`` (the real qemu driver); undefined at teardown."""
    names: list[str] = []

    def run(xml: bytes) -> str:
        name = domain_name(xml)
        path = tmp_path / f"{name}.xml"
        path.write_bytes(xml)
        virsh("define", str(path))
        names.append(name)
        return name

    yield run
    failed = [n for n in names if virsh("undefine", n, "--keep-nvram", check=False).returncode != 0]
    assert not failed, f"could not undefine {failed}"


def block_disks(system_dir: Path) -> dict[str, str]:
    """bootable() backing for the image disks: the disk.N links themselves (block devices)."""
    return {"vda": str(system_dir / "disk.0"), "sda": str(system_dir / "disk.1")}


# --------------------------------------------------------------------------- volatile_block, context_block


@live_vm
@pytest.mark.parametrize("tm_mad", ["storpool", "linstor_un"])
def test_volatile_and_context_disks_open_as_host_devices(launch: Callable[..., str], system_dir: Path,
                                                        tm_mad: str) -> None:
    """The volatile disk vdb (disk.2) and the context CD-ROM (disk.3), written type='file' by
    oned, are symlinks to block devices on these TM drivers. qemu 7.2's 'file' driver refuses a
    block device, so without the rules the VM cannot start; with them qemu opens both as
    host_device. Control: the same VM on TM_MAD blk (not listed in the rules)."""
    domain = on_system_datastore(system_dir)
    disk2, disk3 = str(system_dir / "disk.2"), str(system_dir / "disk.3")

    control = tweaked(domain=domain, vm=vm_on("blk"))
    assert (status(control, "volatile-block"), status(control, "context-block")) == (UNCHANGED, UNCHANGED)
    for target in ("vdb", "hda"):
        assert disk_el(control.tree.getroot(), target).get("type") == "file"
    with pytest.raises(AssertionError, match=f"'file' driver requires '{disk2}' to be a regular file"):
        launch(control, disks=block_disks(system_dir), keep=("vdb", "hda"))

    outcome = tweaked(domain=domain, vm=vm_on(tm_mad))
    assert (status(outcome, "volatile-block"), status(outcome, "context-block")) == (APPLIED, APPLIED)
    for target, path in (("vdb", disk2), ("hda", disk3)):
        disk = disk_el(outcome.tree.getroot(), target)
        assert disk.get("type") == "block"
        assert disk.find("source").attrib == {"dev": path}
    name = launch(outcome, disks=block_disks(system_dir), keep=("vdb", "hda"))

    assert opened_as(name) == dict.fromkeys((str(system_dir / f"disk.{n}") for n in range(4)), "host_device")
    for path in (disk2, disk3):
        assert storage_node(name, path)["driver"] == "host_device"
    seen = drives(name)
    assert seen["virtio-disk1"]["inserted"]["file"] == disk2
    assert seen["virtio-disk1"]["inserted"]["image"]["virtual-size"] == 16 * 1024 * 1024  # the loop device
    assert (seen["sata0-0-0"]["inserted"]["file"], seen["sata0-0-0"]["inserted"]["ro"]) == (disk3, True)
    live_xml = dumpxml(name)
    for target, path in (("vdb", disk2), ("hda", disk3)):
        assert disk_el(live_xml, target).get("type") == "block"
        assert disk_el(live_xml, target).find("source").get("dev") == path


# --------------------------------------------------------------------------- disk_serial


@live_vm
@pytest.mark.parametrize("mode", ["yes", "hashpath"])
def test_disk_serials_reach_qemu(launch: Callable[..., str], untweaked: dict[str, Any], mode: str) -> None:
    """T_DISKSERIAL: the guest-visible serial of virtio-blk (vda, vdb) and scsi-hd (sda).
    yes: md5 of "<vm>-<disk>" (non-persistent image), "persistent-<image>", "volatile-<disk>";
    hashpath: md5 of oned's source path. CD-ROMs get none."""
    if mode == "yes":
        texts = {"vda": "42-0", "sda": "persistent-8", "vdb": "volatile-2"}
    else:
        texts = {dev: f"{ONED_SYSTEM_DIR}/disk.{n}" for dev, n in (("vda", 0), ("sda", 1), ("vdb", 2))}
    wanted = {SERIAL_DISKS[dev]: md5_20(text) for dev, text in texts.items()}
    outcome = tweaked({"T_DISKSERIAL": mode})
    assert status(outcome, "disk-serial") == APPLIED
    name = launch(outcome)

    assert untweaked["serials"] == dict.fromkeys(SERIAL_DISKS.values(), "")
    assert {dev: qom_get(name, f"{PERIPHERAL}/{dev}", "serial") for dev in SERIAL_DISKS.values()} == wanted
    for dev, serial in wanted.items():
        assert "serial" not in untweaked["devices"][dev]
        assert device_args(name, dev)["serial"] == serial
    assert device_args(name, "scsi0-0-0-0")["device_id"] == wanted["scsi0-0-0-0"]  # SCSI VPD page 0x83 too
    assert "serial" not in device_args(name, "sata0-0-0")


# --------------------------------------------------------------------------- ioeventfd


@live_vm
def test_ioeventfd_on_reaches_qemu(launch: Callable[..., str], untweaked: dict[str, Any]) -> None:
    """T_IOEVENTFD=yes: libvirt passes ioeventfd=true on both virtio-blk disks and the
    virtio-scsi controller (the control passes nothing: qemu's default)."""
    outcome = tweaked({"T_IOEVENTFD": "yes"})
    assert status(outcome, "ioeventfd") == APPLIED
    name = launch(outcome)

    for dev in VIRTIO_DEVICES:
        assert "ioeventfd" not in untweaked["devices"][dev]
        assert device_args(name, dev)["ioeventfd"] is True
        assert qom_get(name, f"{PERIPHERAL}/{dev}", "ioeventfd") is True


@live_vm
def test_ioeventfd_off_reaches_qemu(launch: Callable[..., str], untweaked: dict[str, Any]) -> None:
    """T_IOEVENTFD=no on a VM without iothreads: qemu's devices run without ioeventfd
    (qemu's KVM default, in the control, is on)."""
    domain, vm = without_iothreads()
    outcome = tweaked(domain=domain, vm=vm)
    assert status(outcome, "ioeventfd") == APPLIED
    assert outcome.tree.getroot().find("iothreads") is None
    name = launch(outcome)

    for dev in VIRTIO_DEVICES:
        assert untweaked["ioeventfd"][dev] is True
        assert device_args(name, dev)["ioeventfd"] is False
        assert qom_get(name, f"{PERIPHERAL}/{dev}", "ioeventfd") is False


@live_vm
def test_ioeventfd_off_keeps_an_iothread_vm_startable(launch: Callable[..., str]) -> None:
    """T_IOEVENTFD=no on oned's deployment, whose disks and virtio-scsi controller sit on
    iothreads (FEATURES/IOTHREADS=2): qemu refuses ioeventfd=off on a device with an iothread
    ("ioeventfd is required for iothread"), so the tweak must leave such devices alone (or skip
    with a warning) and the VM must still start, with ioeventfd on where an iothread is."""
    outcome = tweaked({"T_IOEVENTFD": "no"})
    root = outcome.tree.getroot()
    bound = [d for d in root.iterfind("devices/disk/driver") if d.get("iothread")]
    bound += [d for d in root.iterfind("devices/controller/driver") if d.get("iothread")]
    off = [d.getparent().xpath("string(target/@dev | @model)")
           for d in bound if d.get("ioeventfd") == "off"]
    refused: list[str] = []
    try:
        name = launch(outcome)
    except AssertionError as exc:
        refused = sorted({line.split(": ")[-1] for line in str(exc).splitlines() if "required for iothread" in line})
        if not refused:
            raise
    assert not refused, ("TWEAK BUG tweaks/catalog/ioeventfd.py: T_IOEVENTFD=no sets ioeventfd='off' on devices bound "
                         f"to an iothread {off}; qemu refuses them ({refused}), so the VM does not start")
    for dev in VIRTIO_DEVICES:
        assert qom_get(name, f"{PERIPHERAL}/{dev}", "iothread") is not None
        assert qom_get(name, f"{PERIPHERAL}/{dev}", "ioeventfd") is True


# --------------------------------------------------------------------------- disk_driver, context_cache


@live_vm
def test_disk_driver_reaches_qemu(launch: Callable[..., str], system_dir: Path, tmp_path: Path) -> None:
    """rules.d/52-disk-driver.yaml switched on by the operator: every disk of a StorPool VM
    (the context CD-ROM included: its TM_MAD is the system datastore's) gets cache=none,
    io=native, discard=unmap; qemu opens them with O_DIRECT (cache.direct), aio=native and
    passes discards down (format node discard=unmap). The control is the same VM with the
    shipped (disabled) rule: no cache, aio or discard setting."""
    domain = on_system_datastore(system_dir, strip_driver=True)
    vm = vm_on("storpool", drop_disk_io=True)
    paths = [str(system_dir / f"disk.{n}") for n in range(4)]

    control = tweaked(domain=domain, vm=vm)
    assert status(control, "disk-driver") == DISABLED
    name = launch(control, disks=block_disks(system_dir), keep=("vdb", "hda"))
    for path in paths:
        storage = storage_node(name, path)
        assert "aio" not in storage and "cache" not in storage
        assert "discard" not in format_node(name, storage)
    assert {e["inserted"]["cache"]["direct"] for e in drives(name).values()} == {False}

    outcome = tweaked(domain=domain, vm=vm, rules=[enabled_copy(tmp_path / "rules", "52-disk-driver.yaml")])
    assert status(outcome, "disk-driver") == APPLIED
    for target in ("vda", "sda", "vdb", "hda"):
        driver = disk_el(outcome.tree.getroot(), target).find("driver")
        assert (driver.get("cache"), driver.get("io"), driver.get("discard")) == ("none", "native", "unmap")
    name = launch(outcome, disks=block_disks(system_dir), keep=("vdb", "hda"))
    for path in paths:
        storage = storage_node(name, path)
        assert (storage["driver"], storage["aio"], storage["cache"]) == (
            "host_device", "native", {"direct": True, "no-flush": False})
        assert format_node(name, storage)["discard"] == "unmap"
    assert {e["inserted"]["cache"]["direct"] for e in drives(name).values()} == {True}


@live_vm
def test_context_cache_reaches_qemu(launch: Callable[..., str], deployment_disks: dict[str, str],
                                    untweaked: dict[str, Any], tmp_path: Path) -> None:
    """rules.d/53-context-cache.yaml switched on: the context CD-ROM (type='file' on TM blk)
    is opened with O_DIRECT and aio=native; the image disks keep what oned wrote."""
    outcome = tweaked({}, rules=[enabled_copy(tmp_path / "rules", "53-context-cache.yaml")])
    assert status(outcome, "context-cache") == APPLIED
    driver = disk_el(outcome.tree.getroot(), "hda").find("driver")
    assert (driver.get("cache"), driver.get("io")) == ("none", "native")
    name = launch(outcome)

    assert "aio" not in untweaked["hda_storage"] and "cache" not in untweaked["hda_storage"]
    assert untweaked["hda_cache"]["direct"] is False
    storage = storage_node(name, deployment_disks["hda"])
    assert (storage["driver"], storage["aio"], storage["cache"]) == (
        "file", "native", {"direct": True, "no-flush": False})
    assert drives(name)["sata0-0-0"]["inserted"]["cache"]["direct"] is True
    for dev in ("virtio-disk0", "virtio-disk1", "scsi0-0-0-0"):  # not CD-ROMs: -device as in the control
        assert device_args(name, dev) == untweaked["devices"][dev]


# --------------------------------------------------------------------------- persistent_cdrom


def change_media(name: str, target: str, *args: str) -> None:
    virsh("change-media", name, target, *args)


@live_vm
def test_persistent_cdrom_file_slots_take_media_while_paused(launch: Callable[..., str], untweaked: dict[str, Any],
                                                             deployment_disks: dict[str, str], tmp_path: Path) -> None:
    """T_PERSISTENT_CDROM=2, T_PERSISTENT_CDROM_TYPE=file: two empty SATA CD-ROM drives
    (hdb, hdc next to the context CD-ROM hda) exist from boot, so ``virsh change-media``
    inserts and ejects an image without hot-plug. The control has no such drive: the
    insert fails there."""
    outcome = tweaked({"T_PERSISTENT_CDROM": "2", "T_PERSISTENT_CDROM_TYPE": "file"})
    assert status(outcome, "persistent-cdrom") == APPLIED
    for target in ("hdb", "hdc"):
        disk = disk_el(outcome.tree.getroot(), target)
        assert (disk.get("type"), disk.find("source"), disk.find("target").get("bus")) == ("file", None, "sata")
    name = launch(outcome, keep=("hdb", "hdc"))
    media = tmp_path / "media.iso"
    media.write_bytes(b"\0" * 64 * 1024)

    assert untweaked["removable"] == {"sata0-0-0": untweaked["disks"]["hda"]}
    code, error = untweaked["insert_hdb"]
    assert code != 0 and "hdb" in error, error
    assert removable(name) == {"sata0-0-0": deployment_disks["hda"], "sata0-0-1": None, "sata0-0-2": None}
    assert drives(name)["sata0-0-1"]["tray_open"] is False

    change_media(name, "hdb", str(media), "--insert")
    assert removable(name)["sata0-0-1"] == str(media)
    assert opened_as(name)[str(media)] == "file"
    assert disk_el(dumpxml(name), "hdb").find("source").get("file") == str(media)
    change_media(name, "hdb", "--eject")
    assert removable(name)["sata0-0-1"] is None
    assert str(media) not in opened_as(name)


@live_vm
def test_persistent_cdrom_block_slots_take_a_device_while_running(
        launch: Callable[..., str], loopdev: Callable[..., str], untweaked: dict[str, Any]) -> None:
    """T_PERSISTENT_CDROM=2 with the default type block, VM running: a block device is
    inserted into hdb (qemu opens it as host_device) and ejected again.

    libvirt 9.0 stores an EMPTY type='block' CD-ROM as type='file' (an empty drive has no
    qemu backend, so its type means nothing until media arrive), hence ``change-media`` needs
    ``--block`` for a device: without it libvirt asks qemu's 'file' driver, which refuses."""
    outcome = tweaked({"T_PERSISTENT_CDROM": "2"})
    assert status(outcome, "persistent-cdrom") == APPLIED
    assert [disk_el(outcome.tree.getroot(), t).get("type") for t in ("hdb", "hdc")] == ["block", "block"]
    name = launch(outcome, keep=("hdb", "hdc"), paused=False)
    device = loopdev(4)

    assert virsh("domstate", name).stdout.strip() == "running"
    assert set(untweaked["removable"]) == {"sata0-0-0"}
    assert {k: v for k, v in removable(name).items() if k != "sata0-0-0"} == {"sata0-0-1": None, "sata0-0-2": None}
    assert disk_el(dumpxml(name), "hdb").get("type") == "file"  # libvirt's view of an empty drive

    change_media(name, "hdb", device, "--insert", "--block")
    assert removable(name)["sata0-0-1"] == device
    assert opened_as(name)[device] == "host_device"
    live_hdb = disk_el(dumpxml(name), "hdb")
    assert (live_hdb.get("type"), live_hdb.find("source").get("dev")) == ("block", device)
    change_media(name, "hdb", "--eject")
    assert removable(name)["sata0-0-1"] is None

    refused = virsh("change-media", name, "hdc", device, "--insert", check=False)
    assert refused.returncode != 0 and "'file' driver requires" in refused.stderr, refused.stderr


# --------------------------------------------------------------------------- q35_root_ports, uuid, sysinfo


@live_vm
def test_q35_root_ports_reach_qemu(launch: Callable[..., str], untweaked: dict[str, Any]) -> None:
    """Q35_PCIE_ROOT_PORTS=20: oned's 16 ports plus 4 more are on qemu's PCIe root bus."""
    outcome = tweaked({"Q35_PCIE_ROOT_PORTS": "20"})
    assert status(outcome, "q35-root-ports") == APPLIED
    name = launch(outcome)

    assert untweaked["root_ports"] == (16, 16)
    assert root_ports(name) == (20, 20)
    assert sum(1 for kind in peripherals(name).values() if kind == "pcie-pci-bridge") == 1


@live_vm
def test_uuid_reaches_qemu(launch: Callable[..., str], untweaked: dict[str, Any]) -> None:
    """T_UUID (32 upper-case hex digits here) is the UUID qemu reports, in canonical form."""
    wanted = uuid_module.uuid4()
    outcome = tweaked({"T_UUID": wanted.hex.upper()})
    assert status(outcome, "uuid") == APPLIED
    assert untweaked["engine"].getroot().find("uuid") is None and untweaked["uuid"] != str(wanted)
    name = launch(outcome, keep_uuid=True)

    assert qmp(name, "query-uuid") == {"UUID": str(wanted)}
    assert plain_args(name, "-uuid") == [str(wanted)]
    assert virsh("domuuid", name).stdout.strip() == str(wanted)


SMBIOS = {
    "T_SMBIOS_BIOS": "vendor=Acme;version=1.2;date=01/02/2023;release=1.2",
    "T_SMBIOS_SYSTEM": "manufacturer=Acme, Inc.;product=Widget=2;serial=S123;family=F",
    "T_SMBIOS_BASEBOARD": "manufacturer=Acme;product=Board;asset=A1",
    "T_SMBIOS_CHASSIS": "manufacturer=Acme;serial=C1;asset=CA",
    "T_SMBIOS_OEMSTRINGS": "hello;world, again",
}


@live_vm
def test_sysinfo_reaches_qemu(launch: Callable[..., str], untweaked: dict[str, Any]) -> None:
    """T_SMBIOS_*: qemu gets -smbios type=0 (BIOS), 1 (system), 2 (baseboard), 3 (chassis) and
    11 (OEM strings) with the VM's values (libvirt escapes a comma as ",,")."""
    outcome = tweaked(SMBIOS)
    assert status(outcome, "sysinfo") == APPLIED
    name = launch(outcome)

    assert untweaked["smbios"] == []
    assert plain_args(name, "-smbios") == [
        "type=0,vendor=Acme,version=1.2,date=01/02/2023,release=1.2",
        "type=1,manufacturer=Acme,, Inc.,product=Widget=2,serial=S123,family=F",
        "type=2,manufacturer=Acme,product=Board,asset=A1",
        "type=3,manufacturer=Acme,serial=C1,asset=CA",
        "type=11,value=hello,value=world,, again",
    ]
    assert one(dumpxml(name), "os/smbios").get("mode") == "sysinfo"


# --------------------------------------------------------------------------- nic_queues


def two_nics(user: dict[str, str]) -> tuple[bytes, bytes]:
    """oned's deployment and VM with a second virtio NIC (NIC_ID 1, target one-42-1)."""
    domain = etree.fromstring(small_domain(vcpu=VCPU, memory_mib=MEMORY_MIB))
    nic0 = domain.find("devices/interface")
    nic1 = copy.deepcopy(nic0)
    nic1.find("mac").set("address", "02:00:0a:00:01:2a")
    nic1.find("target").set("dev", "one-42-1")
    nic0.addnext(nic1)
    vm = etree.fromstring(vm_xml(user=user, vcpu=VCPU))
    template_nic0 = vm.find("TEMPLATE/NIC")
    template_nic1 = copy.deepcopy(template_nic0)
    for tag, value in (("NIC_ID", "1"), ("MAC", "02:00:0a:00:01:2a"), ("TARGET", "one-42-1")):
        template_nic1.find(tag).text = value
    template_nic0.addnext(template_nic1)
    return etree.tostring(domain), etree.tostring(vm)


@live_vm
def test_nic_queues_reach_qemu(launch: Callable[..., str], define: Callable[[bytes], str],
                               untweaked: dict[str, Any]) -> None:
    """T_NIC_QUEUES=VCPU (4) for every NIC, T_NIC1_QUEUES=2 for the second.

    The tweak writes oned's vhost form ``<driver name='vhost' queues='N'/>``. This machine has
    no /dev/vhost-net, so (1) the real qemu driver accepts the engine's output as it is
    (``virsh define``; its XML keeps vhost and the queues) but refuses to start it ("vhost-net
    ... unavailable"), and (2) the same queues with ``driver name='qemu'`` (bootable() makes
    that change and nothing else) do start: libvirt opens one tap queue per queue and gives
    qemu mq=on with 2N+2 MSI-X vectors, and qemu offers VIRTIO_NET_F_MQ. ``virsh
    domxml-to-native`` is no proof in libvirt 9.0: it drops the queues of every interface."""
    domain, vm = two_nics({"T_NIC_QUEUES": "VCPU", "T_NIC1_QUEUES": "2"})
    outcome = tweaked(domain=domain, vm=vm)
    assert status(outcome, "nic-queues") == APPLIED
    drivers = [i.find("driver").attrib for i in outcome.tree.getroot().iterfind("devices/interface")]
    assert drivers == [{"name": "vhost", "queues": "4"}, {"name": "vhost", "queues": "2"}]

    defined = dumpxml(define(definable(outcome.tree)))
    assert [dict(d.attrib) for d in defined.iterfind("devices/interface/driver")] == [
        {"name": "vhost", "queues": "4"}, {"name": "vhost", "queues": "2"}]
    with pytest.raises(AssertionError, match="vhost-net was requested for an interface, but is unavailable"):
        launch(outcome, edit=as_vhost)

    name = launch(outcome)
    assert untweaked["net0"] == {"taps": 1, "mq": None, "vectors": None, "mq_feature": False, "qom_mq": False}
    assert nic_queues(name, "net0") == {"taps": 4, "mq": True, "vectors": 10, "mq_feature": True, "qom_mq": True}
    assert nic_queues(name, "net1") == {"taps": 2, "mq": True, "vectors": 6, "mq_feature": True, "qom_mq": True}
    assert [dict(d.attrib) for d in dumpxml(name).iterfind("devices/interface/driver")] == [
        {"name": "qemu", "queues": "4"}, {"name": "qemu", "queues": "2"}]


def as_vhost(root: etree._Element) -> None:
    """Undo bootable()'s vhost -> qemu driver change (made because /dev/vhost-net is absent)."""
    for driver in root.iterfind("devices/interface/driver"):
        driver.set("name", "vhost")


# --------------------------------------------------------------------------- hostdev_interface

VF_HOSTDEVS = (
    """<hostdev mode='subsystem' type='pci' managed='yes'>
  <source><address domain='0x0000' bus='0x05' slot='0x10' function='0x1'/></source>
  <address type='pci' domain='0x0000' bus='0x10' slot='0x00' function='0x0'/>
</hostdev>""",
    """<hostdev mode='subsystem' type='pci' managed='yes'>
  <source><address domain='0x0000' bus='0x05' slot='0x10' function='0x3'/></source>
</hostdev>""",
)
VF_MACS = ("02:00:0a:00:05:01", "02:00:0a:00:05:03")


def with_vfs() -> bytes:
    domain = etree.fromstring(small_domain(vcpu=VCPU, memory_mib=MEMORY_MIB))
    for hostdev in VF_HOSTDEVS:
        domain.find("devices").append(etree.fromstring(hostdev))
    return etree.tostring(domain)


def iflist(name: str) -> list[tuple[str, str]]:
    """``virsh domiflist``: (type, MAC) of each interface libvirt knows."""
    rows = [line.split() for line in virsh("domiflist", name).stdout.splitlines() if line.strip()]
    return [(row[1], row[-1]) for row in rows]


@live_vm
def test_hostdev_interface_is_accepted_by_libvirt(define: Callable[[bytes], str]) -> None:
    """T_VF_MACS: both PCI passthrough VFs become ``<interface type='hostdev'>`` with the MACs.

    No SR-IOV VF exists here, so the domain cannot start (libvirt needs the VF in sysfs) and
    qemu never sees the MAC anyway: libvirt programs it on the VF through the PF before qemu
    starts, qemu only gets ``-device vfio-pci``. ``virsh domxml-to-native`` cannot build the
    command line without the device either (and libvirtd 9.0 crashed on it after a failed
    hostdev start), so it is not called. The proof is the real qemu driver: ``virsh define``
    accepts the converted domain, and libvirt lists the VFs as interfaces with these MACs and
    the host and guest PCI addresses kept. The control keeps plain hostdevs, without MACs."""
    control = tweaked(domain=with_vfs(), vm=vm_xml(vcpu=VCPU))
    name = define(definable(control.tree))
    assert iflist(name) == [("bridge", "02:00:0a:00:00:2a")]
    assert len(dumpxml(name).findall("devices/hostdev")) == 2

    outcome = tweaked(domain=with_vfs(), vm=vm_xml(user={"T_VF_MACS": ",".join(VF_MACS).upper()}, vcpu=VCPU))
    assert status(outcome, "hostdev-interface") == APPLIED
    name = define(definable(outcome.tree))
    assert iflist(name) == [("bridge", "02:00:0a:00:00:2a"), ("hostdev", VF_MACS[0]), ("hostdev", VF_MACS[1])]
    defined = dumpxml(name)
    assert defined.findall("devices/hostdev") == []
    interfaces = defined.findall("devices/interface[@type='hostdev']")
    assert [i.get("managed") for i in interfaces] == ["yes", "yes"]
    assert [i.find("driver").get("name") for i in interfaces] == ["vfio", "vfio"]
    assert [dict(i.find("source/address").attrib) for i in interfaces] == [
        {"type": "pci", "domain": "0x0000", "bus": "0x05", "slot": "0x10", "function": f"0x{f}"} for f in (1, 3)]
    assert dict(interfaces[0].find("address").attrib) == {
        "type": "pci", "domain": "0x0000", "bus": "0x10", "slot": "0x00", "function": "0x0"}
