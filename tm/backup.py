"""Full VM backups from one atomic group snapshot: PREBACKUP[_LIVE] and POSTBACKUP[_LIVE].

oned's BACKUP transfer line (6.6+) runs ``prebackup`` (``_live`` when the VM is RUNNING),
then the backup datastore's ``backup`` action, which takes the files from
``system_dir/backup`` on the host, then ``postbackup``. argv of all four:
``host:system_dir disk_ids(colon-separated) deploy_id bjid|- vmid sys_dsid``; stdin: the
plain ``<VM>`` document (the OpenNebula master branch appends ``<BACKUP_RESULT>FAILURE
</BACKUP_RESULT>`` for postbackup after a failed backup; tolerated, base64 is accepted too).

prebackup (what addon-storpool's backup does; full backups only)
  1. deletes what an earlier failed or killed run may have left: this VM's backup snapshots
     (tag ``onebackup`` with ``nvm`` = the VM, or named ``<vol>-ONEBACKUP-<ts>`` after one of
     the VM's volumes and not tagged for another VM), detached everywhere first;
  2. empties the backup directory on the host (partial files of an earlier run) and writes
     ``vm.xml`` there (base64 of the VM document, as OpenNebula's own drivers do, for restores);
  3. takes ONE group snapshot of the listed disks' volumes, ``<vol>-ONEBACKUP-<ts>`` with one
     timestamp, tagged virt/nloc/nvm/onebackup, then tags each snapshot with its ``diskid``.
     ``_live`` freezes the guest's file systems around the group snapshot (libvirt-python's
     fsFreeze/fsThaw of domain DEPLOY_ID on the host's libvirt, ``onelib.hypervisor``) when
     the VM has FEATURES/GUEST_AGENT=yes; an unanswered freeze gives an INFO line and the
     snapshot is taken unfrozen, as snap_create_live does. A failed thaw fails the backup;
  4. per disk, attaches the snapshot read-only to the host, runs ``qemu-img convert -f raw
     -O qcow2 <device> backup/disk.<ID>.0`` there (the source is always read as raw: an image
     header a guest wrote is never interpreted) and detaches it.
  The snapshots stay until postbackup. Any failure removes everything this run made (the
  snapshots, detached everywhere, and the backup directory with partial files) and exits 1
  with one line. SIGTERM (a cancelled job) is handled the same way.
postbackup
  deletes the VM's backup snapshots (detached everywhere first) and removes the backup
  directory. The backup datastore has taken the files by then; a cleanup that fails is
  reported on the VM log (ERROR line) and exits 0, as OpenNebula's ceph driver does: the
  backup itself succeeded, and the next prebackup cleans up whatever was left.

The backup job id (bjid, "-" outside backup jobs) changes nothing: every backup is full.
Disks are read from the system datastore's StorPool cluster (one group snapshot needs one
cluster). ``BACKUP_BASE_PATH`` (configuration; OpenNebula's datastore.conf name, set it to the
same value) moves the files to ``<BACKUP_BASE_PATH>/<vmid>/backup``. BACKUP_TIMEOUT (seconds,
default 6 h) bounds one disk's conversion.

API calls: prebackup 1 (list) + 1 (group snapshot) + N (diskid tags) + 2N (attach, detach)
and 2 per leftover snapshot; postbackup 1 + 2 per snapshot.
"""

from __future__ import annotations

import base64
import contextlib
import posixpath
import re
import signal
import time
from collections.abc import Iterator, Sequence
from types import FrameType

from lxml import etree

from datastore.backend import Volume
from datastore.driver import Driver
from onelib import log, numbers, xmldoc
from onelib.errors import DriverError
from onelib.hostcmd import Host
from onelib.hypervisor import fs_frozen
from onelib.paths import clean_path, split_host_path
from tweaks.record import record

from .common import driver_for, ds_id_arg, vm_disk, vm_id_arg, vm_volumes
from .entry import TmRequest

BACKUP_TAG = "onebackup"
BACKUP_MARK = "-ONEBACKUP-"
DEFAULT_TIMEOUT = 6 * 3600
_DEPLOY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,254}")
_DISK_IDS = re.compile(r"[0-9]{1,6}(:[0-9]{1,6})*")
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9_.+=@,/-]*")  # what a datastore path is made of


@record
class BackupArgs:
    host: str
    system_dir: str
    disk_ids: list[int]
    deploy_id: str
    job_id: str          # "-" outside a backup job
    vm_id: int
    ds_id: int


def plain_path(raw: str, what: str) -> str:
    """An absolute path of plain characters without . or .. components, normalised."""
    if not _PLAIN_PATH.fullmatch(raw) or {".", ".."} & set(raw.split("/")):
        raise DriverError(f"{what} {raw!r} is not a plain absolute path")
    return clean_path(raw, what)


def parse_args(req: TmRequest) -> BackupArgs:
    host, _ = split_host_path(req.arg(0, "host:system_dir"), "system directory")
    system_dir = plain_path(req.arg(0, "host:system_dir").partition(":")[2], "system directory")
    raw_disks = req.arg(1, "disk ids")
    if not _DISK_IDS.fullmatch(raw_disks):
        raise DriverError(f"disk ids {raw_disks!r} are not colon-separated numbers")
    disk_ids = list(dict.fromkeys(int(d) for d in raw_disks.split(":")))
    deploy_id = req.arg(2, "deploy id")
    if not _DEPLOY_ID.fullmatch(deploy_id):
        raise DriverError(f"deploy id {deploy_id!r} is not acceptable")
    job_id = req.arg(3, "backup job id")
    if job_id != "-" and not re.fullmatch(r"[0-9]{1,12}", job_id):
        raise DriverError(f"backup job id {job_id!r} is neither a number nor -")
    vm_id, ds_id = vm_id_arg(req.arg(4, "vm id")), ds_id_arg(req.arg(5, "datastore id"))
    if len(req.args) > 6:
        raise DriverError(f"{req.action}: {len(req.args)} arguments, expected 6")
    # oned's system_dir is <DATASTORE_LOCATION>/<sys_dsid>/<vmid>: anything else is refused
    # before a path below it is created or removed
    parent, leaf = posixpath.split(system_dir)
    if leaf != str(vm_id) or posixpath.basename(parent) != str(ds_id):
        raise DriverError(f"system directory {system_dir!r} is not .../{ds_id}/{vm_id}")
    return BackupArgs(host=host, system_dir=system_dir, disk_ids=disk_ids, deploy_id=deploy_id, job_id=job_id,
                      vm_id=vm_id, ds_id=ds_id)


def read_vm(data: bytes, vm_id: int, *, required: bool = True) -> etree._Element | None:
    """The ``<VM>`` on stdin (plain XML as oned sends it, or base64), extra root elements
    after it (``<BACKUP_RESULT>``) allowed; its ID must be ``vm_id``."""
    raw = data.strip()
    if not raw:
        if required:
            raise DriverError("no VM document on stdin")
        return None
    if not raw.startswith(b"<"):
        raw = xmldoc.decode_b64(raw, "VM document on stdin").strip()
    raw = re.sub(rb"^<\?xml[^>]*\?>", b"", raw).strip()
    if raw.startswith(b"<!"):
        raise DriverError("VM document on stdin: a DOCTYPE is not accepted")
    root = xmldoc.parse(b"<STDIN>" + raw + b"</STDIN>", "VM document on stdin")
    vm = root.find("VM")
    if vm is None:
        raise DriverError("stdin carries no <VM> document")
    found = xmldoc.text(vm, "ID")
    if found != str(vm_id):
        raise DriverError(f"stdin carries the document of VM {found or '?'}, not of VM {vm_id}")
    return vm


def backup_dirs(drv: Driver, args: BackupArgs) -> tuple[str, str]:
    """(directory the files go to, directory postbackup removes)."""
    base = drv.config.get("BACKUP_BASE_PATH").strip()
    if base:
        vm_base = posixpath.join(plain_path(base, "BACKUP_BASE_PATH"), str(args.vm_id))
        return posixpath.join(vm_base, "backup"), vm_base
    backup = posixpath.join(args.system_dir, "backup")
    return backup, backup


def _lock_name(drv: Driver, vm_id: int) -> str:
    return f"{drv.names.vm_prefix(vm_id)}ONEBACKUP"


def is_backup_snapshot(snap: Volume, drv: Driver, vm_id: int, volumes: Sequence[str]) -> bool:
    """A backup snapshot of this VM: tagged by this driver, or addon-storpool's name after
    one of the VM's volumes (unless tagged for another VM)."""
    tags = snap.tags
    if BACKUP_TAG in tags and tags.get("nvm") == str(vm_id) and tags.get("nloc") == drv.names.px:
        return True
    if tags.get("nvm", str(vm_id)) != str(vm_id):
        return False
    for volume in volumes:
        stamp = snap.name.removeprefix(volume + BACKUP_MARK)
        if stamp != snap.name and numbers.is_whole(stamp):
            return True
    return False


def _snapshots(drv: Driver, volumes: Sequence[str]) -> list[Volume]:
    """Snapshots of every volume named like ours (one API call); qualified names (pool/name)
    are listed per pool of ``volumes``, since a VM's disks may be in several pools."""
    if not drv.names.qualified:
        return drv.backend.snapshots(f"{drv.names.px}-")
    pools = sorted({volume.split("/", 1)[0] for volume in volumes if "/" in volume})
    return [s for pool in pools for s in drv.backend.snapshots(f"{pool}/{drv.names.px}-")]


def backup_snapshots(drv: Driver, vm_id: int, volumes: Sequence[str]) -> list[str]:
    """Names of this VM's backup snapshots (one API call; per pool for qualified names)."""
    return sorted(s.name for s in _snapshots(drv, volumes) if is_backup_snapshot(s, drv, vm_id, volumes))


@contextlib.contextmanager
def _locks(drv: Driver, names: Sequence[str]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for name in sorted(set(names)):
            stack.enter_context(drv.lock(name))
        yield


class _Terminated(DriverError):
    pass


def _on_term(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the rollback runs to its end
    raise _Terminated("backup cancelled (SIGTERM)")


# ----------------------------------------------------------------------------------------------
# prebackup


def prebackup(req: TmRequest) -> None:
    args = parse_args(req)
    live = req.action.endswith("_live")
    vm = read_vm(req.stdin, args.vm_id)
    assert vm is not None
    drv = driver_for(req.driver, args.ds_id)
    kept = vm_volumes(drv, vm, args.vm_id)
    by_id = {disk.disk_id: name for disk, name in kept}
    targets: list[tuple[int, str]] = []
    for wanted in args.disk_ids:
        if wanted not in by_id:
            vm_disk(vm, wanted)  # "the VM has no disk N" when it has none
            raise DriverError(f"disk {wanted} of VM {args.vm_id} is not kept by the {drv.driver} driver")
        targets.append((wanted, by_id[wanted]))
    host = drv.host(args.host)
    shell = drv.shell(args.host)
    backup_dir, clean_dir = backup_dirs(drv, args)
    timeout = float(drv.config.integer("BACKUP_TIMEOUT", 1) or DEFAULT_TIMEOUT)
    freeze = live and xmldoc.text(vm, "TEMPLATE/FEATURES/GUEST_AGENT").lower() == "yes"
    all_volumes = [name for _, name in kept]

    previous = signal.signal(signal.SIGTERM, _on_term)
    try:
        with drv.lock(_lock_name(drv, args.vm_id)):
            for stale in backup_snapshots(drv, args.vm_id, all_volumes):
                drv.backend.delete(stale, snapshot=True)
            stamp = int(time.time())
            pairs = [(volume, drv.names.backup_snapshot(volume, stamp)) for _, volume in targets]
            made: list[str] | None = []  # None: the group snapshot's outcome is unknown
            try:
                # one ssh round trip: an empty backup directory (whatever an earlier run left
                # is gone) holding vm.xml; the script is fixed, the paths are its arguments
                shell.run(["sh", "-c", 'rm -rf -- "$1" && mkdir -p -- "$2" && cat > "$2/vm.xml"', "sh",
                           clean_dir, backup_dir], input=base64.encodebytes(etree.tostring(vm)))
                with _locks(drv, [volume for volume, _ in pairs]):
                    made = None
                    _group_snapshot(drv, args, pairs, stamp, freeze)
                    made = [snap for _, snap in pairs]
                for (disk_id, _), (_, snap) in zip(targets, pairs, strict=True):
                    drv.backend.set_tags(snap, {"diskid": str(disk_id)}, snapshot=True)
                for (disk_id, _), (_, snap) in zip(targets, pairs, strict=True):
                    # a failed copy leaves the detach to the rollback (it deletes the snapshot)
                    device = drv.backend.attach(snap, host, snapshot=True)
                    shell.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", device,
                               posixpath.join(backup_dir, f"disk.{disk_id}.0")], timeout=timeout)
                    drv.backend.detach(snap, host, snapshot=True)
            except BaseException as exc:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                _rollback(drv, shell, args, pairs, stamp, made, clean_dir)
                if isinstance(exc, DriverError):
                    raise DriverError(f"backup of VM {args.vm_id} failed: {exc}") from None
                raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _group_snapshot(drv: Driver, args: BackupArgs, pairs: Sequence[tuple[str, str]], stamp: int,
                    freeze: bool) -> None:
    tags = {"virt": "one", "nloc": drv.names.px, "nvm": str(args.vm_id), BACKUP_TAG: str(stamp)}
    if not freeze:
        drv.backend.group_snapshot(pairs, tags=tags)
        return
    with fs_frozen(drv.config, args.host, args.deploy_id) as state:
        if not state.frozen:
            log.vm_log(args.vm_id, f"guest file systems not frozen ({state.why_not}); "
                       "backup snapshot taken without freeze", severity="INFO")
        drv.backend.group_snapshot(pairs, tags=tags)
    if state.thaw_error:
        raise DriverError(f"{state.thaw_error}: the guest's file systems may still be frozen")


def _rollback(drv: Driver, shell: Host, args: BackupArgs, pairs: Sequence[tuple[str, str]], stamp: int,
              made: list[str] | None, clean_dir: str) -> None:
    """Remove what this run made; every step is tried, failures only logged."""
    names = made
    if names is None:  # the group snapshot failed or its reply was lost: ours carry our stamp
        wanted = {snap for _, snap in pairs}
        try:
            names = [s.name for s in _snapshots(drv, [volume for volume, _ in pairs]) if s.name in wanted
                     and s.tags.get(BACKUP_TAG) == str(stamp) and s.tags.get("nvm") == str(args.vm_id)]
        except DriverError as exc:
            log.error(f"rollback: cannot list snapshots: {exc}")
            names = []
    for name in names:
        try:
            drv.backend.delete(name, snapshot=True)
        except DriverError as exc:
            log.error(f"rollback: cannot delete snapshot {name}: {exc}")
    try:
        shell.run(["rm", "-rf", "--", clean_dir])
    except DriverError as exc:
        log.error(f"rollback: cannot remove {args.host}:{clean_dir}: {exc}")


# ----------------------------------------------------------------------------------------------
# postbackup


def postbackup(req: TmRequest) -> None:
    args = parse_args(req)
    vm = read_vm(req.stdin, args.vm_id, required=False)
    drv = driver_for(req.driver, args.ds_id)
    volumes = [name for _, name in vm_volumes(drv, vm, args.vm_id)] if vm is not None else []
    _, clean_dir = backup_dirs(drv, args)
    problems: list[str] = []
    with drv.lock(_lock_name(drv, args.vm_id)):
        try:
            for name in backup_snapshots(drv, args.vm_id, volumes):
                drv.backend.delete(name, snapshot=True)
        except DriverError as exc:
            problems.append(str(exc))
        try:
            drv.shell(args.host).run(["rm", "-rf", "--", clean_dir])
        except DriverError as exc:
            problems.append(str(exc))
    if problems:
        log.vm_log(args.vm_id, f"backup cleanup incomplete ({'; '.join(problems)}); the next backup of the VM "
                   "cleans up", severity="ERROR")


def run(req: TmRequest) -> None:
    if req.action.startswith("prebackup"):
        prebackup(req)
    else:
        postbackup(req)
