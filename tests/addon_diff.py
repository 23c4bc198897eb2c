"""Run addon-storpool's deploy-tweaks scripts and `one-tweaks apply` side by side.

The add-on's side is run the way its ``vmm/kvm/deploy-tweaks`` runs it (see
tests/fixtures/addon-storpool/deploy-tweaks): each script in file-name order gets a copy of the
domain XML and the VM document (``python3 SCRIPT deployment.xml vm.xml``, editing the copy in
place), and the copy replaces the domain only when the script exits 0 and ``xmllint --noout``
accepts it. Its environment carries the variables ``addon-storpoolrc`` sets (none is a ``T_*``).

Our side is ``one-tweaks apply`` as a separate process with the shipped rules, plus the operator
rules in tests/fixtures/addon-storpool/rules.d/<script>/ for each add-on script the case runs:
what a switching operator writes to keep the add-on's unconditional behaviour.

Both results are compared in a canonical form that keeps what libvirt reads and drops what it
does not: quote style, whitespace, comments, attribute order, where namespace declarations sit,
the split of ``<devices>``/``<features>`` into several blocks, the order of top-level elements
and of differently named siblings, and spellings libvirt reads as the same (a memory size
without its default unit ``KiB``; ``<vcpu current='N'>N</vcpu>``; ``placement='static'``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lxml import etree

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ADDON = FIXTURES / "addon-storpool"
SCRIPTS = ADDON / "deploy-tweaks.d"
OVERLAYS = ADDON / "rules.d"
DOMAIN_RNG = "/usr/share/libvirt/schemas/domain.rng"

# sibling order that libvirt ignores: these elements' children are compared as a set
UNORDERED = {"cpu", "features", "hyperv", "clock", "os", "cputune", "domain", "kvm", "smm", "sysinfo", "vcpus",
             "numa", "bios", "system", "baseBoard", "chassis"}
# libvirt reads these elements of several blocks as one
MERGED = ("devices", "features")


def addon_env() -> dict[str, str]:
    """The environment deploy-tweaks gives its scripts: PATH plus addon-storpoolrc's assignments."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    for line in (ADDON / "addon-storpoolrc").read_text().splitlines():
        m = re.fullmatch(r"(?:export\s+)?([A-Z_][A-Z0-9_]*)=\"?([^\"]*)\"?\s*", line)
        if m:
            env[m.group(1)] = m.group(2)
    return env


def interpreter() -> str:
    """The add-on's scripts say `#!/usr/bin/env python3`: the system's python3, stdlib only."""
    for candidate in ("/usr/bin/python3", shutil.which("python3")):
        if candidate and os.path.exists(candidate):
            return candidate
    raise AssertionError("python3 (the interpreter addon-storpool's scripts need) not found")


class CaseLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def scripts(self) -> tuple[str, ...]: ...
    def inputs(self) -> tuple[bytes, bytes]: ...


@dataclass
class AddonRun:
    xml: bytes
    accepted: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # script -> why its output was discarded


def run_addon(domain: bytes, vm: bytes, scripts: Iterable[str], workdir: Path) -> AddonRun:
    """deploy-tweaks' loop over SCRIPTS (names in deploy-tweaks.d), in file-name order."""
    dep_xml = workdir / "deployment.0-tweaks"
    dep_xml.write_bytes(domain)
    vm_xml = workdir / "vm.xml"
    vm_xml.write_bytes(vm)
    copy = workdir / "deployment.xml"
    run = AddonRun(xml=b"")
    env = addon_env()
    python = interpreter()
    for name in sorted(scripts):
        shutil.copyfile(dep_xml, copy)
        proc = subprocess.run([python, str(SCRIPTS / name), str(copy), str(vm_xml)], capture_output=True,
                              env=env, cwd=workdir, timeout=60)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            run.failed[name] = f"exit {proc.returncode}: {err[-1] if err else ''}"
            continue
        lint = subprocess.run(["xmllint", "--noout", str(copy)], capture_output=True, timeout=60)
        if lint.returncode != 0:
            run.failed[name] = "xmllint: " + lint.stderr.decode(errors="replace").strip()[:200]
            continue
        shutil.move(copy, dep_xml)
        run.accepted.append(name)
    run.xml = dep_xml.read_bytes()
    return run


@dataclass
class OursRun:
    xml: bytes
    stderr: str  # warnings and the --explain report


def run_ours(domain: bytes, vm: bytes, overlays: Sequence[Path], workdir: Path, *, process: bool = False) -> OursRun:
    """`one-tweaks apply` (its main(), or as its own process), shipped rules plus the --rules directories."""
    dom = workdir / "ours-domain.xml"
    dom.write_bytes(domain)
    vmf = workdir / "ours-vm.xml"
    vmf.write_bytes(vm)
    out = workdir / "ours-out.xml"
    etc = workdir / "etc-empty"
    etc.mkdir(exist_ok=True)
    args = [sys.executable, "-m", "tweaks", "apply", str(dom), "--vm", str(vmf), "-o", str(out), "--explain"]
    for d in overlays:
        args += ["--rules", str(d)]
    env = {"ONE_TWEAKS_RULES_DIR": str(etc)}
    if not process:
        return _in_process(args[3:], env, out)
    proc = subprocess.run(args, capture_output=True, env={**os.environ, **env}, timeout=120)
    assert proc.returncode == 0, f"one-tweaks apply failed ({proc.returncode}): {proc.stderr.decode()}"
    return OursRun(out.read_bytes(), proc.stderr.decode(errors="replace"))


def _in_process(argv: list[str], env: Mapping[str, str], out: Path) -> OursRun:
    """The same program without a new interpreter per case (the suite runs hundreds)."""
    import contextlib
    import io

    from tweaks import cli

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            code = cli.main(argv)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert code == 0, f"one-tweaks apply failed ({code}): {err.getvalue()}"
    return OursRun(out.read_bytes(), err.getvalue())


def overlays_for(scripts: Iterable[str]) -> list[Path]:
    """Operator rules matching the add-on with SCRIPTS enabled: rules.d/<script> for each script the
    case runs, rules.d/without-<script> (disables shipped rules doing that script's job) for the others."""
    names = {Path(s).stem for s in scripts}
    dirs = []
    for d in sorted(OVERLAYS.iterdir()):
        if (d.name.startswith("without-") and d.name[len("without-"):] not in names) or d.name in names:
            dirs.append(d)
    return dirs


# --- canonical form ---------------------------------------------------------------------------

def _parse(xml: bytes) -> etree._Element:
    parser = etree.XMLParser(remove_blank_text=True, remove_comments=True, remove_pis=True, strip_cdata=True)
    return etree.fromstring(xml, parser)


PROVENANCE = "{urn:one-tweaks:provenance:1}provenance"


def _libvirt_spellings(root: etree._Element) -> None:
    for record in root.iterfind(f"metadata/{PROVENANCE}"):
        record.getparent().remove(record)  # our own record of the rules that ran: opaque to libvirt
    for tag in ("memory", "currentMemory", "maxMemory"):
        el = root.find(tag)
        if el is not None and el.get("unit") in (None, "KiB", "k"):
            el.set("unit", "KiB")
    vcpu = root.find("vcpu")
    if vcpu is not None:
        if vcpu.get("placement") == "static":
            del vcpu.attrib["placement"]
        if vcpu.get("current") is not None and vcpu.get("current", "").strip() == (vcpu.text or "").strip():
            del vcpu.attrib["current"]
    cur, mem = root.find("currentMemory"), root.find("memory")
    if cur is not None and mem is not None and (cur.text or "").strip() == (mem.text or "").strip() \
            and cur.get("unit") == mem.get("unit"):
        root.remove(cur)
    for cell in root.iterfind("cpu/numa/cell"):
        if cell.get("unit") in (None, "KiB", "k"):
            cell.set("unit", "KiB")
    for feature in root.iterfind("cpu/feature"):
        if feature.get("policy") is None:
            feature.set("policy", "require")  # libvirt's default policy
    uuid = root.find("uuid")
    if uuid is not None and uuid.text:
        uuid.text = uuid.text.strip().replace("-", "").lower()  # libvirt reads any case, dashes optional
    for hidden in root.iterfind("features/kvm/hidden[@state='off']"):
        kvm = hidden.getparent()
        kvm.remove(hidden)  # not hidden is the default
        if len(kvm) == 0 and not kvm.attrib:
            kvm.getparent().remove(kvm)
    for tseg in root.iterfind("features/smm/tseg"):
        if tseg.get("unit") is None:
            tseg.set("unit", "MiB")  # libvirt scales a unit-less TSEG size by MiB
    for loader in root.iterfind("os/loader[@secure='no']"):
        del loader.attrib["secure"]  # the default
    for cell in root.iterfind("cpu/numa/cell[@cpus]"):
        cell.set("cpus", _cpuset(cell.get("cpus", "")))
    for smm in root.iterfind("features/smm"):
        if smm.get("state") is None:
            smm.set("state", "on")  # "state: on, off; default on" (formatdomain)
    for hv in root.iterfind("features/hyperv/*[@state='off']"):
        hv.getparent().remove(hv)  # every enlightenment is off unless turned on
    # controllers without an index get the lowest free one of their type, in document order
    used: dict[str, set[str]] = {}
    for ctl in root.iterfind("devices/controller"):
        if ctl.get("index") is not None:
            used.setdefault(ctl.get("type", ""), set()).add(ctl.get("index", ""))
    for ctl in root.iterfind("devices/controller"):
        if ctl.get("index") is None and ctl.get("type") != "pci":
            taken = used.setdefault(ctl.get("type", ""), set())
            free = next(str(i) for i in range(len(taken) + 1) if str(i) not in taken)
            ctl.set("index", free)
            taken.add(free)


def _cpuset(text: str) -> str:
    """libvirt's cpuset syntax (0-3,6) as the sorted list of CPUs it means."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        return text
    return ",".join(str(c) for c in sorted(cpus))


def canonical_tree(xml: bytes) -> etree._Element:
    root = _parse(xml)
    for tag in MERGED:
        blocks = root.findall(tag)
        for extra in blocks[1:]:
            for child in list(extra):
                blocks[0].append(child)
            root.remove(extra)
    _libvirt_spellings(root)
    return root


def _lines(el: etree._Element, depth: int) -> list[str]:
    qname = etree.QName(el)
    tag = qname.localname if qname.namespace is None else str(el.tag)
    attrs = " ".join(f'{k}="{v}"' for k, v in sorted(el.attrib.items()))
    text = (el.text or "").strip()
    out = ["  " * depth + f"<{tag}{' ' + attrs if attrs else ''}>{text}"]
    children = [(str(c.tag), _lines(c, depth + 1)) for c in el]
    if tag in UNORDERED:
        children.sort()  # libvirt ignores the order of these children altogether
    else:
        # it reads devices by kind (controllers by type): only the order within a kind counts
        children.sort(key=lambda c: (c[0], c[1][0].split('type="', 1)[-1] if c[0] == "controller" else ""))
    for _, lines in children:
        out += lines
    return out


def canonical(xml: bytes) -> list[str]:
    return _lines(canonical_tree(xml), 0)


def differences(addon_xml: bytes, ours_xml: bytes) -> list[str]:
    """A unified diff of the canonical forms ('-' the add-on, '+' ours), empty when equal."""
    import difflib

    a, b = canonical(addon_xml), canonical(ours_xml)
    if a == b:
        return []
    return [line for line in difflib.unified_diff(a, b, "addon", "ours", n=1, lineterm="")]


def fresh_workdir(base: Path | None = None) -> Path:
    return Path(tempfile.mkdtemp(prefix="addon-diff-", dir=base))


def set_user(vm: bytes, user: Mapping[str, str | None]) -> bytes:
    """VM document with USER_TEMPLATE attributes set (None: the element with no text)."""
    root = etree.fromstring(vm, etree.XMLParser(strip_cdata=False))
    ut = root.find("USER_TEMPLATE")
    if ut is None:
        ut = etree.SubElement(root, "USER_TEMPLATE")
    for key, value in user.items():
        el = ut.find(key)
        if el is None:
            el = etree.SubElement(ut, key)
        el.text = value
    return etree.tostring(root)


@dataclass
class Result:
    case_id: str
    diff: list[str]
    addon_failed: dict[str, str]
    warnings: str
    addon_valid: bool  # libvirt's domain.rng accepts the add-on's domain (its <devices> blocks merged)


_RNG: list[etree.RelaxNG] = []


def schema_valid(xml: bytes) -> bool:
    if not _RNG:
        _RNG.append(etree.RelaxNG(file=os.environ.get("ONE_TWEAKS_DOMAIN_RNG", DOMAIN_RNG)))
    root = _parse(xml)
    for tag in MERGED:
        blocks = root.findall(tag)
        for extra in blocks[1:]:
            for child in list(extra):
                blocks[0].append(child)
            root.remove(extra)
    return bool(_RNG[0].validate(etree.ElementTree(root)))


def run_all(cases: Sequence[CaseLike], base: Path, jobs: int = 3) -> dict[str, Result]:
    """Every case: the add-on's scripts (JOBS at a time: they are separate processes), then ours."""
    from concurrent.futures import ThreadPoolExecutor

    work = {c.id: base / f"c{i}" for i, c in enumerate(cases)}
    docs = {c.id: c.inputs() for c in cases}
    for d in work.values():
        d.mkdir()
    with ThreadPoolExecutor(jobs) as pool:
        addon = dict(zip(work, pool.map(lambda c: run_addon(*docs[c.id], c.scripts, work[c.id]), cases),
                         strict=True))
    results = {}
    for c in cases:
        ours = run_ours(*docs[c.id], overlays_for(c.scripts), work[c.id])
        diff = differences(addon[c.id].xml, ours.xml)
        results[c.id] = Result(c.id, diff, addon[c.id].failed, ours.stderr, not diff or schema_valid(addon[c.id].xml))
    return results
