"""ioeventfd: ``<driver ioeventfd='on|off'>`` on virtio disks and virtio-scsi controllers.

T_IOEVENTFD=yes sets ``on``, ``no`` sets ``off`` (the VM's explicit choice; qemu's own
default under KVM is on). From addon-storpool's legacy vmTweakHypervEnlightenments.py
``--ioeventfd`` (``vd*`` disks and virtio-scsi controllers); no current add-on tweak.
Rule: rules.d/55-ioeventfd.yaml, idle without the attribute.
"""

from __future__ import annotations

from ..domain import driver, virtio_disks, virtio_scsi_controllers
from ..params import Bool
from ..tweak import Context, Tweak


class IOEventFD(Tweak):
    summary = "driver ioeventfd on/off for virtio disks and virtio-scsi controllers"
    attributes = ("T_IOEVENTFD",)
    params = (
        Bool("ioeventfd", "yes: ioeventfd='on', no: ioeventfd='off'"),
        Bool("disks", "set it on virtio-blk disks", default=True),
        Bool("controllers", "set it on virtio-scsi controllers", default=True),
    )

    def apply(self, ctx: Context) -> None:
        value = "on" if ctx.params["ioeventfd"] else "off"
        if ctx.params["disks"]:
            for disk in virtio_disks(ctx.root):
                ctx.editor.set_attr(driver(ctx.editor, disk), "ioeventfd", value)
        if ctx.params["controllers"]:
            for controller in virtio_scsi_controllers(ctx.root):
                ctx.editor.set_attr(driver(ctx.editor, controller, qemu=False), "ioeventfd", value)


TWEAK = IOEventFD()
