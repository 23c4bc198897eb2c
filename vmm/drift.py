"""``one-tweaks drift [--host H] [--rules DIR]... [--json] [VM...]``: do the running domains
still match the rules of now?

For each running domain of OpenNebula on host H (libvirt-python through
``onelib.hypervisor``: ``qemu+ssh://H/system``, or ``qemu:///system`` without ``--host``),
or only the VMs named (VM ids, domain names or UUIDs):

- the domain's own inputs are read from its VM directory on the host (the directory oned
  wrote into the domain's ``one:system_datastore`` metadata): the VM document ``vm.xml``
  that deploy-tweaks keeps there and the latest ``deployment.N``, the domain as deployed;
- today's rule files (shipped, ``/etc/one/tweaks.d``, TWEAKS_RULES_DIRS, ``--rules``) are
  applied to them in memory, as a deploy now would: every change a rule would make is
  listed (``XPATH: before -> after``);
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
        lines.append(f"  rule {c['rule']} would change {c['xpath']}: {_show(c['before'])} -> {_show(c['after'])}")
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
        return [check_domain(hv, dom, ruleset) for dom in domains]


def _select(hv: Hypervisor, wanted: Sequence[str]) -> list[Domain | str]:
    if not wanted:
        return [d for d in hv.domains() if _ONE_NAME.fullmatch(d.name) or metadata_dir(d.xml())]
    out: list[Domain | str] = []
    for raw in wanted:
        name = f"one-{raw}" if raw.isascii() and raw.isdigit() else raw
        found = hv.lookup(name)
        out.append(found if found is not None else name)
    return out


def check_domain(hv: Hypervisor, dom: Domain | str, ruleset: Any) -> VmDrift:
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
        deployed, where = _deployment(hv, vm_dir, live)
        result.inputs = f"{where} and {posixpath.join(vm_dir, 'vm.xml')}"
        result.changes = _would_change(deployed, vm, ruleset)
        result.changed_files = _changed_files(live, ruleset)
    except DriverError as exc:
        result.error = str(exc)
    return result


def _read(hv: Hypervisor, path: str, what: str) -> etree._Element:
    proc = hv.shell.run(["cat", "--", path], check=False)
    if proc.returncode != 0:
        raise DriverError(f"{what} {path} cannot be read on {hv.name}")
    return xmldoc.parse(proc.stdout, f"{path} on {hv.name}")


def _deployment(hv: Hypervisor, vm_dir: str, live: etree._Element) -> tuple[etree._Element, str]:
    """The latest ``deployment.N`` in the VM directory; the running domain's own XML when
    the directory has none (a host that got the VM without its files)."""
    proc = hv.shell.run(["ls", "-1", "--", vm_dir], check=False)
    numbers = [int(m.group(1)) for name in proc.stdout.decode(errors="replace").split()
               if (m := _DEPLOYMENT.fullmatch(name))]
    if not numbers:
        return live, "the running domain"
    path = posixpath.join(vm_dir, f"deployment.{max(numbers)}")
    return _read(hv, path, "the deployment file"), path


def _would_change(domain: etree._Element, vm: etree._Element, ruleset: Any) -> list[dict[str, Any]]:
    import copy

    from tweaks import engine
    from tweaks.errors import TweakError
    from tweaks.report import APPLIED

    try:
        outcome = engine.apply_rules(etree.ElementTree(copy.deepcopy(domain)), etree.ElementTree(copy.deepcopy(vm)),
                                     ruleset.rules)
    except TweakError as exc:
        raise DriverError(f"the rules cannot be applied: {exc}") from None
    return [{"rule": r.name, "file": r.file, **c.as_dict()}
            for r in outcome.report.results if r.status == APPLIED for c in r.changes]


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
