"""cpu_shares: ``<cputune><shares>`` from T_CPUTUNE_SHARES, or computed as
``ceil(vCPUs x T_CPUTUNE_MUL x 1024)`` (addon-storpool's cpuShares.py).

``shares: auto`` (the default) means "compute it from the multiplier"; a number is
used as it is. vCPUs are the ones online at boot (``<vcpu current>``, else ``<vcpu>``).
Values are kept in 2..262144 (libvirt's range; on cgroup v2 libvirt maps shares to
cpu.weight itself) and at most ``max``: shares are a priority against the other VMs
of the host, so operators who do not want VM owners to raise their own priority set
``max`` (a VM value above it skips the rule; a computed rule default is clamped).

oned always writes ``<shares>`` (1024 x CPU, or 100 x CPU with cgroup v2). A value
that only comes from rule defaults replaces an existing ``<shares>`` and never adds
one (the add-on's behaviour); a VM's own attribute adds it when it is missing.
"""

from __future__ import annotations

from ..domain import vcpu_current
from ..params import Int
from ..tweak import Context, Tweak
from ._numbers import SCALE, Fixed

MIN_SHARES = 2
MAX_SHARES = 262144


class CpuShares(Tweak):
    summary = "cputune shares: a number, or ceil(vCPUs x multiplier x 1024)"
    attributes = ("T_CPUTUNE_SHARES", "T_CPUTUNE_MUL")
    params = (
        Int("shares", "CPU shares, or auto to compute them from the multiplier", default="auto",
            minimum=MIN_SHARES, maximum=MAX_SHARES, words=("auto",)),
        Fixed("multiplier", "shares = ceil(vCPUs x multiplier x 1024) when shares is auto",
              default=100000, minimum="0.001", maximum="256"),  # default 0.1, the add-on's
        Int("max", "operator cap on the shares a VM may ask for", default=MAX_SHARES,
            minimum=MIN_SHARES, maximum=MAX_SHARES),
    )

    def apply(self, ctx: Context) -> None:
        shares: int | str = ctx.params["shares"]
        cap: int = ctx.params["max"]
        if shares == "auto":
            vcpus = vcpu_current(ctx.root) or ctx.facts.vcpu
            value = -(-vcpus * ctx.params["multiplier"] * 1024 // SCALE)  # exact ceil
            name = "multiplier"
        else:
            assert isinstance(shares, int)
            value, name = shares, "shares"
        explicit = ctx.explicit(name)
        if value > cap:
            if explicit:
                raise ctx.reject(name, f"gives {value} CPU shares, more than the allowed {cap}")
            value = cap
        value = max(value, MIN_SHARES)
        cputune = ctx.root.find("cputune")
        current = cputune.find("shares") if cputune is not None else None
        if current is None and not explicit:
            ctx.note("the domain has no <shares>; a rule default only changes an existing one")
            return
        editor = ctx.editor
        if current is None:
            editor.add(editor.child(ctx.root, "cputune"), "shares", text=str(value), index=0)
        else:
            editor.set_text(current, value)


TWEAK = CpuShares()
