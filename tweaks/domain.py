"""Read helpers over a libvirt domain document shared by tweaks."""

from __future__ import annotations

from lxml import etree

from .xmledit import Editor


def vcpu_count(root: etree._Element) -> int | None:
    """The domain's maximum vCPU count (``<vcpu>`` text), None if absent or unreadable."""
    el = root.find("vcpu")
    if el is None or el.text is None:
        return None
    try:
        return int(el.text.strip())
    except ValueError:
        return None


def memory_kib(root: etree._Element) -> int | None:
    el = root.find("memory")
    if el is None or el.text is None:
        return None
    scale = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "kb": 1000 / 1024, "m": 1024,
             "mib": 1024, "mb": 1000**2 / 1024, "g": 1024**2, "gib": 1024**2, "gb": 1000**3 / 1024}
    try:
        return int(int(el.text.strip()) * scale.get(el.get("unit", "KiB").lower(), 1))
    except ValueError:
        return None


def is_virtio_disk(disk: etree._Element) -> bool:
    if disk.get("device", "disk") != "disk":
        return False
    target = disk.find("target")
    if target is None:
        return False
    bus = target.get("bus")
    return bus == "virtio" or (bus is None and (target.get("dev") or "").startswith("vd"))


def virtio_disks(root: etree._Element) -> list[etree._Element]:
    return [d for d in root.iterfind("devices/disk") if is_virtio_disk(d)]


def virtio_scsi_controllers(root: etree._Element) -> list[etree._Element]:
    return [c for c in root.iterfind("devices/controller")
            if c.get("type") == "scsi" and c.get("model") == "virtio-scsi"]


def driver(editor: Editor, device: etree._Element, *, qemu: bool = True) -> etree._Element:
    """The device's ``<driver>``, created (``name='qemu'`` for disks) when missing."""
    attrs = {"name": "qemu"} if qemu else {}
    return editor.child(device, "driver", attrs)


def machine(root: etree._Element) -> str:
    os_type = root.find("os/type")
    return "" if os_type is None else os_type.get("machine", "")
