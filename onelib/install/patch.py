"""The edits install makes to ``oned.conf`` and ``vmm_execrc``, and their exact reversal.

Each edit is recorded (a JSON-able dict) so that uninstall can undo it:

- ``args``: a driver's ARGUMENTS value changed from ``before`` to ``after`` (the raw text
  with its quotes). Undone by putting ``before`` back when the value still reads ``after``;
  when the operator has changed that line since, only what install added is taken out
  (``added`` list items, ``added_options`` whole options, ``replaced`` -l entries).
- ``insert``: ``text`` inserted (a TM_MAD_CONF/DS_MAD_CONF block, restricted attribute
  lines). Undone by removing that exact text; when it was edited since, by removing the
  attributes named in ``entries``.
- ``line`` (vmm_execrc): the LIVE_DISK_SNAPSHOTS line changed from ``before`` to ``after``;
  fallback: remove the ``added`` words from it.
"""

from __future__ import annotations

import re
from typing import Any

from . import template as t
from .plan import DEFAULT_SYSTEM_DS, Plan, driver_conf

Edit = dict[str, Any]

# (vector, -l style?) option names GetoptLong knows for each MAD
TM_D = ("-d", "--tm-types")
DS_D = ("-d", "--ds-types")
DS_S = ("-s", "--system-ds-types")
VMM_L = ("-l", "--local")


def _replace(text: str, start: int, end: int, new: str) -> str:
    return text[:start] + new + text[end:]


def _vector(text: str, what: str, select: dict[str, str]) -> t.Attr | None:
    found = t.find(t.parse(text), what, **select)
    return found[0] if found else None


def _args_value(vector: t.Attr) -> t.Value | None:
    return vector.get("ARGUMENTS")


def _set_args(text: str, value: t.Value, args: str) -> str:
    raw = t.quote(args) if value.quoted or " " in args else args
    return _replace(text, value.start, value.end, raw)


# --- install -----------------------------------------------------------------------------


def add_list_items(args: str, option: tuple[str, str], items: list[str], default: tuple[str, ...] | None,
                   record: Edit) -> str:
    """Add ``items`` to a comma list option. Absent option: nothing to do when absence
    means "all drivers" (``default`` None), else the option is added with ``default``."""
    opt = t.find_option(args, *option)
    if opt is None:
        if default is None:
            return args
        new = args + ("" if not args or args[-1].isspace() else " ") + f"{option[0]} " + ",".join([*default, *items])
        record.setdefault("added_options", {})[option[0]] = new[len(args):]
        record.setdefault("added", {})[option[0]] = list(items)
        return new
    current = t.split_list(opt.value)
    missing = [i for i in items if i not in current]
    if not missing:
        return args
    record.setdefault("added", {})[option[0]] = missing
    return t.set_option(args, *option, ",".join([*current, *missing]))


def set_local_actions(args: str, plan: Plan, record: Edit) -> str:
    if not plan.vmm_l:
        return args
    opt = t.find_option(args, *VMM_L)
    if opt is None:
        wanted: list[tuple[str, str | None]] = list(plan.vmm_l.items())
        new = args + ("" if not args or args[-1].isspace() else " ") + f"{VMM_L[0]} {t.join_actions(wanted)}"
        record["added_options"] = {VMM_L[0]: new[len(args):]}
        record["added"] = {VMM_L[0]: [k for k, _ in wanted]}
        return new
    items = t.parse_actions(opt.value)
    keys = {k.lower(): i for i, (k, _) in enumerate(items)}
    added, replaced = [], {}
    for key, script in plan.vmm_l.items():
        if key in keys:
            i = keys[key]
            old = items[i][1]
            if old in plan.vmm_accepted.get(key, {script}):
                continue
            replaced[items[i][0]] = old
            items[i] = (items[i][0], script)
        else:
            items.append((key, script))
            added.append(key)
    if not added and not replaced:
        return args
    if added:
        record["added"] = {VMM_L[0]: added}
    if replaced:
        record["replaced"] = {VMM_L[0]: replaced}
    record["scripts"] = dict(plan.vmm_l)
    return t.set_option(args, *VMM_L, t.join_actions(items))


def _patch_args(text: str, what: str, select: dict[str, str], change: Any, edits: list[Edit],
                warnings: list[str]) -> str:
    label = what + "".join(f" {v}" for v in select.values())
    vector = _vector(text, what, select)
    if vector is None:
        warnings.append(f"oned.conf has no {label} = [ ... ]: not patched")
        return text
    value = _args_value(vector)
    if value is None:
        warnings.append(f"oned.conf {label} has no ARGUMENTS: not patched")
        return text
    record: Edit = {"kind": "args", "what": what, "select": select}
    new_args = change(value.text, record)
    if new_args == value.text:
        return text
    new_text = _set_args(text, value, new_args)
    record["before"] = value.raw
    record["after"] = new_text[value.start:value.end + len(new_text) - len(text)]
    edits.append(record)
    return new_text


def render_vector(name: str, pairs: tuple[tuple[str, str], ...], comment: str) -> str:
    body = ",\n".join(f"    {k} = {t.quote(v)}" for k, v in pairs)
    return f"# {comment}\n{name} = [\n{body}\n]\n"


def _insert_after_last(text: str, name: str, block: str, separate: bool) -> tuple[str, str]:
    """Insert ``block`` after the line where the last ``name`` attribute ends (or at the end
    of the file); returns (new text, the exact inserted text)."""
    same = t.find(t.parse(text), name)
    if same:
        at = t.end_of_line(text, same[-1].end)
        prefix = "\n" if at == len(text) and not text.endswith("\n") else ""
    else:
        at = len(text)
        prefix = "" if text.endswith("\n") or not text else "\n"
        separate = True
    inserted = prefix + ("\n" if separate else "") + block
    return text[:at] + inserted + text[at:], inserted


def patch_oned(text: str, plan: Plan) -> tuple[str, list[Edit], list[str]]:
    """``text`` with every change install wants; the edits made and warnings."""
    edits: list[Edit] = []
    warnings: list[str] = []
    drivers = plan.drivers

    text = _patch_args(text, "TM_MAD", {}, lambda a, r: add_list_items(a, TM_D, drivers, None, r), edits,
                       warnings)

    def ds_args(args: str, record: Edit) -> str:
        args = add_list_items(args, DS_D, drivers, None, record)
        return add_list_items(args, DS_S, drivers, DEFAULT_SYSTEM_DS, record)

    text = _patch_args(text, "DATASTORE_MAD", {}, ds_args, edits, warnings)
    text = _patch_args(text, "VM_MAD", {"NAME": "kvm"}, lambda a, r: set_local_actions(a, plan, r), edits, warnings)

    for driver in drivers:
        conf = driver_conf(driver)
        for vector, pairs in (("TM_MAD_CONF", conf.tm_mad_conf), ("DS_MAD_CONF", conf.ds_mad_conf)):
            existing = t.find(t.parse(text), vector, NAME=driver)
            if existing:
                for key, want in pairs:
                    value = existing[-1].text_of(key)
                    if value is None or value.upper() != want.upper():
                        warnings.append(f"oned.conf {vector} {driver} has {key}={value!r}, this driver expects "
                                        f"{want!r}: left as it is (edit it by hand)")
                continue
            block = render_vector(vector, (("NAME", driver), *pairs),
                                  f"{driver}: added by one-tweaks install (one-tweaks uninstall removes it)")
            text, inserted = _insert_after_last(text, vector, block, separate=True)
            edits.append({"kind": "insert", "what": f"{vector} {driver}", "text": inserted,
                          "entries": [[vector, {"NAME": driver}]]})

    by_attr: dict[str, list[str]] = {}
    for name, value in plan.restricted:
        by_attr.setdefault(name, []).append(value)
    for name, values in by_attr.items():
        have: set[str] = {a.value.text.upper() for a in t.find(t.parse(text), name) if a.value is not None}
        absent = [v for v in values if v.upper() not in have]
        if not absent:
            continue
        lines = "".join(f"{name} = {t.quote(v)}\n" for v in absent)
        block = f"# one-tweaks install: attributes of its drivers and tweak rules only oneadmin may set\n{lines}"
        text, inserted = _insert_after_last(text, name, block, separate=False)
        edits.append({"kind": "insert", "what": name, "text": inserted,
                      "entries": [[name, {"": v}] for v in absent]})
    return text, edits, warnings


_LDS = re.compile(r"^(?P<head>\s*(?:export\s+)?LIVE_DISK_SNAPSHOTS=)(?P<q>[\"']?)(?P<val>.*?)(?P=q)"
                  r"(?P<tail>\s*(?:#.*)?)$")


def _lds_lines(text: str) -> list[tuple[int, int, re.Match[str]]]:
    out = []
    offset = 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        m = _LDS.match(body)
        if m:
            out.append((offset, offset + len(body), m))
        offset += len(line)
    return out


def live_snapshot_words(text: str) -> list[str] | None:
    found = _lds_lines(text)
    return found[-1][2].group("val").split() if found else None


def patch_vmm_execrc(text: str, drivers: list[str]) -> tuple[str, list[Edit]]:
    wanted = [w for d in drivers for w in driver_conf(d).live_disk_snapshots]
    found = _lds_lines(text)
    if not found:
        prefix = "" if text.endswith("\n") or not text else "\n"
        inserted = prefix + f'LIVE_DISK_SNAPSHOTS="{" ".join(wanted)}"\n'
        return text + inserted, [{"kind": "insert", "what": "LIVE_DISK_SNAPSHOTS", "text": inserted}]
    start, end, m = found[-1]
    words = m.group("val").split()
    missing = [w for w in wanted if w not in words]
    if not missing:
        return text, []
    val = m.group("val")
    sep = "" if not val or val.endswith(" ") else " "
    q = m.group("q") or '"'
    line = f"{m.group('head')}{q}{val}{sep}{' '.join(missing)}{q}{m.group('tail')}"
    return _replace(text, start, end, line), [{"kind": "line", "what": "LIVE_DISK_SNAPSHOTS",
                                                "before": m.group(0), "after": line, "added": missing}]


# --- uninstall ---------------------------------------------------------------------------


def _remove_items(args: str, record: Edit, warnings: list[str], label: str) -> str:
    """Take out what install added to an ARGUMENTS string the operator has edited since."""
    for flag, text in record.get("added_options", {}).items():
        if text in args:
            args = args.replace(text, "", 1)
            record.get("added", {}).pop(flag, None)
    names = {"-d": TM_D if record["what"] == "TM_MAD" else DS_D, "-s": DS_S, "-l": VMM_L}
    for flag, items in record.get("added", {}).items():
        option = names[flag]
        opt = t.find_option(args, *option)
        if opt is None:
            continue
        if flag == "-l":
            ours = record.get("scripts", {})
            acts = [(k, v) for k, v in t.parse_actions(opt.value)
                    if not (k.lower() in items and v == ours.get(k.lower(), v))]
            args = t.set_option(args, *option, t.join_actions(acts)) if acts else t.drop_option(args, *option)
        else:
            left = [i for i in t.split_list(opt.value) if i not in items]
            args = t.set_option(args, *option, ",".join(left)) if left else t.drop_option(args, *option)
    for flag, old in record.get("replaced", {}).items():
        option = names[flag]
        opt = t.find_option(args, *option)
        if opt is None:
            continue
        ours = record.get("scripts", {})
        acts = []
        for k, v in t.parse_actions(opt.value):
            if k in old and v == ours.get(k.lower()):
                v = old[k]
            acts.append((k, v))
        args = t.set_option(args, *option, t.join_actions(acts))
    warnings.append(f"oned.conf {label} ARGUMENTS was edited after install: removed only what install added")
    return args


def revert_oned(text: str, edits: list[Edit], warnings: list[str]) -> str:
    for record in reversed(edits):
        if record["kind"] == "args":
            label = record["what"] + "".join(f" {v}" for v in record["select"].values())
            vector = _vector(text, record["what"], record["select"])
            value = _args_value(vector) if vector is not None else None
            if value is None:
                warnings.append(f"oned.conf {label} ARGUMENTS is gone: nothing to restore")
                continue
            if value.raw == record["after"]:
                text = _replace(text, value.start, value.end, record["before"])
            else:
                text = _set_args(text, value, _remove_items(value.text, record, warnings, label))
        elif record["kind"] == "insert":
            inserted = record["text"]
            if inserted in text:
                at = text.index(inserted)
                text = text[:at] + text[at + len(inserted):]
                continue
            warnings.append(f"oned.conf {record['what']} added by install was edited since: removing its entries")
            for name, match in record.get("entries", []):
                text = _remove_attrs(text, name, match)
            for line in inserted.splitlines(keepends=True):
                if line.startswith("# ") and line.endswith("\n") and line in text:
                    at = text.index(line)
                    if at == 0 or text[at - 1] == "\n":
                        text = text[:at] + text[at + len(line):]
    return text


def _remove_attrs(text: str, name: str, match: dict[str, str]) -> str:
    while True:
        attrs = t.find(t.parse(text), name)
        if "" in match:  # a single attribute with this value
            attrs = [a for a in attrs if a.value is not None and a.value.text.upper() == match[""].upper()]
        else:
            attrs = [a for a in attrs if all(a.text_of(k) == v for k, v in match.items())]
        spans = [s for s in (t.line_span(text, a.start, a.end) for a in attrs) if s]
        if not spans:
            return text
        start, end = spans[-1]
        text = text[:start] + text[end:]


def revert_vmm_execrc(text: str, edits: list[Edit], warnings: list[str]) -> str:
    for record in reversed(edits):
        if record["kind"] == "insert":
            if record["text"] in text:
                at = text.index(record["text"])
                text = text[:at] + text[at + len(record["text"]):]
            else:
                warnings.append("vmm_execrc: the LIVE_DISK_SNAPSHOTS line install added was edited since: left as is")
            continue
        for start, end, m in reversed(_lds_lines(text)):
            if m.group(0) == record["after"]:
                text = _replace(text, start, end, record["before"])
                break
        else:
            found = _lds_lines(text)
            if not found:
                continue
            start, end, m = found[-1]
            words = [w for w in m.group("val").split() if w not in record["added"]]
            q = m.group("q") or '"'
            text = _replace(text, start, end, f"{m.group('head')}{q}{' '.join(words)}{q}{m.group('tail')}")
            warnings.append("vmm_execrc: LIVE_DISK_SNAPSHOTS was edited after install: removed only what install added")
    return text
