"""CPU, memory and NIC tweaks: cpu_vendor, cpu_numa_alt, vcpu_max, memory_max, cpu_shares,
cputune (rules.d/34..39), nic_queues, q35_root_ports, hostdev_interface (rules.d/70..72) and
the operator-only xpath_patch (no shipped rule)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest
from conftest import apply, deployment, domain_with_vcpu, vm_xml, write_rule, xml_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from tweaks import engine
from tweaks.catalog._numbers import Fixed, IntRanges
from tweaks.catalog.cpu_numa_alt import TWEAK as NUMA_ALT
from tweaks.catalog.cpu_shares import TWEAK as SHARES
from tweaks.catalog.cpu_vendor import TWEAK as VENDOR
from tweaks.catalog.cputune import NAMES as CPUTUNE_NAMES
from tweaks.catalog.cputune import TWEAK as CPUTUNE
from tweaks.catalog.hostdev_interface import TWEAK as HOSTDEV
from tweaks.catalog.memory_max import TWEAK as MEMORY_MAX
from tweaks.catalog.nic_queues import TWEAK as NIC_QUEUES
from tweaks.catalog.q35_root_ports import TWEAK as Q35
from tweaks.catalog.vcpu_max import TWEAK as VCPU_MAX
from tweaks.catalog.xpath_patch import TWEAK as XPATH
from tweaks.catalog.xpath_patch import parse_snippet, parse_xpath
from tweaks.checker import check_file
from tweaks.domain import cpuset_format, cpuset_parse, socket_cells
from tweaks.errors import ParamError
from tweaks.params import Param
from tweaks.report import APPLIED, NOT_MATCHED, SKIPPED, UNCHANGED

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
HOSTILE = [
    "", " ", "-1", "0", "1e3", "0x10", "1.5", "99999999999999999999", "4 4", "<x/>", "']]><x>", '"',
    "'", "&amp;", "../../etc/passwd", "\uff14", "\u0664", "\u202e4", "a" * 600, "$(reboot)", "; rm -rf /",
    "yes<vendor>x</vendor>", "NaN", "inf", "vcpu vcpu", "02:00:00:00:00:01,<x/>",
]
hostile = st.one_of(st.sampled_from(HOSTILE), xml_text(40))
_NS = re.compile(r' xmlns(?::[A-Za-z0-9_.-]+)?="[^"]*"')
HEADER = "# yaml-language-server: $schema=../tweaks/rules.schema.json\n"


# --- helpers ---------------------------------------------------------------------------------------

def compact(el: etree._Element) -> str:
    text = etree.tostring(el, encoding="unicode", with_tail=False)
    return _NS.sub("", re.sub(r">\s+<", "><", text))


def result(outcome: engine.Outcome, rule: str):  # type: ignore[no-untyped-def]
    return next(r for r in outcome.report.results if r.name == rule)


def status(outcome: engine.Outcome, rule: str) -> str:
    return str(result(outcome, rule).status)


def out(outcome: engine.Outcome) -> bytes:
    return engine.serialize(outcome.tree)


def rules(tmp_path: Path, name: str, text: str) -> list[str]:
    """An operator rules dir whose file ``name`` replaces the shipped one of that name."""
    directory = tmp_path / "rules"
    write_rule(directory, name, HEADER + text)
    return [str(directory)]




def run(assert_valid, domain: bytes, vm: bytes, dirs: list[str] | None = None,  # type: ignore[no-untyped-def]
        churn: tuple[str, ...] = ()) -> engine.Outcome:
    """Apply, check validity, and check that a second application changes nothing."""
    outcome = apply(domain, vm, dirs)
    data = out(outcome)
    assert_valid(data)
    again = apply(data, vm, dirs)
    assert out(again) == data, "applying the rules to their own output must change nothing"
    changed = [r.name for r in again.report.results if r.changes]
    assert not again.report.normalized and set(changed) <= set(churn), again.report.to_text()
    return outcome


@cache
def _baseline() -> bytes:
    return out(apply(deployment(), vm_xml()))


def assert_skipped(outcome: engine.Outcome, rule: str, attribute: str, domain: bytes | None = None) -> None:
    """The rule was skipped with a warning naming VM, rule and attribute, and changed nothing."""
    assert status(outcome, rule) == SKIPPED, outcome.report.to_text()
    assert any(w.startswith("VM 42:") and f"rule {rule}" in w and attribute in w
               for w in outcome.report.warnings), outcome.report.warnings
    if domain is None:
        assert out(outcome) == _baseline()
    else:
        assert out(outcome) == out(apply(domain, vm_xml()))


def parses(param: Param, value: str) -> bool:
    try:
        param.parse(value.strip())
    except ParamError:
        return False
    return True


def fuzz_attribute(assert_valid, attribute: str, rule: str, param: Param, value: str,  # type: ignore[no-untyped-def]
                   domain: bytes | None = None, extra: dict[str, str] | None = None) -> None:
    """A hostile value either parses (then the output is valid) or skips the rule with a warning."""
    outcome = apply(domain or deployment(), vm_xml({**(extra or {}), attribute: value}))
    assert_valid(out(outcome))
    if not parses(param, value):
        assert status(outcome, rule) == SKIPPED, outcome.report.to_text()
        assert any(w.startswith("VM 42:") and f"rule {rule}" in w and attribute in w
                   for w in outcome.report.warnings), outcome.report.warnings
        if not extra:
            expected = _baseline() if domain is None else out(apply(domain, vm_xml()))
            assert out(outcome) == expected


def edit_domain(change, data: bytes | None = None) -> bytes:  # type: ignore[no-untyped-def]
    root = etree.fromstring(data or deployment(), etree.XMLParser(strip_cdata=False))
    change(root)
    return etree.tostring(root)


def sub(parent: etree._Element, xml: str, index: int | None = None) -> etree._Element:
    el = etree.fromstring(xml)
    if index is None:
        parent.append(el)
    else:
        parent.insert(index, el)
    return el


MY_RULES = ("vcpu-max", "memory-max", "cpu-numa-alt", "cpu-vendor", "cpu-shares", "cputune", "nic-queues",
            "q35-root-ports", "hostdev-interface")


def test_no_attribute_no_change():
    outcome = apply(deployment(), vm_xml())
    for rule in MY_RULES:
        assert status(outcome, rule) in (NOT_MATCHED, UNCHANGED), rule
        assert not result(outcome, rule).changes
    # The q35 fixture already has oned's 16 root ports: nothing else in <devices> moved.
    assert len(outcome.tree.getroot().findall("devices/controller[@model='pcie-root-port']")) == 16


def test_shipped_rules_check_clean():
    for name in ("34-vcpu-max", "35-memory-max", "36-cpu-numa-alt", "37-cpu-vendor", "38-cpu-shares",
                 "39-cputune", "70-nic-queues", "71-q35-root-ports", "72-hostdev-interface"):
        path = Path(__file__).resolve().parent.parent / "rules.d" / f"{name}.yaml"
        data = path.read_bytes()
        assert data.startswith(HEADER.encode())
        rule, problems = check_file(str(path), data)
        assert rule is not None and not problems, problems


# --- cpu_vendor ------------------------------------------------------------------------------------

def test_vendor_needs_a_named_model(assert_valid):
    outcome = run(assert_valid, deployment(), vm_xml({"T_CPU_VENDOR": "AMD"}))
    assert status(outcome, "cpu-vendor") == UNCHANGED
    assert "no named CPU <model>" in result(outcome, "cpu-vendor").reason
    assert outcome.tree.getroot().find("cpu/vendor") is None


def test_vendor_next_to_the_vm_model(assert_valid):
    outcome = run(assert_valid, deployment(), vm_xml({"T_CPU_MODEL": "EPYC-Rome", "T_CPU_VENDOR": "amd"}))
    assert status(outcome, "cpu-vendor") == APPLIED
    cpu = outcome.tree.getroot().find("cpu")
    assert compact(cpu) == '<cpu mode="custom"><model>EPYC-Rome</model><vendor>AMD</vendor></cpu>'


def test_vendor_with_onebula_model_and_existing_vendor(assert_valid):
    def named(root: etree._Element) -> None:
        cpu = root.find("cpu")
        cpu.set("mode", "custom")
        sub(cpu, "<model fallback='forbid'>Skylake-Server</model>")
        sub(cpu, "<vendor>AMD</vendor>")

    outcome = run(assert_valid, edit_domain(named), vm_xml({"T_CPU_VENDOR": "INTEL"}))
    cpu = outcome.tree.getroot().find("cpu")
    assert compact(cpu) == ('<cpu mode="custom"><model fallback="forbid">Skylake-Server</model>'
                            '<vendor>Intel</vendor></cpu>')


def test_vendor_of_another_architecture_is_refused():
    outcome = apply(deployment(), vm_xml({"T_CPU_MODEL": "EPYC-Rome", "T_CPU_VENDOR": "IBM"}))
    assert status(outcome, "cpu-vendor") == SKIPPED
    assert any("T_CPU_VENDOR" in w and "x86_64" in w for w in outcome.report.warnings)
    assert outcome.tree.getroot().find("cpu/vendor") is None


@FUZZ
@given(value=hostile)
def test_vendor_hostile(assert_valid, value):
    fuzz_attribute(assert_valid, "T_CPU_VENDOR", "cpu-vendor", VENDOR.param("vendor"), value)


# --- cpu_numa_alt ----------------------------------------------------------------------------------

def test_socket_cells_layouts():
    assert socket_cells(2, 2, 1) == ["0-1", "2-3"]
    assert socket_cells(2, 2, 1, interleave=True) == ["0,2", "1,3"]
    assert socket_cells(2, 2, 2, interleave=True) == ["0-1,4-5", "2-3,6-7"]
    assert socket_cells(3, 1, 1, interleave=True) == ["0", "1", "2"]
    assert socket_cells(1, 4, 1, interleave=True) == ["0-3"]
    assert cpuset_format({5, 0, 1, 2, 9}) == "0-2,5,9"
    assert cpuset_parse("0-3,^2,7") == {0, 1, 3, 7}
    assert cpuset_parse("3-1") is None and cpuset_parse("x") is None and cpuset_parse("0-999999") is None


def test_alt_numa_interleaves_the_socket_cells(assert_valid):
    outcome = run(assert_valid, deployment(), vm_xml({"T_CPU_SOCKETS": "2", "T_CPU_ALT_NUMA": "yes"}))
    assert status(outcome, "cpu-numa-alt") == APPLIED
    cpu = outcome.tree.getroot().find("cpu")
    assert compact(cpu.find("topology")) == '<topology sockets="2" cores="2" threads="1"/>'
    assert compact(cpu.find("numa")) == (
        '<numa><cell id="0" cpus="0,2" memory="2097152" unit="KiB"/>'
        '<cell id="1" cpus="1,3" memory="2097152" unit="KiB"/></numa>')


def test_alt_numa_keeps_threads_of_a_core_together(assert_valid):
    user = {"T_CPU_SOCKETS": "2", "T_CPU_THREADS": "2", "T_CPU_ALT_NUMA": "on"}
    outcome = run(assert_valid, domain_with_vcpu(8), vm_xml(user, vcpu=8))
    cells = outcome.tree.getroot().findall("cpu/numa/cell")
    assert [c.get("cpus") for c in cells] == ["0-1,4-5", "2-3,6-7"]


@pytest.mark.parametrize("user", [{"T_CPU_ALT_NUMA": "yes"}, {"T_CPU_SOCKETS": "2", "T_CPU_ALT_NUMA": "no"}])
def test_alt_numa_without_sockets_or_off(assert_valid, user):
    outcome = run(assert_valid, deployment(), vm_xml(user))
    assert status(outcome, "cpu-numa-alt") == UNCHANGED
    assert not result(outcome, "cpu-numa-alt").changes


def test_alt_numa_leaves_pinned_cells_alone(assert_valid):
    def pinned(root: etree._Element) -> None:
        cpu = root.find("cpu")
        sub(cpu, "<topology sockets='2' cores='2' threads='1'/>")
        sub(cpu, "<numa><cell id='0' cpus='0-1' memory='2097152' unit='KiB'/>"
                 "<cell id='1' cpus='2-3' memory='2097152' unit='KiB'/></numa>")
        sub(root.find("cputune"), "<vcpupin vcpu='0' cpuset='0'/>")

    outcome = run(assert_valid, edit_domain(pinned), vm_xml({"T_CPU_ALT_NUMA": "yes"}))
    assert status(outcome, "cpu-numa-alt") == UNCHANGED
    assert "pinned" in result(outcome, "cpu-numa-alt").reason


@FUZZ
@given(value=hostile)
def test_alt_numa_hostile(assert_valid, value):
    fuzz_attribute(assert_valid, "T_CPU_ALT_NUMA", "cpu-numa-alt", NUMA_ALT.param("interleave"), value)


# --- vcpu_max --------------------------------------------------------------------------------------

def test_vcpu_max_alone(assert_valid):
    outcome = run(assert_valid, deployment(), vm_xml({"T_VCPU_MAX": "8"}))
    root = outcome.tree.getroot()
    assert compact(root.find("vcpu")) == '<vcpu current="4">8</vcpu>'
    assert root.find("vcpus") is None, "<vcpus> only when asked for"
    assert root.find("cpu/numa") is None


def test_vcpu_max_rederives_cores_and_cells_of_cpu_topology(assert_valid):
    outcome = run(assert_valid, deployment(), vm_xml({"T_VCPU_MAX": "8", "T_CPU_SOCKETS": "2"}))
    cpu = outcome.tree.getroot().find("cpu")
    assert compact(cpu.find("topology")) == '<topology sockets="2" cores="4" threads="1"/>'
    assert [c.get("cpus") for c in cpu.findall("numa/cell")] == ["0-3", "4-7"]
    # cpu_topology's <vcpus> (T_CPU_SOCKETS, as addon-storpool's cpu.py), rewritten for the maximum
    (vcpus,) = outcome.tree.getroot().findall("vcpus")
    assert [(v.get("enabled"), v.get("hotpluggable")) for v in vcpus] == [
        ("yes", "no"), *[("yes", "yes")] * 3, *[("no", "yes")] * 4]


def test_vcpu_max_with_interleaved_cells(assert_valid):
    user = {"T_VCPU_MAX": "8", "T_CPU_SOCKETS": "2", "T_CPU_ALT_NUMA": "yes"}
    outcome = run(assert_valid, deployment(), vm_xml(user))
    cells = outcome.tree.getroot().findall("cpu/numa/cell")
    assert [c.get("cpus") for c in cells] == ["0,2,4,6", "1,3,5,7"]


def test_vcpu_max_that_does_not_fit_the_topology_is_refused():
    outcome = apply(deployment(), vm_xml({"T_VCPU_MAX": "6", "T_CPU_SOCKETS": "2", "T_CPU_THREADS": "2"}))
    assert status(outcome, "vcpu-max") == SKIPPED
    assert any("T_VCPU_MAX" in w and "multiple of sockets x threads = 4" in w for w in outcome.report.warnings)
    root = outcome.tree.getroot()
    assert compact(root.find("vcpu")) == "<vcpu><![CDATA[4]]></vcpu>"
    assert compact(root.find("cpu/topology")) == '<topology sockets="2" cores="1" threads="2"/>'


@pytest.mark.parametrize(("value", "why"), [("2", "below the VM's 4 vCPUs"), ("300", "288 vCPUs")])
def test_vcpu_max_out_of_bounds_is_refused(value, why):
    outcome = apply(deployment(), vm_xml({"T_VCPU_MAX": value}))
    assert_skipped(outcome, "vcpu-max", "T_VCPU_MAX")
    assert any(why in w for w in outcome.report.warnings)


def test_vcpu_max_writes_one_vcpus_when_asked(tmp_path, assert_valid):
    dirs = rules(tmp_path, "34-vcpu-max.yaml",
                 "name: vcpu-max\ntweaks:\n  - vcpu_max:\n      max: {from: user.T_VCPU_MAX}\n      vcpus: true\n")
    outcome = run(assert_valid, deployment(), vm_xml({"T_VCPU_MAX": "6", "T_CPU_SOCKETS": "2"}), dirs)
    root = outcome.tree.getroot()
    assert len(root.findall("vcpus")) == 1, "the add-on duplicated <vcpus> with a CPU topology"
    assert compact(root.find("vcpus")) == (
        '<vcpus><vcpu id="0" enabled="yes" hotpluggable="no"/><vcpu id="1" enabled="yes" hotpluggable="yes"/>'
        '<vcpu id="2" enabled="yes" hotpluggable="yes"/><vcpu id="3" enabled="yes" hotpluggable="yes"/>'
        '<vcpu id="4" enabled="no" hotpluggable="yes"/><vcpu id="5" enabled="no" hotpluggable="yes"/></vcpus>')
    assert [el.tag for el in root][2:4] == ["vcpu", "vcpus"]
    assert compact(root.find("cpu/topology")) == '<topology sockets="2" cores="3" threads="1"/>'


def test_vcpu_max_rewrites_an_existing_vcpus(assert_valid):
    def with_vcpus(root: etree._Element) -> None:
        entries = "".join(f"<vcpu id='{i}' enabled='yes' hotpluggable='no'/>" for i in range(4))
        sub(root, f"<vcpus>{entries}</vcpus>", index=3)

    outcome = run(assert_valid, edit_domain(with_vcpus), vm_xml({"T_VCPU_MAX": "5"}))
    root = outcome.tree.getroot()
    assert len(root.findall("vcpus")) == 1
    assert [(v.get("enabled"), v.get("hotpluggable")) for v in root.find("vcpus")] == [
        ("yes", "no"), ("yes", "no"), ("yes", "no"), ("yes", "no"), ("no", "yes")]


def test_vcpu_max_widens_a_single_cell(assert_valid):
    def cell(root: etree._Element) -> None:
        sub(root.find("cpu"), "<numa><cell id='0' cpus='0-3' memory='4194304' unit='KiB'/></numa>")

    outcome = run(assert_valid, edit_domain(cell), vm_xml({"T_VCPU_MAX": "16"}))
    assert compact(outcome.tree.getroot().find("cpu/numa")) == (
        '<numa><cell id="0" cpus="0-15" memory="4194304" unit="KiB"/></numa>')


def test_vcpu_max_native_wins_over_a_rule_default_not_over_the_vm(tmp_path, assert_valid):
    native = domain_with_vcpu(8).replace(b"<vcpu>", b"<vcpu current='4'>")
    dirs = rules(tmp_path, "34-vcpu-max.yaml",
                 "name: vcpu-max\ntweaks:\n  - vcpu_max:\n      max: {from: user.T_VCPU_MAX, default: 16}\n")
    outcome = run(assert_valid, native, vm_xml(), dirs)
    assert compact(outcome.tree.getroot().find("vcpu")) == '<vcpu current="4">8</vcpu>'
    assert "kept oned's VCPU_MAX" in result(outcome, "vcpu-max").reason
    outcome = run(assert_valid, native, vm_xml({"T_VCPU_MAX": "12"}), dirs)
    assert compact(outcome.tree.getroot().find("vcpu")) == '<vcpu current="4">12</vcpu>'
    outcome = run(assert_valid, deployment(), vm_xml(), dirs)
    assert compact(outcome.tree.getroot().find("vcpu")) == '<vcpu current="4">16</vcpu>'


@FUZZ
@given(value=hostile)
def test_vcpu_max_hostile(assert_valid, value):
    fuzz_attribute(assert_valid, "T_VCPU_MAX", "vcpu-max", VCPU_MAX.param("max"), value)


# --- memory_max ------------------------------------------------------------------------------------

def test_memory_max_hotplug_adds_max_memory_and_a_cell(assert_valid):
    outcome = run(assert_valid, deployment(), vm_xml({"T_MEMORY_MAX": "8192"}))
    root = outcome.tree.getroot()
    assert compact(root.find("maxMemory")) == '<maxMemory slots="16" unit="KiB">8388608</maxMemory>'
    assert compact(root.find("memory")) == "<memory>4194304</memory>"
    assert root.find("currentMemory") is None
    assert compact(root.find("cpu")) == (
        '<cpu mode="host-passthrough"><numa><cell id="0" cpus="0-3" memory="4194304" unit="KiB"/></numa></cpu>')


def test_memory_max_cell_covers_the_maximum_vcpus(assert_valid):
    outcome = run(assert_valid, deployment(), vm_xml({"T_MEMORY_MAX": "8192", "T_VCPU_MAX": "8"}))
    assert outcome.tree.getroot().find("cpu/numa/cell").get("cpus") == "0-7"


def test_memory_max_keeps_the_socket_cells(assert_valid):
    outcome = run(assert_valid, deployment(), vm_xml({"T_MEMORY_MAX": "6144", "T_CPU_SOCKETS": "2"}))
    root = outcome.tree.getroot()
    assert [(c.get("cpus"), c.get("memory")) for c in root.findall("cpu/numa/cell")] == [
        ("0-1", "2097152"), ("2-3", "2097152")]
    assert root.find("maxMemory").text == "6291456"


def test_memory_max_balloon(tmp_path, assert_valid):
    dirs = rules(tmp_path, "35-memory-max.yaml",
                 "name: memory-max\ntweaks:\n  - memory_max:\n      max: {from: user.T_MEMORY_MAX}\n"
                 "      mode: balloon\n")
    outcome = run(assert_valid, deployment(), vm_xml({"T_MEMORY_MAX": "8192", "T_CPU_SOCKETS": "2"}), dirs)
    root = outcome.tree.getroot()
    assert compact(root.find("memory")) == "<memory>8388608</memory>"
    assert compact(root.find("currentMemory")) == '<currentMemory unit="KiB">4194304</currentMemory>'
    assert root.find("maxMemory") is None
    assert [c.get("memory") for c in root.findall("cpu/numa/cell")] == ["4194304", "4194304"]


def test_memory_max_not_above_memory_is_refused():
    outcome = apply(deployment(), vm_xml({"T_MEMORY_MAX": "4096"}))
    assert_skipped(outcome, "memory-max", "T_MEMORY_MAX")
    assert any("not more than the VM's memory (4096 MiB)" in w for w in outcome.report.warnings)


def test_memory_max_native_balloon_kept_unless_the_vm_asks(tmp_path, assert_valid):
    native = deployment().replace(b"<memory>4194304</memory>",
                                  b"<memory>8388608</memory>\n\t<currentMemory>4194304</currentMemory>")
    dirs = rules(tmp_path, "35-memory-max.yaml",
                 "name: memory-max\ntweaks:\n  - memory_max:\n      max: {from: user.T_MEMORY_MAX, default: 16384}\n")
    outcome = run(assert_valid, native, vm_xml(template={"MEMORY_MAX": "8192"}), dirs)
    assert "kept oned's MEMORY_MAX" in result(outcome, "memory-max").reason
    outcome = run(assert_valid, native, vm_xml({"T_MEMORY_MAX": "12288"}, template={"MEMORY_MAX": "8192"}), dirs)
    root = outcome.tree.getroot()
    assert root.find("memory").text == "4194304", "hotplug boots with the current memory"
    assert root.find("currentMemory").text == "4194304"
    assert root.find("maxMemory").text == "12582912"


@FUZZ
@given(value=hostile)
def test_memory_max_hostile(assert_valid, value):
    fuzz_attribute(assert_valid, "T_MEMORY_MAX", "memory-max", MEMORY_MAX.param("max"), value)


# --- cpu_shares ------------------------------------------------------------------------------------

def test_fixed_decimal_param():
    mul = SHARES.param("multiplier")
    assert mul.parse("0.1") == 100000 and mul.parse(0.1) == 100000 and mul.parse(2) == 2000000
    assert mul.parse("256") == 256000000
    for bad in ("1e3", "0.0000001", "-1", "256.1", "0", ".5", "nan", True, "0,5"):
        with pytest.raises(ParamError):
            mul.parse(bad)
    assert isinstance(mul, Fixed) and mul.json_schema()["anyOf"][0] == {"type": "number", "minimum": 0.001,
                                                                        "maximum": 256.0}


@pytest.mark.parametrize(("user", "vcpu", "shares"), [
    ({"T_CPUTUNE_SHARES": "512"}, 4, "512"),
    ({"T_CPUTUNE_MUL": "0.5"}, 4, "2048"),
    ({"T_CPUTUNE_MUL": "0.1"}, 4, "410"),       # ceil(409.6)
    ({"T_CPUTUNE_MUL": "0.3"}, 10, "3072"),     # exact: binary floats would give 3073
    ({"T_CPUTUNE_MUL": "0.001"}, 1, "2"),       # ceil(1.024), libvirt's minimum is 2
    ({"T_CPUTUNE_SHARES": "300", "T_CPUTUNE_MUL": "2"}, 4, "300"),
])
def test_shares(assert_valid, user, vcpu, shares):
    outcome = run(assert_valid, domain_with_vcpu(vcpu), vm_xml(user, vcpu=vcpu))
    assert compact(outcome.tree.getroot().find("cputune")) == f"<cputune><shares>{shares}</shares></cputune>"


def test_shares_use_the_boot_vcpus(assert_valid):
    outcome = run(assert_valid, deployment(), vm_xml({"T_CPUTUNE_MUL": "1", "T_VCPU_MAX": "8"}))
    assert outcome.tree.getroot().findtext("cputune/shares") == "4096"


def test_shares_cap(tmp_path):
    dirs = rules(tmp_path, "38-cpu-shares.yaml",
                 "name: cpu-shares\ntweaks:\n  - cpu_shares:\n"
                 "      shares: {from: user.T_CPUTUNE_SHARES, default: auto}\n"
                 "      multiplier: {from: user.T_CPUTUNE_MUL, default: 0.1}\n      max: 2000\n")
    outcome = apply(deployment(), vm_xml({"T_CPUTUNE_SHARES": "4000"}), dirs)
    assert status(outcome, "cpu-shares") == SKIPPED
    assert any("T_CPUTUNE_SHARES='4000': gives 4000 CPU shares, more than the allowed 2000" in w
               for w in outcome.report.warnings), outcome.report.warnings
    outcome = apply(deployment(), vm_xml(), dirs)  # rule default: ceil(4 x 0.1 x 1024) = 410
    assert outcome.tree.getroot().findtext("cputune/shares") == "410"


def test_shares_rule_default_never_adds_shares(tmp_path, assert_valid):
    no_shares = deployment().replace(b"\t<cputune>\n\t\t<shares>1024</shares>\n\t</cputune>\n", b"")
    assert b"cputune" not in no_shares
    dirs = rules(tmp_path, "38-cpu-shares.yaml",
                 "name: cpu-shares\ntweaks:\n  - cpu_shares:\n"
                 "      shares: {from: user.T_CPUTUNE_SHARES, default: auto}\n"
                 "      multiplier: {from: user.T_CPUTUNE_MUL, default: 0.1}\n")
    outcome = run(assert_valid, no_shares, vm_xml(), dirs)
    assert outcome.tree.getroot().find("cputune") is None
    assert "only changes an existing one" in result(outcome, "cpu-shares").reason
    outcome = run(assert_valid, no_shares, vm_xml({"T_CPUTUNE_SHARES": "300"}), dirs)
    assert compact(outcome.tree.getroot().find("cputune")) == "<cputune><shares>300</shares></cputune>"


@FUZZ
@given(value=hostile, attribute=st.sampled_from(["T_CPUTUNE_SHARES", "T_CPUTUNE_MUL"]))
def test_shares_hostile(assert_valid, value, attribute):
    param = SHARES.param("shares" if attribute == "T_CPUTUNE_SHARES" else "multiplier")
    fuzz_attribute(assert_valid, attribute, "cpu-shares", param, value)


# --- cputune ---------------------------------------------------------------------------------------

def test_cputune_all_limits_keep_shares(assert_valid):
    user = {f"T_CPUTUNE_{name.upper()}": str(1000 + i) for i, name in enumerate(CPUTUNE_NAMES)}
    user["T_CPUTUNE_QUOTA"] = "-1"
    outcome = run(assert_valid, deployment(), vm_xml(user))
    assert compact(outcome.tree.getroot().find("cputune")) == (
        "<cputune><shares>1024</shares><period>1000</period><quota>-1</quota>"
        "<global_period>1002</global_period><global_quota>1003</global_quota>"
        "<emulator_period>1004</emulator_period><emulator_quota>1005</emulator_quota>"
        "<iothread_period>1006</iothread_period><iothread_quota>1007</iothread_quota></cputune>")


def test_cputune_updates_an_existing_element(assert_valid):
    domain = deployment().replace(b"<shares>1024</shares>", b"<shares>1024</shares>\n\t\t<quota>5000</quota>")
    outcome = run(assert_valid, domain, vm_xml({"T_CPUTUNE_QUOTA": "17592186044415", "T_CPUTUNE_PERIOD": "1000000"}))
    assert compact(outcome.tree.getroot().find("cputune")) == (
        "<cputune><shares>1024</shares><quota>17592186044415</quota><period>1000000</period></cputune>")


@pytest.mark.parametrize(("attribute", "value"), [
    ("T_CPUTUNE_QUOTA", "999"), ("T_CPUTUNE_QUOTA", "-2"), ("T_CPUTUNE_QUOTA", "17592186044416"),
    ("T_CPUTUNE_PERIOD", "999"), ("T_CPUTUNE_EMULATOR_PERIOD", "1000001"), ("T_CPUTUNE_GLOBAL_QUOTA", "0"),
])
def test_cputune_out_of_libvirt_range(attribute, value):
    assert_skipped(apply(deployment(), vm_xml({attribute: value})), "cputune", attribute)


def test_cputune_drop_shares_is_an_operator_choice(tmp_path, assert_valid):
    dirs = rules(tmp_path, "39-cputune.yaml",
                 "name: cputune\ntweaks:\n  - cputune:\n      quota: {from: user.T_CPUTUNE_QUOTA}\n"
                 "      drop_shares: true\n      keep_shares: {from: user.T_CPUTUNE_SHARES_KEEP, default: no}\n")
    outcome = run(assert_valid, deployment(), vm_xml({"T_CPUTUNE_QUOTA": "20000"}), dirs)
    assert compact(outcome.tree.getroot().find("cputune")) == "<cputune><quota>20000</quota></cputune>"
    outcome = run(assert_valid, deployment(), vm_xml({"T_CPUTUNE_QUOTA": "20000", "T_CPUTUNE_SHARES_KEEP": "yes"}),
                  dirs)
    assert compact(outcome.tree.getroot().find("cputune")) == (
        "<cputune><shares>1024</shares><quota>20000</quota></cputune>")


def test_int_ranges_param():
    quota = CPUTUNE.param("quota")
    assert isinstance(quota, IntRanges)
    assert quota.parse("-1") == -1 and quota.parse(1000) == 1000 and quota.parse("NONE") == "none"
    for bad in ("-0x1", "1_000", "\u0661\u0660\u0660\u0660", "+1000", "1000.0", True, ""):
        with pytest.raises(ParamError):
            quota.parse(bad)
    assert quota.type_doc() == "int -1 or 1000..17592186044415|none"


@FUZZ
@given(value=hostile, attribute=st.sampled_from([f"T_CPUTUNE_{n.upper()}" for n in CPUTUNE_NAMES]
                                                 + ["T_CPUTUNE_SHARES_KEEP"]))
def test_cputune_hostile(assert_valid, value, attribute):
    name = attribute[len("T_CPUTUNE_"):].lower()
    param = CPUTUNE.param("keep_shares" if name == "shares_keep" else name)
    extra = {"T_CPUTUNE_PERIOD": "100000"} if attribute == "T_CPUTUNE_SHARES_KEEP" else None
    fuzz_attribute(assert_valid, attribute, "cputune", param, value, extra=extra)


# --- nic_queues ------------------------------------------------------------------------------------

def two_nics(root: etree._Element) -> None:
    devices = root.find("devices")
    nic = devices.find("interface")
    index = list(devices).index(nic) + 1
    sub(devices, "<interface type='bridge'><source bridge='br1'/><mac address='02:00:0a:00:01:2a'/>"
                 "<target dev='one-42-1'/><model type='virtio'/></interface>", index)
    sub(devices, "<interface type='bridge'><source bridge='br2'/><mac address='02:00:0a:00:02:2a'/>"
                 "<target dev='one-42-2'/><model type='e1000'/></interface>", index + 1)


def nic_drivers(outcome: engine.Outcome) -> list[str | None]:
    return [None if (d := i.find("driver")) is None else compact(d)
            for i in outcome.tree.getroot().iterfind("devices/interface")]


@pytest.mark.parametrize(("value", "queues"), [("2", "2"), ("VCPU", "4"), ("vcpu", "4"), ("4", "4")])
def test_nic_queues(assert_valid, value, queues):
    outcome = run(assert_valid, deployment(), vm_xml({"T_NIC_QUEUES": value}))
    nic = outcome.tree.getroot().find("devices/interface")
    assert compact(nic) == ('<interface type="bridge"><source bridge="br0"/><mac address="02:00:0a:00:00:2a"/>'
                            f'<target dev="one-42-0"/><model type="virtio"/><driver name="vhost" queues="{queues}"/>'
                            "</interface>")


def test_nic_queues_per_nic(assert_valid):
    domain = edit_domain(two_nics)
    outcome = run(assert_valid, domain, vm_xml({"T_NIC_QUEUES": "2", "T_NIC1_QUEUES": "3", "T_NIC2_QUEUES": "4"}))
    assert nic_drivers(outcome) == ['<driver name="vhost" queues="2"/>', '<driver name="vhost" queues="3"/>', None]
    outcome = run(assert_valid, domain, vm_xml({"T_NIC_QUEUES": "2", "T_NIC0_QUEUES": "0"}))
    assert nic_drivers(outcome) == [None, '<driver name="vhost" queues="2"/>', None]
    outcome = run(assert_valid, domain, vm_xml({"T_NIC1_QUEUES": "vcpu"}))
    assert nic_drivers(outcome) == [None, '<driver name="vhost" queues="4"/>', None]


def test_nic_queues_per_nic_can_be_turned_off(tmp_path, assert_valid):
    dirs = rules(tmp_path, "70-nic-queues.yaml",
                 "name: nic-queues\ntweaks:\n  - nic_queues:\n      queues: {from: user.T_NIC_QUEUES}\n"
                 "      per_nic: false\n")
    outcome = run(assert_valid, edit_domain(two_nics), vm_xml({"T_NIC_QUEUES": "2", "T_NIC1_QUEUES": "<bad>"}), dirs)
    assert nic_drivers(outcome) == ['<driver name="vhost" queues="2"/>', '<driver name="vhost" queues="2"/>', None]


@pytest.mark.parametrize("user", [{"T_NIC_QUEUES": "5"}, {"T_NIC0_QUEUES": "5"}, {"T_NIC0_QUEUES": "x"},
                                  {"T_NIC_QUEUES": "2", "T_NIC0_QUEUES": "1025"}])
def test_nic_queues_refused(user):
    attribute = next(k for k in user if k != "T_NIC_QUEUES") if len(user) > 1 else next(iter(user))
    outcome = apply(deployment(), vm_xml(user))
    assert_skipped(outcome, "nic-queues", f"USER_TEMPLATE/{attribute}=")


def test_nic_queues_native_and_cap(tmp_path, assert_valid):
    native = deployment().replace(b"<model type='virtio'/>",
                                  b"<model type='virtio'/>\n\t\t\t<driver name='vhost' queues='3'/>")
    dirs = rules(tmp_path, "70-nic-queues.yaml",
                 "name: nic-queues\ntweaks:\n  - nic_queues:\n      queues: {from: user.T_NIC_QUEUES, default: vcpu}\n"
                 "      max: 2\n")
    outcome = run(assert_valid, native, vm_xml(), dirs)
    assert nic_drivers(outcome) == ['<driver name="vhost" queues="3"/>']
    assert "kept oned's NIC/VIRTIO_QUEUES" in result(outcome, "nic-queues").reason
    outcome = run(assert_valid, native, vm_xml({"T_NIC_QUEUES": "vcpu"}), dirs)
    assert nic_drivers(outcome) == ['<driver name="vhost" queues="2"/>'], "the operator's max caps vcpu"
    outcome = run(assert_valid, deployment(), vm_xml(), dirs)
    assert nic_drivers(outcome) == ['<driver name="vhost" queues="2"/>']


@FUZZ
@given(value=hostile, attribute=st.sampled_from(["T_NIC_QUEUES", "T_NIC0_QUEUES"]))
def test_nic_queues_hostile(assert_valid, value, attribute):
    fuzz_attribute(assert_valid, attribute, "nic-queues", NIC_QUEUES.param("queues"), value)


# --- q35_root_ports --------------------------------------------------------------------------------

def pci_models(outcome: engine.Outcome) -> list[str]:
    return [c.get("model", "") for c in outcome.tree.getroot().iterfind("devices/controller[@type='pci']")]


def test_q35_adds_only_the_missing_ports_next_to_oned_ones(assert_valid):
    outcome = run(assert_valid, deployment(), vm_xml({"Q35_PCIE_ROOT_PORTS": "20"}))
    root = outcome.tree.getroot()
    assert len(root.findall("devices")) == 1
    assert pci_models(outcome) == ["pcie-root"] + ["pcie-root-port"] * 20 + ["pcie-to-pci-bridge"]
    assert len(result(outcome, "q35-root-ports").changes) == 4
    assert "\n\t\t<controller type=\"pci\" model=\"pcie-root-port\"/>\n\t\t<controller type=\"pci\" " \
           "model=\"pcie-to-pci-bridge\"/>" in out(outcome).decode()


def test_q35_fewer_ports_than_oned_wrote_changes_nothing(assert_valid):
    outcome = run(assert_valid, deployment(), vm_xml({"Q35_PCIE_ROOT_PORTS": "4"}))
    assert status(outcome, "q35-root-ports") == UNCHANGED
    assert "already has 16" in result(outcome, "q35-root-ports").reason
    assert out(outcome) == _baseline()


def test_q35_without_oned_controllers(assert_valid):
    def bare(root: etree._Element) -> None:
        for block in root.findall("devices")[1:2]:
            root.remove(block)

    domain = edit_domain(bare)
    outcome = run(assert_valid, domain, vm_xml({"Q35_PCIE_ROOT_PORTS": "2"}))
    controllers = [compact(c) for c in outcome.tree.getroot().iterfind("devices/controller[@type='pci']")]
    assert controllers == ['<controller type="pci" index="0" model="pcie-root"/>',
                           '<controller type="pci" model="pcie-root-port"/>',
                           '<controller type="pci" model="pcie-root-port"/>',
                           '<controller type="pci" model="pcie-to-pci-bridge"/>']


def test_q35_only_on_q35(assert_valid):
    def pc(root: etree._Element) -> None:
        root.find("os/type").set("machine", "pc-i440fx-7.2")
        root.remove(root.findall("devices")[1])

    outcome = run(assert_valid, edit_domain(pc), vm_xml({"Q35_PCIE_ROOT_PORTS": "8"}))
    assert status(outcome, "q35-root-ports") == NOT_MATCHED
    assert pci_models(outcome) == []


@FUZZ
@given(value=hostile)
def test_q35_hostile(assert_valid, value):
    fuzz_attribute(assert_valid, "Q35_PCIE_ROOT_PORTS", "q35-root-ports", Q35.param("ports"), value)


# --- hostdev_interface -----------------------------------------------------------------------------

VF1 = "<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x05' " \
      "slot='0x00' function='0x1'/></source></hostdev>"
VF2 = "<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x05' " \
      "slot='0x00' function='0x2'/></source><address type='pci' domain='0x0000' bus='0x01' slot='0x00' " \
      "function='0x0'/><boot order='2'/></hostdev>"


def with_vfs(root: etree._Element) -> None:
    devices = root.find("devices")
    graphics = list(devices).index(devices.find("graphics"))
    sub(devices, VF1, graphics)
    sub(devices, VF2, graphics + 1)


def converted(mac: str, function: str, tail: str = "") -> str:
    return ('<interface type="hostdev" managed="yes"><driver name="vfio"/>'
            f'<mac address="{mac}"/><source><address type="pci" domain="0x0000" bus="0x05" slot="0x00" '
            f'function="{function}"/></source>{tail}</interface>')


def test_vfs_become_interfaces_with_macs(assert_valid):
    outcome = run(assert_valid, edit_domain(with_vfs),
                  vm_xml({"T_VF_MACS": "02:00:00:00:00:01, 02:AB:00:00:00:02"}))
    root = outcome.tree.getroot()
    assert root.find("devices/hostdev") is None
    found = [compact(i) for i in root.iterfind("devices/interface[@type='hostdev']")]
    assert found == [converted("02:00:00:00:00:01", "0x1"),
                     converted("02:ab:00:00:00:02", "0x2", '<address type="pci" domain="0x0000" bus="0x01" '
                               'slot="0x00" function="0x0"/><boot order="2"/>')]
    tags = [c.tag for c in root.find("devices")]
    assert tags[tags.index("graphics") - 3:tags.index("graphics") + 1] == [
        "interface", "interface", "interface", "graphics"], "converted in place"


def test_empty_item_leaves_a_device_alone(assert_valid):
    outcome = run(assert_valid, edit_domain(with_vfs), vm_xml({"T_VF_MACS": ",02:00:00:00:00:02"}))
    devices = outcome.tree.getroot().find("devices")
    assert compact(devices.find("hostdev")) == compact(etree.fromstring(VF1))
    assert devices.find("interface[@type='hostdev']/mac").get("address") == "02:00:00:00:00:02"


def test_single_pci_mac_from_the_template(assert_valid):
    def one_vf(root: etree._Element) -> None:
        sub(root.find("devices"), VF1)

    outcome = run(assert_valid, edit_domain(one_vf), vm_xml(template={"PCI/MAC": "02:00:0a:00:00:99"}))
    assert compact(outcome.tree.getroot().find("devices/interface[@type='hostdev']")) == converted(
        "02:00:0a:00:00:99", "0x1")


def _pci_vm(*macs: str | None) -> bytes:
    """vm-42 with one TEMPLATE/PCI per item (a MAC, or None for a PCI device without one)."""
    root = etree.fromstring(vm_xml())
    template = root.find("TEMPLATE")
    for index, mac in enumerate(macs):
        pci = etree.SubElement(template, "PCI")
        for tag, text in (("DEVICE", "1515"), ("VENDOR", "8086"), ("SHORT_ADDRESS", f"05:00.{index + 1}"),
                          ("MAC", mac)):
            if text is not None:
                etree.SubElement(pci, tag).text = text
    return etree.tostring(root)


@pytest.mark.parametrize(("macs", "expected"), [
    ((None, "02:00:0a:00:00:98"), ["hostdev", "02:00:0a:00:00:98"]),
    (("02:00:0a:00:00:97", None), ["02:00:0a:00:00:97", "hostdev"]),
    (("02:00:0a:00:00:97", "02:00:0a:00:00:98"), ["02:00:0a:00:00:97", "02:00:0a:00:00:98"]),
])
def test_pci_macs_of_several_pci_devices(macs, expected, assert_valid):
    """Two PCI devices, some with TEMPLATE/PCI/MAC: as addon-storpool's vfhostdev2interface.py,
    each device with a MAC (by position) becomes an interface, the others stay hostdevs."""
    outcome = run(assert_valid, edit_domain(with_vfs), _pci_vm(*macs))
    assert status(outcome, "hostdev-interface") == APPLIED
    got = ["hostdev" if el.tag == "hostdev" else el.find("mac").get("address")
           for el in outcome.tree.getroot().find("devices") if el.tag == "hostdev"
           or (el.tag == "interface" and el.get("type") == "hostdev")]
    assert got == expected


def test_pci_mac_refused_is_named_as_the_template_attribute():
    outcome = apply(edit_domain(with_vfs), _pci_vm(None, "03:00:0a:00:00:98"))
    assert status(outcome, "hostdev-interface") == SKIPPED
    assert any("TEMPLATE/PCI/MAC=',03:00:0a:00:00:98': 03:00:0a:00:00:98 is a multicast" in w
               for w in outcome.report.warnings), outcome.report.warnings


@pytest.mark.parametrize(("macs", "why"), [
    ("03:00:00:00:00:01", "multicast"),
    ("02:00:00:00:00:01,02:00:00:00:00:01", "given twice"),
    ("02:00:0a:00:00:2a", "already used by another interface"),
    ("00:00:00:00:00:00", "not a usable MAC"),
    ("02-00-00-00-00-01", "not a MAC address"),
    (",", "no MAC address given"),
])
def test_bad_macs_are_refused(macs, why):
    domain = edit_domain(with_vfs)
    outcome = apply(domain, vm_xml({"T_VF_MACS": macs}))
    assert_skipped(outcome, "hostdev-interface", "T_VF_MACS", domain)
    assert any(why in w for w in outcome.report.warnings), outcome.report.warnings


def test_hostdev_with_unknown_children_is_left_alone(assert_valid):
    def odd(root: etree._Element) -> None:
        sub(root.find("devices"), VF1.replace("</source>", "</source><readonly/>"))

    outcome = run(assert_valid, edit_domain(odd), vm_xml({"T_VF_MACS": "02:00:00:00:00:01"}))
    assert outcome.tree.getroot().find("devices/hostdev") is not None
    assert "<readonly>" in result(outcome, "hostdev-interface").reason


@FUZZ
@given(value=hostile)
def test_vf_macs_hostile(assert_valid, value):
    fuzz_attribute(assert_valid, "T_VF_MACS", "hostdev-interface", HOSTDEV.param("macs"), value,
                   domain=edit_domain(with_vfs))


# --- xpath_patch -----------------------------------------------------------------------------------

QEMU = "http://libvirt.org/schemas/domain/qemu/1.0"


def patch_rule(tmp_path: Path, body: str, name: str = "90-patch.yaml") -> list[str]:
    return rules(tmp_path, name, "name: patch\ntweaks:\n" + body)


def test_xpath_set_and_remove_attribute(tmp_path, assert_valid):
    dirs = patch_rule(tmp_path, "  - xpath_patch:\n      xpath: /domain/devices/graphics\n"
                                "      action: set-attribute\n      name: listen\n      value: 127.0.0.1\n"
                                "  - xpath_patch:\n      xpath: /domain/devices/graphics\n"
                                "      action: remove-attribute\n      name: port\n")
    outcome = run(assert_valid, deployment(), vm_xml(), dirs)
    assert compact(outcome.tree.getroot().find("devices/graphics")) == '<graphics type="vnc" listen="127.0.0.1"/>'


def test_xpath_add_element_once(tmp_path, assert_valid):
    snippet = f"<qemu:commandline xmlns:qemu='{QEMU}'><qemu:arg value='-no-reboot'/></qemu:commandline>"
    dirs = patch_rule(tmp_path, f'  - xpath_patch:\n      xpath: /domain\n      action: add-element\n'
                                f'      xml: "{snippet}"\n')
    outcome = run(assert_valid, deployment(), vm_xml(), dirs)
    data = out(outcome).decode()
    assert data.count("<qemu:commandline>") == 1
    assert '<qemu:arg value="-no-reboot"/>' in data
    assert 'xmlns:ns0' not in data


def test_xpath_replace_and_remove_element(tmp_path, assert_valid):
    dirs = patch_rule(tmp_path, "  - xpath_patch:\n      xpath: /domain/devices/video/model\n"
                                "      action: replace-element\n      xml: <model type='qxl' heads='2'/>\n"
                                "  - xpath_patch:\n      xpath: //disk[@device='cdrom']\n"
                                "      action: remove-element\n")
    outcome = run(assert_valid, deployment(), vm_xml(), dirs)
    root = outcome.tree.getroot()
    assert compact(root.find("devices/video")) == '<video><model type="qxl" heads="2"/></video>'
    assert root.find("devices/disk[@device='cdrom']") is None


def test_xpath_patch_takes_no_vm_value(tmp_path):
    path = write_rule(tmp_path, "90-patch.yaml", HEADER + "name: patch\ntweaks:\n  - xpath_patch:\n"
                      "      xpath: {from: user.T_XPATH}\n      action: remove-element\n")
    _rule, problems = check_file(str(path), path.read_bytes())
    assert problems, "a {from: ...} value must be refused for an operator-only tweak"
    outcome = apply(deployment(), vm_xml({"T_XPATH": "/domain/devices"}), [str(tmp_path)])
    assert status(outcome, "patch") == SKIPPED
    assert outcome.tree.getroot().find("devices") is not None


@pytest.mark.parametrize("xml", [
    "<!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>",
    "<x>&ext;</x>",
    "<x/><y/>",
    "<x>",
    "text",
    "<x a='" + "y" * 9000 + "'/>",
])
def test_xpath_hostile_snippets(xml):
    with pytest.raises(ParamError):
        parse_snippet(xml)


@pytest.mark.parametrize("xpath", ["//", "/domain[", "foo(", "", "x" * 600])
def test_xpath_bad_expressions(xpath):
    with pytest.raises(ParamError):
        XPATH.param("xpath").parse(xpath)
    assert parse_xpath("/domain/qemu:commandline") == "/domain/qemu:commandline"


@pytest.mark.parametrize(("body", "why"), [
    ("      xpath: count(//disk)\n      action: remove-element\n", "does not select elements"),
    ("      xpath: /domain\n      action: remove-element\n", "root <domain>"),
    ("      xpath: //disk/@type\n      action: remove-element\n", "does not select elements"),
    ("      xpath: //*\n      action: set-attribute\n      name: x\n      value: y\n", "more than limit"),
    ("      xpath: /domain\n      action: add-element\n", "needs xml"),
])
def test_xpath_refused_at_deploy(tmp_path, body, why):
    outcome = apply(deployment(), vm_xml(), patch_rule(tmp_path, "  - xpath_patch:\n" + body))
    assert status(outcome, "patch") == SKIPPED
    assert any(why in w for w in outcome.report.warnings), outcome.report.warnings
    assert out(outcome) == _baseline()
