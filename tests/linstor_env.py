"""The LINSTOR world of the ``linstor_un`` driver tests (tests/test_linstor_drivers.py,
tests/test_lifecycle_linstor.py): storage_env's ``Cloud`` with the LINSTOR controller
simulator (tests/sim/linstor.py; NOT LINSTOR: one sparse file per volume, one loop device that
every node holding the resource sees through its own ``by-res`` link) in place of StorPool.

The world (``lcloud``): storage nodes stor1 and stor2 (LVM-thin pool ``thin``) that are no
OpenNebula hosts; compute nodes node1 and node2 and the front-end one-fe, LINSTOR satellites
without any storage pool (diskless only), each with its own ``by-res`` directory. node1,
node2 and one-fe are reached through the real test sshd (tests/storage_env.py), oned is the
XML-RPC test double (tests/sim/oned.py). Datastores, with addon-linstor_un's attributes:

- 100 (image): DS_MAD/TM_MAD linstor_un, AUTO_PLACE 2, STORAGE_POOL thin, BRIDGE_LIST node1;
- 101 (system): TM_MAD linstor_un, NODE_LIST "stor1 stor2", STORAGE_POOL thin,
  CHECKPOINT_AUTO_PLACE 1, BRIDGE_LIST "node1 node2".

Import the fixtures into a test module and name them once::

    from linstor_env import lcloud
    from storage_env import sshd
    FIXTURES = (lcloud, sshd)
"""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import drivers
import linstor
import pytest
import storage_env
from lxml import etree
from scenario import write_at
from sim import oned as oned_sim
from sim.linstor import LinstorSim
from sim.oned import OnedDouble
from storage_env import ONE_AUTH, Cloud, Sshd, _write_conf, sshd

FIXTURES = (sshd,)  # lcloud needs it
MiB = 2**20
VM = 42
FE = "one-fe"
IMAGE_DS, SYSTEM_DS = 100, 101
DRIVER = "linstor_un"
IMAGE_ATTRS = {"BRIDGE_LIST": "node1", "AUTO_PLACE": "2", "STORAGE_POOL": "thin"}
SYSTEM_ATTRS = {"BRIDGE_LIST": "node1 node2", "NODE_LIST": "stor1 stor2", "STORAGE_POOL": "thin",
                "CHECKPOINT_AUTO_PLACE": "1"}
TWO_PRIMARIES = "DrbdOptions/Net/allow-two-primaries"


# The two rule files README's linstor section gives a cloud with StorPool and LINSTOR system
# datastores (T_OS_NVRAM=storpool means "the storage driver's NVRAM volume" on both).
NVRAM_RULES = {
    "62-os-nvram.yaml": """name: os-nvram
when: {not: {fact: history.tm_mad, equals: linstor_un}}
tweaks:
  - os_nvram:
      nvram: {from: user.T_OS_NVRAM}
      templates: /usr/share/OVMF/ /usr/share/AAVMF/ /usr/share/edk2/ovmf/
      template_dir: /usr/share/OVMF
      device: /dev/storpool/{px}-sys-{vm_id}-NVRAM
      px: one
""",
    "62-os-nvram-linstor_un.yaml": """name: os-nvram-linstor_un
when: {fact: history.tm_mad, equals: linstor_un}
tweaks:
  - os_nvram:
      nvram: {from: user.T_OS_NVRAM}
      templates: /usr/share/OVMF/ /usr/share/AAVMF/ /usr/share/edk2/ovmf/
      template_dir: /usr/share/OVMF
      device: /dev/drbd/by-res/{px}-vm-{vm_id}-nvram/0
      px: one
""",
}


def by_res(name: str) -> str:
    return f"/dev/drbd/by-res/{name}/0"


# --- the world ------------------------------------------------------------------------------------


@dataclass
class LinstorCloud(Cloud):
    """storage_env's Cloud with the LINSTOR simulator as ``sim`` and the linstor_un executables."""

    def run_tm(self, action: str, *args: str, stdin: bytes = b"", timeout: float = 120,
               remotes: Path | None = None) -> subprocess.CompletedProcess[bytes]:
        return self._run((remotes or drivers.REMOTES) / "tm" / DRIVER / action, list(args), stdin, timeout)

    def run_ds(self, action: str, payload: bytes | etree._Element, obj_id: int | str, *, form: str = "6.8",
               b64: bool = True, timeout: float = 120,
               remotes: Path | None = None) -> subprocess.CompletedProcess[bytes]:
        raw = etree.tostring(payload) if isinstance(payload, etree._Element) else payload
        encoded = base64.b64encode(raw) if b64 else raw
        argv, stdin = ([str(obj_id)], encoded) if form == "6.8" else (
            [encoded.decode(), str(obj_id)], b"")
        return self._run((remotes or drivers.REMOTES) / "datastore" / DRIVER / action, argv, stdin, timeout)

    def make_image(self, image_id: int, *, size_mb: int = 64, persistent: bool = False, image_type: str | None = None,
                   name: str | None = None, ds_id: int = IMAGE_DS, state: int = oned_sim.IMAGE_READY,
                   source: str | None = None, fmt: str = "raw",
                   template: Mapping[str, object] | None = None) -> etree._Element:
        """An IMAGE whose SOURCE is addon-linstor_un's ``/dev/drbd/by-res/one-image-<ID>/0``."""
        return super().make_image(image_id, size_mb=size_mb, persistent=persistent, image_type=image_type,
                                  name=name, ds_id=ds_id, state=state, fmt=fmt, template=template,
                                  source=by_res(f"one-image-{image_id}") if source is None else source)

    def make_vm(self, vm_id: int = VM, disks: Sequence[Mapping[str, Any]] | None = None, host: str = "node1",
                user: Mapping[str, object] | None = None, *, context: bool = True,
                template: Mapping[str, object] | None = None, state: int = oned_sim.VM_ACTIVE,
                lcm_state: int = oned_sim.LCM_RUNNING, name: str | None = None,
                system_ds: int = SYSTEM_DS) -> etree._Element:
        vm = super().make_vm(vm_id, disks, host, user, context=context, template=template, state=state,
                             lcm_state=lcm_state, name=name, system_ds=system_ds)
        for el in vm.iter("TM_MAD"):
            el.text = DRIVER
        return vm

    # -- LINSTOR ---------------------------------------------------------------------------------

    def lin(self) -> linstor.Linstor:
        return linstor.Linstor(self.sim.url, timeout=10)

    def make_volume(self, name: str, size_mb: int = 64, *, data: bytes = b"", template: str = "",
                    tags: Mapping[str, str] | None = None) -> None:
        """A resource on stor1 and stor2 with ``data`` at its start (written through stor1)."""
        with self.lin() as lin:
            for replies in (lin.resource_dfn_create(name),
                            lin.resource_dfn_modify(name, {f"Aux/one/{k}": v for k, v in (tags or {}).items()}),
                            lin.volume_dfn_create(name, size_mb * 1024),
                            lin.resource_create([linstor.ResourceData(n, name, storage_pool="thin")
                                                 for n in ("stor1", "stor2")])):
                assert not any(r.is_error() for r in replies), replies
        if data:
            write(self.sim.device_path(name, "stor1"), data)

    def inv(self) -> dict[str, Any]:
        return dict(self.sim.inventory()["resource_definitions"])

    def placed(self, name: str) -> dict[str, bool]:
        """node -> diskless?"""
        return {n: bool(r["diskless"]) for n, r in self.inv()[name]["resources"].items()}

    def props(self, name: str) -> dict[str, str]:
        return dict(self.inv()[name]["props"])

    def snaps(self, name: str) -> list[str]:
        return sorted(self.inv()[name]["snapshots"])

    def dev(self, host: str, name: str) -> str:
        return str(self.device_dir(host) / name / "0")



def _our_loops(root: Path) -> list[str]:
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines() if str(root) in line]


@pytest.fixture
def lcloud(tmp_path: Path, sshd: Sshd) -> Iterator[LinstorCloud]:
    """A fresh LINSTOR world for one test (see the module doc)."""
    root = tmp_path / "cloud"
    root.mkdir()
    hosts: dict[str, storage_env.TestHost] = {}
    for name, host_id in (("node1", 1), ("node2", 2), (FE, None)):
        (root / name / "datastores").mkdir(parents=True)
        hosts[name] = storage_env.TestHost(name=name, host_id=host_id, client=0, device_dir=root / name / "by-res",
                               ds_location=f"{root}/{name}//datastores")
    sim = LinstorSim(root / "linstor")
    oned = OnedDouble(auth=ONE_AUTH)
    try:
        sim.start()
        for name in ("stor1", "stor2"):
            sim.add_node(name, root / name / "by-res", pool="thin")
        for host in hosts.values():
            sim.add_node(host.name, host.device_dir, pool=None)   # satellites without storage
        oned.start()
        fe = hosts[FE]
        oned.add_datastore(oned_sim.datastore_document(
            IMAGE_DS, "linstor-images", ds_type="IMAGE_DS", ds_mad=DRIVER, tm_mad=DRIVER, disk_type="BLOCK",
            base_path=f"{fe.ds_location}/{IMAGE_DS}", attrs={**IMAGE_ATTRS, "SAFE_DIRS": str(tmp_path)}))
        oned.add_datastore(oned_sim.datastore_document(
            SYSTEM_DS, "linstor-system", ds_type="SYSTEM_DS", ds_mad="-", tm_mad=DRIVER, disk_type="BLOCK",
            base_path=f"{fe.ds_location}/{SYSTEM_DS}", attrs=SYSTEM_ATTRS))
        for host in hosts.values():
            if host.host_id is not None:
                oned.add_host(host.name, host.host_id, {"LS_DEVICE_DIR": str(host.device_dir),
                                                        "DATASTORE_LOCATION": host.ds_location})
        home = root / "var" / "lib" / "one"
        home.mkdir(parents=True)
        auth_file = root / "one_auth"
        auth_file.write_text(ONE_AUTH + "\n")
        conf = root / "one-tweaks.conf"
        (root / "staging").mkdir()
        settings = {
            "LS_CONTROLLERS": f"127.0.0.1:{sim.port}",
            "LS_FRONTEND_NODE": FE,
            "LS_DEVICE_DIR": str(fe.device_dir),
            "SSH_COMMAND": shlex.join(sshd.ssh_command),
            "LOCK_DIR": str(root / "locks"),
            "STAGING_DIR": str(root / "staging"),
            "DELAY_DELETE": "48h",
        }
        _write_conf(conf, settings)
        path = os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"
        env = {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8", "ONE_XMLRPC": oned.url,
               "ONE_AUTH": str(auth_file), "ONE_TWEAKS_CONF": str(conf), "PYTHONDONTWRITEBYTECODE": "1",
               **storage_env.libvirt_log_env(root)}
        yield LinstorCloud(root=root, sim=sim, oned=oned, sshd=sshd, hosts=hosts,  # type: ignore[arg-type]
                           conf=conf, storpool_conf=root / "none", auth_file=auth_file, home=home, env=env,
                           settings=settings, ssh_log_start=sshd.log_offset())
    finally:
        oned.stop()
        sim.stop()
    assert not _our_loops(root), "loop devices left attached"


# --- helpers --------------------------------------------------------------------------------------


def ok(proc: subprocess.CompletedProcess[bytes]) -> subprocess.CompletedProcess[bytes]:
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr.decode(errors='replace')}"
    return proc


def failed(proc: subprocess.CompletedProcess[bytes]) -> str:
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 1, f"exit {proc.returncode}, stderr {err!r}"
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, lines
    return lines[0]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


write = write_at  # the name the driver tests use


def read(path: str | Path, length: int, offset: int = 0) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(length)


def calls(cloud: LinstorCloud, since: int) -> list[str]:
    return [c.name for c in cloud.sim.calls[since:] if c.name != "controller_version"]


def vm_b64(cloud: LinstorCloud, vm_id: int = VM) -> bytes:
    return base64.b64encode(etree.tostring(cloud.oned.served("vm", vm_id)))


def set_ds(cloud: LinstorCloud, ds_id: int, **attrs: str) -> None:
    """Change attributes of a datastore's TEMPLATE in the oned double."""
    tpl = cloud.oned.datastore(ds_id).find("TEMPLATE")
    assert tpl is not None
    for key, value in attrs.items():
        el = tpl.find(key)
        if el is None:
            el = etree.SubElement(tpl, key)
        el.text = value


def context_file(cloud: LinstorCloud, vm_id: int = VM) -> Path:
    path = cloud.home / "vms" / str(vm_id) / "context.sh"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# Context variables generated by OpenNebula\nVMID='{vm_id}'\n")
    return path
