"""context_cache: CD-ROM drives bypass the host page cache (``cache='none' io='native'``).

addon-storpool's context-cache.py gave every ``type='file'`` CD-ROM this driver; here
``type='block'`` CD-ROMs (the context ISO after context_block, StorPool image CD-ROMs)
get it too. Drives of other types (network, volume) are left alone. A CD-ROM whose
OpenNebula disk sets DISK/CACHE or DISK/IO keeps oned's driver (native output wins).
No parameters and no VM attribute; the shipped rule (rules.d/53-context-cache.yaml) is
disabled, as the add-on's install did not enable the script.
"""

from __future__ import annotations

from ..domain import driver
from ..tweak import Context, Tweak
from ._disks import one_disk

VALUES = {"cache": "none", "io": "native"}


class ContextCache(Tweak):
    summary = "CD-ROM drives (file/block) get driver cache='none' io='native'"
    fragments = ("disk",)
    attributes = ()
    params = ()

    def apply(self, ctx: Context) -> None:
        for disk in ctx.root.iterfind("devices/disk"):
            if disk.get("device") != "cdrom" or disk.get("type") not in ("file", "block"):
                continue
            found = one_disk(ctx.facts, disk)
            if found is not None and (found.facts.get("cache") or found.facts.get("io")):
                ctx.note(f"{found.target}: kept oned's DISK/CACHE, DISK/IO")
                continue
            ctx.editor.set_attrs(driver(ctx.editor, disk), VALUES)


TWEAK = ContextCache()
