"""PREMIGRATE ``src dst vm_dir vmid sys_dsid [caller]`` (stdin: base64 ``<VM>``): before a
live migration every volume is attached on the destination too, in one call, and the
destination gets the VM directory with its ``disk.N`` links. Calls: find + attach (2)."""

from __future__ import annotations

from onelib.paths import check_host, clean_path

from ..common import driver_for, ds_id_arg, vm_id_arg
from ..entry import TmRequest
from ..migrate import attach_on, copy_dir, shared, vm_from_stdin


def run(req: TmRequest) -> None:
    src, dst = check_host(req.arg(0, "source host")), check_host(req.arg(1, "destination host"))
    vm_dir = clean_path(req.arg(2, "VM directory"))
    vm_id, ds_id = vm_id_arg(req.arg(3, "vm id")), ds_id_arg(req.arg(4, "datastore id"))
    drv = driver_for(req.driver, ds_id)
    vm = vm_from_stdin(req.stdin) if req.stdin.strip() else drv.oned.vm(vm_id)
    if src == dst:
        return
    if not shared(drv):
        copy_dir(drv, src, dst, vm_dir)
    attach_on(drv, vm, vm_id, dst, vm_dir)
