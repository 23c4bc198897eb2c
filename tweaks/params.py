"""Typed tweak parameters.

One declaration serves two checks: ``json_schema()`` feeds the rule-file JSON Schema
(jsonschema validates operator files at ``check`` and cache-build time), and
``parse()`` is the fast typed check that runs on every deploy against values taken
from a VM's template. VM values are untrusted: every ``parse`` accepts a bounded,
printable string and nothing else reaches the XML.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ParamError
from .record import record

# Longest string accepted from a VM attribute for any parameter; real values are short.
MAX_TEXT = 512
TRUE_WORDS = frozenset({"yes", "y", "on", "true", "1", "enable", "enabled"})
FALSE_WORDS = frozenset({"no", "n", "off", "false", "0", "disable", "disabled"})


def _identity(text: str) -> Any:
    return text


def clean_text(raw: object, *, allow_empty: bool = False, max_len: int = MAX_TEXT) -> str:
    """Return ``raw`` as a stripped, printable, bounded string or raise ParamError."""
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise ParamError(f"expected text, got {type(raw).__name__}")
    text = str(raw).strip()
    if len(text) > max_len:
        raise ParamError(f"longer than {max_len} characters")
    if not text.isprintable():
        # also refuses format characters such as U+202E (right-to-left override)
        raise ParamError("contains control characters")
    if not text and not allow_empty:
        raise ParamError("empty value")
    return text


@record
class Param:
    """Base class: a named parameter with a one-line doc and an optional default."""

    name: str
    doc: str
    default: Any = None

    @property
    def required(self) -> bool:
        """A required parameter has no default: without a value its tweak stays idle."""
        return self.default is None

    def json_schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def parse(self, raw: object) -> Any:
        raise NotImplementedError

    def type_doc(self) -> str:
        raise NotImplementedError


@record
class Int(Param):
    """A whole number in [minimum, maximum]; ``words`` are symbolic values such as ``vcpu``."""

    minimum: int = 0
    maximum: int = 1 << 20
    words: tuple[str, ...] = ()

    def json_schema(self) -> dict[str, Any]:
        number: dict[str, Any] = {"type": "integer", "minimum": self.minimum, "maximum": self.maximum}
        if not self.words:
            return number
        return {"anyOf": [number, {"type": "string", "enum": list(self.words)}]}

    def parse(self, raw: object) -> int | str:
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        else:
            text = clean_text(raw, max_len=16)
            if text.lower() in self.words:
                return text.lower()
            if not (text.isascii() and text.isdigit() and len(text) <= 10):
                expected = "a whole number" + (f" or {'/'.join(self.words)}" if self.words else "")
                raise ParamError(f"not {expected}")
            value = int(text)
        if not self.minimum <= value <= self.maximum:
            raise ParamError(f"out of range {self.minimum}..{self.maximum}")
        return value

    def type_doc(self) -> str:
        words = "".join(f"|{w}" for w in self.words)
        return f"int {self.minimum}..{self.maximum}{words}"


@record
class Bool(Param):
    """yes/no, on/off, true/false, 1/0 (any case), or a YAML boolean."""

    def json_schema(self) -> dict[str, Any]:
        words = sorted(TRUE_WORDS | FALSE_WORDS)
        return {"anyOf": [{"type": "boolean"}, {"type": "string", "enum": words + [w.upper() for w in words]}]}

    def parse(self, raw: object) -> bool:
        if isinstance(raw, bool):
            return raw
        text = clean_text(raw, max_len=16).lower()
        if text in TRUE_WORDS:
            return True
        if text in FALSE_WORDS:
            return False
        raise ParamError("not a yes/no value")

    def type_doc(self) -> str:
        return "yes|no"


@record
class Choice(Param):
    """One of a fixed set of lowercase words (input is matched case-insensitively)."""

    choices: tuple[str, ...] = ()

    def json_schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.choices)}

    def parse(self, raw: object) -> str:
        text = clean_text(raw, max_len=64).lower()
        if text not in self.choices:
            raise ParamError(f"not one of {', '.join(self.choices)}")
        return text

    def type_doc(self) -> str:
        return "|".join(c for c in self.choices if c)


@record
class Text(Param):
    """A string matching ``pattern`` in full."""

    pattern: str = ".*"
    max_len: int = 128
    hint: str = ""

    def json_schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": f"^(?:{self.pattern})$", "maxLength": self.max_len}

    def parse(self, raw: object) -> str:
        text = clean_text(raw, max_len=self.max_len)
        if not re.fullmatch(self.pattern, text):
            raise ParamError(f"not {self.hint or 'in the expected format'}")
        return text

    def type_doc(self) -> str:
        return self.hint or f"text /{self.pattern}/"


@record
class Format(Param):
    """A structured string (e.g. ``model[:fallback]``) decoded by ``parser``.

    ``pattern`` is a coarse JSON Schema hint for editors; ``parser`` is the authority
    and runs on operator literals at check time as well as on VM values at deploy time.
    """

    parser: Callable[[str], Any] = _identity
    syntax: str = ""
    pattern: str | None = None
    max_len: int = 256

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "maxLength": self.max_len}
        if self.pattern:
            schema["pattern"] = self.pattern
        return schema

    def parse(self, raw: object) -> Any:
        return self.parser(clean_text(raw, max_len=self.max_len))

    def type_doc(self) -> str:
        return self.syntax


def split_key_values(
    text: str,
    keys: Mapping[str, Param],
    *,
    separator: str | None = None,
) -> dict[str, Any]:
    """Parse ``k=v`` items (whitespace- or ``separator``-separated) with a Param per key."""
    items = text.split(separator) if separator else text.split()
    result: dict[str, Any] = {}
    for item in items:
        item = item.strip()
        if not item:
            continue
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq:
            raise ParamError(f"item {item[:32]!r} is not key=value")
        spec = keys.get(key)
        if spec is None:
            raise ParamError(f"unknown key {key[:32]!r} (known: {', '.join(keys)})")
        if key in result:
            raise ParamError(f"key {key!r} given twice")
        try:
            result[key] = spec.parse(value)
        except ParamError as exc:
            raise ParamError(f"{key}: {exc}") from None
    return result
