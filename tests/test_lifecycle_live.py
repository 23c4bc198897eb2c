"""The parts of issue 5's VM lifecycles that need live machinery, run through the front-end
test double (tests/sim/frontend.py, NOT oned) on the ``cloud`` harness (StorPool simulator,
oned double, real sshd, real libvirtd and qemu).

Live migration (``test_live_migration_node1_to_node2``)
    node2 is a second libvirt host on this machine: test_vmm_migrate's ``second_host`` (a
    mount namespace with its own libvirtd, host UUID and sshd). The frontend's ssh hosts and
    that setup combine: the drivers reach node2 through SSH_COMMAND (the ``hosts`` fixture's
    ssh config, node2 = node2's sshd) and the test's own ssh (``cloud.ssh``, what Frontend
    uses for ``virsh destroy``) is pointed at the same config. ``Frontend.migrate`` runs
    oned's flow: a new history record for node2, tm premigrate (base64 ``<VM>`` on stdin),
    ``migrate-tweaks <deploy_id> node2 node1 <vmid> node1``, tm postmigrate; a migration
    that fails (a destination URI whose libvirtd socket does not exist) runs tm failmigrate
    and the VM gets a record for node1 again, still running there with nothing left on
    node2. Then the VM really moves, the data on its persistent disk is read back through
    node2's link, and terminate on node2 cleans everything up. The domain has no VNC
    (both qemu processes share one network namespace during the move, so the port would
    clash).

UEFI NVRAM on a volume (``test_uefi_nvram_volume_survives_poweroff_and_resume``)
    T_OS_LOADER (OVMF 4M) and T_OS_NVRAM=storpool under TCG (``type='qemu'``). tm context
    creates ``one-sys-<VM>-NVRAM`` (1 MiB, the VARS template at its end); the shipped
    os-nvram rule is overridden (operator's /etc/one/tweaks.d, here TWEAKS_RULES_DIRS) only
    in its ``device`` template, which must be below /dev: ``/dev/one-tweaks-lc-XXXX`` is a
    symlink to node1's StorPool device directory. The firmware writes its variables on the
    first boot; poweroff and resume keep them (same volume, the bytes the first boot left are
    what the second boot starts from, its boot counter goes on to 2); terminate deletes the
    NVRAM volume with the VM directory (tm/actions/context.py: "It is deleted with the VM").

A real guest (``test_real_guest_through_the_frontend``)
    The cached Debian guest (tests/guest.py) imported by DS stat + cp, a VM with the image
    as root (vda), a volatile ext4 disk on virtio-scsi (sda) and context, direct kernel boot
    from OS/KERNEL, INITRD, KERNEL_CMD (rendered by the Frontend as oned does), deployed by
    the Frontend through ``deploy-tweaks`` with T_SCSI_QUEUES=2 (oned's domain has
    queues='1'). One TCG boot: the agent answers, guest-exec sees every disk with its size and
    two queues on sda; the live disk snapshot through ``Frontend.disk_snapshot``
    (SNAP_CREATE_LIVE) freezes the guest's file systems (its fsfreeze hook ran, the
    snapshot's ext4 is clean), and ``Frontend.resize_disk`` (TM RESIZE, then the
    ``resize_disk-tweaks`` override) grows sda under the running guest. Terminate leaves
    only the trash snapshots.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from guest import GuestImage, agent, guest_check, guest_image, wait_agent
from livevm import dumpxml, libvirtd, qemu_argv, virsh
from lxml import etree
from scenario import NVRAM_SIZE, OVMF_CODE, OVMF_VARS, links, nvram_store, read_at, wait_nvram, write_at
from scenario import dev_link as device_link
from sim.frontend import DriverFailed, Frontend
from storage_env import IMAGE_DS, REPO, SYSTEM_DS, Cloud, cloud, sshd
from test_guest_e2e import attached_ro, import_image, lsblk, mq_count, superblock_features
from test_live_firmware_cpu import boot_count, boot_entries
from test_vmm_migrate import ONE_NS, SecondHost, hosts, migrations, second_host

FIXTURES = (cloud, sshd, libvirtd, second_host, hosts, guest_image)
pytestmark = [pytest.mark.libvirtd, pytest.mark.usefixtures("libvirtd")]

MIGRATE_VM, UEFI_VM, GUEST_VM = 7361, 7362, 7363
MiB = 2**20


# --- helpers ---------------------------------------------------------------------------------------


def strip_template(vm: etree._Element, *paths: str) -> None:
    for path in paths:
        for el in vm.findall(f"TEMPLATE/{path}"):
            el.getparent().remove(el)  # type: ignore[union-attr]


def set_os(vm: etree._Element, **values: str) -> None:
    """TEMPLATE/OS replaced by ``values`` (CDATA like oned)."""
    strip_template(vm, "OS")
    tpl = vm.find("TEMPLATE")
    assert tpl is not None
    os_el = etree.SubElement(tpl, "OS")
    for key, text in values.items():
        etree.SubElement(os_el, key).text = etree.CDATA(text)


def attached_to(cloud: Cloud) -> dict[str, set[int]]:
    """volume -> the StorPool clients it is attached to."""
    out: dict[str, set[int]] = {}
    for entry in cloud.sim.inventory()["attachments"]:
        out.setdefault(entry["name"], set()).add(entry["client"])
    return out


def history(cloud: Cloud, vm_id: int) -> list[tuple[str, str]]:
    return [(h.findtext("SEQ", ""), h.findtext("HOSTNAME", ""))
            for h in cloud.oned.vm(vm_id).iterfind("HISTORY_RECORDS/HISTORY")]


def assert_nothing_left(cloud: Cloud, vm_id: int, keep: set[str]) -> None:
    inv = cloud.sim.inventory()
    assert set(inv["volumes"]) == keep
    assert inv["attachments"] == [] and inv["loops"] == []
    assert all(s["tags"].get("trash") for s in inv["snapshots"].values()), sorted(inv["snapshots"])
    assert links(cloud) == []
    for host in ("node1", "node2"):
        assert not cloud.vm_dir(host, vm_id).exists(), host
    assert f"one-{vm_id}" not in virsh("list", "--all", "--name").stdout.split()


# --- live migration -------------------------------------------------------------------------------


def test_live_migration_node1_to_node2(cloud: Cloud, hosts: SecondHost) -> None:
    vm_id, name = MIGRATE_VM, f"one-{MIGRATE_VM}"
    assert virsh("domstate", name, check=False).returncode != 0, f"domain {name} exists already"
    # the test's own ssh (Frontend's virsh destroy) reaches node2 where the drivers do
    cloud.sshd = dataclasses.replace(cloud.sshd, ssh_config=hosts.ssh_config)
    cloud.make_volume("one-img-90", 16, data=b"image ninety" * 100)
    cloud.make_image(90, size_mb=16)
    cloud.make_image(91, size_mb=16, persistent=True)
    cloud.make_volume("one-img-91", 16)
    cloud.make_vm(vm_id, disks=[{"image": 90, "size": 16}, {"image": 91, "persistent": True, "size": 16},
                                {"volatile": "fs", "size": 8, "fs": None}],
                  template={"MEMORY": 128, "VCPU": 1})
    strip_template(cloud.oned.vm(vm_id), "GRAPHICS")
    volumes = {f"one-img-90-{vm_id}-0", "one-img-91", f"one-sys-{vm_id}-2-raw", f"one-sys-{vm_id}-3-iso"}
    fe = Frontend(cloud, paused=False)
    node1_dir, node2_dir = cloud.vm_dir("node1", vm_id), cloud.vm_dir("node2", vm_id)
    try:
        dom_uuid = fe.deploy(vm_id)
        assert virsh("domstate", name).stdout.strip() == "running"
        assert {v: attached_to(cloud).get(v) for v in volumes} == {v: {1} for v in volumes}
        marker = b"written on node1 " + uuid.uuid4().hex.encode()
        write_at(cloud.disk_path("node1", vm_id, 1), marker)

        # -- a migration that fails: failmigrate, the VM stays on node1 with a record there ------
        # the destination cannot listen for the guest's memory on an address it does not have
        good_options = cloud.settings["MIGRATE_OPTIONS"]
        cloud.configure(MIGRATE_OPTIONS="--migrateuri tcp://192.0.2.1")
        with pytest.raises(DriverFailed, match=r"node1: migrate .* to node2"):
            fe.migrate(vm_id, "node2")
        assert history(cloud, vm_id) == [("0", "node1"), ("1", "node2"), ("2", "node1")]
        assert fe.host(vm_id) == "node1"
        assert virsh("domstate", name).stdout.strip() == "running"
        assert hosts.state(name) is None
        assert {v: attached_to(cloud).get(v) for v in volumes} == {v: {1} for v in volumes}, "node2 let go"
        assert not node2_dir.exists()
        assert cloud.oned.vm(vm_id).findtext("LCM_STATE") == "3"

        # -- the migration: premigrate, migrate-tweaks, postmigrate; a new record for node2 -------
        cloud.configure(MIGRATE_OPTIONS=good_options)
        mark = len(migrations(cloud))
        fe.migrate(vm_id, "node2")
        assert history(cloud, vm_id) == [("0", "node1"), ("1", "node2"), ("2", "node1"), ("3", "node2")]
        assert fe.host(vm_id) == "node2" and cloud.oned.vm(vm_id).findtext("LCM_STATE") == "3"
        assert virsh("domstate", name, check=False).returncode != 0, "the domain left node1's libvirtd"
        assert hosts.state(name) == "running"
        assert hosts.virsh("domuuid", name).stdout.strip() == dom_uuid == fe.deploy_id(vm_id)
        (done,) = migrations(cloud)[mark:]
        assert done.uuid == dom_uuid and done.unsafe, "every disk has cache='none'"
        live = etree.fromstring(hosts.virsh("dumpxml", name).stdout.encode())
        sources = [d.find("source") for d in live.iterfind("devices/disk")]
        assert [s.get("dev") or s.get("file") for s in sources if s is not None] == [
            f"{node2_dir}/disk.{i}" for i in range(4)]
        assert live.findtext(f"metadata/{{{ONE_NS}}}vm/{{{ONE_NS}}}system_datastore") == str(node2_dir)
        assert {v: attached_to(cloud).get(v) for v in volumes} == {v: {2} for v in volumes}
        assert not node1_dir.exists(), "postmigrate removed node1's VM directory"
        assert (node2_dir / "deployment.0").is_file(), "premigrate copied the VM directory"
        assert read_at(cloud.disk_path("node2", vm_id, 1), len(marker)) == marker
    finally:
        virsh("destroy", name, check=False)

    # -- terminate on node2: cancel there, the epilog with node2's paths -------------------------------
    epilog = fe.terminate(vm_id)
    assert epilog.name == "transfer.3.epilog"
    assert epilog.read_text().splitlines()[-1] == f"DELETE storpool {cloud.tm_path('node2', vm_id)} {vm_id} {SYSTEM_DS}"
    assert hosts.state(name) is None
    destroys = [cmd for host, cmd in cloud.ssh_commands() if host == "node2" and " destroy " in cmd]
    assert destroys and destroys[-1].endswith(f"destroy {dom_uuid}")
    assert_nothing_left(cloud, vm_id, {"one-img-90", "one-img-91"})


# --- UEFI NVRAM on the storage driver's volume ----------------------------------------------------


@pytest.fixture
def dev_link(cloud: Cloud) -> Iterator[Path]:
    with device_link(cloud.device_dir("node1"), "lc") as link:
        yield link


def test_uefi_nvram_volume_survives_poweroff_and_resume(cloud: Cloud, libvirtd: object, dev_link: Path,
                                                        tmp_path: Path) -> None:
    vm_id, name, volume = UEFI_VM, f"one-{UEFI_VM}", f"one-sys-{UEFI_VM}-NVRAM"
    assert virsh("domstate", name, check=False).returncode != 0, f"domain {name} exists already"
    rules = tmp_path / "tweaks.d"
    rules.mkdir()
    shipped = (REPO / "rules.d" / "62-os-nvram.yaml").read_text()
    old = "device: /dev/storpool/{px}-sys-{vm_id}-NVRAM"
    assert shipped.count(old) == 1
    (rules / "62-os-nvram.yaml").write_text(shipped.replace(old, f"device: {dev_link}/{{px}}-sys-{{vm_id}}-NVRAM"))
    cloud.configure(TWEAKS_RULES_DIRS=str(rules))
    vm = cloud.make_vm(vm_id, disks=[{"volatile": "fs", "size": 8, "fs": None}],
                       user={"T_OS_LOADER": OVMF_CODE, "T_OS_NVRAM": "storpool"},
                       template={"MEMORY": 128, "VCPU": 1})
    strip_template(vm, "GRAPHICS", "FEATURES/IOTHREADS")
    set_os(vm, MACHINE="q35")  # no OS/FIRMWARE: the loader comes from T_OS_LOADER
    fe = Frontend(cloud, paused=True, kvm=False)
    nvram = cloud.device_dir("node1") / volume
    template = OVMF_VARS.read_bytes()
    try:
        fe.deploy(vm_id)
        inv = cloud.sim.inventory()
        assert inv["volumes"][volume]["size"] == NVRAM_SIZE and inv["volumes"][volume]["tags"]["type"] == "NVRAM"
        gid = inv["volumes"][volume]["globalId"]
        fresh = read_at(nvram, NVRAM_SIZE)
        assert fresh == bytes(NVRAM_SIZE - len(template)) + template, "tm context: the VARS template at the end"
        assert nvram_store(fresh) == {}

        # oned's domain has no firmware; the tweaked one boots OVMF with the volume as pflash1
        rendered = etree.fromstring((cloud.home / "vms" / str(vm_id) / "deployment.0").read_bytes())
        assert rendered.get("type") == "qemu" and rendered.find("os/loader") is None
        live = dumpxml(name)
        assert live.get("type") == "qemu"
        assert (live.findtext("os/loader"), live.find("os/loader").get("type")) == (OVMF_CODE, "pflash")
        assert live.find("os/nvram").get("type") == "block"
        assert live.find("os/nvram/source").get("dev") == f"{dev_link}/{volume}"
        assert any(f"{dev_link}/{volume}" in arg for arg in qemu_argv(name)), "qemu opened the volume"

        # first boot: the firmware writes its variables to the volume
        virsh("resume", name)
        first = wait_nvram(nvram, lambda s: boot_count(s) == 1 and "BootOrder" in boot_entries(s),
                           "write its boot counter and boot entries")
        entries = boot_entries(nvram_store(first))
        assert first != fresh and "Boot0000" in entries

        # poweroff, resume: the same volume, not reset; the second boot counts on from it
        fe.poweroff(vm_id)
        assert name not in virsh("list", "--all", "--name").stdout.split()
        off = read_at(nvram, NVRAM_SIZE)
        assert boot_count(nvram_store(off)) == 1
        fe.resume(vm_id)  # context again (the NVRAM exists: kept), deploy-tweaks, paused
        assert cloud.sim.inventory()["volumes"][volume]["globalId"] == gid, "the same volume"
        assert read_at(nvram, NVRAM_SIZE) == off, "resume left the variables as the first boot wrote them"
        virsh("resume", name)
        second = wait_nvram(nvram, lambda s: boot_count(s) == 2, "count its second boot")
        assert boot_entries(nvram_store(second)) == entries
    finally:
        virsh("destroy", name, check=False)

    # terminate: the NVRAM volume goes with the VM directory
    fe.terminate(vm_id)
    assert volume not in cloud.sim.inventory()["volumes"]
    assert_nothing_left(cloud, vm_id, set())


# --- a real guest through the frontend ------------------------------------------------------------


def test_real_guest_through_the_frontend(cloud: Cloud, libvirtd: object, guest_image: GuestImage) -> None:
    vm_id, name = GUEST_VM, f"one-{GUEST_VM}"
    assert virsh("domstate", name, check=False).returncode != 0, f"domain {name} exists already"
    image, volatile_mb, grown_mb = 95, 32, 48
    cloud.oned.datastore(IMAGE_DS).find("TEMPLATE/SAFE_DIRS").text = (  # type: ignore[union-attr]
        f"/var/tmp {guest_image.directory}")
    assert import_image(cloud, image, guest_image.rootfs, "debian-guest") == f"one-img-{image}"
    root_mb = int(cloud.oned.image(image).findtext("SIZE", "0")) + 64
    vm = cloud.make_vm(vm_id, disks=[
        {"image": image, "size": root_mb},
        {"volatile": "fs", "size": volatile_mb, "fs": "ext4", "DEV_PREFIX": "sd", "TARGET": "sda"},
    ], user={"T_SCSI_QUEUES": "2"}, template={"MEMORY": 512, "VCPU": 2})
    strip_template(vm, "GRAPHICS", "FEATURES/IOTHREADS", "FEATURES/VIRTIO_SCSI_QUEUES", "CPU_MODEL")
    set_os(vm, KERNEL=str(guest_image.kernel), INITRD=str(guest_image.initrd), KERNEL_CMD=guest_image.cmdline,
           MACHINE="q35")
    assert vm.findtext("TEMPLATE/FEATURES/GUEST_AGENT") == "yes"
    volumes = {0: f"one-img-{image}-{vm_id}-0", 1: f"one-sys-{vm_id}-1-raw", 2: f"one-sys-{vm_id}-2-iso"}
    fe = Frontend(cloud, paused=False, kvm=False)
    try:
        fe.deploy(vm_id)
        wait_agent(name, timeout=240)
        # oned's domain: direct kernel boot, one virtio-scsi queue; the tweaked one has two
        rendered = etree.fromstring((cloud.home / "vms" / str(vm_id) / "deployment.0").read_bytes())
        assert rendered.findtext("os/kernel") == str(guest_image.kernel)
        assert rendered.findtext("os/cmdline") == guest_image.cmdline
        assert rendered.find("devices/controller[@model='virtio-scsi']/driver").get("queues") == "1"
        live = dumpxml(name)
        assert live.find("devices/controller[@model='virtio-scsi']/driver").get("queues") == "2"

        # inside: every disk with its size, the root file system is the image, two queues on sda
        disks = lsblk(name)
        assert {n: (int(d["size"]), d["type"]) for n, d in disks.items()} == {
            "vda": (root_mb * MiB, "disk"), "sda": (volatile_mb * MiB, "disk"),
            "sr0": (cloud.sim.inventory()["volumes"][volumes[2]]["size"], "rom")}
        assert guest_check(name, ["/bin/cat", "/etc/one-tweaks-guest"]).strip() == guest_image.marker
        assert mq_count(name, "sda") == 2

        # a live disk snapshot (SNAP_CREATE_LIVE) of the root disk: frozen around the snapshot
        assert "needs_recovery" in superblock_features(cloud.disk_path("node1", vm_id, 0)), "control"
        guest_check(name, ["/bin/sync"])
        fe.disk_snapshot(vm_id, 0, 0)
        hook = guest_check(name, ["/bin/cat", "/run/fsfreeze.log"]).split()
        assert hook[0::2] == ["freeze", "thaw"], f"the guest's fsfreeze hook saw {hook}"
        assert agent(name, "guest-fsfreeze-status") == "thawed"
        with attached_ro(cloud, f"{volumes[0]}-snap0", snapshot=True) as link:
            features = superblock_features(link)
            fsck = subprocess.run(["e2fsck", "-fn", str(link)], capture_output=True, text=True, timeout=120)
        assert "needs_recovery" not in features, "the snapshot was taken while frozen"
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr

        # a live resize of the volatile disk (TM RESIZE + resize_disk-tweaks): the guest sees it
        fe.resize_disk(vm_id, 1, grown_mb)
        assert cloud.sim.inventory()["volumes"][volumes[1]]["size"] == grown_mb * MiB
        deadline = time.monotonic() + 20
        while (size := int(lsblk(name)["sda"]["size"])) != grown_mb * MiB and time.monotonic() < deadline:
            time.sleep(0.5)
        assert size == grown_mb * MiB, f"the guest sees sda at {size} bytes"
    finally:
        virsh("destroy", name, check=False)

    fe.terminate(vm_id)
    assert_nothing_left(cloud, vm_id, {f"one-img-{image}"})
    trash = {s["tags"]["trash"] for s in cloud.sim.inventory()["snapshots"].values()}
    assert trash == {volumes[0], volumes[1]}, "only the trash snapshots of the clone and the volatile disk"
