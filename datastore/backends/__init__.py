"""One module per storage system; ``get(name)`` returns its Backend class."""

from __future__ import annotations

import importlib

from ..backend import Backend

KNOWN = {"storpool": "storpool", "linstor_un": "linstor"}


def backend_class(driver: str) -> type[Backend]:
    module = KNOWN.get(driver)
    if module is None:
        from onelib.errors import DriverError

        raise DriverError(f"no storage backend for driver {driver!r}")
    cls: type[Backend] = importlib.import_module(f"datastore.backends.{module}").BACKEND
    return cls
