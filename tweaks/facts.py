"""Facts about a VM that rule conditions and parameter sources refer to by name.

Names (see README "Facts"):
  vm.id vm.name vm.uid vm.gid vm.uname vm.gname vm.state vm.lcm_state
  vm.vcpu (VCPU, else CPU rounded up) vm.cpu vm.memory (MiB)
  vm.pci_macs   TEMPLATE/PCI MACs in PCI order, comma-separated (empty items for PCIs
                without one); set when any PCI device has a MAC
  template.PATH   any TEMPLATE attribute, nested ones as A/B (e.g. template.OS/MACHINE)
  user.PATH       any USER_TEMPLATE attribute (untrusted: set by cloud users)
  history.host history.hid history.ds_id history.tm_mad history.vm_mad history.seq
  domain.type domain.machine domain.arch domain.iothreads domain.vcpu
  disk.X  one value per disk (id target tm_mad datastore_id kind persistent disk_type
          type image_id clone source size); kind is image|volatile|context|cdrom
  nic.X   one value per NIC (id target model network bridge mac) ; domain.controllers
  dest.host dest.address dest.cpu_features
          the destination host of a migration (rules ``on: [migrate]``): its name, the
          address it is reached at, and the CPU features its libvirt reports
          (comma-separated); set by the caller, absent at other moments
  storage.X  what the storage drivers say (supplied, see below): storage.tm_mads (every
          TM_MAD a storage backend serves), storage.block_tm_mads (those whose volumes hosts
          see as block devices: volatile and context disks become type='block'),
          storage.network_tm_mads (volumes libvirt reaches over the network), storage.px
  system_ds.X  the VM's system datastore: ID, NAME, TM_MAD and its TEMPLATE attributes
          (system_ds.BRIDGE_LIST, ...), when the caller has the datastore document
  disk.storage_form  per disk kept by a storage backend: block or network
  disk.storage_protocol disk.storage_name disk.storage_hosts disk.storage_user
  disk.storage_secret disk.storage_secret_type
          per disk a network backend keeps in a volume (Backend.facts): libvirt's network
          protocol (rbd), the volume name (pool/image), monitors "host[:port] ...", and
          the auth user, libvirt secret UUID and secret type (ceph); volatile_network and
          context_network write <disk type='network'> from them
  storage.nvram_protocol storage.nvram_name storage.nvram_hosts storage.nvram_user
  storage.nvram_secret storage.nvram_secret_type
          the VM's NVRAM volume on a network backend (same meanings); os_nvram's volume
          word then writes <nvram type='network'>
Multi-valued names (disk.*, nic.*, domain.controllers) match when any value matches.

Supplied facts (``storage.*``, ``system_ds.*``, ``disk.storage_*``) come from the storage
side, never from the engine (which imports no storage code): the deploy hook passes them to
``engine.apply_rules``; without them, the first question about one asks the supplier that the
``one_tweaks.facts`` entry point names (``tweaks.plugins``), once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from .record import field, record

if TYPE_CHECKING:
    from lxml import etree

SCALAR_PREFIXES = ("vm.", "template.", "user.", "history.", "domain.", "dest.", "storage.", "system_ds.")
# Facts a caller gives for the moment (not read from the documents).
MOMENT_PREFIXES = ("dest.",)
LIST_PREFIXES = ("disk.", "nic.")
_LIST_FACTS = frozenset({"domain.controllers"})
# facts the storage side supplies (see the module doc)
SUPPLIED_PREFIXES = ("storage.", "system_ds.", "disk.storage_")
SUPPLIED_DISK_PREFIX = "storage_"

Supplied = tuple[dict[str, str], dict[str, dict[str, str]]]  # (scalars, disk id -> disk facts)
Supplier = Callable[["etree._Element | None", "etree._Element | None"], Supplied]
MAX_VCPU = 4096
MAX_MEMORY = 1 << 40  # MiB: a VM document's MEMORY beyond this is no real VM


def is_list_fact(name: str) -> bool:
    return name.startswith(LIST_PREFIXES) or name in _LIST_FACTS


def describe(name: str) -> str:
    """How a fact is named in OpenNebula terms, for warnings (user.T_X -> USER_TEMPLATE/T_X)."""
    if name == "vm.pci_macs":
        return "TEMPLATE/PCI/MAC"
    prefix, _, rest = name.partition(".")
    if prefix == "user":
        return f"USER_TEMPLATE/{rest}"
    if prefix == "template":
        return f"TEMPLATE/{rest}"
    return name


@record
class Facts:
    scalars: dict[str, str] = field(default_factory=dict)
    disks: list[dict[str, str]] = field(default_factory=list)
    nics: list[dict[str, str]] = field(default_factory=list)
    controllers: list[str] = field(default_factory=list)
    # Values of the VM document that are not what they must be (VCPU=1e400): each is left
    # out of the facts and reported as a warning, and the deploy goes on.
    problems: list[str] = field(default_factory=list)
    # asked once for the supplied facts when a rule first wants one (None: supplied already)
    supplier: Callable[[], Supplied | None] | None = None

    def supply(self, scalars: Mapping[str, str], disks: Mapping[str, Mapping[str, str]]) -> None:
        """Add the storage side's facts: ``scalars`` named ``storage.*``/``system_ds.*``,
        ``disks`` by DISK_ID with keys ``storage_*`` (others are ignored: supplied facts never
        replace what the documents say)."""
        self.supplier = None
        for name, value in scalars.items():
            if name.startswith(SUPPLIED_PREFIXES[:2]) and name not in self.scalars:
                self.scalars[name] = str(value)
        for entry in self.disks:
            for key, value in (disks.get(entry.get("id", "")) or {}).items():
                if key.startswith(SUPPLIED_DISK_PREFIX) and key not in entry:
                    entry[key] = str(value)

    def _want(self, name: str) -> None:
        if self.supplier is not None and name.startswith(SUPPLIED_PREFIXES):
            supplier, self.supplier = self.supplier, None
            found = supplier()
            if found is not None:
                self.supply(*found)

    @property
    def vm_id(self) -> str:
        return self.scalars.get("vm.id", "?")

    @property
    def vcpu(self) -> int:
        return int(self.scalars.get("vm.vcpu", "1"))

    def get(self, name: str) -> str | None:
        self._want(name)
        return self.scalars.get(name)

    def values(self, name: str) -> list[str]:
        """All values of a fact: one for scalars (if present), one per disk/NIC for lists."""
        self._want(name)
        if name.startswith("disk."):
            key = name[5:]
            return [d[key] for d in self.disks if key in d]
        if name.startswith("nic."):
            key = name[4:]
            return [n[key] for n in self.nics if key in n]
        if name == "domain.controllers":
            return list(self.controllers)
        value = self.scalars.get(name)
        return [] if value is None else [value]

    def disk(self, disk_id: str) -> dict[str, str] | None:
        for disk in self.disks:
            if disk.get("id") == disk_id:
                return disk
        return None


def _text(el: etree._Element | None) -> str | None:
    if el is None or el.text is None:
        return None
    return el.text.strip()


def _flatten(el: etree._Element, prefix: str, out: dict[str, str], skip: frozenset[str]) -> None:
    """Add every leaf under ``el`` as ``prefix + A/B``; repeated elements are left out."""
    counts: dict[str, int] = {}
    for child in el:
        if isinstance(child.tag, str):
            counts[child.tag] = counts.get(child.tag, 0) + 1
    for child in el:
        tag = child.tag
        if not isinstance(tag, str) or counts[tag] > 1 or tag in skip:
            continue
        if len(child):
            _flatten(child, f"{prefix}{tag}/", out, frozenset())
        else:
            out[prefix + tag] = (child.text or "").strip()


def _leaf_map(el: etree._Element) -> dict[str, str]:
    return {c.tag: (c.text or "").strip() for c in el if isinstance(c.tag, str) and not len(c)}


def _disk_facts(disk: etree._Element) -> dict[str, str]:
    attrs = _leaf_map(disk)
    facts = {key.lower(): value for key, value in attrs.items()}
    facts["id"] = attrs.get("DISK_ID", "")
    disk_type = attrs.get("TYPE", "").upper()
    if disk_type in ("FS", "SWAP"):
        kind = "volatile"
    elif disk_type == "CDROM":
        kind = "cdrom"
    else:
        kind = "image"
    facts["kind"] = kind
    facts["persistent"] = "yes" if attrs.get("PERSISTENT", "").upper() == "YES" else "no"
    return facts


def from_documents(vm: etree._Element | None, domain: etree._Element | None) -> Facts:
    facts = Facts()
    s = facts.scalars
    if vm is not None:
        for key, tag in (("id", "ID"), ("name", "NAME"), ("uid", "UID"), ("gid", "GID"),
                         ("uname", "UNAME"), ("gname", "GNAME"), ("state", "STATE"),
                         ("lcm_state", "LCM_STATE")):
            value = _text(vm.find(tag))
            if value is not None:
                s[f"vm.{key}"] = value
        template = vm.find("TEMPLATE")
        if template is not None:
            _flatten(template, "template.", s, frozenset({"DISK", "NIC", "NIC_ALIAS"}))
            for disk in template.iterfind("DISK"):
                facts.disks.append(_disk_facts(disk))
            context = template.find("CONTEXT")
            if context is not None and _text(context.find("DISK_ID")):
                facts.disks.append({"id": _text(context.find("DISK_ID")) or "", "kind": "context",
                                    "target": _text(context.find("TARGET")) or ""})
            macs = [_text(pci.find("MAC")) or "" for pci in template.iterfind("PCI")]
            if any(macs):
                # Positional, as addon-storpool's vfhostdev2interface.py reads them: the i-th
                # PCI device's MAC (empty when it has none).
                s["vm.pci_macs"] = ",".join(macs)
            for nic in template.iterfind("NIC"):
                attrs = _leaf_map(nic)
                nic_facts = {key.lower(): value for key, value in attrs.items()}
                nic_facts["id"] = attrs.get("NIC_ID", "")
                facts.nics.append(nic_facts)
        user = vm.find("USER_TEMPLATE")
        if user is not None:
            _flatten(user, "user.", s, frozenset())
        history = vm.findall("HISTORY_RECORDS/HISTORY")
        if history:
            last = history[-1]
            for key, tag in (("host", "HOSTNAME"), ("hid", "HID"), ("ds_id", "DS_ID"),
                             ("tm_mad", "TM_MAD"), ("vm_mad", "VM_MAD"), ("seq", "SEQ")):
                value = _text(last.find(tag))
                if value is not None:
                    s[f"history.{key}"] = value
        s["vm.vcpu"] = str(_vcpu(s, facts.problems))
        for key, name, high in (("template.CPU", "vm.cpu", MAX_VCPU), ("template.MEMORY", "vm.memory", MAX_MEMORY)):
            raw = s.get(key)
            if raw is not None and _number(raw, high) is None:
                facts.problems.append(f"{describe(key)}={_shown(raw)} is not a number 0..{high}; {name} left unset")
            elif raw is not None:
                s[name] = raw
        for entry in facts.disks:
            if entry["kind"] == "context":
                # The context CD-ROM lives on the system datastore: its driver is the history's.
                entry.setdefault("tm_mad", s.get("history.tm_mad", ""))
                entry.setdefault("datastore_id", s.get("history.ds_id", ""))
    if domain is not None:
        _domain_facts(domain, facts)
    return facts


def _number(raw: str, high: int) -> float | None:
    """``raw`` as a finite number in 0..high, else None (``1e400``, ``nan``, 20 digits)."""
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if 0 <= value <= high else None  # NaN fails both comparisons


def _shown(raw: str) -> str:
    return repr(raw if len(raw) <= 40 else raw[:37] + "...")


def _vcpu(s: dict[str, str], problems: list[str]) -> int:
    for key in ("template.VCPU", "template.CPU"):
        raw = s.get(key)
        if raw:
            number = _number(raw, MAX_VCPU)
            if number is not None and number > 0:
                return math.ceil(number)
            problems.append(f"{describe(key)}={_shown(raw)} is not a vCPU count 1..{MAX_VCPU}")
    return 1


def _domain_facts(domain: etree._Element, facts: Facts) -> None:
    s = facts.scalars
    s["domain.type"] = domain.get("type", "")
    os_type = domain.find("os/type")
    if os_type is not None:
        s["domain.machine"] = os_type.get("machine", "")
        s["domain.arch"] = os_type.get("arch", "")
    iothreads = _text(domain.find("iothreads"))
    if iothreads is not None:
        s["domain.iothreads"] = iothreads
    vcpu = _text(domain.find("vcpu"))
    if vcpu is not None:
        s["domain.vcpu"] = vcpu
    for ctl in domain.iterfind("devices/controller"):
        model = ctl.get("model")
        facts.controllers.append(f"{ctl.get('type', '')}:{model}" if model else ctl.get("type", ""))
