"""POSTMIGRATE ``src dst vm_dir vmid sys_dsid`` (stdin: base64 ``<VM>``): after a live
migration the source lets go of every volume (one call) and, with a non-shared system
datastore, of the VM directory."""

from __future__ import annotations

from onelib.paths import check_host, clean_path

from ..common import driver_for, ds_id_arg, vm_id_arg
from ..entry import TmRequest
from ..migrate import detach_from, shared, vm_from_stdin


def run(req: TmRequest) -> None:
    src, dst = check_host(req.arg(0, "source host")), check_host(req.arg(1, "destination host"))
    vm_dir = clean_path(req.arg(2, "VM directory"))
    vm_id, ds_id = vm_id_arg(req.arg(3, "vm id")), ds_id_arg(req.arg(4, "datastore id"))
    drv = driver_for(req.driver, ds_id)
    vm = vm_from_stdin(req.stdin) if req.stdin.strip() else drv.oned.vm(vm_id)
    if src == dst:
        return
    detach_from(drv, vm, vm_id, src, vm_dir, links=not shared(drv))
    if not shared(drv):
        drv.shell(src).run(["rm", "-rf", "--one-file-system", vm_dir])
