"""cpu_topology: sockets and threads from T_CPU_SOCKETS / T_CPU_THREADS, cores derived
from the vCPU count, and (as addon-storpool does) one NUMA cell per socket.

Sockets x threads must divide the vCPU count. sockets=0 means "leave the topology
alone". oned's TOPOLOGY (and NUMA_NODE) win over rule defaults; VM attributes win.
"""

from __future__ import annotations

from ..domain import memory_kib, socket_cells, vcpu_count
from ..params import Bool, Int
from ..tweak import Context, Tweak


class CpuTopology(Tweak):
    summary = "CPU sockets/cores/threads (cores derived from vCPUs) and NUMA cells per socket"
    attributes = ("T_CPU_SOCKETS", "T_CPU_THREADS")
    params = (
        Int("sockets", "sockets; 0 leaves the topology alone", minimum=0, maximum=4096),
        Int("threads", "threads per core", default=1, minimum=1, maximum=4096),
        Bool("numa", "one NUMA cell per socket, memory split evenly", default=True),
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
        if vcpus is None:
            ctx.note("domain has no <vcpu>")
            return
        if sockets > vcpus or vcpus % sockets:
            raise ctx.reject("sockets", f"{sockets} sockets do not divide {vcpus} vCPUs")
        if (vcpus // sockets) % threads:
            raise ctx.reject("threads", f"{threads} threads do not divide {vcpus // sockets} vCPUs per socket")
        cores = vcpus // sockets // threads
        editor = ctx.editor
        cpu = editor.child(ctx.root, "cpu")
        topology = editor.child(cpu, "topology", after=("model", "vendor"))
        editor.set_attrs(topology, {"sockets": sockets, "dies": None, "cores": cores, "threads": threads})
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


TWEAK = CpuTopology()
