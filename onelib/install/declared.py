"""What the installer needs from the storage backends, read from their declarations as text.

The backends (``datastore/backends/*.py``, the registry ``datastore.backends``) declare their
oned.conf settings as literal class attributes (see ``datastore.backend.Backend``). The
installer reads those literals with ``ast`` instead of importing the modules: install and
uninstall never run driver code and keep working when a backend's client library (python-linstor,
Ceph's bindings, ...) is missing or broken on the front-end, which doctor then reports.

A backend module is one that assigns ``BACKEND = <class>``; the class body's assignments of
the names in ``FIELDS`` are read (they must be literals; a backend that inherits one of them
from another backend class must repeat it).
"""

from __future__ import annotations

import ast
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import DriverError

FIELDS = ("driver", "tm_mad_conf", "ds_mad_conf", "restricted_attrs", "live_disk_snapshots", "vmm_aliases")


@dataclass(frozen=True)
class DriverConf:
    """oned.conf and vmm_execrc settings of one storage driver (a backend's declaration)."""

    tm_mad_conf: tuple[tuple[str, str], ...]
    ds_mad_conf: tuple[tuple[str, str], ...]
    # other restricted attributes the driver reads from objects users create
    restricted: tuple[tuple[str, str], ...] = ()
    # vmm_execrc LIVE_DISK_SNAPSHOTS entries
    live_disk_snapshots: tuple[str, ...] = ()
    # VMM script names of the driver's seed add-on -> the -l key they serve
    vmm_aliases: dict[str, str] = field(default_factory=dict)


def backends_dirs() -> list[str]:
    """Where the backend modules are (``datastore/backends/``), found without importing it."""
    spec = importlib.util.find_spec("datastore")
    if spec is None or not spec.submodule_search_locations:
        raise DriverError("the datastore package is not installed in this environment")
    return [os.path.join(next(iter(spec.submodule_search_locations)), "backends")]


def _pairs(value: Any, what: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, tuple) or not all(
            isinstance(p, tuple) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in value):
        raise DriverError(f"{what} is not a tuple of (name, value) pairs")
    return value


def _module(path: str) -> tuple[str, DriverConf] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), path)
    except (OSError, SyntaxError, ValueError) as exc:
        raise DriverError(f"{path}: cannot read the backend's declaration: {exc}") from None
    backend = next((node.value.id for node in tree.body if isinstance(node, ast.Assign)
                    and [getattr(t, "id", None) for t in node.targets] == ["BACKEND"]
                    and isinstance(node.value, ast.Name)), None)
    if backend is None:
        return None
    cls = next((node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == backend), None)
    if cls is None:
        raise DriverError(f"{path}: BACKEND = {backend}, but the module defines no class {backend}")
    values: dict[str, Any] = {}
    for node in cls.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in FIELDS:
            try:
                values[target.id] = ast.literal_eval(value)
            except ValueError:
                raise DriverError(f"{path}: {backend}.{target.id} is not a literal the installer can read") from None
    driver = values.get("driver")
    if not isinstance(driver, str) or not driver:
        raise DriverError(f"{path}: {backend} declares no driver name")
    label = f"{path}: {backend}"
    aliases = values.get("vmm_aliases") or {}
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise DriverError(f"{label}.vmm_aliases is not a dict of script name -> -l key")
    lds = values.get("live_disk_snapshots")
    if lds is None:
        lds = (f"kvm-{driver}",)
    if not isinstance(lds, tuple) or not all(isinstance(x, str) for x in lds):
        raise DriverError(f"{label}.live_disk_snapshots is not a tuple of names")
    return driver, DriverConf(
        tm_mad_conf=_pairs(values.get("tm_mad_conf", ()), f"{label}.tm_mad_conf"),
        ds_mad_conf=_pairs(values.get("ds_mad_conf", ()), f"{label}.ds_mad_conf"),
        restricted=_pairs(values.get("restricted_attrs", ()), f"{label}.restricted_attrs"),
        live_disk_snapshots=lds, vmm_aliases=dict(aliases))


_read: dict[tuple[str, ...], dict[str, DriverConf]] = {}


def driver_confs() -> dict[str, DriverConf]:
    """driver name -> its declaration, for every backend module (read once per process)."""
    dirs = tuple(backends_dirs())
    if dirs not in _read:
        _read[dirs] = _driver_confs(dirs)
    return dict(_read[dirs])


def _driver_confs(dirs: tuple[str, ...]) -> dict[str, DriverConf]:
    out: dict[str, DriverConf] = {}
    for directory in dirs:
        try:
            entries = sorted(os.listdir(directory))
        except OSError as exc:
            raise DriverError(f"{directory}: cannot list the storage backends: {exc.strerror}") from None
        for entry in entries:
            if not entry.endswith(".py") or entry.startswith(("_", ".")):
                continue
            found = _module(os.path.join(directory, entry))
            if found is not None:
                driver, conf = found
                if driver in out:
                    raise DriverError(f"two backends declare the driver {driver!r}")
                out[driver] = conf
    return out
