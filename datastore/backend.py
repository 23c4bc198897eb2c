"""The narrow interface every storage backend implements (one class per backend, one module
per backend in ``datastore/backends/``, found by ``datastore.backends.backend_class``).

A backend class is also the whole declaration of its driver: the DS_MAD/TM_MAD name oned
uses (``driver``), its object names (``scheme``), the configuration values it reads with
their defaults and types (``attributes``, ``attribute_prefixes``: a datastore's TEMPLATE
attribute of such a name overrides one-tweaks.conf for that datastore), what the installer
writes into oned.conf and vmm_execrc (``tm_mad_conf``, ``ds_mad_conf``, ``restricted_attrs``,
``live_disk_snapshots``, ``vmm_aliases``), what it can do (``can_rename``,
``delayed_delete``, ``remote_backup``, ``group_snapshots``, ``nvram_volumes``), how hosts see
its volumes (``disk_form``), its doctor checks (``doctor``) and how it is built from the
configuration (``from_config``).

Names are the backend's own object names (volumes and snapshots share a namespace in
StorPool; LINSTOR maps them to resources and snapshots). Sizes are bytes. Hosts are
``Attachment`` targets identified by the backend's client id and their device dir.
Every method is one explicit operation with a small, countable number of API calls;
failures raise ``onelib.errors.DriverError`` (``NotFound`` when the object is absent,
``Transient`` when a retry may help) with a one-line reason.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, ClassVar

from onelib.errors import Conflict, DriverError
from tweaks.record import field, record

from .naming import Names

if TYPE_CHECKING:
    from lxml import etree

    from onelib.config import Config
    from onelib.hostcmd import Host

_TRUE_FALSE = ("1", "0", "yes", "no", "y", "n", "true", "false", "on", "off")
_DURATION_UNITS = "smhd"


@record
class Attribute:
    """A configuration value a backend reads: ``NAME=value`` in one-tweaks.conf, overridden
    for one datastore by that datastore's TEMPLATE attribute of the same name (the config
    overlay keeps exactly the declared names). ``kind`` says what a value must look like:
    ``text``, ``int`` (a whole number), ``bool`` (yes/no words), ``seconds`` (48h, 30m, 90s,
    2d or a number), ``words`` (space or comma separated) or ``path`` (absolute)."""

    name: str
    default: str = ""
    kind: str = "text"
    doc: str = ""

    def problem(self, raw: str) -> str:
        """Why ``raw`` is not a value of this kind ("" when it is, or when it is empty)."""
        value = raw.strip()
        if not value:
            return ""
        if self.kind == "int" and not (value.isascii() and value.isdigit()):
            return f"{self.name}={raw!r} is not a whole number"
        if self.kind == "bool" and value.lower() not in _TRUE_FALSE:
            return f"{self.name}={raw!r} is not yes or no"
        if self.kind == "seconds":
            digits = value[:-1] if value[-1:].lower() in _DURATION_UNITS else value
            if not (digits.isascii() and digits.isdigit()):
                return f"{self.name}={raw!r} is not a duration like 48h"
        if self.kind == "path" and not value.startswith("/"):
            return f"{self.name}={raw!r} is not an absolute path"
        return ""


Problem = Callable[[str], None]


@record
class Volume:
    name: str
    size: int
    tags: dict[str, str] = field(default_factory=dict)
    placement: str = ""          # StorPool template / LINSTOR resource group
    snapshot: bool = False
    parent: str = ""             # the snapshot a volume (or snapshot) is based on
    delete_after: int = 0        # seconds left before the backend deletes it (0: never)


@record
class Usage:
    name: str
    size: int                    # provisioned
    stored: int                  # really used


@record
class Capacity:
    total: int
    free: int
    used: int


@record
class HostRef:
    """Where to attach: the OpenNebula host name, the backend's id for it, and the
    directory its device links appear in."""

    name: str
    client: str
    device_dir: str


class Backend(abc.ABC):
    # --- declaration (read by the registry, the drivers, install and doctor) ----------------
    #: the DS_MAD and TM_MAD name oned uses; the executables are ``datastore/<driver>/<action>``
    #: and ``tm/<driver>/<action>`` (made by ``one-tweaks install``)
    driver: ClassVar[str] = ""
    #: a short name for messages
    name: str = ""
    #: object names of this driver's volumes and snapshots
    scheme: ClassVar[type[Names]] = Names
    #: configuration values this backend reads (see ``Attribute``)
    attributes: ClassVar[tuple[Attribute, ...]] = ()
    #: every datastore attribute starting with one of these is a setting too (SP_, LS_, ...)
    attribute_prefixes: ClassVar[tuple[str, ...]] = ()
    #: oned.conf ``TM_MAD_CONF`` and ``DS_MAD_CONF`` values (besides NAME)
    tm_mad_conf: ClassVar[tuple[tuple[str, str], ...]] = ()
    ds_mad_conf: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: other oned.conf restricted attributes, e.g. ``("IMAGE_RESTRICTED_ATTR", "SP_QOSCLASS")``
    restricted_attrs: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: vmm_execrc LIVE_DISK_SNAPSHOTS entries (None: ``kvm-<driver>``)
    live_disk_snapshots: ClassVar[tuple[str, ...] | None] = None
    #: VMM script names the seed add-on of this driver put in the kvm ``-l`` list (name ->
    #: the -l key it serves); installed as aliases of our override, so old lines keep working
    vmm_aliases: ClassVar[Mapping[str, str]] = {}
    #: how a host sees a volume: ``block`` (a device path; ``disk.N`` links to it) or
    #: ``network`` (libvirt reaches it by protocol, no device on the host)
    disk_form: ClassVar[str] = "block"

    # --- capabilities ---------------------------------------------------------------------
    #: ``rename`` works (StorPool); without it imports are written in place (datastore.imageds)
    can_rename: bool = True
    #: snapshots can delete themselves later (``delete_after``): TM delete's trash
    delayed_delete: bool = True
    #: ``backup_remote`` works (StorPool VolumeBackup): DS rm's REMOTE_BACKUP_DELETE
    remote_backup: bool = False
    #: VM snapshots as one group snapshot of the VM's volumes (``vm_snapshot``...)
    group_snapshots: ClassVar[bool] = True
    #: UEFI NVRAM on a volume of its own (``make_nvram``)
    nvram_volumes: ClassVar[bool] = True
    #: the front-end writes a local file into a volume itself (``write_volume``): a network
    #: backend's context ISO volume (block backends write through the host's device)
    volume_writes: ClassVar[bool] = False
    #: where data copies run for backends that copy through a host (LINSTOR): set by the
    #: Driver; returns the host's attachment target and a shell on it
    mover: Callable[[], tuple[HostRef, Host]] | None = None

    # --- configuration -----------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: Config) -> Backend:
        """The backend for one action, from the driver configuration (one-tweaks.conf with the
        datastore's own attributes on top, see ``configure``)."""

    @classmethod
    def configure(cls, config: Config, attrs: Mapping[str, str] | None = None) -> Config:
        """``config`` (one-tweaks.conf) with this backend's declared defaults under it and a
        datastore's TEMPLATE ``attrs`` of the declared names on top: what ``from_config`` gets."""
        return config.declared({a.name: a.default for a in cls.attributes}, cls.attribute_prefixes, attrs)

    @classmethod
    def doctor(cls, config: Config, datastores: Callable[[], Sequence[etree._Element]], problem: Problem) -> None:
        """``one-tweaks doctor``'s checks of this backend (its ``api`` check): each problem is
        one line saying how to fix it, given to ``problem``. ``config`` is one-tweaks.conf;
        ``datastores()`` the DATASTORE documents of this driver oned lists (it raises
        DriverError when oned cannot be asked). Default: the settings each datastore sets
        have the declared kinds."""
        from onelib import xmldoc

        try:
            found = datastores()
        except DriverError:
            return
        for ds in found:
            attrs = xmldoc.template_attrs(ds.find("TEMPLATE"))
            for setting in cls.attributes:
                why = setting.problem(attrs.get(setting.name, ""))
                if why:
                    problem(f"api: datastore {xmldoc.text(ds, 'ID')} ({xmldoc.text(ds, 'NAME')}): {why}: "
                            f"fix it with onedatastore update")

    @classmethod
    def host_ref(cls, name: str, attrs: Mapping[str, str], config: Config) -> HostRef:
        """Where volumes attach for OpenNebula host ``name`` ("" = the front-end), from its
        host TEMPLATE ``attrs`` and the driver configuration."""
        raise DriverError(f"the {cls.name or cls.__name__} backend cannot attach volumes to hosts")

    @classmethod
    def facts(cls, vm: etree._Element | None, datastore: etree._Element | None, config: Config | None,
              disks: Sequence[str]) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
        """Facts of its own for the tweak rules (``datastore.facts``): ``storage.*`` and
        ``system_ds.*`` scalars, and ``storage_*`` keys for the VM's ``disks`` (DISK_IDs) this
        backend keeps, e.g. the volume names, monitors and secret of network disks. Asked only
        of backends whose ``disk_form`` is ``network`` (block backends are not imported on
        deploy); ``vm``, ``datastore`` and ``config`` may be None (``one-tweaks apply``)."""
        return {}, {}

    @classmethod
    def image_tags(cls, image: Mapping[str, str], config: Config) -> dict[str, str]:
        """Tags an image's volume gets besides virt/nloc, from the image's TEMPLATE attributes
        and the configuration (the datastore's settings on top)."""
        return {}

    @classmethod
    def default_placement(cls, config: Config, names: Names, ds_id: int) -> str:
        """The placement a datastore's volumes get (StorPool template / LINSTOR resource group)."""
        return ""

    def dual_primary(self, names: Sequence[str], enabled: bool) -> None:  # noqa: B027 - optional hook
        """Live migration: let both hosts open ``names`` at once while ``enabled`` (LINSTOR:
        DRBD allow-two-primaries); nothing for backends that always allow it."""

    # --- volumes ---------------------------------------------------------------------------
    @abc.abstractmethod
    def create(self, name: str, size: int, *, placement: str, tags: Mapping[str, str]) -> None: ...

    @abc.abstractmethod
    def clone(self, source: str, name: str, *, placement: str, tags: Mapping[str, str],
              size: int | None = None, from_snapshot: bool = True) -> None:
        """A new volume with ``source``'s content (a snapshot, or a volume with
        ``from_snapshot=False``), grown to ``size``."""

    @abc.abstractmethod
    def delete(self, name: str, *, snapshot: bool = False) -> None:
        """Delete a volume (or snapshot); detaches it from every host first. Absent is fine."""

    @abc.abstractmethod
    def resize(self, name: str, size: int, *, shrink: bool = False) -> None: ...

    @abc.abstractmethod
    def rename(self, name: str, new_name: str, *, snapshot: bool = False) -> None: ...

    @abc.abstractmethod
    def set_tags(self, name: str, tags: Mapping[str, str], *, snapshot: bool = False) -> None:
        """Set these tags (an empty value removes the tag); other tags stay."""

    @abc.abstractmethod
    def get(self, name: str) -> Volume | None:
        """The volume or snapshot called ``name``, None if there is none."""

    @abc.abstractmethod
    def find(self, prefix: str = "") -> list[Volume]:
        """Volumes and snapshots whose name starts with ``prefix``, in one call each."""

    @abc.abstractmethod
    def snapshots(self, prefix: str = "") -> list[Volume]:
        """Snapshots whose name starts with ``prefix`` (one call)."""

    # --- snapshots -------------------------------------------------------------------------
    @abc.abstractmethod
    def snapshot(self, volume: str, name: str, *, tags: Mapping[str, str] | None = None,
                 delete_after: int = 0) -> None: ...

    @abc.abstractmethod
    def group_snapshot(self, pairs: Sequence[tuple[str, str]], *, tags: Mapping[str, str] | None = None) -> None:
        """Snapshot every (volume, snapshot name) pair atomically: all or none."""

    @abc.abstractmethod
    def revert(self, volume: str, snapshot: str) -> None:
        """Make ``volume`` hold ``snapshot``'s content again (other snapshots survive)."""

    # --- VM snapshots (groups) -------------------------------------------------------------
    def vm_snapshot(self, items: Sequence[tuple[str, str, Mapping[str, str]]], common: Mapping[str, str]) -> None:
        """One atomic snapshot of every ``(volume, snapshot name, own tags)``, each tagged
        ``common`` and its own tags: the group snapshot with the common tags, then the
        per-volume tags (a backend whose group call takes both does it in one)."""
        self.group_snapshot([(vol, snap) for vol, snap, _ in items], tags=common)
        for _, snap, own in items:
            if own:
                self.set_tags(snap, own, snapshot=True)

    def vm_snapshot_retag(self, items: Sequence[tuple[str, str, Mapping[str, str]]],
                          common: Mapping[str, str]) -> None:
        """The group's tags again, after a ``vm_snapshot`` whose reply was lost (its
        snapshots exist, the tagging may not have happened)."""
        for _, snap, own in items:
            self.set_tags(snap, {**common, **own}, snapshot=True)

    def vm_snapshot_revert(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Every (volume, snapshot) of a group back to the snapshot; the volumes are detached."""
        for volume, snapshot in pairs:
            self.revert(volume, snapshot)

    def vm_snapshot_delete(self, snapshots: Sequence[str]) -> None:
        """Delete a group's snapshots (absent ones are fine)."""
        for name in snapshots:
            self.delete(name, snapshot=True)

    # --- UEFI NVRAM volumes ------------------------------------------------------------------
    def make_nvram(self, name: str, size: int, *, placement: str, tags: Mapping[str, str], host: HostRef,
                   shell: Host, template: str) -> str:
        """The VM's NVRAM volume ``name`` on ``host``, made once: ``size`` bytes with the
        firmware's VARS file ``template`` (a path on that host) at its end, which is where
        OVMF finds it on a larger device. An existing volume keeps the guest's variables
        (only one a crash left empty is filled). Returns the device path on the host.
        ``tags["nvm"]`` is the VM: a volume of that name that is not this VM's is refused."""
        if not self.nvram_volumes:
            raise DriverError(f"the {self.name or type(self).__name__} backend keeps no NVRAM volumes")
        created = False
        volume_size = size
        try:
            self.create(name, size, placement=placement, tags=tags)
            created = True
        except Conflict:
            found = self.get(name)
            if found is None or found.snapshot or found.tags.get("nvm") != tags.get("nvm"):
                raise DriverError(f"volume {name} exists and is not VM {tags.get('nvm')}'s NVRAM") from None
            volume_size = found.size
        try:
            device = self.attach(name, host)
            vars_size = int(shell.output(["stat", "-L", "-c", "%s", template]).strip() or 0)
            if not 0 < vars_size <= volume_size:
                raise DriverError(f"NVRAM template {template} has an unexpected size ({vars_size} bytes)")
            offset = volume_size - vars_size
            head = b"" if created else shell.run(["dd", f"if={device}", "iflag=skip_bytes", f"skip={offset}",
                                                  "bs=4096", "count=1", "status=none"]).stdout
            if created or not head.strip(b"\0"):
                shell.run(["dd", f"if={template}", f"of={device}", "oflag=seek_bytes", f"seek={offset}",
                           "conv=notrunc,fsync", "status=none"])
        except BaseException:
            if created:
                self.delete(name)
            raise
        return device

    # --- hosts -----------------------------------------------------------------------------
    @abc.abstractmethod
    def attach(self, name: str, host: HostRef, *, readonly: bool = False, snapshot: bool = False) -> str:
        """Attach to ``host`` (a snapshot always read-only); returns the device path there."""

    @abc.abstractmethod
    def detach(self, name: str, host: HostRef | None, *, force: bool = False, snapshot: bool = False) -> None:
        """Detach from ``host``, or from every host when None. Absent is not an error."""

    @abc.abstractmethod
    def attach_many(self, items: Sequence[tuple[str, bool]], host: HostRef) -> dict[str, str]:
        """Attach several (name, readonly) volumes to ``host`` in one call; name -> device."""

    @abc.abstractmethod
    def detach_many(self, names: Sequence[str], host: HostRef | None, *, force: bool = False) -> None:
        """Detach several volumes from ``host`` (every host when None) in one call."""

    @abc.abstractmethod
    def device_path(self, name: str, host: HostRef) -> str: ...

    def attachable(self, name: str, host: HostRef | None) -> str:
        """Pre-flight of a migration: "" when volume ``name`` exists and ``host`` (None for
        backends whose hosts reach volumes over the network) could attach it, else the
        reason. Asks, never attaches: nothing changes. Default: the volume exists and is no
        snapshot (``host`` resolved by ``Driver.host`` already says it is a host of this
        backend); backends that can ask more about a host override it."""
        found = self.get(name)
        if found is None:
            return f"volume {name} does not exist"
        if found.snapshot:
            return f"{name} is a snapshot, not a volume"
        return ""

    # --- streams (network disks: a host's file <-> a volume, through the front-end) ---------
    def write_stream(self, name: str, size: int, stream: IO[bytes], *, placement: str,
                     tags: Mapping[str, str]) -> None:
        """A new volume ``name`` holding the ``size`` bytes read from ``stream``: complete or
        absent whatever fails; Conflict when it exists."""
        raise DriverError(f"the {self.name or type(self).__name__} backend cannot write a volume from a stream")

    def write_volume(self, name: str, path: str) -> None:
        """The local file ``path`` written at the start of the existing volume ``name`` (at
        least that large), the rest of the volume zeroed (``volume_writes``)."""
        raise DriverError(f"the {self.name or type(self).__name__} backend cannot write a file into a volume")

    def read_stream(self, name: str, out: IO[bytes]) -> int:
        """Write volume ``name``'s bytes to ``out``; returns how many."""
        raise DriverError(f"the {self.name or type(self).__name__} backend cannot read a volume into a stream")

    # --- remote copies ---------------------------------------------------------------------
    def backup_remote(self, name: str, location: str, tags: Mapping[str, str] | None = None) -> str:
        """Copy volume ``name`` to the remote cluster ``location`` (one call); returns the
        backup's id there ("" when the backend names none)."""
        raise DriverError(f"the {self.name or type(self).__name__} backend cannot back volumes up to a "
                          f"remote location (REMOTE_BACKUP_DELETE)")

    # --- accounting ------------------------------------------------------------------------
    @abc.abstractmethod
    def usage(self, names: Iterable[str] | None = None) -> dict[str, Usage]:
        """Provisioned and stored bytes of many volumes and snapshots in one call."""

    @abc.abstractmethod
    def capacity(self, placement: str) -> Capacity: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
