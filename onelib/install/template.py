"""OpenNebula's template syntax as ``oned.conf`` uses it, parsed with the position of every
piece, so that an edit replaces only the characters it changes and leaves the rest of the
file byte for byte as it was.

The syntax (``src/template/template_parser.y``): ``NAME = value`` where value is a quoted
string (which may span lines, ``\\"`` escapes a quote) or a bare word; ``NAME = [ key =
value, key = value ]`` vectors over any number of lines; ``#`` starts a comment up to the
end of the line, also inside vectors. Names are case-insensitive (oned upper-cases them).

Also here: the driver ``ARGUMENTS`` strings (``"-t 15 -d dummy,fs -s shared"``), which the
Ruby drivers read with GetoptLong: ``-d LIST``, ``-dLIST``, ``--ds-types LIST`` and
``--ds-types=LIST`` are the same option, and the last one wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import DriverError

_IDENT = re.compile(r"[A-Za-z0-9_]+")


class TemplateError(DriverError):
    pass


@dataclass(frozen=True)
class Value:
    raw: str  # as written, quotes included
    start: int
    end: int

    @property
    def quoted(self) -> bool:
        return self.raw.startswith('"')

    @property
    def text(self) -> str:
        if not self.quoted:
            return self.raw
        return re.sub(r"\\(.)", r"\1", self.raw[1:-1], flags=re.S)

    @property
    def inner_start(self) -> int:
        """Offset of the first character of the content (after the opening quote)."""
        return self.start + 1 if self.quoted else self.start


@dataclass(frozen=True)
class Pair:
    key: str  # upper-cased
    value: Value


@dataclass(frozen=True)
class Attr:
    name: str  # upper-cased
    start: int  # offset of the name
    end: int  # offset after the value (or the closing "]")
    value: Value | None  # a single attribute
    pairs: tuple[Pair, ...] | None  # a vector attribute

    def get(self, key: str) -> Value | None:
        """A vector's value for ``key`` (the last one, as oned keeps it)."""
        found = None
        for pair in self.pairs or ():
            if pair.key == key.upper():
                found = pair.value
        return found

    def text_of(self, key: str) -> str | None:
        value = self.get(key)
        return None if value is None else value.text


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Scanner:
    def __init__(self, text: str, source: str) -> None:
        self.text, self.source, self.i = text, source, 0

    def error(self, message: str) -> TemplateError:
        line = self.text.count("\n", 0, self.i) + 1
        return TemplateError(f"{self.source}:{line}: {message}")

    def skip(self) -> None:
        text, n = self.text, len(self.text)
        while self.i < n:
            c = text[self.i]
            if c.isspace():
                self.i += 1
            elif c == "#":
                eol = text.find("\n", self.i)
                self.i = n if eol < 0 else eol + 1
            else:
                break

    def at_end(self) -> bool:
        return self.i >= len(self.text)

    def ident(self, what: str) -> str:
        m = _IDENT.match(self.text, self.i)
        if not m:
            raise self.error(f"expected {what}")
        self.i = m.end()
        return m.group().upper()

    def expect(self, char: str) -> None:
        if self.text.startswith(char, self.i):
            self.i += 1
            return
        raise self.error(f"expected {char!r}")

    def value(self, stops: str) -> Value:
        text, start = self.text, self.i
        if text.startswith('"', start):
            i = start + 1
            while i < len(text):
                if text[i] == "\\":
                    i += 2
                    continue
                if text[i] == '"':
                    self.i = i + 1
                    return Value(text[start:self.i], start, self.i)
                i += 1
            raise self.error("unterminated string")
        i = start
        while i < len(text) and not text[i].isspace() and text[i] not in stops and text[i] != "#":
            i += 1
        if i == start:
            raise self.error("expected a value")
        self.i = i
        return Value(text[start:i], start, i)


def parse(text: str, source: str = "oned.conf") -> list[Attr]:
    """Every top-level attribute of ``text`` in file order."""
    s = _Scanner(text, source)
    attrs: list[Attr] = []
    while True:
        s.skip()
        if s.at_end():
            return attrs
        start = s.i
        name = s.ident("an attribute name")
        s.skip()
        s.expect("=")
        s.skip()
        if s.text.startswith("[", s.i):
            s.i += 1
            pairs: list[Pair] = []
            while True:
                s.skip()
                if s.at_end():
                    s.i = start
                    raise s.error(f"{name} = [ ... ] is not closed")
                if s.text.startswith("]", s.i):
                    s.i += 1
                    break
                if pairs:
                    s.expect(",")
                    s.skip()
                    if s.text.startswith("]", s.i):  # a trailing comma
                        s.i += 1
                        break
                key = s.ident(f"a key inside {name} = [ ... ]")
                s.skip()
                s.expect("=")
                s.skip()
                if s.at_end():
                    raise s.error(f"{name} = [ ... ] is not closed")
                pairs.append(Pair(key, s.value(",]")))
            attrs.append(Attr(name, start, s.i, None, tuple(pairs)))
        else:
            if s.at_end():
                raise s.error(f"{name} has no value")
            value = s.value("")
            attrs.append(Attr(name, start, value.end, value, None))


def find(attrs: list[Attr], name: str, **match: str) -> list[Attr]:
    """Attributes called ``name``; for vectors, only those whose keys have the given values
    (``find(attrs, "VM_MAD", NAME="kvm")``)."""
    out = []
    for attr in attrs:
        if attr.name != name.upper():
            continue
        if match and (attr.pairs is None or any(attr.text_of(k) != v for k, v in match.items())):
            continue
        out.append(attr)
    return out


def line_span(text: str, start: int, end: int) -> tuple[int, int] | None:
    """The whole lines holding ``text[start:end]`` when nothing but blanks (and a comment
    after it) shares them; else None."""
    line_start = text.rfind("\n", 0, start) + 1
    if text[line_start:start].strip():
        return None
    eol = text.find("\n", end)
    line_end = len(text) if eol < 0 else eol + 1
    rest = text[end:line_end].strip()
    if rest and not rest.startswith("#"):
        return None
    return line_start, line_end


def end_of_line(text: str, offset: int) -> int:
    eol = text.find("\n", offset)
    return len(text) if eol < 0 else eol + 1


# --- driver ARGUMENTS strings ------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    value: str | None
    start: int  # offset of the option's first token in the arguments string
    end: int  # offset after its last token
    vstart: int  # the value's span (vstart == vend when there is none)
    vend: int


def find_option(args: str, short: str, long: str) -> Option | None:
    """The last occurrence of an option that takes a value (``-d x``, ``-dx``, ``--long x``,
    ``--long=x``), as GetoptLong reads it; None when absent."""
    tokens = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+", args)]
    found: Option | None = None
    k = 0
    while k < len(tokens):
        s, e, tok = tokens[k]
        if tok in (short, long):
            if k + 1 < len(tokens):
                ns, ne, nxt = tokens[k + 1]
                found = Option(nxt, s, ne, ns, ne)
                k += 2
                continue
            found = Option(None, s, e, e, e)
        elif tok.startswith(long + "="):
            found = Option(tok[len(long) + 1:], s, e, s + len(long) + 1, e)
        elif tok.startswith(short) and not tok.startswith("--") and len(tok) > len(short):
            found = Option(tok[len(short):], s, e, s + len(short), e)
        k += 1
    return found


def set_option(args: str, short: str, long: str, value: str) -> str:
    """``args`` with the option's value replaced (or the option appended)."""
    opt = find_option(args, short, long)
    if opt is None:
        sep = "" if not args or args[-1].isspace() else " "
        return f"{args}{sep}{short} {value}"
    if opt.value is None:
        return f"{args[:opt.end]} {value}{args[opt.end:]}"
    return args[:opt.vstart] + value + args[opt.vend:]


def drop_option(args: str, short: str, long: str) -> str:
    opt = find_option(args, short, long)
    if opt is None:
        return args
    before, after = args[:opt.start], args[opt.end:]
    if before.endswith(" ") and (after.startswith(" ") or not after):
        before = before[:-1]
    return before + after


def split_list(value: str | None) -> list[str]:
    return [item for item in (value or "").split(",") if item]


def parse_actions(value: str | None) -> list[tuple[str, str | None]]:
    """``deploy=deploy-tweaks,save`` -> [("deploy", "deploy-tweaks"), ("save", None)] (the
    keys as written; oned compares them upper-cased)."""
    out: list[tuple[str, str | None]] = []
    for item in split_list(value):
        key, eq, script = item.partition("=")
        out.append((key, script if eq else None))
    return out


def join_actions(items: list[tuple[str, str | None]]) -> str:
    return ",".join(k if v is None else f"{k}={v}" for k, v in items)
