"""nic_queues: multiqueue virtio-net, ``<driver name='vhost' queues='N'/>`` on virtio
interfaces (addon-storpool's nic-queues.py).

T_NIC_QUEUES (a number or ``vcpu``) applies to every virtio NIC; T_NIC<id>_QUEUES
overrides it for one NIC, where <id> is the NIC_ID that oned puts in the interface's
target device name ``one-<vm>-<id>`` (0 leaves that NIC alone). The per-NIC names are
dynamic, so they are not parameters: with ``per_nic`` on, the tweak reads them itself
and parses them exactly like ``queues`` (a bad value skips the rule, naming
USER_TEMPLATE/T_NIC<id>_QUEUES). ``queues: 0`` (the shipped rule's default) means "no
value for all NICs", so the per-NIC attributes work on their own.

Bounds: 1..min(vCPUs, 1024) and at most the rule's ``max``; a VM value above its
vCPU count skips the rule. oned's native NIC/VIRTIO_QUEUES (a ``queues`` already on
the interface's driver) wins over a rule default; the VM's attributes win over it.
"""

from __future__ import annotations

from lxml import etree

from ..domain import vcpu_current
from ..errors import ParamError
from ..params import Bool, Int
from ..tweak import Context, Tweak

MAX_QUEUES = 1024
# Interface types backed by a tap device (or vhost-user) that take virtio queues.
QUEUE_TYPES = frozenset({"bridge", "network", "ethernet", "direct", "vhostuser"})


def nic_id(interface: etree._Element) -> str | None:
    """The NIC_ID of an interface oned wrote (target dev ``one-<vm>-<id>``; checked with
    string methods: compiling a pattern for it cost every deploy more than the check)."""
    target = interface.find("target")
    parts = (target.get("dev", "") if target is not None else "").split("-")
    if len(parts) != 3 or parts[0] != "one" or not all(p.isascii() and p.isdigit() for p in parts[1:]):
        return None
    return str(int(parts[2])) if len(parts[2]) <= 6 else None


class NicQueues(Tweak):
    summary = "virtio-net queues per NIC (a number, or vcpu for one per vCPU), per-NIC overrides"
    fragments = ("interface",)
    attributes = ("T_NIC_QUEUES", "T_NIC<id>_QUEUES")
    params = (
        Int("queues", "queue count for every virtio NIC, vcpu for one per vCPU, 0 for none",
            minimum=0, maximum=MAX_QUEUES, words=("vcpu",)),
        Int("max", "operator cap on the queue count", default=MAX_QUEUES, minimum=1, maximum=MAX_QUEUES),
        Bool("per_nic", "read USER_TEMPLATE/T_NIC<id>_QUEUES for each NIC", default=True),
    )

    def apply(self, ctx: Context) -> None:
        vcpus = vcpu_current(ctx.root) or ctx.facts.vcpu
        cap = min(vcpus, MAX_QUEUES, ctx.params["max"])
        eligible = asked = 0
        for interface in ctx.root.iterfind("devices/interface"):
            model = interface.find("model")
            if model is None or model.get("type") != "virtio" or interface.get("type") not in QUEUE_TYPES:
                continue
            eligible += 1
            value, explicit, source, written = self._wanted(ctx, interface)
            if value == 0:
                continue
            asked += 1
            if value == "vcpu":
                queues = cap
            else:
                assert isinstance(value, int)
                if value > vcpus and explicit:
                    raise ParamError(f"more queues than the VM's {vcpus} vCPUs", source, written)
                queues = min(value, cap)
            driver = interface.find("driver")
            if driver is not None and driver.get("queues") and not explicit:
                ctx.note(f"kept oned's NIC/VIRTIO_QUEUES on {source_name(interface)}")
                continue
            if driver is None:
                ctx.editor.add(interface, "driver", {"name": "vhost", "queues": queues}, after=("model",))
            else:
                ctx.editor.set_attr(driver, "queues", queues)
        if not eligible:
            ctx.note("no virtio NIC")
        elif not asked:
            ctx.note("no queue count for any NIC (T_NIC_QUEUES / T_NIC<id>_QUEUES)")

    def _wanted(self, ctx: Context, interface: etree._Element) -> tuple[int | str, bool, str, object]:
        """(value, explicit, source, value as written) for one interface: its own attribute,
        else ``queues``."""
        nid = nic_id(interface) if ctx.params["per_nic"] else None
        if nid is not None:
            name = f"T_NIC{nid}_QUEUES"
            raw = ctx.facts.get(f"user.{name}")
            if raw is not None:
                source = f"USER_TEMPLATE/{name}"
                try:
                    return self.param("queues").parse(raw), True, source, raw
                except ParamError as exc:
                    raise ParamError(str(exc), source, raw) from None
        return (ctx.params["queues"], ctx.explicit("queues"), ctx.sources.get("queues", "parameter queues"),
                ctx.raw("queues"))


def source_name(interface: etree._Element) -> str:
    target = interface.find("target")
    return target.get("dev", "interface") if target is not None else "interface"


TWEAK = NicQueues()
