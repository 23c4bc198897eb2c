"""The rbd DS and TM drivers on a live Ceph cluster, called as oned calls them: every
object lands where OpenNebula's stock ceph drivers put it (same names, SOURCE pool/one-<ID>)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from ceph_env import CephCluster, ceph
from rbd_env import IMAGE_DS, POOL, SYS_POOL, RbdCloud, ok, rbd_cloud
from storage_env import sshd

FIXTURES = (ceph, rbd_cloud, sshd)
MiB = 2**20


def failed(proc: subprocess.CompletedProcess[bytes]) -> str:
    """The one-line reason of a failed action (no traceback)."""
    assert proc.returncode != 0, proc.stdout.decode()
    err = proc.stderr.decode().strip()
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def random_file(path: Path, size: int, seed: int = 1) -> str:
    data = hashlib.sha256(str(seed).encode()).digest() * (size // 32)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def rbd_sha(ceph: CephCluster, image: str, size: int, tmp: Path) -> str:
    out = tmp / "export.raw"
    out.unlink(missing_ok=True)
    ceph.cli("rbd", "export", "--no-progress", image, str(out))
    with open(out, "rb") as fh:
        return hashlib.sha256(fh.read(size)).hexdigest()


def import_image(cloud: RbdCloud, image_id: int, src: Path, fmt: str = "raw") -> str:
    cloud.make_image(image_id, source="", path=str(src))
    return ok(cloud.run_ds("cp", cloud.ds_message(image_id), image_id))


# --- DS actions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["raw", "qcow2", "vmdk", "vhdx"])
def test_cp_imports_every_format_into_one_image(rbd_cloud: RbdCloud, tmp_path: Path, fmt: str) -> None:
    raw = tmp_path / "disk.raw"
    digest = random_file(raw, 8 * MiB)
    src = raw
    if fmt != "raw":
        src = tmp_path / f"disk.{fmt}"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, str(raw), str(src)], check=True)
    assert import_image(rbd_cloud, 7, src) == f"{POOL}/one-7 raw"
    assert rbd_cloud.ceph.rbd_ls(POOL) == ["one-7"]
    assert rbd_sha(rbd_cloud.ceph, f"{POOL}/one-7", 8 * MiB, tmp_path) == digest
    # a second import of the same id never overwrites the image
    reason = failed(rbd_cloud.run_ds("cp", rbd_cloud.ds_message(7), 7))
    assert "one-7" in reason and "exists" in reason


def test_stat_mkfs_clone_rm_monitor(rbd_cloud: RbdCloud, tmp_path: Path) -> None:
    ceph = rbd_cloud.ceph
    src = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(src), "40M"], check=True)
    rbd_cloud.make_image(5, source="", path=str(src))
    assert ok(rbd_cloud.run_ds("stat", rbd_cloud.ds_message(5), 5)) == "40"
    # mkfs: empty datablock, and one with a file system
    rbd_cloud.make_image(8, source="", size_mb=24)
    assert ok(rbd_cloud.run_ds("mkfs", rbd_cloud.ds_message(8), 8)) == f"{POOL}/one-8"
    assert ceph.rbd_info(f"{POOL}/one-8")["size"] == 24 * MiB
    img9 = rbd_cloud.make_image(9, source="", size_mb=32)
    from sim import oned as oned_sim
    oned_sim._set_text(img9, "FS", "ext4")
    assert ok(rbd_cloud.run_ds("mkfs", rbd_cloud.ds_message(9), 9)) == f"{POOL}/one-9"
    out = tmp_path / "fs.raw"
    ceph.cli("rbd", "export", "--no-progress", f"{POOL}/one-9", str(out))
    assert subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", str(out)], capture_output=True,
                          text=True).stdout.strip() == "ext4"
    # save_as: nothing made
    img10 = rbd_cloud.make_image(10, source="", size_mb=16)
    oned_sim._set_text(img10, "FORMAT", "save_as")
    assert ok(rbd_cloud.run_ds("mkfs", rbd_cloud.ds_message(10), 10)) == f"{POOL}/one-10"
    assert "one-10" not in ceph.rbd_ls(POOL)
    # clone: a full, independent copy (rbd copy)
    img11 = rbd_cloud.make_image(11, source="", size_mb=24)
    oned_sim._set_text(img11, "PATH", f"{POOL}/one-8")
    assert ok(rbd_cloud.run_ds("clone", rbd_cloud.ds_message(11), 11)) == f"{POOL}/one-11 raw"
    info = ceph.rbd_info(f"{POOL}/one-11")
    assert info["size"] == 24 * MiB and "parent" not in info
    # monitor: the pool's figures from one ceph df
    mon = ok(rbd_cloud.run_ds("monitor", rbd_cloud.ds_message(None), IMAGE_DS))
    values = dict(line.split("=") for line in mon.splitlines())
    assert set(values) == {"USED_MB", "TOTAL_MB", "FREE_MB"}
    assert int(values["TOTAL_MB"]) >= int(values["FREE_MB"]) > 0
    # rm: the image and its snapshots; absent is fine
    ceph.cli("rbd", "snap", "create", f"{POOL}/one-8@3")
    ceph.cli("rbd", "snap", "protect", f"{POOL}/one-8@3")
    rbd_cloud.oned.image(8).find("SOURCE").text = f"{POOL}/one-8"
    ok(rbd_cloud.run_ds("rm", rbd_cloud.ds_message(8), 8))
    assert "one-8" not in ceph.rbd_ls(POOL)
    ok(rbd_cloud.run_ds("rm", rbd_cloud.ds_message(8), 8))


def test_image_snapshots_revert_delete_flatten(rbd_cloud: RbdCloud, tmp_path: Path) -> None:
    ceph = rbd_cloud.ceph
    first = tmp_path / "a.raw"
    a = random_file(first, 4 * MiB, seed=1)
    import_image(rbd_cloud, 7, first)
    image = rbd_cloud.oned.image(7)
    image.find("SOURCE").text = f"{POOL}/one-7"
    ceph.cli("rbd", "snap", "create", f"{POOL}/one-7@0")       # what TM snap_create made (stock: protected)
    ceph.cli("rbd", "snap", "protect", f"{POOL}/one-7@0")
    second = tmp_path / "b.raw"
    b = random_file(second, 4 * MiB, seed=2)
    ceph.cli("rbd", "import", "--no-progress", str(second), f"{POOL}/scratch")
    ceph.cli("rbd", "snap", "create", f"{POOL}/one-7@1")

    def target(n: int) -> None:
        el = image.find("TARGET_SNAPSHOT")
        if el is None:
            from lxml import etree
            el = etree.SubElement(image, "TARGET_SNAPSHOT")
        el.text = str(n)

    target(0)
    ok(rbd_cloud.run_ds("snap_revert", rbd_cloud.ds_message(image), 7))
    assert rbd_sha(ceph, f"{POOL}/one-7", 4 * MiB, tmp_path) == a
    target(1)
    ok(rbd_cloud.run_ds("snap_delete", rbd_cloud.ds_message(image), 7))
    assert [s["name"] for s in ceph.rbd_snaps(f"{POOL}/one-7")] == ["0"]
    target(0)
    ok(rbd_cloud.run_ds("snap_flatten", rbd_cloud.ds_message(image), 7))
    assert ceph.rbd_snaps(f"{POOL}/one-7") == []
    assert rbd_sha(ceph, f"{POOL}/one-7", 4 * MiB, tmp_path) == a
    assert b  # the scratch image is just other data in the pool


# --- TM actions ---------------------------------------------------------------------------------

def test_clone_ln_resize_snapshots_cpds_delete(rbd_cloud: RbdCloud, tmp_path: Path) -> None:
    ceph = rbd_cloud.ceph
    src = tmp_path / "a.raw"
    a = random_file(src, 8 * MiB)
    import_image(rbd_cloud, 7, src)
    rbd_cloud.oned.image(7).find("SOURCE").text = f"{POOL}/one-7"
    import_image(rbd_cloud, 8, src)
    rbd_cloud.oned.image(8).find("SOURCE").text = f"{POOL}/one-8"
    rbd_cloud.make_vm(42, [{"image": 7, "size": 16}, {"image": 8, "persistent": True}, {"volatile": "fs", "size": 8,
                                                                                          "fs": "ext4"},
                           {"volatile": "swap", "size": 4}])
    ok(rbd_cloud.run_tm("clone", f"one-fe:{POOL}/one-7", rbd_cloud.tm_path("node1", 42, 0), "42", str(IMAGE_DS)))
    info = ceph.rbd_info(f"{POOL}/one-7-42-0")
    assert info["parent"]["image"] == "one-7" and info["parent"]["snapshot"] == "snap"
    assert info["size"] == 16 * MiB
    assert rbd_sha(ceph, f"{POOL}/one-7-42-0", 8 * MiB, tmp_path) == a
    # a re-run finds its own clone
    ok(rbd_cloud.run_tm("clone", f"one-fe:{POOL}/one-7", rbd_cloud.tm_path("node1", 42, 0), "42", str(IMAGE_DS)))
    # no host link for a network disk
    assert not os.path.lexists(rbd_cloud.vm_dir("node1", 42) / "disk.0")
    ok(rbd_cloud.run_tm("ln", f"one-fe:{POOL}/one-8", rbd_cloud.tm_path("node1", 42, 1), "42", str(IMAGE_DS)))
    ok(rbd_cloud.run_tm("mkimage", "8", "raw", rbd_cloud.tm_path("node1", 42, 2), "42", "101"))
    ok(rbd_cloud.run_tm("mkswap", "4", rbd_cloud.tm_path("node1", 42, 3), "42", "101"))
    assert ceph.rbd_ls(SYS_POOL) == ["one-sys-42-2", "one-sys-42-3"]
    out = tmp_path / "vol.raw"
    for image, kind in ((f"{SYS_POOL}/one-sys-42-2", "ext4"), (f"{SYS_POOL}/one-sys-42-3", "swap")):
        out.unlink(missing_ok=True)
        ceph.cli("rbd", "export", "--no-progress", image, str(out))
        probe = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", str(out)], capture_output=True, text=True)
        assert probe.stdout.strip() == kind
    # resize grows, never shrinks
    ok(rbd_cloud.run_tm("resize", rbd_cloud.tm_path("node1", 42, 0), "32", "42", str(IMAGE_DS)))
    assert ceph.rbd_info(f"{POOL}/one-7-42-0")["size"] == 32 * MiB
    assert "never shrunk" in failed(rbd_cloud.run_tm("resize", rbd_cloud.tm_path("node1", 42, 0), "16", "42",
                                                    str(IMAGE_DS)))
    # disk snapshots @<N>: create, revert (content back), delete
    ok(rbd_cloud.run_tm("snap_create", rbd_cloud.tm_path("node1", 42, 0), "0", "42", str(IMAGE_DS)))
    assert [s["name"] for s in ceph.rbd_snaps(f"{POOL}/one-7-42-0")] == ["0"]
    other = tmp_path / "b.raw"
    random_file(other, 8 * MiB, seed=9)
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(other),
                    f"rbd:{POOL}/one-7-42-0:conf={ceph.conf}"], check=True, timeout=120)
    assert rbd_sha(ceph, f"{POOL}/one-7-42-0", 8 * MiB, tmp_path) != a
    ok(rbd_cloud.run_tm("snap_revert", rbd_cloud.tm_path("node1", 42, 0), "0", "42", str(IMAGE_DS)))
    assert rbd_sha(ceph, f"{POOL}/one-7-42-0", 8 * MiB, tmp_path) == a
    # cpds: disk-saveas into the new image's SOURCE (a full copy), from the snapshot
    ok(rbd_cloud.run_tm("cpds", rbd_cloud.tm_path("node1", 42, 0), f"{POOL}/one-20", "0", "42", str(IMAGE_DS)))
    assert rbd_sha(ceph, f"{POOL}/one-20", 8 * MiB, tmp_path) == a
    assert "parent" not in ceph.rbd_info(f"{POOL}/one-20")
    ok(rbd_cloud.run_tm("snap_delete", rbd_cloud.tm_path("node1", 42, 0), "0", "42", str(IMAGE_DS)))
    assert ceph.rbd_snaps(f"{POOL}/one-7-42-0") == []
    # mvds: the persistent image stays; delete: clones and volatile disks go, the image stays
    ok(rbd_cloud.run_tm("mvds", rbd_cloud.tm_path("node1", 42, 1), f"{POOL}/one-8", "42", str(IMAGE_DS)))
    ok(rbd_cloud.run_tm("delete", rbd_cloud.tm_path("node1", 42, 0), "42", str(IMAGE_DS)))
    ok(rbd_cloud.run_tm("delete", rbd_cloud.tm_path("node1", 42, 2), "42", "101"))
    ok(rbd_cloud.run_tm("delete", rbd_cloud.tm_path("node1", 42, 3), "42", "101"))
    ok(rbd_cloud.run_tm("delete", rbd_cloud.tm_path("node1", 42), "42", "101"))
    assert ceph.rbd_ls(POOL) == ["one-20", "one-7", "one-8"]
    assert ceph.rbd_ls(SYS_POOL) == []


def test_checkpoint_is_kept_in_ceph_between_save_and_restore(rbd_cloud: RbdCloud, tmp_path: Path) -> None:
    """postsave copies the host's checkpoint file into one-sys-<VM>-checkpoint (through the
    front-end: the host needs no Ceph credentials) and removes the file; prerestore writes it
    back; postrestore deletes the image (as the stock ceph driver's save.ceph/restore.ceph)."""
    import base64

    from lxml import etree
    ceph = rbd_cloud.ceph
    vm = rbd_cloud.make_vm(42, [])
    vm_dir = rbd_cloud.vm_dir("node1", 42)
    vm_dir.mkdir(parents=True)
    checkpoint = vm_dir / "checkpoint"
    digest = random_file(checkpoint, 6 * MiB + 4096, seed=5)
    msg = etree.Element("VMM_DRIVER_ACTION_DATA")
    for tag, value in (("HOST", "node1"), ("DEPLOY_ID", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"),
                       ("CHECKPOINT_FILE", str(checkpoint))):
        etree.SubElement(msg, tag).text = value
    msg.append(rbd_cloud.oned.served("vm", 42))
    msg.append(rbd_cloud.oned.served("datastore", 101))
    stdin = base64.b64encode(etree.tostring(msg))
    uuid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    save = (uuid, str(checkpoint), "node1", "42", "node1")
    restore = (str(checkpoint), "node1", uuid, "42", "node1")
    ok(rbd_cloud.run_tm("presave", *save, stdin=stdin))
    assert ceph.rbd_ls(SYS_POOL) == []              # during the save the checkpoint is a file
    ok(rbd_cloud.run_tm("postsave", *save, stdin=stdin))
    assert not checkpoint.exists()
    assert ceph.rbd_ls(SYS_POOL) == ["one-sys-42-checkpoint"]
    assert rbd_sha(ceph, f"{SYS_POOL}/one-sys-42-checkpoint", 6 * MiB + 4096, tmp_path) == digest
    ok(rbd_cloud.run_tm("prerestore", *restore, stdin=stdin))
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == digest
    ok(rbd_cloud.run_tm("postrestore", *restore, stdin=stdin))
    assert not checkpoint.exists()
    assert ceph.rbd_ls(SYS_POOL) == []
    assert vm is not None


def test_context_is_a_file_on_the_host_and_migration_moves_nothing_in_ceph(rbd_cloud: RbdCloud, tmp_path: Path) -> None:
    """The context ISO is the file disk.N in the VM directory, as with the stock ceph driver
    (oned's domain XML names that file); live migration's pre/post/failmigrate attach nothing."""
    ceph = rbd_cloud.ceph
    ceph.cli("rbd", "create", "--size", "16", f"{POOL}/one-7")
    rbd_cloud.make_image(7)
    vm = rbd_cloud.make_vm(42, [{"image": 7}])
    from sim import oned as oned_sim
    oned_sim._set_text(vm.find("TEMPLATE"), "CONTEXT/DISK_ID", "1")
    ok(rbd_cloud.run_tm("clone", f"one-fe:{POOL}/one-7", rbd_cloud.tm_path("node1", 42, 0), "42", str(IMAGE_DS)))
    ctx = tmp_path / "context.sh"
    ctx.write_text("ETH0_IP='10.0.0.2'\n")
    ok(rbd_cloud.run_tm("context", str(ctx), rbd_cloud.tm_path("node1", 42, 1), "42", "101"))
    iso = rbd_cloud.vm_dir("node1", 42) / "disk.1"
    assert iso.is_file() and not iso.is_symlink()
    assert b"CONTEXT" in iso.read_bytes()[32768:40960]
    iso_data = iso.read_bytes()
    assert ceph.rbd_ls(SYS_POOL) == ["one-sys-42-1"], "and the context image context_network uses"
    import base64

    from lxml import etree
    data = base64.b64encode(etree.tostring(rbd_cloud.oned.served("vm", 42)))
    vm_dir = f"{rbd_cloud.ds_location('node1')}/101/42"
    for action in ("premigrate", "postmigrate"):
        ok(rbd_cloud.run_tm(action, "node1", "node2", vm_dir, "42", "101", stdin=data))
    ok(rbd_cloud.run_tm("failmigrate", "node2", "node1", vm_dir.replace("node1", "node2"), "42", "101", stdin=data))
    assert ceph.rbd_ls(POOL) == ["one-7", "one-7-42-0"]
    assert not os.path.lexists(rbd_cloud.vm_dir("node2", 42) / "disk.0")
    # the context ISO went with the VM directory (premigrate copies it; postmigrate removed the source)
    assert (rbd_cloud.vm_dir("node2", 42) / "disk.1").read_bytes() == iso_data


def test_doctor_asks_the_cluster_with_each_datastores_user_and_key(rbd_cloud: RbdCloud, tmp_path: Path) -> None:
    from lxml import etree

    from datastore.backends.rbd import Rbd
    from onelib.config import Config

    problems: list[str] = []
    good = rbd_cloud.oned.served("datastore", IMAGE_DS)
    Rbd.doctor(Config(), lambda: [good], problems.append)
    assert problems == []
    wrong = tmp_path / "wrong.key"
    wrong.write_text("AQBzcm5iAAAAABAAx3tN1lI3hB+1kYyvE0aGNw==\n")
    bad = rbd_cloud.oned.served("datastore", IMAGE_DS)
    etree.SubElement(bad.find("TEMPLATE"), "CEPH_KEY").text = str(wrong)
    nopool = rbd_cloud.oned.served("datastore", IMAGE_DS)
    nopool.find("TEMPLATE/POOL_NAME").text = "nosuchpool"
    Rbd.doctor(Config(), lambda: [good, bad, nopool], problems.append)
    assert len(problems) == 2, problems
    assert "refused client.admin" in problems[0] and "datastore 100" in problems[0]
    assert "nosuchpool" in problems[1]


def test_facts_name_each_disks_rbd_image_for_the_rules(rbd_cloud: RbdCloud) -> None:
    """datastore.facts asks the rbd backend (a network backend) what its disks are."""
    from datastore.facts import storage_facts
    from onelib.config import Config

    rbd_cloud.make_image(7)
    rbd_cloud.make_image(8, persistent=True)
    vm = rbd_cloud.make_vm(42, [{"image": 7}, {"image": 8, "persistent": True}, {"volatile": "fs", "size": 8}])
    scalars, disks = storage_facts(vm, rbd_cloud.oned.served("datastore", 101), Config())
    assert "rbd" in scalars["storage.network_tm_mads"].split(",")
    assert scalars["storage.rbd_pool"] == SYS_POOL
    assert disks["0"] == {"storage_form": "network", "storage_protocol": "rbd", "storage_name": f"{POOL}/one-7-42-0",
                          "storage_hosts": rbd_cloud.oned.served("datastore", 101).findtext("TEMPLATE/CEPH_HOST"),
                          "storage_user": "admin", "storage_secret": "6b5b8a6c-1b1e-4c52-8a44-5e4a6a1f2f7e",
                          "storage_secret_type": "ceph"}
    assert disks["1"]["storage_name"] == f"{POOL}/one-8"
    assert disks["2"]["storage_name"] == f"{SYS_POOL}/one-sys-42-2"
