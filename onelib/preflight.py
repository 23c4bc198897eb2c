"""Pre-flight of a live migration: can the running domain run on the destination host?
Asked of the destination's libvirt (``onelib.hypervisor``) before anything moves; used by
``one-tweaks preflight VM HOST``, migrate-tweaks and the block drivers' tm premigrate.

- the CPU: a custom CPU definition (named model, required features) is compared with what
  the destination's hypervisor offers (``compareHypervisorCPU``);
- the machine type and the firmware: the destination's domain capabilities
  (``getDomainCapabilities`` for the domain's emulator, arch, machine and virt type) must
  list the machine type, and the loader when the domain names one; the NVRAM template the
  domain names must exist there;
- memory: the domain's memory fits in the destination's free memory, or, with hugepages,
  in its free pages of that size;
- network disks (Ceph RBD): the libvirt secret each disk's ``<auth>`` names (by UUID, or
  by usage) is defined on the destination (``secretLookupByUUIDString``);
- volumes: the storage side's answers (``datastore.preflight.volume_reasons``: each
  volume exists and the destination can attach it) are passed in and reported alike.

Each failed check is one line; none changes anything on either host. The command
``one-tweaks preflight`` is ``datastore.preflight.main`` (it needs both sides).
"""

from __future__ import annotations

from collections.abc import Sequence

from lxml import etree

from . import numbers, xmldoc
from .errors import DriverError
from .hypervisor import Hypervisor, disk_target

KIB = 1024


def reasons(domain: etree._Element, dest: Hypervisor, volumes: Sequence[str] = ()) -> list[str]:
    """Why ``domain`` (its live XML) cannot run on ``dest``; [] when every check holds.
    ``volumes``: the storage side's reasons, already one line each."""
    out: list[str] = []
    os_type = domain.find("os/type")
    arch = os_type.get("arch") if os_type is not None else None
    machine = os_type.get("machine") if os_type is not None else None
    virt = domain.get("type") or "kvm"
    emulator = xmldoc.text(domain, "devices/emulator") or None
    where = dest.name
    cpu = domain.find("cpu")
    if cpu is not None and (cpu.find("model") is not None or cpu.find("feature") is not None) \
            and cpu.get("mode", "custom") == "custom":
        why = dest.compare_cpu(etree.tostring(cpu).decode(), emulator=emulator, arch=arch, virttype=virt)
        if why is not None:
            out.append(f"{where}: the CPU the domain requires is not available: {why}")
    try:
        caps = dest.domain_capabilities(emulator=emulator, arch=arch, machine=machine, virttype=virt)
    except DriverError as exc:
        out.append(f"{where}: no {virt} guests of machine type {machine} ({exc})")
        caps = None
    if caps is not None:
        loader = domain.find("os/loader")
        offered = {el.text for el in caps.iterfind("os/loader/value")}
        path = (loader.text or "").strip() if loader is not None else ""
        if path and path not in offered and not dest.shell.ok(["test", "-f", path]):
            out.append(f"{where}: firmware loader {path} is not there")
    nvram = domain.find("os/nvram")
    template = nvram.get("template") if nvram is not None else None
    if template and not dest.shell.ok(["test", "-f", template]):
        out.append(f"{where}: NVRAM template {template} is missing")
    out.extend(_memory(domain, dest))
    out.extend(_secrets(domain, dest))
    out.extend(volumes)
    return out


def _secrets(domain: etree._Element, dest: Hypervisor) -> list[str]:
    """Network disks authenticate with a libvirt secret of the host they run on."""
    out: list[str] = []
    seen: set[tuple[str, str]] = set()
    for disk in domain.iterfind("devices/disk[@type='network']"):
        secret = disk.find("auth/secret") if disk.find("auth/secret") is not None else disk.find("source/auth/secret")
        if secret is None:
            continue
        kind = secret.get("type", "ceph")
        key = secret.get("uuid") or secret.get("usage") or ""
        if not key or (kind, key) in seen:
            continue
        seen.add((kind, key))
        by = "uuid" if secret.get("uuid") else "usage"
        if not dest.has_secret(kind, **{by: key}):
            source = disk.find("source")
            name = source.get("name", "") if source is not None else ""
            out.append(f"{dest.name}: libvirt has no {kind} secret {by} {key} for network disk "
                       f"{disk_target(disk) or name}")
    return out


def _memory(domain: etree._Element, dest: Hypervisor) -> list[str]:
    unit = {"b": 1, "bytes": 1, "k": KIB, "kib": KIB, "m": KIB**2, "mib": KIB**2, "g": KIB**3, "gib": KIB**3}
    el = domain.find("currentMemory") if domain.find("currentMemory") is not None else domain.find("memory")
    raw = (el.text or "").strip() if el is not None else ""
    if el is None or not numbers.is_whole(raw):
        return []
    need = int(raw) * unit.get(el.get("unit", "KiB").lower(), KIB)
    pages = domain.find("memoryBacking/hugepages")
    if pages is not None:
        page = pages.find("page")
        size = page.get("size", "") if page is not None else ""
        size_kib = int(size) if numbers.is_whole(size) else 2048
        free = dest.free_pages(size_kib) * size_kib * KIB
        if free < need:
            return [f"{dest.name}: {need // KIB**2} MiB of {size_kib} KiB hugepages needed, "
                    f"{free // KIB**2} MiB free"]
        return []
    free = dest.free_memory()
    if free < need:
        return [f"{dest.name}: {need // KIB**2} MiB of memory needed, {free // KIB**2} MiB free"]
    return []


def check(domain: etree._Element, dest: Hypervisor, vm: int | str, volumes: Sequence[str] = ()) -> None:
    """``reasons`` as one driver error (the reasons joined by "; ") when any check fails."""
    found = reasons(domain, dest, volumes)
    if found:
        raise DriverError(f"VM {vm}: pre-flight refuses {dest.name}: " + "; ".join(found))
