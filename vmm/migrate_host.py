"""What live migration asks of the two hosts beyond the migration itself: facts about
the destination for the migrate rules, the snapshot metadata the destination would refuse,
and the guest clock afterwards. Every call goes through ``onelib.hypervisor``
(libvirt-python; the ssh connection's own address over ssh)."""

from __future__ import annotations

import socket

from lxml import etree

from onelib import log
from onelib.errors import DriverError
from onelib.hypervisor import Hypervisor

_FEATURE_POLICIES_OFFERED = ("require", "force")


def address(dest: Hypervisor) -> str:
    """The address the front-end reaches the destination at: the server side of the ssh
    connection (what the host's name means from here, whatever resolves it: DNS, hosts
    file or ssh configuration), else what the name resolves to here; "" when neither."""
    proc = dest.shell.run(["printenv", "SSH_CONNECTION"], check=False)
    words = proc.stdout.decode(errors="replace").split() if proc.returncode == 0 else []
    if len(words) == 4:
        return words[2]
    try:
        found = socket.getaddrinfo(dest.host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return ""
    return str(found[0][4][0]) if found else ""


def cpu_features(dest: Hypervisor, virt_type: str) -> list[str]:
    """Every CPU feature the destination's libvirt offers a guest of ``virt_type``: its
    host-model CPU (domain capabilities) expanded to all features of its model (the
    hypervisor CPU baseline with features); [] when libvirt cannot say."""
    try:
        caps = dest.domain_capabilities(virttype=virt_type or "kvm")
    except DriverError as exc:
        log.info(f"{dest.host}: no domain capabilities: {exc}")
        return []
    mode = caps.find("cpu/mode[@name='host-model']")
    if mode is None or mode.get("supported") != "yes" or mode.find("model") is None:
        return []
    cpu = etree.Element("cpu", mode="custom", match="exact")
    for child in mode:
        if isinstance(child.tag, str) and child.tag in ("model", "vendor", "feature"):
            cpu.append(child)
    try:
        expanded = dest.baseline_cpu(etree.tostring(cpu).decode(), virttype=virt_type or "kvm")
    except DriverError as exc:
        log.info(f"{dest.host}: no CPU baseline: {exc}")
        return []
    return sorted({f.get("name", "") for f in expanded.iterfind("feature")
                   if f.get("policy", "require") in _FEATURE_POLICIES_OFFERED and f.get("name")})


class SnapshotMetadata:
    """A domain's libvirt snapshot metadata, kept to be put back (``restore``) when the
    migration it was removed for fails: a failed migration leaves the domain as it was."""

    def __init__(self, domain: str, snapshots: list[tuple[str, bytes]], current: str) -> None:
        self.domain = domain
        self.snapshots = snapshots   # (name, snapshot XML), parents first
        self.current = current

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.snapshots]

    def restore(self, source: Hypervisor) -> list[str]:
        """Define the snapshots again; returns the names that could not be (logged)."""
        failed = []
        for name, xml in self.snapshots:
            try:
                source.domain(self.domain).redefine_snapshot(xml, current=name == self.current)
            except DriverError as exc:
                log.error(f"snapshot {name} not redefined: {exc}")
                failed.append(name)
        return failed


def drop_snapshot_metadata(source: Hypervisor, domain: str) -> SnapshotMetadata:
    """Remove the domain's libvirt snapshot metadata (libvirt refuses to migrate a domain
    that has snapshots); the snapshots' data is left alone. Returns what was removed."""
    dom = source.domain(domain)
    try:
        snapshots = dom.snapshots()
    except DriverError:
        return SnapshotMetadata(domain, [], "")  # no snapshot support here: nothing stands in the way
    if not snapshots:
        return SnapshotMetadata(domain, [], "")
    try:
        current = dom.current_snapshot()
    except DriverError:
        current = ""
    kept = SnapshotMetadata(domain, snapshots, current)
    names = kept.names
    for index, name in enumerate(reversed(names)):  # children first
        try:
            dom.drop_snapshot_metadata(name)
        except DriverError as exc:
            done = SnapshotMetadata(domain, kept.snapshots[len(names) - index:], kept.current)
            done.restore(source)
            raise DriverError(f"snapshot {name}: metadata not removed: {exc}") from None
    return kept


def sync_time(dest: Hypervisor, domain: str) -> str:
    """Set the guest clock from the host's after the migration (needs the guest agent);
    returns "" on success, else libvirt's reason. Never fails the migration."""
    try:
        dest.domain(domain).sync_time()
    except DriverError as exc:
        return str(exc)
    return ""
