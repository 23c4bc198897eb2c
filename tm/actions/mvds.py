"""MVDS ``host:.../disk.N SOURCE vmid img_dsid``: a persistent disk goes back to its image
datastore (terminate, detach). The volume stays; it is detached from the host and
``disk.N`` unlinked. Backend calls: detach (1)."""

from __future__ import annotations

from ..common import disk_path, driver_for, ds_id_arg, unlink, vm_id_arg
from ..entry import TmRequest
from ..provision import volume_name


def run(req: TmRequest) -> None:
    src = disk_path(req.arg(0, "disk"))
    name = volume_name(req.arg(1, "source"))
    _vm_id, ds_id = vm_id_arg(req.arg(2, "vm id")), ds_id_arg(req.arg(3, "datastore id"))
    drv = driver_for(req.driver, ds_id)
    with drv.lock(name):
        unlink(drv.shell(src.host), src.path)
        drv.backend.detach(name, drv.host(src.host))
