"""cpu_topology: sockets and threads from T_CPU_SOCKETS / T_CPU_THREADS, cores derived
from the vCPU count, and (as addon-storpool does) one NUMA cell per socket.

Sockets x threads must divide the vCPU count. sockets=0 means "leave the topology
alone". oned's TOPOLOGY (and NUMA_NODE) win over rule defaults; VM attributes win.

With a topology it also writes ``<vcpus>`` as addon-storpool's cpu.py does: one entry
per vCPU up to ``<vcpu>``, vCPU 0 not hotpluggable, every other vCPU hotpluggable and
enabled while it is below ``<vcpu current>``. Without it libvirt marks the boot vCPUs
non-hotpluggable, so a vCPU plugged in at boot can never be unplugged. ``vcpus: no``
leaves ``<vcpus>`` alone; so do non-x86 domains (QEMU hot-plugs vCPUs per thread only
on x86; elsewhere libvirt would refuse to start the VM).
"""

from __future__ import annotations

from lxml import etree

from ..domain import memory_kib, socket_cells, vcpu_count, vcpu_current, vcpus_layout, write_vcpus
from ..params import Bool, Int
from ..tweak import Context, Tweak


class CpuTopology(Tweak):
    summary = "CPU sockets/cores/threads (cores derived from vCPUs) and NUMA cells per socket"
    attributes = ("T_CPU_SOCKETS", "T_CPU_THREADS")
    params = (
        Int("sockets", "sockets; 0 leaves the topology alone", minimum=0, maximum=4096),
        Int("threads", "threads per core", default=1, minimum=1, maximum=4096),
        Bool("numa", "one NUMA cell per socket, memory split evenly", default=True),
        Bool("vcpus", "write <vcpus>: every vCPU but vCPU 0 hotpluggable (addon-storpool's layout)", default=True),
    )

    def apply(self, ctx: Context) -> None:
        sockets: int = ctx.params["sockets"]
        threads: int = ctx.params["threads"]
        if sockets == 0:
            return
        explicit = ctx.explicit("sockets") or ctx.explicit("threads")
        if not explicit and (ctx.facts.get("template.TOPOLOGY/SOCKETS") or ctx.root.find("cpu/numa") is not None):
            ctx.note("kept oned's TOPOLOGY / NUMA")
            return
        vcpus = vcpu_count(ctx.root)
        current = vcpu_current(ctx.root)
        if vcpus is None or current is None:
            ctx.note("domain has no <vcpu>")
            return
        # Both the boot count and the maximum: vcpu_max raises the maximum after this rule,
        # and a second run must come to the same verdict.
        for count in sorted({current, vcpus}):
            if sockets > count or count % sockets:
                raise ctx.reject("sockets", f"{sockets} sockets do not divide {count} vCPUs")
            if (count // sockets) % threads:
                raise ctx.reject("threads", f"{threads} threads do not divide {count // sockets} vCPUs per socket")
        cores = vcpus // sockets // threads
        editor = ctx.editor
        cpu = editor.child(ctx.root, "cpu")
        topology = editor.child(cpu, "topology", after=("model", "vendor"))
        editor.set_attrs(topology, {"sockets": sockets, "dies": None, "cores": cores, "threads": threads})
        if ctx.params["vcpus"] and current <= vcpus and _x86(ctx.root):
            write_vcpus(editor, ctx.root, vcpus_layout(vcpus, current, "yes"))
        if not ctx.params["numa"]:
            return
        memory = memory_kib(ctx.root)
        if memory is None or memory < sockets:
            ctx.note("no usable <memory>; NUMA cells not written")
            return
        numa = editor.child(cpu, "numa")
        cells = numa.findall("cell")
        for extra in cells[sockets:]:
            editor.remove(extra)
        layout = socket_cells(sockets, cores, threads)
        if [c.get("cpus") for c in cells] == socket_cells(sockets, cores, threads, interleave=True):
            layout = [str(c.get("cpus")) for c in cells]  # cpu_numa_alt's interleaving of these cells stays
        share = memory // sockets
        for i in range(sockets):
            attrs: dict[str, str | int] = {
                "id": i,
                "cpus": layout[i],
                # the last cell takes the remainder so the cells add up to <memory>
                "memory": share if i < sockets - 1 else memory - share * (sockets - 1),
                "unit": "KiB",
            }
            if i < len(cells):
                editor.set_attrs(cells[i], attrs)
            else:
                editor.add(numa, "cell", attrs)


def _x86(root: etree._Element) -> bool:
    os_type = root.find("os/type")
    return (os_type.get("arch", "") if os_type is not None else "") in ("", "x86_64", "i686")


TWEAK = CpuTopology()
