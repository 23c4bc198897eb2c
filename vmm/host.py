"""libvirt on an OpenNebula host, reached from the front-end: what the checkpoint and
live-migration overrides share.

Local VMM overrides run on the front-end (cwd /var/lib/one) and must do the remote work
themselves. Every host command goes through ``onelib.hostcmd.Host`` (ssh with
``SSH_COMMAND``, each argument quoted): ``virsh --connect <LIBVIRT_URI> ...`` on the host,
XML for libvirt sent on stdin (``--xml /dev/stdin``), never written into a shell string.

Configuration (``/etc/one/one-tweaks.conf``):
    LIBVIRT_URI    libvirt on the hosts (default ``qemu:///system``, kvmrc's LIBVIRT_URI)
    MIGRATE_URI    the destination of a live migration as seen from the source host
                   (default ``qemu+ssh://{host}/system``, kvmrc's QEMU_PROTOCOL form)
    MIGRATE_OPTIONS extra ``virsh migrate`` options (kvmrc's MIGRATE_OPTIONS)
    HOST_TIMEOUT   seconds a host command may take (default 600; save, restore and
                   migrate, which move the guest's memory, wait 3600 unless it is set)
``{host}`` in LIBVIRT_URI and MIGRATE_URI is replaced by the host's name.
"""

from __future__ import annotations

import re
import shlex
import subprocess

from lxml import etree

from onelib import numbers, xmldoc
from onelib.config import Config
from onelib.errors import DriverError
from onelib.hostcmd import Host
from onelib.paths import check_host, clean_path

DEFAULT_LIBVIRT_URI = "qemu:///system"
DEFAULT_MIGRATE_URI = "qemu+ssh://{host}/system"
DEFAULT_REMOTE_DIR = "/var/tmp/one"
LONG_TIMEOUT = 3600.0
ONE_NS = "http://opennebula.org/xmlns/libvirt/1.0"

_DEPLOY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
# a libvirt URI: scheme://[host][/path][?query]; no blanks, quotes or shell characters
_URI = re.compile(r"[a-z][a-z0-9+.-]*://[A-Za-z0-9_.:@\[\]-]*(/[A-Za-z0-9_./+=@,:%-]*)?(\?[A-Za-z0-9_./+=@,:%&-]*)?")
_OPTION = re.compile(r"[A-Za-z0-9_=:,./+@%-]+")
_NOT_FOUND = ("failed to get domain", "domain not found", "no domain with matching")


def deploy_id(raw: str) -> str:
    """A libvirt domain name or UUID as oned passes it (``one-42`` in 5.x, a UUID since 6.0)."""
    if not _DEPLOY_ID.fullmatch(raw):
        raise DriverError(f"deploy id {raw!r} is not a libvirt domain name or UUID")
    return raw


def vm_id(raw: str) -> int:
    return numbers.object_id(raw, "VM id")


def uri(template: str, host: str, what: str) -> str:
    """``template`` with ``{host}`` replaced, checked to be a plain libvirt URI."""
    value = template.strip().replace("{host}", check_host(host))
    if not _URI.fullmatch(value):
        raise DriverError(f"configuration {what}={template!r} is not a libvirt URI")
    return value


def options(raw: str, what: str) -> list[str]:
    """Extra command-line options from the configuration (e.g. MIGRATE_OPTIONS)."""
    try:
        words = shlex.split(raw)
    except ValueError as exc:
        raise DriverError(f"configuration {what}: {exc}") from None
    for word in words:
        if not _OPTION.fullmatch(word):
            raise DriverError(f"configuration {what}: {word!r} is not an option virsh takes")
    return words


def shell(config: Config, host: str) -> Host:
    ssh = config.ssh_command()
    return Host(check_host(host), ssh=ssh, timeout=float(config.integer("HOST_TIMEOUT") or 600))


class Hypervisor:
    """libvirt on one host: ``virsh --connect <LIBVIRT_URI>`` run there over ssh."""

    def __init__(self, config: Config, host: str) -> None:
        self.host = check_host(host)
        self.shell = shell(config, host)
        self.uri = uri(config.get("LIBVIRT_URI") or DEFAULT_LIBVIRT_URI, host, "LIBVIRT_URI")
        self.long_timeout = float(config.integer("HOST_TIMEOUT") or LONG_TIMEOUT)

    def argv(self, *args: str) -> list[str]:
        return ["virsh", "--connect", self.uri, *args]

    def virsh(self, *args: str, input: bytes | None = None, check: bool = True,
              long: bool = False) -> subprocess.CompletedProcess[bytes]:
        proc = self.shell.run(self.argv(*args), input=input, check=False,
                              timeout=self.long_timeout if long else None)
        if check and proc.returncode != 0:
            raise DriverError(f"{self.host}: virsh {args[0]} failed: {last_line(proc.stderr)}")
        return proc

    def state(self, domain: str) -> str | None:
        """``running``, ``paused``, ``shut off``, ... or None when the host has no such domain."""
        proc = self.virsh("domstate", domain, check=False)
        if proc.returncode == 0:
            return proc.stdout.decode(errors="replace").strip().splitlines()[0] if proc.stdout.strip() else ""
        error = proc.stderr.decode(errors="replace").lower()
        if any(marker in error for marker in _NOT_FOUND):
            return None
        raise DriverError(f"{self.host}: virsh domstate {domain} failed: {last_line(proc.stderr)}")

    def dumpxml(self, domain: str, *, migratable: bool = False) -> etree._Element:
        args = ["dumpxml", *(["--migratable"] if migratable else []), domain]
        return xmldoc.parse(self.virsh(*args).stdout, f"domain {domain} on {self.host}")

    def head(self, path: str, size: int) -> bytes:
        """The first ``size`` bytes of a file or device on the host (b"" if it is absent)."""
        proc = self.shell.run(["sh", "-c", 'if [ -e "$1" ]; then exec head -c "$2" -- "$1"; fi', "sh",
                               path, str(size)], check=False)
        return proc.stdout if proc.returncode == 0 else b""


def last_line(data: bytes) -> str:
    lines = [ln.strip() for ln in data.decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no error output"


def system_dir(domain: etree._Element) -> str:
    """The VM directory oned wrote into the domain's metadata (``one:system_datastore``),
    normalised; "" when the domain does not say."""
    found = domain.find(f"metadata/{{{ONE_NS}}}vm/{{{ONE_NS}}}system_datastore")
    raw = (found.text or "").strip() if found is not None else ""
    if not raw:
        return ""
    try:
        return clean_path(raw, "system datastore directory").rstrip("/")
    except DriverError:
        return ""


def relocate(domain: etree._Element, old_dir: str, new_dir: str) -> int:
    """Point every path under ``old_dir`` (disk sources, the metadata, ...) to ``new_dir``:
    hosts with their own DATASTORE_LOCATION see one VM directory under different paths.
    Returns how many values changed."""
    old_dir, new_dir = old_dir.rstrip("/"), new_dir.rstrip("/")
    if not old_dir or old_dir == new_dir:
        return 0
    changed = 0

    def moved(value: str) -> str | None:
        if not value.startswith("/"):
            return None
        try:
            norm = clean_path(value.strip(), "path")
        except DriverError:
            return None
        if norm == old_dir:
            return new_dir
        if norm.startswith(old_dir + "/"):
            return new_dir + norm[len(old_dir):]
        return None

    for el in domain.iter():
        if not isinstance(el.tag, str):
            continue
        for key, value in el.attrib.items():
            new = moved(value if isinstance(value, str) else value.decode(errors="replace"))
            if new is not None:
                el.set(key, new)
                changed += 1
        if el.text and el.text.strip():
            new = moved(el.text)
            if new is not None:
                el.text = new
                changed += 1
    return changed
