"""What the VMM overrides share besides the host: checked arguments and oned's driver
message. Every value that reaches libvirt or a host command comes from here checked
(deploy ids, disk targets, paths). The host itself (libvirt-python, ssh) is
``onelib.hypervisor``, whose argument checks and domain-XML helpers are re-exported here.
"""

from __future__ import annotations

import posixpath
import re

from lxml import etree

from onelib import numbers, xmldoc
from onelib.errors import DriverError
from onelib.hypervisor import deploy_id as deploy_id
from onelib.hypervisor import disk_source as disk_source
from onelib.hypervisor import disk_target as disk_target
from onelib.hypervisor import is_empty_cdrom as is_empty_cdrom
from onelib.hypervisor import is_uuid as is_uuid
from onelib.hypervisor import live_disks as live_disks
from onelib.hypervisor import vm_id as vm_id
from onelib.paths import check_host, clean_path

_TARGET = re.compile(r"(?:hd|sd|vd|xvd)[a-z]{1,3}")
_SAFE_PATH = re.compile(r"[A-Za-z0-9_.+=@,/-]+")
_DISK = re.compile(r"disk\.([0-9]{1,6})")


# --- arguments ----------------------------------------------------------------------------------

def whole(raw: str, what: str, maximum: int = 10**9) -> int:
    return numbers.whole(raw, what, maximum=maximum)


def host(raw: str) -> str:
    return check_host(raw)


def target(raw: str) -> str:
    """A disk target as oned assigns them (``vdb``, ``sdc``, ``hda``)."""
    if not _TARGET.fullmatch(raw):
        raise DriverError(f"disk target {raw!r} is not a device name like vdb, sdc or hda")
    return raw


def safe_path(raw: str, what: str) -> str:
    path = clean_path(raw, what)
    if not _SAFE_PATH.fullmatch(path):
        raise DriverError(f"{what} {raw!r} contains characters a datastore path never has")
    return path


def disk_target_path(raw: str, vm: int, disk: int | None = None) -> str:
    """``<system_dir>/disk.N`` of VM ``vm`` (``.../<ds_id>/<vm_id>/disk.N``)."""
    path = safe_path(raw, "disk path")
    match = _DISK.fullmatch(posixpath.basename(path))
    parts = posixpath.dirname(path).split("/")
    if match is None or len(parts) < 3 or parts[-1] != str(vm) or not numbers.is_whole(parts[-2], 10):
        raise DriverError(f"disk path {raw} is not a disk.N of VM {vm} in a system datastore")
    if disk is not None and int(match.group(1)) != disk:
        raise DriverError(f"disk path {raw} is not disk.{disk}")
    return path


# --- oned's message ----------------------------------------------------------------------------

def parse_message(data: bytes, what: str) -> etree._Element:
    """The driver message, base64 (as local actions get it) or plain XML."""
    raw = data.strip()
    if not raw:
        raise DriverError(f"{what}: empty")
    return xmldoc.parse(raw if raw.startswith(b"<") else xmldoc.decode_b64(raw, what), what)


def message_vm(msg: etree._Element, wanted: int) -> etree._Element:
    """The ``<VM>`` of a ``<VMM_DRIVER_ACTION_DATA>`` (or the document itself), checked to be
    VM ``wanted``."""
    vm = msg if msg.tag == "VM" else msg.find("VM")
    if vm is None:
        raise DriverError(f"the driver message <{msg.tag}> carries no <VM>")
    if xmldoc.text(vm, "ID") != str(wanted):
        raise DriverError(f"the driver message is about VM {xmldoc.text(vm, 'ID')!r}, not VM {wanted}")
    return vm


def message_datastore(msg: etree._Element | None, ds_id: int) -> etree._Element | None:
    """The system datastore document oned put into the message, if it is datastore ``ds_id``."""
    if msg is None:
        return None
    ds = msg.find("DATASTORE")
    if ds is not None and xmldoc.text(ds, "ID") == str(ds_id):
        return ds
    return None


def last_history(vm: etree._Element) -> etree._Element:
    history = vm.findall("HISTORY_RECORDS/HISTORY")
    if not history:
        raise DriverError(f"VM {xmldoc.text(vm, 'ID')} has no history record (not deployed)")
    return history[-1]
