"""The world the rbd driver tests run in: the live Ceph cluster (tests/ceph_env.py), the oned
double (tests/sim/oned.py), the test sshd standing in for the hosts (tests/storage_env.py),
and a runner that calls ``datastore/rbd/<action>`` and ``tm/rbd/<action>`` exactly as oned does.

    from ceph_env import ceph
    from rbd_env import rbd_cloud
    from storage_env import sshd
    FIXTURES = (ceph, rbd_cloud, sshd)

``rbd_cloud`` (per test): datastores 100 (image, DS_MAD/TM_MAD rbd, POOL_NAME one, DISK_TYPE
RBD, BRIDGE_LIST node1, CEPH_USER admin, CEPH_CONF the cluster's) and 101 (system, TM_MAD
rbd, POOL_NAME one-sys), hosts node1 (1) and node2 (2), the driver configuration file (short
client timeouts: API_TIMEOUT=8). The pools are emptied before and after each test.
"""

from __future__ import annotations

import base64
import copy
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import drivers
import pytest
from ceph_env import CephCluster
from lxml import etree
from sim import oned as oned_sim
from sim.oned import OnedDouble
from storage_env import ONE_AUTH, Sshd

REPO = Path(__file__).resolve().parent.parent
IMAGE_DS, SYSTEM_DS = 100, 101
POOL, SYS_POOL = "one", "one-sys"
MiB = 2**20
TIMEOUT = 8


@dataclass
class RbdCloud:
    root: Path
    ceph: CephCluster
    oned: OnedDouble
    sshd: Sshd
    conf: Path
    home: Path
    env: dict[str, str]
    settings: dict[str, str] = field(default_factory=dict)

    def configure(self, **values: str | int | None) -> None:
        for key, value in values.items():
            if value is None:
                self.settings.pop(key, None)
            else:
                self.settings[key] = str(value)
        lines = [f"{k}={shlex.quote(v)}" for k, v in self.settings.items()]
        self.conf.write_text("\n".join(lines) + "\n")

    def ds_location(self, host: str) -> str:
        return f"{self.root}/{host}//datastores"

    def vm_dir(self, host: str, vm_id: int, ds_id: int = SYSTEM_DS) -> Path:
        return Path(f"{self.root}/{host}/datastores/{ds_id}/{vm_id}")

    def tm_path(self, host: str, vm_id: int, disk_id: int | None = None, ds_id: int = SYSTEM_DS) -> str:
        base = f"{host}:{self.ds_location(host)}/{ds_id}/{vm_id}"
        return base if disk_id is None else f"{base}/disk.{disk_id}"

    # --- oned documents --------------------------------------------------------------------
    def make_image(self, image_id: int, *, size_mb: int = 16, persistent: bool = False, source: str | None = None,
                   path: str = "", fmt: str = "raw", ds_id: int = IMAGE_DS,
                   template: Mapping[str, object] | None = None) -> etree._Element:
        doc = oned_sim.image_document(
            image_id, name=f"image-{image_id}", source=f"{POOL}/one-{image_id}" if source is None else source,
            size_mb=size_mb, ds_id=ds_id, ds_name=oned_sim._text(self.oned.datastore(ds_id), "NAME"),
            persistent=persistent, image_type="DATABLOCK" if persistent else "OS", fmt=fmt, template=template)
        if path:
            oned_sim._set_text(doc, "PATH", path)
        return self.oned.add_image(doc)

    def make_vm(self, vm_id: int = 42, disks: Sequence[Mapping[str, Any]] = (), host: str = "node1",
                lcm_state: int = oned_sim.LCM_RUNNING) -> etree._Element:
        """``{"image": 7}`` non-persistent, ``{"image": 8, "persistent": True}``,
        ``{"volatile": "fs"|"swap", "size": MB, "fs": "ext4"}``; DISK_ID = position."""
        out: list[dict[str, object]] = []
        for disk_id, spec in enumerate(disks):
            attrs: dict[str, object] = {"DISK_ID": disk_id, "DISK_TYPE": "RBD", "DRIVER": "raw", "TM_MAD": "rbd",
                                        "TARGET": "vd" + "abcdefgh"[disk_id], "CLUSTER_ID": 0}
            if "volatile" in spec:
                attrs.update(DATASTORE_ID=SYSTEM_DS, TYPE=spec["volatile"], SIZE=spec.get("size", 16),
                             POOL_NAME=SYS_POOL)
                if spec.get("fs"):
                    attrs["FS"] = spec["fs"]
            else:
                image_id = int(spec["image"])
                persistent = bool(spec.get("persistent"))
                image = self.oned.image(image_id)
                size = int(oned_sim._text(image, "SIZE", "16") or 16)
                attrs.update(CLONE="NO" if persistent else "YES", DATASTORE_ID=IMAGE_DS, IMAGE_ID=image_id,
                             SOURCE=oned_sim._text(image, "SOURCE"), ORIGINAL_SIZE=size, SIZE=spec.get("size", size),
                             TYPE="RBD", POOL_NAME=POOL, READONLY="NO", FORMAT="raw")
                if persistent:
                    attrs["PERSISTENT"] = "YES"
            for key, value in spec.items():
                if key.isupper():
                    attrs[key] = value
            out.append(attrs)
        doc = oned_sim.vm_document(vm_id, disks=out, context=None, host=host, host_id=1 if host == "node1" else 2,
                                   system_ds=SYSTEM_DS, tm_mad="rbd", lcm_state=lcm_state)
        return self.oned.add_vm(doc)

    def ds_message(self, image: int | etree._Element | None, ds_id: int = IMAGE_DS) -> etree._Element:
        root = etree.Element("DS_DRIVER_ACTION_DATA")
        if image is not None:
            root.append(copy.deepcopy(image) if isinstance(image, etree._Element) else self.oned.served("image", image))
        root.append(self.oned.served("datastore", ds_id))
        return root

    # --- running drivers -------------------------------------------------------------------
    def run_ds(self, action: str, payload: etree._Element, obj_id: int, *, timeout: float = 180,
               env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        """``datastore/rbd/<action> <id>`` with the base64 payload on stdin (OpenNebula 6.8+)."""
        return self._run(drivers.ds("rbd") / action, [str(obj_id)],
                         base64.b64encode(etree.tostring(payload)), timeout, env)

    def run_tm(self, action: str, *args: str, stdin: bytes = b"", timeout: float = 180,
               env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        return self._run(drivers.tm("rbd") / action, list(args), stdin, timeout, env)

    def popen_ds(self, action: str, payload: etree._Element, obj_id: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, str(drivers.ds("rbd") / action), str(obj_id)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=self.env, cwd=self.home)
        assert proc.stdin is not None
        proc.stdin.write(base64.b64encode(etree.tostring(payload)))
        proc.stdin.close()
        proc.stdin = None     # communicate() must not flush it again
        return proc

    def popen_tm(self, action: str, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, str(drivers.tm("rbd") / action), *args], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env, cwd=self.home)

    def _run(self, path: Path, argv: list[str], stdin: bytes, timeout: float,
             env: Mapping[str, str] | None) -> subprocess.CompletedProcess[bytes]:
        assert path.is_file(), f"driver executable {path} does not exist"
        return subprocess.run([sys.executable, str(path), *argv], input=stdin, capture_output=True,
                              env={**self.env, **(env or {})}, cwd=self.home, timeout=timeout, check=False)


def build_rbd_cloud(root: Path, ceph: CephCluster, server: Sshd) -> Iterator[RbdCloud]:
    root.mkdir(parents=True, exist_ok=True)
    for host in ("node1", "node2", "one-fe"):
        (root / host / "datastores").mkdir(parents=True)
    oned = OnedDouble(auth=ONE_AUTH)
    oned.start()
    try:
        ceph_attrs = {"CEPH_USER": "admin", "CEPH_CONF": str(ceph.conf), "CEPH_HOST": f"127.0.0.1:{ceph.mon_v1}",
                      "CEPH_SECRET": "6b5b8a6c-1b1e-4c52-8a44-5e4a6a1f2f7e"}
        oned.add_datastore(oned_sim.datastore_document(
            IMAGE_DS, "rbd-images", ds_type="IMAGE_DS", ds_mad="rbd", tm_mad="rbd", disk_type="RBD",
            base_path=f"{root}/one-fe//datastores/{IMAGE_DS}",
            attrs={"BRIDGE_LIST": "node1", "POOL_NAME": POOL, "SAFE_DIRS": str(root.parent), **ceph_attrs}))
        oned.add_datastore(oned_sim.datastore_document(
            SYSTEM_DS, "rbd-system", ds_type="SYSTEM_DS", ds_mad="-", tm_mad="rbd", disk_type="RBD",
            base_path=f"{root}/one-fe//datastores/{SYSTEM_DS}", attrs={"POOL_NAME": SYS_POOL, **ceph_attrs}))
        for name, host_id in (("node1", 1), ("node2", 2)):
            oned.add_host(name, host_id, {"DATASTORE_LOCATION": f"{root}/{name}//datastores"})
        home = root / "var" / "lib" / "one"
        home.mkdir(parents=True)
        auth_file = root / "one_auth"
        auth_file.write_text(ONE_AUTH + "\n")
        (root / "staging").mkdir()
        conf = root / "one-tweaks.conf"
        path = os.environ.get("PATH", "/usr/bin:/bin")
        for extra in ("/usr/sbin", "/sbin"):
            if extra not in path.split(":"):
                path += ":" + extra
        env = {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8", "ONE_XMLRPC": oned.url,
               "ONE_AUTH": str(auth_file), "ONE_TWEAKS_CONF": str(conf), "PYTHONDONTWRITEBYTECODE": "1"}
        cloud = RbdCloud(root=root, ceph=ceph, oned=oned, sshd=server, conf=conf, home=home, env=env)
        cloud.configure(SSH_COMMAND=shlex.join(server.ssh_command), LOCK_DIR=str(root / "locks"),
                        STAGING_DIR=str(root / "staging"), API_TIMEOUT=TIMEOUT, DELAY_DELETE="0")
        yield cloud
    finally:
        oned.stop()


@pytest.fixture
def rbd_cloud(tmp_path: Path, ceph: CephCluster, sshd: Sshd) -> Iterator[RbdCloud]:
    """A fresh oned double over the session's cluster, its pools empty (see the module)."""
    for pool in (POOL, SYS_POOL):
        ceph.purge_pool(pool)
    yield from build_rbd_cloud(tmp_path / "cloud", ceph, sshd)
    if not ceph.osd_running():
        ceph.start_osd()
    for pool in (POOL, SYS_POOL):
        ceph.purge_pool(pool)


def ok(proc: subprocess.CompletedProcess[bytes]) -> str:
    """The output of an action that must succeed."""
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode().strip()


def one_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    """The one-line reason of an action that must fail (no traceback)."""
    assert proc.returncode != 0, proc.stdout.decode()
    err = proc.stderr.decode().strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err
