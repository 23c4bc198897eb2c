"""uuid: the domain's ``<uuid>`` (T_UUID).

The value must be a UUID: canonical ``8-4-4-4-12`` hex or 32 hex digits (any case);
it is written in canonical lowercase form, and the all-zero/all-f UUIDs are refused.
When ``<sysinfo><system><entry name='uuid'>`` is set it must be the same UUID (libvirt
refuses the domain otherwise). oned writes ``<uuid>`` from OS/UUID: that wins over a
rule default, an explicit T_UUID wins over it.
"""

from __future__ import annotations

from ..params import Format
from ..tweak import Context, Tweak
from ._firmware import parse_uuid, same_uuid


class Uuid(Tweak):
    summary = "the domain <uuid>"
    attributes = ("T_UUID",)
    params = (
        Format("uuid", "a UUID, 8-4-4-4-12 or 32 hex digits", parser=parse_uuid,
               syntax="xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", max_len=36,
               pattern=r"^[0-9a-fA-F-]{32,36}$"),
    )

    def apply(self, ctx: Context) -> None:
        if ctx.facts.get("template.OS/UUID") and not ctx.explicit("uuid"):
            ctx.note("kept oned's OS/UUID")
            return
        value: str = ctx.params["uuid"]
        for sysinfo in ctx.root.iterfind("sysinfo"):
            for entry in sysinfo.iterfind("system/entry"):
                if entry.get("name") == "uuid" and not same_uuid(value, (entry.text or "").strip()):
                    raise ctx.reject("uuid", "differs from the SMBIOS system uuid in <sysinfo>")
        editor = ctx.editor
        current = ctx.root.find("uuid")
        if current is None:
            editor.add(ctx.root, "uuid", text=value)
        elif not same_uuid(value, (current.text or "").strip()):
            editor.set_text(current, value)


TWEAK = Uuid()
