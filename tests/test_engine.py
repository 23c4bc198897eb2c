"""The engine: preservation of untouched XML, quirk normalisation, per-rule transactions,
validation judged by new errors, idempotency and the report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from conftest import DOMAIN_RNG, apply, deployment, schema_errors, vm_xml, write_rule
from lxml import etree

from tweaks import engine, registry
from tweaks.params import Int
from tweaks.report import APPLIED, DISABLED, NOT_MATCHED, ROLLED_BACK, SKIPPED, UNCHANGED
from tweaks.tweak import Context, Tweak
from tweaks.validate import DomainSchema

SAMPLE_USER = {"T_IOTHREADS_OVERRIDE": "4", "T_CPU_MODEL": "EPYC-Rome:allow", "T_CPU_SOCKETS": "2",
               "T_VIDEO_MODEL": "type=qxl heads=2", "T_BLK_QUEUES": "YES", "T_CPU_FEATURES": "vmx:disable"}


class Boom(Tweak):
    """Changes the document, then fails: the change must be rolled back."""

    summary = "test: raises after a change"
    params = (Int("value", "anything", default=1, minimum=0, maximum=9),)

    def apply(self, ctx: Context) -> None:
        ctx.editor.set_text(ctx.editor.child(ctx.root, "iothreads"), 99)
        raise RuntimeError("tweak bug")


class Bogus(Tweak):
    """Adds an element libvirt's schema does not know."""

    summary = "test: makes the XML invalid"
    params: ClassVar[tuple[Int, ...]] = ()

    def apply(self, ctx: Context) -> None:
        ctx.editor.add(ctx.devices(), "bogus", {"x": "1"})


class Title(Tweak):
    summary = "test: sets the title"
    params: ClassVar[tuple[Int, ...]] = ()

    def apply(self, ctx: Context) -> None:
        ctx.editor.set_text(ctx.editor.child(ctx.root, "title"), "tweaked")


@pytest.fixture(params=["journal", "copy"])
def test_tweaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """The test tweaks, undone either by the editor's journal (as the catalogue's tweaks
    are: they pose as catalogue modules) or by a copy of the domain (any other tweak)."""
    for name, cls in (("boom", Boom), ("bogus", Bogus), ("title", Title)):
        if request.param == "journal":
            cls = type(cls.__name__, (cls,), {"__module__": f"tweaks.catalog.{name}"})
        registry.register(name, cls())
        assert registry.journaled(name) == (request.param == "journal")
    yield
    for name in ("boom", "bogus", "title"):
        registry.unregister(name)


def rule(name: str, tweak: str, when: str = "") -> str:
    return f"name: {name}\n{when}tweaks:\n  - {tweak}:\n"


def test_untouched_parts_are_kept_verbatim(assert_valid):
    src = deployment().replace(b"<features>", b"<!-- operator note -->\n\t<features>")
    out = engine.serialize(apply(src, vm_xml({"T_IOTHREADS_OVERRIDE": "3"})).tree).decode()
    assert_valid(out.encode())
    assert "<vcpu><![CDATA[4]]></vcpu>" in out
    assert "<emulator><![CDATA[/usr/bin/qemu-kvm-one]]></emulator>" in out
    assert "<!-- operator note -->" in out
    assert '<one:vm xmlns:one="http://opennebula.org/xmlns/libvirt/1.0">' in out
    assert "<one:system_datastore><![CDATA[/var/lib/one//datastores/101/42]]></one:system_datastore>" in out
    root = etree.fromstring(out.encode())
    order = [c.tag for c in root if isinstance(c.tag, str)]
    assert order == ["name", "title", "vcpu", "cputune", "memory", "os", "pm", "cpu", "iothreads",
                     "devices", "features", "metadata"]
    assert root.findtext("iothreads") == "3"
    assert "\n\t\t<disk" in out, "indentation of oned's tabs is kept"


def test_q35_devices_blocks_are_merged(rng):
    raw = deployment()
    assert schema_errors(rng, raw), "the fixture is invalid as oned writes it"
    outcome = apply(raw, vm_xml())
    root = outcome.tree.getroot()
    assert len(root.findall("devices")) == 1
    devices = root.find("devices")
    assert len(devices.findall("controller[@model='pcie-root-port']")) == 16
    assert devices.find("channel/target").get("name") == "org.qemu.guest_agent.0"
    assert schema_errors(rng, outcome.tree) == []
    assert [c.xpath for c in outcome.report.normalized] == ["/domain/devices[2]", "/domain/devices[2]"]


def test_duplicate_features_blocks_are_merged(assert_valid):
    src = deployment().replace(b"</features>", b"</features>\n\t<features><pae/></features>")
    root = apply(src, vm_xml()).tree.getroot()
    (features,) = root.findall("features")
    assert [c.tag for c in features] == ["acpi", "pae"]
    assert_valid(etree.ElementTree(root))


def test_a_failing_tweak_is_rolled_back_and_the_next_rule_runs(tmp_path, test_tweaks, assert_valid):
    write_rule(tmp_path, "10-boom.yaml", rule("boom", "boom"))
    write_rule(tmp_path, "20-title.yaml", rule("title", "title"))
    outcome = apply(deployment(), vm_xml(), [str(tmp_path)], shipped=False)
    results = {r.name: r for r in outcome.report.results}
    assert results["boom"].status == ROLLED_BACK
    assert "RuntimeError: tweak bug" in results["boom"].reason
    assert outcome.tree.getroot().findtext("iothreads") == "2", "the change before the failure is undone"
    assert results["title"].status == APPLIED
    assert outcome.tree.getroot().findtext("title") == "tweaked"
    assert any("rule boom: rolled back" in w and w.startswith("VM 42:") for w in outcome.report.warnings)
    assert_valid(outcome.tree)


def test_a_rule_that_breaks_the_schema_is_rolled_back(tmp_path, test_tweaks, assert_valid):
    write_rule(tmp_path, "10-bogus.yaml", rule("bogus", "bogus"))
    write_rule(tmp_path, "20-title.yaml", rule("title", "title"))
    outcome = apply(deployment(), vm_xml(), [str(tmp_path)], shipped=False)
    results = {r.name: r for r in outcome.report.results}
    assert results["bogus"].status == ROLLED_BACK
    assert "schema-invalid" in results["bogus"].reason
    assert outcome.tree.getroot().find("devices/bogus") is None
    assert results["title"].status == APPLIED
    assert_valid(outcome.tree)


def test_input_that_oned_made_invalid_does_not_block_valid_rules(tmp_path, test_tweaks, rng):
    # An element domain.rng does not know, as a RAW section could add: invalid before any rule.
    src = deployment().replace(b"<metadata>", b"<unknownthing/>\n\t<metadata>")
    write_rule(tmp_path, "20-title.yaml", rule("title", "title"))
    write_rule(tmp_path, "30-bogus.yaml", rule("bogus", "bogus"))
    outcome = apply(src, vm_xml(), [str(tmp_path)], shipped=False)
    results = {r.name: r for r in outcome.report.results}
    assert results["title"].status == APPLIED
    assert results["bogus"].status == ROLLED_BACK, "a new error is still caught on invalid input"
    assert schema_errors(rng, outcome.tree), "the pre-existing problem is not ours to fix"


def test_without_libvirt_schemas_rules_apply_and_a_warning_says_so(tmp_path):
    schema = DomainSchema(str(tmp_path / "missing.rng"))
    outcome = apply(deployment(), vm_xml({"T_IOTHREADS_OVERRIDE": "3"}), schema=schema)
    assert outcome.tree.getroot().findtext("iothreads") == "3"
    assert outcome.report.validation.startswith("skipped")
    assert any("validation skipped" in w for w in outcome.report.warnings)


def test_applying_twice_changes_nothing(assert_valid):
    vm = vm_xml(SAMPLE_USER)
    first = apply(deployment(), vm)
    once = engine.serialize(first.tree)
    assert first.report.changed
    second = apply(once, vm)
    assert engine.serialize(second.tree) == once
    assert not second.report.changed
    assert {r.status for r in second.report.results} <= {UNCHANGED, NOT_MATCHED, DISABLED}
    assert_valid(once)


def test_report_says_why_a_rule_did_not_match(tmp_path, test_tweaks):
    when = "when:\n  all:\n    - {fact: vm.vcpu, ge: 2}\n    - {fact: domain.machine, equals: pc}\n"
    write_rule(tmp_path, "10-title.yaml", rule("title", "title", when))
    outcome = apply(deployment(), vm_xml(), [str(tmp_path)], shipped=False)
    (result,) = outcome.report.results
    assert result.status == NOT_MATCHED
    assert result.reason == "domain.machine='q35' does not satisfy equals 'pc'"
    data = json.loads(outcome.report.to_json())
    assert data["rules"][0] == {"rule": "title", "file": str(tmp_path / "10-title.yaml"),
                                "status": "not-matched", "reason": result.reason, "changes": []}


def test_changes_are_reported_as_xpath_before_after():
    outcome = apply(deployment(), vm_xml({"T_IOTHREADS_OVERRIDE": "3"}))
    result = next(r for r in outcome.report.results if r.name == "iothreads")
    assert result.status == APPLIED
    assert next(str(c) for c in result.changes) == "/domain/iothreads/text(): '2' -> '3'"
    text = outcome.report.to_text()
    assert "rule iothreads: applied" in text
    assert "/domain/devices/controller[1]/driver/@iothread: '1' -> '3'" in text


def test_bad_user_value_skips_only_its_rule(assert_valid):
    outcome = apply(deployment(), vm_xml({"T_IOTHREADS_OVERRIDE": "<x/>", "T_VIDEO_MODEL": "type=qxl"}))
    results = {r.name: r for r in outcome.report.results}
    assert results["iothreads"].status == SKIPPED
    assert results["video"].status == APPLIED
    (warning,) = [w for w in outcome.report.warnings if "iothreads" in w]
    assert warning == ("VM 42: rule iothreads: USER_TEMPLATE/T_IOTHREADS_OVERRIDE='<x/>': not a whole number; "
                       "rule skipped")
    assert outcome.tree.getroot().findtext("iothreads") == "2"
    assert_valid(outcome.tree)


def test_root_element_is_checked():
    with pytest.raises(engine.InputError, match="not <domain>"):
        apply(b"<VM/>", vm_xml())
    with pytest.raises(engine.InputError, match="not <VM>"):
        apply(deployment(), b"<domain/>")


def test_entities_are_not_expanded(tmp_path: Path):
    secret = tmp_path / "secret"
    secret.write_text("TOPSECRET")
    hostile = (f'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file://{secret}">]>'
               "<domain type='kvm'><name>&x;</name></domain>").encode()
    out = engine.serialize(apply(hostile, vm_xml(), schema=DomainSchema(DOMAIN_RNG)).tree)
    assert b"TOPSECRET" not in out
