"""hyperv: Hyper-V enlightenments for Windows guests (T_HV_*; each on/off, any yes/no word).

Each attribute sets ``<features><hyperv><NAME state='on|off'/>``; an element already
there gets the new state, so nothing is ever duplicated (addon-storpool appended a
second copy, which libvirt's schema rejects). New elements go to libvirt's place.

- T_HV_SPINLOCKS: ``on[:retries=N]``, ``retries=N`` (means on) or ``off``; N >= 4095
  (libvirt's minimum). Without N an existing valid count is kept, else 4096 (oned's
  default HYPERV_OPTIONS).
- T_HV_TIME: libvirt has no ``<hyperv><time>``; hv-time is the clock timer
  ``<clock><timer name='hypervclock' present='yes|no'/>``.
- T_HV_CRASH: libvirt has no ``<hyperv><crash>``; hv-crash is the
  ``<devices><panic model='hyperv'/>`` device (``off`` removes it).

QEMU refuses to start when an enlightenment lacks the ones it depends on (synic needs
vpindex; stimer needs synic and time; tlbflush and ipi need vpindex; evmcs needs vapic),
so those are turned on too, and ``--explain`` says so (addon-storpool added only what
was asked, and the VM did not start). Only a dependency the VM explicitly turns off
(``T_HV_VPINDEX=off`` with ``T_HV_SYNIC=on``) skips the rule. Nothing happens unless the domain already has
``<features><hyperv>`` (oned writes it for FEATURES/HYPERV=yes) or ``create`` is set; a
``<hyperv mode='passthrough'>`` (all enlightenments) is left alone.
"""

from __future__ import annotations

from typing import Any

from lxml import etree

from ..errors import ParamError
from ..params import Bool, Format, Int, Param, split_key_values
from ..tweak import Context, Tweak
from ..xmledit import Editor
from ._firmware import clock, feature

# libvirt's order of <hyperv> children.
HYPERV_ORDER = ("relaxed", "vapic", "spinlocks", "vpindex", "runtime", "synic", "stimer", "reset", "vendor_id",
                "frequencies", "reenlightenment", "tlbflush", "ipi", "evmcs", "avic")
# Parameter (= lowercase attribute suffix) for each plain <hyperv> child.
SWITCHES = ("relaxed", "vapic", "vpindex", "runtime", "synic", "stimer", "reset", "frequencies",
            "reenlightenment", "tlbflush", "ipi", "evmcs")
# QEMU's dependencies (target/i386/kvm/kvm.c kvm_hyperv_properties, plus synic -> vpindex).
DEPENDS = {"synic": ("vpindex",), "stimer": ("synic", "time"), "tlbflush": ("vpindex",),
           "ipi": ("vpindex",), "evmcs": ("vapic",)}
MIN_RETRIES = 4095
MAX_RETRIES = 0xFFFFFFFF
DEFAULT_RETRIES = 4096
RETRIES_KEYS: dict[str, Param] = {"retries": Int("retries", "", minimum=MIN_RETRIES, maximum=MAX_RETRIES)}


def parse_spinlocks(text: str) -> tuple[bool, int | None]:
    """``on[:retries=N]``, ``retries=N`` or ``off`` -> (state, retries)."""
    head, colon, tail = text.partition(":")
    if not colon and "=" in head:
        head, tail = "", head
    head = head.strip()
    retries = split_key_values(tail, RETRIES_KEYS).get("retries")
    state = Bool("state", "").parse(head) if head else retries is not None
    if not state and retries is not None:
        raise ParamError("retries= with spinlocks off")
    if not head and retries is None:
        raise ParamError("not on[:retries=N], retries=N or off")
    return state, retries


def _switch(name: str) -> Bool:
    return Bool(name, f"hv-{name} on/off (T_HV_{name.upper()}); empty: leave alone", default="")


class Hyperv(Tweak):
    summary = "Hyper-V enlightenments under <features><hyperv>, without duplicates"
    attributes = tuple(f"T_HV_{n.upper()}" for n in ("spinlocks", *SWITCHES, "time", "crash"))
    params = (
        Format("spinlocks", "on[:retries=N] | retries=N | off (N >= 4095); empty: leave alone", default="",
               parser=parse_spinlocks, syntax="on[:retries=N]|off", max_len=40),
        *(_switch(name) for name in SWITCHES),
        _switch("time"),
        Bool("crash", "hv-crash: a <panic model='hyperv'/> device on/off (T_HV_CRASH); empty: leave alone",
             default=""),
        Bool("create", "add <features><hyperv> when the domain has none (else do nothing)", default=False),
    )

    def apply(self, ctx: Context) -> None:
        wanted: dict[str, Any] = {p.name: ctx.params[p.name] for p in self.params
                                  if p.name != "create" and ctx.params[p.name] != ""}
        if not wanted:
            ctx.note("no T_HV_* attribute given")
            return
        root = ctx.root
        hyperv = root.find("features/hyperv")
        if hyperv is None and not ctx.params["create"]:
            ctx.note("the domain has no <features><hyperv> (FEATURES/HYPERV) and create is off")
            return
        if hyperv is not None and hyperv.get("mode") == "passthrough":
            ctx.note("<hyperv mode='passthrough'> already enables every enlightenment")
            return
        _add_dependencies(ctx, hyperv, wanted)
        editor = ctx.editor
        if hyperv is None:
            hyperv = feature(editor, "hyperv")
        for name in SWITCHES:
            if name in wanted:
                _set_state(editor, hyperv, name, "on" if wanted[name] else "off")
        if "spinlocks" in wanted:
            self._spinlocks(editor, hyperv, *wanted["spinlocks"])
        if "time" in wanted:
            _hypervclock(editor, "yes" if wanted["time"] else "no")
        if "crash" in wanted:
            _panic(ctx, wanted["crash"])

    def _spinlocks(self, editor: Editor, hyperv: etree._Element, state: bool, retries: int | None) -> None:
        el = _set_state(editor, hyperv, "spinlocks", "on" if state else "off")
        if not state:
            editor.set_attr(el, "retries", None)
            return
        if retries is None:
            current = el.get("retries", "")
            retries = int(current) if current.isdigit() and MIN_RETRIES <= int(current) <= MAX_RETRIES \
                else DEFAULT_RETRIES
        editor.set_attr(el, "retries", retries)


def _current_state(root: etree._Element, hyperv: etree._Element | None, name: str) -> bool:
    if name == "time":
        return any(t.get("name") == "hypervclock" and t.get("present", "yes") == "yes"
                   for t in root.iterfind("clock/timer"))
    if hyperv is None:
        return False
    el = hyperv.find(name)
    return el is not None and el.get("state") == "on"


def _add_dependencies(ctx: Context, hyperv: etree._Element | None, wanted: dict[str, Any]) -> None:
    """Turn on (in ``wanted``) what the enlightenments that end up on depend on."""
    def final(name: str) -> bool:
        if name in wanted:
            return bool(wanted[name])
        return _current_state(ctx.root, hyperv, name)

    added = True
    while added:  # stimer -> synic -> vpindex: repeat until nothing more is needed
        added = False
        for name, needs in DEPENDS.items():
            if not final(name):
                continue
            for need in needs:
                if final(need):
                    continue
                if need in wanted:
                    culprit = name if name in wanted else need
                    raise ctx.reject(culprit, f"QEMU needs hv-{need} for hv-{name}, "
                                              f"which T_HV_{need.upper()} turns off")
                wanted[need] = True
                added = True
                ctx.note(f"turned hv-{need} on: QEMU needs it for hv-{name}")


def _set_state(editor: Editor, hyperv: etree._Element, name: str, state: str) -> etree._Element:
    found = hyperv.findall(name)
    for extra in found[1:]:
        editor.remove(extra)
    el = found[0] if found else editor.add(hyperv, name, {"state": state}, order=HYPERV_ORDER)
    editor.set_attr(el, "state", state)
    return el


def _hypervclock(editor: Editor, present: str) -> None:
    for timer in clock(editor).iterfind("timer"):
        if timer.get("name") == "hypervclock":
            editor.set_attr(timer, "present", present)
            return
    editor.add(clock(editor), "timer", {"name": "hypervclock", "present": present})


def _panic(ctx: Context, on: bool) -> None:
    editor = ctx.editor
    devices = ctx.root.find("devices")
    panics = [] if devices is None else [p for p in devices.iterfind("panic") if p.get("model") == "hyperv"]
    if on and not panics:
        editor.add(ctx.devices(), "panic", {"model": "hyperv"})
    elif not on:
        for panic in panics:
            editor.remove(panic)


TWEAK = Hyperv()
