"""A simulator of StorPool's REST API, for tests. It is NOT StorPool.

No StorPool cluster can run on the project's test machines, so the StorPool storage
drivers are tested against this stand-in. It speaks the HTTP/JSON API that StorPool's
management service documents (the API reference shipped as apidoc.html in the ``storpool``
7.3.0 wheel on PyPI, API version 19.01): the same paths, request JSON and reply JSON, checked
in this project's tests with StorPool's own client library (``storpool.spapi``). It stores
nothing in a cluster: every volume and snapshot is a sparse file under ``root_dir`` and every
attachment is a Linux loop device. It has no replication, no disks, no placement logic and no
performance characteristics of StorPool; numbers about space are estimates from the files.

Python API
----------
``sim = StorPoolSim(root_dir, token="...")``; ``sim.start()`` listens on 127.0.0.1 and an
ephemeral port (``sim.host``, ``sim.port``, ``sim.url``); ``sim.stop()`` shuts the server down,
detaches every loop device the simulator attached and removes every link it made (nothing
else). The object is also a context manager (``with StorPoolSim(tmp_path) as sim: ...``), and
an ``atexit`` hook stops simulators a crashed test left running.

- ``sim.add_client(client_id, device_dir=None, *, byid_dir=None, hostname=None)`` registers a
  StorPool client (a "host"). Attaching to it creates ``<device_dir>/<name>`` (and
  ``<byid_dir>/<globalId>`` when a byid dir is set) pointing at the loop device. Unknown client
  ids are registered on first use with the shared default dirs ``root_dir/dev/storpool`` and
  ``root_dir/dev/storpool-byid`` (``auto_clients=False`` makes them an ``invalidParam`` error,
  "No such client registered"). The real device dir is /dev/storpool; tests pass tmp dirs.
  ``sim.client_for_host(hostname)`` maps a hostname given to add_client back to its id
  (StorPool's API has no such call: deployments use ``storpool_confget``/SP_OURID).
- ``sim.fail(method, mode="error"|"transient"|"delay"|"drop", times=1, delay=0.0, *, name=None,
  descr=None, skip=0, apply=False)`` injects faults into the next matching calls (``method`` is
  the call name such as "VolumeCreate", or "*"): an error reply (``invalidParam`` unless
  ``name`` is given), a transient error reply (``busy`` with ``"transient": true`` unless
  ``name`` is given), a sleep of ``delay`` seconds before the call runs, or a closed connection
  without any reply. ``times=None`` fails every matching call; ``skip`` lets that many matching
  calls through first; ``apply=True`` performs the call and then fails (a lost reply). The
  internal fault point ``"_copy"`` (mode "error") fails a data copy inside a call, which shows
  that multi-object calls roll back. ``sim.clear_faults()`` removes them all.
- ``sim.calls`` is a list of ``(call name, JSON body)`` for every request received (also
  rejected ones), so tests can count API round trips; ``sim.requests`` has more detail.
- ``sim.inventory()`` returns plain dicts of volumes, snapshots, attachments, templates,
  clients and loop devices for assertions.
- ``sim.advance(seconds)`` moves the simulator's clock (used for ``deleteAfter`` and
  ``targetDeleteDate``; snapshots vanish once the clock passes their date), ``sim.now()``.
- ``sim.bulk_create(n, size, ...)`` adds ``n`` volumes (and optionally snapshots) directly to the
  state WITHOUT backing files, for monitoring benchmarks (VolumesList/VolumesSpace/
  SnapshotsSpace with 10,000 volumes). Such objects support metadata calls only; attaching them
  is an ``invalidParam`` error.
- ``sim.volume_path(name)`` (backing file) and ``sim.device(name, client)`` (loop device).
- ``sim.add_location(name, location_id=None)`` registers a remote StorPool location (another
  cluster, for VolumeBackup; listed by LocationsList) and returns its location id. A backup
  is a real copy of the volume's data (reflink where possible) in
  ``root_dir/remote/<location>/<remoteId>.raw``; ``inventory()["backups"]`` maps every
  location to its backups (name, location, size, tags, remoteId, path, created).

HTTP API
--------
``/ctrl/1.0/<Call>[/<argument>]`` with GET or POST as documented; the calls the reference
marks as multicluster also answer under ``/ctrl/1.0/MultiCluster/<Call>``. Header
``Authorization: Storpool v1:<token>``. Replies are ``{"generation": N, "data": ...}``; errors
are ``{"error": {"name": ..., "descr": ..., "transient": bool}}``. The request body is read as
JSON whatever its Content-Type (``curl -d`` works); a GET may carry ``?json=<urlencoded>`` as
spapi sends it. Object arguments accept a name or ``~<globalId>``. Implemented calls: see
``ROUTES``.

Where the reference is silent (choices of this simulator)
---------------------------------------------------------
- The reference documents no error names or HTTP status codes. Error names are those public
  StorPool clients test for (``objectDoesNotExist``, ``objectExists``, ``invalidParam``,
  ``busy``; cinder, storpool-csi, os-brick, python-storpool-spopenstack); every API error is
  HTTP 500 (as in StorPool's os-brick tests). A wrong or missing token is HTTP 401 with
  ``authError``; a call this simulator does not implement is HTTP 501 ``notImplemented``; a call
  with the wrong HTTP method is HTTP 405 ``invalidParam``; unexpected failures are
  ``internalError``.
- Requests are checked strictly: unknown JSON attributes are ``invalidParam``.
- Names: volumes ``#?[A-Za-z0-9_\\-.:]+``, snapshots ``\\*?[A-Za-z0-9_\\-.:@]+``, templates and
  placement groups ``[A-Za-z0-9_\\-]+``, all shorter than 200 characters and not "list" or
  "status"; tag names ``[A-Za-z0-9_\\-.:]+`` and values ``[A-Za-z0-9_\\-.:]*``. Volumes and
  snapshots share one namespace. A tag given the empty value is removed (the simulator's reading).
- Anonymous snapshots are named ``<volume>@<id>`` (StorPool's CLI reference); unnamed volumes
  are listed as ``~<globalId>``.
- VolumeSnapshot makes the snapshot the volume's parent; a snapshot with children can be
  deleted (its children are rebased onto its parent); a bound snapshot is removed once it has
  no children and is not attached; a snapshot past its targetDeleteDate is removed unless
  attached. ``baseOn`` copies the volume without making a transient snapshot (the reply has no
  ``autoName``); the new volume shares the source volume's parent.
- Deleting, freezing or reverting an attached volume, and deleting an attached snapshot, is
  ``busy``. Reverting needs the snapshot to be an ancestor of the volume or taken of it.
- VolumesReassign and VolumesReassignWait both apply at once (links exist when the reply is
  sent). ``detach: "all"`` detaches every client not attached by the same entry. Detaching (or
  changing the rights of) an attachment whose loop device would go away while a process has it
  open or mounted is ``busy`` ("... is open at client N") unless ``force`` is true
  (``check_open=False`` turns the check off); a device closed within ``OPEN_GRACE`` seconds
  (a passing probe) is waited for. attachTimeout is accepted and ignored.
- VolumesGroupSnapshot is all-or-nothing with respect to the API (it runs under the state lock
  and rolls back on failure); data of volumes written while attached is copied one volume
  after the other. Its reply carries ``ok`` and ``generation`` besides ``snapshots`` because
  addon-storpool reads ``.data.ok`` from it.
- Space numbers: storedSize and spaceUsed are the bytes the backing file allocates (capped
  at the size); templates report capacity from ``capacity`` (raw bytes, default 10 TiB)
  divided by the replication.
- VolumeBackup copies the volume at once (the reply is sent when the copy is complete; a real
  cluster transfers it in the background) and makes no local snapshot; its reply carries
  ``remoteId`` only. A location nobody registered is ``objectDoesNotExist``. Remote locations
  report send/receive buffer sizes of 0 (StorPool's defaults are not documented).
- Each call runs under one lock; data copies (``cp --reflink=auto --sparse=always``) and
  ``losetup`` happen inside it, so calls are serialised (the ``delay`` fault sleeps outside it).
"""

from __future__ import annotations

import atexit
import contextlib
import http.server
import json
import os
import re
import subprocess
import threading
import time
import urllib.parse
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["ROUTES", "ApiFailure", "Fault", "StorPoolSim"]

VERSION = "19.01.0-simulator"
API_PREFIX = "/ctrl/1.0/"
SECTOR_SIZE = 512
OBJECT_SIZE = 32 * 2**20  # StorPool stores volumes in 32 MiB objects
NAME_SIZE = 200  # names must be shorter than this
MAX_CLIENT_ID = 0x0FFF
MAX_ATTACH_POS = 1023
MAX_DISK_ID = 4095
OPEN_GRACE = 2.0  # seconds a detach waits for a device some process holds open
DEFAULT_CAPACITY = 10 * 2**40

HTTP_API_ERROR = 500
HTTP_AUTH_ERROR = 401
HTTP_BAD_METHOD = 405
HTTP_NOT_IMPLEMENTED = 501
AUTH_ERROR_NAME = "authError"

_VOLUME_NAME = re.compile(r"#?[A-Za-z0-9_\-.:]+")
_SNAPSHOT_NAME = re.compile(r"\*?[A-Za-z0-9_\-.:@]+")
_GLOBAL_ID = re.compile(r"[a-z0-9]+\.[a-z0-9]+\.[a-z0-9]+")
_TAG_NAME = re.compile(r"[A-Za-z0-9_\-.:]+")
_TAG_VALUE = re.compile(r"[A-Za-z0-9_\-.:]*")
_GROUP_NAME = re.compile(r"[A-Za-z0-9_\-]+")  # placement groups and templates
_RESERVED = frozenset({"list", "status"})
_LOCATION_NAME = re.compile(r"#?[A-Za-z0-9_\-.:]+")
_LOCATION_ID = re.compile(r"[a-z0-9]+")
LOCATION_NAME_SIZE = 64  # remote location names must be shorter than this

_POLICY = frozenset({"placeAll", "placeTail", "placeHead", "replication", "bw", "iops", "reuseServer", "tags"})
_VOLUME_CREATE = _POLICY | {"name", "size", "parent", "template", "baseOn"}
_VOLUME_UPDATE = _POLICY | {"rename", "size", "sizeAdd", "template", "shrinkOk"}
_SNAPSHOT_CREATE = frozenset({"name", "bind", "targetDeleteDate", "deleteAfter", "tags"})
_SNAPSHOT_UPDATE = _POLICY | {"rename", "template", "bind", "targetDeleteDate", "deleteAfter"}
_VOLUME_REASSIGN = frozenset(
    {"volume", "detach", "ro", "rw", "force", "allowRemoteExported", "onRemoteAttached", "mcMode"}
)
_SNAPSHOT_REASSIGN = frozenset({"snapshot", "detach", "ro", "force"})
_TEMPLATE_CREATE = _POLICY | {"name", "parent", "size"}
_TEMPLATE_UPDATE = _POLICY | {"rename", "parent", "size", "propagate"}

_RUNNING: weakref.WeakSet[StorPoolSim] = weakref.WeakSet()


# ----------------------------------------------------------------------------------------------
# errors and request checks


class ApiFailure(Exception):
    """An API error reply: ``{"error": {"name", "descr", "transient"}}`` with an HTTP status."""

    def __init__(self, name: str, descr: str, *, transient: bool = False, status: int = HTTP_API_ERROR) -> None:
        super().__init__(f"{name}: {descr}")
        self.name = name
        self.descr = descr
        self.transient = transient
        self.status = status

    def body(self) -> dict[str, Any]:
        return {"error": {"name": self.name, "descr": self.descr, "transient": self.transient}}


def _invalid(descr: str) -> ApiFailure:
    return ApiFailure("invalidParam", descr)


def _missing(what: str, ref: str) -> ApiFailure:
    return ApiFailure("objectDoesNotExist", f"{what} {ref} does not exist")


def _busy(descr: str) -> ApiFailure:
    return ApiFailure("busy", descr)


def _fields(body: Any, what: str, allowed: Iterable[str]) -> dict[str, Any]:
    """The request object, refusing anything but a JSON object with known attributes."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise _invalid(f"{what}: expected a JSON object")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise _invalid(f"{what}: unknown attribute(s) {', '.join(unknown)}")
    return body


def _no_body(body: Any, call: str) -> None:
    if body not in (None, {}):
        raise _invalid(f"{call} takes no JSON arguments")


def _int(value: Any, what: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"{what} must be an integer")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise _invalid(f"{what} {value} is out of range [{lo}, {hi}]")
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise _invalid(f"{what} must be true or false")
    return value


def _size(value: Any, what: str = "size") -> int:
    size = _int(value, what)
    if size < 1:
        raise _invalid(f"Invalid {what} {size}. Must be positive")
    if size % SECTOR_SIZE:
        raise _invalid(f"Invalid {what} {size}. Must be a multiple of {SECTOR_SIZE}")
    return size


def _name(value: Any, what: str, regex: re.Pattern[str] = _VOLUME_NAME) -> str:
    if not isinstance(value, str) or not regex.fullmatch(value):
        raise _invalid(f'Invalid {what} "{value}". Must match {regex.pattern}')
    if value in _RESERVED:
        raise _invalid(f"{what} must not be one of {sorted(_RESERVED)}")
    if len(value) >= NAME_SIZE:
        raise _invalid(f"{what} is too long. Max allowed is {NAME_SIZE - 1}")
    return value


def _tags(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid("tags must be a JSON object")
    out: dict[str, str] = {}
    for key, val in value.items():
        if not _TAG_NAME.fullmatch(key) or len(key) >= NAME_SIZE:
            raise _invalid(f'Invalid VolumeTagName "{key}". Must match {_TAG_NAME.pattern}')
        if not isinstance(val, str) or not _TAG_VALUE.fullmatch(val) or len(val) >= NAME_SIZE:
            raise _invalid(f'Invalid VolumeTagValue "{val}". Must match {_TAG_VALUE.pattern}')
        out[key] = val
    return out


def _merge_tags(tags: dict[str, str], update: dict[str, str]) -> None:
    for key, val in update.items():
        if val == "":
            tags.pop(key, None)
        else:
            tags[key] = val


def _limit(value: Any, what: str) -> int | str:
    if value == "-":
        return "-"
    return _int(value, what, lo=0)


def _client_ids(value: Any, what: str) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _invalid(f"{what} must be a list of client ids")
    return [_int(c, f"{what} client id", 1, MAX_CLIENT_ID) for c in value]


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise ApiFailure("internalError", f"simulator: {' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _open_devices() -> set[str]:
    """Device nodes some process has open, or that are mounted (a coarse /proc scan)."""
    found: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
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
# state


@dataclass(eq=False)
class _Obj:
    kind: str  # "volume" or "snapshot"
    name: str
    gid: str
    vid: int  # visibleVolumeId
    size: int
    created: int
    path: Path | None = None  # backing file; None for bulk_create() objects
    parent: str | None = None  # globalId of the parent snapshot
    template: str = ""
    replication: int = 3
    place_all: str = "default"
    place_tail: str = "default"
    place_head: str = "default"
    bw: int | str = "-"
    iops: int | str = "-"
    reuse_server: bool | None = None
    tags: dict[str, str] = field(default_factory=dict)
    stored_hint: int = 0  # storedSize of file-less objects
    # snapshots only
    source: str | None = None  # globalId of the volume the snapshot was taken of
    auto_name: bool = False
    bound: bool = False
    delete_at: int = 0  # targetDeleteDate, 0 = none


@dataclass(eq=False)
class _Template:
    id: int
    name: str
    parent: str = ""
    size: int | None = None
    replication: int | None = None
    place_all: str = "default"
    place_tail: str = "default"
    place_head: str = "default"
    bw: int | str = "-"
    iops: int | str = "-"
    reuse_server: bool | None = None


@dataclass(eq=False)
class _Group:
    id: int
    name: str
    disks: set[int]


@dataclass(eq=False)
class _Client:
    id: int
    device_dir: Path
    byid_dir: Path | None
    hostname: str | None
    started: int


@dataclass(eq=False)
class Fault:
    """One injected fault; ``fired`` counts how often it triggered."""

    method: str
    mode: str
    times: int | None
    delay: float
    name: str
    descr: str
    skip: int
    apply: bool
    fired: int = 0


@dataclass(frozen=True)
class _Route:
    http: str
    nargs: int
    multicluster: bool
    handler: str


# call name -> (HTTP method, number of path arguments, answers under MultiCluster/, handler)
ROUTES: dict[str, _Route] = {
    # volumes
    "VolumesList": _Route("GET", 0, True, "_volumes_list"),
    "Volume": _Route("GET", 1, True, "_volume_list"),
    "VolumeDescribe": _Route("GET", 1, True, "_volume_describe"),
    "VolumeGetInfo": _Route("GET", 1, True, "_volume_info"),
    "VolumeListSnapshots": _Route("GET", 1, False, "_volume_list_snapshots"),
    "VolumesSpace": _Route("GET", 0, True, "_volumes_space"),
    "VolumeCreate": _Route("POST", 0, True, "_volume_create"),
    "VolumeUpdate": _Route("POST", 1, True, "_volume_update"),
    "VolumeFreeze": _Route("POST", 1, True, "_volume_freeze"),
    "VolumeDelete": _Route("POST", 1, True, "_volume_delete"),
    "VolumeRevert": _Route("POST", 1, True, "_volume_revert"),
    "VolumeBackup": _Route("POST", 0, True, "_volume_backup"),
    # snapshots
    "SnapshotsList": _Route("GET", 0, True, "_snapshots_list"),
    "Snapshot": _Route("GET", 1, True, "_snapshot_list"),
    "SnapshotDescribe": _Route("GET", 1, True, "_snapshot_describe"),
    "SnapshotGetInfo": _Route("GET", 1, True, "_snapshot_info"),
    "SnapshotsSpace": _Route("GET", 0, True, "_snapshots_space"),
    "VolumeSnapshot": _Route("POST", 1, True, "_volume_snapshot"),
    "SnapshotUpdate": _Route("POST", 1, False, "_snapshot_update"),
    "SnapshotDelete": _Route("POST", 1, True, "_snapshot_delete"),
    "SnapshotDeleteById": _Route("POST", 1, False, "_snapshot_delete_by_id"),
    "VolumesGroupSnapshot": _Route("POST", 0, True, "_group_snapshot"),
    # attachments
    "AttachmentsList": _Route("GET", 0, True, "_attachments_list"),
    "VolumesReassign": _Route("POST", 0, True, "_volumes_reassign"),
    "VolumesReassignWait": _Route("POST", 0, True, "_volumes_reassign_wait"),
    # templates and placement groups
    "VolumeTemplatesList": _Route("GET", 0, False, "_templates_list"),
    "VolumeTemplatesStatus": _Route("GET", 0, False, "_templates_status"),
    "VolumeTemplateDescribe": _Route("GET", 1, False, "_template_describe"),
    "VolumeTemplateCreate": _Route("POST", 0, False, "_template_create"),
    "VolumeTemplateUpdate": _Route("POST", 1, False, "_template_update"),
    "VolumeTemplateDelete": _Route("POST", 1, False, "_template_delete"),
    "PlacementGroupsList": _Route("GET", 0, False, "_groups_list"),
    "PlacementGroupDescribe": _Route("GET", 1, False, "_group_describe"),
    "PlacementGroupUpdate": _Route("POST", 1, False, "_group_update"),
    "PlacementGroupDelete": _Route("POST", 1, False, "_group_delete"),
    # remote locations
    "LocationsList": _Route("GET", 0, False, "_locations_list"),
    # services and clients
    "ServicesList": _Route("GET", 0, False, "_services_list"),
    "ClientsConfigDump": _Route("GET", 0, False, "_clients_config_dump"),
    "ClientConfigWait": _Route("GET", 1, False, "_client_config_wait"),
}


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, sim: StorPoolSim) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.sim = sim


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"
    server_version = "StorPoolSimulator/" + VERSION

    def do_GET(self) -> None:
        self.server.sim._serve(self, "GET")

    def do_POST(self) -> None:
        self.server.sim._serve(self, "POST")

    def log_message(self, format: str, *args: Any) -> None:
        pass


# ----------------------------------------------------------------------------------------------
# the simulator


class StorPoolSim:
    """Simulator of StorPool's REST API for tests (not StorPool): see the module docstring."""

    def __init__(
        self,
        root_dir: str | os.PathLike[str],
        token: str = "storpool-sim-token",
        *,
        device_dir: str | os.PathLike[str] | None = None,
        byid_dir: str | os.PathLike[str] | None = None,
        auto_clients: bool = True,
        check_open: bool = True,
        capacity: int = DEFAULT_CAPACITY,
        location: str = "sim",
        cluster: str = "a",
    ) -> None:
        self.root = Path(root_dir)
        self.token = str(token)
        self.data_dir = self.root / "data"
        self.device_dir = Path(device_dir) if device_dir is not None else self.root / "dev" / "storpool"
        self.byid_dir = Path(byid_dir) if byid_dir is not None else self.device_dir.with_name("storpool-byid")
        self.auto_clients = auto_clients
        self.check_open = check_open
        self.capacity = capacity
        self._gid_prefix = f"{location}.{cluster}."
        if not _GLOBAL_ID.fullmatch(self._gid_prefix + "0"):
            raise ValueError("location and cluster must be [a-z0-9]+")

        self._lock = threading.RLock()
        self._calls_lock = threading.Lock()
        self._objs: dict[str, _Obj] = {}  # name -> volume or snapshot (one namespace)
        self._gids: dict[str, _Obj] = {}  # globalId -> object
        self._snaps: dict[str, _Obj] = {}  # globalId -> snapshot
        self._templates: dict[str, _Template] = {}
        self._groups: dict[str, _Group] = {"default": _Group(1, "default", {1, 2, 3})}
        self._clients: dict[int, _Client] = {}
        self._locations: dict[str, str] = {}  # remote location name -> location id
        self._backups: dict[str, list[dict[str, Any]]] = {}  # location name -> its backups
        self._attach: dict[str, dict[int, tuple[str, int]]] = {}  # gid -> client -> (rights, pos)
        self._loops: dict[tuple[str, str], str] = {}  # (gid, rights) -> /dev/loopN
        self._links: dict[Path, dict[tuple[int, str], str]] = {}  # link -> owner (client, gid) -> target
        self._owned: dict[tuple[int, str], list[Path]] = {}  # owner -> its links
        self._faults: list[Fault] = []
        self.calls: list[tuple[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self._offset = 0.0
        self._generation = 1
        self._counter = 0
        self._started_at = int(time.time())
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> StorPoolSim:
        if self._server is not None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stopped = False
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="storpool-sim", daemon=True
        )
        self._thread.start()
        _RUNNING.add(self)
        return self

    def stop(self) -> None:
        """Stop serving; detach the loop devices and remove the links this simulator made."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            self._stopped = True  # requests still in flight must not attach anything now
            for path in list(self._links):
                with contextlib.suppress(OSError):
                    if path.is_symlink():
                        path.unlink()
            self._links.clear()
            self._owned.clear()
            for dev in list(self._loops.values()):
                self._detach_loop(dev)
            self._loops.clear()
            self._attach.clear()
        _RUNNING.discard(self)

    def __enter__(self) -> StorPoolSim:
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
        return f"http://{self.host}:{self.port}"

    # -- test controls --------------------------------------------------------------------------

    def add_client(
        self,
        client_id: int,
        device_dir: str | os.PathLike[str] | None = None,
        *,
        byid_dir: str | os.PathLike[str] | None = None,
        hostname: str | None = None,
    ) -> Path:
        """Register StorPool client ``client_id``; returns its device dir."""
        cid = _int(client_id, "client id", 1, MAX_CLIENT_ID)
        with self._lock:
            if cid in self._clients and self._attached_to(cid):
                raise ValueError(f"client {cid} has attachments; detach them before re-adding it")
            ddir = self.device_dir if device_dir is None else Path(device_dir)
            bdir: Path | None = Path(byid_dir) if byid_dir is not None else None
            if device_dir is None and bdir is None:
                bdir = self.byid_dir
            self._clients[cid] = _Client(cid, ddir, bdir, hostname, int(self.now()))
            self._generation += 1
            return ddir

    def add_location(self, name: str, location_id: str | None = None) -> str:
        """Register the remote location ``name`` (a VolumeBackup target); returns its id."""
        if not _LOCATION_NAME.fullmatch(name) or name == "list" or len(name) >= LOCATION_NAME_SIZE:
            raise ValueError(f"{name!r} is not a RemoteLocationName")
        with self._lock:
            if name in self._locations:
                raise ValueError(f"location {name} is registered already")
            lid = location_id or f"r{len(self._locations) + 1}"
            own = self._gid_prefix.split(".", 1)[0]
            if not _LOCATION_ID.fullmatch(lid) or lid == own or lid in self._locations.values():
                raise ValueError(f"{lid!r} is not a free location id ([a-z0-9]+, not this cluster's)")
            self._locations[name] = lid
            self._backups[name] = []
            self._generation += 1
            return lid

    def client_for_host(self, hostname: str) -> int | None:
        with self._lock:
            for client in self._clients.values():
                if client.hostname == hostname:
                    return client.id
        return None

    def fail(
        self,
        method: str,
        mode: str = "error",
        times: int | None = 1,
        delay: float = 0.0,
        *,
        name: str | None = None,
        descr: str | None = None,
        skip: int = 0,
        apply: bool = False,
    ) -> Fault:
        """Make the next ``times`` calls of ``method`` fail (see the module docstring)."""
        if mode not in ("error", "transient", "delay", "drop"):
            raise ValueError(f"unknown fault mode {mode!r}")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        default = "busy" if mode == "transient" else "invalidParam"
        fault = Fault(
            method=method,
            mode=mode,
            times=times,
            delay=delay,
            name=name or default,
            descr=descr or f"simulated {mode} failure of {method}",
            skip=skip,
            apply=apply,
        )
        with self._calls_lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._calls_lock:
            self._faults.clear()

    def now(self) -> float:
        """The simulator's clock (Unix time plus whatever advance() added)."""
        return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the clock forward; snapshots whose targetDeleteDate passed vanish."""
        with self._lock:
            self._offset += seconds
            self._gc()

    def volume_path(self, name: str) -> Path | None:
        with self._lock:
            obj = self._objs.get(name) or self._gids.get(name.lstrip("~"))
            if obj is None:
                raise KeyError(name)
            return obj.path

    def device(self, name: str, client: int | None = None) -> str | None:
        """The loop device of ``name`` (as attached to ``client``, or any client)."""
        with self._lock:
            obj = self._objs.get(name)
            if obj is None:
                raise KeyError(name)
            for cid, (rights, _pos) in self._attach.get(obj.gid, {}).items():
                if client is None or cid == client:
                    return self._loops.get((obj.gid, rights))
            return None

    def bulk_create(
        self,
        n: int,
        size: int,
        *,
        prefix: str = "bulk",
        template: str | None = None,
        tags: dict[str, str] | None = None,
        snapshots: int = 0,
        stored: int = 0,
    ) -> list[str]:
        """Add ``n`` volumes ``<prefix>-<i>`` (each with ``snapshots`` snapshots) WITHOUT files.

        For monitoring benchmarks only: the objects have no data, cannot be attached, and
        report ``stored`` bytes as their storedSize.
        """
        size = _size(size)
        tags = _tags(tags)
        names: list[str] = []
        with self._lock:
            tpl = self._template(template) if template else None
            created = int(self.now())
            for i in range(n):
                name = _name(f"{prefix}-{i}", "volume name")
                self._check_free(name)
                vid, gid = self._next_ids()
                vol = _Obj("volume", name, gid, vid, size, created, tags=dict(tags), stored_hint=stored)
                if tpl is not None:
                    self._inherit_template(vol, tpl)
                for j in range(snapshots):
                    snap_vid, snap_gid = self._next_ids()
                    snap = _Obj(
                        "snapshot",
                        f"{name}-snap{j}",
                        snap_gid,
                        snap_vid,
                        size,
                        created,
                        parent=vol.parent,
                        template=vol.template,
                        replication=vol.replication,
                        stored_hint=stored,
                        source=gid,
                    )
                    self._check_free(snap.name)
                    self._add(snap)
                    vol.parent = snap_gid
                self._add(vol)
                names.append(name)
            self._generation += 1
        return names

    def inventory(self) -> dict[str, Any]:
        """Plain data about every object, attachment, template, client and loop device."""
        with self._lock:
            self._gc()
            volumes: dict[str, Any] = {}
            snapshots: dict[str, Any] = {}
            for obj in self._objs.values():
                parent = self._gids.get(obj.parent) if obj.parent else None
                entry: dict[str, Any] = {
                    "globalId": obj.gid,
                    "size": obj.size,
                    "parent": parent.name if parent else None,
                    "template": obj.template,
                    "replication": obj.replication,
                    "tags": dict(obj.tags),
                    "path": str(obj.path) if obj.path else None,
                }
                if obj.kind == "snapshot":
                    entry.update(
                        onVolume=self._on_volume(obj),
                        targetDeleteDate=obj.delete_at,
                        bound=obj.bound,
                        autoName=obj.auto_name,
                    )
                    snapshots[obj.name] = entry
                else:
                    volumes[obj.name] = entry
            attachments = []
            for gid, clients in self._attach.items():
                obj = self._gids[gid]
                for cid, (rights, pos) in sorted(clients.items()):
                    attachments.append(
                        {
                            "name": obj.name,
                            "snapshot": obj.kind == "snapshot",
                            "client": cid,
                            "rights": rights,
                            "pos": pos,
                            "device": self._loops.get((gid, rights)),
                            "links": [str(p) for p in self._owned.get((cid, gid), [])],
                        }
                    )
            return {
                "volumes": volumes,
                "snapshots": snapshots,
                "attachments": attachments,
                "templates": {t.name: self._template_desc(t) for t in self._templates.values()},
                "clients": {
                    c.id: {
                        "device_dir": str(c.device_dir),
                        "byid_dir": str(c.byid_dir) if c.byid_dir else None,
                        "hostname": c.hostname,
                    }
                    for c in self._clients.values()
                },
                "loops": sorted(self._loops.values()),
                "locations": dict(self._locations),
                "backups": {loc: [dict(b, tags=dict(b["tags"])) for b in done] for loc, done in self._backups.items()},
                "generation": self._generation,
                "time": self.now(),
            }

    # -- HTTP -----------------------------------------------------------------------------------

    def _serve(self, req: _Handler, http_method: str) -> None:
        try:
            length = int(req.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        raw = req.rfile.read(length) if length > 0 else b""
        # not urlsplit(): volume names may start with "#", which is no URL fragment here
        path, _sep, query = req.path.partition("?")
        call, args, route = self._parse_path(path, http_method)
        failure = route if isinstance(route, ApiFailure) else None
        body: Any = None
        try:
            text = raw.decode() if raw.strip() else urllib.parse.parse_qs(query).get("json", [""])[0]
            body = json.loads(text) if text.strip() else None
        except (UnicodeDecodeError, ValueError) as err:
            failure = failure or _invalid(f"the request body is not valid JSON: {err}")
        with self._calls_lock:
            self.calls.append((call, body))
            self.requests.append(
                {"method": call, "args": args, "http": http_method, "path": req.path, "body": body, "time": time.time()}
            )
        fault = self._take_fault(call)
        if fault is not None and fault.mode == "delay":
            time.sleep(fault.delay)
        if fault is not None and fault.mode == "drop" and not fault.apply:
            req.close_connection = True
            return
        if req.headers.get("Authorization") != f"Storpool v1:{self.token}":
            self._reply(req, ApiFailure(AUTH_ERROR_NAME, "Authorization failed", status=HTTP_AUTH_ERROR))
            return
        if failure is not None or not isinstance(route, _Route):
            self._reply(req, failure or _invalid("bad request"))
            return
        if fault is not None and fault.mode in ("error", "transient") and not fault.apply:
            self._reply(req, ApiFailure(fault.name, fault.descr, transient=fault.mode == "transient"))
            return
        result: dict[str, Any] | ApiFailure
        try:
            with self._lock:
                if self._stopped:
                    raise ApiFailure("internalError", "simulator: stopped", transient=True)
                self._gc()
                data = getattr(self, route.handler)(args, body)
                result = {"generation": self._generation, "data": data}
        except ApiFailure as err:
            result = err
        except Exception as err:  # a simulator bug: say so instead of hanging the client
            result = ApiFailure("internalError", f"simulator: {type(err).__name__}: {err}")
        if fault is not None and fault.apply:
            if fault.mode == "drop":
                req.close_connection = True
                return
            if fault.mode in ("error", "transient"):
                result = ApiFailure(fault.name, fault.descr, transient=fault.mode == "transient")
        self._reply(req, result)

    def _parse_path(self, path: str, http_method: str) -> tuple[str, list[str], _Route | ApiFailure]:
        """(call name, path arguments, route or the error to answer with)."""

        def unknown(call: str, descr: str) -> ApiFailure:
            return ApiFailure("notImplemented", f"simulator: {descr}", status=HTTP_NOT_IMPLEMENTED)

        if not path.startswith(API_PREFIX):
            return path, [], unknown(path, f"no such path {path}")
        parts = [urllib.parse.unquote(p) for p in path[len(API_PREFIX) :].split("/")]
        if parts[0] == "RemoteCommand":
            return path, [], unknown(path, "RemoteCommand is not implemented")
        multicluster = parts[0] == "MultiCluster"
        if multicluster:
            parts = parts[1:]
        call, args = (parts[0] if parts else ""), parts[1:]
        route = ROUTES.get(call)
        if route is None:
            return call, args, unknown(call, f"{call} is not implemented")
        if multicluster and not route.multicluster:
            return call, args, unknown(call, f"{call} has no MultiCluster form")
        if http_method != route.http:
            return (
                call,
                args,
                ApiFailure("invalidParam", f"{call} must be called with {route.http}", status=HTTP_BAD_METHOD),
            )
        if len(args) != route.nargs or any(not a for a in args):
            return call, args, _invalid(f"{call} takes {route.nargs} path argument(s)")
        return call, args, route

    def _reply(self, req: _Handler, result: dict[str, Any] | ApiFailure) -> None:
        if isinstance(result, ApiFailure):
            status, payload = result.status, json.dumps(result.body()).encode()
        else:
            status, payload = 200, json.dumps(result, separators=(",", ":")).encode()
        try:
            req.send_response(status)
            req.send_header("Content-Type", "application/json")
            req.send_header("Cache-control", "private")
            req.send_header("Content-Length", str(len(payload)))
            req.send_header("Connection", "close")
            req.end_headers()
            req.wfile.write(payload)
        except OSError:
            pass  # the client went away

    def _take_fault(self, call: str) -> Fault | None:
        with self._calls_lock:
            for fault in self._faults:
                if fault.method != call and not (fault.method == "*" and not call.startswith("_")):
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

    def _fault_point(self, point: str) -> None:
        fault = self._take_fault(point)
        if fault is not None:
            raise ApiFailure(fault.name, fault.descr, transient=fault.mode == "transient")

    # -- object bookkeeping ---------------------------------------------------------------------

    def _next_ids(self) -> tuple[int, str]:
        self._counter += 1
        return self._counter, self._gid_prefix + _base36(self._counter)

    def _ok(self, **extra: Any) -> dict[str, Any]:
        self._generation += 1
        return {"ok": True, "generation": self._generation, **extra}

    def _add(self, obj: _Obj) -> None:
        self._objs[obj.name] = obj
        self._gids[obj.gid] = obj
        if obj.kind == "snapshot":
            self._snaps[obj.gid] = obj

    def _forget(self, obj: _Obj) -> None:
        self._objs.pop(obj.name, None)
        self._gids.pop(obj.gid, None)
        self._snaps.pop(obj.gid, None)
        if obj.path is not None:
            with contextlib.suppress(FileNotFoundError):
                obj.path.unlink()

    def _check_free(self, name: str) -> None:
        if name in self._objs:
            kind = self._objs[name].kind
            raise ApiFailure("objectExists", f"{kind.capitalize()} {name} already exists")

    def _find(self, ref: Any, kind: str) -> _Obj:
        what = kind.capitalize()
        if isinstance(ref, str) and ref.startswith("~"):
            if not _GLOBAL_ID.fullmatch(ref[1:]):
                raise _invalid(f'Invalid {kind} global id "{ref}"')
            obj = self._gids.get(ref[1:])
        else:
            _name(ref, f"{kind} name", _VOLUME_NAME if kind == "volume" else _SNAPSHOT_NAME)
            obj = self._objs.get(ref)
        if obj is None or obj.kind != kind:
            raise _missing(what, str(ref))
        return obj

    def _template(self, name: Any) -> _Template:
        _name(name, "template name", _GROUP_NAME)
        tpl = self._templates.get(name)
        if tpl is None:
            raise _missing("Template", name)
        return tpl

    def _group(self, name: Any) -> _Group:
        _name(name, "placement group name", _GROUP_NAME)
        group = self._groups.get(name)
        if group is None:
            raise _missing("Placement group", name)
        return group

    def _children(self, gid: str) -> list[_Obj]:
        return [o for o in self._objs.values() if o.parent == gid]

    def _on_volume(self, snap: _Obj) -> str:
        vol = self._gids.get(snap.source) if snap.source else None
        return vol.name if vol is not None and vol.kind == "volume" else "-"

    def _stored(self, obj: _Obj) -> int:
        if obj.path is None:
            return min(obj.stored_hint, obj.size)
        try:
            return min(os.stat(obj.path).st_blocks * 512, obj.size)
        except OSError:
            return 0

    def _attached_to(self, client: int) -> bool:
        return any(client in clients for clients in self._attach.values())

    def _refuse_attached(self, obj: _Obj, action: str) -> None:
        clients = self._attach.get(obj.gid)
        if clients:
            listing = ", ".join(str(c) for c in sorted(clients))
            raise _busy(f"{obj.kind.capitalize()} {obj.name} is attached to client(s) {listing}; cannot {action} it")

    def _gc(self) -> None:
        """Remove snapshots past their targetDeleteDate and childless bound snapshots."""
        if not self._snaps:
            return
        now = self.now()
        while True:
            parents: set[str] | None = None
            victims = []
            for snap in self._snaps.values():
                if self._attach.get(snap.gid):
                    continue
                if snap.delete_at and snap.delete_at <= now:
                    victims.append(snap)
                elif snap.bound:
                    if parents is None:
                        parents = {o.parent for o in self._objs.values() if o.parent}
                    if snap.gid not in parents:
                        victims.append(snap)
            if not victims:
                return
            for snap in victims:
                self._drop_snapshot(snap)
            self._generation += 1

    def _drop_snapshot(self, snap: _Obj) -> None:
        for child in self._children(snap.gid):
            child.parent = snap.parent
        self._forget(snap)

    # -- files and devices ----------------------------------------------------------------------

    def _data_path(self, gid: str) -> Path:
        return self.data_dir / f"{gid}.raw"

    def _blank(self, gid: str, size: int) -> Path:
        path = self._data_path(gid)
        with open(path, "wb") as fh:
            fh.truncate(size)
        return path

    def _clone_file(self, src: _Obj, gid: str, size: int, dst: Path | None = None) -> Path | None:
        """A real copy of ``src``'s data (reflink where the filesystem can), ``size`` bytes long,
        at ``dst`` (default: the data file of ``gid``)."""
        if src.path is None:
            return None
        dst = dst or self._data_path(gid)
        try:
            self._fault_point("_copy")
            _run(["cp", "--reflink=auto", "--sparse=always", str(src.path), str(dst)])
            if size != src.size:
                os.truncate(dst, size)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                dst.unlink()
            raise
        return dst

    def _losetup(self, path: Path, read_only: bool) -> str:
        cmd = ["losetup", "--find", "--show"] + (["--read-only"] if read_only else []) + [str(path)]
        return _run(cmd)

    def _detach_loop(self, dev: str) -> None:
        """``losetup -d`` a device this simulator attached, if it still backs one of our files."""
        backing = Path("/sys/block") / Path(dev).name / "loop" / "backing_file"
        try:
            current = backing.read_text().strip().removesuffix(" (deleted)")
        except OSError:
            return
        if Path(current).parent.resolve() != self.data_dir.resolve():
            return  # no longer ours: someone detached it and reused the device
        subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)

    def _refresh_size(self, obj: _Obj) -> None:
        for rights in ("rw", "ro"):
            dev = self._loops.get((obj.gid, rights))
            if dev is not None:
                _run(["losetup", "--set-capacity", dev])

    def _client(self, cid: int) -> _Client:
        client = self._clients.get(cid)
        if client is None:
            if not self.auto_clients:
                raise _invalid("No such client registered")
            client = _Client(cid, self.device_dir, self.byid_dir, None, int(self.now()))
            self._clients[cid] = client
        return client

    def _client_links(self, cid: int, obj: _Obj) -> list[Path]:
        client = self._clients[cid]
        paths = []
        if not obj.name.startswith("~"):
            paths.append(client.device_dir / obj.name)
        if client.byid_dir is not None:
            paths.append(client.byid_dir / obj.gid)
        return paths

    def _point(self, path: Path, target: str) -> None:
        if path.is_symlink() and os.readlink(path) == target:
            return
        tmp = path.with_name(f".{path.name}.storpool-sim")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, path)

    def _set_link(self, path: Path, owner: tuple[int, str], target: str) -> None:
        owners = self._links.get(path)
        if not owners:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() or path.is_symlink():
                raise ApiFailure("internalError", f"simulator: {path} exists and was not made by the simulator")
            owners = self._links[path] = {}
        owners[owner] = target
        self._point(path, target)

    def _drop_link(self, path: Path, owner: tuple[int, str]) -> None:
        owners = self._links.get(path)
        if not owners or owner not in owners:
            return
        del owners[owner]
        if owners:
            self._point(path, next(iter(owners.values())))
            return
        del self._links[path]
        with contextlib.suppress(FileNotFoundError):
            if path.is_symlink():
                path.unlink()

    def _link_client(self, cid: int, obj: _Obj, dev: str) -> None:
        owner = (cid, obj.gid)
        paths = self._client_links(cid, obj)
        for old in self._owned.get(owner, []):
            if old not in paths:
                self._drop_link(old, owner)
        for path in paths:
            self._set_link(path, owner, dev)
        self._owned[owner] = paths

    def _unlink_client(self, cid: int, obj: _Obj) -> None:
        owner = (cid, obj.gid)
        for path in self._owned.pop(owner, []):
            self._drop_link(path, owner)

    def _relink(self, obj: _Obj) -> None:
        for cid, (rights, _pos) in self._attach.get(obj.gid, {}).items():
            self._link_client(cid, obj, self._loops[(obj.gid, rights)])

    def _free_pos(self, cid: int) -> int:
        used = {pos for clients in self._attach.values() for c, (_r, pos) in clients.items() if c == cid}
        for pos in range(MAX_ATTACH_POS + 1):
            if pos not in used:
                return pos
        raise _invalid(f"No more volumes can be attached to client {cid}")

    def _apply_attachments(self, obj: _Obj, state: dict[int, str]) -> None:
        gid = obj.gid
        old = dict(self._attach.get(gid, {}))
        assert obj.path is not None or not state
        for rights in sorted(set(state.values())):
            if (gid, rights) not in self._loops:
                assert obj.path is not None
                self._loops[(gid, rights)] = self._losetup(obj.path, rights == "ro")
        current = self._attach.setdefault(gid, {})
        for cid in old:
            if cid not in state:
                self._unlink_client(cid, obj)
                del current[cid]
        for cid, rights in state.items():
            if cid in old and old[cid][0] == rights:
                continue
            pos = old[cid][1] if cid in old else self._free_pos(cid)
            current[cid] = (rights, pos)
            self._link_client(cid, obj, self._loops[(gid, rights)])
        if not current:
            del self._attach[gid]
        for rights in ("ro", "rw"):
            if rights not in state.values() and (gid, rights) in self._loops:
                self._detach_loop(self._loops.pop((gid, rights)))

    # -- formatting -----------------------------------------------------------------------------

    def _summary(self, obj: _Obj) -> dict[str, Any]:
        parent = self._gids.get(obj.parent) if obj.parent else None
        tpl = self._templates.get(obj.template) if obj.template else None
        out: dict[str, Any] = {
            "name": obj.name,
            "globalId": obj.gid,
            "id": obj.vid,
            "visibleVolumeId": obj.vid,
            "size": obj.size,
            "replication": obj.replication,
            "placeAll": obj.place_all,
            "placeTail": obj.place_tail,
            "placeHead": obj.place_head,
            "parentName": parent.name if parent else "",
            "parentVolumeId": parent.vid if parent else 0,
            "templateName": obj.template,
            "templateId": tpl.id if tpl else 0,
            "objectsCount": -(-obj.size // OBJECT_SIZE),
            "creationTimestamp": obj.created,
            "flags": 0,
            "bw": obj.bw,
            "iops": obj.iops,
            "tags": dict(obj.tags),
        }
        if obj.reuse_server is not None:
            out["reuseServer"] = obj.reuse_server
        if obj.kind == "snapshot":
            out.update(
                onVolume=self._on_volume(obj),
                autoName=obj.auto_name,
                bound=obj.bound,
                deleted=False,
                transient=False,
                targetDeleteDate=obj.delete_at,
                recoveringFromRemote=False,
                backup=False,
            )
        return out

    def _disk_set(self, obj: _Obj) -> list[int]:
        group = self._groups.get(obj.place_all)
        return sorted(group.disks)[: obj.replication] if group else []

    def _describe(self, obj: _Obj) -> dict[str, Any]:
        out = self._summary(obj)
        disks = self._disk_set(obj)
        out["targetDiskSets"] = [disks] if disks else []
        out["objects"] = [disks] * out["objectsCount"] if disks else []
        return out

    def _info(self, obj: _Obj) -> dict[str, Any]:
        out = self._summary(obj)
        disks, count = self._disk_set(obj), out["objectsCount"]
        chains = [{"disks": disks, "count": count}] if disks else []
        out.update(
            disksCount=len(disks),
            objectsPerDisk={str(d): count for d in disks},
            objectsPerChain=chains,
            objectsPerDiskSet=chains,
        )
        return out

    def _space(self, obj: _Obj) -> dict[str, Any]:
        out = self._summary(obj)
        stored = self._stored(obj)
        out["storedSize"] = stored
        out["spaceUsed"] = stored
        return out

    def _template_desc(self, tpl: _Template) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": tpl.id,
            "name": tpl.name,
            "parentName": tpl.parent,
            "placeAll": tpl.place_all,
            "placeTail": tpl.place_tail,
            "placeHead": tpl.place_head,
            "size": tpl.size if tpl.size else "-",
            "replication": tpl.replication if tpl.replication else "-",
            "bw": tpl.bw,
            "iops": tpl.iops,
        }
        if tpl.reuse_server is not None:
            out["reuseServer"] = tpl.reuse_server
        return out

    # -- policy (placement, replication, limits, tags) ------------------------------------------

    def _policy(self, fields: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("placeAll", "placeTail", "placeHead"):
            if fields.get(key) is not None:
                out[key] = self._group(fields[key]).name
        if fields.get("replication") is not None:
            out["replication"] = _int(fields["replication"], "replication", 1, 3)
        for key in ("bw", "iops"):
            if fields.get(key) is not None:
                out[key] = _limit(fields[key], key)
        if fields.get("reuseServer") is not None:
            out["reuseServer"] = _bool(fields["reuseServer"], "reuseServer")
        if fields.get("tags") is not None:
            out["tags"] = _tags(fields["tags"])
        return out

    def _apply_policy(self, obj: _Obj | _Template, policy: dict[str, Any]) -> None:
        if "placeAll" in policy:
            obj.place_all = policy["placeAll"]
        if "placeTail" in policy:
            obj.place_tail = policy["placeTail"]
        if "placeHead" in policy:
            obj.place_head = policy["placeHead"]
        if "replication" in policy:
            obj.replication = policy["replication"]
        if "bw" in policy:
            obj.bw = policy["bw"]
        if "iops" in policy:
            obj.iops = policy["iops"]
        if "reuseServer" in policy:
            obj.reuse_server = policy["reuseServer"]
        if "tags" in policy and isinstance(obj, _Obj):
            _merge_tags(obj.tags, policy["tags"])

    def _inherit_template(self, obj: _Obj, tpl: _Template) -> None:
        obj.template = tpl.name
        if tpl.replication:
            obj.replication = tpl.replication
        obj.place_all, obj.place_tail, obj.place_head = tpl.place_all, tpl.place_tail, tpl.place_head
        obj.bw, obj.iops, obj.reuse_server = tpl.bw, tpl.iops, tpl.reuse_server

    def _inherit_object(self, obj: _Obj, src: _Obj) -> None:
        obj.template, obj.replication = src.template, src.replication
        obj.place_all, obj.place_tail, obj.place_head = src.place_all, src.place_tail, src.place_head
        obj.bw, obj.iops, obj.reuse_server = src.bw, src.iops, src.reuse_server

    def _delete_date(self, fields: dict[str, Any], current: int) -> int:
        now = int(self.now())
        result = current
        if fields.get("targetDeleteDate") is not None:
            date = _int(fields["targetDeleteDate"], "targetDeleteDate", lo=0)
            if date and date < now:
                raise _invalid("targetDeleteDate can not be set in the past")
            result = date
        if fields.get("deleteAfter") is not None:
            after = _int(fields["deleteAfter"], "deleteAfter", lo=0)
            result = now + after if after else 0
        return result

    # -- volumes --------------------------------------------------------------------------------

    def _volumes_list(self, args: list[str], body: Any) -> Any:
        _no_body(body, "VolumesList")
        return [self._summary(o) for o in self._objs.values() if o.kind == "volume"]

    def _volume_list(self, args: list[str], body: Any) -> Any:
        _no_body(body, "Volume")
        return [self._summary(self._find(args[0], "volume"))]

    def _volume_describe(self, args: list[str], body: Any) -> Any:
        _no_body(body, "VolumeDescribe")
        return self._describe(self._find(args[0], "volume"))

    def _volume_info(self, args: list[str], body: Any) -> Any:
        _no_body(body, "VolumeGetInfo")
        return self._info(self._find(args[0], "volume"))

    def _volume_list_snapshots(self, args: list[str], body: Any) -> Any:
        _no_body(body, "VolumeListSnapshots")
        vol = self._find(args[0], "volume")
        out = []
        parent = self._gids.get(vol.parent) if vol.parent else None
        while parent is not None:
            out.append(self._summary(parent))
            parent = self._gids.get(parent.parent) if parent.parent else None
        return out

    def _volumes_space(self, args: list[str], body: Any) -> Any:
        _no_body(body, "VolumesSpace")
        return [self._space(o) for o in self._objs.values() if o.kind == "volume"]

    def _volume_create(self, args: list[str], body: Any) -> Any:
        fields = _fields(body, "VolumeCreate", _VOLUME_CREATE)
        name = _name(fields["name"], "volume name") if fields.get("name") is not None else None
        if name is not None:
            self._check_free(name)
        tpl = self._template(fields["template"]) if fields.get("template") is not None else None
        if fields.get("parent") is not None and fields.get("baseOn") is not None:
            raise _invalid("VolumeCreate: parent and baseOn are mutually exclusive")
        src: _Obj | None = None
        if fields.get("parent") is not None:
            src = self._find(fields["parent"], "snapshot")
        elif fields.get("baseOn") is not None:
            src = self._find(fields["baseOn"], "volume")
        elif tpl is not None and tpl.parent:
            src = self._find(tpl.parent, "snapshot")
        size: int | None
        if fields.get("size") is not None:
            size = _size(fields["size"])
        else:
            size = (tpl.size if tpl is not None else None) or (src.size if src is not None else None)
        if size is None:
            raise _invalid("VolumeCreate: no size given, and no template, parent or baseOn to take it from")
        if src is not None and size < src.size:
            raise _invalid(f"VolumeCreate: size {size} is smaller than the size of {src.name} ({src.size})")
        policy = self._policy(fields)
        vid, gid = self._next_ids()
        vol = _Obj("volume", name or f"~{gid}", gid, vid, size, int(self.now()))
        if src is not None:
            self._inherit_object(vol, src)
        if tpl is not None:
            self._inherit_template(vol, tpl)
        self._apply_policy(vol, policy)
        if src is not None:
            vol.parent = src.gid if src.kind == "snapshot" else src.parent
            vol.stored_hint = src.stored_hint
            vol.path = self._clone_file(src, gid, size)
        else:
            vol.path = self._blank(gid, size)
        self._add(vol)
        reply = self._ok(globalId=gid)
        if name is None:
            reply["name"] = vol.name
        return reply

    def _volume_update(self, args: list[str], body: Any) -> Any:
        vol = self._find(args[0], "volume")
        fields = _fields(body, "VolumeUpdate", _VOLUME_UPDATE)
        rename = None
        if fields.get("rename") is not None:
            rename = _name(fields["rename"], "volume name")
            if rename != vol.name:
                self._check_free(rename)
        if fields.get("size") is not None and fields.get("sizeAdd") is not None:
            raise _invalid("VolumeUpdate: size and sizeAdd are mutually exclusive")
        size = vol.size
        if fields.get("size") is not None:
            size = _size(fields["size"])
        if fields.get("sizeAdd") is not None:
            size += _size(fields["sizeAdd"], "sizeAdd")
        shrink_ok = _bool(fields.get("shrinkOk", False), "shrinkOk")
        if size < vol.size and not shrink_ok:
            raise _invalid(f"Volume {vol.name}: new size {size} is smaller than {vol.size}; set shrinkOk to shrink it")
        tpl = self._template(fields["template"]) if fields.get("template") is not None else None
        policy = self._policy(fields)
        if tpl is not None:
            self._inherit_template(vol, tpl)
        self._apply_policy(vol, policy)
        if size != vol.size:
            if vol.path is not None:
                os.truncate(vol.path, size)
            vol.size = size
            self._refresh_size(vol)
        if rename is not None and rename != vol.name:
            del self._objs[vol.name]
            vol.name = rename
            self._objs[rename] = vol
            self._relink(vol)
        return self._ok()

    def _volume_freeze(self, args: list[str], body: Any) -> Any:
        vol = self._find(args[0], "volume")
        fields = _fields(body, "VolumeFreeze", {"targetDeleteDate", "deleteAfter"})
        delete_at = self._delete_date(fields, 0)
        self._refuse_attached(vol, "freeze")
        vol.kind = "snapshot"
        vol.delete_at = delete_at
        self._snaps[vol.gid] = vol
        return self._ok()

    def _volume_delete(self, args: list[str], body: Any) -> Any:
        _no_body(body, "VolumeDelete")
        vol = self._find(args[0], "volume")
        self._refuse_attached(vol, "delete")
        self._forget(vol)
        return self._ok()

    def _volume_revert(self, args: list[str], body: Any) -> Any:
        vol = self._find(args[0], "volume")
        fields = _fields(body, "VolumeRevert", {"toSnapshot"})
        if fields.get("toSnapshot") is None:
            raise _invalid("VolumeRevert: toSnapshot is required")
        snap = self._find(fields["toSnapshot"], "snapshot")
        ancestors = set()
        cur = vol.parent
        while cur:
            ancestors.add(cur)
            parent = self._gids.get(cur)
            cur = parent.parent if parent else None
        if snap.gid not in ancestors and snap.source != vol.gid:
            raise _invalid(f"Snapshot {snap.name} is not a snapshot of volume {vol.name}")
        self._refuse_attached(vol, "revert")
        if vol.path is not None:
            if snap.path is None:
                raise _invalid(f"Snapshot {snap.name} has no data (bulk_create)")
            tmp_gid = f"{vol.gid}.revert"
            new = self._clone_file(snap, tmp_gid, snap.size)
            assert new is not None
            os.replace(new, vol.path)
        vol.size = snap.size
        vol.parent = snap.gid
        vol.stored_hint = snap.stored_hint
        return self._ok()

    def _volume_backup(self, args: list[str], body: Any) -> Any:
        fields = _fields(body, "VolumeBackup", {"volume", "location", "tags"})
        if fields.get("volume") is None or fields.get("location") is None:
            raise _invalid("VolumeBackup: volume and location are required")
        vol = self._find(fields["volume"], "volume")
        location = fields["location"]
        if not isinstance(location, str) or not _LOCATION_NAME.fullmatch(location) or location == "list":
            raise _invalid(f'Invalid RemoteLocationName "{location}". Must match {_LOCATION_NAME.pattern}')
        if len(location) >= LOCATION_NAME_SIZE:
            raise _invalid(f"RemoteLocationName is too long. Max allowed is {LOCATION_NAME_SIZE - 1}")
        tags = _tags(fields.get("tags"))
        lid = self._locations.get(location)
        if lid is None:
            raise _missing("Location", location)
        if vol.path is None:
            raise _invalid(f"Volume {vol.name} has no data (bulk_create) and cannot be backed up")
        self._counter += 1
        remote_id = f"{lid}.a.{_base36(self._counter)}"
        where = self.root / "remote" / location
        where.mkdir(parents=True, exist_ok=True)
        data = self._clone_file(vol, remote_id, vol.size, where / f"{remote_id}.raw")
        self._backups[location].append(
            {
                "name": vol.name,
                "location": location,
                "size": vol.size,
                "tags": tags,
                "remoteId": remote_id,
                "path": str(data),
                "created": int(self.now()),
            }
        )
        return self._ok(remoteId=remote_id)

    # -- snapshots ------------------------------------------------------------------------------

    def _snapshot_of(
        self, vol: _Obj, name: str | None, tags: dict[str, str], bound: bool = False, delete_at: int = 0
    ) -> _Obj:
        vid, gid = self._next_ids()
        auto = name is None
        if name is None:
            base = vol.gid if vol.name.startswith("~") else vol.name
            name = f"{base[: NAME_SIZE - 12]}@{vid}"
            while name in self._objs:
                vid, gid = self._next_ids()
                name = f"{base[: NAME_SIZE - 12]}@{vid}"
        snap = _Obj(
            "snapshot",
            name,
            gid,
            vid,
            vol.size,
            int(self.now()),
            parent=vol.parent,
            stored_hint=vol.stored_hint,
            source=vol.gid,
            auto_name=auto,
            bound=bound,
            delete_at=delete_at,
        )
        self._inherit_object(snap, vol)
        _merge_tags(snap.tags, tags)
        snap.path = self._clone_file(vol, gid, vol.size)
        self._add(snap)
        vol.parent = gid
        return snap

    def _snapshots_list(self, args: list[str], body: Any) -> Any:
        _no_body(body, "SnapshotsList")
        return [self._summary(o) for o in self._snaps.values()]

    def _snapshot_list(self, args: list[str], body: Any) -> Any:
        _no_body(body, "Snapshot")
        return [self._summary(self._find(args[0], "snapshot"))]

    def _snapshot_describe(self, args: list[str], body: Any) -> Any:
        _no_body(body, "SnapshotDescribe")
        return self._describe(self._find(args[0], "snapshot"))

    def _snapshot_info(self, args: list[str], body: Any) -> Any:
        _no_body(body, "SnapshotGetInfo")
        return self._info(self._find(args[0], "snapshot"))

    def _snapshots_space(self, args: list[str], body: Any) -> Any:
        _no_body(body, "SnapshotsSpace")
        return [self._space(o) for o in self._snaps.values()]

    def _volume_snapshot(self, args: list[str], body: Any) -> Any:
        vol = self._find(args[0], "volume")
        fields = _fields(body, "VolumeSnapshot", _SNAPSHOT_CREATE)
        name = _name(fields["name"], "snapshot name") if fields.get("name") is not None else None
        if name is not None:
            self._check_free(name)
        bound = _bool(fields.get("bind", False), "bind")
        delete_at = self._delete_date(fields, 0)
        tags = _tags(fields.get("tags"))
        snap = self._snapshot_of(vol, name, tags, bound, delete_at)
        reply = self._ok(snapshotGlobalId=snap.gid, snapshotVisibleVolumeId=snap.vid)
        if name is None:
            reply["autoName"] = snap.name
        return reply

    def _snapshot_update(self, args: list[str], body: Any) -> Any:
        snap = self._find(args[0], "snapshot")
        fields = _fields(body, "SnapshotUpdate", _SNAPSHOT_UPDATE)
        rename = None
        if fields.get("rename") is not None:
            rename = _name(fields["rename"], "snapshot name")
            if rename != snap.name:
                self._check_free(rename)
        tpl = self._template(fields["template"]) if fields.get("template") is not None else None
        bound = _bool(fields["bind"], "bind") if fields.get("bind") is not None else snap.bound
        delete_at = self._delete_date(fields, snap.delete_at)
        policy = self._policy(fields)
        if tpl is not None:
            self._inherit_template(snap, tpl)
        self._apply_policy(snap, policy)
        snap.bound, snap.delete_at = bound, delete_at
        if rename is not None and rename != snap.name:
            del self._objs[snap.name]
            snap.name = rename
            snap.auto_name = False
            self._objs[rename] = snap
            self._relink(snap)
        return self._ok()

    def _snapshot_delete(self, args: list[str], body: Any) -> Any:
        _no_body(body, "SnapshotDelete")
        snap = self._find(args[0], "snapshot")
        self._refuse_attached(snap, "delete")
        self._drop_snapshot(snap)
        return self._ok()

    def _snapshot_delete_by_id(self, args: list[str], body: Any) -> Any:
        _no_body(body, "SnapshotDeleteById")
        if not _GLOBAL_ID.fullmatch(args[0]):
            raise _invalid(f'Invalid global id "{args[0]}"')
        return self._snapshot_delete([f"~{args[0]}"], None)

    def _group_snapshot(self, args: list[str], body: Any) -> Any:
        fields = _fields(body, "VolumesGroupSnapshot", {"volumes", "tags"})
        specs = fields.get("volumes")
        if not isinstance(specs, list) or not specs:
            raise _invalid("VolumesGroupSnapshot: volumes must be a non-empty list")
        common = _tags(fields.get("tags"))
        plan: list[tuple[_Obj, str | None, dict[str, str]]] = []
        seen: set[str] = set()
        names: set[str] = set()
        for i, spec in enumerate(specs):
            spec = _fields(spec, f"volumes[{i}]", {"volume", "name", "tags"})
            if spec.get("volume") is None:
                raise _invalid(f"volumes[{i}]: volume is required")
            vol = self._find(spec["volume"], "volume")
            if vol.gid in seen:
                raise _invalid(f"volume {vol.name} is listed twice")
            seen.add(vol.gid)
            name = None
            if spec.get("name") is not None:
                name = _name(spec["name"], "snapshot name", _SNAPSHOT_NAME)
                self._check_free(name)
                if name in names:
                    raise _invalid(f"snapshot name {name} is listed twice")
                names.add(name)
            plan.append((vol, name, {**common, **_tags(spec.get("tags"))}))
        done: list[tuple[_Obj, str | None, _Obj]] = []
        try:
            for vol, name, tags in plan:
                parent = vol.parent
                done.append((vol, parent, self._snapshot_of(vol, name, tags)))
        except BaseException:
            for vol, parent, snap in reversed(done):
                vol.parent = parent
                self._forget(snap)
            raise
        snapshots = [
            {
                "volume": vol.name,
                "volumeGlobalId": vol.gid,
                "snapshot": snap.name,
                "snapshotGlobalId": snap.gid,
                "remoteId": snap.gid,
            }
            for vol, _parent, snap in done
        ]
        return self._ok(snapshots=snapshots)

    # -- attachments ----------------------------------------------------------------------------

    def _attachments_list(self, args: list[str], body: Any) -> Any:
        _no_body(body, "AttachmentsList")
        out = []
        for gid, clients in self._attach.items():
            obj = self._gids[gid]
            for cid, (rights, pos) in sorted(clients.items()):
                out.append(
                    {
                        "volume": obj.name,
                        "snapshot": obj.kind == "snapshot",
                        "client": cid,
                        "rights": rights,
                        "pos": pos,
                        "globalId": gid,
                    }
                )
        return out

    def _volumes_reassign(self, args: list[str], body: Any) -> Any:
        self._reassign(body)
        return self._ok()

    def _volumes_reassign_wait(self, args: list[str], body: Any) -> Any:
        fields = _fields(body, "VolumesReassignWait", {"reassign", "attachTimeout"})
        if fields.get("attachTimeout") is not None:
            _int(fields["attachTimeout"], "attachTimeout", lo=0)
        self._reassign(fields.get("reassign"))
        return self._ok()

    def _reassign(self, entries: Any) -> None:
        if not isinstance(entries, list):
            raise _invalid("reassign: expected a list of volume/snapshot entries")
        plan: dict[str, dict[int, str]] = {}
        objs: dict[str, _Obj] = {}
        forced: dict[str, bool] = {}
        for i, entry in enumerate(entries):
            what = f"reassign[{i}]"
            if not isinstance(entry, dict) or ("volume" in entry) == ("snapshot" in entry):
                raise _invalid(f"{what}: expected an object with either volume or snapshot")
            if "volume" in entry:
                entry = _fields(entry, what, _VOLUME_REASSIGN)
                obj = self._find(entry["volume"], "volume")
                ro, rw = _client_ids(entry.get("ro"), "ro"), _client_ids(entry.get("rw"), "rw")
            else:
                entry = _fields(entry, what, _SNAPSHOT_REASSIGN)
                obj = self._find(entry["snapshot"], "snapshot")
                ro, rw = _client_ids(entry.get("ro"), "ro"), []
            force = _bool(entry.get("force", False), "force")
            targets = set(ro) | set(rw)
            if set(ro) & set(rw):
                raise _invalid(f"{what}: a client cannot be both ro and rw")
            if targets and obj.path is None:
                raise _invalid(f"{what}: {obj.name} has no data (bulk_create) and cannot be attached")
            for cid in targets:
                self._client(cid)
            state = plan.setdefault(obj.gid, {c: r for c, (r, _p) in self._attach.get(obj.gid, {}).items()})
            objs[obj.gid] = obj
            detach = entry.get("detach")
            if detach is None:
                gone: set[int] = set()
            elif detach == "all":
                gone = set(state) - targets
            else:
                gone = set(_client_ids(detach, "detach"))
                if gone & targets:
                    raise _invalid(f"{what}: a client cannot be both detached and attached")
            for cid in gone:
                state.pop(cid, None)
            for cid in ro:
                state[cid] = "ro"
            for cid in rw:
                state[cid] = "rw"
            forced[obj.gid] = forced.get(obj.gid, False) or force
        if self.check_open:
            going: list[tuple[str, int, str]] = []
            for gid, state in plan.items():
                if forced[gid]:
                    continue
                for cid, (rights, _pos) in self._attach.get(gid, {}).items():
                    dev = self._loops.get((gid, rights))
                    if state.get(cid) == rights or rights in state.values() or dev is None:
                        continue  # this client keeps it, or others keep the same device
                    going.append((gid, cid, dev))
            # A device held only for a moment (a probe by some other tool on the machine) is
            # waited for, as a client lets a closing device go; one held on is busy.
            deadline = time.monotonic() + OPEN_GRACE
            while going:
                opened = _open_devices()
                held = [(gid, cid) for gid, cid, dev in going if dev in opened]
                if not held:
                    break
                if time.monotonic() >= deadline:
                    gid, cid = held[0]
                    raise _busy(f"{objs[gid].kind.capitalize()} {objs[gid].name} is open at client {cid}")
                time.sleep(0.05)
        for gid, state in plan.items():
            self._apply_attachments(objs[gid], state)

    # -- templates and placement groups ---------------------------------------------------------

    def _templates_list(self, args: list[str], body: Any) -> Any:
        _no_body(body, "VolumeTemplatesList")
        return [self._template_desc(t) for t in self._templates.values()]

    def _template_describe(self, args: list[str], body: Any) -> Any:
        _no_body(body, "VolumeTemplateDescribe")
        return self._template_desc(self._template(args[0]))

    def _template_fields(self, tpl: _Template, fields: dict[str, Any], creating: bool) -> None:
        """Validate, then apply, what templates take: policy, parent, size.

        A new template given only placeAll uses it for placeTail and placeHead too.
        """
        policy = self._policy(fields)
        policy.pop("tags", None)  # accepted (VolumePolicyDesc) but templates keep no tags
        parent = tpl.parent
        if fields.get("parent") is not None:
            parent = "" if fields["parent"] == "" else _name(fields["parent"], "snapshot name", _SNAPSHOT_NAME)
            if parent:
                self._find(parent, "snapshot")
        size = _size(fields["size"]) if fields.get("size") is not None else tpl.size
        if creating and "placeAll" in policy:
            policy.setdefault("placeTail", policy["placeAll"])
            policy.setdefault("placeHead", policy["placeAll"])
        self._apply_policy(tpl, policy)
        tpl.parent, tpl.size = parent, size

    def _template_create(self, args: list[str], body: Any) -> Any:
        fields = _fields(body, "VolumeTemplateCreate", _TEMPLATE_CREATE)
        name = _name(fields.get("name"), "template name", _GROUP_NAME)
        if name in self._templates:
            raise ApiFailure("objectExists", f"Template {name} already exists")
        self._counter += 1
        tpl = _Template(self._counter, name)
        self._template_fields(tpl, fields, creating=True)
        self._templates[name] = tpl
        return self._ok()

    def _template_update(self, args: list[str], body: Any) -> Any:
        tpl = self._template(args[0])
        fields = _fields(body, "VolumeTemplateUpdate", _TEMPLATE_UPDATE)
        rename = None
        if fields.get("rename") is not None:
            rename = _name(fields["rename"], "template name", _GROUP_NAME)
            if rename != tpl.name and rename in self._templates:
                raise ApiFailure("objectExists", f"Template {rename} already exists")
        propagate = _bool(fields.get("propagate", False), "propagate")
        self._template_fields(tpl, fields, creating=False)
        if rename is not None and rename != tpl.name:
            del self._templates[tpl.name]
            for obj in self._objs.values():
                if obj.template == tpl.name:
                    obj.template = rename
            tpl.name = rename
            self._templates[rename] = tpl
        if propagate:
            for obj in self._objs.values():
                if obj.template == tpl.name:
                    self._inherit_template(obj, tpl)
        return self._ok()

    def _template_delete(self, args: list[str], body: Any) -> Any:
        _no_body(body, "VolumeTemplateDelete")
        tpl = self._template(args[0])
        users = [o.name for o in self._objs.values() if o.template == tpl.name]
        if users:
            raise _invalid(f"Template {tpl.name} is used by {len(users)} volume(s)/snapshot(s), e.g. {users[0]}")
        del self._templates[tpl.name]
        return self._ok()

    def _templates_status(self, args: list[str], body: Any) -> Any:
        _no_body(body, "VolumeTemplatesStatus")
        stored_of = {o.gid: self._stored(o) for o in self._objs.values()}
        used_raw = sum(stored_of[o.gid] * o.replication for o in self._objs.values())
        free_raw = max(0, self.capacity - used_raw)
        parents = {o.parent for o in self._objs.values() if o.parent}
        out = []
        for tpl in self._templates.values():
            members = [o for o in self._objs.values() if o.template == tpl.name]
            vols = [o for o in members if o.kind == "volume"]
            snaps = [o for o in members if o.kind == "snapshot"]
            repl = tpl.replication or 3
            internal = {"u1": 0, "u2": 0, "u3": 0}
            entry = {"capacity": self.capacity // repl, "free": free_raw // repl, "internal": internal}
            out.append(
                {
                    "id": tpl.id,
                    "name": tpl.name,
                    "placeAll": tpl.place_all,
                    "placeTail": tpl.place_tail,
                    "placeHead": tpl.place_head,
                    "replication": tpl.replication or "-",
                    "volumesCount": len(vols),
                    "snapshotsCount": len(snaps),
                    "removingSnapshotsCount": 0,
                    "size": sum(v.size for v in vols),
                    "totalSize": sum(v.size * v.replication for v in vols),
                    "volumesSize": sum(v.size for v in vols),
                    "snapshotsWithChildrenSize": sum(s.size for s in snaps if s.gid in parents),
                    "snapshotsWithoutChildrenSize": sum(s.size for s in snaps if s.gid not in parents),
                    "storedSize": sum(stored_of[o.gid] for o in members),
                    "onDiskSize": sum(stored_of[o.gid] * o.replication for o in members),
                    "availablePlaceAll": free_raw,
                    "availablePlaceTail": free_raw,
                    "availablePlaceHead": free_raw,
                    "capacityPlaceAll": self.capacity,
                    "capacityPlaceTail": self.capacity,
                    "capacityPlaceHead": self.capacity,
                    "stored": {**entry, "placeAll": dict(entry), "placeTail": dict(entry), "placeHead": dict(entry)},
                }
            )
        return out

    def _group_desc(self, group: _Group) -> dict[str, Any]:
        return {"id": group.id, "name": group.name, "disks": sorted(group.disks)}

    def _groups_list(self, args: list[str], body: Any) -> Any:
        _no_body(body, "PlacementGroupsList")
        return {g.name: self._group_desc(g) for g in self._groups.values()}

    def _group_describe(self, args: list[str], body: Any) -> Any:
        _no_body(body, "PlacementGroupDescribe")
        return self._group_desc(self._group(args[0]))

    def _group_update(self, args: list[str], body: Any) -> Any:
        name = _name(args[0], "placement group name", _GROUP_NAME)
        fields = _fields(body, "PlacementGroupUpdate", {"rename", "addDisks", "rmDisks"})
        rename = None
        if fields.get("rename") is not None:
            rename = _name(fields["rename"], "placement group name", _GROUP_NAME)
            if rename != name and rename in self._groups:
                raise ApiFailure("objectExists", f"Placement group {rename} already exists")
        add: set[int] = set()
        remove: set[int] = set()
        for key, dest in (("addDisks", add), ("rmDisks", remove)):
            value = fields.get(key) or []
            if not isinstance(value, list):
                raise _invalid(f"{key} must be a list of disk ids")
            dest.update(_int(d, "disk id", 0, MAX_DISK_ID) for d in value)
        group = self._groups.get(name)
        if group is None:
            self._counter += 1
            group = self._groups[name] = _Group(self._counter, name, set())
        group.disks = (group.disks | add) - remove
        if rename is not None and rename != name:
            del self._groups[name]
            group.name = rename
            self._groups[rename] = group
            items: list[_Obj | _Template] = [*self._objs.values(), *self._templates.values()]
            for item in items:
                for attr in ("place_all", "place_tail", "place_head"):
                    if getattr(item, attr) == name:
                        setattr(item, attr, rename)
        return self._ok()

    def _group_delete(self, args: list[str], body: Any) -> Any:
        _no_body(body, "PlacementGroupDelete")
        group = self._group(args[0])
        items: list[_Obj | _Template] = [*self._objs.values(), *self._templates.values()]
        for item in items:
            if group.name in (item.place_all, item.place_tail, item.place_head):
                raise _invalid(f"Placement group {group.name} is in use by {item.name}")
        del self._groups[group.name]
        return self._ok()

    # -- remote locations -----------------------------------------------------------------------

    def _locations_list(self, args: list[str], body: Any) -> Any:
        _no_body(body, "LocationsList")
        return {
            "locations": [
                {"id": lid, "name": name, "sendBufferSize": 0, "recvBufferSize": 0}
                for name, lid in self._locations.items()
            ]
        }

    # -- services and clients -------------------------------------------------------------------

    def _services_list(self, args: list[str], body: Any) -> Any:
        _no_body(body, "ServicesList")

        def service(sid: int, started: int, **extra: Any) -> dict[str, Any]:
            out: dict[str, Any] = {"id": sid, "status": "running", "version": VERSION, "startTime": started}
            if sid <= 63:
                out["nodeId"] = sid
            out.update(extra)
            return out

        started = self._started_at
        return {
            "clusterStatus": "running",
            "mgmt": {"1": service(1, started, active=True, prio=0)},
            "servers": {str(s): service(s, started, missingDisks=[], pendingDisks=[]) for s in (1, 2, 3)},
            "clients": {str(c.id): service(c.id, c.started) for c in self._clients.values()},
            "bridges": {},
            "iscsiTargets": {},
        }

    def _config_status(self, client: _Client) -> dict[str, Any]:
        return {
            "id": client.id,
            "generation": self._generation,
            "clientGeneration": self._generation,
            "configStatus": "ok",
            "delay": 0,
        }

    def _clients_config_dump(self, args: list[str], body: Any) -> Any:
        _no_body(body, "ClientsConfigDump")
        return [self._config_status(c) for c in self._clients.values()]

    def _client_config_wait(self, args: list[str], body: Any) -> Any:
        _no_body(body, "ClientConfigWait")
        try:
            cid = int(args[0])
        except ValueError:
            raise _invalid(f"Invalid client id {args[0]}") from None
        client = self._clients.get(_int(cid, "client id", 1, MAX_CLIENT_ID))
        if client is None:
            raise _missing("Client", str(cid))
        return [self._config_status(client)]


def _stop_all() -> None:
    for sim in list(_RUNNING):
        with contextlib.suppress(Exception):
            sim.stop()


atexit.register(_stop_all)
