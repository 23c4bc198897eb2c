"""Moments: a rule says when it runs (``on: [deploy]``, the default, ``migrate``, ``restore``,
``hotplug``); the engine and ``one-tweaks apply --moment`` run only the rules of that moment
and report the others; the schema, the checker and the rule cache know the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import apply, deployment, run_cli, vm_xml, write_rule

from tweaks import engine, loader
from tweaks.checker import check_files
from tweaks.cli import _parser, fast_apply_args
from tweaks.errors import InputError
from tweaks.report import APPLIED, NOT_MATCHED, SKIPPED
from tweaks.rules import MOMENTS
from tweaks.schema import build

# Each rule leaves a mark in the domain's metadata, so the marks say which rules ran.
TITLE = ("  - xpath_patch: {{xpath: /domain/metadata, action: add-element, "
         "xml: '<t:mark xmlns:t=\"urn:test\">{text}</t:mark>'}}\n")


def title_rule(directory: Path, name: str, on: str | None, text: str) -> None:
    moments = f"on: {on}\n" if on is not None else ""
    write_rule(directory, f"90-{name}.yaml", f"name: {name}\n{moments}tweaks:\n" + TITLE.format(text=text))


def run(directory: Path, moment: str = "deploy", **facts: str) -> engine.Outcome:
    files = loader.collect([(str(directory), True)])
    ruleset = check_files(loader._read_all(files))
    assert not ruleset.problems, ruleset.problems
    return engine.apply_rules(engine.parse_xml(deployment(), "d"), engine.parse_xml(vm_xml(), "v"), ruleset.rules,
                              moment=moment, moment_facts={f"dest.{k}": v for k, v in facts.items()})


def descriptions(outcome: engine.Outcome) -> list[str]:
    return [d.text or "" for d in outcome.tree.getroot().iterfind("metadata/{urn:test}mark")]


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    directory = tmp_path / "rules"
    title_rule(directory, "plain", None, "plain")
    title_rule(directory, "deploy", "[deploy]", "deploy")
    title_rule(directory, "migrate", "[migrate]", "migrate")
    title_rule(directory, "both", "[deploy, migrate]", "both")
    title_rule(directory, "restore", "[restore, hotplug]", "restore")
    return directory


def test_a_rule_without_on_runs_at_deploy_only(rules: Path) -> None:
    deploy = run(rules)
    assert descriptions(deploy) == ["both", "deploy", "plain"]
    assert descriptions(run(rules, "migrate")) == ["both", "migrate"]
    assert descriptions(run(rules, "restore")) == ["restore"]
    assert descriptions(run(rules, "hotplug")) == ["restore"]


def test_rules_of_other_moments_are_reported_not_run(rules: Path) -> None:
    outcome = run(rules, "migrate")
    status = {r.name: (r.status, r.reason) for r in outcome.report.results}
    assert status["plain"] == (NOT_MATCHED, "runs on deploy, not on migrate")
    assert status["restore"] == (NOT_MATCHED, "runs on restore, hotplug, not on migrate")
    assert status["migrate"][0] == APPLIED
    assert outcome.report.moment == "migrate"
    assert "VM 42 (migrate): schema validation" in outcome.report.to_text()
    assert json.loads(outcome.report.to_json())["moment"] == "migrate"


def test_dest_facts_reach_conditions_and_parameters(tmp_path: Path) -> None:
    write_rule(tmp_path, "90-dest.yaml", """name: dest
on: [migrate]
when: {fact: dest.host, regex: '^node'}
tweaks:
  - xpath_patch: {xpath: /domain/devices/graphics, action: set-attribute, name: listen, value: '10.0.0.2'}
""")
    write_rule(tmp_path, "91-param.yaml", """name: param
on: [migrate]
tweaks:
  - cpu_features:
      features: {from: dest.cpu_features}
""")
    outcome = run(tmp_path, "migrate", host="node2", cpu_features="pdpe1gb:optional")
    results = {r.name: r.status for r in outcome.report.results}
    assert results == {"dest": APPLIED, "param": APPLIED}
    assert outcome.tree.getroot().find("cpu/feature[@name='pdpe1gb']").get("policy") == "optional"
    assert {r.name: r.status for r in run(tmp_path, "migrate", host="other").report.results} == {
        "dest": NOT_MATCHED, "param": NOT_MATCHED}


def test_unknown_moment_or_fact_is_refused(rules: Path) -> None:
    with pytest.raises(InputError, match="moment 'boot' is not one of deploy, migrate, restore, hotplug"):
        run(rules, "boot")
    with pytest.raises(InputError, match=r"fact 'vm\.id' cannot be given"):
        engine.apply_rules(engine.parse_xml(deployment(), "d"), None, [], moment="migrate",
                           moment_facts={"vm.id": "1"})


@pytest.mark.parametrize(("on", "message"), [
    ("migrate", "on: 'migrate' is not of type 'array'"),
    ("[]", "on: [] should be non-empty"),
    ("[boot]", "on/0: 'boot' is not one of"),
    ("[deploy, deploy]", "has non-unique elements"),
])
def test_check_refuses_bad_moments_with_file_and_line(tmp_path: Path, on: str, message: str) -> None:
    path = write_rule(tmp_path, "90-x.yaml", f"name: x\non: {on}\ntweaks:\n  - iothreads: {{count: 1}}\n")
    proc = run_cli("check", "--rules", str(tmp_path))
    assert proc.returncode == 1
    out = proc.stdout.decode()
    assert f"{path}:2: rule x: " in out and message in out, out


def test_a_broken_rule_warns_only_at_its_own_moments(tmp_path: Path) -> None:
    write_rule(tmp_path, "90-broken.yaml", "name: broken\non: [migrate]\ntweaks:\n  - iothreads: {count: 0}\n")
    deploy = run_unchecked(tmp_path, "deploy")
    (result,) = deploy.report.results
    assert result.status == NOT_MATCHED and not deploy.report.warnings
    migrate = run_unchecked(tmp_path, "migrate")
    assert migrate.report.results[0].status == SKIPPED
    assert any("rule broken: skipped: invalid rule file" in w for w in migrate.report.warnings)


def run_unchecked(directory: Path, moment: str) -> engine.Outcome:
    files = loader.collect([(str(directory), True)])
    rules = check_files(loader._read_all(files)).rules
    return engine.apply_rules(engine.parse_xml(deployment(), "d"), engine.parse_xml(vm_xml(), "v"), rules,
                              moment=moment)


def test_schema_lists_the_moments() -> None:
    on = build()["properties"]["on"]
    assert on["items"]["enum"] == list(MOMENTS) == ["deploy", "migrate", "restore", "hotplug"]


def test_the_cache_keeps_the_moments(tmp_path: Path) -> None:
    title_rule(tmp_path, "m", "[migrate, restore]", "m")
    first = loader.load([str(tmp_path)])
    second = loader.load([str(tmp_path)])
    assert second.cache_note == "rules from cache"
    assert [r.on for r in first.rules if r.name == "m"] == [r.on for r in second.rules if r.name == "m"] == [
        ["migrate", "restore"]]
    title_rule(tmp_path, "m", "[restore]", "m")
    third = loader.load([str(tmp_path)])
    assert third.cache_note != "rules from cache"
    assert [r.on for r in third.rules if r.name == "m"] == [["restore"]]


def test_shipped_rules_keep_deploying_as_before() -> None:
    """Every shipped rule that is not a migrate rule still runs at deploy."""
    ruleset = loader.load([])
    assert all(r.on for r in ruleset.rules)
    outcome = apply(deployment(), vm_xml({"T_IOTHREADS_OVERRIDE": "2"}))
    assert outcome.tree.getroot().findtext("iothreads") == "2"


def test_cli_moment_and_facts(rules: Path, tmp_path: Path) -> None:
    dom, vm = tmp_path / "d.xml", tmp_path / "v.xml"
    dom.write_bytes(deployment())
    vm.write_bytes(vm_xml())
    proc = run_cli("apply", str(dom), "--vm", str(vm), "--rules", str(rules), "--moment", "migrate",
                   "--fact", "dest.host=node2", "--explain")
    assert proc.returncode == 0, proc.stderr
    assert b">migrate</ns0:mark>" in proc.stdout
    assert b">plain</ns0:mark>" not in proc.stdout
    assert "rule plain: not-matched (runs on deploy, not on migrate)" in proc.stderr.decode()
    default = run_cli("apply", str(dom), "--vm", str(vm), "--rules", str(rules))
    assert b">plain</ns0:mark>" in default.stdout
    for bad, words in ((["--moment", "boot"], "--moment 'boot' is not one of"),
                       (["--fact", "vm.id=3"], "--fact 'vm.id=3' is not dest.NAME=VALUE")):
        proc = run_cli("apply", str(dom), "--vm", str(vm), *bad)
        assert proc.returncode == 2
        assert proc.stderr.decode() == f"one-tweaks: {words}" + proc.stderr.decode().split(words, 1)[1]
        assert len(proc.stderr.decode().splitlines()) == 1


def test_fast_path_reads_moment_and_facts_like_argparse() -> None:
    argv = ["apply", "d.xml", "--vm", "v.xml", "--moment", "migrate", "--fact", "dest.host=n", "--fact",
            "dest.address=1.2.3.4"]
    fast = fast_apply_args(argv)
    ns = _parser().parse_args(argv)
    assert fast is not None
    assert (fast.moment, fast.fact) == (ns.moment, ns.fact) == ("migrate", ["dest.host=n", "dest.address=1.2.3.4"])
    assert fast_apply_args(["apply", "d.xml", "--vm", "v.xml"]).moment == "deploy"  # type: ignore[union-attr]
