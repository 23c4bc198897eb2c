"""``vmm/kvm/deploy-tweaks`` called as oned calls a local deploy override: argv = local
deployment file, host, VM id, host; stdin = base64 of the domain XML; the remote work
done over a real ssh hop; the UUID printed.

OpenNebula's own remote ``vmm/kvm/deploy`` cannot be installed here, so the tests put a
stand-in on the test host (see ``STANDIN_DEPLOY``) that does what the stock script does
for our paths: write stdin to the deployment file, ``virsh create`` it (or not, for the
tests that only check files), print the domain UUID.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import drivers
import pytest
from conftest import ONE
from livevm import libvirtd, qmp, virsh
from lxml import etree
from storage_env import Cloud, cloud, sshd

from tweaks import __version__, provenance

FIXTURES = (cloud, sshd, libvirtd)
DEPLOY = drivers.KVM / "deploy-tweaks"
FAKE_UUID = "5f0c6e0a-8d3b-4d35-9c57-6a3d2f1e4242"

# A stand-in for OpenNebula's remote kvm/deploy (NOT OpenNebula's script): it stores the
# deployment file and prints a UUID, optionally after really creating the domain.
STANDIN_DEPLOY = """#!/bin/bash
# Test stand-in for OpenNebula's remote vmm/kvm/deploy: stores stdin as the deployment file,
# creates the domain with virsh when CREATE=1, and prints the domain UUID like the stock script.
set -euo pipefail
cat > "$1"
if [ "${CREATE}" = 1 ]; then
    name=$(xmllint --xpath 'string(/domain/name)' "$1")
    virsh --connect qemu:///system create "$1" >/dev/null
    virsh --connect qemu:///system domuuid "$name"
else
    echo "@UUID@"
fi
"""


def install_standin(cloud: Cloud, create: bool) -> Path:
    remotes = cloud.root / "remotes"
    script = remotes / "vmm" / "kvm" / "deploy"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(STANDIN_DEPLOY.replace("${CREATE}", "1" if create else "0").replace("@UUID@", FAKE_UUID))
    script.chmod(0o755)
    cloud.configure(SCRIPTS_REMOTE_DIR=str(remotes))
    return script


def run_deploy(cloud: Cloud, domain: bytes, vm_id: int = 42, host: str = "node1",
               stdin: bytes | None = None,
               name: str = "deployment.0") -> tuple[subprocess.CompletedProcess[bytes], Path]:
    local = cloud.home / "vms" / str(vm_id) / name
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(domain)
    data = base64.b64encode(domain) if stdin is None else stdin
    proc = subprocess.run([sys.executable, str(DEPLOY), str(local), host, str(vm_id), host], input=data,
                          capture_output=True, env=cloud.env, cwd=cloud.home, timeout=120, check=False)
    return proc, local


def test_deploy_applies_rules_and_deploys_through_the_host(cloud: Cloud) -> None:
    install_standin(cloud, create=False)
    cloud.make_vm(42, user={"T_IOTHREADS_OVERRIDE": "3", "T_VIDEO_MODEL": "type=qxl heads=99"})
    before = len(cloud.ssh_commands())
    proc, local = run_deploy(cloud, (ONE / "deployment.0.xml").read_bytes())
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(cloud.ssh_commands()) - before == 1, "directory, vm.xml, ds.xml and deploy: one ssh round trip"
    assert proc.stdout.decode() == FAKE_UUID + "\n"
    remote_dir = cloud.vm_dir("node1", 42)
    deployed = etree.parse(str(remote_dir / "deployment.0")).getroot()
    assert deployed.findtext("iothreads") == "3", "the tweaked XML is what reached the host"
    assert len(deployed.findall("devices")) == 1
    assert etree.parse(str(remote_dir / "vm.xml")).getroot().findtext("ID") == "42"
    assert etree.parse(str(remote_dir / "ds.xml")).getroot().findtext("ID") == "101"
    assert etree.parse(str(local) + "-tweaks").getroot().findtext("iothreads") == "3"
    assert local.read_bytes() == (ONE / "deployment.0.xml").read_bytes(), "oned's own file is kept"
    lines = proc.stderr.decode().splitlines()
    assert lines == [
        "INFO: 42 deploy-tweaks: VM 42: rule video: USER_TEMPLATE/T_VIDEO_MODEL='type=qxl heads=99': "
        "heads: out of range 1..16; rule skipped"]
    assert any(host == "node1" and "/vmm/kvm/deploy" in cmd for host, cmd in cloud.ssh_commands())
    assert sorted(p.name for p in remote_dir.iterdir()) == ["deployment.0", "deployment.0.oned", "ds.xml", "vm.xml"], \
        "nothing staged left"
    # oned's domain XML, untouched, next to it: what `one-tweaks drift` applies today's rules to
    assert (remote_dir / "deployment.0.oned").read_bytes() == local.read_bytes()


def test_a_long_deployment_file_name_travels_whole(cloud: Cloud) -> None:
    """The files go to the host as a tar stream: a name longer than ustar's 100 characters
    must arrive whole (PAX headers), not fail the deploy."""
    install_standin(cloud, create=False)
    cloud.make_vm(42)
    name = "deployment." + "0" * 150
    proc, _ = run_deploy(cloud, (ONE / "deployment.0.xml").read_bytes(), name=name)
    assert proc.returncode == 0, proc.stderr.decode()
    assert sorted(p.name for p in cloud.vm_dir("node1", 42).iterdir()) == sorted(
        [name, f"{name}.oned", "ds.xml", "vm.xml"])


def test_a_failing_remote_deploy_is_one_line_and_leaves_no_staged_file(cloud: Cloud) -> None:
    script = install_standin(cloud, create=False)
    script.write_text("#!/bin/bash\necho 'error: Failed to create domain from /x' >&2\nexit 3\n")
    cloud.make_vm(42)
    proc, _ = run_deploy(cloud, (ONE / "deployment.0.xml").read_bytes())
    assert proc.returncode == 1
    assert proc.stderr.decode().splitlines() == ["node1: deploy failed: error: Failed to create domain from /x"]
    assert [p.name for p in cloud.vm_dir("node1", 42).iterdir() if p.name.startswith(".")] == []


def test_a_broken_rule_file_never_blocks_the_deploy(cloud: Cloud) -> None:
    install_standin(cloud, create=False)
    rules = cloud.root / "site-rules"
    rules.mkdir()
    (rules / "99-broken.yaml").write_text("name: broken\ntweaks: [nonsense\n")
    cloud.configure(TWEAKS_RULES_DIRS=str(rules))
    cloud.make_vm(42, user={"T_IOTHREADS_OVERRIDE": "3"})
    proc, _ = run_deploy(cloud, (ONE / "deployment.0.xml").read_bytes())
    assert proc.returncode == 0, proc.stderr.decode()
    assert "rule 99-broken: skipped: invalid rule file: YAML syntax error" in proc.stderr.decode()
    deployed = etree.parse(str(cloud.vm_dir("node1", 42) / "deployment.0")).getroot()
    assert deployed.findtext("iothreads") == "3"


@pytest.mark.parametrize(
    ("argv", "stdin", "message"),
    [
        (["/var/lib/one/vms/42/deployment.0", "node1", "x42", "node1"], b"", "VM id 'x42' is not a number"),
        (["/var/lib/one/vms/42/deployment.0", "node1;reboot", "42", "node1"], b"", "host name"),
        (["relative/deployment.0", "node1", "42", "node1"], b"", "is not an absolute path"),
        (["/var/lib/one/vms/42/deployment.0", "node1", "42", "node1"], b"!!!notbase64", "not valid base64"),
    ],
)
def test_bad_calls_fail_with_one_line(cloud: Cloud, argv: list[str], stdin: bytes, message: str) -> None:
    proc = subprocess.run([sys.executable, str(DEPLOY), *argv], input=stdin, capture_output=True,
                          env=cloud.env, cwd=cloud.home, timeout=60, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_unknown_vm_fails_with_one_line(cloud: Cloud) -> None:
    install_standin(cloud, create=False)
    proc, _ = run_deploy(cloud, (ONE / "deployment.0.xml").read_bytes(), vm_id=77)
    assert proc.returncode == 1
    (line,) = proc.stderr.decode().splitlines()
    assert "Error getting virtual machine [77]" in line


# --- a real VM: disks from the TM driver, tweaks from the rules, started by libvirt -----------

def bootable_domain(cloud: Cloud, vm_id: int) -> bytes:
    """The domain oned would render for this machine (its qemu, no bridge, local VNC)."""
    vm_dir = cloud.vm_dir("node1", vm_id)
    return f"""<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
	<name>one-{vm_id}</name>
	<vcpu><![CDATA[2]]></vcpu>
	<memory>262144</memory>
	<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
	<cpu mode='host-passthrough' check='none' migratable='on'>
		<feature policy='disable' name='arch-capabilities'/>
	</cpu>
	<devices>
		<emulator><![CDATA[/usr/bin/qemu-system-x86_64]]></emulator>
		<disk type='block' device='disk'>
			<source dev='{vm_dir}/disk.0'/>
			<target dev='vda' bus='virtio'/>
			<driver name='qemu' type='raw' cache='none' io='native'/>
		</disk>
		<disk type='file' device='disk'>
			<source file='{vm_dir}/disk.1'/>
			<target dev='vdb' bus='virtio'/>
			<driver name='qemu' type='raw' cache='none' io='native'/>
		</disk>
		<controller type='scsi' index='0' model='virtio-scsi'><driver queues='1'/></controller>
		<graphics type='vnc' listen='127.0.0.1' autoport='yes'/>
	</devices>
	<metadata>
		<one:vm xmlns:one="http://opennebula.org/xmlns/libvirt/1.0">
			<one:system_datastore><![CDATA[{vm_dir}]]></one:system_datastore>
		</one:vm>
	</metadata>
</domain>
""".encode()


@pytest.mark.libvirtd
def test_deploy_starts_a_tweaked_vm_on_driver_made_block_devices(cloud: Cloud, libvirtd: object) -> None:
    install_standin(cloud, create=True)
    vm_id = 4242
    cloud.make_volume("one-img-7", 16, data=b"boot sector" * 100)
    cloud.make_vm(vm_id, disks=[{"image": 7, "size": 16}, {"volatile": "fs", "size": 8, "fs": None}],
                  context=False, user={"T_IOTHREADS_OVERRIDE": "2", "T_SCSI_QUEUES": "2"})
    for action, args in (("clone", ("one-fe:one-img-7", cloud.tm_path("node1", vm_id, 0), str(vm_id), "100")),
                         ("mkimage", ("8", "raw", cloud.tm_path("node1", vm_id, 1), str(vm_id), "101"))):
        proc = cloud.run_tm(action, *args)
        assert proc.returncode == 0, proc.stderr.decode()
    proc, _ = run_deploy(cloud, bootable_domain(cloud, vm_id), vm_id=vm_id)
    name = f"one-{vm_id}"
    try:
        assert proc.returncode == 0, proc.stderr.decode()
        uuid = proc.stdout.decode().strip()
        assert uuid == virsh("domuuid", name).stdout.strip()
        assert len(qmp(name, "query-iothreads")) == 2
        scsi = qmp(name, "qom-get", {"path": "/machine/peripheral/scsi0", "property": "num_queues"})
        assert scsi == 2
        blocks = {b["device"] or b["qdev"]: b for b in qmp(name, "query-block")}
        files = sorted(b["inserted"]["file"] for b in blocks.values() if b.get("inserted"))
        assert files == [f"{cloud.vm_dir('node1', vm_id)}/disk.0", f"{cloud.vm_dir('node1', vm_id)}/disk.1"]
        live = etree.fromstring(virsh("dumpxml", name).stdout.encode())
        # the volatile disk became type='block' (volatile_block rule, TM_MAD storpool)
        assert [d.get("type") for d in live.iterfind("devices/disk")] == ["block", "block"]
        nodes = qmp(name, "query-named-block-nodes")
        assert {n["drv"] for n in nodes if n["file"].endswith(("disk.0", "disk.1"))} >= {"host_device"}
        assert json.dumps(nodes).count("host_device") >= 2
        # provenance: the running domain says which rule files and tweaks made it (libvirt kept it)
        stamp = provenance.read(live)
        assert stamp is not None and stamp.version == __version__
        assert stamp.changed_by()["iothreads"] == ["iothreads"]
        assert "10-iothreads.yaml" in stamp.files()
    finally:
        virsh("destroy", name, check=False)
