"""Parameter types the CPU-tuning tweaks need beyond ``tweaks.params`` (not a tweak:
the leading underscore keeps it out of the catalogue).

- ``Fixed``: a bounded decimal number (``0.25``) parsed exactly, as a whole number of
  millionths, so that ``ceil(vcpu * multiplier * 1024)`` suffers no binary rounding
  (and without importing ``decimal``, which costs a millisecond per deploy).
- ``IntRanges``: a whole number in one of several ranges (libvirt's CPU quota is
  ``-1`` or ``1000..17592186044415``), or one of a few words such as ``none``.

Both accept YAML numbers from operators and bounded strings from VM attributes.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import ParamError
from ..params import Param, clean_text
from ..record import record

_DECIMAL = re.compile(r"[0-9]{1,7}(?:\.[0-9]{1,6})?")
_INTEGER = re.compile(r"-?[0-9]{1,20}")


SCALE = 1_000_000  # Fixed values are millionths


def millionths(text: str) -> int:
    whole, _, frac = text.partition(".")
    return int(whole) * SCALE + int((frac + "000000")[:6])


@record
class Fixed(Param):
    """A decimal number in [minimum, maximum] (given as text) with at most 6 decimal
    places; the parsed value is an int of millionths (0.1 -> 100000)."""

    minimum: str = "0"
    maximum: str = "1"

    def json_schema(self) -> dict[str, Any]:
        low, high = float(self.minimum), float(self.maximum)
        return {"anyOf": [{"type": "number", "minimum": low, "maximum": high},
                          {"type": "string", "pattern": f"^(?:{_DECIMAL.pattern})$", "maxLength": 14}]}

    def parse(self, raw: object) -> int:
        if isinstance(raw, bool):
            raise ParamError("not a number")
        if isinstance(raw, float):
            raw = repr(raw)  # YAML 0.1 -> "0.1": the literal the operator wrote
        text = clean_text(raw, max_len=14)
        if not _DECIMAL.fullmatch(text):
            raise ParamError("not a decimal number such as 0.5")
        value = millionths(text)
        if not millionths(self.minimum) <= value <= millionths(self.maximum):
            raise ParamError(f"out of range {self.minimum}..{self.maximum}")
        return value

    def type_doc(self) -> str:
        return f"decimal {self.minimum}..{self.maximum}"


@record
class IntRanges(Param):
    """A whole number inside one of ``ranges`` (inclusive pairs), or one of ``words``."""

    ranges: tuple[tuple[int, int], ...] = ()
    words: tuple[str, ...] = ()

    def json_schema(self) -> dict[str, Any]:
        options: list[dict[str, Any]] = [{"type": "integer", "minimum": lo, "maximum": hi} for lo, hi in self.ranges]
        if self.words:
            options.append({"type": "string", "enum": list(self.words)})
        return {"anyOf": options}

    def parse(self, raw: object) -> int | str:
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        else:
            text = clean_text(raw, max_len=21)
            if text.lower() in self.words:
                return text.lower()
            if not _INTEGER.fullmatch(text):
                raise ParamError("not a whole number" + (f" or {'/'.join(self.words)}" if self.words else ""))
            value = int(text)
        if not any(lo <= value <= hi for lo, hi in self.ranges):
            raise ParamError(f"out of range {self._ranges()}")
        return value

    def _ranges(self) -> str:
        return " or ".join(str(lo) if lo == hi else f"{lo}..{hi}" for lo, hi in self.ranges)

    def type_doc(self) -> str:
        words = "".join(f"|{w}" for w in self.words)
        return f"int {self._ranges()}{words}"
