"""The LINSTOR backend (driver ``linstor_un``): addon-linstor_un's behaviour through LINSTOR's
own Python client, ``python-linstor``.

Connection: one ``MultiLinstor`` client per action (the backend object lives for one action),
connected on first use to the first controller of LS_CONTROLLERS (comma separated,
``host[:port]`` or ``linstor://``/``linstor+ssl://`` URIs; without it, as the ``linstor`` client
does: $LS_CONTROLLERS, then ``controllers`` of linstor-client.conf, then ``localhost``) that answers;
a read that loses its connection reconnects (again trying the list in order) and is sent once
more; a change whose reply is lost is reported as a transient failure (the action's re-run
finds what it made). TLS: LS_CERTFILE/LS_KEYFILE (client certificate) and LS_CAFILE (the CA
that signed the controller's certificate; addon-linstor_un passed it as a second
``--certfile``, a bug not copied); with any of them a URI without a scheme is ``linstor+ssl``.

Names: resources are the driver's names (``datastore.naming.LinstorNames``); a snapshot is
named ``<resource>@<snapshot>`` here, since LINSTOR snapshot names are per resource.
Metadata ("tags") are resource-definition (snapshot-definition) properties ``Aux/one/<key>``,
with addon-linstor_un's keys for the VM, disk and system datastore (``nvm`` <->
``Aux/one/VM_ID``, ``diskid`` <-> ``Aux/one/DISK_ID``, ``dsid`` <-> ``Aux/one/DS_ID``).

Placement (the datastore's attributes, addon-linstor_un's ``linstor_load_keys``):

- RESOURCE_GROUP: the resource definition joins that group (``placement`` is its name) and is
  auto-placed by the group's filter, with the datastore's own filter attributes on top;
- otherwise: a resource definition (LAYER_LIST) and a volume definition (ENCRYPTION=yes:
  encrypted), then a diskful resource on every NODE_LIST node (in the first STORAGE_POOL pool
  the node has), then auto-placement up to REPLICA_COUNT (AUTO_PLACE is the older name; both
  work) with STORAGE_POOL, PROVIDERS, REPLICAS_ON_SAME, REPLICAS_ON_DIFFERENT,
  DO_NOT_PLACE_WITH, DO_NOT_PLACE_WITH_REGEX and LAYER_LIST. The checkpoint volume (tag
  type=CHKPNT) uses CHECKPOINT_REPLICA_COUNT / CHECKPOINT_AUTO_PLACE instead when set.
  Either RESOURCE_GROUP, or (NODE_LIST or REPLICA_COUNT) plus STORAGE_POOL, is required.

Hosts: a host's LINSTOR node is its OpenNebula name (host attribute LS_NODE overrides; the
front-end is LS_FRONTEND_NODE, default this machine's hostname). Attaching makes the
resource available on the node: a diskless resource in DISKLESS_POOL (default
DfltDisklessStorPool) unless the node holds a replica already; PREFER_NODE=yes asks for a
diskful replica there first (an extra local replica; diskless when the node has no room).
The device is ``<device root>/<resource>/0``: the root is the host's LS_DEVICE_DIR, else the
configuration's, else ``/dev/drbd/by-res``. Detaching removes only the node's diskless
resource, never a diskful replica or a tie-breaker.

LINSTOR semantics this backend keeps:

- no renames (``can_rename`` is False: imports are written into the image's own resource,
  see ``datastore.imageds``) and no self-expiring snapshots (``delayed_delete`` is False: TM
  delete removes disks at once, as addon-linstor_un does);
- a resource is made in several calls (definition, properties, volume, placement, data):
  it carries ``Aux/one/incomplete=1`` until it is complete, and a re-run (under the same
  per-volume lock) deletes such a leftover and makes it again; a complete resource of the
  name is a Conflict, as on StorPool;
- rollback only to the latest snapshot: an older one is restored into a temporary resource
  ``<res>-revert`` whose data is copied over the volume on the bridge host, then deleted;
- CLONE_MODE=copy (the default): a new resource placed by the datastore, the data copied on
  the bridge host; CLONE_MODE=snapshot: a snapshot of the source named after the clone,
  restored into the clone (on the snapshot's nodes) and kept until the clone is deleted, as
  addon-linstor_un does; a pool without snapshot support falls back to copying;
- a snapshot is read through a temporary resource restored from it (``<res>-<snapshot>``),
  deleted on detach;
- a disk snapshot ``snapshot-<N>`` is recorded as addon-linstor_un does, in the resource
  definition's ``Aux/one/SNAPSHOT_<N>/DISK_SIZE`` (KiB allocated when it was taken), removed
  with the snapshot;
- deleting a resource deletes its snapshots (LINSTOR refuses otherwise) and the snapshot
  of its clone source, if any;
- live migration: ``dual_primary`` sets DrbdOptions/Net/allow-two-primaries=yes on the
  VM's resources for the move and removes it afterwards.

Data copies run on the bridge host (``mover``, set by the Driver): both resources are made
available there, ``dd`` copies, and what was made available only for the copy is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import linstor  # type: ignore[import-untyped]
from linstor import sharedconsts as consts

from onelib import numbers
from onelib.config import SANE_MAX, Config
from onelib.errors import Conflict, DriverError, NotFound, Transient
from tweaks.record import field, record

from ..backend import Attribute, Backend, Capacity, HostRef, Problem, Usage, Volume
from ..naming import TYPE_CHECKPOINT, Names

if TYPE_CHECKING:
    import ssl

    from lxml import etree

KiB = 1024
DEFAULT_DISKLESS_POOL = "DfltDisklessStorPool"
DEFAULT_DEVICE_DIR = "/dev/drbd/by-res"
TWO_PRIMARIES = "DrbdOptions/Net/allow-two-primaries"
AUX = "Aux/one/"
INCOMPLETE = "incomplete"  # tag of a resource still being made (datastore.imageds uses the same)
# tag <-> property key (addon-linstor_un's property names where it has one)
TAG_KEYS = {"nvm": "VM_ID", "diskid": "DISK_ID", "dsid": "DS_ID"}
PROP_KEYS = {v: k for k, v in TAG_KEYS.items()}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{1,47}")
_TAG_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TRUE = ("1", "yes", "y", "true", "on")
MASK_ERROR = 0xC000000000000000
MASK_CODE = 0x7FFF
NOT_SUPPORTED = int(consts.FAIL_SNAPSHOTS_NOT_SUPPORTED) & MASK_CODE

# wait (udev) for both devices, then copy all of the first onto the second
_COPY = ('i=0; while [ ! -b "$1" ] || [ ! -b "$2" ]; do i=$((i+1)); '
         'if [ "$i" -gt 100 ]; then echo "device $1 or $2 did not appear" >&2; exit 3; fi; sleep 0.1; done; '
         'exec dd if="$1" of="$2" bs=4M iflag=direct oflag=direct conv=fsync status=none')

T = TypeVar("T")
DOCTOR_TIMEOUT = 5.0
CONTROLLER_PORTS = {"linstor": 3370, "http": 3370, "linstor+ssl": 3371, "https": 3371}
_TLS_SETTINGS = ("LS_CERTFILE", "LS_KEYFILE", "LS_CAFILE")

_VMSNAPSHOT = re.compile(r"([A-Za-z_][A-Za-z0-9_-]{1,47})@vmsnapshot-([0-9]{1,9})-([0-9]{1,12})")

_BY_RES = re.compile(r"/dev/drbd/by-res/([A-Za-z_][A-Za-z0-9_-]{1,47})/0")


@record
class LinstorNames(Names):
    """addon-linstor_un's resource names (``one-image-7``, ``one-vm-42-disk-0``,
    ``one-vm-42-checkpoint``; snapshots ``snapshot-<ID>``) with ONE_PX as the leading
    ``one``, and names in the same style for what that add-on lacks: the UEFI NVRAM volume
    ``one-vm-<VM>-nvram``, VM snapshots ``vmsnapshot-<ID>-<time>``, backups
    ``backup-<time>``, marketplace exports ``export-<APP>``.

    Non-persistent image clones, volatile disks (swap too) and the context CD-ROM are all
    ``one-vm-<VM>-disk-<N>`` (disk ids are unique within a VM). LINSTOR snapshots belong to
    a resource, so a snapshot's name here is ``<resource>@<snapshot>`` (the Linstor backend
    splits it). An image's SOURCE is its DRBD device path ``/dev/drbd/by-res/<res>/0``.

    Tags (``tags()``) carry the system datastore (``dsid`` = ``Aux/one/DS_ID``) of every VM
    disk resource, and a persistent image in use by a VM carries its VM_ID, DS_ID and DISK_ID,
    as addon-linstor_un sets them (TM ln) and clears them (TM mvds).
    """

    ds_tag: ClassVar[bool] = True

    def template(self, ds_id: int) -> str:
        return f"{self.px}-ds-{ds_id}"

    def image(self, image_id: int) -> str:
        return f"{self.px}-image-{image_id}"

    def staging(self, image_id: int, digest: str) -> str:
        """addon-linstor_un's temporaries are ``<res>-tmp``; imports here are written into the
        image's own resource (LINSTOR cannot rename), so this name only ever holds a leftover."""
        return f"{self.px}-image-{image_id}-tmp"

    def clone(self, image_id: int, vm_id: int, disk_id: int) -> str:
        return f"{self.px}-vm-{vm_id}-disk-{disk_id}"

    def volatile(self, vm_id: int, disk_id: int, swap: bool = False) -> str:
        return f"{self.px}-vm-{vm_id}-disk-{disk_id}"

    def context(self, vm_id: int, disk_id: int) -> str:
        return f"{self.px}-vm-{vm_id}-disk-{disk_id}"

    def checkpoint(self, vm_id: int) -> str:
        return f"{self.px}-vm-{vm_id}-checkpoint"

    def nvram(self, vm_id: int) -> str:
        return f"{self.px}-vm-{vm_id}-nvram"

    def vm_prefix(self, vm_id: int) -> str:
        return f"{self.px}-vm-{vm_id}-"

    @staticmethod
    def disk_snapshot(volume: str, snap_id: int) -> str:
        return f"{volume}@snapshot-{snap_id}"

    @staticmethod
    def vm_snapshot(volume: str, snap_id: int, timestamp: int) -> str:
        return f"{volume}@vmsnapshot-{snap_id}-{timestamp}"

    @staticmethod
    def backup_snapshot(volume: str, timestamp: int) -> str:
        return f"{volume}@backup-{timestamp}"

    @staticmethod
    def export_snapshot(volume: str, app_id: int) -> str:
        return f"{volume}@export-{app_id}"

    @staticmethod
    def split_vm_snapshot(name: str) -> tuple[str, int, int] | None:
        match = _VMSNAPSHOT.fullmatch(name)
        return (match.group(1), int(match.group(2)), int(match.group(3))) if match else None

    @staticmethod
    def disk_snapshot_prefix(volume: str) -> str:
        return f"{volume}@snapshot-"

    @staticmethod
    def disk_snapshot_id(volume: str, name: str) -> int | None:
        match = re.fullmatch(re.escape(volume) + r"@snapshot-([0-9]{1,10})", name)
        return int(match.group(1)) if match else None

    @staticmethod
    def split_disk_snapshot(name: str) -> tuple[str, int] | None:
        match = re.fullmatch(r"(.+)@snapshot-([0-9]{1,10})", name)
        return (match.group(1), int(match.group(2))) if match else None

    def disk_owner(self, volume: str) -> tuple[int, int] | None:
        match = re.fullmatch(rf"{re.escape(self.px)}-vm-([0-9]{{1,10}})-disk-([0-9]{{1,10}})", volume)
        return (int(match.group(1)), int(match.group(2))) if match else None

    @staticmethod
    def source(volume: str) -> str:
        return f"/dev/drbd/by-res/{volume}/0"

    @staticmethod
    def source_volume(source: str) -> str:
        """``/dev/drbd/by-res/<res>/0`` (or a bare resource name) -> ``<res>``; "" otherwise."""
        match = _BY_RES.fullmatch(source)
        if match:
            return match.group(1)
        return source if _NAME.fullmatch(source) else ""


def _words(raw: str) -> list[str]:
    """A list attribute: space and/or comma separated."""
    return [w for w in re.split(r"[\s,]+", raw.strip()) if w]


def _count(config: Config, *names: str) -> int | None:
    for name in names:
        raw = config.get(name).strip()
        if raw:
            return numbers.whole(raw, f"{name}=", minimum=1, maximum=SANE_MAX, unit="a number of replicas")
    return None


def _kib(size: int) -> int:
    return max(1, -(-size // KiB))


def check_name(name: str, what: str = "resource") -> str:
    if not _NAME.fullmatch(name):
        raise DriverError(f"{name!r} is not an acceptable LINSTOR {what} name")
    return name


def split_snapshot(name: str) -> tuple[str, str]:
    """``<resource>@<snapshot>`` -> (resource, snapshot)."""
    resource, at, snapshot = name.partition("@")
    if not at:
        raise DriverError(f"{name!r} is not a LINSTOR snapshot name (<resource>@<snapshot>)")
    return check_name(resource), check_name(snapshot, "snapshot")


def tags_to_props(tags: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """(properties to set, properties to delete: empty values)."""
    props: dict[str, str] = {}
    gone: list[str] = []
    for key, value in tags.items():
        if not _TAG_KEY.fullmatch(key):
            raise DriverError(f"tag {key!r} is not an acceptable property name")
        prop = AUX + TAG_KEYS.get(key, key)
        if value == "":
            gone.append(prop)
        else:
            props[prop] = str(value)
    return props, gone


def props_to_tags(props: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in (props or {}).items():
        if key.startswith(AUX) and "/" not in key[len(AUX):]:
            short = key[len(AUX):]
            out[PROP_KEYS.get(short, short)] = str(value)
    return out


@record
class Placement:
    """The datastore's placement attributes (see the module doc)."""

    resource_group: str = ""
    nodes: list[str] = field(default_factory=list)
    pools: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)
    same: list[str] = field(default_factory=list)
    different: list[str] = field(default_factory=list)
    replicas: int | None = None
    checkpoint_replicas: int | None = None
    not_with: list[str] = field(default_factory=list)
    not_with_regex: str = ""
    diskless_pool: str = DEFAULT_DISKLESS_POOL
    encrypt: bool = False
    prefer_node: bool = False
    clone_mode: str = "copy"

    @classmethod
    def from_config(cls, config: Config) -> Placement:
        mode = (config.get("CLONE_MODE").strip().lower() or "copy")
        if mode not in ("copy", "snapshot"):
            raise DriverError(f"CLONE_MODE={config.get('CLONE_MODE')!r}: copy or snapshot")
        return cls(
            resource_group=config.get("RESOURCE_GROUP").strip(), nodes=_words(config.get("NODE_LIST")),
            pools=_words(config.get("STORAGE_POOL")), layers=_words(config.get("LAYER_LIST")),
            providers=_words(config.get("PROVIDERS")), same=_words(config.get("REPLICAS_ON_SAME")),
            different=_words(config.get("REPLICAS_ON_DIFFERENT")),
            replicas=_count(config, "REPLICA_COUNT", "AUTO_PLACE"),
            checkpoint_replicas=_count(config, "CHECKPOINT_REPLICA_COUNT", "CHECKPOINT_AUTO_PLACE"),
            not_with=_words(config.get("DO_NOT_PLACE_WITH")),
            not_with_regex=config.get("DO_NOT_PLACE_WITH_REGEX").strip(),
            diskless_pool=config.get("DISKLESS_POOL").strip() or DEFAULT_DISKLESS_POOL,
            encrypt=config.get("ENCRYPTION").strip().lower() in _TRUE,
            prefer_node=config.get("PREFER_NODE").strip().lower() in _TRUE,
            clone_mode=mode,
        )

    def check(self, placement: str) -> None:
        if placement or self.resource_group:
            return
        if not self.pools or not (self.nodes or self.replicas):
            raise DriverError("the datastore needs RESOURCE_GROUP, or NODE_LIST or REPLICA_COUNT (AUTO_PLACE) "
                              "with STORAGE_POOL")

    def select_filter(self) -> dict[str, Any]:
        """python-linstor's keyword arguments of an auto-placement (only what is set)."""
        out: dict[str, Any] = {}
        if self.pools:
            out["storage_pool"] = list(self.pools)
        if self.not_with:
            out["do_not_place_with"] = list(self.not_with)
        if self.not_with_regex:
            out["do_not_place_with_regex"] = self.not_with_regex
        if self.same:
            out["replicas_on_same"] = list(self.same)
        if self.different:
            out["replicas_on_different"] = list(self.different)
        if self.layers:
            out["layer_list"] = list(self.layers)
        if self.providers:
            out["provider_list"] = list(self.providers)
        return out


class Linstor(Backend):
    driver = "linstor_un"
    name = "linstor"
    scheme = LinstorNames
    # addon-linstor_un's datastore attributes (linstor_load_keys) and our LS_* connection settings
    attributes = (
        Attribute("LS_CONTROLLERS", kind="words", doc="controllers, the first that answers is used"),
        Attribute("LS_CERTFILE", kind="path", doc="TLS client certificate"),
        Attribute("LS_KEYFILE", kind="path", doc="TLS client key"),
        Attribute("LS_CAFILE", kind="path", doc="CA of the controllers' certificates"),
        Attribute("LS_FRONTEND_NODE", doc="the front-end's LINSTOR node name (default: its hostname)"),
        Attribute("LS_DEVICE_DIR", DEFAULT_DEVICE_DIR, kind="path", doc="where resources' devices appear"),
        Attribute("RESOURCE_GROUP", doc="resource group new resources join"),
        Attribute("NODE_LIST", kind="words", doc="a diskful replica on each of these nodes"),
        Attribute("REPLICA_COUNT", kind="int", doc="auto-placed diskful replicas"),
        Attribute("AUTO_PLACE", kind="int", doc="older name of REPLICA_COUNT"),
        Attribute("CHECKPOINT_REPLICA_COUNT", kind="int", doc="replicas of checkpoint volumes"),
        Attribute("CHECKPOINT_AUTO_PLACE", kind="int", doc="older name of CHECKPOINT_REPLICA_COUNT"),
        Attribute("STORAGE_POOL", kind="words", doc="pools replicas go to"),
        Attribute("DISKLESS_POOL", DEFAULT_DISKLESS_POOL, doc="pool of diskless attachments"),
        Attribute("LAYER_LIST", kind="words", doc="layers of new resources"),
        Attribute("PROVIDERS", kind="words", doc="provider kinds auto-placement may use"),
        Attribute("REPLICAS_ON_SAME", kind="words", doc="node properties replicas share"),
        Attribute("REPLICAS_ON_DIFFERENT", kind="words", doc="node properties replicas must not share"),
        Attribute("DO_NOT_PLACE_WITH", kind="words", doc="resources to keep away from"),
        Attribute("DO_NOT_PLACE_WITH_REGEX", doc="resources to keep away from (regular expression)"),
        Attribute("ENCRYPTION", kind="bool", doc="encrypted volume definitions"),
        Attribute("PREFER_NODE", kind="bool", doc="a diskful replica on the host a disk is attached to"),
        Attribute("CLONE_MODE", "copy", doc="copy or snapshot"),
        Attribute("IMPORT_TIMEOUT", "86400", kind="int", doc="seconds a data copy may take"),
    )
    attribute_prefixes = ("LS_",)
    # addon-linstor_un's README
    tm_mad_conf = (("LN_TARGET", "NONE"), ("CLONE_TARGET", "SELF"), ("SHARED", "YES"))
    ds_mad_conf = (("PERSISTENT_ONLY", "NO"),)
    vmm_aliases: ClassVar[dict[str, str]] = {"save_linstor_un": "save", "restore_linstor_un": "restore"}
    can_rename = False
    delayed_delete = False

    def __init__(self, controllers: Sequence[str], placement: Placement, *, timeout: float = 30,
                 certfile: str = "", keyfile: str = "", cafile: str = "", copy_timeout: float = 86400) -> None:
        self.controllers = list(controllers)
        self.settings = placement
        self.timeout = timeout
        self.certfile, self.keyfile, self.cafile = certfile, keyfile, cafile
        self.copy_timeout = copy_timeout
        self._client: Any = None

    @classmethod
    def from_config(cls, config: Config) -> Linstor:
        certfile, keyfile, cafile = (config.get(k).strip() for k in ("LS_CERTFILE", "LS_KEYFILE", "LS_CAFILE"))
        scheme = "linstor+ssl://" if (certfile or keyfile or cafile) else "linstor://"
        raw = _words(config.get("LS_CONTROLLERS"))
        if not raw:  # as the linstor client: $LS_CONTROLLERS, linstor-client.conf, localhost
            raw = list(linstor.Config.get_controllers())
        controllers = [c if "://" in c else scheme + c for c in raw]
        return cls(controllers, Placement.from_config(config),
                   timeout=float(config.integer("API_TIMEOUT") or 30), certfile=certfile, keyfile=keyfile,
                   cafile=cafile, copy_timeout=float(config.integer("IMPORT_TIMEOUT") or 86400))

    @classmethod
    def doctor(cls, config: Config, datastores: Callable[[], Sequence[etree._Element]], problem: Problem) -> None:
        """For each linstor_un datastore: does a controller of its LS_CONTROLLERS answer? The
        drivers take the first that does, so one line per datastore none of whose controllers
        answers, and one per datastore with some unreachable (failover then has fewer left)."""
        from onelib import xmldoc

        conf_path = os.environ.get("ONE_TWEAKS_CONF") or "/etc/one/one-tweaks.conf"
        try:
            found = datastores()
        except DriverError as exc:
            problem(f"api: cannot list the linstor_un datastores ({exc}): check ONE_XMLRPC/ONE_AUTH for this user; "
                    "--offline skips this check")
            return
        super().doctor(config, datastores, problem)
        probed: dict[tuple[str, ...], str] = {}  # (controller, TLS files) -> "" or why it does not answer
        for ds in found:
            label = f"datastore {xmldoc.text(ds, 'ID')} ({xmldoc.text(ds, 'NAME')})"
            cfg = cls.configure(config, xmldoc.template_attrs(ds.find("TEMPLATE")))
            tls = tuple(cfg.get(k).strip() for k in _TLS_SETTINGS)
            raw = cfg.get("LS_CONTROLLERS").strip() or os.environ.get("LS_CONTROLLERS", "").strip() or "localhost"
            controllers = [c for c in re.split(r"[\s,]+", raw) if c]
            for c in controllers:
                if (c, *tls) not in probed:
                    probed[(c, *tls)] = _probe_controller(c, tls)
            errors = {c: probed[(c, *tls)] for c in controllers if probed[(c, *tls)]}
            where = f"LS_CONTROLLERS of its template or {conf_path}"
            if len(errors) == len(controllers):
                detail = "; ".join(f"{c}: {e}" for c, e in errors.items())
                problem(f"api: no LINSTOR controller of {label} answers ({detail}): every linstor_un action on it "
                        f"fails; check {where} (and LS_CERTFILE/LS_KEYFILE/LS_CAFILE for TLS) and that this "
                        "front-end can reach the controller; --offline skips this check")
            elif errors:
                detail = "; ".join(f"{c}: {e}" for c, e in errors.items())
                problem(f"api: LINSTOR controller(s) of {label} unreachable ({detail}): the drivers fail over to "
                        f"the others, but fix or remove them in {where}")

    @classmethod
    def host_ref(cls, name: str, attrs: Mapping[str, str], config: Config) -> HostRef:
        node = attrs.get("LS_NODE", "").strip() or name
        if not node:
            node = config.get("LS_FRONTEND_NODE").strip() or socket.gethostname().split(".")[0]
        device_dir = attrs.get("LS_DEVICE_DIR", "").strip() or config.get("LS_DEVICE_DIR").strip() \
            or DEFAULT_DEVICE_DIR
        return HostRef(name=name, client=node, device_dir=device_dir)

    @classmethod
    def default_placement(cls, config: Config, names: Names, ds_id: int) -> str:
        """RESOURCE_GROUP, or "" (the datastore's own placement attributes)."""
        return config.get("RESOURCE_GROUP").strip()

    # --- the client ------------------------------------------------------------------------------
    def _api(self) -> Any:
        if self._client is None:
            client = linstor.MultiLinstor(self.controllers, timeout=self.timeout, agent_info="one-tweaks")
            if self.certfile:
                client.certfile = self.certfile
            if self.keyfile:
                client.keyfile = self.keyfile
            if self.cafile:
                client.cafile = self.cafile
            if self.keyfile and not self.certfile:
                raise DriverError("LINSTOR TLS settings: LS_KEYFILE is set without LS_CERTFILE (the client "
                                  "certificate it belongs to)")
            try:
                client.connect()
            except linstor.LinstorError as exc:
                # MultiLinstor's own message names no reason; each controller's error does (refused,
                # timed out, the certificate does not verify against LS_CAFILE, ...)
                why = "; ".join(_first_line(e).removeprefix("Error: ") for e in exc.all_errors()
                               if isinstance(e, BaseException))
                raise Transient(f"no LINSTOR controller answers ({', '.join(self.controllers)}): "
                                f"{why or _first_line(exc)}") from None
            except OSError as exc:  # certificate files, a TLS handshake refused after connecting
                raise DriverError(f"LINSTOR TLS settings: {exc}") from None
            self._client = client
        return self._client

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.disconnect()
            self._client = None

    def _query(self, call: Callable[[Any], T], what: str) -> T:
        """A read; a lost connection is re-established (next controller) and the read sent again."""
        for attempt in (1, 2):
            try:
                return call(self._api())
            except (linstor.LinstorNetworkError, linstor.LinstorTimeoutError) as exc:
                self.close()
                if attempt == 2:
                    raise Transient(f"LINSTOR {what}: {_first_line(exc)}") from None
            except linstor.LinstorApiCallError as exc:
                raise _error(what, exc.main_error) from None
            except linstor.LinstorError as exc:
                raise DriverError(f"LINSTOR {what}: {_first_line(exc)}") from None
        raise AssertionError("unreachable")

    def _change(self, method: str, *args: Any, what: str = "", ok: Iterable[int] = (), **kwargs: Any) -> list[Any]:
        """A change: its replies; the first error reply raises (codes in ``ok`` do not)."""
        label = what or method
        try:
            replies = getattr(self._api(), method)(*args, **kwargs)
        except (linstor.LinstorNetworkError, linstor.LinstorTimeoutError) as exc:
            self.close()
            raise Transient(f"LINSTOR {label}: {_first_line(exc)} (it may have been done: re-run)") from None
        except linstor.LinstorApiCallError as exc:
            raise _error(label, exc.main_error) from None
        except linstor.LinstorError as exc:
            raise DriverError(f"LINSTOR {label}: {_first_line(exc)}") from None
        allowed = set(ok)
        for reply in replies or []:
            if isinstance(reply, linstor.ApiCallResponse) and reply.is_error() \
                    and (int(reply.ret_code) & MASK_CODE) not in allowed:
                raise _error(label, reply)
        return list(replies or [])

    # --- lookups ---------------------------------------------------------------------------------
    def _definitions(self, names: Sequence[str] | None = None) -> list[Any]:
        filt = list(names) if names else None
        return list(self._query(lambda c: c.resource_dfn_list_raise(filter_by_resource_definitions=filt)
                                .resource_definitions, "resource-definition list"))

    def _snapshot_defs(self, resources: Sequence[str] | None = None) -> list[Any]:
        filt = list(resources) if resources else None
        return list(self._query(lambda c: c.snapshot_dfn_list_raise(filter_by_resources=filt).snapshots,
                                "snapshot list"))

    def _resources(self, names: Sequence[str] | None, node: str | None) -> list[Any]:
        nodes = [node] if node else None
        filt = list(names) if names else None
        return list(self._query(lambda c: c.resource_list_raise(filter_by_nodes=nodes, filter_by_resources=filt)
                                .resources, "resource list"))

    def _definition(self, name: str) -> Any | None:
        return next((d for d in self._definitions([name]) if _same(d.name, name)), None)

    @staticmethod
    def _volume(rd: Any) -> Volume:
        vds = sorted(rd.volume_definitions or [], key=lambda v: int(v.number))
        return Volume(name=str(rd.name), size=int(vds[0].size) * KiB if vds else 0,
                      tags=props_to_tags(rd.properties), placement=str(rd.resource_group_name or ""))

    @staticmethod
    def _snapshot_volume(sd: Any) -> Volume:
        vds = sorted(sd.snapshot_volume_definitions or [], key=lambda v: int(v.number))
        return Volume(name=f"{sd.rsc_name}@{sd.name}", size=int(vds[0].size) * KiB if vds else 0,
                      tags=props_to_tags(sd.properties), snapshot=True, parent=str(sd.rsc_name))

    # --- volumes ---------------------------------------------------------------------------------
    def create(self, name: str, size: int, *, placement: str, tags: Mapping[str, str]) -> None:
        """Definition (1) + properties (1) + volume definition (1) + placement (1, +1 with
        NODE_LIST and several pools, +1 with NODE_LIST and a larger REPLICA_COUNT) + the
        end of the ``incomplete`` mark (1)."""
        check_name(name)
        self.settings.check(placement)
        self._complete(name, tags, lambda marked: self._create(name, size, placement=placement, tags=marked))

    def _complete(self, name: str, tags: Mapping[str, str], make: Callable[[dict[str, str]], None]) -> None:
        """``make`` the resource with ``tags`` and the tag ``incomplete=1``, then remove that
        mark (unless the caller set it: an in-place import removes it once its data is
        written). LINSTOR makes a resource in several calls: a resource of this name still
        marked incomplete is what a crashed run left (the caller holds the name's lock), so it
        is deleted and made again; any other resource of this name is a Conflict."""
        marked = {**tags, INCOMPLETE: "1"}
        try:
            make(marked)
        except Conflict:
            found = self._definition(name)
            if found is None or not props_to_tags(found.properties).get(INCOMPLETE):
                raise
            self._change("resource_dfn_delete", name, what=f"delete the unfinished {name}")
            make(marked)
        if not tags.get(INCOMPLETE):
            self._set_props(name, {INCOMPLETE: ""})

    def _create(self, name: str, size: int, *, placement: str, tags: Mapping[str, str]) -> None:
        sets = self.settings
        group = placement or sets.resource_group
        self._change("resource_dfn_create", name, what=f"create {name}", resource_group=group or None,
                     layer_list=list(sets.layers) or None)
        try:
            self._set_props(name, tags)
            self._change("volume_dfn_create", name, _kib(size), what=f"volume of {name}", encrypt=sets.encrypt)
            self._place(name, group, checkpoint=tags.get("type") == TYPE_CHECKPOINT)
        except BaseException:
            self._discard(name)
            raise

    def _place(self, name: str, group: str, *, checkpoint: bool) -> None:
        sets = self.settings
        count = (sets.checkpoint_replicas if checkpoint else None) or sets.replicas
        placed = 0
        if sets.nodes and not (checkpoint and sets.checkpoint_replicas):
            pools = self._node_pools(sets.nodes)
            self._change("resource_create", [linstor.ResourceData(node, name, storage_pool=pools.get(node))
                                             for node in sets.nodes], what=f"place {name} on {' '.join(sets.nodes)}")
            placed = len(sets.nodes)
        if (count and count > placed) or (not placed and group):
            kwargs = sets.select_filter()
            kwargs.pop("layer_list", None)  # the definition has its layers
            self._change("resource_auto_place", name, count, what=f"auto-place {name}", **kwargs)

    def _node_pools(self, nodes: Sequence[str]) -> dict[str, str | None]:
        """The STORAGE_POOL pool each node gets: the first one of the list the node has."""
        pools = self.settings.pools
        if len(pools) <= 1:
            return {node: (pools[0] if pools else None) for node in nodes}
        found = self._query(lambda c: c.storage_pool_list_raise(filter_by_nodes=list(nodes),
                                                                filter_by_stor_pools=list(pools)).storage_pools,
                            "storage-pool list")
        have = {(str(p.node_name).lower(), str(p.name).lower()) for p in found}
        return {node: next((p for p in pools if (node.lower(), p.lower()) in have), pools[0]) for node in nodes}

    def _set_props(self, name: str, tags: Mapping[str, str]) -> None:
        props, gone = tags_to_props(tags)
        if props or gone:
            self._change("resource_dfn_modify", name, props, what=f"properties of {name}", delete_props=gone or None)

    def _discard(self, name: str) -> None:
        """Best effort: remove a resource definition this call made."""
        with contextlib.suppress(DriverError):
            self._change("resource_dfn_delete", name, what=f"delete {name}")

    def clone(self, source: str, name: str, *, placement: str, tags: Mapping[str, str],
              size: int | None = None, from_snapshot: bool = True) -> None:
        check_name(name)

        def make(marked: dict[str, str]) -> None:
            if from_snapshot:
                resource, snapshot = split_snapshot(source)
                self._restore(resource, snapshot, name, placement=placement, tags=marked, size=size)
                return
            if self.settings.clone_mode == "snapshot":
                try:
                    self._clone_by_snapshot(source, name, placement=placement, tags=marked, size=size)
                    return
                except _NoSnapshots:
                    pass  # a pool without snapshots: copy
            self._clone_by_copy(source, name, placement=placement, tags=marked, size=size)

        if not from_snapshot:
            check_name(source)
        self._complete(name, tags, make)

    def _clone_by_snapshot(self, source: str, name: str, *, placement: str, tags: Mapping[str, str],
                           size: int | None) -> None:
        """A snapshot of ``source`` named after the clone (kept while the clone exists, as
        addon-linstor_un does), restored into the clone. Calls: 1 + restore (4-5)."""
        made = False
        try:
            self._change("snapshot_create", [], source, name, what=f"snapshot {source}")
            made = True
        except Conflict:
            pass  # a re-run: the base snapshot is there
        except DriverError as exc:
            if getattr(exc, "code", 0) == NOT_SUPPORTED:
                raise _NoSnapshots() from None
            raise
        try:
            self._restore(source, name, name, placement=placement, tags=tags, size=size)
        except BaseException:
            if made:
                with contextlib.suppress(DriverError):
                    self._change("snapshot_delete", source, name, what=f"delete snapshot {source}@{name}")
            raise

    def _clone_by_copy(self, source: str, name: str, *, placement: str, tags: Mapping[str, str],
                       size: int | None) -> None:
        """A new resource placed by this datastore and ``dd`` on the bridge host."""
        found = self._definition(source)
        if found is None:
            raise NotFound(f"LINSTOR resource {source} does not exist")
        wanted = max(self._volume(found).size, size or 0)
        self.settings.check(placement)
        self._create(name, wanted, placement=placement, tags=tags)
        try:
            self._copy(source, name)
        except BaseException:
            self._discard(name)
            raise

    def _restore(self, resource: str, snapshot: str, name: str, *, placement: str, tags: Mapping[str, str],
                 size: int | None) -> None:
        """A new resource definition with the snapshot's volumes and data, on the snapshot's
        nodes, grown to ``size``. Calls: 4 (+1 to grow)."""
        group = placement or self.settings.resource_group
        self._change("resource_dfn_create", name, what=f"create {name}", resource_group=group or None)
        try:
            self._set_props(name, tags)
            self._change("snapshot_volume_definition_restore", resource, snapshot, name,
                         what=f"restore {resource}@{snapshot}")
            self._change("snapshot_resource_restore", [], resource, snapshot, name,
                         what=f"restore {resource}@{snapshot}")
            if size:
                found = self._definition(name)
                if found is not None and self._volume(found).size < size:
                    self._change("volume_dfn_modify", name, 0, what=f"grow {name}", size=_kib(size))
        except BaseException:
            self._discard(name)
            raise

    def delete(self, name: str, *, snapshot: bool = False) -> None:
        """A snapshot: its read-only resource (if any) and itself (2 calls). A resource: its
        snapshots and the clone-source snapshot named after it (1 list + 1 each), then the
        definition with every resource (1). Absent is not an error."""
        if snapshot:
            resource, snap = split_snapshot(name)
            self._change("resource_dfn_delete", self._reader(resource, snap), what=f"delete reader of {name}")
            self._change("snapshot_delete", resource, snap, what=f"delete snapshot {name}")
            disk_snap = _DISK_SNAPSHOT.fullmatch(snap)
            if disk_snap:  # its size record goes with it (1 call)
                with contextlib.suppress(NotFound):
                    self._change("resource_dfn_modify", resource, {},
                                 delete_props=[_snapshot_size_key(disk_snap.group(1))],
                                 what=f"properties of {resource}")
            return
        check_name(name)
        for sd in self._snapshot_defs():
            if _same(sd.rsc_name, name) or _same(sd.name, name):
                self._change("snapshot_delete", sd.rsc_name, sd.name, what=f"delete snapshot {sd.rsc_name}@{sd.name}")
        self._change("resource_dfn_delete", name, what=f"delete {name}")

    def resize(self, name: str, size: int, *, shrink: bool = False) -> None:
        """Grow the volume definition (1 call; LINSTOR volumes never shrink)."""
        check_name(name)
        if shrink:
            raise DriverError(f"LINSTOR volumes cannot shrink ({name})")
        found = self._definition(name)
        if found is None:
            raise NotFound(f"LINSTOR resource {name} does not exist")
        current = self._volume(found).size
        if current == _kib(size) * KiB:
            return
        if current > size:
            raise DriverError(f"{name} is {current // 2**20} MiB: LINSTOR volumes cannot shrink")
        self._change("volume_dfn_modify", name, 0, what=f"grow {name}", size=_kib(size))

    def rename(self, name: str, new_name: str, *, snapshot: bool = False) -> None:
        raise DriverError(f"LINSTOR cannot rename resources ({name} -> {new_name})")

    def set_tags(self, name: str, tags: Mapping[str, str], *, snapshot: bool = False) -> None:
        if snapshot or "@" in name:
            resource, snap = split_snapshot(name)
            props, gone = tags_to_props(tags)
            self._change("snapshot_dfn_modify", resource, snap, props, what=f"properties of {name}",
                         delete_props=gone or None)
            return
        self._set_props(check_name(name), tags)

    def get(self, name: str) -> Volume | None:
        if "@" in name:
            resource, snap = split_snapshot(name)
            return next((self._snapshot_volume(sd) for sd in self._snapshot_defs([resource])
                         if _same(sd.rsc_name, resource) and _same(sd.name, snap)), None)
        found = self._definition(check_name(name))
        return self._volume(found) if found is not None else None

    def find(self, prefix: str = "") -> list[Volume]:
        volumes = [self._volume(rd) for rd in self._definitions()]
        return [v for v in volumes + self.snapshots() if v.name.startswith(prefix)]

    def snapshots(self, prefix: str = "") -> list[Volume]:
        return [v for v in (self._snapshot_volume(sd) for sd in self._snapshot_defs()) if v.name.startswith(prefix)]

    # --- snapshots -------------------------------------------------------------------------------
    def snapshot(self, volume: str, name: str, *, tags: Mapping[str, str] | None = None,
                 delete_after: int = 0) -> None:
        """A snapshot on every diskful node (1 call, +1 for its properties, +2 for a disk
        snapshot's size record)."""
        resource, snap = split_snapshot(name if "@" in name else f"{volume}@{name}")
        if resource != volume:
            raise DriverError(f"snapshot {name} does not belong to {volume}")
        if delete_after:
            raise DriverError("LINSTOR snapshots cannot delete themselves later (delete_after)")
        self._change("snapshot_create", [], resource, snap, what=f"snapshot {resource}@{snap}")
        if tags:
            self.set_tags(f"{resource}@{snap}", tags, snapshot=True)
        disk_snap = _DISK_SNAPSHOT.fullmatch(snap)
        if disk_snap:  # addon-linstor_un's record of a disk snapshot's size (2 calls)
            allocated = [int(vol.allocated_size) for rsc in self._query(
                lambda c: c.volume_list_raise(filter_by_resources=[resource]).resources, "volume list")
                if _same(rsc.name, resource) for vol in rsc.volumes or []
                if int(vol.number) == 0 and vol.allocated_size is not None]
            self._change("resource_dfn_modify", resource, {_snapshot_size_key(disk_snap.group(1)):
                                                           str(max(allocated, default=0))},
                         what=f"properties of {resource}")

    def group_snapshot(self, pairs: Sequence[tuple[str, str]], *, tags: Mapping[str, str] | None = None) -> None:
        """One multi-resource snapshot (LINSTOR: one snapshot name for all; all or none), then
        the properties of each."""
        if not pairs:
            return
        split = [split_snapshot(snap if "@" in snap else f"{vol}@{snap}") for vol, snap in pairs]
        names = {snap for _, snap in split}
        if len(names) != 1 or any(res != vol for (res, _), (vol, _) in zip(split, pairs, strict=True)):
            raise DriverError("a LINSTOR group snapshot has one snapshot name for all its resources")
        snap = names.pop()
        self._change("snapshot_create_multi", [], [res for res, _ in split], snap, what=f"group snapshot {snap}")
        if tags:
            for res, _ in split:
                self.set_tags(f"{res}@{snap}", tags, snapshot=True)

    def revert(self, volume: str, snapshot: str) -> None:
        """The latest snapshot: a rollback (2 calls). An older one (LINSTOR rolls back only to
        the latest): restored into ``<volume>-revert`` (4 calls), copied over the volume on the
        bridge host, deleted; the volume's other snapshots stay."""
        resource, snap = split_snapshot(snapshot)
        if resource != check_name(volume):
            raise DriverError(f"snapshot {snapshot} does not belong to {volume}")
        snaps = [sd for sd in self._snapshot_defs([resource]) if _same(sd.rsc_name, resource)]
        target = next((sd for sd in snaps if _same(sd.name, snap)), None)
        if target is None:
            raise NotFound(f"LINSTOR snapshot {snapshot} does not exist")
        latest = max(snaps, key=_sequence)
        if latest is target:
            self._change("snapshot_rollback", resource, snap, what=f"roll {resource} back to {snap}")
            return
        temp = _derived(resource, "revert")
        self._change("resource_dfn_delete", temp, what=f"delete {temp}")  # an interrupted revert's
        self._restore(resource, snap, temp, placement="", tags={"temporary": "revert"}, size=None)
        try:
            self._copy(temp, resource)
        finally:
            self._change("resource_dfn_delete", temp, what=f"delete {temp}")

    # --- hosts -----------------------------------------------------------------------------------
    def attach(self, name: str, host: HostRef, *, readonly: bool = False, snapshot: bool = False) -> str:
        """make-available on the host's node (1 call; DRBD has no read-only attachment, so
        ``readonly`` changes nothing). A snapshot: its reader resource first (restored once)."""
        if snapshot or "@" in name:
            resource, snap = split_snapshot(name)
            reader = self._reader(resource, snap)
            if self._definition(reader) is None:
                self._restore(resource, snap, reader, placement="", tags={"temporary": "reader"}, size=None)
            self._make_available(reader, host.client)
            return self.device_path(name, host)
        self._make_available(check_name(name), host.client)
        return self.device_path(name, host)

    def _make_available(self, name: str, node: str) -> None:
        sets = self.settings
        if sets.prefer_node:
            with contextlib.suppress(Conflict, DriverError):
                self._change("resource_make_available", node, name, what=f"make {name} available on {node}",
                             diskful=True)
                return
        if sets.diskless_pool == DEFAULT_DISKLESS_POOL:
            self._change("resource_make_available", node, name, what=f"make {name} available on {node}")
            return
        exists = int(consts.FAIL_EXISTS_RSC) & MASK_CODE
        self._change("resource_create", [linstor.ResourceData(node, name, diskless=True,
                                                              storage_pool=sets.diskless_pool)],
                     what=f"attach {name} on {node}", ok=(exists,))

    def detach(self, name: str, host: HostRef | None, *, force: bool = False, snapshot: bool = False) -> None:
        """Remove the node's diskless resource (list 1 + delete 1); a diskful replica stays.
        A snapshot's reader resource is deleted everywhere."""
        if snapshot or "@" in name:
            resource, snap = split_snapshot(name)
            self._change("resource_dfn_delete", self._reader(resource, snap), what=f"delete reader of {name}")
            return
        self.detach_many([name], host, force=force)

    def attach_many(self, items: Sequence[tuple[str, bool]], host: HostRef) -> dict[str, str]:
        """make-available per volume (1 call each)."""
        return {name: self.attach(name, host, readonly=ro) for name, ro in items}

    def detach_many(self, names: Sequence[str], host: HostRef | None, *, force: bool = False) -> None:
        """One resource list, one delete per diskless resource found."""
        if not names:
            return
        wanted = {check_name(n).lower() for n in names}
        for rsc in self._resources(sorted(wanted), host.client if host is not None else None):
            flags = {str(f).upper() for f in rsc.flags or []}
            if str(rsc.name).lower() not in wanted or consts.FLAG_DISKLESS not in flags \
                    or consts.FLAG_TIE_BREAKER in flags:
                continue
            if host is not None and not _same(rsc.node_name, host.client):
                continue
            self._change("resource_delete", rsc.node_name, rsc.name, what=f"detach {rsc.name} from {rsc.node_name}")

    def device_path(self, name: str, host: HostRef) -> str:
        resource = self._reader(*split_snapshot(name)) if "@" in name else name
        return f"{host.device_dir.rstrip('/')}/{resource}/0"

    def attachable(self, name: str, host: HostRef | None) -> str:
        """The resource exists and the host's LINSTOR node (LS_NODE) is known to the
        controller and online: a diskless resource can be made there."""
        why = super().attachable(name, host)
        if why or host is None:
            return why
        client = host.client
        nodes = self._query(lambda c: c.node_list_raise(filter_by_nodes=[client]).nodes, "node list")
        found = next((n for n in nodes if _same(n.name, client)), None)
        if found is None:
            return f"LINSTOR has no node {client} (host {host.name})"
        status = str(found.connection_status or "")
        if status.upper() != "ONLINE":
            return f"LINSTOR node {client} of host {host.name} is {status or 'not connected'}"
        return ""

    @staticmethod
    def _reader(resource: str, snapshot: str) -> str:
        """The temporary resource a snapshot is read through."""
        return _derived(resource, snapshot)

    def dual_primary(self, names: Sequence[str], enabled: bool) -> None:
        """allow-two-primaries on (live migration) or removed again (1 call each)."""
        for name in names:
            if enabled:
                self._change("resource_dfn_modify", check_name(name), {TWO_PRIMARIES: "yes"},
                             what=f"allow two primaries on {name}")
            else:
                with contextlib.suppress(NotFound):
                    self._change("resource_dfn_modify", check_name(name), {}, delete_props=[TWO_PRIMARIES],
                                 what=f"allow one primary on {name}")

    # --- data copies -----------------------------------------------------------------------------
    def _copy(self, source: str, target: str) -> None:
        """``dd`` all of ``source`` onto ``target`` on the bridge host; what was made available
        there for the copy is removed again."""
        if self.mover is None:
            raise DriverError("LINSTOR data copies need a host (no bridge host configured)")
        ref, shell = self.mover()
        before = {str(r.name).lower() for r in self._resources([source, target], ref.client)
                  if _same(r.node_name, ref.client)}
        try:
            src = self.attach(source, ref)
            dst = self.attach(target, ref)
            shell.run(["sh", "-c", _COPY, "sh", src, dst], timeout=self.copy_timeout)
        finally:
            added = [n for n in (source, target) if n.lower() not in before]
            if added:
                try:
                    self.detach_many(added, ref)
                except DriverError as exc:
                    from onelib import log

                    log.error(f"could not detach {', '.join(added)} from {ref.client} after a copy: {exc}")

    # --- accounting ------------------------------------------------------------------------------
    def usage(self, names: Iterable[str] | None = None) -> dict[str, Usage]:
        """Provisioned size (definitions), stored size (the largest replica's allocation) and
        snapshots' sizes: 3 calls."""
        wanted = None if names is None else set(names)
        out: dict[str, Usage] = {}
        stored: dict[str, int] = {}
        for rsc in self._query(lambda c: c.volume_list_raise().resources, "volume list"):
            for vol in rsc.volumes or []:
                if int(vol.number) == 0 and vol.allocated_size is not None:
                    key = str(rsc.name).lower()
                    stored[key] = max(stored.get(key, 0), int(vol.allocated_size) * KiB)
        for rd in self._definitions():
            vol = self._volume(rd)
            if wanted is None or vol.name in wanted:
                out[vol.name] = Usage(vol.name, vol.size, stored.get(vol.name.lower(), 0))
        for snap in self.snapshots():
            if wanted is None or snap.name in wanted:
                out[snap.name] = Usage(snap.name, snap.size, snap.size)
        return out

    def capacity(self, placement: str) -> Capacity:
        """A resource group: its query-size-info (what one more volume may use, 1 call).
        Otherwise the STORAGE_POOL pools (of NODE_LIST nodes, else all) summed and divided
        by the replica count (REPLICA_COUNT, else the number of NODE_LIST nodes): 1 call."""
        sets = self.settings
        group = placement or sets.resource_group
        if group:
            what = f"size of resource group {group}"
            kwargs = sets.select_filter()
            if sets.replicas:
                kwargs["place_count"] = sets.replicas
            info = self._query(lambda c: c.resource_group_query_size_info(group, **kwargs), what)
            if info is None:
                raise NotFound(f"LINSTOR {what}: no answer")
            if isinstance(info, linstor.ApiCallResponse):  # an error reply instead of the size
                raise _error(what, info)
            space = info.space_info
            total = int(space.capacity_in_kib or 0) * KiB
            free = int(space.available_size_in_kib if space.available_size_in_kib is not None
                       else space.max_vlm_size_in_kib or 0) * KiB
            return Capacity(total=total, free=free, used=max(total - free, 0))
        if not sets.pools:
            raise DriverError("the datastore has neither RESOURCE_GROUP nor STORAGE_POOL")
        nodes = list(sets.nodes) or None
        pools = self._query(lambda c: c.storage_pool_list_raise(filter_by_nodes=nodes,
                                                                filter_by_stor_pools=list(sets.pools)).storage_pools,
                            "storage-pool list")
        total = free = 0
        for pool in pools:
            space = pool.free_space
            if pool.is_diskless() or space is None:
                continue
            total += int(space.total_capacity or 0)
            free += int(space.free_capacity or 0)
        copies = sets.replicas or len(sets.nodes) or 1
        total, free = total * KiB // copies, free * KiB // copies
        return Capacity(total=total, free=free, used=max(total - free, 0))


class _NoSnapshots(Exception):
    """The source's pool cannot snapshot: copy instead."""


def _same(a: Any, b: str) -> bool:
    """LINSTOR names are case-insensitive."""
    return str(a).lower() == b.lower()


def _sequence(sd: Any) -> int:
    raw = str((sd.properties or {}).get("SequenceNumber", "0"))
    return int(raw) if numbers.is_whole(raw) else 0


def _derived(resource: str, suffix: str) -> str:
    """``<resource>-<suffix>``, shortened with a digest when LINSTOR's 48 characters do not suffice."""
    name = f"{resource}-{suffix}"
    if len(name) <= 48:
        return name
    digest = hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()[:10]
    return f"{resource[:36]}-{digest}"


_DISK_SNAPSHOT = re.compile(r"snapshot-([0-9]{1,9})")


def _snapshot_size_key(snap_id: str) -> str:
    """addon-linstor_un's resource-definition property with a disk snapshot's size (KiB
    allocated on the largest replica when it was taken)."""
    return f"{AUX}SNAPSHOT_{snap_id}/DISK_SIZE"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _error(what: str, reply: Any) -> DriverError:
    """An error reply as NotFound / Conflict / DriverError with LINSTOR's message; ``code``
    keeps the reply's code (without the masks)."""
    code = int(reply.ret_code) & MASK_CODE
    message = str(reply.message or "error").strip()
    cause = str(reply.cause or "").strip()
    text = f"LINSTOR {what}: {message}" + (f" ({cause})" if cause and cause not in message else "")
    cls = NotFound if 300 <= code < 400 else Conflict if 500 <= code < 600 else DriverError
    err = cls(text)
    err.code = code  # type: ignore[attr-defined]
    return err


def _tls_context(certfile: str, keyfile: str, cafile: str) -> ssl.SSLContext:
    """The TLS client side as python-linstor sets it up for the drivers: the controller's
    certificate verified (with its host name) only against LS_CAFILE, not verified without it
    (as the drivers then do not either); the client certificate from LS_CERTFILE/LS_KEYFILE."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile:
        context.load_verify_locations(cafile)
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if keyfile and not certfile:
        raise ValueError("LS_KEYFILE is set without LS_CERTFILE")
    if certfile:
        context.load_cert_chain(certfile, keyfile or None)
    return context


def _probe_controller(controller: str, tls: tuple[str, ...]) -> str:
    """"" when ``controller`` answers GET /v1/controller/version as LINSTOR does, else why not."""
    import http.client
    import json
    import ssl
    from urllib.parse import urlsplit

    certfile, keyfile, cafile = tls
    default = "linstor+ssl" if any(tls) else "linstor"
    try:
        parts = urlsplit(controller if "://" in controller else f"{default}://{controller}")
        scheme = parts.scheme.lower()
        if scheme not in CONTROLLER_PORTS or not parts.hostname:
            return "not a controller address (host[:port], linstor:// or linstor+ssl://)"
        port = parts.port or CONTROLLER_PORTS[scheme]
    except ValueError as exc:
        return f"not a controller address ({exc})"
    conn: http.client.HTTPConnection
    try:
        if scheme in ("linstor+ssl", "https"):
            conn = http.client.HTTPSConnection(parts.hostname, port, timeout=DOCTOR_TIMEOUT,
                                               context=_tls_context(certfile, keyfile, cafile))
        else:
            conn = http.client.HTTPConnection(parts.hostname, port, timeout=DOCTOR_TIMEOUT)
    except (OSError, ValueError) as exc:
        return f"TLS settings: {exc}"
    try:
        conn.request("GET", "/v1/controller/version", headers={"Connection": "close",
                                                               "User-Agent": "one-tweaks-doctor"})
        response = conn.getresponse()
        status, body = response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        if isinstance(exc, TimeoutError):
            return f"no answer within {DOCTOR_TIMEOUT:g}s"
        if isinstance(exc, ssl.SSLCertVerificationError):
            return (f"its TLS certificate does not verify against LS_CAFILE {cafile} "
                    f"({exc.verify_message or exc.reason})")
        if isinstance(exc, ssl.SSLError):
            who = "without a client certificate (LS_CERTFILE/LS_KEYFILE)" if not certfile else \
                f"with the client certificate {certfile}"
            return f"TLS handshake failed {who}: {exc.reason or exc}"
        return str(exc) or type(exc).__name__
    finally:
        conn.close()
    try:
        reply = json.loads(body) if body else None
    except ValueError:
        reply = None
    if status != 200 or not isinstance(reply, dict) or "version" not in reply:
        return f"HTTP {status} without LINSTOR's version reply: is this a LINSTOR controller?"
    return ""


BACKEND = Linstor
