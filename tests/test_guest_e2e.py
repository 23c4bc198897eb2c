"""The product end to end on a real guest (issue 5, "A real guest").

A minimal Debian (tests/guest.py, built once per machine) is imported into the StorPool
simulator as an image by the real ``datastore/storpool/stat`` and ``cp`` actions, a datablock
is made by ``mkfs``; a VM with that image as its root disk (non-persistent, grown on clone),
the persistent datablock on virtio-scsi, a volatile ext4 disk and a context CD-ROM goes
through the TM prolog (clone, ln, mkimage, context) as oned runs it; ``vmm/kvm/deploy-tweaks``
gets oned's domain XML (rendered below from the VM document the way
src/vmm/LibVirtDriverKVM.cc does: block disks at the system datastore's ``disk.N``, the
context CD-ROM as a file, direct kernel boot from OS/KERNEL, INITRD, KERNEL_CMD, the guest
agent channel) and deploys it through a stand-in of OpenNebula's remote ``vmm/kvm/deploy``
(NOT OpenNebula's script: it stores the file, ``virsh create``s it and prints the UUID, as
the stock script does for our paths) over the real ssh hop. The guest runs under TCG
(``type='qemu'``): this machine's nested KVM hangs its kernel.

Everything the VM should see is then checked from INSIDE the guest through qemu-guest-agent
(guest-exec): disks and sizes, queue counts the tweaks set, the imported root file system,
the context CD-ROM; then a live disk snapshot with fsfreeze, a live resize, and the
terminate epilog with nothing left behind.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import drivers
import pytest
from guest import AGENT_CHANNEL, GuestImage, agent, console_xml, guest_check, guest_image, os_xml, wait_agent
from livevm import dumpxml, libvirtd, qmp, virsh
from lxml import etree
from sim import oned as oned_sim
from storage_env import FRONTEND, IMAGE_DS, SYSTEM_DS, Cloud, cloud, sshd

FIXTURES = (cloud, sshd, libvirtd, guest_image)
pytestmark = [pytest.mark.libvirtd, pytest.mark.usefixtures("libvirtd")]

DEPLOY = drivers.KVM / "deploy-tweaks"
RESIZE_DISK = drivers.KVM / "resize_disk-tweaks"
VM_ID = 7342                      # domain one-7342: unlikely to meet another test's domain
IMAGE, DATABLOCK = 70, 71         # image ids
VCPU, VCPU_MAX = 2, 4             # <vcpu current='2'>4</vcpu>: queues follow the vCPUs online at boot
DATABLOCK_MB, VOLATILE_MB, VOLATILE_GROWN_MB = 64, 96, 160
ROOT_EXTRA_MB = 128               # the root disk's SIZE is the image's plus this (clone grows it)
BOOT_LIMIT = 60.0                 # seconds from deploy to the agent's answer (TCG)
MiB = 2**20

STANDIN_DEPLOY = """#!/bin/bash
# Test stand-in for OpenNebula's remote vmm/kvm/deploy (NOT OpenNebula's script): stores
# stdin as the deployment file, creates the transient domain and prints its UUID.
set -euo pipefail
cat > "$1"
name=$(xmllint --xpath 'string(/domain/name)' "$1")
virsh --connect qemu:///system create "$1" >/dev/null
uuid=$(virsh --connect qemu:///system domuuid "$name")
echo "${uuid%%[[:space:]]*}"
"""


def ok(proc: subprocess.CompletedProcess[bytes]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr.decode(errors='replace')}"
    return proc.stdout.decode()


# --- oned's side: images, the VM document, the domain XML --------------------------------------


def import_image(cloud: Cloud, image_id: int, path: Path, name: str) -> str:
    """oned's image create: the IMAGE allocated LOCKED, DS ``stat`` for its size, DS ``cp``
    for the data; SOURCE/FORMAT from cp's output, then READY."""
    img = cloud.make_image(image_id, size_mb=0, source="", state=oned_sim.IMAGE_LOCKED, name=name)
    img.find("PATH").text = str(path)  # type: ignore[union-attr]
    size_mb = int(ok(cloud.run_ds("stat", cloud.ds_message(image_id), image_id)).strip())
    img.find("SIZE").text = str(size_mb)  # type: ignore[union-attr]
    source, fmt = ok(cloud.run_ds("cp", cloud.ds_message(image_id), image_id, timeout=600)).split()
    img.find("SOURCE").text = source  # type: ignore[union-attr]
    img.find("FORMAT").text = fmt  # type: ignore[union-attr]
    img.find("STATE").text = str(oned_sim.IMAGE_READY)  # type: ignore[union-attr]
    return source


def make_datablock(cloud: Cloud, image_id: int, size_mb: int) -> str:
    """An empty persistent DATABLOCK with an ext4 file system, by DS ``mkfs``."""
    img = cloud.make_image(image_id, size_mb=size_mb, persistent=True, source="", state=oned_sim.IMAGE_LOCKED,
                           name="data")
    img.find("FS").text = "ext4"  # type: ignore[union-attr]
    source = ok(cloud.run_ds("mkfs", cloud.ds_message(image_id), image_id)).strip()
    img.find("SOURCE").text = source  # type: ignore[union-attr]
    img.find("STATE").text = str(oned_sim.IMAGE_USED)  # type: ignore[union-attr]
    return source


def shape_vm(vm: etree._Element, image: GuestImage) -> None:
    """vm-42.xml's template made this VM's: direct kernel boot, VCPU 2 of VCPU_MAX 4, 512 MB,
    the guest agent; no NIC, graphics, video, UEFI or oned-set queues/iothreads."""
    tpl = vm.find("TEMPLATE")
    assert tpl is not None
    for path in ("CPU_MODEL", "GRAPHICS", "NIC", "SECURITY_GROUP_RULE", "VIDEO", "OS",
                 "FEATURES/IOTHREADS", "FEATURES/VIRTIO_SCSI_QUEUES"):
        for el in tpl.findall(path):
            el.getparent().remove(el)  # type: ignore[union-attr]
    os_el = etree.SubElement(tpl, "OS")
    for key, text in (("INITRD", str(image.initrd)), ("KERNEL", str(image.kernel)), ("KERNEL_CMD", image.cmdline),
                      ("MACHINE", "q35")):
        etree.SubElement(os_el, key).text = etree.CDATA(text)
    for key, number in (("VCPU", VCPU), ("VCPU_MAX", VCPU_MAX), ("MEMORY", 512)):
        found = tpl.find(key)
        el = found if found is not None else etree.SubElement(tpl, key)
        el.text = etree.CDATA(str(number))
    features = tpl.find("FEATURES")
    assert features is not None and features.findtext("GUEST_AGENT") == "yes"


def render_domain(cloud: Cloud, vm: etree._Element, image: GuestImage, console_log: Path) -> bytes:
    """The deployment file oned writes for this VM on this machine (LibVirtDriverKVM.cc, 6.10
    layout): qemu binary of this machine, type='qemu' (TCG), the serial console to a file as
    RAW data (so kernel messages survive a failure)."""
    tpl = vm.find("TEMPLATE")
    assert tpl is not None
    vm_dir = cloud.vm_dir("node1", VM_ID)
    bus = {"vd": "virtio", "sd": "scsi", "hd": "sata"}
    disks = []
    for disk in tpl.findall("DISK"):
        target = disk.findtext("TARGET", "")
        source = f"{vm_dir}/disk.{disk.findtext('DISK_ID')}"
        kind = "block" if disk.findtext("DISK_TYPE") == "BLOCK" else "file"
        src = f"<source dev='{source}'/>" if kind == "block" else f"<source file='{source}'/>"
        io = " io='native'" if kind == "block" else ""
        disks.append(f"<disk type='{kind}' device='disk'>{src}<target dev='{target}' bus='{bus[target[:2]]}'/>"
                     f"<driver name='qemu' type='raw' cache='none'{io} discard='unmap'/></disk>")
    ctx = tpl.find("CONTEXT")
    assert ctx is not None
    disks.append(f"<disk type='file' device='cdrom'><source file='{vm_dir}/disk.{ctx.findtext('DISK_ID')}'/>"
                 f"<target dev='{ctx.findtext('TARGET')}' bus='sata'/><readonly/>"
                 f"<driver name='qemu' type='raw'/></disk>")
    if any(d.findtext("TARGET", "").startswith("sd") for d in tpl.findall("DISK")):
        disks.append("<controller type='scsi' index='0' model='virtio-scsi'/>")
    memory_kib = int(tpl.findtext("MEMORY", "0")) * 1024
    return f"""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
	<name>one-{VM_ID}</name>
	<title>{vm.findtext('NAME')}</title>
	<vcpu current='{tpl.findtext('VCPU')}'><![CDATA[{tpl.findtext('VCPU_MAX')}]]></vcpu>
	<cputune><shares>1024</shares></cputune>
	<memory>{memory_kib}</memory>
	{os_xml(image, machine=tpl.findtext('OS/MACHINE', 'q35'), cmdline=tpl.findtext('OS/KERNEL_CMD', ''))}
	<devices>
		<emulator><![CDATA[/usr/bin/qemu-system-x86_64]]></emulator>
		{''.join(disks)}
	</devices>
	<features><acpi/></features>
	<devices>{AGENT_CHANNEL}</devices>
	<devices>{console_xml(console_log)}</devices>
	<metadata>
		<one:vm xmlns:one="http://opennebula.org/xmlns/libvirt/1.0">
			<one:system_datastore><![CDATA[{vm_dir}]]></one:system_datastore>
			<one:name><![CDATA[{vm.findtext('NAME')}]]></one:name>
			<one:opennebula_version>6.10.0</one:opennebula_version>
		</one:vm>
	</metadata>
</domain>
""".encode()


def deploy(cloud: Cloud, domain: bytes) -> str:
    """``vmm/kvm/deploy-tweaks`` as oned's local deploy runs it; returns the printed UUID."""
    remotes = cloud.root / "remotes"
    script = remotes / "vmm" / "kvm" / "deploy"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(STANDIN_DEPLOY)
    script.chmod(0o755)
    cloud.configure(SCRIPTS_REMOTE_DIR=str(remotes))
    local = cloud.home / "vms" / str(VM_ID) / "deployment.0"
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(domain)
    proc = subprocess.run([sys.executable, str(DEPLOY), str(local), "node1", str(VM_ID), "node1"],
                          input=base64.b64encode(domain), capture_output=True, env=cloud.env, cwd=cloud.home,
                          timeout=180, check=False)
    return ok(proc).strip()


# --- looking at things ---------------------------------------------------------------------------


def lsblk(name: str) -> dict[str, dict[str, Any]]:
    out = guest_check(name, ["/bin/lsblk", "-b", "-d", "-J", "-o", "NAME,SIZE,TYPE,RO"])
    return {d["name"]: d for d in json.loads(out)["blockdevices"]}


def blkid(name: str, device: str) -> dict[str, str]:
    out = guest_check(name, ["/sbin/blkid", "-p", "-o", "export", device])
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def mq_count(name: str, dev: str) -> int:
    return len(guest_check(name, ["/bin/ls", f"/sys/block/{dev}/mq"]).split())


def sim_size(cloud: Cloud, volume: str) -> int:
    return int(cloud.sim.inventory()["volumes"][volume]["size"])


def superblock_features(device: Path) -> list[str]:
    out = subprocess.run(["dumpe2fs", "-h", str(device)], capture_output=True, text=True, timeout=60, check=True)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("Filesystem features:"))
    return line.split(":", 1)[1].split()


def holders(device: str) -> list[str]:
    """Processes that have ``device`` open (pid and command), for a failure message."""
    out = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) == device for fd in fd_dir.iterdir()):
                cmd = (fd_dir.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                out.append(f"{fd_dir.parent.name}: {cmd.strip()[:120]}")
    return out


@contextlib.contextmanager
def attached_ro(cloud: Cloud, volume: str, *, snapshot: bool = False) -> Iterator[Path]:
    """A volume or snapshot attached read-only to the front-end for the block; the detach is
    retried for a while when the simulator finds the device still open (its check is
    machine-wide), and names the holders if it stays busy."""
    link = cloud.attach(volume, FRONTEND, rw=False, snapshot=snapshot)
    device = os.path.realpath(link)
    try:
        yield link
    finally:
        deadline = time.monotonic() + 15
        while True:
            try:
                cloud.detach(volume, FRONTEND, snapshot=snapshot)
                break
            except RuntimeError as exc:
                if "is open at client" not in str(exc) or time.monotonic() > deadline:
                    raise RuntimeError(f"{exc}; {device} held by {holders(device)}") from None
                time.sleep(0.5)


def symlinks(cloud: Cloud) -> list[str]:
    out = []
    for host in cloud.hosts:
        for top in (cloud.ds_location(host), cloud.device_dir(host)):
            out += [str(p) for p in top.rglob("*") if p.is_symlink()]
    return out


# --- the scenario --------------------------------------------------------------------------------


def test_real_guest_import_deploy_snapshot_resize_terminate(cloud: Cloud, libvirtd: object,
                                                             guest_image: GuestImage, tmp_path: Path) -> None:
    name = f"one-{VM_ID}"
    assert virsh("domstate", name, check=False).returncode != 0, (
        f"a domain {name} already exists (left by a crashed run? virsh destroy {name})")
    timings: dict[str, float] = {}
    t0 = time.monotonic()

    # -- images: the guest's rootfs.raw through DS stat + cp; a datablock through DS mkfs --------
    cloud.oned.datastore(IMAGE_DS).find("TEMPLATE/SAFE_DIRS").text = (  # type: ignore[union-attr]
        f"/var/tmp {guest_image.directory}")
    assert import_image(cloud, IMAGE, guest_image.rootfs, "debian-guest") == f"one-img-{IMAGE}"
    image_mb = int(cloud.oned.image(IMAGE).findtext("SIZE", "0"))
    assert image_mb == guest_image.size_mib
    with attached_ro(cloud, f"one-img-{IMAGE}") as link:
        imported = Cloud.sha256(link, guest_image.size)
    assert imported == Cloud.sha256(guest_image.rootfs, guest_image.size)
    assert make_datablock(cloud, DATABLOCK, DATABLOCK_MB) == f"one-img-{DATABLOCK}"
    timings["import"] = time.monotonic() - t0

    # -- the VM and its prolog -------------------------------------------------------------------
    root_mb = image_mb + ROOT_EXTRA_MB
    vm = cloud.make_vm(VM_ID, disks=[
        {"image": IMAGE, "size": root_mb, "TARGET": "vda"},
        {"image": DATABLOCK, "persistent": True, "size": DATABLOCK_MB, "DEV_PREFIX": "sd", "TARGET": "sda"},
        {"volatile": "fs", "size": VOLATILE_MB, "fs": "ext4", "TARGET": "vdb"},
    ], user={"T_BLK_QUEUES": "YES", "T_IOTHREADS_OVERRIDE": "2"})
    shape_vm(vm, guest_image)
    vid, t1 = str(VM_ID), time.monotonic()
    ok(cloud.run_tm("clone", f"{FRONTEND}:one-img-{IMAGE}", cloud.tm_path("node1", VM_ID, 0), vid, str(IMAGE_DS)))
    ok(cloud.run_tm("ln", f"{FRONTEND}:one-img-{DATABLOCK}", cloud.tm_path("node1", VM_ID, 1), vid,
                    str(IMAGE_DS)))
    ok(cloud.run_tm("mkimage", str(VOLATILE_MB), "raw", cloud.tm_path("node1", VM_ID, 2), vid, str(SYSTEM_DS)))
    context_sh = cloud.home / "vms" / vid / "context.sh"
    context_sh.parent.mkdir(parents=True, exist_ok=True)
    context_line = f"ONE_TWEAKS_E2E='{guest_image.marker.split()[-1]}'"
    context_sh.write_text(f"# Context variables generated by OpenNebula\nVMID='{VM_ID}'\n{context_line}\n")
    ok(cloud.run_tm("context", str(context_sh), cloud.tm_path("node1", VM_ID, 3), vid, str(SYSTEM_DS)))
    timings["prolog"] = time.monotonic() - t1
    volumes = {0: f"one-img-{IMAGE}-{VM_ID}-0", 1: f"one-img-{DATABLOCK}", 2: f"one-sys-{VM_ID}-2-raw",
               3: f"one-sys-{VM_ID}-3-iso"}
    assert set(cloud.sim.inventory()["volumes"]) == {f"one-img-{IMAGE}", *volumes.values()}

    # -- deploy with the tweaks; the guest boots from the cloned image ------------------------------
    console = tmp_path / "console.log"
    domain = render_domain(cloud, vm, guest_image, console)
    t2 = time.monotonic()
    try:
        uuid = deploy(cloud, domain)
        vm.find("DEPLOY_ID").text = uuid  # type: ignore[union-attr]  # oned keeps what deploy printed
        assert uuid == virsh("domuuid", name).stdout.strip()
        wait_agent(name, timeout=120, console_log=console)
        timings["boot"] = time.monotonic() - t2
        assert timings["boot"] < BOOT_LIMIT, f"guest took {timings['boot']:.0f} s to answer (TCG)"
        _check_inside(cloud, name, guest_image, root_mb, volumes, context_line)
        _live_snapshot(cloud, name, volumes[0])
        _live_resize(cloud, name, uuid, volumes[2])
    finally:
        # oned's cancel: virsh destroy on the host (by name too, should deploy have failed late)
        cloud.ssh("node1", "virsh", "--connect", "qemu:///system", "destroy", name)
        virsh("destroy", name, check=False)

    # -- terminate: the epilog lines oned writes (transfer-examples.txt) -------------------------
    t3 = time.monotonic()
    ok(cloud.run_tm("delete", cloud.tm_path("node1", VM_ID, 0), vid, str(IMAGE_DS)))
    ok(cloud.run_tm("mvds", cloud.tm_path("node1", VM_ID, 1), f"one-img-{DATABLOCK}", vid, str(IMAGE_DS)))
    ok(cloud.run_tm("delete", cloud.tm_path("node1", VM_ID, 2), vid, str(SYSTEM_DS)))
    ok(cloud.run_tm("delete", cloud.tm_path("node1", VM_ID), vid, str(SYSTEM_DS)))
    timings["epilog"] = time.monotonic() - t3
    inv = cloud.sim.inventory()
    assert set(inv["volumes"]) == {f"one-img-{IMAGE}", f"one-img-{DATABLOCK}"}
    assert inv["attachments"] == [] and inv["loops"] == []
    assert symlinks(cloud) == []
    assert not cloud.vm_dir("node1", VM_ID).exists()
    assert name not in virsh("list", "--all", "--name").stdout.split()
    assert list((cloud.root / "staging").iterdir()) == []
    timings["total"] = time.monotonic() - t0
    built = f"built in {guest_image.built_in:.0f} s" if guest_image.built_in is not None else "cached"
    print(f"guest e2e timings (s): {', '.join(f'{k} {v:.1f}' for k, v in timings.items())}; guest {built}")
    # a terminated VM's disks leave only their trash snapshots (DELAY_DELETE), not the disk
    # snapshots oned no longer knows about (ceph's delete removes them with the disk too)
    leftover = {n: s["tags"].get("trash") for n, s in inv["snapshots"].items()}
    assert leftover == {f"{volumes[0]}-DELETED-1717000000": volumes[0],
                        f"{volumes[2]}-DELETED-1717000000": volumes[2]}, "only the trash snapshots stay"


def _check_inside(cloud: Cloud, name: str, image: GuestImage, root_mb: int, volumes: dict[int, str],
                  context_line: str) -> None:
    """What the guest itself sees."""
    # the tweaks reached libvirt: virtio-blk disks and the virtio-scsi controller got one queue
    # per vCPU online at boot (VCPU, not VCPU_MAX), two iothreads; the volatile and context disks stayed/became block
    live = dumpxml(name)
    queues = {d.get("dev"): d.getparent().find("driver").get("queues")  # type: ignore[union-attr]
              for d in live.iterfind("devices/disk/target[@bus='virtio']")}
    assert queues == {"vda": str(VCPU), "vdb": str(VCPU)}
    scsi = live.find("devices/controller[@model='virtio-scsi']/driver")
    assert scsi is not None and scsi.get("queues") == str(VCPU)
    assert [d.get("type") for d in live.iterfind("devices/disk")] == ["block"] * 4
    assert len(qmp(name, "query-iothreads")) == 2

    # vCPUs: two online of four possible (hot-plug room); one queue per boot vCPU
    assert guest_check(name, ["/bin/cat", "/sys/devices/system/cpu/online"]).strip() == "0-1"
    assert guest_check(name, ["/bin/cat", "/sys/devices/system/cpu/possible"]).strip() == "0-3"
    assert {dev: mq_count(name, dev) for dev in ("vda", "vdb", "sda")} == {"vda": 2, "vdb": 2, "sda": 2}

    # every disk with its size
    disks = lsblk(name)
    context_size = sim_size(cloud, volumes[3])
    assert {n: (int(d["size"]), d["type"], d["ro"] in (True, 1, "1")) for n, d in disks.items()} == {
        "vda": (root_mb * MiB, "disk", False),
        "sda": (DATABLOCK_MB * MiB, "disk", False),
        "vdb": (VOLATILE_MB * MiB, "disk", False),
        "sr0": (context_size, "rom", True),
    }
    assert sim_size(cloud, volumes[0]) == root_mb * MiB

    # the root file system is the imported image (its build marker), on vda
    assert guest_check(name, ["/bin/findmnt", "-n", "-o", "SOURCE", "/"]).strip() == "/dev/vda"
    assert guest_check(name, ["/bin/cat", "/etc/one-tweaks-guest"]).strip() == image.marker
    # file systems made by DS mkfs (datablock) and TM mkimage (volatile FS=ext4)
    assert blkid(name, "/dev/sda")["TYPE"] == "ext4"
    assert blkid(name, "/dev/vdb")["TYPE"] == "ext4"

    # the context CD-ROM: ISO 9660 labelled CONTEXT carrying context.sh
    cd = blkid(name, "/dev/sr0")
    assert (cd["TYPE"], cd["LABEL"]) == ("iso9660", "CONTEXT")
    guest_check(name, ["/bin/mount", "-t", "iso9660", "-o", "ro", "/dev/sr0", "/mnt"])
    try:
        assert context_line in guest_check(name, ["/bin/cat", "/mnt/context.sh"]).splitlines()
    finally:
        guest_check(name, ["/bin/umount", "/mnt"])


def _live_snapshot(cloud: Cloud, name: str, volume: str) -> None:
    """SNAP_CREATE_LIVE of the root disk with GUEST_AGENT=yes: the guest's file systems are
    frozen around the snapshot, so the snapshot's ext4 needs no journal recovery while the
    running disk (mounted, not frozen) does."""
    live_disk = cloud.disk_path("node1", VM_ID, 0)
    assert "needs_recovery" in superblock_features(live_disk), "control: a mounted ext4 needs recovery"
    guest_check(name, ["/bin/sync"])
    before = {api: len(cloud.libvirt_calls(api)) for api in ("virDomainFSFreeze", "virDomainFSThaw")}
    proc = cloud.run_tm("snap_create_live", cloud.tm_path("node1", VM_ID, 0), "0", str(VM_ID), str(IMAGE_DS))
    err = ok_stderr(proc)
    assert "not frozen" not in err, err
    # libvirt-python's fsFreeze and fsThaw, once each, on node1's libvirt (no virsh)
    assert {api: len(cloud.libvirt_calls(api)) - n for api, n in before.items()} == {
        "virDomainFSFreeze": 1, "virDomainFSThaw": 1}
    hook = guest_check(name, ["/bin/cat", "/run/fsfreeze.log"]).split()
    assert hook[0::2] == ["freeze", "thaw"], f"the guest's fsfreeze hook saw {hook}"
    assert agent(name, "guest-fsfreeze-status") == "thawed"
    snapshot = f"{volume}-snap0"
    snap = cloud.sim.inventory()["snapshots"].get(snapshot)
    assert snap is not None and snap["tags"]["nvm"] == str(VM_ID)
    with attached_ro(cloud, snapshot, snapshot=True) as link:
        features = superblock_features(link)
        fsck = subprocess.run(["e2fsck", "-fn", str(link)], capture_output=True, text=True, timeout=120)
    assert "needs_recovery" not in features, "the snapshot was taken while frozen"
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def ok_stderr(proc: subprocess.CompletedProcess[bytes]) -> str:
    ok(proc)
    return proc.stderr.decode(errors="replace")


def _live_resize(cloud: Cloud, name: str, uuid: str, volume: str) -> None:
    """oned's RESIZEDISK of the volatile disk: DISK/SIZE set, the TM RESIZE line, then the VMM
    ``resize_disk`` step through our override ``vmm/kvm/resize_disk-tweaks`` (``virsh
    blockresize`` on the host): the guest sees it grow."""
    vm = cloud.oned.vm(VM_ID)
    disk = next(d for d in vm.iterfind("TEMPLATE/DISK") if d.findtext("DISK_ID") == "2")
    disk.find("SIZE").text = etree.CDATA(str(VOLATILE_GROWN_MB))  # type: ignore[union-attr]
    ok(cloud.run_tm("resize", cloud.tm_path("node1", VM_ID, 2), str(VOLATILE_GROWN_MB), str(VM_ID), str(SYSTEM_DS)))
    assert sim_size(cloud, volume) == VOLATILE_GROWN_MB * MiB
    root = etree.Element("VMM_DRIVER_ACTION_DATA")
    etree.SubElement(root, "HOST").text = "node1"
    etree.SubElement(root, "DEPLOY_ID").text = uuid
    root.append(cloud.oned.served("vm", VM_ID))
    root.append(cloud.oned.served("datastore", SYSTEM_DS))
    msg = base64.b64encode(etree.tostring(root))
    ok(subprocess.run([sys.executable, str(RESIZE_DISK), uuid, "2", str(VOLATILE_GROWN_MB), msg.decode(), "node1",
                       str(VM_ID), "node1"], input=msg, capture_output=True, env=cloud.env, cwd=cloud.home,
                      timeout=120, check=False))
    deadline = time.monotonic() + 20
    while True:
        size = lsblk(name)["vdb"]["size"]
        if size == VOLATILE_GROWN_MB * MiB or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert size == VOLATILE_GROWN_MB * MiB, f"the guest sees vdb at {size} bytes"
    # the guest can use the new space: the volatile ext4 grows into it
    guest_check(name, ["/sbin/resize2fs", "/dev/vdb"], timeout=120)
    out = guest_check(name, ["/sbin/dumpe2fs", "-h", "/dev/vdb"])
    fields = dict(ln.split(":", 1) for ln in out.splitlines() if ":" in ln)
    assert int(fields["Block count"]) * int(fields["Block size"]) == VOLATILE_GROWN_MB * MiB
