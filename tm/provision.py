"""Making a VM disk available on a host: the shared core of clone, ln, mkimage and mkswap.

Re-runnable: if a crash left the volume behind, a second run finds it (tagged for this
VM and disk) and carries on; a volume of that name that belongs to something else is
never touched. A failure after this run created the volume deletes it again.
"""

from __future__ import annotations

import re

from datastore.driver import Driver
from datastore.naming import Names, tags, user_tags
from onelib.errors import Conflict, DriverError
from onelib.hostcmd import Host

from .common import DiskPath, VmDisk, link, system_ds_of

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
_QUALIFIED = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,99}/[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
MKFS = {"ext2": ["mkfs.ext2", "-F", "-q"], "ext3": ["mkfs.ext3", "-F", "-q"], "ext4": ["mkfs.ext4", "-F", "-q"],
        "xfs": ["mkfs.xfs", "-f", "-q"], "vfat": ["mkfs.vfat"], "btrfs": ["mkfs.btrfs", "-f", "-q"]}


def volume_name(raw: str, names: Names | None = None) -> str:
    """The volume a transfer line's ``[host:]SOURCE`` names (``names``: in that driver's
    SOURCE form, e.g. LINSTOR's ``/dev/drbd/by-res/<res>/0``)."""
    name = raw.rpartition(":")[2] if ":" in raw else raw
    if names is not None:
        name = names.source_volume(name)
    pattern = _QUALIFIED if names is not None and names.qualified else _NAME
    if not pattern.fullmatch(name):
        raise DriverError(f"volume name {raw!r} is not acceptable")
    return name


def provision(drv: Driver, disk: VmDisk, dst: DiskPath, vm_id: int, *, placement: str, size: int,
              mode: str, source: str = "") -> str:
    """``mode``: "clone" (from ``source``), "create" (empty; mkfs/mkswap as the disk says) or
    "attach" (an existing volume). Returns the device path linked as ``disk.N``."""
    backend = drv.backend
    name = disk.volume(drv.names, vm_id)
    host = drv.host(dst.host)
    shell = drv.shell(dst.host)
    readonly = disk.attach_readonly
    ds_id = system_ds_of(dst.vm_dir)
    with drv.lock(name):
        created = False
        if mode == "attach":
            own = user_tags(drv.names, vm_id, ds_id, disk.disk_id)
            if own:  # addon-linstor_un marks the image with the VM using it
                backend.set_tags(name, own)
        if mode in ("clone", "create"):
            wanted_tags = tags(drv.names, vm_id=vm_id, kind=disk.type_tag, disk_id=disk.disk_id, ds_id=ds_id)
            try:
                if mode == "clone":
                    backend.clone(volume_name(source, drv.names), name, placement=placement, tags=wanted_tags,
                                  size=size or None, from_snapshot=False)
                else:
                    backend.create(name, size, placement=placement, tags=wanted_tags)
                created = True
            except Conflict:
                _check_ours(drv, name, vm_id, disk.disk_id)
        try:
            device = backend.attach(name, host, readonly=readonly)
            if backend.disk_form == "network":
                # qemu opens the volume itself: no device, no disk.N link on the host; a new
                # volatile disk is formatted on the front-end (a crash before that leaves it
                # blank: the re-run finds it and does not format it)
                if mode == "create" and created and (disk.swap or disk.fs):
                    _format_network(drv, device, disk, size, name)
            else:
                if mode == "create" and (created or _blank(shell, device)):
                    _format(shell, device, disk)
                link(shell, dst.path, device)
        except BaseException:
            if created:
                backend.delete(name)
            raise
    return device


def _check_ours(drv: Driver, name: str, vm_id: int, disk_id: int) -> None:
    found = drv.backend.get(name)
    if found is None or found.tags.get("nvm") != str(vm_id) or found.tags.get("diskid") != str(disk_id):
        raise DriverError(f"volume {name} already exists and is not this VM's disk {disk_id}")


_PROBE = '[ -b "$1" ] || { echo "$1 is not a block device" >&2; exit 3; }; exec blkid -p -o value -s TYPE -- "$1"'


def _blank(shell: Host, device: str) -> bool:
    """No file system or swap signature on ``device`` (a re-run after a crash between
    create and format formats it; a formatted volume is never formatted again)."""
    probe = shell.run(["sh", "-c", _PROBE, "sh", device], check=False)
    if probe.returncode not in (0, 2):
        raise DriverError(f"blkid {device} failed: {probe.stderr.decode(errors='replace').strip()[-200:]}")
    return probe.returncode == 2


def _format_network(drv: Driver, target: str, disk: VmDisk, size: int, name: str) -> None:
    from datastore import images

    command = ["mkswap", "-f"] if disk.swap else MKFS.get(disk.fs.lower())
    if command is None:
        raise DriverError(f"file system {disk.fs!r} is not supported (use {', '.join(MKFS)})")
    directory = drv.config.get("STAGING_DIR") or "/var/tmp"
    scratch = f"{directory.rstrip('/')}/{name.replace('/', '_')}.mkfs"
    images.format_into(Host(""), command, target, size, scratch)


def _format(shell: Host, device: str, disk: VmDisk) -> None:
    if disk.swap:
        shell.run(["mkswap", "-f", device])
    elif disk.fs:
        command = MKFS.get(disk.fs.lower())
        if command is None:
            raise DriverError(f"file system {disk.fs!r} is not supported (use {', '.join(MKFS)})")
        shell.run([*command, device])
