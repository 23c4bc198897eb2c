"""``onelib.hypervisor``, the one way the drivers reach a host's libvirt: the URI built from
the ssh settings, libvirt's own errors as one-line driver errors (real failures of a real
libvirtd, reached through the test sshd as the drivers reach it), and the deploy path,
which must not load the binding at all."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ONE
from livevm import kvm_available, libvirtd, virsh
from storage_env import REPO, Cloud, Sshd, cloud, sshd
from test_deploy_tweaks import install_standin, run_deploy

from onelib.config import Config
from onelib.errors import DriverError, NotFound, Transient
from onelib.hypervisor import Hypervisor, libvirt_uri, migrate_options

FIXTURES = (cloud, sshd, libvirtd)


def config(sshd: Sshd, **values: str) -> Config:
    return Config({"SSH_COMMAND": shlex.join(sshd.ssh_command), **values})


# --- the URI -------------------------------------------------------------------------------------

def test_the_uri_is_built_from_the_ssh_settings(sshd: Sshd) -> None:
    """SSH_COMMAND's ``-F`` config names node1's address, port, user and key: the libvirt URI
    tunnels to the same place with the same key (the config turns host key checks off)."""
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    tail = f"keyfile={sshd.identity}&no_tty=1&no_verify=1"
    assert libvirt_uri(config(sshd), "node1") == f"qemu+ssh://{user}@127.0.0.1:{sshd.port}/system?{tail}"
    kept = libvirt_uri(config(sshd, LIBVIRT_URI="qemu:///system?socket=/run/x/libvirt-sock"), "node2")
    assert kept == f"qemu+ssh://{user}@127.0.0.1:{sshd.port}/system?socket=/run/x/libvirt-sock&{tail}"
    assert libvirt_uri(config(sshd), "localhost") == "qemu:///system", "this machine: no tunnel"
    assert libvirt_uri(config(sshd, LIBVIRT_URI="qemu+tls://{host}/system"), "node1") == "qemu+tls://node1/system"
    explicit = config(sshd, HOST_LIBVIRT_URI="qemu+ssh://admin@{host}:2222/system")
    assert libvirt_uri(explicit, "node2") == "qemu+ssh://admin@node2:2222/system"
    with pytest.raises(DriverError, match=r"HOST_LIBVIRT_URI='qemu\+ssh://\{host\}/x y' is not a libvirt URI"):
        libvirt_uri(config(sshd, HOST_LIBVIRT_URI="qemu+ssh://{host}/x y"), "node1")


def test_migrate_options_become_libvirt_flags_and_parameters() -> None:
    import libvirt

    flags, params = migrate_options("--persistent --migrateuri tcp://10.0.0.2 --bandwidth=100 --verbose")
    assert flags == libvirt.VIR_MIGRATE_PERSIST_DEST
    assert params == {libvirt.VIR_MIGRATE_PARAM_URI: "tcp://10.0.0.2", libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 100}
    with pytest.raises(DriverError, match="'--timeout' is not a virsh migrate option one-tweaks passes"):
        migrate_options("--timeout 60")
    with pytest.raises(DriverError, match="--bandwidth 'fast' is not a number"):
        migrate_options("--bandwidth fast")


# --- libvirt's errors, for real ------------------------------------------------------------------

def tiny_domain(name: str) -> bytes:
    cpu = ("<cpu mode='host-passthrough' check='none' migratable='on'>"
           "<feature policy='disable' name='arch-capabilities'/></cpu>") if kvm_available() else ""
    return f"""<domain type='{"kvm" if kvm_available() else "qemu"}'>
  <name>{name}</name><uuid>{uuid.uuid4()}</uuid><memory unit='MiB'>64</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>{cpu}
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>""".encode()


@pytest.fixture
def running(tmp_path: Path, libvirtd: object) -> Iterator[str]:
    name = f"one-tweaks-hl-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "dom.xml"
    path.write_bytes(tiny_domain(name))
    virsh("create", str(path), "--paused", timeout=120)
    yield name
    virsh("destroy", name, check=False, timeout=120)


def one_line(exc: pytest.ExceptionInfo[DriverError]) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_libvirt_errors_become_one_line_of_the_right_kind(sshd: Sshd, running: str) -> None:
    with Hypervisor(config(sshd), "node1") as hv:
        assert hv.uri.startswith("qemu+ssh://"), "node1 is reached through the test sshd"
        assert hv.state(running) == "paused"
        missing = f"one-tweaks-hl-gone-{uuid.uuid4().hex[:6]}"
        assert hv.lookup(missing) is None
        with pytest.raises(NotFound) as gone:
            hv.domain(missing)
        assert one_line(gone) == f"no domain {missing} on node1"
        dom = hv.domain(running)
        # libvirt refuses the device: its own reason, after the host, the operation and the domain
        with pytest.raises(DriverError) as refused:
            dom.attach(b"<disk type='block' device='disk'><source dev='/nonexistent/one-tweaks-dev'/>"
                       b"<target dev='vdz' bus='virtio'/></disk>")
        line = one_line(refused)
        assert not isinstance(refused.value, (NotFound, Transient))
        assert line.startswith(f"node1: attach-device {running}: ") and "/nonexistent/one-tweaks-dev" in line, line
        # a paused guest cannot freeze its file systems
        with pytest.raises(DriverError) as paused:
            dom.fs_freeze()
        assert one_line(paused) == (f"node1: domfsfreeze {running}: "
                                    "Requested operation is not valid: domain is not running")
        # a second domain of the same name
        with pytest.raises(DriverError) as twice:
            hv.create(tiny_domain(running))
        assert running in one_line(twice) and "already exists" in str(twice.value)
        with pytest.raises(DriverError) as bad_xml:
            hv.create(b"<domain type='kvm'><name>x</name></domain>")
        assert one_line(bad_xml).startswith("node1: create: ")
    assert virsh("domstate", running).stdout.strip() == "paused", "nothing of that changed the domain"


def test_a_libvirt_that_does_not_answer_is_transient(sshd: Sshd) -> None:
    hv = Hypervisor(config(sshd, LIBVIRT_URI="qemu:///system?socket=/nonexistent/libvirt-sock"), "node1")
    with pytest.raises(Transient) as down:
        hv.state("one-1")
    line = one_line(down)
    assert line.startswith(f"node1: cannot reach libvirt at {hv.uri}: "), line
    nowhere = Hypervisor(config(sshd, HOST_LIBVIRT_URI="qemu+ssh://{host}.invalid/system?no_tty=1"), "node1")
    with pytest.raises(Transient) as unknown:
        nowhere.state("one-1")
    assert "node1.invalid" in one_line(unknown)


# --- the deploy path -----------------------------------------------------------------------------

def imported(stderr: bytes) -> set[str]:
    """Module names from ``-X importtime`` (PYTHONPROFILEIMPORTTIME) lines."""
    names = set()
    for line in stderr.decode(errors="replace").splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def test_the_deploy_path_imports_no_libvirt_binding(cloud: Cloud) -> None:
    install_standin(cloud, create=False)
    cloud.make_vm(42)
    cloud.env["PYTHONPROFILEIMPORTTIME"] = "1"
    proc, _ = run_deploy(cloud, (ONE / "deployment.0.xml").read_bytes())
    assert proc.returncode == 0, proc.stderr.decode()
    modules = imported(proc.stderr)
    assert {"lxml.etree", "vmm.entry", "onelib.hypervisor", "tweaks.engine"} <= modules, "the probe sees imports"
    assert not {m for m in modules if m.split(".")[0] in ("libvirt", "libvirtmod")}

    apply = subprocess.run([sys.executable, "-m", "tweaks", "apply", str(ONE / "deployment.0.xml"), "--vm",
                            str(ONE / "vm-42.xml")], capture_output=True, timeout=120, check=False, cwd=REPO,
                           env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    assert apply.returncode == 0, apply.stderr.decode()
    modules = imported(apply.stderr)
    assert "tweaks.engine" in modules
    assert not {m for m in modules if m.split(".")[0] in ("libvirt", "libvirtmod")}


# --- pre-flight of a migration -------------------------------------------------------------------

MISSING_FEATURES = ("avx512f", "avx512vl", "la57", "amx-tile", "svm", "vmx")


def preflight_domain(cpu: str = "", nvram: str = "") -> bytes:
    os_extra = (f"<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>"
                f"<nvram template='{nvram}'>/var/lib/libvirt/qemu/nvram/x_VARS.fd</nvram>") if nvram else ""
    return f"""<domain type='{"kvm" if kvm_available() else "qemu"}'>
  <name>one-tweaks-preflight</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type>{os_extra}</os>{cpu}
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>""".encode()


def test_preflight_asks_the_destination_libvirt(sshd: Sshd, libvirtd: object) -> None:
    """The destination's real libvirtd (node1 through the test sshd) answers: a named CPU
    model with a feature this CPU lacks is refused, so is a missing OVMF VARS template, and
    the same domain without them passes."""
    from livevm import host_cpu_flags
    from lxml import etree

    from onelib.preflight import reasons

    missing = next(f for f in MISSING_FEATURES if f.replace("-", "_") not in host_cpu_flags())
    with Hypervisor(config(sshd), "node1") as dest:
        virt = "kvm" if kvm_available() else "qemu"
        # what the host offers: its host-model CPU (named model and features) as a custom CPU
        mode = dest.domain_capabilities(virttype=virt).find("cpu/mode[@name='host-model']")
        offered = "".join(etree.tostring(el).decode() for el in mode if el.tag in ("model", "vendor", "feature"))
        cpu = (f"<cpu mode='custom' match='exact' check='full'>{offered}"
               f"<feature policy='require' name='{missing}'/></cpu>")
        refused = reasons(etree.fromstring(preflight_domain(cpu=cpu)), dest)
        assert len(refused) == 1, refused
        assert refused[0].startswith("node1: the CPU the domain requires is not available: ") \
            and missing in refused[0], refused
        no_template = reasons(etree.fromstring(preflight_domain(nvram="/usr/share/OVMF/NOPE_VARS_4M.fd")), dest)
        assert no_template == ["node1: NVRAM template /usr/share/OVMF/NOPE_VARS_4M.fd is missing"]
        plain_cpu = cpu.replace(f"<feature policy='require' name='{missing}'/>", "")
        assert reasons(etree.fromstring(preflight_domain(cpu=plain_cpu, nvram="/usr/share/OVMF/OVMF_VARS_4M.fd")),
                       dest) == [], "every check holds"
        huge = etree.fromstring(preflight_domain())
        huge.find("memory").text = str(64 * 1024 * 1024)  # 64 TiB
        (memory,) = reasons(huge, dest)
        assert memory.startswith("node1: 67108864 MiB of memory needed, ") and memory.endswith(" MiB free")


def test_preflight_wants_the_ceph_secret_of_every_network_disk(sshd: Sshd, libvirtd: object, tmp_path: Path) -> None:
    """A network (RBD) disk authenticates with the libvirt secret its ``<auth>`` names: the
    destination's libvirt must define it (asked by UUID or usage, its value never read)."""
    from lxml import etree

    from onelib.preflight import reasons

    known, unknown = str(uuid.uuid4()), str(uuid.uuid4())
    usage = f"one-tweaks-preflight-{known[:8]}"
    secret = tmp_path / "secret.xml"
    secret.write_text(f"<secret ephemeral='no' private='yes'><uuid>{known}</uuid>"
                      f"<usage type='ceph'><name>{usage}</name></usage></secret>")
    virsh("secret-define", str(secret))
    try:
        def rbd(target: str, secret_attr: str) -> str:
            return (f"<disk type='network' device='disk'><source protocol='rbd' name='one/one-7-{target}'>"
                    f"<host name='127.0.0.1' port='6789'/></source><auth username='oneadmin'>"
                    f"<secret type='ceph' {secret_attr}/></auth><target dev='{target}' bus='virtio'/></disk>")

        def domain(*disks: str) -> etree._Element:
            root = etree.fromstring(preflight_domain())
            devices = root.find("devices")
            for disk in disks:
                devices.append(etree.fromstring(disk))
            return root

        with Hypervisor(config(sshd), "node1") as dest:
            assert reasons(domain(rbd("vda", f"uuid='{known}'"), rbd("vdb", f"usage='{usage}'")), dest) == []
            assert reasons(domain(rbd("vda", f"uuid='{known}'"), rbd("vdb", f"uuid='{unknown}'"),
                                  rbd("vdc", f"uuid='{unknown}'")), dest) == [
                f"node1: libvirt has no ceph secret uuid {unknown} for network disk vdb"], "once per secret"
            assert reasons(domain(rbd("vda", "usage='nobody'")), dest) == [
                "node1: libvirt has no ceph secret usage nobody for network disk vda"]
    finally:
        virsh("secret-undefine", known, check=False)
