"""The VM checkpoint on a block device (suspend, stop, cold migration): both halves.

oned's SAVE runs ``save <deploy_id> <checkpoint_file> <host> <vmid> <host>`` and RESTORE
runs ``restore <checkpoint_file> <host> <deploy_id> <vmid> <host>``; as local overrides
(``-l save=save,restore=restore``, or the seed add-ons' names ``tmsave``/``tmrestore`` and
``save_linstor_un``/``restore_linstor_un``) they get that argv and the base64 driver message
(VMM_DRIVER_ACTION_DATA: the VM and the system DATASTORE) on stdin, on the front-end.

VMM half (``save``, ``restore``): one override for every driver. It dispatches on the system
datastore's TM_MAD (DATASTORE/TM_MAD of the message, else the VM's last history record):

- ``tm/<TM_MAD>/presave``/``postsave`` (``prerestore``/``postrestore``) exist (all four are
  needed; a missing one fails the call before anything is done): they are run
  with the same argv and the base64 message on stdin (addon-storpool's calling convention),
  around ``virsh --connect <LIBVIRT_URI> save <deploy_id> <checkpoint_file>`` (``restore``)
  which the override runs on the host itself over ssh. Restore reads the image's domain
  (``save-image-dumpxml``) and, when the VM directory is another path on this host (hosts
  with their own DATASTORE_LOCATION), restores with that XML relocated (``--xml``), as the
  stock script's sed does. libvirt snapshots are not redefined (the StorPool VM snapshot
  overrides do not use them).
- no such actions (not a block driver): the stock remote ``vmm/<mad>/save`` (``restore``)
  under SCRIPTS_REMOTE_DIR is run over ssh with the same argv and the message decoded (the
  stock script reads plain XML), i.e. exactly what oned runs without the override.

Re-runnable: save on a host where the domain is gone and the checkpoint holds a complete
libvirt image (magic ``LibvirtQemudSave``; libvirt writes ``LibvirtQemudPart`` until the
image is complete) goes straight to postsave; restore of a domain that is already running
there goes straight to postrestore. A save that fails after presave, with the domain still
there (or no complete image), runs ``postrestore`` to remove what presave made; a restore that
fails runs ``postsave`` (detach, unlink) and keeps the checkpoint, which holds the VM's memory.

Storage half (``CheckpointVolume``, used by tm/<driver>/pre*/post*): the volume
``<ONE_PX>-sys-<VM>-rawcheckpoint`` (addon-storpool's name, tags type=CHKPNT) in the system
datastore's template, sized ``ceil(MEMORY * CHECKPOINT_MARGIN) + 8`` MiB (MEMORY_MAX if
larger; the 8 MiB hold libvirt's header with the domain XML and device state), attached
read-write to the host and linked as the checkpoint file.
"""

from __future__ import annotations

import base64
import math
import os
import posixpath
import re
import subprocess
import sys

from lxml import etree

from datastore.driver import Driver
from datastore.naming import TYPE_CHECKPOINT, tags
from onelib import log, numbers, xmldoc
from onelib.config import Config
from onelib.errors import Conflict, DriverError, NotFound
from onelib.paths import check_host, clean_path
from tweaks.record import record

from . import host as hosts
from . import rulecheck

SAVE, RESTORE = "save", "restore"
MAGIC = b"LibvirtQemudSave"
PARTIAL = b"LibvirtQemudPart"
HEADER_MIB = 8
MAX_MEMORY_MIB = 16 * 1024 * 1024  # 16 TiB
MIB = 1024 * 1024
LIVE_STATES = ("running", "paused", "idle", "blocked", "in shutdown", "pmsuspended")

_TM_MAD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_SAFE_PATH = re.compile(r"[A-Za-z0-9_.+=@,/-]+")
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
        if not _TM_MAD.fullmatch(value):
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
    vm = hosts.vm_id(arg(3, "vm id"))
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
    return CheckpointCall(kind=kind, argv=list(args), deploy_id=hosts.deploy_id(raw_id), file=path,
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
    if not _SAFE_PATH.fullmatch(path):
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


# --- VMM half ----------------------------------------------------------------------------------

def remotes_dir() -> str:
    """The remotes directory this override runs from (``<remotes>/vmm/<mad>/<action>``)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(sys.argv[0]))))


def vmm_mad() -> str:
    name = os.path.basename(os.path.dirname(os.path.abspath(sys.argv[0])))
    return name if _TM_MAD.fullmatch(name) else "kvm"


class Hooks:
    """``tm/<TM_MAD>/pre<kind>`` and ``post<kind>`` (and the other kind's, for undoing)."""

    def __init__(self, call: CheckpointCall, remotes: str) -> None:
        self.call = call
        self.dir = os.path.join(remotes, "tm", call.tm_mad)

    def find(self, name: str) -> str | None:
        path = os.path.join(self.dir, name)
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None

    @property
    def block(self) -> bool:
        return any(self.find(f"{when}{self.call.kind}") for when in ("pre", "post"))

    def require(self) -> None:
        """A block driver needs all four hooks (the other kind's undo the failures): a missing
        one fails the call before anything is done, rather than being silently skipped."""
        for name in ("presave", "postsave", "prerestore", "postrestore"):
            if self.find(name) is None:
                raise DriverError(f"tm/{self.call.tm_mad}/{name} is not installed (no executable "
                                  f"{os.path.join(self.dir, name)}): run one-tweaks install")

    def run(self, name: str) -> None:
        path = self.find(name)
        if path is None:
            return
        where = f"tm/{self.call.tm_mad}/{name}"
        try:
            proc = subprocess.run([*_interpreter(path), *self.call.argv], input=self.call.payload,
                                  capture_output=True, check=False, timeout=hosts.LONG_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise DriverError(f"{where}: no answer within {hosts.LONG_TIMEOUT:.0f} s") from None
        except OSError as exc:
            raise DriverError(f"{where}: cannot run it: {exc.strerror}") from None
        if proc.returncode != 0:
            raise DriverError(f"{where}: {hosts.last_line(proc.stderr)}")
        log.info(f"VM {self.call.vm_id}: {where} done")

    def undo(self, name: str) -> None:
        """Run ``name`` to clean up after a failure; its own failure is only logged (the
        first failure is what the operator sees)."""
        try:
            self.run(name)
        except DriverError as exc:
            log.error(f"VM {self.call.vm_id}: cleanup with {name} failed: {exc}")


def _interpreter(path: str) -> list[str]:
    """Python driver scripts run under this interpreter (the one oned started this override
    with, which has the package); anything else by its own ``#!`` line."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline(200)
    except OSError:
        first = b""
    return [sys.executable, path] if first.startswith(b"#!") and b"python" in first else [path]


def _block_call(kind: str, args: list[str], stdin: bytes) -> tuple[CheckpointCall, Hooks, hosts.Hypervisor] | None:
    """The call, its driver's hooks and the host, when the system datastore is a block
    driver; otherwise the stock script has run and there is nothing more to do (None)."""
    call = parse_call(kind, args, stdin)
    config = Config.load()
    hooks = Hooks(call, remotes_dir())
    if not hooks.block:
        stock(config, call)
        return None
    hooks.require()
    return call, hooks, hosts.Hypervisor(config, call.host)


def save(args: list[str], stdin: bytes) -> None:
    block = _block_call(SAVE, args, stdin)
    if block is None:
        return
    call, hooks, hv = block
    hooks.run("presave")
    try:
        _save_domain(hv, call)
    except BaseException:
        if _saved(hv, call) is False:
            hooks.undo("postrestore")  # releases and deletes what presave made
        raise
    hooks.run("postsave")


def _save_domain(hv: hosts.Hypervisor, call: CheckpointCall) -> None:
    state = hv.state(call.deploy_id)
    if state is None:
        if hv.head(call.file, len(MAGIC)) == MAGIC:
            log.info(f"VM {call.vm_id}: {call.deploy_id} already saved to {call.file} on {call.host}")
            return
        raise DriverError(f"domain {call.deploy_id} is not on {call.host}: nothing to save")
    proc = hv.virsh("save", call.deploy_id, call.file, check=False, long=True)
    if proc.returncode != 0 and not _saved(hv, call):
        raise DriverError(f"{call.host}: virsh save failed: {hosts.last_line(proc.stderr)}")
    log.info(f"VM {call.vm_id}: {call.deploy_id} saved to {call.file} on {call.host}")


def _saved(hv: hosts.Hypervisor, call: CheckpointCall) -> bool | None:
    """Did the domain make it into the checkpoint (None: the host cannot tell us)?"""
    try:
        return hv.state(call.deploy_id) is None and hv.head(call.file, len(MAGIC)) == MAGIC
    except DriverError:
        return None


def restore(args: list[str], stdin: bytes) -> None:
    block = _block_call(RESTORE, args, stdin)
    if block is None:
        return
    call, hooks, hv = block
    if hv.state(call.deploy_id) in LIVE_STATES:
        log.info(f"VM {call.vm_id}: {call.deploy_id} already runs on {call.host}: checkpoint no longer needed")
        hooks.run("postrestore")
        return
    hooks.run("prerestore")
    try:
        _restore_domain(hv, call)
    except BaseException:
        if _restored(hv, call) is False:
            hooks.undo("postsave")  # detach and unlink; the checkpoint keeps the VM's memory
        raise
    hooks.run("postrestore")


def _restore_domain(hv: hosts.Hypervisor, call: CheckpointCall) -> None:
    head = hv.head(call.file, len(MAGIC))
    if head != MAGIC:
        what = "an incomplete libvirt save image" if head == PARTIAL else "no libvirt save image"
        raise DriverError(f"checkpoint {call.file} on {call.host} holds {what}")
    image = xmldoc.parse(hv.virsh("save-image-dumpxml", call.file).stdout, f"domain in {call.file}")
    # the saved domain against today's rules: a warning line, never a failure
    rulecheck.warn_if_differs(image, call.vm, call.vm_id, "restore-tweaks")
    xml = None
    new_dir = posixpath.dirname(call.file)
    if hosts.relocate(image, hosts.system_dir(image), new_dir):
        xml = etree.tostring(image)
        log.info(f"VM {call.vm_id}: restoring with the VM directory moved to {new_dir}")
    extra = ["--xml", "/dev/stdin"] if xml is not None else []
    proc = hv.virsh("restore", call.file, *extra, input=xml, check=False, long=True)
    if proc.returncode != 0 and not _restored(hv, call):
        raise DriverError(f"{call.host}: virsh restore failed: {hosts.last_line(proc.stderr)}")
    log.info(f"VM {call.vm_id}: {call.deploy_id} restored from {call.file} on {call.host}")


def _restored(hv: hosts.Hypervisor, call: CheckpointCall) -> bool | None:
    try:
        return hv.state(call.deploy_id) in LIVE_STATES
    except DriverError:
        return None


def stock(config: Config, call: CheckpointCall) -> None:
    """What oned runs without the override: the remote ``vmm/<mad>/<kind>`` with the same
    argv and the plain driver message on stdin."""
    remote_dir = config.get("SCRIPTS_REMOTE_DIR") or hosts.DEFAULT_REMOTE_DIR
    script = clean_path(posixpath.join(remote_dir, "vmm", vmm_mad(), call.kind), "SCRIPTS_REMOTE_DIR")
    if not _SAFE_PATH.fullmatch(script):
        raise DriverError(f"configuration SCRIPTS_REMOTE_DIR={remote_dir!r} is not a plain path")
    shell = hosts.shell(config, call.host)
    proc = shell.run([script, *call.argv], input=etree.tostring(call.message), check=False,
                     timeout=float(config.integer("HOST_TIMEOUT") or hosts.LONG_TIMEOUT))
    if proc.returncode != 0:
        raise DriverError(f"{call.host}: {script} failed: {hosts.last_line(proc.stderr)}")


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
        if not self.enabled:
            return
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
            try:
                self._attach_and_link()
            except NotFound:
                log.info(f"VM {self.call.vm_id}: no checkpoint volume {self.name}: the checkpoint is a file")

    def release(self) -> None:
        """postsave: detach the volume from the host and drop the link; the volume (the
        VM's memory) stays. Calls: detach (1)."""
        with self.drv.lock(self.name):
            self.drv.backend.detach(self.name, self.drv.host(self.call.host), force=True)
            self.drv.shell(self.call.host).run(["sh", "-c", _UNLINK, "sh", self.call.file])

    def discard(self) -> None:
        """postrestore (and a failed save): remove the checkpoint file or link, delete the
        volume (at once: a checkpoint never goes to the trash). Calls: delete (2)."""
        with self.drv.lock(self.name):
            self.drv.shell(self.call.host).run(["rm", "-f", "--", self.call.file])
            self.drv.backend.delete(self.name)
