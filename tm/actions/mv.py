"""MV ``src:path dst:path vmid dsid``: cold migration, stop/resume and undeploy, once per
disk and then for the VM directory. A disk's volume is detached from the source host and
attached to the destination, ``disk.N`` following; the front-end (stop, undeploy) only
lets go, the volumes stay. The directory's files are copied when the system datastore is
not shared."""

from __future__ import annotations

import posixpath

from onelib.paths import split_host_path

from ..common import disk_path, driver_for, ds_id_arg, link, unlink, vm_disk, vm_id_arg
from ..entry import TmRequest
from ..migrate import copy_dir, is_frontend, shared


def run(req: TmRequest) -> None:
    src_host, src_path = split_host_path(req.arg(0, "source"), "source")
    dst_host, dst_path = split_host_path(req.arg(1, "destination"), "destination")
    vm_id, ds_id = vm_id_arg(req.arg(2, "vm id")), ds_id_arg(req.arg(3, "datastore id"))
    drv = driver_for(req.driver, ds_id)
    if not posixpath.basename(src_path).startswith("disk."):
        if src_host != dst_host and not shared(drv):
            copy_dir(drv, src_host, dst_host, src_path)
            drv.shell(src_host).run(["rm", "-rf", "--one-file-system", src_path])
        return
    if src_host == dst_host and src_path == dst_path:
        return
    src, dst = disk_path(req.arg(0, "source")), disk_path(req.arg(1, "destination"))
    disk = vm_disk(drv.oned.vm(vm_id), src.disk_id)
    name = disk.volume(drv.names, vm_id)
    readonly = disk.readonly or disk.kind in ("cdrom", "context")
    with drv.lock(name):
        if not is_frontend(drv, dst.host):
            device = drv.backend.attach(name, drv.host(dst.host), readonly=readonly)
            link(drv.shell(dst.host), dst.path, device)
        if not is_frontend(drv, src.host):
            drv.backend.detach(name, drv.host(src.host))
            unlink(drv.shell(src.host), src.path)
