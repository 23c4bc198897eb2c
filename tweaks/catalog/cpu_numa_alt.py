"""cpu_numa_alt: the alternative NUMA layout of addon-storpool's cpu.py (T_CPU_ALT_NUMA).

cpu_topology (T_CPU_SOCKETS) gives each socket a NUMA cell holding that socket's
vCPUs in one block (4 vCPUs, 2 sockets: cell 0 = 0-1, cell 1 = 2-3). With
T_CPU_ALT_NUMA=yes the vCPUs are dealt round-robin over the cells instead (cell 0 =
0,2, cell 1 = 1,3), so vCPUs that come online one after another land on different
nodes. The add-on did this only with one thread per core; here any thread count
works: whole cores are dealt round-robin and the threads of a core stay in one cell.

Needs the per-socket cells: a ``<topology>`` and exactly one ``<cell>`` per socket
covering sockets x cores x threads = ``<vcpu>`` vCPUs. Cell memory is not touched.
Runs after cpu_topology (rule 31) and vcpu_max (rule 34). oned's own TOPOLOGY layout
is kept unless the VM's attribute asks; a layout pinned to host nodes (oned's
NUMA_NODE: ``<vcpupin>``, ``<numatune><memnode>``) is never re-dealt, since the pins
follow the cells.
"""

from __future__ import annotations

from ..domain import int_attr, numa_cells, socket_cells, vcpu_count
from ..params import Bool
from ..tweak import Context, Tweak


class CpuNumaAlt(Tweak):
    summary = "deal vCPUs round-robin over the per-socket NUMA cells (alternative layout)"
    attributes = ("T_CPU_ALT_NUMA",)
    params = (Bool("interleave", "yes: interleave vCPUs over the NUMA cells; no: leave the layout alone"),)

    def apply(self, ctx: Context) -> None:
        if not ctx.params["interleave"]:
            ctx.note("interleave is off")
            return
        root = ctx.root
        topology = root.find("cpu/topology")
        cells = numa_cells(root)
        if topology is None or not cells:
            ctx.note("no CPU topology with NUMA cells (set T_CPU_SOCKETS)")
            return
        if root.find("cputune/vcpupin") is not None or root.find("numatune/memnode") is not None:
            ctx.note("vCPUs or cell memory are pinned to host nodes (oned's NUMA_NODE); layout kept")
            return
        if ctx.facts.get("template.TOPOLOGY/SOCKETS") is not None and not ctx.explicit("interleave"):
            ctx.note("kept oned's TOPOLOGY / NUMA layout")
            return
        sockets = int_attr(topology.get("sockets"))
        dies = int_attr(topology.get("dies"), 1)
        cores = int_attr(topology.get("cores"))
        threads = int_attr(topology.get("threads"))
        if not sockets or not cores or not threads or dies != 1:
            ctx.note("CPU topology is not sockets/cores/threads with one die")
            return
        if len(cells) != sockets:
            ctx.note(f"{len(cells)} NUMA cells for {sockets} sockets: not one cell per socket")
            return
        if sockets * cores * threads != vcpu_count(root):
            ctx.note("CPU topology does not match <vcpu>; left as it is")
            return
        for cell, cpus in zip(cells, socket_cells(sockets, cores, threads, interleave=True), strict=True):
            ctx.editor.set_attr(cell, "cpus", cpus)


TWEAK = CpuNumaAlt()
