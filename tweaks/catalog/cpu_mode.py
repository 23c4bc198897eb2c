"""cpu_mode: ``<cpu>`` mode, check and match (T_CPU_MODE, T_CPU_CHECK, T_CPU_MATCH).

Each is optional; only the ones with a value are set. ``delete`` (the add-on's keyword,
any case) removes that attribute. (addon-storpool compared T_CPU_MODE against the match
values, so it never applied; here it does.)
"""

from __future__ import annotations

from ..params import Choice
from ..tweak import Context, Tweak

MODES = ("custom", "host-model", "host-passthrough", "maximum")
DELETE = "delete"


class CpuMode(Tweak):
    summary = "<cpu> mode / check / match attributes"
    attributes = ("T_CPU_MODE", "T_CPU_CHECK", "T_CPU_MATCH")
    params = (
        Choice("mode", "CPU mode, or delete", default="", choices=("", *MODES, DELETE)),
        Choice("check", "how strictly libvirt checks the CPU, or delete", default="",
               choices=("", "none", "partial", "full", DELETE)),
        Choice("match", "how the model must match (custom mode), or delete", default="",
               choices=("", "minimum", "exact", "strict", DELETE)),
    )

    def apply(self, ctx: Context) -> None:
        wanted = {k: ctx.params[k] for k in ("mode", "check", "match") if ctx.params[k]}
        if not wanted:
            ctx.note("no mode, check or match given")
            return
        deleted = [k for k, v in wanted.items() if v == DELETE]
        wanted = {k: v for k, v in wanted.items() if v != DELETE}
        cpu = ctx.root.find("cpu")
        if cpu is None and not wanted:
            ctx.note("no <cpu> to delete attributes from")
            return
        cpu = ctx.editor.child(ctx.root, "cpu")
        for name in deleted:
            ctx.editor.set_attr(cpu, name, None)
        mode = wanted.get("mode", cpu.get("mode", "custom"))
        if mode in ("host-passthrough", "maximum"):
            # These modes take no <model>/match; a leftover model would make libvirt refuse the domain.
            model = cpu.find("model")
            if model is not None and model.text and model.text.strip():
                ctx.editor.remove(model)
            wanted.pop("match", None)
            if cpu.get("match") is not None:
                ctx.editor.set_attr(cpu, "match", None)
        ctx.editor.set_attrs(cpu, wanted)

TWEAK = CpuMode()
