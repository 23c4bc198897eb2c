"""sysinfo: SMBIOS strings the guest sees (T_SMBIOS_BIOS, _SYSTEM, _BASEBOARD, _CHASSIS,
_OEMSTRINGS).

T_SMBIOS_<SECTION> is ``key=value;key=value``; the keys are those libvirt allows in
that section (domaincommon.rng):

- BIOS: vendor version date release
- SYSTEM: manufacturer product version serial uuid sku family
- BASEBOARD: manufacturer product version serial asset location
- CHASSIS: manufacturer version serial asset sku

T_SMBIOS_OEMSTRINGS is ``a;b;...`` (at most 32 strings). Values are untrusted: printable
ASCII only, at most 64 characters (OEM strings 255), never empty; lxml escapes them.
Values libvirt/QEMU check themselves are checked here first: BIOS ``date`` is
``MM/DD/YY`` or ``MM/DD/YYYY``, ``release`` is ``major.minor`` (0-255 each), SYSTEM
``uuid`` is a UUID that must equal the domain's ``<uuid>`` when there is one.

Result: ``<os><smbios mode='sysinfo'/></os>`` and ``<sysinfo type='smbios'><bios><entry
name='vendor'>...</entry>...``. An existing ``<sysinfo type='smbios'>`` is merged into
(entries with the same name get the new value, OEM strings not yet present are added),
so applying twice changes nothing; addon-storpool's script gave up when ``<smbios>``
existed.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from lxml import etree

from ..errors import ParamError
from ..params import Format
from ..tweak import Context, Tweak
from ._firmware import OS_ORDER, parse_uuid, same_uuid

MAX_VALUE = 64
MAX_OEM_VALUE = 255
MAX_OEM_STRINGS = 32
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]+")
_DATE = re.compile(r"(0[1-9]|1[0-2])/(0[1-9]|[12][0-9]|3[01])/([0-9]{2}|[0-9]{4})")
_RELEASE = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})")

# Section parameter -> (element name, allowed entry names in libvirt's order).
SECTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "bios": ("bios", ("vendor", "version", "date", "release")),
    "system": ("system", ("manufacturer", "product", "version", "serial", "uuid", "sku", "family")),
    "baseboard": ("baseBoard", ("manufacturer", "product", "version", "serial", "asset", "location")),
    "chassis": ("chassis", ("manufacturer", "version", "serial", "asset", "sku")),
}
SECTION_ORDER = ("bios", "system", "baseBoard", "chassis", "oemStrings")


def _value(text: str, limit: int) -> str:
    value = text.strip()
    if not value:
        raise ParamError("empty value")
    if len(value) > limit:
        raise ParamError(f"value longer than {limit} characters")
    if not _PRINTABLE_ASCII.fullmatch(value):
        raise ParamError("value has characters other than printable ASCII")
    return value


def _check(section: str, key: str, value: str) -> str:
    if section == "bios" and key == "date" and not _DATE.fullmatch(value):
        raise ParamError("date is not MM/DD/YY or MM/DD/YYYY")
    if section == "bios" and key == "release":
        match = _RELEASE.fullmatch(value)
        if not match or int(match.group(1)) > 255 or int(match.group(2)) > 255:
            raise ParamError("release is not major.minor (0-255 each)")
    if section == "system" and key == "uuid":
        return parse_uuid(value)
    return value


def section_parser(section: str) -> Callable[[str], dict[str, str]]:
    keys = SECTIONS[section][1]

    def parse(text: str) -> dict[str, str]:
        result: dict[str, str] = {}
        for item in text.split(";"):
            if not item.strip():
                continue
            key, eq, raw = item.partition("=")
            if not eq:
                key, eq, raw = item.partition(":")  # addon-storpool also took key:value
            key = key.strip().lower()
            if not eq:
                raise ParamError(f"item {item[:32]!r} is not key=value (or key:value)")
            if key not in keys:
                raise ParamError(f"unknown {section} key {key[:32]!r} (known: {', '.join(keys)})")
            if key in result:
                raise ParamError(f"key {key!r} given twice")
            try:
                result[key] = _check(section, key, _value(raw, MAX_VALUE))
            except ParamError as exc:
                raise ParamError(f"{key}: {exc}") from None
        if not result:
            raise ParamError("no key=value given")
        return {k: result[k] for k in keys if k in result}

    return parse


def parse_oem(text: str) -> tuple[str, ...]:
    strings: list[str] = []
    for item in text.split(";"):
        if not item.strip():
            continue
        value = _value(item, MAX_OEM_VALUE)
        if value not in strings:
            strings.append(value)
    if not strings:
        raise ParamError("no OEM strings given")
    if len(strings) > MAX_OEM_STRINGS:
        raise ParamError(f"more than {MAX_OEM_STRINGS} OEM strings")
    return tuple(strings)


def _section_param(name: str) -> Format:
    keys = " ".join(SECTIONS[name][1])
    return Format(name, f"{name} entries key=value;... (keys: {keys}); empty: none", default="",
                  parser=section_parser(name), syntax="key=value;key=value", max_len=1024)


class Sysinfo(Tweak):
    summary = "SMBIOS sysinfo strings (bios, system, baseBoard, chassis, oemStrings)"
    attributes = ("T_SMBIOS_BIOS", "T_SMBIOS_SYSTEM", "T_SMBIOS_BASEBOARD", "T_SMBIOS_CHASSIS",
                  "T_SMBIOS_OEMSTRINGS")
    params = (
        *(_section_param(name) for name in SECTIONS),
        Format("oemstrings", "OEM strings a;b;...; empty: none", default="", parser=parse_oem,
               syntax="string;string", max_len=2048),
    )

    def apply(self, ctx: Context) -> None:
        wanted = {name: ctx.params[name] for name in SECTIONS if ctx.params[name]}
        oem: tuple[str, ...] | str = ctx.params["oemstrings"]
        if not wanted and not oem:
            ctx.note("no T_SMBIOS_* attribute given")
            return
        os_el = ctx.root.find("os")
        if os_el is None:
            ctx.note("the domain has no <os>")
            return
        uuid = wanted.get("system", {}).get("uuid")
        domain_uuid = ctx.root.findtext("uuid")
        if uuid and domain_uuid and not same_uuid(uuid, domain_uuid.strip()):
            raise ctx.reject("system", f"uuid differs from the domain's <uuid> {domain_uuid.strip()[:36]}")
        editor = ctx.editor
        smbios = editor.child(os_el, "smbios", {"mode": "sysinfo"}, order=OS_ORDER)
        editor.set_attr(smbios, "mode", "sysinfo")
        sysinfo = next((s for s in ctx.root.iterfind("sysinfo") if s.get("type") == "smbios"), None)
        if sysinfo is None:
            # libvirt's place, just before <os> (oned's <metadata> at the end misleads DOMAIN_ORDER).
            sysinfo = editor.add(ctx.root, "sysinfo", {"type": "smbios"}, index=list(ctx.root).index(os_el))
        for name, entries in wanted.items():
            section = editor.child(sysinfo, SECTIONS[name][0], order=SECTION_ORDER)
            for key, value in entries.items():
                entry = _entry(section, key)
                if entry is None:
                    editor.add(section, "entry", {"name": key}, text=value)
                elif (entry.text or "").strip() != value or len(entry):
                    editor.set_text(entry, value)
        if isinstance(oem, tuple):
            section = editor.child(sysinfo, "oemStrings", order=SECTION_ORDER)
            present = {(e.text or "").strip() for e in section.iterfind("entry")}
            for value in oem:
                if value not in present:
                    editor.add(section, "entry", text=value)


def _entry(section: etree._Element, key: str) -> etree._Element | None:
    for entry in section.iterfind("entry"):
        if entry.get("name") == key:
            return entry
    return None


TWEAK = Sysinfo()
