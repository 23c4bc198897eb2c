"""volatile_network / context_network (rules.d/50, 51) and the disk tweaks on network disks:
what a network storage driver supplies (``disk.storage_*``) turns oned's file disks into
libvirt ``type='network'`` disks, checked against libvirt's domain schema."""

from __future__ import annotations

import hashlib
import re

import pytest
from conftest import DOMAIN_RNG, deployment, vm_xml
from lxml import etree

from tweaks import engine, loader
from tweaks.report import APPLIED, UNCHANGED
from tweaks.validate import DomainSchema

SYSTEM = "/var/lib/one//datastores/101/42"
SECRET = "5f2b6a9e-3c1d-4e8f-9a7b-1c2d3e4f5a6b"
_NS = re.compile(r' xmlns(?::[A-Za-z0-9_.-]+)?="[^"]*"')


def rbd_vm(tm: str = "rbd") -> bytes:
    """vm-42.xml with every disk and the system datastore on TM_MAD ``tm``."""
    root = etree.fromstring(vm_xml())
    for disk in root.iterfind("TEMPLATE/DISK"):
        disk.find("TM_MAD").text = tm
    root.find("HISTORY_RECORDS/HISTORY/TM_MAD").text = tm
    return etree.tostring(root)


def file_domain() -> bytes:
    """The fixture domain with the volatile disk (disk.2) a file, as oned writes it when the
    system datastore's DISK_TYPE is FILE; the context (disk.3) is a file already."""
    root = etree.fromstring(deployment())
    disk = root.xpath("devices/disk[target/@dev='vdb']")[0]
    disk.set("type", "file")
    source = disk.find("source")
    source.set("file", source.attrib.pop("dev"))
    return etree.tostring(root)


def network_facts(*, context: bool = False, auth: bool = True,
                  hosts: str = "127.0.0.1:3300 mon2") -> dict[str, dict[str, str]]:
    volatile = {"storage_form": "network", "storage_protocol": "rbd", "storage_name": "one-sys/one-sys-42-2",
                "storage_hosts": hosts}
    if auth:
        volatile.update(storage_user="libvirt", storage_secret=SECRET, storage_secret_type="ceph")
    disks = {"0": {"storage_form": "network"}, "1": {"storage_form": "network"}, "2": volatile,
             "3": {"storage_form": "network"}}
    if context:
        disks["3"] = dict(volatile, storage_name="one-sys/one-sys-42-3")
    return disks


def run(domain: bytes, vm: bytes, disks: dict[str, dict[str, str]], network: str = "rbd") -> engine.Outcome:
    scalars = {"storage.tm_mads": f"linstor_un,{network},storpool", "storage.block_tm_mads": "linstor_un,storpool",
               "storage.network_tm_mads": network}
    return engine.apply_rules(engine.parse_xml(domain, "domain"), engine.parse_xml(vm, "vm"),
                              loader.load([]).rules, schema=DomainSchema(DOMAIN_RNG), supplied=(scalars, disks))


def disk_of(root: etree._Element, dev: str) -> etree._Element:
    found = root.xpath("devices/disk[target/@dev=$dev]", dev=dev)
    assert len(found) == 1
    return found[0]


def compact(el: etree._Element) -> str:
    return _NS.sub("", re.sub(r">\s+<", "><", etree.tostring(el, encoding="unicode", with_tail=False)))


def status(outcome: engine.Outcome, rule: str) -> str:
    return str(next(r.status for r in outcome.report.results if r.name == rule))


VDB_NETWORK = (
    '<disk type="network" device="disk"><source protocol="rbd" name="one-sys/one-sys-42-2">'
    '<host name="127.0.0.1" port="3300"/><host name="mon2"/></source><auth username="libvirt">'
    f'<secret type="ceph" uuid="{SECRET}"/></auth><target dev="vdb" bus="virtio"/>'
    '<driver name="qemu" type="raw" cache="none" discard="unmap" iothread="2"/></disk>'
)


def test_volatile_file_disk_on_a_network_driver_becomes_its_volume(assert_valid):
    vm = rbd_vm()
    outcome = run(file_domain(), vm, network_facts())
    root = outcome.tree.getroot()
    assert compact(disk_of(root, "vdb")) == VDB_NETWORK
    assert status(outcome, "volatile-network") == APPLIED
    assert status(outcome, "volatile-block") == UNCHANGED
    # the context ISO stays the file disk.3 (the driver named no volume for it)
    hda = disk_of(root, "hda")
    assert hda.get("type") == "file" and hda.find("source").get("file") == f"{SYSTEM}/disk.3"
    assert status(outcome, "context-network") == UNCHANGED
    assert_valid(outcome.tree)
    again = run(etree.tostring(outcome.tree), vm, network_facts())
    assert not [c for r in again.report.results for c in r.changes]


def test_context_in_a_network_volume_becomes_a_network_cdrom(assert_valid):
    outcome = run(file_domain(), rbd_vm(), network_facts(context=True, auth=False, hosts=""))
    hda = disk_of(outcome.tree.getroot(), "hda")
    assert compact(hda) == ('<disk type="network" device="cdrom"><source protocol="rbd" name="one-sys/one-sys-42-3"/>'
                            '<target dev="hda" bus="sata"/><readonly/><driver name="qemu" type="raw"/></disk>')
    assert status(outcome, "context-network") == APPLIED
    assert_valid(outcome.tree)


def test_the_tweak_follows_the_supplied_driver_list_not_a_name(assert_valid):
    # the same facts under another network TM_MAD name: the engine knows no backend
    outcome = run(file_domain(), rbd_vm("toy"), network_facts(), network="toy")
    assert compact(disk_of(outcome.tree.getroot(), "vdb")) == VDB_NETWORK
    # rbd not a network TM_MAD in this configuration: nothing changes
    outcome = run(file_domain(), rbd_vm("rbd"), network_facts(), network="toy")
    assert disk_of(outcome.tree.getroot(), "vdb").get("type") == "file"
    assert_valid(outcome.tree)


@pytest.mark.parametrize(("key", "value"), [
    ("storage_name", "one/../x"), ("storage_name", "a b"), ("storage_name", "x'/><y"),
    ("storage_protocol", "RBD;"), ("storage_hosts", "mon1:99999"), ("storage_hosts", "a/b"),
    ("storage_secret", "not-a-uuid"), ("storage_user", "a b"),
])
def test_unusable_facts_leave_the_disk_alone(key, value, assert_valid):
    disks = network_facts()
    disks["2"][key] = value
    outcome = run(file_domain(), rbd_vm(), disks)
    vdb = disk_of(outcome.tree.getroot(), "vdb")
    assert vdb.get("type") == "file" and vdb.find("source").get("file") == f"{SYSTEM}/disk.2"
    assert_valid(outcome.tree)


def rbd_image_domain() -> bytes:
    """file_domain() with the image disks as oned writes them on an rbd datastore
    (DISK_TYPE=RBD): vda the clone one/one-img-7-42-0, sda the persistent one/one-img-8."""
    root = etree.fromstring(file_domain())
    for dev, name in (("vda", "one/one-img-7-42-0"), ("sda", "one/one-img-8")):
        disk = root.xpath("devices/disk[target/@dev=$dev]", dev=dev)[0]
        disk.set("type", "network")
        source = disk.find("source")
        del source.attrib["dev"]
        source.set("protocol", "rbd")
        source.set("name", name)
        etree.SubElement(source, "host", name="127.0.0.1", port="3300")
    return etree.tostring(root)


def test_driver_iothread_queue_and_serial_tweaks_reach_network_disks(tmp_path, assert_valid):
    root = etree.fromstring(vm_xml({"T_BLK_QUEUES": "yes", "T_DISKSERIAL": "yes", "T_IOTHREADS_OVERRIDE": "3"}))
    for disk in root.iterfind("TEMPLATE/DISK"):
        disk.find("TM_MAD").text = "rbd"
    root.find("HISTORY_RECORDS/HISTORY/TM_MAD").text = "rbd"
    disks = network_facts()
    disks["0"]["storage_name"] = "one/one-img-7-42-0"   # matched by name; sda (1) by its target
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "52-disk-driver.yaml").write_text("name: disk-driver\ntweaks:\n  - disk_driver:\n"
                                               "      cache: directsync\n")
    scalars = {"storage.tm_mads": "rbd", "storage.block_tm_mads": "", "storage.network_tm_mads": "rbd"}
    outcome = engine.apply_rules(engine.parse_xml(rbd_image_domain(), "domain"),
                                 engine.parse_xml(etree.tostring(root), "vm"), loader.load([str(rules)]).rules,
                                 schema=DomainSchema(DOMAIN_RNG), supplied=(scalars, disks))
    out = outcome.tree.getroot()
    serials = {}
    for dev in ("vda", "sda", "vdb"):
        disk = disk_of(out, dev)
        assert disk.get("type") == "network"
        driver = disk.find("driver")
        assert driver.get("cache") == "directsync", dev
        serials[dev] = disk.findtext("serial")
    # addon-storpool's serial strings: <vm>-<disk> for a clone, persistent-<image>, volatile-<disk>
    assert serials == {dev: hashlib.md5(text.encode()).hexdigest()[:20] for dev, text in
                       (("vda", "42-0"), ("sda", "persistent-8"), ("vdb", "volatile-2"))}
    # virtio-blk queues and iothreads on the virtio network disks
    vcpu = out.findtext("vcpu")
    for dev in ("vda", "vdb"):
        driver = disk_of(out, dev).find("driver")
        assert driver.get("queues") == vcpu and driver.get("iothread") in ("1", "2", "3"), dev
    assert_valid(outcome.tree)


# --- os_nvram: the storage driver's NVRAM volume on a network backend ---------------------------

NVRAM_FACTS = {"storage.nvram_protocol": "rbd", "storage.nvram_name": "one-sys/one-sys-42-nvram",
               "storage.nvram_hosts": "127.0.0.1:6789", "storage.nvram_user": "libvirt",
               "storage.nvram_secret": SECRET, "storage.nvram_secret_type": "ceph"}


def nvram_run(user: dict[str, str], scalars: dict[str, str]) -> engine.Outcome:
    base = {"storage.tm_mads": "rbd", "storage.block_tm_mads": "", "storage.network_tm_mads": "rbd"}
    return engine.apply_rules(engine.parse_xml(deployment(), "domain"), engine.parse_xml(vm_xml(user), "vm"),
                              loader.load([]).rules, schema=DomainSchema(DOMAIN_RNG),
                              supplied=({**base, **scalars}, {}))


def test_nvram_volume_of_a_network_backend_is_a_network_nvram(assert_valid):
    outcome = nvram_run({"T_OS_NVRAM": "storpool"}, NVRAM_FACTS)
    assert status(outcome, "os-nvram") == APPLIED
    assert compact(outcome.tree.getroot().find("os/nvram")) == (
        '<nvram type="network"><source protocol="rbd" name="one-sys/one-sys-42-nvram">'
        '<host name="127.0.0.1" port="6789"/><auth username="libvirt">'
        f'<secret type="ceph" uuid="{SECRET}"/></auth></source></nvram>')
    assert_valid(outcome.tree)
    again = engine.apply_rules(engine.parse_xml(etree.tostring(outcome.tree), "domain"),
                               engine.parse_xml(vm_xml({"T_OS_NVRAM": "storpool"}), "vm"), loader.load([]).rules,
                               schema=DomainSchema(DOMAIN_RNG),
                               supplied=({"storage.network_tm_mads": "rbd", **NVRAM_FACTS}, {}))
    assert str(next(r.status for r in again.report.results if r.name == "os-nvram")) == UNCHANGED


def test_nvram_volume_without_network_facts_stays_a_block_device(assert_valid):
    outcome = nvram_run({"T_OS_NVRAM": "storpool"}, {})
    assert outcome.tree.getroot().find("os/nvram").get("type") == "block"
    assert_valid(outcome.tree)


def test_unusable_nvram_facts_are_refused(assert_valid):
    outcome = nvram_run({"T_OS_NVRAM": "storpool"}, dict(NVRAM_FACTS, **{"storage.nvram_name": "a/../b"}))
    result = next(r for r in outcome.report.results if r.name == "os-nvram")
    assert str(result.status) == "skipped" and "storage.nvram_name" in result.reason
    assert_valid(outcome.tree)
