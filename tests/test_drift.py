"""``one-tweaks drift`` on real libvirtd: a VM deployed through deploy-tweaks (the front-end
double, StorPool simulator, real sshd) is read back over libvirt-python (``--host node1``:
qemu+ssh through the test sshd), its inputs from its VM directory on the host; untouched it
does not drift, after a rule file changes the rule and the file are named, exit 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from livevm import libvirtd, virsh
from sim.frontend import Frontend
from storage_env import Cloud, cloud, sshd
from test_lifecycle_provenance import DRIVER_RULE, _vm

FIXTURES = (cloud, sshd, libvirtd)
pytestmark = [pytest.mark.libvirtd, pytest.mark.usefixtures("libvirtd")]

# VM ids (so domain names) of this session: concurrent pytest sessions share one libvirtd
BASE_ID = 300000 + os.getpid() % 100000 * 4


def drift(cloud: Cloud, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tweaks", "drift", *args], capture_output=True, text=True,
                          env=cloud.env, cwd=cloud.home, timeout=120, check=False)


def test_drift_is_zero_untouched_and_names_the_rule_after_its_file_changed(cloud: Cloud, tmp_path: Path) -> None:
    vm_id = BASE_ID
    name = f"one-{vm_id}"
    rules = tmp_path / "site-rules"
    rules.mkdir()
    rule = rules / "52-disk-driver.yaml"
    rule.write_text(DRIVER_RULE.format(cache="writeback"))
    cloud.configure(TWEAKS_RULES_DIRS=str(rules))
    _vm(cloud, vm_id, 97)
    fe = Frontend(cloud)
    try:
        fe.deploy(vm_id)
        same = drift(cloud, "--host", "node1", str(vm_id))
        assert same.returncode == 0, same.stdout + same.stderr
        assert same.stdout == f"VM {vm_id} ({name} on node1): no drift\n"
        assert same.stderr == ""

        rule.write_text(DRIVER_RULE.format(cache="unsafe"))  # the operator changes a rule file
        moved = drift(cloud, "--host", "node1", str(vm_id))
        assert moved.returncode == 1, moved.stdout + moved.stderr
        assert moved.stdout.splitlines() == [
            f"VM {vm_id} ({name} on node1): drifts",
            "  rule disk-driver would change /domain/devices/disk/driver/@cache: 'writeback' -> 'unsafe'",
            "  rule file 52-disk-driver.yaml (rule disk-driver) changed since the VM started"]

        report = json.loads(drift(cloud, "--host", "node1", "--json").stdout)
        mine = [v for v in report["vms"] if v["domain"] == name]
        assert len(mine) == 1 and mine[0]["drift"] is True and mine[0]["vm"] == str(vm_id)
        assert [c["rule"] for c in mine[0]["changes"]] == ["disk-driver"]
        assert mine[0]["rule_files"] == [{"file": "52-disk-driver.yaml", "rule": "disk-driver", "how": "changed",
                                          "shaped": "yes"}]
        assert mine[0]["inputs"].endswith(f"/{vm_id}/deployment.0 and {cloud.vm_dir('node1', vm_id)}/vm.xml")

        rule.unlink()  # the site file is gone: the shipped 52-disk-driver.yaml (disabled) is in effect again
        gone = drift(cloud, "--host", "node1", str(vm_id))
        assert gone.returncode == 1, gone.stdout + gone.stderr
        # oned's own domain XML, kept on the host by deploy-tweaks, is what today's rules are
        # applied to: what the vanished rule did shows as a change no rule makes any more
        assert gone.stdout.splitlines() == [
            f"VM {vm_id} ({name} on node1): drifts",
            "  a deploy now would change /domain/devices/disk/driver/@cache: 'writeback' -> 'none' "
            "(no rule of today's sets it)",
            "  a deploy now would change /domain/devices/disk/driver/@io: 'threads' -> 'native' "
            "(no rule of today's sets it)",
            "  rule file 52-disk-driver.yaml (rule disk-driver) changed since the VM started"], gone.stdout
        kept = subprocess.run(["cat", f"{cloud.vm_dir('node1', vm_id)}/deployment.0.oned"], capture_output=True,
                              check=True).stdout
        assert b"writeback" not in kept and b"one-tweaks" not in kept and kept.strip()
    finally:
        virsh("destroy", name, check=False, timeout=120)


def test_drift_of_a_vm_that_does_not_run_is_one_line(cloud: Cloud, libvirtd: object) -> None:
    missing = drift(cloud, "--host", "node1", str(BASE_ID + 1))
    assert missing.returncode == 2
    assert missing.stdout == f"VM ? (one-{BASE_ID + 1} on node1): not checked: no running domain one-{BASE_ID + 1} " \
                             "on node1\n"
    down = drift(cloud, "--host", "node9.invalid")
    assert down.returncode == 2 and down.stdout == ""
    assert down.stderr.startswith("one-tweaks drift: node9.invalid: cannot reach libvirt at ") and \
        len(down.stderr.splitlines()) == 1, down.stderr
