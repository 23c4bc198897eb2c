"""The StorPool backend: one method per operation, each a stated number of API calls.

Placement is a StorPool volume template (addon-storpool: ``<ONE_PX>-ds-<DS_ID>``).
Hosts are StorPool client ids (SP_OURID); an attached volume appears on its host as
``<device dir>/<name>`` (``/dev/storpool`` on a real node).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from onelib import numbers
from onelib.config import Config
from onelib.errors import DriverError, NotFound

from ..backend import Attribute, Backend, Capacity, HostRef, Problem, Usage, Volume
from ..naming import Names
from .storpool_api import Api, read_storpool_conf

if TYPE_CHECKING:
    from lxml import etree

DOCTOR_TIMEOUT = 5.0
_TAG_VALUE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


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


def api_settings(config: Config) -> tuple[str, str, str]:
    """(host, port, token) of the StorPool API: the driver configuration (with a datastore's
    own SP_API_HTTP_HOST/PORT and SP_AUTH_TOKEN on top: several clusters), else
    ``/etc/storpool.conf`` (SP_STORPOOL_CONF) as StorPool's tools read it."""
    conf = read_storpool_conf(config.get("SP_STORPOOL_CONF") or "/etc/storpool.conf")
    host = config.get("SP_API_HTTP_HOST") or conf.get("SP_API_HTTP_HOST", "")
    port = config.get("SP_API_HTTP_PORT") or conf.get("SP_API_HTTP_PORT", "81")
    token = config.get("SP_AUTH_TOKEN") or conf.get("SP_AUTH_TOKEN", "")
    return host, port, token


class StorPool(Backend):
    driver = "storpool"
    name = "storpool"
    # addon-storpool's addon-storpoolrc names; every SP_* attribute of a datastore is its own
    attributes = (
        Attribute("SP_API_HTTP_HOST", doc="StorPool API host (else /etc/storpool.conf)"),
        Attribute("SP_API_HTTP_PORT", "", kind="int", doc="StorPool API port (else /etc/storpool.conf, else 81)"),
        Attribute("SP_AUTH_TOKEN", doc="StorPool API token (else /etc/storpool.conf)"),
        Attribute("SP_DEVICE_DIR", "/dev/storpool", kind="path", doc="where attached volumes appear on hosts"),
        Attribute("SP_STORPOOL_CONF", "/etc/storpool.conf", kind="path", doc="StorPool's own configuration"),
        Attribute("SP_TEMPLATE", doc="the datastore's StorPool template (default <ONE_PX>-ds-<ID>)"),
    )
    attribute_prefixes = ("SP_",)
    # addon-storpool's README and misc/autoconf.rb
    tm_mad_conf = (("LN_TARGET", "NONE"), ("CLONE_TARGET", "SELF"), ("SHARED", "YES"), ("DS_MIGRATE", "YES"),
                   ("DRIVER", "raw"), ("ALLOW_ORPHANS", "YES"))
    ds_mad_conf = (("REQUIRED_ATTRS", "DISK_TYPE"), ("PERSISTENT_ONLY", "NO"), ("MARKETPLACE_ACTIONS", "export"))
    # the image's SP_QOSCLASS becomes the volume's StorPool QoS tag: a storage priority against
    # every other tenant's volumes
    restricted_attrs = (("IMAGE_RESTRICTED_ATTR", "SP_QOSCLASS"),)
    # addon-storpool's vmm/kvm scripts and tmsaverestore names
    vmm_aliases: ClassVar[dict[str, str]] = {
        "tmsave": "save", "tmrestore": "restore",
        "attach_disk.storpool": "attach_disk", "attach_disk.cdrom": "attach_disk", "detach_disk.cdrom": "detach_disk",
        "snapshot_create-storpool": "snapshotcreate", "snapshot_revert-storpool": "snapshotrevert",
        "snapshot_delete-storpool": "snapshotdelete",
    }
    remote_backup = True

    def __init__(self, api: Api, *, attach_timeout: int = 20) -> None:
        self.api = api
        self.attach_timeout = attach_timeout

    @classmethod
    def from_config(cls, config: Config) -> StorPool:
        """Connection settings: ``/etc/storpool.conf``, then the driver configuration, then the
        datastore's own SP_API_HTTP_HOST/PORT and SP_AUTH_TOKEN (several clusters)."""
        host, port, token = api_settings(config)
        port_number = numbers.whole(port, "SP_API_HTTP_PORT=", minimum=1, maximum=65535, unit="a port number")
        api = Api(host, port_number, token, timeout=float(config.integer("API_TIMEOUT") or 30),
                  retries=config.integer("API_RETRIES") or 0)
        return cls(api, attach_timeout=config.integer("ATTACH_TIMEOUT") or 20)

    @classmethod
    def host_ref(cls, name: str, attrs: Mapping[str, str], config: Config) -> HostRef:
        """The host's StorPool client id (host attribute SP_OURID, else the host's section of
        storpool.conf) and its device directory (SP_DEVICE_DIR, host's then configuration's)."""
        client = attrs.get("SP_OURID", "")
        if not client:
            conf = config.get("SP_STORPOOL_CONF") or "/etc/storpool.conf"
            client = read_storpool_conf(conf, name or None).get("SP_OURID", "")
        where = f"host {name}" if name else "the front-end"
        if not client:
            raise DriverError(f"no StorPool client id (SP_OURID) for {where}: set it in the host's template")
        client = str(numbers.whole(client, f"SP_OURID of {where}:", maximum=numbers.ID_MAX, unit="a client id"))
        device_dir = attrs.get("SP_DEVICE_DIR") or config.get("SP_DEVICE_DIR") or "/dev/storpool"
        return HostRef(name=name, client=client, device_dir=device_dir)

    @classmethod
    def doctor(cls, config: Config, datastores: Callable[[], Sequence[etree._Element]], problem: Problem) -> None:
        """The StorPool API answers one cheap GET with the configured token (not configured at
        all is fine when oned lists no storpool datastore)."""
        super().doctor(config, datastores, problem)
        import http.client
        import json

        conf_path = os.environ.get("ONE_TWEAKS_CONF") or "/etc/one/one-tweaks.conf"
        try:
            host, port, token = api_settings(config)
        except DriverError as exc:
            problem(f"api: {exc}: fix that file")
            return
        if not host or not token:
            try:
                if not datastores():
                    return  # e.g. a front-end with no storpool datastore: no StorPool API to reach
            except DriverError:
                pass
            problem(f"api: StorPool API not configured: set SP_API_HTTP_HOST, SP_API_HTTP_PORT and SP_AUTH_TOKEN "
                    f"in {conf_path} (or {config.get('SP_STORPOOL_CONF')}); --offline skips this check")
            return
        if not numbers.is_whole(port, 5):
            problem(f"api: SP_API_HTTP_PORT={port!r} is not a port number: fix it in {conf_path}")
            return
        where = f"{host}:{port}"
        conn = http.client.HTTPConnection(host, int(port), timeout=DOCTOR_TIMEOUT)
        try:
            conn.request("GET", "/ctrl/1.0/ServicesList",
                         headers={"Authorization": f"Storpool v1:{token}", "Connection": "close"})
            response = conn.getresponse()
            status, raw = response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError):
                reason = f"no answer within {DOCTOR_TIMEOUT:g}s"
            problem(f"api: StorPool API {where} unreachable ({reason}): check SP_API_HTTP_HOST/SP_API_HTTP_PORT in "
                    f"{conf_path} and that this front-end can reach it; --offline skips this check")
            return
        finally:
            conn.close()
        try:
            reply = json.loads(raw) if raw else {}
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            problem(f"api: {where} answered HTTP {status} without StorPool's JSON: is SP_API_HTTP_HOST/PORT the "
                    f"StorPool API? fix it in {conf_path}")
            return
        if "error" in reply or status >= 400:
            error = reply.get("error")
            err: dict[str, object] = error if isinstance(error, dict) else {}
            what = f"{err.get('name', 'HTTP ' + str(status))}: {err.get('descr', '')}".rstrip(": ")
            hint = "check SP_AUTH_TOKEN" if status in (401, 403) or "auth" in what.lower() else "check the API"
            problem(f"api: StorPool API {where} refused a request ({what}): {hint} in {conf_path}")

    @classmethod
    def image_tags(cls, image: Mapping[str, str], config: Config) -> dict[str, str]:
        """addon-storpool's qc=<QoS class> when one is set: the image's SP_QOSCLASS, else the
        datastore's, else DEFAULT_QOSCLASS."""
        qos = image.get("SP_QOSCLASS", "").strip() or config.get("SP_QOSCLASS").strip() \
            or config.get("DEFAULT_QOSCLASS").strip()
        if not qos:
            return {}
        if not _TAG_VALUE.fullmatch(qos):
            raise DriverError(f"SP_QOSCLASS {qos!r} is not an acceptable tag value")
        return {"qc": qos}

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

    def vm_snapshot(self, items: Sequence[tuple[str, str, Mapping[str, str]]], common: Mapping[str, str]) -> None:
        """VolumesGroupSnapshot takes tags per volume: one call for the whole group."""
        body = {"volumes": [{"volume": vol, "name": snap, "tags": dict(own)} for vol, snap, own in items],
                "tags": dict(common)}
        self.api.call("VolumesGroupSnapshot", body)

    def vm_snapshot_retag(self, items: Sequence[tuple[str, str, Mapping[str, str]]],
                          common: Mapping[str, str]) -> None:
        """Nothing to do: the group call carries its tags (a group that exists is tagged)."""

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

    def attachable(self, name: str, host: HostRef | None) -> str:
        """The volume exists and the host's StorPool client (SP_OURID) is a running client of
        the cluster (ServicesList): a host without one cannot attach anything."""
        why = super().attachable(name, host)
        if why or host is None:
            return why
        clients = (self.api.call("ServicesList") or {}).get("clients") or {}
        found = clients.get(str(host.client))
        if not isinstance(found, dict):
            return f"StorPool has no client {host.client} (SP_OURID of host {host.name})"
        status = str(found.get("status", ""))
        if status != "running":
            return f"StorPool client {host.client} of host {host.name} is {status or 'not running'}"
        return ""

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
