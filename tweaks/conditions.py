"""The ``when`` language: all/any/not over fact tests.

    when:
      all:
        - present: user.T_CPU_SOCKETS
        - {fact: vm.vcpu, ge: 2}
        - any:
            - {fact: domain.machine, regex: q35}
            - not: {fact: history.tm_mad, in: [ssh, shared]}

A test on a multi-valued fact (disk.*, nic.*) holds when it holds for any value.
``evaluate`` returns ``None`` when the condition holds, else the reason it failed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from .errors import TweakError
from .facts import Facts
from .record import record

COMPARATORS = ("equals", "in", "regex", "lt", "le", "gt", "ge")


class ConditionError(TweakError):
    pass


class Condition:
    def evaluate(self, facts: Facts) -> str | None:
        raise NotImplementedError


@record
class All(Condition):
    parts: tuple[Condition, ...]

    def evaluate(self, facts: Facts) -> str | None:
        for part in self.parts:
            reason = part.evaluate(facts)
            if reason is not None:
                return reason
        return None


@record
class AnyOf(Condition):
    parts: tuple[Condition, ...]

    def evaluate(self, facts: Facts) -> str | None:
        reasons = []
        for part in self.parts:
            reason = part.evaluate(facts)
            if reason is None:
                return None
            reasons.append(reason)
        return "none of: " + "; ".join(reasons)


@record
class Not(Condition):
    part: Condition
    text: str

    def evaluate(self, facts: Facts) -> str | None:
        if self.part.evaluate(facts) is None:
            return f"not ({self.text}) is false"
        return None


@record
class Present(Condition):
    fact: str
    want: bool

    def evaluate(self, facts: Facts) -> str | None:
        has = bool(facts.values(self.fact))
        if has == self.want:
            return None
        return f"{self.fact} is {'absent' if self.want else 'present'}"


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value else None  # NaN compares false to everything


def _equal(value: str, operand: object) -> bool:
    if isinstance(operand, bool):
        return value.lower() in (("yes", "true", "1", "on") if operand else ("no", "false", "0", "off"))
    if isinstance(operand, (int, float)):
        number = _number(value)
        return number is not None and number == operand
    return value == str(operand)


_NUMERIC: dict[str, Callable[[float, float], bool]] = {
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
}


@record
class Compare(Condition):
    fact: str
    op: str
    operand: Any
    pattern: re.Pattern[str] | None = None

    def holds(self, value: str) -> bool:
        if self.op == "equals":
            return _equal(value, self.operand)
        if self.op == "in":
            return any(_equal(value, item) for item in self.operand)
        if self.op == "regex":
            assert self.pattern is not None
            return self.pattern.search(value) is not None
        number = _number(value)
        return number is not None and _NUMERIC[self.op](number, float(self.operand))

    def evaluate(self, facts: Facts) -> str | None:
        values = facts.values(self.fact)
        if not values:
            return f"{self.fact} is absent"
        if any(self.holds(v) for v in values):
            return None
        shown = values[0] if len(values) == 1 else values
        return f"{self.fact}={shown!r} does not satisfy {self.op} {self.operand!r}"


def compile_condition(raw: object, path: Sequence[str | int] = ()) -> Condition:
    """Build a Condition from its YAML form; raises ConditionError naming the bad part."""
    if not isinstance(raw, dict) or not raw:
        raise ConditionError(f"condition at {_where(path)} must be a non-empty mapping")
    if "all" in raw or "any" in raw:
        key = "all" if "all" in raw else "any"
        items = raw[key]
        if len(raw) != 1 or not isinstance(items, list) or not items:
            raise ConditionError(f"'{key}' at {_where(path)} takes a non-empty list and nothing else")
        parts = tuple(compile_condition(item, (*path, key, i)) for i, item in enumerate(items))
        return All(parts) if key == "all" else AnyOf(parts)
    if "not" in raw:
        if len(raw) != 1:
            raise ConditionError(f"'not' at {_where(path)} takes one condition and nothing else")
        return Not(compile_condition(raw["not"], (*path, "not")), _summary(raw["not"]))
    for key in ("present", "absent"):
        if key in raw:
            if len(raw) != 1 or not isinstance(raw[key], str):
                raise ConditionError(f"'{key}' at {_where(path)} takes a fact name")
            return Present(check_fact_name(raw[key]), key == "present")
    fact = raw.get("fact")
    ops = [k for k in raw if k != "fact"]
    if not isinstance(fact, str) or len(ops) != 1 or ops[0] not in COMPARATORS:
        raise ConditionError(
            f"condition at {_where(path)} needs 'fact' and one of {', '.join(COMPARATORS)}"
        )
    op = ops[0]
    operand = raw[op]
    pattern = None
    if op == "regex":
        if not isinstance(operand, str):
            raise ConditionError(f"regex at {_where(path)} must be a string")
        try:
            pattern = re.compile(operand)
        except re.error as exc:
            raise ConditionError(f"bad regex at {_where(path)}: {exc}") from None
    elif op == "in":
        if not isinstance(operand, list) or not all(_scalar(x) for x in operand):
            raise ConditionError(f"'in' at {_where(path)} takes a list of scalars")
    elif op == "equals":
        if not _scalar(operand):
            raise ConditionError(f"'equals' at {_where(path)} takes a scalar")
    elif isinstance(operand, bool) or not isinstance(operand, (int, float)):
        raise ConditionError(f"'{op}' at {_where(path)} takes a number")
    return Compare(check_fact_name(fact), op, operand, pattern)


# A fact name: ``(vm|history|domain|dest|disk|nic).[a-z_]+`` or
# ``(template|user).[A-Za-z0-9_]+(/[A-Za-z0-9_]+)*``. Checked with string methods: every
# deploy checks the conditions of the cached rules again, and compiling that pattern cost
# it more (0.4-0.6 ms) than all the checks.
_SCOPES = frozenset({"vm", "history", "domain", "dest", "disk", "nic"})
_TEMPLATE_SCOPES = frozenset({"template", "user"})
_LOWER = frozenset("abcdefghijklmnopqrstuvwxyz_")
_WORD = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def check_fact_name(name: str) -> str:
    scope, dot, rest = name.partition(".")
    if dot and rest and scope in _SCOPES:
        valid = all(c in _LOWER for c in rest)
    elif dot and scope in _TEMPLATE_SCOPES:
        valid = all(part and all(c in _WORD for c in part) for part in rest.split("/"))
    else:
        valid = False
    if not valid:
        raise ConditionError(f"unknown fact name {name!r}")
    return name


def _scalar(value: object) -> bool:
    return isinstance(value, (str, int, float, bool))


def _where(path: Sequence[str | int]) -> str:
    return "when" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def _summary(raw: object) -> str:
    text = repr(raw)
    return text if len(text) < 80 else text[:77] + "..."
