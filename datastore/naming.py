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

    @classmethod
    def from_config(cls, config: Config) -> Names:
        return cls(px=config.get("ONE_PX") or "one")

    def template(self, ds_id: int) -> str:
        return f"{self.px}-ds-{ds_id}"

    def image(self, image_id: int) -> str:
        return f"{self.px}-img-{image_id}"

    def staging(self, image_id: int, digest: str) -> str:
        return f"{self.px}-img-{image_id}-{digest}"

    def clone(self, image_id: int, vm_id: int, disk_id: int) -> str:
        """A non-persistent disk (and a CD-ROM attachment) made from an image."""
        return f"{self.px}-img-{image_id}-{vm_id}-{disk_id}"

    def volatile(self, vm_id: int, disk_id: int, swap: bool = False) -> str:
        return f"{self.px}-sys-{vm_id}-{disk_id}-{'swap' if swap else 'raw'}"

    def context(self, vm_id: int, disk_id: int) -> str:
        return f"{self.px}-sys-{vm_id}-{disk_id}-iso"

    def checkpoint(self, vm_id: int) -> str:
        return f"{self.px}-sys-{vm_id}-rawcheckpoint"

    def nvram(self, vm_id: int) -> str:
        return f"{self.px}-sys-{vm_id}-NVRAM"

    def vm_prefix(self, vm_id: int) -> str:
        return f"{self.px}-sys-{vm_id}-"

    @staticmethod
    def disk_snapshot(volume: str, snap_id: int) -> str:
        return f"{volume}-snap{snap_id}"

    @staticmethod
    def vm_snapshot(volume: str, snap_id: int, timestamp: int) -> str:
        return f"{volume}-ONESNAP-{snap_id}-{timestamp}"

    @staticmethod
    def backup_snapshot(volume: str, timestamp: int) -> str:
        return f"{volume}-ONEBACKUP-{timestamp}"

    @staticmethod
    def export_snapshot(volume: str, app_id: int) -> str:
        """The snapshot a marketplace export reads from (deleted before export returns)."""
        return f"{volume}-export-{app_id}"

    # --- parsing names back --------------------------------------------------------------------
    @staticmethod
    def split_vm_snapshot(name: str) -> tuple[str, int, int] | None:
        """(volume, VM snapshot id, timestamp) of a VM snapshot name, else None."""
        match = _ONESNAP.fullmatch(name)
        return (match.group(1), int(match.group(2)), int(match.group(3))) if match else None

    @staticmethod
    def disk_snapshot_prefix(volume: str) -> str:
        """What every disk snapshot name of ``volume`` starts with."""
        return f"{volume}-snap"

    @staticmethod
    def disk_snapshot_id(volume: str, name: str) -> int | None:
        """The snapshot id when ``name`` is a disk snapshot of ``volume``, else None."""
        match = re.fullmatch(re.escape(volume) + r"-snap([0-9]{1,10})", name)
        return int(match.group(1)) if match else None

    @staticmethod
    def split_disk_snapshot(name: str) -> tuple[str, int] | None:
        """(volume, snapshot id) of a disk snapshot name, else None."""
        match = re.fullmatch(r"(.+)-snap([0-9]{1,10})", name)
        return (match.group(1), int(match.group(2))) if match else None

    def disk_owner(self, volume: str) -> tuple[int, int] | None:
        """(VM id, disk id) of a VM's own disk volume (image clone, volatile disk, context)."""
        px = re.escape(self.px)
        n = "([0-9]{1,10})"
        for pattern in (rf"{px}-img-{n[1:-1]}-{n}-{n}", rf"{px}-sys-{n}-{n}-(?:raw|swap|iso)"):
            match = re.fullmatch(pattern, volume)
            if match:
                return int(match.group(1)), int(match.group(2))
        return None

    # --- image SOURCE ----------------------------------------------------------------------------
    @staticmethod
    def source(volume: str) -> str:
        """The image SOURCE a DS action prints for ``volume`` (addon-storpool: the name)."""
        return volume

    @staticmethod
    def source_volume(source: str) -> str:
        """The volume an image SOURCE names, in this driver's SOURCE form (addon-storpool's
        SOURCE is the name itself: returned as given, the callers check it)."""
        return source


_ONESNAP = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]*)-ONESNAP-([0-9]{1,9})-([0-9]{1,12})")
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
