"""Provenance: what shaped a domain, kept in the domain itself.

A tweaked domain carries, in ``<metadata>``, one element in a namespace of its own::

    <one-tweaks:provenance xmlns:one-tweaks="urn:one-tweaks:provenance:1" version="0.1.0">
      <one-tweaks:rule file="10-iothreads.yaml" path="/.../rules.d/10-iothreads.yaml"
                       sha256="..." name="iothreads" status="applied" tweaks="iothreads"/>
      ...
    </one-tweaks:provenance>

one ``rule`` per rule file in effect (file name, path, SHA-256 of its content; the rule it
holds and what it did; ``tweaks``: the tweaks that changed the domain) and the one-tweaks
version. Each device hot-plugged through the rules (attach_disk-tweaks, attach_nic-tweaks)
adds a ``hotplug`` element after the rules: the device (``disk``/``interface``) and its
target or MAC, the action, the one-tweaks version, and one ``rule`` per rule file that
changed the device (file, path, SHA-256, rule name, tweaks)::

      <one-tweaks:hotplug device="disk" target="vdb" action="attach_disk-tweaks" version="0.1.0">
        <one-tweaks:rule file="10-iothreads.yaml" path="..." sha256="..." name="iothreads"
                         status="applied" tweaks="iothreads"/>
      </one-tweaks:hotplug>

The hot-plug entries say what shaped devices the deploy did not; they are kept when a
later apply (a migration's rules) replaces the stamp, and ``files``/``changed_by`` (what
``drift`` compares) describe the deploy's rules only.

libvirt keeps custom metadata across save/restore and migration, so a running domain
says which rule files it was made with.

The stamp is written outside the Editor: it is never a change in a report, and a second
apply that changes nothing keeps the stamp that is there (same bytes), so idempotence holds.
``read`` is the reader for tools (``one-tweaks drift``): plain lxml, no libvirt.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence

from lxml import etree

from . import __version__
from .record import field, record
from .report import APPLIED, Report

NAMESPACE = "urn:one-tweaks:provenance:1"
PREFIX = "one-tweaks"
_ROOT = f"{{{NAMESPACE}}}provenance"
_RULE = f"{{{NAMESPACE}}}rule"
_HOTPLUG = f"{{{NAMESPACE}}}hotplug"


@record
class RuleEntry:
    file: str
    path: str
    sha256: str
    name: str = ""
    status: str = ""
    tweaks: list[str] = field(default_factory=list)


@record
class Hotplug:
    device: str                  # disk | interface
    target: str                  # the disk's target dev, the NIC's MAC
    action: str
    version: str
    rules: list[RuleEntry] = field(default_factory=list)


@record
class Provenance:
    version: str
    rules: list[RuleEntry] = field(default_factory=list)
    hotplugs: list[Hotplug] = field(default_factory=list)

    def files(self) -> dict[str, str]:
        """file name -> SHA-256 (what drift compares with today's rule files)."""
        return {r.file: r.sha256 for r in self.rules}

    def changed_by(self) -> dict[str, list[str]]:
        """rule name -> the tweaks of it that changed the domain."""
        return {r.name: list(r.tweaks) for r in self.rules if r.status == APPLIED}


def metadata(root: etree._Element) -> etree._Element | None:
    return root.find("metadata")


def find(root: etree._Element) -> etree._Element | None:
    """The provenance element of a ``<domain>``, if it has one."""
    meta = metadata(root)
    return None if meta is None else meta.find(_ROOT)


def read(root: etree._Element) -> Provenance | None:
    """The provenance of a ``<domain>`` element (None without one)."""
    el = find(root)
    if el is None:
        return None
    out = Provenance(version=el.get("version", ""), rules=_rules(el))
    for plug in el.iterfind(_HOTPLUG):
        out.hotplugs.append(Hotplug(device=plug.get("device", ""), target=plug.get("target", ""),
                                    action=plug.get("action", ""), version=plug.get("version", ""),
                                    rules=_rules(plug)))
    return out


def _rules(el: etree._Element) -> list[RuleEntry]:
    out = []
    for rule in el.iterfind(_RULE):
        tweaks = [t for t in rule.get("tweaks", "").split(",") if t]
        out.append(RuleEntry(file=rule.get("file", ""), path=rule.get("path", ""),
                             sha256=rule.get("sha256", ""), name=rule.get("name", ""),
                             status=rule.get("status", ""), tweaks=tweaks))
    return out


def build(report: Report, files: Sequence[tuple[str, str]]) -> etree._Element:
    """The provenance element for one apply; ``files``: (path, SHA-256) of each rule file
    in effect (``loader.RuleSet.hashes``)."""
    by_path = {r.file: r for r in report.results}
    el = etree.Element(_ROOT, nsmap={PREFIX: NAMESPACE})
    el.set("version", __version__)
    for path, digest in files:
        attrs = {"file": os.path.basename(path), "path": path, "sha256": digest}
        result = by_path.get(path)
        if result is not None:
            attrs["name"] = result.name
            attrs["status"] = result.status
            if result.status == APPLIED and result.tweaks:
                attrs["tweaks"] = ",".join(result.tweaks)
        etree.SubElement(el, _RULE, attrs)
    return el


def stamp(root: etree._Element, report: Report, files: Sequence[tuple[str, str]]) -> bool:
    """Record the provenance of this apply in ``root``; True when the domain got a new one.

    A domain that already carries provenance keeps it when this apply changed nothing (the
    rules it was made with are still what made it), so re-applying is idempotent."""
    current = find(root)
    if current is not None and not report.changed:
        return False
    fresh = build(report, files)
    if current is not None:
        for plug in current.iterfind(_HOTPLUG):  # devices the rules shaped since the deploy
            fresh.append(copy.deepcopy(plug))
        parent = current.getparent()
        assert parent is not None
        fresh.tail = current.tail
        parent.replace(current, fresh)
        return True
    meta = metadata(root)
    if meta is None:
        meta = etree.SubElement(root, "metadata")
    meta.append(fresh)
    return True


def hotplug(report: Report, files: Sequence[tuple[str, str]], *, device: str, target: str,
            action: str) -> etree._Element:
    """The ``hotplug`` entry for one device the rules shaped before it was plugged in:
    the rule files of ``files`` whose rule changed it (``report`` of the device's apply)."""
    by_path = {r.file: r for r in report.results}
    el = etree.Element(_HOTPLUG, nsmap={PREFIX: NAMESPACE})
    for key, value in (("device", device), ("target", target), ("action", action), ("version", __version__)):
        el.set(key, value)
    for path, digest in files:
        result = by_path.get(path)
        if result is None or result.status != APPLIED:
            continue
        attrs = {"file": os.path.basename(path), "path": path, "sha256": digest, "name": result.name,
                 "status": result.status}
        if result.tweaks:
            attrs["tweaks"] = ",".join(result.tweaks)
        etree.SubElement(el, _RULE, attrs)
    return el


def with_hotplug(root: etree._Element, entry: etree._Element) -> etree._Element:
    """A new provenance element for ``root`` (a ``<domain>``, left as it is): its stamp
    with ``entry`` appended, or a stamp holding only ``entry`` when it has none (a domain
    deployed without the rules)."""
    current = find(root)
    if current is not None:
        fresh = copy.deepcopy(current)
        _drop_hotplugs(fresh, entry.get("device", ""), entry.get("target", ""))  # a re-plug replaces its entry
    else:
        fresh = etree.Element(_ROOT, nsmap={PREFIX: NAMESPACE})
        fresh.set("version", __version__)
    fresh.append(copy.deepcopy(entry))
    return fresh


def without_hotplug(root: etree._Element, device: str, target: str) -> etree._Element | None:
    """A new provenance element for ``root`` without the hot-plug entries of ``device``
    ``target`` (it was unplugged); None when its stamp has none."""
    current = find(root)
    if current is None:
        return None
    fresh = copy.deepcopy(current)
    return fresh if _drop_hotplugs(fresh, device, target) else None


def _drop_hotplugs(stamp: etree._Element, device: str, target: str) -> int:
    gone = [p for p in stamp.iterfind(_HOTPLUG) if p.get("device") == device and p.get("target") == target]
    for plug in gone:
        stamp.remove(plug)
    return len(gone)
