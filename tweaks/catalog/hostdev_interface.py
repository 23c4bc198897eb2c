"""hostdev_interface: SR-IOV virtual functions as network interfaces with a MAC
(addon-storpool's vfhostdev2interface.py).

oned passes a VM's PCI devices through as ``<hostdev mode='subsystem' type='pci'>``,
which cannot carry a MAC address. This tweak turns them into
``<interface type='hostdev' managed='yes'><driver name='vfio'/><mac address=.../>
<source><address type='pci' .../></source></interface>`` so libvirt programs the VF's
MAC before the guest starts. The guest-side ``<address>``, ``<boot>``, ``<rom>``,
``<alias>``, ``<acpi>`` and ``<teaming>`` are kept; a hostdev with anything else
(e.g. ``<readonly/>``) is left alone.

MACs come from T_VF_MACS (``mac,mac,...`` in the order of the VM's PCI devices, an
empty item leaves that device alone) or, as the shipped rule does, from the MACs of the
VM's PCI devices (TEMPLATE/PCI/MAC, fact ``vm.pci_macs``), so that of several PCI
devices the ones with a MAC become interfaces and the others stay hostdevs. Only unicast MACs are taken;
a MAC given twice, or one another interface of the domain already uses, skips the
rule. The position counts every PCI passthrough device oned wrote (pci and mdev
hostdevs and already converted interfaces, in document order) so that it matches the
order of TEMPLATE/PCI and the tweak stays idempotent.
"""

from __future__ import annotations

import re

from lxml import etree

from ..errors import ParamError
from ..params import Format
from ..tweak import Context, Tweak

MAX_MACS = 64
_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
KEPT = ("address", "boot", "rom", "alias", "acpi", "teaming")


def parse_macs(text: str) -> tuple[str | None, ...]:
    items = text.split(",")
    if len(items) > MAX_MACS:
        raise ParamError(f"more than {MAX_MACS} MAC addresses")
    macs: list[str | None] = []
    for item in items:
        mac = item.strip().lower()
        if not mac:
            macs.append(None)
            continue
        if not _MAC.fullmatch(mac):
            raise ParamError(f"{item.strip()[:20]!r} is not a MAC address like 02:00:0a:00:00:01")
        if int(mac[:2], 16) & 1:
            raise ParamError(f"{mac} is a multicast MAC address")
        if mac == "00:00:00:00:00:00":
            raise ParamError("00:00:00:00:00:00 is not a usable MAC address")
        if mac in macs:
            raise ParamError(f"{mac} is given twice")
        macs.append(mac)
    if not any(macs):
        raise ParamError("no MAC address given")
    return tuple(macs)


def _passthrough(devices: etree._Element) -> list[etree._Element]:
    """oned's PCI devices in TEMPLATE/PCI order: pci/mdev hostdevs and converted interfaces."""
    out = []
    for el in devices:
        pci = el.tag == "hostdev" and el.get("mode", "subsystem") == "subsystem" and el.get("type") in ("pci", "mdev")
        if pci or (el.tag == "interface" and el.get("type") == "hostdev"):
            out.append(el)
    return out


class HostdevInterface(Tweak):
    summary = "PCI passthrough (SR-IOV VF) hostdevs become type=hostdev interfaces with a MAC"
    attributes = ("T_VF_MACS",)
    params = (
        Format("macs", "comma-separated MACs in PCI device order; empty items skip a device",
               parser=parse_macs, syntax="mac[,mac...]", max_len=MAX_MACS * 18,
               pattern=r"^[0-9A-Fa-f:, ]*$"),
    )

    def apply(self, ctx: Context) -> None:
        macs: tuple[str | None, ...] = ctx.params["macs"]
        devices = ctx.root.find("devices")
        if devices is None:
            ctx.note("the domain has no devices")
            return
        slots = _passthrough(devices)
        used = {mac.get("address", "").lower() for mac in devices.iterfind("interface/mac")}
        plan: list[tuple[etree._Element, str]] = []
        for el, mac in zip(slots, macs, strict=False):
            if mac is None:
                continue
            if el.tag == "hostdev" and el.get("type") != "pci":
                raise ctx.reject("macs", f"PCI device {slots.index(el)} is a mediated device, not a VF")
            current = el.find("mac")
            if mac in used and (current is None or current.get("address", "").lower() != mac):
                raise ctx.reject("macs", f"{mac} is already used by another interface of the domain")
            plan.append((el, mac))
        if len(macs) > len(slots):
            ctx.note(f"{len(macs)} MACs for {len(slots)} PCI devices; the extra ones are unused")
        for el, mac in plan:
            if el.tag == "interface":
                mac_el = el.find("mac")
                if mac_el is None:
                    ctx.editor.add(el, "mac", {"address": mac}, after=("driver",))
                else:
                    ctx.editor.set_attr(mac_el, "address", mac)
                continue
            self._convert(ctx, el, mac)

    def _convert(self, ctx: Context, hostdev: etree._Element, mac: str) -> None:
        source = hostdev.find("source/address")
        children = [c for c in hostdev if isinstance(c.tag, str)]
        extra = sorted({c.tag for c in children if c.tag not in (*KEPT, "source", "driver")})
        if source is None or extra:
            why = f"it has <{'>, <'.join(extra)}>" if extra else "it has no source address"
            ctx.note(f"left a PCI hostdev as it is: {why}")
            return
        driver = hostdev.find("driver")
        if driver is not None and driver.get("name", "vfio") != "vfio":
            ctx.note(f"left a PCI hostdev with driver {driver.get('name')} as it is")
            return
        editor = ctx.editor
        source_attrs = {k: str(v) for k, v in source.attrib.items() if k in ("domain", "bus", "slot", "function")}
        kept = [c for c in children if c.tag in KEPT]
        interface = editor.replace(hostdev, "interface", {"type": "hostdev",
                                                          "managed": hostdev.get("managed", "yes")})
        editor.add(interface, "driver", {"name": "vfio"})
        editor.add(interface, "mac", {"address": mac})
        src = editor.add(interface, "source")
        editor.add(src, "address", {"type": "pci", **source_attrs})
        for child in kept:
            _copy(ctx, interface, child)


def _copy(ctx: Context, parent: etree._Element, child: etree._Element) -> None:
    """Re-create ``child`` (attributes, text, subtree) under ``parent`` through the editor."""
    text = child.text.strip() if child.text and child.text.strip() else None
    el = ctx.editor.add(parent, str(child.tag), {str(k): str(v) for k, v in child.attrib.items()}, text=text)
    for sub in child:
        if isinstance(sub.tag, str):
            _copy(ctx, el, sub)


TWEAK = HostdevInterface()
