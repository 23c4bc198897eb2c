"""The ``linstor_un`` DS_MAD and TM_MAD actions (datastore/linstor_un/*, tm/linstor_un/*), run as
oned runs them, against the LINSTOR controller simulator (tests/sim/linstor.py; NOT LINSTOR:
one sparse file per volume, one loop device that every node holding the resource sees through
its own ``by-res`` link).

The world (``lcloud``): storage nodes stor1 and stor2 (LVM-thin pool ``thin``) that are no
OpenNebula hosts; compute nodes node1 and node2 and the front-end one-fe, LINSTOR satellites
without any storage pool (diskless only), each with its own ``by-res`` directory. node1,
node2 and one-fe are reached through the real test sshd (tests/storage_env.py), oned is the
XML-RPC test double (tests/sim/oned.py). Datastores, with addon-linstor_un's attributes:

- 100 (image): DS_MAD/TM_MAD linstor_un, AUTO_PLACE 2, STORAGE_POOL thin, BRIDGE_LIST node1;
- 101 (system): TM_MAD linstor_un, NODE_LIST "stor1 stor2", STORAGE_POOL thin,
  CHECKPOINT_AUTO_PLACE 1, BRIDGE_LIST "node1 node2".

Data is checked by checksum through the devices the actions link.
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

import linstor
import pytest
import storage_env
from lxml import etree
from sim import oned as oned_sim
from sim.linstor import LinstorSim
from sim.oned import OnedDouble
from storage_env import ONE_AUTH, REPO, Cloud, Sshd, _write_conf, sshd

FIXTURES = (sshd,)
MiB = 2**20
VM = 42
FE = "one-fe"
IMAGE_DS, SYSTEM_DS = 100, 101
DRIVER = "linstor_un"
IMAGE_ATTRS = {"BRIDGE_LIST": "node1", "AUTO_PLACE": "2", "STORAGE_POOL": "thin"}
SYSTEM_ATTRS = {"BRIDGE_LIST": "node1 node2", "NODE_LIST": "stor1 stor2", "STORAGE_POOL": "thin",
                "CHECKPOINT_AUTO_PLACE": "1"}
TWO_PRIMARIES = "DrbdOptions/Net/allow-two-primaries"


def by_res(name: str) -> str:
    return f"/dev/drbd/by-res/{name}/0"


# --- the world ------------------------------------------------------------------------------------


@dataclass
class LinstorCloud(Cloud):
    """storage_env's Cloud with the LINSTOR simulator as ``sim`` and the linstor_un executables."""

    def run_tm(self, action: str, *args: str, stdin: bytes = b"", timeout: float = 120,
               remotes: Path | None = None) -> subprocess.CompletedProcess[bytes]:
        return self._run((remotes or REPO) / "tm" / DRIVER / action, list(args), stdin, timeout)

    def run_ds(self, action: str, payload: bytes | etree._Element, obj_id: int | str, *, form: str = "6.8",
               b64: bool = True, timeout: float = 120,
               remotes: Path | None = None) -> subprocess.CompletedProcess[bytes]:
        raw = etree.tostring(payload) if isinstance(payload, etree._Element) else payload
        encoded = base64.b64encode(raw) if b64 else raw
        argv, stdin = ([str(obj_id)], encoded) if form == "6.8" else (
            [encoded.decode(), str(obj_id)], b"")
        return self._run((remotes or REPO) / "datastore" / DRIVER / action, argv, stdin, timeout)

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
               "ONE_AUTH": str(auth_file), "ONE_TWEAKS_CONF": str(conf), "PYTHONDONTWRITEBYTECODE": "1"}
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


def write(path: str | Path, data: bytes, offset: int = 0) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


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


def images(cloud: LinstorCloud) -> tuple[bytes, bytes]:
    """Image 7 (non-persistent) and image 8 (persistent), 64 MB with 1 MiB of random data."""
    data7, data8 = os.urandom(MiB), os.urandom(MiB)
    cloud.make_image(7, size_mb=64)
    cloud.make_image(8, size_mb=64, persistent=True)
    cloud.make_volume("one-image-7", 64, data=data7, tags={"virt": "one"})
    cloud.make_volume("one-image-8", 64, data=data8, tags={"virt": "one"})
    return data7, data8


def prolog(cloud: LinstorCloud, vm_id: int = VM, host: str = "node1") -> None:
    """vm-42's deploy transfer lines (clone of 7, ln of 8, mkimage, context) on ``host``."""
    vid = str(vm_id)
    ok(cloud.run_tm("clone", f"{FE}:{by_res('one-image-7')}", cloud.tm_path(host, vm_id, 0), vid, "100"))
    ok(cloud.run_tm("ln", f"{FE}:{by_res('one-image-8')}", cloud.tm_path(host, vm_id, 1), vid, "100"))
    ok(cloud.run_tm("mkimage", "32", "raw", cloud.tm_path(host, vm_id, 2), vid, "101"))
    ok(cloud.run_tm("context", str(context_file(cloud, vm_id)), cloud.tm_path(host, vm_id, 3), vid, "101"))


def deployed(cloud: LinstorCloud, vm_id: int = VM, host: str = "node1") -> tuple[bytes, bytes]:
    data = images(cloud)
    cloud.make_vm(vm_id, host=host)
    prolog(cloud, vm_id, host)
    return data


VM_VOLUMES = ("one-vm-42-disk-0", "one-image-8", "one-vm-42-disk-2", "one-vm-42-disk-3")
STORAGE = {"stor1": False, "stor2": False}


# --- images -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qcow2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A qcow2 image of random data with a hole and an unaligned tail, and its raw content."""
    d = tmp_path_factory.mktemp("linstor-images")
    data = os.urandom(5 * MiB) + bytes(2 * MiB) + os.urandom(4096)
    (d / "disk.raw").write_bytes(data)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(d / "disk.raw"), str(d / "disk.qcow2")],
                   check=True, capture_output=True)
    return d / "disk.qcow2", data


def image_doc(cloud: LinstorCloud, image_id: int, **kw: Any) -> etree._Element:
    return oned_sim.image_document(image_id, ds_id=IMAGE_DS, ds_name="linstor-images", **kw)


def test_cp_imports_qcow2_on_the_bridge_into_the_image_resource(lcloud: LinstorCloud,
                                                               qcow2: tuple[Path, bytes]) -> None:
    path, data = qcow2
    # in the image datastore's own filesystem tree (SAFE_DIRS is the test's tmp dir)
    local = lcloud.root.parent / "import.qcow2"
    local.write_bytes(path.read_bytes())
    md5 = hashlib.md5(local.read_bytes()).hexdigest()
    img = image_doc(lcloud, 9, path=str(local), fmt="qcow2", template={"MD5": md5})
    mark, ssh_mark = len(lcloud.sim.calls), lcloud.sshd.log_offset()
    out = ok(lcloud.run_ds("cp", lcloud.ds_message(img), 9)).stdout.decode()
    assert out == f"{by_res('one-image-9')} raw\n"  # addon-linstor_un's SOURCE
    assert calls(lcloud, mark)[:4] == ["resource_dfn_list", "resource_dfn_create", "resource_dfn_modify",
                                       "volume_dfn_create"]
    rd = lcloud.inv()["one-image-9"]
    assert lcloud.placed("one-image-9") == STORAGE  # AUTO_PLACE 2 on "thin"; node1's attachment is gone
    assert rd["props"] == {"Aux/one/virt": "one", "Aux/one/nloc": "one"}  # complete: no incomplete mark
    assert rd["volumes"][0]["size_kib"] * 1024 == 8 * MiB  # qcow2's virtual size, whole MiB
    assert Cloud.sha256(lcloud.sim.device_path("one-image-9", "stor1"), len(data)) == sha(data)
    assert read(lcloud.sim.device_path("one-image-9", "stor2"), 8 * MiB - len(data), len(data)) == bytes(
        8 * MiB - len(data))
    converted = [cmd for host, cmd in lcloud.sshd.commands(ssh_mark) if "qemu-img convert" in cmd]
    assert converted and all(host == "node1" for host, cmd in lcloud.sshd.commands(ssh_mark) if "qemu-img" in cmd)
    # never overwritten; an interrupted import's resource (marked incomplete) is replaced
    assert "already exists" in failed(lcloud.run_ds("cp", lcloud.ds_message(img), 9))
    with lcloud.lin() as lin:
        lin.resource_dfn_delete("one-image-9")
    lcloud.make_volume("one-image-9", 4, data=b"junk", tags={"incomplete": "1"})
    ok(lcloud.run_ds("cp", lcloud.ds_message(img), 9))
    assert Cloud.sha256(lcloud.sim.device_path("one-image-9", "stor1"), len(data)) == sha(data)
    assert "Aux/one/incomplete" not in lcloud.props("one-image-9")
    # a failure (bad checksum) leaves nothing
    bad = image_doc(lcloud, 10, path=str(local), fmt="qcow2", template={"MD5": "0" * 32})
    assert "MD5" in failed(lcloud.run_ds("cp", lcloud.ds_message(bad), 10))
    assert set(lcloud.inv()) == {"one-image-9"}


def test_mkfs_datablock_file_system_and_save_as(lcloud: LinstorCloud) -> None:
    img = image_doc(lcloud, 11, size_mb=16, fmt="raw")
    assert ok(lcloud.run_ds("mkfs", lcloud.ds_message(img), 11)).stdout.decode().strip() == by_res("one-image-11")
    assert lcloud.placed("one-image-11") == STORAGE
    img = image_doc(lcloud, 12, size_mb=32, fmt="raw", fs="ext4")
    ok(lcloud.run_ds("mkfs", lcloud.ds_message(img), 12))
    probe = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", str(lcloud.sim.device_path("one-image-12",
                                                                                                    "stor1"))],
                           capture_output=True, text=True, check=False)
    assert probe.stdout.strip() == "ext4" and lcloud.placed("one-image-12") == STORAGE
    img = image_doc(lcloud, 13, size_mb=32, fmt="save_as")
    assert ok(lcloud.run_ds("mkfs", lcloud.ds_message(img), 13)).stdout.decode().strip() == by_res("one-image-13")
    assert "one-image-13" not in lcloud.inv()


@pytest.mark.parametrize("mode", ["copy", "snapshot"])
def test_ds_clone_rm_and_monitor(lcloud: LinstorCloud, mode: str) -> None:
    data7, _ = images(lcloud)
    set_ds(lcloud, IMAGE_DS, CLONE_MODE=mode)
    img = image_doc(lcloud, 20, path=by_res("one-image-7"), size_mb=64)
    out = ok(lcloud.run_ds("clone", lcloud.ds_message(img), 20)).stdout.decode()
    assert out == f"{by_res('one-image-20')} raw\n"
    assert Cloud.sha256(lcloud.sim.device_path("one-image-20", "stor2"), MiB) == sha(data7)
    assert lcloud.placed("one-image-20") == STORAGE and lcloud.placed("one-image-7") == STORAGE
    assert lcloud.snaps("one-image-7") == (["one-image-20"] if mode == "snapshot" else [])
    # rm: the image with its snapshots (and the base snapshot of a snapshot-mode clone)
    with lcloud.lin() as lin:
        lin.snapshot_create([], "one-image-20", "snapshot-0")
    ok(lcloud.run_ds("rm", lcloud.ds_message(img), 20))
    assert "one-image-20" not in lcloud.inv() and lcloud.snaps("one-image-7") == []
    ok(lcloud.run_ds("rm", lcloud.ds_message(img), 20))  # again: nothing left to do
    # monitor: the STORAGE_POOL pools over AUTO_PLACE replicas
    ds = lcloud.ds_message(None)
    out = ok(lcloud.run_ds("monitor", ds, IMAGE_DS)).stdout.decode()
    values = dict(line.split("=") for line in out.split())
    nodes = lcloud.sim.inventory()["nodes"]
    total = sum(nodes[n]["pools"]["thin"]["capacity_kib"] for n in ("stor1", "stor2")) // 1024 // 2
    free = sum(nodes[n]["pools"]["thin"]["free_kib"] for n in ("stor1", "stor2")) * 1024 // 2 // MiB
    assert int(values["TOTAL_MB"]) == total and int(values["FREE_MB"]) == free
    assert int(values["USED_MB"]) == total - free > 0


def test_ds_snapshots_revert_older_than_latest_delete_flatten(lcloud: LinstorCloud) -> None:
    images(lcloud)
    stor = lcloud.sim.device_path("one-image-8", "stor1")
    for n, text in enumerate((b"zero", b"one!", b"two!")):
        write(stor, text)
        with lcloud.lin() as lin:
            lin.snapshot_create([], "one-image-8", f"snapshot-{n}")
    write(stor, b"now!")
    img = lcloud.oned.image(8)
    img.find("TARGET_SNAPSHOT").text = "0"  # type: ignore[union-attr]
    ok(lcloud.run_ds("snap_revert", lcloud.ds_message(8), 8))  # not the latest: restore + copy back
    assert read(stor, 4) == b"zero" and lcloud.snaps("one-image-8") == ["snapshot-0", "snapshot-1", "snapshot-2"]
    assert set(lcloud.inv()) == {"one-image-7", "one-image-8"}
    img.find("TARGET_SNAPSHOT").text = "2"  # type: ignore[union-attr]
    ok(lcloud.run_ds("snap_revert", lcloud.ds_message(8), 8))  # the latest: rollback
    assert read(stor, 4) == b"two!"
    ok(lcloud.run_ds("snap_delete", lcloud.ds_message(8), 8))
    assert lcloud.snaps("one-image-8") == ["snapshot-0", "snapshot-1"]
    img.find("TARGET_SNAPSHOT").text = "0"  # type: ignore[union-attr]
    ok(lcloud.run_ds("snap_flatten", lcloud.ds_message(8), 8))
    assert read(stor, 4) == b"zero" and lcloud.snaps("one-image-8") == []


# --- TM: provisioning ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["copy", "snapshot"])
def test_clone_makes_the_vm_disk_and_a_diskless_attachment(lcloud: LinstorCloud, mode: str) -> None:
    data7, _ = images(lcloud)
    set_ds(lcloud, IMAGE_DS, CLONE_MODE=mode)
    lcloud.make_vm(VM, [{"image": 7, "size": 128}], context=False)
    name = "one-vm-42-disk-0"
    # what a clone killed half-way left (marked incomplete) is made again
    lcloud.make_volume(name, 4, data=b"half", tags={"incomplete": "1", "VM_ID": "42", "DISK_ID": "0"})
    ok(lcloud.run_tm("clone", f"{FE}:{by_res('one-image-7')}", lcloud.tm_path("node1", VM, 0), "42", "100"))
    assert lcloud.placed(name) == {**STORAGE, "node1": True}  # diskless on the compute node
    assert lcloud.props(name) == {"Aux/one/virt": "one", "Aux/one/nloc": "one", "Aux/one/VM_ID": "42",
                                  "Aux/one/type": "NPERS", "Aux/one/DISK_ID": "0"}
    assert lcloud.inv()[name]["volumes"][0]["size_kib"] * 1024 == 128 * MiB
    assert lcloud.link("node1", VM, 0) == lcloud.dev("node1", name)
    disk = lcloud.disk_path("node1", VM, 0)
    assert Cloud.sha256(disk, MiB) == sha(data7) and read(disk, MiB, 64 * MiB) == bytes(MiB)
    assert lcloud.snaps("one-image-7") == ([name] if mode == "snapshot" else [])
    assert lcloud.placed("one-image-7") == STORAGE  # the copy's attachments on the bridge are gone
    # a re-run changes nothing
    before = lcloud.inv()
    ok(lcloud.run_tm("clone", f"{FE}:{by_res('one-image-7')}", lcloud.tm_path("node1", VM, 0), "42", "100"))
    assert lcloud.inv().keys() == before.keys() and lcloud.placed(name) == {**STORAGE, "node1": True}
    # delete: at once (LINSTOR has no self-expiring snapshots), with the clone's base snapshot
    ok(lcloud.run_tm("delete", lcloud.tm_path("node1", VM, 0), "42", "100"))
    assert name not in lcloud.inv() and lcloud.snaps("one-image-7") == [] and lcloud.link("node1", VM, 0) is None


def test_ln_mvds_mkimage_mkswap_context_and_delete(lcloud: LinstorCloud) -> None:
    _, data8 = images(lcloud)
    disks = [{"image": 8, "persistent": True}, {"volatile": "fs", "size": 32, "fs": "ext4"},
             {"volatile": "swap", "size": 16}]
    lcloud.make_vm(VM, disks)
    ok(lcloud.run_tm("ln", f"{FE}:{by_res('one-image-8')}", lcloud.tm_path("node1", VM, 0), "42", "100"))
    assert lcloud.placed("one-image-8") == {**STORAGE, "node1": True}
    assert Cloud.sha256(lcloud.disk_path("node1", VM, 0), MiB) == sha(data8)
    ok(lcloud.run_tm("mkimage", "32", "raw", lcloud.tm_path("node1", VM, 1), "42", "101"))
    ok(lcloud.run_tm("mkswap", "16", lcloud.tm_path("node1", VM, 2), "42", "101"))
    for disk_id, kind in ((1, "ext4"), (2, "swap")):
        name = f"one-vm-42-disk-{disk_id}"
        assert lcloud.placed(name) == {**STORAGE, "node1": True}  # NODE_LIST of the system datastore
        probe = lcloud.ssh("node1", "blkid", "-p", "-o", "value", "-s", "TYPE", str(lcloud.disk_path("node1", VM,
                                                                                                     disk_id)))
        assert probe.stdout.decode().strip() == kind
    ok(lcloud.run_tm("context", str(context_file(lcloud)), lcloud.tm_path("node1", VM, 3), "42", "101"))
    assert lcloud.placed("one-vm-42-disk-3") == {**STORAGE, "node1": True}
    assert lcloud.props("one-vm-42-disk-3")["Aux/one/type"] == "CNTXT"
    assert read(lcloud.disk_path("node1", VM, 3), 5, 32769) == b"CD001"  # an ISO 9660 image

    # terminate: MVDS (persistent), DELETE (volatile), DELETE of the VM directory
    ok(lcloud.run_tm("mvds", lcloud.tm_path("node1", VM, 0), by_res("one-image-8"), "42", "100"))
    assert lcloud.placed("one-image-8") == STORAGE and lcloud.link("node1", VM, 0) is None
    for disk_id in (1, 2):
        ok(lcloud.run_tm("delete", lcloud.tm_path("node1", VM, disk_id), "42", "101"))
    with lcloud.lin() as lin:  # a checkpoint left behind goes with the VM directory
        lin.resource_dfn_create("one-vm-42-checkpoint")
    ok(lcloud.run_tm("delete", lcloud.tm_path("node1", VM), "42", "101"))
    assert set(lcloud.inv()) == {"one-image-7", "one-image-8"}
    assert not lcloud.vm_dir("node1", VM).exists()


def test_cpds_resize_and_disk_snapshots(lcloud: LinstorCloud) -> None:
    deployed(lcloud)
    disk = lcloud.disk_path("node1", VM, 0)
    name = "one-vm-42-disk-0"
    for snap_id, text in enumerate((b"first", b"secnd", b"third")):
        write(disk, text)
        ok(lcloud.run_tm("snap_create", lcloud.tm_path("node1", VM, 0), str(snap_id), "42", "100"))
    write(disk, b"fourt")
    assert lcloud.snaps(name) == ["snapshot-0", "snapshot-1", "snapshot-2"]
    assert lcloud.inv()[name]["snapshots"]["snapshot-1"]  # addon-linstor_un's names
    # revert to an older snapshot than the latest: restored into a temporary and copied back
    mark = len(lcloud.sim.calls)
    ok(lcloud.run_tm("snap_revert", lcloud.tm_path("node1", VM, 0), "0", "42", "100"))
    assert "snapshot_rollback" not in calls(lcloud, mark)
    assert read(disk, 5) == b"first" and lcloud.snaps(name) == ["snapshot-0", "snapshot-1", "snapshot-2"]
    assert lcloud.placed(name) == {**STORAGE, "node1": True}  # attached again; temporaries gone
    assert not any(n.startswith(f"{name}-") for n in lcloud.inv())
    mark = len(lcloud.sim.calls)
    ok(lcloud.run_tm("snap_revert", lcloud.tm_path("node1", VM, 0), "2", "42", "100"))
    assert "snapshot_rollback" in calls(lcloud, mark) and read(disk, 5) == b"third"
    ok(lcloud.run_tm("snap_delete", lcloud.tm_path("node1", VM, 0), "1", "42", "100"))
    ok(lcloud.run_tm("snap_delete", lcloud.tm_path("node1", VM, 0), "1", "42", "100"))
    assert lcloud.snaps(name) == ["snapshot-0", "snapshot-2"]
    # cpds: disk-saveas into the SOURCE ds mkfs save_as printed, from the disk and from a snapshot
    ok(lcloud.run_tm("cpds", lcloud.tm_path("node1", VM, 0), by_res("one-image-30"), "-1", "42", "100"))
    ok(lcloud.run_tm("cpds", lcloud.tm_path("node1", VM, 0), by_res("one-image-31"), "0", "42", "100"))
    assert read(lcloud.sim.device_path("one-image-30", "stor1"), 5) == b"third"
    assert read(lcloud.sim.device_path("one-image-31", "stor1"), 5) == b"first"
    assert lcloud.props("one-image-30")["Aux/one/copyof"] == name
    # resize: grows the volume and the device on the host
    ok(lcloud.run_tm("resize", lcloud.tm_path("node1", VM, 0), "96", "42", "100"))
    assert lcloud.inv()[name]["volumes"][0]["size_kib"] == 96 * 1024
    with open(disk, "rb") as fh:
        assert fh.seek(0, os.SEEK_END) == 96 * MiB
    ok(lcloud.run_tm("resize", lcloud.tm_path("node1", VM, 0), "96", "42", "100"))  # again: nothing to do
    assert "never shrunk" in failed(lcloud.run_tm("resize", lcloud.tm_path("node1", VM, 0), "32", "42", "100"))


# --- TM: moving VMs -------------------------------------------------------------------------------


def test_mv_between_hosts_and_to_the_front_end(lcloud: LinstorCloud) -> None:
    data7, _ = deployed(lcloud)
    for disk_id in (0, 1, 2):
        ds = "100" if disk_id < 2 else "101"
        ok(lcloud.run_tm("mv", lcloud.tm_path("node1", VM, disk_id), lcloud.tm_path("node2", VM, disk_id), "42", ds))
    ok(lcloud.run_tm("mv", lcloud.tm_path("node1", VM), lcloud.tm_path("node2", VM), "42", "101"))
    for disk_id, name in enumerate(VM_VOLUMES):
        assert lcloud.placed(name) == {**STORAGE, "node2": True}, name
        assert lcloud.link("node2", VM, disk_id) == lcloud.dev("node2", name)
    assert Cloud.sha256(lcloud.disk_path("node2", VM, 0), MiB) == sha(data7)
    # stop: the front-end only lets go
    for disk_id in (0, 1, 2):
        ok(lcloud.run_tm("mv", lcloud.tm_path("node2", VM, disk_id), lcloud.tm_path(FE, VM, disk_id), "42", "100"))
    ok(lcloud.run_tm("mv", lcloud.tm_path("node2", VM), lcloud.tm_path(FE, VM), "42", "101"))
    for name in VM_VOLUMES:
        assert lcloud.placed(name) == STORAGE, name


def test_live_migration_allows_two_primaries_during_the_move(lcloud: LinstorCloud) -> None:
    deployed(lcloud)
    (lcloud.vm_dir("node1", VM) / "deployment.0").write_text("<domain/>")
    args = ("node1", "node2", f"{lcloud.hosts['node2'].ds_location}/101/42", "42", "101")
    ok(lcloud.run_tm("premigrate", *args, stdin=vm_b64(lcloud)))
    for disk_id, name in enumerate(VM_VOLUMES):
        assert lcloud.placed(name) == {**STORAGE, "node1": True, "node2": True}, name
        assert lcloud.props(name)[TWO_PRIMARIES] == "yes", name
        assert lcloud.link("node2", VM, disk_id) == lcloud.dev("node2", name)
    assert (lcloud.vm_dir("node2", VM) / "deployment.0").read_text() == "<domain/>"
    ok(lcloud.run_tm("postmigrate", *args, stdin=vm_b64(lcloud)))
    for name in VM_VOLUMES:
        assert lcloud.placed(name) == {**STORAGE, "node2": True}, name
        assert TWO_PRIMARIES not in lcloud.props(name), name
    assert not lcloud.vm_dir("node1", VM).exists()
    # a failed migration back: the destination lets go, the flag goes too
    back = ("node2", "node1", f"{lcloud.hosts['node1'].ds_location}/101/42", "42", "101")
    ok(lcloud.run_tm("premigrate", *back, stdin=vm_b64(lcloud)))
    assert all(lcloud.props(n)[TWO_PRIMARIES] == "yes" for n in VM_VOLUMES)
    ok(lcloud.run_tm("failmigrate", *back, stdin=vm_b64(lcloud)))
    for name in VM_VOLUMES:
        assert lcloud.placed(name) == {**STORAGE, "node2": True} and TWO_PRIMARIES not in lcloud.props(name)


# --- TM: monitor ----------------------------------------------------------------------------------


def test_monitor_reports_pool_space_and_vm_disk_sizes(lcloud: LinstorCloud) -> None:
    deployed(lcloud)
    write(lcloud.disk_path("node1", VM, 0), os.urandom(3 * MiB))
    ok(lcloud.run_tm("snap_create", lcloud.tm_path("node1", VM, 0), "0", "42", "100"))
    msg = lcloud.ds_message(None, SYSTEM_DS, extra={"DATASTORE_LOCATION": "/var/lib/one//datastores",
                                                    "MONITOR_VM_DISKS": 1})
    mark = len(lcloud.sim.calls)
    out = ok(lcloud.run_tm("monitor", "101", stdin=base64.b64encode(etree.tostring(msg)))).stdout.decode()
    assert len(calls(lcloud, mark)) == 4  # pools + definitions + volumes + snapshots, however many
    totals = dict(line.split("=") for line in out.splitlines() if not line.startswith("VM = "))
    assert set(totals) == {"USED_MB", "TOTAL_MB", "FREE_MB"} and int(totals["TOTAL_MB"]) > 0
    vm_lines = [line for line in out.splitlines() if line.startswith("VM = ")]
    assert len(vm_lines) == 1 and vm_lines[0].startswith("VM = [ ID = 42, MONITOR = ")
    items = base64.b64decode(vm_lines[0].split('MONITOR = "')[1].rstrip('" ]')).decode().splitlines()
    sizes = {item.split(",")[0] if item.startswith("DISK") else item.rsplit(",", 1)[0]: item for item in items}
    assert {key for key in sizes} == {"DISK_SIZE=[ID=0", "DISK_SIZE=[ID=1", "DISK_SIZE=[ID=2", "DISK_SIZE=[ID=3",
                                      "SNAPSHOT_SIZE=[ID=0,DISK_ID=0"}
    disk0 = int(sizes["DISK_SIZE=[ID=0"].split("SIZE=")[2].rstrip("]"))
    assert 3 <= disk0 <= 64


# --- entry points ---------------------------------------------------------------------------------


def test_every_storpool_action_has_a_linstor_un_entry_point() -> None:
    for kind in ("datastore", "tm"):
        ours = sorted(p.name for p in (REPO / kind / DRIVER).iterdir())
        assert ours == sorted(p.name for p in (REPO / kind / "storpool").iterdir())
        for name in ours:
            path = REPO / kind / DRIVER / name
            assert os.access(path, os.X_OK), path
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            assert len(lines) == 3 and lines[0] == "#!/usr/bin/env python3", path


def test_bad_source_fails_with_one_line_and_changes_nothing(lcloud: LinstorCloud) -> None:
    images(lcloud)
    lcloud.make_vm(VM, [{"image": 7}], context=False)
    before = lcloud.inv()
    for source in (f"{FE}:/dev/drbd/by-res/one-image-7;rm/0", f"{FE}:/etc/passwd", f"{FE}:one image"):
        assert "not acceptable" in failed(lcloud.run_tm("clone", source, lcloud.tm_path("node1", VM, 0), "42", "100"))
    assert lcloud.inv() == before and lcloud.link("node1", VM, 0) is None


# --- TM: checkpoint (the save/restore overrides' storage half) ------------------------------------


def _vmm_message(cloud: LinstorCloud, host: str, checkpoint: str) -> bytes:
    """VMM_DRIVER_ACTION_DATA of SAVE/RESTORE (vmm-save.xml's layout), base64."""
    root = etree.Element("VMM_DRIVER_ACTION_DATA")
    for tag, value in (("HOST", host), ("DEPLOY_ID", "one-42"), ("CHECKPOINT_FILE", checkpoint)):
        etree.SubElement(root, tag).text = value
    root.append(cloud.oned.served("vm", VM))
    root.append(cloud.oned.served("datastore", SYSTEM_DS))
    return base64.b64encode(etree.tostring(root))


def test_checkpoint_volume_uses_checkpoint_auto_place(lcloud: LinstorCloud) -> None:
    lcloud.make_vm(VM, [], context=False, template={"MEMORY": 64})
    name = "one-vm-42-checkpoint"
    file1, file2 = (str(lcloud.vm_dir(h, VM) / "checkpoint") for h in ("node1", "node2"))
    saved = ["one-42", file1, "node1", "42", "node1"]
    ok(lcloud.run_tm("presave", *saved, stdin=_vmm_message(lcloud, "node1", file1)))
    where = lcloud.placed(name)
    assert len([n for n, diskless in where.items() if not diskless]) == 1  # CHECKPOINT_AUTO_PLACE 1
    assert where["node1"] is True and os.readlink(file1) == lcloud.dev("node1", name)
    assert lcloud.inv()[name]["volumes"][0]["size_kib"] * 1024 == (71 + 8) * MiB  # MEMORY * 1.1 + header
    ok(lcloud.run_tm("postsave", *saved, stdin=_vmm_message(lcloud, "node1", file1)))
    assert "node1" not in lcloud.placed(name) and not os.path.lexists(file1)
    restored = [file2, "node2", "one-42", "42", "node2"]
    ok(lcloud.run_tm("prerestore", *restored, stdin=_vmm_message(lcloud, "node2", file2)))
    assert lcloud.placed(name)["node2"] is True and os.readlink(file2) == lcloud.dev("node2", name)
    ok(lcloud.run_tm("postrestore", *restored, stdin=_vmm_message(lcloud, "node2", file2)))
    assert name not in lcloud.inv() and not os.path.lexists(file2)


def test_backup_reads_one_group_snapshot_through_temporary_resources(lcloud: LinstorCloud) -> None:
    data7, data8 = deployed(lcloud)
    args = [lcloud.tm_path("node1", VM), "0:1", "one-42", "-", "42", "101"]
    vm = etree.tostring(lcloud.oned.served("vm", VM))
    mark = len(lcloud.sim.calls)
    ok(lcloud.run_tm("prebackup", *args, stdin=vm))
    assert calls(lcloud, mark).count("snapshot_create_multi") == 1
    backup = lcloud.vm_dir("node1", VM) / "backup"
    for disk_id, data in ((0, data7), (1, data8)):
        raw = lcloud.root / f"back-{disk_id}.raw"
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(backup / f"disk.{disk_id}.0"), str(raw)],
                       check=True, capture_output=True)
        assert hashlib.sha256(raw.read_bytes()[:MiB]).hexdigest() == sha(data)
    snaps = {n: lcloud.snaps(n) for n in ("one-vm-42-disk-0", "one-image-8")}
    assert all(len(s) == 1 and s[0].startswith("backup-") for s in snaps.values())
    assert set(lcloud.inv()) == {"one-image-7", *VM_VOLUMES}  # the readers are gone
    ok(lcloud.run_tm("postbackup", *args, stdin=vm))
    assert all(lcloud.snaps(n) == [] for n in snaps) and not backup.exists()


def test_export_reads_a_snapshot_and_leaves_no_linstor_object(lcloud: LinstorCloud) -> None:
    data7, _ = images(lcloud)
    out = ok(lcloud.run_ds("export", lcloud.ds_message(7), 5)).stdout.decode()
    info = etree.fromstring(out)
    source = info.findtext("IMPORT_SOURCE") or ""
    assert source.startswith("ssh://node1:") and info.findtext("FORMAT") == "qcow2"
    path = source.split(":", 2)[2]
    raw = lcloud.root / "export.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", path, str(raw)], check=True, capture_output=True)
    assert hashlib.sha256(raw.read_bytes()[:MiB]).hexdigest() == sha(data7)
    assert set(lcloud.inv()) == {"one-image-7", "one-image-8"} and lcloud.snaps("one-image-7") == []
    assert lcloud.placed("one-image-7") == STORAGE
