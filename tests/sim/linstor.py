"""A simulator of the LINSTOR controller's REST API, for tests. It is NOT LINSTOR.

No LINSTOR controller, satellite or DRBD can run on the project's test machines, so the
``linstor_un`` storage drivers are tested against this stand-in. It speaks the HTTP/JSON API
that the controller documents in its OpenAPI description (REST API 1.28.0): the same paths,
request JSON, reply JSON, ApiCallRc envelopes and HTTP status codes, checked in this project's
tests with LINSTOR's own Python client (``python-linstor``: ``linstor.Linstor``,
``MultiLinstor``, ``Resource``, ``ResourceGroup``) and against this project's contract
(``tests/fixtures/linstor-contract``: our JSON Schemas of those requests and replies). It replicates nothing: every
volume is ONE sparse file under ``root_dir`` whose data all diskful replicas of the resource
share, exposed as one Linux loop device that every node holding the resource (diskful or
diskless) sees through its own ``by-res`` link. There is no DRBD, no sync, no quorum, no
satellite, no real storage pool; space numbers are estimates from the files.

Python API
----------
``sim = LinstorSim(root_dir)``; ``sim.start()`` listens on 127.0.0.1 and an ephemeral port
(``sim.host``, ``sim.port``, ``sim.url`` = ``linstor://127.0.0.1:PORT`` for python-linstor,
``sim.http_url`` = ``http://127.0.0.1:PORT``); ``sim.stop()`` closes the server and its open
connections, removes every ``by-res`` link it made and detaches every loop device it attached
(nothing else; the files under ``root_dir`` stay). The object is a context manager too
(``with LinstorSim(tmp_path) as sim: ...``), and an ``atexit`` hook stops simulators a crashed
test left running.

- ``port = sim.serve_tls(context)`` also serves the same controller over TLS (as a controller
  listens on 3370 for HTTP and 3371 for HTTPS): a second listener on 127.0.0.1 whose accepted
  connections are wrapped by ``context`` (an ``ssl.SSLContext`` for the server side, made by the
  test with its own certificate; to require client certificates, as a controller with a
  trust store does, the test sets ``verify_mode = ssl.CERT_REQUIRED`` and the client CA on
  it). ``sim.tls_port``, ``sim.tls_url`` = ``linstor+ssl://127.0.0.1:PORT``; ``stop()`` closes
  it too. The handshake runs in the connection's thread; a failed one is counted in
  ``sim.tls_failures`` (the client saw no reply). Requests record ``tls`` (True over TLS).
- ``sim.add_node(name, by_res_dir=None, *, pool="pool", provider="LVM_THIN",
  capacity_kib=..., props=None, online=True, address="127.0.0.1")`` adds a satellite with one
  storage pool ``pool`` (``None``: no diskful pool, e.g. a compute-only node) plus the diskless
  pool ``DfltDisklessStorPool``. ``by_res_dir`` is what ``/dev/drbd/by-res`` is on a real
  node (default ``root_dir/nodes/<name>/by-res``): a resource placed or made available on the
  node appears there as ``<by_res_dir>/<resource>/<volume number>`` (a symlink to the loop
  device), so each test "node" sees only its own resources. The data (and so any device)
  exists while at least one diskful replica does: a diskless resource without a diskful peer
  has no link, as DRBD would have no data to serve. Directories the simulator had to create
  for links are removed again when empty. Providers without snapshot support
  (``LVM``, like LINSTOR) refuse snapshots with LINSTOR's error. ``sim.add_pool(node, name,
  provider=..., capacity_kib=...)`` adds another pool; ``sim.set_node_online(name, False)``
  makes a node OFFLINE (the autoplacer skips it); ``sim.set_in_use(resource, node, True)``
  marks a resource primary/open on a node (LINSTOR then refuses to delete it there, to delete
  the resource definition and to roll it back). A loop device some process holds open or has
  mounted also counts as "in use" for deleting the definition, deleting a volume definition
  and rollback (the simulator cannot tell on which node it was opened, so deleting one node's
  resource only looks at ``set_in_use``); ``LinstorSim(root, check_open=False)`` turns that
  /proc scan off.
- ``sim.fail(pattern, mode="error"|"delay"|"drop", times=1, delay=0.0, *, ret_code=None,
  message=None, skip=0, apply=False)`` injects faults into the next matching requests.
  ``pattern`` is a regular expression searched in the call name (the python-linstor method
  that uses the endpoint, e.g. ``"snapshot_create"``; see ``ROUTES``) and in ``"METHOD
  /path"`` (e.g. ``r"^POST .*/autoplace$"``); ``"*"`` matches everything. Modes: an error
  reply (an ApiCallRc list with ``ret_code`` = FAIL_UNKNOWN_ERROR and the route's operation and
  object masks unless given; the HTTP status follows from the code as on the controller), a
  sleep of ``delay`` seconds before the request is handled, or a closed connection without
  any reply. ``times=None`` fails every matching request, ``skip`` lets that many through
  first, ``apply=True`` performs the request and then fails (a lost reply).
  ``sim.clear_faults()`` removes them all. Note that ``Linstor.connect()`` sends GET
  /v1/controller/version twice (an HTTPS-redirect probe, then the version check).
- ``sim.calls`` is a list of ``Call(name, method, path, body)`` for every request received
  (also rejected ones); ``sim.requests`` has a dict per request with ``name``, ``method``,
  ``path``, ``query``, ``body``, ``agent`` (User-Agent), ``time``, and the ``status`` and
  ``reply`` (JSON) sent, ``None`` when the connection was dropped.
- ``sim.inventory()`` returns plain dicts: nodes, pools, resource groups, resource
  definitions (volume definitions with files and loop devices, resources per node with flags,
  pool and link, snapshots with sequence numbers and files), loop devices and links.
- ``sim.device_path(resource, node, volume=0)`` (the node's by-res link, existing or not),
  ``sim.loop_device(resource, volume=0)``, ``sim.data_path(resource, volume=0)``.

HTTP API
--------
The endpoints in ``ROUTES`` (each named after the python-linstor method that calls it). Replies
are those the OpenAPI document defines: object lists for GET, ``ApiCallRc`` lists (``ret_code``,
``message``, ``details``, ``cause``, ``correction``, ``obj_refs``, ``created_at``) for
changes. ``ret_code`` is built as on the controller: severity mask | operation mask | object
mask | code, sent as a signed 64-bit integer. HTTP status as on the controller
(ApiCallRcRestUtils): 201/200 on success (warnings included), 404 when the first error's code
is a FAIL_NOT_FOUND_* code, 403 for FAIL_ACC_DENIED_*, 400 for unparsable JSON or unknown
JSON fields (API_CALL_PARSE_ERROR, as Jackson rejects them), 500 otherwise. Empty fields are
left out of replies (the controller serializes with Jackson NON_EMPTY). Names are
case-insensitive; resource, snapshot and resource-group names follow LINSTOR's rules
(``[A-Za-z_][A-Za-z0-9_-]{1,47}``). An unknown path gets 404 with an ApiCallRc list saying the
simulator has no such endpoint.

Semantics kept from LINSTOR 1.28
--------------------------------
- Resource groups keep a select filter (place_count, storage_pool(_list),
  storage_pool_diskless_list, layer_stack, provider_list, replicas_on_same,
  replicas_on_different, x_replicas_on_different_map, not_place_with_rsc(_regex),
  node_name_list, diskless_on_remaining); spawn and autoplace merge the request's filter over
  the group's. The autoplacer places ``place_count`` diskful replicas in total (existing ones
  count; a node holding the resource diskless is toggled to diskful), one per node, on online
  nodes with a matching pool and enough free space, preferring the most free space;
  replicas_on_same needs the node property set and equal on all replicas (``key=value`` fixes
  the value), replicas_on_different allows each value once (x_replicas_on_different_map: that
  many times; nodes without the property are allowed); property keys are used as given
  (LINSTOR's CLI adds ``Aux/``, the REST API and python-linstor do not). Too few candidates:
  FAIL_NOT_ENOUGH_NODES "Not enough available nodes"; more replicas than place_count:
  WARN_RSC_ALREADY_DEPLOYED.
- make-available creates a diskless resource when a diskful peer exists, else a diskful one
  (on a pool from the group's filter), turns a diskless one diskful if asked, and is a no-op
  ("Resource already deployed as requested") otherwise. Deleting a missing resource, resource
  definition or snapshot is a warning (WARN_NOT_FOUND, HTTP 200). The last diskful replica
  cannot be deleted while diskless ones exist (FAIL_IN_USE); a resource definition with
  snapshots cannot be deleted (FAIL_EXISTS_SNAPSHOT_DFN).
- Snapshots are taken on all diskful nodes; a pool without snapshot support refuses them with
  FAIL_SNAPSHOTS_NOT_SUPPORTED "Storage driver 'LVM' does not support snapshots." (details
  name the pool and node). Each snapshot gets the definition property ``SequenceNumber``;
  rollback is only allowed to the most recent one (FAIL_EXISTS_SNAPSHOT_DFN "Rollback is only
  allowed with the most recent snapshot") and not while in use. Restore: the target definition
  must exist; snapshot-restore-volume-definition copies the volume definitions,
  snapshot-restore-resource creates the resources on the snapshot's nodes (or those given)
  from a copy of the snapshot's data.
- Volume definitions only grow once deployed; growing resizes the file and the loop device.
- Property keys outside a whitelist of namespaces (``Aux/``, ``DrbdOptions/``, ...; see
  ``PROP_NAMESPACES``) are refused with FAIL_INVLD_PROP; ``DrbdOptions/Net/allow-two-primaries``
  takes ``yes`` or ``no``.

Where this simulator differs from a controller (choices)
--------------------------------------------------------
- Node ``type`` is reported as the OpenAPI enum spells it (``Satellite``); a controller sends
  ``SATELLITE``. Compare node types case-insensitively.
- Volume ``device_path`` is the node's by-res link (a controller reports ``/dev/drbdNNNN``);
  the volume property ``Satellite/Device/Symlinks/0`` names the same link, as udev would.
  Volumes carry no ``layer_data_list``: the document's ``VolumeLayer.data`` is a ``oneOf`` of
  schemas that any object matches several of, so no reply containing it can validate.
- Error replies are ApiCallRc LISTS, as the controller sends them and python-linstor parses
  them, although the document's ``OperationFailed`` response names a single ``ApiCallRc``.
- The data of all diskful replicas is one file; snapshots are full copies
  (``cp --reflink=auto --sparse=always``); clone is synchronous (status COMPLETE at once) and
  copies data; sync-status always reports synced. Encryption flags and layer stacks are
  recorded and reported, nothing is encrypted or layered; diskless resources need DRBD in the
  layer stack. No tiebreakers are created. No authentication; HTTPS only on the extra
  ``serve_tls`` listener (no redirect from the HTTP port).
- Calls run one at a time under a lock (data copies and ``losetup`` inside it; the ``delay``
  fault sleeps outside it).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import fcntl
import http.server
import json
import os
import re
import secrets
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid as _uuid
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

__all__ = ["PROP_NAMESPACES", "ROUTES", "ApiError", "Call", "Fault", "LinstorSim", "Route"]

CONTROLLER_VERSION = "1.28.0"
REST_API_VERSION = "1.28.0"  # the OpenAPI document's version; python-linstor gates features on it
DISKLESS_POOL = "DfltDisklessStorPool"
DEFAULT_RSC_GROUP = "DfltRscGrp"
DEFAULT_CAPACITY_KIB = 100 * 2**20  # 100 GiB
DISKLESS_CAPACITY_KIB = 2**63 - 1  # what a controller reports for diskless pools
OVERSUBSCRIPTION = 20.0  # LINSTOR's default max oversubscription ratio for thin pools
FIRST_MINOR = 1000
FIRST_PORT = 7000
BLKFLSBUF = 0x1261

# ret_code bits (LINSTOR ApiConsts)
MASK_ERROR = 0xC000000000000000
MASK_WARN = 0x8000000000000000
MASK_INFO = 0x4000000000000000
MASK_BITS_OP = 0x0000000003000000
MASK_CRT = 0x0000000001000000
MASK_MOD = 0x0000000002000000
MASK_DEL = 0x0000000003000000
MASK_BITS_OBJ = 0x00000000007C0000
MASK_VLM_GRP = 0x0000000000480000
MASK_RSC_GRP = 0x0000000000440000
MASK_NODE = 0x00000000003C0000
MASK_RSC_DFN = 0x0000000000380000
MASK_RSC = 0x0000000000340000
MASK_VLM_DFN = 0x0000000000300000
MASK_STOR_POOL = 0x0000000000140000
MASK_CTRL_CONF = 0x0000000000100000
MASK_SNAPSHOT = 0x00000000000C0000
MASK_BITS_CODE = 0x0000000000007FFF

CREATED = 1
DELETED = 2
MODIFIED = 3
FAIL_INVLD_NODE_NAME = 200 | MASK_ERROR
FAIL_INVLD_RSC_NAME = 202 | MASK_ERROR
FAIL_INVLD_VLM_NR = 205 | MASK_ERROR
FAIL_INVLD_VLM_SIZE = 206 | MASK_ERROR
FAIL_INVLD_STOR_POOL_NAME = 208 | MASK_ERROR
FAIL_INVLD_PROP = 213 | MASK_ERROR
FAIL_INVLD_SNAPSHOT_NAME = 218 | MASK_ERROR
FAIL_INVLD_PLACE_COUNT = 219 | MASK_ERROR
FAIL_INVLD_LAYER_KIND = 224 | MASK_ERROR
FAIL_INVLD_LAYER_STACK = 225 | MASK_ERROR
FAIL_INVLD_PROVIDER = 227 | MASK_ERROR
FAIL_INVLD_VLM_SIZES = 228 | MASK_ERROR
FAIL_INVLD_REQUEST = 234 | MASK_ERROR
FAIL_INVLD_RSC_GRP_NAME = 237 | MASK_ERROR
FAIL_NOT_FOUND_NODE = 300 | MASK_ERROR
FAIL_NOT_FOUND_RSC_DFN = 301 | MASK_ERROR
FAIL_NOT_FOUND_RSC = 302 | MASK_ERROR
FAIL_NOT_FOUND_VLM_DFN = 303 | MASK_ERROR
FAIL_NOT_FOUND_STOR_POOL = 310 | MASK_ERROR
FAIL_NOT_FOUND_DFLT_STOR_POOL = 311 | MASK_ERROR
FAIL_NOT_FOUND_SNAPSHOT_DFN = 313 | MASK_ERROR
FAIL_NOT_FOUND_SNAPSHOT_VLM_DFN = 314 | MASK_ERROR
FAIL_NOT_FOUND_RSC_GRP = 317 | MASK_ERROR
FAIL_NOT_FOUND_VLM_GRP = 318 | MASK_ERROR
FAIL_ACC_DENIED_RSC_GRP = 419 | MASK_ERROR
FAIL_EXISTS_RSC_DFN = 501 | MASK_ERROR
FAIL_EXISTS_RSC = 502 | MASK_ERROR
FAIL_EXISTS_VLM_DFN = 503 | MASK_ERROR
FAIL_EXISTS_SNAPSHOT_DFN = 514 | MASK_ERROR
FAIL_EXISTS_RSC_GRP = 522 | MASK_ERROR
FAIL_EXISTS_VLM_GRP = 523 | MASK_ERROR
FAIL_UNDECIDABLE_AUTOPLACMENT = 985 | MASK_ERROR
FAIL_NOT_ENOUGH_FREE_SPACE = 980 | MASK_ERROR
FAIL_SNAPSHOTS_NOT_SUPPORTED = 994 | MASK_ERROR
FAIL_NOT_ENOUGH_NODES = 996 | MASK_ERROR
FAIL_IN_USE = 997 | MASK_ERROR
FAIL_UNKNOWN_ERROR = 998 | MASK_ERROR
FAIL_IMPL_ERROR = 999 | MASK_ERROR
API_CALL_PARSE_ERROR = 0x0FFFFFFFFFFFFFFD | MASK_ERROR
WARN_NOT_FOUND = 3000 | MASK_WARN
WARN_RSC_ALREADY_DEPLOYED = 1006 | MASK_WARN
WARN_RSC_ALREADY_HAS_DISK = 1007 | MASK_WARN
WARN_RSC_ALREADY_DISKLESS = 1008 | MASK_WARN
INFO_NO_RSC_SPAWNED = 10000 | MASK_INFO
SUCCESS = 0

LAYERS = ("DRBD", "LUKS", "STORAGE", "NVME", "WRITECACHE", "CACHE", "BCACHE")
DEFAULT_LAYERS = ["DRBD", "STORAGE"]
# provider kind -> (supports snapshots, thin), as LINSTOR's DeviceProviderKind
PROVIDERS: dict[str, tuple[bool, bool]] = {
    "DISKLESS": (False, True),
    "LVM": (False, False),
    "LVM_THIN": (True, True),
    "ZFS": (True, False),
    "ZFS_THIN": (True, True),
    "FILE": (True, False),
    "FILE_THIN": (True, True),
}
# property keys accepted outside these namespaces: see _check_prop
PROP_NAMESPACES = (
    "Aux/",
    "DrbdOptions/",
    "FileSystem/",
    "StorDriver/",
    "Autoplacer/",
    "DrbdProxy/",
    "NVMe/",
    "Writecache/",
    "Cache/",
    "BCache/",
    "SnapshotShipping/",
    "BackupShipping/",
    "AutoSnapshot/",
)
PROP_KEYS = frozenset({"StorPoolName", "StorPoolNameDrbdMeta", "PrefNic", "PeerSlotsNewResource", "AutoplaceTarget"})
PROP_VALUES: dict[str, re.Pattern[str]] = {
    "DrbdOptions/Net/allow-two-primaries": re.compile(r"yes|no"),
}

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
_NAME_TRANSLATE = re.compile(r"[^A-Za-z0-9_-]")

_RUNNING: weakref.WeakSet[LinstorSim] = weakref.WeakSet()


# ----------------------------------------------------------------------------------------------
# errors and replies


def _signed(value: int) -> int:
    value &= 2**64 - 1
    return value - 2**64 if value >= 2**63 else value


class ApiError(Exception):
    """An ApiCallRc error (or warning) raised by a handler; the route's masks are added."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        details: str | None = None,
        cause: str | None = None,
        correction: str | None = None,
        refs: dict[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.cause = cause
        self.correction = correction
        self.refs = refs or {}
        self.status = status


class _ParseError(Exception):
    """A request the controller's JSON layer would reject (HTTP 400, API_CALL_PARSE_ERROR)."""


def _now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).astimezone().isoformat(timespec="milliseconds")


def _ms() -> int:
    return int(time.time() * 1000)


def _compact(obj: dict[str, Any]) -> dict[str, Any]:
    """Jackson NON_EMPTY: leave out None, empty strings, lists and maps."""
    return {k: v for k, v in obj.items() if v is not None and v != "" and v != [] and v != {}}


def _status_of(entries: list[dict[str, Any]], success: int) -> int:
    """The HTTP status a controller answers an ApiCallRc list with (ApiCallRcRestUtils)."""
    for entry in entries:
        code = entry["ret_code"] & (2**64 - 1)
        if code & MASK_ERROR == MASK_ERROR:
            stripped = code & MASK_BITS_CODE
            if code == API_CALL_PARSE_ERROR:
                return 400
            if 300 <= stripped <= 399:
                return 404
            if 400 <= stripped <= 499:
                return 403
            return 500
    return success


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise ApiError(FAIL_IMPL_ERROR, f"simulator: {' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _flush_bdev(dev: str | None) -> None:
    """Write back and drop the block-device cache of a loop device (BLKFLSBUF).

    Data written through the device then reaches the backing file before it is copied, and
    data changed in the file (rollback) is not hidden behind stale cached blocks.
    """
    if not dev:
        return
    with contextlib.suppress(OSError):
        fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, BLKFLSBUF, 0)
        finally:
            os.close(fd)


def _open_loop_devices() -> set[str]:
    """Loop devices some process holds open or that are mounted (a coarse /proc scan)."""
    found: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("/dev/loop"):
                    found.add(target)
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            tail = line.split(" - ", 1)
            if len(tail) == 2:
                parts = tail[1].split()
                if len(parts) > 1 and parts[1].startswith("/dev/loop"):
                    found.add(parts[1])
    return found


# ----------------------------------------------------------------------------------------------
# request checks


def _obj(body: Any, what: str, allowed: Iterable[str], required: Iterable[str] = ()) -> dict[str, Any]:
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise _ParseError(f"{what}: expected a JSON object")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise _ParseError(f'{what}: Unrecognized field "{unknown[0]}"')
    missing = [k for k in required if body.get(k) is None]
    if missing:
        raise _ParseError(f"{what}: missing required field {missing[0]}")
    return body


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise _ParseError(f"{key}: expected a string")
    return value


def _opt_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise _ParseError(f"{key}: expected an integer")
    return value


def _opt_bool(body: dict[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise _ParseError(f"{key}: expected true or false")
    return value


def _opt_strs(body: dict[str, Any], key: str) -> list[str] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _ParseError(f"{key}: expected a list of strings")
    return list(value)


def _opt_props(body: dict[str, Any], key: str) -> dict[str, str] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _ParseError(f"{key}: expected a map of strings")
    return dict(value)


def _check_name(value: Any, kind: str, code: int, min_len: int = 2, max_len: int = 48) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value) or not min_len <= len(value) <= max_len:
        raise ApiError(
            code,
            f"The specified {kind} name '{value}' is not a valid {kind} name.",
            details=f"Names are {min_len} to {max_len} characters: a letter or '_', then letters, digits, '_' or '-'.",
        )
    return value


def _check_node_name(value: Any) -> str:
    if not isinstance(value, str) or not 2 <= len(value) <= 255 or not _HOST.fullmatch(value):
        raise ApiError(FAIL_INVLD_NODE_NAME, f"The specified node name '{value}' is not a valid node name.")
    return value


def _check_prop(key: str, value: str) -> None:
    if key not in PROP_KEYS and not key.startswith(PROP_NAMESPACES):
        raise ApiError(FAIL_INVLD_PROP, f"The key '{key}' is not whitelisted.")
    pattern = PROP_VALUES.get(key)
    if pattern is not None and not pattern.fullmatch(value):
        raise ApiError(
            FAIL_INVLD_PROP,
            f"The value '{value}' is not valid for the key '{key}'.",
            details=f"The value must match '{pattern.pattern}'",
        )


def _apply_props(
    props: dict[str, str],
    override: dict[str, str] | None,
    delete: list[str] | None,
    namespaces: list[str] | None = None,
) -> list[str]:
    """Validate, then change ``props``; returns the keys it changed."""
    for key, value in (override or {}).items():
        _check_prop(key, value)
    changed: list[str] = []
    for key, value in (override or {}).items():
        props[key] = value
        changed.append(key)
    for key in delete or []:
        if props.pop(key, None) is not None:
            changed.append(key)
    for ns in namespaces or []:
        prefix = ns.rstrip("/") + "/"
        for key in [k for k in props if k.startswith(prefix)]:
            del props[key]
            changed.append(key)
    return changed


def _check_layers(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    out = []
    for layer in value:
        name = layer.upper()
        if name not in LAYERS:
            raise ApiError(FAIL_INVLD_LAYER_KIND, f"Given layer kind '{layer}' is invalid")
        out.append(name)
    if out and out[-1] != "STORAGE":
        out.append("STORAGE")  # the controller always puts the storage layer at the bottom
    return out


def _check_providers(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    out = []
    for kind in value:
        name = kind.upper()
        if name not in PROVIDERS:
            raise ApiError(FAIL_INVLD_PROVIDER, f"Given provider kind '{kind}' is invalid")
        out.append(name)
    return out


# ----------------------------------------------------------------------------------------------
# state


def _new_uuid() -> str:
    return str(_uuid.uuid4())


@dataclass(eq=False)
class _Pool:
    name: str
    node: str
    provider: str
    capacity_kib: int
    props: dict[str, str] = field(default_factory=dict)
    uuid: str = field(default_factory=_new_uuid)

    @property
    def diskless(self) -> bool:
        return self.provider == "DISKLESS"

    @property
    def snapshots(self) -> bool:
        return PROVIDERS[self.provider][0]

    @property
    def thin(self) -> bool:
        return PROVIDERS[self.provider][1]


@dataclass(eq=False)
class _Node:
    name: str
    by_res_dir: Path
    address: str
    props: dict[str, str] = field(default_factory=dict)
    online: bool = True
    pools: dict[str, _Pool] = field(default_factory=dict)
    uuid: str = field(default_factory=_new_uuid)
    netif_uuid: str = field(default_factory=_new_uuid)


@dataclass(eq=False)
class _VolumeGroup:
    number: int
    props: dict[str, str] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    uuid: str = field(default_factory=_new_uuid)


@dataclass(eq=False)
class _ResourceGroup:
    name: str
    description: str = ""
    props: dict[str, str] = field(default_factory=dict)
    select_filter: dict[str, Any] = field(default_factory=dict)
    vgs: dict[int, _VolumeGroup] = field(default_factory=dict)
    peer_slots: int | None = None
    uuid: str = field(default_factory=_new_uuid)


@dataclass(eq=False)
class _VolumeDef:
    number: int
    size_kib: int
    minor: int
    props: dict[str, str] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    uuid: str = field(default_factory=_new_uuid)
    path: Path | None = None  # the data file, while a diskful replica exists
    loop: str | None = None  # the loop device, while some node holds the resource


@dataclass(eq=False)
class _Resource:
    node: str  # node display name
    pool: str
    flags: list[str]
    node_id: int
    props: dict[str, str] = field(default_factory=dict)
    in_use: bool = False
    uuid: str = field(default_factory=_new_uuid)
    created: int = field(default_factory=_ms)

    @property
    def diskless(self) -> bool:
        return "DISKLESS" in self.flags


@dataclass(eq=False)
class _Snapshot:
    name: str
    seq: int
    nodes: dict[str, str]  # node display name -> pool
    sizes: dict[int, int]  # volume number -> size KiB
    files: dict[int, Path]
    vd_props: dict[int, dict[str, str]]
    props: dict[str, str] = field(default_factory=dict)
    uuid: str = field(default_factory=_new_uuid)
    node_uuids: dict[str, str] = field(default_factory=dict)
    created: int = field(default_factory=_ms)


@dataclass(eq=False)
class _ResourceDef:
    name: str
    group: str
    layers: list[str]
    port: int
    external_name: str | None = None
    props: dict[str, str] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    vds: dict[int, _VolumeDef] = field(default_factory=dict)
    resources: dict[str, _Resource] = field(default_factory=dict)  # NODE (upper) -> resource
    snapshots: dict[str, _Snapshot] = field(default_factory=dict)  # SNAPSHOT (upper) -> snapshot
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(15))
    peer_slots: int = 7
    next_seq: int = 1
    uuid: str = field(default_factory=_new_uuid)

    def diskful(self) -> list[_Resource]:
        return [r for r in self.resources.values() if not r.diskless]

    def diskless(self) -> list[_Resource]:
        return [r for r in self.resources.values() if r.diskless]


@dataclass(eq=False)
class Fault:
    """One injected fault; ``fired`` counts how often it triggered."""

    pattern: str
    mode: str
    times: int | None
    delay: float
    ret_code: int | None
    message: str | None
    skip: int
    apply: bool
    fired: int = 0


class Call(NamedTuple):
    """One request received: the route name (python-linstor method), method, path, JSON body."""

    name: str
    method: str
    path: str
    body: Any


@dataclass(frozen=True)
class Route:
    method: str
    template: str  # OpenAPI path template
    name: str  # the python-linstor method that calls this endpoint
    handler: str
    status: int  # HTTP status of a successful reply
    op: int  # operation mask for ret codes
    obj: int  # object mask for ret codes

    @property
    def regex(self) -> re.Pattern[str]:
        return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.template) + "$")


_RD = "/v1/resource-definitions/{resource}"
_RG = "/v1/resource-groups/{resource_group}"

ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/controller/version", "controller_version", "_controller_version", 200, 0, 0),
    Route("GET", "/v1/controller/properties", "controller_props", "_controller_props", 200, 0, MASK_CTRL_CONF),
    Route(
        "POST",
        "/v1/controller/properties",
        "controller_set_prop",
        "_controller_set_prop",
        201,
        MASK_MOD,
        MASK_CTRL_CONF,
    ),
    Route("GET", "/v1/nodes", "node_list", "_node_list", 200, 0, MASK_NODE),
    Route("PUT", "/v1/nodes/{node}", "node_modify", "_node_modify", 200, MASK_MOD, MASK_NODE),
    Route("GET", "/v1/view/storage-pools", "storage_pool_list", "_pool_list", 200, 0, MASK_STOR_POOL),
    Route("GET", "/v1/resource-groups", "resource_group_list_raise", "_rg_list", 200, 0, MASK_RSC_GRP),
    Route("POST", "/v1/resource-groups", "resource_group_create", "_rg_create", 201, MASK_CRT, MASK_RSC_GRP),
    Route("PUT", _RG, "resource_group_modify", "_rg_modify", 200, MASK_MOD, MASK_RSC_GRP),
    Route("DELETE", _RG, "resource_group_delete", "_rg_delete", 200, MASK_DEL, MASK_RSC_GRP),
    Route("POST", _RG + "/spawn", "resource_group_spawn", "_rg_spawn", 201, 0, MASK_RSC_GRP),
    Route("GET", _RG + "/volume-groups", "volume_group_list_raise", "_vg_list", 200, 0, MASK_VLM_GRP),
    Route("POST", _RG + "/volume-groups", "volume_group_create", "_vg_create", 201, MASK_CRT, MASK_VLM_GRP),
    Route(
        "PUT", _RG + "/volume-groups/{volume_number}", "volume_group_modify", "_vg_modify", 200, MASK_MOD, MASK_VLM_GRP
    ),
    Route(
        "DELETE",
        _RG + "/volume-groups/{volume_number}",
        "volume_group_delete",
        "_vg_delete",
        200,
        MASK_DEL,
        MASK_VLM_GRP,
    ),
    Route("GET", _RG + "/query-max-volume-size", "resource_group_qmvs", "_rg_qmvs", 200, 0, MASK_RSC_GRP),
    Route("POST", _RG + "/query-size-info", "resource_group_query_size_info", "_rg_size_info", 200, 0, MASK_RSC_GRP),
    Route("GET", "/v1/resource-definitions", "resource_dfn_list", "_rd_list", 200, 0, MASK_RSC_DFN),
    Route("POST", "/v1/resource-definitions", "resource_dfn_create", "_rd_create", 201, MASK_CRT, MASK_RSC_DFN),
    Route("PUT", _RD, "resource_dfn_modify", "_rd_modify", 200, MASK_MOD, MASK_RSC_DFN),
    Route("DELETE", _RD, "resource_dfn_delete", "_rd_delete", 200, MASK_DEL, MASK_RSC_DFN),
    Route("POST", _RD + "/clone", "resource_dfn_clone", "_rd_clone", 201, MASK_CRT, MASK_RSC_DFN),
    Route("GET", _RD + "/clone/{resourceClone}", "resource_dfn_clone_status", "_rd_clone_status", 200, 0, MASK_RSC_DFN),
    Route("GET", _RD + "/sync-status", "resource_dfn_sync_status", "_rd_sync_status", 200, 0, MASK_RSC_DFN),
    Route("POST", _RD + "/volume-definitions", "volume_dfn_create", "_vd_create", 201, MASK_CRT, MASK_VLM_DFN),
    Route(
        "PUT",
        _RD + "/volume-definitions/{volume_number}",
        "volume_dfn_modify",
        "_vd_modify",
        200,
        MASK_MOD,
        MASK_VLM_DFN,
    ),
    Route(
        "DELETE",
        _RD + "/volume-definitions/{volume_number}",
        "volume_dfn_delete",
        "_vd_delete",
        200,
        MASK_DEL,
        MASK_VLM_DFN,
    ),
    Route("POST", _RD + "/resources", "resource_create", "_rsc_create", 201, MASK_CRT, MASK_RSC),
    Route("PUT", _RD + "/resources/{node}", "resource_modify", "_rsc_modify", 200, MASK_MOD, MASK_RSC),
    Route("DELETE", _RD + "/resources/{node}", "resource_delete", "_rsc_delete", 200, MASK_DEL, MASK_RSC),
    Route(
        "POST",
        _RD + "/resources/{node}/make-available",
        "resource_make_available",
        "_rsc_make_available",
        200,
        0,
        MASK_RSC,
    ),
    Route(
        "PUT",
        _RD + "/resources/{node}/toggle-disk",
        "resource_toggle_disk",
        "_rsc_toggle_disk",
        200,
        MASK_MOD,
        MASK_RSC,
    ),
    Route("POST", _RD + "/autoplace", "resource_auto_place", "_rsc_autoplace", 201, 0, MASK_RSC),
    Route("POST", _RD + "/snapshots", "snapshot_create", "_snap_create", 201, MASK_CRT, MASK_SNAPSHOT),
    Route("PUT", _RD + "/snapshots/{snapshot}", "snapshot_dfn_modify", "_snap_modify", 200, MASK_MOD, MASK_SNAPSHOT),
    Route("DELETE", _RD + "/snapshots/{snapshot}", "snapshot_delete", "_snap_delete", 200, MASK_DEL, MASK_SNAPSHOT),
    Route(
        "POST",
        _RD + "/snapshot-restore-volume-definition/{snapshot}",
        "snapshot_volume_definition_restore",
        "_snap_restore_vd",
        200,
        MASK_CRT,
        MASK_SNAPSHOT,
    ),
    Route(
        "POST",
        _RD + "/snapshot-restore-resource/{snapshot}",
        "snapshot_resource_restore",
        "_snap_restore_rsc",
        200,
        MASK_CRT,
        MASK_RSC,
    ),
    Route(
        "POST",
        _RD + "/snapshot-rollback/{snapshot}",
        "snapshot_rollback",
        "_snap_rollback",
        200,
        MASK_MOD,
        MASK_SNAPSHOT,
    ),
    Route(
        "POST",
        "/v1/actions/snapshot/multi",
        "snapshot_create_multi",
        "_snap_create_multi",
        201,
        MASK_CRT,
        MASK_SNAPSHOT,
    ),
    Route("GET", "/v1/view/resources", "volume_list", "_view_resources", 200, 0, MASK_RSC),
    Route("GET", "/v1/view/snapshots", "snapshot_dfn_list", "_view_snapshots", 200, 0, MASK_SNAPSHOT),
)
_ROUTE_REGEX = [(r, r.regex) for r in ROUTES]


class _Ctx:
    """One request being handled: parameters, body and the ApiCallRc entries of the reply."""

    def __init__(self, route: Route, params: dict[str, str], query: dict[str, list[str]], body: Any) -> None:
        self.route = route
        self.params = params
        self.query = query
        self.body = body
        self.entries: list[dict[str, Any]] = []

    def entry(
        self,
        code: int,
        message: str,
        *,
        details: str | None = None,
        cause: str | None = None,
        correction: str | None = None,
        refs: dict[str, str] | None = None,
        obj: int | None = None,
        op: int | None = None,
    ) -> dict[str, Any]:
        value = code
        if not value & MASK_BITS_OP:
            value |= self.route.op if op is None else op
        if not value & MASK_BITS_OBJ:
            value |= self.route.obj if obj is None else obj
        return _compact(
            {
                "ret_code": _signed(value),
                "message": message,
                "details": details,
                "cause": cause,
                "correction": correction,
                "obj_refs": refs,
                "created_at": _now_iso(),
            }
        )

    def ok(self, message: str, code: int = SUCCESS, **kwargs: Any) -> None:
        self.entries.append(self.entry(code, message, **kwargs))

    def q(self, key: str) -> list[str]:
        out: list[str] = []
        for value in self.query.get(key, []):
            out.extend(v for v in value.split(",") if v)
        return out

    def q_upper(self, key: str) -> set[str]:
        return {v.upper() for v in self.q(key)}


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, sim: LinstorSim, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.sim = sim
        self.tls = tls
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        if self.tls is not None:  # the handshake runs in the connection's thread (_Handler.setup)
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conns_lock:
            self.conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.conns_lock:
            self.conns.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client closed or reset its connection
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self.conns_lock:
            conns = list(self.conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # python-linstor keeps its connection open
    server_version = "LinstorSimulator/" + CONTROLLER_VERSION
    timeout = None  # idle keep-alive connections stay open (stop() closes them)

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(30)
            try:
                self.request.do_handshake()
            except OSError:
                self.server.sim.tls_failures += 1
                raise
            self.request.settimeout(None)
        super().setup()
        # headers and body go out as separate writes: without this, Nagle + delayed ACK add 40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self.server.sim._serve(self, "GET")

    def do_POST(self) -> None:
        self.server.sim._serve(self, "POST")

    def do_PUT(self) -> None:
        self.server.sim._serve(self, "PUT")

    def do_DELETE(self) -> None:
        self.server.sim._serve(self, "DELETE")

    def do_PATCH(self) -> None:
        self.server.sim._serve(self, "PATCH")

    def log_message(self, format: str, *args: Any) -> None:
        pass


# ----------------------------------------------------------------------------------------------
# the simulator


class LinstorSim:
    """Simulator of the LINSTOR controller REST API for tests (not LINSTOR): see the module docstring."""

    def __init__(self, root_dir: str | os.PathLike[str], *, check_open: bool = True) -> None:
        self.root = Path(root_dir)
        self.data_dir = self.root / "data"
        self.check_open = check_open
        self._lock = threading.RLock()
        self._calls_lock = threading.Lock()
        self._nodes: dict[str, _Node] = {}
        self._groups: dict[str, _ResourceGroup] = {
            DEFAULT_RSC_GROUP.upper(): _ResourceGroup(DEFAULT_RSC_GROUP, select_filter={"place_count": 2})
        }
        self._rds: dict[str, _ResourceDef] = {}
        self._ctrl_props: dict[str, str] = {}
        self._clones: dict[tuple[str, str], str] = {}
        self._links: dict[Path, set[tuple[str, str, int]]] = {}  # link -> owners (NODE, RSC, volume)
        self._made_dirs: list[Path] = []
        self._loops: set[str] = set()
        self._faults: list[Fault] = []
        self._next_minor = FIRST_MINOR
        self._next_port = FIRST_PORT
        self.calls: list[Call] = []
        self.requests: list[dict[str, Any]] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._tls_server: _Server | None = None
        self._tls_thread: threading.Thread | None = None
        self.tls_failures = 0
        self._stopped = False

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> LinstorSim:
        if self._server is not None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stopped = False
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="linstor-sim", daemon=True
        )
        self._thread.start()
        _RUNNING.add(self)
        return self

    def serve_tls(self, context: ssl.SSLContext) -> int:
        """Serve this controller over TLS too (``context``: the server side); returns the port."""
        if self._server is None:
            raise RuntimeError("the simulator is not running")
        if self._tls_server is not None:
            raise RuntimeError("the simulator serves TLS already")
        self._tls_server = _Server(self, tls=context)
        self._tls_thread = threading.Thread(
            target=self._tls_server.serve_forever, kwargs={"poll_interval": 0.05}, name="linstor-sim-tls", daemon=True
        )
        self._tls_thread.start()
        return self.tls_port

    def stop(self) -> None:
        """Stop serving; remove the links and detach the loop devices this simulator made."""
        for attr in ("_tls_server", "_server"):
            server = getattr(self, attr)
            setattr(self, attr, None)
            if server is not None:
                server.shutdown()
                server.close_connections()
                server.server_close()
        for attr in ("_tls_thread", "_thread"):
            thread = getattr(self, attr)
            if thread is not None:
                thread.join(timeout=5)
                setattr(self, attr, None)
        with self._lock:
            self._stopped = True
            for path in list(self._links):
                with contextlib.suppress(OSError):
                    if path.is_symlink():
                        path.unlink()
            self._links.clear()
            for directory in reversed(self._made_dirs):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            self._made_dirs.clear()
            for rd in self._rds.values():
                for vd in rd.vds.values():
                    if vd.loop:
                        self._detach_loop(vd.loop)
                        vd.loop = None
            for dev in list(self._loops):
                self._detach_loop(dev)
            self._loops.clear()
        _RUNNING.discard(self)

    def __enter__(self) -> LinstorSim:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the simulator is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"linstor://{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def tls_port(self) -> int:
        if self._tls_server is None:
            raise RuntimeError("the simulator does not serve TLS (serve_tls)")
        return int(self._tls_server.server_address[1])

    @property
    def tls_url(self) -> str:
        return f"linstor+ssl://{self.host}:{self.tls_port}"

    # -- test controls --------------------------------------------------------------------------

    def add_node(
        self,
        name: str,
        by_res_dir: str | os.PathLike[str] | None = None,
        *,
        pool: str | None = "pool",
        provider: str = "LVM_THIN",
        capacity_kib: int = DEFAULT_CAPACITY_KIB,
        props: dict[str, str] | None = None,
        online: bool = True,
        address: str = "127.0.0.1",
    ) -> Path:
        """Add a satellite with storage pool ``pool`` (and DfltDisklessStorPool); returns its by-res dir."""
        _check_node_name(name)
        with self._lock:
            if name.upper() in self._nodes:
                raise ValueError(f"node {name} exists")
            directory = Path(by_res_dir) if by_res_dir is not None else self.root / "nodes" / name / "by-res"
            node = _Node(name, directory, address, online=online)
            node.props.update({"CurStltConnName": "default", "NodeUname": name})
            node.props.update(props or {})
            node.pools[DISKLESS_POOL.upper()] = _Pool(DISKLESS_POOL, name, "DISKLESS", DISKLESS_CAPACITY_KIB)
            self._nodes[name.upper()] = node
            if pool is not None:
                self.add_pool(name, pool, provider=provider, capacity_kib=capacity_kib)
            return directory

    def add_pool(
        self, node: str, name: str, *, provider: str = "LVM_THIN", capacity_kib: int = DEFAULT_CAPACITY_KIB
    ) -> None:
        provider = provider.upper()
        if provider not in PROVIDERS:
            raise ValueError(f"unknown provider kind {provider}")
        _check_name(name, "storage pool", FAIL_INVLD_STOR_POOL_NAME, min_len=3)
        with self._lock:
            owner = self._nodes[node.upper()]
            if name.upper() in owner.pools:
                raise ValueError(f"pool {name} exists on {node}")
            pool = _Pool(name, owner.name, provider, capacity_kib)
            if provider in ("LVM", "LVM_THIN"):
                pool.props["StorDriver/LvmVg"] = "vg_" + name
                if provider == "LVM_THIN":
                    pool.props["StorDriver/ThinPool"] = "thin_" + name
            elif provider in ("ZFS", "ZFS_THIN"):
                pool.props["StorDriver/ZPool" + ("Thin" if provider == "ZFS_THIN" else "")] = "zp_" + name
            elif provider in ("FILE", "FILE_THIN"):
                pool.props["StorDriver/FileDir"] = str(self.data_dir)
            owner.pools[name.upper()] = pool

    def set_node_online(self, name: str, online: bool = True) -> None:
        with self._lock:
            self._nodes[name.upper()].online = online

    def set_in_use(self, resource: str, node: str, in_use: bool = True) -> None:
        """Mark the resource primary/open on ``node`` (DRBD's in_use); LINSTOR then refuses deletes there."""
        with self._lock:
            self._rds[resource.upper()].resources[node.upper()].in_use = in_use

    def fail(
        self,
        pattern: str,
        mode: str = "error",
        times: int | None = 1,
        delay: float = 0.0,
        *,
        ret_code: int | None = None,
        message: str | None = None,
        skip: int = 0,
        apply: bool = False,
    ) -> Fault:
        """Make the next ``times`` matching requests fail (see the module docstring)."""
        if mode not in ("error", "delay", "drop"):
            raise ValueError(f"unknown fault mode {mode!r}")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        if pattern != "*":
            re.compile(pattern)
        fault = Fault(pattern, mode, times, delay, ret_code, message, skip, apply)
        with self._calls_lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._calls_lock:
            self._faults.clear()

    def device_path(self, resource: str, node: str, volume: int = 0) -> Path:
        with self._lock:
            rd = self._rds.get(resource.upper())
            name = rd.name if rd is not None else resource
            return self._nodes[node.upper()].by_res_dir / name / str(volume)

    def loop_device(self, resource: str, volume: int = 0) -> str | None:
        with self._lock:
            return self._rds[resource.upper()].vds[volume].loop

    def data_path(self, resource: str, volume: int = 0) -> Path | None:
        with self._lock:
            return self._rds[resource.upper()].vds[volume].path

    def inventory(self) -> dict[str, Any]:
        """Plain data about nodes, pools, groups, definitions, resources, snapshots, devices."""
        with self._lock:
            nodes = {
                n.name: {
                    "by_res_dir": str(n.by_res_dir),
                    "online": n.online,
                    "props": dict(n.props),
                    "pools": {
                        p.name: {
                            "provider": p.provider,
                            "capacity_kib": p.capacity_kib,
                            "free_kib": self._free_kib(p),
                            "snapshots": p.snapshots,
                            "thin": p.thin,
                        }
                        for p in n.pools.values()
                    },
                }
                for n in self._nodes.values()
            }
            groups = {
                g.name: {
                    "select_filter": json.loads(json.dumps(g.select_filter)),
                    "props": dict(g.props),
                    "volume_groups": sorted(g.vgs),
                }
                for g in self._groups.values()
            }
            rds: dict[str, Any] = {}
            for rd in self._rds.values():
                rds[rd.name] = {
                    "resource_group": rd.group,
                    "props": dict(rd.props),
                    "layers": list(rd.layers),
                    "volumes": {
                        vd.number: {
                            "size_kib": vd.size_kib,
                            "path": str(vd.path) if vd.path else None,
                            "loop": vd.loop,
                            "flags": list(vd.flags),
                        }
                        for vd in rd.vds.values()
                    },
                    "resources": {
                        r.node: {
                            "diskless": r.diskless,
                            "pool": r.pool,
                            "flags": list(r.flags),
                            "in_use": r.in_use,
                            "links": [
                                str(self._nodes[r.node.upper()].by_res_dir / rd.name / str(nr))
                                for nr in sorted(rd.vds)
                                if self._link_owned(r.node, rd, nr)
                            ],
                        }
                        for r in rd.resources.values()
                    },
                    "snapshots": {
                        s.name: {
                            "sequence": s.seq,
                            "nodes": sorted(s.nodes),
                            "sizes_kib": dict(s.sizes),
                            "files": {nr: str(p) for nr, p in s.files.items()},
                        }
                        for s in rd.snapshots.values()
                    },
                }
            return {
                "nodes": nodes,
                "resource_groups": groups,
                "resource_definitions": rds,
                "loops": sorted(self._loops),
                "links": {str(p): sorted(o) for p, o in self._links.items()},
            }

    # -- HTTP -----------------------------------------------------------------------------------

    def _serve(self, req: _Handler, method: str) -> None:
        try:
            length = int(req.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        raw = req.rfile.read(length) if length > 0 else b""
        path, _sep, query_str = req.path.partition("?")
        query = urllib.parse.parse_qs(query_str, keep_blank_values=True)
        route, params = self._match(method, path)
        name = route.name if route is not None else f"{method} {path}"
        body: Any = None
        parse_error: str | None = None
        if raw.strip():
            try:
                body = json.loads(raw.decode())
            except (UnicodeDecodeError, ValueError) as err:
                parse_error = f"the request body is not valid JSON: {err}"
        record: dict[str, Any] = {
            "name": name,
            "method": method,
            "path": path,
            "query": query,
            "body": body,
            "agent": req.headers.get("User-Agent", ""),
            "tls": isinstance(req.connection, ssl.SSLSocket),
            "time": time.time(),
            "status": None,
            "reply": None,
        }
        with self._calls_lock:
            self.calls.append(Call(name, method, path, body))
            self.requests.append(record)
        fault = self._take_fault(name, f"{method} {path}")
        if fault is not None and fault.mode == "delay":
            time.sleep(fault.delay)
        if fault is not None and fault.mode == "drop" and not fault.apply:
            req.close_connection = True
            return
        status: int
        reply: Any
        if route is None:
            ctx = _Ctx(Route(method, path, name, "", 404, 0, 0), {}, query, body)
            reply = [ctx.entry(FAIL_IMPL_ERROR, f"simulator: no such endpoint {method} {path}")]
            status = 404
        elif parse_error is not None:
            ctx = _Ctx(route, params, query, body)
            reply = [ctx.entry(API_CALL_PARSE_ERROR, "Unable to parse input json.", details=parse_error)]
            status = 400
        elif fault is not None and fault.mode == "error" and not fault.apply:
            status, reply = self._fault_reply(route, params, query, body, fault)
        else:
            status, reply = self._dispatch(route, params, query, body)
            if fault is not None and fault.apply:
                if fault.mode == "drop":
                    req.close_connection = True
                    return
                if fault.mode == "error":
                    status, reply = self._fault_reply(route, params, query, body, fault)
        record["status"], record["reply"] = status, reply
        payload = json.dumps(reply, separators=(",", ":")).encode()
        try:
            req.send_response(status)
            req.send_header("Content-Type", "application/json")
            req.send_header("Content-Length", str(len(payload)))
            req.end_headers()
            req.wfile.write(payload)
        except OSError:
            req.close_connection = True

    def _match(self, method: str, path: str) -> tuple[Route | None, dict[str, str]]:
        for route, regex in _ROUTE_REGEX:
            if route.method != method:
                continue
            m = regex.match(path)
            if m:
                return route, {k: urllib.parse.unquote(v) for k, v in m.groupdict().items()}
        return None, {}

    def _dispatch(
        self, route: Route, params: dict[str, str], query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any]:
        ctx = _Ctx(route, params, query, body)
        try:
            with self._lock:
                if self._stopped:
                    raise ApiError(FAIL_UNKNOWN_ERROR, "simulator: stopped")
                result = getattr(self, route.handler)(ctx)
        except _ParseError as err:
            return 400, [ctx.entry(API_CALL_PARSE_ERROR, "Unable to parse input json.", details=str(err))]
        except ApiError as err:
            entry = ctx.entry(
                err.code,
                err.message,
                details=err.details,
                cause=err.cause,
                correction=err.correction,
                refs=err.refs,
            )
            # a failed call changes nothing (handlers undo partial work), so report only the failure
            return (err.status or _status_of([entry], route.status)), [entry]
        except Exception as err:  # a simulator bug: say so instead of hanging the client
            entry = ctx.entry(FAIL_UNKNOWN_ERROR, f"simulator: {type(err).__name__}: {err}")
            return 500, [entry]
        if result is None:
            result = ctx.entries
        if isinstance(result, list) and result and all(isinstance(e, dict) and "ret_code" in e for e in result):
            return _status_of(result, route.status), result
        return route.status, result

    def _fault_reply(
        self, route: Route, params: dict[str, str], query: dict[str, list[str]], body: Any, fault: Fault
    ) -> tuple[int, Any]:
        ctx = _Ctx(route, params, query, body)
        entries = [
            ctx.entry(
                fault.ret_code if fault.ret_code is not None else FAIL_UNKNOWN_ERROR,
                fault.message or f"simulated failure of {route.name}",
            )
        ]
        return _status_of(entries, 500), entries

    def _take_fault(self, name: str, line: str) -> Fault | None:
        with self._calls_lock:
            for fault in self._faults:
                if fault.pattern != "*" and not (re.search(fault.pattern, name) or re.search(fault.pattern, line)):
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                    continue
                fault.fired += 1
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                return fault
        return None

    # -- lookups --------------------------------------------------------------------------------

    def _node(self, name: str) -> _Node:
        node = self._nodes.get(name.upper())
        if node is None:
            raise ApiError(FAIL_NOT_FOUND_NODE, f"Node '{name}' not found.", refs={"Node": name})
        return node

    def _group(self, name: str) -> _ResourceGroup:
        group = self._groups.get(name.upper())
        if group is None:
            raise ApiError(FAIL_NOT_FOUND_RSC_GRP, f"Resource group '{name}' not found.", refs={"ResourceGroup": name})
        return group

    def _rd(self, name: str) -> _ResourceDef:
        rd = self._rds.get(name.upper())
        if rd is None:
            raise ApiError(FAIL_NOT_FOUND_RSC_DFN, f"Resource definition '{name}' not found.", refs={"RscDfn": name})
        return rd

    def _vd(self, rd: _ResourceDef, number: str | int) -> _VolumeDef:
        try:
            nr = int(number)
        except ValueError:
            raise _ParseError(f"volume number {number!r} is not a number") from None
        vd = rd.vds.get(nr)
        if vd is None:
            raise ApiError(
                FAIL_NOT_FOUND_VLM_DFN,
                f"Volume definition with number '{nr}' on resource definition '{rd.name}' not found.",
            )
        return vd

    def _snapshot(self, rd: _ResourceDef, name: str) -> _Snapshot:
        snap = rd.snapshots.get(name.upper())
        if snap is None:
            raise ApiError(
                FAIL_NOT_FOUND_SNAPSHOT_DFN,
                f"Snapshot definition '{name}' of resource '{rd.name}' not found.",
                refs={"RscDfn": rd.name, "Snapshot": name},
            )
        return snap

    def _pool_of(self, node: _Node, name: str) -> _Pool:
        pool = node.pools.get(name.upper())
        if pool is None:
            raise ApiError(
                FAIL_NOT_FOUND_STOR_POOL,
                f"Storage pool '{name}' on node '{node.name}' not found.",
                refs={"StorPool": name, "Node": node.name},
            )
        return pool

    def _in_use_anywhere(self, rd: _ResourceDef) -> str | None:
        """The node on which ``rd`` is in use (flagged, or its loop device is open), if any."""
        for rsc in rd.resources.values():
            if rsc.in_use:
                return rsc.node
        if self.check_open and rd.resources:
            loops = {vd.loop for vd in rd.vds.values() if vd.loop}
            if loops and loops & _open_loop_devices():
                return next(iter(rd.resources.values())).node
        return None

    # -- space ----------------------------------------------------------------------------------

    @staticmethod
    def _allocated_kib(path: Path | None, size_kib: int) -> int:
        if path is None:
            return 0
        try:
            return min(os.stat(path).st_blocks * 512 // 1024, size_kib)
        except OSError:
            return 0

    def _used_kib(self, pool: _Pool) -> int:
        used = 0
        for rd in self._rds.values():
            rsc = rd.resources.get(pool.node.upper())
            if rsc is not None and not rsc.diskless and rsc.pool.upper() == pool.name.upper():
                for vd in rd.vds.values():
                    used += self._allocated_kib(vd.path, vd.size_kib) if pool.thin else vd.size_kib
            for snap in rd.snapshots.values():
                if snap.nodes.get(pool.node, "").upper() == pool.name.upper():
                    for nr, path in snap.files.items():
                        used += self._allocated_kib(path, snap.sizes[nr]) if pool.thin else 0
        return used

    def _free_kib(self, pool: _Pool) -> int:
        if pool.diskless:
            return DISKLESS_CAPACITY_KIB
        return max(0, pool.capacity_kib - self._used_kib(pool))

    def _room_kib(self, pool: _Pool) -> int:
        """How large a new volume may be in ``pool`` (thin pools may be oversubscribed)."""
        if pool.diskless:
            return DISKLESS_CAPACITY_KIB
        if pool.thin:
            provisioned = 0
            for rd in self._rds.values():
                rsc = rd.resources.get(pool.node.upper())
                if rsc is not None and not rsc.diskless and rsc.pool.upper() == pool.name.upper():
                    provisioned += sum(vd.size_kib for vd in rd.vds.values())
            return max(0, int(pool.capacity_kib * OVERSUBSCRIPTION) - provisioned)
        return self._free_kib(pool)

    # -- files and devices ----------------------------------------------------------------------

    def _copy(self, src: Path, dst: Path, dev: str | None = None) -> None:
        _flush_bdev(dev)
        _run(["cp", "--reflink=auto", "--sparse=always", str(src), str(dst)])

    def _losetup(self, path: Path) -> str:
        dev = _run(["losetup", "--find", "--show", str(path)])
        self._loops.add(dev)
        return dev

    def _detach_loop(self, dev: str) -> None:
        """``losetup -d`` a device this simulator attached, if it still backs one of our files."""
        self._loops.discard(dev)
        backing = Path("/sys/block") / Path(dev).name / "loop" / "backing_file"
        try:
            current = backing.read_text().strip().removesuffix(" (deleted)")
        except OSError:
            return
        if Path(current).parent.resolve() != self.data_dir.resolve():
            return  # no longer ours: someone detached it and reused the device
        subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)
        # the kernel defers the detach while something (even briefly) holds the device open:
        # wait for it, so that a stopped simulator leaves no loop device behind
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            try:
                current = backing.read_text().strip().removesuffix(" (deleted)")
            except OSError:
                return
            if Path(current).parent.resolve() != self.data_dir.resolve():
                return
            time.sleep(0.01)

    def _link_owned(self, node: str, rd: _ResourceDef, nr: int) -> bool:
        path = self._nodes[node.upper()].by_res_dir / rd.name / str(nr)
        return (node.upper(), rd.name.upper(), nr) in self._links.get(path, set())

    def _set_link(self, node: _Node, rd: _ResourceDef, nr: int, target: str) -> None:
        path = node.by_res_dir / rd.name / str(nr)
        owner = (node.name.upper(), rd.name.upper(), nr)
        owners = self._links.get(path)
        if not owners:
            missing = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
            for directory in reversed(missing):
                directory.mkdir()
                self._made_dirs.append(directory)
            if path.exists() or path.is_symlink():
                raise ApiError(FAIL_IMPL_ERROR, f"simulator: {path} exists and was not made by the simulator")
            owners = self._links[path] = set()
        owners.add(owner)
        if not (path.is_symlink() and os.readlink(path) == target):
            tmp = path.with_name(f".{path.name}.linstor-sim")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            os.symlink(target, tmp)
            os.replace(tmp, path)

    def _drop_link(self, node: _Node, rd: _ResourceDef, nr: int) -> None:
        path = node.by_res_dir / rd.name / str(nr)
        owners = self._links.get(path)
        owner = (node.name.upper(), rd.name.upper(), nr)
        if not owners or owner not in owners:
            return
        owners.discard(owner)
        if owners:
            return
        del self._links[path]
        with contextlib.suppress(FileNotFoundError):
            if path.is_symlink():
                path.unlink()
        if path.parent in self._made_dirs:
            with contextlib.suppress(OSError):
                path.parent.rmdir()
                self._made_dirs.remove(path.parent)

    def _sync_devices(self, rd: _ResourceDef) -> None:
        """Make files, loop devices and links match the definition's volumes and resources.

        Data exists while a diskful replica exists; the loop device while any node holds the
        resource (and data exists); each holding node has its by-res link.
        """
        has_data = bool(rd.diskful())
        holders = [self._nodes[r.node.upper()] for r in rd.resources.values()] if has_data else []
        holder_keys = {n.name.upper() for n in holders}
        for vd in rd.vds.values():
            if has_data and vd.path is None:
                path = self.data_dir / f"{rd.uuid}-{vd.number}.img"
                with open(path, "wb") as fh:
                    fh.truncate(vd.size_kib * 1024)
                vd.path = path
            for node in self._nodes.values():
                if node.name.upper() not in holder_keys:
                    self._drop_link(node, rd, vd.number)
            if holders:
                assert vd.path is not None
                if vd.loop is None:
                    vd.loop = self._losetup(vd.path)
                for node in holders:
                    self._set_link(node, rd, vd.number, vd.loop)
            elif vd.loop is not None:
                self._detach_loop(vd.loop)
                vd.loop = None
            if not has_data and vd.path is not None:
                with contextlib.suppress(FileNotFoundError):
                    vd.path.unlink()
                vd.path = None

    def _drop_vd_devices(self, rd: _ResourceDef, vd: _VolumeDef) -> None:
        for node in self._nodes.values():
            self._drop_link(node, rd, vd.number)
        if vd.loop is not None:
            self._detach_loop(vd.loop)
            vd.loop = None
        if vd.path is not None:
            with contextlib.suppress(FileNotFoundError):
                vd.path.unlink()
            vd.path = None

    def _drop_snapshot_files(self, snap: _Snapshot) -> None:
        for path in snap.files.values():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        snap.files.clear()

    # -- JSON views -----------------------------------------------------------------------------

    def _node_json(self, node: _Node) -> dict[str, Any]:
        providers = sorted({"DISKLESS", *(p.provider for p in node.pools.values())})
        return _compact(
            {
                "name": node.name,
                "type": "Satellite",
                "flags": [],
                "props": dict(node.props),
                "net_interfaces": [
                    {
                        "name": "default",
                        "address": node.address,
                        "satellite_port": 3366,
                        "satellite_encryption_type": "PLAIN",
                        "is_active": True,
                        "uuid": node.netif_uuid,
                    }
                ],
                "connection_status": "ONLINE" if node.online else "OFFLINE",
                "uuid": node.uuid,
                "storage_providers": providers,
                "resource_layers": ["DRBD", "LUKS", "STORAGE", "CACHE", "WRITECACHE"],
            }
        )

    def _pool_json(self, pool: _Pool) -> dict[str, Any]:
        return _compact(
            {
                "storage_pool_name": pool.name,
                "node_name": pool.node,
                "provider_kind": pool.provider,
                "props": dict(pool.props),
                "static_traits": {
                    "Provisioning": "Thin" if pool.thin else "Fat",
                    "SupportsSnapshots": "true" if pool.snapshots else "false",
                },
                "free_capacity": self._free_kib(pool),
                "total_capacity": DISKLESS_CAPACITY_KIB if pool.diskless else pool.capacity_kib,
                "free_space_mgr_name": f"{pool.node};{pool.name}",
                "uuid": pool.uuid,
                "supports_snapshots": pool.snapshots,
                "external_locking": False,
            }
        )

    @staticmethod
    def _filter_json(sf: dict[str, Any]) -> dict[str, Any]:
        out = dict(sf)
        if out.get("storage_pool_list") and not out.get("storage_pool"):
            out["storage_pool"] = out["storage_pool_list"][0]
        return _compact(out)

    def _rg_json(self, group: _ResourceGroup) -> dict[str, Any]:
        return _compact(
            {
                "name": group.name,
                "description": group.description,
                "props": dict(group.props),
                "select_filter": self._filter_json(group.select_filter),
                "uuid": group.uuid,
                "peer_slots": group.peer_slots,
            }
        )

    @staticmethod
    def _vg_json(vg: _VolumeGroup) -> dict[str, Any]:
        return _compact({"volume_number": vg.number, "props": dict(vg.props), "flags": list(vg.flags), "uuid": vg.uuid})

    def _vd_json(self, rd: _ResourceDef, vd: _VolumeDef) -> dict[str, Any]:
        layers: list[dict[str, Any]] = []
        for layer in rd.layers:
            if layer == "DRBD":
                layers.append({"type": "DRBD", "data": {"volume_number": vd.number, "minor_number": vd.minor}})
            else:
                layers.append({"type": layer})
        return _compact(
            {
                "volume_number": vd.number,
                "size_kib": vd.size_kib,
                "props": dict(vd.props),
                "flags": list(vd.flags),
                "uuid": vd.uuid,
                "layer_data": layers,
            }
        )

    def _rd_json(self, rd: _ResourceDef, with_vds: bool) -> dict[str, Any]:
        layers: list[dict[str, Any]] = []
        for layer in rd.layers:
            if layer == "DRBD":
                data = {
                    "port": rd.port,
                    "peer_slots": rd.peer_slots,
                    "al_stripes": 1,
                    "al_stripe_size_kib": 32,
                    "transport_type": "IP",
                    "secret": rd.secret,
                    "down": False,
                }
                layers.append({"type": "DRBD", "data": data})
            else:
                layers.append({"type": layer})
        return _compact(
            {
                "name": rd.name,
                "external_name": rd.external_name,
                "resource_group_name": rd.group,
                "props": dict(rd.props),
                "flags": list(rd.flags),
                "uuid": rd.uuid,
                "layer_data": layers,
                "volume_definitions": [self._vd_json(rd, vd) for vd in rd.vds.values()] if with_vds else None,
            }
        )

    def _volume_json(self, rd: _ResourceDef, rsc: _Resource, vd: _VolumeDef) -> dict[str, Any]:
        node = self._nodes[rsc.node.upper()]
        link = node.by_res_dir / rd.name / str(vd.number)
        linked = self._link_owned(rsc.node, rd, vd.number)
        pool = node.pools.get(rsc.pool.upper())
        provider = pool.provider if pool is not None else "DISKLESS"
        if rsc.diskless:
            allocated = 0
        elif pool is not None and pool.thin:
            allocated = self._allocated_kib(vd.path, vd.size_kib)
        else:
            allocated = vd.size_kib
        return _compact(
            {
                "volume_number": vd.number,
                "storage_pool_name": rsc.pool,
                "provider_kind": provider,
                "device_path": str(link),
                "allocated_size_kib": allocated,
                "usable_size_kib": vd.size_kib,
                "props": {"Satellite/Device/Symlinks/0": str(link)} if linked else {},
                "flags": [],
                "state": {"disk_state": ("Diskless" if rsc.diskless else "UpToDate") if linked else "Unknown"},
                "uuid": _uuid.uuid5(_uuid.UUID(rsc.uuid), str(vd.number)).__str__(),
            }
        )

    def _resource_json(self, rd: _ResourceDef, rsc: _Resource) -> dict[str, Any]:
        volumes = [self._volume_json(rd, rsc, vd) for vd in rd.vds.values()]
        peers = {
            r.node: {"connected": True, "message": "Connected"}
            for r in rd.resources.values()
            if r is not rsc and "DRBD" in rd.layers
        }
        layer: dict[str, Any] = {}
        storage = _compact(
            {
                "type": "STORAGE",
                "storage": _compact(
                    {
                        "storage_volumes": [
                            _compact(
                                {
                                    "volume_number": vd.number,
                                    "allocated_size_kib": v.get("allocated_size_kib", 0),
                                    "usable_size_kib": vd.size_kib,
                                    "disk_state": "[]",
                                }
                            )
                            for vd, v in zip(rd.vds.values(), volumes, strict=True)
                            if not rsc.diskless
                        ]
                    }
                ),
            }
        )
        if "DRBD" in rd.layers:
            drbd_volumes = [
                _compact(
                    {
                        "drbd_volume_definition": {"volume_number": vd.number, "minor_number": vd.minor},
                        "device_path": f"/dev/drbd{vd.minor}",
                        "allocated_size_kib": v.get("allocated_size_kib", 0),
                        "usable_size_kib": vd.size_kib,
                        "disk_state": v["state"]["disk_state"],
                        "meta_disk": "internal",
                    }
                )
                for vd, v in zip(rd.vds.values(), volumes, strict=True)
            ]
            layer = {
                "type": "DRBD",
                "drbd": _compact(
                    {
                        "node_id": rsc.node_id,
                        "peer_slots": rd.peer_slots,
                        "al_stripes": 1,
                        "al_size": 32,
                        "flags": [f for f in rsc.flags if f in ("DISKLESS", "DRBD_DISKLESS", "TIE_BREAKER")],
                        "tcp_ports": [rd.port],
                        "connections": peers,
                        "drbd_volumes": drbd_volumes,
                        "promotion_score": 0 if rsc.in_use else 10102,
                        "may_promote": not rsc.in_use and not any(r.in_use for r in rd.resources.values()),
                    }
                ),
                "children": [storage],
            }
        else:
            layer = storage
        return _compact(
            {
                "name": rd.name,
                "node_name": rsc.node,
                "props": dict(rsc.props),
                "flags": list(rsc.flags),
                "layer_object": layer,
                "state": {"in_use": rsc.in_use},
                "uuid": rsc.uuid,
                "create_timestamp": rsc.created,
                "volumes": volumes,
            }
        )

    def _snapshot_json(self, rd: _ResourceDef, snap: _Snapshot) -> dict[str, Any]:
        return _compact(
            {
                "name": snap.name,
                "resource_name": rd.name,
                "nodes": sorted(snap.nodes),
                "props": {**snap.props, "SequenceNumber": str(snap.seq)},
                "flags": ["SUCCESSFUL"],
                "volume_definitions": [
                    {"volume_number": nr, "size_kib": size} for nr, size in sorted(snap.sizes.items())
                ],
                "uuid": snap.uuid,
                "snapshots": [
                    _compact(
                        {
                            "snapshot_name": snap.name,
                            "node_name": node,
                            "create_timestamp": snap.created,
                            "flags": [],
                            "uuid": snap.node_uuids.setdefault(node, _new_uuid()),
                            "snapshot_volumes": [
                                {"vlm_nr": nr, "uuid": _uuid.uuid5(_uuid.UUID(snap.uuid), f"{node}/{nr}").__str__()}
                                for nr in sorted(snap.sizes)
                            ],
                        }
                    )
                    for node in sorted(snap.nodes)
                ],
            }
        )

    # -- filters --------------------------------------------------------------------------------

    @staticmethod
    def _props_match(props: dict[str, str], filters: list[str]) -> bool:
        for item in filters:
            key, sep, value = item.partition("=")
            if key not in props or (sep and props[key] != value):
                return False
        return True

    @staticmethod
    def _page(items: list[Any], ctx: _Ctx) -> list[Any]:
        try:
            offset = int(ctx.query.get("offset", ["0"])[0] or 0)
            limit = int(ctx.query.get("limit", ["0"])[0] or 0)
        except ValueError:
            raise _ParseError("offset and limit must be integers") from None
        items = items[offset:]
        return items[:limit] if limit > 0 else items

    # -- controller ------------------------------------------------------------------------------

    def _controller_version(self, ctx: _Ctx) -> Any:
        return {
            "version": CONTROLLER_VERSION,
            "git_hash": "linstor-sim",
            "build_time": "2024-01-01T00:00:00+00:00",
            "rest_api_version": REST_API_VERSION,
        }

    def _controller_props(self, ctx: _Ctx) -> Any:
        return dict(self._ctrl_props)

    def _controller_set_prop(self, ctx: _Ctx) -> Any:
        body = _obj(ctx.body, "ControllerPropsModify", {"override_props", "delete_props", "delete_namespaces"})
        _apply_props(
            self._ctrl_props,
            _opt_props(body, "override_props"),
            _opt_strs(body, "delete_props"),
            _opt_strs(body, "delete_namespaces"),
        )
        ctx.ok("Successfully updated controller config", MODIFIED)

    # -- nodes and pools -------------------------------------------------------------------------

    def _node_list(self, ctx: _Ctx) -> Any:
        names = ctx.q_upper("nodes")
        props = ctx.q("props")
        nodes = [
            self._node_json(n)
            for n in self._nodes.values()
            if (not names or n.name.upper() in names) and self._props_match(n.props, props)
        ]
        return self._page(nodes, ctx)

    def _node_modify(self, ctx: _Ctx) -> Any:
        node = self._node(ctx.params["node"])
        body = _obj(ctx.body, "NodeModify", {"node_type", "override_props", "delete_props", "delete_namespaces"})
        node_type = _opt_str(body, "node_type")
        if node_type is not None and node_type.upper() != "SATELLITE":
            raise ApiError(FAIL_INVLD_REQUEST, f"simulator: node type {node_type} is not supported")
        _apply_props(
            node.props,
            _opt_props(body, "override_props"),
            _opt_strs(body, "delete_props"),
            _opt_strs(body, "delete_namespaces"),
        )
        ctx.ok(
            f"Node '{node.name}' modified.",
            MODIFIED,
            details=f"Node '{node.name}' UUID is: {node.uuid}",
            refs={"Node": node.name},
        )

    def _pool_list(self, ctx: _Ctx) -> Any:
        nodes = ctx.q_upper("nodes")
        pools = ctx.q_upper("storage_pools")
        props = ctx.q("props")
        out = []
        for node in self._nodes.values():
            if nodes and node.name.upper() not in nodes:
                continue
            for pool in node.pools.values():
                if pools and pool.name.upper() not in pools:
                    continue
                if not self._props_match(pool.props, props):
                    continue
                out.append(self._pool_json(pool))
        return self._page(out, ctx)

    # -- resource groups -------------------------------------------------------------------------

    _FILTER_KEYS = frozenset(
        {
            "place_count",
            "additional_place_count",
            "node_name_list",
            "storage_pool",
            "storage_pool_list",
            "storage_pool_diskless_list",
            "not_place_with_rsc",
            "not_place_with_rsc_regex",
            "replicas_on_same",
            "replicas_on_different",
            "x_replicas_on_different_map",
            "layer_stack",
            "provider_list",
            "diskless_on_remaining",
            "diskless_type",
            "overprovision",
            "port_count",
        }
    )

    def _select_filter(self, value: Any) -> dict[str, Any]:
        """A validated AutoSelectFilter (only the fields given)."""
        body = _obj(value, "AutoSelectFilter", self._FILTER_KEYS)
        out: dict[str, Any] = {}
        for key in ("place_count", "additional_place_count", "port_count"):
            number = _opt_int(body, key)
            if number is not None:
                if key == "place_count" and number < 1:
                    raise ApiError(FAIL_INVLD_PLACE_COUNT, f"Invalid place count: {number}")
                out[key] = number
        for key in (
            "node_name_list",
            "storage_pool_list",
            "storage_pool_diskless_list",
            "not_place_with_rsc",
            "replicas_on_same",
            "replicas_on_different",
        ):
            items = _opt_strs(body, key)
            if items is not None:
                out[key] = items
        for key in ("storage_pool", "not_place_with_rsc_regex", "diskless_type"):
            text = _opt_str(body, key)
            if text is not None:
                out[key] = text
        if "storage_pool" in out and "storage_pool_list" not in out:
            out["storage_pool_list"] = [out.pop("storage_pool")] if out["storage_pool"] else []
        else:
            out.pop("storage_pool", None)
        if out.get("not_place_with_rsc_regex"):
            try:
                re.compile(out["not_place_with_rsc_regex"])
            except re.error as err:
                raise ApiError(FAIL_INVLD_REQUEST, f"Invalid regular expression: {err}") from None
        layers = _check_layers(_opt_strs(body, "layer_stack"))
        if layers is not None:
            out["layer_stack"] = layers
        providers = _check_providers(_opt_strs(body, "provider_list"))
        if providers is not None:
            out["provider_list"] = providers
        dor = _opt_bool(body, "diskless_on_remaining")
        if dor is not None:
            out["diskless_on_remaining"] = dor
        xmap = body.get("x_replicas_on_different_map")
        if xmap is not None:
            if not isinstance(xmap, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in xmap.values()
            ):
                raise _ParseError("x_replicas_on_different_map: expected a map of integers")
            out["x_replicas_on_different_map"] = dict(xmap)
        if body.get("overprovision") is not None:
            if not isinstance(body["overprovision"], int | float) or isinstance(body["overprovision"], bool):
                raise _ParseError("overprovision: expected a number")
            out["overprovision"] = body["overprovision"]
        return out

    def _rg_list(self, ctx: _Ctx) -> Any:
        names = ctx.q_upper("resource_groups")
        props = ctx.q("props")
        groups = [
            self._rg_json(g)
            for g in self._groups.values()
            if (not names or g.name.upper() in names) and self._props_match(g.props, props)
        ]
        return self._page(groups, ctx)

    def _rg_create(self, ctx: _Ctx) -> Any:
        body = _obj(ctx.body, "ResourceGroup", {"name", "description", "props", "select_filter", "uuid", "peer_slots"})
        name = _check_name(_opt_str(body, "name") or "", "resource group", FAIL_INVLD_RSC_GRP_NAME)
        if name.upper() in self._groups:
            raise ApiError(FAIL_EXISTS_RSC_GRP, f"A resource group with the name '{name}' already exists.")
        props = _opt_props(body, "props") or {}
        for key, value in props.items():
            _check_prop(key, value)
        group = _ResourceGroup(
            name,
            description=_opt_str(body, "description") or "",
            props=props,
            select_filter=self._select_filter(body.get("select_filter")),
            peer_slots=_opt_int(body, "peer_slots"),
        )
        self._groups[name.upper()] = group
        ctx.ok(
            f"New resource group '{name}' created.",
            CREATED,
            details=f"Resource group '{name}' UUID is: {group.uuid}",
            refs={"ResourceGroup": name},
        )

    def _rg_modify(self, ctx: _Ctx) -> Any:
        group = self._group(ctx.params["resource_group"])
        body = _obj(
            ctx.body,
            "ResourceGroupModify",
            {
                "description",
                "override_props",
                "delete_props",
                "delete_namespaces",
                "select_filter",
                "peer_slots",
            },
        )
        new_filter = self._select_filter(body.get("select_filter"))
        description = _opt_str(body, "description")
        peer_slots = _opt_int(body, "peer_slots")
        _apply_props(
            group.props,
            _opt_props(body, "override_props"),
            _opt_strs(body, "delete_props"),
            _opt_strs(body, "delete_namespaces"),
        )
        if "storage_pool_list" in new_filter and not new_filter["storage_pool_list"]:
            del new_filter["storage_pool_list"]
            group.select_filter.pop("storage_pool_list", None)
        group.select_filter.update(new_filter)
        if description is not None:
            group.description = description
        if peer_slots is not None:
            group.peer_slots = peer_slots
        ctx.ok(
            f"Resource group '{group.name}' modified.",
            MODIFIED,
            details=f"Resource group '{group.name}' UUID is: {group.uuid}",
            refs={"ResourceGroup": group.name},
        )

    def _rg_delete(self, ctx: _Ctx) -> Any:
        name = ctx.params["resource_group"]
        group = self._groups.get(name.upper())
        if group is None:
            raise ApiError(WARN_NOT_FOUND, f"Resource group '{name}' not found.")
        if group.name == DEFAULT_RSC_GROUP:
            raise ApiError(FAIL_ACC_DENIED_RSC_GRP, f"Cannot delete default resource group '{DEFAULT_RSC_GROUP}'")
        users = [rd.name for rd in self._rds.values() if rd.group.upper() == group.name.upper()]
        if users:
            raise ApiError(
                FAIL_EXISTS_RSC_DFN,
                f"Cannot delete resource group '{group.name}' because it has existing resource definitions.",
                details="Resource definitions: " + ", ".join(users),
            )
        del self._groups[name.upper()]
        ctx.ok(f"Resource group '{group.name}' deleted.", DELETED, refs={"ResourceGroup": group.name})

    def _vg_list(self, ctx: _Ctx) -> Any:
        group = self._group(ctx.params["resource_group"])
        return self._page([self._vg_json(vg) for _nr, vg in sorted(group.vgs.items())], ctx)

    def _vg_create(self, ctx: _Ctx) -> Any:
        group = self._group(ctx.params["resource_group"])
        body = _obj(ctx.body, "VolumeGroup", {"volume_number", "props", "flags", "uuid"})
        number = _opt_int(body, "volume_number")
        if number is None:
            number = next(i for i in range(len(group.vgs) + 1) if i not in group.vgs)
        if not 0 <= number <= 4095:
            raise ApiError(FAIL_INVLD_VLM_NR, f"Invalid volume number {number}")
        if number in group.vgs:
            raise ApiError(FAIL_EXISTS_VLM_GRP, f"Volume group with number '{number}' already exists.")
        props = _opt_props(body, "props") or {}
        for key, value in props.items():
            _check_prop(key, value)
        group.vgs[number] = _VolumeGroup(number, props, _opt_strs(body, "flags") or [])
        ctx.ok(
            f"New volume group with number '{number}' of resource group '{group.name}' created.",
            CREATED,
            refs={"ResourceGroup": group.name, "VlmNr": str(number)},
        )

    def _vg_modify(self, ctx: _Ctx) -> Any:
        group = self._group(ctx.params["resource_group"])
        vg = self._vg_of(group, ctx.params["volume_number"])
        body = _obj(ctx.body, "VolumeGroupModify", {"override_props", "flags", "delete_props", "delete_namespaces"})
        _apply_props(
            vg.props,
            _opt_props(body, "override_props"),
            _opt_strs(body, "delete_props"),
            _opt_strs(body, "delete_namespaces"),
        )
        for flag in _opt_strs(body, "flags") or []:
            if flag.startswith("-"):
                if flag[1:] in vg.flags:
                    vg.flags.remove(flag[1:])
            elif flag not in vg.flags:
                vg.flags.append(flag)
        ctx.ok(f"Volume group '{vg.number}' of resource group '{group.name}' modified.", MODIFIED)

    def _vg_delete(self, ctx: _Ctx) -> Any:
        group = self._group(ctx.params["resource_group"])
        vg = self._vg_of(group, ctx.params["volume_number"])
        del group.vgs[vg.number]
        ctx.ok(f"Volume group '{vg.number}' of resource group '{group.name}' deleted.", DELETED)

    def _vg_of(self, group: _ResourceGroup, number: str) -> _VolumeGroup:
        try:
            nr = int(number)
        except ValueError:
            raise _ParseError(f"volume number {number!r} is not a number") from None
        vg = group.vgs.get(nr)
        if vg is None:
            raise ApiError(FAIL_NOT_FOUND_VLM_GRP, f"Volume group with number '{nr}' not found.")
        return vg

    def _candidates_by_pool(self, sf: dict[str, Any]) -> dict[str, list[_Pool]]:
        """Diskful pools the filter allows on online nodes, grouped by pool name."""
        out: dict[str, list[_Pool]] = {}
        for node in self._nodes.values():
            if not node.online:
                continue
            if sf.get("node_name_list") and node.name.upper() not in {n.upper() for n in sf["node_name_list"]}:
                continue
            for pool in self._allowed_pools(node, sf):
                out.setdefault(pool.name, []).append(pool)
        return out

    def _allowed_pools(self, node: _Node, sf: dict[str, Any]) -> list[_Pool]:
        wanted = {p.upper() for p in sf.get("storage_pool_list") or []}
        providers = set(sf.get("provider_list") or [])
        out = []
        for pool in node.pools.values():
            if pool.diskless:
                continue
            if wanted and pool.name.upper() not in wanted:
                continue
            if providers and pool.provider not in providers:
                continue
            out.append(pool)
        return out

    def _rg_qmvs(self, ctx: _Ctx) -> Any:
        group = self._group(ctx.params["resource_group"])
        sf = group.select_filter
        count = sf.get("place_count") or 1
        candidates = []
        for name, pools in sorted(self._candidates_by_pool(sf).items()):
            if len(pools) < count:
                continue
            ranked = sorted(pools, key=lambda p: -self._room_kib(p))[:count]
            candidates.append(
                {
                    "storage_pool": name,
                    "max_volume_size_kib": min(self._room_kib(p) for p in ranked),
                    "node_names": [p.node for p in ranked],
                    "all_thin": all(p.thin for p in ranked),
                }
            )
        return {"candidates": candidates, "default_max_oversubscription_ratio": OVERSUBSCRIPTION}

    def _rg_size_info(self, ctx: _Ctx) -> Any:
        group = self._group(ctx.params["resource_group"])
        body = _obj(ctx.body, "QuerySizeInfoRequest", {"select_filter", "ignore_cache_older_than_sec"})
        sf = {**group.select_filter, **self._select_filter(body.get("select_filter"))}
        try:
            chosen = self._select(None, sf, 0, sf.get("place_count") or 1)
        except ApiError:
            return {"space_info": {"max_vlm_size_in_kib": 0}}
        return {
            "space_info": {
                "max_vlm_size_in_kib": min(self._room_kib(p) for p in chosen),
                "available_size_in_kib": min(self._free_kib(p) for p in chosen),
                "capacity_in_kib": min(p.capacity_kib for p in chosen),
                "default_max_oversubscription_ratio": OVERSUBSCRIPTION,
                "next_spawn_result": [{"node_name": p.node, "stor_pool_name": p.name} for p in chosen],
            }
        }

    def _rg_spawn(self, ctx: _Ctx) -> Any:
        group = self._group(ctx.params["resource_group"])
        body = _obj(
            ctx.body,
            "ResourceGroupSpawn",
            {
                "resource_definition_name",
                "resource_definition_external_name",
                "volume_sizes",
                "partial",
                "definitions_only",
                "select_filter",
                "peer_slots",
                "volume_passphrases",
                "resource_definition_props",
            },
        )
        sizes = body.get("volume_sizes") or []
        if not isinstance(sizes, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in sizes):
            raise _ParseError("volume_sizes: expected a list of integers")
        partial = bool(_opt_bool(body, "partial"))
        definitions_only = bool(_opt_bool(body, "definitions_only"))
        sf = {**group.select_filter, **self._select_filter(body.get("select_filter"))}
        rd_props = _opt_props(body, "resource_definition_props") or {}
        for key, value in rd_props.items():
            _check_prop(key, value)
        vgs = [group.vgs[nr] for nr in sorted(group.vgs)]
        if not vgs and not partial:
            ctx.ok(
                "Resource-group doesn't have any volume-groups, automatically assume partial mode.",
                MASK_INFO | MASK_RSC_GRP,
            )
        if vgs and not partial and len(sizes) != len(vgs):
            raise ApiError(
                FAIL_INVLD_VLM_SIZES,
                f"Invalid count of volume sizes to spawn resource group '{group.name}'",
                details=f"The resource group '{group.name}' has {len(vgs)} Volume groups, but only "
                f"{len(sizes)} sizes were provided.",
                correction="Either provide the correct count of volume sizes or use the 'partial' option",
            )
        name = _opt_str(body, "resource_definition_name") or ""
        external = _opt_str(body, "resource_definition_external_name")
        vd_specs = []
        for idx, size in enumerate(sizes):
            vg = vgs[idx] if idx < len(vgs) else None
            vd_specs.append((vg.number if vg else None, size, list(vg.flags) if vg else []))
        layers = sf.get("layer_stack") or list(DEFAULT_LAYERS)
        rd = self._new_rd(ctx, name, external, group.name, layers, rd_props, vd_specs, peer_slots=group.peer_slots)
        if sf.get("place_count") is not None and not definitions_only:
            try:
                self._autoplace(ctx, rd, sf)
            except ApiError:
                self._forget_rd(rd)  # the controller creates nothing when the spawn fails
                raise
        else:
            reason = []
            if sf.get("place_count") is None:
                reason.append("No autoplace configuration in the given resource group (at least place-count required)")
            if definitions_only:
                reason.append("--definitions-only was set")
            ctx.ok(
                f"Resource definition {rd.name} and {len(vd_specs)} created but no resources deployed",
                INFO_NO_RSC_SPAWNED,
                details=" and ".join(reason),
            )

    # -- resource definitions --------------------------------------------------------------------

    def _rd_list(self, ctx: _Ctx) -> Any:
        names = ctx.q_upper("resource_definitions")
        props = ctx.q("props")
        with_vds = any(v.lower() == "true" for v in ctx.query.get("with_volume_definitions", []))
        out = [
            self._rd_json(rd, with_vds)
            for rd in self._rds.values()
            if (not names or rd.name.upper() in names) and self._props_match(rd.props, props)
        ]
        return self._page(out, ctx)

    def _rd_name(self, name: str, external: str | None) -> str:
        if name:
            return _check_name(name, "resource", FAIL_INVLD_RSC_NAME)
        if not external:
            raise ApiError(FAIL_INVLD_RSC_NAME, "Neither a resource name nor an external name was given.")
        candidate = external[:48]
        if not (_NAME.fullmatch(candidate) and len(candidate) >= 2):
            candidate = _NAME_TRANSLATE.sub("_", candidate)
            if not candidate[:1].isalpha() and candidate[:1] != "_":
                candidate = "_" + candidate[:47]
        if not (_NAME.fullmatch(candidate) and len(candidate) >= 2) or candidate.upper() in self._rds:
            candidate = "LS_" + str(_uuid.uuid4())
        return candidate

    def _new_rd(
        self,
        ctx: _Ctx,
        name: str,
        external: str | None,
        group: str,
        layers: list[str],
        props: dict[str, str],
        vd_specs: Sequence[tuple[int | None, int, list[str]]],
        *,
        port: int | None = None,
        peer_slots: int | None = None,
        secret: str | None = None,
    ) -> _ResourceDef:
        """Create a resource definition (and volume definitions) after checking everything."""
        real = self._rd_name(name, external)
        if real.upper() in self._rds:
            raise ApiError(
                FAIL_EXISTS_RSC_DFN,
                f"A resource definition with the name '{real}' already exists.",
                refs={"RscDfn": real},
            )
        if external and any(rd.external_name == external for rd in self._rds.values()):
            raise ApiError(FAIL_EXISTS_RSC_DFN, f"A resource definition with the external name '{external}' exists.")
        for key, value in props.items():
            _check_prop(key, value)
        numbers: list[int] = []
        for nr, size, _flags in vd_specs:
            number = nr if nr is not None else next(i for i in range(4096) if i not in numbers)
            if number in numbers:
                raise ApiError(FAIL_EXISTS_VLM_DFN, f"Volume definition with number '{number}' already exists.")
            if size <= 0:
                raise ApiError(FAIL_INVLD_VLM_SIZE, f"Invalid volume size {size} KiB")
            numbers.append(number)
        if port is None:
            port = self._next_port
            self._next_port += 1
        rd = _ResourceDef(real, group, layers, port, external_name=external, props=dict(props))
        if peer_slots:
            rd.peer_slots = peer_slots
        if secret:
            rd.secret = secret
        self._rds[real.upper()] = rd
        ctx.ok(
            f"New resource definition '{real}' created.",
            CREATED,
            details=f"Resource definition '{real}' UUID is: {rd.uuid}",
            refs={"RscDfn": real},
            obj=MASK_RSC_DFN,
            op=MASK_CRT,
        )
        for number, (_nr, size, flags) in zip(numbers, vd_specs, strict=True):
            self._add_vd(ctx, rd, number, size, flags, {})
        return rd

    def _add_vd(
        self, ctx: _Ctx, rd: _ResourceDef, number: int, size: int, flags: list[str], props: dict[str, str]
    ) -> _VolumeDef:
        vd = _VolumeDef(number, size, self._next_minor, props=dict(props), flags=list(flags))
        self._next_minor += 1
        rd.vds[number] = vd
        ctx.ok(
            f"New volume definition with number '{number}' of resource definition '{rd.name}' created.",
            CREATED,
            details=f"Volume definition with number '{number}' of resource definition '{rd.name}' UUID is: {vd.uuid}",
            refs={"RscDfn": rd.name, "VlmNr": str(number)},
            obj=MASK_VLM_DFN,
            op=MASK_CRT,
        )
        return vd

    def _forget_rd(self, rd: _ResourceDef) -> None:
        rd.resources.clear()
        for vd in rd.vds.values():
            self._drop_vd_devices(rd, vd)
        for snap in rd.snapshots.values():
            self._drop_snapshot_files(snap)
        self._rds.pop(rd.name.upper(), None)

    def _rd_create(self, ctx: _Ctx) -> Any:
        body = _obj(
            ctx.body,
            "ResourceDefinitionCreate",
            {"drbd_port", "drbd_secret", "drbd_transport_type", "drbd_peer_slots", "resource_definition"},
            required=("resource_definition",),
        )
        spec = _obj(
            body["resource_definition"],
            "ResourceDefinition",
            {
                "name",
                "external_name",
                "props",
                "flags",
                "layer_data",
                "uuid",
                "resource_group_name",
                "volume_definitions",
            },
        )
        group = self._group(_opt_str(spec, "resource_group_name") or DEFAULT_RSC_GROUP)
        layer_data = spec.get("layer_data")
        layers: list[str] | None = None
        if layer_data is not None:
            if not isinstance(layer_data, list) or not all(isinstance(x, dict) for x in layer_data):
                raise _ParseError("layer_data: expected a list of objects")
            for item in layer_data:
                _obj(item, "ResourceDefinitionLayer", {"type", "data"})
            layers = _check_layers([str(x.get("type", "")) for x in layer_data])
        if not layers:
            layers = list(group.select_filter.get("layer_stack") or DEFAULT_LAYERS)
        props = _opt_props(spec, "props") or {}
        self._new_rd(
            ctx,
            _opt_str(spec, "name") or "",
            _opt_str(spec, "external_name"),
            group.name,
            layers,
            props,
            [],
            port=_opt_int(body, "drbd_port"),
            peer_slots=_opt_int(body, "drbd_peer_slots") or group.peer_slots,
            secret=_opt_str(body, "drbd_secret"),
        )

    def _rd_modify(self, ctx: _Ctx) -> Any:
        rd = self._rd(ctx.params["resource"])
        body = _obj(
            ctx.body,
            "ResourceDefinitionModify",
            {
                "override_props",
                "delete_props",
                "delete_namespaces",
                "drbd_port",
                "drbd_peer_slots",
                "layer_stack",
                "resource_group",
            },
        )
        group_name = _opt_str(body, "resource_group")
        group = self._group(group_name) if group_name else None
        layers = _check_layers(_opt_strs(body, "layer_stack"))
        if layers and rd.resources and layers != rd.layers:
            raise ApiError(FAIL_INVLD_LAYER_STACK, "Cannot change the layer stack of a deployed resource definition")
        _apply_props(
            rd.props,
            _opt_props(body, "override_props"),
            _opt_strs(body, "delete_props"),
            _opt_strs(body, "delete_namespaces"),
        )
        if group is not None:
            rd.group = group.name
        if layers:
            rd.layers = layers
        port = _opt_int(body, "drbd_port")
        if port is not None:
            rd.port = port
        slots = _opt_int(body, "drbd_peer_slots")
        if slots is not None:
            rd.peer_slots = slots
        ctx.ok(
            f"Resource definition '{rd.name}' modified.",
            MODIFIED,
            details=f"Resource definition '{rd.name}' UUID is: {rd.uuid}",
            refs={"RscDfn": rd.name},
        )

    def _rd_delete(self, ctx: _Ctx) -> Any:
        name = ctx.params["resource"]
        rd = self._rds.get(name.upper())
        if rd is None:
            raise ApiError(WARN_NOT_FOUND, f"Resource definition '{name}' not found.")
        if rd.snapshots:
            raise ApiError(
                FAIL_EXISTS_SNAPSHOT_DFN, f"Cannot delete resource definition '{rd.name}' because it has snapshots."
            )
        user = self._in_use_anywhere(rd)
        if user is not None:
            raise ApiError(
                FAIL_IN_USE,
                f"Resource '{rd.name}' on node '{user}' is still in use.",
                cause="Resource is mounted/in use.",
                correction=f"Un-mount resource '{rd.name}' on the node '{user}'.",
            )
        nodes = [r.node for r in rd.resources.values()]
        self._forget_rd(rd)
        for node in nodes:
            ctx.ok(f"Deleted '{rd.name}' on '{node}'", DELETED, obj=MASK_RSC, refs={"RscDfn": rd.name, "Node": node})
        ctx.ok(
            f"Resource definition '{rd.name}' deleted.",
            DELETED,
            details=f"Resource definition '{rd.name}' UUID was: {rd.uuid}",
            refs={"RscDfn": rd.name},
        )

    def _rd_clone(self, ctx: _Ctx) -> Any:
        src = self._rd(ctx.params["resource"])
        body = _obj(
            ctx.body,
            "ResourceDefinitionCloneRequest",
            {
                "name",
                "external_name",
                "use_zfs_clone",
                "layer_list",
                "volume_passphrases",
                "resource_group",
                "override_props",
                "delete_props",
                "delete_namespaces",
            },
        )
        group = self._group(_opt_str(body, "resource_group") or src.group)
        layers = _check_layers(_opt_strs(body, "layer_list")) or list(src.layers)
        props = dict(src.props)
        _apply_props(
            props,
            _opt_props(body, "override_props"),
            _opt_strs(body, "delete_props"),
            _opt_strs(body, "delete_namespaces"),
        )
        _opt_bool(body, "use_zfs_clone")
        if not src.diskful():
            raise ApiError(FAIL_NOT_FOUND_RSC, f"Resource definition '{src.name}' has no diskful resources to clone")
        specs = [(vd.number, vd.size_kib, list(vd.flags)) for vd in src.vds.values()]
        rd = self._new_rd(
            ctx, _opt_str(body, "name") or "", _opt_str(body, "external_name"), group.name, layers, props, specs
        )
        try:
            for vd in src.vds.values():
                rd.vds[vd.number].props = dict(vd.props)
            for rsc in src.diskful():
                self._add_resource(ctx, rd, self._nodes[rsc.node.upper()], rsc.pool, diskless=False)
            for vd in src.vds.values():
                dst = rd.vds[vd.number]
                assert vd.path is not None and dst.path is not None
                self._copy(vd.path, dst.path, vd.loop)
                _flush_bdev(dst.loop)
        except BaseException:
            self._forget_rd(rd)
            raise
        self._clones[(src.name.upper(), rd.name.upper())] = "COMPLETE"
        return {
            "location": f"/v1/resource-definitions/{src.name}/clone/{rd.name}",
            "source_name": src.name,
            "clone_name": rd.name,
            "messages": ctx.entries,
        }

    def _rd_clone_status(self, ctx: _Ctx) -> Any:
        src = self._rd(ctx.params["resource"])
        clone = ctx.params["resourceClone"]
        status = self._clones.get((src.name.upper(), clone.upper()))
        if status is None:
            raise ApiError(FAIL_NOT_FOUND_RSC_DFN, f"Clone '{clone}' of resource definition '{src.name}' not found.")
        return {"status": status}

    def _rd_sync_status(self, ctx: _Ctx) -> Any:
        self._rd(ctx.params["resource"])
        return {"synced_on_all": True}

    # -- volume definitions ----------------------------------------------------------------------

    def _vd_create(self, ctx: _Ctx) -> Any:
        rd = self._rd(ctx.params["resource"])
        body = _obj(
            ctx.body,
            "VolumeDefinitionCreate",
            {"volume_definition", "drbd_minor_number", "passphrase"},
            required=("volume_definition",),
        )
        spec = _obj(
            body["volume_definition"],
            "VolumeDefinition",
            {"volume_number", "size_kib", "props", "flags", "uuid", "layer_data"},
            required=("size_kib",),
        )
        size = _opt_int(spec, "size_kib")
        assert size is not None
        if size <= 0:
            raise ApiError(FAIL_INVLD_VLM_SIZE, f"Invalid volume size {size} KiB")
        number = _opt_int(spec, "volume_number")
        if number is None:
            number = next(i for i in range(4096) if i not in rd.vds)
        if not 0 <= number <= 4095:
            raise ApiError(FAIL_INVLD_VLM_NR, f"Invalid volume number {number}")
        if number in rd.vds:
            raise ApiError(
                FAIL_EXISTS_VLM_DFN,
                f"A volume definition with the number {number} already exists in resource definition '{rd.name}'.",
            )
        props = _opt_props(spec, "props") or {}
        for key, value in props.items():
            _check_prop(key, value)
        flags = _opt_strs(spec, "flags") or []
        self._check_room(rd, size)
        self._add_vd(ctx, rd, number, size, flags, props)
        self._sync_devices(rd)

    def _check_room(self, rd: _ResourceDef, additional_kib: int) -> None:
        short = []
        for rsc in rd.diskful():
            pool = self._nodes[rsc.node.upper()].pools.get(rsc.pool.upper())
            if pool is not None and self._room_kib(pool) < additional_kib:
                short.append(f"{pool.node}:{pool.name}")
        if short:
            raise ApiError(
                FAIL_NOT_ENOUGH_FREE_SPACE,
                f"Cannot grow the volume definition by {additional_kib}KiB, as the following storage pool do "
                "not have enough free space:\n" + "\n".join(short),
            )

    def _vd_modify(self, ctx: _Ctx) -> Any:
        rd = self._rd(ctx.params["resource"])
        vd = self._vd(rd, ctx.params["volume_number"])
        body = _obj(
            ctx.body,
            "VolumeDefinitionModify",
            {"override_props", "delete_props", "delete_namespaces", "flags", "size_kib"},
        )
        size = _opt_int(body, "size_kib")
        if size is not None:
            if size <= 0:
                raise ApiError(FAIL_INVLD_VLM_SIZE, f"Invalid volume size {size} KiB")
            if size < vd.size_kib and rd.resources:
                raise ApiError(
                    FAIL_INVLD_VLM_SIZE,
                    "Deployed volumes can only grow in size, not shrink.",
                )
            if size > vd.size_kib:
                self._check_room(rd, size - vd.size_kib)
        _apply_props(
            vd.props,
            _opt_props(body, "override_props"),
            _opt_strs(body, "delete_props"),
            _opt_strs(body, "delete_namespaces"),
        )
        for flag in _opt_strs(body, "flags") or []:
            if flag.startswith("-"):
                if flag[1:] in vd.flags:
                    vd.flags.remove(flag[1:])
            elif flag not in vd.flags:
                vd.flags.append(flag)
        if size is not None and size != vd.size_kib:
            vd.size_kib = size
            if vd.path is not None:
                os.truncate(vd.path, size * 1024)
            if vd.loop is not None:
                _run(["losetup", "--set-capacity", vd.loop])
        ctx.ok(
            f"Volume definition with number '{vd.number}' of resource definition '{rd.name}' modified.",
            MODIFIED,
            details=f"Volume definition with number '{vd.number}' of resource definition '{rd.name}' "
            f"UUID is: {vd.uuid}",
            refs={"RscDfn": rd.name, "VlmNr": str(vd.number)},
        )

    def _vd_delete(self, ctx: _Ctx) -> Any:
        rd = self._rd(ctx.params["resource"])
        vd = self._vd(rd, ctx.params["volume_number"])
        if self._in_use_anywhere(rd) is not None:
            raise ApiError(FAIL_IN_USE, f"Resource '{rd.name}' is still in use.")
        self._drop_vd_devices(rd, vd)
        del rd.vds[vd.number]
        ctx.ok(
            f"Volume definition with number '{vd.number}' of resource definition '{rd.name}' deleted.",
            DELETED,
            refs={"RscDfn": rd.name, "VlmNr": str(vd.number)},
        )

    # -- resources --------------------------------------------------------------------------------

    def _default_pool(self, rd: _ResourceDef, node: _Node) -> _Pool:
        """The diskful pool a resource without StorPoolName gets on ``node``."""
        group = self._groups.get(rd.group.upper())
        sf = group.select_filter if group else {}
        named = rd.props.get("StorPoolName") or next(
            (vd.props["StorPoolName"] for vd in rd.vds.values() if "StorPoolName" in vd.props), None
        )
        if named:
            return self._pool_of(node, named)
        pools = self._allowed_pools(node, sf)
        if not pools:
            raise ApiError(
                FAIL_NOT_FOUND_DFLT_STOR_POOL,
                f"The default storage pool for resource '{rd.name}' on node '{node.name}' was not found.",
            )
        return max(pools, key=self._free_kib)

    def _add_resource(
        self, ctx: _Ctx, rd: _ResourceDef, node: _Node, pool_name: str | None, *, diskless: bool, report: bool = True
    ) -> _Resource:
        if node.name.upper() in rd.resources:
            raise ApiError(
                FAIL_EXISTS_RSC,
                f"A resource with the name '{rd.name}' on node '{node.name}' already exists.",
                refs={"RscDfn": rd.name, "Node": node.name},
            )
        if diskless:
            if "DRBD" not in rd.layers:
                raise ApiError(
                    FAIL_INVLD_LAYER_STACK,
                    f"Diskless resources of '{rd.name}' need the DRBD layer; its layer stack is {rd.layers}",
                )
            pool = self._pool_of(node, pool_name or DISKLESS_POOL)
            if not pool.diskless:
                raise ApiError(FAIL_INVLD_STOR_POOL_NAME, f"Storage pool '{pool.name}' is not diskless")
            flags = ["DRBD_DISKLESS", "DISKLESS"]
        else:
            pool = self._pool_of(node, pool_name) if pool_name else self._default_pool(rd, node)
            if pool.diskless:
                flags = ["DRBD_DISKLESS", "DISKLESS"]
                diskless = True
            else:
                flags = []
                need = sum(vd.size_kib for vd in rd.vds.values())
                if self._room_kib(pool) < need:
                    raise ApiError(
                        FAIL_NOT_ENOUGH_FREE_SPACE,
                        f"Not enough free space in storage pool '{pool.name}' on node '{node.name}'",
                        details=f"Needed: {need} KiB, available: {self._room_kib(pool)} KiB",
                    )
        used_ids = {r.node_id for r in rd.resources.values()}
        node_id = next(i for i in range(32) if i not in used_ids)
        rsc = _Resource(node.name, pool.name, flags, node_id, props={"StorPoolName": pool.name})
        rd.resources[node.name.upper()] = rsc
        try:
            self._sync_devices(rd)
        except BaseException:
            del rd.resources[node.name.upper()]
            self._sync_devices(rd)
            raise
        if report:
            refs = {"RscDfn": rd.name, "Node": node.name}
            ctx.ok(
                f"New resource '{rd.name}' on node '{node.name}' registered.",
                CREATED,
                details=f"Resource '{rd.name}' on node '{node.name}' UUID is: {rsc.uuid}",
                refs=refs,
                obj=MASK_RSC,
                op=MASK_CRT,
            )
            ctx.ok(f"Created resource '{rd.name}' on '{node.name}'", CREATED, refs=refs, obj=MASK_RSC, op=MASK_CRT)
        return rsc

    def _rsc_create(self, ctx: _Ctx) -> Any:
        rd = self._rd(ctx.params["resource"])
        body = ctx.body
        if not isinstance(body, list):
            raise _ParseError("expected a list of ResourceCreate objects")
        plans = []
        for item in body:
            spec = _obj(
                item,
                "ResourceCreate",
                {
                    "resource",
                    "layer_list",
                    "drbd_node_id",
                    "drbd_tcp_ports",
                    "drbd_tcp_port_count",
                    "drbd_client",
                    "snap_names",
                    "copy_all_snaps",
                },
            )
            rsc = _obj(
                spec.get("resource"),
                "Resource",
                {
                    "name",
                    "node_name",
                    "props",
                    "flags",
                    "layer_object",
                    "state",
                    "uuid",
                    "create_timestamp",
                    "effective_props",
                },
            )
            node = self._node(_opt_str(rsc, "node_name") or "")
            flags = {f.upper() for f in _opt_strs(rsc, "flags") or []}
            props = _opt_props(rsc, "props") or {}
            diskless = bool(flags & {"DISKLESS", "DRBD_DISKLESS"}) or bool(_opt_bool(spec, "drbd_client"))
            layers = _check_layers(_opt_strs(spec, "layer_list"))
            if layers and layers != rd.layers:
                raise ApiError(FAIL_INVLD_LAYER_STACK, f"Layer stack {layers} does not match {rd.layers}")
            plans.append((node, props.get("StorPoolName"), diskless, props))
        seen: set[str] = set()
        for node, _pool, _dl, _props in plans:
            if node.name.upper() in seen or node.name.upper() in rd.resources:
                raise ApiError(
                    FAIL_EXISTS_RSC, f"A resource with the name '{rd.name}' on node '{node.name}' already exists."
                )
            seen.add(node.name.upper())
        for _node, _pool, _dl, props in plans:
            for key, value in props.items():
                _check_prop(key, value)
        added: list[_Resource] = []
        try:
            for node, pool, diskless, props in plans:
                new = self._add_resource(ctx, rd, node, pool, diskless=diskless)
                new.props.update(props)
                added.append(new)
        except BaseException:
            for new in added:
                rd.resources.pop(new.node.upper(), None)
            self._sync_devices(rd)
            raise

    def _rsc_modify(self, ctx: _Ctx) -> Any:
        rd = self._rd(ctx.params["resource"])
        rsc = self._rsc_of(rd, ctx.params["node"])
        body = _obj(
            ctx.body,
            "ResourceModify",
            {"override_props", "delete_props", "delete_namespaces", "drbd_tiebreaker", "drbd_client"},
        )
        _opt_bool(body, "drbd_client")
        _opt_bool(body, "drbd_tiebreaker")
        _apply_props(
            rsc.props,
            _opt_props(body, "override_props"),
            _opt_strs(body, "delete_props"),
            _opt_strs(body, "delete_namespaces"),
        )
        ctx.ok(
            f"Resource '{rd.name}' on node '{rsc.node}' modified.", MODIFIED, refs={"RscDfn": rd.name, "Node": rsc.node}
        )

    def _rsc_of(self, rd: _ResourceDef, node: str) -> _Resource:
        rsc = rd.resources.get(node.upper())
        if rsc is None:
            raise ApiError(
                FAIL_NOT_FOUND_RSC,
                f"Resource '{rd.name}' on node '{node}' not found.",
                refs={"RscDfn": rd.name, "Node": node},
            )
        return rsc

    def _rsc_delete(self, ctx: _Ctx) -> Any:
        name, node_name = ctx.params["resource"], ctx.params["node"]
        rd = self._rds.get(name.upper())
        rsc = rd.resources.get(node_name.upper()) if rd is not None else None
        if rd is None or rsc is None:
            raise ApiError(WARN_NOT_FOUND, f"Node: {node_name}, Resource: {name} not found.")
        if rsc.in_use:
            raise ApiError(
                FAIL_IN_USE,
                f"Resource '{rd.name}' is still in use.",
                cause="Resource is mounted/in use.",
                correction=f"Un-mount resource '{rd.name}' on the node '{rsc.node}'.",
            )
        if not rsc.diskless and rd.diskless() and len(rd.diskful()) == 1:
            raise ApiError(
                FAIL_IN_USE,
                f"Last resource of '{rd.name}' with disk still has diskless resources attached.",
                cause="Resource still has diskless users.",
                correction="Before deleting this resource, delete the diskless resources attached to it.",
            )
        del rd.resources[node_name.upper()]
        self._sync_devices(rd)
        refs = {"RscDfn": rd.name, "Node": rsc.node}
        ctx.ok(
            f"Resource '{rd.name}' on node '{rsc.node}' marked for deletion.",
            DELETED,
            refs=refs,
            details=f"Resource '{rd.name}' on node '{rsc.node}' UUID is: {rsc.uuid}",
        )
        ctx.ok(f"Deleted '{rd.name}' on '{rsc.node}'", DELETED, refs=refs)
        ctx.ok(f"Resource '{rd.name}' on node '{rsc.node}' deleted.", DELETED, refs=refs)

    def _rsc_make_available(self, ctx: _Ctx) -> Any:
        rd = self._rd(ctx.params["resource"])
        node = self._node(ctx.params["node"])
        body = _obj(
            ctx.body,
            "ResourceMakeAvailable",
            {"layer_list", "diskful", "drbd_tcp_ports", "copy_all_snaps", "snap_names"},
        )
        diskful = bool(_opt_bool(body, "diskful"))
        layers = _check_layers(_opt_strs(body, "layer_list"))
        rsc = rd.resources.get(node.name.upper())
        if rsc is not None:
            if layers and layers != rd.layers:
                raise ApiError(FAIL_INVLD_LAYER_STACK, "Layerstack of deployed resource does not match")
            if rsc.diskless and diskful:
                self._toggle(ctx, rd, rsc, None, to_diskless=False)
                return None
            ctx.ok("Resource already deployed as requested", SUCCESS, refs={"RscDfn": rd.name, "Node": node.name})
            return None
        if not diskful and rd.diskful():
            self._add_resource(ctx, rd, node, None, diskless=True)
            return None
        group = self._groups.get(rd.group.upper())
        sf = dict(group.select_filter) if group else {}
        pools = [
            p for p in self._allowed_pools(node, sf) if self._room_kib(p) >= sum(v.size_kib for v in rd.vds.values())
        ]
        if not pools:
            raise ApiError(
                FAIL_NOT_ENOUGH_NODES,
                "Not enough available nodes",
                details=f"No storage pool on node '{node.name}' fulfils the auto-place criteria of resource "
                f"group '{rd.group}'",
            )
        self._add_resource(ctx, rd, node, max(pools, key=self._room_kib).name, diskless=False)

    def _toggle(self, ctx: _Ctx, rd: _ResourceDef, rsc: _Resource, pool_name: str | None, *, to_diskless: bool) -> None:
        node = self._nodes[rsc.node.upper()]
        if to_diskless:
            if rsc.diskless:
                ctx.ok(f"Resource '{rd.name}' on node '{node.name}' is already diskless", WARN_RSC_ALREADY_DISKLESS)
                return
            if len(rd.diskful()) == 1:
                raise ApiError(FAIL_IN_USE, f"Cannot remove the last disk of resource '{rd.name}'")
            pool = self._pool_of(node, pool_name or DISKLESS_POOL)
            rsc.pool, rsc.flags = pool.name, ["DRBD_DISKLESS", "DISKLESS"]
        else:
            if not rsc.diskless:
                ctx.ok(f"Resource '{rd.name}' on node '{node.name}' already has a disk", WARN_RSC_ALREADY_HAS_DISK)
                return
            pool = self._pool_of(node, pool_name) if pool_name else self._default_pool(rd, node)
            if pool.diskless:
                raise ApiError(FAIL_INVLD_STOR_POOL_NAME, f"Storage pool '{pool.name}' is diskless")
            need = sum(vd.size_kib for vd in rd.vds.values())
            if self._room_kib(pool) < need:
                raise ApiError(FAIL_NOT_ENOUGH_FREE_SPACE, f"Not enough free space in storage pool '{pool.name}'")
            rsc.pool, rsc.flags = pool.name, []
        rsc.props["StorPoolName"] = rsc.pool
        self._sync_devices(rd)
        what = "diskless" if to_diskless else "diskful"
        ctx.ok(
            f"Resource '{rd.name}' on node '{node.name}' is now {what}.",
            MODIFIED,
            refs={"RscDfn": rd.name, "Node": node.name},
            op=MASK_MOD,
        )

    def _rsc_toggle_disk(self, ctx: _Ctx) -> Any:
        rd = self._rd(ctx.params["resource"])
        rsc = self._rsc_of(rd, ctx.params["node"])
        body = _obj(ctx.body, "ToggleDiskRequest", {"operation", "storage_pool", "migrate_from", "layer_list"})
        operation = _opt_str(body, "operation") or "INTO_DRBD_DISKFUL"
        if operation not in ("INTO_DRBD_DISKFUL", "INTO_DRBD_DISKLESS", "INTO_DRBD_CLIENT"):
            raise _ParseError(f"operation: unknown value {operation}")
        if _opt_str(body, "migrate_from"):
            raise ApiError(FAIL_INVLD_REQUEST, "simulator: migrate_from is not supported")
        self._toggle(ctx, rd, rsc, _opt_str(body, "storage_pool"), to_diskless=operation != "INTO_DRBD_DISKFUL")

    # -- autoplace --------------------------------------------------------------------------------

    def _select(self, rd: _ResourceDef | None, sf: dict[str, Any], size_kib: int, count: int) -> list[_Pool]:
        """Choose ``count`` pools on distinct nodes for new diskful replicas of ``rd``."""
        placed = [self._nodes[r.node.upper()] for r in rd.diskful()] if rd is not None else []
        placed_keys = {n.name.upper() for n in placed}
        avoid: set[str] = set()
        names = {n.upper() for n in sf.get("not_place_with_rsc") or []}
        regex = sf.get("not_place_with_rsc_regex")
        for other in self._rds.values():
            if other is rd:
                continue
            if other.name.upper() in names or (regex and re.search(regex, other.name, re.IGNORECASE)):
                avoid.update(other.resources)
        candidates: list[_Pool] = []
        for node in self._nodes.values():
            key = node.name.upper()
            if not node.online or key in placed_keys or key in avoid:
                continue
            if sf.get("node_name_list") and key not in {n.upper() for n in sf["node_name_list"]}:
                continue
            pools = [p for p in self._allowed_pools(node, sf) if self._room_kib(p) >= size_kib]
            if pools:
                candidates.append(max(pools, key=lambda p: (self._free_kib(p), p.name)))
        candidates.sort(key=lambda p: (-self._free_kib(p), p.node))

        # replicas-on-same: the value every replica must share (fixed, from placed nodes, or free)
        same: dict[str, str | None] = {}
        for item in sf.get("replicas_on_same") or []:
            key, sep, value = item.partition("=")
            seen = {n.props[key] for n in placed if key in n.props}
            if len(seen) > 1:
                raise ApiError(
                    FAIL_UNDECIDABLE_AUTOPLACMENT,
                    f"The property in --replicas-on-same '{key}' is already set on already deployed nodes with "
                    f"different values. Autoplacer cannot decide which value to continue with.",
                )
            same[key] = seen.pop() if seen else (value if sep else None)
        candidates = [
            p
            for p in candidates
            if all(
                k in self._nodes[p.node.upper()].props and (v is None or self._nodes[p.node.upper()].props[k] == v)
                for k, v in same.items()
            )
        ]
        xmap: dict[str, int] = dict(sf.get("x_replicas_on_different_map") or {})
        diff_keys = list(dict.fromkeys([*(sf.get("replicas_on_different") or []), *xmap]))

        def pick(pool_list: list[_Pool]) -> list[_Pool] | None:
            counts: dict[str, dict[str, int]] = {k: {} for k in diff_keys}
            for node in placed:
                for k in diff_keys:
                    if k in node.props:
                        counts[k][node.props[k]] = counts[k].get(node.props[k], 0) + 1
            chosen: list[_Pool] = []
            for pool in pool_list:
                props = self._nodes[pool.node.upper()].props
                if any(k in props and counts[k].get(props[k], 0) >= xmap.get(k, 1) for k in diff_keys):
                    continue
                for k in diff_keys:
                    if k in props:
                        counts[k][props[k]] = counts[k].get(props[k], 0) + 1
                chosen.append(pool)
                if len(chosen) == count:
                    return chosen
            return None

        free_keys = [k for k, v in same.items() if v is None]
        if not free_keys:
            result = pick(candidates)
        else:
            groups: dict[tuple[str, ...], list[_Pool]] = {}
            for pool in candidates:
                props = self._nodes[pool.node.upper()].props
                groups.setdefault(tuple(props[k] for k in free_keys), []).append(pool)
            options = [r for r in (pick(g) for g in groups.values()) if r]
            result = max(options, key=lambda r: sum(self._free_kib(p) for p in r)) if options else None
        if result is None:
            raise ApiError(
                FAIL_NOT_ENOUGH_NODES,
                "Not enough available nodes",
                details="Not enough nodes fulfilling the following auto-place criteria:\n"
                + "\n".join(f" * {k}: {v}" for k, v in sorted(sf.items()))
                + f"\n * additional replicas needed: {count}\n * candidates: "
                + ", ".join(f"{p.node}:{p.name}" for p in candidates),
            )
        return result

    def _autoplace(self, ctx: _Ctx, rd: _ResourceDef, sf: dict[str, Any]) -> None:
        diskful = rd.diskful()
        additional = sf.get("additional_place_count") or 0
        if not additional:
            wanted = sf.get("place_count")
            if wanted is None:
                group = self._groups.get(rd.group.upper())
                wanted = (group.select_filter.get("place_count") if group else None) or 2
            additional = wanted - len(diskful)
        if additional < 0:
            raise ApiError(
                WARN_RSC_ALREADY_DEPLOYED,
                f"The resource '{rd.name}' was already deployed on {len(diskful)} nodes: "
                + ", ".join(f"'{r.node}'" for r in diskful)
                + ". The resource would have to be deleted from nodes to reach the placement count.",
            )
        if additional == 0 and not sf.get("diskless_on_remaining"):
            ctx.ok(
                f"Resource '{rd.name}' was already deployed on {len(diskful)} nodes.",
                WARN_RSC_ALREADY_DEPLOYED,
                details="Used nodes: " + ", ".join(f"'{r.node}'" for r in diskful),
            )
            return
        size = sum(vd.size_kib for vd in rd.vds.values())
        chosen = self._select(rd, sf, size, additional) if additional > 0 else []
        refs: dict[str, str] = {"RscDfn": rd.name}
        for idx, pool in enumerate(chosen):
            node = self._nodes[pool.node.upper()]
            existing = rd.resources.get(node.name.upper())
            if existing is not None:  # a diskless resource becomes diskful
                self._toggle(ctx, rd, existing, pool.name, to_diskless=False)
            else:
                self._add_resource(ctx, rd, node, pool.name, diskless=False, report=False)
            refs[f"Node/{idx}"] = node.name
            refs[f"StoragePool/{idx}/0"] = pool.name
        if chosen:
            ctx.ok(
                f"Resource '{rd.name}' successfully autoplaced on {len(chosen)} nodes",
                SUCCESS,
                details="Used nodes (storage pool name): " + ", ".join(f"'{p.node} ({p.name})'" for p in chosen),
                refs=refs,
                obj=MASK_RSC,
            )
        if sf.get("diskless_on_remaining"):
            pools = [p.upper() for p in sf.get("storage_pool_diskless_list") or []]
            for node in self._nodes.values():
                if not node.online or node.name.upper() in rd.resources or "DRBD" not in rd.layers:
                    continue
                diskless = [p for p in node.pools.values() if p.diskless and (not pools or p.name.upper() in pools)]
                if diskless:
                    self._add_resource(ctx, rd, node, diskless[0].name, diskless=True)

    def _rsc_autoplace(self, ctx: _Ctx) -> Any:
        rd = self._rd(ctx.params["resource"])
        body = _obj(
            ctx.body,
            "AutoPlaceRequest",
            {"diskless_on_remaining", "select_filter", "layer_list", "copy_all_snaps", "snap_names"},
            required=("select_filter",),
        )
        request = self._select_filter(body.get("select_filter"))
        dor = _opt_bool(body, "diskless_on_remaining")
        if dor is not None and "diskless_on_remaining" not in request:
            request["diskless_on_remaining"] = dor
        layers = _check_layers(_opt_strs(body, "layer_list"))
        group = self._groups.get(rd.group.upper())
        sf = {**(group.select_filter if group else {}), **request}
        if layers and layers != rd.layers:
            if rd.resources:
                raise ApiError(FAIL_INVLD_LAYER_STACK, "Layerstack of deployed resource does not match")
            rd.layers = layers
        if sf.get("diskless_on_remaining") and not rd.diskful() and not sf.get("place_count"):
            raise ApiError(
                FAIL_NOT_FOUND_RSC, "Cannot place 'diskless-on-remaining' without having diskful resources deployed"
            )
        self._autoplace(ctx, rd, sf)

    # -- snapshots ---------------------------------------------------------------------------------

    def _take_snapshot(self, ctx: _Ctx, rd: _ResourceDef, name: str, nodes: list[str] | None) -> _Snapshot:
        _check_name(name, "snapshot", FAIL_INVLD_SNAPSHOT_NAME)
        if name.upper() in rd.snapshots:
            raise ApiError(
                FAIL_EXISTS_SNAPSHOT_DFN,
                f"A snapshot definition with the name '{name}' already exists in resource definition '{rd.name}'.",
            )
        if nodes:
            sources = []
            for node_name in nodes:
                rsc = self._rsc_of(rd, node_name)
                if rsc.diskless:
                    raise ApiError(
                        FAIL_SNAPSHOTS_NOT_SUPPORTED,
                        f"Cannot create snapshot from diskless resource on node '{node_name}'",
                    )
                sources.append(rsc)
        else:
            sources = [r for r in rd.diskful() if self._nodes[r.node.upper()].online]
        if not sources:
            raise ApiError(FAIL_NOT_FOUND_RSC, "No resources found for snapshotting")
        for rsc in sources:
            pool = self._nodes[rsc.node.upper()].pools[rsc.pool.upper()]
            if not pool.snapshots:
                raise ApiError(
                    FAIL_SNAPSHOTS_NOT_SUPPORTED,
                    f"Storage driver '{pool.provider}' does not support snapshots.",
                    details=f"Used for storage pool '{pool.name}' on '{pool.node}'.\nResource: {rd.name}, "
                    f"Snapshot: {name}",
                )
        snap = _Snapshot(
            name,
            rd.next_seq,
            {r.node: r.pool for r in sources},
            {vd.number: vd.size_kib for vd in rd.vds.values()},
            {},
            {vd.number: dict(vd.props) for vd in rd.vds.values()},
        )
        try:
            for vd in rd.vds.values():
                assert vd.path is not None
                dst = self.data_dir / f"snap-{snap.uuid}-{vd.number}.img"
                self._copy(vd.path, dst, vd.loop)
                snap.files[vd.number] = dst
        except BaseException:
            self._drop_snapshot_files(snap)
            raise
        rd.next_seq += 1
        rd.snapshots[name.upper()] = snap
        refs = {"RscDfn": rd.name, "Snapshot": name}
        ctx.ok(
            f"New snapshot '{name}' of resource '{rd.name}' registered.",
            CREATED,
            details=f"Snapshot '{name}' of resource '{rd.name}' UUID is: {snap.uuid}",
            refs=refs,
            obj=MASK_SNAPSHOT,
            op=MASK_CRT,
        )
        ctx.ok(
            f"Snapshot '{name}' of resource '{rd.name}' successfully taken on "
            + ", ".join(f"'{n}'" for n in sorted(snap.nodes)),
            CREATED,
            refs=refs,
            obj=MASK_SNAPSHOT,
            op=MASK_CRT,
        )
        return snap

    def _snap_create(self, ctx: _Ctx) -> Any:
        rd = self._rd(ctx.params["resource"])
        body = _obj(
            ctx.body,
            "Snapshot",
            {
                "name",
                "resource_name",
                "nodes",
                "props",
                "snapshot_definition_props",
                "resource_definition_props",
                "flags",
                "volume_definitions",
                "uuid",
                "snapshots",
            },
        )
        snap = self._take_snapshot(ctx, rd, _opt_str(body, "name") or "", _opt_strs(body, "nodes"))
        props = _opt_props(body, "props") or {}
        for key, value in props.items():
            _check_prop(key, value)
        snap.props.update(props)

    def _snap_create_multi(self, ctx: _Ctx) -> Any:
        body = _obj(ctx.body, "CreateMultiSnapshotRequest", {"snapshots"}, required=("snapshots",))
        specs = body["snapshots"]
        if not isinstance(specs, list) or not specs:
            raise _ParseError("snapshots: expected a non-empty list")
        plans = []
        for spec in specs:
            item = _obj(
                spec,
                "Snapshot",
                {"name", "resource_name", "nodes", "props", "flags", "volume_definitions", "uuid", "snapshots"},
            )
            plans.append(
                (
                    self._rd(_opt_str(item, "resource_name") or ""),
                    _opt_str(item, "name") or "",
                    _opt_strs(item, "nodes"),
                )
            )
        taken: list[tuple[_ResourceDef, _Snapshot]] = []
        try:
            for rd, name, nodes in plans:
                taken.append((rd, self._take_snapshot(ctx, rd, name, nodes)))
        except BaseException:
            for rd, snap in taken:
                self._drop_snapshot_files(snap)
                rd.snapshots.pop(snap.name.upper(), None)
                rd.next_seq -= 1
            raise

    def _snap_modify(self, ctx: _Ctx) -> Any:
        rd = self._rd(ctx.params["resource"])
        snap = self._snapshot(rd, ctx.params["snapshot"])
        body = _obj(ctx.body, "SnapshotModify", {"override_props", "delete_props", "delete_namespaces"})
        _apply_props(
            snap.props,
            _opt_props(body, "override_props"),
            _opt_strs(body, "delete_props"),
            _opt_strs(body, "delete_namespaces"),
        )
        ctx.ok(
            f"Snapshot '{snap.name}' of resource '{rd.name}' modified.",
            MODIFIED,
            refs={"RscDfn": rd.name, "Snapshot": snap.name},
        )

    def _snap_delete(self, ctx: _Ctx) -> Any:
        name, snap_name = ctx.params["resource"], ctx.params["snapshot"]
        rd = self._rds.get(name.upper())
        snap = rd.snapshots.get(snap_name.upper()) if rd is not None else None
        if rd is None or snap is None:
            raise ApiError(WARN_NOT_FOUND, f"Snapshot definition '{snap_name}' of resource '{name}' not found.")
        nodes = ctx.q("nodes")
        if nodes:
            for node in nodes:
                snap.nodes.pop(next((n for n in snap.nodes if n.upper() == node.upper()), ""), None)
            if snap.nodes:
                ctx.ok(f"Snapshot '{snap.name}' of resource '{rd.name}' deleted on " + ", ".join(nodes), DELETED)
                return None
        self._drop_snapshot_files(snap)
        del rd.snapshots[snap.name.upper()]
        ctx.ok(
            f"Snapshot '{snap.name}' of resource '{rd.name}' deleted.",
            DELETED,
            details=f"Snapshot '{snap.name}' of resource '{rd.name}' UUID was: {snap.uuid}",
            refs={"RscDfn": rd.name, "Snapshot": snap.name},
        )

    def _restore_target(self, ctx: _Ctx) -> tuple[_ResourceDef, _Snapshot, _ResourceDef, dict[str, Any]]:
        src = self._rd(ctx.params["resource"])
        snap = self._snapshot(src, ctx.params["snapshot"])
        body = _obj(
            ctx.body, "SnapshotRestore", {"to_resource", "nodes", "stor_pool_rename"}, required=("to_resource",)
        )
        target = self._rd(_opt_str(body, "to_resource") or "")
        return src, snap, target, body

    def _snap_restore_vd(self, ctx: _Ctx) -> Any:
        src, snap, target, _body = self._restore_target(ctx)
        for nr in snap.sizes:
            if nr in target.vds:
                raise ApiError(
                    FAIL_EXISTS_VLM_DFN,
                    f"A volume definition with the number {nr} already exists in resource definition '{target.name}'.",
                )
        if target.resources:
            raise ApiError(FAIL_EXISTS_RSC, "Cannot restore to resource definition which already has resources")
        for nr, size in sorted(snap.sizes.items()):
            self._add_vd(ctx, target, nr, size, [], snap.vd_props.get(nr, {}))
        ctx.ok(
            f"Volume definitions of '{target.name}' restored from snapshot '{snap.name}' of '{src.name}'.",
            CREATED,
            refs={"RscDfn": target.name},
        )

    def _snap_restore_rsc(self, ctx: _Ctx) -> Any:
        src, snap, target, body = self._restore_target(ctx)
        rename = body.get("stor_pool_rename") or {}
        if not isinstance(rename, dict) or not all(isinstance(v, str) for v in rename.values()):
            raise _ParseError("stor_pool_rename: expected a map of strings")
        if target.resources:
            raise ApiError(FAIL_EXISTS_RSC, "Cannot restore to resource definition which already has resources")
        if not target.vds:
            raise ApiError(
                WARN_NOT_FOUND,
                "No volumes to restore.",
                details="The target resource definition has no volume definitions. "
                "Restore the volume definitions first.",
            )
        for nr, vd in target.vds.items():
            if nr not in snap.sizes:
                raise ApiError(
                    FAIL_NOT_FOUND_SNAPSHOT_VLM_DFN, f"Snapshot does not contain required volume number {nr}"
                )
            if snap.sizes[nr] != vd.size_kib:
                raise ApiError(
                    FAIL_INVLD_VLM_SIZE,
                    f"Snapshot size does not match for volume number {nr}; snapshot size: {snap.sizes[nr]}KiB, "
                    f"required size: {vd.size_kib}KiB",
                )
        wanted = _opt_strs(body, "nodes") or []
        if wanted:
            by_upper = {n.upper(): n for n in snap.nodes}
            missing = [n for n in wanted if n.upper() not in by_upper]
            if missing:
                raise ApiError(FAIL_NOT_FOUND_NODE, f"Snapshot '{snap.name}' does not exist on node '{missing[0]}'")
            nodes = [by_upper[n.upper()] for n in wanted]
        else:
            nodes = sorted(snap.nodes)
        try:
            for node_name in nodes:
                pool = rename.get(snap.nodes[node_name], snap.nodes[node_name])
                self._add_resource(ctx, target, self._node(node_name), pool, diskless=False)
            for nr, vd in target.vds.items():
                assert vd.path is not None
                self._copy(snap.files[nr], vd.path)
                _flush_bdev(vd.loop)
        except BaseException:
            target.resources.clear()
            self._sync_devices(target)
            raise
        ctx.ok(
            f"Resource '{target.name}' restored from snapshot '{snap.name}' of resource '{src.name}'.",
            CREATED,
            refs={"RscDfn": target.name, "Snapshot": snap.name},
        )

    def _snap_rollback(self, ctx: _Ctx) -> Any:
        rd = self._rd(ctx.params["resource"])
        snap = self._snapshot(rd, ctx.params["snapshot"])
        body = _obj(ctx.body, "SnapshotRollback", {"zfs_rollback_strategy"})
        strategy = _opt_str(body, "zfs_rollback_strategy")
        if strategy is not None and strategy not in ("rollback", "clone", "dynamic"):
            raise _ParseError(f"zfs_rollback_strategy: unknown value {strategy}")
        if snap.seq != max(s.seq for s in rd.snapshots.values()):
            raise ApiError(FAIL_EXISTS_SNAPSHOT_DFN, "Rollback is only allowed with the most recent snapshot")
        user = self._in_use_anywhere(rd)
        if user is not None:
            raise ApiError(
                FAIL_IN_USE,
                f"Resource '{rd.name}' on node '{user}' is still in use.",
                cause="Resource is mounted/in use.",
                correction=f"Un-mount resource '{rd.name}' on the node '{user}'.",
            )
        missing = [nr for nr in rd.vds if nr not in snap.files]
        if missing or not rd.diskful():
            raise ApiError(
                FAIL_NOT_FOUND_SNAPSHOT_VLM_DFN, "Some volumes were not captured by the snapshot. Cannot rollback."
            )
        for nr, vd in rd.vds.items():
            assert vd.path is not None
            _flush_bdev(vd.loop)
            self._copy(snap.files[nr], vd.path)
            if vd.size_kib != snap.sizes[nr]:
                vd.size_kib = snap.sizes[nr]
                os.truncate(vd.path, vd.size_kib * 1024)
                if vd.loop:
                    _run(["losetup", "--set-capacity", vd.loop])
            _flush_bdev(vd.loop)
        ctx.ok(
            f"Resource '{rd.name}' rolled back to snapshot '{snap.name}'.",
            MODIFIED,
            details=f"Snapshot '{snap.name}' of resource '{rd.name}' UUID is: {snap.uuid}",
            refs={"RscDfn": rd.name, "Snapshot": snap.name},
        )

    # -- views -------------------------------------------------------------------------------------

    def _view_resources(self, ctx: _Ctx) -> Any:
        nodes = ctx.q_upper("nodes")
        names = ctx.q_upper("resources")
        pools = ctx.q_upper("storage_pools")
        props = ctx.q("props")
        out = []
        for rd in self._rds.values():
            if names and rd.name.upper() not in names:
                continue
            for key, rsc in rd.resources.items():
                if nodes and key not in nodes:
                    continue
                if pools and rsc.pool.upper() not in pools:
                    continue
                if not self._props_match(rsc.props, props):
                    continue
                out.append(self._resource_json(rd, rsc))
        return self._page(out, ctx)

    def _view_snapshots(self, ctx: _Ctx) -> Any:
        nodes = ctx.q_upper("nodes")
        names = ctx.q_upper("resources")
        out = []
        for rd in self._rds.values():
            if names and rd.name.upper() not in names:
                continue
            for snap in sorted(rd.snapshots.values(), key=lambda s: s.seq):
                if nodes and not nodes & {n.upper() for n in snap.nodes}:
                    continue
                out.append(self._snapshot_json(rd, snap))
        return self._page(out, ctx)


def _stop_all() -> None:
    for sim in list(_RUNNING):
        with contextlib.suppress(Exception):
            sim.stop()


atexit.register(_stop_all)
