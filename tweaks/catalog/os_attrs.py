"""os_attrs: attributes of ``<os>`` (T_OS ``k=v ...``; an empty value deletes the attribute).

libvirt's ``<os>`` (hvm) has one attribute, ``firmware`` (``efi`` or ``bios``), which
asks libvirt to pick the firmware itself. Any other name is refused, so the VM cannot
write arbitrary attributes. addon-storpool's syntax is accepted, including its leading
``:`` (``T_OS=":firmware=efi"``); unlike its os.py, T_OS is applied on its own (os.py only
wrote the document when T_OS_LOADER or T_OS_NVRAM also changed something).

libvirt 9.0 refuses auto-selection together with a chosen loader (a ``<loader>`` with
a path, ``readonly`` or ``type``), so setting ``firmware`` on such a domain is rejected:
use T_OS_LOADER or T_OS, not both.

oned writes the firmware for OS/FIRMWARE (``firmware='efi'`` for FIRMWARE=UEFI in 7.0+):
that wins over a rule default, an explicit T_OS wins over it.
"""

from __future__ import annotations

from ..errors import ParamError
from ..params import Format
from ..tweak import Context, Tweak

# Attribute -> allowed values (libvirt domaincommon.rng, <define name="oshvm">).
OS_ATTRIBUTES: dict[str, tuple[str, ...]] = {"firmware": ("efi", "bios")}


def parse_os_attrs(text: str) -> dict[str, str | None]:
    """``[:]k=v ...`` -> {attribute: value, or None to delete it}."""
    body = text[1:] if text.startswith(":") else text
    result: dict[str, str | None] = {}
    for item in body.split():
        key, eq, value = item.partition("=")
        key = key.lower()
        if not eq:
            raise ParamError(f"item {item[:32]!r} is not key=value")
        allowed = OS_ATTRIBUTES.get(key)
        if allowed is None:
            raise ParamError(f"unknown <os> attribute {key[:32]!r} (known: {', '.join(OS_ATTRIBUTES)})")
        if key in result:
            raise ParamError(f"attribute {key!r} given twice")
        value = value.lower()
        if value and value not in allowed:
            raise ParamError(f"{key}: not one of {', '.join(allowed)} (or empty to delete)")
        result[key] = value or None
    if not result:
        raise ParamError("no attributes given")
    return result


class OsAttrs(Tweak):
    summary = "attributes of <os> (firmware=efi|bios; an empty value deletes it)"
    attributes = ("T_OS",)
    params = (
        Format("attrs", "space-separated k=v for <os>; known: firmware=efi|bios; k= deletes",
               parser=parse_os_attrs, syntax="[:]firmware=efi|bios|", max_len=128,
               pattern=r"^:?\s*([A-Za-z]+=[A-Za-z]*\s*)+$"),
    )

    def apply(self, ctx: Context) -> None:
        if ctx.facts.get("template.OS/FIRMWARE") and not ctx.explicit("attrs"):
            ctx.note("kept oned's OS/FIRMWARE")
            return
        os_el = ctx.root.find("os")
        if os_el is None:
            ctx.note("the domain has no <os>")
            return
        attrs: dict[str, str | None] = ctx.params["attrs"]
        loader = os_el.find("loader")
        if attrs.get("firmware") and loader is not None and (
                (loader.text or "").strip() or loader.get("readonly") or loader.get("type")):
            raise ctx.reject("attrs", "libvirt refuses firmware auto-selection with a chosen <loader> "
                                      "(from OS/FIRMWARE or T_OS_LOADER)")
        ctx.editor.set_attrs(os_el, attrs)


TWEAK = OsAttrs()
