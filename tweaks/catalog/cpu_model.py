"""cpu_model: a named CPU model with optional fallback (T_CPU_MODEL ``model[:fallback]``),
or ``delete`` to drop the ``<model>`` oned wrote.

A named model switches ``<cpu>`` to ``mode='custom'``. oned's CPU_MODEL/MODEL wins
over a rule default; the VM's T_CPU_MODEL wins over both.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import ParamError
from ..params import Format
from ..tweak import Context, Tweak

_MODEL = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.+-]{0,63})(?::(allow|forbid))?")
# Attributes that only mean something for host-passthrough / maximum.
_PASSTHROUGH_ONLY = ("migratable",)


def parse_model(text: str) -> tuple[str, str | None]:
    if text.lower() == "delete":
        return ("delete", None)
    match = _MODEL.fullmatch(text)
    if not match:
        raise ParamError("not model[:allow|forbid] or delete")
    return (match.group(1), match.group(2))


class CpuModel(Tweak):
    summary = "named CPU model with fallback, or delete the model"
    attributes = ("T_CPU_MODEL",)
    params = (
        Format("model", "model[:allow|forbid] or delete", parser=parse_model,
               syntax="model[:allow|forbid]|delete", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*(:(allow|forbid))?$"),
    )

    def apply(self, ctx: Context) -> None:
        name, fallback = ctx.params["model"]
        if ctx.facts.get("template.CPU_MODEL/MODEL") and not ctx.explicit("model"):
            ctx.note("kept oned's CPU_MODEL/MODEL")
            return
        editor = ctx.editor
        cpu = editor.child(ctx.root, "cpu")
        model = cpu.find("model")
        if name == "delete":
            if model is not None:
                editor.remove(model)
            return
        # No mode means custom to libvirt: leave it absent (T_CPU_MODE=delete), else the
        # two rules would undo each other on every run.
        attrs: dict[str, Any] = {} if cpu.get("mode") is None else {"mode": "custom"}
        attrs.update({a: None for a in _PASSTHROUGH_ONLY})
        editor.set_attrs(cpu, attrs)
        if model is None:
            model = editor.add(cpu, "model", index=0)
        editor.set_text(model, name)
        editor.set_attr(model, "fallback", fallback)


TWEAK = CpuModel()
