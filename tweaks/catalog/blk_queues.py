"""blk_queues: virtio-blk disk queue count (addon-storpool's T_BLK_QUEUES).

A disk that already has ``queues`` from oned (FEATURES/ or DISK/VIRTIO_BLK_QUEUES)
keeps it unless the value came from the VM's own attribute.
"""

from __future__ import annotations

from ..domain import driver, virtio_disks
from ..params import Int
from ..tweak import Context, Tweak
from .scsi_queues import MAX_QUEUES, queue_count


class BlkQueues(Tweak):
    summary = "virtio-blk disk queues (a number, or vcpu for one per vCPU)"
    fragments = ("disk",)
    attributes = ("T_BLK_QUEUES",)
    params = (
        Int("queues", "queue count, or vcpu", minimum=1, maximum=MAX_QUEUES, words=("vcpu",)),
        Int("max", "operator cap on the queue count", default=MAX_QUEUES, minimum=1, maximum=MAX_QUEUES),
    )

    def apply(self, ctx: Context) -> None:
        queues = queue_count(ctx)
        for disk in virtio_disks(ctx.root):
            current = disk.find("driver")
            if current is not None and current.get("queues") and not ctx.explicit("queues"):
                continue
            ctx.editor.set_attr(driver(ctx.editor, disk), "queues", queues)


TWEAK = BlkQueues()
