"""A VM's storage life on storpool through the front-end double (tests/sim/frontend.py, issue 5),
as OpenNebula 6.10 and as 7.2 (the deployment file differs; every driver call these steps make
has the same argv and stdin in both, as OpenNebula's driver documentation describes).

Two images imported by the real DS ``stat``/``cp`` (a qcow2 and a VMDK made by qemu-img, with
known content), a VM with a non-persistent and a persistent image disk, a volatile fs disk, a
swap disk and context, deployed with ``deploy-tweaks``; then:

- image delete refused while the VM uses the image (oned's rule; no driver runs);
- backup of the running VM: ``prebackup_live``/``postbackup_live`` with oned's argv and the
  plain ``<VM>`` on stdin; the files the backup datastore takes hold the disks' bytes, and no
  backup snapshot, attachment or directory is left;
- a live disk snapshot, then disk-saveas of the current state (snap -1) and of the snapshot:
  DS ``mkfs`` FORMAT=save_as + the CPDS line; the new images' content by checksum;
- suspend/resume through ``save-tweaks``/``restore-tweaks`` and stop/resume through the seed
  aliases ``tmsave``/``tmrestore`` (MV lines to the front-end and back to node1 in the 6.10
  run, to node2 in the 7.2 run, i.e. a cold migration): the checkpoint volume
  exists while the VM is saved, sized from its memory, and is gone after the restore; the same
  domain (UUID, disks) comes back with the data intact;
- the backup again, of the powered-off VM (``prebackup``/``postbackup``), and resume;
- terminate (the non-persistent and volatile disks go to the trash: DELAY_DELETE snapshots),
  then DS ``rm`` of every image: the volumes go, the VM's trash stays (no snapshot of an
  image volume) and ``one-tweaks trash restore`` still brings the disk back, as an image
  whose volume DS ``rm`` deletes in turn;
- nothing leaks: volumes, snapshots (but the trash ones), attachments, loop devices, links,
  VM directories, domains.

No guest boots: the domain stays paused, which is enough for everything checked here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from livevm import libvirtd, virsh
from lxml import etree
from scenario import links, write_at
from sim.frontend import Frontend, Refused
from storage_env import FRONTEND, IMAGE_DS, SYSTEM_DS, Cloud, cloud, sshd

FIXTURES = (cloud, sshd, libvirtd)
pytestmark = [pytest.mark.libvirtd, pytest.mark.usefixtures("libvirtd")]

VM_IDS = {"6.10": 7381, "7.2": 7382}  # one-7381, one-7382: ids no other test uses
QCOW2, VMDK, SAVED_NOW, SAVED_SNAP = 80, 82, 90, 91
QCOW2_MB, VMDK_MB, MEMORY_MB = 32, 16, 128
MiB = 2**20
CHECKPOINT_MB = math.ceil(MEMORY_MB * 1.1) + 8  # memory with the default margin + libvirt's header


def content(size_mb: int, tag: bytes) -> bytes:
    """An image's bytes: zeros with marks at the start, in the middle and in the last MiB."""
    data = bytearray(size_mb * MiB)
    for offset in (0, size_mb * MiB // 2 + 4096, size_mb * MiB - MiB + 512):
        mark = tag + b" @" + str(offset).encode()
        data[offset:offset + len(mark)] = mark
    return bytes(data)


def image_file(directory: Path, fmt: str, data: bytes) -> Path:
    raw = directory / f"{fmt}.raw"
    raw.write_bytes(data)
    out = directory / f"disk.{fmt}"
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", fmt, str(raw), str(out)], check=True)
    raw.unlink()
    return out


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def volume_sha(cloud: Cloud, name: str, size_mb: int) -> str:
    """Checksum of a volume's bytes, read through an attachment on the front-end."""
    link = cloud.attach(name, FRONTEND, rw=False)
    try:
        return Cloud.sha256(link, size_mb * MiB)
    finally:
        cloud.detach(name, FRONTEND)


def disk_sources(name: str) -> list[tuple[str, str]]:
    dom = etree.fromstring(virsh("dumpxml", name).stdout.encode())
    return [(d.get("device", ""), (d.find("source").get("dev") or d.find("source").get("file") or ""))  # type: ignore[union-attr]
            for d in dom.iterfind("devices/disk") if d.find("source") is not None]


def vm_attachments(cloud: Cloud, vm_id: int) -> set[tuple[str, int]]:
    return {(a["name"], a["client"]) for a in cloud.sim.inventory()["attachments"] if str(vm_id) in a["name"]
            or a["name"] == f"one-img-{VMDK}"}


def ssh_lines(cloud: Cloud, needle: str) -> list[str]:
    return [cmd for _, cmd in cloud.ssh_commands() if needle in cmd]


@pytest.mark.parametrize("version", ["6.10", "7.2"])
def test_storage_lifecycle(cloud: Cloud, libvirtd: object, tmp_path: Path, version: str) -> None:
    vm_id = VM_IDS[version]
    back = {"6.10": "node1", "7.2": "node2"}[version]  # where the stopped VM resumes
    name = f"one-{vm_id}"
    assert virsh("domstate", name, check=False).returncode != 0, f"domain {name} exists already"
    fe = Frontend(cloud, version=version)

    # -- images: a qcow2 and a VMDK through DS stat + cp ------------------------------------------
    files = tmp_path / "img"
    files.mkdir()
    qcow2_data, vmdk_data = content(QCOW2_MB, b"qcow2 image"), content(VMDK_MB, b"vmdk image")
    qcow2, vmdk = image_file(files, "qcow2", qcow2_data), image_file(files, "vmdk", vmdk_data)
    cloud.oned.datastore(IMAGE_DS).find("TEMPLATE/SAFE_DIRS").text = f"/var/tmp {files}"  # type: ignore[union-attr]
    assert fe.image_import(QCOW2, qcow2) == f"one-img-{QCOW2}"
    assert fe.image_import(VMDK, vmdk, persistent=True) == f"one-img-{VMDK}"
    for image_id, size_mb, data in ((QCOW2, QCOW2_MB, qcow2_data), (VMDK, VMDK_MB, vmdk_data)):
        img = cloud.oned.image(image_id)
        assert (img.findtext("FORMAT"), img.findtext("SIZE"), img.findtext("STATE")) == ("raw", str(size_mb), "1")
        assert volume_sha(cloud, f"one-img-{image_id}", size_mb) == sha(data), f"image {image_id}"

    # -- the VM ------------------------------------------------------------------------------------
    cloud.make_vm(vm_id, disks=[
        {"image": QCOW2, "size": QCOW2_MB},
        {"image": VMDK, "persistent": True, "size": VMDK_MB},
        {"volatile": "fs", "size": 8, "fs": None},
        {"volatile": "swap", "size": 8},
    ], template={"MEMORY": MEMORY_MB, "VCPU": 1})
    vm = cloud.oned.vm(vm_id)
    features = vm.find("TEMPLATE/FEATURES")
    assert features is not None
    for tag in ("GUEST_AGENT", "IOTHREADS"):  # no agent to freeze in a guest that never boots
        for el in features.findall(tag):
            features.remove(el)
    disk0, disk1 = cloud.disk_path("node1", vm_id, 0), cloud.disk_path("node1", vm_id, 1)
    vms = cloud.home / "vms" / str(vm_id)
    try:
        uuid = fe.deploy(vm_id)
        deployment = etree.parse(str(vms / "deployment.0")).getroot()
        one = "{http://opennebula.org/xmlns/libvirt/1.0}"
        assert deployment.findtext(f"metadata/{one}vm/{one}opennebula_version") == f"{version}.0"
        assert len(deployment.findall("devices")) == (2 if version == "6.10" else 1)  # q35: 6.x's pcie block
        assert uuid == virsh("domuuid", name).stdout.strip()
        assert Cloud.sha256(disk0, QCOW2_MB * MiB) == sha(qcow2_data)
        assert Cloud.sha256(disk1, VMDK_MB * MiB) == sha(vmdk_data)
        vm_volumes = {f"one-img-{QCOW2}-{vm_id}-0", f"one-img-{VMDK}", f"one-sys-{vm_id}-2-raw",
                      f"one-sys-{vm_id}-3-swap", f"one-sys-{vm_id}-4-iso"}
        assert vm_attachments(cloud, vm_id) == {(v, 1) for v in vm_volumes}

        # -- oned refuses to delete an image in use: no driver runs ----------------------------
        calls = len(cloud.sim.calls)
        with pytest.raises(Refused, match=f"image {QCOW2} is in use by VMs {vm_id}"):
            fe.image_delete(QCOW2)
        assert len(cloud.sim.calls) == calls and QCOW2 in cloud.oned.images

        # -- backup of the running VM ---------------------------------------------------------------
        write_at(disk0, b"written by the guest before the backup", 5 * MiB)
        write_at(disk1, b"\xa5" * 4096, VMDK_MB * MiB - 4096)
        sums = {0: Cloud.sha256(disk0, QCOW2_MB * MiB), 1: Cloud.sha256(disk1, VMDK_MB * MiB)}
        start = len(cloud.ssh_commands())
        taken = fe.backup(vm_id, tmp_path / "backups")
        pre = [cmd for _, cmd in cloud.ssh_commands()[start:] if "-ONEBACKUP-" in cmd]
        assert pre, "prebackup_live read the group snapshot on the host"
        assert sorted(p.name for p in taken.iterdir()) == ["disk.0.0", "disk.1.0", "vm.xml"]
        for disk_id, size_mb in ((0, QCOW2_MB), (1, VMDK_MB)):
            backup = taken / f"disk.{disk_id}.0"
            info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(backup)], check=True,
                                             capture_output=True).stdout)
            assert (info["format"], info["virtual-size"]) == ("qcow2", size_mb * MiB)
            raw = tmp_path / f"restored.{disk_id}.raw"
            subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(backup), str(raw)], check=True)
            assert Cloud.sha256(raw, size_mb * MiB) == sums[disk_id], f"backup of disk {disk_id}"
            raw.unlink()
        assert etree.fromstring(base64.b64decode((taken / "vm.xml").read_bytes())).findtext("ID") == str(vm_id)
        inv = cloud.sim.inventory()
        assert not [s for s in inv["snapshots"] if "-ONEBACKUP-" in s]
        assert vm_attachments(cloud, vm_id) == {(v, 1) for v in vm_volumes}
        assert len(inv["attachments"]) == len(vm_volumes), inv["attachments"]
        assert not (cloud.vm_dir("node1", vm_id) / "backup").exists()
        assert vm.findtext("LCM_STATE") == "3"

        # -- disk snapshot, then disk-saveas of the current state and of the snapshot ------------
        fe.disk_snapshot(vm_id, 0, 0)
        write_at(disk0, b"changed after the disk snapshot")
        now = Cloud.sha256(disk0, QCOW2_MB * MiB)
        assert fe.disk_saveas(vm_id, 0, SAVED_NOW) == f"one-img-{SAVED_NOW}"
        assert fe.disk_saveas(vm_id, 0, SAVED_SNAP, snap_id=0) == f"one-img-{SAVED_SNAP}"
        assert (vms / "transfer.0.disk_saveas").read_text() == (
            f"CPDS storpool {cloud.tm_path('node1', vm_id, 0)} one-img-{SAVED_SNAP} 0 {vm_id} {IMAGE_DS}\n")
        assert volume_sha(cloud, f"one-img-{SAVED_NOW}", QCOW2_MB) == now
        assert volume_sha(cloud, f"one-img-{SAVED_SNAP}", QCOW2_MB) == sums[0]
        for image_id in (SAVED_NOW, SAVED_SNAP):
            img = cloud.oned.image(image_id)
            assert (img.findtext("STATE"), img.findtext("FORMAT"), img.findtext("SIZE")) == ("1", "raw", str(QCOW2_MB))

        # -- suspend + resume: SAVE/RESTORE through save-tweaks/restore-tweaks -------------------
        checkpoint = f"one-sys-{vm_id}-rawcheckpoint"
        ckpt_file = fe.checkpoint_file(vm_id)
        disks = disk_sources(name)
        fe.suspend(vm_id)
        assert name not in virsh("list", "--all", "--name").stdout.split()
        assert vm.findtext("STATE") == "5"
        volumes = cloud.sim.inventory()["volumes"]
        assert volumes[checkpoint]["size"] == CHECKPOINT_MB * MiB
        assert volumes[checkpoint]["tags"]["type"] == "CHKPNT"
        assert not os.path.lexists(ckpt_file), "postsave removed the link"
        assert vm_attachments(cloud, vm_id) == {(v, 1) for v in vm_volumes}, "suspend keeps the disks on the host"
        assert [c for c in cloud.libvirt_calls("virDomainSave")
                if f"uuid={uuid}" in c and c.endswith(f"to={Path(ckpt_file)}")]  # path cleaned
        assert fe.resume(vm_id) == uuid
        assert virsh("domuuid", name).stdout.strip() == uuid and vm.findtext("LCM_STATE") == "3"
        assert virsh("domstate", name).stdout.strip() == "paused"
        assert disk_sources(name) == disks
        assert Cloud.sha256(disk0, QCOW2_MB * MiB) == now
        assert checkpoint not in cloud.sim.inventory()["volumes"]
        assert not os.path.lexists(ckpt_file)

        # -- stop + resume through the seed aliases tmsave/tmrestore --------------------------------
        saves = len(cloud.libvirt_calls("virDomainSave"))
        stop = fe.stop(vm_id, script="tmsave")
        assert stop == vms / "transfer.0.stop"
        assert stop.read_text().splitlines() == [
            *(f"MV storpool {cloud.tm_path('node1', vm_id, d)} {cloud.tm_path(FRONTEND, vm_id, d)} {vm_id} {ds}"
              for d, ds in ((0, IMAGE_DS), (1, IMAGE_DS), (2, SYSTEM_DS), (3, SYSTEM_DS))),
            f"MV storpool {cloud.tm_path('node1', vm_id)} {cloud.tm_path(FRONTEND, vm_id)} {vm_id} {SYSTEM_DS}"]
        assert len(cloud.libvirt_calls("virDomainSave")) == saves + 1
        assert name not in virsh("list", "--all", "--name").stdout.split()
        inv = cloud.sim.inventory()
        assert inv["volumes"][checkpoint]["size"] == CHECKPOINT_MB * MiB
        assert inv["attachments"] == [], "a stopped VM keeps no volume attached anywhere"
        assert not cloud.vm_dir("node1", vm_id).exists()
        assert (cloud.vm_dir(FRONTEND, vm_id) / "deployment.0").exists(), "the VM directory is on the front-end"
        # resumed on node1 (6.10) or, a cold migration through the front-end, on node2 (7.2)
        fe.resume_stopped(vm_id, host=back, script="tmrestore")
        assert (vms / "transfer.1.resume").read_text().splitlines() == [
            *(f"MV storpool {cloud.tm_path(FRONTEND, vm_id, d)} {cloud.tm_path(back, vm_id, d)} {vm_id} {ds}"
              for d, ds in ((0, IMAGE_DS), (1, IMAGE_DS), (2, SYSTEM_DS), (3, SYSTEM_DS))),
            f"MV storpool {cloud.tm_path(FRONTEND, vm_id)} {cloud.tm_path(back, vm_id)} {vm_id} {SYSTEM_DS}"]
        assert virsh("domuuid", name).stdout.strip() == uuid == fe.deploy_id(vm_id)
        assert (vm.findtext("STATE"), vm.findtext("LCM_STATE"), fe.host(vm_id)) == ("3", "3", back)
        node1_dir, back_dir = str(cloud.vm_dir("node1", vm_id)), str(cloud.vm_dir(back, vm_id))
        assert [(dev, os.path.normpath(src)) for dev, src in disk_sources(name)] == [
            (dev, os.path.normpath(src).replace(node1_dir, back_dir)) for dev, src in disks]
        assert Cloud.sha256(cloud.disk_path(back, vm_id, 0), QCOW2_MB * MiB) == now
        assert Cloud.sha256(cloud.disk_path(back, vm_id, 1), VMDK_MB * MiB) == sums[1]
        assert checkpoint not in cloud.sim.inventory()["volumes"]
        assert not cloud.vm_dir(FRONTEND, vm_id).exists()
        assert vm_attachments(cloud, vm_id) == {(v, cloud.hosts[back].client) for v in vm_volumes}
        assert len(cloud.libvirt_calls("virDomainRestoreFlags")) == 2

        # -- backup of the powered-off VM: prebackup/postbackup (no _live), then resume ----------
        fe.poweroff(vm_id)
        taken = fe.backup(vm_id, tmp_path / "backups")
        assert taken.name == "1" and sorted(p.name for p in taken.iterdir()) == ["disk.0.0", "disk.1.0", "vm.xml"]
        raw = tmp_path / "restored.0.raw"
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(taken / "disk.0.0"), str(raw)],
                       check=True)
        assert Cloud.sha256(raw, QCOW2_MB * MiB) == now
        assert not [s for s in cloud.sim.inventory()["snapshots"] if "-ONEBACKUP-" in s]
        assert vm.findtext("STATE") == "8" and vm.findtext("LCM_STATE") == "0"
        assert fe.resume(vm_id) == virsh("domuuid", name).stdout.strip()
    finally:
        virsh("destroy", name, check=False)

    # -- terminate, then delete every image ------------------------------------------------------
    fe.terminate(vm_id)
    stime = vm.findtext("STIME")
    trash = {f"{vol}-DELETED-{stime}" for vol in (f"one-img-{QCOW2}-{vm_id}-0", f"one-sys-{vm_id}-2-raw",
                                                    f"one-sys-{vm_id}-3-swap")}  # DELAY_DELETE: clone, volatile
    snapshots = cloud.sim.inventory()["snapshots"]
    assert set(snapshots) == trash and all(snapshots[t]["targetDeleteDate"] for t in trash)
    for image_id in (QCOW2, VMDK, SAVED_NOW, SAVED_SNAP):
        fe.image_delete(image_id)
        assert f"one-img-{image_id}" not in cloud.sim.inventory()["volumes"]
        assert image_id not in cloud.oned.images

    # the trash outlives the image: restored as a new image with the disk's last content
    before = set(cloud.oned.images)
    subprocess.run([sys.executable, "-m", "tweaks", "trash", "restore", f"one-img-{QCOW2}-{vm_id}-0-DELETED-{stime}",
                    "--datastore", str(IMAGE_DS)], check=True, capture_output=True, env=cloud.env, cwd=cloud.home,
                   timeout=120)
    (restored,) = set(cloud.oned.images) - before
    source = cloud.oned.image(restored).findtext("SOURCE", "")
    assert source.startswith("one-img-restored-")
    assert volume_sha(cloud, source, QCOW2_MB) == now
    fe.image_delete(restored)  # DS rm finds the restored image's volume by its SOURCE
    assert source not in cloud.sim.inventory()["volumes"]
    assert not ssh_lines(cloud, "/vmm/kvm/save") and not ssh_lines(cloud, "/vmm/kvm/restore"), \
        "a block system datastore never needs the stock remote save/restore"

    # -- nothing leaks -----------------------------------------------------------------------------
    inv = cloud.sim.inventory()
    assert inv["volumes"] == {}
    assert set(inv["snapshots"]) == trash, "DS rm keeps the VM's trash (no snapshot of the image volume)"
    assert inv["attachments"] == [] and inv["loops"] == []
    assert links(cloud) == []
    for host in cloud.hosts:
        assert not cloud.vm_dir(host, vm_id).exists()
    assert name not in virsh("list", "--all", "--name").stdout.split()
