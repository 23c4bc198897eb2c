"""Pre-flight of a live migration end to end, between test_vmm_migrate's two real libvirt
hosts (node1: the session's libvirtd; node2: its own libvirtd in a mount namespace, with its
own /var/lib/libvirt), through the three ways in: ``one-tweaks preflight VM HOST``, the VMM
migrate override (migrate-tweaks) and tm premigrate, on StorPool-simulator volumes.

Each refusal is a real difference between the hosts, found by asking node2's libvirt and
the storage backend: an NVRAM template that exists on node1 only (under /var/lib/libvirt,
which node2 has its own of), a volume of the VM that does not exist, and a CPU feature the
running domain requires that the destination lacks. Both test hosts are this machine, so
for the CPU a third host, node2 "without" the feature, is made: node2 again with its own
/var/cache/libvirt, seeded with node1's capability cache of the same qemu (libvirt accepts
it: same binary, daemon, kernel and CPU) with that feature turned off in the host CPU
libvirt probed. That libvirt then reports a host CPU without it (domain capabilities'
host-model, compareHypervisorCPU), as it would on an older CPU. Every way in refuses with one
line per reason (the drivers: one line, the reasons joined), a non-zero exit, no migration
asked of libvirt, nothing on node2 (no domain, no VM directory, no attachment) and the
domain running on node1 with the same live XML. With all of it in order the same VM moves.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from linstor_env import VM as LINSTOR_VM
from linstor_env import LinstorCloud, lcloud
from livevm import OVMF_CODE, OVMF_VARS, kvm_available, libvirtd, virsh
from lxml import etree
from storage_env import Cloud, Sshd, cloud, sshd
from test_hypervisor import tiny_domain
from test_linstor_drivers import deployed as linstor_deployed
from test_vmm_migrate import (
    NAME_PREFIX,
    SecondHost,
    hosts,
    migrate,
    migrations,
    move_history,
    second_host,
    started_second_host,
)

FIXTURES = (cloud, lcloud, sshd, libvirtd, second_host, hosts)
pytestmark = [pytest.mark.libvirtd, pytest.mark.usefixtures("libvirtd")]

# node1 has this directory (the real /var/lib/libvirt), node2 does not (its own, empty one)
NODE1_ONLY = Path("/var/lib/libvirt") / f"one-tweaks-preflight-{os.getpid()}"


@pytest.fixture
def node1_only_template(hosts: SecondHost) -> Iterator[str]:
    NODE1_ONLY.mkdir(parents=True, exist_ok=True)
    path = NODE1_ONLY / "OVMF_VARS_4M.fd"
    shutil.copyfile(OVMF_VARS[OVMF_CODE], path)
    assert hosts.virsh("version").returncode == 0
    yield str(path)
    shutil.rmtree(NODE1_ONLY, ignore_errors=True)


def uefi_domain(name: str, dom_uuid: str, *, template: str = OVMF_VARS[OVMF_CODE], nvram_dir: Path) -> bytes:
    """A small UEFI q35 guest with a named CPU model (pre-flight compares it with node2's).
    The tests start it paused: qemu and its firmware are set up, and a live migration moves
    it all the same; running OVMF with a named model under this machine's nested KVM stops
    at an emulation failure, and the guest's code is not what is tested here."""
    virt = "kvm" if kvm_available() else "qemu"
    return f"""<domain type='{virt}'>
  <name>{name}</name><uuid>{dom_uuid}</uuid><memory unit='MiB'>128</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type>
    <loader readonly='yes' type='pflash'>{OVMF_CODE}</loader>
    <nvram template='{template}'>{nvram_dir / (name + "_VARS.fd")}</nvram></os>
  <features><acpi/></features>
  <cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model></cpu>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>""".encode()


def vm_with_domain(cloud: Cloud, vm_id: int, dom_uuid: str, *, cloned: bool) -> None:
    """VM ``vm_id`` on node1 with one non-persistent StorPool disk (its clone made unless
    ``cloned`` is False) and DEPLOY_ID = the domain's UUID, as oned has it."""
    cloud.make_volume("one-img-7", 16, data=b"boot sector" * 100)
    cloud.make_vm(vm_id, disks=[{"image": 7, "size": 16}], context=False, template={"MEMORY": 128})
    cloud.oned.vm(vm_id).find("DEPLOY_ID").text = dom_uuid
    if cloned:
        proc = cloud.run_tm("clone", "one-fe:one-img-7", cloud.tm_path("node1", vm_id, 0), str(vm_id), "100")
        assert proc.returncode == 0, proc.stderr.decode()


def preflight_cmd(cloud: Cloud, vm_id: int, host: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "tweaks", "preflight", str(vm_id), host], capture_output=True,
                          env=cloud.env, cwd=cloud.home, timeout=300, check=False)


def premigrate(cloud: Cloud, vm_id: int, src: str, dst: str) -> subprocess.CompletedProcess[bytes]:
    vm = base64.b64encode(etree.tostring(cloud.oned.served("vm", vm_id)))
    return cloud.run_tm("premigrate", src, dst, str(cloud.vm_dir(src, vm_id)), str(vm_id), "101", stdin=vm)


def attachments(cloud: Cloud) -> list[tuple[str, int]]:
    return sorted((a["name"], a["client"]) for a in cloud.sim.inventory()["attachments"])


def live_xml(name: str) -> str:
    return virsh("dumpxml", name).stdout


def errors(proc: subprocess.CompletedProcess[bytes]) -> list[str]:
    """stderr without the VM log's INFO lines."""
    return [ln for ln in proc.stderr.decode().splitlines() if not ln.startswith("INFO: ")]


CASES = {
    # case -> (what makes node2 unfit, the words its reason line has)
    "nvram": ("node2: NVRAM template ", " is missing"),
    "volume": ("node2: disk 0: volume ", " does not exist"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_preflight_refuses_and_nothing_moves(cloud: Cloud, hosts: SecondHost, node1_only_template: str,
                                             tmp_path: Path, case: str) -> None:
    vm_id = {"nvram": 4502, "volume": 4503}[case]
    name, dom_uuid = f"{NAME_PREFIX}{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    template = node1_only_template if case == "nvram" else OVMF_VARS[OVMF_CODE]
    vm_with_domain(cloud, vm_id, dom_uuid, cloned=case != "volume")
    xml_path = tmp_path / "dom.xml"
    xml_path.write_bytes(uefi_domain(name, dom_uuid, template=template, nvram_dir=tmp_path))
    virsh("create", "--paused", str(xml_path), timeout=120)
    before, attached_before = live_xml(name), attachments(cloud)
    words = CASES[case]

    # one-tweaks preflight VM HOST: one line per reason on stderr, exit 1
    proc = preflight_cmd(cloud, vm_id, "node2")
    assert proc.returncode == 1, proc.stderr.decode()
    assert proc.stdout == b""
    (line,) = errors(proc)
    assert all(w in line for w in words), line

    # tm premigrate: refuses before it copies or attaches anything
    proc = premigrate(cloud, vm_id, "node1", "node2")
    assert proc.returncode != 0
    (line,) = errors(proc)
    assert line.startswith(f"VM {vm_id}: pre-flight refuses node2: ") and all(w in line for w in words), line
    assert not cloud.vm_dir("node2", vm_id).exists(), "no VM directory on node2"
    assert attachments(cloud) == attached_before, "no volume attached anywhere new"

    # migrate-tweaks: the same refusal, no migration asked of libvirt
    proc = migrate(cloud, vm_id, dom_uuid, "node1", "node2")
    assert proc.returncode == 1
    (line,) = errors(proc)
    assert line.startswith(f"VM {vm_id}: pre-flight refuses node2: ") and all(w in line for w in words), line
    assert migrations(cloud) == []

    assert hosts.state(name) is None, "nothing reached node2's libvirtd"
    assert virsh("domstate", name).stdout.strip() == "paused", "still live on node1, as it was"
    assert live_xml(name) == before, "the domain on node1 is as it was"


def test_preflight_passes_and_the_vm_moves(cloud: Cloud, hosts: SecondHost, tmp_path: Path) -> None:
    """Named CPU model node2 offers, the OVMF template node2 has, every volume there: the
    three ways in agree and the VM moves (premigrate, migrate-tweaks, postmigrate)."""
    vm_id = 4504
    name, dom_uuid = f"{NAME_PREFIX}{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    vm_with_domain(cloud, vm_id, dom_uuid, cloned=True)
    xml_path = tmp_path / "dom.xml"
    xml_path.write_bytes(uefi_domain(name, dom_uuid, nvram_dir=tmp_path))
    virsh("create", "--paused", str(xml_path), timeout=120)

    proc = preflight_cmd(cloud, vm_id, "node2")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode() == f"VM {vm_id} can move from node1 to node2\n"
    assert cloud.libvirt_calls("virConnectCompareHypervisorCPU"), "node2's libvirt was asked about the CPU"
    assert cloud.libvirt_calls("virConnectGetDomainCapabilities")

    proc = premigrate(cloud, vm_id, "node1", "node2")
    assert proc.returncode == 0, proc.stderr.decode()
    proc = migrate(cloud, vm_id, dom_uuid, "node1", "node2")
    assert proc.returncode == 0, proc.stderr.decode()
    vm = base64.b64encode(etree.tostring(cloud.oned.served("vm", vm_id)))
    proc = cloud.run_tm("postmigrate", "node1", "node2", str(cloud.vm_dir("node1", vm_id)), str(vm_id), "101",
                        stdin=vm)
    assert proc.returncode == 0, proc.stderr.decode()
    move_history(cloud, vm_id, "node2")
    assert hosts.state(name) == "paused", "live on node2, as it was on node1"
    assert virsh("domstate", name, check=False).returncode != 0, "the domain left node1"
    (done,) = migrations(cloud)
    assert done.uuid == dom_uuid


@contextlib.contextmanager
def drivers_env(cloud: Cloud | LinstorCloud) -> Iterator[None]:
    """This process sees oned and the configuration as the drivers of ``cloud`` do."""
    with pytest.MonkeyPatch.context() as mp:
        for key in ("ONE_XMLRPC", "ONE_AUTH", "ONE_TWEAKS_CONF"):
            mp.setenv(key, cloud.env[key])
        yield


def test_volume_reasons_ask_the_backend_without_attaching(cloud: Cloud) -> None:
    """The storage side on its own: a volume that is missing is named by its disk; a host the
    backend cannot attach to (no StorPool client id) is one line for its disks; nothing is
    attached or made, whatever the answer."""
    from datastore.preflight import volume_reasons
    from onelib.oned import Oned

    vm_id = 4505
    cloud.make_volume("one-img-7", 16)
    cloud.make_vm(vm_id, disks=[{"image": 7, "size": 16}, {"volatile": "fs", "size": 16}], context=False)
    proc = cloud.run_tm("clone", "one-fe:one-img-7", cloud.tm_path("node1", vm_id, 0), str(vm_id), "100")
    assert proc.returncode == 0, proc.stderr.decode()
    before, calls = cloud.sim.inventory(), len(cloud.sim.calls)
    with drivers_env(cloud):
        oned = Oned()
        vm = cloud.oned.served("vm", vm_id)
        (line,) = volume_reasons(vm, "node2", oned)
        assert line.startswith("node2: disk 1: volume ") and line.endswith(" does not exist"), line
        template = cloud.oned.host("node2").find("TEMPLATE")
        template.find("SP_OURID").text = "77"  # no client of the cluster
        assert volume_reasons(vm, "node2", oned) == [
            "node2: disk 0: StorPool has no client 77 (SP_OURID of host node2)", line]
        template.remove(template.find("SP_OURID"))
        assert volume_reasons(vm, "node2", oned) == [
            "node2: disk 0, 1 (storpool): no StorPool client id (SP_OURID) for host node2: "
            "set it in the host's template"]
    after = cloud.sim.inventory()
    assert {k: v for k, v in after.items() if k != "time"} == {k: v for k, v in before.items() if k != "time"}
    assert not [name for name, _ in cloud.sim.calls[calls:] if "Reassign" in name or "Create" in name], \
        "asked, never attached or made"


# --- a destination whose CPU lacks a feature ----------------------------------------------------

CACHE = Path("/var/cache/libvirt/qemu/capabilities")
EMULATOR = "/usr/bin/qemu-system-x86_64"
# features libvirt and qemu name alike, one of which this CPU has (x2apic: every x86 host KVM runs on)
CPU_FEATURES = ("x2apic", "popcnt", "cx16", "lahf_lm", "sse4.2")


def capability_cache() -> Path:
    """node1's libvirt capability cache of EMULATOR (made now if libvirt has not yet)."""
    virsh("domcapabilities", "--emulatorbin", EMULATOR, "--virttype", "kvm" if kvm_available() else "qemu")
    for path in sorted(CACHE.glob("*.xml")):
        if f"<emulator>{EMULATOR}</emulator>" in path.read_text():
            return path
    raise AssertionError(f"libvirt keeps no capability cache of {EMULATOR} in {CACHE}")


def without_feature(cache: str, accel: str) -> tuple[str, str]:
    """``cache`` with the first of CPU_FEATURES the ``accel`` host CPU has turned off there."""
    start = cache.index(f"<hostCPU type='{accel}'")
    end = cache.index("</hostCPU>", start)
    section = cache[start:end]
    for feature in CPU_FEATURES:
        found = re.search(rf"<property name='{re.escape(feature)}' type='boolean' value='true'", section)
        if found:
            edited = section[:found.start()] + found.group(0).replace("'true'", "'false'") + section[found.end():]
            return cache[:start] + edited + cache[end:], feature
    raise AssertionError(f"the {accel} host CPU has none of {CPU_FEATURES}")


@pytest.fixture(scope="module")
def narrow_host(tmp_path_factory: pytest.TempPathFactory, sshd: Sshd,
                libvirtd: object) -> Iterator[tuple[SecondHost, str]]:
    """node2 whose libvirt sees a host CPU without one feature this machine has."""
    base = tmp_path_factory.mktemp("node2-narrow")
    seeded = base / "cache" / "qemu" / "capabilities"
    seeded.mkdir(parents=True)
    source = capability_cache()
    text, feature = without_feature(source.read_text(), "kvm" if kvm_available() else "tcg")
    (seeded / source.name).write_text(text)
    with started_second_host(base, sshd, {"cache": "/var/cache/libvirt"}) as node2:
        yield node2, feature


@pytest.fixture
def narrow_hosts(cloud: Cloud, narrow_host: tuple[SecondHost, str]) -> Iterator[tuple[SecondHost, str]]:
    node2, _ = narrow_host
    cloud.configure(SSH_COMMAND=shlex.join(["ssh", "-F", str(node2.ssh_config)]),
                    MIGRATE_URI=f"qemu+ssh://{{host}}/system?command={node2.ssh_wrapper}",
                    MIGRATE_OPTIONS="--migrateuri tcp://127.0.0.1")
    yield narrow_host
    node2.destroy_all()
    for name in virsh("list", "--name", check=False).stdout.split():
        if name.startswith(NAME_PREFIX):
            virsh("destroy", name, check=False, timeout=120)


def test_preflight_refuses_a_host_whose_cpu_lacks_a_required_feature(
        cloud: Cloud, narrow_hosts: tuple[SecondHost, str], tmp_path: Path) -> None:
    """A named CPU model with a feature required, running on node1 (libvirt's live definition
    lists what the guest really got, the feature required among them: started with
    check='none' since qemu64 under this machine's nested KVM lacks some of its own model's
    features); node2's libvirt has no such feature: the three ways in refuse, naming it, and
    nothing moves."""
    node2, feature = narrow_hosts
    offered = node2.virsh("domcapabilities", "--virttype", "kvm" if kvm_available() else "qemu").stdout
    host_model = offered[offered.index("<mode name='host-model'"):offered.index("</mode>",
                                                                             offered.index("<mode name='host-model'"))]
    assert f"name='{feature}'" not in host_model or f"policy='disable' name='{feature}'" in host_model, \
        f"node2's libvirt offers {feature}: the seeded cache was not used"
    vm_id = 4506
    name, dom_uuid = f"{NAME_PREFIX}{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    vm_with_domain(cloud, vm_id, dom_uuid, cloned=True)
    cpu = (f"<cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model>"
           f"<feature policy='require' name='{feature}'/></cpu>")
    xml = tiny_domain(name).replace(b"<name>", f"<uuid>{dom_uuid}</uuid><name>".encode(), 1)
    xml = re.sub(rb"<uuid>[^<]*</uuid>(?=<memory)", b"", xml)
    xml = re.sub(rb"<cpu .*?</cpu>", b"", xml, flags=re.S).replace(b"</os>", b"</os>" + cpu.encode())
    (tmp_path / "dom.xml").write_bytes(xml)
    virsh("create", "--paused", str(tmp_path / "dom.xml"), timeout=120)
    before = live_xml(name)
    assert f"policy='require' name='{feature}'" in before, "the running guest requires it"
    words = ("node2: the CPU the domain requires is not available: ", feature)

    proc = preflight_cmd(cloud, vm_id, "node2")
    assert proc.returncode == 1, proc.stderr.decode()
    (line,) = errors(proc)
    assert all(w in line for w in words), line
    for proc in (premigrate(cloud, vm_id, "node1", "node2"), migrate(cloud, vm_id, dom_uuid, "node1", "node2")):
        assert proc.returncode == 1
        (line,) = errors(proc)
        assert line.startswith(f"VM {vm_id}: pre-flight refuses node2: ") and all(w in line for w in words), line
    assert migrations(cloud) == []
    assert not cloud.vm_dir("node2", vm_id).exists()
    assert node2.state(name) is None
    assert virsh("domstate", name).stdout.strip() == "paused"
    assert live_xml(name) == before


def test_volume_reasons_ask_linstor_about_the_node(lcloud: LinstorCloud) -> None:
    """LINSTOR: every resource of the VM exists and node2 is an online node, until it is not."""
    from datastore.preflight import volume_reasons
    from onelib.oned import Oned

    linstor_deployed(lcloud)
    with drivers_env(lcloud):
        vm = lcloud.oned.served("vm", LINSTOR_VM)
        assert volume_reasons(vm, "node2", Oned()) == []
        lcloud.sim.set_node_online("node2", False)
        reasons = volume_reasons(vm, "node2", Oned())
    assert reasons == [f"node2: disk {n}: LINSTOR node node2 of host node2 is OFFLINE" for n in range(4)], reasons
