"""Differential suite: addon-storpool's own deploy-tweaks scripts vs `one-tweaks apply`.

Every case (tests/addon_cases.py) runs the add-on's scripts the way its deploy-tweaks does and
our shipped rules on the same domain and VM document, and compares the two domains in a canonical
form (tests/addon_diff.py). Each difference must be explained by a row of the README table
"Differences from addon-storpool"; each row must still describe something the suite observes.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from addon_cases import ATTRS, Case, all_cases
from addon_diff import ADDON, Result, canonical, fresh_workdir, overlays_for, run_addon, run_all, run_ours

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- addon-differences:start -->", "<!-- addon-differences:end -->"
KINDS = {
    "addon-invalid": "the add-on's domain fails libvirt's schema; we skip the value with a warning",
    "unsafe": "libvirt or QEMU refuses what the add-on writes; we skip the value with a warning",
    "addon-bug": "the add-on does not do what its documentation says (script and line given)",
    "ours-more": "we also accept a spelling or act on a value the add-on ignores",
    "design": "a deliberate difference, reason given",
    "vanishing": "being fixed on our side (tweakfix); the row may stop matching",
}


@dataclass
class Row:
    patterns: list[str]
    kind: str
    text: str

    def matches(self, case_id: str) -> bool:
        return any(fnmatch.fnmatchcase(case_id, p) for p in self.patterns)


def table() -> list[Row]:
    text = README.read_text()
    assert START in text and END in text, "README lacks the 'Differences from addon-storpool' table markers"
    rows = []
    for line in text.split(START, 1)[1].split(END, 1)[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] in ("cases", "---") or set(cells[0]) <= {"-"}:
            continue
        patterns = re.findall(r"`([^`]+)`", cells[0])
        assert patterns, f"README row without a case pattern: {line}"
        kind = cells[1].strip("`")
        assert kind in KINDS, f"README row kind {kind!r} is not one of {', '.join(KINDS)}"
        rows.append(Row(patterns, kind, line))
    return rows


CASES = list(all_cases())


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    return run_all(CASES, fresh_workdir(tmp_path_factory.mktemp("addon")))


def test_enough_cases_cover_every_attribute() -> None:
    assert len(CASES) >= 300
    assert len({c.id for c in CASES}) == len(CASES)
    read: set[str] = set()
    for script in ADDON.joinpath("deploy-tweaks.d").glob("*.py"):
        text = script.read_text()
        read |= set(re.findall(r"\b(T_[A-Z0-9_]*[A-Z0-9]|Q35_PCIE_ROOT_PORTS)\b", text))
        # names built in loops: T_HV_<name>, T_SMBIOS_<name>, T_CPUTUNE_<prefix><entry>
        read |= {f"T_HV_{n.upper()}" for n in re.findall(r"^    '([a-z]+)',$", text, re.M)}
        read |= {f"T_SMBIOS_{n.upper()}" for n in re.findall(r"'(bios|system|baseBoard|chassis|oemStrings)'", text)}
    read |= {f"T_CPUTUNE_{p}{e}" for p in ("", "GLOBAL_", "EMULATOR_", "IOTHREAD_") for e in ("PERIOD", "QUOTA")}
    read.discard("T_NIC")  # f"T_NIC{nic_id}_QUEUES": set as T_NIC0_QUEUES and T_NIC1_QUEUES
    read.discard("T_VIDEO_MODE")  # a typo in a comment of video.py (line 20); the script reads T_VIDEO_MODEL
    covered = {k for c in CASES for k, _ in c.user}
    assert read - covered == set(), f"attributes the add-on reads but no case sets: {sorted(read - covered)}"
    assert {"T_CPUTUNE_SHARES_KEEP", "T_FEATURE_SMM_TSEG", "T_VF_MACS"} <= covered
    for script in ATTRS:
        assert (ADDON / "deploy-tweaks.d" / script).is_file()


def test_fixtures_are_the_addons_files_unmodified() -> None:
    origin = (ADDON / "ORIGIN.md").read_text()
    sums = re.findall(r"^([0-9a-f]{64})  (\S+)$", origin, re.M)
    assert len(sums) >= 24
    for digest, name in sums:
        assert hashlib.sha256((ADDON / name).read_bytes()).hexdigest() == digest, f"{name} differs from the add-on's"
    assert "Apache License" in (ADDON / "LICENSE").read_text()


def test_every_difference_is_explained(results: dict[str, Result]) -> None:
    rows = table()
    unexplained = []
    for cid, res in results.items():
        if res.diff and not any(r.matches(cid) for r in rows):
            unexplained.append(f"{cid}:\n" + "\n".join(res.diff[2:24]))
    assert not unexplained, f"{len(unexplained)} unexplained differences:\n\n" + "\n\n".join(unexplained[:15])


def test_every_listed_difference_still_occurs(results: dict[str, Result]) -> None:
    stale = []
    for row in table():
        for pattern in row.patterns:
            hits = [cid for cid, res in results.items() if res.diff and fnmatch.fnmatchcase(cid, pattern)]
            if not hits and row.kind != "vanishing":
                stale.append(f"{pattern} ({row.kind})")
    assert not stale, "README rows describing no observed difference (remove or fix them): " + ", ".join(stale)


def test_row_kinds_hold(results: dict[str, Result]) -> None:
    """addon-invalid rows: libvirt's schema really rejects the add-on's domain; unsafe rows: we warned."""
    wrong = []
    for row in table():
        for cid, res in results.items():
            if not res.diff or not row.matches(cid) or next(r for r in table() if r.matches(cid)) is not row:
                continue
            if row.kind == "addon-invalid" and res.addon_valid:
                wrong.append(f"{cid}: the add-on's domain is schema-valid, row says addon-invalid")
            if row.kind in ("addon-invalid", "unsafe") and "rule skipped" not in res.warnings:
                wrong.append(f"{cid}: we printed no warning, row says {row.kind}")
    assert not wrong, "\n".join(wrong[:20])


_VALUE = r"(\(none\)|'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"
_CHANGE = re.compile(rf"^  (/\S*): {_VALUE} -> {_VALUE}$")


def _same(before: str, after: str) -> bool:
    """Equal as libvirt reads them: the same text, or the same element up to quotes and whitespace."""
    import ast

    if before == "(none)" or after == "(none)":
        return before == after
    b, a = ast.literal_eval(before), ast.literal_eval(after)
    if b.strip() == a.strip():
        return True
    if b.startswith("<") and a.startswith("<") and not b.endswith("...") and not a.endswith("..."):
        try:
            return canonical(b.encode()) == canonical(a.encode())
        except Exception:
            return False
    return False


def test_explain_shows_only_semantic_changes(results: dict[str, Result]) -> None:
    """`apply --explain` on every case: no change line whose two sides mean the same (issue 12, item 4)."""
    import ast

    noise, lines = [], 0
    for cid, res in results.items():
        removed: list[str] = []  # elements a rule removed, to catch one it removes and adds back unchanged
        for line in res.warnings.splitlines():
            if line.startswith("rule "):
                removed = []
            m = _CHANGE.match(line)
            if not m:
                continue
            lines += 1
            before, after = m.group(2), m.group(3)
            if _same(before, after):
                noise.append(f"{cid}: {line.strip()}")
            elif after == "(none)" and before.startswith(("'<", '"<')):
                removed.append(before)
            elif (before == "(none)" and after.startswith(("'<", '"<')) and not ast.literal_eval(after).endswith("/>")
                  and any(_same(r, after) for r in removed)):
                noise.append(f"{cid}: removed and added back: {line.strip()}")
    assert lines > 500, "the cases' --explain reports show almost no changes: is --explain passed?"
    assert not noise, "--explain lines that change nothing:\n" + "\n".join(noise[:20])


def test_no_difference_without_tweaks(results: dict[str, Result]) -> None:
    """Sanity: the comparison sees through quotes, whitespace and merged <devices> blocks."""
    case = next(c for c in CASES if c.id == "fixture/- @context-cache.py")
    assert not results[case.id].diff
    dom, _ = case.inputs()
    assert canonical(dom) == canonical(dom.replace(b"'", b'"').replace(b"\t", b"    "))


def test_one_case_through_a_real_process(tmp_path: Path) -> None:
    """The in-process runs are `one-tweaks apply` itself: one case as its own process gives the same."""
    case = next(c for c in CASES if c.id == "q35-blk-sp/T_DISKSERIAL=yes")
    dom, vm = case.inputs()
    addon = run_addon(dom, vm, case.scripts, tmp_path)
    ours = run_ours(dom, vm, overlays_for(case.scripts), tmp_path, process=True)
    assert canonical(addon.xml) == canonical(ours.xml)
    assert b"<serial>" in ours.xml


def test_a_failing_script_is_discarded(tmp_path: Path) -> None:
    """As deploy-tweaks does: a script that fails leaves the domain as it was (here os.py on a bad NVRAM)."""
    case = Case("t", "fixture", (("T_OS_NVRAM", "vars.fd"),), ("os.py",))
    dom, vm = case.inputs()
    run = run_addon(dom, vm, case.scripts, tmp_path)
    assert "os.py" in run.failed and run.xml == dom


def test_explain_noise_detector_sees_quote_only_changes() -> None:
    assert _same("""'<model type="virtio"/>'""", """"<model type='virtio'/>\"""")
    assert _same("'1'", "' 1'")
    assert not _same("'<model type=\"virtio\"/>'", "'<model type=\"qxl\"/>'")
    assert not _same("(none)", "'1'")
