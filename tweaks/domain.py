"""Read helpers over a libvirt domain document shared by tweaks."""

from __future__ import annotations

from lxml import etree

from .xmledit import Editor


def vcpu_count(root: etree._Element) -> int | None:
    """The domain's maximum vCPU count (``<vcpu>`` text), None if absent or unreadable."""
    el = root.find("vcpu")
    if el is None or el.text is None:
        return None
    return _bounded(el.text, MAX_VCPUS)


def memory_kib(root: etree._Element) -> int | None:
    el = root.find("memory")
    if el is None or el.text is None:
        return None
    return to_kib(el.text, el.get("unit"))


# Beyond these a domain is no real VM (QEMU's vCPU limit is 4096, 16 EiB is 2**54 KiB);
# such a value reads as unreadable, so no tweak loops over it or overflows a float.
MAX_VCPUS = 4096
MAX_KIB = 1 << 54


def _bounded(text: str, high: int) -> int | None:
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        return None
    value = int(text)
    return value if 1 <= value <= high else None


def is_virtio_disk(disk: etree._Element) -> bool:
    if disk.get("device", "disk") != "disk":
        return False
    target = disk.find("target")
    if target is None:
        return False
    bus = target.get("bus")
    return bus == "virtio" or (bus is None and (target.get("dev") or "").startswith("vd"))


def virtio_disks(root: etree._Element) -> list[etree._Element]:
    return [d for d in root.iterfind("devices/disk") if is_virtio_disk(d)]


def virtio_scsi_controllers(root: etree._Element) -> list[etree._Element]:
    return [c for c in root.iterfind("devices/controller")
            if c.get("type") == "scsi" and c.get("model") == "virtio-scsi"]


def driver(editor: Editor, device: etree._Element, *, qemu: bool = True) -> etree._Element:
    """The device's ``<driver>``, created (``name='qemu'`` for disks) when missing."""
    attrs = {"name": "qemu"} if qemu else {}
    return editor.child(device, "driver", attrs)


def machine(root: etree._Element) -> str:
    os_type = root.find("os/type")
    return "" if os_type is None else os_type.get("machine", "")


# --- helpers added for the CPU / NUMA / memory tweaks (cpu_numa_alt, vcpu_max, memory_max) ---

_UNIT_KIB = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "kb": 1000 / 1024, "m": 1024,
             "mib": 1024, "mb": 1000**2 / 1024, "g": 1024**2, "gib": 1024**2, "gb": 1000**3 / 1024,
             "t": 1024**3, "tib": 1024**3, "tb": 1000**4 / 1024}
MAX_CPUSET_ID = 65535


def to_kib(text: str | None, unit: str | None) -> int | None:
    """A libvirt scaled integer (``unit`` defaults to KiB) in KiB; None if unreadable."""
    factor = _UNIT_KIB.get((unit or "KiB").lower())
    if text is None or factor is None:
        return None
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        return None
    kib = int(int(text) * factor)
    return kib if kib <= MAX_KIB else None


def element_kib(el: etree._Element | None) -> int | None:
    """``<memory>``-like element (text + optional ``unit``) in KiB."""
    return None if el is None else to_kib(el.text, el.get("unit"))


def vcpu_current(root: etree._Element) -> int | None:
    """vCPUs online at boot: ``<vcpu current=...>``, else the ``<vcpu>`` count."""
    el = root.find("vcpu")
    if el is not None and el.get("current") is not None:
        return _bounded(el.get("current", ""), MAX_VCPUS)
    return vcpu_count(root)


def numa_cells(root: etree._Element) -> list[etree._Element]:
    return root.findall("cpu/numa/cell")


def cell_kib(cell: etree._Element) -> int | None:
    return to_kib(cell.get("memory"), cell.get("unit"))


def cpuset_parse(text: str | None) -> set[int] | None:
    """``0-3,6,^2`` as a set of ids; None when malformed or out of bounds."""
    if text is None:
        return None
    ids: set[int] = set()
    excluded: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        target = ids
        if part.startswith("^"):
            target, part = excluded, part[1:]
        first, dash, last = part.partition("-")
        try:
            lo = int(first)
            hi = int(last) if dash else lo
        except ValueError:
            return None
        if lo < 0 or hi < lo or hi > MAX_CPUSET_ID:
            return None
        target.update(range(lo, hi + 1))
    return ids - excluded


def cpuset_format(ids: list[int] | set[int]) -> str:
    """Sorted ids as libvirt's cpuset text with ranges: ``0-3,8,10-11``."""
    out: list[str] = []
    ordered = sorted(ids)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


def socket_cells(sockets: int, cores: int, threads: int, *, interleave: bool = False) -> list[str]:
    """The cpus of one NUMA cell per socket, for ``sockets*cores*threads`` vCPUs.

    Contiguous: cell i holds socket i's vCPUs (what cpu_topology writes). Interleaved
    (addon-storpool's T_CPU_ALT_NUMA): cores are dealt round-robin over the cells, the
    threads of one core staying together, so cell i holds cores i, i+sockets, ...
    """
    per_cell: list[list[int]] = [[] for _ in range(sockets)]
    for core in range(sockets * cores):
        cell = core % sockets if interleave else core // cores
        per_cell[cell].extend(range(core * threads, (core + 1) * threads))
    return [cpuset_format(ids) for ids in per_cell]


def int_attr(value: str | None, default: int | None = None) -> int | None:
    """An XML attribute as a whole number: ``default`` when absent, None when not a number."""
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        return None


def vcpus_layout(maximum: int, current: int, boot_hotpluggable: dict[str, str] | str) -> list[dict[str, str]]:
    """Per-vCPU ``<vcpus>`` entries QEMU accepts: vCPU 0 online and not hotpluggable, every
    offline vCPU hotpluggable; the other boot vCPUs as ``boot_hotpluggable`` says (one
    word for all, or by id, default no)."""
    def boot(i: int) -> str:
        if isinstance(boot_hotpluggable, str):
            return boot_hotpluggable
        return boot_hotpluggable.get(str(i)) or "no"

    return [{"id": str(i), "enabled": "yes" if i < current else "no",
             "hotpluggable": "no" if i == 0 else "yes" if i >= current else boot(i)} for i in range(maximum)]


def write_vcpus(editor: Editor, root: etree._Element, wanted: list[dict[str, str]]) -> None:
    """Make ``<vcpus>`` exactly ``wanted`` (one element, never a second copy)."""
    existing = root.find("vcpus")
    if existing is not None:
        if [dict(c.attrib) for c in existing if isinstance(c.tag, str)] == wanted:
            return
        editor.remove(existing)
    vcpus = editor.add(root, "vcpus", after=("vcpu",))
    for index, attrs in enumerate(wanted):
        editor.add(vcpus, "vcpu", attrs, index=index)
