"""The Ceph RBD backend (driver ``rbd``): OpenNebula's stock ``ceph`` drivers' names and
datastore attributes, with the data work done on the front-end through librados/librbd
(Debian's python3-rados / python3-rbd, made importable by a ``.pth``; see the README).
Hypervisors need neither the ``rbd`` CLI nor Ceph credentials for anything this backend does;
qemu reaches the disks itself (libvirt ``<disk type='network'><source protocol='rbd'>``).

Names are ``<pool>/<image>`` (a bare ``<image>`` is in the datastore's POOL_NAME) and
snapshots ``<pool>/<image>@<snapshot>``, exactly the stock driver's objects (``RbdNames``):
image ``one-<ID>``, non-persistent disk ``one-<ID>-<VM>-<DISK>`` (a copy-on-write clone of the
image's protected ``@snap``), volatile disk ``one-sys-<VM>-<DISK>``, checkpoint
``one-sys-<VM>-checkpoint``, disk snapshot ``@<N>``. An image's SOURCE is ``<pool>/one-<ID>``.

Tags are image metadata (``rbd image-meta``) ``one.<key>``; a snapshot's are its image's
``one.snap.<snapshot>.<key>``. Placement is the pool.

Hosts: nothing is attached anywhere (``disk_form`` is ``network``); ``attach`` returns the
``rbd:`` target qemu-img reads and writes on the front-end (image import, export).

Deleted disks (``delayed_delete`` when CEPH_TRASH=yes, as the stock driver): the disk is
flattened and moved to the RBD trash with DELAY_DELETE as its deferment; ``one-tweaks trash``
lists and restores such entries, and the datastore monitor purges expired ones.

Every call has the client timeouts rados_osd_op_timeout / rados_mon_op_timeout /
client_mount_timeout = API_TIMEOUT (seconds, default 30): a cluster that stops answering
fails the action with one line instead of hanging it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any, ClassVar

from onelib.config import Config
from onelib.errors import Conflict, DriverError, NotFound, Transient
from tweaks.record import record

from ..backend import Attribute, Backend, Capacity, HostRef, Usage, Volume
from ..naming import Names

TRUE = frozenset({"1", "yes", "y", "true", "on"})
# librados logs to stderr and opens an admin socket by default: a driver's stderr is its one
# line of reason, and several actions run at once
QUIET = {"log_to_stderr": "false", "err_to_stderr": "false", "log_file": "", "admin_socket": ""}
BASE_SNAP = "snap"                          # the stock driver's clone base snapshot
TAG = "one."                                # image-meta key prefix of our tags
SNAP_TAG = "one.snap."                      # + <snapshot>.<key>
TRASH_KEY = "one.trash_name"                # a trashed image's name in `one-tweaks trash`
LEFTOVER_WAIT = 45.0                        # > osd_client_watch_timeout (30 s)
CHUNK = 4 << 20
FEATURES = 1 | 4 | 8 | 16 | 32              # layering, exclusive-lock, object-map, fast-diff, deep-flatten
_PART = r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,189}"
_QUALIFIED = re.compile(rf"({_PART})/({_PART})(?:@({_PART}))?")
_BARE = re.compile(rf"({_PART})(?:@({_PART}))?")


class Busy(DriverError):
    """An image is open elsewhere (or a crashed client's watch has not expired yet)."""


def _lib() -> tuple[Any, Any]:
    """librados and librbd bindings, imported on first use (never on the deploy path)."""
    try:
        return importlib.import_module("rados"), importlib.import_module("rbd")
    except ImportError:
        raise DriverError("the rbd driver needs librados/librbd for Python (Debian: python3-rados python3-rbd, "
                          "linked into one-tweaks' venv; see the README)") from None


@record
class RbdNames(Names):
    """The stock ceph drivers' names, qualified with the pool (``POOL_NAME``): the shapes of
    ``Names`` with the stock driver's spelling."""

    pool: str = "one"
    qualified: ClassVar[bool] = True
    IMAGE: ClassVar[str] = "{px}-{image}"
    STAGING: ClassVar[str] = "{px}-{image}.import-{digest8}"
    CLONE: ClassVar[str] = "{px}-{image}-{vm}-{disk}"
    VOLATILE: ClassVar[str] = "{px}-sys-{vm}-{disk}"
    CONTEXT: ClassVar[str] = "{px}-sys-{vm}-{disk}"
    CHECKPOINT: ClassVar[str] = "{px}-sys-{vm}-checkpoint"
    NVRAM: ClassVar[str] = "{px}-sys-{vm}-nvram"
    DISK_SNAPSHOT: ClassVar[str] = "{volume}@{snap}"
    VM_SNAPSHOT: ClassVar[str] = "{volume}@onesnap-{snap}-{time}"
    BACKUP_SNAPSHOT: ClassVar[str] = "{volume}@one_backup_{time}"
    EXPORT_SNAPSHOT: ClassVar[str] = "{volume}@export-{app}"
    VOLUME_RE: ClassVar[str] = ".+"
    QUALIFIER_RE: ClassVar[str] = "[^/]+/"

    @classmethod
    def from_config(cls, config: Config) -> RbdNames:
        return cls(px=config.get("ONE_PX") or "one", pool=config.get("POOL_NAME") or "one")

    def _name(self, shape: str, **fields: object) -> str:
        digest = str(fields.get("digest", ""))
        return f"{self.pool}/{shape.format(px=self.px, digest8=digest[:8], **fields)}"

    def template(self, ds_id: int) -> str:
        return self.pool

    def source_volume(self, source: str) -> str:
        """``pool/image`` as given; a bare ``image`` is in this datastore's pool; "" for
        anything that names no RBD image."""
        if _QUALIFIED.fullmatch(source) and "@" not in source:
            return source
        if _BARE.fullmatch(source) and "@" not in source:
            return f"{self.pool}/{source}"
        return ""


@record
class _Ref:
    pool: str
    image: str
    snap: str = ""

    @property
    def volume(self) -> str:
        return f"{self.pool}/{self.image}"

    def __str__(self) -> str:
        return f"{self.volume}@{self.snap}" if self.snap else self.volume


class Rbd(Backend):
    driver = "rbd"
    name = "rbd"
    scheme: ClassVar[type[Names]] = RbdNames
    disk_form = "network"
    # OpenNebula's ceph drivers' datastore attributes, with their defaults (ceph.conf of
    # src/datastore_mad/remotes/ceph); CEPH_HOST and CEPH_SECRET are for the domain XML
    attributes = (
        Attribute("POOL_NAME", "one", doc="Ceph pool of the datastore's images"),
        Attribute("CEPH_USER", doc="Ceph user (client.<CEPH_USER>; empty: client.admin)"),
        Attribute("CEPH_KEY", kind="path", doc="key file of CEPH_USER (else the keyring CEPH_CONF names)"),
        Attribute("CEPH_CONF", kind="path", doc="ceph.conf with the monitors (empty: /etc/ceph/ceph.conf)"),
        Attribute("CEPH_HOST", doc="monitors host[:port] ... for the domain XML"),
        Attribute("CEPH_SECRET", doc="UUID of the libvirt ceph secret on the hypervisors"),
        Attribute("RBD_FORMAT", "2", kind="int", doc="RBD image format (2; 1 cannot clone or snapshot)"),
        Attribute("EC_POOL_NAME", doc="erasure-coded data pool of new images"),
        Attribute("CEPH_TRASH", "no", kind="bool", doc="deleted disks go to the RBD trash for DELAY_DELETE"),
    )
    # OpenNebula's ceph blocks (share/etc/oned.conf); no BRIDGE_LIST is required: the
    # front-end does the data work
    tm_mad_conf = (("LN_TARGET", "NONE"), ("CLONE_TARGET", "SELF"), ("SHARED", "YES"), ("DS_MIGRATE", "NO"),
                   ("DRIVER", "raw"), ("ALLOW_ORPHANS", "mixed"))
    ds_mad_conf = (("REQUIRED_ATTRS", "DISK_TYPE"), ("PERSISTENT_ONLY", "NO"), ("MARKETPLACE_ACTIONS", "export"))
    group_snapshots = True          # RBD group snapshots (``group_snapshot``)
    nvram_volumes = True            # ``make_nvram``: the VARS template written through librbd
    volume_writes = True            # ``write_volume``: the context ISO written through librbd
    can_rename = True
    delayed_delete = False          # per datastore: CEPH_TRASH (see from_config)

    def __init__(self, *, pool: str = "one", user: str = "", conf: str = "", keyfile: str = "",
                 timeout: int = 30, ec_pool: str = "", image_format: int = 2, trash: bool = False) -> None:
        self.pool = pool
        self.user = user
        self.conf = conf
        self.keyfile = keyfile
        self.timeout = timeout
        self.ec_pool = ec_pool
        self.image_format = image_format
        self.delayed_delete = trash
        self.calls = 0               # librados/librbd operations issued (bench)
        self._cluster: Any = None
        self._ioctx: dict[str, Any] = {}

    @classmethod
    def from_config(cls, config: Config) -> Rbd:
        fmt = config.get("RBD_FORMAT", "2").strip() or "2"
        if fmt not in ("1", "2"):
            raise DriverError(f"RBD_FORMAT={fmt!r} is not 1 or 2")
        return cls(pool=config.get("POOL_NAME") or "one", user=config.get("CEPH_USER").strip(),
                   conf=config.get("CEPH_CONF").strip(), keyfile=config.get("CEPH_KEY").strip(),
                   timeout=config.integer("API_TIMEOUT", 1) or 30, ec_pool=config.get("EC_POOL_NAME").strip(),
                   image_format=int(fmt), trash=config.get("CEPH_TRASH").strip().lower() in TRUE)

    @classmethod
    def doctor(cls, config: Config, datastores: Callable[[], Sequence[Any]], problem: Callable[[str], None]) -> None:
        """``one-tweaks doctor``: for every rbd datastore, the cluster answers with the
        datastore's own CEPH_USER and CEPH_KEY/CEPH_CONF and its POOL_NAME is there."""
        from onelib import xmldoc

        try:
            found = datastores()
        except DriverError:
            return   # oned unreachable: the doctor's oned check says so
        for ds in found:
            label = f"datastore {xmldoc.text(ds, 'ID')} ({xmldoc.text(ds, 'NAME')})"
            cfg = cls.configure(config, xmldoc.template_attrs(ds.find("TEMPLATE")))
            backend = None
            try:
                backend = cls.from_config(cfg)
                backend.ping(backend.pool)
            except DriverError as exc:
                problem(f"api: {label}: {exc}: every rbd action on it fails; fix CEPH_USER/CEPH_KEY/CEPH_CONF/"
                        f"POOL_NAME with onedatastore update (the front-end itself talks to Ceph)")
            finally:
                if backend is not None:
                    backend.close()

    @classmethod
    def facts(cls, vm: Any, datastore: Any, config: Config | None,
              disks: Sequence[str]) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
        """For the rules (volatile_network and the disk tweaks): per image or volatile disk,
        ``storage_protocol`` rbd, ``storage_name`` its RBD image (``<SOURCE>-<VM>-<DISK>`` for
        a clone, SOURCE for a persistent image, ``<POOL>/one-sys-<VM>-<DISK>`` for a volatile
        disk), ``storage_hosts`` (CEPH_HOST), ``storage_user`` (CEPH_USER), ``storage_secret``
        (CEPH_SECRET, type ceph): the disk's own (inherited) values, else the system
        datastore's. The context CD-ROM: its image ``<POOL>/one-sys-<VM>-<DISK>`` (TM context
        writes the ISO there besides the file ``disk.N``; context_network then uses it), with
        the system datastore's values. Scalars: ``storage.rbd_pool`` (the system datastore's
        POOL_NAME); for a known VM its
        NVRAM image (``make_nvram``) for os_nvram: ``storage.nvram_protocol`` rbd,
        ``storage.nvram_name`` ``<POOL>/one-sys-<VM>-nvram``, ``storage.nvram_hosts``/``_user``/
        ``_secret``/``_secret_type`` from the system datastore."""
        from onelib import xmldoc

        attrs = xmldoc.template_attrs(datastore.find("TEMPLATE")) if datastore is not None else {}
        px = (config.get("ONE_PX") if config is not None else "") or "one"
        sys_pool = attrs.get("POOL_NAME") or "one"
        out: dict[str, dict[str, str]] = {}
        vm_id = xmldoc.text(vm, "ID") if vm is not None else ""
        template = vm.find("TEMPLATE") if vm is not None else None
        for disk in template.iterfind("DISK") if template is not None else ():
            disk_id = xmldoc.text(disk, "DISK_ID")
            if disk_id not in disks:
                continue
            source = xmldoc.text(disk, "SOURCE")
            if xmldoc.text(disk, "TYPE").upper() in ("FS", "SWAP") or not source:
                name = f"{xmldoc.text(disk, 'POOL_NAME') or sys_pool}/{px}-sys-{vm_id}-{disk_id}"
            elif xmldoc.text(disk, "CLONE").upper() == "YES":
                name = f"{source}-{vm_id}-{disk_id}"
            else:
                name = source
            values = {"storage_protocol": "rbd", "storage_name": name}
            for key, fact in (("CEPH_HOST", "storage_hosts"), ("CEPH_USER", "storage_user"),
                              ("CEPH_SECRET", "storage_secret")):
                value = xmldoc.text(disk, key) or attrs.get(key, "")
                if value:
                    values[fact] = value
            if values.get("storage_secret"):
                values["storage_secret_type"] = "ceph"
            out[disk_id] = values
        context_id = xmldoc.text(template, "CONTEXT/DISK_ID") if template is not None else ""
        if context_id in disks and context_id.isascii() and context_id.isdigit() and vm_id.isdigit():
            values = {"storage_protocol": "rbd",
                      "storage_name": RbdNames(px=px, pool=sys_pool).context(int(vm_id), int(context_id))}
            for key, fact in (("CEPH_HOST", "storage_hosts"), ("CEPH_USER", "storage_user"),
                              ("CEPH_SECRET", "storage_secret")):
                if attrs.get(key):
                    values[fact] = attrs[key]
            if values.get("storage_secret"):
                values["storage_secret_type"] = "ceph"
            out[context_id] = values
        scalars = {"storage.rbd_pool": sys_pool}
        if vm_id.isascii() and vm_id.isdigit():
            scalars.update({"storage.nvram_protocol": "rbd",
                            "storage.nvram_name": RbdNames(px=px, pool=sys_pool).nvram(int(vm_id))})
            for key, fact in (("CEPH_HOST", "hosts"), ("CEPH_USER", "user"), ("CEPH_SECRET", "secret")):
                if attrs.get(key):
                    scalars[f"storage.nvram_{fact}"] = attrs[key]
            if attrs.get("CEPH_SECRET"):
                scalars["storage.nvram_secret_type"] = "ceph"
        return scalars, out

    @classmethod
    def host_ref(cls, name: str, attrs: Mapping[str, str], config: Config) -> HostRef:
        """Nothing attaches on hosts: qemu opens the image itself."""
        return HostRef(name=name, client="", device_dir="")

    @classmethod
    def default_placement(cls, config: Config, names: Names, ds_id: int) -> str:
        return config.get("POOL_NAME") or "one"

    # --- connection ------------------------------------------------------------------------
    def _connect(self) -> Any:
        if self._cluster is not None:
            return self._cluster
        rados, _ = _lib()
        options = {"rados_osd_op_timeout": str(self.timeout), "rados_mon_op_timeout": str(self.timeout),
                   "client_mount_timeout": str(self.timeout), **QUIET}
        if self.keyfile:
            options["keyfile"] = self.keyfile
        who = f"client.{self.user or 'admin'}"
        try:
            cluster = rados.Rados(rados_id=self.user or "admin", conffile=self.conf or "", conf=options)
            self.calls += 1
            cluster.connect(timeout=self.timeout)
        except rados.PermissionDeniedError:
            raise DriverError(f"Ceph refused {who} (CEPH_USER/CEPH_KEY): check the user and its key") from None
        except rados.TimedOut:
            raise Transient(f"no Ceph monitor answered {who} within {self.timeout}s ({self._where()})") from None
        except (rados.Error, OSError) as exc:
            raise DriverError(f"cannot connect to Ceph as {who} ({self._where()}): {_reason(exc)}") from None
        self._cluster = cluster
        return cluster

    def _where(self) -> str:
        return f"CEPH_CONF={self.conf}" if self.conf else "/etc/ceph/ceph.conf"

    def _io(self, pool: str) -> Any:
        io = self._ioctx.get(pool)
        if io is None:
            rados, _ = _lib()
            cluster = self._connect()
            try:
                self.calls += 1
                io = cluster.open_ioctx(pool)
            except rados.ObjectNotFound:
                raise DriverError(f"Ceph pool {pool!r} does not exist (POOL_NAME)") from None
            except rados.Error as exc:
                raise self._error(exc, f"pool {pool}") from None
            self._ioctx[pool] = io
        return io

    def close(self) -> None:
        for io in self._ioctx.values():
            with contextlib.suppress(Exception):
                io.close()
        self._ioctx.clear()
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self._cluster.shutdown()
            self._cluster = None

    def _ref(self, name: str) -> _Ref:
        match = _QUALIFIED.fullmatch(name)
        if match:
            return _Ref(match.group(1), match.group(2), match.group(3) or "")
        match = _BARE.fullmatch(name)
        if match:
            return _Ref(self.pool, match.group(1), match.group(2) or "")
        raise DriverError(f"{name!r} is not an RBD image name (pool/image[@snapshot])")

    def _error(self, exc: BaseException, what: str) -> DriverError:
        """A librados/librbd exception as one line: NotFound, Conflict, Transient or DriverError."""
        rados, rbd = _lib()
        reason = _reason(exc)
        if isinstance(exc, (rbd.ImageNotFound, rados.ObjectNotFound, getattr(rbd, "ObjectNotFound", ()))):
            return NotFound(f"{what} does not exist")
        if isinstance(exc, (rbd.ImageExists, rados.ObjectExists, getattr(rbd, "ObjectExists", ()))):
            return Conflict(f"{what} already exists")
        if isinstance(exc, (getattr(rbd, "Timeout", ()), rados.TimedOut)):
            return Transient(f"{what}: Ceph did not answer within {self.timeout}s (is every OSD up?)")
        if isinstance(exc, getattr(rbd, "DiskQuotaExceeded", ())) or "quota" in reason.lower():
            return DriverError(f"{what}: the pool is full (its quota is reached)")
        if isinstance(exc, getattr(rbd, "NoSpace", ())):
            return DriverError(f"{what}: the Ceph cluster is out of space")
        if isinstance(exc, (rbd.PermissionError, rados.PermissionError)):
            return DriverError(f"{what}: permission denied to client.{self.user or 'admin'} (CEPH_USER caps)")
        if isinstance(exc, rbd.ImageBusy):
            return Busy(f"{what} is in use (open by a VM, or it has clones)")
        return DriverError(f"{what}: {reason}")

    @contextlib.contextmanager
    def _image(self, ref: _Ref, *, read_only: bool = False, snap: str = "") -> Iterator[Any]:
        _, rbd = _lib()
        io = self._io(ref.pool)
        try:
            self.calls += 1
            image = rbd.Image(io, ref.image, snapshot=snap or None, read_only=read_only)
        except Exception as exc:
            raise self._error(exc, f"RBD image {ref.volume}") from None
        try:
            yield image
        finally:
            with contextlib.suppress(Exception):
                image.close()

    def _do(self, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        try:
            return func(*args, **kwargs)
        except DriverError:
            raise
        except Exception as exc:
            err = self._error(exc, what)
        if isinstance(err, Transient):
            # Ceph holds writes to a full pool (quota reached, or the cluster full) until they
            # time out: say so instead of "no answer"
            full = self._full_pools()
            if full:
                raise DriverError(f"{what}: Ceph pool {', '.join(full)} is full (its quota is reached, or the "
                                  f"cluster is out of space)") from None
        raise err

    def _full_pools(self) -> list[str]:
        """Pools this action uses that Ceph marks full (one monitor command)."""
        try:
            ret, out, _ = self._cluster.mon_command(json.dumps({"prefix": "osd dump", "format": "json"}), b"",
                                                    timeout=self.timeout)
            pools = json.loads(out).get("pools", []) if ret == 0 else []
        except Exception:
            return []
        return [str(p.get("pool_name")) for p in pools if p.get("pool_name") in self._ioctx
                and {"full", "full_quota"} & set(str(p.get("flags_names", "")).split(","))]

    # --- volumes ---------------------------------------------------------------------------
    def _create_args(self) -> dict[str, Any]:
        if self.image_format == 1:
            return {"old_format": True}
        args: dict[str, Any] = {"old_format": False, "features": FEATURES}
        if self.ec_pool:
            args["data_pool"] = self.ec_pool
        return args

    def create(self, name: str, size: int, *, placement: str, tags: Mapping[str, str]) -> None:
        _, rbd = _lib()
        ref = self._ref(name)
        self._absent(ref)
        with self._staged(ref) as part:
            self._do(f"RBD image {ref}", rbd.RBD().create, self._io(ref.pool), part.image, size,
                     **self._create_args())
            if tags:
                self._tag(part, tags)

    def _absent(self, ref: _Ref) -> None:
        """Conflict when ``ref`` exists (checked before any work: a full copy is expensive)."""
        try:
            with self._image(ref, read_only=True):
                pass
        except NotFound:
            return
        raise Conflict(f"RBD image {ref} already exists")

    @contextlib.contextmanager
    def _staged(self, ref: _Ref) -> Iterator[_Ref]:
        """Make an image under ``<image>.partial`` (a leftover of an interrupted run is
        removed first) and rename it to its name only when it is complete: an image of the
        final name is never half-made, whatever fails (an OSD gone, a full pool, a crash)."""
        _, rbd = _lib()
        part = _Ref(ref.pool, f"{ref.image}.partial")
        try:
            self._remove_waiting(part)
        except NotFound:
            # A create cut off by an OSD going away can leave the name listed without an image
            # header: it cannot be opened, yet creating the name again fails with "exists".
            # librbd's remove clears such a name; the name is ours (``.partial``) whatever holds it.
            with contextlib.suppress(NotFound):
                self._do(f"leftover {part}", rbd.RBD().remove, self._io(part.pool), part.image)
        try:
            yield part
            self._do(f"rename {part}", rbd.RBD().rename, self._io(ref.pool), part.image, ref.image)
        except BaseException:
            with contextlib.suppress(DriverError):
                self._remove_image(part)
            raise

    def clone(self, source: str, name: str, *, placement: str, tags: Mapping[str, str],
              size: int | None = None, from_snapshot: bool = True) -> None:
        """A VM disk (``tags`` name a VM: ``nvm``) of an image is a copy-on-write clone of the
        image's protected ``@snap`` (made on first use, as the stock driver does); anything else
        (an image clone, disk-saveas, from a snapshot or not) is a full copy (``rbd copy``); a
        deleted disk waiting in the trash (``one-tweaks trash restore``) is taken out of it."""
        _, rbd = _lib()
        src, dst = self._ref(source), self._ref(name)
        if from_snapshot and not src.snap:
            entry = self._trash_entry(source)
            if entry is None:
                raise NotFound(f"{source} is no snapshot and no deleted disk in the trash")
            if dst.pool != src.pool:
                raise DriverError(f"a deleted disk comes back in its own pool ({src.pool}), not {dst.pool}")
            self._do(f"restore {source} from the trash", rbd.RBD().trash_restore, self._io(src.pool), entry["id"],
                     dst.image)
            self._tag(dst, {"trash_name": "", "trash": ""})
            return
        self._absent(dst)
        with self._staged(dst) as part:
            if not from_snapshot and tags.get("nvm") and self.image_format == 2:
                self._base_snapshot(src)
                base = _Ref(src.pool, src.image, BASE_SNAP)
                self._protect(base)
                kwargs: dict[str, Any] = {"features": FEATURES}
                if self.ec_pool:
                    kwargs["data_pool"] = self.ec_pool
                self._do(f"RBD clone {dst} of {base}", rbd.RBD().clone, self._io(src.pool), src.image, BASE_SNAP,
                         self._io(part.pool), part.image, **kwargs)
            else:
                with self._image(_Ref(src.pool, src.image), read_only=True, snap=src.snap) as image:
                    kwargs = {"features": FEATURES} if self.image_format == 2 else {}
                    if self.ec_pool:
                        kwargs["data_pool"] = self.ec_pool
                    self._do(f"RBD copy {src} -> {dst}", image.copy, self._io(part.pool), part.image, **kwargs)
            if tags:
                self._tag(part, tags)
            if size:
                with self._image(part) as image:
                    if size > image.size():
                        self._do(f"resize {dst}", image.resize, size)

    def _base_snapshot(self, src: _Ref) -> None:
        """``<image>@snap``, protected, made once (concurrent clones race here: both fine)."""
        with self._image(src) as image:
            names = {s["name"] for s in self._do(f"snapshots of {src}", lambda: list(image.list_snaps()))}
            if BASE_SNAP not in names:
                with contextlib.suppress(Conflict):
                    self._do(f"snapshot {src}@{BASE_SNAP}", image.create_snap, BASE_SNAP)

    def _protect(self, ref: _Ref) -> None:
        with self._image(_Ref(ref.pool, ref.image)) as image:
            if self._do(f"{ref}", image.is_protected_snap, ref.snap):
                return
            try:
                self._do(f"protect {ref}", image.protect_snap, ref.snap)
            except DriverError:
                if not self._do(f"{ref}", image.is_protected_snap, ref.snap):
                    raise

    def delete(self, name: str, *, snapshot: bool = False) -> None:
        """A volume with its snapshots (unprotected first), or one snapshot. Absent is fine.
        A name the trash knows (``one-tweaks trash``) is removed from the trash."""
        ref = self._ref(name)
        if ref.snap:
            self._remove_snap(ref)
            return
        try:
            self._remove_waiting(ref)
        except NotFound:
            entry = self._trash_entry(name)
            if entry is not None:
                _, rbd = _lib()
                self._do(f"trash entry {name}", rbd.RBD().trash_remove, self._io(ref.pool), entry["id"], force=True)

    def _remove_snap(self, ref: _Ref) -> None:
        try:
            part = self._group_part(ref)
        except NotFound:
            return
        if part is not None:
            self._remove_group_snap(ref, part)
            return
        try:
            with self._image(_Ref(ref.pool, ref.image)) as image:
                try:
                    if self._do(f"{ref}", image.is_protected_snap, ref.snap):
                        self._do(f"unprotect {ref}", image.unprotect_snap, ref.snap)
                except NotFound:
                    return
                with contextlib.suppress(NotFound):
                    self._do(f"snapshot {ref}", image.remove_snap, ref.snap)
                self._untag_snap(image, ref.snap)
        except NotFound:
            return

    def _remove_waiting(self, ref: _Ref) -> None:
        """Remove an image; one whose last user died while the cluster was unreachable (an
        interrupted import, a crashed host) stays watched until the OSDs time that client out
        (osd_client_watch_timeout, 30 s): wait that long before calling it in use."""
        deadline = time.monotonic() + LEFTOVER_WAIT
        while True:
            try:
                self._remove_image(ref)
                return
            except Busy:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)

    def _remove_image(self, ref: _Ref) -> None:
        _, rbd = _lib()
        try:
            with self._image(ref) as image:
                snaps = self._snap_list(image, str(ref))
                info = self._do(f"group of {ref}", image.group)
                if info.get("name") or any(snap["group"] for snap in snaps):
                    self._leave_groups(ref, snaps, info)
                    snaps = self._snap_list(image, str(ref))
                for snap in snaps:
                    if snap["group"]:
                        raise DriverError(f"cannot delete {ref}: it is still part of RBD group snapshot "
                                          f"{snap['name']}")
                    sref = _Ref(ref.pool, ref.image, snap["name"])
                    if self._do(f"{sref}", image.is_protected_snap, snap["name"]):
                        children = self._do(f"clones of {sref}", lambda s=snap: _children(image, s["name"]))
                        if children:
                            raise DriverError(f"cannot delete {ref}: its snapshot {snap['name']} has clones "
                                              f"({', '.join(children[:3])})")
                        self._do(f"unprotect {sref}", image.unprotect_snap, snap["name"])
                    self._do(f"snapshot {sref}", image.remove_snap, snap["name"])
        except NotFound:
            raise
        self._do(f"RBD image {ref}", rbd.RBD().remove, self._io(ref.pool), ref.image)

    def resize(self, name: str, size: int, *, shrink: bool = False) -> None:
        ref = self._ref(name)
        with self._image(ref) as image:
            current = self._do(f"{ref}", image.size)
            if size < current and not shrink:
                raise DriverError(f"{ref} is {current} bytes: not shrinking it to {size}")
            if size != current:
                self._do(f"resize {ref}", image.resize, size)

    def rename(self, name: str, new_name: str, *, snapshot: bool = False) -> None:
        _, rbd = _lib()
        src, dst = self._ref(name), self._ref(new_name)
        if src.snap or snapshot:
            with self._image(_Ref(src.pool, src.image)) as image:
                self._do(f"rename {src}", image.rename_snap, src.snap, dst.snap)
            return
        if src.pool != dst.pool:
            raise DriverError(f"cannot rename {src} into another pool ({dst.pool})")
        self._do(f"rename {src}", rbd.RBD().rename, self._io(src.pool), src.image, dst.image)

    def set_tags(self, name: str, tags: Mapping[str, str], *, snapshot: bool = False) -> None:
        ref = self._ref(name)
        self._tag(ref, tags)

    def _tag(self, ref: _Ref, tags: Mapping[str, str]) -> None:
        prefix = f"{SNAP_TAG}{ref.snap}." if ref.snap else TAG
        with self._image(_Ref(ref.pool, ref.image)) as image:
            for key, value in tags.items():
                if value:
                    self._do(f"tag {ref}", image.metadata_set, prefix + key, value)
                else:
                    with contextlib.suppress(NotFound, KeyError):
                        self._do(f"tag {ref}", image.metadata_remove, prefix + key)

    def _untag_snap(self, image: Any, snap: str) -> None:
        prefix = f"{SNAP_TAG}{snap}."
        for key, _ in list(self._do("tags", lambda: list(image.metadata_list()))):
            if key.startswith(prefix):
                with contextlib.suppress(DriverError, KeyError):
                    self._do("tag", image.metadata_remove, key)

    def _tags_of(self, image: Any) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
        """(image tags, snapshot -> tags) from the image's metadata (one call)."""
        own: dict[str, str] = {}
        snaps: dict[str, dict[str, str]] = {}
        for key, value in self._do("image metadata", lambda: list(image.metadata_list())):
            if key.startswith(SNAP_TAG):
                snap, _, tag = key[len(SNAP_TAG):].rpartition(".")
                snaps.setdefault(snap, {})[tag] = value
            elif key.startswith(TAG):
                own[key[len(TAG):]] = value
        return own, snaps

    def get(self, name: str) -> Volume | None:
        ref = self._ref(name)
        try:
            with self._image(_Ref(ref.pool, ref.image), read_only=True) as image:
                own, snap_tags = self._tags_of(image)
                if ref.snap:
                    for snap in self._snap_list(image, ref.volume):
                        if snap["name"] == ref.snap:
                            return Volume(name=name, size=int(snap["size"]), tags=snap_tags.get(ref.snap, {}),
                                          placement=ref.pool, snapshot=True, parent=ref.volume)
                    return None
                return Volume(name=ref.volume, size=int(self._do(f"{ref}", image.size)), tags=own,
                              placement=ref.pool, parent=self._parent(image))
        except NotFound:
            pass
        entry = self._trash_entry(name)
        return self._trash_volume(ref.pool, entry) if entry is not None else None

    def _parent(self, image: Any) -> str:
        try:
            pool, parent, snap = self._do("parent", image.parent_info)
        except NotFound:
            return ""
        except DriverError:
            return ""
        return f"{pool}/{parent}@{snap}"

    def find(self, prefix: str = "") -> list[Volume]:
        """Images and their snapshots whose ``pool/name`` starts with ``prefix`` (a prefix
        without a pool is one in POOL_NAME): one listing of the pool, then one open per match."""
        _, rbd = _lib()
        pool = prefix.split("/", 1)[0] if "/" in prefix else self.pool
        out: list[Volume] = []
        for image in self._do(f"images of pool {pool}", rbd.RBD().list, self._io(pool)):
            name = f"{pool}/{image}"
            if not self._matches(name, prefix):
                continue
            ref = _Ref(pool, image)
            try:
                with self._image(ref, read_only=True) as opened:
                    own, snap_tags = self._tags_of(opened)
                    out.append(Volume(name=name, size=int(self._do(f"{ref}", opened.size)), tags=own,
                                      placement=pool, parent=self._parent(opened)))
                    out += [Volume(name=f"{name}@{snap['name']}", size=int(snap["size"]),
                                   tags=snap_tags.get(snap["name"], {}), placement=pool, snapshot=True, parent=name)
                            for snap in self._snap_list(opened, name)]
            except NotFound:
                continue
        return out

    def _matches(self, name: str, prefix: str) -> bool:
        """``pool/name`` starts with ``prefix``; a prefix without a pool is one in POOL_NAME."""
        if "/" in prefix or "/" not in name:
            return name.startswith(prefix)
        pool, _, rest = name.partition("/")
        return pool == self.pool and rest.startswith(prefix)

    def _snap_list(self, image: Any, volume: str) -> list[dict[str, Any]]:
        """``image``'s snapshots (one call): its own, and its part of each RBD group snapshot
        (a VM snapshot), named after that group snapshot (``one.snap.<name>`` tags them both);
        ``group`` is then (pool id, group name). Trash and mirror snapshots are not ours."""
        out = []
        for snap in self._do(f"snapshots of {volume}", lambda: list(image.list_snaps())):
            namespace = snap.get("namespace", 0)
            if namespace == 0:
                out.append({**snap, "group": None})
            elif namespace == 1 and snap.get("group"):
                group = snap["group"]
                out.append({**snap, "name": group["snap_name"], "group": (int(group["pool"]), group["name"])})
        return out

    def snapshots(self, prefix: str = "") -> list[Volume]:
        """Snapshots of the image ``prefix`` names (``pool/image@...``); without ``@``, the
        snapshots of every image starting with it, and the trash entries (deleted disks)."""
        _, rbd = _lib()
        out: list[Volume] = []
        if "@" in prefix:
            volume = prefix.split("@", 1)[0]
            names = [volume]
        else:
            pool = prefix.split("/", 1)[0] if "/" in prefix else self.pool
            names = [f"{pool}/{i}" for i in self._do(f"images of pool {pool}", rbd.RBD().list, self._io(pool))
                     if self._matches(f"{pool}/{i}", prefix)]
            out += [v for v in self._trash(pool) if self._matches(v.name, prefix)]
        for volume in names:
            ref = self._ref(volume)
            try:
                with self._image(ref, read_only=True) as image:
                    _, snap_tags = self._tags_of(image)
                    for snap in self._snap_list(image, volume):
                        full = f"{volume}@{snap['name']}"
                        if self._matches(full, prefix):
                            out.append(Volume(name=full, size=int(snap["size"]), tags=snap_tags.get(snap["name"], {}),
                                              placement=ref.pool, snapshot=True, parent=volume))
            except NotFound:
                continue
        return out

    # --- the trash (deleted disks kept for DELAY_DELETE) -----------------------------------
    def _trash(self, pool: str) -> list[Volume]:
        _, rbd = _lib()
        out = []
        for entry in self._do(f"trash of pool {pool}", lambda: list(rbd.RBD().trash_list(self._io(pool)))):
            volume = self._trash_volume(pool, entry)
            if volume is not None:
                out.append(volume)
        return out

    def _trash_volume(self, pool: str, entry: Mapping[str, Any]) -> Volume | None:
        _, rbd = _lib()
        try:
            image = rbd.Image(self._io(pool), image_id=entry["id"], read_only=True)
        except Exception:
            return None
        try:
            own, _ = self._tags_of(image)
            size = int(image.size())
        finally:
            with contextlib.suppress(Exception):
                image.close()
        trash_name = own.pop("trash_name", "")
        if not trash_name:
            return None
        left = max(int(_epoch(entry.get("deferment_end_time")) - time.time()), 0)
        return Volume(name=trash_name, size=size, tags=own, placement=pool, snapshot=True, delete_after=left)

    def _trash_entry(self, name: str) -> dict[str, Any] | None:
        """The trash entry whose ``one.trash_name`` is ``name``."""
        _, rbd = _lib()
        if "-DELETED-" not in name:
            return None
        pool = self._ref(name).pool
        for entry in self._do(f"trash of pool {pool}", lambda: list(rbd.RBD().trash_list(self._io(pool)))):
            try:
                image = rbd.Image(self._io(pool), image_id=entry["id"], read_only=True)
            except Exception:
                continue
            try:
                if self._tags_of(image)[0].get("trash_name") == name:
                    return dict(entry)
            finally:
                with contextlib.suppress(Exception):
                    image.close()
        return None

    def purge_trash(self, pool: str) -> int:
        """Remove this driver's trash entries whose deferment is over; returns how many."""
        _, rbd = _lib()
        removed = 0
        now = time.time()
        for entry in self._do(f"trash of pool {pool}", lambda: list(rbd.RBD().trash_list(self._io(pool)))):
            if _epoch(entry.get("deferment_end_time")) <= now and self._trash_volume(pool, entry):
                with contextlib.suppress(DriverError):
                    self._do("trash purge", rbd.RBD().trash_remove, self._io(pool), entry["id"])
                    removed += 1
        return removed

    # --- snapshots -------------------------------------------------------------------------
    def snapshot(self, volume: str, name: str, *, tags: Mapping[str, str] | None = None,
                 delete_after: int = 0) -> None:
        """``name`` = ``volume@snap``. With ``delete_after`` (TM delete's trash): the volume
        itself is flattened and moved to the RBD trash for that long, named ``name`` there."""
        _, rbd = _lib()
        ref = self._ref(volume)
        if delete_after:
            self._leave_groups(ref)
            with self._image(ref) as image:
                if self._parent(image):
                    self._do(f"flatten {ref}", image.flatten)
                self._tag(ref, {**(tags or {}), "trash_name": name})
            self._do(f"trash {ref}", rbd.RBD().trash_move, self._io(ref.pool), ref.image, delay=delete_after)
            return
        snap = self._ref(name)
        if snap.volume != ref.volume or not snap.snap:
            raise DriverError(f"snapshot {name} is not named {ref.volume}@<snapshot>")
        # the tags first: a snapshot (atomic in RBD) that exists always carries them, even
        # when its creation's reply was lost (an OSD gone): a re-run recognises it as its own
        if tags:
            self._tag(snap, tags)
        with self._image(ref) as image:
            self._do(f"snapshot {snap}", image.create_snap, snap.snap)

    # --- VM snapshots: RBD group snapshots ----------------------------------------------------
    def group_snapshot(self, pairs: Sequence[tuple[str, str]], *, tags: Mapping[str, str] | None = None) -> None:
        """One RBD group snapshot of every ``(pool/image, pool/image@<name>)``: the group
        ``<nloc>-vm-<nvm>`` (a VM snapshot's tags; else ``<first image>.group``) in the first
        image's pool is made to hold exactly these images (an image of another group moves
        over; its snapshots there stay), then ``Group.create_snap(<name>)`` takes all of them
        at once (librbd quiesces and locks every image first: crash-consistent). Each image's
        part is listed as ``pool/image@<name>``. The tags are written first (a group snapshot
        that exists is tagged, even when its reply was lost); a failure removes the group
        snapshot, those tags and a group this call made: nothing half-made stays."""
        _, rbd = _lib()
        if not pairs:
            return
        refs = [self._ref(volume) for volume, _ in pairs]
        snaps = [self._ref(name) for _, name in pairs]
        names = {snap.snap for snap in snaps}
        if len(names) != 1 or "" in names or any(r.snap or s.volume != r.volume for r, s in zip(refs, snaps,
                                                                                                  strict=True)):
            raise DriverError("an RBD group snapshot is <pool>/<image>@<name> of every image, with one name for all")
        snap = names.pop()
        common = dict(tags or {})
        pool = refs[0].pool
        group_name = f"{common.get('nloc') or 'one'}-vm-{common['nvm']}" if common.get("nvm") else \
            f"{refs[0].image}.group"
        label = f"RBD group {pool}/{group_name}"
        group = rbd.Group(self._io(pool), group_name)
        created = attempted = False
        try:
            if common:
                for ref in refs:
                    self._tag(_Ref(ref.pool, ref.image, snap), common)
            try:
                self._do(label, rbd.RBD().group_create, self._io(pool), group_name)
                created = True
            except Conflict:
                if snap in {g["name"] for g in self._do(f"snapshots of {label}", lambda: list(group.list_snaps()))}:
                    raise Conflict(f"{label} already has a snapshot {snap}") from None
            self._group_members(group, label, refs)
            attempted = True
            self._do(f"group snapshot {pool}/{group_name}@{snap}", group.create_snap, snap)
        except BaseException:
            if attempted:
                with contextlib.suppress(DriverError):
                    self._do(f"group snapshot {pool}/{group_name}@{snap}", group.remove_snap, snap)
            for ref in refs:
                with contextlib.suppress(DriverError), self._image(ref) as image:
                    self._untag_snap(image, snap)
            if created:
                with contextlib.suppress(DriverError):
                    for member in self._do(label, lambda: list(group.list_images())):
                        self._do(label, group.remove_image, self._io(self._pool_name(member["pool"])), member["name"])
                    self._do(label, rbd.RBD().group_remove, self._io(pool), group_name)
            raise

    def _pool_name(self, pool_id: int) -> str:
        return str(self._do(f"pool {pool_id}", self._connect().pool_reverse_lookup, int(pool_id)))

    def _group_members(self, group: Any, label: str, refs: Sequence[_Ref]) -> None:
        """Make ``group`` hold exactly ``refs``' images (a group snapshot takes every member)."""
        _, rbd = _lib()
        wanted = {(ref.pool, ref.image) for ref in refs}
        current = {(self._pool_name(m["pool"]), m["name"]) for m in self._do(label, lambda: list(group.list_images()))}
        for pool, image in sorted(current - wanted):
            with contextlib.suppress(NotFound):
                self._do(f"{label}: leave {pool}/{image}", group.remove_image, self._io(pool), image)
        for ref in refs:
            if (ref.pool, ref.image) in current:
                continue
            with self._image(ref, read_only=True) as image:
                other = self._do(f"group of {ref}", image.group)
            if other.get("name"):
                old = rbd.Group(self._io(self._pool_name(other["pool"])), other["name"])
                with contextlib.suppress(NotFound):
                    self._do(f"{ref} leaves RBD group {other['name']}", old.remove_image, self._io(ref.pool), ref.image)
            self._do(f"{label}: add {ref}", group.add_image, self._io(ref.pool), ref.image)

    def _group_part(self, ref: _Ref) -> dict[str, Any] | None:
        """``ref``'s snapshot when it is the image's part of a group snapshot, else None."""
        with self._image(_Ref(ref.pool, ref.image), read_only=True) as image:
            for snap in self._snap_list(image, ref.volume):
                if snap["name"] == ref.snap:
                    return snap if snap["group"] else None
        return None

    def _remove_group_snap(self, ref: _Ref, part: Mapping[str, Any]) -> None:
        """The whole group snapshot ``ref`` is part of (RBD removes a group snapshot only as
        a whole); a group snapshot some part of which is gone already (librbd 16 then refuses
        it) loses this image's part alone. The tags of its current members go with it."""
        _, rbd = _lib()
        pool_id, group_name = part["group"]
        pool = self._pool_name(pool_id)
        label = f"RBD group {pool}/{group_name}"
        group = rbd.Group(self._io(pool), group_name)
        members = [ref]
        with contextlib.suppress(NotFound):
            members += [_Ref(self._pool_name(m["pool"]), m["name"])
                        for m in self._do(label, lambda: list(group.list_images()))]
        try:
            self._do(f"group snapshot {pool}/{group_name}@{ref.snap}", group.remove_snap, ref.snap)
        except NotFound:
            with self._image(_Ref(ref.pool, ref.image)) as image, contextlib.suppress(NotFound):
                self._do(f"snapshot {ref}", image.remove_snap_by_id, part["id"])
        for member in {(m.pool, m.image): m for m in members}.values():
            with contextlib.suppress(NotFound), self._image(member) as image:
                self._untag_snap(image, ref.snap)

    def _leave_groups(self, ref: _Ref, snaps: Sequence[Mapping[str, Any]] | None = None,
                      info: Mapping[str, Any] | None = None) -> None:
        """Before ``ref`` is removed or trashed (RBD refuses an image of a group): the group
        snapshots it is part of (VM snapshots) are removed whole, it leaves its group, and a
        group left empty goes. ``snaps`` and ``info``: the image's snapshots and group if known."""
        _, rbd = _lib()
        if snaps is None or info is None:
            with self._image(ref, read_only=True) as image:
                snaps = self._snap_list(image, ref.volume)
                info = self._do(f"group of {ref}", image.group)
        for part in [snap for snap in snaps if snap["group"]]:
            self._remove_group_snap(_Ref(ref.pool, ref.image, part["name"]), part)
        if not info.get("name"):
            return
        pool = self._pool_name(info["pool"])
        label = f"RBD group {pool}/{info['name']}"
        group = rbd.Group(self._io(pool), info["name"])
        with contextlib.suppress(NotFound):
            self._do(f"{label}: leave {ref}", group.remove_image, self._io(ref.pool), ref.image)
        self._dissolve(pool, info["name"])

    def _dissolve(self, pool: str, name: str) -> None:
        """RBD group ``pool/name`` once it has no snapshot: its images leave it and it goes.
        Such a group holds nothing but its member list, which the next VM snapshot makes
        anew (``_group_members``); left alone it would keep a persistent image that MVDS
        gave back to its datastore in the terminated VM's group (TM delete of the VM's other
        images removes the group snapshots whole, the image's part with them)."""
        _, rbd = _lib()
        label = f"RBD group {pool}/{name}"
        group = rbd.Group(self._io(pool), name)
        with contextlib.suppress(NotFound):
            if self._do(label, lambda: list(group.list_snaps())):
                return
            for member in self._do(label, lambda: list(group.list_images())):
                with contextlib.suppress(NotFound):
                    self._do(f"{label}: leave {self._pool_name(member['pool'])}/{member['name']}",
                             group.remove_image, self._io(self._pool_name(member["pool"])), member["name"])
            self._do(label, rbd.RBD().group_remove, self._io(pool), name)

    def vm_snapshot_revert(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Group snapshots whose parts are exactly these volumes: one group rollback each;
        any other snapshot (a disk detached since, a plain snapshot) per volume."""
        _, rbd = _lib()
        by_group: dict[tuple[int, str, str], list[tuple[str, str]]] = {}
        single: list[tuple[str, str]] = []
        for volume, snapshot in pairs:
            ref = self._ref(snapshot)
            part = self._group_part(ref)
            if part is None:
                single.append((volume, snapshot))
            else:
                by_group.setdefault((*part["group"], ref.snap), []).append((volume, snapshot))
        for (pool_id, group_name, snap), members in by_group.items():
            pool = self._pool_name(pool_id)
            if self._group_parts(members[0][0], snap) == {self._ref(v).volume for v, _ in members}:
                group = rbd.Group(self._io(pool), group_name)
                self._do(f"rollback RBD group {pool}/{group_name} to {snap}", group.rollback_to_snap, snap)
            else:
                single += members
        for volume, snapshot in single:
            self.revert(volume, snapshot)

    def _group_parts(self, volume: str, snap: str) -> set[str]:
        """The images of group snapshot ``snap`` (its ``members`` tag, written when it was
        taken; empty when unknown)."""
        with self._image(self._ref(volume), read_only=True) as image:
            _, snap_tags = self._tags_of(image)
        return {name for name in snap_tags.get(snap, {}).get("members", "").split(",") if name}

    def vm_snapshot(self, items: Sequence[tuple[str, str, Mapping[str, str]]], common: Mapping[str, str]) -> None:
        """The group snapshot, tagged with its members too (a revert rolls the group back in
        one call only when it still covers exactly them)."""
        members = ",".join(sorted(self._ref(volume).volume for volume, _, _ in items))
        super().vm_snapshot(items, {**common, "members": members})

    def vm_snapshot_retag(self, items: Sequence[tuple[str, str, Mapping[str, str]]],
                          common: Mapping[str, str]) -> None:
        members = ",".join(sorted(self._ref(volume).volume for volume, _, _ in items))
        super().vm_snapshot_retag(items, {**common, "members": members})

    def revert(self, volume: str, snapshot: str) -> None:
        """A snapshot of the image: rolled back. An image's part of a group snapshot: the
        group rolled back when the image is its only part, else its data copied back (RBD
        rolls back only whole groups)."""
        _, rbd = _lib()
        ref, snap = self._ref(volume), self._ref(snapshot)
        with self._image(ref) as image:
            found = {s["name"]: s for s in self._snap_list(image, str(ref))}
            if snap.snap not in found:
                raise NotFound(f"{ref} has no snapshot {snap.snap}")
            part = found[snap.snap]
            if not part["group"]:
                self._do(f"rollback {ref} to {snap.snap}", image.rollback_to_snap, snap.snap)
                return
        if self._group_parts(volume, snap.snap) == {ref.volume}:
            pool = self._pool_name(part["group"][0])
            group = rbd.Group(self._io(pool), part["group"][1])
            self._do(f"rollback RBD group {pool}/{part['group'][1]} to {snap.snap}", group.rollback_to_snap,
                     snap.snap)
            return
        self._copy_back(ref, part)

    def _copy_back(self, ref: _Ref, part: Mapping[str, Any]) -> None:
        """``ref``'s data made that of its snapshot ``part`` (by id: a group snapshot's part
        has no name RBD rolls back to), extent by extent; holes stay holes."""
        with self._image(ref, read_only=True) as source, self._image(ref) as target:
            self._do(f"snapshot {ref}@{part['name']}", source.set_snap_by_id, part["id"])
            size = int(self._do(f"{ref}@{part['name']}", source.size))
            if int(self._do(f"{ref}", target.size)) != size:
                self._do(f"resize {ref}", target.resize, size)
            offset = 0
            while offset < size:
                length = min(CHUNK, size - offset)
                data = self._do(f"read {ref}@{part['name']}", source.read, offset, length)
                if data.count(0) == len(data):
                    self._do(f"zero {ref}", target.write_zeroes, offset, length)
                else:
                    self._do(f"write {ref}", target.write, data, offset)
                offset += length
            self._do(f"flush {ref}", target.flush)


    def write_volume(self, name: str, path: str) -> None:
        """The local file ``path`` (the context ISO) at the start of image ``name`` through
        librbd, the rest of the image zeroed (a shorter ISO leaves nothing of the last one)."""
        ref = self._ref(name)
        with self._image(ref) as image, open(path, "rb") as fh:
            size = int(self._do(f"{ref}", image.size))
            offset = 0
            while chunk := fh.read(CHUNK):
                if offset + len(chunk) > size:
                    raise DriverError(f"{path} does not fit into RBD image {ref} ({size} bytes)")
                self._do(f"write {ref}", image.write, chunk, offset)
                offset += len(chunk)
            if offset < size:
                self._do(f"zero {ref}", image.write_zeroes, offset, size - offset)
            self._do(f"flush {ref}", image.flush)

    # --- UEFI NVRAM --------------------------------------------------------------------------
    def make_nvram(self, name: str, size: int, *, placement: str, tags: Mapping[str, str], host: HostRef,
                   shell: Any, template: str) -> str:
        """The VM's NVRAM image ``name``, made once: ``size`` bytes with the VARS ``template``
        (read on the host, the firmware qemu runs there) written through librbd at its end,
        where OVMF finds it on a larger flash. Made under ``.partial`` and renamed: an image
        of that name always holds the template or the guest's variables. An existing image
        keeps them (only one whose variable store is empty is filled); one that is not this
        VM's NVRAM (``tags["nvm"]``) is refused. Returns the ``rbd:`` target."""
        _, rbd = _lib()
        ref = self._ref(name)
        proc = shell.run(["cat", "--", template], check=False)
        if proc.returncode != 0:
            raise DriverError(f"NVRAM template {template} cannot be read on {host.name or 'the host'}")
        data: bytes = proc.stdout
        if not 0 < len(data) <= size:
            raise DriverError(f"NVRAM template {template} has an unexpected size ({len(data)} bytes)")
        try:
            self._absent(ref)
        except Conflict:
            found = self.get(name)
            if found is None or found.snapshot or found.tags.get("nvm") != tags.get("nvm"):
                raise DriverError(f"RBD image {ref} exists and is not VM {tags.get('nvm')}'s NVRAM") from None
            with self._image(ref) as image:
                offset = int(self._do(f"{ref}", image.size)) - len(data)
                if offset < 0:
                    raise DriverError(f"RBD image {ref} is smaller than the NVRAM template {template}") from None
                if not self._do(f"read {ref}", image.read, offset, len(data)).strip(b"\0"):
                    self._do(f"write {ref}", image.write, data, offset)
                    self._do(f"flush {ref}", image.flush)
            return self.target(name)
        with self._staged(ref) as part:
            self._do(f"RBD image {ref}", rbd.RBD().create, self._io(ref.pool), part.image, size, **self._create_args())
            self._tag(part, tags)
            with self._image(part) as image:
                self._do(f"write {ref}", image.write, data, size - len(data))
                self._do(f"flush {ref}", image.flush)
        return self.target(name)

    # --- hosts: none (network disks) -------------------------------------------------------
    def target(self, name: str) -> str:
        """The ``rbd:`` target qemu-img opens on the front-end (no secret on the command
        line: the key stays in CEPH_KEY / the keyring CEPH_CONF names)."""
        ref = self._ref(name)
        parts = [f"rbd:{ref}"]
        if self.user:
            parts.append(f"id={self.user}")
        if self.conf:
            parts.append(f"conf={self.conf}")
        if self.keyfile:
            parts.append(f"keyfile={self.keyfile}")
        for option in ("rados_osd_op_timeout", "rados_mon_op_timeout", "client_mount_timeout"):
            parts.append(f"{option}={self.timeout}")
        parts += [f"{key}={value}" for key, value in QUIET.items() if value]
        return ":".join(parts)

    def attach(self, name: str, host: HostRef, *, readonly: bool = False, snapshot: bool = False) -> str:
        """The ``rbd:`` target of ``name``. A snapshot that is an image's part of a group
        snapshot (a backup, a VM snapshot) lives in the group's namespace, which qemu cannot
        open by name: it is read through a copy ``<image>.<snapshot>.read`` made here (librbd
        copy of that snapshot) and removed by ``detach``."""
        ref = self._ref(name)
        if snapshot and ref.snap:
            part = self._group_part(ref)
            if part is not None:
                return self.target(self._readable_copy(ref, part))
        return self.target(name)

    def _readable_copy(self, ref: _Ref, part: Mapping[str, Any]) -> str:
        copy = _Ref(ref.pool, f"{ref.image}.{ref.snap}.read")
        with contextlib.suppress(NotFound):
            self._remove_waiting(copy)        # an interrupted run's leftover
        _, rbd = _lib()
        with self._staged(copy) as staged, self._image(_Ref(ref.pool, ref.image), read_only=True) as image:
            self._do(f"{ref}", image.set_snap_by_id, part["id"])
            size = int(self._do(f"{ref}", image.size))
            self._do(f"RBD image {copy}", rbd.RBD().create, self._io(staged.pool), staged.image, size,
                     **self._create_args())
            # read, not librbd's copy: a clone's copy at a group snapshot comes out without
            # its parent's data (librbd 16); reads go through the parent as qemu's do
            with self._image(staged) as out:
                for offset in range(0, size, CHUNK):
                    data = self._do(f"read {ref}", image.read, offset, min(CHUNK, size - offset))
                    if data.count(0) != len(data):
                        self._do(f"write {copy}", out.write, data, offset)
                self._do(f"flush {copy}", out.flush)
        return copy.volume

    def detach(self, name: str, host: HostRef | None, *, force: bool = False, snapshot: bool = False) -> None:
        """Nothing is attached anywhere; a group snapshot part's read copy (``attach``) goes.
        An image (TM mvds of a persistent image, mv, delete) whose group has no snapshot left
        leaves it, and the group goes (``_dissolve``)."""
        ref = self._ref(name)
        if snapshot and ref.snap:
            with contextlib.suppress(NotFound):
                self._remove_waiting(_Ref(ref.pool, f"{ref.image}.{ref.snap}.read"))
        elif not ref.snap:
            info: Mapping[str, Any] = {}
            with contextlib.suppress(NotFound), self._image(ref, read_only=True) as image:
                info = self._do(f"group of {ref}", image.group)
            if info.get("name"):
                self._dissolve(self._pool_name(info["pool"]), info["name"])

    def attach_many(self, items: Sequence[tuple[str, bool]], host: HostRef) -> dict[str, str]:
        return {name: self.target(name) for name, _ in items}

    def detach_many(self, names: Sequence[str], host: HostRef | None, *, force: bool = False) -> None:
        """Nothing is attached anywhere."""

    def device_path(self, name: str, host: HostRef) -> str:
        return self.target(name)

    # --- streams (checkpoints: the host's file <-> an image, through the front-end) ----------
    def write_stream(self, name: str, size: int, stream: IO[bytes], *, placement: str,
                     tags: Mapping[str, str]) -> None:
        """A new image ``name`` holding the ``size`` bytes read from ``stream`` (staged: an
        image of that name is complete or absent)."""
        _, rbd = _lib()
        ref = self._ref(name)
        self._absent(ref)
        with self._staged(ref) as part:
            self._do(f"RBD image {ref}", rbd.RBD().create, self._io(ref.pool), part.image, max(size, 1),
                     **self._create_args())
            self._tag(part, tags)
            with self._image(part) as image:
                offset = 0
                while chunk := stream.read(CHUNK):
                    if offset + len(chunk) > size:
                        raise DriverError(f"{ref}: more than the announced {size} bytes arrived")
                    self._do(f"write {ref}", image.write, chunk, offset)
                    offset += len(chunk)
                if offset != size:
                    raise DriverError(f"{ref}: {offset} of {size} bytes arrived")
                self._do(f"flush {ref}", image.flush)

    def read_stream(self, name: str, out: IO[bytes]) -> int:
        """Write image ``name``'s bytes to ``out``; returns how many."""
        ref = self._ref(name)
        with self._image(ref, read_only=True) as image:
            size = int(self._do(f"{ref}", image.size))
            offset = 0
            while offset < size:
                data = self._do(f"read {ref}", image.read, offset, min(CHUNK, size - offset))
                out.write(data)
                offset += len(data)
        return size

    # --- accounting ------------------------------------------------------------------------
    def usage(self, names: Iterable[str] | None = None) -> dict[str, Usage]:
        """Provisioned and used bytes (object-map/fast-diff: one diff per image and snapshot).
        Without ``names``: every image of the pool and its snapshots, a snapshot's used bytes
        being what changed since the snapshot before it (as ``rbd du`` counts)."""
        everything = names is None
        wanted = list(names) if names is not None else [v.name for v in self.find(f"{self.pool}/") if not v.snapshot]
        out: dict[str, Usage] = {}
        for name in wanted:
            ref = self._ref(name)
            try:
                with self._image(_Ref(ref.pool, ref.image), read_only=True) as image:
                    snaps = ([s["name"] for s in self._do(f"snapshots of {ref}", lambda i=image: list(i.list_snaps()))]
                             if everything else [])
                    previous = None
                    for snap in snaps:
                        full = f"{ref.volume}@{snap}"
                        image.set_snap(snap)
                        try:
                            out[full] = self._used(image, full, previous)
                        finally:
                            image.set_snap(None)
                        previous = snap
                    if ref.snap:
                        image.set_snap(ref.snap)
                    out[str(ref)] = self._used(image, str(ref), None)
            except NotFound:
                continue
        return out

    def _used(self, image: Any, name: str, since: str | None) -> Usage:
        size = int(self._do(name, image.size))
        used = [0]

        def count(offset: int, length: int, exists: bool, used: list[int] = used) -> int:
            if exists:
                used[0] += length
            return 0

        self._do(f"usage of {name}", image.diff_iterate, 0, size, since, count, whole_object=True)
        return Usage(name, size, used[0])

    def capacity(self, placement: str) -> Capacity:
        """The pool's stored bytes and what it can still take (``ceph df detail``: MAX AVAIL,
        capped by the pool's byte quota), one monitor command."""
        pool = placement or self.pool
        if self.delayed_delete:
            # deleted disks whose DELAY_DELETE is over go now (oned monitors every few minutes)
            self.purge_trash(pool)
        stats = self._pool_stats(pool)
        stored = int(stats.get("stored") or stats.get("bytes_used") or 0)
        free = int(stats.get("max_avail") or 0)
        quota = int(stats.get("quota_bytes") or 0)
        if quota:
            free = max(min(free, quota - stored), 0)
        return Capacity(total=stored + free, free=free, used=stored)

    def _pool_stats(self, pool: str) -> dict[str, Any]:
        cluster = self._connect()
        cmd = json.dumps({"prefix": "df", "detail": "detail", "format": "json"})
        ret, out, err = self._do("ceph df", cluster.mon_command, cmd, b"", timeout=self.timeout)
        if ret != 0:
            raise DriverError(f"ceph df failed: {err or ret}")
        for entry in json.loads(out).get("pools", []):
            if entry.get("name") == pool:
                stats: dict[str, Any] = entry.get("stats", {})
                return stats
        raise DriverError(f"Ceph pool {pool!r} does not exist (POOL_NAME)")

    def ping(self, pool: str) -> None:
        """The doctor's check: connect as the datastore's user and open its pool."""
        _, rbd = _lib()
        self._do(f"images of pool {pool}", rbd.RBD().list, self._io(pool))


def _children(image: Any, snap: str) -> list[str]:
    """Clones of ``snap`` (also those in the trash), as pool/image."""
    image.set_snap(snap)
    try:
        found = list(image.list_children2())
    finally:
        image.set_snap(None)
    return [f"{c.get('pool', '')}/{c.get('image', '')}" for c in found]


def _epoch(value: Any) -> float:
    """A trash entry's time (librbd gives a naive datetime in local time) as Unix time."""
    return float(value.timestamp()) if hasattr(value, "timestamp") else 0.0


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


BACKEND = Rbd
