"""What every storage action needs, built once per action: configuration (file plus the
datastore's own attributes), the backend, object names, oned, hosts and locks.

Per-volume locks only: oned runs up to 15 actions at once, and two actions on
different volumes never wait for each other.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from lxml import etree

from onelib import paths, xmldoc
from onelib.config import Config
from onelib.hostcmd import Host
from onelib.oned import Oned

from .backend import Backend, HostRef
from .backends import backend_class, find
from .naming import Names

LOCK_DIR = "/var/lock/one-tweaks"


class Driver:
    def __init__(self, driver: str, datastore: etree._Element | None = None, *, oned: Oned | None = None,
                 config: Config | None = None, backend: Backend | None = None) -> None:
        self.driver = driver
        self.datastore = datastore
        base = config or Config.load()
        attrs = xmldoc.template_attrs(datastore.find("TEMPLATE")) if datastore is not None else {}
        # the backend's declared attributes (defaults, and which datastore attributes count)
        cls = find(driver)
        self.config = cls.configure(base, attrs) if cls is not None else base.overlay(attrs)
        # a scheme is built from the configuration (rbd's names carry the datastore's POOL_NAME)
        self.names = (cls.scheme if cls is not None else Names).from_config(self.config)
        self._oned = oned
        self._backend = backend
        self._hosts: dict[str, HostRef] = {}

    # --- collaborators (created on first use) --------------------------------------------------
    @property
    def oned(self) -> Oned:
        if self._oned is None:
            self._oned = Oned(timeout=float(self.config.integer("API_TIMEOUT") or 30))
        return self._oned

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            cls = backend_class(self.driver)
            self._backend = cls.from_config(self.config)
        if self._backend.mover is None:
            self._backend.mover = self._mover
        return self._backend

    @property
    def backend_class(self) -> type[Backend]:
        return backend_class(self.driver)

    @property
    def ds_id(self) -> int:
        return xmldoc.integer(self.datastore, "ID", "datastore")

    def placement(self, ds_id: int | None = None) -> str:
        """The datastore's placement as its backend names it: StorPool's template
        (addon-storpool: ``<ONE_PX>-ds-<ID>``), LINSTOR's resource group (RESOURCE_GROUP, or
        "" for the datastore's own NODE_LIST/REPLICA_COUNT... attributes)."""
        return backend_class(self.driver).default_placement(
            self.config, self.names, self.ds_id if ds_id is None else ds_id)

    def shell(self, host: str) -> Host:
        ssh = self.config.ssh_command()
        return Host(host, ssh=ssh, timeout=float(self.config.integer("HOST_TIMEOUT") or 600))

    def bridge(self) -> str:
        """The host that stages image data: the first BRIDGE_LIST host, else the front-end."""
        hosts = paths.host_list(self.config.get("BRIDGE_LIST"), "BRIDGE_LIST")
        return hosts[0] if hosts else ""

    def host(self, name: str) -> HostRef:
        """Where volumes attach for OpenNebula host ``name`` ("" = the front-end): the
        backend reads the host's template (StorPool: SP_OURID, SP_DEVICE_DIR; LINSTOR:
        LS_NODE, LS_DEVICE_DIR) and the configuration."""
        cached = self._hosts.get(name)
        if cached is not None:
            return cached
        attrs: dict[str, str] = {}
        if name:
            doc = self.oned.host_by_name(name)
            if doc is not None:
                attrs = xmldoc.template_attrs(doc.find("TEMPLATE"))
        ref = backend_class(self.driver).host_ref(name, attrs, self.config)
        self._hosts[name] = ref
        return ref

    def _mover(self) -> tuple[HostRef, Host]:
        """Where a backend copies data through a host: the bridge (see ``bridge``)."""
        name = self.bridge()
        return self.host(name), self.shell(name)

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """An exclusive lock on one volume name, held for the block."""
        directory = self.config.get("LOCK_DIR") or LOCK_DIR
        os.makedirs(directory, exist_ok=True)
        # a qualified name (rbd: pool/image) is one file too
        fd = os.open(os.path.join(directory, f"{name.replace('/', '%')}.lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
