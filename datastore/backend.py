"""The narrow interface every storage backend implements (one class per backend).

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
from typing import TYPE_CHECKING

from onelib.errors import DriverError
from tweaks.record import field, record

if TYPE_CHECKING:
    from onelib.config import Config
    from onelib.hostcmd import Host

    from .naming import Names


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
    name: str = ""
    #: ``rename`` works (StorPool); without it imports are written in place (datastore.imageds)
    can_rename: bool = True
    #: snapshots can delete themselves later (``delete_after``): TM delete's trash
    delayed_delete: bool = True
    #: ``backup_remote`` works (StorPool VolumeBackup): DS rm's REMOTE_BACKUP_DELETE
    remote_backup: bool = False
    #: where data copies run for backends that copy through a host (LINSTOR): set by the
    #: Driver; returns the host's attachment target and a shell on it
    mover: Callable[[], tuple[HostRef, Host]] | None = None

    # --- configuration -----------------------------------------------------------------------
    @classmethod
    def host_ref(cls, name: str, attrs: Mapping[str, str], config: Config) -> HostRef:
        """Where volumes attach for OpenNebula host ``name`` ("" = the front-end), from its
        host TEMPLATE ``attrs`` and the driver configuration."""
        raise DriverError(f"the {cls.name or cls.__name__} backend cannot attach volumes to hosts")

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
