"""The live-migration override ``vmm/kvm/migrate`` called as oned calls a local VMM action
(argv ``<deploy_id> <dst> <src> <vmid> <src>``, the base64 driver message on stdin), between
two real libvirt hosts on this one machine.

node1 is this machine: the session's libvirtd (``livevm.libvirtd``) reached through the test
sshd. node2 is a second host built for this module (``second_host``): a mount namespace
(``unshare -m``) in which /run/libvirt, /var/lib/libvirt, /etc/libvirt and /var/log/libvirt
are the module's own directories, its own libvirtd there (own sockets, state, domains and
``host_uuid``; cgroups off so its guests' cgroup names cannot meet node1's), and its own
sshd started inside that namespace (``nsenter -m``) on another port. So ``virsh --connect
qemu:///system`` over ssh to node2 reaches node2's libvirtd, and libvirt's
``qemu+ssh://node2/system`` really migrates to another libvirt host: libvirt refuses a
migration to itself by comparing host UUIDs. Both sshds log their commands in the same
command log (``cloud.ssh_commands()``).

The ssh client reaches the test hosts through the test ssh_config, so the migration URI is
configured with libvirt's ``command=`` parameter pointing at a wrapper that runs ``ssh -F
<that config>``, and the qemu migration stream goes to 127.0.0.1 (``--migrateuri`` in
MIGRATE_OPTIONS): both are settings of this test setup, not of the override.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import drivers
import libvirt
import pytest
from livevm import host_cpu_flags, kvm_available, libvirtd, virsh
from lxml import etree
from storage_env import REPO, SSHD, SYSTEM_DS, Cloud, Sshd, cloud, sshd

FIXTURES = (cloud, sshd, libvirtd)
pytestmark = [pytest.mark.libvirtd, pytest.mark.usefixtures("libvirtd")]

MIGRATE = drivers.KVM / "migrate-tweaks"
ONE_NS = "http://opennebula.org/xmlns/libvirt/1.0"
NODE2_DIRS = {"run": "/run/libvirt", "lib": "/var/lib/libvirt", "etc": "/etc/libvirt", "log": "/var/log/libvirt"}
# Runs inside the new mount namespace: the host's libvirt directories become node2's, then
# node2's libvirtd takes the process over (same pid: the fixture stops it by that pid).
NAMESPACE_INIT = """set -e
while [ "$#" -ge 2 ]; do mount --bind "$1" "$2"; shift 2; done
exec /usr/sbin/libvirtd -p "$1"
"""
START_TIMEOUT = 60.0
# Domain names carry this process's id: a teardown destroys only this session's domains on
# the libvirtd that other sessions share.
NAME_PREFIX = f"one-tweaks-mig-{os.getpid()}-"


# --- the second host ---------------------------------------------------------------------------

@dataclass
class SecondHost:
    dir: Path
    host_uuid: str
    socket: Path
    ssh_config: Path      # node1 and one-fe: the session sshd; node2: node2's sshd
    ssh_wrapper: Path     # ``ssh -F ssh_config "$@"`` for libvirt's command= parameter
    daemon: subprocess.Popen[bytes]
    sshd: subprocess.Popen[bytes]

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket}"

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["virsh", "-q", "-c", self.uri, *args], capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"node2: virsh {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def state(self, name: str) -> str | None:
        proc = self.virsh("domstate", name, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    def destroy_all(self) -> None:
        for name in self.virsh("list", "--name", check=False).stdout.split():
            self.virsh("destroy", name, check=False)


def _wait(what: str, ready: object, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():  # type: ignore[operator]
        if proc.poll() is not None or time.monotonic() > deadline:
            text = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
            pytest.fail(f"{what} did not come up:\n{text}", pytrace=False)
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _node2_ssh_config(session: Sshd, port: int) -> str:
    """The session's client config with node2 pointed at node2's own sshd."""
    out, current = [], ""
    for line in session.ssh_config.read_text().splitlines():
        words = line.split()
        if words[:1] == ["Host"]:
            current = words[1] if len(words) > 1 else ""
        elif words[:1] == ["Port"] and current == "node2":
            line = f"    Port {port}"
        out.append(line)
    return "\n".join(out) + "\n"


def _sshd_config(session: Sshd, port: int, pidfile: Path) -> str:
    out = []
    for line in session.config.read_text().splitlines():
        if line.startswith("Port "):
            line = f"Port {port}"
        elif line.startswith("PidFile "):
            line = f"PidFile {pidfile}"
        out.append(line)
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def second_host(tmp_path_factory: pytest.TempPathFactory, sshd: Sshd, libvirtd: object) -> Iterator[SecondHost]:
    with started_second_host(tmp_path_factory.mktemp("node2"), sshd) as node2:
        yield node2


@contextlib.contextmanager
def started_second_host(base: Path, sshd: Sshd, dirs: dict[str, str] | None = None) -> Iterator[SecondHost]:
    """node2 in ``base``: NODE2_DIRS, and ``dirs`` (name -> directory of this machine) too,
    are node2's own; a ``base/<name>`` that exists already is used with what it holds."""
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.fail("unshare/nsenter missing (util-linux)", pytrace=False)
    dirs = {**NODE2_DIRS, **(dirs or {})}
    for sub in dirs:
        (base / sub).mkdir(exist_ok=True)
    host_uuid = str(uuid.uuid4())
    (base / "etc" / "libvirtd.conf").write_text(
        f'host_uuid = "{host_uuid}"\nauth_unix_rw = "none"\nauth_unix_ro = "none"\n')
    qemu_conf = Path("/etc/libvirt/qemu.conf")
    (base / "etc" / "qemu.conf").write_text((qemu_conf.read_text() if qemu_conf.exists() else "")
                                            + '\ncgroup_controllers = [ ]\n')
    log = base / "libvirtd.log"
    mounts = [str(part) for sub, target in dirs.items() for part in (base / sub, target)]
    with open(log, "wb") as out:
        daemon = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", NAMESPACE_INIT, "sh",
                                   *mounts, str(base / "libvirtd.pid")],
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    node2 = None
    sshd2: subprocess.Popen[bytes] | None = None
    try:
        sock = base / "run" / "libvirt-sock"

        def answers() -> bool:
            return subprocess.run(["virsh", "-c", f"qemu:///system?socket={sock}", "version"],
                                  capture_output=True, timeout=10).returncode == 0

        _wait("node2's libvirtd", answers, daemon, log)
        port = _free_port()
        config = base / "sshd_config"
        config.write_text(_sshd_config(sshd, port, base / "sshd.pid"))
        sshd_log = base / "sshd.log"
        sshd2 = subprocess.Popen(["nsenter", "-t", str(daemon.pid), "-m", SSHD, "-D", "-f", str(config),
                                  "-E", str(sshd_log)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        _wait("node2's sshd", lambda: _port_open(port), sshd2, sshd_log)
        ssh_config = base / "ssh_config"
        ssh_config.write_text(_node2_ssh_config(sshd, port))
        wrapper = base / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec ssh -F {shlex.quote(str(ssh_config))} "$@"\n')
        wrapper.chmod(0o755)
        node2 = SecondHost(dir=base, host_uuid=host_uuid, socket=sock, ssh_config=ssh_config,
                           ssh_wrapper=wrapper, daemon=daemon, sshd=sshd2)
        probe = subprocess.run([str(wrapper), "node2", "virsh", "-c", "qemu:///system", "capabilities"],
                               capture_output=True, text=True, timeout=60)
        assert host_uuid in probe.stdout, f"ssh node2 does not reach node2's libvirtd: {probe.stderr}"
        yield node2
    finally:
        if node2 is not None:
            node2.destroy_all()
        if sshd2 is not None:
            _stop(sshd2)
        _stop(daemon)


@pytest.fixture
def hosts(cloud: Cloud, second_host: SecondHost) -> Iterator[SecondHost]:
    """The cloud with node2 being the second host; domains of the test destroyed on both."""
    cloud.configure(SSH_COMMAND=shlex.join(["ssh", "-F", str(second_host.ssh_config)]),
                    MIGRATE_URI=f"qemu+ssh://{{host}}/system?command={second_host.ssh_wrapper}",
                    MIGRATE_OPTIONS="--migrateuri tcp://127.0.0.1")
    yield second_host
    second_host.destroy_all()
    for name in virsh("list", "--name", check=False).stdout.split():
        if name.startswith(NAME_PREFIX):
            virsh("destroy", name, check=False, timeout=120)


# --- VMs and oned's calls ---------------------------------------------------------------------

def domain_xml(name: str, dom_uuid: str, disks: list[str], metadata: str = "") -> bytes:
    kvm = kvm_available()
    cpu = ("<cpu mode='host-passthrough' check='none' migratable='on'>"
           "<feature policy='disable' name='arch-capabilities'/></cpu>") if kvm else ""
    meta = (f"<metadata><one:vm xmlns:one='{ONE_NS}'><one:system_datastore><![CDATA[{metadata}]]>"
            "</one:system_datastore></one:vm></metadata>") if metadata else ""
    return f"""<domain type='{"kvm" if kvm else "qemu"}'>
  <name>{name}</name><uuid>{dom_uuid}</uuid>
  <memory>{128 * 1024}</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  {cpu}
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>{"".join(disks)}</devices>
  {meta}
</domain>""".encode()


def start(path: Path, xml: bytes) -> None:
    path.write_bytes(xml)
    virsh("create", str(path), timeout=120)


def message(cloud: Cloud, vm_id: int, dom_uuid: str, src: str, dst: str) -> bytes:
    """VMM_DRIVER_ACTION_DATA for MIGRATE (vmm-migrate.xml's layout)."""
    root = etree.Element("VMM_DRIVER_ACTION_DATA")
    dst_dir = str(cloud.vm_dir(dst, vm_id))
    for tag, value in (("HOST", src), ("MIGR_HOST", dst), ("DEPLOY_ID", dom_uuid), ("LOCAL_DEPLOYMENT_FILE", ""),
                       ("REMOTE_DEPLOYMENT_FILE", ""), ("CHECKPOINT_FILE", ""),
                       ("TM_COMMAND", f"MIGRATE storpool {src} {dst} {dst_dir} {vm_id} {SYSTEM_DS}\n"),
                       ("TM_COMMAND_ROLLBACK", ""), ("DISK_TARGET_PATH", dst_dir)):
        etree.SubElement(root, tag).text = value or None
    root.append(cloud.oned.served("vm", vm_id))
    root.append(cloud.oned.served("datastore", SYSTEM_DS))
    return etree.tostring(root)


def migrate(cloud: Cloud, vm_id: int, dom_uuid: str, src: str, dst: str,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    data = base64.b64encode(message(cloud, vm_id, dom_uuid, src, dst)) if stdin is None else stdin
    return subprocess.run([sys.executable, str(MIGRATE), dom_uuid, dst, src, str(vm_id), src], input=data,
                          capture_output=True, env=cloud.env, cwd=cloud.home, timeout=300, check=False)


@dataclass
class Migration:
    """One migration the drivers asked libvirt for (libvirt's client log, ``Cloud.libvirt_calls``)."""

    api: str                  # virDomainMigrate3 (managed) or virDomainMigrateToURI3 (--p2p)
    uuid: str
    flags: int
    params: dict[str, str]    # e.g. {"migrate_uri": "tcp://127.0.0.1"}; destination_xml only its first line

    @property
    def unsafe(self) -> bool:
        return bool(self.flags & libvirt.VIR_MIGRATE_UNSAFE)


def migrations(cloud: Cloud) -> list[Migration]:
    out: list[Migration] = []
    for call in cloud.libvirt_calls():
        where, _, rest = call.partition(" : ")
        api = where.split(":")[0]
        if api not in ("virDomainMigrate3", "virDomainMigrateToURI3"):
            continue
        head = re.search(r"uuid=([0-9a-f-]+)\).*flags=(0x[0-9a-f]+)", rest)
        if head:
            out.append(Migration(api=api, uuid=head[1], flags=int(head[2], 16), params={}))
            continue
        param = re.match(r'params\["([^"]+)"\]=\(\w+\)(.*)', rest)
        if param and out:
            out[-1].params[param[1]] = param[2]
    return out


def tm(cloud: Cloud, action: str, vm_id: int, src: str, dst: str) -> None:
    """tm/storpool/<pre|post>migrate as oned runs it around the VMM migrate."""
    vm = base64.b64encode(etree.tostring(cloud.oned.served("vm", vm_id)))
    proc = cloud.run_tm(action, src, dst, str(cloud.vm_dir(src, vm_id)), str(vm_id), str(SYSTEM_DS), stdin=vm)
    assert proc.returncode == 0, f"tm {action}: {proc.stderr.decode()}"


def move_history(cloud: Cloud, vm_id: int, host: str) -> None:
    """oned's new history record after a migration: the VM is on ``host`` now."""
    hist = cloud.oned.vm(vm_id).find("HISTORY_RECORDS/HISTORY")
    assert hist is not None
    hist.find("HOSTNAME").text = host
    hist.find("HID").text = str(cloud.hosts[host].host_id)


def one_line(proc: subprocess.CompletedProcess[bytes], *words: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr.decode())
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# --- tests -------------------------------------------------------------------------------------

def test_live_migration_to_another_libvirt_host_and_back(cloud: Cloud, hosts: SecondHost) -> None:
    """MIGRATE as oned runs it: tm premigrate, the override, tm postmigrate; a real guest on
    StorPool-simulator volumes moves from node1's libvirtd to node2's and back."""
    vm_id = 4401
    cloud.make_volume("one-img-7", 16, data=b"boot sector" * 100)
    cloud.make_vm(vm_id, disks=[{"image": 7, "size": 16}], context=False, template={"MEMORY": 128})
    proc = cloud.run_tm("clone", "one-fe:one-img-7", cloud.tm_path("node1", vm_id, 0), str(vm_id), "100")
    assert proc.returncode == 0, proc.stderr.decode()
    name, dom_uuid = f"{NAME_PREFIX}{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    node1_dir, node2_dir = str(cloud.vm_dir("node1", vm_id)), str(cloud.vm_dir("node2", vm_id))
    disk = (f"<disk type='block' device='disk'><source dev='{node1_dir}/disk.0'/><target dev='vda' bus='virtio'/>"
            "<driver name='qemu' type='raw' cache='none' io='native'/></disk>")
    start(cloud.root / f"{name}.xml", domain_xml(name, dom_uuid, [disk], metadata=node1_dir))

    tm(cloud, "premigrate", vm_id, "node1", "node2")
    proc = migrate(cloud, vm_id, dom_uuid, "node1", "node2")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b""
    tm(cloud, "postmigrate", vm_id, "node1", "node2")
    move_history(cloud, vm_id, "node2")
    assert virsh("domstate", name, check=False).returncode != 0, "the domain left node1's libvirtd"
    assert hosts.state(name) == "running"
    assert hosts.virsh("domuuid", name).stdout.strip() == dom_uuid
    live = etree.fromstring(hosts.virsh("dumpxml", name).stdout.encode())
    assert live.find("devices/disk/source").get("dev") == f"{node2_dir}/disk.0", "node2's VM directory"
    assert live.findtext(f"metadata/{{{ONE_NS}}}vm/{{{ONE_NS}}}system_datastore") == node2_dir
    (done,) = migrations(cloud)
    assert done.api == "virDomainMigrate3", "managed by the driver, which holds both connections"
    assert done.uuid == dom_uuid and done.unsafe and done.flags & libvirt.VIR_MIGRATE_LIVE
    assert done.params["migrate_uri"] == "tcp://127.0.0.1", "MIGRATE_OPTIONS' --migrateuri"
    assert "destination_xml" in done.params, "node2's VM directory is another path: the XML is relocated"

    tm(cloud, "premigrate", vm_id, "node2", "node1")
    proc = migrate(cloud, vm_id, dom_uuid, "node2", "node1")
    assert proc.returncode == 0, proc.stderr.decode()
    tm(cloud, "postmigrate", vm_id, "node2", "node1")
    assert hosts.state(name) is None
    assert virsh("domstate", name).stdout.strip() == "running"
    live = etree.fromstring(virsh("dumpxml", name).stdout.encode())
    assert live.find("devices/disk/source").get("dev") == f"{node1_dir}/disk.0"
    assert len(migrations(cloud)) == 2, "one migration back"

    # a re-run (the reply was lost): the domain already runs on node1, nothing is done
    proc = migrate(cloud, vm_id, dom_uuid, "node2", "node1")
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(migrations(cloud)) == 2
    assert virsh("domstate", name).stdout.strip() == "running"


CACHED_DISK = ("<disk type='file' device='disk'><source file='{path}'/><target dev='vda' bus='virtio'/>"
               "<driver name='qemu' type='raw' cache='{cache}'/></disk>")
EMPTY_CDROM = ("<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><driver name='qemu' type='raw'/>"
               "<readonly/></disk>")


@pytest.mark.parametrize("cache", ["none", "writeback"])
def test_unsafe_only_when_every_disk_has_cache_none(cloud: Cloud, hosts: SecondHost, tmp_path: Path,
                                                    cache: str) -> None:
    """A file disk on a local file system: libvirt migrates it only with --unsafe. With
    cache='none' the override adds it and the guest moves; with writeback it does not (not
    even when MIGRATE_OPTIONS asks for it) and libvirt's refusal is the one-line error. The
    empty CD-ROM (no cache attribute) does not count. The domain has libvirt snapshot
    metadata: removed for the migration, and back when the migration fails."""
    cloud.configure(MIGRATE_OPTIONS="--unsafe --migrateuri tcp://127.0.0.1")
    vm_id = 4402
    cloud.make_vm(vm_id, disks=[], context=False, template={"MEMORY": 128})
    image = tmp_path / "disk.img"
    with open(image, "wb") as fh:
        fh.truncate(16 * 2**20)
    name, dom_uuid = f"{NAME_PREFIX}{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    start(tmp_path / "dom.xml", domain_xml(name, dom_uuid, [CACHED_DISK.format(path=image, cache=cache), EMPTY_CDROM]))
    snapshot_metadata(name, tmp_path)
    proc = migrate(cloud, vm_id, dom_uuid, "node1", "node2")
    (done,) = migrations(cloud)
    assert done.flags & libvirt.VIR_MIGRATE_LIVE and done.params["migrate_uri"] == "tcp://127.0.0.1"
    assert "destination_xml" not in done.params, "no system datastore metadata: nothing to relocate"
    if cache == "none":
        assert proc.returncode == 0, proc.stderr.decode()
        assert done.unsafe
        assert hosts.state(name) == "running"
        assert virsh("domstate", name, check=False).returncode != 0
    else:
        failure = [ln for ln in proc.stderr.decode().splitlines() if not ln.startswith("INFO: ")]
        assert proc.returncode == 1 and len(failure) == 1, proc.stderr.decode()
        assert f"node1: migrate {dom_uuid} to node2: " in failure[0] and "Unsafe migration" in failure[0]
        assert not done.unsafe
        assert hosts.state(name) is None
        assert virsh("domstate", name).stdout.strip() == "running"
        assert virsh("snapshot-list", name, "--name").stdout.split() == ["before-upgrade"], (
            "the failed migration put the snapshot metadata back")
        assert virsh("snapshot-current", name, "--name").stdout.strip() == "before-upgrade"


@pytest.mark.parametrize(
    ("argv", "stdin", "words"),
    [
        (["$(reboot)", "node2", "node1", "4403", "node1"], None, ["is not a libvirt domain name or UUID"]),
        (["@UUID@", "node2;x", "node1", "4403", "node1"], None, ["host name 'node2;x' is not acceptable"]),
        (["@UUID@", "node2", "node1", "4403", "node1"], b"!!!", ["not valid base64"]),
        (["@UUID@", "node1", "node1", "4403", "node1"], b"", ["source and destination are both node1"]),
        (["@UUID@", "node2", "node1", "4404", "node1"], None, ["about VM '4403', not VM 4404"]),
        (["@UUID@", "one-fe", "node1", "4403", "node1"], None, ["MIGR_HOST is 'node2', the arguments say 'one-fe'"]),
        (["@UUID@", "node2", "node1", "4403", "node1"], None, ["is on neither node1 nor node2"]),
    ],
)
def test_bad_calls_fail_with_one_line(cloud: Cloud, hosts: SecondHost, argv: list[str], stdin: bytes | None,
                                      words: list[str]) -> None:
    dom_uuid = str(uuid.uuid4())
    cloud.make_vm(4403, disks=[], context=False)
    argv = [a.replace("@UUID@", dom_uuid) for a in argv]
    data = base64.b64encode(message(cloud, 4403, dom_uuid, "node1", "node2")) if stdin is None else stdin
    proc = subprocess.run([sys.executable, str(MIGRATE), *argv], input=data, capture_output=True, env=cloud.env,
                          cwd=cloud.home, timeout=120, check=False)
    one_line(proc, *words)
    assert not migrations(cloud)


def test_the_unsafe_decision_reads_every_disk() -> None:
    from vmm.actions.migrate import uncached

    fixture = etree.parse(str(REPO / "tests" / "fixtures" / "opennebula" / "deployment.0.xml")).getroot()
    assert uncached(fixture), "every disk has cache='none'; the context CD-ROM (no cache) does not count"
    disks = fixture.findall("devices/disk[@device='disk']")
    disks[1].find("driver").set("cache", "writethrough")
    assert not uncached(fixture)
    disks[1].find("driver").set("cache", "none")
    disks[2].remove(disks[2].find("driver"))
    assert not uncached(fixture), "a disk without a driver element uses the host's default cache"
    disks[2].set("device", "lun")
    assert not uncached(fixture)
    for disk in disks:
        disk.getparent().remove(disk)
    assert uncached(fixture), "no disk, nothing unsafe"


# --- migrate rules -----------------------------------------------------------------------------

MISSING_FEATURE_CANDIDATES = ("avx512f", "avx512vl", "la57", "amx-tile", "svm", "vmx")


def missing_cpu_feature() -> str:
    """A CPU feature libvirt knows that this machine (so both test hosts) lacks."""
    flags = host_cpu_flags()
    found = next((f for f in MISSING_FEATURE_CANDIDATES if f.replace("-", "_") not in flags), None)
    assert found is not None, f"this CPU has every one of {MISSING_FEATURE_CANDIDATES}"
    return found


def snapshot_metadata(name: str, directory: Path) -> None:
    """A libvirt snapshot of the running domain that exists as metadata only (--redefine):
    libvirt refuses to migrate a domain that has any."""
    live = virsh("dumpxml", "--inactive", name).stdout
    path = directory / "snapshot.xml"
    path.write_text(f"<domainsnapshot><name>before-upgrade</name><state>running</state>"
                    f"<creationTime>1700000000</creationTime><memory snapshot='no'/>{live}</domainsnapshot>")
    virsh("snapshot-create", name, str(path), "--redefine", "--current")
    assert virsh("snapshot-list", name, "--name").stdout.split() == ["before-upgrade"]


def test_migrate_rules_shape_the_destination_domain(cloud: Cloud, hosts: SecondHost, tmp_path: Path) -> None:
    """The shipped migrate rules on a real live migration from node1 to node2: graphics that
    listened on node1's address (127.0.0.2) listen on the address node2 is reached at
    (127.0.0.1), the iothreads are dropped because the VM asks (T_MIGRATE_IOTHREADS_DROP),
    libvirt's snapshot metadata is removed first, and the guest clock sync is tried after.
    The CPU rule removes the feature node2 lacks; libvirt refuses to change a running guest's
    CPU, so that rule alone is rolled back, with libvirt's reason in the VM log."""
    vm_id = 4406
    cloud.make_vm(vm_id, disks=[], context=False, template={"MEMORY": 128}, user={"T_MIGRATE_IOTHREADS_DROP": "YES"})
    feature = missing_cpu_feature()
    image = tmp_path / "disk.img"
    with open(image, "wb") as fh:
        fh.truncate(16 * 2**20)
    name, dom_uuid = f"{NAME_PREFIX}{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    disk = (f"<disk type='file' device='disk'><source file='{image}'/><target dev='vda' bus='virtio'/>"
            "<driver name='qemu' type='raw' cache='none' iothread='1'/></disk>"
            "<controller type='scsi' index='0' model='virtio-scsi'><driver queues='2' iothread='1'/></controller>"
            "<graphics type='vnc' autoport='yes' listen='127.0.0.2'><listen type='address' address='127.0.0.2'/>"
            "</graphics>")
    xml = domain_xml(name, dom_uuid, [disk]).replace(b"<vcpu>1</vcpu>", b"<vcpu>1</vcpu><iothreads>1</iothreads>")
    if kvm_available():
        xml = xml.replace(b"<feature policy='disable' name='arch-capabilities'/>",
                          b"<feature policy='disable' name='arch-capabilities'/>"
                          + f"<feature policy='disable' name='{feature}'/>".encode())
    else:
        xml = xml.replace(b"<devices>", f"<cpu mode='custom' match='exact'><model>qemu64</model>"
                                        f"<feature policy='disable' name='{feature}'/></cpu><devices>".encode())
    start(tmp_path / "dom.xml", xml)
    snapshot_metadata(name, tmp_path)

    proc = migrate(cloud, vm_id, dom_uuid, "node1", "node2")
    assert proc.returncode == 0, proc.stderr.decode()
    log = proc.stderr.decode()
    assert hosts.state(name) == "running"
    assert virsh("domstate", name, check=False).returncode != 0, "the domain left node1"

    moved = etree.fromstring(hosts.virsh("dumpxml", name).stdout.encode())
    graphics = moved.find("devices/graphics")
    assert graphics.get("listen") == "127.0.0.1" and graphics.find("listen").get("address") == "127.0.0.1"
    assert moved.find("iothreads") is None, "iothreads dropped"
    assert not moved.xpath("devices/*/driver[@iothread]"), "the disk and the controller unbound"
    assert moved.find("devices/controller[@model='virtio-scsi']/driver").get("queues") == "2"
    assert moved.find(f"cpu/feature[@name='{feature}']") is not None, "libvirt kept the running guest's CPU"
    assert f"INFO: {vm_id} migrate-tweaks: libvirt snapshot metadata removed before migrating: before-upgrade" in log
    assert (f"INFO: {vm_id} migrate-tweaks: rule migrate-cpu-features rolled back: libvirt refused its change: "
            f"node1: migrate {dom_uuid} to node2: unsupported configuration: Target CPU feature count") in log, log
    assert f"INFO: {vm_id} migrate-tweaks: migrate rules applied: migrate-graphics-listen, migrate-iothreads-drop" \
        in log, log

    (done,) = migrations(cloud)[-1:]
    assert "destination_xml" in done.params
    assert any(f"uuid={dom_uuid}" in c for c in cloud.libvirt_calls("virDomainSetTime")), "the clock sync was tried"
    assert cloud.libvirt_calls("virConnectBaselineHypervisorCPU"), "node2's CPU features were asked for"
