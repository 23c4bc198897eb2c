"""mkfs: a new empty image (datablock) of IMAGE/SIZE MB, with a file system when IMAGE/FS
names one.

- ``FORMAT=save_as`` (disk-saveas): prints the SOURCE and creates nothing; TM cpds fills it.
- No FS: one VolumeCreate of ``<PX>-img-<ID>``.
- FS (ext2/3/4, xfs, btrfs, vfat; SUPPORTED_FS narrows the list): the staging volume is
  attached to the staging host, formatted there, detached and renamed (``datastore.imageds``).

Prints the SOURCE only (oned takes mkfs's whole output as SOURCE): ``<PX>-img-<ID>``.
A StorPool volume is raw: FORMAT other than raw (or save_as) is refused.
"""

from __future__ import annotations

from onelib import xmldoc
from onelib.errors import DriverError
from onelib.hostcmd import Host

from .. import images
from ..entry import DsRequest
from ..imageds import DsAction

MKFS: dict[str, list[str]] = {
    "ext2": ["mkfs.ext2", "-F", "-q"],
    "ext3": ["mkfs.ext3", "-F", "-q"],
    "ext4": ["mkfs.ext4", "-F", "-q"],
    "xfs": ["mkfs.xfs", "-f", "-q"],
    "btrfs": ["mkfs.btrfs", "-f", "-q"],
    "vfat": ["mkfs.vfat"],
}


def run(request: DsRequest) -> str:
    act = DsAction(request)
    image_id = act.image_id()
    final = act.names.image(image_id)
    fmt = xmldoc.text(act.image, "FORMAT").lower()
    if fmt == "save_as":
        return act.names.source(final)
    if fmt not in ("", "raw"):
        raise DriverError(f"mkfs: FORMAT={fmt!r}: {act.driver.driver} images are raw block volumes (use FORMAT=raw)")
    size_mb = xmldoc.integer(act.image, "SIZE", "mkfs: IMAGE")
    if size_mb <= 0:
        raise DriverError(f"mkfs: IMAGE/SIZE={size_mb} is not a size in MB")
    fs = xmldoc.text(act.image, "FS").lower()
    if fs == "raw":
        fs = ""
    if fs:
        allowed = set(MKFS)
        supported = act.setting("SUPPORTED_FS").replace(",", " ").split()
        if supported:
            allowed &= {s.lower() for s in supported}
        if fs not in allowed:
            raise DriverError(f"mkfs: file system FS={fs!r} is not supported ({', '.join(sorted(allowed))})")
    placement = act.driver.placement(act.ds_id)
    tags = act.tags()
    size = size_mb * images.MiB
    backend = act.driver.backend

    with act.driver.lock(final):
        if not fs:
            try:
                backend.create(final, size, placement=placement, tags=tags)
            except DriverError:
                act.require_absent(final)   # a clearer reason when it exists
                raise
            return act.names.source(final)
        host_name = act.staging_host(image_id)
        act.require_absent(final)

        def write(shell: Host, device: str) -> None:
            timeout = act.seconds("MKFS_TIMEOUT", 3600)
            if images.is_target(device):  # a network backend (rbd): format a scratch file, copy it
                scratch = f"{act.staging_dir()}/{final.replace('/', '_')}.mkfs"
                images.format_into(shell, MKFS[fs], device, size, scratch, timeout=timeout)
            else:
                shell.run([*MKFS[fs], device], timeout=timeout)

        act.fill_volume(final=final, size=size, placement=placement, tags=tags, host_name=host_name,
                        staging=act.staging_name(image_id), write=write)
    return act.names.source(final)
