"""hyperv_clock: the clock Windows guests want under Hyper-V enlightenments (T_HV_CLOCK yes|no).

With ``yes`` and a ``<features><hyperv>`` in the domain, ``<clock>`` gets these timers
(added, or their attributes set; other timers are kept):
``hypervclock present='yes'``, ``rtc tickpolicy='catchup'``, ``pit tickpolicy='delay'``,
``hpet present='no'``, and ``offset`` (rule parameter, default ``utc``; attributes of the
old offset that ``utc``/``localtime`` do not take are dropped). oned's
FEATURES/LOCALTIME=yes (``offset='localtime'``) wins over the rule's offset.

addon-storpool's hyperv-clock.py ran for every VM with ``<hyperv>`` once installed and
replaced all timers; here the VM asks for it with T_HV_CLOCK and other timers stay. A VM
that also sets T_HV_TIME=off keeps the hypervclock timer off.
"""

from __future__ import annotations

from ..params import FALSE_WORDS, TRUE_WORDS, Bool, Choice
from ..tweak import Context, Tweak
from ._firmware import clock as make_clock

TIMERS: tuple[tuple[str, dict[str, str]], ...] = (
    ("hypervclock", {"present": "yes"}),
    ("rtc", {"tickpolicy": "catchup"}),
    ("pit", {"tickpolicy": "delay"}),
    ("hpet", {"present": "no"}),
)
# Attributes valid only with offset='variable', 'timezone' or 'absolute'.
OTHER_OFFSET_ATTRS = ("basis", "timezone", "start")


class HypervClock(Tweak):
    summary = "Hyper-V friendly clock: hypervclock, rtc catchup, pit delay, no hpet"
    attributes = ("T_HV_CLOCK",)
    params = (
        Bool("enabled", "set the Hyper-V clock timers"),
        Choice("offset", "clock offset to set", default="utc", choices=("utc", "localtime")),
    )

    def apply(self, ctx: Context) -> None:
        if not ctx.params["enabled"]:
            ctx.note("T_HV_CLOCK is off")
            return
        root = ctx.root
        if root.find("features/hyperv") is None:
            ctx.note("the domain has no <features><hyperv> (FEATURES/HYPERV)")
            return
        editor = ctx.editor
        current = root.find("clock")
        offset: str = ctx.params["offset"]
        localtime = (ctx.facts.get("template.FEATURES/LOCALTIME") or "").lower() in TRUE_WORDS
        if localtime and not ctx.explicit("offset"):
            offset = "localtime"
        clock = make_clock(editor, offset)
        if current is not None:
            # variable's adjustment (a time delta) is valid for utc/localtime too.
            for name in OTHER_OFFSET_ATTRS:
                editor.set_attr(clock, name, None)
            editor.set_attr(clock, "offset", offset)
        hv_time_off = (ctx.facts.get("user.T_HV_TIME") or "").strip().lower() in FALSE_WORDS
        for name, attrs in TIMERS:
            if name == "hypervclock" and hv_time_off:
                # The hyperv rule (before this one) turned hv-time off as the VM asked: that
                # specific request stands (else each run would flip the timer twice).
                ctx.note("hypervclock left as T_HV_TIME says")
                continue
            timer = next((t for t in clock.iterfind("timer") if t.get("name") == name), None)
            if timer is None:
                editor.add(clock, "timer", {"name": name, **attrs})
            else:
                editor.set_attrs(timer, attrs)


TWEAK = HypervClock()
