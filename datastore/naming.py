"""Object names and tags exactly as addon-storpool gives them, so an existing cloud's
volumes are found where they are (``PX`` is the configurable ONE_PX prefix that lets
several OpenNebula instances share one cluster)."""

from __future__ import annotations

from tweaks.record import record


@record
class Names:
    px: str = "one"

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


# Tag values of "type" (addon-storpool): persistent, non-persistent, non-persistent
# read-only, CD-ROM clone, context ISO, checkpoint, NVRAM.
TYPE_PERSISTENT = "PERS"
TYPE_NONPERSISTENT = "NPERS"
TYPE_NONPERSISTENT_RO = "NPERSRO"
TYPE_CDROM = "CDROM"
TYPE_CONTEXT = "CNTXT"
TYPE_CHECKPOINT = "CHKPNT"
TYPE_NVRAM = "NVRAM"


def tags(names: Names, *, vm_id: int | None = None, kind: str = "", disk_id: int | None = None) -> dict[str, str]:
    out = {"virt": "one", "nloc": names.px}
    if vm_id is not None:
        out["nvm"] = str(vm_id)
    if kind:
        out["type"] = kind
    if disk_id is not None:
        out["diskid"] = str(disk_id)
    return out
