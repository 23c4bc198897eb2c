"""The first tweaks through the shipped rules: iothreads, queues, CPU, video."""

from __future__ import annotations

import pytest
from conftest import apply, deployment, domain_with_vcpu, vm_xml, xml_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from tweaks import engine
from tweaks.report import APPLIED, SKIPPED

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
HOSTILE = [
    "", " ", "0", "-1", "1e3", "0x10", "99999999999999999999", "4 4", "<x/>", "']]><x>", '"', "'",
    "../../etc/passwd", "\uff14", "\u202e4", "4\t4", "a" * 600, "$(reboot)", "; rm -rf /",
]


def tweak(user: dict[str, str], *, vcpu: int = 4, domain: bytes | None = None,
          template: dict[str, str] | None = None) -> tuple[etree._Element, engine.Outcome]:
    outcome = apply(domain or domain_with_vcpu(vcpu), vm_xml(user, vcpu=vcpu, template=template))
    return outcome.tree.getroot(), outcome


def status(outcome: engine.Outcome, rule: str) -> str:
    return next(r.status for r in outcome.report.results if r.name == rule)


def drivers(root: etree._Element, xpath: str, attr: str) -> list[str | None]:
    return [d.get(attr) for d in root.iterfind(xpath)]


# --- no attributes: nothing changes ----------------------------------------------------------

def test_vm_without_attributes_is_only_normalised(assert_valid):
    outcome = apply(deployment(), vm_xml())
    assert not any(r.status == APPLIED for r in outcome.report.results)
    normalised = engine.parse_xml(deployment(), "d")
    from tweaks.normalize import normalize
    from tweaks.xmledit import Editor

    normalize(Editor(normalised))
    assert engine.serialize(outcome.tree) == engine.serialize(normalised)
    assert_valid(outcome.tree)


# --- iothreads -------------------------------------------------------------------------------

def test_iothreads_override_sets_count_and_rebinds_round_robin(assert_valid):
    root, _ = tweak({"T_IOTHREADS_OVERRIDE": "3"})
    assert root.findtext("iothreads") == "3"
    assert drivers(root, "devices/disk[@device='disk']/driver", "iothread") == ["1", None, "2"]
    assert drivers(root, "devices/controller[@model='virtio-scsi']/driver", "iothread") == ["3"]
    assert_valid(etree.ElementTree(root))


def test_iothreads_above_vcpus_is_rejected():
    root, outcome = tweak({"T_IOTHREADS_OVERRIDE": "8"}, vcpu=4)
    assert status(outcome, "iothreads") == SKIPPED
    assert "more iothreads than allowed for 4 vCPUs" in outcome.report.warnings[0]
    assert root.findtext("iothreads") == "2"


def test_iothreads_operator_default_keeps_oned_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("ONE_TWEAKS_RULES_DIR", str(tmp_path))
    (tmp_path / "10-iothreads.yaml").write_text(
        "name: iothreads\ntweaks:\n  - iothreads:\n      count: {from: user.T_IOTHREADS_OVERRIDE, default: 1}\n")
    root, outcome = tweak({})
    assert root.findtext("iothreads") == "2", "oned's FEATURES/IOTHREADS wins over the rule default"
    result = next(r for r in outcome.report.results if r.name == "iothreads")
    assert "kept oned's <iothreads>2</iothreads>" in result.reason
    # A domain oned wrote without iothreads gets the default and every device bound.
    bare = deployment().replace(b"<iothreads>2</iothreads>", b"")
    root, _ = tweak({}, domain=bare)
    assert root.findtext("iothreads") == "1"
    assert drivers(root, "devices/disk[@device='disk']/driver", "iothread") == ["1", None, "1"]


def test_iothreads_single_policy(tmp_path):
    (tmp_path / "10-iothreads.yaml").write_text(
        "name: iothreads\ntweaks:\n  - iothreads:\n      count: {from: user.T_IOTHREADS_OVERRIDE}\n"
        "      policy: single\n")
    outcome = apply(deployment(), vm_xml({"T_IOTHREADS_OVERRIDE": "4"}), [str(tmp_path)])
    root = outcome.tree.getroot()
    assert drivers(root, "devices/disk[@device='disk']/driver", "iothread") == ["1", None, "1"]
    assert drivers(root, "devices/controller[@model='virtio-scsi']/driver", "iothread") == ["1"]


# --- queues ----------------------------------------------------------------------------------

def test_scsi_queues_vcpu_word_and_number(assert_valid):
    root, _ = tweak({"T_SCSI_QUEUES": "VCPU"}, vcpu=6)
    assert drivers(root, "devices/controller[@model='virtio-scsi']/driver", "queues") == ["6"]
    root, _ = tweak({"T_SCSI_QUEUES": "2"}, vcpu=6)
    assert drivers(root, "devices/controller[@model='virtio-scsi']/driver", "queues") == ["2"]
    assert_valid(etree.ElementTree(root))


def test_scsi_queues_bounded_by_vcpus():
    root, outcome = tweak({"T_SCSI_QUEUES": "16"}, vcpu=4)
    assert status(outcome, "scsi-queues") == SKIPPED
    assert drivers(root, "devices/controller[@model='virtio-scsi']/driver", "queues") == ["4"]


def test_scsi_queues_cap_from_operator(tmp_path):
    (tmp_path / "20-scsi-queues.yaml").write_text(
        "name: scsi-queues\ntweaks:\n  - scsi_queues:\n      queues: {from: user.T_SCSI_QUEUES}\n      max: 2\n")
    root = apply(domain_with_vcpu(8), vm_xml({"T_SCSI_QUEUES": "vcpu"}, vcpu=8), [str(tmp_path)]).tree.getroot()
    assert drivers(root, "devices/controller[@model='virtio-scsi']/driver", "queues") == ["2"]


def test_scsi_controller_is_created_when_missing(assert_valid):
    start = deployment().index(b"<controller type='scsi'")
    end = deployment().index(b"</controller>", start) + len(b"</controller>")
    no_ctl = deployment()[:start] + deployment()[end:]
    root, _ = tweak({"T_SCSI_QUEUES": "2"}, domain=no_ctl)
    (ctl,) = root.findall("devices/controller[@type='scsi']")
    assert (ctl.get("model"), ctl.get("index"), ctl.find("driver").get("queues")) == ("virtio-scsi", "0", "2")
    assert_valid(etree.ElementTree(root))


def test_blk_queues_yes_sets_virtio_disks_and_scsi(assert_valid):
    root, outcome = tweak({"T_BLK_QUEUES": "YES"}, vcpu=4)
    assert drivers(root, "devices/disk[@device='disk']/driver", "queues") == ["4", None, "4"]
    # oned's FEATURES/VIRTIO_SCSI_QUEUES=auto in the fixture wins for the controller
    result = next(r for r in outcome.report.results if r.name == "blk-queues")
    assert "kept oned's FEATURES/VIRTIO_SCSI_QUEUES" in result.reason
    assert_valid(etree.ElementTree(root))
    root, _ = tweak({"T_BLK_QUEUES": "no"}, vcpu=4)
    assert drivers(root, "devices/disk[@device='disk']/driver", "queues") == [None, None, None]


# --- CPU -------------------------------------------------------------------------------------

def test_cpu_model_with_fallback_replaces_passthrough(assert_valid):
    root, _ = tweak({"T_CPU_MODEL": "EPYC-Rome:forbid"})
    cpu = root.find("cpu")
    assert cpu.get("mode") == "custom"
    assert (cpu.findtext("model"), cpu.find("model").get("fallback")) == ("EPYC-Rome", "forbid")
    assert_valid(etree.ElementTree(root))


def test_cpu_model_delete():
    src = deployment().replace(b"<cpu mode='host-passthrough'>", b"<cpu mode='custom'><model>qemu64</model>")
    root, _ = tweak({"T_CPU_MODEL": "delete"}, domain=src)
    assert root.find("cpu/model") is None


def test_cpu_topology_and_numa(assert_valid):
    root, _ = tweak({"T_CPU_SOCKETS": "2", "T_CPU_THREADS": "2"}, vcpu=8)
    topo = root.find("cpu/topology")
    assert dict(topo.attrib) == {"sockets": "2", "cores": "2", "threads": "2"}
    cells = [dict(c.attrib) for c in root.iterfind("cpu/numa/cell")]
    assert cells == [{"id": "0", "cpus": "0-3", "memory": "2097152", "unit": "KiB"},
                     {"id": "1", "cpus": "4-7", "memory": "2097152", "unit": "KiB"}]
    assert_valid(etree.ElementTree(root))


def test_cpu_topology_must_divide_vcpus():
    root, outcome = tweak({"T_CPU_SOCKETS": "3"}, vcpu=4)
    assert status(outcome, "cpu-topology") == SKIPPED
    assert "3 sockets do not divide 4 vCPUs" in outcome.report.warnings[0]
    assert root.find("cpu/topology") is None
    _, outcome = tweak({"T_CPU_SOCKETS": "2", "T_CPU_THREADS": "4"}, vcpu=4)
    assert status(outcome, "cpu-topology") == SKIPPED


def _vcpus(root: etree._Element) -> list[tuple[str | None, str | None, str | None]]:
    return [(v.get("id"), v.get("enabled"), v.get("hotpluggable")) for v in root.iterfind("vcpus/vcpu")]


def test_cpu_sockets_write_hotpluggable_vcpus(assert_valid):
    """addon-storpool's cpu.py writes <vcpus> whenever T_CPU_SOCKETS gives a topology:
    vCPU 0 fixed, every other vCPU hotpluggable, enabled below <vcpu current>. Once,
    right after <vcpu>, and a second run changes nothing."""
    root, outcome = tweak({"T_CPU_SOCKETS": "2"}, vcpu=4)
    assert status(outcome, "cpu-topology") == APPLIED
    assert _vcpus(root) == [("0", "yes", "no"), ("1", "yes", "yes"), ("2", "yes", "yes"), ("3", "yes", "yes")]
    assert [c.tag for c in root if isinstance(c.tag, str)].index("vcpus") == \
        [c.tag for c in root if isinstance(c.tag, str)].index("vcpu") + 1
    assert_valid(etree.ElementTree(root))
    again = apply(etree.tostring(root), vm_xml({"T_CPU_SOCKETS": "2"}, vcpu=4))
    assert not any(r.changes for r in again.report.results), again.report.to_text()


def test_cpu_sockets_vcpus_follow_vcpu_max(assert_valid):
    root, _ = tweak({"T_CPU_SOCKETS": "2", "T_VCPU_MAX": "8"}, vcpu=4)
    assert root.find("vcpu").text == "8" and root.find("vcpu").get("current") == "4"
    assert _vcpus(root) == [("0", "yes", "no"), *[(str(i), "yes", "yes") for i in (1, 2, 3)],
                            *[(str(i), "no", "yes") for i in range(4, 8)]]
    assert len(root.findall("vcpus")) == 1
    assert_valid(etree.ElementTree(root))
    again = apply(etree.tostring(root), vm_xml({"T_CPU_SOCKETS": "2", "T_VCPU_MAX": "8"}, vcpu=4))
    assert etree.tostring(again.tree.getroot()) == etree.tostring(root), again.report.to_text()


def test_cpu_topology_vcpus_can_be_turned_off(tmp_path, assert_valid):
    from conftest import write_rule

    write_rule(tmp_path, "31-cpu-topology.yaml", "name: cpu-topology\ntweaks:\n  - cpu_topology:\n"
               "      sockets: {from: user.T_CPU_SOCKETS}\n      vcpus: no\n")
    outcome = apply(domain_with_vcpu(4), vm_xml({"T_CPU_SOCKETS": "2"}, vcpu=4), [str(tmp_path)])
    assert outcome.tree.getroot().find("vcpus") is None
    assert outcome.tree.getroot().find("cpu/topology").get("sockets") == "2"


def test_cpu_features_add_and_update_without_duplicates(assert_valid):
    src = deployment().replace(b"<cpu mode='host-passthrough'>",
                               b"<cpu mode='host-passthrough'><feature policy='require' name='vmx'/>")
    root, _ = tweak({"T_CPU_FEATURES": "vmx:disable, invtsc ,VMX:forbid"}, domain=src)
    feats = [(f.get("name"), f.get("policy")) for f in root.iterfind("cpu/feature")]
    assert feats == [("vmx", "forbid"), ("invtsc", "require")]
    assert_valid(etree.ElementTree(root))


def test_cpu_mode_is_really_applied(assert_valid):
    root, _ = tweak({"T_CPU_MODE": "host-model", "T_CPU_CHECK": "none"})
    assert (root.find("cpu").get("mode"), root.find("cpu").get("check")) == ("host-model", "none")
    assert_valid(etree.ElementTree(root))


@pytest.mark.parametrize("word", ["delete", "DELETE", "Delete"])
def test_cpu_mode_check_match_delete_removes_the_attribute(word, assert_valid):
    """addon-storpool's documented keyword: T_CPU_MODE/T_CPU_CHECK/T_CPU_MATCH=delete
    removes that attribute of <cpu>; a second run changes nothing."""
    src = deployment().replace(b"<cpu mode='host-passthrough'>",
                               b"<cpu mode='custom' match='exact' check='partial'><model>qemu64</model>")
    user = {"T_CPU_MODE": word, "T_CPU_CHECK": word, "T_CPU_MATCH": word}
    root, outcome = tweak(user, domain=src)
    assert status(outcome, "cpu-mode") == APPLIED, outcome.report.warnings
    cpu = root.find("cpu")
    assert dict(cpu.attrib) == {} and cpu.findtext("model") == "qemu64"
    assert_valid(etree.ElementTree(root))
    again = apply(etree.tostring(root), vm_xml(user, vcpu=4))
    assert status(again, "cpu-mode") == "unchanged"
    only, _ = tweak({"T_CPU_CHECK": word}, domain=src)
    assert dict(only.find("cpu").attrib) == {"mode": "custom", "match": "exact"}


def test_cpu_mode_delete_without_cpu_adds_nothing():
    src = deployment()
    start, end = src.index(b"<cpu mode"), src.index(b"</cpu>") + len(b"</cpu>")
    root, outcome = tweak({"T_CPU_MODE": "delete"}, domain=src[:start] + src[end:])
    assert root.find("cpu") is None
    assert status(outcome, "cpu-mode") == "unchanged"


@pytest.mark.parametrize("mode", ["host-model", "host-passthrough", "Maximum"])
def test_cpu_model_yields_to_a_mode_without_a_model(mode, assert_valid):
    """T_CPU_MODEL with a T_CPU_MODE that takes no named model: the mode wins and the
    cpu-model rule says why; a second run changes nothing (before, cpu-model set
    mode='custom' and cpu-mode set it back on every run)."""
    user = {"T_CPU_MODEL": "EPYC-Rome:allow", "T_CPU_MODE": mode}
    root, outcome = tweak(user)
    assert status(outcome, "cpu-model") == "not-matched"
    assert root.find("cpu").get("mode") == mode.lower() and root.find("cpu/model") is None
    again = apply(etree.tostring(root), vm_xml(user, vcpu=4))
    assert [r.name for r in again.report.results if r.changes] == []
    assert_valid(etree.ElementTree(root))


# --- video -----------------------------------------------------------------------------------

def test_video_model_replaced_with_acceleration(assert_valid):
    root, _ = tweak({"T_VIDEO_MODEL": "type=virtio heads=2 primary=yes accel3d=no"})
    (model,) = root.findall("devices/video/model")
    assert dict(model.attrib) == {"type": "virtio", "heads": "2", "primary": "yes"}
    assert dict(model.find("acceleration").attrib) == {"accel3d": "no"}
    assert_valid(etree.ElementTree(root))


def test_video_added_when_missing(assert_valid):
    src = deployment()
    start, end = src.index(b"<video>"), src.index(b"</video>") + len(b"</video>")
    root, _ = tweak({"T_VIDEO_MODEL": "type=qxl heads=1"}, domain=src[:start] + src[end:])
    assert [dict(m.attrib) for m in root.iterfind("devices/video/model")] == [{"type": "qxl", "heads": "1"}]
    assert_valid(etree.ElementTree(root))


def test_video_rejects_heads_over_16_and_unknown_keys():
    for bad in ("type=qxl heads=17", "type=qxl foo=1", "heads=1", "type=qxl type=vga", "type=evil'"):
        root, outcome = tweak({"T_VIDEO_MODEL": bad})
        assert status(outcome, "video") == SKIPPED, bad
        assert root.find("devices/video/model").get("type") == "virtio"


# --- hostile values for every attribute --------------------------------------------------------

ATTRIBUTES = {
    "T_IOTHREADS_OVERRIDE": "iothreads", "T_SCSI_QUEUES": "scsi-queues", "T_CPU_MODEL": "cpu-model",
    "T_CPU_SOCKETS": "cpu-topology", "T_CPU_THREADS": "cpu-topology", "T_CPU_FEATURES": "cpu-features",
    "T_CPU_MODE": "cpu-mode", "T_CPU_CHECK": "cpu-mode", "T_CPU_MATCH": "cpu-mode", "T_VIDEO_MODEL": "video",
}


# Odd-looking but well-formed: 0 sockets is the documented "off"; CPU model names may be
# digits ("486"), feature names too ("3dnow"); an unknown model is refused by qemu at start, not by the schema.
LEGITIMATE = {("T_CPU_SOCKETS", "0")} | {
    (a, v) for a in ("T_CPU_MODEL", "T_CPU_FEATURES") for v in HOSTILE if v.isascii() and v.isalnum()}


def test_known_hostile_values_are_rejected(assert_valid):
    for attribute, rule in ATTRIBUTES.items():
        for value in HOSTILE:
            # T_CPU_THREADS is only read when T_CPU_SOCKETS gives the rule something to do
            extra = {"T_CPU_SOCKETS": "1"} if attribute == "T_CPU_THREADS" else {}
            root, outcome = tweak({attribute: value, **extra})
            if (attribute, value) in LEGITIMATE:
                continue
            assert status(outcome, rule) == SKIPPED, (attribute, value)
            warning = next(w for w in outcome.report.warnings if f"rule {rule}:" in w)
            assert warning.startswith(f"VM 42: rule {rule}: USER_TEMPLATE/{attribute}="), warning
            assert_valid(etree.ElementTree(root))


@FUZZ
@given(attribute=st.sampled_from(sorted(ATTRIBUTES)), value=xml_text() | st.sampled_from(HOSTILE))
def test_fuzzed_values_never_break_the_output(rng, attribute, value):
    outcome = apply(deployment(), vm_xml({attribute: value}))
    assert rng.validate(outcome.tree), [e.message for e in rng.error_log]
    for result in outcome.report.results:
        assert result.status != "rolled-back", result.reason


def test_explicit_scsi_queues_win_over_blk_queues(assert_valid):
    root, _ = tweak({"T_BLK_QUEUES": "YES", "T_SCSI_QUEUES": "1"}, vcpu=4,
                    domain=domain_with_vcpu(4), template={"FEATURES/VIRTIO_SCSI_QUEUES": ""})
    assert drivers(root, "devices/controller[@model='virtio-scsi']/driver", "queues") == ["1"]
    assert drivers(root, "devices/disk[@device='disk']/driver", "queues") == ["4", None, "4"]
    assert_valid(etree.ElementTree(root))
