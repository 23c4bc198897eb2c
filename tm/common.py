"""What TM actions share: the disk a transfer line names, the volume behind it, and the
``disk.N`` link on the host.

oned passes only paths and ids; everything else (sizes, image ids, persistence, the
disk's kind) comes from the VM document, fetched once per action through oned's API.
"""

from __future__ import annotations

import posixpath
import re

from lxml import etree

from datastore.driver import Driver
from datastore.vmdisks import VmDisk as VmDisk
from datastore.vmdisks import vm_disk as vm_disk
from datastore.vmdisks import vm_volumes as vm_volumes
from onelib import numbers, xmldoc
from onelib.errors import DriverError
from onelib.hostcmd import Host
from onelib.paths import clean_path, disk_id, split_host_path
from tweaks.record import record

MIB = 1024 * 1024


@record
class DiskPath:
    """``node1:/var/lib/one//datastores/101/42/disk.0`` taken apart."""

    host: str
    path: str
    vm_dir: str
    disk_id: int


# What a system datastore path is made of (DATASTORE_LOCATION/<ds>/<vm>[/disk.N]): anything
# else (spaces, quotes, $, `, ;, ...) never comes from oned and is refused before it reaches
# a host command, even though host commands are quoted argument lists.
_SAFE_PATH = re.compile(r"[A-Za-z0-9_.+=@,/-]+")


def safe_path(raw: str, what: str = "path") -> str:
    """An absolute, normalised path of plain characters (see ``_SAFE_PATH``)."""
    path = clean_path(raw, what)
    if not _SAFE_PATH.fullmatch(path):
        raise DriverError(f"{what} {raw!r} contains characters a datastore path never has")
    return path


def host_path(arg: str, what: str = "path") -> tuple[str, str]:
    """``node1:/var/lib/one//datastores/101/42`` -> ("node1", "/var/lib/one/datastores/101/42")."""
    host, path = split_host_path(arg, what)
    return host, safe_path(path, what)


def disk_path(arg: str, what: str = "disk", vm_id: int | None = None) -> DiskPath:
    host, path = host_path(arg, what)
    found = DiskPath(host=host, path=path, vm_dir=posixpath.dirname(path), disk_id=disk_id(path))
    if vm_id is not None:
        check_vm_dir(found.vm_dir, vm_id, what)
    return found


def system_ds_of(vm_dir: str) -> int:
    """The system datastore id of a VM directory ``.../<ds_id>/<vm_id>`` (checked by
    ``check_vm_dir``)."""
    raw = posixpath.basename(posixpath.dirname(vm_dir.rstrip("/")))
    if not numbers.is_whole(raw, 9):
        raise DriverError(f"{vm_dir} is not a VM directory in a system datastore")
    return int(raw)


def check_vm_dir(path: str, vm_id: int, what: str = "VM directory") -> str:
    """``path`` must be a VM directory of VM ``vm_id`` (``.../<ds_id>/<vm_id>``)."""
    parts = path.rstrip("/").split("/")
    if len(parts) < 3 or parts[-1] != str(vm_id) or not numbers.is_whole(parts[-2], 9):
        raise DriverError(f"{what} {path} is not VM {vm_id}'s directory in a system datastore")
    return path


def vm_id_arg(raw: str) -> int:
    return numbers.object_id(raw, "VM id")


def ds_id_arg(raw: str) -> int:
    return numbers.object_id(raw, "datastore id")


def fetch_vm(drv: Driver, vm_id: int) -> etree._Element:
    """VM ``vm_id``'s document from oned (NotFound when oned has no such VM)."""
    vm = drv.oned.vm(vm_id)
    if xmldoc.text(vm, "ID") != str(vm_id):
        raise DriverError(f"oned answered VM {xmldoc.text(vm, 'ID')!r} for VM {vm_id}")
    return vm


def host_vm_dir(drv: Driver, host: str, vm_dir: str, ds_id: int, vm_id: int) -> str:
    """The VM directory on ``host``: ``vm_dir`` as oned gave it, unless the host's template
    sets its own DATASTORE_LOCATION (OpenNebula's per-host override)."""
    doc = drv.oned.host_by_name(host)
    location = xmldoc.text(doc, "TEMPLATE/DATASTORE_LOCATION") if doc is not None else ""
    if not location:
        return vm_dir
    return safe_path(f"{location}/{ds_id}/{vm_id}", f"host {host} DATASTORE_LOCATION")


def driver_for(request_driver: str, ds_id: int) -> Driver:
    """A Driver configured with datastore ``ds_id``'s attributes (one oned call)."""
    probe = Driver(request_driver)
    ds = probe.oned.datastore(ds_id)
    return Driver(request_driver, ds, oned=probe.oned, config=probe.config)


# Constant shell programs that get their data as positional parameters ("$1", ...): several
# steps in one ssh round trip, and no value from a transfer line or template ever becomes
# shell code (Host quotes every argument).
_LINKS = 'set -e; dir=$1; shift; mkdir -p -- "$dir"; while [ "$#" -ge 2 ]; do ln -sfn -- "$1" "$2"; shift 2; done'


def link_many(shell: Host, directory: str, pairs: list[tuple[str, str]]) -> None:
    """``(device, path)``: make each ``path`` (a ``disk.N`` in ``directory``) a symlink to
    its device on the host, in one command."""
    args = [directory]
    for device, path in pairs:
        if not device.startswith("/"):
            continue  # a network backend's target (rbd:...): qemu opens it, nothing to link
        args += [device, path]
    shell.run(["sh", "-c", _LINKS, "sh", *args])


def link(shell: Host, path: str, device: str) -> None:
    """Make ``path`` (a VM's ``disk.N``) a symlink to ``device`` on the host."""
    link_many(shell, posixpath.dirname(path), [(device, path)])


def unlink(shell: Host, *paths: str) -> None:
    shell.run(["rm", "-f", "--", *paths])
