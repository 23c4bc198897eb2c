"""``bash .ci/demo``: its diff shows what the rules changed and nothing else, and installing
the package prints no packaging warnings (setuptools' own hooks, as pip calls them)."""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from pathlib import Path

import xmlnorm
from conftest import ROOT

SAMPLE = ROOT / "tests" / "fixtures" / "sample"


def _blind(line: str) -> str:
    """A diff line's content with quote style and whitespace ignored."""
    return " ".join(line[1:].replace("'", '"').split())


def _only_spelling(lines: list[str]) -> set[str]:
    """Lines removed and added again with nothing but quotes or whitespace changed (a line
    moved as it was, e.g. with the merged <devices>, is not one)."""
    removed = {_blind(ln): ln[1:] for ln in lines if ln.startswith("-") and not ln.startswith("---")}
    added = {_blind(ln): ln[1:] for ln in lines if ln.startswith("+") and not ln.startswith("+++")}
    return {key for key in removed.keys() & added.keys() if removed[key] != added[key]}


def test_demo_diff_shows_only_what_the_rules_changed(tmp_path: Path) -> None:
    out = tmp_path / "tweaked.xml"
    env = {**os.environ, "ONE_TWEAKS_RULES_DIR": str(tmp_path / "no-site-rules"), "ONE_TWEAKS_CACHE_DIR": "off"}
    explain = subprocess.run([sys.executable, "-m", "tweaks", "apply", str(SAMPLE / "deployment.xml"), "--vm",
                              str(SAMPLE / "vm.xml"), "-o", str(out), "--explain"], check=True, capture_output=True,
                             env=env, text=True).stderr
    # --explain lists changes as "  XPATH: BEFORE -> AFTER": none of them is spelling only
    changes = [ln.split(": ", 1)[1].split(" -> ") for ln in explain.splitlines() if ln.startswith("  /")]
    assert len(changes) > 10
    assert not [c for c in changes if len(c) == 2 and _blind(" " + c[0]) == _blind(" " + c[1])], explain
    # a plain diff of the two files is mostly spelling: this test's check sees that
    raw = list(difflib.unified_diff((SAMPLE / "deployment.xml").read_text().splitlines(),
                                    out.read_text().splitlines(), lineterm=""))
    assert len(_only_spelling(raw)) > 20
    # the demo diffs through tests/xmlnorm.py
    demo = (ROOT / ".ci" / "demo").read_text()
    assert "tests/xmlnorm.py tests/fixtures/sample/deployment.xml" in demo
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "xmlnorm.py"), str(SAMPLE / "deployment.xml"),
                           str(out), "oned", "tweaked"], check=True, capture_output=True, text=True)
    lines = proc.stdout.splitlines()
    assert lines[:2] == ["--- oned", "+++ tweaked"]
    assert not _only_spelling(lines), "lines that differ only in quotes or whitespace"
    changed = [ln for ln in lines if ln[:1] in "+-" and ln[:3] not in ("---", "+++")]
    assert "-  <iothreads>2</iothreads>" in changed and "+  <iothreads>4</iothreads>" in changed
    assert '+      <model type="qxl" vram="32768" heads="2" primary="yes"/>' in changed
    # the same document on both sides: no difference at all
    assert xmlnorm.diff(str(SAMPLE / "deployment.xml"), str(SAMPLE / "deployment.xml")) == []


def test_building_the_package_prints_no_warnings(tmp_path: Path) -> None:
    """The wheel and the editable wheel (what `pip install .` and `.ci/venv`'s `pip install -e .`
    build): setuptools warns about nothing (a deprecated licence table, an editable layout
    that needs an import hook)."""
    for hook in ("build_wheel", "build_editable"):
        code = f"from setuptools import build_meta; build_meta.{hook}({str(tmp_path / hook)!r})"
        proc = subprocess.run([sys.executable, "-W", "default", "-c", code], cwd=ROOT, capture_output=True,
                              text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        warnings = [ln for ln in proc.stderr.splitlines() if "Warning" in ln]
        assert not warnings, f"{hook}: {warnings}"
