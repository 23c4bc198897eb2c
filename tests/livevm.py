"""Real libvirtd + qemu harness: boot engine output paused and ask qemu what it got.

Reusable by any test module (tests/ is on sys.path; name the imported fixtures once at module
level so ruff sees them used, as tests/test_live_tweaks.py does)::

    from livevm import bootable, deployment_disks, libvirtd, live, loopdev, qmp, start
    FIXTURES = (libvirtd, live, loopdev, start, deployment_disks)

Fixtures
    libvirtd (session)  starts /usr/sbin/libvirtd unless ``virsh -c qemu:///system version``
                        already answers; stops only the daemon it started, once no other
                        pytest session uses it (flock); fails (never skips) when the daemon
                        cannot come up (run .ci/setup-libvirt first).
    loopdev             ``loopdev(size_mib=16, name=None) -> "/dev/loopN"``: sparse file in
                        tmp_path, ``losetup --find --show``; detaches only what it attached.
    deployment_disks    ``{"vda": loop, "sda": loop, "vdb": loop, "hda": file}``: backing for
                        every disk of tests/fixtures/opennebula/deployment.0.xml.
    live                LiveVMs: ``live.start(xml, paused=True) -> name``, ``live.destroy(name)``;
                        destroys every domain it started at teardown.
    start               ``live.start`` itself.
    Same things for other scopes: ``LoopDevices(dir).attach(size_mib)`` / ``.detach_all()``,
    ``fixture_disks(attach, dir)``, ``LiveVMs(dir).start(xml)`` / ``.destroy_all()``.

Functions (need a running daemon)
    virsh(*args, check=True, timeout=60) -> CompletedProcess[str]
    qmp(name, command, args=None) -> the QMP "return" value (parsed JSON); QMPError on "error"
    qom_get(name, path, prop) -> Any;  qom_list(name, path) -> {property: type}
    peripherals(name) -> {"virtio-disk0": "virtio-blk-pci", "scsi0": "virtio-scsi-pci", ...}
    vcpus(name) -> query-cpus-fast entries;  iothreads(name) -> query-iothreads entries
    dumpxml(name) -> lxml root of the live domain (what libvirt accepted)
    qemu_pid(name), qemu_argv(name) -> qemu's command line, qemu_devices(name) -> the JSON
    ``-device`` dicts (libvirt passes e.g. num-queues only when the XML asks for it);
    qemu_log(name, lines=30) -> tail of /var/log/libvirt/qemu/NAME.log

Pure helpers
    bootable(domain_xml, disks, *, name=None, accel=None, memory_mib=256, network="ethernet",
             uefi=False, nvram=None, fix_cpu=True) -> bytes   engine output -> startable here
    small_domain(domain_xml=None, *, vcpu=4, memory_mib=256) -> bytes   shrink oned's domain
             BEFORE the rules run (NUMA cells are derived from <memory>)
    domain_name(xml) -> str;  host_cpu_flags() -> set[str];  kvm_available() -> bool
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
from lxml import etree

URI = "qemu:///system"
LIBVIRTD = "/usr/sbin/libvirtd"
EMULATOR = "/usr/bin/qemu-system-x86_64"
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = {  # loader -> its NVRAM template
    "/usr/share/OVMF/OVMF_CODE_4M.fd": "/usr/share/OVMF/OVMF_VARS_4M.fd",
    "/usr/share/OVMF/OVMF_CODE.fd": "/usr/share/OVMF/OVMF_VARS.fd",
}
QEMU_LOG_DIR = Path("/var/log/libvirt/qemu")
QEMU_RUN_DIR = Path("/run/libvirt/qemu")
NAME_PREFIX = "one-tweaks-live-"
FIXTURE_DOMAIN = Path(__file__).resolve().parent / "fixtures" / "opennebula" / "deployment.0.xml"
DAEMON_START_TIMEOUT = 60.0
DAEMON_STOP_WAIT = 60.0  # how long the owner waits for other sessions before leaving libvirtd up
SETUP_HINT = "run .ci/setup-libvirt (packages, libvirt-qemu user, /etc/libvirt/qemu.conf)"

_PARSER = etree.XMLParser(strip_cdata=False, remove_blank_text=False)


class QMPError(RuntimeError):
    """qemu answered a QMP command with an error."""


# --------------------------------------------------------------------------- virsh


def virsh(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``virsh -c qemu:///system ARGS``; raises AssertionError with virsh's stderr when check fails."""
    proc = subprocess.run(["virsh", "-q", "-c", URI, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"virsh {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def daemon_answers() -> bool:
    try:
        return subprocess.run(["virsh", "-c", URI, "version"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def kvm_available() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def host_cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


# --------------------------------------------------------------------------- daemon


@dataclass
class Daemon:
    """The libvirtd the session uses. ``pid`` is None when it was already running."""

    pid: int | None
    log: Path | None
    started_in: float = 0.0


def _tail(path: Path | None, lines: int = 25) -> str:
    if path is None or not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _lock_path(kind: str) -> Path:
    directory = Path("/run/lock") if os.access("/run/lock", os.W_OK) else Path(tempfile.gettempdir())
    return directory / f"one-tweaks-livevm-libvirtd.{kind}.lock"


def _start_daemon(log: Path) -> tuple[subprocess.Popen[bytes], float]:
    """Start libvirtd in the background and wait until it answers (first start ~8 s)."""
    for tool in (LIBVIRTD, EMULATOR):
        if not os.path.exists(tool):
            pytest.fail(f"{tool} is missing: {SETUP_HINT}", pytrace=False)
    if shutil.which("virsh") is None:
        pytest.fail(f"virsh is missing: {SETUP_HINT}", pytrace=False)
    began = time.monotonic()
    with open(log, "ab") as out:
        proc = subprocess.Popen([LIBVIRTD], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    while not daemon_answers():
        if proc.poll() is not None:
            pytest.fail(f"libvirtd exited with {proc.returncode} while starting ({SETUP_HINT}):\n{_tail(log)}",
                        pytrace=False)
        if time.monotonic() - began > DAEMON_START_TIMEOUT:
            _stop(proc)
            pytest.fail(f"libvirtd did not answer within {DAEMON_START_TIMEOUT:.0f} s:\n{_tail(log)}",
                        pytrace=False)
        time.sleep(0.2)
    return proc, time.monotonic() - began


@pytest.fixture(scope="session")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A libvirtd answering on qemu:///system for the whole session (started here if needed).

    Several pytest sessions may run on one machine at once; they coordinate with two flocks in
    /run/lock: ``start`` (exclusive, held briefly to check for / start the daemon or to stop it)
    and ``use`` (shared, held while the session uses the daemon). The session that started
    libvirtd stops it (by its PID) once it can take ``use`` exclusively, i.e. no other session
    uses it; after DAEMON_STOP_WAIT seconds it gives up and leaves the daemon for later sessions.
    """
    log = tmp_path_factory.mktemp("libvirtd") / "libvirtd.log"
    start_lock = open(_lock_path("start"), "a+")  # noqa: SIM115 - held across the session
    use_lock = open(_lock_path("use"), "a+")  # noqa: SIM115
    proc: subprocess.Popen[bytes] | None = None
    daemon = Daemon(pid=None, log=None)
    try:
        with _flocked(start_lock):
            if not daemon_answers():
                proc, took = _start_daemon(log)
                daemon = Daemon(pid=proc.pid, log=log, started_in=took)
            fcntl.flock(use_lock, fcntl.LOCK_SH)
        yield daemon
    finally:
        if proc is not None:
            _stop_when_unused(proc, start_lock, use_lock)
        use_lock.close()
        start_lock.close()


@contextlib.contextmanager
def _flocked(lock: IO[str]) -> Iterator[None]:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)


def _stop_when_unused(proc: subprocess.Popen[bytes], start_lock: IO[str], use_lock: IO[str]) -> None:
    deadline = time.monotonic() + DAEMON_STOP_WAIT
    while True:
        with _flocked(start_lock):  # no session may look for the daemon while it is being stopped
            try:
                fcntl.flock(use_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                _stop(proc)
                return
        if time.monotonic() > deadline:
            warnings.warn(f"libvirtd (pid {proc.pid}) left running: another test session still uses it",
                          stacklevel=1)
            return
        time.sleep(0.5)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the libvirtd this session started (by its PID only)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# --------------------------------------------------------------------------- loop devices


class LoopDevices:
    """Sparse files attached as loop devices; ``detach_all()`` detaches only what it attached."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.attached: list[str] = []
        self._count = 0

    def attach(self, size_mib: int = 16, name: str | None = None) -> str:
        self._count += 1
        backing = self.directory / (name or f"loop{self._count}.img")
        with open(backing, "wb") as f:
            f.truncate(size_mib * 1024 * 1024)
        proc = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 0, f"losetup --find --show {backing} failed: {proc.stderr.strip()}"
        device = proc.stdout.strip()
        self.attached.append(device)
        return device

    def detach_all(self) -> None:
        errors = []
        while self.attached:
            device = self.attached.pop()
            proc = subprocess.run(["losetup", "-d", device], capture_output=True, text=True, timeout=30)
            if proc.returncode != 0:
                errors.append(f"{device}: {proc.stderr.strip()}")
        assert not errors, "could not detach loop devices: " + "; ".join(errors)


@pytest.fixture
def loopdev(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Factory: ``loopdev(size_mib=16, name=None) -> "/dev/loopN"`` backed by a sparse file."""
    loops = LoopDevices(tmp_path)
    yield loops.attach
    loops.detach_all()


def fixture_disks(attach: Callable[..., str], directory: Path) -> dict[str, str]:
    """Backing for the four disks of deployment.0.xml: three loop devices and a cdrom file."""
    cdrom = directory / "disk.3"
    cdrom.write_bytes(b"\0" * 2048)
    return {"vda": attach(16), "sda": attach(16), "vdb": attach(16), "hda": str(cdrom)}


@pytest.fixture
def deployment_disks(loopdev: Callable[..., str], tmp_path: Path) -> dict[str, str]:
    """``fixture_disks`` for one test: ``{"vda": loop, "sda": loop, "vdb": loop, "hda": file}``."""
    return fixture_disks(loopdev, tmp_path)


# --------------------------------------------------------------------------- domain XML


def small_domain(domain_xml: bytes | None = None, *, vcpu: int | None = 4, memory_mib: int = 256) -> bytes:
    """The engine's input, shrunk before the rules run: ``<memory>`` (and currentMemory) to
    ``memory_mib``, ``<vcpu>`` to ``vcpu`` (None keeps it). Tweaks that derive values from the
    memory (NUMA cells) then produce a small, consistent domain."""
    root = etree.fromstring(domain_xml or FIXTURE_DOMAIN.read_bytes(), _PARSER)
    for tag in ("memory", "currentMemory"):
        el = root.find(tag)
        if el is not None:
            el.text = str(memory_mib * 1024)
            _drop_attr(el, "unit")
    if vcpu is not None:
        el = root.find("vcpu")
        if el is not None:
            el.text = str(vcpu)
    return etree.tostring(root)


def _drop_attr(element: etree._Element, name: str) -> None:
    if name in element.attrib:
        del element.attrib[name]


def _is_block(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


def _set_source(disk: etree._Element, path: str) -> None:
    old = disk.find("source")
    new = etree.Element("source")
    if _is_block(path):
        disk.set("type", "block")
        new.set("dev", path)
    else:
        disk.set("type", "file")
        new.set("file", path)
    if old is not None:
        new.tail = old.tail
        disk.replace(old, new)
    else:
        target = disk.find("target")
        disk.insert(disk.index(target) if target is not None else 0, new)


def _insert_cpu_feature(cpu: etree._Element, policy: str, name: str) -> None:
    feature = etree.Element("feature", policy=policy, name=name)
    before = ("numa", "cache")
    for i, child in enumerate(cpu):
        if child.tag in before:
            cpu.insert(i, feature)
            return
    cpu.append(feature)


def bootable(
    domain_xml: bytes | etree._ElementTree | etree._Element,
    disks: Mapping[str, str | None],
    *,
    name: str | None = None,
    accel: str | None = None,
    memory_mib: int | None = 256,
    network: str = "ethernet",
    uefi: bool = False,
    nvram: str | None = None,
    fix_cpu: bool = True,
) -> bytes:
    """Turn an engine-produced domain (oned 6.10 layout) into one this machine can start.

    Changes only what ties the domain to an OpenNebula host; iothreads, driver attributes,
    controllers, video, CPU mode/model/topology/features/NUMA are left as the rules wrote them,
    except the CPU quirks of this nested KVM when ``fix_cpu`` (see below).

    - name ``one-tweaks-live-XXXXXXXX`` (or ``name``) and a fresh ``<uuid>``;
      emulator /usr/bin/qemu-system-x86_64;
    - ``accel``: "kvm" (type='kvm') or "tcg" (type='qemu'); default: kvm when /dev/kvm is usable;
    - ``<memory>``/``<currentMemory>`` set to ``memory_mib`` unless the domain has NUMA cells
      (shrink the input with small_domain() instead) or memory_mib is None;
    - ``disks`` maps each disk's target dev to a path: a block device becomes type='block'
      ``<source dev>``, anything else type='file' ``<source file>``; None removes the disk;
      a disk without an entry is an error (ValueError);
    - ``network``: "ethernet" turns every interface into an unmanaged-tap type='ethernet'
      (no bridge br0 here; source/target/virtualport/filterref dropped; driver name='vhost'
      becomes 'qemu' as /dev/vhost-net is absent), "none" removes interfaces;
    - graphics listen on 127.0.0.1 with autoport;
    - UEFI: loader/nvram (and ``<os firmware>``) removed unless ``uefi``; with ``uefi`` the loader
      stays if it exists here (else OVMF_CODE_4M.fd) and NVRAM goes to ``nvram`` (a block device
      is used as ``<nvram type='block'>``; a file path gets the matching VARS template);
    - ``fix_cpu`` (KVM only): host-passthrough/maximum get check='none' migratable='on' and
      arch-capabilities disabled; host-model and named (custom) models get check='none'.
      Under TCG host-passthrough becomes mode='maximum'.
    """
    data = domain_xml if isinstance(domain_xml, bytes) else etree.tostring(domain_xml)
    root = etree.fromstring(data, _PARSER)  # always a copy: the caller's tree stays as it was
    accel = accel or ("kvm" if kvm_available() else "tcg")
    if accel not in ("kvm", "tcg"):
        raise ValueError(f"accel must be kvm or tcg, not {accel!r}")
    root.set("type", "kvm" if accel == "kvm" else "qemu")

    # identity
    name_el = root.find("name")
    if name_el is None:
        name_el = etree.Element("name")
        root.insert(0, name_el)
    name_el.text = name or f"{NAME_PREFIX}{uuid.uuid4().hex[:8]}"
    uuid_el = root.find("uuid")
    if uuid_el is None:
        uuid_el = etree.Element("uuid")
        name_el.addnext(uuid_el)
    uuid_el.text = str(uuid.uuid4())

    # memory
    if memory_mib is not None and root.find("cpu/numa") is None:
        for tag in ("memory", "currentMemory"):
            el = root.find(tag)
            if el is not None:
                el.text = str(memory_mib * 1024)
                _drop_attr(el, "unit")

    # firmware
    os_el = root.find("os")
    if os_el is not None:
        _fix_firmware(os_el, uefi=uefi, nvram=nvram)

    # CPU quirks
    cpu = root.find("cpu")
    if fix_cpu and cpu is not None:
        _fix_cpu(cpu, accel)

    devices = root.find("devices")
    if devices is None:
        devices = etree.SubElement(root, "devices")
    # all <devices> blocks (oned writes three; the engine merges them, raw fixtures do not)
    all_devices = root.findall("devices")

    emulator = devices.find("emulator")
    if emulator is None:
        emulator = etree.Element("emulator")
        devices.insert(0, emulator)
    emulator.text = EMULATOR

    missing = []
    for block in all_devices:
        for disk in block.findall("disk"):
            target = disk.find("target")
            dev = target.get("dev") if target is not None else None
            if dev is None or dev not in disks:
                missing.append(dev or "?")
                continue
            path = disks[dev]
            if path is None:
                block.remove(disk)
            elif path == "" and disk.get("device") in ("cdrom", "floppy"):
                source = disk.find("source")
                if source is not None:
                    disk.remove(source)
                disk.set("type", "file")
            else:
                _set_source(disk, path)
    if missing:
        raise ValueError(f"bootable(): no backing given for disk(s) {', '.join(missing)}")

    for block in all_devices:
        for iface in block.findall("interface"):
            if network == "none":
                block.remove(iface)
                continue
            if network != "ethernet":
                raise ValueError(f"network must be ethernet or none, not {network!r}")
            iface.set("type", "ethernet")
            for tag in ("source", "target", "virtualport", "filterref"):
                for el in iface.findall(tag):
                    iface.remove(el)
            drv = iface.find("driver")
            if drv is not None and drv.get("name") == "vhost" and not os.path.exists("/dev/vhost-net"):
                drv.set("name", "qemu")
        for graphics in block.findall("graphics"):
            for listen in graphics.findall("listen"):
                graphics.remove(listen)
            for attr in ("port", "tlsPort", "websocket"):
                _drop_attr(graphics, attr)
            graphics.set("autoport", "yes")
            graphics.set("listen", "127.0.0.1")
    return etree.tostring(root)


def _fix_firmware(os_el: etree._Element, *, uefi: bool, nvram: str | None) -> None:
    loader = os_el.find("loader")
    nvram_el = os_el.find("nvram")
    if not uefi:
        _drop_attr(os_el, "firmware")
        for el in (loader, nvram_el, os_el.find("firmware")):
            if el is not None:
                os_el.remove(el)
        return
    if loader is None and os_el.get("firmware") != "efi":
        loader = etree.SubElement(os_el, "loader", readonly="yes", type="pflash")
    if loader is not None:
        if not (loader.text and os.path.exists(loader.text.strip())):
            loader.text = OVMF_CODE
        code = loader.text.strip()
    else:
        code = OVMF_CODE
    if nvram is None:
        if nvram_el is not None:
            os_el.remove(nvram_el)
        return
    if nvram_el is None:
        nvram_el = etree.SubElement(os_el, "nvram")
        if loader is not None:
            loader.addnext(nvram_el)
    for child in list(nvram_el):
        nvram_el.remove(child)
    nvram_el.attrib.clear()
    if _is_block(nvram):
        nvram_el.text = None
        nvram_el.set("type", "block")
        etree.SubElement(nvram_el, "source", dev=nvram)
    else:
        nvram_el.text = nvram
        template = OVMF_VARS.get(code)
        if template:
            nvram_el.set("template", template)


def _fix_cpu(cpu: etree._Element, accel: str) -> None:
    mode = cpu.get("mode", "custom" if cpu.find("model") is not None else "")
    if accel == "tcg":
        if mode == "host-passthrough":
            cpu.set("mode", "maximum")
        return
    if mode in ("host-passthrough", "maximum"):
        cpu.set("check", "none")
        cpu.set("migratable", "on")
        if cpu.find("feature[@name='arch-capabilities']") is None:
            _insert_cpu_feature(cpu, "disable", "arch-capabilities")
    elif mode == "host-model" or (mode == "custom" and cpu.find("model") is not None):
        cpu.set("check", "none")


# --------------------------------------------------------------------------- running domains


def domain_name(xml: bytes) -> str:
    name = etree.fromstring(xml, _PARSER).findtext("name")
    assert name, "domain XML has no <name>"
    return name.strip()


def qemu_log(name: str, lines: int = 30) -> str:
    return _tail(QEMU_LOG_DIR / f"{name}.log", lines)


@dataclass
class LiveVMs:
    """Domains started by one test; all destroyed at teardown."""

    workdir: Path
    names: list[str] = field(default_factory=list)

    def start(self, xml: bytes, paused: bool = True) -> str:
        """``virsh create [--paused]``; returns the domain name. Failures show libvirt's and qemu's words."""
        name = domain_name(xml)
        path = self.workdir / f"{name}.xml"
        path.write_bytes(xml)
        args = ["create", str(path)] + (["--paused"] if paused else [])
        proc = virsh(*args, check=False, timeout=120)
        if proc.returncode != 0:
            raise AssertionError(f"virsh create {name} failed: {proc.stderr.strip()}\n"
                                 f"qemu log:\n{qemu_log(name)}\ndomain XML: {path}")
        self.names.append(name)
        return name

    def destroy(self, name: str) -> None:
        proc = virsh("destroy", name, check=False, timeout=120)
        if proc.returncode != 0 and "not found" not in proc.stderr and "not running" not in proc.stderr:
            raise AssertionError(f"virsh destroy {name} failed: {proc.stderr.strip()}")
        if name in self.names:
            self.names.remove(name)

    def destroy_all(self) -> None:
        errors = []
        for name in list(self.names):
            try:
                self.destroy(name)
            except AssertionError as e:
                errors.append(str(e))
        assert not errors, "; ".join(errors)


@pytest.fixture
def live(libvirtd: Daemon, loopdev: Callable[..., str], tmp_path: Path) -> Iterator[LiveVMs]:
    """Domains of one test. Depends on ``loopdev`` so that its VMs are destroyed before the
    loop devices under them are detached."""
    vms = LiveVMs(tmp_path)
    yield vms
    vms.destroy_all()


@pytest.fixture
def start(live: LiveVMs) -> Callable[..., str]:
    """``start(xml, paused=True) -> name``; the domain is destroyed at teardown."""
    return live.start


# --------------------------------------------------------------------------- asking qemu


def qmp(name: str, command: str, args: Mapping[str, Any] | None = None) -> Any:
    """Run a QMP command through libvirt; returns the parsed ``return`` value."""
    message: dict[str, Any] = {"execute": command}
    if args:
        message["arguments"] = dict(args)
    proc = virsh("qemu-monitor-command", name, "--pretty", json.dumps(message))
    reply = json.loads(proc.stdout)
    if "error" in reply:
        raise QMPError(f"{command} {args or ''}: {reply['error']}")
    return reply.get("return")


def qom_get(name: str, path: str, prop: str) -> Any:
    return qmp(name, "qom-get", {"path": path, "property": prop})


def qom_list(name: str, path: str) -> dict[str, str]:
    """``{property: type}`` of a QOM object (children have types like ``child<virtio-blk-pci>``)."""
    return {p["name"]: p["type"] for p in qmp(name, "qom-list", {"path": path})}


def peripherals(name: str) -> dict[str, str]:
    """Devices with an id (libvirt's aliases) -> qemu type, e.g. ``{"scsi0": "virtio-scsi-pci"}``."""
    found = {}
    for prop, kind in qom_list(name, "/machine/peripheral").items():
        if kind.startswith("child<") and kind.endswith(">"):
            found[prop] = kind[len("child<"):-1]
    return found


def vcpus(name: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = qmp(name, "query-cpus-fast")
    return result


def iothreads(name: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = qmp(name, "query-iothreads")
    return result


def dumpxml(name: str) -> etree._Element:
    return etree.fromstring(virsh("dumpxml", name).stdout.encode())


def qemu_pid(name: str) -> int:
    pidfile = QEMU_RUN_DIR / f"{name}.pid"
    with contextlib.suppress(FileNotFoundError, ValueError):
        return int(pidfile.read_text().strip())
    raise AssertionError(f"no qemu pid file {pidfile}")


def qemu_argv(name: str) -> list[str]:
    """qemu's real command line (from /proc), as libvirt built it."""
    raw = Path(f"/proc/{qemu_pid(name)}/cmdline").read_bytes()
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def qemu_devices(name: str) -> list[dict[str, Any]]:
    """The ``-device`` arguments libvirt gave qemu (libvirt 9 writes them as JSON)."""
    argv = qemu_argv(name)
    found = []
    for flag, value in itertools.pairwise(argv):
        if flag == "-device" and value.startswith("{"):
            found.append(json.loads(value))
    return found
