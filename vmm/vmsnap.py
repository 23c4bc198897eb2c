"""VM snapshots as one atomic group snapshot of the VM's volumes (addon-storpool's
``snapshot_{create,revert,delete}-storpool``), replacing libvirt's internal snapshots,
which cannot work on raw block disks.

A VM snapshot ``<snap_id>`` taken at Unix time ``<ts>`` is one snapshot per volume, named
``<volume>-ONESNAP-<snap_id>-<ts>`` (addon-storpool's names; on linstor_un the LINSTOR
snapshot ``vmsnapshot-<snap_id>-<ts>`` of every resource, one multi-resource snapshot, see
``datastore.naming``) and tagged ``virt=one``,
``nloc=<ONE_PX>``, ``nvm=<VM>``, ``diskid=<DISK_ID>`` and ``onesnap=<snap_id>``; oned keeps
``snap-<snap_id>-<ts>`` as the snapshot's HYPERVISOR_ID, from which revert and delete find
the group again. Volumes: every writable disk of the VM kept by the system datastore's
driver (images, clones, volatile disks) and the VM's NVRAM volume if it has one; the
context ISO and CD-ROMs are read-only and left out. Disk state only: no memory image.

VMs whose system datastore is not kept by a block driver of this project are left to
OpenNebula's own remote scripts (same argv, the plain driver message on stdin).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence

from lxml import etree

from datastore.backend import Backend, Volume
from datastore.backends import find
from datastore.driver import Driver
from datastore.vmdisks import vm_disk, vm_volumes
from onelib import numbers, xmldoc
from onelib.config import SANE_MAX, Config
from onelib.errors import DriverError
from onelib.hypervisor import forward
from onelib.oned import Oned
from tweaks.record import record

from . import domain_ops as ops
from .entry import VmmRequest

_HYPERVISOR_ID = re.compile(r"(?:snap-|ONESNAP-)(?P<sid>[0-9]{1,9})(?:-(?P<ts>[0-9]{1,12}))?")
TRUE = ("1", "yes", "true", "on")


@record
class SnapVolume:
    name: str
    disk_id: int | None          # None: the NVRAM volume


@record
class Group:
    """One VM snapshot: volume name -> its snapshot in the group."""

    snap_id: int
    ts: int
    members: dict[str, Volume]

    @property
    def hypervisor_id(self) -> str:
        return hypervisor_id(self.snap_id, self.ts)


def hypervisor_id(snap_id: int, ts: int) -> str:
    return f"snap-{snap_id}-{ts}"


def parse_hypervisor_id(raw: str) -> tuple[int, int | None]:
    """``snap-<id>-<ts>`` (ours), ``ONESNAP-<id>-<ts>``, or ``snap-<id>`` (libvirt's and older
    names: the group is then found by the snapshot id alone)."""
    match = _HYPERVISOR_ID.fullmatch(raw)
    if match is None:
        raise DriverError(f"snapshot id {raw!r} is not a VM snapshot of this driver (snap-<id>-<time>)")
    ts = match.group("ts")
    return int(match.group("sid")), int(ts) if ts is not None else None


class SnapContext:
    """A VM snapshot action's inputs: checked argv, the VM, and the storage driver (None when
    the system datastore is not ours and the stock script does the work)."""

    def __init__(self, req: VmmRequest) -> None:
        self.req = req
        self.deploy_id = ops.deploy_id(req.arg(0, "deploy id"))
        self.vm_id = ops.vm_id(req.arg(2, "vm id"))
        self.host = ops.host(req.arg(3, "host"))
        self.config = Config.load()
        self.oned = Oned(timeout=float(self.config.integer("API_TIMEOUT") or 30))
        self.msg: etree._Element | None = None
        self.plain = b""
        if req.stdin.strip():
            self.msg = ops.parse_message(req.stdin, "driver message on stdin")
            self.plain = etree.tostring(self.msg)
            self.vm = ops.message_vm(self.msg, self.vm_id)
        else:
            self.vm = self.oned.vm(self.vm_id)
            if xmldoc.text(self.vm, "ID") != str(self.vm_id):
                raise DriverError(f"oned answered VM {xmldoc.text(self.vm, 'ID')!r} for VM {self.vm_id}")
        history = ops.last_history(self.vm)
        self.ds_id = xmldoc.integer(history, "DS_ID", "VM history")
        datastore = ops.message_datastore(self.msg, self.ds_id)
        self.tm_mad = xmldoc.text(datastore, "TM_MAD") or xmldoc.text(history, "TM_MAD")
        self.driver: Driver | None = None
        backend = find(self.tm_mad)
        if backend is not None:
            if not backend.group_snapshots:
                raise DriverError(f"the {self.tm_mad} driver of system datastore {self.ds_id} takes no VM snapshots")
            if datastore is None:
                datastore = self.oned.datastore(self.ds_id)
            self.driver = Driver(self.tm_mad, datastore, oned=self.oned, config=self.config)

    @property
    def drv(self) -> Driver:
        assert self.driver is not None
        return self.driver

    def forward(self, script: str) -> str:
        """The stock remote script does it (system datastore of another driver)."""
        return forward(self.config, self.host, script, list(self.req.args), self.plain)

    # --- volumes and groups --------------------------------------------------------------------

    def wanted(self, strict: bool = True) -> list[SnapVolume]:
        """The volumes a VM snapshot covers (see the module doc), the NVRAM volume as a
        candidate (``present`` keeps it only if it exists). ``strict``: a writable disk of
        another driver is an error (its state would not be in the snapshot)."""
        drv = self.drv
        kept = {disk.disk_id: name for disk, name in vm_volumes(drv, self.vm, self.vm_id)}
        out: list[SnapVolume] = []
        template = self.vm.find("TEMPLATE")
        for el in template.iterfind("DISK") if template is not None else ():
            raw = xmldoc.text(el, "DISK_ID")
            if not raw:
                raise DriverError(f"VM {self.vm_id} has a DISK without a DISK_ID")
            disk = vm_disk(self.vm, numbers.object_id(raw, f"VM {self.vm_id}: DISK_ID"))
            if disk.kind == "cdrom" or disk.readonly:
                continue
            name = kept.get(disk.disk_id)
            if name is None and not strict:
                continue
            if name is None:
                raise DriverError(f"disk {disk.disk_id} of VM {self.vm_id} is not on a {drv.driver} datastore "
                                  f"(TM_MAD {disk.tm_mad or '-'}): a VM snapshot needs every writable disk there")
            out.append(SnapVolume(name=name, disk_id=disk.disk_id))
        out.append(SnapVolume(name=drv.names.nvram(self.vm_id), disk_id=None))
        return out

    def present(self, wanted: Sequence[SnapVolume], listing: Sequence[Volume]) -> list[SnapVolume]:
        """``wanted`` checked against the backend: every disk's volume must exist."""
        existing = {v.name for v in listing if not v.snapshot}
        out = []
        for vol in wanted:
            if vol.name in existing:
                out.append(vol)
            elif vol.disk_id is not None:
                raise DriverError(f"volume {vol.name} of disk {vol.disk_id} (VM {self.vm_id}) does not exist")
        if not out:
            raise DriverError(f"VM {self.vm_id} has no writable {self.drv.driver} volume to snapshot")
        return out

    def listing(self, volumes: Sequence[SnapVolume] = ()) -> list[Volume]:
        """Every volume and snapshot under this OpenNebula's prefix (2 backend calls); with
        pool-qualified names (rbd), under it in each pool of ``volumes`` (the wanted ones,
        the NVRAM candidate among them: the system datastore's pool too)."""
        px = f"{self.drv.names.px}-"
        pools = sorted({v.name.split("/", 1)[0] for v in volumes if "/" in v.name})
        if self.drv.names.qualified and pools:
            return [v for pool in pools for v in self.drv.backend.find(f"{pool}/{px}")]
        return self.drv.backend.find(px)

    def groups(self, listing: Sequence[Volume], volumes: Sequence[SnapVolume]) -> dict[tuple[int, int], Group]:
        """This VM's snapshot groups: snapshots named ``<vol>-ONESNAP-<id>-<ts>`` (linstor_un:
        ``<res>@vmsnapshot-<id>-<ts>``) of its current volumes, or tagged as this VM's (volumes
        detached since)."""
        ours = {v.name for v in volumes}
        px = self.drv.names.px
        out: dict[tuple[int, int], Group] = {}
        for snap in listing:
            parsed = self.drv.names.split_vm_snapshot(snap.name) if snap.snapshot else None
            if parsed is None:
                continue
            volume, sid, ts = parsed
            tagged = snap.tags.get("nvm") == str(self.vm_id) and snap.tags.get("nloc", px) == px \
                and "onesnap" in snap.tags
            if volume not in ours and not tagged:
                continue
            out.setdefault((sid, ts), Group(snap_id=sid, ts=ts, members={})).members[volume] = snap
        return out

    def find_group(self, groups: Mapping[tuple[int, int], Group], raw_id: str) -> Group | None:
        snap_id, ts = parse_hypervisor_id(raw_id)
        if ts is not None:
            return groups.get((snap_id, ts))
        found = [g for (sid, _), g in groups.items() if sid == snap_id]
        if len(found) > 1:
            raise DriverError(f"VM {self.vm_id} has {len(found)} snapshot groups with id {snap_id}: "
                              f"name one as snap-{snap_id}-<time>")
        return found[0] if found else None

    @contextlib.contextmanager
    def locked(self, names: Sequence[str]) -> Iterator[None]:
        """Per-volume locks on every volume, taken in name order (no deadlock with another
        action holding several)."""
        with contextlib.ExitStack() as stack:
            for name in sorted(set(names)):
                stack.enter_context(self.drv.lock(name))
            yield

    # --- settings ------------------------------------------------------------------------------

    def vm_attr(self, name: str) -> str:
        return xmldoc.text(self.vm, f"USER_TEMPLATE/{name}") or xmldoc.text(self.vm, f"TEMPLATE/{name}")

    def limit(self) -> int | None:
        """VMSNAPSHOT_LIMIT: the VM's attribute, else the system datastore's, else the
        configuration. Empty: no limit."""
        raw = self.vm_attr("VMSNAPSHOT_LIMIT")
        if raw:
            return numbers.whole(raw, f"VM {self.vm_id}: VMSNAPSHOT_LIMIT=", maximum=SANE_MAX)
        return self.drv.config.integer("VMSNAPSHOT_LIMIT")

    def wants_freeze(self) -> bool:
        """Freeze the guest's file systems: VMSNAPSHOT_FSFREEZE (VM, system datastore,
        configuration) or a VM with FEATURES/GUEST_AGENT=yes."""
        raw = self.vm_attr("VMSNAPSHOT_FSFREEZE")
        if raw:
            return raw.lower() in TRUE
        agent = xmldoc.text(self.vm, "TEMPLATE/FEATURES/GUEST_AGENT").lower() in TRUE
        return agent or self.drv.config.get("VMSNAPSHOT_FSFREEZE", "0").lower() in TRUE


def snapshot_tags(ctx: SnapContext, snap_id: int) -> dict[str, str]:
    return {"virt": "one", "nloc": ctx.drv.names.px, "nvm": str(ctx.vm_id), "onesnap": str(snap_id)}


def group_snapshot(backend: Backend, items: Sequence[tuple[str, str, Mapping[str, str]]],
                   common: Mapping[str, str]) -> None:
    """One atomic snapshot of every ``(volume, snapshot, own tags)``, all tagged ``common``
    (``Backend.vm_snapshot``)."""
    backend.vm_snapshot(items, common)


def retag(backend: Backend, items: Sequence[tuple[str, str, Mapping[str, str]]], common: Mapping[str, str]) -> None:
    """The group's tags again, after a group snapshot whose reply was lost
    (``Backend.vm_snapshot_retag``)."""
    backend.vm_snapshot_retag(items, common)
