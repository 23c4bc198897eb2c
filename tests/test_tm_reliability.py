"""Reliability and concurrency of the ``storpool`` TM actions (issue 4, "Reliability").

Every scenario (``SCENARIOS``) is one TM action called exactly as oned calls it (argv, and
the base64 ``<VM>`` on stdin for the migrate actions) in a fresh world of
tests/storage_env.py: the StorPool API simulator (NOT StorPool: volumes are sparse files,
attachments real loop devices with one link per client), the oned test double over real
XML-RPC and a real sshd standing in for node1, node2 and the front-end. Its setup is made
with the same TM actions (clone, ln, mkimage, context, snap_create, premigrate, delete).
Every run gets a fresh cloud, so every comparison is exact.

For each scenario the action first runs once without faults: that gives its backend call
sequence (``cloud.sim.calls``) and the expected end state. Then, for EVERY call index i (no
sampling: every scenario, every index):

(a) call i gets an error reply (``sim.fail("*", skip=i)``): the action exits 1 with one
    stderr line naming the call, leaves no scratch files in its TMPDIR, and leaves exactly
    the state before it, or, where the scenario says so (``partial``), exactly the partial
    state its docstring documents (safe, and completed by a re-run). A re-run without faults
    then ends in exactly the clean run's state.
(b) call i is held back by the simulator (``mode="delay", apply=True``), the action (its
    process group) is SIGKILLed while it waits for that reply, and the simulator applies
    the call with nobody left to answer: a crash right after call i. A re-run ends in
    exactly the clean run's state.

Documented partial effects (everything else is rolled back exactly): delete and mvds unlink
``disk.N`` first, and delete keeps its trash snapshot once taken (``delete_partial``); the
VM directory's delete removes its volumes one by one (``delete_dir_partial``); context
finishes the ISO before the NVRAM (``context_partial``); snap_revert may be left reverted
but detached when the re-attach fails (``revert_partial``); mv makes the destination before
it lets go of the source (``mv_disk_partial``, ``mv_dir_partial``). premigrate undoes its
work on the destination itself: oned runs failmigrate only when the migration fails, never
after a failed premigrate.

"The state" (``world()``) is everything an action may leave behind: volumes (size, template,
tags, parent, content: a checksum of the first MiB, or the blkid type where the bytes differ
between runs: file systems, swap, context ISOs), snapshots (the same, and the hours until
the backend deletes them), attachments per client, and per host every symlink, file and
directory under its datastores and its device directory. Trash snapshot names keep the VM's
STIME; the unique suffix of a second trash of one disk, ONESNAP timestamps, loop device
numbers and the test's temporary root are normalised. Lists, so a duplicate would show.

The concurrency tests start 15 actions at once (oned's limit): 15 clones of one image into
15 VMs, then their 15 deletes; and 15 snapshot actions on one disk (per-volume locks).

Runtime: about 2.5-3.5 minutes on the 2-core machine (about 60 call indexes, four runs of
an action per index): the fault runs of a scenario go 4 clouds at a time (``WORKERS``),
since each mostly waits for ssh, the simulator and the held-back call.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import drivers
import pytest
from lxml import etree
from storage_env import FRONTEND, Cloud, MiB, Sshd, _our_loops, build_cloud, cloud, sshd

FIXTURES = (cloud, sshd)
VM = 42
STIME = "1717000000"  # the STIME of the double's VM documents (vm-42.xml)
CLIENT = {"node1": 1, "node2": 2, FRONTEND: 3}
REPO = Path(__file__).resolve().parent.parent
# the same image data in every cloud of this run, so checksums compare between clouds
DATA7, DATA8, DATA9 = os.urandom(MiB), os.urandom(MiB), os.urandom(256 * 1024)
AFTER_SNAPSHOT = os.urandom(MiB)
HOLD = 0.5  # seconds the simulator holds the call the action is killed on
State = dict[str, Any]


# --- running actions ------------------------------------------------------------------------------


def ok(proc: subprocess.CompletedProcess[bytes]) -> subprocess.CompletedProcess[bytes]:
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr.decode(errors='replace')}"
    return proc


def one_line_failure(proc: subprocess.CompletedProcess[bytes]) -> str | None:
    """None if ``proc`` failed as a driver must (exit 1, one stderr line, no traceback), else why not."""
    err = proc.stderr.decode(errors="replace")
    if proc.returncode != 1:
        return f"exit {proc.returncode}, stderr {err!r}"
    if len(err.splitlines()) != 1 or "Traceback" in err or "internal error" in err:
        return f"stderr is not one reason line: {err!r}"
    return None


def executable(action: str) -> str:
    return str(drivers.tm("storpool") / action)


def unanswered(cloud: Cloud) -> Callable[[], int]:
    """How many calls the simulator has received but not finished (applied, and its reply
    sent or tried): how a test knows that a held-back call has been applied. The simulator
    has no public signal for that, so this wraps its private reply method (once per cloud)."""
    sim: Any = cloud.sim
    pending = getattr(sim, "_test_pending", None)
    if pending is None:
        done: list[int] = []
        offset = len(sim.calls)
        original = sim._reply

        def reply(req: Any, result: Any) -> None:
            try:
                original(req, result)
            finally:
                done.append(1)

        sim._reply = reply

        def pending() -> int:
            return len(sim.calls) - offset - len(done)

        sim._test_pending = pending
    return pending  # type: ignore[no-any-return]


def kill_after(cloud: Cloud, action: str, argv: list[str], stdin: bytes, index: int, expected: list[str]) -> None:
    """Run ``action`` and SIGKILL it while the simulator holds back its call ``index``
    (0-based), then wait until the simulator has applied that call: a crash right after it."""
    pending = unanswered(cloud)
    mark = len(cloud.sim.calls)
    cloud.sim.fail("*", mode="delay", delay=HOLD, skip=index, apply=True)
    proc = subprocess.Popen([sys.executable, executable(action), *argv], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cloud.env, cwd=cloud.home,
                            start_new_session=True)
    try:
        assert proc.stdin is not None
        proc.stdin.write(stdin)
        proc.stdin.close()
        deadline = time.monotonic() + 60
        while len(cloud.sim.calls) <= mark + index and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        seen = [name for name, _ in cloud.sim.calls[mark:]]
        assert proc.poll() is None, f"{action} ended before call {index}: {proc.stderr.read() if proc.stderr else ''!r}"
        assert seen == expected[:index + 1], f"{action}: calls {seen} differ from the clean run's {expected}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the action and anything it started
        killed = proc.wait(30)
        if proc.stderr is not None:
            proc.stderr.close()
    assert killed == -signal.SIGKILL, f"{action} exit {killed}, not killed"
    late = [name for name, _ in cloud.sim.calls[mark + index + 1:]]
    assert not late, f"{action} was killed too late (the machine is overloaded?): it went on to {late}"
    deadline = time.monotonic() + 30
    while pending() > 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pending() == 0, "the held-back call was never applied"
    cloud.sim.clear_faults()


# --- the state --------------------------------------------------------------------------------------

_TYPED = re.compile(r"-(raw|swap|iso)(-|$)")  # content differs between runs (mkfs, mkswap, genisoimage)


def _blkid(path: str) -> str:
    proc = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", path], capture_output=True, check=False)
    return proc.stdout.decode().strip() or "(no signature)"


def _content(name: str, path: str | None) -> str:
    if path is None:
        return "(no data)"
    if _TYPED.search(name):
        return _blkid(path)
    return Cloud.sha256(path, MiB)[:16]


def world(cloud: Cloud) -> State:
    """Everything a TM action may change, comparable between clouds (see the module doc)."""
    inv = cloud.sim.inventory()
    root = str(cloud.root)

    def norm(text: str | None) -> str | None:
        if text is None:
            return None
        text = text.replace(root, "<root>")
        text = re.sub(rf"-DELETED-{STIME}-[0-9]+", f"-DELETED-{STIME}-<time>", text)
        text = re.sub(r"-ONESNAP-([0-9]+)-[0-9]+", r"-ONESNAP-\1-<time>", text)
        return re.sub(r"^/dev/loop[0-9]+$", "/dev/loop", text)

    volumes = [{"name": norm(n), "size": v["size"], "template": v["template"], "tags": v["tags"],
                "parent": norm(v["parent"]), "content": _content(n, v["path"])} for n, v in inv["volumes"].items()]
    snapshots = []
    for n, snap in inv["snapshots"].items():
        date = snap["targetDeleteDate"]
        snapshots.append({"name": norm(n), "size": snap["size"], "tags": snap["tags"], "parent": norm(snap["parent"]),
                          "deleted_in_h": round((date - inv["time"]) / 3600) if date else None,
                          "content": _content(n, snap["path"])})
    attachments: dict[int, list[tuple[str | None, str]]] = {}
    for item in inv["attachments"]:
        attachments.setdefault(item["client"], []).append((norm(item["name"]), item["rights"]))
    hosts: dict[str, list[str]] = {}
    for host in CLIENT:
        entries = []
        for top in (cloud.ds_location(host), cloud.device_dir(host)):
            for dirpath, dirnames, filenames in os.walk(top):
                for name in sorted(dirnames + filenames):
                    path = os.path.join(dirpath, name)
                    shown = norm(path) or ""
                    if os.path.islink(path):
                        entries.append(f"{shown} -> {norm(os.readlink(path))}")
                    elif os.path.isdir(path):
                        entries.append(shown + "/")
                    else:
                        entries.append(shown)
        hosts[host] = sorted(entries)
    return {"volumes": by_name(volumes), "snapshots": by_name(snapshots),
            "attachments": {c: sorted(a) for c, a in sorted(attachments.items())}, "hosts": hosts}


def by_name(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sorted by name (then content): a list, so that a duplicate would show."""
    return sorted(items, key=lambda item: (item["name"], repr(sorted(item.items()))))


def diff(got: State, want: State) -> str:
    """What differs, one line per part."""
    out = []

    def lists(where: str, have: list[Any], expected: list[Any]) -> None:
        if have != expected:
            extra = [x for x in have if x not in expected]
            missing = [x for x in expected if x not in have]
            out.append(f"{where}: extra {extra}, missing {missing}")

    for key, expected in want.items():
        if isinstance(expected, list):
            lists(key, got[key], expected)
        else:
            for sub in sorted(set(expected) | set(got[key]), key=str):
                lists(f"{key}[{sub}]", got[key].get(sub, []), expected.get(sub, []))
    return "; ".join(out)


# --- scenarios ------------------------------------------------------------------------------------


def put_volume(cloud: Cloud, name: str, size_mb: int, data: bytes) -> None:
    """A volume holding ``data`` at its start, written into the simulator's backing file
    (never through a loop device: while this process holds one open, a process forked by
    another thread would inherit it, and the simulator refuses to detach an open device)."""
    cloud.sp("VolumeCreate", {"name": name, "size": size_mb * MiB, "template": "one-ds-100"})
    write_file(cloud.sim.volume_path(name), data)


def write_file(path: str | Path | None, data: bytes) -> None:
    assert path is not None
    with open(path, "r+b") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _images(cloud: Cloud) -> None:
    """Image 7 (OS, 64 MB), image 8 (persistent datablock), image 9 (CD-ROM, 16 MB)."""
    cloud.make_image(7, size_mb=64)
    cloud.make_image(8, size_mb=64, persistent=True)
    cloud.make_image(9, size_mb=16, image_type="CDROM")
    put_volume(cloud, "one-img-7", 64, DATA7)
    put_volume(cloud, "one-img-8", 64, DATA8)
    put_volume(cloud, "one-img-9", 16, DATA9)


def context_file(cloud: Cloud, vm_id: int = VM) -> Path:
    path = cloud.home / "vms" / str(vm_id) / "context.sh"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# Context variables generated by OpenNebula\nVMID='{vm_id}'\nETH0_IP='10.0.0.{vm_id % 250}'\n")
    return path


def vm_b64(cloud: Cloud, vm_id: int = VM) -> bytes:
    """What one_vmm_exec sends the migrate actions: base64 of <VM>, no newline."""
    return base64.b64encode(etree.tostring(cloud.oned.served("vm", vm_id)))


def tm(cloud: Cloud, action: str, *args: str, stdin: bytes = b"") -> None:
    ok(cloud.run_tm(action, *args, stdin=stdin))


def clone_args(cloud: Cloud, vm_id: int = VM, disk: int = 0) -> list[str]:
    return [f"{FRONTEND}:one-img-7", cloud.tm_path("node1", vm_id, disk), str(vm_id), "100"]


def disk_args(cloud: Cloud, disk: int, *middle: str, ds: str = "100", host: str = "node1") -> list[str]:
    return [cloud.tm_path(host, VM, disk), *middle, str(VM), ds]


def migrate_args(cloud: Cloud) -> list[str]:
    return ["node1", "node2", f"{cloud.hosts['node2'].ds_location}/101/{VM}", str(VM), "101"]


# the VM each scenario starts from (its VM document), and what runs before the action

DISKS: dict[str, list[dict[str, Any]]] = {
    "clone": [{"image": 7, "size": 128}],
    "persistent": [{"image": 8, "persistent": True}],
    "cdrom": [{"image": 9, "cdrom": True}],
    "fs": [{"volatile": "fs", "size": 32, "fs": "ext4"}],
    "swap": [{"volatile": "swap", "size": 16}],
    "none": [],
}


def _vm(kind: str, *, nvram: bool = False) -> Callable[[Cloud], None]:
    def setup(cloud: Cloud) -> None:
        _images(cloud)
        cloud.make_vm(VM, DISKS[kind], user={"T_OS_NVRAM": "storpool"} if nvram else None)

    return setup


def _deployed_clone(cloud: Cloud) -> None:
    """VM 42 with disk 0 a clone of image 7 (its context disk 1 not made)."""
    _vm("clone")(cloud)
    tm(cloud, "clone", *clone_args(cloud))


def _with_snapshot(cloud: Cloud) -> None:
    """The clone with snapshot 0, then new data on the disk."""
    _deployed_clone(cloud)
    tm(cloud, "snap_create", *disk_args(cloud, 0, "0"))
    write_file(cloud.sim.volume_path(f"one-img-7-{VM}-0"), AFTER_SNAPSHOT)  # what the guest wrote


def _deployed_vm(cloud: Cloud) -> None:
    """VM 42 running on node1: a clone of image 7 (disk 0), the context ISO (disk 1), its
    NVRAM volume, and the VM directory's files."""
    _vm("clone", nvram=True)(cloud)
    tm(cloud, "clone", *clone_args(cloud))
    tm(cloud, "context", str(context_file(cloud)), cloud.tm_path("node1", VM, 1), str(VM), "101")
    vm_dir = cloud.vm_dir("node1", VM)
    (vm_dir / "deployment.0").write_text("<domain>one-42</domain>")
    (vm_dir / "vm.xml").write_text("<VM/>")


def _epilog(cloud: Cloud) -> None:
    """The deployed VM terminated up to its last epilog step: disk 0 (which had snapshot 0)
    deleted to the trash; the VM directory, the context ISO and the NVRAM left."""
    _deployed_vm(cloud)
    tm(cloud, "snap_create", *disk_args(cloud, 0, "0"))
    tm(cloud, "delete", *disk_args(cloud, 0))


def _premigrated(cloud: Cloud) -> None:
    _deployed_vm(cloud)
    tm(cloud, "premigrate", *migrate_args(cloud), stdin=vm_b64(cloud))


def _ctx_setup(cloud: Cloud) -> None:
    _vm("none", nvram=True)(cloud)
    context_file(cloud)


# --- documented partial effects: what a failed call may leave instead of the state before ----------


def drop(state: State, name: str, *, volume: bool = True) -> State:
    """``state`` without ``name``'s attachments and device links and, with ``volume``, without
    the volume (or snapshot) itself, its children rebased onto its parent as StorPool does."""
    out = copy.deepcopy(state)
    if volume:
        gone = [item for item in out["volumes"] + out["snapshots"] if item["name"] == name]
        for key in ("volumes", "snapshots"):
            out[key] = [item for item in out[key] if item["name"] != name]
            for item in out[key]:
                if gone and item["parent"] == name:
                    item["parent"] = gone[0]["parent"]
    attachments = {c: [a for a in items if a[0] != name] for c, items in out["attachments"].items()}
    out["attachments"] = {c: items for c, items in attachments.items() if items}
    out["hosts"] = {h: [e for e in entries if not e.endswith(f"/dev/storpool/{name} -> /dev/loop")]
                    for h, entries in out["hosts"].items()}
    return out


def unlinked(state: State, disk_id: int) -> State:
    """``state`` without the VM's ``disk.N`` links."""
    out = copy.deepcopy(state)
    out["hosts"] = {h: [e for e in entries if f"/disk.{disk_id} -> " not in e] for h, entries in out["hosts"].items()}
    return out


def taken(state: State, other: State, host: str, client: int, *, links: bool = True) -> State:
    """``state`` with ``host``'s entries (only files and directories unless ``links``) and
    ``client``'s attachments as in ``other``."""
    out = copy.deepcopy(state)
    out["hosts"][host] = [e for e in other["hosts"][host] if links or " -> " not in e]
    if links and client in other["attachments"]:
        out["attachments"][client] = other["attachments"][client]
        out["attachments"] = dict(sorted(out["attachments"].items()))
    return out


Calls = list[tuple[str, Any]]


def delete_partial(before: State, clean: State, calls: Calls, index: int) -> State:
    """delete (and mvds) unlink ``disk.N`` before any backend call (the disk is going
    away); after the trash snapshot (call 0) that snapshot stays, as the volume's parent, and
    after the detach (call 1) the volume stays detached: the re-run finds its own snapshot,
    never trashes the disk twice, and deletes the volume."""
    out = unlinked(before, 0)
    trash = [snap for snap in clean["snapshots"] if snap not in before["snapshots"]]
    if index >= 1 and trash:
        (snap,) = trash
        volume = snap["tags"]["trash"]
        out["snapshots"] = by_name(out["snapshots"] + trash)
        for item in out["volumes"]:
            if item["name"] == volume:
                item["parent"] = snap["name"]
        if index >= 2:
            out = drop(out, volume, volume=False)
    return out


def delete_dir_partial(before: State, clean: State, calls: Calls, index: int) -> State:
    """The VM directory's volumes, then the snapshots of its deleted disks, go one after the
    other (detach, delete): those already detached or deleted stay so; the re-run deletes
    the rest and removes the directory."""
    out, current = before, ""
    for name, body in calls[:index]:
        if name == "VolumesReassign":
            current = body[0].get("volume") or body[0]["snapshot"]
            out = drop(out, current, volume=False)
        elif name in ("VolumeDelete", "SnapshotDelete"):
            out = drop(out, current)
    return out


def context_partial(before: State, clean: State, calls: Calls, index: int) -> State:
    """The context ISO is complete (volume, attachment, ``disk.N``) before the NVRAM volume
    is made; a failed NVRAM step deletes the NVRAM volume it created, and the re-run (the
    same action, run again by oned for every context change anyway) makes it."""
    return before if index < 2 else drop(clean, f"one-sys-{VM}-NVRAM")


def revert_partial(before: State, clean: State, calls: Calls, index: int) -> State:
    """snap_revert: a failed re-attach (call 2) leaves the volume reverted but detached
    (the VM is powered off); the re-run reverts again (same content) and attaches it."""
    if index < 2:
        return before
    out = drop(before, f"one-img-7-{VM}-0", volume=False)
    out["volumes"] = copy.deepcopy(clean["volumes"])
    return out


def mv_disk_partial(before: State, clean: State, calls: Calls, index: int) -> State:
    """mv attaches and links on the destination first and lets go of the source last: a
    failed detach from the source (call 1) leaves the disk usable from both hosts; the
    re-run completes the move."""
    return before if index < 1 else taken(before, clean, "node2", CLIENT["node2"])


def mv_dir_partial(before: State, clean: State, calls: Calls, index: int) -> State:
    """mv of the VM directory copies its files to the destination first (before call 0),
    then attaches the context and NVRAM volumes there (call 2) and detaches them from the
    source (call 3), and removes the source directory last."""
    return taken(before, clean, "node2", CLIENT["node2"], links=index >= 3)


@dataclass(frozen=True)
class Scenario:
    """One TM action in one situation. ``partial(before, clean, clean_calls, index)``: what a
    failure of call ``index`` leaves instead of ``before`` (the documented partial effects
    above); None: exactly ``before``."""

    action: str
    setup: Callable[[Cloud], None]
    argv: Callable[[Cloud], list[str]]
    stdin: Callable[[Cloud], bytes] = field(default=lambda cloud: b"")
    partial: Callable[[State, State, Calls, int], State] | None = None


SCENARIOS: dict[str, Scenario] = {
    "clone": Scenario("clone", _vm("clone"), clone_args),
    "ln-persistent": Scenario("ln", _vm("persistent"),
                              lambda c: [f"{FRONTEND}:one-img-8", c.tm_path("node1", VM, 0), str(VM), "100"]),
    "ln-cdrom": Scenario("ln", _vm("cdrom"),
                         lambda c: [f"{FRONTEND}:one-img-9", c.tm_path("node1", VM, 0), str(VM), "100"]),
    "mkimage": Scenario("mkimage", _vm("fs"), lambda c: ["32", "raw", c.tm_path("node1", VM, 0), str(VM), "101"]),
    "mkswap": Scenario("mkswap", _vm("swap"), lambda c: ["16", c.tm_path("node1", VM, 0), str(VM), "101"]),
    "context": Scenario("context", _vm("none"),
                        lambda c: [str(context_file(c)), c.tm_path("node1", VM, 0), str(VM), "101"]),
    "context-nvram": Scenario("context", _ctx_setup,
                              lambda c: [str(context_file(c)), c.tm_path("node1", VM, 0), str(VM), "101"],
                              partial=context_partial),
    "delete-clone": Scenario("delete", _deployed_clone, lambda c: disk_args(c, 0), partial=delete_partial),
    "delete-volatile": Scenario("delete", lambda c: (_vm("fs")(c), tm(c, "mkimage", "32", "raw",
                                                                        c.tm_path("node1", VM, 0), str(VM), "101")),
                                lambda c: disk_args(c, 0, ds="101"), partial=delete_partial),
    "delete-persistent": Scenario("delete", lambda c: (_vm("persistent")(c), tm(
        c, "ln", f"{FRONTEND}:one-img-8", c.tm_path("node1", VM, 0), str(VM), "100")),
        lambda c: disk_args(c, 0), partial=delete_partial),
    "delete-dir": Scenario("delete", _epilog, lambda c: [c.tm_path("node1", VM), str(VM), "101"],
                           partial=delete_dir_partial),
    "mvds": Scenario("mvds", lambda c: (_vm("persistent")(c), tm(
        c, "ln", f"{FRONTEND}:one-img-8", c.tm_path("node1", VM, 0), str(VM), "100")),
        lambda c: disk_args(c, 0, "one-img-8"), partial=delete_partial),
    "cpds": Scenario("cpds", _deployed_clone, lambda c: disk_args(c, 0, "one-img-12", "-1")),
    "resize": Scenario("resize", _deployed_clone, lambda c: disk_args(c, 0, "192")),
    "snap_create": Scenario("snap_create", _deployed_clone, lambda c: disk_args(c, 0, "0")),
    "snap_create-limit": Scenario("snap_create", lambda c: (_deployed_clone(c), c.configure(DISKSNAPSHOT_LIMIT=4)),
                                  lambda c: disk_args(c, 0, "0")),
    "snap_delete": Scenario("snap_delete", _with_snapshot, lambda c: disk_args(c, 0, "0")),
    "snap_revert": Scenario("snap_revert", _with_snapshot, lambda c: disk_args(c, 0, "0"), partial=revert_partial),
    "mv-disk": Scenario("mv", _deployed_clone,
                        lambda c: [c.tm_path("node1", VM, 0), c.tm_path("node2", VM, 0), str(VM), "100"],
                        partial=mv_disk_partial),
    "mv-dir": Scenario("mv", _deployed_vm,
                       lambda c: [c.tm_path("node1", VM), c.tm_path("node2", VM), str(VM), "101"],
                       partial=mv_dir_partial),
    "premigrate": Scenario("premigrate", _deployed_vm, migrate_args, stdin=vm_b64),
    "postmigrate": Scenario("postmigrate", _premigrated, migrate_args, stdin=vm_b64),
    "failmigrate": Scenario("failmigrate", _premigrated, migrate_args, stdin=vm_b64),
}


# --- the fault runs ---------------------------------------------------------------------------------


@contextlib.contextmanager
def fresh_cloud(root: Path, server: Sshd) -> Iterator[Cloud]:
    with build_cloud(root, server) as built:
        unanswered(built)  # count replies from the start
        for host in ("node1", "node2"):  # a host's system datastore directory exists (monitoring)
            (built.ds_location(host) / "101").mkdir()
        scratch = root / "tmp"  # the actions' scratch space (TMPDIR), checked after failures
        scratch.mkdir()
        built.env["TMPDIR"] = str(scratch)
        yield built
    leaked = _our_loops(root)
    assert not leaked, f"loop devices left attached: {leaked}"


class Runner:
    """Fresh clouds set up for one scenario, each in its own directory under ``tmp``."""

    def __init__(self, tmp: Path, server: Sshd, scenario: Scenario) -> None:
        self.tmp, self.server, self.sc = tmp, server, scenario

    @contextlib.contextmanager
    def cloud(self, label: str) -> Iterator[tuple[Cloud, list[str], bytes]]:
        """A cloud set up for the scenario, with the action's argv and stdin."""
        with fresh_cloud(self.tmp / label, self.server) as built:
            self.sc.setup(built)
            yield built, self.sc.argv(built), self.sc.stdin(built)

    def clean(self) -> tuple[Calls, State, State]:
        """The calls, the state before and the state after a run without faults."""
        with self.cloud("clean") as (c, argv, stdin):
            before = world(c)
            mark = len(c.sim.calls)
            ok(c.run_tm(self.sc.action, *argv, stdin=stdin))
            return list(c.sim.calls[mark:]), before, world(c)

    def failed(self, index: int, calls: Calls, before: State, clean: State) -> list[str]:
        """(a) call ``index`` gets an error reply; then a re-run without faults."""
        call = calls[index][0]
        where = f"call {index} {call} failed"
        problems = []
        with self.cloud(f"fail{index}") as (c, argv, stdin):
            assert world(c) == before, f"{where}: the setup differs from the clean run's"
            c.sim.fail("*", skip=index)
            proc = c.run_tm(self.sc.action, *argv, stdin=stdin)
            c.sim.clear_faults()
            why = one_line_failure(proc)
            if why:
                problems.append(f"{where}: {why}")
            elif call not in proc.stderr.decode():
                problems.append(f"{where}: the reason does not name the call: {proc.stderr!r}")
            if leftovers := os.listdir(c.root / "tmp"):
                problems.append(f"{where}: scratch files left: {leftovers}")
            expected = self.sc.partial(before, clean, calls, index) if self.sc.partial else before
            if (got := world(c)) != expected:
                problems.append(f"{where}: left {diff(got, expected)}")
            proc = c.run_tm(self.sc.action, *argv, stdin=stdin)
            if proc.returncode != 0:
                problems.append(f"{where}, re-run: exit {proc.returncode}: {proc.stderr!r}")
            elif (got := world(c)) != clean:
                problems.append(f"{where}, re-run: {diff(got, clean)}")
        return problems

    def killed(self, index: int, calls: Calls, clean: State) -> list[str]:
        """(b) SIGKILL right after call ``index`` was applied; then a re-run."""
        where = f"killed after call {index} {calls[index][0]}"
        with self.cloud(f"kill{index}") as (c, argv, stdin):
            kill_after(c, self.sc.action, argv, stdin, index, [name for name, _ in calls])
            proc = c.run_tm(self.sc.action, *argv, stdin=stdin)
            if proc.returncode != 0:
                return [f"{where}, re-run: exit {proc.returncode}: {proc.stderr!r}"]
            if (got := world(c)) != clean:
                return [f"{where}, re-run: {diff(got, clean)}"]
        return []


WORKERS = 4  # clouds at once: each job mostly waits for ssh, the simulator and HOLD


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_each_backend_call_failed_or_killed_then_rerun(name: str, sshd: Sshd, tmp_path: Path) -> None:
    run = Runner(tmp_path, sshd, SCENARIOS[name])
    calls, before, clean = run.clean()
    assert calls, f"{name}: no backend call"
    assert clean != before
    with ThreadPoolExecutor(WORKERS) as pool:
        jobs = [pool.submit(run.failed, i, calls, before, clean) for i in range(len(calls))]
        jobs += [pool.submit(run.killed, i, calls, clean) for i in range(len(calls))]
        problems = [f"{name}: {line}" for job in jobs for line in job.result()]
    assert not problems, "\n".join(problems)


# --- concurrency: oned runs up to 15 actions at once ---------------------------------------------

PARALLEL = 15


def parallel(cloud: Cloud, action: str, argvs: list[list[str]]) -> list[subprocess.CompletedProcess[bytes]]:
    """Start ``action`` once per argv, all at once, and wait for all of them."""
    procs = [subprocess.Popen([sys.executable, executable(action), *argv], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cloud.env, cwd=cloud.home)
             for argv in argvs]
    out = []
    for argv, proc in zip(argvs, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr))
    return out


def all_ok(procs: list[subprocess.CompletedProcess[bytes]]) -> None:
    failures = [f"{p.args}: exit {p.returncode}: {p.stderr.decode(errors='replace')}" for p in procs if p.returncode]
    assert not failures, "\n".join(failures)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def call_names(cloud: Cloud, mark: int) -> list[str]:
    return sorted(name for name, _ in cloud.sim.calls[mark:])


def test_15_parallel_clones_of_one_image_then_15_parallel_deletes(cloud: Cloud) -> None:
    _images(cloud)
    vms = list(range(100, 100 + PARALLEL))
    for vm_id in vms:
        cloud.make_vm(vm_id, [{"image": 7}], context=False)
    images = {"one-img-7", "one-img-8", "one-img-9"}
    clones = {f"one-img-7-{vm_id}-0": vm_id for vm_id in vms}

    mark = len(cloud.sim.calls)
    all_ok(parallel(cloud, "clone", [clone_args(cloud, vm_id) for vm_id in vms]))
    assert call_names(cloud, mark) == sorted(["VolumeCreate", "VolumesReassignWait"] * PARALLEL)  # no retries
    inv = cloud.sim.inventory()
    assert sorted(inv["volumes"]) == sorted(images | set(clones))  # each exactly once (one namespace)
    for name, vm_id in clones.items():
        vol = inv["volumes"][name]
        assert (vol["size"], vol["template"]) == (64 * MiB, "one-ds-100")
        assert vol["tags"] == {"virt": "one", "nloc": "one", "nvm": str(vm_id), "type": "NPERS", "diskid": "0"}
    assert sorted((a["name"], a["client"], a["rights"]) for a in inv["attachments"]) == \
        [(name, 1, "rw") for name in sorted(clones)]
    devices = set()
    for name, vm_id in clones.items():
        disk = cloud.disk_path("node1", vm_id, 0)
        assert os.readlink(disk) == str(cloud.device_dir("node1") / name)
        assert Cloud.sha256(disk, MiB) == sha(DATA7), name  # the image's data, through the loop device
        devices.add(os.path.realpath(disk))
    assert len(devices) == PARALLEL and all(d.startswith("/dev/loop") for d in devices)
    assert not inv["snapshots"]

    mark = len(cloud.sim.calls)
    all_ok(parallel(cloud, "delete", [[cloud.tm_path("node1", vm_id, 0), str(vm_id), "100"] for vm_id in vms]))
    assert call_names(cloud, mark) == sorted(["VolumeSnapshot", "VolumesReassign", "VolumeDelete"] * PARALLEL)
    inv = cloud.sim.inventory()
    assert sorted(inv["volumes"]) == sorted(images)
    assert sorted(inv["snapshots"]) == sorted(f"{name}-DELETED-{STIME}" for name in clones)  # exactly 15
    for name, vm_id in clones.items():
        trash = inv["snapshots"][f"{name}-DELETED-{STIME}"]
        assert trash["tags"] == {"virt": "one", "nloc": "one", "nvm": str(vm_id), "diskid": "0", "trash": name}
        assert round((trash["targetDeleteDate"] - inv["time"]) / 3600) == 48
        assert Cloud.sha256(trash["path"], MiB) == sha(DATA7)
    assert inv["attachments"] == [] and inv["loops"] == []
    state = world(cloud)
    assert [e for entries in state["hosts"].values() for e in entries if not e.endswith("/")] == []  # no links


def test_15_parallel_snapshot_actions_on_one_disk(cloud: Cloud) -> None:
    """Snapshots of one volume take its per-volume lock: 15 at once all succeed, and with a
    DISKSNAPSHOT_LIMIT the count and the snapshot are one step (16 racing for 15 places)."""
    _images(cloud)
    cloud.make_vm(VM, [{"image": 7}], context=False)
    tm(cloud, "clone", *clone_args(cloud))
    volume = f"one-img-7-{VM}-0"
    cloud.configure(DISKSNAPSHOT_LIMIT=PARALLEL)

    all_ok(parallel(cloud, "snap_create", [disk_args(cloud, 0, str(k)) for k in range(PARALLEL)]))
    inv = cloud.sim.inventory()
    names = {f"{volume}-snap{k}" for k in range(PARALLEL)}
    assert set(inv["snapshots"]) == names
    for snap in inv["snapshots"].values():
        assert snap["tags"] == {"virt": "one", "nloc": "one", "nvm": str(VM), "diskid": "0"}
    chain, parent = [], inv["volumes"][volume]["parent"]
    while parent is not None:
        chain.append(parent)
        parent = inv["snapshots"][parent]["parent"]
    assert sorted(chain) == sorted(names)  # one line of snapshots, none lost

    all_ok(parallel(cloud, "snap_delete", [disk_args(cloud, 0, str(k)) for k in range(PARALLEL)]))
    inv = cloud.sim.inventory()
    assert inv["snapshots"] == {} and inv["volumes"][volume]["parent"] is None
    assert Cloud.sha256(inv["volumes"][volume]["path"], MiB) == sha(DATA7)
    assert [(a["name"], a["client"]) for a in inv["attachments"]] == [(volume, 1)]

    procs = parallel(cloud, "snap_create", [disk_args(cloud, 0, str(k)) for k in range(100, 101 + PARALLEL)])
    refused = [p for p in procs if p.returncode]
    assert len(refused) == 1, [p.stderr for p in refused]
    assert one_line_failure(refused[0]) is None
    limit = f"disk 0 already has {PARALLEL} snapshots (DISKSNAPSHOT_LIMIT={PARALLEL})"
    assert refused[0].stderr.decode().strip() == limit
    assert len(cloud.sim.inventory()["snapshots"]) == PARALLEL
