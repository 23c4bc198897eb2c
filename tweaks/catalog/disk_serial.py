"""disk_serial: a stable ``<serial>`` for every disk (T_DISKSERIAL, addon-storpool's disk-serial.py).

``mode`` (T_DISKSERIAL):

- ``yes``: the serial is the first 20 hex digits of the md5 of
  ``<VM id>-<DISK_ID>`` for a non-persistent image (a per-VM clone),
  ``persistent-<IMAGE_ID>`` for a persistent image (same serial in every VM that uses it),
  ``volatile-<DISK_ID>`` for a volatile disk. These are the add-on's strings, so guests
  moved from it keep their ``/dev/disk/by-id`` names. Disks that cannot be matched to an
  OpenNebula disk (by the ``/<vmid>/disk.<DISK_ID>`` source path) get none.
- ``hashpath``: md5 of the disk's source path (add-on's disk-serial-hashpath.py).
- ``no`` or ``DISABLED`` (any case): nothing.
- any other value (``ENABLED``, ``1``, ...): as ``yes``. The add-on turns serials on for
  every value but ``DISABLED``, so templates written for it keep their serials.

Only ``device='disk'`` disks (not CD-ROMs, floppies or LUNs) get a serial; 20 hex digits
fit every bus (virtio-blk's limit is 20 bytes) and libvirt's serial syntax. A disk that
already has a ``<serial>`` (OpenNebula 7's DISK/SERIAL) keeps it unless the mode came
from the VM's own attribute.
"""

from __future__ import annotations

from typing import Any

from lxml import etree

from ..params import Param, clean_text
from ..record import record
from ..tweak import Context, Tweak
from ._disks import one_disk, source_path

MODES = ("yes", "hashpath", "no")
OFF_WORDS = frozenset({"no", "disabled"})
SERIAL_LEN = 20
# oned's child order: target, encryption, boot, readonly, shareable, serial, driver.
_BEFORE_SERIAL = ("source", "target", "encryption", "boot", "readonly", "shareable", "transient")


@record
class Mode(Param):
    """yes | hashpath | no; DISABLED means no and any other word yes (addon-storpool's
    reading); a YAML boolean (``default: yes`` unquoted) means yes/no."""

    def json_schema(self) -> dict[str, Any]:
        return {"anyOf": [{"type": "boolean"}, {"type": "string", "minLength": 1, "maxLength": 64}]}

    def parse(self, raw: object) -> str:
        if isinstance(raw, bool):
            return "yes" if raw else "no"
        word = clean_text(raw, max_len=64).lower()
        if word in OFF_WORDS:
            return "no"
        return word if word in MODES else "yes"

    def type_doc(self) -> str:
        return "yes|hashpath|no|disabled, any other value: yes"


def serial_of(text: str) -> str:
    # Imported here: hashlib loads OpenSSL, which a deploy pays only when serials are made.
    from hashlib import md5

    return md5(text.encode(), usedforsecurity=False).hexdigest()[:SERIAL_LEN]


class DiskSerial(Tweak):
    summary = "<serial> for disks: md5 of VM/disk/image ids (yes) or of the source path (hashpath)"
    fragments = ("disk",)
    attributes = ("T_DISKSERIAL",)
    params = (Mode("mode", "yes (ids), hashpath (source path), no or disabled (no serials)"),)

    def apply(self, ctx: Context) -> None:
        mode: str = ctx.params["mode"]
        if mode == "no":
            ctx.note("serials turned off")
            return
        vm_id = ctx.facts.get("vm.id")
        for disk in ctx.root.iterfind("devices/disk"):
            if disk.get("device", "disk") != "disk":
                continue
            text = self._hash_text(ctx, disk, mode, vm_id)
            if text is None:
                continue
            serial = serial_of(text)
            current = disk.find("serial")
            if current is None:
                ctx.editor.add(disk, "serial", text=serial, after=_BEFORE_SERIAL)
            elif not ctx.explicit("mode"):
                if (current.text or "").strip() != serial:
                    ctx.note(f"{_target(disk)}: kept existing <serial>")
            else:
                ctx.editor.set_text(current, serial)

    @staticmethod
    def _hash_text(ctx: Context, disk: etree._Element, mode: str, vm_id: str | None) -> str | None:
        if mode == "hashpath":
            found = source_path(disk)
            if found is None:
                ctx.note(f"{_target(disk)}: no local source path")
                return None
            return found[1]
        one = one_disk(ctx.facts, disk)
        if one is None or not vm_id:
            ctx.note(f"{_target(disk)}: not an OpenNebula disk.N; no serial")
            return None
        if one.kind == "volatile":
            return f"volatile-{one.id}"
        image_id = one.facts.get("image_id", "")
        if one.facts.get("persistent") == "yes" and image_id:
            return f"persistent-{image_id}"
        if image_id:
            return f"{vm_id}-{one.id}"
        return f"volatile-{one.id}"


def _target(disk: etree._Element) -> str:
    target = disk.find("target")
    return (target.get("dev") if target is not None else None) or "disk"


TWEAK = DiskSerial()
