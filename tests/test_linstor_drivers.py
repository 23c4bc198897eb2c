"""The ``linstor_un`` DS_MAD and TM_MAD actions (datastore/linstor_un/*, tm/linstor_un/*), run as
oned runs them, against the LINSTOR controller simulator (tests/sim/linstor.py; NOT LINSTOR:
one sparse file per volume, one loop device that every node holding the resource sees through
its own ``by-res`` link).

The world (``lcloud``: nodes, pools, datastores) is described in tests/linstor_env.py.
Data is checked by checksum through the devices the actions link.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import drivers
import pytest
from linstor_env import (
    DRIVER,
    FE,
    IMAGE_DS,
    NVRAM_RULES,
    SYSTEM_DS,
    TWO_PRIMARIES,
    VM,
    LinstorCloud,
    MiB,
    by_res,
    calls,
    context_file,
    failed,
    lcloud,
    ok,
    read,
    set_ds,
    sha,
    vm_b64,
    write,
)
from lxml import etree
from sim import oned as oned_sim
from storage_env import Cloud, sshd

FIXTURES = (sshd, lcloud)


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
                                  "Aux/one/type": "NPERS", "Aux/one/DISK_ID": "0", "Aux/one/DS_ID": "101"}
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
    # addon-linstor_un's ln marks the image with the VM, its system datastore and disk
    assert lcloud.props("one-image-8") == {"Aux/one/virt": "one", "Aux/one/VM_ID": "42", "Aux/one/DS_ID": "101",
                                           "Aux/one/DISK_ID": "0"}
    ok(lcloud.run_tm("mkimage", "32", "raw", lcloud.tm_path("node1", VM, 1), "42", "101"))
    ok(lcloud.run_tm("mkswap", "16", lcloud.tm_path("node1", VM, 2), "42", "101"))
    for disk_id, kind in ((1, "ext4"), (2, "swap")):
        name = f"one-vm-42-disk-{disk_id}"
        assert lcloud.placed(name) == {**STORAGE, "node1": True}  # NODE_LIST of the system datastore
        assert {k: v for k, v in lcloud.props(name).items() if k.endswith("_ID")} == {
            "Aux/one/VM_ID": "42", "Aux/one/DS_ID": "101", "Aux/one/DISK_ID": str(disk_id)}
        probe = lcloud.ssh("node1", "blkid", "-p", "-o", "value", "-s", "TYPE", str(lcloud.disk_path("node1", VM,
                                                                                                     disk_id)))
        assert probe.stdout.decode().strip() == kind
    ok(lcloud.run_tm("context", str(context_file(lcloud)), lcloud.tm_path("node1", VM, 3), "42", "101"))
    assert lcloud.placed("one-vm-42-disk-3") == {**STORAGE, "node1": True}
    assert lcloud.props("one-vm-42-disk-3")["Aux/one/type"] == "CNTXT"
    assert lcloud.props("one-vm-42-disk-3")["Aux/one/DS_ID"] == "101"
    assert read(lcloud.disk_path("node1", VM, 3), 5, 32769) == b"CD001"  # an ISO 9660 image

    # terminate: MVDS (persistent), DELETE (volatile), DELETE of the VM directory
    ok(lcloud.run_tm("mvds", lcloud.tm_path("node1", VM, 0), by_res("one-image-8"), "42", "100"))
    assert lcloud.placed("one-image-8") == STORAGE and lcloud.link("node1", VM, 0) is None
    assert lcloud.props("one-image-8") == {"Aux/one/virt": "one"}  # mvds clears the VM's marks
    for disk_id in (1, 2):
        ok(lcloud.run_tm("delete", lcloud.tm_path("node1", VM, disk_id), "42", "101"))
    with lcloud.lin() as lin:  # a checkpoint left behind goes with the VM directory
        lin.resource_dfn_create("one-vm-42-checkpoint")
    ok(lcloud.run_tm("delete", lcloud.tm_path("node1", VM), "42", "101"))
    assert set(lcloud.inv()) == {"one-image-7", "one-image-8"}
    assert not lcloud.vm_dir("node1", VM).exists()


OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


def test_context_makes_the_nvram_resource_once_and_delete_removes_it(lcloud: LinstorCloud) -> None:
    lcloud.make_vm(VM, [], user={"T_OS_NVRAM": "storpool"})
    ctx = context_file(lcloud)
    ok(lcloud.run_tm("context", str(ctx), lcloud.tm_path("node1", VM, 0), "42", "101"))
    name = "one-vm-42-nvram"
    assert set(lcloud.inv()) == {"one-vm-42-disk-0", name}
    assert lcloud.props(name) == {"Aux/one/virt": "one", "Aux/one/nloc": "one", "Aux/one/VM_ID": "42",
                                  "Aux/one/type": "NVRAM", "Aux/one/DS_ID": "101"}
    assert lcloud.placed(name) == {**STORAGE, "node1": True}  # the system datastore's NODE_LIST, diskless on node1
    assert lcloud.inv()[name]["volumes"][0]["size_kib"] == 1024
    # the device the os-nvram-linstor_un rule names, under node1's by-res directory
    device = Path(lcloud.dev("node1", name))
    assert str(device) == f"{lcloud.device_dir('node1')}/one-vm-42-nvram/0" and device.exists()
    template = OVMF_VARS.read_bytes()
    offset = MiB - len(template)
    assert read(device, len(template), offset) == template and read(device, offset) == bytes(offset)
    write(device, b"guest-variable", offset + 4096)
    ok(lcloud.run_tm("context", str(ctx), lcloud.tm_path("node1", VM, 0), "42", "101"))  # restore, updateconf
    assert read(device, 14, offset + 4096) == b"guest-variable"
    assert set(lcloud.inv()) == {"one-vm-42-disk-0", name}
    # without T_OS_NVRAM: no NVRAM resource
    lcloud.make_vm(43, [], user={"T_OS_NVRAM": "file"})
    ok(lcloud.run_tm("context", str(context_file(lcloud, 43)), lcloud.tm_path("node1", 43, 0), "43", "101"))
    assert "one-vm-43-nvram" not in lcloud.inv()
    # terminate: the context disk, then the VM directory takes the NVRAM resource
    ok(lcloud.run_tm("delete", lcloud.tm_path("node1", VM, 0), "42", "101"))
    ok(lcloud.run_tm("delete", lcloud.tm_path("node1", VM), "42", "101"))
    assert set(lcloud.inv()) == {"one-vm-43-disk-0"} and not device.exists()
    ok(lcloud.run_tm("delete", lcloud.tm_path("node1", 43), "43", "101"))
    assert lcloud.inv() == {}


def test_nvram_rules_point_linstor_vms_at_the_drbd_device(tmp_path: Path, assert_valid: Any) -> None:
    """README's two os-nvram rule files: the linstor_un system datastore's VMs get the DRBD
    device of ``one-vm-<VM>-nvram``, the others keep the StorPool volume; both idempotent."""
    from conftest import apply, deployment, vm_xml

    rules = tmp_path / "rules"
    rules.mkdir()
    for name, text in NVRAM_RULES.items():
        (rules / name).write_text(text)
    for tm_mad, dev in (("linstor_un", "/dev/drbd/by-res/one-vm-42-nvram/0"),
                        ("storpool", "/dev/storpool/one-sys-42-NVRAM")):
        vm = etree.fromstring(vm_xml({"T_OS_NVRAM": "storpool"}))
        vm.find("HISTORY_RECORDS/HISTORY[last()]/TM_MAD").text = tm_mad  # type: ignore[union-attr]
        data = etree.tostring(vm)
        outcome = apply(deployment(), data, [str(rules)])
        assert_valid(outcome.tree)
        nvram = outcome.tree.getroot().find("os/nvram")
        assert nvram is not None and nvram.get("type") == "block"
        assert [(c.tag, dict(c.attrib)) for c in nvram] == [("source", {"dev": dev})], tm_mad
        applied = {r.name: r.status for r in outcome.report.results if r.name.startswith("os-nvram")}
        assert sorted(applied) == ["os-nvram", "os-nvram-linstor_un"]  # the shipped file is replaced
        mine = "os-nvram-linstor_un" if tm_mad == "linstor_un" else "os-nvram"
        assert applied[mine] == "applied" and [n for n, st in applied.items() if st == "applied"] == [mine], applied
        again = apply(etree.tostring(outcome.tree), data, [str(rules)])
        assert etree.tostring(again.tree) == etree.tostring(outcome.tree)
        assert not any(r.changes for r in again.report.results)


def _volume_views(cloud: LinstorCloud, name: str) -> list[dict[str, int]]:
    """Volume 0 of ``name`` on each node, as the controller's volume list shows it."""
    with cloud.lin() as lin:
        return [{"allocated_kib": int(vol.allocated_size or 0)}
                for rsc in lin.volume_list_raise(filter_by_resources=[name]).resources
                for vol in rsc.volumes or [] if int(vol.number) == 0]


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
    sizes = {k: v for k, v in lcloud.props(name).items() if k.startswith("Aux/one/SNAPSHOT_")}
    assert set(sizes) == {f"Aux/one/SNAPSHOT_{n}/DISK_SIZE" for n in range(3)}  # as addon-linstor_un records
    allocated = max(vol["allocated_kib"] for vol in _volume_views(lcloud, name))
    assert all(0 < int(v) <= allocated for v in sizes.values()), (sizes, allocated)
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
    assert {k for k in lcloud.props(name) if k.startswith("Aux/one/SNAPSHOT_")} == {
        "Aux/one/SNAPSHOT_0/DISK_SIZE", "Aux/one/SNAPSHOT_2/DISK_SIZE"}
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
    for kind in ("datastore", "tm"):  # as one-tweaks install writes them
        ours = sorted(p.name for p in (drivers.REMOTES / kind / DRIVER).iterdir())
        assert ours == sorted(p.name for p in (drivers.REMOTES / kind / "storpool").iterdir())
        for name in ours:
            path = drivers.REMOTES / kind / DRIVER / name
            assert os.access(path, os.X_OK), path
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            assert len(lines) == 3 and lines[0] == f"#!{sys.executable}", path


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
    assert {k: v for k, v in lcloud.props(name).items() if k.endswith(("_ID", "type"))} == {
        "Aux/one/VM_ID": "42", "Aux/one/DS_ID": "101", "Aux/one/type": "CHKPNT"}
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


# --- VM snapshots (vmm/kvm/snapshot_*-tweaks) ---------------------------------------------------


def _snap_vmm(cloud: LinstorCloud, action: str, snap: str) -> subprocess.CompletedProcess[bytes]:
    """A VM snapshot override as oned calls it: ``<deploy_id> <snap> <vmid> <host>``, base64 message."""
    root = etree.Element("VMM_DRIVER_ACTION_DATA")
    for tag, value in (("HOST", "node1"), ("MIGR_HOST", ""), ("DEPLOY_ID", "one-42")):
        etree.SubElement(root, tag).text = value or None
    root.append(cloud.oned.served("vm", VM))
    root.append(cloud.oned.served("datastore", SYSTEM_DS))
    return subprocess.run([sys.executable, str(drivers.KVM / f"snapshot_{action}-tweaks"), "one-42", snap,
                           str(VM), "node1"], input=base64.b64encode(etree.tostring(root)), capture_output=True,
                          env=cloud.env, cwd=cloud.home, timeout=120, check=False)


def _vm_snaps(cloud: LinstorCloud) -> dict[str, dict[str, str]]:
    """``res@snap`` -> its Aux/one properties, for every VM snapshot."""
    with cloud.lin() as lin:
        return {f"{sd.rsc_name}@{sd.name}": {k[8:]: v for k, v in sd.properties.items() if k.startswith("Aux/one/")}
                for sd in lin.snapshot_dfn_list_raise().snapshots if str(sd.name).startswith("vmsnapshot-")}


def test_vm_snapshot_create_is_all_or_nothing_and_rerunnable(lcloud: LinstorCloud) -> None:
    images(lcloud)
    lcloud.make_vm(VM, user={"VMSNAPSHOT_FSFREEZE": "0"})
    prolog(lcloud)
    writable = ("one-vm-42-disk-0", "one-image-8", "one-vm-42-disk-2")  # not the context ISO (disk 3)

    lcloud.sim.fail("snapshot_create_multi")  # LINSTOR refuses the group: nothing is left
    line = failed(_snap_vmm(lcloud, "create", "0"))
    assert line.startswith("VM 42 snapshot 0 not taken: LINSTOR group snapshot vmsnapshot-0-") and not _vm_snaps(lcloud)

    lcloud.sim.fail("snapshot_create_multi", apply=True)  # made, reply lost: recognised and tagged
    proc = _snap_vmm(lcloud, "create", "0")
    hid = ok(proc).stdout.decode().strip()
    assert re.fullmatch(r"snap-0-[0-9]+", hid)
    ts = hid.split("-")[2]
    snaps = _vm_snaps(lcloud)
    assert set(snaps) == {f"{res}@vmsnapshot-0-{ts}" for res in writable}
    assert snaps[f"one-image-8@vmsnapshot-0-{ts}"] == {"virt": "one", "nloc": "one", "VM_ID": "42", "onesnap": "0",
                                                       "DISK_ID": "1"}
    mark = len(lcloud.sim.calls)
    assert ok(_snap_vmm(lcloud, "create", "0")).stdout.decode().strip() == hid  # a re-run: the same group
    assert "snapshot_create_multi" not in calls(lcloud, mark)

    ok(_snap_vmm(lcloud, "delete", hid))
    assert not _vm_snaps(lcloud)
    ok(_snap_vmm(lcloud, "delete", hid))  # gone already: done
    assert "has no snapshot snap-0-1" in failed(_snap_vmm(lcloud, "revert", "snap-0-1"))
    assert "is not a VM snapshot" in failed(_snap_vmm(lcloud, "delete", "0;rm -rf /"))
