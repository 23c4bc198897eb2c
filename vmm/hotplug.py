"""The rules on a device about to be hot-plugged (attach_disk-tweaks, attach_nic-tweaks): the
same rule files as deploy, through ``tweaks.device``, in the context of the running domain.

A broken rule set never blocks the attach: the device goes in as oned built it, and the VM
log says why (as deploy-tweaks does for a deploy).
"""

from __future__ import annotations

from lxml import etree

from onelib import log
from onelib.config import Config


def shape(device: etree._Element, live: etree._Element, vm: etree._Element, vm_id: int, config: Config,
          action: str) -> etree._Element:
    """``device`` as the rules shape it inside the running domain ``live``."""
    from tweaks import device as rules_on_device
    from tweaks import loader
    from tweaks.errors import TweakError
    from tweaks.validate import DomainSchema

    extra = config.get("TWEAKS_RULES_DIRS").split()
    try:
        ruleset = loader.load(extra)
        shaped = rules_on_device.apply_to_device(etree.ElementTree(live), device, etree.ElementTree(vm),
                                                 ruleset.rules, schema=DomainSchema())
    except TweakError as exc:
        log.vm_log(vm_id, f"{action}: tweaks not applied: {exc}", severity="ERROR")
        return device
    for warning in shaped.outcome.report.warnings:
        log.vm_log(vm_id, f"{action}: {warning}")
    if shaped.rules:
        log.info(f"VM {vm_id}: {action}: rules applied: {', '.join(shaped.rules)}")
    return shaped.device
