"""DELETE ``host:.../disk.N vmid dsid`` (a disk) or ``host:<vm dir> vmid sys_dsid`` (last).

A disk: unlink ``disk.N``; a persistent image is only detached from the host; an image
clone or volatile disk is deleted, kept first as a snapshot the backend removes after
DELAY_DELETE (``one-tweaks trash`` lists and restores them); CD-ROM clones and the
context ISO go at once. Backend calls: at most snapshot + detach + delete (3).

The trash snapshot's name is ``<volume>-DELETED-<VM STIME>``: the same on every run, so a
re-run after a crash between the snapshot and the delete finds its own snapshot (the
volume's parent since the snapshot was taken) and goes on instead of trashing the disk
twice. A snapshot of that name that is not the volume's parent (the same disk deleted
before, e.g. a detach and re-attach of one image) makes the name unique with the time.

The VM directory: every volume left under the VM's system prefix (checkpoint, NVRAM,
context) is deleted, and the directory removed on the host.
"""

from __future__ import annotations

import posixpath
import re
import time

from lxml import etree

from datastore.driver import Driver
from onelib import xmldoc
from onelib.errors import Conflict, DriverError, NotFound

from ..common import (
    VmDisk,
    check_vm_dir,
    disk_path,
    driver_for,
    ds_id_arg,
    fetch_vm,
    host_path,
    unlink,
    vm_disk,
    vm_id_arg,
)
from ..entry import TmRequest


def run(req: TmRequest) -> None:
    target = req.arg(0, "path")
    vm_id, ds_id = vm_id_arg(req.arg(1, "vm id")), ds_id_arg(req.arg(2, "datastore id"))
    host, path = host_path(target, "path")
    is_disk = posixpath.basename(path).startswith("disk.")
    dst = disk_path(target, "path", vm_id) if is_disk else None
    if dst is None:
        check_vm_dir(path, vm_id)
    drv = driver_for(req.driver, ds_id)
    vm = fetch_vm(drv, vm_id)
    if dst is not None:
        disk = vm_disk(vm, dst.disk_id)
        delete_disk(drv, vm, disk, dst.host, dst.path, vm_id)
    else:
        delete_dir(drv, host, path, vm_id)


def delete_disk(drv: Driver, vm: etree._Element, disk: VmDisk, host: str, path: str, vm_id: int) -> None:
    name = disk.volume(drv.names, vm_id)
    backend = drv.backend
    with drv.lock(name):
        unlink(drv.shell(host), path)
        if disk.persistent:
            backend.detach(name, drv.host(host))
            return
        # backends without self-deleting snapshots (LINSTOR) delete at once, as their add-ons do
        delay = drv.config.seconds("DELAY_DELETE") if backend.delayed_delete else 0
        if delay and disk.kind in ("image", "volatile"):
            trash = trash_name(name, vm)
            tags = {"virt": "one", "nloc": drv.names.px, "nvm": str(vm_id), "diskid": str(disk.disk_id),
                    "trash": name}
            try:
                backend.snapshot(name, trash, tags=tags, delete_after=delay)
            except NotFound:
                return  # the volume is gone: a re-run after the delete
            except Conflict:
                found = backend.get(name)
                if found is None:
                    return  # gone meanwhile
                if not _ours(found.parent, trash):
                    # an earlier disk of the same name went to the trash: keep both
                    backend.snapshot(name, f"{trash}-{int(time.time())}", tags=tags, delete_after=delay)
        backend.delete(name)


def _ours(parent: str, trash: str) -> bool:
    """The volume's parent is this delete's trash snapshot (or its unique fallback)."""
    tail = parent[len(trash) + 1:]
    return parent == trash or (parent.startswith(trash + "-") and tail.isascii() and tail.isdigit())


def trash_name(volume: str, vm: etree._Element) -> str:
    stime = xmldoc.text(vm, "STIME")
    if not stime.isascii() or not stime.isdigit():
        raise DriverError(f"VM {xmldoc.text(vm, 'ID')} has no usable STIME ({stime!r})")
    return f"{volume}-DELETED-{stime}"


def delete_dir(drv: Driver, host: str, path: str, vm_id: int) -> None:
    backend = drv.backend
    for volume in backend.find(drv.names.vm_prefix(vm_id)):
        if volume.snapshot:
            continue  # VM snapshots and trash stay; they have their own lifecycle
        with drv.lock(volume.name):
            backend.delete(volume.name)
    for snapshot in disk_snapshots_of_gone_disks(drv, vm_id):
        backend.delete(snapshot, snapshot=True)
    drv.shell(host).run(["rm", "-rf", "--one-file-system", path])


def disk_snapshots_of_gone_disks(drv: Driver, vm_id: int) -> list[str]:
    """Disk snapshots (``<volume>-snapN``) of the VM's non-persistent disks: oned forgets
    them with the VM, so the VM directory's delete (the last epilog step) removes them.
    A persistent image's snapshots belong to the image and stay."""
    px = re.escape(drv.names.px)
    n = "[0-9]{1,10}"
    mine = re.compile(rf"(?:{px}-img-{n}-{vm_id}-{n}|{px}-sys-{vm_id}-{n}-(?:raw|swap))-snap{n}")
    return [s.name for s in drv.backend.snapshots(f"{drv.names.px}-")
            if mine.fullmatch(s.name) and not s.tags.get("trash")]
