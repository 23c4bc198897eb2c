"""disk_driver: ``<driver>`` cache / io / discard for the disks of listed TM_MADs.

addon-storpool's disk-cache-io.py gave every StorPool disk (the context CD-ROM
included: its TM_MAD is the system datastore's) ``cache='none' io='native'``. Here the
values are parameters; ``keep`` (the default) leaves an attribute as it is. Disks are
matched to OpenNebula disks by their ``/<vmid>/disk.<DISK_ID>`` source path.

A value the disk already has from its own DISK/CACHE, DISK/IO or DISK/DISCARD (oned's
native output) wins over a rule value; only a value taken from a VM attribute replaces it.
qemu refuses ``io='native'`` unless the cache mode bypasses the host page cache
(``none`` or ``directsync``): such a combination in the parameters skips the rule, and a
disk whose resulting driver would have it is left alone (with a note).
No VM attribute of its own; the shipped rule (rules.d/52-disk-driver.yaml) is disabled.
"""

from __future__ import annotations

from ..domain import driver
from ..params import Choice
from ..tweak import Context, Tweak
from ._disks import listed_tm_mads, one_disks, tm_mad, tm_mads_param

KEEP = "keep"
CACHE_MODES = ("none", "writethrough", "writeback", "directsync", "unsafe", "default")
IO_MODES = ("native", "threads", "io_uring")
DISCARD_MODES = ("unmap", "ignore")
# Cache modes with cache.direct=on, the only ones qemu accepts together with aio=native.
DIRECT_CACHE = ("none", "directsync")
ATTRS = ("cache", "io", "discard")


def native_io_conflict(cache: str | None, io: str | None) -> bool:
    """True when qemu would refuse the pair (a missing cache is libvirt's default, writeback)."""
    return io == "native" and cache not in DIRECT_CACHE


class DiskDriver(Tweak):
    summary = "disk <driver> cache/io/discard for disks of listed TM_MADs"
    fragments = ("disk",)
    attributes = ()
    params = (
        tm_mads_param(),
        Choice("cache", "cache mode, or keep", default=KEEP, choices=(KEEP, *CACHE_MODES)),
        Choice("io", "I/O mode (native needs cache none or directsync), or keep", default=KEEP,
               choices=(KEEP, *IO_MODES)),
        Choice("discard", "discard mode, or keep", default=KEEP, choices=(KEEP, *DISCARD_MODES)),
    )

    def apply(self, ctx: Context) -> None:
        wanted = {name: str(ctx.params[name]) for name in ATTRS if ctx.params[name] != KEEP}
        if not wanted:
            ctx.note("cache, io and discard are all keep")
            return
        if "cache" in wanted and native_io_conflict(wanted["cache"], wanted.get("io")):
            blamed = "cache" if ctx.explicit("cache") or not ctx.explicit("io") else "io"
            raise ctx.reject(blamed, f"io=native needs cache=none or directsync, not {wanted['cache']}")
        tm_mads = listed_tm_mads(ctx, "storage.tm_mads")
        for disk in one_disks(ctx.facts, ctx.root):
            if tm_mad(ctx.facts, disk) not in tm_mads:
                continue
            values: dict[str, str] = {}
            for name, value in wanted.items():
                native = disk.facts.get(name, "")
                if native and not ctx.explicit(name):
                    if native.lower() != value:
                        ctx.note(f"{disk.target}: kept DISK/{name.upper()}={native}")
                    continue
                values[name] = value
            if not values:
                continue
            current = disk.element.find("driver")
            final = {name: values.get(name, current.get(name) if current is not None else None)
                     for name in ("cache", "io")}
            if native_io_conflict(final["cache"], final["io"]):
                ctx.note(f"{disk.target}: io=native with cache={final['cache'] or 'default'} "
                         "would not start; left alone")
                continue
            ctx.editor.set_attrs(driver(ctx.editor, disk.element), values)


TWEAK = DiskDriver()
