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
- ``api``: the storage API answers one cheap GET with the configured token (StorPool; not
  configured at all is fine when oned lists no storpool datastore);
  for every ``linstor_un`` datastore oned lists, a LINSTOR controller of its LS_CONTROLLERS
  (datastore template over the configuration; TLS with LS_CERTFILE/LS_KEYFILE/LS_CAFILE,
  set up as python-linstor sets it up for the drivers) answers ``GET /v1/controller/version``.
- ``rules``: ``one-tweaks check`` passes on the rule files.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import ssl
import subprocess
import sys
from urllib.parse import urlsplit

from .. import xmldoc
from ..config import Config, read_storpool_conf
from ..errors import DriverError
from . import files, patch, plan
from . import template as t

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
    if "api" not in skip and "storpool" in the_plan.drivers:
        check_storpool_api(report)
    if "api" not in skip and "linstor_un" in the_plan.drivers:
        check_linstor_controllers(report)
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
        conf = plan.DRIVER_CONF[d]
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
        if f"kvm-{d}" not in (words or []):
            report.add(f"vmm_execrc: LIVE_DISK_SNAPSHOTS lacks kvm-{d}: oned refuses disk snapshots of running "
                       f"VMs on {d}; add kvm-{d} to it in {path}: {INSTALL}")


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


def check_storpool_api(report: Report) -> None:
    conf_path = os.environ.get("ONE_TWEAKS_CONF") or "/etc/one/one-tweaks.conf"
    try:
        config = Config.load()
        sp = read_storpool_conf(config.get("SP_STORPOOL_CONF"))
    except DriverError as exc:
        report.add(f"api: {exc}: fix that file")
        return
    host = config.get("SP_API_HTTP_HOST") or sp.get("SP_API_HTTP_HOST", "")
    port = config.get("SP_API_HTTP_PORT") or sp.get("SP_API_HTTP_PORT", "81")
    token = config.get("SP_AUTH_TOKEN") or sp.get("SP_AUTH_TOKEN", "")
    if not host or not token:
        if _no_datastore_of("storpool"):
            return  # e.g. a LINSTOR-only front-end: no StorPool API to reach
        report.add(f"api: StorPool API not configured: set SP_API_HTTP_HOST, SP_API_HTTP_PORT and SP_AUTH_TOKEN in "
                   f"{conf_path} (or {config.get('SP_STORPOOL_CONF')}); --offline skips this check")
        return
    if not port.isdigit():
        report.add(f"api: SP_API_HTTP_PORT={port!r} is not a port number: fix it in {conf_path}")
        return
    where = f"{host}:{port}"
    conn = http.client.HTTPConnection(host, int(port), timeout=API_TIMEOUT)
    try:
        conn.request("GET", "/ctrl/1.0/ServicesList",
                     headers={"Authorization": f"Storpool v1:{token}", "Connection": "close"})
        response = conn.getresponse()
        status, raw = response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {API_TIMEOUT:g}s"
        report.add(f"api: StorPool API {where} unreachable ({reason}): check SP_API_HTTP_HOST/SP_API_HTTP_PORT in "
                   f"{conf_path} and that this front-end can reach it; --offline skips this check")
        return
    finally:
        conn.close()
    try:
        reply = json.loads(raw) if raw else {}
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        report.add(f"api: {where} answered HTTP {status} without StorPool's JSON: is SP_API_HTTP_HOST/PORT the "
                   f"StorPool API? fix it in {conf_path}")
        return
    if "error" in reply or status >= 400:
        error = reply.get("error")
        err: dict[str, object] = error if isinstance(error, dict) else {}
        what = f"{err.get('name', 'HTTP ' + str(status))}: {err.get('descr', '')}".rstrip(": ")
        hint = "check SP_AUTH_TOKEN" if status in (401, 403) or "auth" in what.lower() else "check the API"
        report.add(f"api: StorPool API {where} refused a request ({what}): {hint} in {conf_path}")


# --- LINSTOR controllers ---------------------------------------------------------------

LINSTOR_PORTS = {"linstor": 3370, "http": 3370, "linstor+ssl": 3371, "https": 3371}
_LINSTOR_TLS = ("LS_CERTFILE", "LS_KEYFILE", "LS_CAFILE")


def _no_datastore_of(driver: str) -> bool:
    """oned answers and lists no datastore of ``driver`` (False when oned cannot be asked)."""
    from ..oned import Oned

    try:
        pool = xmldoc.parse(Oned(timeout=API_TIMEOUT).call("one.datastorepool.info"), "one.datastorepool.info")
    except DriverError:
        return False
    return not any(driver in (xmldoc.text(ds, "TM_MAD"), xmldoc.text(ds, "DS_MAD"))
                   for ds in pool.iterfind("DATASTORE"))


def check_linstor_controllers(report: Report) -> None:
    """For each linstor_un datastore: does a controller of its LS_CONTROLLERS answer? The
    drivers take the first that does, so one line per datastore none of whose controllers
    answers, and one per datastore with some unreachable (failover then has fewer left)."""
    conf_path = os.environ.get("ONE_TWEAKS_CONF") or "/etc/one/one-tweaks.conf"
    try:
        config = Config.load()
    except DriverError as exc:
        report.add(f"api: {exc}: fix that file")
        return
    from ..oned import Oned

    try:
        pool = xmldoc.parse(Oned(timeout=API_TIMEOUT).call("one.datastorepool.info"),
                            "one.datastorepool.info")
    except DriverError as exc:
        report.add(f"api: cannot list the linstor_un datastores ({exc}): check ONE_XMLRPC/ONE_AUTH for this user; "
                   "--offline skips this check")
        return
    probed: dict[tuple[str, ...], str] = {}  # (controller, TLS files) -> "" or why it does not answer
    for ds in pool.iterfind("DATASTORE"):
        if "linstor_un" not in (xmldoc.text(ds, "TM_MAD"), xmldoc.text(ds, "DS_MAD")):
            continue
        label = f"datastore {xmldoc.text(ds, 'ID')} ({xmldoc.text(ds, 'NAME')})"
        cfg = config.overlay(xmldoc.template_attrs(ds.find("TEMPLATE")))
        tls = tuple(cfg.get(k).strip() for k in _LINSTOR_TLS)
        raw = cfg.get("LS_CONTROLLERS").strip() or os.environ.get("LS_CONTROLLERS", "").strip() or "localhost"
        controllers = [c for c in re.split(r"[\s,]+", raw) if c]
        for c in controllers:
            if (c, *tls) not in probed:
                probed[(c, *tls)] = _probe_linstor(c, tls)
        errors = {c: probed[(c, *tls)] for c in controllers if probed[(c, *tls)]}
        where = f"LS_CONTROLLERS of its template or {conf_path}"
        if len(errors) == len(controllers):
            detail = "; ".join(f"{c}: {e}" for c, e in errors.items())
            report.add(f"api: no LINSTOR controller of {label} answers ({detail}): every linstor_un action on it "
                       f"fails; check {where} (and LS_CERTFILE/LS_KEYFILE/LS_CAFILE for TLS) and that this "
                       "front-end can reach the controller; --offline skips this check")
        elif errors:
            detail = "; ".join(f"{c}: {e}" for c, e in errors.items())
            report.add(f"api: LINSTOR controller(s) of {label} unreachable ({detail}): the drivers fail over to "
                       f"the others, but fix or remove them in {where}")


def _linstor_tls(certfile: str, keyfile: str, cafile: str) -> ssl.SSLContext:
    """The TLS client side as python-linstor sets it up for the drivers: the controller's
    certificate verified (with its host name) only against LS_CAFILE, not verified without it
    (as the drivers then do not either); the client certificate from LS_CERTFILE/LS_KEYFILE."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile:
        context.load_verify_locations(cafile)
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if keyfile and not certfile:
        raise ValueError("LS_KEYFILE is set without LS_CERTFILE")
    if certfile:
        context.load_cert_chain(certfile, keyfile or None)
    return context


def _probe_linstor(controller: str, tls: tuple[str, ...]) -> str:
    """"" when ``controller`` answers GET /v1/controller/version as LINSTOR does, else why not."""
    certfile, keyfile, cafile = tls
    default = "linstor+ssl" if any(tls) else "linstor"
    try:
        parts = urlsplit(controller if "://" in controller else f"{default}://{controller}")
        scheme = parts.scheme.lower()
        if scheme not in LINSTOR_PORTS or not parts.hostname:
            return "not a controller address (host[:port], linstor:// or linstor+ssl://)"
        port = parts.port or LINSTOR_PORTS[scheme]
    except ValueError as exc:
        return f"not a controller address ({exc})"
    conn: http.client.HTTPConnection
    try:
        if scheme in ("linstor+ssl", "https"):
            conn = http.client.HTTPSConnection(parts.hostname, port, timeout=API_TIMEOUT,
                                               context=_linstor_tls(certfile, keyfile, cafile))
        else:
            conn = http.client.HTTPConnection(parts.hostname, port, timeout=API_TIMEOUT)
    except (OSError, ValueError) as exc:
        return f"TLS settings: {exc}"
    try:
        conn.request("GET", "/v1/controller/version", headers={"Connection": "close",
                                                               "User-Agent": "one-tweaks-doctor"})
        response = conn.getresponse()
        status, body = response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        if isinstance(exc, TimeoutError):
            return f"no answer within {API_TIMEOUT:g}s"
        if isinstance(exc, ssl.SSLCertVerificationError):
            return (f"its TLS certificate does not verify against LS_CAFILE {cafile} "
                    f"({exc.verify_message or exc.reason})")
        if isinstance(exc, ssl.SSLError):
            who = "without a client certificate (LS_CERTFILE/LS_KEYFILE)" if not certfile else \
                f"with the client certificate {certfile}"
            return f"TLS handshake failed {who}: {exc.reason or exc}"
        return str(exc) or type(exc).__name__
    finally:
        conn.close()
    try:
        reply = json.loads(body) if body else None
    except ValueError:
        reply = None
    if status != 200 or not isinstance(reply, dict) or "version" not in reply:
        return f"HTTP {status} without LINSTOR's version reply: is this a LINSTOR controller?"
    return ""


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
