"""The rules on a device about to be hot-plugged (attach_disk-tweaks, attach_nic-tweaks): the
same rule files as deploy, through ``tweaks.device``, in the context of the running domain.
After the plug, the running domain's provenance stamp (``tweaks.provenance``) records it:
a ``hotplug`` entry naming the device and the rule files (with their SHA-256) and tweaks
that changed it, set with libvirt's setMetadata (live; the persistent definition too when
the domain has one).

A broken rule set never blocks the attach: the device goes in as oned built it, and the VM
log says why (as deploy-tweaks does for a deploy). A stamp libvirt refuses never undoes
the attach either: the VM log says so.
"""

from __future__ import annotations

from lxml import etree

from onelib import log
from onelib.config import Config
from onelib.errors import DriverError
from onelib.hypervisor import Domain
from tweaks.record import record


@record
class Shaped:
    device: etree._Element
    stamp: etree._Element | None  # the provenance ``hotplug`` entry; None when the rules did not run


def shape(device: etree._Element, live: etree._Element, vm: etree._Element, vm_id: int, config: Config,
          action: str, *, target: str) -> Shaped:
    """``device`` as the rules shape it inside the running domain ``live``, with its
    provenance entry (``target``: the disk's target, the NIC's MAC)."""
    from tweaks import device as rules_on_device
    from tweaks import loader, provenance
    from tweaks.errors import TweakError
    from tweaks.validate import DomainSchema

    extra = config.get("TWEAKS_RULES_DIRS").split()
    try:
        ruleset = loader.load(extra)
        shaped = rules_on_device.apply_to_device(etree.ElementTree(live), device, etree.ElementTree(vm),
                                                 ruleset.rules, schema=DomainSchema())
    except TweakError as exc:
        log.vm_log(vm_id, f"{action}: tweaks not applied: {exc}", severity="ERROR")
        return Shaped(device, None)
    for warning in shaped.outcome.report.warnings:
        log.vm_log(vm_id, f"{action}: {warning}")
    if shaped.rules:
        log.info(f"VM {vm_id}: {action}: rules applied: {', '.join(shaped.rules)}")
    entry = provenance.hotplug(shaped.outcome.report, ruleset.hashes, device=device.tag, target=target,
                               action=action)
    return Shaped(shaped.device, entry)


def stamp(dom: Domain, shaped: Shaped, vm_id: int, action: str) -> None:
    """Record the plugged device in the running domain's provenance (read again now: the
    domain's XML after the plug)."""
    if shaped.stamp is None:
        return
    from tweaks import provenance

    try:
        element = provenance.with_hotplug(dom.xml(), shaped.stamp)
        dom.set_metadata(element, key=provenance.PREFIX, namespace=provenance.NAMESPACE)
    except DriverError as exc:
        log.vm_log(vm_id, f"{action}: device attached, its provenance not recorded: {exc}", severity="ERROR")
