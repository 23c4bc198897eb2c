"""cpu_features: CPU feature flags (T_CPU_FEATURES ``name[:policy],...``).

A feature already in ``<cpu>`` gets the new policy; others are added. Policies:
force, require (default), optional, disable, forbid.
"""

from __future__ import annotations

import re

from ..errors import ParamError
from ..params import Format
from ..tweak import Context, Tweak

POLICIES = ("force", "require", "optional", "disable", "forbid")
_FEATURE = re.compile(r"([a-z0-9][a-z0-9_.-]{0,39})(?::([a-z]+))?")
MAX_FEATURES = 64


def parse_features(text: str) -> list[tuple[str, str]]:
    result: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        match = _FEATURE.fullmatch(item.lower())
        if not match:
            raise ParamError(f"feature {item[:40]!r} is not name[:policy]")
        policy = match.group(2) or "require"
        if policy not in POLICIES:
            raise ParamError(f"policy {policy!r} is not one of {', '.join(POLICIES)}")
        result[match.group(1)] = policy
    if not result:
        raise ParamError("no features given")
    if len(result) > MAX_FEATURES:
        raise ParamError(f"more than {MAX_FEATURES} features")
    return list(result.items())


class CpuFeatures(Tweak):
    summary = "CPU feature flags with policies"
    attributes = ("T_CPU_FEATURES",)
    params = (
        Format("features", "comma-separated name[:policy]", parser=parse_features,
               syntax="name[:policy],...", max_len=1024),
    )

    def apply(self, ctx: Context) -> None:
        editor = ctx.editor
        cpu = editor.child(ctx.root, "cpu")
        for name, policy in ctx.params["features"]:
            existing = cpu.find(f"feature[@name='{name}']")
            if existing is None:
                editor.add(cpu, "feature", {"policy": policy, "name": name},
                           after=("model", "vendor", "topology", "cache", "maxphysaddr", "feature"))
            else:
                editor.set_attr(existing, "policy", policy)


TWEAK = CpuFeatures()
