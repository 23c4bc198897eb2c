"""Whole numbers from outside the process: argv, VM and datastore templates, the
configuration, replies of other programs.

Every such number goes through ``whole``. ``int()`` alone is not a check: it accepts
``" 1_0 "`` and Unicode digits (``"٣"``), ``str.isdigit()`` and the ``\\d`` of a ``str``
regex also pass ``"²"``, which ``int()`` then refuses, and ``int()`` refuses more than
4,300 digits. Any of those would end a driver in "internal error" instead of a line that
names the value.
"""

from __future__ import annotations

import re

from .errors import DriverError

_DIGITS = re.compile(r"[0-9]+")  # [0-9], not \d: \d matches every Unicode decimal digit
MAX = 2**63 - 1  # what every program we talk to (oned, StorPool, LINSTOR, libvirt) can hold
ID_MAX = 2**31 - 1  # OpenNebula object ids are C ints
_SHOWN = 40  # characters of a bad value quoted in a message


def shown(raw: str) -> str:
    """``raw`` quoted as written, shortened when it is long (a message is one line)."""
    if len(raw) <= _SHOWN:
        return repr(raw)
    return f"{raw[:_SHOWN]!r}... ({len(raw)} characters)"


def whole(raw: str, what: str, *, minimum: int = 0, maximum: int = MAX, signed: bool = False,
          unit: str = "a whole number") -> int:
    """``raw`` (ASCII digits, optionally surrounded by blanks, a leading ``-`` if ``signed``)
    as an int from ``minimum`` to ``maximum``; else a DriverError naming the value as
    written: ``<what> '<raw>' is not <unit>`` (``<what>'<raw>'`` when ``what`` ends in ``=``,
    as in ``DISKSNAPSHOT_LIMIT='x'``)."""
    text = raw.strip()
    body = text[1:] if signed and text.startswith("-") else text
    if not _DIGITS.fullmatch(body):
        raise DriverError(f"{_name(what)}{shown(raw)} is not {unit}")
    # the length check comes before int(): it bounds the work and int()'s digit limit
    too_long = len(body.lstrip("0")) > len(str(max(abs(minimum), abs(maximum))))
    if too_long or not minimum <= int(text) <= maximum:
        raise DriverError(f"{_name(what)}{shown(raw)} is not {unit} from {minimum} to {maximum}")
    return int(text)


def is_whole(raw: str, max_digits: int = 18) -> bool:
    """Whether ``raw`` is plain ASCII digits that ``whole`` would take (for values that are
    skipped, not refused, when they are not numbers)."""
    return 0 < len(raw) <= max_digits and raw.isascii() and raw.isdigit()


def maybe(raw: str, what: str, *, minimum: int = 0, maximum: int = MAX, unit: str = "a whole number") -> int | None:
    """``whole`` for an optional value: None when ``raw`` is blank."""
    return None if raw.strip() == "" else whole(raw, what, minimum=minimum, maximum=maximum, unit=unit)


def object_id(raw: str, what: str, *, signed: bool = False) -> int:
    """An OpenNebula object id (VM, image, datastore, disk, snapshot...); ``signed``: -1
    (oned's "none") and other negatives are taken too."""
    return whole(raw, what, minimum=-ID_MAX if signed else 0, maximum=ID_MAX, signed=signed, unit="a number")


def _name(what: str) -> str:
    return what if what.endswith("=") else what + " "
