"""Shared by the idempotence tests (test_idempotence.py on generated VMs, test_corpus.py on
libvirt's own test domains): every shipped rule enabled, a VM document made to fit a
domain, T_* combinations users set, and one check of a case:

- the first apply raises nothing and no rule fails with a Python exception;
- a schema-valid input gives a schema-valid output (libvirt's domain.rng);
- a second apply on the output changes nothing (byte for byte, no rule applied);
- no content is lost: comments, metadata and foreign-namespace elements stay as they were,
  no top-level element and no device disappears (a PCI hostdev may become an interface).
"""

from __future__ import annotations

import copy
import functools
import random
from collections import Counter
from collections.abc import Mapping, Sequence

from lxml import etree

from tweaks import engine, loader, provenance
from tweaks.errors import InputError
from tweaks.report import ROLLED_BACK
from tweaks.rules import Rule
from tweaks.validate import DomainSchema

DOMAIN_RNG = "/usr/share/libvirt/schemas/domain.rng"
OVMF = "/usr/share/OVMF"
ADDON_OVMF = "/var/tmp/one/OVMF"

# Values users set, per attribute the shipped rules read: documented ones, the add-on's
# spellings and a few that are refused (each refusal must leave the domain as it was).
VALUES: dict[str, tuple[str, ...]] = {
    "T_IOTHREADS_OVERRIDE": ("1", "2", "4", "0", "x"),
    "T_BLK_QUEUES": ("yes", "YES", "no"),
    "T_SCSI_QUEUES": ("vcpu", "2", "1", "64"),
    "T_CPU_MODEL": ("EPYC-Rome:allow", "qemu64", "delete", "Haswell-noTSX:forbid"),
    "T_CPU_SOCKETS": ("1", "2", "4", "0", "3"),
    "T_CPU_THREADS": ("1", "2"),
    "T_CPU_FEATURES": ("invtsc,vmx:disable", "pcid:require"),
    "T_CPU_MODE": ("host-passthrough", "host-model", "custom", "delete", "maximum"),
    "T_CPU_CHECK": ("none", "partial", "full", "delete"),
    "T_CPU_MATCH": ("exact", "minimum", "strict", "delete"),
    "T_VCPU_MAX": ("8", "16", "2"),
    "T_MEMORY_MAX": ("8192", "65536"),
    "T_CPU_ALT_NUMA": ("yes", "no"),
    "T_CPU_VENDOR": ("Intel", "AMD"),
    "T_CPUTUNE_SHARES": ("2048", "auto"),
    "T_CPUTUNE_MUL": ("0.5", "2"),
    "T_CPUTUNE_PERIOD": ("100000",),
    "T_CPUTUNE_QUOTA": ("50000", "-1"),
    "T_CPUTUNE_GLOBAL_PERIOD": ("100000",),
    "T_CPUTUNE_GLOBAL_QUOTA": ("200000",),
    "T_CPUTUNE_EMULATOR_PERIOD": ("100000",),
    "T_CPUTUNE_EMULATOR_QUOTA": ("20000",),
    "T_CPUTUNE_IOTHREAD_PERIOD": ("100000",),
    "T_CPUTUNE_IOTHREAD_QUOTA": ("20000",),
    "T_CPUTUNE_SHARES_KEEP": ("1", "0"),
    "T_VIDEO_MODEL": ("type=virtio heads=2", "type=qxl vram=65536 primary=yes", "type=vga"),
    "T_DISKSERIAL": ("ENABLED", "hashpath", "yes", "DISABLED", "1"),
    "T_IOEVENTFD": ("yes", "no"),
    "T_PERSISTENT_CDROM": ("1", "2", "4"),
    "T_PERSISTENT_CDROM_TYPE": ("file", "block"),
    "T_OS": ("firmware=efi", "firmware=", "firmware=bios"),
    "T_OS_LOADER": (f"{ADDON_OVMF}/OVMF_CODE.fd", f"{OVMF}/OVMF_CODE_4M.secboot.fd:secure=yes",
                    f"{OVMF}/OVMF_CODE.fd:readonly=yes type=pflash"),
    "T_OS_NVRAM": ("storpool", "file", "storpool:template=OVMF_VARS.fd", "my_VARS.fd"),
    "T_FEATURE_SMM": ("on", "off"),
    "T_FEATURE_SMM_TSEG": ("48", "16:unit=MiB"),
    "T_OS_SECURE_BOOT": ("yes", "no"),
    "T_UUID": ("6d1d1b0e-5b4e-4e4f-9d3c-0b1f2e3d4c5b",),
    "T_SMBIOS_BIOS": ("vendor=V;version=1.0",),
    "T_SMBIOS_SYSTEM": ("manufacturer=M;product=P;serial=S",),
    "T_SMBIOS_BASEBOARD": ("manufacturer=B;product=BP",),
    "T_SMBIOS_CHASSIS": ("manufacturer=C;asset=A",),
    "T_SMBIOS_OEMSTRINGS": ("app:one;two",),
    "T_HV_SPINLOCKS": ("on", "on:retries=8191", "off"),
    **{f"T_HV_{name}": ("on", "off", "1") for name in (
        "RELAXED", "VAPIC", "VPINDEX", "RUNTIME", "SYNIC", "STIMER", "RESET", "FREQUENCIES",
        "REENLIGHTENMENT", "TLBFLUSH", "IPI", "EVMCS", "TIME", "CRASH")},
    "T_HV_CLOCK": ("yes", "no"),
    "T_KVM_HIDE": ("yes", "no"),
    "T_NIC_QUEUES": ("vcpu", "2", "0"),
    "T_NIC0_QUEUES": ("1", "vcpu"),
    "Q35_PCIE_ROOT_PORTS": ("4", "16", "0"),
    "T_VF_MACS": ("02:00:11:ab:cd:01,02:00:11:ab:cd:02", ",02:00:11:ab:cd:03"),
}


def pick(rng: random.Random, share: float = 0.5) -> dict[str, str]:
    """A T_* combination: each attribute with probability ``share``, a random value."""
    return {name: rng.choice(values) for name, values in VALUES.items() if rng.random() < share}


@functools.cache
def _ruleset() -> tuple[tuple[Rule, ...], tuple[tuple[str, str], ...]]:
    ruleset = loader.load([])
    rules = []
    for rule in ruleset.rules:
        rule = copy.copy(rule)
        rule.enabled = True
        rules.append(rule)
    return tuple(rules), tuple(ruleset.hashes)


def all_rules() -> tuple[Rule, ...]:
    """The shipped rules, every one enabled (disk-driver ships disabled)."""
    return _ruleset()[0]


@functools.cache
def schema() -> DomainSchema:
    return DomainSchema(DOMAIN_RNG)


def vm_document(domain: etree._Element, user: Mapping[str, str], *, vm_id: int = 7,
                disks: Sequence[Mapping[str, str]] = (), nics: Sequence[Mapping[str, str]] = (),
                pcis: Sequence[Mapping[str, str]] = (), context: Mapping[str, str] | None = None,
                tm_mad: str = "storpool") -> bytes:
    """A VM document (onevm show -x) that fits ``domain``: its vCPUs and memory, FEATURES/HYPERV
    when it has <hyperv>, the given DISK/NIC/PCI/CONTEXT, a history on ``tm_mad``."""
    vm = etree.Element("VM")
    for tag, text in (("ID", str(vm_id)), ("UID", "0"), ("GID", "0"), ("NAME", f"vm-{vm_id}"),
                      ("STATE", "3"), ("LCM_STATE", "2")):
        etree.SubElement(vm, tag).text = text
    template = etree.SubElement(vm, "TEMPLATE")
    vcpu = (domain.findtext("vcpu") or "1").strip()
    etree.SubElement(template, "VCPU").text = vcpu if vcpu.isdigit() else "1"
    etree.SubElement(template, "CPU").text = "1"
    memory = (domain.findtext("memory") or "1048576").strip()
    etree.SubElement(template, "MEMORY").text = str(int(memory) // 1024) if memory.isdigit() else "1024"
    if domain.find("features/hyperv") is not None:
        features = etree.SubElement(template, "FEATURES")
        etree.SubElement(features, "HYPERV").text = "YES"
    for tag, items in (("DISK", disks), ("NIC", nics), ("PCI", pcis)):
        for item in items:
            el = etree.SubElement(template, tag)
            for key, value in item.items():
                etree.SubElement(el, key).text = value
    if context is not None:
        el = etree.SubElement(template, "CONTEXT")
        for key, value in context.items():
            etree.SubElement(el, key).text = value
    ut = etree.SubElement(vm, "USER_TEMPLATE")
    for key, value in user.items():
        etree.SubElement(ut, key).text = value
    history = etree.SubElement(etree.SubElement(vm, "HISTORY_RECORDS"), "HISTORY")
    for tag, text in (("SEQ", "0"), ("HOSTNAME", "host1"), ("HID", "1"), ("DS_ID", "0"), ("TM_MAD", tm_mad),
                      ("VM_MAD", "kvm")):
        etree.SubElement(history, tag).text = text
    return etree.tostring(vm)


def _run(domain: bytes, vm: bytes) -> engine.Outcome:
    """What ``one-tweaks apply`` does: the rules, then the provenance stamp."""
    outcome = engine.apply_rules(engine.parse_xml(domain, "domain"), engine.parse_xml(vm, "vm"), all_rules(),
                                 schema=schema())
    provenance.stamp(outcome.tree.getroot(), outcome.report, _ruleset()[1])
    return outcome


def check(domain: bytes, vm: bytes) -> list[str]:
    """Everything wrong with applying every shipped rule to ``domain`` for ``vm`` (see module doc)."""
    problems: list[str] = []
    try:
        first = _run(domain, vm)
    except InputError:
        raise
    except Exception as exc:  # what the CLI reports as "internal error"
        return [f"internal error: {type(exc).__name__}: {exc}"]
    for result in first.report.results:
        if result.status == ROLLED_BACK and not result.reason.startswith("made the domain XML schema-invalid"):
            problems.append(f"rule {result.name} failed: {result.reason}")
    out = engine.serialize(first.tree)
    before_errors = schema().errors(engine.parse_xml(domain, "domain"))
    after_errors = schema().errors(engine.parse_xml(out, "output"))
    if before_errors is not None and after_errors:
        new = sorted(after_errors - before_errors)
        if not before_errors or new:
            problems.append("schema-invalid output: " + "; ".join((new or sorted(after_errors))[:3]))
    try:
        second = _run(out, vm)
    except Exception as exc:
        return [*problems, f"internal error on the second pass: {type(exc).__name__}: {exc}"]
    again = engine.serialize(second.tree)
    if again != out:
        changed = [f"{r.name}: {', '.join(str(c) for c in r.changes[:3])}" for r in second.report.results if r.changes]
        problems.append("second apply changed the output: " + ("; ".join(changed) or "normalization")[:600])
    problems.extend(lost_content(etree.fromstring(domain), etree.fromstring(out)))
    return problems


_DEVICE_PAIRS = {"hostdev": "passthrough", "interface": "passthrough"}
# Devices a tweak may legitimately take away when a VM asks (T_HV_CRASH=off removes a
# hyperv <panic>).
_REMOVABLE = frozenset({"panic"})


def lost_content(before: etree._Element, after: etree._Element) -> list[str]:
    """What of ``before`` is missing from ``after`` (see module doc)."""
    lost: list[str] = []

    def others(root: etree._Element) -> Counter[str]:
        found: Counter[str] = Counter()
        for node in root.iter():
            if isinstance(node, etree._Comment):
                found[f"comment {node.text}"] += 1
            elif isinstance(node, etree._ProcessingInstruction):
                found[f"processing instruction {node.target}"] += 1
            elif isinstance(node.tag, str) and node.tag.startswith("{") and node.getparent() is not None \
                    and not str(node.getparent().tag).startswith("{"):
                found[etree.tostring(node, with_tail=False).decode()] += 1
        return found

    missing = others(before) - others(after)
    lost.extend(f"lost {item[:120]}" for item in missing)
    for which in ("metadata",):
        old, new = before.find(which), after.find(which)
        if old is not None and (new is None or _canon(old) != _canon(new)):
            lost.append(f"<{which}> changed")
    top_before = {c.tag for c in before if isinstance(c.tag, str)}
    top_after = {c.tag for c in after if isinstance(c.tag, str)}
    lost.extend(f"lost <{tag}>" for tag in sorted(top_before - top_after, key=str))

    def devices(root: etree._Element) -> Counter[str]:
        return Counter(_DEVICE_PAIRS.get(str(d.tag), str(d.tag)) for d in root.iterfind("devices/*")
                       if isinstance(d.tag, str) and d.tag not in _REMOVABLE)

    fewer = devices(before) - devices(after)
    lost.extend(f"lost {n} <{tag}> device(s)" for tag, n in fewer.items())
    targets_after = {t.get("dev") for t in after.iterfind("devices/disk/target")}
    lost.extend(f"lost disk {t.get('dev')}" for t in before.iterfind("devices/disk/target")
                if t.get("dev") not in targets_after)
    return lost


def _canon(el: etree._Element) -> bytes:
    copied = copy.deepcopy(el)
    for stamp in copied.findall(f"{{{provenance.NAMESPACE}}}provenance"):  # ours, added on purpose
        copied.remove(stamp)
    for node in copied.iter():
        if node.text is not None and not node.text.strip():
            node.text = None
        if node.tail is not None and not node.tail.strip():
            node.tail = None
    return etree.tostring(copied, method="c14n")
