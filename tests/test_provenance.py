"""Provenance metadata: every tweaked domain says which rule files (name, content hash) and
which tweaks made it, and the one-tweaks version; re-applying never counts it as a change.
(Live checks after deploy, save/restore and migration: test_lifecycle_provenance.py.)"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, deployment, run_cli, vm_xml, write_rule
from lxml import etree

from tweaks import __version__, provenance

NS = provenance.NAMESPACE


def _apply(tmp_path: Path, dom: bytes, user: dict[str, str], *extra: str) -> subprocess.CompletedProcess[bytes]:
    (tmp_path / "d.xml").write_bytes(dom)
    (tmp_path / "vm.xml").write_bytes(vm_xml(user))
    return run_cli("apply", str(tmp_path / "d.xml"), "--vm", str(tmp_path / "vm.xml"), *extra)


def test_a_tweaked_domain_carries_rule_files_hashes_tweaks_and_version(tmp_path: Path, assert_valid) -> None:
    extra = tmp_path / "extra"
    rule = write_rule(extra, "90-title.yaml", "name: title\ntweaks:\n  - xpath_patch:\n"
                      "      xpath: /domain/title\n      action: remove-element\n")
    proc = _apply(tmp_path, deployment(), {"T_IOTHREADS_OVERRIDE": "3", "T_BLK_QUEUES": "yes"}, "--rules", str(extra))
    assert proc.returncode == 0, proc.stderr
    assert_valid(proc.stdout)
    root = etree.fromstring(proc.stdout)
    el = root.find(f"metadata/{{{NS}}}provenance")
    assert el is not None, "provenance in <metadata>, in its own namespace"
    assert el.nsmap.get("one-tweaks") == NS
    assert root.find("metadata/{http://opennebula.org/xmlns/libvirt/1.0}vm") is not None, "oned's metadata kept"

    got = provenance.read(root)
    assert got is not None and got.version == __version__
    files = got.files()
    shipped = sorted(p.name for p in (ROOT / "rules.d").glob("*.yaml"))
    assert sorted(files) == sorted([*shipped, "90-title.yaml"]), "every rule file in effect"
    for entry in got.rules:
        assert entry.sha256 == hashlib.sha256(Path(entry.path).read_bytes()).hexdigest(), entry.file
    assert files["90-title.yaml"] == hashlib.sha256(rule.read_bytes()).hexdigest()
    changed = got.changed_by()
    assert changed["iothreads"] == ["iothreads"]
    assert changed["blk-queues"] == ["blk_queues"], "scsi_queues kept oned's VIRTIO_SCSI_QUEUES: not a changer"
    assert changed["title"] == ["xpath_patch"]
    assert "cpu-model" not in changed, "a rule that changed nothing is not named as a changer"
    by_name = {r.name: r for r in got.rules}
    assert by_name["cpu-model"].status == "not-matched" and by_name["cpu-model"].tweaks == []


def test_second_apply_is_identical_and_reports_no_change(tmp_path: Path) -> None:
    first = _apply(tmp_path, deployment(), {"T_IOTHREADS_OVERRIDE": "2", "T_DISKSERIAL": "yes"})
    assert first.returncode == 0, first.stderr
    second = _apply(tmp_path, first.stdout, {"T_IOTHREADS_OVERRIDE": "2", "T_DISKSERIAL": "yes"}, "--json")
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout, "the stamp is kept as it is: same bytes"
    report = json.loads(second.stderr)
    assert [r["rule"] for r in report["rules"] if r["status"] == "applied"] == []
    assert report["normalized"] == []


def test_a_domain_no_rule_changed_still_says_which_rules_it_was_checked_with(tmp_path: Path) -> None:
    proc = _apply(tmp_path, deployment(), {})
    got = provenance.read(etree.fromstring(proc.stdout))
    assert got is not None and got.changed_by() == {}
    assert "10-iothreads.yaml" in got.files()


def test_new_rules_that_change_the_domain_renew_the_stamp(tmp_path: Path) -> None:
    first = _apply(tmp_path, deployment(), {})
    extra = tmp_path / "extra"
    write_rule(extra, "90-title.yaml", "name: title\ntweaks:\n  - xpath_patch:\n"
               "      xpath: /domain/title\n      action: remove-element\n")
    second = _apply(tmp_path, first.stdout, {}, "--rules", str(extra))
    root = etree.fromstring(second.stdout)
    assert len(root.findall(f"metadata/{{{NS}}}provenance")) == 1, "one stamp, replaced"
    got = provenance.read(root)
    assert got is not None and got.changed_by() == {"title": ["xpath_patch"]}


def test_reader_without_provenance_and_without_libvirt() -> None:
    assert provenance.read(etree.fromstring(deployment())) is None
    code = ("import sys, tweaks.provenance; "
            "assert not [m for m in sys.modules if m.startswith(('libvirt', 'yaml', 'jsonschema'))]")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_hotplug_entries_are_replaced_on_replug_and_dropped_on_unplug() -> None:
    from tweaks.report import Report

    root = etree.fromstring(deployment())
    meta = root.find("metadata")
    assert meta is not None

    def install(stamp: etree._Element) -> None:
        """What libvirt's setMetadata does with the element: replace the namespace's one."""
        old = provenance.find(root)
        if old is not None:
            meta.remove(old)
        meta.append(stamp)

    def targets() -> list[tuple[str, str]]:
        found = provenance.read(root)
        return [] if found is None else [(p.device, p.target) for p in found.hotplugs]

    for device, target in (("disk", "vdb"), ("interface", "02:00:00:00:00:01"), ("disk", "vdb")):
        entry = provenance.hotplug(Report(vm="42"), [], device=device, target=target, action="attach")
        install(provenance.with_hotplug(root, entry))
    assert targets() == [("interface", "02:00:00:00:00:01"), ("disk", "vdb")], "a re-plug replaces its entry"
    assert provenance.without_hotplug(root, "disk", "sdz") is None, "nothing to drop"
    fresh = provenance.without_hotplug(root, "disk", "vdb")
    assert fresh is not None
    assert targets() == [("interface", "02:00:00:00:00:01"), ("disk", "vdb")], "the domain is left as it is"
    install(fresh)
    assert targets() == [("interface", "02:00:00:00:00:01")]
