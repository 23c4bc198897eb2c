"""Firmware, Hyper-V, CPU, hotplug and cputune tweaks reach qemu (rules.d/33-39, 60-69).

Each test runs the shipped rules on the oned 6.10 fixture (shrunk with small_domain), boots the
result under the real libvirtd and asks qemu (its command line, QMP/QOM), libvirt (live XML,
schedinfo, hotplug) and the kernel (cgroup files, the NVRAM block device) what the VM really got.
Every test first shows that the same VM without the attribute (the control) gets something else,
so each assertion fails if the rule is removed.

What the test machines allow (nested KVM, no UEFI under KVM), and how the tests cope:

- UEFI (OVMF) runs only under TCG (libvirt type='qemu'): the firmware tests use TCG. The NVRAM
  test really boots the firmware twice on a loop block device; the others stay paused.
- This nested KVM refuses some Hyper-V enlightenments at vCPU setup (hv-vapic: "failed to set MSR
  0x40000073", hv-time: "failed to set MSR 0x40000021", hv-vpindex and what needs it: "kernel
  doesn't allow setting HyperV VP_INDEX"). qemu 7.2 takes hv-* flags under TCG too, so the
  enlightenments are checked there (command line and the vCPU's QOM properties); the subset this
  KVM accepts (hv-relaxed, hv-spinlocks, kvm=off) is also checked on a real KVM vCPU.
- host-model, maximum and host-passthrough abort on this KVM ("failed to set MSR 0x10a") unless
  the arch-capabilities feature is disabled. bootable(fix_cpu=True) would also set check='none',
  hiding T_CPU_CHECK, so the CPU tests add only that feature (kvm_cpu()).
- cputune: no systemd runs here, but the kernel mounts the cgroup v1 controllers and libvirtd
  puts each VM in /sys/fs/cgroup/cpu/machine/qemu-N-NAME.libvirt-qemu itself, so a domain with
  <cputune> starts and its values really land in cpu.shares / cpu.cfs_period_us / cpu.cfs_quota_us
  (tested through virsh schedinfo and the cgroup files).
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import stat
import struct
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, apply, vm_xml
from livevm import (
    NAME_PREFIX,
    Daemon,
    LiveVMs,
    bootable,
    deployment_disks,
    dumpxml,
    libvirtd,
    live,
    loopdev,
    qemu_argv,
    qemu_pid,
    qmp,
    qom_get,
    small_domain,
    start,
    vcpus,
    virsh,
)
from lxml import etree

from tweaks.engine import Outcome
from tweaks.report import APPLIED

live_vm = pytest.mark.libvirtd
# pytest fixtures from livevm: imported so pytest finds them here (named so the import counts as used)
FIXTURES = (libvirtd, live, loopdev, start, deployment_disks)

VCPU = 2
MEMORY_MIB = 256
NO_DISKS: dict[str, str | None] = {"vda": None, "sda": None, "vdb": None, "hda": None}
OVMF = Path("/usr/share/OVMF")
SECBOOT_CODE = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"  # Debian's SMM + secure-boot build
VARS_TEMPLATE = OVMF / "OVMF_VARS_4M.fd"
VARS_SIZE = 540672
FIRMWARE_DESCRIPTORS = Path("/usr/share/qemu/firmware")
LIBVIRT_NVRAM_DIR = Path("/var/lib/libvirt/qemu/nvram")
MY_RULES = ("cpu-mode", "vcpu-max", "memory-max", "cpu-numa-alt", "cpu-vendor", "cpu-shares", "cputune",
            "os-attrs", "os-loader", "os-nvram", "smm", "secure-boot", "hyperv", "hyperv-clock", "kvm-hide")
HV_FLAGS = ("hv-relaxed", "hv-vapic", "hv-time", "hv-runtime", "hv-reset", "hv-frequencies",
            "hv-reenlightenment", "hv-crash")
# oned's default HYPERV_OPTIONS (vmm_exec_kvm.conf), and an operator who set HYPERV_OPTIONS=""
ONED_HYPERV = "<relaxed state='on'/><vapic state='on'/><spinlocks state='on' retries='4096'/>"
EMPTY_HYPERV = ""
HV_SPINLOCKS_NEVER = 0xFFFFFFFF  # qemu's hv-spinlocks default: never notify


# --------------------------------------------------------------------------- engine side



# libvirt's refusal under check='full' (some hosts list extra features before the missing ones)
MISSING_FEATURES = r"guest CPU doesn't match specification: (extra features: [^,]+(,[^,]+)*, )?missing features"

def tweaked(user: dict[str, str], *, vcpu: int = VCPU, domain: bytes | None = None,
            template: dict[str, str] | None = None, drop: tuple[str, ...] = (),
            rules: list[str] | None = None) -> Outcome:
    """The shipped rules (plus ``rules`` dirs) on the shrunk oned fixture for a VM with these
    USER_TEMPLATE attributes; ``drop`` removes TEMPLATE paths (e.g. OS/FIRMWARE) from the VM."""
    vm = etree.fromstring(vm_xml(user, vcpu=vcpu, template=template))
    for path in drop:
        for el in vm.findall(f"TEMPLATE/{path}"):
            el.getparent().remove(el)
    return apply(small_domain(domain, vcpu=vcpu, memory_mib=MEMORY_MIB), etree.tostring(vm), rules)


def status(outcome: Outcome, rule: str) -> str:
    found = [r for r in outcome.report.results if r.name == rule]
    assert len(found) == 1, f"rule {rule} did not run"
    return found[0].status


def assert_applied(outcome: Outcome, *rules: str) -> None:
    for rule in rules:
        assert status(outcome, rule) == APPLIED, [(r.name, r.status, r.reason) for r in outcome.report.results
                                                  if r.name == rule]
    assert not outcome.report.warnings, outcome.report.warnings


def assert_untouched(outcome: Outcome) -> None:
    """None of the rules under test changed the control."""
    touched = [r.name for r in outcome.report.results if r.name in MY_RULES and r.status == APPLIED]
    assert not touched, touched


def fixture_domain(*, hyperv: str | None = None, cpu: str | None = None, uefi: bool = True) -> bytes:
    """oned's fixture domain with a FEATURES/HYPERV block (HYPERV_OPTIONS ``hyperv``), another
    ``<cpu>``, or without oned's loader/nvram (a BIOS VM)."""
    root = etree.fromstring(small_domain(vcpu=None, memory_mib=MEMORY_MIB))
    if hyperv is not None:
        root.find("features").append(etree.fromstring(f"<hyperv>{hyperv}</hyperv>"))
    if cpu is not None:
        root.replace(root.find("cpu"), etree.fromstring(cpu))
    if not uefi:
        os_el = root.find("os")
        for tag in ("loader", "nvram"):
            os_el.remove(os_el.find(tag))
    return etree.tostring(root)


def rule_override(directory: Path, shipped: str, old: str, new: str) -> list[str]:
    """A rules dir holding the shipped rule file ``shipped`` with one line changed, the way an
    operator overrides a rule in /etc/one/tweaks.d."""
    text = (ROOT / "rules.d" / shipped).read_text()
    assert text.count(old) == 1, f"rules.d/{shipped} no longer has {old!r}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / shipped).write_text(text.replace(old, new))
    return [str(directory)]


# --------------------------------------------------------------------------- making it startable here


def kvm_cpu(root: etree._Element) -> None:
    """This nested KVM's one CPU quirk: arch-capabilities disabled (check/mode left alone)."""
    cpu = root.find("cpu")
    assert cpu is not None
    if cpu.find("feature[@name='arch-capabilities']") is None:
        feature = etree.Element("feature", policy="disable", name="arch-capabilities")
        numa = cpu.find("numa")
        if numa is not None:
            numa.addprevious(feature)
        else:
            cpu.append(feature)


def startable(outcome: Outcome, *, accel: str, keep_os: bool = False, keep_cpu: bool = False,
              uefi: bool = False, nvram: str | None = None) -> bytes:
    """bootable() without disks and NICs (not what these tweaks touch). ``keep_os``: the
    engine's ``<os>`` exactly as the rules wrote it (loader, nvram, firmware); ``keep_cpu``:
    the engine's ``<cpu>`` check attribute untouched (only kvm_cpu() under KVM)."""
    xml = bootable(outcome.tree, NO_DISKS, accel=accel, network="none", memory_mib=None, uefi=uefi,
                   nvram=nvram, fix_cpu=not keep_cpu)
    root = etree.fromstring(xml)
    if keep_os:
        root.replace(root.find("os"), copy.deepcopy(outcome.tree.getroot().find("os")))
    if keep_cpu and accel == "kvm":
        kvm_cpu(root)
    return etree.tostring(root)


@pytest.fixture
def boot(start: Callable[..., str], assert_valid: Callable[[bytes], None]) -> Callable[..., str]:
    """``boot(outcome, accel=..., paused=True, **startable_options) -> name`` (validated; destroyed
    at teardown)."""
    def run(outcome: Outcome, *, accel: str, paused: bool = True, **options: Any) -> str:
        assert_valid(outcome.tree)
        xml = startable(outcome, accel=accel, **options)
        assert_valid(xml)
        return start(xml, paused=paused)

    return run


# --------------------------------------------------------------------------- asking qemu / libvirt


def argv_values(name: str, flag: str) -> list[str]:
    return [value for option, value in itertools.pairwise(qemu_argv(name)) if option == flag]


def cpu_flags(name: str) -> list[str]:
    """qemu's ``-cpu`` argument, split: [model, flag, flag=value, ...]."""
    (value,) = argv_values(name, "-cpu")
    return value.split(",")


def machine_flags(name: str) -> list[str]:
    (value,) = argv_values(name, "-machine")
    return value.split(",")


def pflash(name: str) -> dict[str, dict[str, Any]]:
    """The storage ``-blockdev`` of each pflash unit: {"pflash0": {"driver": "file", "filename": ...}}."""
    found = {}
    for value in argv_values(name, "-blockdev"):
        node = json.loads(value)
        unit = node.get("node-name", "").removeprefix("libvirt-").removesuffix("-storage")
        if unit.startswith("pflash") and node["node-name"].endswith("-storage"):
            found[unit] = node
    return found


def cpu0(name: str) -> str:
    path: str = vcpus(name)[0]["qom-path"]
    return path


def hv_state(name: str) -> dict[str, Any]:
    """The Hyper-V properties of vCPU 0 as qemu holds them."""
    cpu = cpu0(name)
    state = {flag: qom_get(name, cpu, flag) for flag in HV_FLAGS}
    state["hv-spinlocks"] = qom_get(name, cpu, "hv-spinlocks")
    return state


def node_ids(name: str) -> list[int | None]:
    """NUMA node of each vCPU, by cpu-index."""
    return [c["props"].get("node-id") for c in sorted(vcpus(name), key=lambda c: c["cpu-index"])]


def live_cpu(name: str) -> etree._Element:
    cpu = dumpxml(name).find("cpu")
    assert cpu is not None
    return cpu


def schedinfo(name: str) -> dict[str, str]:
    rows = (line.split(":", 1) for line in virsh("schedinfo", name).stdout.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in rows}


def cgroup_cpu_dir(name: str) -> Path:
    """The VM's cgroup v1 ``cpu`` directory (qemu's main thread sits in its ``emulator`` child)."""
    mount = None
    with open("/proc/self/mounts") as f:
        for line in f:
            _, where, kind, options, *_ = line.split()
            if kind == "cgroup" and "cpu" in options.split(","):
                mount = where
    assert mount, "no cgroup v1 cpu controller mounted: these assertions read cgroup v1 files"
    for line in Path(f"/proc/{qemu_pid(name)}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            group = Path(mount + path)
            return group.parent if group.name == "emulator" else group
    raise AssertionError(f"qemu of {name} is in no cpu cgroup")


def cgroup_cpu(name: str) -> dict[str, int]:
    """What the kernel enforces: shares, and period/quota of the VM, vCPU 0, emulator, iothread 1."""
    group = cgroup_cpu_dir(name)

    def read(sub: str, file: str) -> int:
        return int((group / sub / file).read_text())

    values = {"shares": read("", "cpu.shares")}
    for scope, sub in (("global", ""), ("vcpu", "vcpu0"), ("emulator", "emulator"), ("iothread", "iothread1")):
        values[f"{scope}_period"] = read(sub, "cpu.cfs_period_us")
        values[f"{scope}_quota"] = read(sub, "cpu.cfs_quota_us")
    return values


def firmware_executables(feature: str) -> tuple[set[str], set[str]]:
    """Executables of qemu's firmware descriptors with and without ``feature`` (what libvirt
    picks from for ``<os firmware='efi'>``)."""
    with_feature, without = set(), set()
    for descriptor in FIRMWARE_DESCRIPTORS.glob("*.json"):
        data = json.loads(descriptor.read_text())
        if data.get("mapping", {}).get("device") != "flash":
            continue
        executable = data["mapping"]["executable"]["filename"]
        (with_feature if feature in data.get("features", []) else without).add(executable)
    assert with_feature and without, f"{FIRMWARE_DESCRIPTORS}: no descriptors to tell {feature} apart"
    return with_feature, without


# --------------------------------------------------------------------------- the control


@pytest.fixture(scope="module")
def control(libvirtd: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """What qemu gets from oned's deployment (2 vCPUs, 256 MiB) without any T_* attribute,
    booted once under KVM the way test_live_tweaks.py does (bootable's CPU quirks)."""
    vms = LiveVMs(tmp_path_factory.mktemp("control"))
    try:
        outcome = tweaked({})
        assert_untouched(outcome)
        name = vms.start(startable(outcome, accel="kvm"))
        cpu = cpu0(name)
        yield {
            "cpu": cpu_flags(name)[0],
            "cpu_type": qom_get(name, cpu, "type"),
            "kvm": qom_get(name, cpu, "kvm"),
            "hv": hv_state(name),
            "check": live_cpu(name).get("check"),
            "smp": argv_values(name, "-smp"),
            "m": argv_values(name, "-m"),
            "vcpus": len(vcpus(name)),
            "hotpluggable": len(qmp(name, "query-hotpluggable-cpus")),
            "memory": qmp(name, "query-memory-size-summary"),
            "node_ids": node_ids(name),
            "smm": qom_get(name, "/machine", "smm"),
            "tseg": qom_get(name, "/machine/q35/mch", "extended-tseg-mbytes"),
            "pflash": pflash(name),
            "machine": machine_flags(name),
            "schedinfo": schedinfo(name),
            "cgroup": cgroup_cpu(name),
        }
    finally:
        vms.destroy_all()


@live_vm
def test_control_gets_oneds_values(control: dict[str, Any]) -> None:
    """The control: host CPU, 2 vCPUs (no room to plug), 256 MiB, no NUMA, BIOS, no SMM
    setting, no Hyper-V, KVM visible, oned's 1024 shares and no CPU limits."""
    assert control["cpu"] == "host" and control["cpu_type"] == "host-x86_64-cpu"
    assert control["check"] == "none"
    assert control["kvm"] is True
    assert control["hv"] == {**dict.fromkeys(HV_FLAGS, False), "hv-spinlocks": HV_SPINLOCKS_NEVER}
    assert control["smp"] == ["2,sockets=2,cores=1,threads=1"]
    assert (control["vcpus"], control["hotpluggable"]) == (2, 2)
    assert control["m"] == ["256"]
    assert control["memory"] == {"base-memory": MEMORY_MIB << 20, "plugged-memory": 0}
    assert control["node_ids"] == [None, None]
    assert control["smm"] == "auto" and control["tseg"] == 16
    assert control["pflash"] == {}
    assert not any(flag.startswith("smm=") for flag in control["machine"])
    assert control["schedinfo"]["cpu_shares"] == "1024"
    assert control["cgroup"]["shares"] == 1024
    assert control["cgroup"]["vcpu_quota"] == control["cgroup"]["global_quota"] == -1


# --------------------------------------------------------------------------- UEFI: loader, secure boot, NVRAM


def vars_store(data: bytes) -> dict[tuple[str, str], bytes]:
    """The live variables of an OVMF variable store (FV header, authenticated variable store):
    {(name, vendor GUID): data}. State 0x3f is VAR_ADDED; 0x3e (in delete transition) counts
    only when no VAR_ADDED copy exists, as edk2 reads it."""
    offset = struct.unpack_from("<H", data, 0x30)[0]  # EFI_FIRMWARE_VOLUME_HEADER.HeaderLength
    signature = uuid.UUID(bytes_le=data[offset:offset + 16])
    assert str(signature) == "aaf32c78-947b-439a-a180-2e144ec37792", f"not an authenticated store: {signature}"
    end = offset + struct.unpack_from("<I", data, offset + 16)[0]
    offset += 28  # VARIABLE_STORE_HEADER
    added: dict[tuple[str, str], bytes] = {}
    transition: dict[tuple[str, str], bytes] = {}
    while offset + 60 <= end:
        start_id, state = struct.unpack_from("<HB", data, offset)
        if start_id != 0x55AA:
            break
        name_size, data_size = struct.unpack_from("<II", data, offset + 36)
        guid = str(uuid.UUID(bytes_le=data[offset + 44:offset + 60]))
        name = data[offset + 60:offset + 60 + name_size].decode("utf-16-le").rstrip("\0")
        value = data[offset + 60 + name_size:offset + 60 + name_size + data_size]
        if state == 0x3F:
            added[(name, guid)] = value
        elif state == 0x3E:
            transition[(name, guid)] = value
        offset = (offset + 60 + name_size + data_size + 3) & ~3
    return {**transition, **added}


EFI_GLOBAL = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
MTC = ("MTC", "eb704011-1402-11d3-8e77-00a0c969723b")  # monotonic counter, +1 every boot


def boot_count(store: dict[tuple[str, str], bytes]) -> int | None:
    value = store.get(MTC)
    return None if value is None else int(struct.unpack("<I", value)[0])


BOOT_ENTRY = re.compile(r"BootOrder|Boot[0-9A-F]{4}")


def boot_entries(store: dict[tuple[str, str], bytes]) -> dict[str, bytes]:
    """BootOrder and the Boot#### load options the firmware wrote."""
    return {name: value for (name, guid), value in store.items() if guid == EFI_GLOBAL and BOOT_ENTRY.fullmatch(name)}


def wait_for(device: str, done: Callable[[dict[tuple[str, str], bytes]], bool], what: str,
             timeout: float = 60, quiet: float = 2) -> bytes:
    """Poll the NVRAM device every 0.5 s until ``done(store)``, then until it has not changed
    for ``quiet`` seconds (the firmware finished writing); returns its content."""
    deadline = time.monotonic() + timeout
    last, since = b"", time.monotonic()
    reached = False
    while time.monotonic() < deadline:
        data = Path(device).read_bytes()
        if data != last:
            last, since = data, time.monotonic()
        reached = reached or done(vars_store(data))
        if reached and time.monotonic() - since >= quiet:
            return data
        time.sleep(0.5)
    raise AssertionError(f"the firmware did not {what} within {timeout:.0f} s")


def is_block_link(path: str, device: str) -> bool:
    return os.path.islink(path) and os.path.realpath(path) == device and stat.S_ISBLK(os.stat(path).st_mode)


@dataclass
class NvramVolume:
    link: str  # what the device template points at: /dev/one-tweaks-live-XXXX/one-sys-42-NVRAM
    device: str  # the loop device behind it
    rules: list[str]  # a rules dir overriding 62-os-nvram.yaml's device template


@pytest.fixture
def nvram_volume(live: LiveVMs, tmp_path: Path) -> Iterator[NvramVolume]:
    """The storage driver's NVRAM volume, as the operator's device template names it: a loop
    device of exactly OVMF_VARS_4M's size filled with that template (libvirt 9.0 never fills a
    block NVRAM), linked from /dev/one-tweaks-live-XXXX/one-sys-42-NVRAM (VM 42 of vm-42.xml).
    Teardown destroys this test's VMs first, then removes the link and detaches the device."""
    template = VARS_TEMPLATE.read_bytes()
    assert len(template) == VARS_SIZE
    backing = tmp_path / "nvram.img"
    backing.write_bytes(template)
    proc = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"losetup failed: {proc.stderr.strip()}"
    device = proc.stdout.strip()
    directory = Path(f"/dev/{NAME_PREFIX}{uuid.uuid4().hex[:8]}")
    try:
        directory.mkdir()
        link = directory / "one-sys-42-NVRAM"
        link.symlink_to(device)
        rules = rule_override(tmp_path / "rules", "62-os-nvram.yaml", "device: /dev/storpool/{px}-sys-{vm_id}-NVRAM",
                              f"device: {directory}/{{px}}-sys-{{vm_id}}-NVRAM")
        yield NvramVolume(str(link), device, rules)
    finally:
        try:
            live.destroy_all()
        finally:
            if directory.exists():
                for entry in directory.iterdir():
                    entry.unlink()
                directory.rmdir()
            subprocess.run(["losetup", "-d", device], capture_output=True, timeout=30, check=True)


@live_vm
def test_uefi_nvram_volume_keeps_variables_across_boots(boot: Callable[..., str], live: LiveVMs,
                                                        nvram_volume: NvramVolume, tmp_path: Path,
                                                        assert_valid: Callable[[bytes], None]) -> None:
    """T_OS_LOADER + T_OS_SECURE_BOOT + T_OS_NVRAM=storpool under TCG: the secure-boot OVMF
    (which needs SMM) runs on a secure pflash with SMM on, keeps its variables on the block
    volume, and the second boot reads them back (the boot counter goes 1 -> 2 and the boot
    entries of the first boot are still there; nothing reset the volume to its template)."""
    # control: oned's own firmware (OS/FIRMWARE): file NVRAM, no secure pflash, no SMM setting
    plain = tweaked({})
    assert_untouched(plain)
    os_el = plain.tree.find("os")
    assert os_el.findtext("loader") == "/usr/share/OVMF/OVMF_CODE.fd"
    assert os_el.find("loader").get("secure") == "no" and plain.tree.find("features/smm") is None
    assert os_el.find("nvram").get("type") is None
    name = boot(plain, accel="tcg", uefi=True, nvram=str(tmp_path / "control_VARS.fd"))
    assert pflash(name)["pflash1"]["driver"] == "file"
    assert "smm=on" not in machine_flags(name)
    assert "driver=cfi.pflash01,property=secure,value=on" not in argv_values(name, "-global")
    assert qom_get(name, "/machine/system.flash0", "secure") is False
    assert qom_get(name, "/machine", "smm") == "auto"
    live.destroy(name)

    outcome = tweaked({"T_OS_LOADER": SECBOOT_CODE, "T_OS_SECURE_BOOT": "yes", "T_OS_NVRAM": "storpool"},
                      rules=nvram_volume.rules)
    assert_applied(outcome, "os-loader", "secure-boot", "os-nvram")
    loader = outcome.tree.find("os/loader")
    assert (loader.text, dict(loader.attrib)) == (SECBOOT_CODE, {"readonly": "yes", "type": "pflash", "secure": "yes"})
    nvram = outcome.tree.find("os/nvram")
    assert dict(nvram.attrib) == {"type": "block"} and not (nvram.text or "").strip()
    assert [(c.tag, dict(c.attrib)) for c in nvram] == [("source", {"dev": nvram_volume.link})]
    assert outcome.tree.find("features/smm").get("state") == "on"
    template = VARS_TEMPLATE.read_bytes()
    assert Path(nvram_volume.device).read_bytes() == template and vars_store(template) == {}

    # first boot: the firmware runs and writes its variables to the volume
    assert_valid(outcome.tree)
    xml = startable(outcome, accel="tcg", keep_os=True, uefi=True)
    assert_valid(xml)
    name = live.start(xml, paused=False)
    flash = pflash(name)
    assert (flash["pflash0"]["driver"], flash["pflash0"]["filename"]) == ("file", SECBOOT_CODE)
    assert (flash["pflash1"]["driver"], flash["pflash1"]["filename"]) == ("host_device", nvram_volume.link)
    assert "smm=on" in machine_flags(name)
    assert "driver=cfi.pflash01,property=secure,value=on" in argv_values(name, "-global")
    assert qom_get(name, "/machine", "smm") == "on"
    assert qom_get(name, "/machine/system.flash0", "secure") is True
    assert qom_get(name, "/machine/system.flash1", "drive") == "libvirt-pflash1-format"
    live_nvram = dumpxml(name).find("os/nvram")
    assert live_nvram.get("type") == "block" and live_nvram.find("source").get("dev") == nvram_volume.link
    wait_for(nvram_volume.device, lambda s: boot_count(s) == 1 and "BootOrder" in boot_entries(s),
             "write its boot counter and boot entries")
    live.destroy(name)
    first = Path(nvram_volume.device).read_bytes()
    store1 = vars_store(first)
    entries = boot_entries(store1)
    assert boot_count(store1) == 1
    assert "Boot0000" in entries and len(entries["BootOrder"]) >= 2, sorted(entries)
    assert is_block_link(nvram_volume.link, nvram_volume.device)

    # second boot: libvirt hands the volume over untouched, the firmware counts on from it
    name = live.start(xml, paused=True)
    assert Path(nvram_volume.device).read_bytes() == first, "starting the VM changed the NVRAM volume"
    virsh("resume", name)
    wait_for(nvram_volume.device, lambda s: boot_count(s) == 2, "count its second boot")
    live.destroy(name)
    store2 = vars_store(Path(nvram_volume.device).read_bytes())
    assert boot_count(store2) == 2  # a volume reset to its template would count 1 again
    assert boot_entries(store2) == entries
    assert is_block_link(nvram_volume.link, nvram_volume.device)


@live_vm
@pytest.mark.parametrize("secure", ["no", "yes"])
def test_os_firmware_efi_reaches_qemu(secure: str, boot: Callable[..., str], live: LiveVMs,
                                      control: dict[str, Any]) -> None:
    """T_OS=firmware=efi on a BIOS VM (no OS/FIRMWARE): libvirt picks an OVMF build itself;
    T_OS_SECURE_BOOT says which kind (firmware features, plus SMM for yes). TCG, paused."""
    domain = fixture_domain(uefi=False)
    drop = ("OS/FIRMWARE", "OS/FIRMWARE_SECURE")
    plain = tweaked({}, domain=domain, drop=drop)
    assert_untouched(plain)
    assert plain.tree.find("os").get("firmware") is None and plain.tree.find("os/loader") is None
    assert control["pflash"] == {}  # a BIOS VM: no flash at all

    outcome = tweaked({"T_OS": "firmware=efi", "T_OS_SECURE_BOOT": secure}, domain=domain, drop=drop)
    assert_applied(outcome, "os-attrs", "secure-boot")
    assert outcome.tree.find("os").get("firmware") == "efi"
    features = {f.get("name"): f.get("enabled") for f in outcome.tree.iterfind("os/firmware/feature")}
    secure_builds, plain_builds = firmware_executables("secure-boot")
    name = boot(outcome, accel="tcg", keep_os=True)
    try:
        code = pflash(name)["pflash0"]["filename"]
        if secure == "yes":
            assert features == {"secure-boot": "yes"}
            assert outcome.tree.find("features/smm").get("state") == "on"
            assert code in secure_builds
            assert "smm=on" in machine_flags(name) and qom_get(name, "/machine", "smm") == "on"
            assert qom_get(name, "/machine/system.flash0", "secure") is True
        else:
            assert features == {"enrolled-keys": "no", "secure-boot": "no"}
            assert code in plain_builds
            assert qom_get(name, "/machine", "smm") == "auto"
            assert qom_get(name, "/machine/system.flash0", "secure") is False
        assert dumpxml(name).findtext("os/loader") == code
    finally:
        live.destroy(name)
        (LIBVIRT_NVRAM_DIR / f"{name}_VARS.fd").unlink(missing_ok=True)  # libvirt's copy of the template


@live_vm
@pytest.mark.parametrize(("user", "smm", "tseg"), [
    ({"T_FEATURE_SMM": "on", "T_FEATURE_SMM_TSEG": "48"}, "on", 48),
    ({"T_FEATURE_SMM": "off"}, "off", 16),
], ids=["on-tseg48", "off"])
def test_smm_reaches_qemu(user: dict[str, str], smm: str, tseg: int, boot: Callable[..., str],
                          control: dict[str, Any]) -> None:
    """T_FEATURE_SMM / T_FEATURE_SMM_TSEG: -machine smm=on|off and the q35 MCH's extended TSEG."""
    outcome = tweaked(user)
    assert_applied(outcome, "smm")
    name = boot(outcome, accel="tcg")

    assert (control["smm"], control["tseg"]) == ("auto", 16)
    assert f"smm={smm}" in machine_flags(name)
    assert qom_get(name, "/machine", "smm") == smm
    assert qom_get(name, "/machine/q35/mch", "extended-tseg-mbytes") == tseg
    if smm == "on":
        assert "mch.extended-tseg-mbytes=48" in argv_values(name, "-global")


# --------------------------------------------------------------------------- Hyper-V, clock, KVM signature


def hyperv_vm(user: dict[str, str], options: str) -> Outcome:
    """A VM with FEATURES/HYPERV=yes: oned wrote <hyperv> with the operator's HYPERV_OPTIONS."""
    return tweaked(user, domain=fixture_domain(hyperv=options), template={"FEATURES/HYPERV": "yes"})


@live_vm
@pytest.mark.parametrize(("options", "user", "before", "after"), [
    (EMPTY_HYPERV,
     {"T_HV_RELAXED": "on", "T_HV_VAPIC": "on", "T_HV_SPINLOCKS": "on:retries=8191", "T_HV_TIME": "on",
      "T_HV_RUNTIME": "yes", "T_HV_RESET": "1", "T_HV_FREQUENCIES": "on", "T_HV_REENLIGHTENMENT": "on",
      "T_HV_CRASH": "on"},
     {"max"},
     {"max", "hv-relaxed=on", "hv-vapic=on", "hv-spinlocks=0x1fff", "hv-time=on", "hv-runtime=on", "hv-reset=on",
      "hv-frequencies=on", "hv-reenlightenment=on", "hv-crash"}),
    (ONED_HYPERV,
     {"T_HV_SPINLOCKS": "retries=8191", "T_HV_VAPIC": "off"},
     {"max", "hv-relaxed=on", "hv-vapic=on", "hv-spinlocks=0x1000"},
     {"max", "hv-relaxed=on", "hv-spinlocks=0x1fff"}),
], ids=["operator-options-empty", "oned-default-options"])
def test_hyperv_enlightenments_reach_qemu(options: str, user: dict[str, str], before: set[str], after: set[str],
                                          boot: Callable[..., str], live: LiveVMs) -> None:
    """T_HV_*: the -cpu hv-* flags and the vCPU's properties (TCG: see the module docstring).
    Changing oned's options replaces its elements (a duplicate would make libvirt refuse)."""
    plain = hyperv_vm({}, options)
    assert_untouched(plain)
    name = boot(plain, accel="tcg")
    assert set(cpu_flags(name)) == before
    seen_before = hv_state(name)
    live.destroy(name)

    outcome = hyperv_vm(user, options)
    assert_applied(outcome, "hyperv")
    assert len(outcome.tree.findall("features/hyperv/spinlocks")) == 1
    name = boot(outcome, accel="tcg")
    assert set(cpu_flags(name)) == after
    wanted = {flag: f"{flag}=on" in after or flag in after for flag in HV_FLAGS}
    wanted["hv-spinlocks"] = 8191
    assert hv_state(name) == wanted
    assert seen_before != wanted
    if "T_HV_CRASH" in user:  # hv-crash is libvirt's <panic model='hyperv'/>
        assert [p.get("model") for p in dumpxml(name).iterfind("devices/panic")] == ["hyperv"]


@live_vm
def test_hyperv_clock_reaches_qemu(boot: Callable[..., str], live: LiveVMs) -> None:
    """T_HV_CLOCK=yes: hv-time, RTC catch-up (driftfix=slew), PIT delay, no HPET."""
    plain = hyperv_vm({}, ONED_HYPERV)
    name = boot(plain, accel="tcg")
    assert argv_values(name, "-rtc") == ["base=utc"]
    assert "kvm-pit.lost_tick_policy=delay" not in argv_values(name, "-global")
    assert "-no-hpet" not in qemu_argv(name) and "hv-time=on" not in cpu_flags(name)
    assert qom_get(name, "/machine", "hpet") is True
    live.destroy(name)

    outcome = hyperv_vm({"T_HV_CLOCK": "yes"}, ONED_HYPERV)
    assert_applied(outcome, "hyperv-clock")
    name = boot(outcome, accel="tcg")
    assert argv_values(name, "-rtc") == ["base=utc,driftfix=slew"]
    assert "kvm-pit.lost_tick_policy=delay" in argv_values(name, "-global")
    assert "-no-hpet" in qemu_argv(name)
    assert qom_get(name, "/machine", "hpet") is False
    assert "hv-time=on" in cpu_flags(name) and qom_get(name, cpu0(name), "hv-time") is True
    timers = {t.get("name"): dict(t.attrib) for t in dumpxml(name).iterfind("clock/timer")}
    assert timers == {"hypervclock": {"name": "hypervclock", "present": "yes"},
                      "rtc": {"name": "rtc", "tickpolicy": "catchup"},
                      "pit": {"name": "pit", "tickpolicy": "delay"},
                      "hpet": {"name": "hpet", "present": "no"}}


@live_vm
def test_kvm_hide_and_hyperv_on_a_kvm_vcpu(boot: Callable[..., str], control: dict[str, Any]) -> None:
    """T_KVM_HIDE=on hides the KVM signature (kvm=off) on a real KVM vCPU; the Hyper-V
    enlightenments this nested KVM accepts (hv-relaxed, hv-spinlocks) get there too."""
    outcome = tweaked({"T_KVM_HIDE": "on", "T_HV_RELAXED": "on", "T_HV_SPINLOCKS": "on:retries=8191"},
                      domain=fixture_domain(hyperv=EMPTY_HYPERV), template={"FEATURES/HYPERV": "yes"})
    assert_applied(outcome, "kvm-hide", "hyperv")
    assert outcome.tree.find("features/kvm/hidden").get("state") == "on"
    name = boot(outcome, accel="kvm")

    assert control["kvm"] is True and control["hv"]["hv-relaxed"] is False
    flags = cpu_flags(name)
    assert flags[0] == "host" and {"kvm=off", "hv-relaxed=on", "hv-spinlocks=0x1fff"} <= set(flags)
    cpu = cpu0(name)
    assert qom_get(name, cpu, "kvm") is False
    assert qom_get(name, cpu, "hv-relaxed") is True and qom_get(name, cpu, "hv-spinlocks") == 8191
    assert qom_get(name, cpu, "type") == "host-x86_64-cpu"


# --------------------------------------------------------------------------- CPU mode, vendor, NUMA


NAMED_MODEL = "<cpu mode='custom'><model fallback='forbid'>EPYC-Rome</model></cpu>"  # oned's CPU_MODEL/MODEL


@live_vm
@pytest.mark.parametrize(("user", "cpu", "mode", "check"), [
    ({"T_CPU_MODE": "host-model", "T_CPU_CHECK": "partial"}, None, "host-model", "partial"),
    ({"T_CPU_MODE": "maximum", "T_CPU_CHECK": "full"}, None, "maximum", "full"),
    ({"T_CPU_MODE": "host-passthrough", "T_CPU_CHECK": "none"}, NAMED_MODEL, "host-passthrough", "none"),
], ids=["host-model", "maximum", "host-passthrough-over-named-model"])
def test_cpu_mode_reaches_qemu(user: dict[str, str], cpu: str | None, mode: str, check: str,
                               boot: Callable[..., str], control: dict[str, Any]) -> None:
    """T_CPU_MODE / T_CPU_CHECK on KVM: the -cpu model qemu runs and libvirt's live <cpu>."""
    domain = fixture_domain(cpu=cpu)
    template = {"CPU_MODEL/MODEL": "EPYC-Rome"} if cpu else None
    if cpu:  # control for this VM: oned's named model
        plain = tweaked({}, domain=domain, template=template)
        assert_untouched(plain)
        name = boot(plain, accel="kvm")
        before = (cpu_flags(name)[0], qom_get(name, cpu0(name), "type"))
        assert before == ("EPYC-Rome", "EPYC-Rome-x86_64-cpu")
    else:
        before = (control["cpu"], control["cpu_type"])
        assert before == ("host", "host-x86_64-cpu") and control["check"] == "none"

    outcome = tweaked(user, domain=domain, template=template)
    assert_applied(outcome, "cpu-mode")
    written = outcome.tree.find("cpu")
    assert (written.get("mode"), written.get("check")) == (mode, check)
    name = boot(outcome, accel="kvm", keep_cpu=True)
    model, cpu_type = cpu_flags(name)[0], qom_get(name, cpu0(name), "type")
    seen = live_cpu(name)
    if mode == "host-model":
        # libvirt expands host-model at start into the named model plus the host's features
        # (its live <cpu> is that custom CPU, checked 'full' against what qemu really gave)
        assert model not in ("host", "max") and cpu_type == f"{model}-x86_64-cpu"
        assert (seen.get("mode"), seen.findtext("model")) == ("custom", model)
        # check='full' from T_CPU_CHECK makes libvirt verify every feature of the expansion at
        # start, and this host cannot give the arch-capabilities bits kvm_cpu() turns off
        strict = tweaked({**user, "T_CPU_CHECK": "full"}, domain=domain, template=template)
        with pytest.raises(AssertionError, match=MISSING_FEATURES):
            boot(strict, accel="kvm", keep_cpu=True)
    elif mode == "maximum":
        assert (model, cpu_type) == ("max", "max-x86_64-cpu")
        assert (seen.get("mode"), seen.get("check")) == (mode, check)
        assert control["check"] != check
    else:
        assert (model, cpu_type) == ("host", "host-x86_64-cpu")
        assert (seen.get("mode"), seen.get("check")) == (mode, check)
        assert seen.find("model") is None
    assert (model, cpu_type) != before


VENDOR_IDS = {"AuthenticAMD": "AMD", "GenuineIntel": "Intel", "HygonGenuine": "Hygon"}


def host_vendor() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("vendor_id"):
                return VENDOR_IDS[line.split(":")[1].strip()]
    raise AssertionError("no vendor_id in /proc/cpuinfo")


@live_vm
def test_cpu_vendor_reaches_libvirt(boot: Callable[..., str], live: LiveVMs, tmp_path: Path) -> None:
    """T_CPU_VENDOR with a named model (T_CPU_MODEL=kvm64, check='partial' from T_CPU_CHECK).

    libvirt's <vendor> is a requirement on the HOST CPU, checked at start when check is partial or
    full; it does not change the vendor the guest sees (qemu gets no vendor= flag). So: the host's
    vendor starts (and is in libvirt's live definition), another vendor is refused by libvirt
    with the vendor named, and the same VM without T_CPU_VENDOR starts."""
    base = {"T_CPU_MODEL": "kvm64", "T_CPU_CHECK": "partial"}
    mine = host_vendor()
    other = "Intel" if mine != "Intel" else "AMD"

    plain = tweaked(base)
    assert_applied(plain, "cpu-model", "cpu-mode")
    name = boot(plain, accel="kvm", keep_cpu=True)
    assert live_cpu(name).find("vendor") is None
    guest_vendor = qom_get(name, cpu0(name), "vendor")
    live.destroy(name)

    outcome = tweaked({**base, "T_CPU_VENDOR": mine.lower()})  # names match case-insensitively
    assert_applied(outcome, "cpu-vendor")
    assert outcome.tree.findtext("cpu/vendor") == mine
    name = boot(outcome, accel="kvm", keep_cpu=True)
    assert live_cpu(name).findtext("vendor") == mine
    assert cpu_flags(name)[0] == "kvm64" and qom_get(name, cpu0(name), "vendor") == guest_vendor
    live.destroy(name)

    refused = tweaked({**base, "T_CPU_VENDOR": other})
    assert_applied(refused, "cpu-vendor")
    with pytest.raises(AssertionError, match=f"host CPU vendor does not match required CPU vendor {other}"):
        boot(refused, accel="kvm", keep_cpu=True)


@live_vm
def test_cpu_numa_alt_reaches_qemu(boot: Callable[..., str], live: LiveVMs) -> None:
    """T_CPU_ALT_NUMA=yes with T_CPU_SOCKETS=2 (4 vCPUs): vCPUs dealt round-robin over the two
    per-socket NUMA nodes instead of one block per node; sockets/cores stay as they were."""
    plain = tweaked({"T_CPU_SOCKETS": "2"}, vcpu=4)
    assert_applied(plain, "cpu-topology")
    name = boot(plain, accel="kvm")
    assert node_ids(name) == [0, 0, 1, 1]
    assert argv_values(name, "-numa") == ["node,nodeid=0,cpus=0-1,memdev=ram-node0",
                                          "node,nodeid=1,cpus=2-3,memdev=ram-node1"]
    sockets = [c["props"]["socket-id"] for c in sorted(vcpus(name), key=lambda c: c["cpu-index"])]
    live.destroy(name)

    outcome = tweaked({"T_CPU_SOCKETS": "2", "T_CPU_ALT_NUMA": "yes"}, vcpu=4)
    assert_applied(outcome, "cpu-numa-alt")
    name = boot(outcome, accel="kvm")
    assert node_ids(name) == [0, 1, 0, 1]
    assert argv_values(name, "-numa") == ["node,nodeid=0,cpus=0,cpus=2,memdev=ram-node0",
                                          "node,nodeid=1,cpus=1,cpus=3,memdev=ram-node1"]
    assert [c["props"]["socket-id"] for c in sorted(vcpus(name), key=lambda c: c["cpu-index"])] == sockets
    # T_CPU_SOCKETS writes <vcpus> (vCPU 0 fixed, the others hotpluggable, as addon-storpool's
    # cpu.py): qemu starts with vCPU 0 and libvirt plugs the other three before the guest runs
    assert argv_values(name, "-smp") == ["1,maxcpus=4,sockets=2,dies=1,cores=2,threads=1"]
    assert len(vcpus(name)) == 4
    assert [c.get("cpus") for c in dumpxml(name).iterfind("cpu/numa/cell")] == ["0,2", "1,3"]


# --------------------------------------------------------------------------- hotplug room


@live_vm
def test_vcpu_max_allows_cpu_hotplug(boot: Callable[..., str], control: dict[str, Any]) -> None:
    """T_VCPU_MAX=4 on a 2-vCPU VM: qemu boots 2 vCPUs with 4 slots; a live setvcpus to 3
    plugs one, and 5 is refused (above the maximum)."""
    outcome = tweaked({"T_VCPU_MAX": "4"})
    assert_applied(outcome, "vcpu-max")
    vcpu = outcome.tree.find("vcpu")
    assert (vcpu.text, vcpu.get("current")) == ("4", "2")
    name = boot(outcome, accel="kvm")

    assert (control["vcpus"], control["hotpluggable"]) == (2, 2)
    assert argv_values(name, "-smp") == ["2,maxcpus=4,sockets=4,cores=1,threads=1"]
    assert len(vcpus(name)) == 2
    slots = qmp(name, "query-hotpluggable-cpus")
    assert len(slots) == 4 and sum("qom-path" in s for s in slots) == 2
    virsh("setvcpus", name, "3", "--live")
    assert sorted(c["cpu-index"] for c in vcpus(name)) == [0, 1, 2]
    assert (dumpxml(name).find("vcpu").text, dumpxml(name).find("vcpu").get("current")) == ("4", "3")
    too_many = virsh("setvcpus", name, "5", "--live", check=False)
    assert too_many.returncode != 0 and "5 > 4" in too_many.stderr, too_many.stderr
    assert len(vcpus(name)) == 3


@live_vm
def test_cpu_sockets_make_boot_vcpus_unpluggable(boot: Callable[..., str], control: dict[str, Any]) -> None:
    """T_CPU_SOCKETS=2 on a 4-vCPU VM writes <vcpus> as addon-storpool's cpu.py did: qemu gets
    vCPU 0 built in and vCPUs 1-3 as devices (what hot-unplug needs), and libvirt reports
    them hotpluggable, so ``setvcpus --live`` may take them away again. (Without <vcpus>
    every boot vCPU is built in and libvirt refuses to unplug it.)"""
    outcome = tweaked({"T_CPU_SOCKETS": "2"}, vcpu=4)
    assert_applied(outcome, "cpu-topology")
    name = boot(outcome, accel="kvm")
    assert argv_values(name, "-smp") == ["1,maxcpus=4,sockets=2,dies=1,cores=2,threads=1"]
    # libvirt plugs vCPUs 1-3 in as devices (device_add) before the guest runs: unpluggable
    paths = sorted(str(s.get("qom-path")) for s in qmp(name, "query-hotpluggable-cpus"))
    assert paths[:3] == ["/machine/peripheral/vcpu1", "/machine/peripheral/vcpu2", "/machine/peripheral/vcpu3"]
    assert not paths[3].startswith("/machine/peripheral/"), paths
    live_vcpus = [(v.get("id"), v.get("enabled"), v.get("hotpluggable")) for v in dumpxml(name).iterfind("vcpus/vcpu")]
    assert live_vcpus == [("0", "yes", "no"), ("1", "yes", "yes"), ("2", "yes", "yes"), ("3", "yes", "yes")]
    assert len(vcpus(name)) == 4


DIMM = "<memory model='dimm'><target><size unit='MiB'>{mib}</size><node>0</node></target></memory>"


@live_vm
def test_memory_max_allows_dimm_hotplug(boot: Callable[..., str], control: dict[str, Any], tmp_path: Path) -> None:
    """T_MEMORY_MAX=512 (hotplug mode, the shipped rule): qemu boots 256 MiB with 16 slots up to
    512 MiB; a 128 MiB DIMM plugs in, a further 256 MiB one is refused (above the maximum)."""
    outcome = tweaked({"T_MEMORY_MAX": "512"})
    assert_applied(outcome, "memory-max")
    limit = outcome.tree.find("maxMemory")
    assert (limit.text, limit.get("slots"), limit.get("unit")) == ("524288", "16", "KiB")
    name = boot(outcome, accel="kvm")

    assert control["m"] == ["256"]
    assert argv_values(name, "-m") == ["size=262144k,slots=16,maxmem=524288k"]
    assert qmp(name, "query-memory-size-summary") == {"base-memory": MEMORY_MIB << 20, "plugged-memory": 0}
    dimm = tmp_path / "dimm.xml"
    dimm.write_text(DIMM.format(mib=128))
    virsh("attach-device", name, str(dimm), "--live")
    assert qmp(name, "query-memory-size-summary") == {"base-memory": MEMORY_MIB << 20, "plugged-memory": 128 << 20}
    (plugged,) = qmp(name, "query-memory-devices")
    assert (plugged["type"], plugged["data"]["size"], plugged["data"]["node"]) == ("dimm", 128 << 20, 0)
    dimm.write_text(DIMM.format(mib=256))
    refused = virsh("attach-device", name, str(dimm), "--live", check=False)
    assert refused.returncode != 0 and "maxMemory" in refused.stderr, refused.stderr
    assert qmp(name, "query-memory-size-summary")["plugged-memory"] == 128 << 20


@live_vm
def test_memory_max_balloon_mode(boot: Callable[..., str], control: dict[str, Any], tmp_path: Path) -> None:
    """The operator's mode: balloon (rule 35 overridden): qemu gets 512 MiB; the VM's 256 MiB
    become <currentMemory>, the balloon target libvirt sets at start."""
    rules = rule_override(tmp_path / "rules", "35-memory-max.yaml", "mode: hotplug", "mode: balloon")
    outcome = tweaked({"T_MEMORY_MAX": "512"}, rules=rules)
    assert_applied(outcome, "memory-max")
    name = boot(outcome, accel="kvm")

    assert control["m"] == ["256"]
    assert argv_values(name, "-m") == ["512"]
    assert qmp(name, "query-memory-size-summary") == {"base-memory": 512 << 20, "plugged-memory": 0}
    assert (outcome.tree.findtext("memory"), outcome.tree.findtext("currentMemory")) == ("524288", "262144")
    assert outcome.tree.find("maxMemory") is None
    assert dumpxml(name).findtext("memory") == "524288"
    # libvirt asked the balloon for 256 MiB at start; a paused VM has no guest driver to
    # give memory back, so qemu's balloon still reports all 512 MiB as the guest's
    assert qmp(name, "query-balloon") == {"actual": 512 << 20}


# --------------------------------------------------------------------------- cputune


@live_vm
@pytest.mark.parametrize(("user", "schedinfo_wanted", "cgroup_wanted"), [
    ({"T_CPUTUNE_SHARES": "333", "T_CPUTUNE_PERIOD": "50000", "T_CPUTUNE_QUOTA": "20000",
      "T_CPUTUNE_GLOBAL_PERIOD": "250000", "T_CPUTUNE_GLOBAL_QUOTA": "150000",
      "T_CPUTUNE_EMULATOR_PERIOD": "200000", "T_CPUTUNE_EMULATOR_QUOTA": "30000",
      "T_CPUTUNE_IOTHREAD_PERIOD": "300000", "T_CPUTUNE_IOTHREAD_QUOTA": "40000"},
     {"cpu_shares": "333", "vcpu_period": "50000", "vcpu_quota": "20000", "global_period": "250000",
      "global_quota": "150000", "emulator_period": "200000", "emulator_quota": "30000",
      "iothread_period": "300000", "iothread_quota": "40000"},
     {"shares": 333, "vcpu_period": 50000, "vcpu_quota": 20000, "global_period": 250000, "global_quota": 150000,
      "emulator_period": 200000, "emulator_quota": 30000, "iothread_period": 300000, "iothread_quota": 40000}),
    ({"T_CPUTUNE_MUL": "0.3"}, {"cpu_shares": "615"}, {"shares": 615}),  # ceil(2 vCPUs x 0.3 x 1024)
], ids=["shares-and-limits", "multiplier"])
def test_cputune_reaches_the_cgroups(user: dict[str, str], schedinfo_wanted: dict[str, str],
                                     cgroup_wanted: dict[str, int], boot: Callable[..., str],
                                     control: dict[str, Any]) -> None:
    """T_CPUTUNE_SHARES / T_CPUTUNE_MUL (cpu-shares) and the period/quota family (cputune):
    virsh schedinfo, and the cgroup v1 files the kernel enforces."""
    outcome = tweaked(user)
    assert_applied(outcome, "cpu-shares", *(["cputune"] if "T_CPUTUNE_PERIOD" in user else []))
    name = boot(outcome, accel="kvm")

    info, cgroup = schedinfo(name), cgroup_cpu(name)
    for key, value in schedinfo_wanted.items():
        assert control["schedinfo"][key] != value, f"control already has {key}={value}"
        assert info[key] == value, key
    for key, number in cgroup_wanted.items():
        assert control["cgroup"][key] != number, f"control already has {key}={number}"
        assert cgroup[key] == number, key
