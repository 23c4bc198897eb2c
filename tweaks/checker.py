"""Checks rule files: YAML syntax, the JSON Schema, then what a schema cannot say
(regexes compile, literals parse with their tweak's types, names are unique).

Every problem carries the file and line it points at. A rule with problems is kept
(with ``errors``) so that a deploy can say why it skipped it.
"""

from __future__ import annotations

import os
from typing import Any

import jsonschema
import yaml

from . import registry, schema
from .conditions import ConditionError, compile_condition
from .errors import ParamError, TweakError
from .loader import Problem, RuleSet
from .rules import DEFAULT_MOMENTS, MOMENTS, Call, Rule, needs, resolve

_Path = tuple[object, ...]
_validators: dict[tuple[str, ...], Any] = {}

try:
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML without libyaml
    _Loader = yaml.SafeLoader


def _yaml_with_lines(text: str) -> tuple[Any, dict[_Path, int]]:
    """Load YAML, remembering the line of every mapping key and sequence item."""
    loader = _Loader(text)
    lines: dict[_Path, int] = {}
    try:
        node = loader.get_single_node()

        def build(n: yaml.Node, path: _Path) -> Any:
            lines.setdefault(path, n.start_mark.line + 1)
            if isinstance(n, yaml.MappingNode):
                out: dict[Any, Any] = {}
                for key_node, value_node in n.value:
                    # YAML 1.1 (PyYAML) reads a plain `on` as true; editors (YAML 1.2) and
                    # the rule language read the word: `on: [migrate]` is the moments key.
                    if isinstance(key_node, yaml.ScalarNode) and not key_node.style and key_node.value == "on":
                        key: Any = "on"
                    else:
                        key = loader.construct_object(key_node, deep=True)
                    if not isinstance(key, (str, int, float, bool)) or key is None:
                        raise yaml.MarkedYAMLError(problem="mapping keys must be plain words",
                                                   problem_mark=key_node.start_mark)
                    if key in out:
                        raise yaml.MarkedYAMLError(problem=f"duplicate key {key!r}",
                                                   problem_mark=key_node.start_mark)
                    lines[(*path, key)] = key_node.start_mark.line + 1
                    out[key] = build(value_node, (*path, key))
                return out
            if isinstance(n, yaml.SequenceNode):
                return [build(item, (*path, i)) for i, item in enumerate(n.value)]
            return loader.construct_object(n, deep=True)

        data = None if node is None else build(node, ())
    finally:
        loader.dispose()
    return data, lines


def _line(lines: dict[_Path, int], path: _Path) -> int:
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get((), 1)


def _schema_validator() -> Any:
    key = tuple(registry.names())
    if key not in _validators:
        _validators[key] = jsonschema.Draft202012Validator(schema.build())
    return _validators[key]


def _short(message: str, limit: int = 200) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 3] + "..."


def check_file(path: str, data_bytes: bytes) -> tuple[Rule | None, list[Problem]]:
    stem = os.path.splitext(os.path.basename(path))[0]
    try:
        text = data_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _broken(path, stem, 1, f"not UTF-8 text ({exc.reason} at byte {exc.start})")
    try:
        data, lines = _yaml_with_lines(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = " ".join(filter(None, [exc.context, exc.problem]))
        return _broken(path, stem, line, f"YAML syntax error: {what}")
    except yaml.YAMLError as exc:
        return _broken(path, stem, 1, f"YAML error: {_short(str(exc))}")
    except RecursionError:
        return _broken(path, stem, 1, "YAML nested too deeply")
    if data is None:
        return None, []  # an empty file disables the rule of this name
    name = data.get("name") if isinstance(data, dict) else None
    rule_name = name if isinstance(name, str) and name else None
    problems = [
        Problem(path, _line(lines, tuple(err.absolute_path)), _schema_message(err), rule_name)
        for err in sorted(_schema_validator().iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    ]
    if problems:
        rule, problems = _broken(path, rule_name or stem, problems[0].line, "", problems)
        rule.on = _moments(data)
        return rule, problems
    rule = Rule(
        name=data["name"], file=path, line=lines.get((), 1),
        description=data.get("description", ""), enabled=data.get("enabled", True),
        when=data.get("when"), on=_moments(data), on_given=isinstance(data.get("on"), list),
    )
    if rule.when is not None:
        try:
            compile_condition(rule.when)
        except ConditionError as exc:
            problems.append(Problem(path, _line(lines, ("when",)), str(exc), rule.name))
    for index, item in enumerate(data["tweaks"]):
        ((tweak_name, params),) = item.items()
        params = params or {}
        line = _line(lines, ("tweaks", index))
        call = Call(tweak_name, params, line)
        try:
            tweak = registry.get(tweak_name)
            call.needs = needs(tweak, params)
            unset = [p.name for p in tweak.params if p.required and p.name not in params]
            if unset:
                problems.append(Problem(path, line, f"{tweak_name}: required parameter {', '.join(unset)} "
                                        "has no value (give a literal or {from: FACT})", rule.name))
            resolve(tweak, params, None)
        except ParamError as exc:
            bad = next((k for k in params if exc.source and exc.source.endswith(f" {k}")), None)
            where = _line(lines, ("tweaks", index, tweak_name, bad)) if bad else line
            problems.append(Problem(path, where, f"{tweak_name}: {exc.describe()}", rule.name))
        except TweakError as exc:
            problems.append(Problem(path, line, str(exc), rule.name))
        rule.calls.append(call)
    rule.errors = [p.message for p in problems]
    return rule, problems


def _moments(data: Any) -> list[str]:
    """The rule's moments in the order written, once each. A broken rule keeps the ones it
    names correctly so that only those moments warn about it; with none, deploy."""
    raw = data.get("on") if isinstance(data, dict) else None
    if not isinstance(raw, list):
        return list(DEFAULT_MOMENTS)
    found = [m for m in dict.fromkeys(m for m in raw if isinstance(m, str)) if m in MOMENTS]
    return found or list(DEFAULT_MOMENTS)


def _schema_message(err: Any) -> str:
    where = "/".join(str(p) for p in err.absolute_path)
    if err.validator in ("oneOf", "anyOf") and err.context:
        # Report the alternative that got furthest, not "is not valid under any".
        deepest = max(err.context, key=lambda e: (len(e.absolute_path), -len(e.message)))
        return _schema_message(deepest)
    return _short(f"{where}: {err.message}" if where else err.message)


def _broken(path: str, name: str, line: int, message: str,
            problems: list[Problem] | None = None) -> tuple[Rule, list[Problem]]:
    problems = problems or [Problem(path, line, message)]
    rule = Rule(name=name, file=path, line=line, errors=[p.message for p in problems])
    return rule, problems


def check_files(contents: list[tuple[str, bytes]]) -> RuleSet:
    result = RuleSet()
    seen: dict[str, str] = {}
    for path, data in contents:
        rule, problems = check_file(path, data)
        result.problems.extend(problems)
        if rule is None:
            continue
        if not rule.errors and rule.name in seen:
            message = f"rule name also used by {seen[rule.name]}"
            result.problems.append(Problem(path, rule.line, message, rule.name))
            rule.errors.append(message)
        seen.setdefault(rule.name, path)
        result.rules.append(rule)
    return result
