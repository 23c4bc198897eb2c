"""The backend registry: every module of this package that defines ``BACKEND`` (a
``datastore.backend.Backend`` subclass whose class body says ``driver = "<name>"``) is the
storage driver ``<name>``. Adding a backend is adding its module here; nothing else lists
drivers.

Every driver action looks its backend up, and the VMM overrides ask for drivers that are not
ours (``ssh``, ``ceph``, ...), so a lookup imports nothing it does not need: the modules'
source text is scanned for their ``driver = "..."`` (and ``disk_form = "..."``) line (one listdir and a read per module,
well under a millisecond), and only the module that declares the driver is imported (a
backend's client library, python-linstor say, costs hundreds of milliseconds to import). The
installer reads the same declarations as text (``onelib.install.declared``), so the name must
be a literal there; ``all_backends`` (doctor) imports every backend.
"""

from __future__ import annotations

import importlib
import os
import re
from typing import TYPE_CHECKING

from onelib.errors import DriverError

if TYPE_CHECKING:  # imported by ``find`` only: the facts for the rules need the index alone
    from ..backend import Backend


# A class-body line ``driver = "..."`` or ``disk_form = "..."`` (annotated or not). Anchored
# on a literal newline, not ``^`` with MULTILINE: the regex engine then skips to each newline
# instead of trying every position, 7 times faster over the backend modules' text (it was
# most of the cost of the storage facts on every `one-tweaks apply`).
_DECLARED = re.compile(r"""\n[ \t]+(driver|disk_form)(?:[ \t]*:[^=\n]*)?[ \t]*=[ \t]*["']([A-Za-z0-9_.-]+)["']""")
_index: dict[str, tuple[str, str]] | None = None


def _files() -> dict[str, str]:
    """module name -> its file, for the modules (not starting with ``_``) of this package's
    directories (``__path__``: normally just this one)."""
    found: dict[str, str] = {}
    for directory in __path__:
        try:
            entries = sorted(os.listdir(directory))
        except OSError:
            continue
        for entry in entries:
            if entry.endswith(".py") and not entry.startswith(("_", ".")):
                found.setdefault(entry[:-3], os.path.join(directory, entry))
    return found


def modules() -> list[str]:
    """Names of this package's modules (not starting with ``_``), sorted."""
    return sorted(_files())


def index() -> dict[str, tuple[str, str]]:
    """driver name -> (module name, disk form), from the modules' source text (read once per
    process; ``disk_form`` is ``block`` unless the module declares another)."""
    global _index
    if _index is None:
        found: dict[str, tuple[str, str]] = {}
        for module, path in sorted(_files().items()):
            try:
                with open(path, encoding="utf-8") as fh:
                    text = fh.read()
            except OSError:
                continue
            if "\nBACKEND = " not in text:
                continue
            declared = _DECLARED.findall(text)
            forms = [value for name, value in declared if name == "disk_form"]
            for driver in (value for name, value in declared if name == "driver"):
                found.setdefault(driver, (module, forms[0] if forms else "block"))
        _index = found
    return _index


def find(driver: str) -> type[Backend] | None:
    """The backend class of ``driver``, None when no module declares it."""
    declared = index().get(driver)
    if declared is None:
        return None
    module = declared[0]
    from ..backend import Backend

    cls = getattr(importlib.import_module(f"{__name__}.{module}"), "BACKEND", None)
    if not (isinstance(cls, type) and issubclass(cls, Backend)) or cls.driver != driver:
        raise DriverError(f"datastore/backends/{module}.py declares the driver {driver!r}, but its BACKEND "
                          "is not that driver's Backend class")
    return cls


def backend_class(driver: str) -> type[Backend]:
    cls = find(driver)
    if cls is None:
        raise DriverError(f"no storage backend for driver {driver!r}")
    return cls


def drivers() -> list[str]:
    """Every driver a backend module declares."""
    return sorted(index())


def disk_forms() -> dict[str, str]:
    """driver -> how hosts see its volumes (``Backend.disk_form``), without importing a backend."""
    return {driver: form for driver, (_, form) in index().items()}


def all_backends() -> list[type[Backend]]:
    """Every backend class, by driver name (imports every backend module)."""
    return [backend_class(driver) for driver in drivers()]
