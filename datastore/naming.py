"""Object names and tags exactly as the seed add-ons give them, so an existing cloud's
volumes are found where they are (``PX`` is the configurable ONE_PX prefix that lets
several OpenNebula instances share one cluster).

One scheme per driver (``for_driver``: the backend's ``scheme``): ``Names`` is
addon-storpool's and the base every other scheme overrides (a backend module defines its
own, e.g. ``LinstorNames`` in ``datastore/backends/linstor.py``); all have the same methods,
so the actions never spell a name themselves.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar

from tweaks.record import record

if TYPE_CHECKING:
    from onelib.config import Config


@record
class Names:
    px: str = "one"
    # addon-linstor_un records the system datastore of a VM's disk (Aux/one/DS_ID) and marks a
    # persistent image with the VM using it; addon-storpool's tags have neither
    ds_tag: ClassVar[bool] = False
    # names carry their pool, ``pool/name`` (rbd); every other scheme's names are flat
    qualified: ClassVar[bool] = False
    # The shapes of the names (str.format fields: px, ds, image, digest, vm, disk, kind (raw or
    # swap), volume, snap, time, app). A scheme that only names things differently overrides
    # these; the methods below make the names and parse them back from the same shapes.
    TEMPLATE: ClassVar[str] = "{px}-ds-{ds}"
    IMAGE: ClassVar[str] = "{px}-img-{image}"
    STAGING: ClassVar[str] = "{px}-img-{image}-{digest}"
    CLONE: ClassVar[str] = "{px}-img-{image}-{vm}-{disk}"    # a non-persistent disk (and a CD-ROM clone)
    VOLATILE: ClassVar[str] = "{px}-sys-{vm}-{disk}-{kind}"
    CONTEXT: ClassVar[str] = "{px}-sys-{vm}-{disk}-iso"
    CHECKPOINT: ClassVar[str] = "{px}-sys-{vm}-rawcheckpoint"
    NVRAM: ClassVar[str] = "{px}-sys-{vm}-NVRAM"
    VM_PREFIX: ClassVar[str] = "{px}-sys-{vm}-"
    RESTORED: ClassVar[str] = "{px}-img-restored-{time}"   # an image `one-tweaks trash restore` made
    DISK_SNAPSHOT: ClassVar[str] = "{volume}-snap{snap}"
    VM_SNAPSHOT: ClassVar[str] = "{volume}-ONESNAP-{snap}-{time}"
    BACKUP_SNAPSHOT: ClassVar[str] = "{volume}-ONEBACKUP-{time}"
    EXPORT_SNAPSHOT: ClassVar[str] = "{volume}-export-{app}"   # what a marketplace export reads
    # what a volume name matches (split_vm_snapshot), and what precedes a qualified name
    VOLUME_RE: ClassVar[str] = "[A-Za-z0-9][A-Za-z0-9_.-]*"
    QUALIFIER_RE: ClassVar[str] = ""

    @classmethod
    def from_config(cls, config: Config) -> Names:
        return cls(px=config.get("ONE_PX") or "one")

    def _name(self, shape: str, **fields: object) -> str:
        """A volume name of ``shape`` (a qualified scheme puts its pool in front)."""
        return shape.format(px=self.px, **fields)

    def template(self, ds_id: int) -> str:
        return self._name(self.TEMPLATE, ds=ds_id)

    def image(self, image_id: int) -> str:
        return self._name(self.IMAGE, image=image_id)

    def staging(self, image_id: int, digest: str) -> str:
        return self._name(self.STAGING, image=image_id, digest=digest)

    def clone(self, image_id: int, vm_id: int, disk_id: int) -> str:
        """A non-persistent disk (and a CD-ROM attachment) made from an image."""
        return self._name(self.CLONE, image=image_id, vm=vm_id, disk=disk_id)

    def volatile(self, vm_id: int, disk_id: int, swap: bool = False) -> str:
        return self._name(self.VOLATILE, vm=vm_id, disk=disk_id, kind="swap" if swap else "raw")

    def context(self, vm_id: int, disk_id: int) -> str:
        return self._name(self.CONTEXT, vm=vm_id, disk=disk_id)

    def checkpoint(self, vm_id: int) -> str:
        return self._name(self.CHECKPOINT, vm=vm_id)

    def nvram(self, vm_id: int) -> str:
        return self._name(self.NVRAM, vm=vm_id)

    def vm_prefix(self, vm_id: int) -> str:
        return self._name(self.VM_PREFIX, vm=vm_id)

    def restored(self, timestamp: int) -> str:
        """The volume of an image ``one-tweaks trash restore`` registers (never the name of
        another image's volume)."""
        return self._name(self.RESTORED, time=timestamp)

    @classmethod
    def disk_snapshot(cls, volume: str, snap_id: int) -> str:
        return cls.DISK_SNAPSHOT.format(volume=volume, snap=snap_id)

    @classmethod
    def vm_snapshot(cls, volume: str, snap_id: int, timestamp: int) -> str:
        return cls.VM_SNAPSHOT.format(volume=volume, snap=snap_id, time=timestamp)

    @classmethod
    def backup_snapshot(cls, volume: str, timestamp: int) -> str:
        return cls.BACKUP_SNAPSHOT.format(volume=volume, time=timestamp)

    @classmethod
    def export_snapshot(cls, volume: str, app_id: int) -> str:
        """The snapshot a marketplace export reads from (deleted before export returns)."""
        return cls.EXPORT_SNAPSHOT.format(volume=volume, app=app_id)

    # --- parsing names back --------------------------------------------------------------------
    @classmethod
    def split_vm_snapshot(cls, name: str) -> tuple[str, int, int] | None:
        """(volume, VM snapshot id, timestamp) of a VM snapshot name, else None."""
        match = _shape(cls.VM_SNAPSHOT, volume=f"({cls.VOLUME_RE})", snap=_ID9, time=_TIME).fullmatch(name)
        return (match.group(1), int(match.group(2)), int(match.group(3))) if match else None

    @classmethod
    def disk_snapshot_prefix(cls, volume: str) -> str:
        """What every disk snapshot name of ``volume`` starts with."""
        return cls.DISK_SNAPSHOT.split("{snap}", 1)[0].format(volume=volume)

    @classmethod
    def disk_snapshot_id(cls, volume: str, name: str) -> int | None:
        """The snapshot id when ``name`` is a disk snapshot of ``volume``, else None."""
        match = _shape(cls.DISK_SNAPSHOT, volume=re.escape(volume), snap=_ID).fullmatch(name)
        return int(match.group(1)) if match else None

    @classmethod
    def split_disk_snapshot(cls, name: str) -> tuple[str, int] | None:
        """(volume, snapshot id) of a disk snapshot name, else None."""
        match = _shape(cls.DISK_SNAPSHOT, volume="(.+)", snap=_ID).fullmatch(name)
        return (match.group(1), int(match.group(2))) if match else None

    def disk_owner(self, volume: str) -> tuple[int, int] | None:
        """(VM id, disk id) of a VM's own disk volume (image clone, volatile disk, context)."""
        fields = {"px": re.escape(self.px), "vm": _ID, "disk": _ID}
        for shape in (self.CLONE, self.VOLATILE, self.CONTEXT):
            pattern = _shape(shape, image=_ID[1:-1], kind="(?:raw|swap)", **fields)
            match = re.fullmatch(self.QUALIFIER_RE + pattern.pattern, volume)
            if match:
                return int(match.group(1)), int(match.group(2))
        return None

    def is_restored(self, volume: str) -> bool:
        """``volume`` has the name ``restored`` gives (``trash.restored_volume``)."""
        pattern = _shape(self.RESTORED, px=re.escape(self.px), time="[0-9]{1,12}")
        return re.fullmatch(self.QUALIFIER_RE + pattern.pattern, volume) is not None

    # --- image SOURCE ----------------------------------------------------------------------------
    @staticmethod
    def source(volume: str) -> str:
        """The image SOURCE a DS action prints for ``volume`` (addon-storpool: the name)."""
        return volume

    def source_volume(self, source: str) -> str:
        """The volume an image SOURCE names, in this driver's SOURCE form (addon-storpool's
        SOURCE is the name itself: returned as given, the callers check it)."""
        return source


_ID = "([0-9]{1,10})"
_ID9 = "([0-9]{1,9})"
_TIME = "([0-9]{1,12})"


def _shape(shape: str, **fields: str) -> re.Pattern[str]:
    """``shape`` (a name's str.format shape) as a regular expression: its text literally,
    each field as the expression given for it."""
    parts = re.split(r"\{(\w+)\}", shape)
    return re.compile("".join(re.escape(p) if i % 2 == 0 else fields[p] for i, p in enumerate(parts)))


def for_driver(driver: str, px: str = "one") -> Names:
    """The naming scheme of a driver: its backend's ``scheme`` (addon-storpool's for a driver
    no backend serves)."""
    from .backends import find

    cls = find(driver)
    return (cls.scheme if cls is not None else Names)(px=px)


# Tag values of "type" (addon-storpool): persistent, non-persistent, non-persistent
# read-only, CD-ROM clone, context ISO, checkpoint, NVRAM.
TYPE_PERSISTENT = "PERS"
TYPE_NONPERSISTENT = "NPERS"
TYPE_NONPERSISTENT_RO = "NPERSRO"
TYPE_CDROM = "CDROM"
TYPE_CONTEXT = "CNTXT"
TYPE_CHECKPOINT = "CHKPNT"
TYPE_NVRAM = "NVRAM"


def tags(names: Names, *, vm_id: int | None = None, kind: str = "", disk_id: int | None = None,
         ds_id: int | None = None) -> dict[str, str]:
    """A volume's tags; ``ds_id`` (the VM's system datastore) only for schemes that record it."""
    out = {"virt": "one", "nloc": names.px}
    if vm_id is not None:
        out["nvm"] = str(vm_id)
    if kind:
        out["type"] = kind
    if disk_id is not None:
        out["diskid"] = str(disk_id)
    if ds_id is not None and names.ds_tag:
        out["dsid"] = str(ds_id)
    return out


def user_tags(names: Names, vm_id: int, ds_id: int, disk_id: int) -> dict[str, str]:
    """What a persistent image gets while a VM uses it (addon-linstor_un's ln); empty for
    schemes that do not mark images. ``release_tags`` removes them again (mvds)."""
    if not names.ds_tag:
        return {}
    return {"nvm": str(vm_id), "dsid": str(ds_id), "diskid": str(disk_id)}


def release_tags(names: Names) -> dict[str, str]:
    return {"nvm": "", "dsid": "", "diskid": ""} if names.ds_tag else {}
