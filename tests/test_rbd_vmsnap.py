"""VM snapshots on rbd as RBD group snapshots, on the live Ceph cluster: the VMM actions
``snapshot_{create,revert,delete}-tweaks`` called as oned calls a local override, for a VM
whose disks (a clone of an image in pool ``one``, a volatile disk in ``one-sys``) are RBD
images. Data is written and read through librbd; what the driver made is checked with the
``rbd`` CLI (groups, group snapshots, every snapshot namespace, image metadata). The revert
runs on a real paused domain whose disks are those RBD images (libvirtd + qemu, a libvirt
``ceph`` secret), as the stock deploy starts it.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import drivers
import pytest
from ceph_env import CephCluster, ceph
from livevm import kvm_available, libvirtd, virsh
from lxml import etree
from rbd_env import IMAGE_DS, POOL, SYS_POOL, SYSTEM_DS, RbdCloud, ok, one_line, rbd_cloud
from storage_env import sshd
from test_rbd_live import ceph_secret

from datastore.backends.rbd import Rbd
from onelib.errors import DriverError

FIXTURES = (ceph, rbd_cloud, sshd, libvirtd, ceph_secret)
MiB = 2**20
VM = 42
DISKS = (f"{POOL}/one-7-{VM}-0", f"{SYS_POOL}/one-sys-{VM}-1")
GROUP = f"{POOL}/one-vm-{VM}"
HID = re.compile(r"snap-([0-9]+)-([0-9]+)")


# --- helpers -------------------------------------------------------------------------------------

class Data:
    """Bytes in and out of RBD images through librbd (client.admin of the test cluster)."""

    def __init__(self, cluster: CephCluster) -> None:
        import rados
        import rbd

        self.rbd = rbd
        self.cluster = rados.Rados(conffile=str(cluster.conf), conf={"keyring": str(cluster.keyring)})
        self.cluster.connect(timeout=30)

    def write(self, name: str, data: bytes, offset: int = 0) -> None:
        pool, image = name.split("/")
        with self.cluster.open_ioctx(pool) as io, self.rbd.Image(io, image) as img:
            img.write(data, offset)
            img.flush()

    def digest(self, name: str) -> str:
        pool, image = name.split("/")
        with self.cluster.open_ioctx(pool) as io, self.rbd.Image(io, image, read_only=True) as img:
            return hashlib.sha256(img.read(0, img.size())).hexdigest()

    def close(self) -> None:
        self.cluster.shutdown()


@pytest.fixture
def data(ceph: CephCluster) -> Iterator[Data]:
    made = Data(ceph)
    yield made
    made.close()


def backend(cloud: RbdCloud) -> Rbd:
    return Rbd(pool=POOL, user="admin", conf=str(cloud.ceph.conf), timeout=8)


def make_vm(cloud: RbdCloud, **template: str) -> None:
    """VM 42: disk 0 a clone of image 7 (``one/one-7-42-0``), disk 1 a volatile disk
    (``one-sys/one-sys-42-1``), both 8 MiB RBD images made with the CLI."""
    cloud.make_image(7, size_mb=8)
    cloud.make_vm(VM, disks=[{"image": 7, "size": 8}, {"volatile": "fs", "size": 8}])
    vm = cloud.oned.vm(VM)
    user = vm.find("USER_TEMPLATE")
    for key, value in template.items():
        etree.SubElement(user, key).text = value
    for name in DISKS:
        cloud.ceph.cli("rbd", "create", "--size", "8", name)


def message(cloud: RbdCloud, deploy_id: str = "") -> bytes:
    root = etree.Element("VMM_DRIVER_ACTION_DATA")
    etree.SubElement(root, "HOST").text = "node1"
    etree.SubElement(root, "MIGR_HOST")
    etree.SubElement(root, "DEPLOY_ID").text = deploy_id
    root.append(cloud.oned.served("vm", VM))
    root.append(cloud.oned.served("datastore", SYSTEM_DS))
    return base64.b64encode(etree.tostring(root))


def run_vmm(cloud: RbdCloud, action: str, deploy_id: str, snap: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, str(drivers.KVM / f"{action}-tweaks"), deploy_id, snap, str(VM), "node1"],
                          input=message(cloud, deploy_id), capture_output=True, env=cloud.env, cwd=cloud.home,
                          timeout=180, check=False)


def all_snaps(cluster: CephCluster, image: str) -> list[dict[str, Any]]:
    """Every snapshot of ``image``, group and user namespaces alike (``rbd snap ls --all``)."""
    found: list[dict[str, Any]] = cluster.json("rbd", "snap", "ls", "--all", image)
    return found


def groups(cluster: CephCluster) -> list[str]:
    return [f"{pool}/{name}" for pool in (POOL, SYS_POOL) for name in cluster.json("rbd", "group", "ls", pool)]


def group_snaps(cluster: CephCluster, group: str = GROUP) -> list[str]:
    return sorted(s["snapshot"] for s in cluster.json("rbd", "group", "snap", "ls", group))


def snap_meta(cluster: CephCluster, image: str) -> dict[str, str]:
    meta: dict[str, str] = cluster.json("rbd", "image-meta", "list", image) or {}
    return {k: v for k, v in meta.items() if k.startswith("one.snap.")}


# --- create and delete -------------------------------------------------------------------------

def test_create_takes_one_group_snapshot_and_delete_removes_it(rbd_cloud: RbdCloud) -> None:
    cluster = rbd_cloud.ceph
    make_vm(rbd_cloud)
    hid = ok(run_vmm(rbd_cloud, "snapshot_create", "one-42", "0"))
    match = HID.fullmatch(hid)
    assert match and match.group(1) == "0", hid
    snap = f"onesnap-0-{match.group(2)}"
    # one group of the VM's two images (two pools), one group snapshot: each image's part is
    # in the group namespace, and tagged as the VM snapshot's
    assert groups(cluster) == [GROUP]
    members = cluster.json("rbd", "group", "image", "list", GROUP)
    assert sorted(f"{m['pool']}/{m['image']}" for m in members) == sorted(DISKS)
    assert group_snaps(cluster) == [snap]
    for disk_id, name in enumerate(DISKS):
        parts = all_snaps(cluster, name)
        assert [p["namespace"]["type"] for p in parts] == ["group"], parts
        assert parts[0]["namespace"]["group snap"] == snap
        meta = snap_meta(cluster, name)
        assert meta[f"one.snap.{snap}.nvm"] == str(VM) and meta[f"one.snap.{snap}.onesnap"] == "0"
        assert meta[f"one.snap.{snap}.diskid"] == str(disk_id)
    # re-run: the snapshot is reported again, nothing new
    assert ok(run_vmm(rbd_cloud, "snapshot_create", "one-42", "0")) == hid
    assert group_snaps(cluster) == [snap]
    # a second one
    hid2 = ok(run_vmm(rbd_cloud, "snapshot_create", "one-42", "1"))
    assert len(group_snaps(cluster)) == 2

    ok(run_vmm(rbd_cloud, "snapshot_delete", "one-42", hid))
    assert group_snaps(cluster) == [f"onesnap-1-{hid2.split('-')[2]}"]
    for name in DISKS:
        assert len(all_snaps(cluster, name)) == 1
        assert not any(k.startswith(f"one.snap.{snap}.") for k in snap_meta(cluster, name))
    # re-runnable: a deleted snapshot is done
    ok(run_vmm(rbd_cloud, "snapshot_delete", "one-42", hid))
    ok(run_vmm(rbd_cloud, "snapshot_delete", "one-42", hid2))
    assert group_snaps(cluster) == []
    assert all(all_snaps(cluster, name) == [] for name in DISKS)


def test_the_limit_counts_group_snapshots(rbd_cloud: RbdCloud) -> None:
    make_vm(rbd_cloud, VMSNAPSHOT_LIMIT="1")
    ok(run_vmm(rbd_cloud, "snapshot_create", "one-42", "0"))
    assert "VMSNAPSHOT_LIMIT=1" in one_line(run_vmm(rbd_cloud, "snapshot_create", "one-42", "1"))
    assert len(group_snaps(rbd_cloud.ceph)) == 1


def test_deleting_the_vm_disks_leaves_no_group_and_no_snapshot(rbd_cloud: RbdCloud) -> None:
    cluster = rbd_cloud.ceph
    make_vm(rbd_cloud)
    ok(run_vmm(rbd_cloud, "snapshot_create", "one-42", "0"))
    ok(run_vmm(rbd_cloud, "snapshot_create", "one-42", "1"))
    be = backend(rbd_cloud)
    try:
        for name in DISKS:      # what TM delete does with the VM's disks
            be.delete(name)
    finally:
        be.close()
    assert groups(cluster) == []
    assert cluster.rbd_ls(POOL) == [] and cluster.rbd_ls(SYS_POOL) == []


PERSISTENT = f"{POOL}/one-8"


@pytest.mark.parametrize("mvds_first", [True, False], ids=["mvds-first", "deletes-first"])
def test_terminating_the_vm_takes_its_persistent_image_out_of_the_group(rbd_cloud: RbdCloud,
                                                                        mvds_first: bool) -> None:
    """A VM snapshot's group holds a persistent image too; terminate (TM mvds of that image
    back to its datastore, TM delete of the other disks and of the VM directory, in either
    order) leaves the image out of any group, without snapshots, and no group behind."""
    cluster = rbd_cloud.ceph
    make_vm(rbd_cloud)
    rbd_cloud.make_image(8, size_mb=8, persistent=True)
    vm = rbd_cloud.oned.vm(VM)
    disk = copy.deepcopy(vm.find("TEMPLATE/DISK[DISK_ID='0']"))
    for key, value in (("DISK_ID", "2"), ("IMAGE_ID", "8"), ("SOURCE", PERSISTENT), ("CLONE", "NO"),
                       ("TARGET", "vdc")):
        disk.find(key).text = value  # type: ignore[union-attr]
    etree.SubElement(disk, "PERSISTENT").text = "YES"
    vm.find("TEMPLATE").append(disk)  # type: ignore[union-attr]
    cluster.cli("rbd", "create", "--size", "8", PERSISTENT)
    ok(run_vmm(rbd_cloud, "snapshot_create", "one-42", "0"))
    ok(run_vmm(rbd_cloud, "snapshot_create", "one-42", "1"))
    members = cluster.json("rbd", "group", "image", "list", GROUP)
    assert sorted(f"{m['pool']}/{m['image']}" for m in members) == sorted([*DISKS, PERSISTENT])
    assert len(all_snaps(cluster, PERSISTENT)) == 2

    def mvds() -> None:
        ok(rbd_cloud.run_tm("mvds", rbd_cloud.tm_path("node1", VM, 2), PERSISTENT, str(VM), str(IMAGE_DS)))

    def deletes() -> None:
        ok(rbd_cloud.run_tm("delete", rbd_cloud.tm_path("node1", VM, 0), str(VM), str(IMAGE_DS)))
        ok(rbd_cloud.run_tm("delete", rbd_cloud.tm_path("node1", VM, 1), str(VM), str(SYSTEM_DS)))

    for step in (mvds, deletes) if mvds_first else (deletes, mvds):
        step()
    ok(rbd_cloud.run_tm("delete", rbd_cloud.tm_path("node1", VM), str(VM), str(SYSTEM_DS)))
    assert groups(cluster) == []
    assert cluster.rbd_ls(POOL) == ["one-8"] and cluster.rbd_ls(SYS_POOL) == []
    assert all_snaps(cluster, PERSISTENT) == [] and snap_meta(cluster, PERSISTENT) == {}
    # the image is free: another VM's snapshot takes it into that VM's group; once that VM
    # snapshot is deleted, MVDS alone (no other disk deleted) takes it out and the group goes
    be = backend(rbd_cloud)
    try:
        be.vm_snapshot([(PERSISTENT, f"{PERSISTENT}@onesnap-0-100", {"diskid": "0"})],
                       {"virt": "one", "nloc": "one", "nvm": "43", "onesnap": "0"})
        assert groups(cluster) == [f"{POOL}/one-vm-43"]
        mvds()      # a group snapshot holds the image: it stays in the group
        assert groups(cluster) == [f"{POOL}/one-vm-43"] and len(all_snaps(cluster, PERSISTENT)) == 1
        be.delete(f"{PERSISTENT}@onesnap-0-100")
        assert groups(cluster) == [f"{POOL}/one-vm-43"] and all_snaps(cluster, PERSISTENT) == []
        mvds()
        assert groups(cluster) == [] and cluster.rbd_ls(POOL) == ["one-8"]
    finally:
        be.close()


# --- faults: nothing half-made -------------------------------------------------------------------

def test_a_failed_group_snapshot_leaves_nothing_behind(rbd_cloud: RbdCloud) -> None:
    cluster = rbd_cloud.ceph
    make_vm(rbd_cloud)
    be = backend(rbd_cloud)
    common = {"virt": "one", "nloc": "one", "nvm": str(VM), "onesnap": "5"}
    missing = f"{POOL}/one-7-{VM}-9"
    items = [(name, f"{name}@onesnap-5-100", {"diskid": str(i)}) for i, name in enumerate([*DISKS, missing])]
    try:
        # the action refuses a VM whose disk image is gone, before any work
        cluster.cli("rbd", "rm", "--no-progress", DISKS[1])
        reason = one_line(run_vmm(rbd_cloud, "snapshot_create", "one-42", "3"))
        assert DISKS[1] in reason and "does not exist" in reason
        assert groups(cluster) == [] and all_snaps(cluster, DISKS[0]) == []
        cluster.cli("rbd", "create", "--size", "8", DISKS[1])
        # no group yet: the group made for it goes again, no snapshot, no tag
        with pytest.raises(DriverError, match="one-7-42-9"):
            be.vm_snapshot(items, common)
        assert groups(cluster) == []
        for name in DISKS:
            assert all_snaps(cluster, name) == [] and snap_meta(cluster, name) == {}
        # the VM's group with an earlier snapshot: that one stays whole, the failed one is gone
        ok(run_vmm(rbd_cloud, "snapshot_create", "one-42", "0"))
        before = group_snaps(cluster)
        with pytest.raises(DriverError, match="one-7-42-9"):
            be.vm_snapshot(items, common)
        assert group_snaps(cluster) == before
        for name in DISKS:
            assert [p["namespace"]["group snap"] for p in all_snaps(cluster, name)] == before
            assert not any(".onesnap-5-100." in k for k in snap_meta(cluster, name))
    finally:
        be.close()


# --- revert on a real VM -------------------------------------------------------------------------

def deployment(cloud: RbdCloud, secret: str) -> bytes:
    """The domain oned writes for this VM on rbd: both disks network disks."""
    kind = "kvm" if kvm_available() else "qemu"
    disks = "".join(
        f"<disk type='network' device='disk'><source protocol='rbd' name='{name}'>"
        f"<host name='127.0.0.1' port='{cloud.ceph.mon_v1}'/></source>"
        f"<auth username='admin'><secret type='ceph' uuid='{secret}'/></auth>"
        f"<target dev='vd{'ab'[i]}' bus='virtio'/><driver name='qemu' type='raw' cache='none'/></disk>"
        for i, name in enumerate(DISKS))
    return f"""<domain type='{kind}'>
  <name>one-{VM}</name><vcpu>1</vcpu><memory>131072</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>{disks}</devices>
</domain>
""".encode()


@pytest.mark.libvirtd
def test_revert_rolls_every_disk_back_and_restarts_the_vm(rbd_cloud: RbdCloud, data: Data,
                                                           ceph_secret: str) -> None:
    cluster = rbd_cloud.ceph
    make_vm(rbd_cloud)
    for i, name in enumerate(DISKS):
        data.write(name, f"before the snapshot, disk {i}".encode() * 1000)
    before = [data.digest(name) for name in DISKS]
    vm_dir = rbd_cloud.vm_dir("node1", VM)
    vm_dir.mkdir(parents=True, exist_ok=True)
    path = vm_dir / "deployment.0"
    path.write_bytes(deployment(rbd_cloud, ceph_secret))
    name = f"one-{VM}"
    virsh("create", str(path), "--paused", timeout=120)
    try:
        domain = virsh("domuuid", name).stdout.strip()
        hid = ok(run_vmm(rbd_cloud, "snapshot_create", domain, "0"))
        for i, disk in enumerate(DISKS):
            data.write(disk, b"after the snapshot!" * 4000, offset=i * MiB)
        assert [data.digest(disk) for disk in DISKS] != before

        ok(run_vmm(rbd_cloud, "snapshot_revert", domain, hid))
        assert [data.digest(disk) for disk in DISKS] == before, "the disks hold the snapshot's data again"
        info = virsh("dominfo", name).stdout
        assert domain in info and re.search(r"State:\s+paused", info), info
        assert len(group_snaps(cluster)) == 1, "the snapshot stays after a revert"
        # a disk added to the VM after the snapshot: refused before the VM is touched
        bad = run_vmm(rbd_cloud, "snapshot_revert", domain, "snap-9-1")
        assert "has no snapshot snap-9-1" in one_line(bad)
        ok(run_vmm(rbd_cloud, "snapshot_delete", domain, hid))
        assert group_snaps(cluster) == []
    finally:
        virsh("destroy", name, check=False, timeout=120)


def test_a_part_of_a_group_snapshot_reverts_alone_by_copying(rbd_cloud: RbdCloud, data: Data) -> None:
    """``Backend.revert`` of one image's part (RBD rolls back only whole groups): its data is
    copied back from the snapshot; the group's other image is not touched."""
    make_vm(rbd_cloud)
    for name in DISKS:
        data.write(name, b"snapshot" * 4096, offset=2 * MiB)
    hid = ok(run_vmm(rbd_cloud, "snapshot_create", "one-42", "0"))
    snap = "onesnap-0-" + hid.split("-")[2]
    before = [data.digest(name) for name in DISKS]
    for name in DISKS:
        data.write(name, b"later" * 10000, offset=MiB)
    after = [data.digest(name) for name in DISKS]
    be = backend(rbd_cloud)
    try:
        be.revert(DISKS[0], f"{DISKS[0]}@{snap}")
    finally:
        be.close()
    assert [data.digest(name) for name in DISKS] == [before[0], after[1]]
    assert len(group_snaps(rbd_cloud.ceph)) == 1
