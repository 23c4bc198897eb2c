"""The migrate tweaks and their shipped rules (rules.d/80..82, ``on: [migrate]``):
graphics_listen, cpu_features_available, iothreads_drop. Each result is valid for libvirt's
schema, a second pass changes nothing, and bad values are refused with a warning."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from conftest import DOMAIN_RNG, deployment, vm_xml, write_rule
from lxml import etree

from tweaks import engine, loader
from tweaks.catalog.cpu_features_available import parse_names
from tweaks.catalog.graphics_listen import parse_address
from tweaks.errors import ParamError
from tweaks.report import APPLIED, NOT_MATCHED, SKIPPED, UNCHANGED
from tweaks.validate import DomainSchema

GRAPHICS = """<graphics type='vnc' port='5942' listen='10.1.1.1'><listen type='address' address='10.1.1.1'/></graphics>
<graphics type='spice' autoport='yes' listen='0.0.0.0'><listen type='address' address='0.0.0.0'/></graphics>
<graphics type='vnc' autoport='yes'><listen type='socket' socket='/run/x.sock'/></graphics>"""
CPU = ("<cpu mode='custom' match='exact'><model fallback='forbid'>EPYC</model>"
       "<feature policy='require' name='avx512f'/><feature policy='disable' name='svm'/>"
       "<feature policy='require' name='sse4.2'/></cpu>")
OFFERED = "sse4.2,fpu,avx2,svm"


def migratable(graphics: str = GRAPHICS, cpu: str = CPU) -> bytes:
    """oned's sample domain as a migratable one: graphics listen on the source's address,
    a named CPU with features, disks and the controller bound to iothreads."""
    text = deployment().decode()
    text = text.replace("<graphics type='vnc' listen='0.0.0.0' port='5942'/>", graphics)
    text = text.replace("<cpu mode='host-passthrough'>\n\t</cpu>", cpu)
    return text.encode()


def migrate(domain: bytes, user: Mapping[str, str] | None = None, facts: Mapping[str, str] | None = None,
            dirs: list[str] | None = None) -> engine.Outcome:
    ruleset = loader.load(dirs or [])
    return engine.apply_rules(engine.parse_xml(domain, "domain"), engine.parse_xml(vm_xml(user), "vm"),
                              ruleset.rules, schema=DomainSchema(DOMAIN_RNG), moment="migrate",
                              moment_facts=facts)


def status(outcome: engine.Outcome, rule: str) -> tuple[str, str]:
    found = next(r for r in outcome.report.results if r.name == rule)
    return found.status, found.reason


def checked(assert_valid, domain: bytes, user: Mapping[str, str] | None = None,  # type: ignore[no-untyped-def]
            facts: Mapping[str, str] | None = None, dirs: list[str] | None = None) -> engine.Outcome:
    """Migrate rules applied: schema-valid, and a second pass on the output changes nothing."""
    outcome = migrate(domain, user, facts, dirs)
    data = engine.serialize(outcome.tree)
    assert_valid(data)
    again = migrate(data, user, facts, dirs)
    assert engine.serialize(again.tree) == data, "a second pass must change nothing"
    assert not [r.name for r in again.report.results if r.status == APPLIED], again.report.to_text()
    return outcome


# The tweaks only the migrate rules use: a deploy never imports them.
MIGRATE_TWEAKS = frozenset({"graphics_listen", "cpu_features_available", "iothreads_drop"})
FACTS = {"dest.host": "node2", "dest.address": "10.2.2.2", "dest.cpu_features": OFFERED}


# --- shipped rules at their moment ---------------------------------------------------------------

def test_migrate_rules_do_nothing_at_deploy() -> None:
    from conftest import apply

    outcome = apply(migratable(), vm_xml({"T_MIGRATE_IOTHREADS_DROP": "yes"}))
    for rule in ("migrate-graphics-listen", "migrate-cpu-features", "migrate-iothreads-drop"):
        assert status(outcome, rule) == (NOT_MATCHED, "runs on migrate, not on deploy")


def test_without_destination_facts_the_rules_are_idle() -> None:
    outcome = migrate(migratable())
    assert status(outcome, "migrate-graphics-listen")[0] == NOT_MATCHED
    assert status(outcome, "migrate-cpu-features")[0] == NOT_MATCHED
    assert status(outcome, "migrate-iothreads-drop")[0] == NOT_MATCHED, "only when the VM asks"


# --- graphics_listen ---------------------------------------------------------------------------

def test_graphics_listen_follows_the_destination(assert_valid) -> None:  # type: ignore[no-untyped-def]
    outcome = checked(assert_valid, migratable(), facts=FACTS)
    assert status(outcome, "migrate-graphics-listen")[0] == APPLIED
    vnc, spice, sock = outcome.tree.getroot().iterfind("devices/graphics")
    assert vnc.get("listen") == "10.2.2.2" and vnc.find("listen").get("address") == "10.2.2.2"
    assert spice.get("listen") == "0.0.0.0" and spice.find("listen").get("address") == "0.0.0.0", "wildcard kept"
    assert sock.find("listen").get("socket") == "/run/x.sock" and sock.get("listen") is None
    assert "kept the wildcard listen address 0.0.0.0" in status(outcome, "migrate-graphics-listen")[1]


def test_graphics_listen_wildcards_too_when_asked(assert_valid, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_rule(tmp_path, "80-migrate-graphics-listen.yaml", """name: migrate-graphics-listen
on: [migrate]
tweaks:
  - graphics_listen: {address: {from: dest.address}, wildcards: yes}
""")
    outcome = checked(assert_valid, migratable(), facts={**FACTS, "dest.address": "fd00::2"}, dirs=[str(tmp_path)])
    vnc, spice, _ = outcome.tree.getroot().iterfind("devices/graphics")
    assert vnc.get("listen") == spice.get("listen") == spice.find("listen").get("address") == "fd00::2"


@pytest.mark.parametrize("bad", ["10.0.0.1; reboot", "-oProxyCommand=x", "1.2.3", "a..b", "x" * 300, "", "<x/>",
                                 "node_2", "10.0.0.1\u202e"])
def test_graphics_listen_refuses_bad_addresses(bad: str) -> None:
    outcome = migrate(migratable(), facts={**FACTS, "dest.address": bad})
    result, reason = status(outcome, "migrate-graphics-listen")
    assert result == SKIPPED, reason
    assert any("rule migrate-graphics-listen" in w and "dest.address" in w for w in outcome.report.warnings)
    vnc = outcome.tree.getroot().find("devices/graphics")
    assert vnc.get("listen") == "10.1.1.1", "nothing reaches the XML"


def test_graphics_listen_parser() -> None:
    assert parse_address("[FD00::0002]") == "fd00::2"
    assert parse_address("node2.example.com") == "node2.example.com"
    for bad in ("999.1.1.1", "a b", "-x"):
        with pytest.raises(ParamError):
            parse_address(bad)


# --- cpu_features_available ----------------------------------------------------------------------

def test_cpu_features_the_destination_lacks_are_removed(assert_valid) -> None:  # type: ignore[no-untyped-def]
    outcome = checked(assert_valid, migratable(), facts=FACTS)
    result, reason = status(outcome, "migrate-cpu-features")
    assert result == APPLIED
    assert "not offered: avx512f (require)" in reason
    cpu = outcome.tree.getroot().find("cpu")
    assert [(f.get("name"), f.get("policy")) for f in cpu.iterfind("feature")] == [
        ("svm", "disable"), ("sse4.2", "require")]
    assert cpu.findtext("model") == "EPYC", "the model stays"


def test_cpu_features_all_offered_is_unchanged(assert_valid) -> None:  # type: ignore[no-untyped-def]
    outcome = checked(assert_valid, migratable(), facts={**FACTS, "dest.cpu_features": OFFERED + ",avx512f"})
    assert status(outcome, "migrate-cpu-features")[0] == UNCHANGED
    no_cpu = checked(assert_valid, migratable(cpu=""), facts=FACTS)
    assert status(no_cpu, "migrate-cpu-features")[0] == UNCHANGED


@pytest.mark.parametrize("bad", ["sse4.2,<x/>", "a b", ",,,", "x" * 41, "sse4.2;reboot"])
def test_cpu_features_refuses_bad_lists(bad: str) -> None:
    outcome = migrate(migratable(), facts={**FACTS, "dest.cpu_features": bad})
    assert status(outcome, "migrate-cpu-features")[0] == SKIPPED
    assert len(outcome.tree.getroot().findall("cpu/feature")) == 3


def test_cpu_feature_names_parser() -> None:
    assert parse_names(" SSE4.2 , fxsr_opt,tsc-deadline,") == {"sse4.2", "fxsr_opt", "tsc-deadline"}
    with pytest.raises(ParamError, match="more than"):
        parse_names(",".join(f"f{i}" for i in range(3000)))


# --- iothreads_drop ------------------------------------------------------------------------------

@pytest.mark.parametrize("asked", ["yes", "YES", "1", "on"])
def test_iothreads_dropped_when_the_vm_asks(assert_valid, asked: str) -> None:  # type: ignore[no-untyped-def]
    domain = migratable().replace(b"<cputune>", b"<cputune><iothreadpin iothread='1' cpuset='0'/>")
    outcome = checked(assert_valid, domain, {"T_MIGRATE_IOTHREADS_DROP": asked}, FACTS)
    root = outcome.tree.getroot()
    assert status(outcome, "migrate-iothreads-drop")[0] == APPLIED
    assert not root.xpath("devices/*/driver[@iothread]"), "disks and the controller unbound"
    assert root.find("devices/controller/driver").get("queues") == "4"
    assert root.find("iothreads") is None and root.find("cputune/iothreadpin") is None
    assert root.findtext("cputune/shares") == "1024", "the rest of <cputune> stays"


def test_a_controller_whose_driver_would_be_empty_stays_bound(assert_valid) -> None:  # type: ignore[no-untyped-def]
    domain = migratable().replace(b"<driver queues='4' iothread='1'/>", b"<driver iothread='1'/>")
    outcome = checked(assert_valid, domain, {"T_MIGRATE_IOTHREADS_DROP": "yes"}, FACTS)
    root = outcome.tree.getroot()
    assert not root.xpath("devices/disk/driver[@iothread]"), "disks unbound"
    assert root.find("devices/controller/driver").get("iothread") == "1"
    assert root.findtext("iothreads") == "2", "the controller still uses an iothread"
    assert "controller 0: left bound" in status(outcome, "migrate-iothreads-drop")[1]


def test_controllers_only_when_the_rule_says(assert_valid, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_rule(tmp_path, "82-migrate-iothreads-drop.yaml", """name: migrate-iothreads-drop
on: [migrate]
tweaks:
  - iothreads_drop: {drop: {from: user.T_MIGRATE_IOTHREADS_DROP}, controllers: no}
""")
    outcome = checked(assert_valid, migratable(), {"T_MIGRATE_IOTHREADS_DROP": "yes"}, FACTS, [str(tmp_path)])
    root = outcome.tree.getroot()
    assert not root.xpath("devices/disk/driver[@iothread]")
    assert root.find("devices/controller/driver").get("iothread") == "1"
    assert root.findtext("iothreads") == "2"


def test_iothreads_kept_when_the_vm_says_no(assert_valid) -> None:  # type: ignore[no-untyped-def]
    outcome = checked(assert_valid, migratable(), {"T_MIGRATE_IOTHREADS_DROP": "no"}, FACTS)
    assert status(outcome, "migrate-iothreads-drop")[0] == UNCHANGED
    assert outcome.tree.getroot().find("devices/disk/driver").get("iothread") == "1"


@pytest.mark.parametrize("bad", ["maybe", "2", "<x/>", "yes\u202e"])
def test_iothreads_drop_refuses_bad_values(bad: str) -> None:
    outcome = migrate(migratable(), {"T_MIGRATE_IOTHREADS_DROP": bad}, FACTS)
    assert status(outcome, "migrate-iothreads-drop")[0] == SKIPPED
    assert any("USER_TEMPLATE/T_MIGRATE_IOTHREADS_DROP" in w for w in outcome.report.warnings)
    assert outcome.tree.getroot().findtext("iothreads") == "2"


def test_the_deploy_path_imports_no_migration_code(tmp_path: Path) -> None:
    """deploy-tweaks applies the rules in-process; the migrate override's modules stay out."""
    import subprocess
    import sys

    code = f"""
import sys
MIGRATE_TWEAKS = {sorted(MIGRATE_TWEAKS)!r}
from lxml import etree
from onelib.config import Config
from vmm.actions import deploy_tweaks
vm = etree.fromstring(open({str(Path(__file__).parent / "fixtures/opennebula/vm-42.xml")!r}, "rb").read())
domain = open({str(Path(__file__).parent / "fixtures/opennebula/deployment.0.xml")!r}, "rb").read()
out = deploy_tweaks.tweak(domain, vm, 42, Config({{}}))
assert out.startswith(b"<domain"), out[:80]
print(sorted(m for m in sys.modules if "migrat" in m or m.split(".")[-1] in MIGRATE_TWEAKS))
"""
    for _ in range(2):  # the first run checks the rule files (every tweak) and fills the rule cache
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", "a deploy with the rules cached"


def test_destination_picks_the_rule_libvirt_refuses() -> None:
    """vmm.migrate_rules without hosts: the rules' XML, and which rule a refusal from
    libvirt's check against the running guest rolls back (the one its reason is about)."""
    from vmm.migrate_rules import Destination

    base = etree.fromstring(migratable())
    rules = [r for r in loader.load([]).rules if r.runs_at("migrate")]
    vm = etree.fromstring(vm_xml({"T_MIGRATE_IOTHREADS_DROP": "yes"}))
    plan = Destination(base, False, vm, rules, FACTS)
    xml = plan.xml()
    assert xml is not None and b"10.2.2.2" in xml and b"avx512f" not in xml
    assert plan.applied == ["migrate-graphics-listen", "migrate-cpu-features", "migrate-iothreads-drop"]
    cpu = "error: unsupported configuration: Target CPU feature count 2 does not match source 3"
    assert plan.culprit(cpu) == "migrate-cpu-features"
    assert plan.culprit("error: unsupported configuration: Disk iothread '1' not defined in iothreadid") == (
        "migrate-iothreads-drop")
    assert plan.culprit("error: unsupported configuration: something else") == "migrate-iothreads-drop", "the last"
    assert plan.culprit("error: operation failed: Failed to connect socket") is None, "not about the XML"
    again = plan.xml(["migrate-cpu-features"])
    assert again is not None and b"avx512f" in again and b"10.2.2.2" in again
    assert plan.applied == ["migrate-graphics-listen", "migrate-iothreads-drop"]
    assert Destination(base, False, None, [], {}).xml() is None, "nothing to change: no --xml"
    assert Destination(base, True, None, [], {}).xml() is not None, "the VM directory moved: --xml"


def test_destination_without_usable_inputs_migrates_untouched() -> None:
    """Input the engine refuses never blocks a migration: no rules, a warning, and --xml only
    when the VM directory moves."""
    from vmm.migrate_rules import Destination

    base = etree.fromstring(migratable())
    rules = [r for r in loader.load([]).rules if r.runs_at("migrate")]
    plan = Destination(base, False, etree.Element("DOCUMENT"), rules, FACTS)
    assert plan.xml() is None
    assert plan.applied == [] and plan.warnings[0].startswith("migrate rules not applied: VM XML: root element")
    moved = Destination(base, True, etree.Element("DOCUMENT"), rules, FACTS).xml()
    assert moved is not None and b"10.1.1.1" in moved, "moved, not tweaked"
