"""cpu_vendor: ``<cpu><vendor>`` (T_CPU_VENDOR), as addon-storpool's cpu.py did.

libvirt refuses a vendor without a named CPU model, so the vendor is written only
when ``<cpu>`` has a non-empty ``<model>`` in custom mode (the default mode, and
the one cpu_model switches to); otherwise the tweak leaves the domain alone and says why.
Names are libvirt's CPU-map vendors (matched case-insensitively) and must suit the
domain's architecture: Intel/AMD/Hygon on x86, the ARM vendors on aarch64, IBM or
Freescale on ppc64.

libvirt's ``<vendor>`` restricts which hosts the VM may start on (checked with
``check='partial'`` or ``'full'``; ignored with ``'none'``); it does not change the vendor
the guest sees.
"""

from __future__ import annotations

from ..params import Choice
from ..tweak import Context, Tweak

# libvirt 9.0 /usr/share/libvirt/cpu_map/*_vendors.xml, by architecture family.
VENDORS = {
    "x86": ("Intel", "AMD", "Hygon"),
    "arm": ("ARM", "Broadcom", "Cavium", "DigitalEquipment", "Fujitsu", "HiSilicon", "Infineon",
            "Freescale", "NVIDIA", "APM", "Qualcomm", "Marvell", "Intel", "Phytium"),
    "ppc": ("IBM", "Freescale"),
}
ARCH_FAMILY = {"x86_64": "x86", "i686": "x86", "aarch64": "arm", "armv7l": "arm", "armv6l": "arm",
               "ppc64": "ppc", "ppc64le": "ppc"}
CANONICAL = {name.lower(): name for names in VENDORS.values() for name in names}


class CpuVendor(Tweak):
    summary = "CPU vendor (only with a named CPU model, as libvirt requires)"
    attributes = ("T_CPU_VENDOR",)
    params = (
        Choice("vendor", "CPU vendor as libvirt names it (Intel, AMD, Hygon, ...)",
               choices=tuple(sorted(CANONICAL))),
    )

    def apply(self, ctx: Context) -> None:
        vendor = CANONICAL[ctx.params["vendor"]]
        os_type = ctx.root.find("os/type")
        arch = os_type.get("arch", "") if os_type is not None else ""
        family = ARCH_FAMILY.get(arch)
        if family is not None and vendor not in VENDORS[family]:
            raise ctx.reject("vendor", f"not a CPU vendor for {arch}")
        cpu = ctx.root.find("cpu")
        model = cpu.find("model") if cpu is not None else None
        if cpu is None or model is None or not (model.text or "").strip():
            ctx.note("no named CPU <model>: libvirt accepts <vendor> only with one")
            return
        if cpu.get("mode", "custom") != "custom":
            ctx.note(f"CPU mode {cpu.get('mode')} takes no <vendor>")
            return
        existing = cpu.find("vendor")
        if existing is None:
            ctx.editor.add(cpu, "vendor", text=vendor, after=("model",))
        else:
            ctx.editor.set_text(existing, vendor)


TWEAK = CpuVendor()
