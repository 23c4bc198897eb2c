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
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported by ``find`` only: the facts for the rules need the index alone
    from ..backend import Backend


# The names a class body declares as literals (``driver = "..."``, ``disk_form = "..."``).
_VALUE_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
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


def _declared(text: bytes, key: bytes) -> list[str]:
    """The values of the indented lines ``<key> = "<value>"`` (annotated or not) of a
    module's source, in order. A plain substring search and a look at each hit's line:
    a regular expression over every line of the backend modules cost every `one-tweaks
    apply` about a millisecond (its compile included), this a tenth of that."""
    out = []
    pos = 0
    while (hit := text.find(key, pos)) >= 0:
        pos = hit + len(key)
        line = text.rfind(b"\n", 0, hit) + 1
        if line == 0 or hit == line or text[line:hit].strip(b" \t"):
            continue  # not indented, or not the first word of its line
        end = text.find(b"\n", pos)
        rest = text[pos:end if end >= 0 else len(text)].lstrip(b" \t")
        if rest.startswith(b":"):  # an annotation, up to the ``=``
            rest = rest[rest.find(b"=") if b"=" in rest else len(rest):]
        if not rest.startswith(b"="):
            continue
        rest = rest[1:].lstrip(b" \t")
        if rest[:1] not in (b'"', b"'"):
            continue
        size = 0
        while size + 1 < len(rest) and rest[size + 1] in _VALUE_CHARS:
            size += 1
        if size and rest[size + 1:size + 2] in (b'"', b"'"):
            out.append(rest[1:size + 1].decode())
    return out


def index() -> dict[str, tuple[str, str]]:
    """driver name -> (module name, disk form), from the modules' source text (read once per
    process; ``disk_form`` is ``block`` unless the module declares another)."""
    global _index
    if _index is None:
        found: dict[str, tuple[str, str]] = {}
        for module, path in sorted(_files().items()):
            try:
                with open(path, "rb") as fh:
                    text = fh.read()
            except OSError:
                continue
            if b"\nBACKEND = " not in text:
                continue
            forms = _declared(text, b"disk_form")
            for driver in _declared(text, b"driver"):
                found.setdefault(driver, (module, forms[0] if forms else "block"))
        _index = found
    return _index


def find(driver: str) -> type[Backend] | None:
    """The backend class of ``driver``, None when no module declares it."""
    declared = index().get(driver)
    if declared is None:
        return None
    module = declared[0]
    from onelib.errors import DriverError

    from ..backend import Backend

    cls = getattr(importlib.import_module(f"{__name__}.{module}"), "BACKEND", None)
    if not (isinstance(cls, type) and issubclass(cls, Backend)) or cls.driver != driver:
        raise DriverError(f"datastore/backends/{module}.py declares the driver {driver!r}, but its BACKEND "
                          "is not that driver's Backend class")
    return cls


def backend_class(driver: str) -> type[Backend]:
    cls = find(driver)
    if cls is None:
        from onelib.errors import DriverError

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
