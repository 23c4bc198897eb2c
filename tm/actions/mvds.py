"""MVDS ``host:.../disk.N SOURCE vmid img_dsid``: a persistent disk goes back to its image
datastore (terminate, detach). The volume stays; it is detached from the host and
``disk.N`` unlinked. Backend calls: detach (1); linstor_un: + get and the image's
VM_ID/DS_ID/DISK_ID properties cleared (2), as addon-linstor_un does."""

from __future__ import annotations

from datastore.naming import release_tags
from onelib.errors import DriverError

from ..common import disk_path, driver_for, ds_id_arg, fetch_vm, unlink, vm_disk, vm_id_arg
from ..entry import TmRequest
from ..provision import volume_name


def run(req: TmRequest) -> None:
    raw_name = req.arg(1, "source")
    vm_id, ds_id = vm_id_arg(req.arg(2, "vm id")), ds_id_arg(req.arg(3, "datastore id"))
    src = disk_path(req.arg(0, "disk"), "disk", vm_id)
    drv = driver_for(req.driver, ds_id)
    name = volume_name(raw_name, drv.names)
    disk = vm_disk(fetch_vm(drv, vm_id), src.disk_id)
    if not disk.persistent or disk.volume(drv.names, vm_id) != name:
        raise DriverError(f"disk {src.disk_id} of VM {vm_id} is not the persistent image {name}")
    with drv.lock(name):
        unlink(drv.shell(src.host), src.path)
        drv.backend.detach(name, drv.host(src.host))
        gone = release_tags(drv.names)
        if gone:  # addon-linstor_un: the image no longer names this VM (another VM's mark stays)
            found = drv.backend.get(name)
            if found is not None and found.tags.get("nvm") == str(vm_id):
                drv.backend.set_tags(name, gone)
