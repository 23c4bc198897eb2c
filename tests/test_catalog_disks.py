"""Disk tweaks: volatile_block, context_block, disk_driver, context_cache, disk_serial,
ioeventfd, persistent_cdrom (rules.d/50..56)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from conftest import apply, deployment, run_cli, vm_xml, write_rule, xml_text
from hypothesis import HealthCheck, given, settings
from lxml import etree

from tweaks import engine
from tweaks.catalog._disks import NameList, Names
from tweaks.errors import ParamError
from tweaks.params import FALSE_WORDS, TRUE_WORDS
from tweaks.report import APPLIED, DISABLED, NOT_MATCHED, SKIPPED, UNCHANGED

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
HOSTILE = [
    "", " ", "-1", "1e3", "0x2", "99999999999999999999", "2 2", "<x/>", "']]><x>", '"', "'",
    "../../etc/passwd", "\uff12", "\u202e2", "a" * 600, "$(reboot)", "; rm -rf /", "yes<serial>x</serial>",
]
SYSTEM = "/var/lib/one//datastores/101/42"
_NS = re.compile(r' xmlns(?::[A-Za-z0-9_.-]+)?="[^"]*"')


# --- builders -----------------------------------------------------------------------------------

def storpool_vm(user: dict[str, str] | None = None, *, images: str | None = "storpool",
                volatile: str | None = "storpool", system: str = "storpool",
                disk_template: dict[str, dict[str, str]] | None = None) -> bytes:
    """vm-42.xml with the image disks (0, 1) on TM_MAD ``images``, the volatile disk (2) on
    ``volatile`` (None: no DISK/TM_MAD) and the system datastore (HISTORY) on ``system``."""
    root = etree.fromstring(vm_xml(user))
    for disk in root.iterfind("TEMPLATE/DISK"):
        tm = disk.find("TM_MAD")
        wanted = volatile if disk.findtext("TYPE") in ("fs", "swap") else images
        if wanted is None:
            disk.remove(tm)
        else:
            tm.text = wanted
        for key, value in (disk_template or {}).get(disk.findtext("DISK_ID"), {}).items():
            el = disk.find(key)
            if el is None:
                el = etree.SubElement(disk, key)
            el.text = value
    root.find("HISTORY_RECORDS/HISTORY/TM_MAD").text = system
    return etree.tostring(root)


def _domain(data: bytes | None = None) -> etree._Element:
    return etree.fromstring(data or deployment(), etree.XMLParser(strip_cdata=False))


def disk_of(root: etree._Element, dev: str) -> etree._Element:
    found = root.xpath("devices/disk[target/@dev=$dev]", dev=dev)
    assert len(found) == 1, f"expected one disk {dev}, found {len(found)}"
    return found[0]


def file_volatile_domain(data: bytes | None = None, *, source_child: bool = False) -> bytes:
    """The fixture domain with the volatile disk (disk.2, vdb) written as a file disk, as
    oned does when the system datastore's DISK_TYPE is FILE."""
    root = _domain(data)
    disk = disk_of(root, "vdb")
    disk.set("type", "file")
    source = disk.find("source")
    path = source.attrib.pop("dev")
    source.set("file", path)
    if source_child:
        source.set("startupPolicy", "optional")
        etree.SubElement(source, "seclabel", model="dac", relabel="no")
    return etree.tostring(root)


def with_machine(machine: str, data: bytes | None = None, arch: str = "x86_64") -> bytes:
    root = _domain(data)
    os_type = root.find("os/type")
    os_type.set("machine", machine)
    os_type.set("arch", arch)
    return etree.tostring(root)


def compact(el: etree._Element) -> str:
    text = etree.tostring(el, encoding="unicode", with_tail=False)
    return _NS.sub("", re.sub(r">\s+<", "><", text))


def result(outcome: engine.Outcome, rule: str):  # type: ignore[no-untyped-def]
    return next(r for r in outcome.report.results if r.name == rule)


def status(outcome: engine.Outcome, rule: str) -> str:
    return str(result(outcome, rule).status)


def out_bytes(outcome: engine.Outcome) -> bytes:
    return engine.serialize(outcome.tree)


def assert_idempotent(outcome: engine.Outcome, vm: bytes, rules: list[str] | None = None) -> None:
    once = out_bytes(outcome)
    again = apply(once, vm, rules)
    assert out_bytes(again) == once
    assert not again.report.changed


def assert_skipped_with_warning(outcome: engine.Outcome, rule: str, attribute: str) -> None:
    assert status(outcome, rule) == SKIPPED
    assert any(w.startswith("VM 42:") and f"rule {rule}" in w and attribute in w
               for w in outcome.report.warnings), outcome.report.warnings


def enable(tmp_path: Path, name: str, text: str) -> list[str]:
    """An operator rules dir whose file ``name`` replaces the shipped one."""
    directory = tmp_path / "rules"
    write_rule(directory, name, "# yaml-language-server: $schema=../tweaks/rules.schema.json\n" + text)
    return [str(directory)]


def md5_20(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()[:20]


# --- NameList (tm_mads) ---------------------------------------------------------------------------

@pytest.mark.parametrize("raw, names", [
    (["storpool", "linstor_un"], ("storpool", "linstor_un")),
    ("storpool, linstor_un", ("storpool", "linstor_un")),
    ("storpool linstor_un,,ceph", ("storpool", "linstor_un", "ceph")),
    (" storpool ", ("storpool",)),
    ("storpool storpool", ("storpool",)),
])
def test_tm_mad_list_accepts_lists_and_separated_names(raw, names):
    parsed = NameList("tm_mads", "").parse(raw)
    assert parsed == names
    assert isinstance(parsed, Names) and str(parsed) == ",".join(names)


@pytest.mark.parametrize("raw", [
    [], "", " , ", "StorPool", "stor-pool", "../x", "a;b", ["ok", "<x/>"], [1], ["x" * 33], 5,
    " ".join(f"n{i}" for i in range(17)), None, {"from": "x"},
])
def test_tm_mad_list_rejects_bad_names(raw):
    with pytest.raises(ParamError):
        NameList("tm_mads", "").parse(raw)


@FUZZ
@given(raw=xml_text(120))
def test_tm_mad_list_fuzz_returns_only_driver_names(raw):
    try:
        names = NameList("tm_mads", "").parse(raw)
    except ParamError:
        return
    assert names and all(re.fullmatch(r"[a-z0-9_]{1,32}", n) for n in names)


def test_tm_mad_list_schema_matches_parser():
    import jsonschema

    schema = NameList("tm_mads", "").json_schema()
    for good in (["storpool"], "storpool, linstor_un", "a b"):
        jsonschema.validate(good, schema)
    for bad in ([], "Bad", "a;b", ["a-b"], 3):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_shipped_rules_check_clean():
    done = run_cli("check")
    assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()


# --- volatile_block ------------------------------------------------------------------------------

VDB_BLOCK = (
    f'<disk type="block" device="disk"><source dev="{SYSTEM}/disk.2"/><target dev="vdb" bus="virtio"/>'
    '<driver name="qemu" type="raw" cache="none" discard="unmap" iothread="2"/></disk>'
)


def test_volatile_file_disk_on_storpool_becomes_block(assert_valid):
    vm = storpool_vm()
    outcome = apply(file_volatile_domain(), vm)
    root = outcome.tree.getroot()
    assert compact(disk_of(root, "vdb")) == VDB_BLOCK
    assert status(outcome, "volatile-block") == APPLIED
    changes = {c.xpath: (c.before, c.after) for c in result(outcome, "volatile-block").changes}
    assert changes == {
        "/domain/devices/disk[3]/@type": ("file", "block"),
        "/domain/devices/disk[3]/source/@file": (f"{SYSTEM}/disk.2", None),
        "/domain/devices/disk[3]/source/@dev": (None, f"{SYSTEM}/disk.2"),
    }
    # The image disks are block already; nothing else moved.
    assert disk_of(root, "vda").get("type") == "block"
    assert_valid(outcome.tree)
    assert_idempotent(outcome, vm)


def test_volatile_block_keeps_source_attributes_and_children(assert_valid):
    outcome = apply(file_volatile_domain(source_child=True), storpool_vm())
    disk = disk_of(outcome.tree.getroot(), "vdb")
    assert compact(disk.find("source")) == (
        f'<source startupPolicy="optional" dev="{SYSTEM}/disk.2"><seclabel model="dac" relabel="no"/></source>'
    )
    assert [c.tag for c in disk] == ["source", "target", "driver"]
    assert_valid(outcome.tree)


def test_volatile_block_on_linstor(assert_valid):
    outcome = apply(file_volatile_domain(), storpool_vm(volatile="linstor_un", images="linstor_un",
                                                        system="linstor_un"))
    assert compact(disk_of(outcome.tree.getroot(), "vdb")) == VDB_BLOCK
    assert_valid(outcome.tree)


def test_volatile_disk_without_own_tm_mad_uses_the_system_datastore(assert_valid):
    outcome = apply(file_volatile_domain(), storpool_vm(volatile=None, images="ceph", system="storpool"))
    assert compact(disk_of(outcome.tree.getroot(), "vdb")) == VDB_BLOCK
    assert_valid(outcome.tree)


@pytest.mark.parametrize("vm", [
    pytest.param(lambda: vm_xml(), id="blk-fixture"),
    pytest.param(lambda: storpool_vm(volatile="ssh", system="ssh"), id="volatile-on-ssh"),
])
def test_volatile_disk_on_other_tm_mad_is_unchanged(vm, assert_valid):
    domain = file_volatile_domain()
    outcome = apply(domain, vm())
    disk = disk_of(outcome.tree.getroot(), "vdb")
    assert disk.get("type") == "file"
    assert disk.find("source").get("file") == f"{SYSTEM}/disk.2"
    assert status(outcome, "volatile-block") == UNCHANGED
    assert_valid(outcome.tree)


def test_volatile_block_leaves_image_file_disks_alone(assert_valid):
    root = _domain(file_volatile_domain())
    disk = disk_of(root, "vda")
    disk.set("type", "file")
    source = disk.find("source")
    source.set("file", source.attrib.pop("dev"))
    outcome = apply(etree.tostring(root), storpool_vm())
    vda = disk_of(outcome.tree.getroot(), "vda")
    assert vda.get("type") == "file" and vda.find("source").get("file") == f"{SYSTEM}/disk.0"
    assert disk_of(outcome.tree.getroot(), "vdb").get("type") == "block"
    assert_valid(outcome.tree)


def test_volatile_block_needs_the_vms_own_directory(assert_valid):
    root = _domain(file_volatile_domain())
    disk_of(root, "vdb").find("source").set("file", "/var/lib/one//datastores/101/43/disk.2")
    outcome = apply(etree.tostring(root), storpool_vm())
    assert disk_of(outcome.tree.getroot(), "vdb").get("type") == "file"
    assert_valid(outcome.tree)


def test_volatile_block_operator_list(tmp_path, assert_valid):
    rules = enable(tmp_path, "50-volatile-block.yaml",
                   "name: volatile-block\ntweaks:\n  - volatile_block:\n      tm_mads: 'ssh, local'\n")
    outcome = apply(file_volatile_domain(), storpool_vm(volatile="local"), rules)
    assert compact(disk_of(outcome.tree.getroot(), "vdb")) == VDB_BLOCK
    outcome = apply(file_volatile_domain(), storpool_vm(), rules)
    assert disk_of(outcome.tree.getroot(), "vdb").get("type") == "file"
    assert_valid(outcome.tree)


@FUZZ
@given(value=xml_text())
def test_volatile_block_hostile_tm_mads_from_attribute(tmp_path_factory, assert_valid, value):
    rules = enable(tmp_path_factory.mktemp("r"), "50-volatile-block.yaml",
                   "name: volatile-block\ntweaks:\n  - volatile_block:\n"
                   "      tm_mads: {from: user.T_TM, default: storpool}\n")
    outcome = apply(file_volatile_domain(), storpool_vm({"T_TM": value}), rules)
    assert_valid(outcome.tree)
    disk = disk_of(outcome.tree.getroot(), "vdb")
    try:
        names = NameList("tm_mads", "").parse(value.strip())
    except ParamError:
        assert_skipped_with_warning(outcome, "volatile-block", "T_TM")
        assert disk.get("type") == "file"
        return
    assert disk.get("type") == ("block" if "storpool" in names else "file")


# --- context_block -------------------------------------------------------------------------------

HDA_BLOCK = (
    f'<disk type="block" device="cdrom"><source dev="{SYSTEM}/disk.3"/><target dev="hda" bus="sata"/>'
    '<readonly/><driver name="qemu" type="raw"/></disk>'
)


def test_context_cdrom_on_storpool_system_becomes_block(assert_valid):
    vm = storpool_vm()
    outcome = apply(deployment(), vm)
    assert compact(disk_of(outcome.tree.getroot(), "hda")) == HDA_BLOCK
    assert status(outcome, "context-block") == APPLIED
    assert status(outcome, "volatile-block") == UNCHANGED  # already block in the fixture
    assert_valid(outcome.tree)
    assert_idempotent(outcome, vm)


def test_context_block_follows_the_system_tm_mad_not_the_images(assert_valid):
    outcome = apply(deployment(), storpool_vm(system="ssh"))
    hda = disk_of(outcome.tree.getroot(), "hda")
    assert hda.get("type") == "file" and hda.find("source").get("file") == f"{SYSTEM}/disk.3"
    assert status(outcome, "context-block") == UNCHANGED
    outcome = apply(deployment(), storpool_vm(images="ssh", volatile="ssh", system="linstor_un"))
    assert compact(disk_of(outcome.tree.getroot(), "hda")) == HDA_BLOCK
    assert_valid(outcome.tree)


def test_vm_without_block_drivers_is_unchanged_by_the_block_rules():
    outcome = apply(file_volatile_domain(), vm_xml())
    for rule in ("volatile-block", "context-block"):
        assert status(outcome, rule) == UNCHANGED
        assert not result(outcome, rule).changes


# --- disk_driver ---------------------------------------------------------------------------------

DISK_DRIVER_ON = "name: disk-driver\ntweaks:\n  - disk_driver:\n      cache: none\n      io: native\n" \
                 "      discard: unmap\n"


def test_disk_driver_is_disabled_by_default():
    outcome = apply(deployment(), storpool_vm())
    assert status(outcome, "disk-driver") == DISABLED
    assert status(outcome, "context-cache") == DISABLED


def test_disk_driver_sets_cache_io_discard_on_storpool_disks(tmp_path, assert_valid):
    rules = enable(tmp_path, "52-disk-driver.yaml", DISK_DRIVER_ON)
    vm = storpool_vm()
    outcome = apply(deployment(), vm, rules)
    root = outcome.tree.getroot()
    drivers = {dev: dict(disk_of(root, dev).find("driver").attrib) for dev in ("vda", "sda", "vdb", "hda")}
    base = {"name": "qemu", "type": "raw", "cache": "none", "io": "native", "discard": "unmap"}
    assert drivers == {"vda": {**base, "iothread": "1"}, "sda": base, "vdb": {**base, "iothread": "2"},
                       "hda": base}
    assert_valid(outcome.tree)
    assert_idempotent(outcome, vm, rules)


def test_disk_driver_ignores_other_tm_mads(tmp_path):
    rules = enable(tmp_path, "52-disk-driver.yaml", DISK_DRIVER_ON)
    outcome = apply(deployment(), vm_xml(), rules)
    assert status(outcome, "disk-driver") == UNCHANGED
    assert disk_of(outcome.tree.getroot(), "sda").find("driver").get("io") is None


def test_disk_driver_native_disk_value_wins_over_rule_value(tmp_path, assert_valid):
    # DISK 0 has IO=native in its template: a rule's io=threads leaves it.
    rules = enable(tmp_path, "52-disk-driver.yaml",
                   "name: disk-driver\ntweaks:\n  - disk_driver:\n      io: {from: user.T_DISK_IO, default: threads}\n")
    outcome = apply(deployment(), storpool_vm(), rules)
    root = outcome.tree.getroot()
    assert disk_of(root, "vda").find("driver").get("io") == "native"
    assert disk_of(root, "sda").find("driver").get("io") == "threads"
    assert "vda: kept DISK/IO=native" in result(outcome, "disk-driver").reason
    assert_valid(outcome.tree)
    # The VM's own attribute wins over DISK/IO.
    outcome = apply(deployment(), storpool_vm({"T_DISK_IO": "threads"}), rules)
    assert disk_of(outcome.tree.getroot(), "vda").find("driver").get("io") == "threads"
    assert_valid(outcome.tree)


def test_disk_driver_rejects_native_io_with_a_caching_mode(tmp_path):
    rules = enable(tmp_path, "52-disk-driver.yaml",
                   "name: disk-driver\ntweaks:\n  - disk_driver:\n"
                   "      cache: {from: user.T_CACHE, default: none}\n      io: native\n")
    assert status(apply(deployment(), storpool_vm(), rules), "disk-driver") == APPLIED
    vm = storpool_vm({"T_CACHE": "writeback"})
    outcome = apply(deployment(), vm, rules)
    assert_skipped_with_warning(outcome, "disk-driver", "T_CACHE")
    assert "io=native needs cache=none or directsync, not writeback" in result(outcome, "disk-driver").reason
    assert out_bytes(outcome) == out_bytes(apply(deployment(), vm))  # as if the rule were off


def test_disk_driver_leaves_a_disk_that_would_get_native_io_without_direct_cache(tmp_path, assert_valid):
    root = _domain()
    disk_of(root, "sda").find("driver").attrib.pop("cache")
    rules = enable(tmp_path, "52-disk-driver.yaml",
                   "name: disk-driver\ntweaks:\n  - disk_driver:\n      io: native\n      discard: ignore\n")
    outcome = apply(etree.tostring(root), storpool_vm(), rules)
    out = outcome.tree.getroot()
    assert dict(disk_of(out, "sda").find("driver").attrib) == {"name": "qemu", "type": "raw", "discard": "unmap"}
    assert disk_of(out, "vdb").find("driver").get("io") == "native"
    assert disk_of(out, "vdb").find("driver").get("discard") == "ignore"
    assert "sda: io=native with cache=default would not start" in result(outcome, "disk-driver").reason
    assert_valid(outcome.tree)


@FUZZ
@given(value=xml_text())
def test_disk_driver_hostile_attribute_values(tmp_path_factory, assert_valid, value):
    rules = enable(tmp_path_factory.mktemp("r"), "52-disk-driver.yaml",
                   "name: disk-driver\ntweaks:\n  - disk_driver:\n      cache: {from: user.T_DISK_CACHE}\n")
    outcome = apply(deployment(), storpool_vm({"T_DISK_CACHE": value}), rules)
    assert_valid(outcome.tree)
    good = ("keep", "none", "writethrough", "writeback", "directsync", "unsafe", "default")
    if value.strip().lower() in good:
        assert status(outcome, "disk-driver") in (APPLIED, UNCHANGED)
    else:
        assert_skipped_with_warning(outcome, "disk-driver", "T_DISK_CACHE")
        assert out_bytes(outcome) == out_bytes(apply(deployment(), storpool_vm()))


# --- context_cache -------------------------------------------------------------------------------

CONTEXT_CACHE_ON = "name: context-cache\ntweaks:\n  - context_cache:\n"


def test_context_cache_sets_none_native_on_cdroms(tmp_path, assert_valid):
    rules = enable(tmp_path, "53-context-cache.yaml", CONTEXT_CACHE_ON)
    vm = vm_xml()
    outcome = apply(deployment(), vm, rules)
    root = outcome.tree.getroot()
    assert dict(disk_of(root, "hda").find("driver").attrib) == {
        "name": "qemu", "type": "raw", "cache": "none", "io": "native"}
    # Disks are not CD-ROMs: untouched.
    assert dict(disk_of(root, "sda").find("driver").attrib) == {
        "name": "qemu", "type": "raw", "cache": "none", "discard": "unmap"}
    assert_valid(outcome.tree)
    assert_idempotent(outcome, vm, rules)


def test_context_cache_on_block_cdrom_without_driver(tmp_path, assert_valid):
    rules = enable(tmp_path, "53-context-cache.yaml", CONTEXT_CACHE_ON)
    root = _domain()
    hda = disk_of(root, "hda")
    hda.remove(hda.find("driver"))
    outcome = apply(etree.tostring(root), storpool_vm(), rules)  # context-block makes it block first
    assert compact(disk_of(outcome.tree.getroot(), "hda")) == (
        f'<disk type="block" device="cdrom"><source dev="{SYSTEM}/disk.3"/><target dev="hda" bus="sata"/>'
        '<readonly/><driver name="qemu" cache="none" io="native"/></disk>')
    assert_valid(outcome.tree)


def test_context_cache_keeps_native_disk_cache(tmp_path, assert_valid):
    rules = enable(tmp_path, "53-context-cache.yaml", CONTEXT_CACHE_ON)
    root = _domain()
    cd = disk_of(root, "sda")  # make disk 1 an image CD-ROM with DISK/CACHE=writeback
    cd.set("device", "cdrom")
    cd.find("driver").set("cache", "writeback")
    vm = storpool_vm(disk_template={"1": {"CACHE": "writeback"}})
    outcome = apply(etree.tostring(root), vm, rules)
    assert disk_of(outcome.tree.getroot(), "sda").find("driver").get("cache") == "writeback"
    assert disk_of(outcome.tree.getroot(), "hda").find("driver").get("io") == "native"
    assert_valid(outcome.tree)


# --- disk_serial ---------------------------------------------------------------------------------

def test_disk_serial_yes_uses_vm_disk_and_image_ids(assert_valid):
    vm = vm_xml({"T_DISKSERIAL": "YES"})
    outcome = apply(deployment(), vm)
    root = outcome.tree.getroot()
    serials = {dev: disk_of(root, dev).findtext("serial") for dev in ("vda", "sda", "vdb", "hda")}
    assert serials == {
        "vda": "c04d8a0ea70313dcd722",  # md5("42-0"): non-persistent clone of image 7
        "sda": md5_20("persistent-8"),  # persistent image 8
        "vdb": md5_20("volatile-2"),    # volatile disk 2
        "hda": None,                    # CD-ROMs get none
    }
    assert serials["vda"] == md5_20("42-0")
    assert [c.tag for c in disk_of(root, "vda")] == ["source", "target", "boot", "serial", "driver"]
    assert status(outcome, "disk-serial") == APPLIED
    assert_valid(outcome.tree)
    assert_idempotent(outcome, vm)


def test_disk_serial_hashpath_uses_source_path(assert_valid):
    vm = vm_xml({"T_DISKSERIAL": "hashpath"})
    outcome = apply(deployment(), vm)
    root = outcome.tree.getroot()
    for dev, n in (("vda", 0), ("sda", 1), ("vdb", 2)):
        assert disk_of(root, dev).findtext("serial") == md5_20(f"{SYSTEM}/disk.{n}")
    assert disk_of(root, "hda").find("serial") is None
    assert_valid(outcome.tree)
    assert_idempotent(outcome, vm)


def test_disk_serial_no_and_absent_change_nothing():
    plain = out_bytes(apply(deployment(), vm_xml()))
    outcome = apply(deployment(), vm_xml({"T_DISKSERIAL": "no"}))
    assert status(outcome, "disk-serial") == UNCHANGED
    assert out_bytes(outcome) == plain
    outcome = apply(deployment(), vm_xml())
    assert status(outcome, "disk-serial") == NOT_MATCHED


def _with_serial(serial: str) -> bytes:
    root = _domain()
    vda = disk_of(root, "vda")
    el = etree.Element("serial")
    el.text = serial
    vda.insert(3, el)
    return etree.tostring(root)


def test_disk_serial_keeps_oneds_serial_unless_explicit(tmp_path, assert_valid):
    rules = enable(tmp_path, "54-disk-serial.yaml",
                   "name: disk-serial\ntweaks:\n  - disk_serial:\n"
                   "      mode: {from: user.T_DISKSERIAL, default: yes}\n")  # YAML boolean yes
    outcome = apply(_with_serial("ONE-SERIAL-1"), vm_xml(), rules)
    root = outcome.tree.getroot()
    assert disk_of(root, "vda").findall("serial")[0].text == "ONE-SERIAL-1"
    assert len(disk_of(root, "vda").findall("serial")) == 1
    assert disk_of(root, "vdb").findtext("serial") == md5_20("volatile-2")
    assert "vda: kept existing <serial>" in result(outcome, "disk-serial").reason
    assert_valid(outcome.tree)
    outcome = apply(_with_serial("ONE-SERIAL-1"), vm_xml({"T_DISKSERIAL": "yes"}), rules)
    assert [s.text for s in disk_of(outcome.tree.getroot(), "vda").findall("serial")] == [md5_20("42-0")]
    assert_valid(outcome.tree)


def test_disk_serial_skips_disks_that_are_not_the_vms(assert_valid):
    root = _domain()
    disk_of(root, "vdb").find("source").set("dev", "/dev/other/volume")
    outcome = apply(etree.tostring(root), vm_xml({"T_DISKSERIAL": "yes"}))
    assert disk_of(outcome.tree.getroot(), "vdb").find("serial") is None
    assert disk_of(outcome.tree.getroot(), "vda").findtext("serial") == md5_20("42-0")
    assert_valid(outcome.tree)


def _serials(outcome: engine.Outcome) -> list[str | None]:
    return [s.text for s in outcome.tree.getroot().iterfind("devices/disk/serial")]


@pytest.mark.parametrize("value", ["ENABLED", "enabled", "1", "On", "0", "anything", "hash path", "YES", "-1",
                                   "$(reboot)", "../../etc/passwd", "yes<serial>x</serial>", "']]><x>"])
def test_disk_serial_on_for_every_value_but_disabled(value, assert_valid):
    """addon-storpool turns serials on for every T_DISKSERIAL but DISABLED (its
    disk-serial.py compares the upper-cased value with DISABLED and HASHPATH only):
    templates written for it keep their serials. The value itself never reaches the XML."""
    outcome = apply(deployment(), vm_xml({"T_DISKSERIAL": value}))
    assert status(outcome, "disk-serial") == APPLIED, outcome.report.warnings
    assert out_bytes(outcome) == out_bytes(apply(deployment(), vm_xml({"T_DISKSERIAL": "yes"})))
    assert_valid(outcome.tree)


@pytest.mark.parametrize("value", ["DISABLED", "disabled", "Disabled", "no", "NO"])
def test_disk_serial_disabled(value):
    outcome = apply(deployment(), vm_xml({"T_DISKSERIAL": value}))
    assert not _serials(outcome)
    assert out_bytes(outcome) == out_bytes(apply(deployment(), vm_xml()))


@pytest.mark.parametrize("value", ["HASHPATH", "hashpath", "HashPath"])
def test_disk_serial_hashpath_any_case(value):
    outcome = apply(deployment(), vm_xml({"T_DISKSERIAL": value}))
    assert out_bytes(outcome) == out_bytes(apply(deployment(), vm_xml({"T_DISKSERIAL": "hashpath"})))
    assert _serials(outcome)


@pytest.mark.parametrize("value", ["", " ", "\u202e2", "a" * 600, "yes\u200b"])
def test_disk_serial_unreadable_values_skip(value, assert_valid):
    outcome = apply(deployment(), vm_xml({"T_DISKSERIAL": value}))
    assert_skipped_with_warning(outcome, "disk-serial", "T_DISKSERIAL")
    assert out_bytes(outcome) == out_bytes(apply(deployment(), vm_xml()))
    assert_valid(outcome.tree)


@FUZZ
@given(value=xml_text())
def test_disk_serial_fuzz(assert_valid, value):
    outcome = apply(deployment(), vm_xml({"T_DISKSERIAL": value}))
    assert_valid(outcome.tree)
    serials = _serials(outcome)
    assert all(re.fullmatch(r"[0-9a-f]{20}", s or "") for s in serials)
    text = value.strip()
    if not text or not text.isprintable() or len(text) > 64:
        assert_skipped_with_warning(outcome, "disk-serial", "T_DISKSERIAL")
        assert not serials
    elif text.lower() in ("no", "disabled"):
        assert not serials
    else:
        assert serials


# --- ioeventfd -----------------------------------------------------------------------------------

def _without_iothreads() -> bytes:
    root = _domain()
    root.remove(root.find("iothreads"))
    for drv in root.iterfind("devices/*/driver[@iothread]"):
        del drv.attrib["iothread"]
    return etree.tostring(root)


@pytest.mark.parametrize("value, state", [("yes", "on"), ("ON", "on"), ("1", "on"), ("no", "off"), ("False", "off")])
def test_ioeventfd_on_virtio_disks_and_scsi_controllers(value, state, assert_valid):
    vm = vm_xml({"T_IOEVENTFD": value})
    outcome = apply(_without_iothreads(), vm)
    root = outcome.tree.getroot()
    assert disk_of(root, "vda").find("driver").get("ioeventfd") == state
    assert disk_of(root, "vdb").find("driver").get("ioeventfd") == state
    assert disk_of(root, "sda").find("driver").get("ioeventfd") is None  # scsi disk: the controller's
    assert disk_of(root, "hda").find("driver").get("ioeventfd") is None
    assert dict(root.find("devices/controller[@model='virtio-scsi']/driver").attrib) == {
        "queues": "4", "ioeventfd": state}
    assert_valid(outcome.tree)
    assert_idempotent(outcome, vm)


def test_ioeventfd_off_spares_devices_with_an_iothread(assert_valid):
    # qemu refuses ioeventfd=off on a device an iothread serves ("ioeventfd is required for iothread")
    outcome = apply(deployment(), vm_xml({"T_IOEVENTFD": "no"}))
    assert b"ioeventfd" not in out_bytes(outcome)
    assert status(outcome, "ioeventfd") == UNCHANGED
    result = next(r for r in outcome.report.results if r.name == "ioeventfd")
    assert "3 device(s) with an iothread keep ioeventfd on" in result.reason
    on = apply(deployment(), vm_xml({"T_IOEVENTFD": "yes"}))
    assert disk_of(on.tree.getroot(), "vda").find("driver").get("ioeventfd") == "on"


def test_ioeventfd_creates_missing_drivers(assert_valid):
    root = _domain()
    vda = disk_of(root, "vda")
    vda.remove(vda.find("driver"))
    ctl = root.find("devices/controller[@model='virtio-scsi']")
    ctl.remove(ctl.find("driver"))
    outcome = apply(etree.tostring(root), vm_xml({"T_IOEVENTFD": "yes"}))
    out = outcome.tree.getroot()
    assert compact(disk_of(out, "vda").find("driver")) == '<driver name="qemu" ioeventfd="on"/>'
    assert compact(out.find("devices/controller[@model='virtio-scsi']")) == \
        '<controller type="scsi" index="0" model="virtio-scsi"><driver ioeventfd="on"/></controller>'
    assert_valid(outcome.tree)


def test_ioeventfd_absent_changes_nothing():
    outcome = apply(deployment(), vm_xml())
    assert status(outcome, "ioeventfd") == NOT_MATCHED
    assert b"ioeventfd" not in out_bytes(outcome)


@FUZZ
@given(value=xml_text())
def test_ioeventfd_fuzz(assert_valid, value):
    outcome = apply(deployment(), vm_xml({"T_IOEVENTFD": value}))
    assert_valid(outcome.tree)
    word = value.strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        # off leaves the fixture's iothread-served devices alone
        assert status(outcome, "ioeventfd") == (APPLIED if word in TRUE_WORDS else UNCHANGED)
        return
    assert_skipped_with_warning(outcome, "ioeventfd", "T_IOEVENTFD")
    assert b"ioeventfd" not in out_bytes(outcome)


@pytest.mark.parametrize("value", HOSTILE)
def test_ioeventfd_hostile_values(value, assert_valid):
    outcome = apply(deployment(), vm_xml({"T_IOEVENTFD": value}))
    assert_skipped_with_warning(outcome, "ioeventfd", "T_IOEVENTFD")
    assert out_bytes(outcome) == out_bytes(apply(deployment(), vm_xml()))
    assert_valid(outcome.tree)


# --- persistent_cdrom ----------------------------------------------------------------------------

def empty_cdrom(dev: str, bus: str, kind: str = "block") -> str:
    return (f'<disk type="{kind}" device="cdrom"><driver name="qemu" type="raw" cache="none" io="native"/>'
            f'<target dev="{dev}" bus="{bus}"/><readonly/></disk>')


def cdroms(root: etree._Element) -> list[str]:
    return [compact(d) for d in root.iterfind("devices/disk[@device='cdrom']")]


def test_persistent_cdrom_adds_empty_sata_drives_on_q35(assert_valid):
    vm = vm_xml({"T_PERSISTENT_CDROM": "2"})
    outcome = apply(deployment(), vm)
    root = outcome.tree.getroot()
    assert cdroms(root)[1:] == [empty_cdrom("hdb", "sata"), empty_cdrom("hdc", "sata")]
    # Inserted right after the last disk, before the controllers.
    tags = [c.tag for c in root.find("devices")]
    assert tags[:7] == ["emulator", "disk", "disk", "disk", "disk", "disk", "disk"]
    assert_valid(outcome.tree)
    assert_idempotent(outcome, vm)


def test_persistent_cdrom_file_type_and_ide_on_pc(assert_valid):
    vm = vm_xml({"T_PERSISTENT_CDROM": "1", "T_PERSISTENT_CDROM_TYPE": "FILE"})
    outcome = apply(with_machine("pc-i440fx-7.2"), vm)
    assert cdroms(outcome.tree.getroot())[1:] == [empty_cdrom("hdb", "ide", "file")]
    assert_valid(outcome.tree)
    assert_idempotent(outcome, vm)


def test_persistent_cdrom_counts_existing_empty_drives():
    once = out_bytes(apply(deployment(), vm_xml({"T_PERSISTENT_CDROM": "2"})))
    outcome = apply(once, vm_xml({"T_PERSISTENT_CDROM": "3"}))
    assert cdroms(outcome.tree.getroot())[1:] == [empty_cdrom(d, "sata") for d in ("hdb", "hdc", "hdd")]
    outcome = apply(once, vm_xml({"T_PERSISTENT_CDROM": "1"}))
    assert status(outcome, "persistent-cdrom") == UNCHANGED
    assert out_bytes(outcome) == once


def test_persistent_cdrom_uses_only_free_targets(assert_valid):
    outcome = apply(deployment(), vm_xml({"T_PERSISTENT_CDROM": "4"}))
    root = outcome.tree.getroot()
    assert cdroms(root)[1:] == [empty_cdrom(d, "sata") for d in ("hdb", "hdc", "hdd")]
    assert "only 3 of hda..hdd free for 4" in result(outcome, "persistent-cdrom").reason
    assert [t.get("dev") for t in root.iterfind("devices/disk/target")].count("hda") == 1
    assert_valid(outcome.tree)


def test_persistent_cdrom_zero_and_absent_change_nothing():
    plain = out_bytes(apply(deployment(), vm_xml()))
    assert status(apply(deployment(), vm_xml()), "persistent-cdrom") == NOT_MATCHED
    outcome = apply(deployment(), vm_xml({"T_PERSISTENT_CDROM": "0"}))
    assert status(outcome, "persistent-cdrom") == UNCHANGED
    assert out_bytes(outcome) == plain
    # The type alone does nothing either.
    outcome = apply(deployment(), vm_xml({"T_PERSISTENT_CDROM_TYPE": "file"}))
    assert out_bytes(outcome) == plain


def test_persistent_cdrom_operator_default_and_cap(tmp_path, assert_valid):
    rules = enable(tmp_path, "56-persistent-cdrom.yaml",
                   "name: persistent-cdrom\ntweaks:\n  - persistent_cdrom:\n"
                   "      count: {from: user.T_PERSISTENT_CDROM, default: 1}\n"
                   "      type: {from: user.T_PERSISTENT_CDROM_TYPE, default: file}\n      max: 2\n")
    outcome = apply(deployment(), vm_xml(), rules)
    assert cdroms(outcome.tree.getroot())[1:] == [empty_cdrom("hdb", "sata", "file")]
    assert_valid(outcome.tree)
    # above the cap: the cap's number of drives, as addon-storpool's MAX_CDROM_DEVICES did
    outcome = apply(deployment(), vm_xml({"T_PERSISTENT_CDROM": "3"}), rules)
    assert len(cdroms(outcome.tree.getroot())) == 3
    assert "3 CD-ROM drives asked for, 2" in result(outcome, "persistent-cdrom").reason
    outcome = apply(deployment(), vm_xml({"T_PERSISTENT_CDROM": "0"}), rules)
    assert len(cdroms(outcome.tree.getroot())) == 1


def test_persistent_cdrom_not_on_other_architectures():
    outcome = apply(with_machine("virt", arch="aarch64"), vm_xml({"T_PERSISTENT_CDROM": "2"}))
    assert status(outcome, "persistent-cdrom") == UNCHANGED
    assert "no IDE/SATA CD-ROM drives on aarch64" in result(outcome, "persistent-cdrom").reason
    assert len(cdroms(outcome.tree.getroot())) == 1


@pytest.mark.parametrize("value", [*HOSTILE, "256", "04x"])
def test_persistent_cdrom_hostile_counts(value, assert_valid):
    outcome = apply(deployment(), vm_xml({"T_PERSISTENT_CDROM": value}))
    assert_skipped_with_warning(outcome, "persistent-cdrom", "T_PERSISTENT_CDROM")
    assert out_bytes(outcome) == out_bytes(apply(deployment(), vm_xml()))
    assert_valid(outcome.tree)


@FUZZ
@given(count=xml_text(), kind=xml_text())
def test_persistent_cdrom_fuzz(assert_valid, count, kind):
    outcome = apply(deployment(), vm_xml({"T_PERSISTENT_CDROM": count, "T_PERSISTENT_CDROM_TYPE": kind}))
    assert_valid(outcome.tree)
    good_count = re.fullmatch(r"[0-9]{1,10}", count.strip()) is not None and int(count.strip()) <= 4
    good_kind = kind.strip().lower() in ("file", "block")
    drives = cdroms(outcome.tree.getroot())
    if good_count and good_kind:
        assert status(outcome, "persistent-cdrom") in (APPLIED, UNCHANGED)
        assert len(drives) == 1 + min(int(count.strip()), 3)
        return
    attribute = "T_PERSISTENT_CDROM" if not good_count else "T_PERSISTENT_CDROM_TYPE"
    assert_skipped_with_warning(outcome, "persistent-cdrom", attribute)
    assert len(drives) == 1
