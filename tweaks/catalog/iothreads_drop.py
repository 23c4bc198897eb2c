"""iothreads_drop: unbind virtio-blk disks and virtio-scsi controllers from iothreads; when
no device uses one any more, drop ``<iothreads>``, ``<iothreadids>`` and their
``<cputune>`` pinning too.

For a live migration to a host where the VM should run without iothreads (the add-on's
disable-iothreads job). libvirt accepts unbinding them on a live migration, except a
controller whose ``<driver>`` would be left empty (libvirt 9.0 then refuses: "virtio
options don't match"): such a controller stays bound, and ``<iothreads>`` with it.
"""

from __future__ import annotations

from ..domain import virtio_disks, virtio_scsi_controllers
from ..params import Bool
from ..tweak import Context, Tweak


class IOThreadsDrop(Tweak):
    summary = "unbind devices from iothreads and drop <iothreads> when nothing uses them"
    attributes = ("T_MIGRATE_IOTHREADS_DROP",)
    params = (
        Bool("drop", "yes: drop the iothreads; no: leave them", ),
        Bool("controllers", "also unbind virtio-scsi controllers", default=True),
    )

    def apply(self, ctx: Context) -> None:
        if not ctx.params["drop"]:
            return
        root, editor = ctx.root, ctx.editor
        devices = list(virtio_disks(root))
        if ctx.params["controllers"]:
            devices += virtio_scsi_controllers(root)
        for device in devices:
            driver = device.find("driver")
            if driver is not None and device.tag == "controller" and driver.get("iothread") is not None \
                    and len(driver.attrib) == 1 and not len(driver):
                ctx.note(f"controller {device.get('index', '0')}: left bound (an empty <driver> is refused "
                         "by libvirt on a live migration)")
                continue
            if driver is not None:
                editor.set_attr(driver, "iothread", None)
                # libvirt >= 8 may list several per disk: <driver><iothreads><iothread id=.../>
                for nested in driver.findall("iothreads"):
                    editor.remove(nested)
        if root.xpath("devices/*/driver[@iothread or iothreads]"):
            ctx.note("devices still use iothreads; <iothreads> kept")
            return
        for path in ("iothreads", "iothreadids", "defaultiothread", "cputune/iothreadpin",
                     "cputune/iothreadsched", "cputune/iothread_period", "cputune/iothread_quota"):
            for el in root.findall(path):
                editor.remove(el)
        cputune = root.find("cputune")
        if cputune is not None and len(cputune) == 0 and not (cputune.text or "").strip():
            editor.remove(cputune)


TWEAK = IOThreadsDrop()
