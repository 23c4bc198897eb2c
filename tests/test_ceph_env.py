"""The live Ceph cluster the rbd tests run on (tests/ceph_env.py): it is really up, it is
this session's own, and the project venv reaches it through Debian's librados/librbd."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ceph_env import POOLS, CephCluster, ceph

FIXTURES = (ceph,)


def test_cluster_is_healthy_with_the_test_pools(ceph: CephCluster) -> None:
    assert ceph.health() == "HEALTH_OK"
    pools = {p["pool_name"]: p for p in ceph.ceph("osd", "pool", "ls", "detail")}
    for name in POOLS:
        assert name in pools
        assert pools[name]["size"] == 1
        assert "rbd" in pools[name]["application_metadata"]
    osds = ceph.ceph("osd", "dump")["osds"]
    assert [(o["osd"], o["up"], o["in"]) for o in osds] == [(0, 1, 1)]


def test_cluster_is_this_sessions_own(ceph: CephCluster) -> None:
    """Its own fsid, directory and monitor ports; the daemons are our children."""
    status = ceph.ceph("status")
    assert status["fsid"] == ceph.fsid
    text = ceph.conf.read_text()
    assert f"v2:127.0.0.1:{ceph.mon_v2}" in text and str(ceph.dir) in text
    assert "/etc/ceph" not in text
    for name, proc in ceph.procs.items():
        assert proc.poll() is None, name
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert str(ceph.conf).encode() in cmdline, name


def test_venv_imports_the_bindings_and_reaches_the_cluster(ceph: CephCluster) -> None:
    """rados/rbd come from the two links .ci/venv makes, not from all of dist-packages."""
    code = (
        "import sys, rados, rbd\n"
        "assert not any(p.rstrip('/').endswith('dist-packages') for p in sys.path), sys.path\n"
        f"c = rados.Rados(conffile={str(ceph.conf)!r}, rados_id='admin')\n"
        "c.connect(timeout=20)\n"
        "io = c.open_ioctx('one')\n"
        "rbd.RBD().create(io, 'venv-probe', 1 << 20)\n"
        "print(sorted(rbd.RBD().list(io)))\n"
        "rbd.RBD().remove(io, 'venv-probe')\n"
        "io.close(); c.shutdown()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "venv-probe" in proc.stdout.decode()
    assert "venv-probe" not in ceph.rbd_ls("one")
