"""The storage side of moving a VM between hosts: live (pre/post/failmigrate) and cold
(mv). Volumes are attached on the destination in one call, then detached from the
source in one call; ``disk.N`` links follow. With a non-shared system datastore
(SP_SYSTEM=ssh, addon-storpool's default) the small files of the VM directory
(deployment files, context.sh) are copied through the front-end too. Backends that let
only one host open a volume (LINSTOR/DRBD) allow two for the move (``dual_primary``): from
attach_on (premigrate) until detach_from (postmigrate, failmigrate).
"""

from __future__ import annotations

import posixpath

from lxml import etree

from datastore.driver import Driver
from onelib import xmldoc
from onelib.errors import DriverError
from onelib.paths import check_host

from .common import (
    check_vm_dir,
    driver_for,
    ds_id_arg,
    fetch_vm,
    host_vm_dir,
    link_many,
    safe_path,
    unlink,
    vm_id_arg,
    vm_volumes,
)
from .entry import TmRequest

COPY_EXCLUDE = "disk.*"


def shared(drv: Driver) -> bool:
    return drv.config.get("SP_SYSTEM", "ssh").lower() == "shared"


def is_frontend(drv: Driver, host: str) -> bool:
    """oned names the front-end in stop/resume/undeploy lines; it is no OpenNebula host."""
    return drv.oned.host_by_name(host) is None


class Migration:
    """``src dst vm_dir vmid sys_dsid [caller]`` with the VM document from stdin (or oned)."""

    def __init__(self, req: TmRequest) -> None:
        self.src = check_host(req.arg(0, "source host"))
        self.dst = check_host(req.arg(1, "destination host"))
        self.vm_id = vm_id_arg(req.arg(3, "vm id"))
        self.ds_id = ds_id_arg(req.arg(4, "datastore id"))
        vm_dir = check_vm_dir(safe_path(req.arg(2, "VM directory"), "VM directory"), self.vm_id)
        self.drv = driver_for(req.driver, self.ds_id)
        self.vm = vm_from_stdin(req.stdin) if req.stdin.strip() else fetch_vm(self.drv, self.vm_id)
        if xmldoc.text(self.vm, "ID") != str(self.vm_id):
            raise DriverError(f"the VM document on stdin is VM {xmldoc.text(self.vm, 'ID')!r}, not {self.vm_id}")
        self.src_dir = host_vm_dir(self.drv, self.src, vm_dir, self.ds_id, self.vm_id)
        self.dst_dir = host_vm_dir(self.drv, self.dst, vm_dir, self.ds_id, self.vm_id)

    @property
    def shared(self) -> bool:
        return shared(self.drv)


def attach_on(drv: Driver, vm: etree._Element, vm_id: int, host: str, vm_dir: str) -> None:
    volumes = vm_volumes(drv, vm, vm_id)
    items = [(name, disk.attach_readonly) for disk, name in volumes]
    extra = _system_extras(drv, vm_id, {name for _, name in volumes})
    items += [(name, False) for name in extra]
    drv.backend.dual_primary([name for name, _ in items], True)  # both hosts open them during the move
    devices = drv.backend.attach_many(items, drv.host(host))
    link_many(drv.shell(host), vm_dir,
              [(devices[name], posixpath.join(vm_dir, f"disk.{disk.disk_id}")) for disk, name in volumes])


def detach_from(drv: Driver, vm: etree._Element, vm_id: int, host: str, vm_dir: str, *, links: bool) -> None:
    volumes = vm_volumes(drv, vm, vm_id)
    names = [name for _, name in volumes]
    names += _system_extras(drv, vm_id, set(names))
    drv.backend.detach_many(names, drv.host(host), force=True)
    drv.backend.dual_primary(names, False)
    if links:
        unlink(drv.shell(host), *(posixpath.join(vm_dir, f"disk.{disk.disk_id}") for disk, _ in volumes))


def _system_extras(drv: Driver, vm_id: int, known: set[str]) -> list[str]:
    """NVRAM and checkpoint volumes: they follow the VM but are no DISK of it."""
    wanted = {drv.names.nvram(vm_id), drv.names.checkpoint(vm_id)}
    return [v.name for v in drv.backend.find(drv.names.vm_prefix(vm_id))
            if not v.snapshot and v.name in wanted and v.name not in known]


def move_system_volumes(drv: Driver, vm: etree._Element, vm_id: int, src: str, dst: str, dst_dir: str) -> None:
    """The VM's volumes that no disk MV line names (context ISO, NVRAM, checkpoint) follow
    the VM directory: attached on ``dst`` (``disk.N`` of the context linked there), then
    detached from ``src``; the front-end only lets go."""
    existing = {v.name for v in drv.backend.find(drv.names.vm_prefix(vm_id)) if not v.snapshot}
    context = [(disk, name) for disk, name in vm_volumes(drv, vm, vm_id)
               if disk.kind == "context" and name in existing]
    extras = sorted(existing & {drv.names.nvram(vm_id), drv.names.checkpoint(vm_id)})
    items = [(name, False) for _, name in context] + [(name, False) for name in extras]
    if not items:
        return
    if not is_frontend(drv, dst):
        devices = drv.backend.attach_many(items, drv.host(dst))
        if context:
            link_many(drv.shell(dst), dst_dir,
                      [(devices[name], posixpath.join(dst_dir, f"disk.{disk.disk_id}")) for disk, name in context])
    if not is_frontend(drv, src):
        drv.backend.detach_many([name for name, _ in items], drv.host(src), force=True)


_PACK = ('if [ ! -d "$1" ]; then exit 0; fi; if [ -n "$2" ]; then exec tar -C "$1" --exclude "$2" -cf - .; fi; '
         'exec tar -C "$1" -cf - .')
_UNPACK = 'set -e; mkdir -p -- "$1"; exec tar -C "$1" -xf -'


def copy_dir(drv: Driver, src: str, dst: str, src_dir: str, dst_dir: str | None = None) -> None:
    """The VM directory's files (not the disk links) from one host to another, through the
    front-end; nothing when the source has no such directory (a re-run after the copy and
    the removal)."""
    # a network backend's disk.N are real files (the context ISO), no links to devices: they go too
    exclude = "" if drv.backend_class.disk_form == "network" else COPY_EXCLUDE
    data = drv.shell(src).run(["sh", "-c", _PACK, "sh", src_dir, exclude]).stdout
    if data:
        drv.shell(dst).run(["sh", "-c", _UNPACK, "sh", dst_dir or src_dir], input=data)


def vm_from_stdin(data: bytes) -> etree._Element:
    vm = xmldoc.parse_b64(data, "VM document on stdin")
    if vm.tag != "VM":
        raise DriverError(f"the document on stdin is <{vm.tag}>, not <VM>")
    return vm
