"""MV ``src:path dst:path vmid dsid``: cold migration, stop/resume and undeploy, once per
disk and then for the VM directory. A disk's volume is attached to the destination and
detached from the source, ``disk.N`` following; the front-end (stop, undeploy) only lets
go, the volumes stay. The directory's files are copied when the system datastore is not
shared. Backend calls: attach (1) + detach (1) per disk."""

from __future__ import annotations

import posixpath

from onelib.errors import DriverError

from ..common import (
    check_vm_dir,
    disk_path,
    driver_for,
    ds_id_arg,
    fetch_vm,
    host_path,
    link,
    unlink,
    vm_disk,
    vm_id_arg,
)
from ..entry import TmRequest
from ..migrate import copy_dir, is_frontend, move_system_volumes, shared


def run(req: TmRequest) -> None:
    vm_id, ds_id = vm_id_arg(req.arg(2, "vm id")), ds_id_arg(req.arg(3, "datastore id"))
    src_host, src_path = host_path(req.arg(0, "source"), "source")
    dst_host, dst_path = host_path(req.arg(1, "destination"), "destination")
    is_disk = posixpath.basename(src_path).startswith("disk.")
    if is_disk != posixpath.basename(dst_path).startswith("disk."):
        raise DriverError("mv: source and destination must both be disks or both VM directories")
    if not is_disk:
        check_vm_dir(src_path, vm_id, "source")
        check_vm_dir(dst_path, vm_id, "destination")
        drv = driver_for(req.driver, ds_id)
        vm = fetch_vm(drv, vm_id)
        if src_host == dst_host:
            return
        if not shared(drv):
            copy_dir(drv, src_host, dst_host, src_path, dst_path)
        move_system_volumes(drv, vm, vm_id, src_host, dst_host, dst_path)
        if not shared(drv):
            drv.shell(src_host).run(["rm", "-rf", "--one-file-system", src_path])
        return
    src = disk_path(req.arg(0, "source"), "source", vm_id)
    dst = disk_path(req.arg(1, "destination"), "destination", vm_id)
    if src.disk_id != dst.disk_id:
        raise DriverError(f"mv: disk.{src.disk_id} cannot become disk.{dst.disk_id}")
    drv = driver_for(req.driver, ds_id)
    disk = vm_disk(fetch_vm(drv, vm_id), src.disk_id)
    if src.host == dst.host and src.path == dst.path:
        return
    name = disk.volume(drv.names, vm_id)
    readonly = disk.attach_readonly
    with drv.lock(name):
        if not is_frontend(drv, dst.host):
            device = drv.backend.attach(name, drv.host(dst.host), readonly=readonly)
            link(drv.shell(dst.host), dst.path, device)
        if src.host != dst.host and not is_frontend(drv, src.host):
            drv.backend.detach(name, drv.host(src.host))
        if src.host != dst.host or src.path != dst.path:
            unlink(drv.shell(src.host), src.path)
