"""vcpu_max: room for vCPU hotplug, ``<vcpu current='VCPU'>MAX</vcpu>`` (T_VCPU_MAX,
the vCPU half of addon-storpool's resizeCpuMem.py).

The VM boots with its VCPU online; MAX can be plugged later. MAX is at most 4096 and
the machine type's limit in QEMU 7.2 (q35 288, pc 255; ``limit`` overrides it): a
VM asking for more is skipped with a warning instead of failing to start. oned writes
the same from its native VCPU_MAX: that wins over a rule default, the VM's T_VCPU_MAX
wins over both.

libvirt wants everything sized by the maximum, so this tweak keeps the rest in step:
- ``<cpu><topology>``: sockets x cores x threads must equal MAX. A topology made by
  cpu_topology (rule 31, cores derived from the vCPU count) gets its cores
  re-derived from MAX; when sockets x threads does not divide MAX, or the topology is
  oned's own TOPOLOGY, the rule is skipped with a warning saying so.
- NUMA cells (from cpu_topology, memory_max or oned) must cover vCPUs 0..MAX-1: the
  per-socket cells are re-laid (keeping cpu_numa_alt's interleaving if present), a
  single cell is widened; other layouts that do not cover MAX skip the rule.
- ``<vcpus>`` (per-vCPU state) is optional for libvirt. It is written only when the
  ``vcpus`` parameter asks (so that boot vCPUs other than vCPU 0 can be unplugged
  again) or when the domain already has one (then it is rewritten for the new MAX,
  never duplicated; the add-on wrote a second one next to cpu.py's).
"""

from __future__ import annotations

from lxml import etree

from ..domain import (
    cpuset_parse,
    int_attr,
    machine,
    numa_cells,
    socket_cells,
    vcpu_count,
    vcpu_current,
    vcpus_layout,
    write_vcpus,
)
from ..params import Bool, Int
from ..tweak import Context, Tweak

MAX_VCPUS = 4096
# QEMU 7.2 (Debian 12) machine limits; an operator with another QEMU sets ``limit``.
Q35_LIMIT, PC_LIMIT = 288, 255


def machine_limit(name: str) -> int:
    if "q35" in name:
        return Q35_LIMIT
    if name == "pc" or name.startswith("pc-"):
        return PC_LIMIT
    return MAX_VCPUS


class VcpuMax(Tweak):
    summary = "maximum vCPUs for hotplug (<vcpu current>), keeping topology and NUMA cells in step"
    attributes = ("T_VCPU_MAX",)
    params = (
        Int("max", "maximum vCPU count, at least the VM's VCPU", minimum=1, maximum=MAX_VCPUS),
        Bool("vcpus", "write <vcpus> so boot vCPUs other than vCPU 0 can be unplugged again", default=False),
        Int("limit", "most vCPUs the hosts' QEMU accepts; 0: by machine type (q35 288, pc 255)",
            default=0, minimum=0, maximum=MAX_VCPUS),
    )

    def apply(self, ctx: Context) -> None:
        root = ctx.root
        vcpu_el = root.find("vcpu")
        old_max, current = vcpu_count(root), vcpu_current(root)
        if vcpu_el is None or old_max is None or current is None:
            ctx.note("the domain has no readable <vcpu>")
            return
        if vcpu_el.get("current") is not None and not ctx.explicit("max"):
            ctx.note(f"kept oned's VCPU_MAX ({old_max})")
            return
        new_max: int = ctx.params["max"]
        limit = ctx.params["limit"] or machine_limit(machine(root))
        if new_max > limit:
            if ctx.explicit("max"):
                raise ctx.reject("max", f"more than the {limit} vCPUs this machine type allows")
            ctx.note(f"max {new_max} lowered to the machine's limit {limit}")
            new_max = limit
        if new_max < current:
            if ctx.explicit("max"):
                raise ctx.reject("max", f"below the VM's {current} vCPUs")
            ctx.note(f"max {new_max} is below the VM's {current} vCPUs")
            return
        edits = self._plan_cpu(ctx, new_max)
        editor = ctx.editor
        editor.set_text(vcpu_el, new_max)
        if new_max > current or vcpu_el.get("current") is not None:
            editor.set_attr(vcpu_el, "current", current)
        for el, name, value in edits:
            editor.set_attr(el, name, value)
        self._vcpus(ctx, new_max, current)

    def _plan_cpu(self, ctx: Context, new_max: int) -> list[tuple[etree._Element, str, str]]:
        """The topology/NUMA attribute changes MAX needs; raises (nothing changed yet) if impossible."""
        root = ctx.root
        topology = root.find("cpu/topology")
        cells = numa_cells(root)
        edits: list[tuple[etree._Element, str, str]] = []
        if topology is not None:
            sockets, dies = int_attr(topology.get("sockets")), int_attr(topology.get("dies"), 1)
            cores, threads = int_attr(topology.get("cores")), int_attr(topology.get("threads"))
            if not sockets or not dies or not cores or not threads:
                raise ctx.reject("max", "the CPU <topology> is unreadable")
            if sockets * dies * cores * threads == new_max:
                return edits
            shown = f"{sockets} sockets x {cores} cores x {threads} threads"
            if ctx.facts.get("template.TOPOLOGY/SOCKETS") is not None or ctx.facts.get("template.TOPOLOGY/CORES"):
                raise ctx.reject("max", f"oned's TOPOLOGY ({shown}) does not add up to {new_max} vCPUs")
            per_core = sockets * dies * threads
            if new_max % per_core:
                raise ctx.reject("max", f"{new_max} vCPUs do not fit the CPU topology ({shown}): "
                                        f"it must be a multiple of sockets x threads = {per_core}")
            new_cores = new_max // per_core
            edits.append((topology, "cores", str(new_cores)))
            if not cells:
                return edits
            if dies != 1 or len(cells) != sockets:
                raise ctx.reject("max", f"{len(cells)} NUMA cells are not one per socket; cannot re-lay them "
                                        f"for {new_max} vCPUs")
            old = [cell.get("cpus") for cell in cells]
            interleaved = sockets > 1 and old == socket_cells(sockets, cores, threads, interleave=True)
            layout = socket_cells(sockets, new_cores, threads, interleave=interleaved)
            edits.extend((cell, "cpus", cpus) for cell, cpus in zip(cells, layout, strict=True))
            return edits
        if not cells:
            return edits
        covered: set[int] = set()
        for cell in cells:
            covered |= cpuset_parse(cell.get("cpus")) or set()
        if covered >= set(range(new_max)):
            return edits
        if len(cells) == 1:
            edits.append((cells[0], "cpus", f"0-{new_max - 1}" if new_max > 1 else "0"))
            return edits
        raise ctx.reject("max", f"the {len(cells)} NUMA cells do not cover vCPUs 0-{new_max - 1}; "
                                "give the VM a CPU topology (T_CPU_SOCKETS)")

    def _vcpus(self, ctx: Context, new_max: int, current: int) -> None:
        root = ctx.root
        existing = root.find("vcpus")
        if existing is None and not ctx.params["vcpus"]:
            return
        kept = {} if existing is None else {str(c.get("id")): str(c.get("hotpluggable")) for c in existing
                                            if isinstance(c.tag, str) and c.get("hotpluggable")}
        # Boot vCPUs are hotpluggable with the vcpus parameter, else as an existing <vcpus> says.
        write_vcpus(ctx.editor, root, vcpus_layout(new_max, current, "yes" if ctx.params["vcpus"] else kept))


TWEAK = VcpuMax()
