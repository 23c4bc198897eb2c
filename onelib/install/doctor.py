"""``one-tweaks doctor``: is this front-end set up for the drivers? One line per problem,
each saying how to fix it; exit 0 when healthy, 1 otherwise.

Checks (``--skip`` takes their names; ``--offline`` skips ``api``):

- ``oned``: TM_MAD ``-d``, DATASTORE_MAD ``-d`` and ``-s`` list every driver (else oned
  answers "driver not available"), TM_MAD_CONF and DS_MAD_CONF exist with the driver's values.
- ``vmm``: the kvm VM_MAD ``-l`` list runs every VMM override this build provides, and
  this build provides all of them.
- ``restricted``: VM_RESTRICTED_ATTR (and the drivers' other restricted attributes).
- ``execrc``: vmm_execrc LIVE_DISK_SNAPSHOTS has ``kvm-<driver>``.
- ``scripts``: every executable is installed, executable, runs this installation's Python,
  and that Python imports the drivers.
- ``libvirt``: libvirt's domain schema exists (the tweak engine validates with it).
- ``api``: each storage backend's own checks (``datastore.backend.Backend.doctor``): its API
  answers, with the settings of each of its datastores oned lists (see the backends).
- ``rules``: ``one-tweaks check`` passes on the rule files.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from typing import TYPE_CHECKING

from .. import xmldoc
from ..config import Config
from ..errors import DriverError
from . import files, patch, plan
from . import template as t

if TYPE_CHECKING:
    from lxml import etree

CHECKS = ("oned", "vmm", "restricted", "execrc", "scripts", "libvirt", "api", "rules")

DEFAULT_RNG = "/usr/share/libvirt/schemas/domain.rng"
API_TIMEOUT = 5.0
INSTALL = "run one-tweaks install (or edit it by hand), then restart oned"

VMM_EFFECT = {
    "deploy": "the tweak rules are not applied when VMs deploy",
    "save": "suspend, stop and cold migration keep the checkpoint as a file on the host, not on the storage",
    "restore": "resume from a checkpoint on the storage does not work",
    "migrate": "live migration does not get --unsafe for cache=none block disks",
    "attach_disk": "hot-attached disks of block datastores are attached as files, without the rules",
    "attach_nic": "hot-attached NICs do not get the rules (T_NIC_QUEUES ...) a deployed NIC gets",
    "detach_disk": "CD-ROM eject does not use the pre-created empty slots",
    "snapshotcreate": "VM snapshots use libvirt internal snapshots, which fail on raw block disks",
    "snapshotrevert": "VM snapshot revert uses libvirt internal snapshots, which fail on raw block disks",
    "snapshotdelete": "VM snapshot delete uses libvirt internal snapshots, which fail on raw block disks",
    "resize_disk": "live disk resize does not grow the disk inside the running VM",
}


class Report:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, line: str) -> None:
        self.problems.append(" ".join(line.split()))


def run(remotes: str, oned_conf: str, vmm_execrc: str, skip: set[str]) -> int:
    the_plan = plan.build()
    report = Report()
    oned_attrs: list[t.Attr] | None = None
    if {"oned", "vmm", "restricted"} - skip:
        try:
            oned_attrs = t.parse(files.read_text(oned_conf, "oned.conf"), oned_conf)
        except DriverError as exc:
            report.add(f"oned.conf: {exc}; give its path with --oned-conf")
    if oned_attrs is not None:
        if "oned" not in skip:
            check_lists(oned_attrs, the_plan, report)
            check_confs(oned_attrs, the_plan, report)
        if "vmm" not in skip:
            check_vmm(oned_attrs, the_plan, report)
        if "restricted" not in skip:
            check_restricted(oned_attrs, the_plan, report)
    if "execrc" not in skip:
        check_execrc(vmm_execrc, the_plan, report)
    if "scripts" not in skip:
        check_scripts(remotes, the_plan, report)
    if "libvirt" not in skip:
        rng = os.environ.get("ONE_TWEAKS_DOMAIN_RNG", DEFAULT_RNG)
        if not os.path.isfile(rng):
            report.add(f"libvirt: schema {rng} missing: the tweak engine cannot validate the domain XML it "
                       "writes; install libvirt0 (Debian/Ubuntu) or libvirt-libs (RHEL)")
    if "api" not in skip:
        check_backends(the_plan.drivers, report)
    if "rules" not in skip:
        check_rules(report)
    for line in report.problems:
        sys.stdout.write(line + "\n")
    if report.problems:
        sys.stderr.write(f"one-tweaks doctor: {len(report.problems)} problem(s)\n")
        return 1
    done = [c for c in CHECKS if c not in skip]
    sys.stdout.write(f"one-tweaks doctor: healthy ({', '.join(done)} checked)\n")
    return 0


# --- oned.conf ---------------------------------------------------------------------------


def _arguments(attrs: list[t.Attr], what: str, report: Report, **select: str) -> str | None:
    found = t.find(attrs, what, **select)
    label = what + "".join(f" {v}" for v in select.values())
    if not found:
        report.add(f"oned.conf: no {label} = [ ... ]: oned has no such driver; restore it from the "
                   "stock oned.conf, then " + INSTALL)
        return None
    return found[0].text_of("ARGUMENTS") or ""


def check_lists(attrs: list[t.Attr], the_plan: plan.Plan, report: Report) -> None:
    tm = _arguments(attrs, "TM_MAD", report)
    if tm is not None:
        opt = t.find_option(tm, *patch.TM_D)
        for d in the_plan.drivers:
            if opt is not None and d not in t.split_list(opt.value):
                report.add(f"oned.conf: TM_MAD ARGUMENTS -d does not list {d}: every transfer of a {d} disk fails "
                           f"with \"driver not available\"; add {d} to the -d list: {INSTALL}")
    ds = _arguments(attrs, "DATASTORE_MAD", report)
    if ds is None:
        return
    opt_d = t.find_option(ds, *patch.DS_D)
    opt_s = t.find_option(ds, *patch.DS_S)
    system = t.split_list(opt_s.value) if opt_s is not None else list(plan.DEFAULT_SYSTEM_DS)
    for d in the_plan.drivers:
        if opt_d is not None and d not in t.split_list(opt_d.value):
            report.add(f"oned.conf: DATASTORE_MAD ARGUMENTS -d does not list {d}: {d} image datastores fail with "
                       f"\"Datastore driver '{d}' not available\"; add {d} to the -d list: {INSTALL}")
        if d not in system:
            where = "-s list" if opt_s is not None else f"-s list (absent: oned uses {','.join(system)})"
            report.add(f"oned.conf: DATASTORE_MAD ARGUMENTS {where} does not have {d}: {d} system datastores "
                       f"are not monitored (\"System datastore driver '{d}' not available\"); add {d} to -s: "
                       + INSTALL)


def check_confs(attrs: list[t.Attr], the_plan: plan.Plan, report: Report) -> None:
    for d in the_plan.drivers:
        conf = plan.driver_conf(d)
        for vector, pairs, strict in (("TM_MAD_CONF", conf.tm_mad_conf, True),
                                      ("DS_MAD_CONF", conf.ds_mad_conf, False)):
            found = t.find(attrs, vector, NAME=d)
            wanted = ", ".join(f"{k} = {t.quote(v)}" for k, v in (("NAME", d), *pairs))
            if not found:
                report.add(f"oned.conf: no {vector} for {d}: oned does not know how to use {d} datastores; add "
                           f"{vector} = [ {wanted} ]: {INSTALL}")
                continue
            check = pairs if strict else tuple(p for p in pairs if p[0] == "PERSISTENT_ONLY")
            wrong = [f"{k}={found[-1].text_of(k)!r} (expected {v!r})" for k, v in check
                     if (found[-1].text_of(k) or "").upper() != v.upper()]
            if wrong:
                report.add(f"oned.conf: {vector} {d} has {', '.join(wrong)}: set those values and restart oned")


def check_vmm(attrs: list[t.Attr], the_plan: plan.Plan, report: Report) -> None:
    args = _arguments(attrs, "VM_MAD", report, NAME="kvm")
    if args is not None:
        opt = t.find_option(args, *patch.VMM_L)
        have = {k.lower(): v for k, v in t.parse_actions(opt.value if opt else None)}
        for key, script in the_plan.vmm_l.items():
            if have.get(key) not in the_plan.vmm_accepted[key]:
                now = f"runs {have[key]!r}" if have.get(key) else "is not local"
                effect = VMM_EFFECT.get(key, "it is not ours")
                report.add(f"oned.conf: VM_MAD kvm ARGUMENTS -l: {key} {now}, so {effect}; "
                           f"add {key}={script} to the -l list: {INSTALL}")
    for key, module in the_plan.vmm_missing:
        report.add(f"one-tweaks: this build has no VMM override for {key} (vmm.actions.{module}), so "
                   f"{VMM_EFFECT.get(key, 'oned runs the stock action')}; install a one-tweaks release that has it, "
                   "then run one-tweaks install")


def check_restricted(attrs: list[t.Attr], the_plan: plan.Plan, report: Report) -> None:
    missing: dict[str, list[str]] = {}
    for name, value in the_plan.restricted:
        have = {a.value.text.upper() for a in t.find(attrs, name) if a.value is not None}
        if value.upper() not in have:
            missing.setdefault(name, []).append(value)
    for name, values in missing.items():
        who = "VM owners" if name.startswith("VM_") else "users"
        report.add(f"oned.conf: {name} lacks {', '.join(values)}: {who} outside oneadmin can set what reaches the "
                   f"host or other tenants; add a {name} = \"...\" line for each: {INSTALL}")


# --- vmm_execrc --------------------------------------------------------------------------


def check_execrc(path: str, the_plan: plan.Plan, report: Report) -> None:
    try:
        words = patch.live_snapshot_words(files.read_text(path, "vmm_execrc"))
    except DriverError as exc:
        report.add(f"vmm_execrc: {exc}; give its path with --vmm-execrc")
        return
    for d in the_plan.drivers:
        for word in plan.driver_conf(d).live_disk_snapshots:
            if word not in (words or []):
                report.add(f"vmm_execrc: LIVE_DISK_SNAPSHOTS lacks {word}: oned refuses disk snapshots of running "
                           f"VMs on {d}; add {word} to it in {path}: {INSTALL}")


# --- executables -------------------------------------------------------------------------


def _shebang(data: bytes) -> str:
    first = data.split(b"\n", 1)[0].decode("utf-8", "replace")
    return first[2:].strip() if first.startswith("#!") else ""


def check_scripts(remotes: str, the_plan: plan.Plan, report: Report) -> None:
    groups: dict[tuple[str, str], list[str]] = {}
    interpreters: set[str] = set()
    for rel, content in sorted(the_plan.scripts.items()):
        path = os.path.join(remotes, rel)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            groups.setdefault(("missing", os.path.dirname(rel)), []).append(os.path.basename(rel))
            continue
        except OSError as exc:
            report.add(f"remotes: {path}: cannot read: {exc.strerror}")
            continue
        bang = _shebang(data)
        if not os.access(path, os.X_OK):
            groups.setdefault(("mode", os.path.dirname(rel)), []).append(os.path.basename(rel))
        if bang != the_plan.interpreter:
            groups.setdefault((f"python:{bang}", os.path.dirname(rel)), []).append(os.path.basename(rel))
        elif data != content.encode():
            groups.setdefault(("content", os.path.dirname(rel)), []).append(os.path.basename(rel))
        if bang == the_plan.interpreter:
            interpreters.add(bang)
    for (kind, rel_dir), names in groups.items():
        where = os.path.join(remotes, rel_dir)
        listed = f"{len(names)} in {where} ({', '.join(names)})"
        if kind == "missing":
            report.add(f"remotes: scripts not installed: {listed}: oned fails these actions; run one-tweaks install")
        elif kind == "mode":
            report.add(f"remotes: scripts not executable: {listed}: run one-tweaks install (or chmod 755 them)")
        elif kind == "content":
            report.add(f"remotes: scripts differ from what this version installs: {listed}: run one-tweaks install")
        else:
            bang = kind.split(":", 1)[1] or "no #! line"
            why = (" (the system python3 cannot import the package: Debian 12 forbids installing it there, PEP 668)"
                   if "python" in bang and the_plan.interpreter != bang else "")
            report.add(f"remotes: scripts with the wrong interpreter {bang!r}{why}: {listed}: they must run "
                       f"{the_plan.interpreter}; run one-tweaks install")
    for python in sorted(interpreters):
        imports = "import tm.entry, datastore.entry" + (", vmm.entry" if the_plan.vmm_l else "")
        try:
            proc = subprocess.run([python, "-c", imports], capture_output=True, text=True, timeout=120,
                                  cwd="/", check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            report.add(f"remotes: the scripts' interpreter {python} does not run: {exc}")
            continue
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            report.add(f"remotes: the scripts' interpreter {python} cannot import the drivers ({last}): "
                       "reinstall one-tweaks into that environment or run one-tweaks install from the right one")


# --- storage API -------------------------------------------------------------------------


def check_backends(drivers: list[str], report: Report) -> None:
    """Each backend's own checks (its ``doctor`` method), with one-tweaks.conf and the
    datastores of its driver oned lists (asked once, when a backend wants them)."""
    try:
        config = Config.load()
    except DriverError as exc:
        report.add(f"api: {exc}: fix that file")
        return
    pool = _Pool()
    try:
        from datastore.backends import backend_class
    except ImportError as exc:
        report.add(f"api: the storage drivers cannot be imported ({exc}): reinstall one-tweaks")
        return
    for driver in drivers:
        try:
            cls = backend_class(driver)
        except (ImportError, DriverError) as exc:
            report.add(f"api: the {driver} backend cannot be loaded ({exc}): install what it needs "
                       "(see the README), or reinstall one-tweaks")
            continue
        cls.doctor(config, functools.partial(pool.of, driver), report.add)


class _Pool:
    """oned's datastores, asked for once (when a backend's check first wants them)."""

    def __init__(self) -> None:
        self.datastores: list[etree._Element] | None = None
        self.failure: DriverError | None = None

    def of(self, driver: str) -> list[etree._Element]:
        """The datastores whose TM_MAD or DS_MAD is ``driver``; DriverError when oned cannot be asked."""
        if self.datastores is None and self.failure is None:
            from ..oned import Oned

            try:
                root = xmldoc.parse(Oned(timeout=API_TIMEOUT).call("one.datastorepool.info"), "one.datastorepool.info")
                self.datastores = list(root.iterfind("DATASTORE"))
            except DriverError as exc:
                self.failure = exc
        if self.failure is not None:
            raise self.failure
        return [ds for ds in self.datastores or () if driver in (xmldoc.text(ds, "TM_MAD"), xmldoc.text(ds, "DS_MAD"))]


# --- rules -------------------------------------------------------------------------------


def check_rules(report: Report) -> None:
    try:
        proc = subprocess.run([sys.executable, "-m", "tweaks", "check"], capture_output=True, text=True,
                              timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        report.add(f"rules: one-tweaks check did not run: {exc}")
        return
    if proc.returncode == 0:
        return
    lines = [ln for ln in (proc.stdout + "\n" + proc.stderr).splitlines() if ln.strip()]
    for line in lines or [f"one-tweaks check failed with exit code {proc.returncode}"]:
        report.add(f"rules: {line} (fix the rule file, then re-run one-tweaks check)")
