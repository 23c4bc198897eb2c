"""The checkpoint overrides ``vmm/kvm/save`` and ``restore`` (and their aliases ``tmsave``,
``tmrestore``, ``save_linstor_un``, ``restore_linstor_un``) called exactly as oned calls a
local VMM action: the remote script's argv and the base64 VMM driver message on stdin.

A real small VM (256 MiB, started with ``virsh create`` on this machine's libvirtd, its disk
a StorPool-simulator volume made by ``tm/storpool/clone``) is saved into the checkpoint volume
``one-sys-<VM>-rawcheckpoint`` through ``tm/storpool/presave``/``postsave`` and the real ssh
hop, and restored through ``prerestore``/``postrestore``. Hosts node1 and node2 are this
machine reached through the test sshd, with their own DATASTORE_LOCATION and device dirs.

For a system datastore whose TM_MAD has no pre/post actions the override runs the stock
remote ``vmm/kvm/save``/``restore``; OpenNebula's scripts cannot be installed here, so the
test puts stand-ins on the host (``STANDIN_SAVE``/``STANDIN_RESTORE``) that do what the stock
scripts do for this path (``virsh save``/``virsh restore`` of the file) and keep the message
they got, to show it arrives decoded.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import drivers
import pytest
from livevm import kvm_available, libvirtd, virsh
from lxml import etree
from storage_env import FRONTEND, REPO, SYSTEM_DS, Cloud, MiB, cloud, sshd

FIXTURES = (cloud, sshd, libvirtd)
pytestmark = [pytest.mark.libvirtd, pytest.mark.usefixtures("libvirtd")]

KVM = drivers.KVM
MAGIC = b"LibvirtQemudSave"
MEMORY_MIB = 256
CHECKPOINT_BYTES = (282 + 8) * MiB  # ceil(256 * 1.1) MiB + 8 MiB for libvirt's header
ONE_NS = "http://opennebula.org/xmlns/libvirt/1.0"


# --- a VM ------------------------------------------------------------------------------------

class Domains:
    """Domains a test started; destroyed at teardown (before the cloud stops its loop devices)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def add(self, name: str) -> str:
        self.names.append(name)
        return name


@pytest.fixture
def domains(cloud: Cloud, libvirtd: object) -> Iterator[Domains]:
    made = Domains()
    yield made
    for name in made.names:
        virsh("destroy", name, check=False, timeout=120)


def domain_xml(cloud: Cloud, vm_id: int, name: str, dom_uuid: str, host: str = "node1") -> bytes:
    """What oned renders for this VM, startable here: disk.0 of the VM directory, no graphics."""
    vm_dir = cloud.vm_dir(host, vm_id)
    kvm = kvm_available()
    cpu = ("<cpu mode='host-passthrough' check='none' migratable='on'>"
           "<feature policy='disable' name='arch-capabilities'/></cpu>") if kvm else ""
    return f"""<domain type='{"kvm" if kvm else "qemu"}'>
  <name>{name}</name>
  <uuid>{dom_uuid}</uuid>
  <memory>{MEMORY_MIB * 1024}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  {cpu}
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='block' device='disk'>
      <source dev='{vm_dir}/disk.0'/>
      <target dev='vda' bus='virtio'/>
      <driver name='qemu' type='raw' cache='none' io='native'/>
    </disk>
  </devices>
  <metadata>
    <one:vm xmlns:one="{ONE_NS}"><one:system_datastore><![CDATA[{vm_dir}]]></one:system_datastore></one:vm>
  </metadata>
</domain>
""".encode()


class Vm:
    def __init__(self, cloud: Cloud, vm_id: int, name: str, dom_uuid: str) -> None:
        self.cloud, self.id, self.name, self.uuid = cloud, vm_id, name, dom_uuid

    def checkpoint(self, host: str = "node1") -> str:
        return str(self.cloud.vm_dir(host, self.id) / "checkpoint")

    @property
    def volume(self) -> str:
        return f"one-sys-{self.id}-rawcheckpoint"

    def state(self) -> str | None:
        proc = virsh("domstate", self.name, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None


def start_vm(cloud: Cloud, domains: Domains, vm_id: int, *, paused: bool) -> Vm:
    """A VM of the oned double (MEMORY 256, TM_MAD storpool) whose disk.0 is a clone made by
    tm/storpool/clone on node1, running (or paused) in libvirt."""
    cloud.make_volume("one-img-7", 16, data=b"boot sector" * 100)
    cloud.make_vm(vm_id, disks=[{"image": 7, "size": 16}], context=False, template={"MEMORY": MEMORY_MIB})
    proc = cloud.run_tm("clone", "one-fe:one-img-7", cloud.tm_path("node1", vm_id, 0), str(vm_id), "100")
    assert proc.returncode == 0, proc.stderr.decode()
    vm = Vm(cloud, vm_id, domains.add(f"one-tweaks-ckpt-{uuid.uuid4().hex[:8]}"), str(uuid.uuid4()))
    path = cloud.root / f"{vm.name}.xml"
    path.write_bytes(domain_xml(cloud, vm_id, vm.name, vm.uuid))
    virsh("create", str(path), *(["--paused"] if paused else []), timeout=120)
    return vm


# --- oned's calls ----------------------------------------------------------------------------

def message(cloud: Cloud, vm: Vm, host: str, *, tm_mad: str | None = None) -> bytes:
    """VMM_DRIVER_ACTION_DATA as oned writes it for SAVE/RESTORE (vmm-save.xml's layout)."""
    root = etree.Element("VMM_DRIVER_ACTION_DATA")
    for tag, value in (("HOST", host), ("MIGR_HOST", ""), ("DEPLOY_ID", vm.uuid), ("LOCAL_DEPLOYMENT_FILE", ""),
                       ("REMOTE_DEPLOYMENT_FILE", ""), ("CHECKPOINT_FILE", vm.checkpoint(host)),
                       ("TM_COMMAND", ""), ("TM_COMMAND_ROLLBACK", ""), ("DISK_TARGET_PATH", "")):
        etree.SubElement(root, tag).text = value or None
    root.append(cloud.oned.served("vm", vm.id))
    ds = cloud.oned.served("datastore", SYSTEM_DS)
    if tm_mad is not None:
        for el in (ds.find("TM_MAD"), ds.find("TEMPLATE/TM_MAD")):
            assert el is not None
            el.text = tm_mad
    root.append(ds)
    return etree.tostring(root)


def run_vmm(cloud: Cloud, name: str, argv: list[str], stdin: bytes,
            b64: bool = True) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, str(KVM / name), *argv], input=base64.b64encode(stdin) if b64 else stdin,
                          capture_output=True, env=cloud.env, cwd=cloud.home, timeout=300, check=False)


def save(cloud: Cloud, vm: Vm, host: str = "node1", name: str = "save-tweaks",
         **kw: str) -> subprocess.CompletedProcess[bytes]:
    return run_vmm(cloud, name, [vm.uuid, vm.checkpoint(host), host, str(vm.id), host], message(cloud, vm, host, **kw))


def restore(cloud: Cloud, vm: Vm, host: str = "node1", name: str = "restore-tweaks",
            **kw: str) -> subprocess.CompletedProcess[bytes]:
    return run_vmm(cloud, name, [vm.checkpoint(host), host, vm.uuid, str(vm.id), host],
                   message(cloud, vm, host, **kw))


def ok(proc: subprocess.CompletedProcess[bytes]) -> None:
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b""


def one_line(proc: subprocess.CompletedProcess[bytes], *words: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr.decode())
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# --- what is left ----------------------------------------------------------------------------

def volume(cloud: Cloud, name: str) -> dict[str, object] | None:
    found = cloud.sp(f"Volume/{name}") if name in volume_names(cloud) else None
    return found[0] if found else None


def volume_names(cloud: Cloud) -> set[str]:
    return {v["name"] for v in cloud.sp("VolumesList")}


def attached_clients(cloud: Cloud, name: str) -> set[int]:
    return {a["client"] for a in cloud.sp("AttachmentsList") if a["volume"] == name}


def head_through_device(cloud: Cloud, name: str, size: int = len(MAGIC)) -> bytes:
    """The first bytes of a volume, read through an attachment on the front-end."""
    link = cloud.attach(name, FRONTEND)
    try:
        with open(link, "rb") as dev:
            return dev.read(size)
    finally:
        cloud.detach(name, FRONTEND)


def ssh_lines(cloud: Cloud, host: str, needle: str) -> list[str]:
    return [cmd for h, cmd in cloud.ssh_commands() if h == host and needle in cmd]


def saves(cloud: Cloud, vm: Vm, path: str = "") -> list[str]:
    """libvirt's virDomainSave calls the drivers made for ``vm`` (into ``path``)."""
    return [c for c in cloud.libvirt_calls("virDomainSave") if f"uuid={vm.uuid}" in c and f"to={path}" in c]


def restores(cloud: Cloud, path: str = "") -> list[str]:
    """libvirt's virDomainRestoreFlags calls the drivers made (from ``path``)."""
    return [c for c in cloud.libvirt_calls("virDomainRestoreFlags") if f"from={path}" in c]


def nothing_left(cloud: Cloud, vm: Vm, *hosts: str) -> None:
    assert vm.volume not in volume_names(cloud)
    assert not attached_clients(cloud, vm.volume)
    for host in hosts or ("node1",):
        assert not os.path.lexists(vm.checkpoint(host)), f"{vm.checkpoint(host)} is left"


# --- tests -----------------------------------------------------------------------------------

def test_save_into_the_checkpoint_volume_and_restore(cloud: Cloud, domains: Domains) -> None:
    vm = start_vm(cloud, domains, 4301, paused=True)
    proc = save(cloud, vm)
    ok(proc)
    assert vm.state() is None, "the domain is gone after the save"
    vol = volume(cloud, vm.volume)
    assert vol is not None, "the checkpoint volume stays while the VM is saved"
    assert vol["size"] == CHECKPOINT_BYTES
    assert vol["tags"] == {"virt": "one", "nloc": "one", "nvm": "4301", "type": "CHKPNT"}
    assert vol["templateName"] == "one-ds-101"
    assert not attached_clients(cloud, vm.volume), "postsave detached it from the host"
    assert not os.path.lexists(vm.checkpoint()), "postsave removed the link"
    assert head_through_device(cloud, vm.volume) == MAGIC, "libvirt's save image is on the volume"
    # libvirt saved into the link presave made, on node1 (libvirt-python over ssh)
    assert saves(cloud, vm, vm.checkpoint())

    proc = restore(cloud, vm)
    ok(proc)
    assert vm.state() == "paused", "restored in the state it was saved in"
    assert virsh("domuuid", vm.name).stdout.strip() == vm.uuid
    assert restores(cloud, vm.checkpoint())
    nothing_left(cloud, vm)


def test_cold_migration_restores_on_the_other_host(cloud: Cloud, domains: Domains) -> None:
    """SAVE_MIGRATE as oned runs it: save on node1, TM mv of the disk and the VM directory,
    restore on node2 (through addon-storpool's names tmsave/tmrestore)."""
    vm = start_vm(cloud, domains, 4302, paused=False)
    ok(save(cloud, vm, name="tmsave"))
    for src, dst in ((cloud.tm_path("node1", vm.id, 0), cloud.tm_path("node2", vm.id, 0)),
                     (cloud.tm_path("node1", vm.id), cloud.tm_path("node2", vm.id))):
        proc = cloud.run_tm("mv", src, dst, str(vm.id), str(SYSTEM_DS))
        assert proc.returncode == 0, proc.stderr.decode()
    cloud.sim.calls.clear()
    ok(restore(cloud, vm, host="node2", name="tmrestore"))
    assert vm.state() == "running"
    assert virsh("domuuid", vm.name).stdout.strip() == vm.uuid
    attaches = [body for call, body in cloud.sim.calls if call == "VolumesReassignWait"
                and any(e.get("volume") == vm.volume and e.get("rw") == [2] for e in body["reassign"])]
    assert attaches, "prerestore attached the checkpoint on node2 (client 2)"
    live = etree.fromstring(virsh("dumpxml", vm.name).stdout.encode())
    node2_dir = str(cloud.vm_dir("node2", vm.id))
    assert live.find("devices/disk/source").get("dev") == f"{node2_dir}/disk.0", "paths follow the new host"
    assert live.findtext(f"metadata/{{{ONE_NS}}}vm/{{{ONE_NS}}}system_datastore") == node2_dir
    assert restores(cloud, vm.checkpoint("node2"))
    nothing_left(cloud, vm, "node1", "node2")


def test_presave_failure_leaves_nothing_and_the_vm_running(cloud: Cloud, domains: Domains) -> None:
    vm = start_vm(cloud, domains, 4303, paused=False)
    cloud.sim.fail("VolumeCreate", descr="no space left in the placement group")
    line = one_line(save(cloud, vm), "tm/storpool/presave", "no space left")
    assert line.startswith("tm/storpool/presave:")
    assert vm.state() == "running"
    nothing_left(cloud, vm)
    assert not saves(cloud, vm)


def test_a_failed_save_removes_what_presave_made(cloud: Cloud, domains: Domains) -> None:
    vm = start_vm(cloud, domains, 4304, paused=True)
    gone = Vm(cloud, vm.id, vm.name, str(uuid.uuid4()))  # a deploy id libvirt does not know
    one_line(save(cloud, gone), f"domain {gone.uuid} is not on node1")
    nothing_left(cloud, vm)
    assert vm.state() == "paused"


def test_save_and_restore_are_rerunnable_after_a_lost_step(cloud: Cloud, domains: Domains) -> None:
    vm = start_vm(cloud, domains, 4305, paused=True)
    # postsave's detach fails: the domain is saved, the checkpoint must survive
    cloud.sim.fail("VolumesReassignWait", skip=1, descr="attachment service busy")
    one_line(save(cloud, vm, name="save_linstor_un"), "tm/storpool/postsave", "attachment service busy")
    assert vm.state() is None
    assert attached_clients(cloud, vm.volume) == {1}
    assert os.readlink(vm.checkpoint()) == str(cloud.device_dir("node1") / vm.volume)
    ok(save(cloud, vm, name="save_linstor_un"))  # the re-run finds the image and finishes
    assert not attached_clients(cloud, vm.volume)
    assert not os.path.lexists(vm.checkpoint())
    assert head_through_device(cloud, vm.volume) == MAGIC
    assert len(saves(cloud, vm)) == 1

    # postrestore's delete fails: the VM runs again, the re-run only cleans up
    cloud.sim.fail("VolumeDelete", descr="simulated delete failure")
    one_line(restore(cloud, vm, name="restore_linstor_un"), "tm/storpool/postrestore", "simulated delete failure")
    assert vm.state() == "paused"
    ok(restore(cloud, vm, name="restore_linstor_un"))
    assert len(restores(cloud)) == 1
    nothing_left(cloud, vm)


def test_a_failed_restore_keeps_the_checkpoint(cloud: Cloud, domains: Domains) -> None:
    vm = Vm(cloud, 4306, "one-tweaks-ckpt-none", str(uuid.uuid4()))
    cloud.make_vm(vm.id, disks=[], context=False, template={"MEMORY": MEMORY_MIB})
    saved = [vm.uuid, vm.checkpoint(), "node1", str(vm.id), "node1"]
    proc = cloud.run_tm("presave", *saved, stdin=base64.b64encode(message(cloud, vm, "node1")))
    assert proc.returncode == 0, proc.stderr.decode()
    assert os.readlink(vm.checkpoint()) == str(cloud.device_dir("node1") / vm.volume)
    proc = cloud.run_tm("presave", *saved, stdin=base64.b64encode(message(cloud, vm, "node1")))
    assert proc.returncode == 0, "presave is re-runnable: " + proc.stderr.decode()
    assert [n for n in volume_names(cloud) if "rawcheckpoint" in n] == [vm.volume]
    proc = cloud.run_tm("postsave", *saved, stdin=base64.b64encode(message(cloud, vm, "node1")))
    assert proc.returncode == 0, proc.stderr.decode()
    # nothing was saved into it: restore refuses, detaches, unlinks and keeps the volume
    one_line(restore(cloud, vm), "holds no libvirt save image")
    assert vm.volume in volume_names(cloud)
    assert not attached_clients(cloud, vm.volume)
    assert not os.path.lexists(vm.checkpoint())


def test_checkpoint_size_follows_memory_and_margin(cloud: Cloud) -> None:
    cloud.configure(CHECKPOINT_MARGIN="2")
    vm = Vm(cloud, 4307, "unused", str(uuid.uuid4()))
    cloud.make_vm(vm.id, disks=[], context=False, template={"MEMORY": 1000, "MEMORY_MAX": 1500})
    argv = [vm.uuid, vm.checkpoint(), "node1", str(vm.id), "node1"]
    stdin = base64.b64encode(message(cloud, vm, "node1"))
    proc = cloud.run_tm("presave", *argv, stdin=stdin)
    assert proc.returncode == 0, proc.stderr.decode()
    assert volume(cloud, vm.volume)["size"] == (3000 + 8) * MiB  # type: ignore[index]
    proc = cloud.run_tm("postrestore", *argv, stdin=stdin)  # the cleanup of a failed save
    assert proc.returncode == 0, proc.stderr.decode()
    nothing_left(cloud, vm)
    cloud.configure(CHECKPOINT_MARGIN="0.5")
    proc = cloud.run_tm("presave", *argv, stdin=stdin)
    assert proc.returncode == 1
    assert proc.stderr.decode().splitlines() == ["configuration CHECKPOINT_MARGIN='0.5' is not a number from 1 to 10"]
    nothing_left(cloud, vm)


def test_file_checkpoints_without_the_block_device(cloud: Cloud, domains: Domains) -> None:
    """SP_CHECKPOINT_BD=0 (addon-storpool's switch): the checkpoint is a file in the VM
    directory; restore still goes through the TM actions and removes it."""
    cloud.configure(SP_CHECKPOINT_BD="0")
    vm = start_vm(cloud, domains, 4308, paused=True)
    ok(save(cloud, vm))
    path = Path(vm.checkpoint())
    assert path.is_file() and not path.is_symlink()
    assert path.read_bytes()[:len(MAGIC)] == MAGIC
    assert vm.volume not in volume_names(cloud)
    ok(restore(cloud, vm))
    assert vm.state() == "paused"
    nothing_left(cloud, vm)


STANDIN_SAVE = """#!/bin/bash
# Test stand-in for OpenNebula's remote vmm/kvm/save (NOT OpenNebula's script): like the stock
# script it saves the domain into the checkpoint file; it keeps the driver message it got.
set -euo pipefail
cat > "$2.message"
virsh --connect qemu:///system save "$1" "$2" >/dev/null
"""

STANDIN_RESTORE = """#!/bin/bash
# Test stand-in for OpenNebula's remote vmm/kvm/restore (NOT OpenNebula's script): like the
# stock script it restores the domain from the checkpoint file and removes the file.
set -euo pipefail
cat > "$1.message"
virsh --connect qemu:///system restore "$1" >/dev/null
rm -f "$1"
"""


def test_other_drivers_get_the_stock_remote_scripts(cloud: Cloud, domains: Domains) -> None:
    remotes = cloud.root / "remotes"
    for name, text in (("save", STANDIN_SAVE), ("restore", STANDIN_RESTORE)):
        script = remotes / "vmm" / "kvm" / name
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(text)
        script.chmod(0o755)
    cloud.configure(SCRIPTS_REMOTE_DIR=str(remotes))
    vm = start_vm(cloud, domains, 4309, paused=True)
    ok(save(cloud, vm, tm_mad="ssh"))  # tm/ssh has no presave: not a block driver
    checkpoint = Path(vm.checkpoint())
    assert checkpoint.is_file() and checkpoint.read_bytes()[:len(MAGIC)] == MAGIC
    got = etree.fromstring(Path(f"{checkpoint}.message").read_bytes())
    assert got.tag == "VMM_DRIVER_ACTION_DATA", "the stock script gets the message decoded"
    assert got.findtext("DATASTORE/TM_MAD") == "ssh"
    assert ssh_lines(cloud, "node1", f"{remotes}/vmm/kvm/save {vm.uuid} {checkpoint} node1 {vm.id} node1")
    assert vm.volume not in volume_names(cloud)
    ok(restore(cloud, vm, tm_mad="ssh"))
    assert vm.state() == "paused"
    assert not checkpoint.exists()
    assert ssh_lines(cloud, "node1", f"{remotes}/vmm/kvm/restore {checkpoint} node1 {vm.uuid} {vm.id} node1")


@pytest.mark.parametrize("name", ["save-tweaks", "tmsave", "save_linstor_un", "restore-tweaks", "tmrestore",
                                  "restore_linstor_un"])
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("b64", "not valid base64"),
        ("vm", "the driver message is about VM '42', not VM 43"),
        ("path", "contains characters a datastore path never has"),
        ("dir", "is not in VM 43's system datastore directory"),
        ("tm", "is not a driver name"),
        ("deploy", "is not a libvirt domain name or UUID"),
    ],
)
def test_bad_calls_fail_with_one_line_and_change_nothing(cloud: Cloud, name: str, case: str, message: str) -> None:
    fixture = (REPO / "tests" / "fixtures" / "opennebula" / "vmm-save.xml").read_bytes()
    doc = etree.fromstring(fixture)
    vm_id, deploy, host = "43", "5f0c6e0a-8d3b-4d35-9c57-6a3d2f1e4242", "node1"
    path = "/var/lib/one//datastores/101/43/checkpoint"
    stdin = base64.b64encode(fixture.replace(b"<ID>42</ID>", b"<ID>43</ID>", 1))
    if case == "b64":
        stdin = b"!!!" + stdin
    elif case == "vm":
        stdin = base64.b64encode(fixture)
    elif case == "path":
        path = "/var/lib/one//datastores/101/43/check;point"
    elif case == "dir":
        path = "/var/lib/one//datastores/101/42/checkpoint"
    elif case == "tm":
        doc.find("VM/ID").text = "43"
        for el in (doc.find("DATASTORE/TM_MAD"), doc.find("DATASTORE/TEMPLATE/TM_MAD")):
            el.text = "../../bin"
        stdin = base64.b64encode(etree.tostring(doc))
    elif case == "deploy":
        deploy = "$(reboot)"
    argv = [deploy, path, host, vm_id, host] if "save" in name else [path, host, deploy, vm_id, host]
    proc = run_vmm(cloud, name, argv, stdin, b64=False)
    one_line(proc, message)
    assert not any("rawcheckpoint" in n for n in volume_names(cloud))
    assert cloud.ssh_commands() == []


def test_every_alias_is_installed() -> None:
    for name in ("save-tweaks", "restore-tweaks", "tmsave", "tmrestore", "save_linstor_un", "restore_linstor_un"):
        path = KVM / name
        assert path.is_file() and os.access(path, os.X_OK), path
        assert path.read_text() == (KVM / "deploy-tweaks").read_text()
    for name in ("presave", "postsave", "prerestore", "postrestore"):
        path = drivers.tm("storpool") / name
        assert os.access(path, os.X_OK) and "tm_main()" in path.read_text(), path
