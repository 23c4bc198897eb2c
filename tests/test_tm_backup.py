"""PREBACKUP[_LIVE] / POSTBACKUP[_LIVE] of the storpool TM driver, run as oned runs them:
argv ``host:system_dir disk_ids deploy_id bjid vmid sys_dsid``, the plain ``<VM>`` on stdin.

Real pieces: the driver executables, the StorPool simulator (volumes as files, attachments
as loop devices), the oned double over XML-RPC, the ssh hop to the host, qemu-img on the
host; the guest agent is libvirt's test driver (LIBVIRT_URI=test:///default, domain "test").
Backup files are checked on the host: qcow2 per ``qemu-img info``, and converted back to
raw, the exact bytes written into the volumes before the backup.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import drivers
from livevm import libvirtd
from lxml import etree
from storage_env import LIBVIRT_CLIENT_LOG, Cloud, cloud, sshd

FIXTURES = (cloud, sshd, libvirtd)

VM = 42
SIZE_MB = 16
MiB = 2**20
SYS_DS = 101
# disk id -> volume; disk 2 is the context CD-ROM (never in oned's backup list)
VOLUMES = {0: "one-img-7-42-0", 1: "one-img-8"}
BASE_CALLS = 8  # list, group snapshot, 2 diskid tags, 2 attaches, 2 detaches


# ----------------------------------------------------------------------------------------------
# helpers


def _content(chunks: dict[int, bytes]) -> bytes:
    out = bytearray(SIZE_MB * MiB)
    for offset, data in chunks.items():
        out[offset:offset + len(data)] = data
    return bytes(out)


def _setup(cloud: Cloud) -> dict[int, str]:
    """VM 42 running on node1: disk 0 a non-persistent image clone, disk 1 a persistent
    image, both attached read-write to node1 as the running VM has them; returns the
    checksum of each disk's whole content."""
    cloud.make_vm(VM, [{"image": 7, "size": SIZE_MB}, {"image": 8, "persistent": True, "size": SIZE_MB}])
    first = {0: os.urandom(MiB), 3 * MiB + 512: b"disk zero, later block" * 100}
    cloud.make_volume(VOLUMES[0], SIZE_MB, data=first[0],
                      tags={"virt": "one", "nloc": "one", "nvm": str(VM), "type": "NPERS", "diskid": "0"})
    cloud.make_volume(VOLUMES[1], SIZE_MB, tags={"virt": "one", "nloc": "one", "type": "PERS"})
    second = {5 * MiB: os.urandom(2 * MiB), SIZE_MB * MiB - 4096: b"\xff" * 4096}
    for name in VOLUMES.values():
        cloud.attach(name, "node1")
    with open(cloud.device_dir("node1") / VOLUMES[0], "r+b") as dev:
        dev.seek(3 * MiB + 512)
        dev.write(first[3 * MiB + 512])
        dev.flush()
        os.fsync(dev.fileno())
    with open(cloud.device_dir("node1") / VOLUMES[1], "r+b") as dev:
        for offset, data in second.items():
            dev.seek(offset)
            dev.write(data)
        dev.flush()
        os.fsync(dev.fileno())
    sums = {0: hashlib.sha256(_content(first)).hexdigest(), 1: hashlib.sha256(_content(second)).hexdigest()}
    for disk_id, name in VOLUMES.items():  # what the volumes hold is what was written
        assert Cloud.sha256(cloud.device_dir("node1") / name, SIZE_MB * MiB) == sums[disk_id]
    return sums


def _args(cloud: Cloud, disks: str = "0:1", deploy_id: str = "one-42", job: str = "-") -> list[str]:
    return [cloud.tm_path("node1", VM), disks, deploy_id, job, str(VM), str(SYS_DS)]


def _stdin(cloud: Cloud, extra: bytes = b"") -> bytes:
    return etree.tostring(cloud.oned.served("vm", VM)) + extra


def _run(cloud: Cloud, action: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return cloud.run_tm(action, *(args or _args(cloud)), stdin=_stdin(cloud) if stdin is None else stdin)


def _ok(proc: subprocess.CompletedProcess[bytes]) -> None:
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")


def _failed(proc: subprocess.CompletedProcess[bytes]) -> str:
    """The one stderr line of a failed action."""
    lines = proc.stderr.decode(errors="replace").splitlines()
    assert proc.returncode == 1, lines
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


def _backup_dir(cloud: Cloud) -> Path:
    return cloud.vm_dir("node1", VM) / "backup"


def _backup_snapshots(cloud: Cloud) -> dict[str, dict[str, object]]:
    return {n: s for n, s in cloud.sim.inventory()["snapshots"].items() if "-ONEBACKUP-" in n}


def _attachments(cloud: Cloud) -> list[tuple[str, int, str]]:
    return sorted((a["name"], a["client"], a["rights"]) for a in cloud.sim.inventory()["attachments"])


VM_ATTACHMENTS = sorted((name, 1, "rw") for name in VOLUMES.values())


def _assert_clean(cloud: Cloud, volumes: set[str] | None = None) -> None:
    """Nothing of a backup left: no backup snapshots, only the VM's own attachments, no
    backup directory on the host, the volumes as they were."""
    assert _backup_snapshots(cloud) == {}
    assert _attachments(cloud) == VM_ATTACHMENTS
    assert not _backup_dir(cloud).exists()
    assert set(cloud.sim.inventory()["volumes"]) == (volumes or set(VOLUMES.values()))


def _assert_backup(cloud: Cloud, sums: dict[int, str], tmp_path: Path, directory: Path | None = None) -> None:
    """On the host: disk.<ID>.0 per disk, qcow2 without a backing file, holding exactly
    the disk's bytes; vm.xml is the VM document in base64."""
    where = directory or _backup_dir(cloud)
    assert sorted(p.name for p in where.iterdir()) == sorted([*(f"disk.{d}.0" for d in sums), "vm.xml"])
    # one ssh round trip on the host: qemu-img info of each file, and its content as raw
    script = ('set -e; while [ $# -gt 0 ]; do qemu-img info --output=json "$1" | tr -d "\\n"; echo; '
              'qemu-img convert -f qcow2 -O raw "$1" "$2"; shift 2; done')
    files = [(where / f"disk.{d}.0", tmp_path / f"restored.{d}.raw") for d in sums]
    proc = cloud.ssh("node1", "sh", "-c", script, "sh", *(str(p) for pair in files for p in pair))
    assert proc.returncode == 0, proc.stderr
    infos = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert len(infos) == len(sums)
    for (disk_id, digest), described, (_, raw) in zip(sums.items(), infos, files, strict=True):
        assert described["format"] == "qcow2"
        assert described["virtual-size"] == SIZE_MB * MiB
        assert "backing-filename" not in described
        assert raw.stat().st_size == SIZE_MB * MiB
        assert Cloud.sha256(raw, SIZE_MB * MiB) == digest, f"disk {disk_id}"
        raw.unlink()
    vm = etree.fromstring(base64.b64decode((where / "vm.xml").read_bytes()))
    assert vm.tag == "VM" and vm.findtext("ID") == str(VM)


def _calls(cloud: Cloud, since: int) -> list[str]:
    return [name for name, _ in cloud.sim.calls[since:]]


# ----------------------------------------------------------------------------------------------
# the backup itself


def test_prebackup_makes_qcow2_full_backups_from_one_group_snapshot(cloud: Cloud, tmp_path: Path) -> None:
    sums = _setup(cloud)
    start, ssh_start = len(cloud.sim.calls), len(cloud.ssh_commands())
    before = int(time.time())
    _ok(_run(cloud, "prebackup"))
    calls = _calls(cloud, start)
    assert calls.count("VolumesGroupSnapshot") == 1
    assert "VolumeSnapshot" not in calls
    assert len(calls) == BASE_CALLS, calls
    group = next(body for name, body in cloud.sim.calls[start:] if name == "VolumesGroupSnapshot")
    assert sorted(v["volume"] for v in group["volumes"]) == sorted(VOLUMES.values())  # not the context disk

    # the snapshots: one timestamp, addon-storpool's names, tagged for the VM and the disk
    snaps = _backup_snapshots(cloud)
    stamps = {name.rsplit("-", 1)[1] for name in snaps}
    assert len(stamps) == 1
    stamp = stamps.pop()
    assert before <= int(stamp) <= time.time()
    assert set(snaps) == {f"{vol}-ONEBACKUP-{stamp}" for vol in VOLUMES.values()}
    for disk_id, vol in VOLUMES.items():
        assert snaps[f"{vol}-ONEBACKUP-{stamp}"]["tags"] == {
            "virt": "one", "nloc": "one", "nvm": str(VM), "diskid": str(disk_id), "onebackup": stamp}
    # read through read-only attachments of the snapshots on the host, detached again
    reassigns = [body for name, body in cloud.sim.calls[start:] if name == "VolumesReassignWait"]
    attached = [e for body in reassigns for e in body["reassign"] if "ro" in e or "rw" in e]
    assert sorted(e["snapshot"] for e in attached) == sorted(snaps)
    assert all(e["ro"] == [1] and "rw" not in e for e in attached)
    assert _attachments(cloud) == VM_ATTACHMENTS
    converts = [cmd for host, cmd in cloud.ssh_commands()[ssh_start:] if "qemu-img convert" in cmd]
    assert len(converts) == 2
    for cmd in converts:
        assert "-f raw -O qcow2" in cmd and "-ONEBACKUP-" in cmd
        assert str(cloud.device_dir("node1")) in cmd

    _assert_backup(cloud, sums, tmp_path)
    assert {h for h, _ in cloud.ssh_commands()[ssh_start:]} == {"node1"}

    # the volumes themselves: untouched, still attached to the running VM
    for disk_id, name in VOLUMES.items():
        assert Cloud.sha256(cloud.device_dir("node1") / name, SIZE_MB * MiB) == sums[disk_id]

    start = len(cloud.sim.calls)
    _ok(_run(cloud, "postbackup"))
    _assert_clean(cloud)
    assert _calls(cloud, start).count("SnapshotDelete") == 2


def test_prebackup_snapshot_is_taken_before_the_copy(cloud: Cloud, tmp_path: Path) -> None:
    """Writes to the volumes after the group snapshot (the guest keeps running) do not reach
    the backup: the copy is read from the snapshot, whatever the volume holds meanwhile."""
    sums = _setup(cloud)
    cloud.sim.fail("VolumesReassignWait", mode="delay", delay=0.5)  # the first snapshot attach
    proc = subprocess.Popen([sys.executable, str(drivers.tm("storpool") / "prebackup"), *_args(cloud)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cloud.env,
                            cwd=cloud.home)
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(_stdin(cloud))
    proc.stdin.close()
    deadline = time.monotonic() + 30
    while not _backup_snapshots(cloud) and time.monotonic() < deadline:
        time.sleep(0.01)
    for name in VOLUMES.values():
        with open(cloud.device_dir("node1") / name, "r+b") as dev:
            dev.write(b"\xaa" * MiB)
            dev.flush()
            os.fsync(dev.fileno())
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    _assert_backup(cloud, sums, tmp_path)
    _ok(_run(cloud, "postbackup"))
    _assert_clean(cloud)


def test_backup_job_id_and_live_variants(cloud: Cloud, tmp_path: Path) -> None:
    """A backup job id changes nothing; postbackup_live is postbackup; a VM without a guest
    agent is backed up live without asking libvirt; one disk of two alone."""
    sums = _setup(cloud)
    agent = cloud.oned.vm(VM).find("TEMPLATE/FEATURES/GUEST_AGENT")
    assert agent is not None
    agent.text = "no"
    _ok(_run(cloud, "prebackup", *_args(cloud, job="17")))
    _assert_backup(cloud, sums, tmp_path)
    _ok(_run(cloud, "postbackup_live", *_args(cloud, job="17")))
    _assert_clean(cloud)

    _ok(_run(cloud, "prebackup_live", *_args(cloud, disks="1")))
    assert not cloud.libvirt_tunnels() and not cloud.libvirt_calls(), "libvirt was not asked"
    _assert_backup(cloud, {1: sums[1]}, tmp_path)
    assert [n.split("-ONEBACKUP-")[0] for n in _backup_snapshots(cloud)] == [VOLUMES[1]]
    _ok(_run(cloud, "postbackup", *_args(cloud, disks="1")))
    _assert_clean(cloud)


def libvirt_times(cloud: Cloud, api: str, name: str) -> list[float]:
    """When the driver processes called libvirt's ``api`` on domain ``name`` (epoch seconds,
    from the timestamps of libvirt's client log, ``Cloud.libvirt_calls``)."""
    path = cloud.root / LIBVIRT_CLIENT_LOG
    out = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        stamp, _, rest = line.partition(": ")
        call = rest.split(": debug : ", 1)[-1]
        if call.startswith(api + ":") and f"name={name}," in call:
            out.append(datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f%z").timestamp())
    return out


def api_times(cloud: Cloud, method: str) -> list[float]:
    return [float(r["time"]) for r in cloud.sim.requests if r["method"] == method]


def test_prebackup_live_freezes_the_guest_around_the_group_snapshot(cloud: Cloud, libvirtd: object,
                                                                    tmp_path: Path) -> None:
    """libvirt's test driver (served by the host's libvirtd, reached through the test sshd as
    every host's libvirt is) answers fsFreeze/fsThaw for its domain "test": frozen right
    before the group snapshot, thawed right after it and before any copy starts."""
    sums = _setup(cloud)  # vm-42.xml has FEATURES/GUEST_AGENT=yes
    cloud.configure(LIBVIRT_URI="test:///default")
    proc = _run(cloud, "prebackup_live", *_args(cloud, deploy_id="test"))
    _ok(proc)
    assert proc.stderr == b""
    (freeze,) = libvirt_times(cloud, "virDomainFSFreeze", "test")
    (thaw,) = libvirt_times(cloud, "virDomainFSThaw", "test")
    (snapshot,) = api_times(cloud, "VolumesGroupSnapshot")
    assert freeze <= snapshot <= thaw, "the group snapshot was taken while frozen"
    assert all(thaw <= t for t in api_times(cloud, "VolumesReassign") + api_times(cloud, "VolumesReassignWait")
               if t > snapshot), "the copies attach the snapshots only after the thaw"
    tunnels = cloud.libvirt_tunnels()
    assert tunnels and all("virt-ssh-helper" in c and "test:///default" in c for c in tunnels), \
        "libvirt-python through the host's libvirt, no virsh"
    _assert_backup(cloud, sums, tmp_path)
    _ok(_run(cloud, "postbackup_live", *_args(cloud, deploy_id="test")))
    _assert_clean(cloud)

    # the group snapshot fails: the guest is thawed all the same
    cloud.sim.fail("VolumesGroupSnapshot")
    _failed(_run(cloud, "prebackup_live", *_args(cloud, deploy_id="test")))
    assert len(libvirt_times(cloud, "virDomainFSFreeze", "test")) == 2
    assert len(libvirt_times(cloud, "virDomainFSThaw", "test")) == 2
    _assert_clean(cloud)

    # no guest agent answers (no such domain): an INFO line, the backup is made unfrozen
    proc = _run(cloud, "prebackup_live", *_args(cloud, deploy_id="one-42"))
    _ok(proc)
    lines = proc.stderr.decode().splitlines()
    assert lines == [f"INFO: {VM} guest file systems not frozen (no domain one-42 on node1); "
                     "backup snapshot taken without freeze"], lines
    assert not libvirt_times(cloud, "virDomainFSThaw", "one-42"), "never thawed what is not frozen"
    _assert_backup(cloud, sums, tmp_path)
    _ok(_run(cloud, "postbackup_live"))
    _assert_clean(cloud)


def test_backup_base_path(cloud: Cloud, tmp_path: Path) -> None:
    sums = _setup(cloud)
    base = cloud.root / "backup-base"
    cloud.configure(BACKUP_BASE_PATH=str(base))
    _ok(_run(cloud, "prebackup"))
    _assert_backup(cloud, sums, tmp_path, base / str(VM) / "backup")
    assert not _backup_dir(cloud).exists()
    _ok(_run(cloud, "postbackup"))
    assert not (base / str(VM)).exists()
    _assert_clean(cloud)


# ----------------------------------------------------------------------------------------------
# failures, crashes, re-runs


def test_failed_group_snapshot_leaves_nothing_and_a_rerun_succeeds(cloud: Cloud, tmp_path: Path) -> None:
    sums = _setup(cloud)
    cloud.sim.fail("VolumesGroupSnapshot")
    line = _failed(_run(cloud, "prebackup"))
    assert line.startswith(f"backup of VM {VM} failed:") and "VolumesGroupSnapshot" in line
    _assert_clean(cloud)
    # the reply is lost but the snapshots were made: they are found and removed
    cloud.sim.fail("VolumesGroupSnapshot", apply=True)
    _failed(_run(cloud, "prebackup"))
    _assert_clean(cloud)
    _ok(_run(cloud, "prebackup"))
    _assert_backup(cloud, sums, tmp_path)
    _ok(_run(cloud, "postbackup"))
    _assert_clean(cloud)


def test_failed_second_attach_leaves_nothing_and_a_rerun_succeeds(cloud: Cloud, tmp_path: Path) -> None:
    sums = _setup(cloud)
    cloud.sim.fail("VolumesReassignWait", skip=2)  # attach 1, detach 1, attach 2
    start = len(cloud.sim.calls)
    line = _failed(_run(cloud, "prebackup"))
    assert "VolumesReassignWait" in line
    attaches = [b for n, b in cloud.sim.calls[start:] if n == "VolumesReassignWait" and "ro" in b["reassign"][0]]
    assert len(attaches) == 2
    _assert_clean(cloud)  # disk.0.0 had been written: gone with the directory
    _ok(_run(cloud, "prebackup"))
    _assert_backup(cloud, sums, tmp_path)
    _ok(_run(cloud, "postbackup"))
    _assert_clean(cloud)


def test_every_backend_call_failing_in_turn(cloud: Cloud, tmp_path: Path) -> None:
    sums = _setup(cloud)
    start = len(cloud.sim.calls)
    _ok(_run(cloud, "prebackup"))
    sequence = _calls(cloud, start)
    _ok(_run(cloud, "postbackup"))
    for index, method in enumerate(sequence):
        cloud.sim.fail(method, skip=sequence[:index].count(method))
        _failed(_run(cloud, "prebackup"))
        cloud.sim.clear_faults()
        _assert_clean(cloud)
    _ok(_run(cloud, "prebackup"))
    _assert_backup(cloud, sums, tmp_path)
    _ok(_run(cloud, "postbackup"))
    _assert_clean(cloud)


def test_killed_after_each_backend_call_then_rerun(cloud: Cloud, tmp_path: Path) -> None:
    """SIGKILL while each backend call is in flight (the call is applied, the reply never
    read); the re-run cleans up what the killed run left and makes the backup."""
    sums = _setup(cloud)
    for index in range(BASE_CALLS):
        start = len(cloud.sim.calls)
        cloud.sim.fail("*", mode="delay", delay=0.3, skip=index)
        proc = subprocess.Popen([sys.executable, str(drivers.tm("storpool") / "prebackup"), *_args(cloud)],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=cloud.env, cwd=cloud.home)
        assert proc.stdin is not None
        proc.stdin.write(_stdin(cloud))
        proc.stdin.close()
        deadline = time.monotonic() + 30
        while len(cloud.sim.calls) <= start + index and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(cloud.sim.calls) == start + index + 1, index
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        time.sleep(0.45)  # the delayed call runs after all
        cloud.sim.clear_faults()
        # from the group snapshot on, the killed run's snapshots are there
        assert len(_backup_snapshots(cloud)) == (2 if index >= 1 else 0), index
        _ok(_run(cloud, "prebackup"))
        _assert_backup(cloud, sums, tmp_path)
        assert len(_backup_snapshots(cloud)) == 2
        _ok(_run(cloud, "postbackup"))
        _assert_clean(cloud)


def test_sigterm_rolls_back(cloud: Cloud, tmp_path: Path) -> None:
    """A cancelled backup (SIGTERM while the first snapshot attaches) removes what it made."""
    sums = _setup(cloud)
    cloud.sim.fail("VolumesReassignWait", mode="delay", delay=1.0)
    proc = subprocess.Popen([sys.executable, str(drivers.tm("storpool") / "prebackup"), *_args(cloud)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cloud.env,
                            cwd=cloud.home)
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(_stdin(cloud))
    proc.stdin.close()
    deadline = time.monotonic() + 30
    while not any(n == "VolumesReassignWait" for n, _ in cloud.sim.calls) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 1
    lines = proc.stderr.read().decode().splitlines()
    assert lines == [f"backup of VM {VM} failed: backup cancelled (SIGTERM)"]
    time.sleep(1.2)  # the delayed attach arrives after the rollback: its snapshot is gone
    _assert_clean(cloud)
    _ok(_run(cloud, "prebackup"))
    _assert_backup(cloud, sums, tmp_path)
    _ok(_run(cloud, "postbackup"))
    _assert_clean(cloud)


def test_leftovers_are_cleaned_before_a_backup(cloud: Cloud, tmp_path: Path) -> None:
    sums = _setup(cloud)
    # a failed earlier run: a partial file, a stray disk file, a backup snapshot still attached
    _backup_dir(cloud).mkdir(parents=True)
    (_backup_dir(cloud) / "disk.0.0").write_bytes(b"partial")
    (_backup_dir(cloud) / "disk.5.0").write_bytes(b"stray")
    cloud.sp(f"VolumeSnapshot/{VOLUMES[0]}", {"name": f"{VOLUMES[0]}-ONEBACKUP-1000",
                                               "tags": {"virt": "one", "nloc": "one", "nvm": str(VM),
                                                        "onebackup": "1000", "diskid": "0"}})
    cloud.attach(f"{VOLUMES[0]}-ONEBACKUP-1000", "node1", snapshot=True)
    # addon-storpool's own leftover (named after the VM's volume, no tags)
    cloud.sp(f"VolumeSnapshot/{VOLUMES[1]}", {"name": f"{VOLUMES[1]}-ONEBACKUP-999"})
    # not ours: another VM's backup snapshot, a user's disk snapshot, another prefix's
    cloud.make_volume("one-img-9-43-0", 4)
    keep = {
        "one-img-9-43-0-ONEBACKUP-1000": ("one-img-9-43-0", {"virt": "one", "nloc": "one", "nvm": "43",
                                                            "onebackup": "1000"}),
        f"{VOLUMES[0]}-snap0": (VOLUMES[0], {"virt": "one", "nloc": "one", "nvm": str(VM), "diskid": "0"}),
        f"{VOLUMES[1]}-ONEBACKUP-998": (VOLUMES[1], {"nvm": "43"}),
    }
    for snap, (vol, tags) in keep.items():
        cloud.sp(f"VolumeSnapshot/{vol}", {"name": snap, "tags": tags})
    _ok(_run(cloud, "prebackup"))
    _assert_backup(cloud, sums, tmp_path)
    snaps = set(cloud.sim.inventory()["snapshots"])
    assert set(keep) <= snaps
    assert f"{VOLUMES[0]}-ONEBACKUP-1000" not in snaps and f"{VOLUMES[1]}-ONEBACKUP-999" not in snaps
    assert len([s for s in snaps if s not in keep]) == 2
    _ok(_run(cloud, "postbackup"))
    assert set(cloud.sim.inventory()["snapshots"]) == set(keep)
    assert _attachments(cloud) == VM_ATTACHMENTS
    assert not _backup_dir(cloud).exists()


def test_postbackup_tolerates_backup_result_and_cleans_after_a_failed_backup(cloud: Cloud) -> None:
    _setup(cloud)
    _ok(_run(cloud, "prebackup"))
    assert len(_backup_snapshots(cloud)) == 2
    # oned (master) after a failed backup: the VM, then the result
    proc = _run(cloud, "postbackup", stdin=b'<?xml version="1.0"?>\n' + _stdin(cloud)
                + b"\n<BACKUP_RESULT>FAILURE</BACKUP_RESULT>\n")
    _ok(proc)
    assert proc.stderr == b""
    _assert_clean(cloud)
    # again: nothing to do, still fine (re-runnable); no stdin at all: the tags suffice
    _ok(_run(cloud, "postbackup_live"))
    _ok(_run(cloud, "prebackup"))
    _ok(_run(cloud, "postbackup", stdin=b""))
    _assert_clean(cloud)


def test_postbackup_reports_a_failed_cleanup_and_the_next_backup_finishes_it(cloud: Cloud, tmp_path: Path) -> None:
    sums = _setup(cloud)
    _ok(_run(cloud, "prebackup"))
    cloud.sim.fail("SnapshotsList")
    proc = _run(cloud, "postbackup")
    _ok(proc)  # the backup itself is done: as OpenNebula's ceph driver, only reported
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ERROR: {VM} backup cleanup incomplete")
    assert len(_backup_snapshots(cloud)) == 2 and not _backup_dir(cloud).exists()
    _ok(_run(cloud, "prebackup"))
    _assert_backup(cloud, sums, tmp_path)
    assert len(_backup_snapshots(cloud)) == 2
    _ok(_run(cloud, "postbackup"))
    _assert_clean(cloud)


# ----------------------------------------------------------------------------------------------
# bad input


def test_bad_input_changes_nothing(cloud: Cloud) -> None:
    _setup(cloud)
    cloud.make_vm(43, [{"image": 9, "size": SIZE_MB, "TM_MAD": "ceph"}])
    good = _args(cloud)
    vm_dir = good[0]
    vm43 = etree.tostring(cloud.oned.served("vm", 43))
    cases: list[tuple[str, list[str], bytes | None]] = [
        ("prebackup", good[:5], None),
        ("prebackup", [*good, "extra"], None),
        ("prebackup", ["node1", *good[1:]], None),
        ("prebackup", ["node1:relative/42", *good[1:]], None),
        ("prebackup", ["node1;reboot:/var/lib/one/datastores/101/42", *good[1:]], None),
        ("prebackup", [f"node1:{cloud.root}/etc", *good[1:]], None),
        ("prebackup", [f"node1:{cloud.root}/node1//datastores/101/43", *good[1:]], None),
        ("prebackup", [f"node1:{cloud.root}/node1//datastores/101/42/../../../x/101/42", *good[1:]], None),
        ("prebackup", [vm_dir, "0;rm -rf /", *good[2:]], None),
        ("prebackup", [vm_dir, "", *good[2:]], None),
        ("prebackup", [vm_dir, "0::1", *good[2:]], None),
        ("prebackup", [vm_dir, "0:7", *good[2:]], None),          # no disk 7
        ("prebackup_live", [*good[:2], "one-42$(reboot)", *good[3:]], None),
        ("prebackup", [*good[:3], "x1", *good[4:]], None),
        ("prebackup", [*good[:4], "4x2", good[5]], None),
        ("prebackup", [*good[:5], "999"], None),                   # not that datastore's directory
        ("prebackup", [f"node1:{cloud.root}/node1//datastores/999/42", *good[1:5], "999"], None),  # no such DS
        ("prebackup", [f"node9:{cloud.root}/node1//datastores/101/42", *good[1:]], None),  # unknown host
        ("prebackup", [*good[:5], "100"], None),                   # not the system datastore dir
        ("prebackup", good, b""),
        ("prebackup", good, b"<VM><ID>42</ID>"),
        ("prebackup", good, b"not xml, not base64 !"),
        ("prebackup", good, b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><VM><ID>&e;</ID></VM>'),
        ("prebackup", good, vm43),                                  # another VM's document
        ("prebackup", [f"node1:{cloud.root}/node1//datastores/101/43", "0", "one-43", "-", "43", "101"], vm43),
        ("postbackup", good, b"<VM><ID>42</ID>"),
        ("postbackup", good[:4], None),
        ("postbackup", [vm_dir, "0", "one-42", "-", "42", "101x"], None),
    ]
    start = len(cloud.sim.calls)
    for action, argv, stdin in cases:
        line = _failed(_run(cloud, action, *argv, stdin=stdin))
        assert line, (action, argv)
    mutating = [n for n in _calls(cloud, start) if n not in ("SnapshotsList", "VolumesList")]
    assert mutating == []
    assert not _backup_dir(cloud).exists()
    _assert_clean(cloud)
    # base64 of the VM is accepted as well
    _ok(_run(cloud, "prebackup", stdin=base64.b64encode(_stdin(cloud))))
    _ok(_run(cloud, "postbackup"))
    _assert_clean(cloud)
