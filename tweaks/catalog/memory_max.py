"""memory_max: room to grow the VM's memory at run time (T_MEMORY_MAX in MiB, the
memory half of addon-storpool's resizeCpuMem.py).

Two ways, chosen by the operator (``mode``), the same two oned offers natively with
MEMORY_MAX + MEMORY_RESIZE_MODE:

- ``hotplug`` (default): the VM boots with its MEMORY; ``<maxMemory slots='16'
  unit='KiB'>`` sets the ceiling memory DIMMs can be plugged up to. libvirt/QEMU need
  NUMA for that: a domain without cells gets one cell covering all vCPUs and the boot
  memory; existing cells (cpu_topology's per-socket cells) are kept, resized to add
  up to the boot memory if they do not.
- ``balloon``: the VM boots with ``<memory>`` = MAX and ``<currentMemory>`` = MEMORY
  (the add-on's way); the balloon driver gives memory back up to MAX. NUMA cells, if
  any, are scaled to add up to MAX (libvirt sizes the guest from its cells).

oned's native MEMORY_MAX (a ``<maxMemory>`` or ``<currentMemory>`` it wrote) wins over
a rule default; the VM's own T_MEMORY_MAX wins over both. MAX must be more than the
VM's memory. Runs after vcpu_max (rule 34), so a new cell covers the maximum vCPUs.
"""

from __future__ import annotations

from lxml import etree

from ..domain import cell_kib, element_kib, numa_cells, vcpu_count
from ..params import Choice, Int
from ..tweak import Context, Tweak
from ..xmledit import Editor

MAX_MIB = 16 * 1024 * 1024  # 16 TiB
MAX_SLOTS = 255  # QEMU's limit on x86


def _set_kib(editor: Editor, el: etree._Element, kib: int) -> None:
    """Give a scaled-integer element ``kib`` KiB, touching it only if the size differs."""
    if element_kib(el) == kib:
        return
    editor.set_text(el, kib)
    if el.get("unit") is not None:
        editor.set_attr(el, "unit", "KiB")


def _sized(sizes: list[int], total: int) -> list[int]:
    """Cell sizes scaled to add up to ``total``, whole MiB where possible (libvirt rounds
    cells up to MiB); the last cell takes the remainder."""
    old = sum(sizes)
    out = []
    for size in sizes[:-1]:
        share = total * size // old
        out.append(share // 1024 * 1024 or share or 1)
    return [*out, total - sum(out)]


class MemoryMax(Tweak):
    summary = "maximum memory: hotplug (<maxMemory> + NUMA cell) or balloon (<currentMemory>)"
    attributes = ("T_MEMORY_MAX",)
    params = (
        Int("max", "maximum memory in MiB, more than the VM's MEMORY", minimum=1, maximum=MAX_MIB),
        Choice("mode", "hotplug: boot with MEMORY and plug DIMMs up to max; balloon: boot with max and "
               "balloon down to MEMORY", default="hotplug", choices=("hotplug", "balloon")),
        Int("slots", "memory slots for hotplugged DIMMs (hotplug mode)", default=16, minimum=1, maximum=MAX_SLOTS),
    )

    def apply(self, ctx: Context) -> None:
        root, editor = ctx.root, ctx.editor
        memory_el, current_el = root.find("memory"), root.find("currentMemory")
        memory = element_kib(memory_el)
        base = element_kib(current_el) if current_el is not None else memory
        if memory_el is None or memory is None or base is None or base < 1:
            ctx.note("the domain has no readable <memory>")
            return
        native = (ctx.facts.get("template.MEMORY_MAX") is not None or current_el is not None
                  or root.find("maxMemory") is not None)
        if native and not ctx.explicit("max"):
            ctx.note("kept oned's MEMORY_MAX")
            return
        max_kib = ctx.params["max"] * 1024
        if max_kib <= base:
            if ctx.explicit("max"):
                raise ctx.reject("max", f"not more than the VM's memory ({base // 1024} MiB)")
            ctx.note(f"max is not more than the VM's memory ({base // 1024} MiB)")
            return
        cells = numa_cells(root)
        sizes = [cell_kib(cell) for cell in cells]
        if any(size is None or size < 1 for size in sizes):
            raise ctx.reject("max", "a NUMA cell's memory is unreadable; cells cannot be resized")
        known = [size for size in sizes if size is not None]
        hotplug = ctx.params["mode"] == "hotplug"
        boot = base if hotplug else max_kib
        if cells and sum(known) != boot:
            if len(cells) * 1024 > boot:
                raise ctx.reject("max", "less than 1 MiB of memory per NUMA cell")
            for cell, size in zip(cells, _sized(known, boot), strict=True):
                editor.set_attrs(cell, {"memory": size, "unit": "KiB"})
        _set_kib(editor, memory_el, boot)
        if hotplug:
            if current_el is not None:
                _set_kib(editor, current_el, base)
            limit = root.find("maxMemory")
            if limit is None:
                limit = editor.add(root, "maxMemory", {"slots": ctx.params["slots"], "unit": "KiB"},
                                   text=str(max_kib), after=("memory",))
            editor.set_attrs(limit, {"slots": ctx.params["slots"], "unit": "KiB"})
            editor.set_text(limit, max_kib)
            if not cells:
                vcpus = vcpu_count(root) or 1
                cpu = editor.child(root, "cpu", after=("os",))
                numa = editor.child(cpu, "numa")
                editor.add(numa, "cell", {"id": 0, "cpus": f"0-{vcpus - 1}" if vcpus > 1 else "0",
                                          "memory": base, "unit": "KiB"})
            return
        if current_el is None:
            editor.add(root, "currentMemory", {"unit": "KiB"}, text=str(base), after=("memory",))
        else:
            _set_kib(editor, current_el, base)
        limit = root.find("maxMemory")
        if limit is not None:
            editor.remove(limit)


TWEAK = MemoryMax()
