"""oned's XML documents: safe parsing, base64 payloads, and typed field access."""

from __future__ import annotations

from lxml import etree

from .errors import DriverError

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
                          strip_cdata=False)


def parse(data: bytes | str, what: str) -> etree._Element:
    raw = data.encode() if isinstance(data, str) else data
    try:
        root = etree.fromstring(raw.strip(), _PARSER)
    except etree.XMLSyntaxError as exc:
        raise DriverError(f"{what}: malformed XML ({exc})") from None
    if root is None:
        raise DriverError(f"{what}: empty XML document")
    return root


def decode_b64(data: bytes | str, what: str) -> bytes:
    # imported here: `one-tweaks apply` reads documents through this module on every deploy
    # and never decodes a payload
    import base64
    import binascii

    raw = data.encode() if isinstance(data, str) else data
    raw = b"".join(raw.split())
    if not raw:
        raise DriverError(f"{what}: empty")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise DriverError(f"{what}: not valid base64") from None


def parse_b64(data: bytes | str, what: str) -> etree._Element:
    """A base64-encoded XML payload (what oned sends local drivers)."""
    return parse(decode_b64(data, what), what)


def text(el: etree._Element | None, path: str, default: str = "") -> str:
    if el is None:
        return default
    found = el.find(path)
    if found is None or found.text is None:
        return default
    return found.text.strip()


def integer(el: etree._Element | None, path: str, what: str, default: int | None = None) -> int:
    value = text(el, path)
    if value == "":
        if default is None:
            raise DriverError(f"{what}: {path} is missing")
        return default
    from . import numbers  # here: `one-tweaks apply` reads documents through this module, never a number

    return numbers.whole(value, f"{what}: {path}=", minimum=-numbers.MAX, signed=True, unit="a number")


def template_attrs(el: etree._Element | None) -> dict[str, str]:
    """The single-valued attributes of a TEMPLATE element (repeated ones are left out)."""
    if el is None:
        return {}
    seen: dict[str, int] = {}
    for child in el:
        if isinstance(child.tag, str):
            seen[child.tag] = seen.get(child.tag, 0) + 1
    return {c.tag: (c.text or "").strip() for c in el
            if isinstance(c.tag, str) and seen[c.tag] == 1 and not len(c)}
