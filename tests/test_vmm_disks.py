"""Disk hotplug through ``vmm/kvm/attach_disk``, ``detach_disk`` and ``resize_disk``, called
as oned calls a local override (same argv as the remote script; the base64 driver message
in argv and on stdin), on real small VMs (libvirtd + qemu, paused) whose disks the TM
driver made on the StorPool simulator; the host is reached over a real ssh hop, and qemu
itself (``query-block``) says what the guest got.

The domains are started the way OpenNebula's remote ``kvm/deploy`` does (``virsh create``
of the deployment file); the CD-ROM tests give them an empty CD-ROM drive exactly like the
persistent_cdrom tweak makes. OpenNebula's own remote ``attach_disk`` cannot be installed
here: the test of the hand-over installs a stand-in (see ``STANDIN_ATTACH``).
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import drivers
import pytest
from livevm import dumpxml, kvm_available, libvirtd, qmp, virsh
from lxml import etree
from storage_env import SYSTEM_DS, Cloud, cloud, sshd

from tweaks import provenance

FIXTURES = (cloud, sshd, libvirtd)
KVM = drivers.KVM
MiB = 2**20

EMPTY_CDROM = ("<disk type='block' device='cdrom'><driver name='qemu' type='raw' cache='none' io='native'/>"
               "<target dev='hda' bus='ide'/><readonly/></disk>")

# A stand-in for OpenNebula's remote vmm/kvm/attach_disk (NOT OpenNebula's script): it
# records its argv and stdin, as the stock script would receive them.
STANDIN_ATTACH = """#!/bin/sh
# Test stand-in for OpenNebula's remote vmm/kvm/attach_disk: records argv and stdin.
printf '%s\\n' "$@" > "$(dirname "$0")/attach_disk.argv"
cat > "$(dirname "$0")/attach_disk.stdin"
"""


# --- helpers -------------------------------------------------------------------------------------

def run_vmm(cloud: Cloud, name: str, *argv: str, stdin: bytes = b"",
            timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, str(KVM / name), *argv], input=stdin, capture_output=True,
                          env=cloud.env, cwd=cloud.home, timeout=timeout, check=False)


def message(cloud: Cloud, vm_id: int, deploy_id: str = "") -> str:
    """The base64 ``<VMM_DRIVER_ACTION_DATA>`` oned passes attach_disk/resize_disk."""
    root = etree.Element("VMM_DRIVER_ACTION_DATA")
    etree.SubElement(root, "HOST").text = "node1"
    etree.SubElement(root, "DEPLOY_ID").text = deploy_id
    root.append(cloud.oned.served("vm", vm_id))
    root.append(cloud.oned.served("datastore", SYSTEM_DS))
    return base64.b64encode(etree.tostring(root)).decode()


def attach(cloud: Cloud, vm_id: int, uuid: str, disk_id: int, target: str, *,
           script: str = "attach_disk-tweaks", msg: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """``attach_disk <deploy_id> <disk path> <target> <index> <b64 msg> <vmid> <host>``; stdin
    the base64 message too (a local action)."""
    msg = message(cloud, vm_id, uuid) if msg is None else msg
    path = str(cloud.disk_path("node1", vm_id, disk_id))
    return run_vmm(cloud, script, uuid, path, target, str(disk_id), msg, str(vm_id), "node1", stdin=msg.encode())


def detach(cloud: Cloud, vm_id: int, uuid: str, disk_id: int, target: str,
           script: str = "detach_disk-tweaks") -> subprocess.CompletedProcess[bytes]:
    path = str(cloud.disk_path("node1", vm_id, disk_id))
    return run_vmm(cloud, script, uuid, path, target, str(disk_id), str(vm_id), "node1")


def domain_xml(cloud: Cloud, vm_id: int, extra: str = "") -> bytes:
    """What oned renders for this machine: disk.0 as vda on the driver's link, ``extra``
    devices (e.g. an empty CD-ROM drive; ``{vm_dir}`` is the VM directory), a virtio-scsi
    controller."""
    vm_dir = f"{cloud.hosts['node1'].ds_location}/{SYSTEM_DS}/{vm_id}"  # as oned writes it: with "//"
    kind = "kvm" if kvm_available() else "qemu"
    cpu = ("<cpu mode='host-passthrough' check='none' migratable='on'>"
           "<feature policy='disable' name='arch-capabilities'/></cpu>") if kind == "kvm" else ""
    return f"""<domain type='{kind}'>
  <name>one-{vm_id}</name>
  <vcpu>1</vcpu>
  <memory>262144</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  {cpu}
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='block' device='disk'><source dev='{vm_dir}/disk.0'/><target dev='vda' bus='virtio'/>
      <driver name='qemu' type='raw' cache='none' io='native'/></disk>
    {extra.replace("{vm_dir}", vm_dir)}
    <controller type='scsi' index='0' model='virtio-scsi'/>
  </devices>
</domain>
""".encode()


@pytest.fixture
def domains(cloud: Cloud, libvirtd: object) -> Iterator[list[str]]:
    """Names of the domains a test started; destroyed before the cloud goes."""
    names: list[str] = []
    yield names
    for name in names:
        virsh("destroy", name, check=False, timeout=120)


def deploy(cloud: Cloud, domains: list[str], vm_id: int, extra: str = "") -> str:
    path = cloud.vm_dir("node1", vm_id) / "deployment.0"
    path.write_bytes(domain_xml(cloud, vm_id, extra))
    domains.append(f"one-{vm_id}")
    virsh("create", str(path), "--paused", timeout=120)
    return virsh("domuuid", f"one-{vm_id}").stdout.strip()


def make_vm(cloud: Cloud, vm_id: int, *disks: dict[str, Any], volumes: bool = True) -> None:
    """A VM whose disk 0 (image 7, vda) the TM driver made on node1, plus ``disks`` (their
    volumes made by the TM CLONE line, as oned runs it before attach_disk); ``volumes=False``:
    only oned's document."""
    cloud.make_vm(vm_id, disks=[{"image": 7, "size": 16}, *disks], context=False)
    if not volumes:
        return
    if "one-img-7" not in cloud.sim.inventory()["volumes"]:
        cloud.make_volume("one-img-7", 16, data=b"boot" * 100)
    for disk_id, spec in enumerate([{"image": 7}, *disks]):
        if "image" not in spec or spec.get("TM_MAD"):
            continue
        image = int(spec["image"])
        if f"one-img-{image}" not in cloud.sim.inventory()["volumes"]:
            cloud.make_volume(f"one-img-{image}", int(spec.get("size", 16)), data=f"image {image}".encode() * 100)
        proc = cloud.run_tm("clone", f"one-fe:one-img-{image}", cloud.tm_path("node1", vm_id, disk_id),
                            str(vm_id), "100")
        assert proc.returncode == 0, proc.stderr.decode()


def blocks(name: str) -> dict[str, dict[str, Any]]:
    """qemu's block devices by qdev id (``scsi0-0-0-0``, ``ide0-0-0``, virtio paths)."""
    return {b["qdev"]: b for b in qmp(name, "query-block")}


def files(name: str) -> list[str]:
    return sorted(b["inserted"]["file"] for b in qmp(name, "query-block") if b.get("inserted"))


def plugs(name: str) -> list[tuple[str, str]]:
    """(device, target) of each hot-plug entry in the running domain's provenance."""
    stamp = provenance.read(dumpxml(name))
    return [] if stamp is None else [(p.device, p.target) for p in stamp.hotplugs]


def one_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, (proc.returncode, lines)
    return lines[0]


# --- attach and detach ------------------------------------------------------------------------

@pytest.mark.libvirtd
def test_attach_a_cloned_disk_live_as_block_and_detach_it(cloud: Cloud, domains: list[str]) -> None:
    vm_id = 7320
    make_vm(cloud, vm_id, {"image": 8, "size": 16, "TARGET": "sda", "ATTACH": "YES", "CACHE": "writeback",
                           "DISK_TYPE": "FILE", "TYPE": "FILE"})
    uuid = deploy(cloud, domains, vm_id)
    name = f"one-{vm_id}"
    disk1 = str(cloud.disk_path("node1", vm_id, 1))
    assert disk1 not in files(name)
    proc = attach(cloud, vm_id, uuid, 1, "sda", script="attach_disk.storpool")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b""
    assert disk1 in files(name), "qemu has the new disk"
    found = blocks(name)["scsi0-0-0-0"]
    assert found["inserted"]["file"] == disk1 and found["inserted"]["drv"] == "raw"
    (live,) = [d for d in dumpxml(name).iterfind("devices/disk") if d.find("target").get("dev") == "sda"]
    # DISK_TYPE/TYPE FILE of a storpool disk: attached as a block device anyway
    assert live.get("type") == "block" and live.find("target").get("bus") == "scsi"
    assert dict(live.find("driver").attrib) == {"name": "qemu", "type": "raw", "cache": "writeback",
                                                "discard": "unmap"}
    # oned retrying the attach: nothing more happens
    again = attach(cloud, vm_id, uuid, 1, "sda")
    assert again.returncode == 0, again.stderr.decode()
    assert files(name).count(disk1) == 1
    # the hot-plug is in the running domain's provenance, once, however often it was tried
    assert plugs(name) == [("disk", "sda")]

    gone = detach(cloud, vm_id, uuid, 1, "sda")
    assert gone.returncode == 0, gone.stderr.decode()
    assert disk1 not in files(name)
    assert plugs(name) == [], "the unplugged disk's provenance entry went with it"
    # plugged in again: one entry again
    assert attach(cloud, vm_id, uuid, 1, "sda").returncode == 0
    assert plugs(name) == [("disk", "sda")]
    gone = detach(cloud, vm_id, uuid, 1, "sda")
    assert gone.returncode == 0, gone.stderr.decode()
    assert all(d.find("target").get("dev") != "sda" for d in dumpxml(name).iterfind("devices/disk"))
    assert detach(cloud, vm_id, uuid, 1, "sda").returncode == 0, "a re-run finds it detached"
    assert cloud.libvirt_tunnels(), "libvirt-python reached node1's libvirtd through ssh"


@pytest.mark.libvirtd
def test_a_virtio_disk_the_guest_does_not_release_is_not_reported_detached(
        cloud: Cloud, domains: list[str]) -> None:
    vm_id = 7321
    make_vm(cloud, vm_id, {"image": 8, "size": 16, "TARGET": "vdb", "ATTACH": "YES", "READONLY": "YES",
                           "TOTAL_IOPS_SEC": "500"})
    uuid = deploy(cloud, domains, vm_id)
    name = f"one-{vm_id}"
    disk1 = str(cloud.disk_path("node1", vm_id, 1))
    proc = attach(cloud, vm_id, uuid, 1, "vdb")
    assert proc.returncode == 0, proc.stderr.decode()
    found = [b for b in qmp(name, "query-block") if b.get("inserted", {}).get("file") == disk1]
    assert len(found) == 1 and found[0]["inserted"]["ro"] is True
    assert found[0]["inserted"]["iops"] == 500
    # a paused guest never acknowledges a PCI unplug: oned must not delete the volume under it
    cloud.configure(DETACH_TIMEOUT=1)
    stuck = detach(cloud, vm_id, uuid, 1, "vdb")
    assert f"the guest of {uuid} did not release vdb" in one_line(stuck)
    assert disk1 in files(name)
    # oned retrying: qemu says the unplug is under way; still waited for, still not reported done
    again = detach(cloud, vm_id, uuid, 1, "vdb")
    assert f"the guest of {uuid} did not release vdb" in one_line(again)


@pytest.mark.libvirtd
def test_cdrom_goes_into_the_empty_drive_and_is_ejected_from_it(cloud: Cloud, domains: list[str]) -> None:
    vm_id = 7322
    cloud.make_image(10, size_mb=4, image_type="CDROM")
    cloud.make_image(11, size_mb=4, image_type="CDROM")
    make_vm(cloud, vm_id, {"image": 10, "cdrom": True, "size": 4, "TARGET": "hdb", "ATTACH": "YES"},
            {"image": 11, "cdrom": True, "size": 4, "TARGET": "hdc"})
    # an empty drive (persistent_cdrom) and a CD-ROM the VM was deployed with (disk.2 on hdc)
    deployed_cd = ("<disk type='block' device='cdrom'><source dev='{vm_dir}/disk.2'/><target dev='hdc' bus='ide'/>"
                   "<driver name='qemu' type='raw' cache='none' io='native'/><readonly/></disk>")
    uuid = deploy(cloud, domains, vm_id, EMPTY_CDROM + deployed_cd)
    name = f"one-{vm_id}"
    disk1 = str(cloud.disk_path("node1", vm_id, 1))
    assert "inserted" not in blocks(name)["ide0-0-0"]
    count = len(dumpxml(name).findall("devices/disk"))
    proc = attach(cloud, vm_id, uuid, 1, "hdb", script="attach_disk.cdrom")
    assert proc.returncode == 0, proc.stderr.decode()
    drive = blocks(name)["ide0-0-0"]
    assert drive["inserted"]["file"] == disk1 and drive["inserted"]["ro"] is True
    assert len(dumpxml(name).findall("devices/disk")) == count, "a medium change, no new drive"
    slot, _ = [d for d in dumpxml(name).iterfind("devices/disk") if d.get("device") == "cdrom"]
    assert slot.find("target").get("dev") == "hda" and slot.find("source").get("dev") == disk1
    assert cloud.libvirt_tunnels()
    assert attach(cloud, vm_id, uuid, 1, "hdb").returncode == 0, "a re-run finds it inserted"
    assert files(name).count(disk1) == 1

    ejected = detach(cloud, vm_id, uuid, 1, "hdb", script="detach_disk.cdrom")
    assert ejected.returncode == 0, ejected.stderr.decode()
    assert "inserted" not in blocks(name)["ide0-0-0"], "the drive is empty"
    assert len(dumpxml(name).findall("devices/disk")) == count, "and still there"
    # the drive takes the next CD-ROM
    again = attach(cloud, vm_id, uuid, 1, "hdb")
    assert again.returncode == 0, again.stderr.decode()
    assert blocks(name)["ide0-0-0"]["inserted"]["file"] == disk1
    # the CD-ROM the VM was deployed with (oned's "//" path in the domain): ejected, its drive stays
    assert blocks(name)["ide0-1-0"]["inserted"]["file"].endswith("/disk.2")
    out = detach(cloud, vm_id, uuid, 2, "hdc")
    assert out.returncode == 0, out.stderr.decode()
    assert "inserted" not in blocks(name)["ide0-1-0"]
    assert len(dumpxml(name).findall("devices/disk")) == count


@pytest.mark.libvirtd
def test_resize_disk_makes_the_running_guest_see_the_grown_volume(cloud: Cloud, domains: list[str]) -> None:
    vm_id = 7323
    make_vm(cloud, vm_id)
    uuid = deploy(cloud, domains, vm_id)
    name = f"one-{vm_id}"

    def size() -> int:
        (vda,) = [b for b in qmp(name, "query-block") if b.get("inserted", {}).get("file", "").endswith("disk.0")]
        return int(vda["inserted"]["image"]["virtual-size"])

    assert size() == 16 * MiB
    msg = message(cloud, vm_id, uuid)
    # before the TM grew the volume qemu refuses; nothing changes
    early = run_vmm(cloud, "resize_disk-tweaks", uuid, "0", "32", msg, "node1", str(vm_id), "node1", stdin=msg.encode())
    assert "node1: blockresize vda" in (line := one_line(early)) and "Cannot grow device files" in line
    assert size() == 16 * MiB
    proc = cloud.run_tm("resize", cloud.tm_path("node1", vm_id, 0), "32", str(vm_id), "100")
    assert proc.returncode == 0, proc.stderr.decode()
    for _ in range(2):  # and once more: a re-run is harmless
        done = run_vmm(cloud, "resize_disk-tweaks", uuid, "0", "32", msg, "node1", str(vm_id), "node1",
                       stdin=msg.encode())
        assert done.returncode == 0, done.stderr.decode()
        assert size() == 32 * MiB


# --- hand-over and bad input ----------------------------------------------------------------------

def test_a_file_disk_is_left_to_the_stock_attach_disk(cloud: Cloud) -> None:
    vm_id = 7324
    make_vm(cloud, vm_id, {"image": 9, "TARGET": "vdb", "ATTACH": "YES", "TM_MAD": "ssh", "DISK_TYPE": "FILE",
                           "TYPE": "FILE"})
    remotes = cloud.root / "remotes"
    script = remotes / "vmm" / "kvm" / "attach_disk"
    script.parent.mkdir(parents=True)
    script.write_text(STANDIN_ATTACH)
    script.chmod(0o755)
    cloud.configure(SCRIPTS_REMOTE_DIR=str(remotes))
    msg = message(cloud, vm_id, "one-7324")
    proc = attach(cloud, vm_id, "one-7324", 1, "vdb", msg=msg)
    assert proc.returncode == 0, proc.stderr.decode()
    path = str(cloud.disk_path("node1", vm_id, 1))
    argv = (script.parent / "attach_disk.argv").read_text().splitlines()
    assert argv == ["one-7324", path, "vdb", "1", msg, str(vm_id), "node1"]
    assert (script.parent / "attach_disk.stdin").read_bytes() == base64.b64decode(msg), "plain XML on stdin"


def _msg_without_attach(cloud: Cloud) -> str:
    root = etree.fromstring(base64.b64decode(message(cloud, 7325)))
    for attr in root.iterfind("VM/TEMPLATE/DISK/ATTACH"):
        attr.getparent().remove(attr)
    return base64.b64encode(etree.tostring(root)).decode()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("bad-base64", "not valid base64"),
        ("bad-xml", "malformed XML"),
        ("no-attach", "0 DISKs with ATTACH=YES"),
        ("target-mismatch", "disk 1 has TARGET 'vdb', not vdc"),
        ("target-shell", "is not a device name"),
        ("path-outside", "is not a disk.N of VM 7325"),
        ("path-other-disk", "is not disk.1"),
        ("deploy-id", "is not a libvirt domain name"),
        ("other-vm", "not VM 7326"),
    ],
)
def test_attach_bad_input_fails_with_one_line(cloud: Cloud, case: str, expected: str) -> None:
    make_vm(cloud, 7325, {"image": 8, "TARGET": "vdb", "ATTACH": "YES"}, volumes=False)
    msg = message(cloud, 7325)
    path = str(cloud.disk_path("node1", 7325, 1))
    argv = ["one-7325", path, "vdb", "1", msg, "7325", "node1"]
    if case == "bad-base64":
        argv[4] = "%%%"
    elif case == "bad-xml":
        argv[4] = base64.b64encode(b"<VMM_DRIVER_ACTION_DATA><VM>").decode()
    elif case == "no-attach":
        argv[4] = _msg_without_attach(cloud)
    elif case == "target-mismatch":
        argv[2] = "vdc"
    elif case == "target-shell":
        argv[2] = "vdb;reboot"
    elif case == "path-outside":
        argv[1] = "/etc/passwd"
    elif case == "path-other-disk":
        argv[1] = path[:-1] + "0"
    elif case == "deploy-id":
        argv[0] = "one-7325 --config"
    elif case == "other-vm":
        argv[5] = "7326"
    before = cloud.sim.inventory()["attachments"]
    proc = run_vmm(cloud, "attach_disk-tweaks", *argv, stdin=argv[4].encode())
    assert expected in one_line(proc)
    assert cloud.sim.inventory()["attachments"] == before
    assert not cloud.libvirt_tunnels(), "nothing reached libvirt"


@pytest.mark.parametrize(
    ("action", "argv", "expected"),
    [
        ("detach_disk-tweaks", ["one-7325", "/var/lib/one/datastores/101/7325/disk.1", "vd b", "1", "7325", "node1"],
         "is not a device name"),
        ("detach_disk-tweaks", ["one-7325", "/var/lib/one/datastores/101/7325/../disk.1", "vdb", "1", "7325", "node1"],
         "leaves its directory"),
        ("resize_disk-tweaks", ["one-7325", "0", "-5", "MSG", "node1", "7325", "node1"], "size '-5'"),
        ("resize_disk-tweaks", ["one-7325", "0", "0", "MSG", "node1", "7325", "node1"], "out of range"),
        ("resize_disk-tweaks", ["one-7325", "4", "64", "MSG", "node1", "7325", "node1"], "VM 7325 has no disk 4"),
    ],
)
def test_detach_and_resize_bad_input_fails_with_one_line(cloud: Cloud, action: str, argv: list[str],
                                                         expected: str) -> None:
    make_vm(cloud, 7325, volumes=False)
    msg = message(cloud, 7325)
    argv = [msg if a == "MSG" else a for a in argv]
    proc = run_vmm(cloud, action, *argv, stdin=msg.encode())
    assert expected in one_line(proc)
    assert not cloud.libvirt_tunnels()


@pytest.mark.libvirtd
def test_a_domain_that_is_not_there_fails_with_one_line(cloud: Cloud, domains: list[str]) -> None:
    make_vm(cloud, 7327, {"image": 8, "TARGET": "vdb", "ATTACH": "YES"})
    proc = attach(cloud, 7327, "one-7327", 1, "vdb")
    assert "no domain one-7327 on node1" in one_line(proc)
    assert os.path.islink(cloud.disk_path("node1", 7327, 1)), "the TM's link stays for oned's rollback"
