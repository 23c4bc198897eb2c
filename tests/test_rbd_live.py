"""A VM on RBD under real libvirtd + qemu, on the live Ceph cluster (``ceph`` fixture): the
image disks as oned writes them on an rbd datastore (``<disk type='network'>``), the volatile
disk turned into its RBD volume by volatile_network from the facts a network backend supplies,
the disk tweaks (driver cache, serial, virtio-blk queues, iothreads) on those network disks,
and what qemu got for each (QMP ``query-block``, ``virsh dumpxml``); the same VM's UEFI NVRAM
is an RBD image too (os_nvram, started paused under TCG). The context ISO stays a
file in the VM directory (as OpenNebula's ceph driver keeps it).

UEFI NVRAM on RBD, the product's path: TM ``context`` of a VM with T_OS_NVRAM's volume word
makes ``<SYSPOOL>/one-sys-<VM>-nvram`` (``Rbd.make_nvram``: 1 MiB, the OVMF VARS template at its
end), the system datastore's facts name it (``storage.nvram_*``) and os_nvram writes
``<nvram type='network'><source protocol='rbd'>``; libvirt 9.0 with OVMF under TCG maps that
1 MiB image as pflash1 and keeps the guest's variables (OVMF's boot counter and boot entries) in
it across a restart and a re-run of context.

The other test's RBD images are made with the ``rbd`` CLI; qemu gets the cluster's key through a
libvirt ``ceph`` secret defined here (the UEFI test names it as the system datastore's
CEPH_SECRET) and undefined after.
"""

from __future__ import annotations

import copy
import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from ceph_env import CephCluster, ceph
from conftest import DOMAIN_RNG, vm_xml
from livevm import Daemon, LiveVMs, bootable, dumpxml, libvirtd, live, loopdev, qmp, small_domain, virsh
from lxml import etree
from rbd_env import SYS_POOL, SYSTEM_DS, RbdCloud, rbd_cloud
from sim import oned as oned_sim
from storage_env import sshd
from test_live_firmware_cpu import VARS_TEMPLATE, boot_count, boot_entries, vars_store

from datastore.facts import storage_facts
from onelib.config import Config
from tweaks import engine, loader
from tweaks.validate import DomainSchema

FIXTURES = (ceph, libvirtd, live, loopdev, rbd_cloud, sshd)
live_vm = pytest.mark.libvirtd

VM_ID = "42"
SYSTEM = f"/var/lib/one//datastores/101/{VM_ID}"
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"


@pytest.fixture
def ceph_secret(ceph: CephCluster, libvirtd: Daemon, tmp_path: Path) -> Iterator[str]:
    """A libvirt ``ceph`` secret holding client.admin's key; undefined afterwards."""
    secret = str(uuid.uuid4())
    xml = tmp_path / "secret.xml"
    xml.write_text(f"<secret ephemeral='no' private='yes'><uuid>{secret}</uuid>"
                   f"<usage type='ceph'><name>one-tweaks-test {secret}</name></usage></secret>")
    virsh("secret-define", str(xml))
    try:
        virsh("secret-set-value", secret, "--base64", ceph.admin_key)
        yield secret
    finally:
        virsh("secret-undefine", secret, check=False)


class Images:
    """RBD images made for one test (``rbd`` CLI), removed at the end."""

    def __init__(self, cluster: CephCluster) -> None:
        self.cluster = cluster
        self.names: list[str] = []
        self.tag = uuid.uuid4().hex[:6]

    def create(self, name: str, size_mib: int) -> str:
        full = f"{name}-{self.tag}"
        self.cluster.cli("rbd", "create", "--size", str(size_mib), full)
        self.names.append(full)
        return full

    def import_file(self, path: Path, name: str) -> str:
        full = f"{name}-{self.tag}"
        self.cluster.cli("rbd", "import", str(path), full, timeout=120)
        self.names.append(full)
        return full

    def read(self, name: str, directory: Path) -> bytes:
        out = directory / "export.bin"
        out.unlink(missing_ok=True)
        self.cluster.cli("rbd", "export", "--no-progress", name, str(out), timeout=60)
        return out.read_bytes()

    def remove_all(self) -> None:
        for name in self.names:
            self.cluster.cli("rbd", "rm", "--no-progress", name, check=False, timeout=120)


@pytest.fixture
def images(ceph: CephCluster) -> Iterator[Images]:
    made = Images(ceph)
    try:
        yield made
    finally:
        made.remove_all()


def network_disk(disk: etree._Element, name: str, ceph: CephCluster, secret: str) -> None:
    """The disk as oned writes it on an rbd datastore (LibVirtDriverKVM, DISK_TYPE=RBD)."""
    disk.set("type", "network")
    source = disk.find("source")
    source.attrib.clear()
    source.set("protocol", "rbd")
    source.set("name", name)
    etree.SubElement(source, "host", name="127.0.0.1", port=str(ceph.mon_v1))
    auth = etree.SubElement(disk, "auth", username="admin")
    etree.SubElement(auth, "secret", type="ceph", uuid=secret)


def rbd_vm() -> bytes:
    root = etree.fromstring(vm_xml({"T_BLK_QUEUES": "yes", "T_DISKSERIAL": "yes", "T_OS_LOADER": OVMF_CODE,
                                    "T_OS_NVRAM": "storpool"}))
    for disk in root.iterfind("TEMPLATE/DISK"):
        disk.find("TM_MAD").text = "rbd"
    root.find("HISTORY_RECORDS/HISTORY/TM_MAD").text = "rbd"
    return etree.tostring(root)


def oned_domain(ceph: CephCluster, secret: str, vda: str, sda: str) -> bytes:
    """oned's fixture domain on an rbd image datastore and a system datastore without
    DISK_TYPE=RBD: image disks network, the volatile disk (disk.2) and the context files."""
    root = etree.fromstring(small_domain(vcpu=2, memory_mib=256))
    for dev, name in (("vda", vda), ("sda", sda)):
        network_disk(root.xpath("devices/disk[target/@dev=$d]", d=dev)[0], name, ceph, secret)
    vdb = root.xpath("devices/disk[target/@dev='vdb']")[0]
    vdb.set("type", "file")
    source = vdb.find("source")
    source.set("file", source.attrib.pop("dev"))
    return etree.tostring(root)


def facts(ceph: CephCluster, secret: str, vdb: str, vda: str,
          nvram: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """What a network backend supplies for this VM (``Backend.facts`` in the generic keys)."""
    common = {"storage_form": "network", "storage_protocol": "rbd", "storage_hosts": f"127.0.0.1:{ceph.mon_v1}",
              "storage_user": "admin", "storage_secret": secret, "storage_secret_type": "ceph"}
    disks = {"0": dict(common, storage_name=vda), "1": {"storage_form": "network"},
             "2": dict(common, storage_name=vdb), "3": {"storage_form": "network"}}
    scalars = {"storage.tm_mads": "rbd", "storage.block_tm_mads": "", "storage.network_tm_mads": "rbd",
               **{f"storage.nvram_{key.removeprefix('storage_')}": value for key, value in common.items()
                  if key != "storage_form"}, "storage.nvram_name": nvram}
    return scalars, disks


def tweak(domain: bytes, supplied: tuple[dict[str, str], dict[str, dict[str, str]]]) -> etree._ElementTree:
    outcome = engine.apply_rules(engine.parse_xml(domain, "domain"), engine.parse_xml(rbd_vm(), "vm"),
                                 loader.load([]).rules, schema=DomainSchema(DOMAIN_RNG), supplied=supplied)
    return outcome.tree


def startable(tree: etree._ElementTree, context: Path, *, uefi: bool, accel: str = "tcg") -> bytes:
    """bootable() for the local parts (emulator, name, firmware, graphics); the network
    disks go back exactly as the rules wrote them."""
    root = tree.getroot()
    kept = {d.find("target").get("dev"): copy.deepcopy(d) for d in root.iter("disk") if d.get("type") == "network"}
    disks: dict[str, str | None] = {dev: "/dev/null" for dev in kept}
    disks["hda"] = str(context)
    out = etree.fromstring(bootable(tree, disks, accel=accel, network="none", memory_mib=256, uefi=uefi,
                                    nvram=None))
    for disk in list(out.iter("disk")):
        dev = disk.find("target").get("dev")
        if dev in kept:
            disk.getparent().replace(disk, kept[dev])
    return etree.tostring(out)


def block_of(name: str) -> dict[str, dict[str, object]]:
    """QMP query-block: qdev/device -> inserted image data."""
    found: dict[str, dict[str, object]] = {}
    for entry in qmp(name, "query-block"):
        inserted = entry.get("inserted")
        if inserted:
            found[entry.get("qdev") or entry.get("device")] = inserted
    return found


@live_vm
def test_vm_on_rbd_starts_with_its_network_disks(ceph: CephCluster, ceph_secret: str, images: Images,
                                                 live: LiveVMs, tmp_path: Path,
                                                 assert_valid: Callable[[bytes], None]) -> None:
    vda = images.create(f"one/one-img-7-{VM_ID}-0", 64)
    sda = images.create("one/one-img-8", 32)
    vdb = images.create(f"one-sys/one-sys-{VM_ID}-2", 16)
    nvram = images.import_file(VARS_TEMPLATE, f"one-sys/one-sys-{VM_ID}-nvram")
    context = tmp_path / "disk.3"
    context.write_bytes(b"\0" * 4096)
    tree = tweak(oned_domain(ceph, ceph_secret, vda, sda), facts(ceph, ceph_secret, vdb, vda, nvram))
    disk = tree.getroot().xpath("devices/disk[target/@dev='vdb']")[0]
    assert disk.get("type") == "network"
    assert disk.find("source").get("name") == vdb and disk.find("auth/secret").get("uuid") == ceph_secret
    assert tree.getroot().xpath("devices/disk[target/@dev='hda']")[0].get("type") == "file"
    assert tree.getroot().find("os/nvram").get("type") == "network"
    xml_root = etree.fromstring(startable(tree, context, uefi=True, accel="tcg"))  # OVMF runs under TCG only
    xml_root.replace(xml_root.find("os"), copy.deepcopy(tree.getroot().find("os")))
    xml = etree.tostring(xml_root)
    assert_valid(xml)
    name = live.start(xml, paused=True)

    live_xml = dumpxml(name)
    blocks = block_of(name)
    serials = {}
    for dev, image in (("vda", vda), ("sda", sda), ("vdb", vdb)):
        disk = live_xml.xpath("devices/disk[target/@dev=$d]", d=dev)[0]
        assert disk.get("type") == "network" and disk.find("source").get("name") == image
        serials[dev] = disk.findtext("serial")
        # qemu opened the RBD image itself, with the cache mode the rules left
        alias = disk.find("alias").get("name")
        found = [v for k, v in blocks.items() if f"/{alias}/" in k or k.endswith(f"/{alias}") or k == alias]
        assert len(found) == 1, (alias, sorted(blocks))
        inserted = found[0]
        filename = str(inserted["file"])
        assert filename.startswith("json:") and '"driver": "rbd"' in filename, filename
        pool, _, rbd_image = image.partition("/")
        assert f'"image": "{rbd_image}"' in filename and f'"pool": "{pool}"' in filename, filename
        assert inserted["cache"] == {"no-flush": False, "direct": True, "writeback": True}, dev  # cache=none
    assert serials == {dev: hashlib.md5(text.encode()).hexdigest()[:20] for dev, text in
                       (("vda", f"{VM_ID}-0"), ("sda", "persistent-8"), ("vdb", "volatile-2"))}
    for dev in ("vda", "vdb"):
        driver = live_xml.xpath("devices/disk[target/@dev=$d]/driver", d=dev)[0]
        assert driver.get("queues") == "2" and driver.get("iothread"), dev
    # the NVRAM is the RBD image too (qemu's pflash1 on an rbd blockdev)
    live_nvram = live_xml.find("os/nvram")
    assert live_nvram.get("type") == "network" and live_nvram.find("source").get("name") == nvram
    pflash = [str(v["file"]) for k, v in blocks.items() if "pflash1" in k or "pflash1" in str(v.get("node-name", ""))]
    flash_nodes = [str(v["file"]) for v in blocks.values() if '"driver": "rbd"' in str(v["file"])]
    assert any(nvram.partition("/")[2] in f for f in pflash + flash_nodes), sorted(blocks)
    live.destroy(name)


def wait_rbd(images: Images, image: str, directory: Path, done: Callable[[dict[tuple[str, str], bytes]], bool],
             what: str, timeout: float = 300, quiet: float = 3,
             store: Callable[[bytes], dict[tuple[str, str], bytes]] = vars_store) -> bytes:
    """Poll the NVRAM image (rbd export) until ``done(store)``, then until it has not changed for
    ``quiet`` seconds. OVMF under TCG on a loaded machine can take minutes to its boot entries."""
    deadline = time.monotonic() + timeout
    last, since, reached = b"", time.monotonic(), False
    while time.monotonic() < deadline:
        data = images.read(image, directory)
        if data != last:
            last, since = data, time.monotonic()
        reached = reached or done(store(data))
        if reached and time.monotonic() - since >= quiet:
            return data
        time.sleep(1)
    found = store(last) if last else {}
    raise AssertionError(f"the firmware did not {what} within {timeout:.0f} s "
                         f"(boot counter {boot_count(found)}, entries {sorted(boot_entries(found))})")


@live_vm
def test_uefi_nvram_on_rbd_keeps_variables_across_boots(rbd_cloud: RbdCloud, ceph_secret: str, images: Images,
                                                        live: LiveVMs, tmp_path: Path,
                                                        assert_valid: Callable[[bytes], None]) -> None:
    """The product's path end to end: TM context of a VM with T_OS_NVRAM's volume word makes
    its NVRAM image (``Rbd.make_nvram``), the system datastore's facts name it, os_nvram
    writes ``<nvram type='network'>`` from them, and OVMF keeps its variables in that image."""
    rbd_cloud.oned.datastore(SYSTEM_DS).find("TEMPLATE/CEPH_SECRET").text = ceph_secret  # type: ignore[union-attr]
    vm = rbd_cloud.make_vm(int(VM_ID), [{"volatile": "fs", "size": 8}])
    oned_sim._set_text(vm.find("TEMPLATE"), "CONTEXT/DISK_ID", "1")
    for key, value in (("T_OS_LOADER", OVMF_CODE), ("T_OS_NVRAM", "storpool")):
        etree.SubElement(vm.find("USER_TEMPLATE"), key).text = value
    ctx = tmp_path / "context.sh"
    ctx.write_text("ETH0_IP='10.0.0.2'\n")
    made = rbd_cloud.run_tm("context", str(ctx), rbd_cloud.tm_path("node1", int(VM_ID), 1), VM_ID, str(SYSTEM_DS))
    assert made.returncode == 0, made.stderr.decode()
    scalars, _ = storage_facts(vm, rbd_cloud.oned.served("datastore", SYSTEM_DS), Config())
    nvram = scalars["storage.nvram_name"]
    assert nvram == f"{SYS_POOL}/one-sys-{VM_ID}-nvram" and scalars["storage.nvram_secret"] == ceph_secret
    template = VARS_TEMPLATE.read_bytes()

    def store(data: bytes) -> dict[tuple[str, str], bytes]:
        return vars_store(data[-len(template):])   # the variable store sits at the image's end

    made_data = images.read(nvram, tmp_path)
    assert made_data[-len(template):] == template, "TM context wrote the VARS template"
    context = tmp_path / "disk.3"
    context.write_bytes(b"\0" * 4096)
    # the os_nvram rule (T_OS_NVRAM's volume word) on the facts the rbd backend supplies
    domain = etree.fromstring(small_domain(vcpu=1, memory_mib=256))
    for disk in domain.xpath("devices/disk[target/@dev!='hda']"):
        disk.getparent().remove(disk)
    outcome = engine.apply_rules(engine.parse_xml(etree.tostring(domain), "domain"),
                                 engine.parse_xml(vm_xml({"T_OS_LOADER": OVMF_CODE, "T_OS_NVRAM": "storpool"}), "vm"),
                                 loader.load([]).rules, schema=DomainSchema(DOMAIN_RNG), supplied=(scalars, {}))
    tree = outcome.tree
    root = tree.getroot()
    assert root.findtext("os/loader") == OVMF_CODE
    assert root.find("os/nvram").get("type") == "network"
    assert root.find("os/nvram/source").get("name") == nvram
    xml = startable(tree, context, uefi=True, accel="tcg")
    xml_root = etree.fromstring(xml)
    xml_root.replace(xml_root.find("os"), copy.deepcopy(root.find("os")))
    xml = etree.tostring(xml_root)
    assert_valid(xml)
    name = live.start(xml, paused=False)
    live_nvram = dumpxml(name).find("os/nvram")
    assert live_nvram.get("type") == "network" and live_nvram.find("source").get("name") == nvram
    wait_rbd(images, nvram, tmp_path, lambda s: boot_count(s) == 1 and "BootOrder" in boot_entries(s),
             "write its boot counter and boot entries", store=store)
    live.destroy(name)
    first = images.read(nvram, tmp_path)
    entries = boot_entries(store(first))
    assert boot_count(store(first)) == 1 and "Boot0000" in entries

    # oned re-runs context (restore, NIC hot-plug): the guest's variables stay
    made = rbd_cloud.run_tm("context", str(ctx), rbd_cloud.tm_path("node1", int(VM_ID), 1), VM_ID, str(SYSTEM_DS))
    assert made.returncode == 0, made.stderr.decode()
    name = live.start(xml, paused=True)
    assert images.read(nvram, tmp_path) == first, "context or starting the VM changed the NVRAM image"
    virsh("resume", name)
    wait_rbd(images, nvram, tmp_path, lambda s: boot_count(s) == 2, "count its second boot", store=store)
    live.destroy(name)
    second = store(images.read(nvram, tmp_path))
    assert boot_count(second) == 2  # an image reset to its template (or not written back) would count 1
    later = boot_entries(second)
    assert all(later.get(key) == value for key, value in entries.items() if key != "BootOrder"), sorted(later)
