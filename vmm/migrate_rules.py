"""The destination XML of a live migration: the running domain's migratable XML with the
VM directory moved and the ``on: [migrate]`` rules applied, validated like a deploy (a
rule that breaks libvirt's schema is rolled back by the engine).

libvirt checks the XML once more against the running guest (its ABI: CPU, devices, ...)
and refuses the migration before anything moves when a change would alter what the guest
sees. ``without`` then builds the XML again without the rule libvirt's reason points at,
so the migration goes ahead with the other rules' changes; the caller logs each rule
rolled back. Only the migrate override imports this module, never the deploy path.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING

from lxml import etree

from onelib import log
from onelib.config import Config
from onelib.hypervisor import Hypervisor, metadata_dir, relocate

if TYPE_CHECKING:
    from tweaks.rules import Rule

# libvirt's reasons for refusing a migration XML before anything moves (its ABI check of
# the new definition against the running guest, or a definition it cannot parse).
_REFUSALS = ("unsupported configuration", "does not match source", "don't match the source", "XML error",
             "not defined in iothreadid")
# Which part of the domain a refusal is about, to pick the rule to roll back first.
_TOPICS = (("CPU", "/domain/cpu"), ("iothread", "iothread"), ("graphics", "/domain/devices/graphics"),
           ("isk", "/domain/devices/disk"), ("ontroller", "/domain/devices/controller"))


class Destination:
    """The rules for a migration and what they make of the domain."""

    def __init__(self, base: etree._Element, moved: bool, vm: etree._Element | None, rules: list[Rule],
                 facts: Mapping[str, str]) -> None:
        self.base = base          # migratable XML, VM directory moved
        self.moved = moved        # the VM directory moved: --xml is needed even without rules
        self.vm = vm
        self.rules = rules
        self.facts = dict(facts)
        self.applied: list[str] = []
        self.paths: dict[str, list[str]] = {}   # rule -> XPaths it changed
        self.warnings: list[str] = []

    def xml(self, excluded: Collection[str] = ()) -> bytes | None:
        """The XML for ``--xml`` without the rules in ``excluded``; None when nothing
        differs from what libvirt would send by itself."""
        from tweaks import engine
        from tweaks.errors import TweakError
        from tweaks.validate import DomainSchema

        rules = [r for r in self.rules if r.name not in excluded]
        tree = etree.ElementTree(copy.deepcopy(self.base))
        if not rules:
            self.applied = []
            return etree.tostring(tree) if self.moved else None
        vm = etree.ElementTree(self.vm) if self.vm is not None else None
        try:
            outcome = engine.apply_rules(tree, vm, rules, schema=DomainSchema(), moment="migrate",
                                         moment_facts=self.facts)
        except TweakError as exc:
            # Rules never block a migration: it goes ahead as libvirt would do it by itself.
            self.warnings, self.applied = [f"migrate rules not applied: {exc}"], []
            return etree.tostring(etree.ElementTree(copy.deepcopy(self.base))) if self.moved else None
        self.warnings = list(outcome.report.warnings)
        self.applied = [r.name for r in outcome.report.results if r.status == "applied"]
        self.paths = {r.name: [c.xpath for c in r.changes] for r in outcome.report.results if r.status == "applied"}
        if not self.applied and not self.moved:
            return None
        return engine.serialize(outcome.tree)

    def culprit(self, reason: str) -> str | None:
        """The applied rule to roll back for libvirt's refusal ``reason``: one whose changes
        are about what the reason names, else the last one applied; None when the refusal
        is not about the XML or no rule changed it."""
        if not self.applied or not any(marker in reason for marker in _REFUSALS):
            return None
        for word, path in _TOPICS:
            if word in reason:
                for name in reversed(self.applied):
                    if any(path in p for p in self.paths.get(name, [])):
                        return name
        return self.applied[-1]


def prepare(config: Config, source: Hypervisor, dest_host: str, domain: str, live: etree._Element,
            target: str, vm: etree._Element | None,
            dest_facts: Callable[[str, str], str]) -> Destination:
    """The migratable XML read from the source, the VM directory moved to ``target``, and the
    migrate rules that apply; ``dest_facts(name, virt_type)`` asks the destination for a fact
    (only those the enabled migrate rules mention are asked for)."""
    from tweaks import loader
    from tweaks.errors import TweakError

    migratable = source.dumpxml(domain, migratable=True)
    current = metadata_dir(live)
    moved = bool(target and current and current != target and relocate(migratable, current, target))
    if moved:
        log.info(f"{domain}: VM directory {current} becomes {target} on the destination")
    try:
        rules = [r for r in loader.load(config.get("TWEAKS_RULES_DIRS").split()).rules
                 if r.runs_at("migrate") and (r.enabled or r.errors)]
    except TweakError as exc:
        # Broken rule directories must not block a migration: migrate without rules.
        log.error(f"{domain}: migrate rules not applied: {exc}")
        rules = []
    facts = {"dest.host": dest_host}
    wanted = repr([(r.when, [c.params for c in r.calls]) for r in rules if r.enabled])
    for name in ("dest.address", "dest.cpu_features"):
        if name in wanted:
            value = dest_facts(name, migratable.get("type", "kvm"))
            if value:
                facts[name] = value
    return Destination(migratable, moved, vm, list(rules), facts)
