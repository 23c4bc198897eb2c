"""Shared by the disk tweaks: which OpenNebula disk a domain ``<disk>`` is, and a
parameter type for a list of TM_MAD names.

Which TM_MADs keep their disks on block devices is the storage drivers' knowledge, not the
engine's: a ``tm_mads`` parameter left at its default (``STORAGE``) means the TM_MADs the
supplied fact names (``storage.block_tm_mads`` for volatile and context disks,
``storage.tm_mads`` for every disk of a storage backend; see ``tweaks.facts``).

oned writes every disk it manages as ``<system_dir>/disk.<DISK_ID>`` with ``system_dir``
= ``<datastores>/<system DS id>/<VM id>``; the ``disk.N`` suffix (and the VM id as the
parent directory when the VM is known) ties a domain disk to its ``TEMPLATE/DISK``
(or to ``CONTEXT`` for the context CD-ROM). Not a tweak: the registry skips ``_`` modules.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from lxml import etree

from ..errors import ParamError
from ..facts import Facts
from ..params import MAX_TEXT, Param, clean_text
from ..record import record
from ..tweak import Context

NAME = r"[a-z0-9_]{1,32}"
MAX_NAMES = 16
# NAME, the separators and the disk path are checked with string methods, not regular
# expressions: compiling the three cost every deploy about 0.35 ms, more than using them.
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


def _is_name(item: str) -> bool:
    return 0 < len(item) <= 32 and all(c in _NAME_CHARS for c in item)


def _names(text: str) -> list[str]:
    """``text`` split at whitespace and commas, empty items dropped (``[\\s,]+``)."""
    return text.replace(",", " ").split()


def _disk_path(path: str) -> tuple[str, str] | None:
    """(directory, N) of a path ending ``/<directory>/disk.<N>`` (N: 1-6 digits)."""
    parts = path.rsplit("/", 2)
    if len(parts) != 3 or not parts[1] or not parts[2].startswith("disk."):
        return None
    number = parts[2][5:]
    if not (0 < len(number) <= 6 and number.isascii() and number.isdigit()):
        return None
    return parts[1], number


class Names(tuple[str, ...]):
    """A parsed name list; prints as ``a,b`` (for ``one-tweaks list``)."""

    __slots__ = ()

    def __str__(self) -> str:
        return ",".join(self)


class FromStorage(Names):
    """The default of a ``tm_mads`` parameter: the TM_MADs a supplied ``storage.*`` fact names."""

    __slots__ = ()

    def __str__(self) -> str:
        return "the storage drivers'"


STORAGE = FromStorage()


@record
class NameList(Param):
    """TM_MAD (or other driver) names ``[a-z0-9_]+``: a YAML list, or one string of
    comma- and/or space-separated names. Duplicates are dropped; order is kept."""

    def json_schema(self) -> dict[str, Any]:
        item = {"type": "string", "pattern": f"^{NAME}$"}
        text = {"type": "string", "maxLength": MAX_TEXT,
                "pattern": rf"^[\s,]*{NAME}(?:[\s,]+{NAME})*[\s,]*$"}
        array = {"type": "array", "items": item, "minItems": 1, "maxItems": MAX_NAMES}
        return {"anyOf": [array, text]}

    def parse(self, raw: object) -> Names:
        if isinstance(raw, (list, tuple)):
            if not raw:
                raise ParamError("empty list")
            if not all(isinstance(item, str) for item in raw):
                raise ParamError("list items must be names")
            items = [clean_text(item, max_len=32) for item in raw]
        else:
            if not isinstance(raw, str):
                raise ParamError(f"expected a name list, got {type(raw).__name__}")
            text = clean_text(raw)
            items = _names(text)
        if not items:
            raise ParamError("no names")
        names: list[str] = []
        for item in items:
            if not _is_name(item):
                raise ParamError(f"{item[:32]!r} is not a driver name [a-z0-9_]")
            if item not in names:
                names.append(item)
        if len(names) > MAX_NAMES:
            raise ParamError(f"more than {MAX_NAMES} names")
        return Names(names)

    def type_doc(self) -> str:
        return "name[,name...]"


def tm_mads_param(doc: str = "TM_MAD names whose disks this applies to") -> NameList:
    return NameList("tm_mads", doc, default=STORAGE)


def listed_tm_mads(ctx: Context, fact: str) -> tuple[str, ...]:
    """The ``tm_mads`` parameter's names, or for the default those of the supplied ``fact``
    (``storage.block_tm_mads`` / ``storage.tm_mads``; none when nothing was supplied)."""
    names: tuple[str, ...] = ctx.params["tm_mads"]
    if isinstance(names, FromStorage):
        raw = ctx.facts.get(fact) or ""
        return tuple(_names(raw))
    return names


@record
class OneDisk:
    """A domain ``<disk>`` matched to its OpenNebula disk facts."""

    element: etree._Element
    source: etree._Element
    path: str
    facts: dict[str, str]

    @property
    def id(self) -> str:
        return self.facts.get("id", "")

    @property
    def kind(self) -> str:
        return self.facts.get("kind", "")

    @property
    def target(self) -> str:
        target = self.element.find("target")
        return (target.get("dev") if target is not None else None) or f"disk.{self.id}"


def source_path(disk: etree._Element) -> tuple[etree._Element, str] | None:
    """The disk's ``<source>`` and its local path (``file`` or ``dev``), if it has one."""
    source = disk.find("source")
    if source is None:
        return None
    path = source.get("file") or source.get("dev")
    return (source, path) if path else None


def one_disk(facts: Facts, disk: etree._Element) -> OneDisk | None:
    """Match a domain disk to ``facts.disks`` by its ``.../<vmid>/disk.<DISK_ID>`` path; a
    network disk (no local path) by the volume its storage driver named for it
    (``disk.storage_name``), else by its target device (``disk.target``). A network disk's
    ``path`` is ``<protocol>:<name>``."""
    found = source_path(disk)
    if found is None:
        return _network_disk(facts, disk)
    source, path = found
    match = _disk_path(path)
    if match is None:
        return None
    vm_id = facts.get("vm.id")
    if vm_id is not None and match[0] != vm_id:
        return None
    entry = facts.disk(str(int(match[1])))
    if entry is None:
        return None
    return OneDisk(disk, source, path, entry)


def _network_disk(facts: Facts, disk: etree._Element) -> OneDisk | None:
    source = disk.find("source")
    if disk.get("type") != "network" or source is None or not source.get("name"):
        return None
    name = source.get("name", "")
    target = disk.find("target")
    dev = target.get("dev") if target is not None else None
    by_name = [d for d in facts.disks if d.get("storage_name") == name]
    by_target = [d for d in facts.disks if dev and d.get("target") == dev]
    matched = by_name or by_target
    if len(matched) != 1:
        return None
    return OneDisk(disk, source, f"{source.get('protocol', '')}:{name}", matched[0])


def one_disks(facts: Facts, root: etree._Element) -> Iterator[OneDisk]:
    for disk in root.iterfind("devices/disk"):
        found = one_disk(facts, disk)
        if found is not None:
            yield found


def tm_mad(facts: Facts, disk: OneDisk) -> str:
    """The disk's TM_MAD. Volatile disks and the context CD-ROM live on the system
    datastore: without their own TM_MAD, the history's (system DS) TM_MAD is theirs."""
    own = disk.facts.get("tm_mad", "")
    if own or disk.kind not in ("volatile", "context"):
        return own
    return facts.get("history.tm_mad") or ""


def _any_kept(ctx: Context, kind: str, tm_mads: tuple[str, ...]) -> bool:
    """Whether any disk of ``kind`` in the VM's facts is on one of ``tm_mads``: read from the
    facts alone, so that a rule with nothing to do (a VM without network disks, say) does
    not match every domain disk to its facts on every deploy."""
    if not tm_mads:
        return False
    system = ctx.facts.get("history.tm_mad") or ""
    return any(d.get("kind") == kind and (d.get("tm_mad") or (system if kind in ("volatile", "context") else ""))
               in tm_mads for d in ctx.facts.disks)


def file_to_block(ctx: Context, kind: str) -> None:
    """``type='file'`` disks of ``kind`` on a listed TM_MAD become ``type='block'`` with
    ``<source dev=...>`` (same path: the TM driver made ``disk.N`` a link to the device).
    Only the source attribute changes; every other child and attribute is kept."""
    tm_mads = listed_tm_mads(ctx, "storage.block_tm_mads")
    if not _any_kept(ctx, kind, tm_mads):
        return
    for disk in one_disks(ctx.facts, ctx.root):
        if disk.kind != kind:
            continue
        driver_name = tm_mad(ctx.facts, disk)
        if driver_name not in tm_mads:
            continue
        if disk.element.get("type") != "file":
            if disk.element.get("type") != "block":
                ctx.note(f"{disk.target}: type {disk.element.get('type')!r} left alone")
            continue
        ctx.editor.set_attr(disk.element, "type", "block")
        ctx.editor.set_attr(disk.source, "file", None)
        ctx.editor.set_attr(disk.source, "dev", disk.path)


# What a network backend tells the rules about a disk it keeps (``Backend.facts``): enough
# to write libvirt's <disk type='network'> without the engine knowing the backend.
NETWORK_FACTS = ("storage_protocol", "storage_name")
# Pattern strings, compiled (and cached by ``re``) on first use: only a VM with network disks
# needs them, and compiling five patterns at import cost every deploy a few milliseconds.
_PROTOCOL = r"[a-z][a-z0-9+.-]{0,15}"
_VOLUME_NAME = r"[A-Za-z0-9_.][A-Za-z0-9_.@/:+-]{0,399}"
_HOST = r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]{1,253})(?::([0-9]{1,5}))?"
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_USER = r"[A-Za-z0-9_.@-]{1,64}"
MAX_HOSTS = 16


def network_source(facts: Mapping[str, str]) -> tuple[dict[str, str], list[dict[str, str]],
                                                      tuple[str, str, str] | None] | str:
    """The ``<source>`` attributes, ``<host>`` attributes and auth (user, secret type, uuid)
    of a network disk from its ``storage_*`` facts; a reason string when they are unusable
    (the storage side's values are checked like any input: they end up in the domain)."""
    protocol = facts.get("storage_protocol", "")
    name = facts.get("storage_name", "")
    if not re.fullmatch(_PROTOCOL, protocol):
        return "no usable storage_protocol fact"
    if not re.fullmatch(_VOLUME_NAME, name) or ".." in name.split("/"):
        return "no usable storage_name fact"
    hosts: list[dict[str, str]] = []
    for word in _names(facts.get("storage_hosts", "")):
        if not word:
            continue
        match = re.fullmatch(_HOST, word)
        if match is None or len(hosts) >= MAX_HOSTS:
            return f"storage_hosts entry {word[:64]!r} is not host[:port]"
        host = {"name": match.group(1).strip("[]")}
        if match.group(2):
            if not 0 < int(match.group(2)) < 65536:
                return f"storage_hosts entry {word[:64]!r} has no valid port"
            host["port"] = match.group(2)
        hosts.append(host)
    user = facts.get("storage_user", "")
    uuid = facts.get("storage_secret", "")
    secret_type = facts.get("storage_secret_type", "")
    auth = None
    if user and uuid:  # as oned: auth only when both are known
        if (not re.fullmatch(_USER, user) or not re.fullmatch(_UUID, uuid)
                or not re.fullmatch(_PROTOCOL, secret_type)):
            return "storage_user/storage_secret/storage_secret_type facts are not usable"
        auth = (user, secret_type, uuid)
    return {"protocol": protocol, "name": name}, hosts, auth


def file_to_network(ctx: Context, kind: str) -> None:
    """``type='file'`` (or ``block``) disks of ``kind`` on a listed network TM_MAD whose
    backend named their volume (``disk.storage_protocol``/``storage_name``, optional
    ``storage_hosts``, ``storage_user``, ``storage_secret``, ``storage_secret_type``) become
    ``<disk type='network'><source protocol=... name=...><host/>...</source><auth/>``.
    The driver, target and every other child and attribute of the disk stay; a disk whose
    backend named no volume (e.g. a context ISO the driver keeps as a file) is left alone."""
    tm_mads = listed_tm_mads(ctx, "storage.network_tm_mads")
    if not _any_kept(ctx, kind, tm_mads):
        return
    for disk in one_disks(ctx.facts, ctx.root):
        if disk.kind != kind or tm_mad(ctx.facts, disk) not in tm_mads:
            continue
        if disk.element.get("type") not in ("file", "block"):
            continue  # network already (oned's DISK_TYPE=RBD, or a second run)
        if not any(disk.facts.get(key) for key in NETWORK_FACTS):
            ctx.note(f"{disk.target}: the storage driver keeps it as a file")
            continue
        found = network_source(disk.facts)
        if isinstance(found, str):
            ctx.note(f"{disk.target}: {found}; left alone")
            continue
        attrs, hosts, auth = found
        element = disk.element
        editor = ctx.editor
        old_auth = element.find("auth")
        if old_auth is not None:
            editor.remove(old_auth)
        editor.set_attr(element, "type", "network")
        for name in ("file", "dev"):
            editor.set_attr(disk.source, name, None)
        for name, value in attrs.items():
            editor.set_attr(disk.source, name, value)
        for child in list(disk.source):
            if isinstance(child.tag, str) and child.tag in ("host", "auth"):
                editor.remove(child)
        for host in hosts:
            editor.add(disk.source, "host", host)
        if auth is not None:
            user, secret_type, uuid = auth
            auth_el = editor.add(element, "auth", {"username": user}, after=("source",))
            editor.add(auth_el, "secret", {"type": secret_type, "uuid": uuid})
