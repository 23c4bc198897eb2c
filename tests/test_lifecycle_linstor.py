"""A VM's life on linstor_un through the front-end double (tests/sim/frontend.py), in the
LINSTOR world of tests/linstor_env.py (controller simulator, NOT LINSTOR).

An image imported by the real DS ``stat``/``cp`` (a qcow2 made here, converted by cp into
``one-image-<ID>``), a persistent datablock, a volatile fs disk, a swap disk, context and the
UEFI NVRAM resource (T_OS_NVRAM=storpool, "the storage driver's volume"); the prolog lines
oned writes, ``deploy-tweaks`` (the domain gets the iothreads of T_IOTHREADS_OVERRIDE), a
live disk snapshot, VM snapshots (one multi-resource LINSTOR snapshot each; VMSNAPSHOT_LIMIT;
a revert to an older snapshot, which LINSTOR cannot roll back to, and to the latest one),
suspend and resume through the checkpoint resource (addon-linstor_un's ``save_linstor_un`` /
``restore_linstor_un`` names, CHECKPOINT_AUTO_PLACE), stop and resume (every resource moved to
the front-end and back), poweroff and resume, terminate with the
epilog lines; nothing is left behind: resources, snapshots, diskless attachments, loop
devices, links, the domain. No guest boots: the disks are empty and the domain stays paused.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from linstor_env import FE, IMAGE_DS, NVRAM_RULES, SYSTEM_DS, LinstorCloud, by_res, calls, lcloud
from livevm import dumpxml, libvirtd, qemu_argv, qmp, virsh
from lxml import etree
from scenario import (
    NVRAM_SIZE,
    OVMF_CODE,
    OVMF_VARS,
    import_qcow2,
    links,
    nvram_store,
    read_at,
    wait_nvram,
    write_at,
)
from scenario import dev_link as device_link
from sim.frontend import DriverFailed, Frontend
from storage_env import sshd
from test_live_firmware_cpu import boot_count, boot_entries

FIXTURES = (lcloud, sshd, libvirtd)
pytestmark = [pytest.mark.libvirtd, pytest.mark.usefixtures("libvirtd")]

VM_ID = 7371                      # domain one-7371: no other test uses it
IMAGE, DATABLOCK = 82, 83
IMAGE_MB, DATABLOCK_MB = 32, 16
STORAGE = {"stor1": False, "stor2": False}


def vm_snapshots(cloud: LinstorCloud) -> dict[str, list[str]]:
    """resource -> its VM snapshots (``vmsnapshot-<id>-<time>``)."""
    out = {}
    for name, rd in cloud.inv().items():
        snaps = sorted(s for s in rd["snapshots"] if s.startswith("vmsnapshot-"))
        if snaps:
            out[name] = snaps
    return out


def test_vm_lifecycle_on_linstor_un(lcloud: LinstorCloud, libvirtd: object, tmp_path: Path) -> None:
    cloud = lcloud
    name = f"one-{VM_ID}"
    assert virsh("domstate", name, check=False).returncode != 0, f"domain {name} exists already"

    # -- images: a qcow2 through DS stat + cp; an empty persistent datablock ------------------------
    qcow2 = tmp_path / "img" / "disk.qcow2"
    qcow2.parent.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), f"{IMAGE_MB}M"], check=True)
    assert import_qcow2(cloud, IMAGE, qcow2) == by_res(f"one-image-{IMAGE}")
    assert cloud.oned.image(IMAGE).findtext("FORMAT") == "raw"
    assert cloud.placed(f"one-image-{IMAGE}") == STORAGE  # AUTO_PLACE 2; the bridge's attachment is gone
    cloud.make_image(DATABLOCK, size_mb=DATABLOCK_MB, persistent=True)
    cloud.make_volume(f"one-image-{DATABLOCK}", DATABLOCK_MB, tags={"virt": "one"})

    # -- the VM: image, datablock, volatile fs, swap, context, NVRAM ---------------------------------
    cloud.make_vm(VM_ID, disks=[
        {"image": IMAGE, "size": IMAGE_MB},
        {"image": DATABLOCK, "persistent": True, "size": DATABLOCK_MB},
        {"volatile": "fs", "size": 8, "fs": None},
        {"volatile": "swap", "size": 8},
    ], user={"T_IOTHREADS_OVERRIDE": "3", "T_OS_NVRAM": "storpool", "VMSNAPSHOT_LIMIT": "2"},
        template={"MEMORY": 128, "VCPU": 4})
    vm = cloud.oned.vm(VM_ID)
    features = vm.find("TEMPLATE/FEATURES")
    assert features is not None
    for tag in ("GUEST_AGENT", "IOTHREADS"):  # no agent to freeze; oned's own iothreads overridden
        for el in features.findall(tag):
            features.remove(el)
    fe = Frontend(cloud, hostname=FE)
    disks = {f"one-vm-{VM_ID}-disk-{n}" for n in (0, 2, 3, 4)}
    nvram = f"one-vm-{VM_ID}-nvram"
    try:
        uuid = fe.deploy(VM_ID)
        vms = cloud.home / "vms" / str(VM_ID)
        assert (vms / "transfer.0.prolog").read_text().splitlines() == [
            f"CLONE linstor_un {FE}:{by_res(f'one-image-{IMAGE}')} {cloud.tm_path('node1', VM_ID, 0)} {VM_ID} "
            f"{IMAGE_DS}",
            f"LN linstor_un {FE}:{by_res(f'one-image-{DATABLOCK}')} {cloud.tm_path('node1', VM_ID, 1)} {VM_ID} "
            f"{IMAGE_DS}",
            f"MKIMAGE linstor_un 8 raw {cloud.tm_path('node1', VM_ID, 2)} {VM_ID} {SYSTEM_DS}",
            f"MKSWAP linstor_un 8 {cloud.tm_path('node1', VM_ID, 3)} {VM_ID} {SYSTEM_DS}",
        ]
        assert uuid == virsh("domuuid", name).stdout.strip()
        assert virsh("domstate", name).stdout.strip() == "paused"
        assert len(qmp(name, "query-iothreads")) == 3
        assert set(cloud.inv()) == {f"one-image-{IMAGE}", f"one-image-{DATABLOCK}", *disks, nvram}
        for res in (*disks, nvram, f"one-image-{DATABLOCK}"):
            assert cloud.placed(res)["node1"] is True, res  # diskless on the host
            props = cloud.props(res)
            assert (props["Aux/one/VM_ID"], props["Aux/one/DS_ID"]) == (str(VM_ID), str(SYSTEM_DS)), res
        assert cloud.props(nvram)["Aux/one/type"] == "NVRAM"
        for n in range(5):  # every disk.N is the host's DRBD device of its resource
            res = f"one-image-{DATABLOCK}" if n == 1 else f"one-vm-{VM_ID}-disk-{n}"
            assert cloud.link("node1", VM_ID, n) == cloud.dev("node1", res)

        # -- a live disk snapshot (SNAP_CREATE_LIVE, the VM running) -------------------------------
        fe.disk_snapshot(VM_ID, 0, 0)
        assert cloud.snaps(f"one-vm-{VM_ID}-disk-0") == ["snapshot-0"]

        # -- VM snapshots: one multi-resource snapshot each, LIMIT 2, revert older and latest ------
        disk0 = cloud.disk_path("node1", VM_ID, 0)
        write_at(disk0, b"before the snapshot")
        mark = len(cloud.sim.calls)
        snap0, hid0 = fe.vm_snapshot(VM_ID)
        assert calls(cloud, mark).count("snapshot_create_multi") == 1
        assert hid0.startswith(f"snap-{snap0}-")
        ts0 = hid0.split("-")[2]
        writable = {f"one-vm-{VM_ID}-disk-0", f"one-image-{DATABLOCK}", f"one-vm-{VM_ID}-disk-2",
                    f"one-vm-{VM_ID}-disk-3", nvram}  # not the context ISO
        assert vm_snapshots(cloud) == {res: [f"vmsnapshot-{snap0}-{ts0}"] for res in writable}
        with cloud.lin() as lin:
            props = {str(sd.rsc_name): {k: v for k, v in sd.properties.items() if k.startswith("Aux/one/")}
                     for sd in lin.snapshot_dfn_list_raise().snapshots if str(sd.name).startswith("vmsnapshot-")}
        assert props[f"one-vm-{VM_ID}-disk-2"] == {"Aux/one/virt": "one", "Aux/one/nloc": "one",
                                                   "Aux/one/VM_ID": str(VM_ID), "Aux/one/onesnap": str(snap0),
                                                   "Aux/one/DISK_ID": "2"}
        assert props[nvram]["Aux/one/type"] == "NVRAM"
        again = fe.vmm("snapshot_create-tweaks", fe.deploy_id(VM_ID), str(snap0), str(VM_ID), fe.host(VM_ID),
                       stdin=fe.message(VM_ID)).strip()
        assert again == hid0 and len(vm_snapshots(cloud)[nvram]) == 1  # a re-run reports the same group
        write_at(disk0, b"between snapshots!!")
        snap1, _ = fe.vm_snapshot(VM_ID)
        write_at(disk0, b"AFTER  the snapshots")
        with pytest.raises(DriverFailed, match="VMSNAPSHOT_LIMIT=2"):
            fe.vm_snapshot(VM_ID)
        assert all(len(s) == 2 for s in vm_snapshots(cloud).values())
        mark = len(cloud.sim.calls)
        fe.vm_snapshot_revert(VM_ID, snap0)  # not the latest: restored and copied back
        assert "snapshot_rollback" not in calls(cloud, mark)
        assert calls(cloud, mark).count("snapshot_resource_restore") == len(writable)
        assert read_at(disk0, 19) == b"before the snapshot"
        assert virsh("domuuid", name).stdout.strip() == uuid, "revert keeps the domain's UUID"
        assert virsh("domstate", name).stdout.strip() == "paused"
        mark = len(cloud.sim.calls)
        fe.vm_snapshot_revert(VM_ID, snap1)  # the latest: a LINSTOR rollback
        assert calls(cloud, mark).count("snapshot_rollback") == len(writable)
        assert "snapshot_resource_restore" not in calls(cloud, mark)
        assert read_at(disk0, 19) == b"between snapshots!!"
        assert not any(r.endswith("-revert") for r in cloud.inv())
        for snap_id in (snap0, snap1):
            fe.vm_snapshot_delete(VM_ID, snap_id)
        assert vm_snapshots(cloud) == {}
        assert cloud.snaps(f"one-vm-{VM_ID}-disk-0") == ["snapshot-0"]  # the disk snapshot stays

        # -- suspend + resume: SAVE/RESTORE with addon-linstor_un's override names ------------------
        saved = f"one-vm-{VM_ID}-checkpoint"
        ckpt_file = fe.checkpoint_file(VM_ID)
        fe.suspend(VM_ID, script="save_linstor_un")
        assert name not in virsh("list", "--all", "--name").stdout.split()
        where = cloud.placed(saved)
        assert len([n for n, diskless in where.items() if not diskless]) == 1  # CHECKPOINT_AUTO_PLACE 1
        assert "node1" not in where and not os.path.lexists(ckpt_file), "postsave: no attachment, no link"
        assert cloud.props(saved)["Aux/one/type"] == "CHKPNT"
        assert all(cloud.placed(res)["node1"] for res in writable), "suspend keeps the disks on the host"
        fe.restore(VM_ID, script="restore_linstor_un")
        assert virsh("domuuid", name).stdout.strip() == uuid
        assert virsh("domstate", name).stdout.strip() == "paused"
        assert saved not in cloud.inv() and not os.path.lexists(ckpt_file)
        assert read_at(disk0, 19) == b"between snapshots!!"

        # -- stop + resume: the checkpoint and every disk move to the front-end and back ------------
        stop = fe.stop(VM_ID, script="save_linstor_un")
        assert stop.read_text().splitlines()[-1] == (
            f"MV linstor_un {cloud.tm_path('node1', VM_ID)} {cloud.tm_path(FE, VM_ID)} {VM_ID} {SYSTEM_DS}")
        assert name not in virsh("list", "--all", "--name").stdout.split()
        assert saved in cloud.inv()
        assert not any("node1" in cloud.placed(res) for res in cloud.inv()), "nothing stays on node1"
        assert not cloud.vm_dir("node1", VM_ID).exists()
        assert fe.resume(VM_ID) == uuid  # STOPPED: the MV lines back, then RESTORE
        assert virsh("domuuid", name).stdout.strip() == uuid
        assert saved not in cloud.inv() and not cloud.vm_dir(FE, VM_ID).exists()
        assert all(cloud.placed(res)["node1"] for res in writable)
        assert not any(FE in cloud.placed(res) for res in cloud.inv()), "nothing stays on the front-end"
        assert read_at(disk0, 19) == b"between snapshots!!"

        # -- poweroff + resume ---------------------------------------------------------------------
        fe.poweroff(VM_ID)
        assert name not in virsh("list", "--all", "--name").stdout.split()
        assert read_at(disk0, 19) == b"between snapshots!!", "poweroff keeps the disks"
        resumed = fe.resume(VM_ID)
        assert resumed == virsh("domuuid", name).stdout.strip() == cloud.oned.vm(VM_ID).findtext("DEPLOY_ID")
        assert len(qmp(name, "query-iothreads")) == 3
    finally:
        virsh("destroy", name, check=False)

    # -- terminate: epilog; LINSTOR deletes at once ------------------------------------------------
    epilog = fe.terminate(VM_ID)
    assert epilog.read_text().splitlines()[-1] == (
        f"DELETE linstor_un {cloud.tm_path('node1', VM_ID)} {VM_ID} {SYSTEM_DS}")

    # -- nothing leaks -----------------------------------------------------------------------------
    inv = cloud.sim.inventory()
    rds = inv["resource_definitions"]
    assert set(rds) == {f"one-image-{IMAGE}", f"one-image-{DATABLOCK}"}
    assert all(rd["snapshots"] == {} for rd in rds.values())
    assert all(set(rd["resources"]) == {"stor1", "stor2"} for rd in rds.values()), "diskless attachments left"
    assert cloud.props(f"one-image-{DATABLOCK}") == {"Aux/one/virt": "one"}  # mvds cleared the VM's marks
    assert sorted(inv["loops"]) == sorted(vd["loop"] for rd in rds.values() for vd in rd["volumes"].values())
    assert links(cloud) == []
    assert not cloud.vm_dir("node1", VM_ID).exists()
    assert name not in virsh("list", "--all", "--name").stdout.split()


# --- UEFI: the NVRAM resource under a real firmware ------------------------------------------------

UEFI_VM = 7372                    # domain one-7372: no other test uses it


@pytest.fixture
def dev_link(lcloud: LinstorCloud) -> Iterator[Path]:
    with device_link(lcloud.device_dir("node1"), "lin") as link:
        yield link


def test_uefi_nvram_resource_holds_the_firmware_variables(lcloud: LinstorCloud, libvirtd: object,
                                                          dev_link: Path, tmp_path: Path) -> None:
    """T_OS_NVRAM=storpool on a linstor_un system datastore: tm context makes
    ``one-vm-<VM>-nvram``, README's linstor os-nvram rule points the domain at its DRBD device,
    OVMF (TCG) writes its variables there, they survive poweroff/resume, terminate removes it."""
    cloud = lcloud
    vm_id, name, res = UEFI_VM, f"one-{UEFI_VM}", f"one-vm-{UEFI_VM}-nvram"
    assert virsh("domstate", name, check=False).returncode != 0, f"domain {name} exists already"
    rules = tmp_path / "tweaks.d"
    rules.mkdir()
    rule = NVRAM_RULES["62-os-nvram-linstor_un.yaml"]
    old = "device: /dev/drbd/by-res/{px}-vm-{vm_id}-nvram/0"
    assert rule.count(old) == 1
    (rules / "62-os-nvram-linstor_un.yaml").write_text(
        rule.replace(old, f"device: {dev_link}/{{px}}-vm-{{vm_id}}-nvram/0"))
    (rules / "62-os-nvram.yaml").write_text(NVRAM_RULES["62-os-nvram.yaml"])
    cloud.configure(TWEAKS_RULES_DIRS=str(rules))
    vm = cloud.make_vm(vm_id, disks=[{"volatile": "fs", "size": 8, "fs": None}],
                       user={"T_OS_LOADER": OVMF_CODE, "T_OS_NVRAM": "storpool"}, template={"MEMORY": 128, "VCPU": 1})
    for path in ("GRAPHICS", "FEATURES/IOTHREADS", "OS"):
        for el in vm.findall(f"TEMPLATE/{path}"):
            el.getparent().remove(el)  # type: ignore[union-attr]
    os_el = etree.SubElement(vm.find("TEMPLATE"), "OS")  # type: ignore[arg-type]
    etree.SubElement(os_el, "MACHINE").text = etree.CDATA("q35")  # no OS/FIRMWARE: T_OS_LOADER's loader
    fe = Frontend(cloud, paused=True, kvm=False, hostname=FE)
    nvram = cloud.device_dir("node1") / res / "0"
    template = OVMF_VARS.read_bytes()
    try:
        fe.deploy(vm_id)
        assert cloud.props(res)["Aux/one/type"] == "NVRAM" and cloud.placed(res)["node1"] is True
        fresh = read_at(nvram, NVRAM_SIZE)
        assert fresh == bytes(NVRAM_SIZE - len(template)) + template, "tm context: the VARS template at the end"
        live = dumpxml(name)
        assert (live.findtext("os/loader"), live.find("os/loader").get("type")) == (OVMF_CODE, "pflash")  # type: ignore[union-attr]
        assert live.find("os/nvram").get("type") == "block"  # type: ignore[union-attr]
        assert live.find("os/nvram/source").get("dev") == f"{dev_link}/{res}/0"  # type: ignore[union-attr]
        assert any(f"{dev_link}/{res}/0" in arg for arg in qemu_argv(name)), "qemu opened the resource's device"

        virsh("resume", name)
        first = wait_nvram(nvram, lambda s: boot_count(s) == 1, "count its first boot")
        assert first != fresh and boot_entries(nvram_store(first)), "the firmware wrote its boot entries"

        fe.poweroff(vm_id)
        off = read_at(nvram, NVRAM_SIZE)
        fe.resume(vm_id)  # context again: the NVRAM resource exists and is kept as it is
        assert read_at(nvram, NVRAM_SIZE) == off
        virsh("resume", name)
        wait_nvram(nvram, lambda s: boot_count(s) == 2, "count its second boot")
    finally:
        virsh("destroy", name, check=False)

    fe.terminate(vm_id)
    assert cloud.inv() == {} and links(cloud) == []
