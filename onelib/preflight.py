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
  in its free pages of that size.

Each failed check is one line; none changes anything on either host.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lxml import etree

from . import numbers, xmldoc
from .config import Config
from .errors import DriverError
from .hypervisor import Hypervisor, deploy_id, vm_id

KIB = 1024


def reasons(domain: etree._Element, dest: Hypervisor) -> list[str]:
    """Why ``domain`` (its live XML) cannot run on ``dest``; [] when every check holds."""
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


def check(domain: etree._Element, dest: Hypervisor, vm: int | str) -> None:
    """``reasons`` as one driver error (the reasons joined by "; ") when any check fails."""
    found = reasons(domain, dest)
    if found:
        raise DriverError(f"VM {vm}: pre-flight refuses {dest.name}: " + "; ".join(found))


def main(argv: Sequence[str]) -> int:
    """``one-tweaks preflight VM HOST``: VM (its id) where oned says it runs, HOST the
    destination. Exit 0 when it can move, 1 with one line per reason, 2 on errors."""
    from .oned import Oned

    p = argparse.ArgumentParser(prog="one-tweaks preflight", description="can a running VM move to HOST?")
    p.add_argument("vm", help="the VM id")
    p.add_argument("host", help="the destination host")
    args = p.parse_args(list(argv))
    try:
        config = Config.load()
        number = vm_id(args.vm)
        doc = Oned(timeout=float(config.integer("API_TIMEOUT") or 30)).vm(number)
        history = doc.findall("HISTORY_RECORDS/HISTORY")
        source = xmldoc.text(history[-1], "HOSTNAME") if history else ""
        if not source:
            raise DriverError(f"VM {number} runs on no host")
        name = deploy_id(xmldoc.text(doc, "DEPLOY_ID") or f"one-{number}")
        with Hypervisor(config, source) as src, Hypervisor(config, args.host) as dest:
            found = reasons(src.domain(name).xml(), dest)
    except DriverError as exc:
        sys.stderr.write(f"one-tweaks preflight: {exc}\n")
        return 2
    for line in found:
        sys.stdout.write(f"{line}\n")
    if not found:
        sys.stdout.write(f"VM {number} can move from {source} to {args.host}\n")
    return 1 if found else 0
