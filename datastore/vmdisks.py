"""A VM's disks as the storage drivers see them: one DISK of the VM document (or the
context CD-ROM) with the volume that holds it. Shared by the TM actions and the VMM
overrides (VM snapshots, pre-flight), so it lives below both.
"""

from __future__ import annotations

import re

from lxml import etree

from datastore.driver import Driver
from datastore.naming import (
    TYPE_CDROM,
    TYPE_CONTEXT,
    TYPE_NONPERSISTENT,
    TYPE_NONPERSISTENT_RO,
    TYPE_PERSISTENT,
    Names,
)
from onelib import numbers, xmldoc
from onelib.errors import DriverError
from tweaks.record import record

_VOLUME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
# the same with the pool in front, for schemes whose names carry it (Names.qualified: rbd)
_QUALIFIED = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,99}/[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")


@record
class VmDisk:
    """One DISK of the VM document (or the context CD-ROM), as the drivers need it."""

    disk_id: int
    kind: str            # image | volatile | cdrom | context
    image_id: int | None
    source: str
    size_mb: int
    persistent: bool
    readonly: bool
    swap: bool
    fs: str
    tm_mad: str
    datastore_id: int | None

    def volume(self, names: Names, vm_id: int) -> str:
        """The backend volume holding this disk (addon-storpool's names)."""
        if self.kind == "context":
            return names.context(vm_id, self.disk_id)
        if self.kind == "volatile":
            return names.volatile(vm_id, self.disk_id, swap=self.swap)
        if self.image_id is None:
            raise DriverError(f"disk {self.disk_id} has no IMAGE_ID")
        if self.persistent:
            # the image's own volume: its SOURCE (images imported under other names keep
            # them), else addon-storpool's name for the image
            source = names.source_volume(self.source) if self.source else ""
            if source and (_QUALIFIED if names.qualified else _VOLUME).fullmatch(source):
                return source
            return names.image(self.image_id)
        if names.qualified and self.source:
            # a clone lives beside its image, in the image datastore's pool (rbd: the stock
            # driver's <SOURCE>-<VM>-<DISK>), whichever datastore's names ask
            source = names.source_volume(self.source)
            if source and _QUALIFIED.fullmatch(source):
                return f"{source}-{vm_id}-{self.disk_id}"
        return names.clone(self.image_id, vm_id, self.disk_id)

    @property
    def attach_readonly(self) -> bool:
        """How the volume is attached: CD-ROM clones and read-only images read-only; the
        context ISO read-write on every host, since the context action rewrites it in place."""
        return self.kind == "cdrom" or (self.readonly and self.kind != "context")

    @property
    def type_tag(self) -> str:
        if self.kind == "context":
            return TYPE_CONTEXT
        if self.kind == "cdrom":
            return TYPE_CDROM
        if self.persistent:
            return TYPE_PERSISTENT
        return TYPE_NONPERSISTENT_RO if self.readonly else TYPE_NONPERSISTENT


def vm_disk(vm: etree._Element, wanted: int) -> VmDisk:
    """DISK ``wanted`` of the VM document; the context CD-ROM if it is CONTEXT/DISK_ID."""
    template = vm.find("TEMPLATE")
    for disk in template.iterfind("DISK") if template is not None else ():
        if xmldoc.text(disk, "DISK_ID") != str(wanted):
            continue
        kind_raw = xmldoc.text(disk, "TYPE").upper()
        kind = "volatile" if kind_raw in ("FS", "SWAP") else "cdrom" if kind_raw == "CDROM" else "image"
        image_id = xmldoc.text(disk, "IMAGE_ID")
        ds_id = xmldoc.text(disk, "DATASTORE_ID")
        clone = xmldoc.text(disk, "CLONE").upper()
        persistent = xmldoc.text(disk, "PERSISTENT").upper() == "YES" or (kind == "image" and clone == "NO")
        return VmDisk(
            disk_id=wanted, kind=kind, image_id=int(image_id) if numbers.is_whole(image_id, 10) else None,
            source=xmldoc.text(disk, "SOURCE"), size_mb=xmldoc.integer(disk, "SIZE", "disk", default=0),
            persistent=persistent, readonly=xmldoc.text(disk, "READONLY").upper() == "YES",
            swap=kind_raw == "SWAP", fs=xmldoc.text(disk, "FS"), tm_mad=xmldoc.text(disk, "TM_MAD"),
            datastore_id=int(ds_id) if numbers.is_whole(ds_id, 10) else None,
        )
    if template is not None and xmldoc.text(template, "CONTEXT/DISK_ID") == str(wanted):
        return VmDisk(disk_id=wanted, kind="context", image_id=None, source="", size_mb=0, persistent=False,
                      readonly=True, swap=False, fs="", tm_mad="", datastore_id=None)
    raise DriverError(f"the VM has no disk {wanted}")


def vm_volumes(drv: Driver, vm: etree._Element, vm_id: int) -> list[tuple[VmDisk, str]]:
    """Every disk of the VM this driver keeps (its DISK TM_MAD, or the system datastore's
    for volatile disks and the context CD-ROM), with its volume name."""
    template = vm.find("TEMPLATE")
    history = vm.findall("HISTORY_RECORDS/HISTORY")
    system_tm = xmldoc.text(history[-1], "TM_MAD") if history else ""
    ids: list[int] = []
    for disk in template.iterfind("DISK") if template is not None else ():
        raw = xmldoc.text(disk, "DISK_ID")
        if numbers.is_whole(raw, 10):
            ids.append(int(raw))
    context = xmldoc.text(template, "CONTEXT/DISK_ID")
    if numbers.is_whole(context, 10):
        ids.append(int(context))
    out = []
    for wanted in ids:
        found = vm_disk(vm, wanted)
        if (found.tm_mad or system_tm) == drv.driver:
            out.append((found, found.volume(drv.names, vm_id)))
    return out
