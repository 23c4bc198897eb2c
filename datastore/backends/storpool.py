"""The StorPool backend: one method per operation, each a stated number of API calls.

Placement is a StorPool volume template (addon-storpool: ``<ONE_PX>-ds-<DS_ID>``).
Hosts are StorPool client ids (SP_OURID); an attached volume appears on its host as
``<device dir>/<name>`` (``/dev/storpool`` on a real node).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from onelib.config import Config
from onelib.errors import DriverError, NotFound

from ..backend import Backend, Capacity, HostRef, Usage, Volume
from ..naming import Names
from .storpool_api import Api, read_storpool_conf


def _volume(raw: Mapping[str, Any], snapshot: bool) -> Volume:
    tags = raw.get("tags") or {}
    # StorPool describes a snapshot's deletion by its date (targetDeleteDate, Unix time)
    delete_after = 0
    if snapshot:
        date = int(raw.get("targetDeleteDate", 0) or 0)
        delete_after = max(date - int(time.time()), 1) if date else int(raw.get("deleteAfter", 0) or 0)
    return Volume(
        name=str(raw.get("name", "")), size=int(raw.get("size", 0)),
        tags={str(k): str(v) for k, v in tags.items()}, placement=str(raw.get("templateName", "") or ""),
        snapshot=snapshot, parent=str(raw.get("parentName", "") or ""), delete_after=delete_after,
    )


class StorPool(Backend):
    name = "storpool"
    remote_backup = True

    def __init__(self, api: Api, *, attach_timeout: int = 20) -> None:
        self.api = api
        self.attach_timeout = attach_timeout

    @classmethod
    def from_config(cls, config: Config) -> StorPool:
        """Connection settings: ``/etc/storpool.conf``, then the driver configuration, then the
        datastore's own SP_API_HTTP_HOST/PORT and SP_AUTH_TOKEN (several clusters)."""
        conf = read_storpool_conf(config.get("SP_STORPOOL_CONF"))
        host = config.get("SP_API_HTTP_HOST") or conf.get("SP_API_HTTP_HOST", "")
        port = config.get("SP_API_HTTP_PORT") or conf.get("SP_API_HTTP_PORT", "81")
        token = config.get("SP_AUTH_TOKEN") or conf.get("SP_AUTH_TOKEN", "")
        if not port.isdigit():
            raise DriverError(f"SP_API_HTTP_PORT={port!r} is not a port number")
        api = Api(host, int(port), token, timeout=float(config.integer("API_TIMEOUT") or 30),
                  retries=config.integer("API_RETRIES") or 0)
        return cls(api, attach_timeout=config.integer("ATTACH_TIMEOUT") or 20)

    @classmethod
    def host_ref(cls, name: str, attrs: Mapping[str, str], config: Config) -> HostRef:
        """The host's StorPool client id (host attribute SP_OURID, else the host's section of
        storpool.conf) and its device directory (SP_DEVICE_DIR, host's then configuration's)."""
        client = attrs.get("SP_OURID", "")
        if not client:
            client = read_storpool_conf(config.get("SP_STORPOOL_CONF"), name or None).get("SP_OURID", "")
        if not client.isdigit():
            where = f"host {name}" if name else "the front-end"
            raise DriverError(f"no StorPool client id (SP_OURID) for {where}: set it in the host's template")
        device_dir = attrs.get("SP_DEVICE_DIR") or config.get("SP_DEVICE_DIR") or "/dev/storpool"
        return HostRef(name=name, client=client, device_dir=device_dir)

    @classmethod
    def default_placement(cls, config: Config, names: Names, ds_id: int) -> str:
        """The datastore's StorPool template (addon-storpool: ``<ONE_PX>-ds-<ID>``)."""
        return config.get("SP_TEMPLATE") or names.template(ds_id)

    # --- volumes ---------------------------------------------------------------------------
    def create(self, name: str, size: int, *, placement: str, tags: Mapping[str, str]) -> None:
        body: dict[str, Any] = {"name": name, "size": size, "tags": dict(tags)}
        if placement:
            body["template"] = placement
        self.api.call("VolumeCreate", body)

    def clone(self, source: str, name: str, *, placement: str, tags: Mapping[str, str],
              size: int | None = None, from_snapshot: bool = True) -> None:
        """One call: a volume whose parent is the snapshot ``source`` (or, with
        ``from_snapshot=False``, a copy of the volume ``source``)."""
        body: dict[str, Any] = {"name": name, "tags": dict(tags)}
        body["parent" if from_snapshot else "baseOn"] = source
        if placement:
            body["template"] = placement
        if size:
            body["size"] = size
        self.api.call("VolumeCreate", body)

    def delete(self, name: str, *, snapshot: bool = False) -> None:
        """Detach everywhere, then delete (2 calls). Absent is not an error."""
        key = "snapshot" if snapshot else "volume"
        try:
            # VolumesReassign takes the bare list (VolumesReassignWait wraps it in "reassign")
            self.api.call("VolumesReassign", [{key: name, "detach": "all", "force": True}])
        except NotFound:
            return
        with contextlib.suppress(NotFound):
            self.api.call(f"{'SnapshotDelete' if snapshot else 'VolumeDelete'}/{name}", {})

    def resize(self, name: str, size: int, *, shrink: bool = False) -> None:
        body: dict[str, Any] = {"size": size}
        if shrink:
            body["shrinkOk"] = True
        self.api.call(f"VolumeUpdate/{name}", body)

    def rename(self, name: str, new_name: str, *, snapshot: bool = False) -> None:
        self.api.call(f"{'SnapshotUpdate' if snapshot else 'VolumeUpdate'}/{name}", {"rename": new_name})

    def set_tags(self, name: str, tags: Mapping[str, str], *, snapshot: bool = False) -> None:
        self.api.call(f"{'SnapshotUpdate' if snapshot else 'VolumeUpdate'}/{name}", {"tags": dict(tags)})

    def get(self, name: str) -> Volume | None:
        for call, snapshot in (("Volume", False), ("Snapshot", True)):
            try:
                found = self.api.call(f"{call}/{name}")
            except NotFound:
                continue
            if isinstance(found, list) and found:
                return _volume(found[0], snapshot)
        return None

    def find(self, prefix: str = "") -> list[Volume]:
        volumes = [_volume(v, False) for v in self.api.call("VolumesList") or []]
        snapshots = [_volume(s, True) for s in self.api.call("SnapshotsList") or []]
        return [v for v in volumes + snapshots if v.name.startswith(prefix)]

    def snapshots(self, prefix: str = "") -> list[Volume]:
        return [_volume(s, True) for s in self.api.call("SnapshotsList") or []
                if str(s.get("name", "")).startswith(prefix)]

    # --- snapshots -------------------------------------------------------------------------
    def snapshot(self, volume: str, name: str, *, tags: Mapping[str, str] | None = None,
                 delete_after: int = 0) -> None:
        body: dict[str, Any] = {"name": name}
        if tags:
            body["tags"] = dict(tags)
        if delete_after:
            body["deleteAfter"] = delete_after
        self.api.call(f"VolumeSnapshot/{volume}", body)

    def group_snapshot(self, pairs: Sequence[tuple[str, str]], *, tags: Mapping[str, str] | None = None) -> None:
        body: dict[str, Any] = {"volumes": [{"volume": v, "name": s} for v, s in pairs]}
        if tags:
            body["tags"] = dict(tags)
        self.api.call("VolumesGroupSnapshot", body)

    def revert(self, volume: str, snapshot: str) -> None:
        self.api.call(f"VolumeRevert/{volume}", {"toSnapshot": snapshot})

    # --- remote copies ---------------------------------------------------------------------
    def backup_remote(self, name: str, location: str, tags: Mapping[str, str] | None = None) -> str:
        """One call: VolumeBackup of volume ``name`` to the remote location ``location``
        (``storpool volume <name> backup <location>``); returns the backup's remoteId."""
        body: dict[str, Any] = {"volume": name, "location": location}
        if tags:
            body["tags"] = dict(tags)
        reply = self.api.call("VolumeBackup", body)
        return str(reply.get("remoteId", "") or "") if isinstance(reply, dict) else ""

    # --- hosts -----------------------------------------------------------------------------
    def attach(self, name: str, host: HostRef, *, readonly: bool = False, snapshot: bool = False) -> str:
        if snapshot:
            entry: dict[str, Any] = {"snapshot": name, "ro": [int(host.client)]}
        else:
            entry = {"volume": name, "ro" if readonly else "rw": [int(host.client)]}
        self.api.call("VolumesReassignWait", {"reassign": [entry], "attachTimeout": self.attach_timeout})
        return self.device_path(name, host)

    def detach(self, name: str, host: HostRef | None, *, force: bool = False, snapshot: bool = False) -> None:
        entry: dict[str, Any] = {"snapshot" if snapshot else "volume": name, "force": force,
                                 "detach": "all" if host is None else [int(host.client)]}
        with contextlib.suppress(NotFound):
            self.api.call("VolumesReassignWait", {"reassign": [entry]})

    def attach_many(self, items: Sequence[tuple[str, bool]], host: HostRef) -> dict[str, str]:
        if not items:
            return {}
        client = [int(host.client)]
        entries = [{"volume": name, "ro" if ro else "rw": client} for name, ro in items]
        self.api.call("VolumesReassignWait", {"reassign": entries, "attachTimeout": self.attach_timeout})
        return {name: self.device_path(name, host) for name, _ in items}

    def detach_many(self, names: Sequence[str], host: HostRef | None, *, force: bool = False) -> None:
        if not names:
            return
        target: Any = "all" if host is None else [int(host.client)]
        entries = [{"volume": name, "detach": target, "force": force} for name in names]
        self.api.call("VolumesReassignWait", {"reassign": entries})

    def device_path(self, name: str, host: HostRef) -> str:
        return f"{host.device_dir.rstrip('/')}/{name}"

    # --- accounting ------------------------------------------------------------------------
    def usage(self, names: Iterable[str] | None = None) -> dict[str, Usage]:
        wanted = None if names is None else set(names)
        out: dict[str, Usage] = {}
        for call in ("VolumesSpace", "SnapshotsSpace"):
            for raw in self.api.call(call) or []:
                name = str(raw.get("name", ""))
                if wanted is None or name in wanted:
                    out[name] = Usage(name, int(raw.get("size", 0)), int(raw.get("storedSize", 0)))
        return out

    def capacity(self, placement: str) -> Capacity:
        for raw in self.api.call("VolumeTemplatesStatus") or []:
            if raw.get("name") == placement:
                stored = raw.get("stored") or {}
                total, free = int(stored.get("capacity", 0)), int(stored.get("free", 0))
                return Capacity(total=total, free=free, used=max(total - free, 0))
        raise NotFound(f"StorPool template {placement!r} does not exist (create it for this datastore)")


BACKEND = StorPool
