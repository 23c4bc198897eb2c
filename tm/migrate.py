"""The storage side of moving a VM between hosts: live (pre/post/failmigrate) and cold
(mv). Volumes are attached on the destination in one call, then detached from the
source in one call; ``disk.N`` links follow. With a non-shared system datastore
(SP_SYSTEM=ssh, addon-storpool's default) the small files of the VM directory
(deployment files, context.sh) are copied through the front-end too.
"""

from __future__ import annotations

import posixpath

from lxml import etree

from datastore.driver import Driver
from onelib import xmldoc

from .common import link, unlink, vm_volumes

COPY_EXCLUDE = "disk.*"


def shared(drv: Driver) -> bool:
    return drv.config.get("SP_SYSTEM", "ssh").lower() == "shared"


def is_frontend(drv: Driver, host: str) -> bool:
    """oned names the front-end in stop/resume/undeploy lines; it is no OpenNebula host."""
    return drv.oned.host_by_name(host) is None


def attach_on(drv: Driver, vm: etree._Element, vm_id: int, host: str, vm_dir: str) -> None:
    volumes = vm_volumes(drv, vm, vm_id)
    items = [(name, disk.readonly or disk.kind in ("cdrom", "context")) for disk, name in volumes]
    extra = _system_extras(drv, vm_id, {name for _, name in volumes})
    items += [(name, False) for name in extra]
    devices = drv.backend.attach_many(items, drv.host(host))
    shell = drv.shell(host)
    shell.run(["mkdir", "-p", vm_dir])
    for disk, name in volumes:
        link(shell, posixpath.join(vm_dir, f"disk.{disk.disk_id}"), devices[name])


def detach_from(drv: Driver, vm: etree._Element, vm_id: int, host: str, vm_dir: str, *, links: bool) -> None:
    volumes = vm_volumes(drv, vm, vm_id)
    names = [name for _, name in volumes]
    names += _system_extras(drv, vm_id, set(names))
    drv.backend.detach_many(names, drv.host(host), force=True)
    if links:
        shell = drv.shell(host)
        for disk, _ in volumes:
            unlink(shell, posixpath.join(vm_dir, f"disk.{disk.disk_id}"))


def _system_extras(drv: Driver, vm_id: int, known: set[str]) -> list[str]:
    """NVRAM and checkpoint volumes: they follow the VM but are no DISK of it."""
    wanted = {drv.names.nvram(vm_id), drv.names.checkpoint(vm_id)}
    return [v.name for v in drv.backend.find(drv.names.vm_prefix(vm_id))
            if not v.snapshot and v.name in wanted and v.name not in known]


def copy_dir(drv: Driver, src: str, dst: str, vm_dir: str) -> None:
    """The VM directory's files (not the disk links) from one host to another."""
    data = drv.shell(src).run(["tar", "-C", vm_dir, "--exclude", COPY_EXCLUDE, "-cf", "-", "."]).stdout
    target = drv.shell(dst)
    target.run(["mkdir", "-p", vm_dir])
    target.run(["tar", "-C", vm_dir, "-xf", "-"], input=data)


def vm_from_stdin(data: bytes) -> etree._Element:
    return xmldoc.parse_b64(data, "VM document on stdin")
