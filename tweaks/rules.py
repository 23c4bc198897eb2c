"""Rules as the engine uses them, and how their parameters get values.

A rule file holds one rule:

    name: iothreads
    description: Bind virtio disks and controllers to iothreads
    enabled: true               # optional; false (or an empty file) disables it
    on: [deploy]                # optional: the moments it runs at (deploy, migrate, restore, hotplug)
    when: {present: user.T_X}   # optional; see tweaks.conditions
    tweaks:
      - iothreads:
          count: {from: user.T_IOTHREADS_OVERRIDE, default: 1}
          policy: round-robin

A parameter is a literal (the operator's value) or ``{from: FACT | [FACT...],
default: LITERAL}``: the first fact that is set wins, else the default. Facts from
``user.``/``template.`` are the VM owner's values: parsed with the parameter's type,
and a bad one skips the rule with a warning instead of reaching the XML.
"""

from __future__ import annotations

from typing import Any

from .conditions import Condition, compile_condition
from .errors import ParamError
from .facts import Facts, describe
from .record import field, record
from .tweak import ORIGIN_RULE, ORIGIN_TWEAK, ORIGIN_VM, Tweak

# The moments of a VM's life at which rules can run. A rule without ``on`` runs at deploy
# only: rules written before moments existed keep meaning what they meant.
DEPLOY = "deploy"
MIGRATE = "migrate"
RESTORE = "restore"
HOTPLUG = "hotplug"
MOMENTS = (DEPLOY, MIGRATE, RESTORE, HOTPLUG)
DEFAULT_MOMENTS = (DEPLOY,)


@record
class Call:
    tweak: str
    params: dict[str, Any]
    line: int = 0
    # For each required parameter that only a fact can give: those facts. Lets a deploy
    # see that a call is idle without importing its tweak module.
    needs: list[list[str]] = field(default_factory=list)


@record
class Rule:
    name: str
    file: str
    line: int = 1
    description: str = ""
    enabled: bool = True
    when: dict[str, Any] | None = None
    calls: list[Call] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    on: list[str] = field(default_factory=lambda: list(DEFAULT_MOMENTS))
    # True when the file lists its moments (``on``); False when it runs at deploy by default
    on_given: bool = False
    _condition: Condition | None = None

    def condition(self) -> Condition | None:
        if self.when is not None and self._condition is None:
            self._condition = compile_condition(self.when)
        return self._condition

    def runs_at(self, moment: str) -> bool:
        return moment in self.on

    def shapes_hotplug(self) -> bool:
        """Its device-level tweaks shape a hot-plugged device: it lists ``hotplug``, or it
        gives no ``on`` (a plain deploy rule), so a device attached later gets what it would
        have got at deploy. A rule that lists its moments without hotplug stays out."""
        return HOTPLUG in self.on or (not self.on_given and DEPLOY in self.on)

    # Cache form: plain data only, so it round-trips through marshal.
    def to_raw(self) -> dict[str, Any]:
        return {
            "name": self.name, "file": self.file, "line": self.line,
            "description": self.description, "enabled": self.enabled, "when": self.when,
            "calls": [[c.tweak, c.params, c.line, c.needs] for c in self.calls], "errors": self.errors,
            "on": self.on, "on_given": self.on_given,
        }

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> Rule:
        return cls(
            name=raw["name"], file=raw["file"], line=raw["line"],
            description=raw["description"], enabled=raw["enabled"], when=raw["when"],
            calls=[Call(t, p, ln, nd) for t, p, ln, nd in raw["calls"]], errors=list(raw["errors"]),
            on=list(raw["on"]), on_given=bool(raw.get("on_given", False)),
        )


@record
class Resolved:
    values: dict[str, Any]
    origins: dict[str, str]
    sources: dict[str, str]
    missing: list[str]
    # Each value as its author wrote it (the VM attribute's text, the rule's literal),
    # so that messages quote that and never the parsed form (True for "on", objects).
    raws: dict[str, object] = field(default_factory=dict)


def needs(tweak: Tweak, raw_params: dict[str, Any]) -> list[list[str]]:
    """The fact lists a call cannot run without (see ``Call.needs``)."""
    out = []
    for param in tweak.params:
        spec = raw_params.get(param.name)
        if param.required and isinstance(spec, dict) and "default" not in spec:
            out.append(source_facts(spec))
    return out


def idle_reason(call: Call, facts: Facts) -> str | None:
    for group in call.needs:
        if all(facts.get(fact) is None for fact in group):
            return f"{call.tweak}: {' / '.join(describe(f) for f in group)} not set"
    return None


def source_facts(spec: Any) -> list[str]:
    facts = spec["from"]
    return [facts] if isinstance(facts, str) else list(facts)


def resolve(tweak: Tweak, raw_params: dict[str, Any], facts: Facts | None) -> Resolved:
    """Give every declared parameter its value; raises ParamError for a bad value.

    With ``facts=None`` (check time) only the operator's literals and defaults are
    parsed, which is how rule files are checked without a VM.
    """
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    sources: dict[str, str] = {}
    raws: dict[str, object] = {}
    missing: list[str] = []
    for param in tweak.params:
        spec = raw_params.get(param.name)
        if isinstance(spec, dict) and tweak.operator_only:
            raise ParamError("takes literal values only: it is an operator-only tweak",
                             f"rule parameter {param.name}", spec)
        if isinstance(spec, dict):
            chosen = None
            for fact in source_facts(spec):
                value = None if facts is None else facts.get(fact)
                if value is not None:
                    chosen = fact
                    break
            if chosen is not None and value is not None:
                source = describe(chosen)
                try:
                    values[param.name] = param.parse(value)
                except ParamError as exc:
                    raise ParamError(str(exc), source, value) from None
                user_value = chosen.startswith(("user.", "template."))
                origins[param.name] = ORIGIN_VM if user_value else ORIGIN_RULE
                sources[param.name] = source
                raws[param.name] = value
                if facts is not None:
                    continue
            if "default" in spec:
                values[param.name] = _parse_literal(param.name, param, spec["default"])
                origins[param.name] = ORIGIN_RULE
                sources[param.name] = f"rule parameter {param.name}"
                raws[param.name] = spec["default"]
            elif param.default is not None:
                values[param.name] = param.default
                origins[param.name] = ORIGIN_TWEAK
                raws[param.name] = param.default
            else:
                missing.append(f"{param.name} ({' / '.join(describe(f) for f in source_facts(spec))} not set)")
        elif spec is not None:
            values[param.name] = _parse_literal(param.name, param, spec)
            origins[param.name] = ORIGIN_RULE
            sources[param.name] = f"rule parameter {param.name}"
            raws[param.name] = spec
        elif param.default is not None:
            values[param.name] = param.default
            origins[param.name] = ORIGIN_TWEAK
            raws[param.name] = param.default
        else:
            missing.append(f"{param.name} (no value)")
    return Resolved(values, origins, sources, missing, raws)


def _parse_literal(name: str, param: Any, raw: Any) -> Any:
    try:
        return param.parse(raw)
    except ParamError as exc:
        raise ParamError(str(exc), f"rule parameter {name}", raw) from None
