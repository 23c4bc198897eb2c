"""The VM checkpoint on a block device (suspend, stop, cold migration): the VMM half.

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
  around libvirt's save of the domain into the checkpoint file (``restore`` from it) on the
  host (libvirt-python through ``onelib.hypervisor``, as ``virsh save``/``restore``). Restore
  reads the image's domain (``save-image-dumpxml``) and, when the VM directory is another path on this host (hosts
  with their own DATASTORE_LOCATION), restores with that XML relocated, as the
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

The call's parsing and the storage half (``CheckpointVolume``, used by tm/<driver>/pre*/post*)
are ``datastore.checkpoint``.
"""


from __future__ import annotations

import os
import posixpath
import subprocess
import sys

from lxml import etree

from datastore.checkpoint import RESTORE, SAVE, TM_MAD, CheckpointCall, parse_call
from onelib import log
from onelib.config import Config
from onelib.errors import DriverError
from onelib.hypervisor import LIVE_STATES, LONG_TIMEOUT, Hypervisor, forward, last_line, metadata_dir, relocate

from . import rulecheck

MAGIC = b"LibvirtQemudSave"
PARTIAL = b"LibvirtQemudPart"


# --- VMM half ----------------------------------------------------------------------------------

def remotes_dir() -> str:
    """The remotes directory this override runs from (``<remotes>/vmm/<mad>/<action>``)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(sys.argv[0]))))


def vmm_mad() -> str:
    name = os.path.basename(os.path.dirname(os.path.abspath(sys.argv[0])))
    return name if TM_MAD.fullmatch(name) else "kvm"


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
                                  capture_output=True, check=False, timeout=LONG_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise DriverError(f"{where}: no answer within {LONG_TIMEOUT:.0f} s") from None
        except OSError as exc:
            raise DriverError(f"{where}: cannot run it: {exc.strerror}") from None
        if proc.returncode != 0:
            raise DriverError(f"{where}: {last_line(proc.stderr)}")
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


def _block_call(kind: str, args: list[str], stdin: bytes) -> tuple[CheckpointCall, Hooks, Hypervisor] | None:
    """The call, its driver's hooks and the host, when the system datastore is a block
    driver; otherwise the stock script has run and there is nothing more to do (None)."""
    call = parse_call(kind, args, stdin)
    config = Config.load()
    hooks = Hooks(call, remotes_dir())
    if not hooks.block:
        stock(config, call)
        return None
    hooks.require()
    return call, hooks, Hypervisor(config, call.host)


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


def _save_domain(hv: Hypervisor, call: CheckpointCall) -> None:
    state = hv.state(call.deploy_id)
    if state is None:
        if hv.head(call.file, len(MAGIC)) == MAGIC:
            log.info(f"VM {call.vm_id}: {call.deploy_id} already saved to {call.file} on {call.host}")
            return
        raise DriverError(f"domain {call.deploy_id} is not on {call.host}: nothing to save")
    try:
        hv.domain(call.deploy_id).save(call.file)
    except DriverError:
        if not _saved(hv, call):
            raise
    log.info(f"VM {call.vm_id}: {call.deploy_id} saved to {call.file} on {call.host}")


def _saved(hv: Hypervisor, call: CheckpointCall) -> bool | None:
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


def _restore_domain(hv: Hypervisor, call: CheckpointCall) -> None:
    head = hv.head(call.file, len(MAGIC))
    if head != MAGIC:
        what = "an incomplete libvirt save image" if head == PARTIAL else "no libvirt save image"
        raise DriverError(f"checkpoint {call.file} on {call.host} holds {what}")
    image = hv.save_image_xml(call.file)
    # the saved domain against today's rules: a warning line, never a failure
    rulecheck.warn_if_differs(image, call.vm, call.vm_id, "restore-tweaks")
    xml = None
    new_dir = posixpath.dirname(call.file)
    if relocate(image, metadata_dir(image), new_dir):
        xml = etree.tostring(image)
        log.info(f"VM {call.vm_id}: restoring with the VM directory moved to {new_dir}")
    try:
        hv.restore(call.file, xml)
    except DriverError:
        if not _restored(hv, call):
            raise
    log.info(f"VM {call.vm_id}: {call.deploy_id} restored from {call.file} on {call.host}")


def _restored(hv: Hypervisor, call: CheckpointCall) -> bool | None:
    try:
        return hv.state(call.deploy_id) in LIVE_STATES
    except DriverError:
        return None


def stock(config: Config, call: CheckpointCall) -> None:
    """What oned runs without the override: the remote ``vmm/<mad>/<kind>`` with the same
    argv and the plain driver message on stdin."""
    forward(config, call.host, call.kind, call.argv, etree.tostring(call.message), mad=vmm_mad(), long=True)
