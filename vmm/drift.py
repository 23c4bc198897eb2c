"""``one-tweaks drift [--host H] [--rules DIR]... [--json] [VM...]``: do the running domains
still match the rules of now?

For each running domain of OpenNebula on host H (libvirt-python through
``onelib.hypervisor``: ``qemu+ssh://H/system``, or ``qemu:///system`` without ``--host``),
or only the VMs named (VM ids, domain names or UUIDs):

- the domain's own inputs are read from its VM directory on the host (the directory oned
  wrote into the domain's ``one:system_datastore`` metadata): the VM document ``vm.xml``
  that deploy-tweaks keeps there, the latest ``deployment.N`` (the domain as deployed) and
  ``deployment.N.oned``, oned's domain XML before any rule touched it;
- today's rule files (shipped, ``/etc/one/tweaks.d``, TWEAKS_RULES_DIRS, ``--rules``) are
  applied to oned's domain XML in memory, as a deploy now would, and the result is compared
  with the domain as deployed: every difference is listed (``XPATH: deployed -> now``) with
  the rule of today that makes it, or none (a rule that shaped the VM is gone or no longer
  matches, so a deploy now would not do what it did). Without ``deployment.N.oned`` (a VM
  deployed before it was kept) the rules are applied to the deployed domain instead, which
  shows what a rule would change but not what a vanished rule did;
- the provenance stamp in the running domain's ``<metadata>`` (rule files with their
  SHA-256, the tweaks each applied) is compared with today's files: changed, added and
  removed rule files are named, with the rule each holds.

A VM drifts when a rule would change it now, or when a rule file that shaped it (applied
at deploy) changed or is gone. Exit 0: nothing drifts; 1: some VM drifts; 2: a VM could
not be checked (one line each) and none drifts. ``--json`` prints one document for
monitoring. Nothing on the host is changed.
"""

from __future__ import annotations

import argparse
import json
import posixpath
import re
import sys
from collections.abc import Sequence
from typing import Any

from lxml import etree

from onelib import xmldoc
from onelib.config import Config
from onelib.errors import DriverError
from onelib.hypervisor import Domain, Hypervisor, metadata_dir
from tweaks.record import field, record

_DEPLOYMENT = re.compile(r"deployment\.([0-9]{1,6})")
_ONE_NAME = re.compile(r"one-([0-9]{1,9})")


@record
class VmDrift:
    domain: str
    vm: str = ""
    changes: list[dict[str, Any]] = field(default_factory=list)      # rule, xpath, before, after
    changed_files: list[dict[str, str]] = field(default_factory=list)  # file, rule, how
    inputs: str = ""
    error: str = ""

    @property
    def drifts(self) -> bool:
        return bool(self.changes) or any(f["shaped"] == "yes" for f in self.changed_files)

    def as_dict(self) -> dict[str, Any]:
        return {"vm": self.vm, "domain": self.domain, "drift": self.drifts, "changes": self.changes,
                "rule_files": self.changed_files, "inputs": self.inputs, "error": self.error}


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="one-tweaks drift",
                                description="compare running domains with what today's rules would make of them")
    p.add_argument("vms", nargs="*", metavar="VM", help="VM ids, domain names or UUIDs (default: every VM)")
    p.add_argument("--host", default="localhost", help="the OpenNebula host (default: this machine)")
    p.add_argument("--rules", action="append", default=[], metavar="DIR", help="an extra rule directory")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = p.parse_args(list(argv))
    try:
        config = Config.load()
        results = check_host(config, args.host, args.vms, args.rules)
    except DriverError as exc:
        sys.stderr.write(f"one-tweaks drift: {exc}\n")
        return 2
    if args.json:
        doc = {"host": args.host, "drifted": sum(r.drifts for r in results),
               "vms": [r.as_dict() for r in results]}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write("".join(line + "\n" for r in results for line in text(r, args.host)))
    if any(r.drifts for r in results):
        return 1
    return 2 if any(r.error for r in results) else 0


def text(r: VmDrift, host: str) -> list[str]:
    head = f"VM {r.vm or '?'} ({r.domain} on {host})"
    if r.error:
        return [f"{head}: not checked: {r.error}"]
    lines = [f"{head}: {'drifts' if r.drifts else 'no drift'}"]
    for c in r.changes:
        change = f"{c['xpath']}: {_show(c['before'])} -> {_show(c['after'])}"
        if c["rule"]:
            lines.append(f"  rule {c['rule']} would change {change}")
        else:
            lines.append(f"  a deploy now would change {change} (no rule of today's sets it)")
    for f in r.changed_files:
        rule = f" (rule {f['rule']})" if f["rule"] else ""
        lines.append(f"  rule file {f['file']}{rule} {f['how']} since the VM started")
    return lines


def _show(value: str | None) -> str:
    return "(none)" if value is None else repr(value)


def check_host(config: Config, host: str, wanted: Sequence[str], extra_rules: Sequence[str]) -> list[VmDrift]:
    from tweaks import loader

    ruleset = loader.load([*config.get("TWEAKS_RULES_DIRS").split(), *extra_rules])
    with Hypervisor(config, host) as hv:
        domains = _select(hv, wanted)
        return [check_domain(hv, dom, ruleset, config) for dom in domains]


def _select(hv: Hypervisor, wanted: Sequence[str]) -> list[Domain | str]:
    if not wanted:
        return [d for d in hv.domains() if _ONE_NAME.fullmatch(d.name) or metadata_dir(d.xml())]
    out: list[Domain | str] = []
    for raw in wanted:
        name = f"one-{raw}" if raw.isascii() and raw.isdigit() else raw
        found = hv.lookup(name)
        out.append(found if found is not None else name)
    return out


def check_domain(hv: Hypervisor, dom: Domain | str, ruleset: Any, config: Config | None = None) -> VmDrift:
    if isinstance(dom, str):
        return VmDrift(domain=dom, error=f"no running domain {dom} on {hv.name}")
    result = VmDrift(domain=dom.name)
    try:
        live = dom.xml()
        vm_dir = metadata_dir(live)
        if not vm_dir:
            raise DriverError("the domain names no VM directory (no one:system_datastore metadata)")
        vm = _read(hv, posixpath.join(vm_dir, "vm.xml"), "the VM document")
        result.vm = xmldoc.text(vm, "ID")
        deployed, where, original = _deployment(hv, vm_dir, live)
        result.inputs = f"{where} and {posixpath.join(vm_dir, 'vm.xml')}"
        supplied = _storage_facts(hv, vm_dir, vm, config)
        if original is None:
            result.changes = _would_change(deployed, vm, ruleset, supplied)
        else:
            result.changes = _differs(original, deployed, vm, ruleset, supplied)
        result.changed_files = _changed_files(live, ruleset)
    except DriverError as exc:
        result.error = str(exc)
    return result


def _read(hv: Hypervisor, path: str, what: str) -> etree._Element:
    proc = hv.shell.run(["cat", "--", path], check=False)
    if proc.returncode != 0:
        raise DriverError(f"{what} {path} cannot be read on {hv.name}")
    return xmldoc.parse(proc.stdout, f"{path} on {hv.name}")


def _deployment(hv: Hypervisor, vm_dir: str,
                live: etree._Element) -> tuple[etree._Element, str, etree._Element | None]:
    """The latest ``deployment.N`` in the VM directory (the running domain's own XML when the
    directory has none: a host that got the VM without its files) and oned's domain XML of
    that deployment (``deployment.N.oned``) when deploy-tweaks kept it."""
    proc = hv.shell.run(["ls", "-1", "--", vm_dir], check=False)
    names = proc.stdout.decode(errors="replace").split()
    numbers = [int(m.group(1)) for name in names if (m := _DEPLOYMENT.fullmatch(name))]
    if not numbers:
        return live, "the running domain", None
    name = f"deployment.{max(numbers)}"
    path = posixpath.join(vm_dir, name)
    original = _read(hv, f"{path}.oned", "oned's deployment file") if f"{name}.oned" in names else None
    return _read(hv, path, "the deployment file"), path, original


def _storage_facts(hv: Hypervisor, vm_dir: str, vm: etree._Element, config: Config | None) -> Any:
    """The storage side's facts as deploy-tweaks supplied them: with the system datastore's
    document it kept as ``ds.xml`` (``system_ds.*``) when that is there."""
    from datastore.facts import storage_facts

    proc = hv.shell.run(["cat", "--", posixpath.join(vm_dir, "ds.xml")], check=False)
    datastore = None
    if proc.returncode == 0 and proc.stdout.strip():
        try:
            datastore = xmldoc.parse(proc.stdout, "ds.xml")
        except DriverError:
            datastore = None
    return storage_facts(vm, datastore, config)


def _would_change(domain: etree._Element, vm: etree._Element, ruleset: Any,
                  supplied: Any = None) -> list[dict[str, Any]]:
    import copy

    from tweaks import engine
    from tweaks.errors import TweakError
    from tweaks.report import APPLIED

    try:
        outcome = engine.apply_rules(etree.ElementTree(copy.deepcopy(domain)), etree.ElementTree(copy.deepcopy(vm)),
                                     ruleset.rules, supplied=supplied)
    except TweakError as exc:
        raise DriverError(f"the rules cannot be applied: {exc}") from None
    return [{"rule": r.name, "file": r.file, **c.as_dict()}
            for r in outcome.report.results if r.status == APPLIED for c in r.changes]


def _differs(original: etree._Element, deployed: etree._Element, vm: etree._Element,
             ruleset: Any, supplied: Any = None) -> list[dict[str, Any]]:
    """Today's rules applied to oned's domain XML, compared with the domain as deployed:
    (rule, xpath, before = deployed, after = now) for every attribute and text that differs;
    the rule is today's rule that set the value, "" when none does (the value comes from a
    rule that is gone or no longer matches)."""
    import copy

    from tweaks import engine, provenance
    from tweaks.errors import TweakError
    from tweaks.report import APPLIED

    try:
        outcome = engine.apply_rules(etree.ElementTree(copy.deepcopy(original)),
                                     etree.ElementTree(copy.deepcopy(vm)), ruleset.rules, supplied=supplied)
    except TweakError as exc:
        raise DriverError(f"the rules cannot be applied: {exc}") from None
    made_by: dict[str, tuple[str, str]] = {}
    for r in outcome.report.results:
        if r.status == APPLIED:
            for c in r.changes:
                made_by[c.xpath] = (r.name, r.file)
    then = _values(deployed, provenance)
    now = _values(outcome.tree.getroot(), provenance)
    out = []
    for xpath in sorted(set(then) | set(now), key=_document_order(then, now)):
        before, after = then.get(xpath), now.get(xpath)
        if before != after:
            rule, file = _maker(xpath, made_by)
            out.append({"rule": rule, "file": file, "xpath": xpath, "before": before, "after": after})
    return out


def _values(root: etree._Element, provenance: Any) -> dict[str, str]:
    """xpath -> value of every attribute (``.../@name``) and non-blank text (``.../text()``),
    its provenance stamp left out (it is no setting)."""
    tree = root.getroottree()
    stamp = provenance.find(root)
    out: dict[str, str] = {}
    for el in root.iter():
        if not isinstance(el.tag, str) or (stamp is not None and (el is stamp or stamp in el.iterancestors())):
            continue
        path = tree.getpath(el)
        for name in el.attrib:
            out[f"{path}/@{name!s}"] = str(el.get(name))
        if el.text and el.text.strip():
            out[f"{path}/text()"] = el.text.strip()
    return out


def _document_order(*maps: dict[str, str]) -> Any:
    order: dict[str, int] = {}
    for m in maps:
        for key in m:
            order.setdefault(key, len(order))
    return lambda key: order[key]


def _maker(xpath: str, made_by: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """Today's rule whose change set ``xpath`` or an element above it (an element it added)."""
    path = xpath
    while path:
        if path in made_by:
            return made_by[path]
        path = path.rpartition("/")[0]
    return "", ""


def _changed_files(live: etree._Element, ruleset: Any) -> list[dict[str, str]]:
    from tweaks import provenance
    from tweaks.report import APPLIED

    stamp = provenance.read(live)
    if stamp is None or not stamp.rules:  # no stamp, or only hot-plug entries: deployed without the rules
        return []
    then = {r.file: r for r in stamp.rules}
    now = {posixpath.basename(path): sha for path, sha in ruleset.hashes}
    rule_of = {posixpath.basename(r.file): r.name for r in ruleset.rules}
    out = []
    for name in sorted(set(then) | set(now)):
        old, new = then.get(name), now.get(name)
        if old is not None and new == old.sha256:
            continue
        how = "was added" if old is None else "was removed" if new is None else "changed"
        shaped = "yes" if old is not None and old.status == APPLIED else "no"
        out.append({"file": name, "rule": (old.name if old is not None else "") or rule_of.get(name, ""),
                    "how": how, "shaped": shaped})
    return out
