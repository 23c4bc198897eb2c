"""scsi_queues: virtio-scsi controller queue count, by default one per vCPU.

oned 6.8+ sets it from FEATURES/VIRTIO_SCSI_QUEUES; that (and any count a controller
already has) wins over a rule default, a VM attribute (T_SCSI_QUEUES) wins over both.
Bounds: 1..min(boot vCPUs, 1024), and at most the rule's ``max``. A controller this
tweak adds (``create``) joins the domain's iothreads, as the iothreads rule (which runs
earlier) would have bound it.

Counts are bounded by the vCPUs online at boot (``<vcpu current>``), not by the maximum:
vcpu_max raises the maximum after this rule ran, and a second run must find the same bound.
"""

from __future__ import annotations

from ..domain import driver, vcpu_current, virtio_scsi_controllers
from ..params import Bool, Int
from ..tweak import Context, Tweak
from .iothreads import bind_new_device

MAX_QUEUES = 1024


def queue_count(ctx: Context, name: str = "queues") -> int:
    """Resolve a queue-count parameter (number or ``vcpu``) against this VM's bounds."""
    vcpus = vcpu_current(ctx.root) or ctx.facts.vcpu
    cap: int = min(vcpus, MAX_QUEUES, ctx.params.get("max", MAX_QUEUES))
    value: int | str = ctx.params[name]
    if value == "vcpu":
        return cap
    assert isinstance(value, int)
    if value > vcpus and ctx.explicit(name):
        raise ctx.reject(name, f"more queues than the VM's {vcpus} vCPUs")
    return min(int(value), cap)


class ScsiQueues(Tweak):
    summary = "virtio-scsi controller queues (a number, or vcpu for one per vCPU)"
    fragments = ("controller",)
    attributes = ("T_SCSI_QUEUES",)
    params = (
        Int("queues", "queue count, or vcpu", minimum=1, maximum=MAX_QUEUES, words=("vcpu",)),
        Int("max", "operator cap on the queue count", default=MAX_QUEUES, minimum=1, maximum=MAX_QUEUES),
        Bool("create", "add a virtio-scsi controller when the domain has none", default=False),
    )

    def apply(self, ctx: Context) -> None:
        facts = ctx.facts
        if facts.get("template.FEATURES/VIRTIO_SCSI_QUEUES") and not ctx.explicit("queues"):
            ctx.note("kept oned's FEATURES/VIRTIO_SCSI_QUEUES")
            return
        queues = queue_count(ctx)
        controllers = virtio_scsi_controllers(ctx.root)
        if not controllers and ctx.params["create"]:
            used = {c.get("index") for c in ctx.root.iterfind("devices/controller[@type='scsi']")}
            index = next(str(i) for i in range(len(used) + 1) if str(i) not in used)
            controllers = [ctx.editor.add(ctx.devices(), "controller",
                                          {"type": "scsi", "index": index, "model": "virtio-scsi"},
                                          after=("controller", "disk"))]
            # The iothreads rule ran before this controller existed.
            bind_new_device(ctx, controllers[0])
        for controller in controllers:
            current = controller.find("driver")
            if current is not None and current.get("queues") and not ctx.explicit("queues"):
                continue  # oned's (or a VM attribute's) count wins over a rule default
            ctx.editor.set_attr(driver(ctx.editor, controller, qemu=False), "queues", queues)


TWEAK = ScsiQueues()
