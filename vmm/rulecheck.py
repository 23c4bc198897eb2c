"""Does a domain still satisfy the rules? (restore-tweaks, on the saved domain before it runs
again.)

The rules that shaped a domain at deploy are applied again, in memory, to the domain as
libvirt saved it, with the VM's document of now; a rule that would change it differs (the
rule file changed since the VM was deployed, or the VM's attributes did). That is reported,
one line to the VM log, never a failure: the VM is restored as it was saved.
"""

from __future__ import annotations

import copy

from lxml import etree

from onelib import log
from onelib.config import Config


def differing_rules(domain: etree._Element, vm: etree._Element, config: Config) -> list[str]:
    """``rule (XPATH, ...)`` for each rule that would change ``domain`` if it were deployed now."""
    from tweaks import engine, loader
    from tweaks.report import APPLIED
    from tweaks.rules import DEPLOY

    ruleset = loader.load(config.get("TWEAKS_RULES_DIRS").split())
    outcome = engine.apply_rules(etree.ElementTree(copy.deepcopy(domain)), etree.ElementTree(copy.deepcopy(vm)),
                                 ruleset.rules, moment=DEPLOY)
    out = []
    for result in outcome.report.results:
        if result.status == APPLIED:
            where = sorted(dict.fromkeys(c.xpath for c in result.changes))
            shown = ", ".join(where[:3]) + (", ..." if len(where) > 3 else "")
            out.append(f"{result.name} ({shown})")
    return out


def warn_if_differs(domain: etree._Element, vm: etree._Element, vm_id: int, action: str) -> list[str]:
    """The check, reported to the VM log; any failure of the check itself is only logged."""
    try:
        differ = differing_rules(domain, vm, Config.load())
    except Exception as exc:  # a check must never cost the VM its restore
        log.vm_log(vm_id, f"{action}: could not check the domain against the rules: {exc}")
        return []
    if differ:
        log.vm_log(vm_id, f"{action}: warning: the saved domain differs from the rules now: "
                          + "; ".join(differ) + " (restored as saved; a fresh deploy would apply them)")
    return differ
