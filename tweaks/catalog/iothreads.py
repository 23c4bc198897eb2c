"""iothreads: give the domain ``<iothreads>`` and bind virtio disks and virtio-scsi
controllers to them.

oned 6+ writes ``<iothreads>`` itself from FEATURES/IOTHREADS; that count is kept
unless the VM asks for another with its own attribute (T_IOTHREADS_OVERRIDE), and
devices oned left unbound are bound. Bounds: 1..vCPUs, at most 64.
"""

from __future__ import annotations

from lxml import etree

from ..domain import driver, vcpu_current, virtio_disks, virtio_scsi_controllers
from ..params import Bool, Choice, Int
from ..tweak import Context, Tweak

MAX_IOTHREADS = 64


class IOThreads(Tweak):
    summary = "<iothreads> count and binding of virtio disks / virtio-scsi controllers"
    fragments = ("disk", "controller")
    attributes = ("T_IOTHREADS_OVERRIDE",)
    params = (
        Int("count", "number of iothreads (bounded by the vCPU count)", minimum=1, maximum=MAX_IOTHREADS),
        Choice("policy", "spread devices over the iothreads, or put all on iothread 1",
               default="round-robin", choices=("round-robin", "single")),
        Bool("disks", "bind virtio-blk disks", default=True),
        Bool("controllers", "bind virtio-scsi controllers", default=True),
    )

    def apply(self, ctx: Context) -> None:
        root = ctx.root
        editor = ctx.editor
        vcpus = vcpu_current(root) or ctx.facts.vcpu
        limit = min(vcpus, MAX_IOTHREADS)
        count: int = ctx.params["count"]
        existing = root.find("iothreads")
        if root.find("iothreadids") is not None:
            ctx.note("domain defines <iothreadids>; left as it is")
            return
        rebind = True
        if existing is not None and not ctx.explicit("count"):
            # oned generated it from FEATURES/IOTHREADS: that setting wins over a rule default.
            try:
                count = int((existing.text or "").strip())
            except ValueError:
                ctx.note("existing <iothreads> is not a number; left as it is")
                return
            rebind = False
            ctx.note(f"kept oned's <iothreads>{count}</iothreads>")
        elif count > limit:
            if ctx.explicit("count"):
                raise ctx.reject("count", f"more iothreads than allowed for {vcpus} vCPUs (max {limit})")
            count = limit
        if count < 1:
            return
        if existing is None:
            editor.add(root, "iothreads", text=str(count))
        elif rebind:
            # The same count again (this rule's own output): the bindings stand, so that
            # devices other rules bound since (a controller scsi_queues added) keep theirs.
            rebind = editor.set_text(existing, count)
        devices = []
        if ctx.params["disks"]:
            devices.extend(virtio_disks(root))
        if ctx.params["controllers"]:
            devices.extend(virtio_scsi_controllers(root))
        single = ctx.params["policy"] == "single"
        for index, device in enumerate(devices):
            current = device.find("driver")
            bound = current is not None and current.get("iothread") is not None
            if bound and not rebind and _valid_binding(current.get("iothread"), count):  # type: ignore[union-attr]
                continue
            wanted = 1 if single else index % count + 1
            editor.set_attr(driver(editor, device, qemu=device.tag == "disk"), "iothread", wanted)


def bind_new_device(ctx: Context, device: etree._Element) -> None:
    """Bind a virtio device another tweak has just added to the domain's iothreads (round
    robin by its place among the virtio devices, as this tweak binds), so that running the
    rules again does not bind it then."""
    root = ctx.root
    existing = root.find("iothreads")
    if existing is None or root.find("iothreadids") is not None:
        return
    try:
        count = int((existing.text or "").strip())
    except ValueError:
        return
    if count < 1:
        return
    devices = [*virtio_disks(root), *virtio_scsi_controllers(root)]
    index = devices.index(device) if device in devices else len(devices)
    ctx.editor.set_attr(driver(ctx.editor, device, qemu=device.tag == "disk"), "iothread", index % count + 1)


def _valid_binding(value: str | None, count: int) -> bool:
    try:
        return value is not None and 1 <= int(value) <= count
    except ValueError:
        return False


TWEAK = IOThreads()
