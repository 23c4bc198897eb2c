"""Pre-flight of a live migration, storage side: can every volume of the VM be attached on
the destination host? Used by migrate-tweaks (vmm), tm premigrate (tm) and ``one-tweaks
preflight`` with the hypervisor side (``onelib.preflight``), so it lives below both.

Each disk of the VM document (and its context CD-ROM) whose TM_MAD (the system
datastore's for volatile disks and the context) is a one-tweaks backend is asked of that
backend through ``Backend.attachable`` (the volume exists, the host could attach it) with
the destination as ``Driver.host`` resolves it (for block backends: a host the backend
can attach to at all); network backends are asked about the volume alone, their hosts
need a libvirt secret instead (``onelib.preflight``), and their context CD-ROM is a file
that moves with the VM directory, not a volume. Nothing is attached: each answer
is one line, "" never. Disks of other drivers (OpenNebula's own) are not ours to judge.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lxml import etree

from onelib import numbers, preflight, xmldoc
from onelib.config import Config
from onelib.errors import DriverError
from onelib.hypervisor import Hypervisor, deploy_id, vm_id
from onelib.oned import Oned

from .backends import find
from .driver import Driver
from .vmdisks import VmDisk, vm_disk


def _disk_ids(vm: etree._Element) -> list[int]:
    template = vm.find("TEMPLATE")
    ids = [int(raw) for raw in (xmldoc.text(d, "DISK_ID") for d in template.iterfind("DISK"))
           if numbers.is_whole(raw, 10)] if template is not None else []
    context = xmldoc.text(template, "CONTEXT/DISK_ID") if template is not None else ""
    if numbers.is_whole(context, 10):
        ids.append(int(context))
    return ids


def volume_reasons(vm: etree._Element, host: str, oned: Oned, config: Config | None = None) -> list[str]:
    """Why a volume of ``vm`` (oned's VM document) could not be attached on ``host``; []
    when every one can (or none is a one-tweaks backend's)."""
    number = numbers.object_id(xmldoc.text(vm, "ID"), "VM id")
    history = vm.findall("HISTORY_RECORDS/HISTORY")
    system_tm = xmldoc.text(history[-1], "TM_MAD") if history else ""
    system_ds = xmldoc.text(history[-1], "DS_ID") if history else ""
    groups: dict[tuple[str, str], list[VmDisk]] = {}
    for wanted in _disk_ids(vm):
        disk = vm_disk(vm, wanted)
        tm_mad = disk.tm_mad or system_tm
        if find(tm_mad) is None:
            continue
        ds = str(disk.datastore_id) if disk.datastore_id is not None and disk.kind != "context" else system_ds
        groups.setdefault((tm_mad, ds), []).append(disk)
    out: list[str] = []
    unusable: dict[tuple[str, str], list[int]] = {}  # (driver, reason) -> disks: one line each
    for (tm_mad, ds), disks in groups.items():
        try:
            datastore = oned.datastore(int(ds)) if numbers.is_whole(ds, 10) else None
            drv = Driver(tm_mad, datastore, oned=oned, config=config)
            target = drv.host(host) if drv.backend_class.disk_form == "block" else None
        except DriverError as exc:
            unusable.setdefault((tm_mad, str(exc)), []).extend(d.disk_id for d in disks)
            continue
        try:
            for disk in disks:
                if disk.kind == "context" and drv.backend_class.disk_form == "network":
                    # a network backend's context ISO is the file disk.N (tm/actions/context.py),
                    # which premigrate copies with the VM directory: no volume to ask about
                    continue
                try:
                    why = drv.backend.attachable(disk.volume(drv.names, number), target)
                except DriverError as exc:
                    why = str(exc)
                if why:
                    out.append(f"{host}: disk {disk.disk_id}: {why}")
        finally:
            drv.backend.close()
    for (tm_mad, why), ids in unusable.items():
        out.insert(0, f"{host}: disk {', '.join(map(str, sorted(ids)))} ({tm_mad}): {why}")
    return out


def main(argv: Sequence[str]) -> int:
    """``one-tweaks preflight VM HOST``: VM (its id) where oned says it runs, HOST the
    destination. Exit 0 (one line on stdout) when it can move; 1 with one line per reason
    on stderr; 2 when the check itself could not run."""
    p = argparse.ArgumentParser(prog="one-tweaks preflight", description="can a running VM move to HOST?")
    p.add_argument("vm", help="the VM id")
    p.add_argument("host", help="the destination host")
    args = p.parse_args(list(argv))
    try:
        config = Config.load()
        number = vm_id(args.vm)
        oned = Oned(timeout=float(config.integer("API_TIMEOUT") or 30))
        doc = oned.vm(number)
        history = doc.findall("HISTORY_RECORDS/HISTORY")
        source = xmldoc.text(history[-1], "HOSTNAME") if history else ""
        if not source:
            raise DriverError(f"VM {number} runs on no host")
        name = deploy_id(xmldoc.text(doc, "DEPLOY_ID") or f"one-{number}")
        with Hypervisor(config, source) as src, Hypervisor(config, args.host) as dest:
            found = preflight.reasons(src.domain(name).xml(), dest, volume_reasons(doc, dest.name, oned, config))
    except DriverError as exc:
        sys.stderr.write(f"one-tweaks preflight: {exc}\n")
        return 2
    for line in found:
        sys.stderr.write(f"{line}\n")
    if not found:
        sys.stdout.write(f"VM {number} can move from {source} to {args.host}\n")
    return 1 if found else 0
