"""cpu_features_available: remove the ``<cpu>`` features a host does not offer (migrate
rules: the destination's, ``dest.cpu_features``, as its libvirt reports them).

``available`` is the full list of feature names the host's CPU offers (libvirt names,
comma-separated). A ``<feature>`` of any policy whose name is not in it is removed: a
required one would make the destination refuse the guest, a disabled one the destination
cannot provide anyway. Note: libvirt refuses a live migration whose CPU definition differs
from the running guest's; migrate-tweaks then rolls this rule back (see README).
"""

from __future__ import annotations

import re

from ..errors import ParamError
from ..params import Format
from ..tweak import Context, Tweak

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,39}")
MAX_NAMES = 2048


def parse_names(text: str) -> frozenset[str]:
    names = set()
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        if not _NAME.fullmatch(item):
            raise ParamError(f"feature {item[:40]!r} is not a CPU feature name")
        names.add(item)
    if not names:
        raise ParamError("no feature names given")
    if len(names) > MAX_NAMES:
        raise ParamError(f"more than {MAX_NAMES} feature names")
    return frozenset(names)


class CpuFeaturesAvailable(Tweak):
    summary = "remove the <cpu> features a host does not offer (migrate: the destination)"
    params = (
        Format("available", "every CPU feature the host offers, as libvirt names them", parser=parse_names,
               syntax="name,name,...", max_len=32768),
    )

    def apply(self, ctx: Context) -> None:
        available: frozenset[str] = ctx.params["available"]
        cpu = ctx.root.find("cpu")
        if cpu is None:
            return
        gone = []
        for feature in list(cpu.iterfind("feature")):
            name = (feature.get("name") or "").lower()
            if name and name not in available:
                gone.append(f"{name} ({feature.get('policy', 'require')})")
                ctx.editor.remove(feature)
        if gone:
            ctx.note("not offered: " + ", ".join(gone))


TWEAK = CpuFeaturesAvailable()
