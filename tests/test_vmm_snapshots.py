"""VM snapshots through ``vmm/kvm/snapshot_{create,revert,delete}``, called as oned calls a
local override (same argv as the remote script; the base64 driver message on stdin), on
real small VMs (libvirtd + qemu, paused) whose disks the TM driver made on the StorPool
simulator, with the host reached over a real ssh hop.

The domains are started the way OpenNebula's remote ``kvm/deploy`` does it (``virsh create``
of ``<system_dir>/deployment.0``), which the revert uses to start the VM again.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import drivers
import pytest
from livevm import kvm_available, libvirtd, virsh
from lxml import etree
from storage_env import SYSTEM_DS, Cloud, cloud, sshd

FIXTURES = (cloud, sshd, libvirtd)
KVM = drivers.KVM
MiB = 2**20
HID = re.compile(r"snap-([0-9]+)-([0-9]+)")


# --- helpers -------------------------------------------------------------------------------------

def run_vmm(cloud: Cloud, name: str, *argv: str, stdin: bytes = b"",
            timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, str(KVM / name), *argv], input=stdin, capture_output=True,
                          env=cloud.env, cwd=cloud.home, timeout=timeout, check=False)


def message(cloud: Cloud, vm_id: int, deploy_id: str = "") -> bytes:
    """The base64 ``<VMM_DRIVER_ACTION_DATA>`` oned gives a local VMM action."""
    root = etree.Element("VMM_DRIVER_ACTION_DATA")
    etree.SubElement(root, "HOST").text = "node1"
    etree.SubElement(root, "MIGR_HOST")
    etree.SubElement(root, "DEPLOY_ID").text = deploy_id
    root.append(cloud.oned.served("vm", vm_id))
    root.append(cloud.oned.served("datastore", SYSTEM_DS))
    return base64.b64encode(etree.tostring(root))


def domain_xml(cloud: Cloud, vm_id: int, disks: int) -> bytes:
    """What oned renders for this machine: block disks on the driver's disk.N links."""
    vm_dir = cloud.vm_dir("node1", vm_id)
    kind = "kvm" if kvm_available() else "qemu"
    cpu = ("<cpu mode='host-passthrough' check='none' migratable='on'>"
           "<feature policy='disable' name='arch-capabilities'/></cpu>") if kind == "kvm" else ""
    devs = "".join(
        f"<disk type='block' device='disk'><source dev='{vm_dir}/disk.{i}'/>"
        f"<target dev='vd{'abcdefgh'[i]}' bus='virtio'/><driver name='qemu' type='raw' cache='none' io='native'/>"
        "</disk>" for i in range(disks))
    return f"""<domain type='{kind}'>
  <name>one-{vm_id}</name>
  <vcpu>1</vcpu>
  <memory>262144</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  {cpu}
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    {devs}
    <controller type='scsi' index='0' model='virtio-scsi'/>
  </devices>
  <metadata><one:vm xmlns:one="http://opennebula.org/xmlns/libvirt/1.0">
    <one:system_datastore>{vm_dir}</one:system_datastore></one:vm></metadata>
</domain>
""".encode()


class Domains:
    """Domains a test started; destroyed before the cloud (and its loop devices) goes."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def deploy(self, cloud: Cloud, vm_id: int, disks: int) -> str:
        """Write ``deployment.0`` into the VM directory and ``virsh create --paused`` it, as the
        stock remote deploy does; returns the UUID (oned's DEPLOY_ID)."""
        path = cloud.vm_dir("node1", vm_id) / "deployment.0"
        path.write_bytes(domain_xml(cloud, vm_id, disks))
        name = f"one-{vm_id}"
        self.names.append(name)
        virsh("create", str(path), "--paused", timeout=120)
        return virsh("domuuid", name).stdout.strip()

    def destroy_all(self) -> None:
        for name in self.names:
            virsh("destroy", name, check=False, timeout=120)


@pytest.fixture
def domains(cloud: Cloud, libvirtd: object) -> Iterator[Domains]:
    made = Domains()
    yield made
    made.destroy_all()


def qemu_pid(name: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())


def write(path: Path, data: bytes, offset: int = 0) -> None:
    with open(path, "r+b") as dev:
        dev.seek(offset)
        dev.write(data)
        dev.flush()
        os.fsync(dev.fileno())


def group_calls(cloud: Cloud) -> int:
    return sum(1 for call, _ in cloud.sim.calls if call == "VolumesGroupSnapshot")


def onesnaps(cloud: Cloud) -> dict[str, dict[str, object]]:
    return {name: snap for name, snap in cloud.sim.inventory()["snapshots"].items() if "-ONESNAP-" in name}


def one_line(proc: subprocess.CompletedProcess[bytes], *, vm_log: bool = True) -> str:
    """The failure's one line (exit 1); ``vm_log``: besides VM-log lines (``INFO: <vm> ...``,
    which OpenNebula 7 keeps out of the reason), e.g. the fsfreeze notice."""
    lines = [ln for ln in proc.stderr.decode().splitlines() if not (vm_log and ln.startswith("INFO: "))]
    assert proc.returncode == 1 and len(lines) == 1, (proc.returncode, proc.stderr.decode())
    return lines[0]


def two_disk_vm(cloud: Cloud, vm_id: int, **user: object) -> None:
    """A VM with a non-persistent image disk (disk.0) and a volatile disk (disk.1), both made
    by the TM driver on node1."""
    cloud.make_volume("one-img-7", 16, data=b"image seven " * 1000)
    cloud.make_vm(vm_id, disks=[{"image": 7, "size": 16}, {"volatile": "fs", "size": 8, "fs": None}],
                  context=False, user=user or None)
    for action, args in (("clone", ("one-fe:one-img-7", cloud.tm_path("node1", vm_id, 0), str(vm_id), "100")),
                         ("mkimage", ("8", "raw", cloud.tm_path("node1", vm_id, 1), str(vm_id), "101"))):
        proc = cloud.run_tm(action, *args)
        assert proc.returncode == 0, proc.stderr.decode()


# --- without a domain: limit, re-runs, failures, bad input ------------------------------------

def test_limit_allows_exactly_n_snapshots_and_a_vm_attribute_overrides_it(cloud: Cloud) -> None:
    vm_id = 7301
    two_disk_vm(cloud, vm_id)
    cloud.configure(VMSNAPSHOT_LIMIT=1)
    msg = message(cloud, vm_id)
    first = run_vmm(cloud, "snapshot_create-tweaks", "one-7301", "0", str(vm_id), "node1", stdin=msg)
    assert first.returncode == 0, first.stderr.decode()
    assert HID.fullmatch(first.stdout.decode().strip())
    calls = group_calls(cloud)
    before = onesnaps(cloud)
    second = run_vmm(cloud, "snapshot_create-tweaks", "one-7301", "1", str(vm_id), "node1", stdin=msg)
    assert "VM 7301 already has 1 snapshots (VMSNAPSHOT_LIMIT=1)" in one_line(second)
    assert group_calls(cloud) == calls and onesnaps(cloud) == before, "nothing was made"
    # re-running the create of snapshot 0 (oned retrying) reports the same group, even at the limit
    again = run_vmm(cloud, "snapshot_create-tweaks", "one-7301", "0", str(vm_id), "node1", stdin=msg)
    assert again.returncode == 0 and again.stdout == first.stdout
    assert group_calls(cloud) == calls
    # the system datastore's attribute beats the configuration, the VM's beats both
    cloud.oned.datastore(SYSTEM_DS).find("TEMPLATE").append(etree.fromstring(
        "<VMSNAPSHOT_LIMIT>2</VMSNAPSHOT_LIMIT>"))
    assert run_vmm(cloud, "snapshot_create-tweaks", "one-7301", "1", str(vm_id), "node1",
                   stdin=message(cloud, vm_id)).returncode == 0
    third = run_vmm(cloud, "snapshot_create-tweaks", "one-7301", "2", str(vm_id), "node1", stdin=message(cloud, vm_id))
    assert "(VMSNAPSHOT_LIMIT=2)" in one_line(third)
    cloud.oned.vm(vm_id).find("USER_TEMPLATE").append(etree.fromstring("<VMSNAPSHOT_LIMIT>3</VMSNAPSHOT_LIMIT>"))
    assert run_vmm(cloud, "snapshot_create-tweaks", "one-7301", "2", str(vm_id), "node1",
                   stdin=message(cloud, vm_id)).returncode == 0
    assert len({name.split("-ONESNAP-")[1] for name in onesnaps(cloud)}) == 3
    # stdin is optional: without it the VM comes from oned's API
    fourth = run_vmm(cloud, "snapshot_create-tweaks", "one-7301", "3", str(vm_id), "node1")
    assert "(VMSNAPSHOT_LIMIT=3)" in one_line(fourth)


def test_group_snapshot_is_one_call_with_addon_names_and_tags(cloud: Cloud) -> None:
    vm_id = 7302
    two_disk_vm(cloud, vm_id)
    cloud.make_volume(f"one-sys-{vm_id}-NVRAM", 1, template="one-ds-101")  # a UEFI VM's variables
    start = len(cloud.sim.calls)
    proc = run_vmm(cloud, "snapshot_create-storpool", "one-7302", "4", str(vm_id), "node1",
                   stdin=message(cloud, vm_id))
    assert proc.returncode == 0, proc.stderr.decode()
    match = HID.fullmatch(proc.stdout.decode().strip())
    assert match and match.group(1) == "4"
    ts = match.group(2)
    assert group_calls(cloud) == 1
    snaps = onesnaps(cloud)
    assert set(snaps) == {f"one-img-7-{vm_id}-0-ONESNAP-4-{ts}", f"one-sys-{vm_id}-1-raw-ONESNAP-4-{ts}",
                          f"one-sys-{vm_id}-NVRAM-ONESNAP-4-{ts}"}
    for name, snap in snaps.items():
        own = {"type": "NVRAM"} if "NVRAM" in name else {"diskid": "0" if name.startswith("one-img") else "1"}
        assert snap["tags"] == {"virt": "one", "nloc": "one", "nvm": str(vm_id), "onesnap": "4", **own}
    # two listings and the one atomic call: nothing else touched the cluster
    assert [call for call, _ in cloud.sim.calls[start:]] == ["VolumesList", "SnapshotsList", "VolumesGroupSnapshot"]


def test_a_failed_group_snapshot_leaves_nothing_and_a_lost_reply_counts(cloud: Cloud) -> None:
    vm_id = 7303
    two_disk_vm(cloud, vm_id)
    msg = message(cloud, vm_id)
    cloud.sim.fail("VolumesGroupSnapshot", "error")
    failed = run_vmm(cloud, "snapshot_create-tweaks", "one-7303", "0", str(vm_id), "node1", stdin=msg)
    assert "VM 7303 snapshot 0 not taken" in one_line(failed)
    assert onesnaps(cloud) == {}
    cloud.sim.fail("VolumesGroupSnapshot", "error", apply=True)  # done, but the reply is an error
    lost = run_vmm(cloud, "snapshot_create-tweaks", "one-7303", "0", str(vm_id), "node1", stdin=msg)
    assert lost.returncode == 0, lost.stderr.decode()
    ts = HID.fullmatch(lost.stdout.decode().strip()).group(2)  # type: ignore[union-attr]
    assert set(onesnaps(cloud)) == {f"one-img-7-{vm_id}-0-ONESNAP-0-{ts}", f"one-sys-{vm_id}-1-raw-ONESNAP-0-{ts}"}


def test_delete_removes_the_group_and_is_rerunnable(cloud: Cloud) -> None:
    vm_id = 7304
    two_disk_vm(cloud, vm_id)
    msg = message(cloud, vm_id)
    ids = []
    for snap_id in ("0", "1"):
        proc = run_vmm(cloud, "snapshot_create-tweaks", "one-7304", snap_id, str(vm_id), "node1", stdin=msg)
        assert proc.returncode == 0, proc.stderr.decode()
        ids.append(proc.stdout.decode().strip())
    for _ in range(2):
        proc = run_vmm(cloud, "snapshot_delete-tweaks", "one-7304", ids[0], str(vm_id), "node1", stdin=msg)
        assert proc.returncode == 0 and proc.stdout == b"", proc.stderr.decode()
    left = set(onesnaps(cloud))
    assert left and all(f"-ONESNAP-1-{ids[1].split('-')[2]}" in name for name in left), left
    assert len(left) == 2, "snapshot 1 is untouched"


@pytest.mark.parametrize(
    ("action", "argv", "stdin", "message_part"),
    [
        ("snapshot_create-tweaks", ["one 7305", "0", "7305", "node1"], None, "deploy id"),
        ("snapshot_create-tweaks", ["one-7305", "x", "7305", "node1"], None, "snapshot id 'x'"),
        ("snapshot_create-tweaks", ["one-7305", "0", "7305", "node1;reboot"], None, "host name"),
        ("snapshot_create-tweaks", ["one-7305", "0", "7305", "node1"], b"!!notbase64", "not valid base64"),
        ("snapshot_create-tweaks", ["one-7305", "0", "7305", "node1"], base64.b64encode(b"<VMM"), "malformed XML"),
        ("snapshot_create-tweaks", ["one-7305", "0", "9999", "node1"], None, "not VM 9999"),
        ("snapshot_revert-tweaks", ["one-7305", "snap-3-17", "7305", "node1"], None,
         "VM 7305 has no snapshot snap-3-17"),
        ("snapshot_revert-tweaks", ["one-7305", "$(reboot)", "7305", "node1"], None, "is not a VM snapshot"),
        ("snapshot_delete-tweaks", ["one-7305", "../snap-1-2", "7305", "node1"], None, "is not a VM snapshot"),
    ],
)
def test_bad_input_fails_with_one_line_and_changes_nothing(cloud: Cloud, action: str, argv: list[str],
                                                           stdin: bytes | None, message_part: str) -> None:
    two_disk_vm(cloud, 7305)
    before = cloud.sim.inventory()
    proc = run_vmm(cloud, action, *argv, stdin=message(cloud, 7305) if stdin is None else stdin)
    assert message_part in one_line(proc, vm_log=False)
    after = cloud.sim.inventory()
    assert after["volumes"] == before["volumes"] and after["snapshots"] == before["snapshots"]


def test_a_writable_disk_of_another_driver_is_refused(cloud: Cloud) -> None:
    vm_id = 7306
    cloud.make_volume("one-img-7", 16)
    cloud.make_vm(vm_id, disks=[{"image": 7, "size": 16}, {"image": 9, "TM_MAD": "ssh", "DISK_TYPE": "FILE"}],
                  context=False)
    proc = cloud.run_tm("clone", "one-fe:one-img-7", cloud.tm_path("node1", vm_id, 0), str(vm_id), "100")
    assert proc.returncode == 0, proc.stderr.decode()
    proc = run_vmm(cloud, "snapshot_create-tweaks", "one-7306", "0", str(vm_id), "node1", stdin=message(cloud, vm_id))
    assert "disk 1 of VM 7306 is not on a storpool datastore (TM_MAD ssh)" in one_line(proc)
    assert onesnaps(cloud) == {}


# --- on a real VM ---------------------------------------------------------------------------

@pytest.mark.libvirtd
def test_revert_restarts_the_vm_from_its_deployment_file_with_the_snapshot_data(
        cloud: Cloud, domains: Domains) -> None:
    vm_id = 7310
    two_disk_vm(cloud, vm_id, VMSNAPSHOT_FSFREEZE="YES")
    disk0, disk1 = (cloud.disk_path("node1", vm_id, i) for i in (0, 1))
    links = [cloud.link("node1", vm_id, i) for i in (0, 1)]
    write(disk0, b"before snapshot, disk 0" * 100)
    write(disk1, b"before snapshot, disk 1" * 100)
    old = [cloud.sha256(d, 8 * MiB) for d in (disk0, disk1)]
    uuid = domains.deploy(cloud, vm_id, disks=2)
    name = f"one-{vm_id}"
    pid = qemu_pid(name)
    msg = message(cloud, vm_id, uuid)

    made = run_vmm(cloud, "snapshot_create-tweaks", uuid, "0", str(vm_id), "node1", stdin=msg)
    assert made.returncode == 0, made.stderr.decode()
    hid = made.stdout.decode().strip()
    assert HID.fullmatch(hid)
    # VMSNAPSHOT_FSFREEZE: asked the guest (no agent here): an INFO line, the snapshot taken anyway
    assert [ln for ln in made.stderr.decode().splitlines() if not ln.startswith("INFO: 7310 guest file systems")] \
        == [], made.stderr.decode()
    assert cloud.libvirt_calls("virDomainFSFreeze"), "the driver asked libvirt to freeze the guest"
    assert len(onesnaps(cloud)) == 2 and group_calls(cloud) == 1

    write(disk0, b"after snapshot!" * 5000)
    write(disk1, b"after snapshot!" * 5000, offset=4 * MiB)
    assert [cloud.sha256(d, 8 * MiB) for d in (disk0, disk1)] != old

    reverted = run_vmm(cloud, "snapshot_revert-tweaks", uuid, hid, str(vm_id), "node1", stdin=msg)
    assert reverted.returncode == 0, reverted.stderr.decode()
    assert reverted.stdout == b""
    assert [cloud.sha256(d, 8 * MiB) for d in (disk0, disk1)] == old, "disks hold the snapshot's data"
    assert [cloud.link("node1", vm_id, i) for i in (0, 1)] == links, "disk.N links unchanged"
    info = virsh("dominfo", name).stdout
    assert uuid in info, "same UUID: oned's DEPLOY_ID still names the domain"
    assert re.search(r"State:\s+paused", info), "a paused VM comes back paused"
    assert qemu_pid(name) != pid, "a new qemu process: the domain was destroyed and created again"
    live = etree.fromstring(virsh("dumpxml", name).stdout.encode())
    assert [d.find("source").get("dev") for d in live.iterfind("devices/disk")] == \
        [str(disk0), str(disk1)]
    assert cloud.libvirt_calls("virDomainDestroy") and cloud.libvirt_calls("virDomainCreateXML")

    deleted = run_vmm(cloud, "snapshot_delete-tweaks", uuid, hid, str(vm_id), "node1", stdin=msg)
    assert deleted.returncode == 0, deleted.stderr.decode()
    assert onesnaps(cloud) == {}
    gone = run_vmm(cloud, "snapshot_revert-tweaks", uuid, hid, str(vm_id), "node1", stdin=msg)
    assert f"VM {vm_id} has no snapshot {hid}" in one_line(gone)
    assert virsh("domstate", name).stdout.strip() == "paused"


@pytest.mark.libvirtd
def test_revert_checks_before_it_stops_the_vm_and_a_failed_revert_can_be_run_again(
        cloud: Cloud, domains: Domains) -> None:
    vm_id = 7311
    two_disk_vm(cloud, vm_id)
    disk0 = cloud.disk_path("node1", vm_id, 0)
    write(disk0, b"snapshot data" * 1000)
    old = cloud.sha256(disk0, 16 * MiB)
    uuid = domains.deploy(cloud, vm_id, disks=2)
    name = f"one-{vm_id}"
    made = run_vmm(cloud, "snapshot_create-tweaks", uuid, "0", str(vm_id), "node1", stdin=message(cloud, vm_id, uuid))
    assert made.returncode == 0, made.stderr.decode()
    hid = made.stdout.decode().strip()
    write(disk0, b"newer data" * 1000)
    pid = qemu_pid(name)

    # a disk attached after the snapshot: refused before anything is stopped
    cloud.make_volume(f"one-sys-{vm_id}-2-raw", 8, tags={"nvm": str(vm_id)})
    vm = cloud.oned.vm(vm_id)
    extra = etree.fromstring(etree.tostring(vm.find("TEMPLATE/DISK[DISK_ID='1']")))
    extra.find("DISK_ID").text = "2"
    vm.find("TEMPLATE").append(extra)
    proc = run_vmm(cloud, "snapshot_revert-tweaks", uuid, hid, str(vm_id), "node1", stdin=message(cloud, vm_id, uuid))
    assert "has nothing for disk 2 (added after the snapshot): detach it before reverting" in one_line(proc)
    assert qemu_pid(name) == pid
    vm.find("TEMPLATE").remove(vm.find("TEMPLATE/DISK[DISK_ID='2']"))

    # the backend fails the second volume's revert: the VM stays stopped, volumes attached again
    cloud.sim.fail("VolumeRevert", "error", skip=1)
    proc = run_vmm(cloud, "snapshot_revert-tweaks", uuid, hid, str(vm_id), "node1", stdin=message(cloud, vm_id, uuid))
    assert "run the revert again" in one_line(proc)
    assert virsh("domstate", name, check=False).returncode != 0, "the domain is stopped"
    assert os.path.exists(os.path.realpath(disk0)) and disk0.resolve().is_block_device()
    # oned retries: the domain is gone now, its UUID is still oned's DEPLOY_ID
    again = run_vmm(cloud, "snapshot_revert-tweaks", uuid, hid, str(vm_id), "node1", stdin=message(cloud, vm_id, uuid))
    assert again.returncode == 0, again.stderr.decode()
    assert virsh("domuuid", name).stdout.strip() == uuid
    assert virsh("domstate", name).stdout.strip() == "running", "a domain that was not paused runs"
    assert cloud.sha256(disk0, 16 * MiB) == old


def test_a_vm_on_another_system_datastore_is_left_to_the_stock_script(cloud: Cloud) -> None:
    """OpenNebula's remote snapshot_create (a stand-in here, NOT OpenNebula's script: it echoes
    the libvirt snapshot name and records its stdin) gets the same argv and the plain message."""
    vm_id = 7307
    cloud.make_vm(vm_id, disks=[{"image": 7, "size": 16, "TM_MAD": "qcow2"}], context=False)
    root = etree.fromstring(base64.b64decode(message(cloud, vm_id)))
    root.find("DATASTORE/TM_MAD").text = "qcow2"
    root.find("VM/HISTORY_RECORDS/HISTORY/TM_MAD").text = "qcow2"
    remotes = cloud.root / "remotes"
    script = remotes / "vmm" / "kvm" / "snapshot_create"
    script.parent.mkdir(parents=True)
    script.write_text('#!/bin/sh\ncat > "$(dirname "$0")/stdin"\necho "snap-$2"\n')
    script.chmod(0o755)
    cloud.configure(SCRIPTS_REMOTE_DIR=str(remotes))
    proc = run_vmm(cloud, "snapshot_create-tweaks", "one-7307", "5", str(vm_id), "node1",
                   stdin=base64.b64encode(etree.tostring(root)))
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"snap-5\n"
    assert etree.fromstring((script.parent / "stdin").read_bytes()).findtext("VM/ID") == str(vm_id)
    assert group_calls(cloud) == 0
