"""The VM checkpoint's call and its volume: what the checkpoint override
(``vmm.checkpoint``) and the block drivers' ``tm/<driver>/pre*/post*`` actions share, kept
below both so that neither imports the other.

The call: oned's SAVE argv ``<deploy_id> <checkpoint_file> <host> <vmid> <host>`` or
RESTORE argv ``<checkpoint_file> <host> <deploy_id> <vmid> <host>`` and the base64 driver
message (VMM_DRIVER_ACTION_DATA: the VM and the system DATASTORE) on stdin.

The volume (``CheckpointVolume``, used by tm/<driver>/pre*/post*):
``<ONE_PX>-sys-<VM>-rawcheckpoint`` (addon-storpool's name, tags type=CHKPNT) in the system
datastore's template, sized ``ceil(MEMORY * CHECKPOINT_MARGIN) + 8`` MiB (MEMORY_MAX if
larger; the 8 MiB hold libvirt's header with the domain XML and device state), attached
read-write to the host and linked as the checkpoint file.
"""

from __future__ import annotations

import base64
import math
import re
import subprocess

from lxml import etree

from datastore.driver import Driver
from datastore.naming import TYPE_CHECKPOINT, tags
from onelib import log, numbers, xmldoc
from onelib.config import Config
from onelib.errors import Conflict, DriverError, NotFound
from onelib.hypervisor import deploy_id, vm_id
from onelib.paths import check_host, clean_path
from tweaks.record import record

SAVE, RESTORE = "save", "restore"
HEADER_MIB = 8
MAX_MEMORY_MIB = 16 * 1024 * 1024  # 16 TiB
MIB = 1024 * 1024

TM_MAD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
SAFE_PATH = re.compile(r"[A-Za-z0-9_.+=@,/-]+")
_OFF = ("0", "no", "false", "off")


# --- the call: argv and driver message, shared by both halves ------------------------------------

@record
class CheckpointCall:
    kind: str                 # save | restore
    argv: list[str]           # as oned gave it (passed on to the TM actions and stock scripts)
    deploy_id: str
    file: str                 # the checkpoint file on the host
    host: str
    vm_id: int
    message: etree._Element   # VMM_DRIVER_ACTION_DATA
    payload: bytes            # the message in base64, as TM actions get it on stdin

    @property
    def vm(self) -> etree._Element:
        found = self.message.find("VM")
        assert found is not None  # checked by parse_call
        return found

    @property
    def datastore(self) -> etree._Element | None:
        return self.message.find("DATASTORE")

    def _history(self, field: str) -> str:
        records = self.vm.findall("HISTORY_RECORDS/HISTORY")
        return xmldoc.text(records[-1], field) if records else ""

    @property
    def tm_mad(self) -> str:
        value = xmldoc.text(self.datastore, "TM_MAD") or self._history("TM_MAD")
        if not value:
            raise DriverError(f"VM {self.vm_id}: the driver message names no system datastore TM_MAD")
        if not TM_MAD.fullmatch(value):
            raise DriverError(f"system datastore TM_MAD {value!r} is not a driver name")
        return value

    @property
    def ds_id(self) -> int:
        for raw in (xmldoc.text(self.datastore, "ID"), self._history("DS_ID"), self.file.split("/")[-3]):
            if numbers.is_whole(raw, 9):
                return int(raw)
        raise DriverError(f"VM {self.vm_id}: no system datastore id in the driver message")

    @property
    def memory_mib(self) -> int:
        template = self.vm.find("TEMPLATE")
        memory = xmldoc.integer(template, "MEMORY", f"VM {self.vm_id} template")
        most = max(memory, xmldoc.integer(template, "MEMORY_MAX", f"VM {self.vm_id} template", default=0))
        if not 0 < most <= MAX_MEMORY_MIB:
            raise DriverError(f"VM {self.vm_id}: MEMORY {most} MiB is out of range")
        return most


def parse_call(kind: str, args: list[str], stdin: bytes) -> CheckpointCall:
    """The save (``deploy_id file host vmid host``) or restore (``file host deploy_id vmid
    host``) argv and the driver message on stdin (base64, plain XML accepted)."""

    def arg(index: int, what: str) -> str:
        try:
            return args[index]
        except IndexError:
            raise DriverError(f"{kind}: missing argument {index + 1} ({what})") from None

    if kind == SAVE:
        raw_id, raw_file, raw_host = arg(0, "deploy id"), arg(1, "checkpoint file"), arg(2, "host")
    else:
        raw_file, raw_host, raw_id = arg(0, "checkpoint file"), arg(1, "host"), arg(2, "deploy id")
    vm = vm_id(arg(3, "vm id"))
    path = checkpoint_path(raw_file, vm)
    data = stdin.strip()
    if data.startswith(b"<"):
        message, payload = xmldoc.parse(data, "driver message on stdin"), None
    else:
        message, payload = xmldoc.parse_b64(data, "driver message on stdin"), data
    if message.tag != "VMM_DRIVER_ACTION_DATA" or message.find("VM") is None:
        raise DriverError(f"the document on stdin is <{message.tag}>, not a VMM driver message with a VM")
    found = xmldoc.text(message, "VM/ID")
    if found != str(vm):
        raise DriverError(f"the driver message is about VM {found!r}, not VM {vm}")
    return CheckpointCall(kind=kind, argv=list(args), deploy_id=deploy_id(raw_id), file=path,
                          host=check_host(raw_host), vm_id=vm, message=message,
                          payload=payload if payload is not None else base64.b64encode(data))


def parse_any(args: list[str], stdin: bytes) -> CheckpointCall:
    """A TM action's call: the save or the restore argv, told apart by where the checkpoint
    path is (a deploy id never starts with "/"); postrestore also cleans up after a failed save."""
    return parse_call(RESTORE if args[:1] and args[0].startswith("/") else SAVE, args, stdin)


def checkpoint_path(raw: str, vm: int) -> str:
    """``<system_dir>/checkpoint``: an absolute path of plain characters in VM ``vm``'s
    directory of a system datastore (``.../<ds_id>/<vm_id>/<name>``)."""
    path = clean_path(raw, "checkpoint file")
    if not SAFE_PATH.fullmatch(path):
        raise DriverError(f"checkpoint file {raw!r} contains characters a datastore path never has")
    parts = path.split("/")
    if len(parts) < 4 or parts[-2] != str(vm) or not numbers.is_whole(parts[-3], 10):
        raise DriverError(f"checkpoint file {raw!r} is not in VM {vm}'s system datastore directory")
    return path


def checkpoint_size(memory_mib: int, margin: float) -> int:
    """Bytes for a checkpoint of ``memory_mib``: the memory with the margin, rounded up to
    MiB, plus room for libvirt's header."""
    return (math.ceil(memory_mib * margin) + HEADER_MIB) * MIB


def margin(config: Config) -> float:
    raw = config.get("CHECKPOINT_MARGIN", "1.1").strip() or "1.1"
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 1.0 <= value <= 10.0:
        raise DriverError(f"configuration CHECKPOINT_MARGIN={raw!r} is not a number from 1 to 10")
    return value


# --- storage half ------------------------------------------------------------------------------

# The checkpoint file becomes a link to the device; a regular file there (a checkpoint
# written without the block device) is moved aside, never deleted.
_LINK = ('set -e; if [ -f "$2" ] && [ ! -L "$2" ]; then mv -f -- "$2" "$2.$(date +%s)"; fi; '
         'mkdir -p -- "${2%/*}"; ln -sfn -- "$1" "$2"')
_UNLINK = '[ ! -L "$1" ] || rm -f -- "$1"'


class CheckpointVolume:
    """The checkpoint volume of one save/restore call, for tm/<driver>/pre*/post*."""

    def __init__(self, driver: str, call: CheckpointCall) -> None:
        self.call = call
        ds = call.datastore
        if ds is not None and xmldoc.text(ds, "ID") == str(call.ds_id):
            self.drv = Driver(driver, ds)
        else:
            probe = Driver(driver)
            self.drv = Driver(driver, probe.oned.datastore(call.ds_id), oned=probe.oned, config=probe.config)
        self.name = self.drv.names.checkpoint(call.vm_id)

    @property
    def enabled(self) -> bool:
        """SP_CHECKPOINT_BD (configuration or the system datastore): 0 keeps checkpoints as
        files (presave makes no volume; an existing one is still used by restore)."""
        return self.drv.config.get("SP_CHECKPOINT_BD", "1").strip().lower() not in _OFF

    def create(self) -> None:
        """presave: make (or, on a re-run, find) the volume, attach it, link the file.
        Calls: create (1) + attach (1); a re-run: get (1), resize if it is too small."""
        if not self.enabled or self.network:
            return   # a network backend keeps the checkpoint as a file until postsave
        drv, call = self.drv, self.call
        size = checkpoint_size(call.memory_mib, margin(drv.config))
        with drv.lock(self.name):
            created = False
            try:
                drv.backend.create(self.name, size, placement=drv.placement(call.ds_id),
                                   tags=tags(drv.names, vm_id=call.vm_id, kind=TYPE_CHECKPOINT,
                                             ds_id=call.ds_id))
                created = True
            except Conflict:
                self._reuse(size)
            try:
                self._attach_and_link()
            except BaseException:
                if created:
                    drv.backend.delete(self.name)
                raise

    @property
    def network(self) -> bool:
        """The backend's volumes are network disks (rbd): no device on the host to save into;
        the checkpoint file is copied into a volume after the save and back before the restore
        (through the front-end: the hosts need no storage credentials)."""
        return self.drv.backend_class.disk_form == "network"

    def _store(self) -> None:
        """postsave (network): the host's checkpoint file into the volume, then the file goes."""
        drv, call = self.drv, self.call
        shell = drv.shell(call.host)
        size = int(shell.output(["stat", "-c", "%s", "--", call.file]).strip() or 0)
        backend = drv.backend
        with subprocess.Popen(shell.command(["cat", "--", call.file]), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) as proc:
            assert proc.stdout is not None
            try:
                backend.write_stream(self.name, size, proc.stdout, placement=drv.placement(call.ds_id),
                                     tags=tags(drv.names, vm_id=call.vm_id, kind=TYPE_CHECKPOINT, ds_id=call.ds_id))
            except Conflict:
                proc.kill()
                found = backend.get(self.name)
                if found is None or found.tags.get("nvm") != str(call.vm_id) or found.size != max(size, 1):
                    raise DriverError(f"{self.name} already exists and is not VM {call.vm_id}'s checkpoint") from None
        shell.run(["rm", "-f", "--", call.file])

    def _fetch(self) -> None:
        """prerestore (network): the volume back into the host's checkpoint file."""
        drv, call = self.drv, self.call
        shell = drv.shell(call.host)
        if drv.backend.get(self.name) is None:
            log.info(f"VM {call.vm_id}: no checkpoint volume {self.name}: the checkpoint is a file")
            return
        write = 'set -e; mkdir -p -- "$(dirname -- "$1")"; cat > "$1.part"; mv -f -- "$1.part" "$1"'
        with subprocess.Popen(shell.command(["sh", "-c", write, "sh", call.file]), stdin=subprocess.PIPE,
                              stderr=subprocess.PIPE) as proc:
            assert proc.stdin is not None
            try:
                drv.backend.read_stream(self.name, proc.stdin)
            finally:
                proc.stdin.close()
            err = proc.stderr.read() if proc.stderr else b""
            if proc.wait() != 0:
                why = err.decode(errors="replace").strip()[-200:]
                raise DriverError(f"{call.host}: cannot write {call.file}: {why}")

    def _reuse(self, size: int) -> None:
        found = self.drv.backend.get(self.name)
        if found is None or found.snapshot:
            raise DriverError(f"{self.name} exists and is not a volume")
        owner = found.tags.get("nvm", str(self.call.vm_id))
        if owner != str(self.call.vm_id):
            raise DriverError(f"{self.name} already exists and belongs to VM {owner}")
        if found.size < size:
            self.drv.backend.resize(self.name, size)
        log.info(f"VM {self.call.vm_id}: reusing checkpoint volume {self.name}")

    def _attach_and_link(self) -> None:
        device = self.drv.backend.attach(self.name, self.drv.host(self.call.host))
        self.drv.shell(self.call.host).run(["sh", "-c", _LINK, "sh", device, self.call.file])

    def attach(self) -> None:
        """prerestore: attach an existing checkpoint volume (on this or a new host) and link
        the file; no volume (a checkpoint saved as a file) is fine. Calls: attach (1)."""
        with self.drv.lock(self.name):
            if self.network:
                self._fetch()
                return
            try:
                self._attach_and_link()
            except NotFound:
                log.info(f"VM {self.call.vm_id}: no checkpoint volume {self.name}: the checkpoint is a file")

    def release(self) -> None:
        """postsave: detach the volume from the host and drop the link; the volume (the
        VM's memory) stays. Calls: detach (1)."""
        with self.drv.lock(self.name):
            if self.network:
                if self.enabled:
                    self._store()
                return
            self.drv.backend.detach(self.name, self.drv.host(self.call.host), force=True)
            self.drv.shell(self.call.host).run(["sh", "-c", _UNLINK, "sh", self.call.file])

    def discard(self) -> None:
        """postrestore (and a failed save): remove the checkpoint file or link, delete the
        volume (at once: a checkpoint never goes to the trash). Calls: delete (2)."""
        with self.drv.lock(self.name):
            self.drv.shell(self.call.host).run(["rm", "-f", "--", self.call.file])
            self.drv.backend.delete(self.name)
