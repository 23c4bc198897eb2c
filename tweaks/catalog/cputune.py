"""cputune: CPU bandwidth limits in ``<cputune>`` (addon-storpool's cputune.py):
period/quota for the vCPUs, the whole VM (global_), the emulator threads and the
iothreads, from T_CPUTUNE_PERIOD, T_CPUTUNE_QUOTA, T_CPUTUNE_GLOBAL_PERIOD, ...

Each value is optional (``none`` = leave alone); an element that is already there
gets the new value, never a second copy. libvirt's ranges: period 1000..1000000 us,
quota -1 (no limit) or 1000..17592186044415 us.

``<shares>``: the add-on removed it whenever a limit was set unless T_CPUTUNE_SHARES_KEEP
was present. Here it is KEPT by default: shares (a weight against other VMs) and
quota (a hard cap) are independent cgroup controls, and dropping oned's shares would
reset the VM to the cgroup default weight, which for a VM with CPU < 1 means a higher
priority than it was given. An operator who wants the add-on's behaviour sets
``drop_shares: true``; a VM can still keep its shares with T_CPUTUNE_SHARES_KEEP=yes
(that direction cannot raise its priority).
"""

from __future__ import annotations

from typing import Any

from ..params import Bool
from ..tweak import Context, Tweak
from ._numbers import IntRanges

PERIOD = ((1000, 1000000),)
QUOTA = ((-1, -1), (1000, 17592186044415))
SCOPES = ("", "global_", "emulator_", "iothread_")
NAMES = tuple(f"{scope}{kind}" for scope in SCOPES for kind in ("period", "quota"))
_WHO = {"": "each vCPU", "global_": "the whole VM", "emulator_": "the emulator threads",
        "iothread_": "each iothread"}


def _param(name: str) -> IntRanges:
    scope, _, kind = name.rpartition("_") if name.count("_") else ("", "", name)
    who = _WHO[f"{scope}_" if scope else ""]
    if kind == "period":
        return IntRanges(name, f"CPU period of {who} in microseconds (none: leave alone)", default="none",
                         ranges=PERIOD, words=("none",))
    return IntRanges(name, f"CPU quota of {who} in microseconds per period, -1 for no limit (none: leave alone)",
                     default="none", ranges=QUOTA, words=("none",))


class CpuTune(Tweak):
    summary = "cputune period/quota limits for vCPUs, the whole VM, emulator and iothreads"
    attributes = (*(f"T_CPUTUNE_{name.upper()}" for name in NAMES), "T_CPUTUNE_SHARES_KEEP")
    params = (
        *(_param(name) for name in NAMES),
        Bool("drop_shares", "remove <shares> when a limit is set (addon-storpool did); operator setting",
             default=False),
        Bool("keep_shares", "keep <shares> even when drop_shares is set", default=False),
    )

    def apply(self, ctx: Context) -> None:
        wanted: dict[str, Any] = {name: ctx.params[name] for name in NAMES if ctx.params[name] != "none"}
        if not wanted:
            ctx.note("no period or quota given")
            return
        editor = ctx.editor
        cputune = editor.child(ctx.root, "cputune")
        for name, value in wanted.items():
            existing = cputune.find(name)
            if existing is None:
                editor.add(cputune, name, text=str(value))
            else:
                editor.set_text(existing, value)
        shares = cputune.find("shares")
        if shares is not None and ctx.params["drop_shares"]:
            if ctx.params["keep_shares"]:
                ctx.note("kept <shares> (keep_shares)")
            else:
                editor.remove(shares)


TWEAK = CpuTune()
