"""Rules on one device: a ``<disk>`` or ``<interface>`` about to be hot-plugged into a
running domain gets what the same device would have got at deploy.

The new device is put into a copy of the running domain where oned would have written
it (disks in DISK_ID order, NICs in NIC_ID order), and the rules run on that copy with
the tweaks that can work on a device alone (``Tweak.fragments``): the same round-robin
of iothreads the disk would have had, queue counts bounded by the domain's vCPUs, the
same serial and driver settings. Only the device is taken back; what the rules would
change elsewhere in the copy never reaches the running domain.

Which rules: those whose ``on`` lists ``hotplug``, and plain deploy rules (no ``on``),
whose device-level tweaks shape a hot-plugged device as they shaped its siblings (see
``Rule.shapes_hotplug``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence

from lxml import etree

from . import registry
from .engine import Outcome, apply_rules
from .errors import InputError, TweakError
from .record import record
from .rules import HOTPLUG, Rule
from .validate import DomainSchema

DEVICE_TAGS = ("disk", "interface")
_DISK_ID = re.compile(r"/disk\.([0-9]{1,6})\Z")
_NIC_ID = re.compile(r"one-[0-9]+-([0-9]{1,6})\Z")


@record
class DeviceOutcome:
    device: etree._Element
    outcome: Outcome
    rules: list[str]  # names of the rules that changed the device


def device_rules(rules: Sequence[Rule], tag: str) -> list[Rule]:
    """The rules that shape a hot-plugged ``tag``, each cut down to its calls of tweaks
    that work on such a device alone (rules left with none are dropped)."""
    out: list[Rule] = []
    for rule in rules:
        if not rule.shapes_hotplug():
            continue
        calls = []
        for call in rule.calls:
            try:
                tweak = registry.get(call.tweak)
            except TweakError:
                continue
            if tag in tweak.fragments:
                calls.append(call)
        if calls or rule.errors:
            out.append(Rule(name=rule.name, file=rule.file, line=rule.line, description=rule.description,
                            enabled=rule.enabled, when=rule.when, calls=calls, errors=list(rule.errors),
                            on=[HOTPLUG], on_given=True))
    return out


def apply_to_device(
    domain: etree._ElementTree,
    device: etree._Element,
    vm: etree._ElementTree | None,
    rules: Sequence[Rule],
    *,
    schema: DomainSchema | None = None,
    warn: Callable[[str], None] | None = None,
) -> DeviceOutcome:
    """``device`` as the rules shape it inside ``domain`` (the running domain's XML, left
    untouched). Schema problems and failing tweaks are rolled back per rule, as at deploy."""
    if device.tag not in DEVICE_TAGS:
        raise InputError(f"rules apply to a <disk> or an <interface>, not <{device.tag}>")
    if domain.getroot().tag != "domain":
        raise InputError(f"domain XML: root element is <{domain.getroot().tag}>, not <domain>")
    work = copy.deepcopy(domain.getroot())
    devices = work.find("devices")
    if devices is None:
        devices = etree.SubElement(work, "devices")
    index = _insert(devices, copy.deepcopy(device))
    outcome = apply_rules(etree.ElementTree(work), vm, device_rules(rules, device.tag), schema=schema,
                          warn=warn, moment=HOTPLUG)
    shaped = outcome.tree.getroot().findall(f"devices/{device.tag}")[index]
    _keep_to_running(shaped, domain.getroot(), outcome, warn)
    changed = [r.name for r in outcome.report.results if r.status == "applied"]
    return DeviceOutcome(copy.deepcopy(shaped), outcome, changed)


def _order(el: etree._Element) -> int | None:
    """DISK_ID / NIC_ID of a device oned wrote (its ``disk.N`` source, its ``one-V-N`` target)."""
    if el.tag == "disk":
        source = el.find("source")
        path = "" if source is None else source.get("dev") or source.get("file") or ""
        match = _DISK_ID.search(path)
    else:
        target = el.find("target")
        match = _NIC_ID.fullmatch("" if target is None else target.get("dev", ""))
    return int(match.group(1)) if match else None


def _insert(devices: etree._Element, new: etree._Element) -> int:
    """Put ``new`` where oned puts it at deploy; its index among its kind."""
    same = devices.findall(new.tag)
    order = _order(new)
    position = len(same)
    if order is not None:
        for i, el in enumerate(same):
            other = _order(el)
            if other is not None and other > order:
                position = i
                break
    if position < len(same):
        same[position].addprevious(new)
    elif same:
        same[-1].addnext(new)
        new.tail, same[-1].tail = same[-1].tail, new.tail
    else:
        devices.append(new)
    return position


def _keep_to_running(shaped: etree._Element, running: etree._Element, outcome: Outcome,
                     warn: Callable[[str], None] | None) -> None:
    """A device may only refer to what the running domain has: an iothread the rules
    would have added at deploy (the domain was made without them) is left out."""
    drv = shaped.find("driver")
    wanted = drv.get("iothread") if drv is not None else None
    if drv is None or wanted is None:
        return
    text = (running.findtext("iothreads") or "").strip()
    have = int(text) if text.isdigit() else 0
    if wanted.isdigit() and 1 <= int(wanted) <= have:
        return
    del drv.attrib["iothread"]
    line = (f"VM {outcome.facts.vm_id}: iothread {wanted} is not in the running domain ({have} iothreads); "
            "the device is attached without one")
    outcome.report.warnings.append(line)
    if warn is not None:
        warn(line)
