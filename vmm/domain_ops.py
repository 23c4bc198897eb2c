"""What the disk and snapshot overrides share: checked arguments, oned's driver message,
the host's shell, ``virsh`` on the host and the live domain's disks.

Every value that reaches a host command comes from here checked (deploy ids, disk
targets, paths); commands are argument lists that ``onelib.hostcmd`` quotes, and XML
for libvirt is built with lxml and sent on stdin (``virsh ... /dev/stdin``), never
written into a shell string.
"""

from __future__ import annotations

import posixpath
import re

from lxml import etree

from onelib import numbers, xmldoc
from onelib.config import Config
from onelib.errors import DriverError, NotFound
from onelib.hostcmd import Host
from onelib.oned import Oned
from onelib.paths import check_host, clean_path

DEFAULT_URI = "qemu:///system"
DEFAULT_DS_LOCATION = "/var/lib/one//datastores"
DEFAULT_REMOTE_DIR = "/var/tmp/one"

_DEPLOY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_TARGET = re.compile(r"(?:hd|sd|vd|xvd)[a-z]{1,3}")
_SAFE_PATH = re.compile(r"[A-Za-z0-9_.+=@,/-]+")
_DISK = re.compile(r"disk\.([0-9]{1,6})")


# --- arguments ----------------------------------------------------------------------------------

def deploy_id(raw: str) -> str:
    """A libvirt domain name or UUID as oned passes it (``one-42`` or a UUID)."""
    if not _DEPLOY_ID.fullmatch(raw):
        raise DriverError(f"deploy id {raw!r} is not a libvirt domain name or UUID")
    return raw


def is_uuid(raw: str) -> bool:
    return bool(_UUID.fullmatch(raw))


def vm_id(raw: str) -> int:
    return numbers.object_id(raw, "VM id")


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


# --- hosts -----------------------------------------------------------------------------------

def shell(config: Config, name: str) -> Host:
    ssh = config.ssh_command()
    return Host(name, ssh=ssh, timeout=float(config.integer("HOST_TIMEOUT") or 600))


def ds_location(oned: Oned, host_name: str, config: Config) -> str:
    """DATASTORE_LOCATION on ``host_name``: the host's own attribute, the configuration,
    OpenNebula's default (as deploy-tweaks finds it)."""
    doc = oned.host_by_name(host_name)
    location = xmldoc.text(doc, "TEMPLATE/DATASTORE_LOCATION") if doc is not None else ""
    return location or config.get("DATASTORE_LOCATION") or DEFAULT_DS_LOCATION


def system_dir(oned: Oned, host_name: str, config: Config, ds_id: int, vm: int) -> str:
    return safe_path(f"{ds_location(oned, host_name, config)}/{ds_id}/{vm}", "VM directory")


def forward(config: Config, host_name: str, script: str, args: list[str], stdin: bytes) -> str:
    """Run OpenNebula's own remote ``vmm/kvm/<script>`` on the host with the same argv and
    the plain (decoded) driver message on stdin, for what these overrides leave to it."""
    remote_dir = config.get("SCRIPTS_REMOTE_DIR") or DEFAULT_REMOTE_DIR
    path = posixpath.join(remote_dir, "vmm", "kvm", script)
    return shell(config, host_name).output([path, *args], input=stdin)


# --- libvirt on the host -------------------------------------------------------------------------

class Domain:
    """A libvirt domain on a host, driven with ``virsh`` over ssh."""

    def __init__(self, config: Config, host_name: str, name: str) -> None:
        self.shell = shell(config, host_name)
        self.uri = config.get("LIBVIRT_URI") or DEFAULT_URI
        self.name = name
        self.host = host_name

    def virsh(self, *args: str, input: bytes | None = None, check: bool = True,
              timeout: float | None = None) -> tuple[int, str, str]:
        proc = self.shell.run(["virsh", "--connect", self.uri, *args], input=input, check=False,
                              timeout=timeout)
        out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
        if check and proc.returncode != 0:
            raise DriverError(f"{self.host}: virsh {args[0]} {self.name}: {last_line(err)}")
        return proc.returncode, out, err

    def info(self) -> dict[str, str] | None:
        """``virsh dominfo`` as a dict (``UUID``, ``State``, ...); None when there is no such domain."""
        code, out, err = self.virsh("dominfo", self.name, check=False)
        if code != 0:
            if "failed to get domain" in err.lower() or "domain not found" in err.lower():
                return None
            raise DriverError(f"{self.host}: virsh dominfo {self.name}: {last_line(err)}")
        fields = {}
        for line in out.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        return fields

    def xml(self) -> etree._Element:
        """The live definition (what qemu runs)."""
        _, out, _ = self.virsh("dumpxml", self.name)
        return xmldoc.parse(out.encode(), f"live XML of {self.name}")

    def require(self) -> etree._Element:
        """The live definition; a one-line error if the domain does not run there."""
        code, out, err = self.virsh("dumpxml", self.name, check=False)
        if code != 0:
            if "failed to get domain" in err.lower() or "domain not found" in err.lower():
                raise NotFound(f"no domain {self.name} on {self.host}")
            raise DriverError(f"{self.host}: virsh dumpxml {self.name}: {last_line(err)}")
        return xmldoc.parse(out.encode(), f"live XML of {self.name}")


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return "no error output"
    return lines[-1].removeprefix("error: ")[:300]


def disk_source(disk: etree._Element) -> str:
    """The disk's source path, slashes collapsed as in the paths the actions are given
    (oned writes ``/var/lib/one//datastores/...`` into deployment files)."""
    source = disk.find("source")
    if source is None:
        return ""
    return re.sub(r"/{2,}", "/", source.get("dev") or source.get("file") or "")


def disk_target(disk: etree._Element) -> str:
    tgt = disk.find("target")
    return (tgt.get("dev") or "") if tgt is not None else ""


def live_disks(domain: etree._Element) -> list[etree._Element]:
    return list(domain.iterfind("devices/disk"))


def is_empty_cdrom(disk: etree._Element) -> bool:
    """A CD-ROM drive with no medium (the persistent_cdrom tweak's slots, or an ejected one)."""
    if disk.get("device") != "cdrom":
        return False
    source = disk.find("source")
    return source is None or not any(source.get(a) for a in ("dev", "file", "name", "volume", "pool"))
