"""A test double of OpenNebula's front-end XML-RPC API (oned), for tests. It is NOT oned.

The storage drivers ask oned for what a transfer line does not carry (the VM document, the
datastore's attributes, images, hosts). In tests they talk, over real XML-RPC on 127.0.0.1,
to this small server instead: it keeps VM, image, datastore and host documents in memory and
answers the few calls the drivers make, with oned's reply shapes. It runs no scheduler, no
state machine, no drivers, no ACLs and no quotas; documents change only when a test (or one
of the few write calls below) changes them.

Reply shapes (``src/rm/Request*.cc`` in OpenNebula 6.x/7.x)
-----------------------------------------------------------
- success: ``[True, body, 0]`` (body is the XML document as a string, or an object id);
- failure: ``[False, "[<method>] <message>", errcode, resp_id, -1]``; errcodes ``AUTHENTICATION``
  0x0100 ("User couldn't be authenticated, aborting call."), ``AUTHORIZATION`` 0x0200,
  ``NO_EXISTS`` 0x0400 ("Error getting virtual machine [42]."), ``ACTION`` 0x0800,
  ``XML_RPC_API`` 0x1000, ``INTERNAL`` 0x2000, ``ALLOCATE`` 0x4000;
- wrong argument types or counts: an XML-RPC fault (-501), as xmlrpc-c answers; an unknown
  method: fault -506.

Calls served (the session string ``user:password`` is always the first argument and is checked
against the double's ``auth``)
----------------------------------------------------------------------------------------------
``one.vm.info(id[, decrypt])``, ``one.vm.update(id, template[, append])`` (USER_TEMPLATE),
``one.vmpool.info(filter, start, end, state)`` (the short per-VM documents oned's pool call
returns: ``VirtualMachine::to_xml_short``), ``one.vmpool.infoextended(filter, start, end, state)``
(full documents), ``one.image.info(id[, decrypt])``, ``one.imagepool.info(filter, start, end)``,
``one.image.update(id, template, append)`` (append=1 merges attributes into IMAGE/TEMPLATE, a
name given replaces every attribute of that name; append=0 replaces the template),
``one.image.allocate(template, ds_id[, skip_capacity_check])`` (a minimal IMAGE, READY when
the template gives SOURCE, else LOCKED as while oned's DS ``cp`` would run; no driver is
called), ``one.datastore.info(id[, decrypt])``, ``one.datastorepool.info()``,
``one.host.info(id[, decrypt])``, ``one.hostpool.info()``.
Derived lists are computed when a document is served: HOST/VMS (VMs whose last history
record is on that host), DATASTORE/IMAGES, IMAGE/VMS and IMAGE/RUNNING_VMS.

Python API
----------
``double = OnedDouble(auth="oneadmin:opennebula")``; ``double.start()`` listens on 127.0.0.1
and an ephemeral port (``double.url`` is the ``ONE_XMLRPC`` value); ``double.stop()``; also a
context manager. ``add_vm(xml)``, ``add_image(xml)``, ``add_datastore(xml)`` store a document
(str, bytes or lxml element; a copy) and return the stored element; ``add_host(name, id,
attrs)`` builds an OpenNebula HOST document. ``vm(id)``, ``image(id)``, ``datastore(id)``,
``host(id_or_name)`` return the stored lxml element for in-place edits (served as edited);
``remove_vm(id)`` etc. drop one. Builders of documents shaped like the fixtures in
``tests/fixtures/opennebula/``: ``vm_document``, ``image_document``, ``datastore_document``,
``host_document``. ``double.calls`` lists ``(method, args)`` of every request (the session
string left out); ``double.fail(method, ...)`` injects an error reply, a delay, or a dropped
connection into the next matching calls (a dropped call is not applied; onelib's client asks
a read (``*.info``) once more when its connection breaks, so one drop of a read is invisible
to it and two make it fail).
"""

from __future__ import annotations

import copy
import re
import socketserver
import threading
import time
import xmlrpc.client
import xmlrpc.server
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from lxml import etree

__all__ = [
    "ACTION",
    "ALLOCATE",
    "AUTHENTICATION",
    "AUTHORIZATION",
    "INTERNAL",
    "NO_EXISTS",
    "XML_RPC_API",
    "OnedDouble",
    "datastore_document",
    "host_document",
    "image_document",
    "parse_template",
    "vm_document",
]

# OpenNebula's ErrorCode values (include/Request.h)
SUCCESS = 0x0000
AUTHENTICATION = 0x0100
AUTHORIZATION = 0x0200
NO_EXISTS = 0x0400
ACTION = 0x0800
XML_RPC_API = 0x1000
INTERNAL = 0x2000
ALLOCATE = 0x4000

FAULT_TYPE = -501  # xmlrpc-c: parameter type or count mismatch
FAULT_NO_METHOD = -506

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "opennebula"
_PARSER = etree.XMLParser(strip_cdata=False, remove_blank_text=False, resolve_entities=False, no_network=True)

# VM states (VirtualMachine::VmState) and host states (Host::HostState) used by the builders
VM_ACTIVE, VM_DONE = 3, 6
LCM_RUNNING = 3
HOST_MONITORED = 2
IMAGE_TYPES = {"OS": 0, "CDROM": 1, "DATABLOCK": 2, "KERNEL": 3, "RAMDISK": 4, "CONTEXT": 5, "BACKUP": 6}
DISK_TYPES = {"FILE": 0, "CDROM": 1, "BLOCK": 2, "RBD": 3}
DS_TYPES = {"IMAGE_DS": 0, "SYSTEM_DS": 1, "FILE_DS": 2, "BACKUP_DS": 3}
IMAGE_READY, IMAGE_USED, IMAGE_LOCKED = 1, 2, 4

# what VirtualMachineTemplate::to_xml_short keeps of USER_TEMPLATE
_USER_SHORT = ("LABELS", "ERROR", "SCHED_MESSAGE", "SCHED_RANK", "SCHED_DS_RANK", "SCHED_REQUIREMENTS",
               "SCHED_DS_REQUIREMENTS", "USER_PRIORITY", "PUBLIC_CLOUD", "SCHED_ACTION")
_DISK_SHORT = ("DISK_ID", "DATASTORE", "DATASTORE_ID", "IMAGE", "IMAGE_ID", "SIZE", "TYPE", "CLONE",
               "CLONE_TARGET", "LN_TARGET", "DISK_SNAPSHOT_TOTAL_SIZE")
_HISTORY_SHORT = ("OID", "SEQ", "HOSTNAME", "HID", "CID", "DS_ID", "VM_MAD", "TM_MAD", "ACTION")

Doc = str | bytes | etree._Element


def _parse(doc: Doc, what: str) -> etree._Element:
    if isinstance(doc, etree._Element):
        return copy.deepcopy(doc)
    raw = doc.encode() if isinstance(doc, str) else doc
    root = etree.fromstring(raw.strip(), _PARSER)
    if root is None:
        raise ValueError(f"{what}: empty document")
    return root


def _text(el: etree._Element, path: str, default: str = "") -> str:
    found = el.find(path)
    if found is None or found.text is None:
        return default
    return found.text.strip()


def _sub(parent: etree._Element, tag: str, value: object = None, *, cdata: bool = False) -> etree._Element:
    el = etree.SubElement(parent, tag)
    if value is not None:
        text = str(value)
        el.text = etree.CDATA(text) if cdata else text
    return el


def _set_text(el: etree._Element, path: str, value: object, *, cdata: bool = False) -> None:
    found = el.find(path)
    if found is None:
        parent = el
        for part in path.split("/"):
            nxt = parent.find(part)
            parent = nxt if nxt is not None else etree.SubElement(parent, part)
        found = parent
    found.text = etree.CDATA(str(value)) if cdata else str(value)


def _permissions(parent: etree._Element, group_use: bool = False) -> None:
    perms = _sub(parent, "PERMISSIONS")
    for key, value in (("OWNER_U", 1), ("OWNER_M", 1), ("OWNER_A", 0), ("GROUP_U", int(group_use)),
                       ("GROUP_M", 0), ("GROUP_A", 0), ("OTHER_U", 0), ("OTHER_M", 0), ("OTHER_A", 0)):
        _sub(perms, key, value)


def _template_element(tag: str, attrs: Mapping[str, object] | Iterable[tuple[str, object]]) -> etree._Element:
    """``<TAG>`` with one CDATA child per attribute; a Mapping value makes a vector attribute."""
    el = etree.Element(tag)
    items = attrs.items() if isinstance(attrs, Mapping) else attrs
    for key, value in items:
        if isinstance(value, Mapping):
            vec = _sub(el, key)
            for sub_key, sub_value in value.items():
                _sub(vec, sub_key, sub_value, cdata=True)
        else:
            _sub(el, key, value, cdata=True)
    return el


# ----------------------------------------------------------------------------------------------
# OpenNebula template syntax (what onevm update / oneimage update send): NAME = value lines,
# "quoted values" (\" and \\ escapes, may span lines), vector attributes NAME = [ A = x, B = "y" ],
# # comments. oned also accepts an XML <TEMPLATE> document.

_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r\n]+) | (?P<comment>\#[^\n]*) | (?P<name>[A-Za-z0-9_.:\-]+) | (?P<eq>=) |
    (?P<lb>\[) | (?P<rb>\]) | (?P<comma>,) | (?P<quoted>"(?:[^"\\]|\\.)*")
""", re.VERBOSE | re.DOTALL)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"syntax error in template near {text[pos:pos + 20]!r}")
        kind = match.lastgroup or ""
        value = match.group()
        pos = match.end()
        if kind in ("ws", "comment"):
            if "\n" in value or kind == "comment":
                out.append(("nl", ""))
            continue
        if kind == "quoted":
            value = re.sub(r"\\(.)", r"\1", value[1:-1], flags=re.DOTALL)
            kind = "value"
        out.append((kind, value))
    out.append(("nl", ""))
    return out


def parse_template(text: str) -> list[tuple[str, str | dict[str, str]]]:
    """``NAME = value`` / ``NAME = [ A = x, ... ]`` text, or an XML ``<TEMPLATE>``, as an ordered
    list of (NAME, value or {sub-name: value}); names are upper-cased as oned does."""
    stripped = text.strip()
    if stripped.startswith("<"):
        root = etree.fromstring(stripped.encode(), _PARSER)
        xml_out: list[tuple[str, str | dict[str, str]]] = []
        for child in root:
            if not isinstance(child.tag, str):
                continue
            if len(child):
                xml_out.append((child.tag.upper(), {c.tag.upper(): (c.text or "") for c in child
                                                    if isinstance(c.tag, str)}))
            else:
                xml_out.append((child.tag.upper(), child.text or ""))
        return xml_out
    toks = _tokens(text)
    out: list[tuple[str, str | dict[str, str]]] = []
    i = 0

    def expect(kind: str) -> str:
        nonlocal i
        if toks[i][0] != kind:
            raise ValueError(f"syntax error in template: expected {kind}, got {toks[i][1] or toks[i][0]!r}")
        i += 1
        return toks[i - 1][1]

    def scalar() -> str:
        nonlocal i
        kind, value = toks[i]
        if kind in ("value", "name"):
            i += 1
            return value
        if kind in ("nl", "comma", "rb"):
            return ""
        raise ValueError(f"syntax error in template near {value!r}")

    while i < len(toks):
        if toks[i][0] == "nl":
            i += 1
            continue
        name = expect("name").upper()
        expect("eq")
        if toks[i][0] == "lb":
            i += 1
            vector: dict[str, str] = {}
            while True:
                while toks[i][0] in ("nl", "comma"):
                    i += 1
                if toks[i][0] == "rb":
                    i += 1
                    break
                sub = expect("name").upper()
                expect("eq")
                vector[sub] = scalar()
            out.append((name, vector))
        else:
            out.append((name, scalar()))
    return out


def _merge_template(target: etree._Element, attrs: list[tuple[str, str | dict[str, str]]], append: bool) -> None:
    """Template::merge (append) or replace: a name given replaces every attribute of that name."""
    if not append:
        for child in list(target):
            target.remove(child)
    names = {name for name, _ in attrs}
    for child in list(target):
        if isinstance(child.tag, str) and child.tag in names:
            target.remove(child)
    for name, value in attrs:
        if isinstance(value, dict):
            vec = _sub(target, name)
            for sub_name, sub_value in value.items():
                _sub(vec, sub_name, sub_value, cdata=True)
        else:
            _sub(target, name, value, cdata=True)


# ----------------------------------------------------------------------------------------------
# document builders (shapes of tests/fixtures/opennebula/*.xml)


def datastore_document(ds_id: int, name: str, *, ds_type: str = "IMAGE_DS", ds_mad: str = "-",
                       tm_mad: str = "storpool", disk_type: str = "BLOCK", base_path: str | None = None,
                       attrs: Mapping[str, object] | None = None, total_mb: int = 2097152,
                       free_mb: int = 1887436) -> etree._Element:
    """A ``<DATASTORE>`` like datastore-100-image.xml / datastore-101-system.xml."""
    ds = etree.Element("DATASTORE")
    for key, value in (("ID", ds_id), ("UID", 0), ("GID", 0), ("UNAME", "oneadmin"), ("GNAME", "oneadmin"),
                       ("NAME", name)):
        _sub(ds, key, value)
    _permissions(ds, group_use=True)
    _sub(ds, "DS_MAD", ds_mad, cdata=True)
    _sub(ds, "TM_MAD", tm_mad, cdata=True)
    _sub(ds, "BASE_PATH", base_path or f"/var/lib/one//datastores/{ds_id}", cdata=True)
    _sub(ds, "TYPE", DS_TYPES[ds_type])
    _sub(ds, "DISK_TYPE", DISK_TYPES.get(disk_type, 0))
    _sub(ds, "STATE", 0)
    clusters = _sub(ds, "CLUSTERS")
    _sub(clusters, "ID", 0)
    _sub(ds, "TOTAL_MB", total_mb)
    _sub(ds, "FREE_MB", free_mb)
    _sub(ds, "USED_MB", total_mb - free_mb)
    _sub(ds, "IMAGES")
    tpl: dict[str, object] = {"ALLOW_ORPHANS": "YES", "DISK_TYPE": disk_type}
    if ds_type == "IMAGE_DS":
        tpl.update(CLONE_TARGET="SELF", DRIVER="raw", DS_MAD=ds_mad, LN_TARGET="NONE")
    else:
        tpl.update(DS_MIGRATE="YES", SHARED="YES")
    tpl.update(RESTRICTED_DIRS="/", SAFE_DIRS="/var/tmp", TM_MAD=tm_mad, TYPE=ds_type)
    tpl.update(attrs or {})
    ds.append(_template_element("TEMPLATE", sorted(tpl.items())))
    return ds


def image_document(image_id: int, *, name: str | None = None, source: str = "", size_mb: int = 0,
                   ds_id: int = 100, ds_name: str = "", persistent: bool = False, image_type: str = "OS",
                   disk_type: str = "BLOCK", fmt: str = "raw", fs: str = "", path: str = "",
                   state: int = IMAGE_READY, template: Mapping[str, object] | None = None) -> etree._Element:
    """An ``<IMAGE>`` like the one in ds-cp.xml."""
    img = etree.Element("IMAGE")
    for key, value in (("ID", image_id), ("UID", 0), ("GID", 0), ("UNAME", "oneadmin"), ("GNAME", "oneadmin"),
                       ("NAME", name or f"image-{image_id}")):
        _sub(img, key, value)
    _permissions(img)
    _sub(img, "TYPE", IMAGE_TYPES[image_type])
    _sub(img, "DISK_TYPE", DISK_TYPES.get(disk_type, 0))
    _sub(img, "PERSISTENT", int(persistent))
    _sub(img, "REGTIME", 1717000100)
    _sub(img, "SOURCE", source, cdata=True)
    _sub(img, "PATH", path, cdata=True)
    _sub(img, "FORMAT", fmt, cdata=True)
    _sub(img, "FS", fs, cdata=True)
    _sub(img, "SIZE", size_mb)
    _sub(img, "STATE", state)
    _sub(img, "PREV_STATE", 0)
    _sub(img, "RUNNING_VMS", 0)
    _sub(img, "CLONING_OPS", 0)
    _sub(img, "CLONING_ID", -1)
    _sub(img, "TARGET_SNAPSHOT", -1)
    _sub(img, "DATASTORE_ID", ds_id)
    _sub(img, "DATASTORE", ds_name)
    _sub(img, "VMS")
    _sub(img, "CLONES")
    _sub(img, "APP_CLONES")
    tpl: dict[str, object] = {"DEV_PREFIX": "vd"}
    tpl.update(template or {})
    img.append(_template_element("TEMPLATE", tpl))
    snaps = _sub(img, "SNAPSHOTS")
    _sub(snaps, "ALLOW_ORPHANS", "YES", cdata=True)
    _sub(snaps, "CURRENT_BASE", -1, cdata=True)
    _sub(snaps, "NEXT_SNAPSHOT", 0, cdata=True)
    _sub(img, "BACKUP_INCREMENTS")
    _sub(img, "BACKUP_DISK_IDS")
    return img


def host_document(name: str, host_id: int, attrs: Mapping[str, object] | None = None, *,
                  state: int = HOST_MONITORED, cluster_id: int = 0) -> etree._Element:
    """A ``<HOST>`` as ``onehost show -x`` prints it (Host::to_xml, 6.x/7.x)."""
    host = etree.Element("HOST")
    _sub(host, "ID", host_id)
    _sub(host, "NAME", name)
    _sub(host, "STATE", state)
    _sub(host, "PREV_STATE", state)
    _sub(host, "IM_MAD", "kvm", cdata=True)
    _sub(host, "VM_MAD", "kvm", cdata=True)
    _sub(host, "CLUSTER_ID", cluster_id)
    _sub(host, "CLUSTER", "default")
    share = _sub(host, "HOST_SHARE")
    for key, value in (("MEM_USAGE", 0), ("CPU_USAGE", 0), ("TOTAL_MEM", 16777216), ("TOTAL_CPU", 800),
                       ("MAX_MEM", 16777216), ("MAX_CPU", 800), ("RUNNING_VMS", 0), ("VMS_THREAD", 1)):
        _sub(share, key, value)
    dss = _sub(share, "DATASTORES")
    for key in ("DISK_USAGE", "FREE_DISK", "MAX_DISK", "USED_DISK"):
        _sub(dss, key, 0)
    _sub(share, "PCI_DEVICES")
    _sub(share, "NUMA_NODES")
    _sub(host, "VMS")
    tpl: dict[str, object] = {"ARCH": "x86_64", "CPUSPEED": 2000, "HOSTNAME": name, "HYPERVISOR": "kvm",
                              "IM_MAD": "kvm", "VM_MAD": "kvm"}
    tpl.update(attrs or {})
    host.append(_template_element("TEMPLATE", tpl))
    _sub(host, "MONITORING")
    return host


def vm_document(vm_id: int, *, disks: Iterable[Mapping[str, object]] = (), context: Mapping[str, object] | None
                = None, host: str = "node1", host_id: int = 1, system_ds: int = 101, tm_mad: str = "storpool",
                name: str | None = None, state: int = VM_ACTIVE, lcm_state: int = LCM_RUNNING,
                user: Mapping[str, object] | None = None, template: Mapping[str, object] | None = None,
                history: bool = True) -> etree._Element:
    """A ``<VM>`` shaped like vm-42.xml: its PERMISSIONS, NIC, GRAPHICS, OS, ... kept; DISKs
    replaced by ``disks`` (DISK attribute dicts, CDATA like oned), CONTEXT by ``context``
    (None: no CONTEXT), one history record on ``host`` with the system datastore's TM_MAD."""
    vm = etree.parse(str(FIXTURES / "vm-42.xml"), _PARSER).getroot()
    _set_text(vm, "ID", vm_id)
    _set_text(vm, "NAME", name or f"vm-{vm_id}")
    _set_text(vm, "STATE", state)
    _set_text(vm, "LCM_STATE", lcm_state)
    tpl = vm.find("TEMPLATE")
    assert tpl is not None
    _set_text(tpl, "VMID", vm_id, cdata=True)
    _set_text(tpl, "AUTOMATIC_DS_REQUIREMENTS", f'("CLUSTERS/ID" @> 0) & (TM_MAD = "{tm_mad}")', cdata=True)
    # oned writes template attributes in name order: ... CONTEXT, CPU, CPU_MODEL, DISK..., FEATURES ...
    old_context = tpl.find("CONTEXT")
    if old_context is not None:
        if context is None:
            tpl.remove(old_context)
        else:
            for key, value in context.items():
                _set_text(old_context, key, value, cdata=True)
    old_disks = tpl.findall("DISK")
    position = list(tpl).index(old_disks[0]) if old_disks else len(tpl)
    for old in old_disks:
        tpl.remove(old)
    for offset, disk in enumerate(disks):
        tpl.insert(position + offset, _template_element("DISK", sorted((k, v) for k, v in disk.items()
                                                                         if v is not None)))
    for key, value in (template or {}).items():
        _set_text(tpl, key, value, cdata=True)
    ut = vm.find("USER_TEMPLATE")
    assert ut is not None
    for key, value in (user or {}).items():
        _set_text(ut, key, value, cdata=True)
    records = vm.find("HISTORY_RECORDS")
    assert records is not None
    hist = records.find("HISTORY")
    assert hist is not None
    if history:
        _set_text(hist, "OID", vm_id)
        _set_text(hist, "HOSTNAME", host)
        _set_text(hist, "HID", host_id)
        _set_text(hist, "DS_ID", system_ds)
        _set_text(hist, "TM_MAD", tm_mad, cdata=True)
    else:
        records.remove(hist)
    etree.indent(vm, space="  ")
    return vm


def _short_vm(vm: etree._Element) -> etree._Element:
    """What one.vmpool.info returns per VM (VirtualMachine::to_xml_short)."""
    out = etree.Element("VM")
    for key in ("ID", "UID", "GID", "UNAME", "GNAME", "NAME", "LAST_POLL", "STATE", "LCM_STATE", "RESCHED",
                "STIME", "ETIME", "DEPLOY_ID"):
        _sub(out, key, _text(vm, key))
    lock = vm.find("LOCK")
    if lock is not None:
        out.append(copy.deepcopy(lock))
    tpl = _sub(out, "TEMPLATE")
    _sub(tpl, "CPU", _text(vm, "TEMPLATE/CPU"))
    _sub(tpl, "MEMORY", _text(vm, "TEMPLATE/MEMORY"))
    for disk in vm.iterfind("TEMPLATE/DISK"):
        short = _sub(tpl, "DISK")
        for key in _DISK_SHORT:
            _sub(short, key, _text(disk, key))
    for nic in vm.iterfind("TEMPLATE/NIC"):
        short = _sub(tpl, "NIC")
        for key in ("IP", "IP6", "IP6_GLOBAL", "IP6_ULA", "IP6_LINK", "MAC", "NETWORK", "NETWORK_ID", "NIC_ID",
                    "SECURITY_GROUPS"):
            if nic.find(key) is not None:
                _sub(short, key, _text(nic, key))
    graphics = vm.find("TEMPLATE/GRAPHICS")
    if graphics is not None:
        tpl.append(copy.deepcopy(graphics))
    monitoring = vm.find("MONITORING")
    out.append(copy.deepcopy(monitoring) if monitoring is not None else etree.Element("MONITORING"))
    user = _sub(out, "USER_TEMPLATE")
    for child in vm.iterfind("USER_TEMPLATE/*"):
        if child.tag in _USER_SHORT:
            user.append(copy.deepcopy(child))
    records = _sub(out, "HISTORY_RECORDS")
    history = vm.findall("HISTORY_RECORDS/HISTORY")
    if history:
        short = _sub(records, "HISTORY")
        for key in _HISTORY_SHORT:
            _sub(short, key, _text(history[-1], key))
    return out


# ----------------------------------------------------------------------------------------------
# the server


class ApiError(Exception):
    """An oned failure reply ``[False, "[method] message", code, resp_id, -1]``."""

    def __init__(self, code: int, message: str, resp_id: int = -1) -> None:
        super().__init__(message)
        self.code, self.message, self.resp_id = code, message, resp_id


@dataclass
class Fault:
    """One injected fault; ``fired`` counts how often it triggered."""

    method: str
    mode: str  # error | delay | drop
    times: int | None
    code: int
    message: str
    delay: float
    fired: int = 0


class _DropConnection(Exception):
    pass


class _Handler(xmlrpc.server.SimpleXMLRPCRequestHandler):
    rpc_paths = ("/RPC2", "/")
    server: _Server

    def do_POST(self) -> None:
        self.server.local.drop = False
        try:
            length = int(self.headers.get("content-length") or 0)
            data = self.rfile.read(length)
            reply: bytes | str = self.server._marshaled_dispatch(data, None, self.path)
            response = reply.encode() if isinstance(reply, str) else reply
        except Exception:  # a double bug: answer 500 rather than hang the client
            self.send_response(500)
            self.send_header("Content-length", "0")
            self.end_headers()
            return
        if self.server.local.drop:  # an injected fault: close without any reply
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-type", "text/xml")
        self.send_header("Content-length", str(len(response)))
        self.end_headers()
        self.wfile.write(response)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(socketserver.ThreadingMixIn, xmlrpc.server.SimpleXMLRPCServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, double: OnedDouble) -> None:
        super().__init__(("127.0.0.1", 0), requestHandler=_Handler, logRequests=False, allow_none=False)
        self.double = double
        self.local = threading.local()

    def _dispatch(self, method: str, params: Any) -> Any:
        try:
            return self.double._call(method, tuple(params))
        except _DropConnection:
            self.local.drop = True
            raise


class OnedDouble:
    """Test double of oned's XML-RPC API (not oned): see the module docstring."""

    def __init__(self, auth: str = "oneadmin:opennebula") -> None:
        self.auth = auth
        self.vms: dict[int, etree._Element] = {}
        self.images: dict[int, etree._Element] = {}
        self.datastores: dict[int, etree._Element] = {}
        self.hosts: dict[int, etree._Element] = {}
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._faults: list[Fault] = []
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._methods: dict[str, tuple[Callable[..., Any], tuple[type, ...], int]] = {
            # name -> (handler, parameter types after the session, how many are required)
            "one.vm.info": (self._vm_info, (int, bool), 1),
            "one.vm.update": (self._vm_update, (int, str, int), 2),
            "one.vmpool.info": (self._vmpool_short, (int, int, int, int), 3),
            "one.vmpool.infoextended": (self._vmpool_full, (int, int, int, int, str), 3),
            "one.image.info": (self._image_info, (int, bool), 1),
            "one.image.update": (self._image_update, (int, str, int), 2),
            "one.image.allocate": (self._image_allocate, (str, int, bool), 2),
            "one.imagepool.info": (self._imagepool_info, (int, int, int), 3),
            "one.datastore.info": (self._datastore_info, (int, bool), 1),
            "one.datastorepool.info": (self._datastorepool_info, (), 0),
            "one.host.info": (self._host_info, (int, bool), 1),
            "one.hostpool.info": (self._hostpool_info, (), 0),
        }

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> OnedDouble:
        if self._server is None:
            self._server = _Server(self)
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                            name="oned-double", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> OnedDouble:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the oned double is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/RPC2"

    # -- documents ------------------------------------------------------------------------------

    def add_vm(self, doc: Doc) -> etree._Element:
        el = _parse(doc, "VM")
        with self._lock:
            self.vms[int(_text(el, "ID"))] = el
        return el

    def add_image(self, doc: Doc) -> etree._Element:
        el = _parse(doc, "IMAGE")
        with self._lock:
            self.images[int(_text(el, "ID"))] = el
        return el

    def add_datastore(self, doc: Doc) -> etree._Element:
        el = _parse(doc, "DATASTORE")
        with self._lock:
            self.datastores[int(_text(el, "ID"))] = el
        return el

    def add_host(self, name: str, host_id: int, attrs: Mapping[str, object] | None = None, *,
                 state: int = HOST_MONITORED, doc: Doc | None = None) -> etree._Element:
        el = _parse(doc, "HOST") if doc is not None else host_document(name, host_id, attrs, state=state)
        with self._lock:
            self.hosts[host_id] = el
        return el

    def vm(self, vm_id: int) -> etree._Element:
        return self.vms[vm_id]

    def image(self, image_id: int) -> etree._Element:
        return self.images[image_id]

    def datastore(self, ds_id: int) -> etree._Element:
        return self.datastores[ds_id]

    def host(self, key: int | str) -> etree._Element:
        if isinstance(key, int):
            return self.hosts[key]
        for el in self.hosts.values():
            if _text(el, "NAME") == key:
                return el
        raise KeyError(key)

    def served(self, kind: str, obj_id: int) -> etree._Element:
        """A copy of document ``kind`` ("vm", "image", "datastore", "host") as the API serves
        it (derived lists filled in); KeyError if there is none."""
        with self._lock:
            if kind == "vm":
                return copy.deepcopy(self.vms[obj_id])
            if kind == "image":
                return self._serve_image(self.images[obj_id])
            if kind == "datastore":
                return self._serve_datastore(self.datastores[obj_id])
            if kind == "host":
                return self._serve_host(self.hosts[obj_id])
        raise ValueError(f"unknown document kind {kind!r}")

    def remove_vm(self, vm_id: int) -> None:
        with self._lock:
            del self.vms[vm_id]

    def remove_image(self, image_id: int) -> None:
        with self._lock:
            del self.images[image_id]

    def remove_datastore(self, ds_id: int) -> None:
        with self._lock:
            del self.datastores[ds_id]

    def remove_host(self, host_id: int) -> None:
        with self._lock:
            del self.hosts[host_id]

    # -- test controls --------------------------------------------------------------------------

    def fail(self, method: str, mode: str = "error", times: int | None = 1, *, code: int = INTERNAL,
             message: str | None = None, delay: float = 0.0) -> Fault:
        """Make the next ``times`` calls of ``method`` ("*" = any) fail: an error reply with
        ``code`` (e.g. NO_EXISTS), a ``delay`` before the call runs, or a dropped connection."""
        if mode not in ("error", "delay", "drop"):
            raise ValueError(f"unknown fault mode {mode!r}")
        fault = Fault(method, mode, times, code, message or f"simulated failure of {method}", delay)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def count(self, method: str) -> int:
        """How many requests of ``method`` arrived."""
        return sum(1 for name, _ in self.calls if name == method)

    # -- dispatch -------------------------------------------------------------------------------

    def _take_fault(self, method: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method in (method, "*"):
                    fault.fired += 1
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def _call(self, method: str, params: tuple[Any, ...]) -> Any:
        with self._lock:
            self.calls.append((method, params[1:]))
        entry = self._methods.get(method)
        if entry is None:
            raise xmlrpc.client.Fault(FAULT_NO_METHOD, f"Method '{method}' not defined")
        handler, types, required = entry
        args = params[1:]
        if not params or not isinstance(params[0], str):
            raise xmlrpc.client.Fault(FAULT_TYPE, "Type mismatch: parameter 0 (session) must be a string")
        if not required <= len(args) <= len(types):
            raise xmlrpc.client.Fault(FAULT_TYPE, f"{method}: expected {required}..{len(types)} parameters "
                                                  f"after the session, got {len(args)}")
        for index, (value, kind) in enumerate(zip(args, types, strict=False), 1):
            ok = isinstance(value, bool) if kind is bool else isinstance(value, kind) and not isinstance(value, bool)
            if not ok:
                raise xmlrpc.client.Fault(FAULT_TYPE, f"Type mismatch: parameter {index} must be {kind.__name__}, "
                                                      f"got {type(value).__name__}")
        fault = self._take_fault(method)
        if fault is not None and fault.mode == "delay":
            time.sleep(fault.delay)
        if fault is not None and fault.mode == "drop":
            raise _DropConnection()
        if params[0] != self.auth:
            return [False, f"[{method}] User couldn't be authenticated, aborting call.", AUTHENTICATION, -1, -1]
        if fault is not None and fault.mode == "error":
            return [False, f"[{method}] {fault.message}", fault.code, -1, -1]
        try:
            with self._lock:
                body = handler(*args)
        except ApiError as err:
            return [False, f"[{method}] {err.message}", err.code, err.resp_id, -1]
        return [True, body, SUCCESS]

    # -- handlers (called under the lock) -------------------------------------------------------

    @staticmethod
    def _missing(what: str, obj_id: int) -> ApiError:
        return ApiError(NO_EXISTS, f"Error getting {what} [{obj_id}].", obj_id)

    def _serve_image(self, img: etree._Element) -> etree._Element:
        out = copy.deepcopy(img)
        image_id = _text(img, "ID")
        users = sorted(vm_id for vm_id, vm in self.vms.items()
                       if _text(vm, "STATE") != str(VM_DONE)
                       and any(_text(d, "IMAGE_ID") == image_id for d in vm.iterfind("TEMPLATE/DISK")))
        vms = out.find("VMS")
        if vms is not None:
            for child in list(vms):
                vms.remove(child)
            for vm_id in users:
                _sub(vms, "ID", vm_id)
        if out.find("RUNNING_VMS") is not None:
            _set_text(out, "RUNNING_VMS", len(users))
        return out

    def _serve_datastore(self, ds: etree._Element) -> etree._Element:
        out = copy.deepcopy(ds)
        images = out.find("IMAGES")
        if images is not None:
            for child in list(images):
                images.remove(child)
            ds_id = _text(ds, "ID")
            for image_id, img in sorted(self.images.items()):
                if _text(img, "DATASTORE_ID") == ds_id:
                    _sub(images, "ID", image_id)
        return out

    def _serve_host(self, host: etree._Element) -> etree._Element:
        out = copy.deepcopy(host)
        vms = out.find("VMS")
        if vms is not None:
            for child in list(vms):
                vms.remove(child)
            host_id = _text(host, "ID")
            for vm_id, vm in sorted(self.vms.items()):
                history = vm.findall("HISTORY_RECORDS/HISTORY")
                if history and _text(history[-1], "HID") == host_id and _text(vm, "STATE") != str(VM_DONE):
                    _sub(vms, "ID", vm_id)
        return out

    @staticmethod
    def _xml(el: etree._Element) -> str:
        return etree.tostring(el, encoding="unicode")

    def _pool(self, tag: str, items: Iterable[etree._Element]) -> str:
        pool = etree.Element(tag)
        for item in items:
            pool.append(item if item.getparent() is None else copy.deepcopy(item))
        return self._xml(pool)

    def _vm_info(self, vm_id: int, decrypt: bool = False) -> str:
        vm = self.vms.get(vm_id)
        if vm is None:
            raise self._missing("virtual machine", vm_id)
        return self._xml(vm)

    def _select_vms(self, flt: int, start: int, end: int, state: int = -1) -> list[etree._Element]:
        items = sorted(self.vms.items())
        if flt >= 0:
            items = [(i, vm) for i, vm in items if _text(vm, "UID") == str(flt)]
        elif flt == -3:  # the caller's own: the double's user is oneadmin (uid 0)
            items = [(i, vm) for i, vm in items if _text(vm, "UID") == "0"]
        if state == -1:
            items = [(i, vm) for i, vm in items if _text(vm, "STATE") != str(VM_DONE)]
        elif state >= 0:
            items = [(i, vm) for i, vm in items if _text(vm, "STATE") == str(state)]
        if end < -1:  # pagination: offset ``start``, page size ``-end``
            items = items[max(start, 0):max(start, 0) - end]
        elif start >= 0 or end >= 0:
            items = [(i, vm) for i, vm in items if (start < 0 or i >= start) and (end < 0 or i <= end)]
        return [vm for _, vm in items]

    def _vmpool_short(self, flt: int, start: int, end: int, state: int = -1) -> str:
        return self._pool("VM_POOL", [_short_vm(vm) for vm in self._select_vms(flt, start, end, state)])

    def _vmpool_full(self, flt: int, start: int, end: int, state: int = -1, query: str = "") -> str:
        return self._pool("VM_POOL", [copy.deepcopy(vm) for vm in self._select_vms(flt, start, end, state)])

    def _vm_update(self, vm_id: int, template: str, append: int = 0) -> int:
        vm = self.vms.get(vm_id)
        if vm is None:
            raise self._missing("virtual machine", vm_id)
        try:
            attrs = parse_template(template)
        except (ValueError, etree.XMLSyntaxError) as exc:
            raise ApiError(ACTION, f"Error parsing template: {exc}", vm_id) from None
        user = vm.find("USER_TEMPLATE")
        if user is None:
            user = _sub(vm, "USER_TEMPLATE")
        _merge_template(user, attrs, bool(append))
        return vm_id

    def _image_info(self, image_id: int, decrypt: bool = False) -> str:
        img = self.images.get(image_id)
        if img is None:
            raise self._missing("image", image_id)
        return self._xml(self._serve_image(img))

    def _imagepool_info(self, flt: int, start: int, end: int) -> str:
        items = sorted(self.images.items())
        if flt >= 0:
            items = [(i, img) for i, img in items if _text(img, "UID") == str(flt)]
        if start >= 0 or end >= 0:
            items = [(i, img) for i, img in items if (start < 0 or i >= start) and (end < 0 or i <= end)]
        return self._pool("IMAGE_POOL", [self._serve_image(img) for _, img in items])

    def _image_update(self, image_id: int, template: str, append: int = 0) -> int:
        img = self.images.get(image_id)
        if img is None:
            raise self._missing("image", image_id)
        try:
            attrs = parse_template(template)
        except (ValueError, etree.XMLSyntaxError) as exc:
            raise ApiError(ACTION, f"Error parsing template: {exc}", image_id) from None
        tpl = img.find("TEMPLATE")
        if tpl is None:
            tpl = _sub(img, "TEMPLATE")
        _merge_template(tpl, attrs, bool(append))
        return image_id

    def _image_allocate(self, template: str, ds_id: int, skip_capacity_check: bool = False) -> int:
        try:
            attrs = dict(parse_template(template))
        except (ValueError, etree.XMLSyntaxError) as exc:
            raise ApiError(ALLOCATE, f"Error allocating a new image. Parse error: {exc}") from None
        ds = self.datastores.get(ds_id)
        if ds is None:
            raise self._missing("datastore", ds_id)
        if _text(ds, "TYPE") != str(DS_TYPES["IMAGE_DS"]) and _text(ds, "TYPE") != str(DS_TYPES["BACKUP_DS"]):
            raise ApiError(ACTION, "New images can only be allocated in a files or image datastore.", ds_id)
        name = attrs.pop("NAME", "")
        if not isinstance(name, str) or not name.strip():
            raise ApiError(ALLOCATE, "Error allocating a new image. No NAME in template.")
        if any(_text(img, "NAME") == name for img in self.images.values()):
            taken = next(i for i, img in self.images.items() if _text(img, "NAME") == name)
            raise ApiError(ALLOCATE, f"Error allocating a new image. NAME is already taken by IMAGE {taken}.")

        def scalar(key: str, default: str = "") -> str:
            value = attrs.pop(key, default)
            return value if isinstance(value, str) else default

        image_type = scalar("TYPE", "OS").upper()
        if image_type not in IMAGE_TYPES:
            raise ApiError(ALLOCATE, f"Error allocating a new image. Unknown image type {image_type}.")
        size = scalar("SIZE", "0")
        source = scalar("SOURCE")
        image_id = max(self.images, default=-1) + 1
        disk_type = {v: k for k, v in DISK_TYPES.items()}.get(int(_text(ds, "DISK_TYPE", "0") or 0), "FILE")
        img = image_document(
            image_id, name=name, source=source, size_mb=int(size) if size.isdigit() else 0, ds_id=ds_id,
            ds_name=_text(ds, "NAME"), persistent=scalar("PERSISTENT").upper() in ("YES", "1"),
            image_type=image_type, disk_type=disk_type, fmt=scalar("FORMAT"), fs=scalar("FS"),
            path=scalar("PATH"), state=IMAGE_READY if source else IMAGE_LOCKED, template={})
        tpl = img.find("TEMPLATE")
        assert tpl is not None
        _merge_template(tpl, list(attrs.items()), append=True)
        self.images[image_id] = img
        return image_id

    def _datastore_info(self, ds_id: int, decrypt: bool = False) -> str:
        ds = self.datastores.get(ds_id)
        if ds is None:
            raise self._missing("datastore", ds_id)
        return self._xml(self._serve_datastore(ds))

    def _datastorepool_info(self) -> str:
        return self._pool("DATASTORE_POOL", [self._serve_datastore(ds) for _, ds in sorted(self.datastores.items())])

    def _host_info(self, host_id: int, decrypt: bool = False) -> str:
        host = self.hosts.get(host_id)
        if host is None:
            raise self._missing("host", host_id)
        return self._xml(self._serve_host(host))

    def _hostpool_info(self) -> str:
        return self._pool("HOST_POOL", [self._serve_host(h) for _, h in sorted(self.hosts.items())])
