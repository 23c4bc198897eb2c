"""``one-tweaks install``, ``one-tweaks uninstall`` and ``one-tweaks doctor``.

    one-tweaks install   [--remotes DIR] [--oned-conf FILE] [--vmm-execrc FILE] [--dry-run]
    one-tweaks uninstall [--remotes DIR] [--oned-conf FILE] [--vmm-execrc FILE] [--dry-run]
    one-tweaks doctor    [--remotes DIR] [--oned-conf FILE] [--vmm-execrc FILE] [--offline] [--skip CHECK,...]

install writes every executable oned runs (``tm/<driver>/<action>``,
``datastore/<driver>/<action>``, ``vmm/kvm/<override>``) with this environment's Python as
interpreter, and patches oned.conf and vmm_execrc; it records what it did in
``<remotes>/../one-tweaks-install/state.json`` so that uninstall takes out exactly that.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import DriverError
from . import files, patch, plan, template

DEFAULT_REMOTES = "/var/lib/one/remotes"
DEFAULT_ONED_CONF = "/etc/one/oned.conf"
DEFAULT_VMM_EXECRC = "/etc/one/vmm_exec/vmm_execrc"

OUR_ENTRIES = ("from tm.entry import tm_main", "from datastore.entry import ds_main", "from vmm.entry import vmm_main")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser(command: str, description: str) -> argparse.ArgumentParser:
    p = _Parser(prog=f"one-tweaks {command}", description=description)
    p.add_argument("--remotes", default=DEFAULT_REMOTES, metavar="DIR",
                   help=f"OpenNebula's remotes directory (default {DEFAULT_REMOTES})")
    p.add_argument("--oned-conf", default=None, metavar="FILE", help=f"oned.conf (default {DEFAULT_ONED_CONF})")
    p.add_argument("--vmm-execrc", default=None, metavar="FILE",
                   help=f"the VMM exec driver's rc file (default {DEFAULT_VMM_EXECRC})")
    return p


def _guard(command: str, body: Callable[[], int]) -> int:
    try:
        return body()
    except DriverError as exc:
        sys.stderr.write(f"one-tweaks {command}: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"one-tweaks {command}: interrupted\n")
        return 130


def _diff(before: str, after: str, path: str, label: str) -> str:
    lines = difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                 fromfile=path, tofile=f"{path} ({label})")
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")


def _warn(command: str, line: str) -> None:
    sys.stderr.write(f"one-tweaks {command}: warning: {line}\n")


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise DriverError(f"{path}: is a directory, expected a script") from None
    except OSError as exc:
        raise DriverError(f"{path}: cannot read: {exc.strerror}") from None


def is_ours(data: bytes) -> bool:
    lines = data.decode("utf-8", "replace").splitlines()
    return len(lines) >= 2 and lines[0].startswith("#!") and lines[1] in OUR_ENTRIES


# --- install -----------------------------------------------------------------------------


def _script_state(path: str, content: bytes, owner: tuple[int, int] | None) -> str:
    """"same", "differs" or "absent"."""
    data = _read_bytes(path)
    if data is None:
        return "absent"
    st = os.stat(path)
    if data != content or st.st_mode & 0o7777 != 0o755 or (owner is not None and (st.st_uid, st.st_gid) != owner):
        return "differs"
    return "same"


def _dir_owner(remotes: str, rel: str) -> tuple[int, int] | None:
    """Owner the script at ``rel`` must have: that of the nearest existing directory."""
    path = os.path.dirname(os.path.join(remotes, rel))
    while not os.path.isdir(path):
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    return files.owner_of(path)


def install(args: argparse.Namespace) -> int:
    remotes = os.path.abspath(args.remotes)
    oned_conf = os.path.abspath(args.oned_conf or DEFAULT_ONED_CONF)
    vmm_execrc = os.path.abspath(args.vmm_execrc or DEFAULT_VMM_EXECRC)
    state_dir = files.state_dir(remotes)
    state = files.load_state(state_dir)
    if state is not None:
        for key, path in (("oned_conf", oned_conf), ("vmm_execrc", vmm_execrc)):
            if state[key] != path:
                raise DriverError(f"already installed with {state[key]} (state in {state_dir}); "
                                  f"run one-tweaks uninstall first to switch to {path}")
    the_plan = plan.build()

    oned_before = files.read_text(oned_conf, "oned.conf")
    vmm_before = files.read_text(vmm_execrc, "vmm_execrc")
    template.parse(oned_before, oned_conf)  # a syntax error names the file and line
    oned_after, oned_edits, warnings = patch.patch_oned(oned_before, the_plan)
    vmm_after, vmm_edits = patch.patch_vmm_execrc(vmm_before, the_plan.drivers)

    known: dict[str, dict[str, Any]] = dict(state["scripts"]) if state else {}
    todo: list[tuple[str, bytes, str]] = []  # (rel, content, why)
    for rel, text in sorted(the_plan.scripts.items()):
        content = text.encode()
        path = os.path.join(remotes, rel)
        status = _script_state(path, content, _dir_owner(remotes, rel))
        if status == "same":
            known.setdefault(rel, {"saved": False})
        elif status == "absent" or rel in known:
            todo.append((rel, content, "write"))
        else:
            todo.append((rel, content, "replace"))
    stale = sorted(rel for rel in known if rel not in the_plan.scripts)

    for line in warnings:
        _warn("install", line)
    if args.dry_run:
        sys.stdout.write(_diff(oned_before, oned_after, oned_conf, "one-tweaks install"))
        sys.stdout.write(_diff(vmm_before, vmm_after, vmm_execrc, "one-tweaks install"))
        for rel, _, why in todo:
            verb = "write" if why == "write" else "replace (keeping the original)"
            _say(f"would {verb} {os.path.join(remotes, rel)}")
        for rel in stale:
            _say(f"would remove the stale {os.path.join(remotes, rel)}")
        if not todo and not stale and oned_after == oned_before and vmm_after == vmm_before:
            _say("nothing to change: already installed")
        return 0

    # 1. keep what is about to be changed
    backups = []
    if oned_after != oned_before:
        backups.append(files.backup(oned_conf))
    if vmm_after != vmm_before:
        backups.append(files.backup(vmm_execrc))
    for rel, _, why in todo:
        if why == "replace":
            saved = os.path.join(state_dir, files.SAVED_DIR, rel)
            os.makedirs(os.path.dirname(saved), mode=0o700, exist_ok=True)
            original = os.path.join(remotes, rel)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(saved)
            shutil.copy2(original, saved, follow_symlinks=False)  # a symlink stays a symlink
            st = os.lstat(original)
            known[rel] = {"saved": True, "uid": st.st_uid, "gid": st.st_gid}
        else:
            known.setdefault(rel, {"saved": False})

    # 2. record it before doing it: a crash part-way leaves a state uninstall can use
    new_state: dict[str, Any] = state or {"format": 1, "remotes": remotes, "oned_conf": oned_conf,
                                          "vmm_execrc": vmm_execrc, "oned_conf_edits": [],
                                          "vmm_execrc_edits": [], "dirs": []}
    new_state["interpreter"] = the_plan.interpreter
    new_state["oned_conf_edits"] = [*new_state["oned_conf_edits"], *oned_edits]
    new_state["vmm_execrc_edits"] = [*new_state["vmm_execrc_edits"], *vmm_edits]
    new_state["scripts"] = known
    created: list[str] = []
    for rel in sorted({os.path.dirname(rel) for rel, _, _ in todo}):
        files.make_dirs(remotes, rel, created)
    new_state["dirs"] = [*new_state["dirs"], *created]
    files.save_state(state_dir, new_state)

    # 3. do it
    for rel, content, _ in todo:
        path = os.path.join(remotes, rel)
        files.write_atomic(path, content, mode=0o755, owner=files.owner_of(os.path.dirname(path)))
    if vmm_after != vmm_before:
        files.write_atomic(vmm_execrc, files.encode(vmm_after))
    if oned_after != oned_before:
        files.write_atomic(oned_conf, files.encode(oned_after))
    for rel in stale:
        _remove_script(remotes, state_dir, rel, known.pop(rel), "install")
    files.save_state(state_dir, new_state)

    changed = bool(todo or stale or backups)
    if not changed:
        _say("one-tweaks install: nothing to change, already installed")
        return 0
    _say(f"one-tweaks install: {len(todo)} scripts written under {remotes}"
         + (f", {len(stale)} stale ones removed" if stale else ""))
    for path in backups:
        _say(f"one-tweaks install: backup of the original in {path}")
    if oned_after != oned_before or vmm_after != vmm_before:
        _say("one-tweaks install: restart oned for the configuration to take effect (systemctl restart opennebula)")
    for key, module in the_plan.vmm_missing:
        _warn("install", f"no VMM override for {key} in this build (vmm.actions.{module}): -l {key} not configured")
    return 0


def _remove_script(remotes: str, state_dir: str, rel: str, entry: dict[str, Any], command: str) -> None:
    path = os.path.join(remotes, rel)
    if os.path.lexists(path):
        if not os.path.islink(path) and is_ours(_read_bytes(path) or b""):
            os.unlink(path)
        else:
            _warn(command, f"{path} was replaced by someone else since install: left as it is")
            return
    if entry.get("saved"):
        saved = os.path.join(state_dir, files.SAVED_DIR, rel)
        if os.path.lexists(saved):
            shutil.copy2(saved, path, follow_symlinks=False)
            if "uid" in entry:
                os.lchown(path, entry["uid"], entry["gid"])
            os.unlink(saved)


# --- uninstall ---------------------------------------------------------------------------


def uninstall(args: argparse.Namespace) -> int:
    remotes = os.path.abspath(args.remotes)
    state_dir = files.state_dir(remotes)
    state = files.load_state(state_dir)
    if state is None:
        raise DriverError(f"nothing to uninstall: no install state in {state_dir} (is --remotes right?)")
    for key, given in (("oned_conf", args.oned_conf), ("vmm_execrc", args.vmm_execrc)):
        if given and os.path.abspath(given) != state[key]:
            raise DriverError(f"install patched {state[key]}, not {os.path.abspath(given)}")
    warnings: list[str] = []
    targets = [(state["oned_conf"], "oned.conf", patch.revert_oned, state["oned_conf_edits"]),
               (state["vmm_execrc"], "vmm_execrc", patch.revert_vmm_execrc, state["vmm_execrc_edits"])]
    results = []
    for path, what, revert, edits in targets:
        if not edits:
            continue
        before = files.read_text(path, what)
        results.append((path, before, revert(before, edits, warnings)))
    for line in warnings:
        _warn("uninstall", line)
    if args.dry_run:
        for path, before, after in results:
            sys.stdout.write(_diff(before, after, path, "one-tweaks uninstall"))
        for rel in sorted(state["scripts"]):
            _say(f"would remove {os.path.join(remotes, rel)}"
                 + (" (and put back the original)" if state["scripts"][rel].get("saved") else ""))
        return 0
    for path, before, after in results:
        if after != before:
            files.write_atomic(path, files.encode(after))
    for rel, entry in sorted(state["scripts"].items()):
        _remove_script(remotes, state_dir, rel, entry, "uninstall")
    for rel in reversed(state["dirs"]):
        with contextlib.suppress(OSError):  # not empty: something else lives there now
            os.rmdir(os.path.join(remotes, rel))
    shutil.rmtree(state_dir, ignore_errors=True)
    _say(f"one-tweaks uninstall: {len(state['scripts'])} scripts removed, "
         f"{', '.join(p for p, _, _ in results) or 'no configuration'} restored")
    if results:
        _say("one-tweaks uninstall: restart oned for the configuration to take effect (systemctl restart opennebula)")
    return 0


# --- entry points ------------------------------------------------------------------------


def install_main(argv: Sequence[str]) -> int:
    p = _parser("install", "Install the storage drivers and VMM overrides into OpenNebula's remotes "
                           "and patch oned.conf and vmm_execrc (idempotent).")
    p.add_argument("--dry-run", action="store_true", help="print the diff and what would be written; change nothing")
    args = p.parse_args(list(argv))
    return _guard("install", lambda: install(args))


def uninstall_main(argv: Sequence[str]) -> int:
    p = _parser("uninstall", "Take out exactly what one-tweaks install added.")
    p.add_argument("--dry-run", action="store_true", help="print the diff and what would be removed; change nothing")
    args = p.parse_args(list(argv))
    return _guard("uninstall", lambda: uninstall(args))


def doctor_main(argv: Sequence[str]) -> int:
    from . import doctor

    p = _parser("doctor", "Check a front-end: one line per problem with how to fix it; exit 1 when there is one.")
    p.add_argument("--offline", action="store_true", help="do not contact the storage API")
    p.add_argument("--skip", action="append", default=[], metavar="CHECK",
                   help=f"skip checks (comma list, repeatable): {', '.join(doctor.CHECKS)}")
    args = p.parse_args(list(argv))
    skip = {s for item in args.skip for s in item.split(",") if s}
    unknown = skip - set(doctor.CHECKS)
    if unknown:
        p.error(f"unknown check(s) {', '.join(sorted(unknown))}; known: {', '.join(doctor.CHECKS)}")
    if args.offline:
        skip.add("api")
    return _guard("doctor", lambda: doctor.run(os.path.abspath(args.remotes),
                                               os.path.abspath(args.oned_conf or DEFAULT_ONED_CONF),
                                               os.path.abspath(args.vmm_execrc or DEFAULT_VMM_EXECRC), skip))
