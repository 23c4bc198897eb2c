"""Rule files: where they come from, overriding by name, checking with file:line, the cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, apply, deployment, vm_xml, write_rule

from tweaks import loader
from tweaks.checker import check_files
from tweaks.errors import InputError

SHIPPED = sorted(p.name for p in (ROOT / "rules.d").glob("*.yaml"))


def names(ruleset: loader.RuleSet) -> list[str]:
    return [r.name for r in ruleset.rules]


def check(directory: Path) -> list[str]:
    files = loader.collect([(str(directory), True)])
    return [str(p) for p in check_files(loader._read_all(files)).problems]


def test_shipped_rules_are_found_and_valid():
    ruleset = loader.load([], use_cache=False)
    assert [os.path.basename(r.file) for r in ruleset.rules] == SHIPPED
    assert not ruleset.problems
    assert all(not r.errors for r in ruleset.rules)


def test_shipped_rule_files_name_the_schema():
    for name in SHIPPED:
        first = (ROOT / "rules.d" / name).read_text().splitlines()[0]
        assert first == "# yaml-language-server: $schema=../tweaks/rules.schema.json", name


def test_order_and_override_by_file_name(tmp_path, monkeypatch):
    etc = tmp_path / "etc"
    extra = tmp_path / "extra"
    monkeypatch.setenv("ONE_TWEAKS_RULES_DIR", str(etc))
    write_rule(etc, "10-iothreads.yaml", "name: my-iothreads\ntweaks:\n  - iothreads: {count: 1}\n")
    write_rule(etc, "00-first.yaml", "name: first\ntweaks:\n  - iothreads: {count: 1}\n")
    write_rule(extra, "00-first.yaml", "name: first-again\ntweaks:\n  - iothreads: {count: 2}\n")
    write_rule(extra, "99-last.yml", "name: last\ntweaks:\n  - iothreads: {count: 1}\n")
    write_rule(extra, "notes.txt", "ignored")
    ruleset = loader.load([str(extra)], use_cache=False)
    got = names(ruleset)
    assert got[0] == "first-again", "a later directory replaces a same-named file"
    assert got[1] == "my-iothreads", "the operator's file replaced the shipped 10-iothreads.yaml"
    assert "iothreads" not in got
    assert got[-1] == "last"
    assert len(got) == len(set(SHIPPED) | {"00-first.yaml", "99-last.yml"})


def test_empty_file_or_enabled_false_disables_a_shipped_rule(tmp_path, monkeypatch):
    monkeypatch.setenv("ONE_TWEAKS_RULES_DIR", str(tmp_path))
    write_rule(tmp_path, "10-iothreads.yaml", "")
    write_rule(tmp_path, "40-video.yaml", "name: video\nenabled: false\ntweaks:\n  - video: {model: type=vga}\n")
    outcome = apply(deployment(), vm_xml({"T_IOTHREADS_OVERRIDE": "3", "T_VIDEO_MODEL": "type=qxl"}))
    assert "iothreads" not in [r.name for r in outcome.report.results]
    assert next(r for r in outcome.report.results if r.name == "video").status == "disabled"
    root = outcome.tree.getroot()
    assert root.findtext("iothreads") == "2"
    assert root.find("devices/video/model").get("type") == "virtio"


def test_operator_default_acts_like_an_rc_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("ONE_TWEAKS_RULES_DIR", str(tmp_path))
    write_rule(tmp_path, "30-cpu-model.yaml",
               "name: cpu-model\ntweaks:\n  - cpu_model:\n      model: {from: user.T_CPU_MODEL, default: EPYC}\n")
    plain = apply(deployment(), vm_xml()).tree.getroot()
    assert plain.find("cpu/model") is None, "oned's CPU_MODEL wins over the operator default"
    own = apply(deployment(), vm_xml({"T_CPU_MODEL": "Skylake-Server"})).tree.getroot()
    assert own.findtext("cpu/model") == "Skylake-Server"


def test_missing_rules_dir_is_an_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        loader.load([str(tmp_path / "nope")])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: a\ntweaks:\n  - iothreads:\n      count: [1\n", "5: YAML syntax error: while parsing a flow sequence"),
        ("name: a\ntweaks:\n  - nosuch: {}\n", "3: rule a: tweaks/0: 'nosuch' is not one of"),
        ("name: a\ntweaks:\n  - iothreads:\n      count: 999\n", "4: rule a: tweaks/0/iothreads/count: 999 is greater"),
        ("name: a\ntweaks:\n  - iothreads:\n      counts: 2\n", "3: rule a: tweaks/0/iothreads: Additional properties"),
        ("name: a\nwhen: {fact: user.X, regex: '('}\ntweaks:\n  - iothreads: {count: 1}\n",
         "2: rule a: bad regex at when"),
        ("name: a\nwhen: {present: secret.X}\ntweaks:\n  - iothreads: {count: 1}\n", "2: rule a: when"),
        ("name: a\ntweaks:\n  - cpu_model:\n      model: 'bad model!'\n",
         "4: rule a: tweaks/0/cpu_model/model: 'bad model!' does not match"),
        ("name: a\ntweaks:\n  - cpu_features:\n      features: 'vmx:bogus'\n",
         "4: rule a: cpu_features: rule parameter features='vmx:bogus': policy 'bogus' is not one of"),
        ("name: a\ntweaks:\n  - iothreads: {count: {from: vm.id, default: x}}\n",
         "3: rule a: tweaks/0/iothreads/count"),
        ("name: a\nname: b\ntweaks: []\n", "2: YAML syntax error: duplicate key 'name'"),
        ("tweaks: []\n", "1: 'name' is a required property"),
        ("- just\n- a list\n", "1: ['just', 'a list'] is not of type"),
    ],
)
def test_check_reports_file_line_rule_message(tmp_path, text, expected):
    path = write_rule(tmp_path, "10-a.yaml", text)
    problems = check(tmp_path)
    assert problems, text
    assert problems[0].startswith(f"{path}:"), problems
    assert expected in problems[0], problems


def test_duplicate_rule_names_are_reported(tmp_path):
    write_rule(tmp_path, "10-a.yaml", "name: same\ntweaks:\n  - iothreads: {count: 1}\n")
    b = write_rule(tmp_path, "20-b.yaml", "name: same\ntweaks:\n  - iothreads: {count: 1}\n")
    assert check(tmp_path) == [f"{b}:1: rule same: rule name also used by {tmp_path / '10-a.yaml'}"]


def test_broken_rule_file_is_skipped_with_a_warning_at_deploy(tmp_path):
    write_rule(tmp_path, "15-broken.yaml", "name: broken\ntweaks:\n  - iothreads: {count: 0}\n")
    outcome = apply(deployment(), vm_xml({"T_IOTHREADS_OVERRIDE": "3"}), [str(tmp_path)])
    broken = next(r for r in outcome.report.results if r.name == "broken")
    assert broken.status == "skipped"
    assert any("rule broken: skipped: invalid rule file" in w for w in outcome.report.warnings)
    assert outcome.tree.getroot().findtext("iothreads") == "3", "other rules still apply"


# --- cache -------------------------------------------------------------------------------------

LOAD_TWICE = """
import sys, tweaks.loader as l
r = l.load(sys.argv[1:])
print(r.cache_note, 'yaml' in sys.modules, 'jsonschema' in sys.modules, [x.name for x in r.rules][-1])
"""


def run_load(*dirs: str) -> str:
    out = subprocess.run([sys.executable, "-c", LOAD_TWICE, *dirs], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_cache_skips_yaml_and_jsonschema_and_follows_file_changes(tmp_path):
    rules = tmp_path / "rules"
    write_rule(rules, "99-x.yaml", "name: x1\ntweaks:\n  - iothreads: {count: 1}\n")
    assert run_load(str(rules)) == "True True x1"
    assert run_load(str(rules)) == "rules from cache False False x1"
    write_rule(rules, "99-x.yaml", "name: x2\ntweaks:\n  - iothreads: {count: 1}\n")
    assert run_load(str(rules)) == "True True x2"
    assert run_load(str(rules)) == "rules from cache False False x2"


def test_corrupt_cache_is_rebuilt(tmp_path):
    cache = Path(os.environ["ONE_TWEAKS_CACHE_DIR"]) / "rules.cache"
    run_load()
    for garbage in (b"", b"\x00\xff garbage", b"\xfb" * 100):
        cache.write_bytes(garbage)
        assert run_load().startswith("True True")
        assert run_load().startswith("rules from cache")


def test_unwritable_cache_only_costs_speed(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("ONE_TWEAKS_CACHE_DIR", str(blocker / "cache"))
    ruleset = loader.load([])
    assert ruleset.cache_note.startswith("rule cache not written")
    assert names(ruleset) == names(loader.load([], use_cache=False))


def test_cache_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("ONE_TWEAKS_CACHE_DIR", "off")
    assert loader.cache_path() is None
    assert loader.load([]).cache_note == ""
