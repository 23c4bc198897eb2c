"""CONTEXT ``context.sh [FILE[:NAME]...] host:.../disk.N vmid sys_dsid``: the context ISO
on a block volume ``<px>-sys-<VM>-<DISK>-iso``.

The ISO is built on the front-end (genisoimage, volume label CONTEXT, as OpenNebula does),
written into the volume through the host it is attached to, and linked as ``disk.N``.
oned runs this again for restore, NIC hot-plug and updateconf: the same volume is
rewritten (grown first if the ISO outgrew it).
A network backend (``disk_form`` network, e.g. rbd) keeps the ISO as the file ``disk.N`` on
the host, which oned's domain XML names; one whose front-end writes its volumes itself
(``Backend.volume_writes``) also writes it into the volume ``names.context`` names, which
its facts name for the context_network rule (the CD-ROM then reads the volume).

UEFI VMs whose NVRAM lives on a volume (T_OS_NVRAM's volume word, ``os_nvram.VOLUME``: "the
storage driver's NVRAM volume", whichever driver keeps the system datastore) also get the
backend's NVRAM volume here, once (``Backend.make_nvram``, named by the driver's scheme's
``nvram``): 1 MiB with the firmware's VARS template at its end (how OVMF finds it on a larger
device); an existing NVRAM is never overwritten. The os_nvram rule's ``device`` template must
name where it appears on the host. It is deleted with the VM (TM delete of the VM directory).
"""

from __future__ import annotations

import os
import posixpath
import shutil
import subprocess
import tempfile

from lxml import etree

from datastore.driver import Driver
from datastore.naming import TYPE_CONTEXT, TYPE_NVRAM, tags
from onelib import xmldoc
from onelib.errors import Conflict, DriverError
from onelib.paths import clean_path
from tweaks.catalog.os_nvram import VOLUME as NVRAM_VOLUME

from ..common import MIB, DiskPath, disk_path, driver_for, ds_id_arg, fetch_vm, link, vm_id_arg
from ..entry import TmRequest

NVRAM_SIZE = MIB
DEFAULT_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
ISO_TOOLS = ("genisoimage", "mkisofs", "xorrisofs")


def run(req: TmRequest) -> None:
    if len(req.args) < 4:
        raise DriverError("context: expected context.sh [files...] host:path vmid dsid")
    vm_id, ds_id = vm_id_arg(req.args[-2]), ds_id_arg(req.args[-1])
    dst = disk_path(req.args[-3], "destination", vm_id)
    files = req.args[:-3]
    drv = driver_for(req.driver, ds_id)
    vm = fetch_vm(drv, vm_id)
    context_id = xmldoc.text(vm, "TEMPLATE/CONTEXT/DISK_ID")
    if context_id != str(dst.disk_id):
        raise DriverError(f"disk {dst.disk_id} is not VM {vm_id}'s context disk (CONTEXT/DISK_ID={context_id!r})")
    with tempfile.TemporaryDirectory(prefix="one-context-") as tmp:
        iso = build_iso(files, tmp)
        write_context(drv, dst, vm_id, ds_id, iso)
    if wants_nvram_volume(vm):
        ensure_nvram(drv, dst, vm, vm_id, ds_id)


def build_iso(files: list[str], tmp: str) -> str:
    stage = os.path.join(tmp, "iso")
    os.mkdir(stage)
    for spec in files:
        path, _, name = spec.partition(":")
        path = clean_path(path, "context file")
        name = name or os.path.basename(path)
        if not name or "/" in name or name in (".", ".."):
            raise DriverError(f"context file name {name!r} is not acceptable")
        if not os.path.isfile(path):
            raise DriverError(f"context file {path} does not exist")
        shutil.copyfile(path, os.path.join(stage, name))
    tool = next((t for t in ISO_TOOLS if shutil.which(t)), None)
    if tool is None:
        raise DriverError("no ISO tool on the front-end: install genisoimage")
    iso = os.path.join(tmp, "context.iso")
    proc = subprocess.run([tool, "-quiet", "-o", iso, "-V", "CONTEXT", "-J", "-R", stage],
                          capture_output=True, check=False)
    if proc.returncode != 0:
        raise DriverError(f"{tool} failed: {proc.stderr.decode(errors='replace').strip()[-200:]}")
    return iso


_WRITE_FILE = 'set -e; mkdir -p -- "$(dirname -- "$1")"; cat > "$1.tmp"; mv -f -- "$1.tmp" "$1"'


def write_context(drv: Driver, dst: DiskPath, vm_id: int, ds_id: int, iso: str) -> None:
    network = drv.backend_class.disk_form == "network"
    if network:
        # network disks (rbd): the ISO is the file disk.N on the host, which oned's domain XML
        # names (as OpenNebula's ceph driver keeps it), and, when the front-end can write the
        # backend's volumes, also that volume: the one context_network makes the CD-ROM
        with open(iso, "rb") as fh:
            drv.shell(dst.host).run(["sh", "-c", _WRITE_FILE, "sh", dst.path], input=fh.read())
        if not drv.backend.volume_writes:
            return
    name = drv.names.context(vm_id, dst.disk_id)
    size = -(-os.path.getsize(iso) // MIB) * MIB
    with drv.lock(name):
        created = False
        try:
            drv.backend.create(name, size, placement=drv.placement(ds_id),
                               tags=tags(drv.names, vm_id=vm_id, kind=TYPE_CONTEXT, disk_id=dst.disk_id,
                                         ds_id=ds_id))
            created = True
        except Conflict:
            found = drv.backend.get(name)
            if found is None or found.tags.get("nvm") != str(vm_id):
                raise DriverError(f"volume {name} exists and is not VM {vm_id}'s context") from None
            if found.size < size:
                drv.backend.resize(name, size)
        try:
            if network:
                drv.backend.write_volume(name, iso)
                return
            host = drv.host(dst.host)
            shell = drv.shell(dst.host)
            device = drv.backend.attach(name, host)
            with open(iso, "rb") as fh:
                data = fh.read()
            shell.run(["dd", f"of={device}", "bs=1M", "conv=fsync", "status=none"], input=data)
            link(shell, dst.path, device)
        except BaseException:
            if created:
                drv.backend.delete(name)
            raise


def wants_nvram_volume(vm: etree._Element) -> bool:
    """T_OS_NVRAM names the storage driver's NVRAM volume (the os_nvram tweak's volume word)."""
    return xmldoc.text(vm, "USER_TEMPLATE/T_OS_NVRAM").partition(":")[0].strip().lower() == NVRAM_VOLUME


def ensure_nvram(drv: Driver, dst: DiskPath, vm: etree._Element, vm_id: int, ds_id: int) -> None:
    """The backend's NVRAM volume on the host (``Backend.make_nvram``), made once."""
    if not drv.backend.nvram_volumes:
        raise DriverError(f"T_OS_NVRAM of VM {vm_id} asks for an NVRAM volume, but the {drv.driver} driver of "
                          f"system datastore {ds_id} keeps none: use T_OS_NVRAM=file")
    name = drv.names.nvram(vm_id)
    template = _vars_template(drv, vm)
    with drv.lock(name):
        drv.backend.make_nvram(name, NVRAM_SIZE, placement=drv.placement(ds_id),
                               tags=tags(drv.names, vm_id=vm_id, kind=TYPE_NVRAM, ds_id=ds_id),
                               host=drv.host(dst.host), shell=drv.shell(dst.host), template=template)


def _vars_template(drv: Driver, vm: etree._Element) -> str:
    """The VARS template: ``template=`` of T_OS_NVRAM if the operator allows it, else the
    configured NVRAM_TEMPLATE_PATH (addon-storpool's variable), else OVMF's 4M VARS."""
    configured = drv.config.get("NVRAM_TEMPLATE_PATH") or DEFAULT_VARS
    raw = xmldoc.text(vm, "USER_TEMPLATE/T_OS_NVRAM")
    for item in raw.partition(":")[2].split():
        key, _, value = item.partition("=")
        if key == "template" and value:
            allowed = drv.config.get("NVRAM_TEMPLATES", "/usr/share/OVMF/ /usr/share/AAVMF/").split()
            path = clean_path(value if value.startswith("/") else posixpath.join(posixpath.dirname(configured),
                                                                                  value), "NVRAM template")
            if not any(path == a or (a.endswith("/") and path.startswith(a)) for a in allowed):
                raise DriverError(f"NVRAM template {path} is not in NVRAM_TEMPLATES")
            return path
    return configured
