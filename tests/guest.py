"""A real Debian guest for end-to-end tests: built once per machine, booted by direct kernel
boot under TCG, talked to through qemu-guest-agent.

Reusable by any test module (tests/ is on sys.path; name the fixture once at module level so
ruff sees it used)::

    from guest import agent, guest_exec, guest_image, wait_agent
    FIXTURES = (guest_image,)

The image
    ``debootstrap --variant=minbase`` of Debian 12 (bookworm) with linux-image-amd64,
    qemu-guest-agent, e2fsprogs, util-linux and kmod; no systemd, no udev at run time. A tiny
    /sbin/init (a shell script that ends by exec'ing qemu-ga, so no shell stays behind as PID 1)
    mounts proc/sys/devtmpfs/run, loads the drivers a VM of this project uses (virtio console,
    blk, scsi, AHCI, CD-ROM, ISO 9660: there is no udev to load them), finds the virtio port
    named org.qemu.guest_agent.0 in /sys/class/virtio-ports/*/name and runs ``qemu-ga`` on
    /dev/vportNpM with an fsfreeze hook that logs "freeze"/"thaw" to /run/fsfreeze.log. The
    initrd (initramfs-tools, MODULES=list) carries only virtio_pci, virtio_blk and ext4.
    Hardware modules no VM here needs (GPU, NIC, sound, USB, ...) and docs/locales are pruned.
    The tree becomes ``rootfs.raw`` (ext4, ``mkfs.ext4 -d``, label one-guest) whose
    /etc/one-tweaks-guest holds a marker unique to the build (also in the cache's ``marker``).

The cache
    ``/var/cache/one-tweaks-tests/guest-<recipe hash>/`` (``$ONE_TWEAKS_GUEST_CACHE`` overrides
    the parent) with rootfs.raw, vmlinuz, initrd.img, marker, recipe.json, build.json. The hash
    covers everything that shapes the image (RECIPE), so the image is rebuilt only when the
    recipe changes; older guest-* directories are then removed. Building holds an exclusive
    flock on ``<cache>/guest.lock``, so two pytest sessions never build at once (the second
    waits and then uses the first one's image). Nothing is ever written into the repository.
    Needs root, debootstrap and the Debian mirror (``$ONE_TWEAKS_DEBIAN_MIRROR``, default
    deb.debian.org): run ``.ci/setup-guest``. ``python tests/guest.py`` builds it by hand.

Booting (libvirt, TCG: this machine's nested KVM hangs this kernel after "Probing EDD")
    ``os_xml(image)`` -> ``<os>`` with ``<kernel>``, ``<initrd>``, ``<cmdline>`` (root=/dev/vda);
    ``AGENT_CHANNEL`` -> the virtio-serial channel org.qemu.guest_agent.0;
    ``console_xml(path)`` -> serial console to a file (kernel messages, for failures);
    ``guest_domain(name, image, disks_xml)`` -> a whole startable domain (type='qemu',
    2 vCPUs, 512 MiB) for tests that do not render their own.

Talking to it (need a running libvirtd, see livevm.libvirtd)
    agent(name, command, args=None, timeout=30) -> the agent's "return" value; AgentError
    wait_agent(name, timeout=120) -> seconds until guest-ping answered
    guest_exec(name, argv, timeout=60) -> (exitcode, stdout, stderr) via guest-exec and
        guest-exec-status polling (output base64-decoded)
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest
from livevm import qemu_log, virsh

CACHE_ROOT = Path(os.environ.get("ONE_TWEAKS_GUEST_CACHE", "/var/cache/one-tweaks-tests"))
MIRROR = os.environ.get("ONE_TWEAKS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SETUP_HINT = "run .ci/setup-guest (debootstrap, e2fsprogs) as root"
AGENT_PORT = "org.qemu.guest_agent.0"
MiB = 2**20
BUILD_TIMEOUT = 1800.0

INIT = """#!/bin/sh
# PID 1 of the one-tweaks test guest (no systemd, no udev): mount what qemu-ga and the
# tests need, load the drivers udev would have loaded, then exec qemu-ga on the agent port.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mountpoint -q /run || mount -t tmpfs -o mode=0755 tmpfs /run
mountpoint -q /tmp || mount -t tmpfs tmpfs /tmp
modprobe -a @MODULES@
tries=0
while [ "$tries" -lt 200 ]; do
    for name in /sys/class/virtio-ports/*/name; do
        [ -r "$name" ] || continue
        if [ "$(cat "$name")" = "@PORT@" ]; then
            port=${name%/name}
            port=/dev/${port##*/}
            echo "one-tweaks guest: qemu-ga on $port" > /dev/console
            exec qemu-ga --method=virtio-serial --path="$port" --fsfreeze-hook=/etc/qemu/fsfreeze-hook \\
                --statedir=/run
        fi
    done
    tries=$((tries + 1))
    sleep 0.1
done
echo "one-tweaks guest: no virtio port named @PORT@" > /dev/console
exec sleep infinity
"""

FSFREEZE_HOOK = """#!/bin/sh
# qemu-ga runs this with "freeze" before FIFREEZE and "thaw" after FITHAW (tmpfs is never frozen).
echo "$1 $(cut -d' ' -f1 /proc/uptime)" >> /run/fsfreeze.log
"""

# Everything that shapes the image; its hash names the cache directory.
RECIPE: dict[str, Any] = {
    "version": 1,
    "suite": "bookworm",
    "variant": "minbase",
    "packages": ["linux-image-amd64", "qemu-guest-agent", "e2fsprogs", "util-linux", "kmod"],
    "initrd_modules": ["virtio_pci", "virtio_blk", "ext4", "crc32c_generic"],
    "initramfs_conf": "MODULES=list\nCOMPRESS=gzip\n",
    "guest_modules": ["virtio_console", "virtio_blk", "virtio_scsi", "sd_mod", "ahci", "sr_mod", "isofs"],
    "init": INIT,
    "fsfreeze_hook": FSFREEZE_HOOK,
    "prune": [
        "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
        "var/cache/apt", "var/lib/apt/lists", "var/cache/debconf/templates.dat-old",
        "lib/modules/*/kernel/sound", "lib/modules/*/kernel/net",
        *(f"lib/modules/*/kernel/drivers/{d}" for d in (
            "gpu", "net", "media", "infiniband", "usb", "iio", "hwmon", "staging", "isdn", "bluetooth",
            "mtd", "md", "hid", "input", "video", "target", "thunderbolt", "mmc", "nvme", "comedi", "platform")),
    ],
    "mkfs": ["mkfs.ext4", "-q", "-F", "-L", "one-guest", "-m", "0"],
    "headroom": {"ratio": 0.25, "mib": 64},
}
CMDLINE = "root=/dev/vda rw rootfstype=ext4 console=ttyS0 init=/sbin/init fsck.mode=skip panic=0 mitigations=off"


def recipe_hash(recipe: Mapping[str, Any] = RECIPE) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- the image


@dataclass(frozen=True)
class GuestImage:
    """A built guest in the cache. ``built_in``: seconds this session spent building it
    (None: it was already cached)."""

    directory: Path
    rootfs: Path
    kernel: Path
    initrd: Path
    marker: str
    kernel_version: str
    built_in: float | None = None

    @property
    def size(self) -> int:
        return self.rootfs.stat().st_size

    @property
    def size_mib(self) -> int:
        return -(-self.size // MiB)

    @property
    def cmdline(self) -> str:
        return CMDLINE


def _load(directory: Path, built_in: float | None = None) -> GuestImage | None:
    files = [directory / n for n in ("rootfs.raw", "vmlinuz", "initrd.img", "marker", "build.json")]
    if not all(f.is_file() for f in files):
        return None
    info = json.loads((directory / "build.json").read_text())
    return GuestImage(directory=directory, rootfs=files[0], kernel=files[1], initrd=files[2],
                      marker=files[3].read_text().strip(), kernel_version=info["kernel"], built_in=built_in)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_guest_image(cache_root: Path = CACHE_ROOT, mirror: str = MIRROR) -> GuestImage:
    """The cached guest for RECIPE, built first if missing (under the cache's build lock)."""
    cache_root.mkdir(parents=True, exist_ok=True)
    final = cache_root / f"guest-{recipe_hash()}"
    found = _load(final)
    if found is not None:
        return found
    with _locked(cache_root / "guest.lock"):
        found = _load(final)  # another session may have built it while we waited
        if found is not None:
            return found
        for stale in cache_root.glob("guest-*"):
            if stale.is_dir() and stale != final:
                _remove_tree(stale)  # crashed builds and images of older recipes
        began = time.monotonic()
        work = cache_root / f"guest-{recipe_hash()}.build-{os.getpid()}"
        try:
            _build(work, mirror)
            os.rename(work, final)
        finally:
            if work.exists():
                _remove_tree(work)
        built = _load(final, built_in=time.monotonic() - began)
        assert built is not None, f"guest build left an incomplete {final}"
        return built


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    found = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def _remove_tree(path: Path) -> None:
    """rm -rf that first unmounts anything a killed debootstrap left mounted below ``path``
    and never crosses into another file system."""
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], capture_output=True, check=False)


def _run(argv: Sequence[str], log: Path, timeout: float = BUILD_TIMEOUT) -> None:
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"guest build: {argv[0]} failed ({proc.returncode}); {log}:\n{tail}")


def _build(work: Path, mirror: str) -> None:
    for tool in ("debootstrap", "mkfs.ext4", "chroot"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"guest build: {tool} is missing: {SETUP_HINT}")
    if os.geteuid() != 0:
        raise RuntimeError(f"guest build: needs root: {SETUP_HINT}")
    work.mkdir(parents=True)
    log = work / "build.log"
    tree = work / "tree"
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    _run(["debootstrap", f"--variant={RECIPE['variant']}", "--include=" + ",".join(RECIPE["packages"]),
          RECIPE["suite"], str(tree), mirror], log)
    timings["debootstrap"] = time.monotonic() - t0
    versions = sorted(p.name for p in (tree / "lib" / "modules").iterdir())
    if len(versions) != 1:
        raise RuntimeError(f"guest build: expected one kernel, found {versions}")
    kver = versions[0]

    t1 = time.monotonic()
    (tree / "etc/initramfs-tools/conf.d/one-tweaks-guest").write_text(RECIPE["initramfs_conf"])
    (tree / "etc/initramfs-tools/modules").write_text("\n".join(RECIPE["initrd_modules"]) + "\n")
    _run(["chroot", str(tree), "mkinitramfs", "-o", f"/boot/initrd.img-{kver}", kver], log)
    timings["initrd"] = time.monotonic() - t1

    init = tree / "sbin" / "init"
    if init.is_symlink() or init.exists():
        init.unlink()
    init.write_text(INIT.replace("@MODULES@", " ".join(RECIPE["guest_modules"])).replace("@PORT@", AGENT_PORT))
    init.chmod(0o755)
    hook = tree / "etc" / "qemu" / "fsfreeze-hook"
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text(FSFREEZE_HOOK)
    hook.chmod(0o755)
    marker = f"one-tweaks test guest {recipe_hash()} {uuid.uuid4()}"
    (tree / "etc" / "one-tweaks-guest").write_text(marker + "\n")
    (tree / "etc" / "hostname").write_text("one-guest\n")
    shutil.copyfile(tree / "boot" / f"vmlinuz-{kver}", work / "vmlinuz")
    shutil.copyfile(tree / "boot" / f"initrd.img-{kver}", work / "initrd.img")

    t2 = time.monotonic()
    for entry in (tree / "boot").iterdir():
        entry.unlink()
    for pattern in RECIPE["prune"]:
        for path in tree.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    _run(["chroot", str(tree), "depmod", "-a", kver], log)
    used = int(subprocess.run(["du", "-sb", "--one-file-system", str(tree)], capture_output=True, text=True,
                              check=True).stdout.split()[0])
    headroom = RECIPE["headroom"]
    size_mib = -(-int(used * (1 + headroom["ratio"])) // MiB) + headroom["mib"]
    _run([*RECIPE["mkfs"], "-d", str(tree), str(work / "rootfs.raw"), f"{size_mib}M"], log)
    timings["image"] = time.monotonic() - t2
    _remove_tree(tree)
    (work / "marker").write_text(marker + "\n")
    (work / "recipe.json").write_text(json.dumps(RECIPE, indent=1, sort_keys=True) + "\n")
    (work / "build.json").write_text(json.dumps({
        "kernel": kver, "mirror": mirror, "tree_bytes": used, "rootfs_mib": size_mib,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1) + "\n")


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    """The cached guest (built on first use on this machine; fails, never skips, when it cannot be)."""
    try:
        return ensure_guest_image()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"cannot build the test guest: {exc}", pytrace=False)


# --------------------------------------------------------------------------- domain XML

AGENT_CHANNEL = (f"<channel type='unix'><source mode='bind'/>"
                 f"<target type='virtio' name='{AGENT_PORT}'/></channel>")


def os_xml(image: GuestImage, machine: str = "q35", cmdline: str = CMDLINE) -> str:
    """``<os>`` for direct kernel boot of the guest (root on the first virtio disk)."""
    return (f"<os><type arch='x86_64' machine='{machine}'>hvm</type>"
            f"<kernel>{escape(str(image.kernel))}</kernel><initrd>{escape(str(image.initrd))}</initrd>"
            f"<cmdline>{escape(cmdline)}</cmdline></os>")


def console_xml(path: str | os.PathLike[str]) -> str:
    """Serial console (ttyS0) written to ``path``: the guest's kernel messages."""
    source = escape(str(path), {"'": "&apos;"})
    return (f"<serial type='file'><source path='{source}'/><target port='0'/></serial>"
            f"<console type='file'><source path='{source}'/><target type='serial' port='0'/></console>")


def guest_domain(name: str, image: GuestImage, disks_xml: str, *, vcpu: int = 2, memory_mib: int = 512,
                 console_log: str | os.PathLike[str] | None = None) -> bytes:
    """A startable TCG domain booting the guest; ``disks_xml`` must make the root disk vda."""
    console = console_xml(console_log) if console_log else ""
    return (f"<domain type='qemu'><name>{escape(name)}</name><vcpu>{vcpu}</vcpu>"
            f"<memory unit='KiB'>{memory_mib * 1024}</memory>{os_xml(image)}<features><acpi/></features>"
            f"<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>{disks_xml}{AGENT_CHANNEL}{console}"
            f"</devices></domain>").encode()


# --------------------------------------------------------------------------- the agent


class AgentError(RuntimeError):
    """The guest agent could not be reached or answered with an error."""


def agent(name: str, command: str, args: Mapping[str, Any] | None = None, timeout: int = 30) -> Any:
    """``virsh qemu-agent-command``; returns the agent's ``return`` value."""
    message: dict[str, Any] = {"execute": command}
    if args:
        message["arguments"] = dict(args)
    proc = virsh("qemu-agent-command", name, "--timeout", str(timeout), json.dumps(message), check=False,
                 timeout=timeout + 30)
    if proc.returncode != 0:
        raise AgentError(f"{command}: {proc.stderr.strip()}")
    reply = json.loads(proc.stdout)
    if "error" in reply:
        raise AgentError(f"{command}: {reply['error']}")
    return reply.get("return")


def _domain_state(name: str) -> str:
    return virsh("domstate", name, check=False).stdout.strip()


def wait_agent(name: str, timeout: float = 120, console_log: str | os.PathLike[str] | None = None) -> float:
    """Wait until the guest agent answers guest-ping; returns the seconds it took."""
    began = time.monotonic()
    last = ""
    while time.monotonic() - began < timeout:
        try:
            agent(name, "guest-ping", timeout=5)
            return time.monotonic() - began
        except AgentError as exc:
            last = str(exc)
        state = _domain_state(name)
        if state not in ("running", "paused"):
            break
        time.sleep(0.5)
    console = ""
    if console_log and os.path.exists(console_log):
        console = "\n".join(Path(console_log).read_text(errors="replace").splitlines()[-30:])
    raise AssertionError(f"guest agent of {name} did not answer within {timeout:.0f} s "
                         f"(domain {_domain_state(name) or 'gone'}; last: {last})\n"
                         f"console:\n{console}\nqemu log:\n{qemu_log(name, 10)}")


def guest_exec(name: str, argv: Sequence[str], timeout: float = 60) -> tuple[int, str, str]:
    """Run ``argv`` in the guest (no shell); returns (exit code, stdout, stderr).
    A process killed by a signal gives -signal."""
    started = agent(name, "guest-exec", {"path": argv[0], "arg": list(argv[1:]), "capture-output": True})
    pid = started["pid"]
    deadline = time.monotonic() + timeout
    while True:
        status = agent(name, "guest-exec-status", {"pid": pid})
        if status.get("exited"):
            out = base64.b64decode(status.get("out-data", "")).decode(errors="replace")
            err = base64.b64decode(status.get("err-data", "")).decode(errors="replace")
            code = status["exitcode"] if "exitcode" in status else -int(status.get("signal", 0))
            return code, out, err
        if time.monotonic() > deadline:
            raise AgentError(f"guest-exec {list(argv)} still running after {timeout:.0f} s")
        time.sleep(0.1)


def guest_check(name: str, argv: Sequence[str], timeout: float = 60) -> str:
    """``guest_exec`` that must exit 0; returns stdout."""
    code, out, err = guest_exec(name, argv, timeout)
    assert code == 0, f"in the guest, {' '.join(argv)} exited {code}: {err.strip() or out.strip()}"
    return out


if __name__ == "__main__":
    image = ensure_guest_image()
    how = f"built in {image.built_in:.0f} s" if image.built_in is not None else "cached"
    print(f"{image.directory} ({image.size_mib} MiB rootfs, kernel {image.kernel_version}, {how})")
