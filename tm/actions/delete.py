"""DELETE ``host:.../disk.N vmid dsid`` (a disk) or ``host:<vm dir> vmid sys_dsid`` (last).

A disk: unlink ``disk.N``; a persistent image is only detached from the host; an image
clone or volatile disk is deleted, kept first as a snapshot the backend removes after
DELAY_DELETE (``one-tweaks trash`` lists and restores them); CD-ROM clones and the
context ISO go at once. Backend calls: at most snapshot + detach + delete (3).

The VM directory: every volume left under the VM's system prefix (checkpoint, NVRAM,
context) is deleted, and the directory removed on the host.
"""

from __future__ import annotations

import posixpath
import time

from datastore.driver import Driver
from onelib.errors import DriverError, NotFound
from onelib.paths import split_host_path

from ..common import disk_path, driver_for, ds_id_arg, unlink, vm_disk, vm_id_arg
from ..entry import TmRequest


def run(req: TmRequest) -> None:
    target = req.arg(0, "path")
    vm_id, ds_id = vm_id_arg(req.arg(1, "vm id")), ds_id_arg(req.arg(2, "datastore id"))
    host, path = split_host_path(target, "path")
    drv = driver_for(req.driver, ds_id)
    if posixpath.basename(path).startswith("disk."):
        delete_disk(drv, req, vm_id)
    else:
        delete_dir(drv, host, path, vm_id)


def delete_disk(drv: Driver, req: TmRequest, vm_id: int) -> None:
    dst = disk_path(req.arg(0, "path"))
    disk = vm_disk(drv.oned.vm(vm_id), dst.disk_id)
    name = disk.volume(drv.names, vm_id)
    backend = drv.backend
    with drv.lock(name):
        unlink(drv.shell(dst.host), dst.path)
        if disk.persistent:
            backend.detach(name, drv.host(dst.host))
            return
        delay = drv.config.seconds("DELAY_DELETE")
        if delay and disk.kind in ("image", "volatile"):
            trash = trash_name(name)
            try:
                backend.snapshot(name, trash, tags={"virt": "one", "nloc": drv.names.px, "nvm": str(vm_id),
                                                    "diskid": str(disk.disk_id), "trash": name},
                                 delete_after=delay)
            except NotFound:
                return  # already gone: a re-run after the delete
        backend.delete(name)


def trash_name(volume: str) -> str:
    return f"{volume}-DELETED-{int(time.time())}"


def delete_dir(drv: Driver, host: str, path: str, vm_id: int) -> None:
    parts = path.rstrip("/").split("/")
    if parts[-1] != str(vm_id):
        raise DriverError(f"{path} is not VM {vm_id}'s directory")
    backend = drv.backend
    for volume in backend.find(drv.names.vm_prefix(vm_id)):
        if volume.snapshot:
            continue  # VM snapshots and trash stay; they have their own lifecycle
        with drv.lock(volume.name):
            backend.delete(volume.name)
    drv.shell(host).run(["rm", "-rf", "--one-file-system", path])
