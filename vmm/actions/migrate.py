"""``migrate <deploy_id> <dst_host> <src_host> <vmid> <src_host>``: the live-migration
override (``-l migrate=migrate``), run on the front-end with the base64 driver message on
stdin (HOST = source, MIGR_HOST = destination, DISK_TARGET_PATH = the VM directory on the
destination). oned runs the storage side around it (tm premigrate before, postmigrate
after, failmigrate on failure); this does the hypervisor side through libvirt-python
(``onelib.hypervisor``), holding connections to both hosts as ``virsh migrate`` does:

    migrate --live [MIGRATE_OPTIONS] [--unsafe] [--xml <destination XML>] <deploy_id> <dst>

MIGRATE_OPTIONS are kvmrc's ``virsh migrate`` options, passed as libvirt's flags and
parameters (``--migrateuri URI``, ``--persistent``, ``--compressed``, ...); with ``--p2p``
the source's libvirtd connects to MIGRATE_URI (``{host}`` = dst, default
``qemu+ssh://<dst>/system``) itself.

``--unsafe`` is added only when every disk (device ``disk`` or ``lun``) of the live domain
(its live XML on the source) has ``<driver cache='none'>``: libvirt refuses to migrate
``type='file'`` disks that are not on a shared file system (OpenNebula writes volatile and
context disks that way) although block storage reached through such paths is shared; with
the host cache off nothing is lost, with any other cache mode the refusal stands (the seed's
known-issues workaround). An ``--unsafe`` in MIGRATE_OPTIONS is dropped: the decision is
made here.

The destination XML is the running domain's migratable XML (read on the source) with the
VM directory moved when the destination's (DISK_TARGET_PATH) differs from the one the domain was started in (its
``one:system_datastore`` metadata; hosts with their own DATASTORE_LOCATION), and the
``on: [migrate]`` rules applied with facts about the destination (``dest.host``,
``dest.address``, ``dest.cpu_features``; see ``vmm.migrate_rules``). When libvirt refuses
a rule's change for the running guest, that rule is rolled back and the migration goes
ahead without it (a VM log line says so). libvirt's snapshot metadata, which makes libvirt
refuse a migration, is removed first (the snapshots' data stays; our VM snapshot overrides
make none); after the move the guest clock is synced (as ``virsh domtime --sync``; a guest
without the agent keeps its clock and the migration still counts as done).

Re-runnable: when the domain is no longer on the source but runs on the destination (a
migration whose reply was lost), nothing is done; a migration that fails although the
domain moved (a connection broke at the end) counts as done.
"""

from __future__ import annotations

from lxml import etree

from datastore.preflight import volume_reasons
from onelib import log, preflight, xmldoc
from onelib.config import Config
from onelib.errors import DriverError
from onelib.hypervisor import (
    DEFAULT_MIGRATE_URI,
    LIVE_STATES,
    Hypervisor,
    binding,
    deploy_id,
    migrate_options,
    uri,
    vm_id,
)
from onelib.oned import Oned
from onelib.paths import check_host, clean_path

from .. import migrate_host, migrate_rules
from ..entry import VmmRequest

DISK_DEVICES = ("disk", "lun")


def run(req: VmmRequest) -> None:
    domain = deploy_id(req.arg(0, "deploy id"))
    dst = check_host(req.arg(1, "destination host"))
    src = check_host(req.arg(2, "source host"))
    vm = vm_id(req.arg(3, "vm id"))
    message = _message(req, vm)
    if message is not None:
        for tag, expected in (("HOST", src), ("MIGR_HOST", dst)):
            found = xmldoc.text(message, tag)
            if found and found != expected:
                raise DriverError(f"the driver message's {tag} is {found!r}, the arguments say {expected!r}")
    if src == dst:
        raise DriverError(f"VM {vm}: source and destination are both {src}")
    config = Config.load()
    source, dest = Hypervisor(config, src), Hypervisor(config, dst)
    dom = source.lookup(domain)
    if dom is None:
        if dest.state(domain) in LIVE_STATES:
            log.info(f"VM {vm}: {domain} already runs on {dst}")
            return
        raise DriverError(f"domain {domain} is on neither {src} nor {dst}")
    live = dom.xml()
    vm_doc = message.find("VM") if message is not None else None
    oned = Oned(timeout=float(config.integer("API_TIMEOUT") or 30))
    if vm_doc is None:
        vm_doc = oned.vm(vm)
    # before anything moves: CPU, machine, firmware, memory, secrets, every volume
    preflight.check(live, dest, vm, volume_reasons(vm_doc, dst, oned))
    unsafe = uncached(live)
    lv = binding()
    flags, params = migrate_options(config.get("MIGRATE_OPTIONS"))
    flags = (flags & ~lv.VIR_MIGRATE_UNSAFE) | lv.VIR_MIGRATE_LIVE | (lv.VIR_MIGRATE_UNSAFE if unsafe else 0)
    p2p_uri = uri(config.get("MIGRATE_URI") or DEFAULT_MIGRATE_URI, dst, "MIGRATE_URI")
    plan = migrate_rules.prepare(config, source, dst, domain, live, _target_dir(message), vm_doc,
                                 lambda name, virt: _dest_fact(dest, name, virt))
    xml = plan.xml()
    for warning in plan.warnings:
        log.vm_log(vm, f"migrate-tweaks: {warning}")
    snapshots = migrate_host.drop_snapshot_metadata(source, domain)
    if snapshots.names:
        log.vm_log(vm, "migrate-tweaks: libvirt snapshot metadata removed before migrating: "
                   + ", ".join(snapshots.names))
    rolled_back: list[str] = []
    while True:
        if xml is not None:
            params[lv.VIR_MIGRATE_PARAM_DEST_XML] = xml.decode()
        else:
            params.pop(lv.VIR_MIGRATE_PARAM_DEST_XML, None)
        try:
            dom.migrate(dest, flags=flags, params=params, p2p_uri=p2p_uri)
            break
        except DriverError as exc:
            if _arrived(source, dest, domain):
                break
            reason = str(exc)
            culprit = plan.culprit(reason) if source.state(domain) is not None else None
            if culprit is None:
                if snapshots.names and source.state(domain) is not None:
                    snapshots.restore(source)  # the domain stays here: as it was
                raise
        rolled_back.append(culprit)
        log.vm_log(vm, f"migrate-tweaks: rule {culprit} rolled back: libvirt refused its change: {reason}")
        xml = plan.xml(rolled_back)
    if plan.applied:
        log.vm_log(vm, f"migrate-tweaks: migrate rules applied: {', '.join(plan.applied)}")
    log.info(f"VM {vm}: {domain} migrated live from {src} to {dst}{' with --unsafe' if unsafe else ''}")
    not_synced = migrate_host.sync_time(dest, domain)
    if not_synced:
        log.info(f"VM {vm}: guest clock not synced on {dst}: {not_synced}")


def _dest_fact(dest: Hypervisor, name: str, virt_type: str) -> str:
    if name == "dest.address":
        return migrate_host.address(dest)
    return ",".join(migrate_host.cpu_features(dest, virt_type))


def _arrived(source: Hypervisor, dest: Hypervisor, domain: str) -> bool:
    """After a failed migration: did the domain move all the same (a lost reply)?"""
    try:
        return source.state(domain) is None and dest.state(domain) in LIVE_STATES
    except DriverError:
        return False


def uncached(domain: etree._Element) -> bool:
    """Every disk of the domain has ``cache='none'`` (CD-ROMs and floppies do not count)."""
    for disk in domain.iterfind("devices/disk"):
        if disk.get("device", "disk") not in DISK_DEVICES:
            continue
        driver = disk.find("driver")
        if driver is None or driver.get("cache") != "none":
            return False
    return True


def _message(req: VmmRequest, vm: int) -> etree._Element | None:
    if not req.stdin.strip():
        return None
    message = xmldoc.parse(req.decoded_stdin("driver message on stdin"), "driver message on stdin")
    if message.tag != "VMM_DRIVER_ACTION_DATA":
        raise DriverError(f"the document on stdin is <{message.tag}>, not a VMM driver message")
    found = xmldoc.text(message, "VM/ID")
    if found and found != str(vm):
        raise DriverError(f"the driver message is about VM {found!r}, not VM {vm}")
    return message


def _target_dir(message: etree._Element | None) -> str:
    raw = xmldoc.text(message, "DISK_TARGET_PATH") if message is not None else ""
    return clean_path(raw, "DISK_TARGET_PATH").rstrip("/") if raw else ""
