"""What live migration asks of the two hosts beyond ``virsh migrate`` itself: facts about
the destination for the migrate rules, the snapshot metadata the destination would refuse,
and the guest clock afterwards.

Every call here goes through ``host.Hypervisor`` (``virsh`` over ssh), in this one module,
so that a libvirt-python host layer can take them over as they are.
"""

from __future__ import annotations

import socket

from lxml import etree

from onelib import log, xmldoc
from onelib.errors import DriverError

from . import host as hosts

_FEATURE_POLICIES_OFFERED = ("require", "force")


def address(dest: hosts.Hypervisor) -> str:
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


def cpu_features(dest: hosts.Hypervisor, virt_type: str) -> list[str]:
    """Every CPU feature the destination's libvirt offers a guest of ``virt_type``: its
    host-model CPU (``domcapabilities``) expanded to all features of its model
    (``hypervisor-cpu-baseline --features``); [] when libvirt cannot say."""
    proc = dest.virsh("domcapabilities", "--virttype", virt_type or "kvm", check=False)
    if proc.returncode != 0:
        log.info(f"{dest.host}: no domain capabilities: {hosts.last_line(proc.stderr)}")
        return []
    caps = xmldoc.parse(proc.stdout, f"domain capabilities of {dest.host}")
    mode = caps.find("cpu/mode[@name='host-model']")
    if mode is None or mode.get("supported") != "yes" or mode.find("model") is None:
        return []
    cpu = etree.Element("cpu", mode="custom", match="exact")
    for child in mode:
        if isinstance(child.tag, str) and child.tag in ("model", "vendor", "feature"):
            cpu.append(child)
    proc = dest.virsh("hypervisor-cpu-baseline", "--features", "--virttype", virt_type or "kvm", "/dev/stdin",
                      input=etree.tostring(cpu), check=False)
    if proc.returncode != 0:
        log.info(f"{dest.host}: no CPU baseline: {hosts.last_line(proc.stderr)}")
        return []
    expanded = xmldoc.parse(proc.stdout, f"CPU baseline of {dest.host}")
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

    def restore(self, source: hosts.Hypervisor) -> list[str]:
        """Define the snapshots again; returns the names that could not be (logged)."""
        failed = []
        for name, xml in self.snapshots:
            current = ["--current"] if name == self.current else []
            proc = source.virsh("snapshot-create", self.domain, "/dev/stdin", "--redefine", *current, input=xml,
                                check=False)
            if proc.returncode != 0:
                log.error(f"{source.host}: snapshot {name} of {self.domain} not redefined: "
                          f"{hosts.last_line(proc.stderr)}")
                failed.append(name)
        return failed


def drop_snapshot_metadata(source: hosts.Hypervisor, domain: str) -> SnapshotMetadata:
    """Remove the domain's libvirt snapshot metadata (libvirt refuses to migrate a domain
    that has snapshots); the snapshots' data is left alone. Returns what was removed."""
    proc = source.virsh("snapshot-list", domain, "--name", "--topological", check=False)
    if proc.returncode != 0:
        return SnapshotMetadata(domain, [], "")  # no snapshot support here: nothing stands in the way
    names = [n.strip() for n in proc.stdout.decode(errors="replace").splitlines() if n.strip()]
    if not names:
        return SnapshotMetadata(domain, [], "")
    current = source.virsh("snapshot-current", domain, "--name", check=False)
    kept = SnapshotMetadata(domain, [], current.stdout.decode(errors="replace").strip()
                            if current.returncode == 0 else "")
    for name in names:
        xml = source.virsh("snapshot-dumpxml", domain, "--snapshotname", name, "--security-info").stdout
        kept.snapshots.append((name, xml))
    for index, name in enumerate(reversed(names)):  # children first
        proc = source.virsh("snapshot-delete", domain, "--snapshotname", name, "--metadata", check=False)
        if proc.returncode != 0:
            done = SnapshotMetadata(domain, kept.snapshots[len(names) - index:], kept.current)
            done.restore(source)
            raise DriverError(f"{source.host}: snapshot {name} of {domain}: metadata not removed: "
                              f"{hosts.last_line(proc.stderr)}")
    return kept


def sync_time(dest: hosts.Hypervisor, domain: str) -> str:
    """Set the guest clock from the host's after the migration (needs the guest agent);
    returns "" on success, else libvirt's reason. Never fails the migration."""
    try:
        proc = dest.virsh("domtime", domain, "--sync", check=False)
    except DriverError as exc:
        return str(exc)
    return "" if proc.returncode == 0 else hosts.last_line(proc.stderr)
