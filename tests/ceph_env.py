"""A real, single-node Ceph cluster for the rbd tests: one monitor, one manager and one
bluestore OSD on a sparse file, all under a temporary directory on 127.0.0.1.

Import the fixture into a test module and name it once so ruff sees it used::

    from ceph_env import ceph
    FIXTURES = (ceph,)

Fixture
    ceph (session)   a running ``CephCluster`` (see the class): its own fsid, ceph.conf,
                     client.admin keyring and free monitor ports, so two test sessions on one
                     machine never meet; HEALTH_OK with the pools ``one`` and ``one-sys`` (size 1,
                     rbd application) before the first test runs. Daemons are stopped by PID
                     at the end of the session (never by name), then the directory is removed.
                     Fails (never skips) without Debian's ceph packages: run ``.ci/setup-ceph``.

Outside a fixture: ``with ceph_cluster(directory) as cluster``.

Everything talks to the cluster through the ``ceph``/``rbd`` CLIs with ``--conf`` (argument
lists, ``--format json``): the tests check what the drivers did with tools that are not the
drivers' own bindings. ``cluster.stop_osd()`` / ``cluster.start_osd()`` take the OSD away and
bring it back (fault tests).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

BINARIES = ("/usr/bin/ceph-mon", "/usr/bin/ceph-mgr", "/usr/bin/ceph-osd", "/usr/bin/ceph",
            "/usr/bin/rbd", "/usr/bin/ceph-authtool", "/usr/bin/monmaptool")
SETUP_HINT = "run .ci/setup-ceph (installs ceph-mon ceph-osd ceph-mgr ceph-common python3-rbd python3-rados)"
POOLS = ("one", "one-sys")
OSD_SIZE = 20 * 2**30            # the sparse block file (nothing is allocated until written)
START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _conf_text(directory: Path, fsid: str, v2: int, v1: int, ports: tuple[int, int]) -> str:
    d = str(directory)
    return f"""[global]
fsid = {fsid}
mon_host = [v2:127.0.0.1:{v2},v1:127.0.0.1:{v1}]
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_port_min = {ports[0]}
ms_bind_port_max = {ports[1]}
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
keyring = {d}/client.admin.keyring
run_dir = {d}/run
crash_dir = {d}/crash
admin_socket = {d}/run/$name.asok
log_file = {d}/log/$name.log
log_to_stderr = false
err_to_stderr = true
mon_cluster_log_file = {d}/log/cluster.log
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_warn_on_insecure_global_id_reclaim_allowed = false
auth_allow_insecure_global_id_reclaim = false
mon_max_pg_per_osd = 1000
mgr_initial_modules = status
rbd_default_features = 61

[mon]
mon_data_avail_warn = 2
mon_data_avail_crit = 1
mon_data = {d}/mon/$cluster-$id
mon_osd_full_ratio = 0.97
mon_osd_nearfull_ratio = 0.95
mon_osd_backfillfull_ratio = 0.96

[mgr]
mgr_data = {d}/mgr/$cluster-$id
keyring = {d}/mgr/$cluster-$id/keyring

[osd]
osd_data = {d}/osd/$cluster-$id
keyring = {d}/osd/$cluster-$id/keyring
osd_objectstore = bluestore
bluestore_block_path = {d}/osd/$cluster-$id.block
bluestore_block_size = {OSD_SIZE}
bluestore_block_create = true
bluestore_fsck_on_mkfs = false
bluestore_fsck_on_mount = false
osd_memory_target = 939524096
bluestore_cache_autotune = false
bluestore_cache_size = 134217728
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1
osd_heartbeat_grace = 60
"""


@dataclass
class CephCluster:
    """A running cluster. ``conf`` and ``keyring`` are what a client needs (client.admin);
    ``mon_host`` is the monitors' address list as ceph.conf writes it, ``mon_v1``/``mon_v2``
    the monitor's ports (v1 for clients that only speak the legacy protocol, such as a
    libvirt ``<host name port>``)."""

    dir: Path
    fsid: str
    conf: Path
    keyring: Path
    admin_key: str
    mon_v1: int
    mon_v2: int
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def mon_host(self) -> str:
        return f"[v2:127.0.0.1:{self.mon_v2},v1:127.0.0.1:{self.mon_v1}]"

    # --- commands ------------------------------------------------------------------------------
    def cli(self, tool: str, *args: str, check: bool = True, timeout: float = 60,
            input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """``ceph``/``rbd``/... with this cluster's conf (client.admin)."""
        argv = [tool, "--conf", str(self.conf), *args]
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=timeout, input=input, check=False)
        except subprocess.TimeoutExpired as exc:
            if check:
                raise
            # polls (check=False) treat a slow answer on a loaded machine as "not yet"
            return subprocess.CompletedProcess(argv, 124, exc.stdout or b"", exc.stderr or b"")
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: rc {proc.returncode}: {proc.stderr.decode(errors='replace')[-800:]}")
        return proc

    def json(self, tool: str, *args: str, timeout: float = 60) -> Any:
        out = self.cli(tool, *args, "--format", "json", timeout=timeout).stdout
        return json.loads(out) if out.strip() else None

    def ceph(self, *args: str, timeout: float = 60) -> Any:
        return self.json("ceph", *args, timeout=timeout)

    def rbd_ls(self, pool: str = "one") -> list[str]:
        """Image names in ``pool`` (``rbd ls``), sorted."""
        return sorted(self.json("rbd", "ls", "--pool", pool) or [])

    def rbd_snaps(self, image: str) -> list[dict[str, Any]]:
        """``rbd snap ls --all`` of ``pool/image``."""
        return list(self.json("rbd", "snap", "ls", "--all", image) or [])

    def rbd_info(self, image: str) -> dict[str, Any] | None:
        proc = self.cli("rbd", "info", "--format", "json", image, check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def rbd_trash(self, pool: str = "one") -> list[dict[str, Any]]:
        return list(self.json("rbd", "trash", "ls", "--all", "--long", "--pool", pool) or [])

    def rbd_groups(self, pool: str = "one") -> list[str]:
        return sorted(self.json("rbd", "group", "list", "--pool", pool) or [])

    def health(self) -> str:
        status = self.ceph("health")
        return str(status.get("status", "")) if isinstance(status, dict) else ""

    def create_user(self, name: str, caps: Sequence[str], keyring: Path) -> str:
        """``ceph auth get-or-create client.<name> CAPS`` written to ``keyring``; returns the key."""
        self.cli("ceph", "auth", "get-or-create", f"client.{name}", *caps, "-o", str(keyring))
        return str(self.ceph("auth", "print-key", f"client.{name}") or "").strip() or _read_key(keyring)

    def create_pool(self, pool: str) -> None:
        if pool in (self.ceph("osd", "pool", "ls") or []):
            return
        self.cli("ceph", "osd", "pool", "create", pool, "8", "8")
        self.cli("ceph", "osd", "pool", "set", pool, "size", "1", "--yes-i-really-mean-it")
        self.cli("ceph", "osd", "pool", "application", "enable", pool, "rbd")
        self.cli("rbd", "pool", "init", pool)

    def purge_pool(self, pool: str) -> None:
        """Remove every image, snapshot, group and trash entry of ``pool`` (between tests)."""
        for group in self.rbd_groups(pool):
            self.cli("rbd", "group", "remove", f"{pool}/{group}", check=False)
        for entry in self.rbd_trash(pool):
            self.cli("rbd", "trash", "remove", "--force", "--pool", pool, str(entry["id"]), check=False)
        for _ in range(4):
            names = self.rbd_ls(pool)
            if not names:
                return
            for name in names:
                self.cli("rbd", "snap", "unprotect", "--all", f"{pool}/{name}", check=False)
                for snap in self.rbd_snaps(f"{pool}/{name}"):
                    if snap.get("protected") == "true":
                        self.cli("rbd", "snap", "unprotect", f"{pool}/{name}@{snap['name']}", check=False)
                self.cli("rbd", "snap", "purge", "--no-progress", f"{pool}/{name}", check=False)
                self.cli("rbd", "rm", "--no-progress", f"{pool}/{name}", check=False)

    # --- daemons -------------------------------------------------------------------------------
    def _start(self, name: str, argv: list[str]) -> None:
        log = open(self.dir / "log" / f"{name}.stderr", "ab")  # noqa: SIM115 - kept by the child
        try:
            self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                                start_new_session=True)
        finally:
            log.close()

    def start_osd(self, wait: float = START_TIMEOUT) -> None:
        """(Re)start osd.0 and wait until it is up and every PG is active."""
        proc = self.procs.get("osd.0")
        if proc is not None and proc.poll() is None:
            return
        self._start("osd.0", ["/usr/bin/ceph-osd", "-f", "-i", "0", "--conf", str(self.conf)])
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self._osd_up() and self._pgs_active():
                return
            time.sleep(0.5)
        raise RuntimeError(f"osd.0 did not come up within {wait:g}s: {self.tail('osd.0')}")

    def stop_osd(self) -> None:
        """Kill osd.0 (SIGKILL, as a crash would) and tell the monitor it is down, so clients
        wait for it instead of talking to a dead address."""
        proc = self.procs.get("osd.0")
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        self.cli("ceph", "osd", "down", "0", check=False, timeout=30)

    def osd_running(self) -> bool:
        proc = self.procs.get("osd.0")
        return proc is not None and proc.poll() is None

    def _osd_up(self) -> bool:
        proc = self.cli("ceph", "osd", "dump", "--format", "json", check=False, timeout=20)
        if proc.returncode != 0:
            return False
        osds = json.loads(proc.stdout).get("osds", [])
        return bool(osds) and all(o.get("up") == 1 and o.get("in") == 1 for o in osds)

    def _pgs_active(self) -> bool:
        proc = self.cli("ceph", "pg", "stat", "--format", "json", check=False, timeout=20)
        if proc.returncode != 0:
            return False
        stat = json.loads(proc.stdout)
        summary = stat.get("pg_summary", stat)
        total = int(summary.get("num_pgs", 0))
        active = sum(int(s.get("num", 0)) for s in summary.get("num_pg_by_state", [])
                     if "active" in str(s.get("name", "")).split("+"))
        return total == active

    def tail(self, name: str, lines: int = 15) -> str:
        out = []
        for path in (self.dir / "log" / f"{name}.stderr", self.dir / "log" / f"{name}.log"):
            with contextlib.suppress(OSError):
                out += path.read_text(errors="replace").splitlines()[-lines:]
        return " | ".join(out[-lines:])

    def stop(self) -> None:
        """Stop every daemon this cluster started, by PID (OSD first, monitor last)."""
        for name in sorted(self.procs, key=lambda n: ("osd", "mgr", "mon").index(n.split(".")[0])):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)


def _read_key(keyring: Path) -> str:
    for line in keyring.read_text().splitlines():
        key, _, value = line.strip().partition("=")
        if key.strip() == "key":
            return value.strip()
    raise RuntimeError(f"{keyring}: no key")


def _run(argv: Sequence[str], what: str, timeout: float = 120) -> None:
    proc = subprocess.run(list(argv), capture_output=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{what}: {' '.join(argv)}: {proc.stderr.decode(errors='replace')[-800:]}")


def check_installed() -> None:
    missing = [b for b in BINARIES if not os.access(b, os.X_OK)]
    if missing:
        pytest.fail(f"Ceph is not installed ({', '.join(missing)} missing): {SETUP_HINT}")


@contextlib.contextmanager
def ceph_cluster(directory: Path, pools: Sequence[str] = POOLS) -> Iterator[CephCluster]:
    """Bring a cluster up in ``directory`` (which must be empty or absent), yield it at
    HEALTH_OK, stop it by PID on the way out."""
    d = directory
    for sub in ("run", "crash", "log", "mon/ceph-a", "mgr/ceph-x", "osd/ceph-0"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    fsid = str(uuid.uuid4())
    v2, v1 = free_port(), free_port()
    base = 20000 + (os.getpid() * 7 + v2) % 30000     # a daemon port range of our own
    conf = d / "ceph.conf"
    conf.write_text(_conf_text(d, fsid, v2, v1, (base, base + 99)))
    admin = d / "client.admin.keyring"
    mon_keyring = d / "mon.keyring"
    _run(["ceph-authtool", "--create-keyring", str(mon_keyring), "--gen-key", "-n", "mon.",
          "--cap", "mon", "allow *"], "mon key")
    _run(["ceph-authtool", "--create-keyring", str(admin), "--gen-key", "-n", "client.admin",
          "--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *",
          "--cap", "mds", "allow *"], "admin key")
    _run(["ceph-authtool", str(mon_keyring), "--import-keyring", str(admin)], "keyring")
    monmap = d / "monmap"
    _run(["monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v2:127.0.0.1:{v2},v1:127.0.0.1:{v1}]",
          str(monmap)], "monmap")
    _run(["ceph-mon", "--conf", str(conf), "--mkfs", "-i", "a", "--monmap", str(monmap),
          "--keyring", str(mon_keyring)], "mon mkfs")
    cluster = CephCluster(dir=d, fsid=fsid, conf=conf, keyring=admin, admin_key=_read_key(admin),
                          mon_v1=v1, mon_v2=v2)
    try:
        cluster._start("mon.a", ["/usr/bin/ceph-mon", "-f", "-i", "a", "--conf", str(conf)])
        deadline = time.monotonic() + START_TIMEOUT
        while cluster.cli("ceph", "mon", "stat", check=False, timeout=10).returncode != 0:
            if time.monotonic() > deadline or cluster.procs["mon.a"].poll() is not None:
                raise RuntimeError(f"the monitor did not start: {cluster.tail('mon.a')}")
            time.sleep(0.3)
        cluster.cli("ceph", "auth", "get-or-create", "mgr.x", "mon", "allow profile mgr", "osd", "allow *",
                    "mds", "allow *", "-o", str(d / "mgr/ceph-x/keyring"))
        cluster._start("mgr.x", ["/usr/bin/ceph-mgr", "-f", "-i", "x", "--conf", str(conf)])
        osd_uuid = str(uuid.uuid4())
        osd_id = cluster.cli("ceph", "osd", "new", osd_uuid).stdout.decode().strip()
        if osd_id != "0":
            raise RuntimeError(f"ceph osd new gave id {osd_id!r}, expected 0")
        cluster.cli("ceph", "auth", "get-or-create", "osd.0", "mon", "allow profile osd", "mgr",
                    "allow profile osd", "osd", "allow *", "-o", str(d / "osd/ceph-0/keyring"))
        _run(["ceph-osd", "--conf", str(conf), "-i", "0", "--mkfs", "--osd-uuid", osd_uuid], "osd mkfs", timeout=300)
        cluster.start_osd()
        for pool in pools:
            cluster.create_pool(pool)
        _wait_health_ok(cluster, deadline=time.monotonic() + START_TIMEOUT)
        yield cluster
    finally:
        cluster.stop()


def _wait_health_ok(cluster: CephCluster, deadline: float) -> None:
    last = ""
    while time.monotonic() < deadline:
        proc = cluster.cli("ceph", "health", "detail", "--format", "json", check=False, timeout=20)
        if proc.returncode == 0:
            health = json.loads(proc.stdout)
            if health.get("status") == "HEALTH_OK":
                return
            last = "; ".join(f"{k}: {v.get('summary', {}).get('message', '')}"
                             for k, v in (health.get("checks") or {}).items())
            # a freshly made cluster warns about crashes of earlier runs only if any: archive
            if "RECENT_CRASH" in (health.get("checks") or {}):
                cluster.cli("ceph", "crash", "archive-all", check=False)
        time.sleep(0.5)
    raise RuntimeError(f"the cluster did not reach HEALTH_OK: {last}")


@pytest.fixture(scope="session")
def ceph() -> Iterator[CephCluster]:
    check_installed()
    directory = Path(tempfile.mkdtemp(prefix="one-tweaks-ceph-"))
    try:
        with ceph_cluster(directory) as cluster:
            yield cluster
    finally:
        shutil.rmtree(directory, ignore_errors=True)
