"""q35_root_ports: enough PCIe root ports on q35 machines for hotplugged devices
(Q35_PCIE_ROOT_PORTS, no ``T_`` prefix, as in addon-storpool's q35-pcie-root.py).

On a q35 machine the domain's ``<devices>`` gets a ``pcie-root`` controller (index 0),
at least N ``pcie-root-port`` controllers and one ``pcie-to-pci-bridge``. Existing
controllers count: oned 6.x already writes pcie-root, 16 ports and the bridge (the
engine has merged oned's extra ``<devices>`` blocks into one before any rule runs),
so only the missing ports are added, next to the existing ones; ports are never
removed (devices may be addressed on them). The add-on appended a second
``<devices>`` block with a second pcie-root, which libvirt's schema rejects.
"""

from __future__ import annotations

from lxml import etree

from ..domain import machine
from ..params import Bool, Int
from ..tweak import Context, Tweak

MAX_PORTS = 32


def _pci(devices: etree._Element, model: str) -> list[etree._Element]:
    return [c for c in devices.iterfind("controller") if c.get("type") == "pci" and c.get("model") == model]


class Q35RootPorts(Tweak):
    summary = "q35 machines: pcie-root, at least N pcie-root-port controllers and a pcie-to-pci-bridge"
    attributes = ("Q35_PCIE_ROOT_PORTS",)
    params = (
        Int("ports", "number of pcie-root-port controllers the domain should have", minimum=0, maximum=MAX_PORTS),
        Bool("bridge", "also make sure there is a pcie-to-pci-bridge", default=True),
    )

    def apply(self, ctx: Context) -> None:
        if "q35" not in machine(ctx.root):
            ctx.note("not a q35 machine")
            return
        editor = ctx.editor
        devices = ctx.devices()
        roots = _pci(devices, "pcie-root")
        if not roots:
            taken = [c for c in devices.iterfind("controller") if c.get("type") == "pci" and c.get("index") == "0"]
            if taken:
                ctx.note(f"PCI controller index 0 is a {taken[0].get('model')}, not pcie-root; left alone")
                return
            first = devices.find("controller")
            index = list(devices).index(first) if first is not None else None
            roots = [editor.add(devices, "controller", {"type": "pci", "index": 0, "model": "pcie-root"},
                                index=index, after=("disk", "emulator"))]
        ports = _pci(devices, "pcie-root-port")
        missing = ctx.params["ports"] - len(ports)
        if missing <= 0:
            ctx.note(f"the domain already has {len(ports)} pcie-root-port controllers")
        anchor = ports[-1] if ports else roots[0]
        for _ in range(max(missing, 0)):
            anchor = editor.add(devices, "controller", {"type": "pci", "model": "pcie-root-port"},
                                index=list(devices).index(anchor) + 1)
        if ctx.params["bridge"] and not _pci(devices, "pcie-to-pci-bridge"):
            editor.add(devices, "controller", {"type": "pci", "model": "pcie-to-pci-bridge"},
                       index=list(devices).index(anchor) + 1)


TWEAK = Q35RootPorts()
