"""ioeventfd: ``<driver ioeventfd='on|off'>`` on virtio disks and virtio-scsi controllers.

T_IOEVENTFD=yes sets ``on``, ``no`` sets ``off`` (the VM's explicit choice; qemu's own
default under KVM is on). From addon-storpool's legacy vmTweakHypervEnlightenments.py
``--ioeventfd`` (``vd*`` disks and virtio-scsi controllers); no current add-on tweak.
Rule: rules.d/55-ioeventfd.yaml, idle without the attribute.

qemu refuses ``ioeventfd=off`` on a device served by an iothread ("ioeventfd is required
for iothread"), so ``off`` leaves such devices alone and says so.
"""

from __future__ import annotations

from ..domain import driver, virtio_disks, virtio_scsi_controllers
from ..params import Bool
from ..tweak import Context, Tweak


class IOEventFD(Tweak):
    summary = "driver ioeventfd on/off for virtio disks and virtio-scsi controllers"
    fragments = ("disk", "controller")
    attributes = ("T_IOEVENTFD",)
    params = (
        Bool("ioeventfd", "yes: ioeventfd='on', no: ioeventfd='off'"),
        Bool("disks", "set it on virtio-blk disks", default=True),
        Bool("controllers", "set it on virtio-scsi controllers", default=True),
    )

    def apply(self, ctx: Context) -> None:
        value = "on" if ctx.params["ioeventfd"] else "off"
        devices = []
        if ctx.params["disks"]:
            devices.extend(virtio_disks(ctx.root))
        if ctx.params["controllers"]:
            devices.extend(virtio_scsi_controllers(ctx.root))
        kept = 0
        for device in devices:
            current = device.find("driver")
            if value == "off" and current is not None and current.get("iothread"):
                kept += 1
                continue
            ctx.editor.set_attr(driver(ctx.editor, device, qemu=device.tag == "disk"), "ioeventfd", value)
        if kept:
            ctx.note(f"{kept} device(s) with an iothread keep ioeventfd on (qemu requires it)")


TWEAK = IOEventFD()
