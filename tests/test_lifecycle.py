"""A VM's life on storpool through the front-end double (tests/sim/frontend.py, issue 5).

An image imported by the real DS ``stat``/``cp`` (a qcow2 made here, converted by cp), a
persistent datablock, a volatile fs disk, a swap disk and context; the prolog lines oned
writes, ``deploy-tweaks`` (the domain gets the iothreads of T_IOTHREADS_OVERRIDE), a VM
snapshot created and reverted by the VMM overrides, poweroff and resume, terminate with the
epilog lines; the delayed-delete trash snapshot is restored as a new image by
``one-tweaks trash restore``; nothing is left behind. No guest boots: the disks are empty
and the domain stays paused, which is enough for everything checked here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from livevm import libvirtd, qmp, virsh
from lxml import etree
from scenario import import_qcow2, links, ok, read_at, write_at
from sim.frontend import Frontend
from storage_env import FRONTEND, IMAGE_DS, SYSTEM_DS, Cloud, cloud, sshd

FIXTURES = (cloud, sshd, libvirtd)
pytestmark = [pytest.mark.libvirtd, pytest.mark.usefixtures("libvirtd")]

VM_ID = 7351
IMAGE, DATABLOCK = 80, 81
IMAGE_MB, DATABLOCK_MB = 32, 16
MiB = 2**20


def tweaks(cloud: Cloud, *args: str) -> str:
    return ok(subprocess.run([sys.executable, "-m", "tweaks", *args], capture_output=True, env=cloud.env,
                             cwd=cloud.home, timeout=120, check=False))


def test_vm_lifecycle_on_storpool(cloud: Cloud, libvirtd: object, tmp_path: Path) -> None:
    name = f"one-{VM_ID}"
    assert virsh("domstate", name, check=False).returncode != 0, f"domain {name} exists already"

    # -- images: a qcow2 through DS stat + cp; an empty persistent datablock ------------------------
    qcow2 = tmp_path / "img" / "disk.qcow2"
    qcow2.parent.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), f"{IMAGE_MB}M"], check=True)
    cloud.oned.datastore(IMAGE_DS).find("TEMPLATE/SAFE_DIRS").text = f"/var/tmp {qcow2.parent}"  # type: ignore[union-attr]
    assert import_qcow2(cloud, IMAGE, qcow2) == f"one-img-{IMAGE}"
    assert cloud.oned.image(IMAGE).findtext("FORMAT") == "raw"
    cloud.make_image(DATABLOCK, size_mb=DATABLOCK_MB, persistent=True)
    cloud.make_volume(f"one-img-{DATABLOCK}", DATABLOCK_MB)

    # -- the VM: image, datablock, volatile fs, swap, context ---------------------------------------
    cloud.make_vm(VM_ID, disks=[
        {"image": IMAGE, "size": IMAGE_MB},
        {"image": DATABLOCK, "persistent": True, "size": DATABLOCK_MB},
        {"volatile": "fs", "size": 8, "fs": None},
        {"volatile": "swap", "size": 8},
    ], user={"T_IOTHREADS_OVERRIDE": "3"}, template={"MEMORY": 128, "VCPU": 4})
    vm = cloud.oned.vm(VM_ID)
    features = vm.find("TEMPLATE/FEATURES")
    assert features is not None
    for tag in ("GUEST_AGENT", "IOTHREADS"):  # no agent to freeze; oned's own iothreads overridden
        for el in features.findall(tag):
            features.remove(el)
    fe = Frontend(cloud)
    rendered = {v: etree.fromstring(Frontend(cloud, version=v).render(VM_ID)) for v in ("6.10", "7.2")}
    assert [len(d.findall("devices")) for d in rendered.values()] == [2, 1]  # q35: 6.x's pcie block
    assert rendered["6.10"].findtext("devices/emulator") == "/usr/bin/qemu-system-x86_64"
    assert rendered["6.10"].find("devices/interface") is None
    assert rendered["6.10"].find("devices/graphics").get("listen") == "127.0.0.1"  # type: ignore[union-attr]
    fe = Frontend(cloud)
    try:
        uuid = fe.deploy(VM_ID)
        vms = cloud.home / "vms" / str(VM_ID)
        assert (vms / "transfer.0.prolog").read_text().splitlines() == [
            f"CLONE storpool {FRONTEND}:one-img-{IMAGE} {cloud.tm_path('node1', VM_ID, 0)} {VM_ID} {IMAGE_DS}",
            f"LN storpool {FRONTEND}:one-img-{DATABLOCK} {cloud.tm_path('node1', VM_ID, 1)} {VM_ID} {IMAGE_DS}",
            f"MKIMAGE storpool 8 raw {cloud.tm_path('node1', VM_ID, 2)} {VM_ID} {SYSTEM_DS}",
            f"MKSWAP storpool 8 {cloud.tm_path('node1', VM_ID, 3)} {VM_ID} {SYSTEM_DS}",
        ]
        assert uuid == virsh("domuuid", name).stdout.strip()
        assert len(qmp(name, "query-iothreads")) == 3
        disks = {f"one-img-{IMAGE}-{VM_ID}-0", f"one-img-{DATABLOCK}", f"one-sys-{VM_ID}-2-raw",
                 f"one-sys-{VM_ID}-3-swap", f"one-sys-{VM_ID}-4-iso"}
        assert set(cloud.sim.inventory()["volumes"]) == {f"one-img-{IMAGE}", *disks}

        # -- a live disk snapshot (SNAP_CREATE_LIVE, the VM running) -------------------------------
        fe.disk_snapshot(VM_ID, 0, 0)
        assert f"one-img-{IMAGE}-{VM_ID}-0-snap0" in cloud.sim.inventory()["snapshots"]

        # -- VM snapshot: create, change the disk, revert ----------------------------------------
        disk0 = cloud.disk_path("node1", VM_ID, 0)
        write_at(disk0, b"before the snapshot")
        snap_id, hid = fe.vm_snapshot(VM_ID)
        assert hid.startswith(f"snap-{snap_id}-")
        write_at(disk0, b"AFTER  the snapshot")
        fe.vm_snapshot_revert(VM_ID, snap_id)
        assert read_at(disk0, 19) == b"before the snapshot"
        assert virsh("domuuid", name).stdout.strip() == uuid, "revert keeps the domain's UUID"
        fe.vm_snapshot_delete(VM_ID, snap_id)
        assert not [s for s in cloud.sim.inventory()["snapshots"] if "-ONESNAP-" in s]

        # -- poweroff + resume ---------------------------------------------------------------------
        fe.poweroff(VM_ID)
        assert name not in virsh("list", "--all", "--name").stdout.split()
        assert read_at(disk0, 19) == b"before the snapshot", "poweroff keeps the disks"
        resumed = fe.resume(VM_ID)  # a new transient domain: oned keeps the UUID deploy printed
        assert resumed == virsh("domuuid", name).stdout.strip() == cloud.oned.vm(VM_ID).findtext("DEPLOY_ID")
        assert len(qmp(name, "query-iothreads")) == 3
    finally:
        virsh("destroy", name, check=False)

    # -- terminate: epilog; the non-persistent disk waits in the trash ------------------------------
    epilog = fe.terminate(VM_ID)
    assert epilog.read_text().splitlines()[-1] == (
        f"DELETE storpool {cloud.tm_path('node1', VM_ID)} {VM_ID} {SYSTEM_DS}")
    inv = cloud.sim.inventory()
    assert set(inv["volumes"]) == {f"one-img-{IMAGE}", f"one-img-{DATABLOCK}"}
    stime = vm.findtext("STIME")
    trash = f"one-img-{IMAGE}-{VM_ID}-0-DELETED-{stime}"
    assert trash in inv["snapshots"]
    before = set(cloud.oned.images)
    out = tweaks(cloud, "trash", "restore", trash, "--datastore", str(IMAGE_DS))
    (new_id,) = set(cloud.oned.images) - before
    restored = cloud.oned.image(new_id).findtext("SOURCE")
    assert restored and f"image {new_id}" in out
    link = cloud.attach(restored, FRONTEND, rw=False)
    try:
        assert read_at(link, 19) == b"before the snapshot"
    finally:
        cloud.detach(restored, FRONTEND)

    # -- nothing leaks -----------------------------------------------------------------------------
    inv = cloud.sim.inventory()
    assert set(inv["volumes"]) == {f"one-img-{IMAGE}", f"one-img-{DATABLOCK}", restored}
    assert all("-DELETED-" in s for s in inv["snapshots"]), inv["snapshots"]
    assert inv["attachments"] == [] and inv["loops"] == []
    assert links(cloud) == []
    assert not cloud.vm_dir("node1", VM_ID).exists()
    assert name not in virsh("list", "--all", "--name").stdout.split()
