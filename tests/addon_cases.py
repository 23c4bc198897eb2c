"""The differential suite's cases: every T_* attribute addon-storpool's deploy-tweaks scripts read.

Each attribute gets its documented values and what users really type (other case, ENABLED /
DISABLED, 0, empty, out of range, VCPU-style keywords, delete). A case id reads
``VM/ATTR=VALUE[,ATTR=VALUE...]`` (``VM/-`` sets nothing); ``<empty>`` is an empty value.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

from addon_diff import FIXTURES, set_user
from addon_vms import VARIANTS, build

UUID = "5c1f0a2e-9d3b-4f6a-8e7d-1b2c3d4e5f60"
MAC1, MAC2 = "02:00:11:ab:cd:01", "02:00:11:ab:cd:02"

# script -> {attribute: values}; None means the attribute element is present with no text
ATTRS: dict[str, dict[str, list[str]]] = {
    "disk-serial.py": {"T_DISKSERIAL": ["yes", "YES", "hashpath", "HASHPATH", "HashPath", "no", "NO", "ENABLED",
                                       "enabled", "1", "on", "DISABLED", "disabled", "0", ""]},
    "cpu.py": {
        "T_CPU_SOCKETS": ["1", "2", "4", "0", "-1", "3", "8", "abc", ""],
        "T_CPU_THREADS": ["1", "2", "0", "abc"],
        "T_CPU_FEATURES": ["vmx", "vmx:require,svm:disable", "pcid:force", "x2apic:optional", "invtsc:forbid",
                           "vmx:bogus", "vmx:REQUIRE", ""],
        "T_CPU_MODEL": ["EPYC", "EPYC:allow", "Skylake-Server:forbid", "delete", "DELETE", "host", ""],
        "T_CPU_VENDOR": ["Intel", "AMD", "intel", ""],
        "T_CPU_CHECK": ["none", "partial", "full", "delete", "DELETE", "Full", "bogus", ""],
        "T_CPU_MATCH": ["minimum", "exact", "strict", "delete", "Exact", "bogus", ""],
        "T_CPU_MODE": ["custom", "host-model", "host-passthrough", "maximum", "delete", "DELETE", "bogus", ""],
        "T_CPU_ALT_NUMA": ["yes", "YES", "1", "on", "enabled", "no", "0", ""],
    },
    "cpuShares.py": {
        "T_CPUTUNE_MUL": ["0.1", "0.5", "1", "2", "0", "abc", ""],
        "T_CPUTUNE_SHARES": ["512", "2048", "1", "300000", "0", "abc", ""],
    },
    "cputune.py": {
        **{f"T_CPUTUNE_{p}PERIOD": ["100000", "1000", "0", "2000000", "abc", ""]
           for p in ("", "GLOBAL_", "EMULATOR_", "IOTHREAD_")},
        **{f"T_CPUTUNE_{p}QUOTA": ["50000", "-1", "0", "abc", ""] for p in ("", "GLOBAL_", "EMULATOR_", "IOTHREAD_")},
    },
    "feature_smm.py": {
        "T_FEATURE_SMM": [":state=on", ":state=off", "on:", "on:state=on", "on", "ON", ""],
    },
    "hv-enlightenments.py": {
        f"T_HV_{n}": ["on", "1", "ON", "off", "0", "yes", ""]
        for n in ("SPINLOCKS", "RELAXED", "VAPIC", "TIME", "CRASH", "RESET", "VPINDEX", "RUNTIME", "SYNIC",
                  "STIMER", "FREQUENCIES", "REENLIGHTENMENT", "TLBFLUSH", "IPI", "EVMCS")
    },
    "iothreads.py": {"T_IOTHREADS_OVERRIDE": ["1", "2", "4", "0", "64", "abc", ""]},
    "kvm-hide.py": {"T_KVM_HIDE": ["on", "1", "ON", "off", "0", "yes", "enabled", ""]},
    "nic-queues.py": {
        "T_NIC_QUEUES": ["1", "2", "4", "vcpu", "VCPU", "0", "2000", "abc", ""],
        "T_NIC0_QUEUES": ["2", "vcpu", "VCPU", "0", "abc"],
        "T_NIC1_QUEUES": ["3"],
    },
    "os.py": {
        "T_OS": ["firmware=efi", "firmware=bios", "firmware=", "firmware=EFI", ""],
        "T_OS_LOADER": ["/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_CODE_4M.fd:readonly=yes type=pflash",
                        "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd:readonly=yes type=pflash secure=yes",
                        "/var/tmp/one/OVMF/OVMF_CODE.fd", "/etc/passwd", ""],
        "T_OS_NVRAM": ["storpool", "storpool:type=block", "storpool:type=file", "STORPOOL", "file",
                       ":template=OVMF_VARS.fd", "vars.fd", ""],
    },
    "persistent-cdrom.py": {
        "T_PERSISTENT_CDROM": ["1", "2", "4", "5", "0", "abc", ""],
        "T_PERSISTENT_CDROM_TYPE": ["file", "block", "FILE", "bogus"],
    },
    "q35-pcie-root.py": {"Q35_PCIE_ROOT_PORTS": ["0", "2", "8", "16", "abc", ""]},
    "resizeCpuMem.py": {
        "T_VCPU_MAX": ["8", "16", "4", "2", "0", "abc", ""],
        "T_MEMORY_MAX": ["8192", "16384", "4096", "1024", "abc", ""],
    },
    "scsi-queues.py": {"T_BLK_QUEUES": ["YES", "yes", "Y", "1", "NO", "no", "0", "on", ""]},
    "sysinfo_smbios.py": {
        "T_SMBIOS_BIOS": ["vendor=BVendor;version=BVersion;date=05/13/2022;release=42.42", "vendor:BVendor",
                          "bogus", ""],
        "T_SMBIOS_SYSTEM": ["manufacturer=SM;product=SP;version=SV;serial=SS;sku=SSKU;family=SF",
                            f"uuid={UUID}", ""],
        "T_SMBIOS_BASEBOARD": ["manufacturer=BBM;version=BBV;serial=BBS;product=BBP;asset=BBA;location=BBL"],
        "T_SMBIOS_CHASSIS": ["manufacturer=CM;version=CV;serial=CS;asset=CA;sku=CSKU"],
        "T_SMBIOS_OEMSTRINGS": ["one;two;three", "single", ""],
    },
    "uuid.py": {"T_UUID": [UUID, UUID.upper(), UUID.replace("-", ""), "not-a-uuid", ""]},
    "vfhostdev2interface.py": {"T_VF_MACS": [f"{MAC1},{MAC2}", MAC1, f",{MAC2}", "bogus", ""]},
    "video.py": {"T_VIDEO_MODEL": ["type=virtio", "type=qxl vram=65536 heads=2", "type=vga",
                                  "type=virtio heads=1 primary=yes accel3d=yes", "type=cirrus vram=abc",
                                  "bogus", ""]},
}

# combinations the scripts read together
COMBOS: dict[str, list[dict[str, str]]] = {
    "cpu.py": [
        {"T_CPU_SOCKETS": "2", "T_CPU_THREADS": "2"},
        {"T_CPU_SOCKETS": "1", "T_CPU_THREADS": "2"},
        {"T_CPU_SOCKETS": "2", "T_CPU_ALT_NUMA": "yes"},
        {"T_CPU_SOCKETS": "2", "T_CPU_ALT_NUMA": "no"},
        {"T_CPU_MODEL": "EPYC", "T_CPU_VENDOR": "AMD"},
        {"T_CPU_MODEL": "EPYC:allow", "T_CPU_FEATURES": "vmx:disable", "T_CPU_CHECK": "partial",
         "T_CPU_MATCH": "exact"},
        {"T_CPU_MODE": "host-model", "T_CPU_MATCH": "host-model"},
        {"T_CPU_MODE": "custom", "T_CPU_MODEL": "EPYC"},
    ],
    "cpuShares.py": [{"T_CPUTUNE_MUL": "0.5", "T_CPUTUNE_SHARES": "2048"}],
    "cputune.py": [
        {"T_CPUTUNE_PERIOD": "100000", "T_CPUTUNE_QUOTA": "50000"},
        {"T_CPUTUNE_QUOTA": "50000", "T_CPUTUNE_SHARES_KEEP": "yes"},
        {"T_CPUTUNE_QUOTA": "50000", "T_CPUTUNE_SHARES_KEEP": "no"},
        {"T_CPUTUNE_GLOBAL_PERIOD": "100000", "T_CPUTUNE_GLOBAL_QUOTA": "200000",
         "T_CPUTUNE_EMULATOR_QUOTA": "10000", "T_CPUTUNE_IOTHREAD_QUOTA": "10000"},
    ],
    "feature_smm.py": [
        {"T_FEATURE_SMM": ":state=on", "T_FEATURE_SMM_TSEG": "48:unit=MiB"},
        {"T_FEATURE_SMM": ":state=on", "T_FEATURE_SMM_TSEG": "16:"},
        {"T_FEATURE_SMM": ":state=on", "T_FEATURE_SMM_TSEG": ":unit=MiB"},
        {"T_FEATURE_SMM_TSEG": "48:unit=MiB"},
    ],
    "hv-enlightenments.py": [
        {"T_HV_SYNIC": "on", "T_HV_VPINDEX": "on"},
        {"T_HV_STIMER": "on", "T_HV_SYNIC": "on", "T_HV_VPINDEX": "on", "T_HV_TIME": "on"},
        {"T_HV_TLBFLUSH": "on", "T_HV_IPI": "on", "T_HV_VPINDEX": "on"},
        {"T_HV_EVMCS": "on", "T_HV_VAPIC": "on"},
        {"T_HV_TIME": "on", "T_HV_CRASH": "1", "T_HV_RESET": "on", "T_HV_FREQUENCIES": "on"},
    ],
    "os.py": [
        {"T_OS": "firmware=efi", "T_OS_NVRAM": "storpool"},
        {"T_OS_LOADER": "/usr/share/OVMF/OVMF_CODE_4M.fd:readonly=yes type=pflash", "T_OS_NVRAM": "storpool"},
        {"T_OS_LOADER": "/var/tmp/one/OVMF/OVMF_CODE.fd", "T_OS_NVRAM": "storpool:type=block"},
    ],
    "persistent-cdrom.py": [
        {"T_PERSISTENT_CDROM": "2", "T_PERSISTENT_CDROM_TYPE": "file"},
        {"T_PERSISTENT_CDROM": "1", "T_PERSISTENT_CDROM_TYPE": "FILE"},
    ],
    "resizeCpuMem.py": [{"T_VCPU_MAX": "8", "T_MEMORY_MAX": "8192"}],
    "sysinfo_smbios.py": [{"T_SMBIOS_BIOS": "vendor=V", "T_SMBIOS_SYSTEM": "manufacturer=M",
                           "T_SMBIOS_OEMSTRINGS": "a;b"}],
    "nic-queues.py": [{"T_NIC_QUEUES": "2", "T_NIC0_QUEUES": "4"}, {"T_NIC_QUEUES": "vcpu", "T_NIC1_QUEUES": "0"}],
    "vfhostdev2interface.py": [],
}

# scripts that act without any attribute: they run on every VM with nothing set
UNCONDITIONAL = ("context-cache.py", "disk-cache-io.py", "hyperv-clock.py", "volatile2dev.py", "scsi-queues.py",
                 "cpuShares.py", "iothreads.py", "resizeCpuMem.py", "cpu.py", "feature_smm.py", "nic-queues.py")


@dataclass(frozen=True)
class Case:
    id: str
    vm_name: str
    user: tuple[tuple[str, str], ...]
    scripts: tuple[str, ...]
    template: tuple[tuple[str, str], ...] = ()

    def inputs(self) -> tuple[bytes, bytes]:
        return inputs(self)


@cache
def documents(vm_name: str) -> tuple[bytes, bytes]:
    if vm_name == "fixture":
        one = FIXTURES / "opennebula"
        return (one / "deployment.0.xml").read_bytes(), (one / "vm-42.xml").read_bytes()
    return build(next(v for v in VARIANTS if v.name == vm_name))


def inputs(case: Case) -> tuple[bytes, bytes]:
    domain, vm = documents(case.vm_name)
    vm = set_user(vm, dict(case.user))
    if case.template:
        from lxml import etree

        root = etree.fromstring(vm)
        tpl = root.find("TEMPLATE")
        for path, value in case.template:
            parent_tag, tag = path.split("/")
            for i, parent in enumerate(tpl.findall(parent_tag)):
                if value.split(",")[i] if i < len(value.split(",")) else "":
                    el = etree.SubElement(parent, tag)
                    el.text = value.split(",")[i]
        vm = etree.tostring(root)
    return domain, vm


def _show(value: str) -> str:
    return value if value else "<empty>"


def _case(vm_name: str, user: dict[str, str], scripts: tuple[str, ...],
          template: tuple[tuple[str, str], ...] = ()) -> Case:
    label = ",".join(f"{k}={_show(v)}" for k, v in user.items()) or "-"
    if template:
        label += "," + ",".join(f"TEMPLATE/{k}={v}" for k, v in template)
    if len(scripts) > 1:
        label += " @all"
    elif not user:
        label += f" @{scripts[0]}"
    return Case(f"{vm_name}/{label}", vm_name, tuple(user.items()), scripts, template)


# where each script's attributes are tried: machines it cares about
WHERE: dict[str, tuple[str, ...]] = {
    "hv-enlightenments.py": ("pc-blk-hv",),
    "vfhostdev2interface.py": ("q35-blk-sp", "pc-blk-hv"),
    "q35-pcie-root.py": ("q35-blk-sp", "pc-scsi-sp", "fixture"),
    "persistent-cdrom.py": ("q35-blk-sp", "pc-scsi-sp", "fixture"),
    "iothreads.py": ("q35-blk-sp", "q35-scsi-ssh", "fixture"),
    "scsi-queues.py": ("q35-blk-sp", "pc-scsi-sp", "fixture"),
    "nic-queues.py": ("q35-blk-sp", "pc-blk-hv"),
    "disk-serial.py": ("q35-blk-sp", "pc-scsi-sp"),
    "feature_smm.py": ("fixture", "q35-blk-sp", "q35-scsi-ssh"),
    "os.py": ("fixture", "q35-blk-sp", "q35-scsi-ssh"),
}
DEFAULT_WHERE = ("fixture", "q35-blk-sp")


def all_cases() -> Iterator[Case]:
    for script, attrs in ATTRS.items():
        where = WHERE.get(script, DEFAULT_WHERE)
        for attr, values in attrs.items():
            for i, value in enumerate(values):
                # the first (documented) value on every VM, the others on one VM each, in turn
                for vm_name in where if i < 1 else (where[i % len(where)],):
                    yield _case(vm_name, {attr: value}, (script,))
        for combo in COMBOS.get(script, []):
            for vm_name in where:
                yield _case(vm_name, combo, (script,))
    # PCI devices whose MAC comes from the VM template (TEMPLATE/PCI/MAC), no T_VF_MACS
    for vm_name in ("q35-blk-sp", "pc-blk-hv"):
        yield _case(vm_name, {}, ("vfhostdev2interface.py",))
    yield _case("pc-blk-hv", {}, ("vfhostdev2interface.py",), (("PCI/MAC", f"{MAC1},{MAC2}"),))
    # the attribute-less scripts on every VM
    names = ("fixture", *(v.name for v in VARIANTS))
    for script in UNCONDITIONAL:
        for vm_name in names:
            yield _case(vm_name, {}, (script,))
    # the whole chain, as a cloud that enabled every example script runs it
    every = tuple(sorted(ATTRS) + [s for s in UNCONDITIONAL if s not in ATTRS])
    for vm_name in names:
        yield _case(vm_name, {}, every)
        yield _case(vm_name, {"T_CPU_SOCKETS": "2", "T_DISKSERIAL": "yes", "T_KVM_HIDE": "on",
                              "T_VIDEO_MODEL": "type=qxl", "T_UUID": UUID}, every)
