"""Finds tweak modules: every module in ``tweaks/catalog/`` is one tweak, named after it.

Modules are imported only when a rule needs them, so a deploy pays for the tweaks its
matched rules use and nothing else.
"""

from __future__ import annotations

import functools
import importlib
import os

from .errors import TweakError
from .tweak import Tweak

_CATALOG = os.path.join(os.path.dirname(__file__), "catalog")
_loaded: dict[str, Tweak] = {}


def register(name: str, tweak: Tweak) -> None:
    """Make a tweak that does not live in the catalogue available under ``name``
    (site-specific extensions, tests)."""
    tweak.__class__.name = name
    _loaded[name] = tweak


def unregister(name: str) -> None:
    _loaded.pop(name, None)


def names() -> list[str]:
    return sorted(set(_catalog_names()) | set(_loaded))


@functools.cache
def _catalog_names() -> list[str]:
    found = []
    for entry in os.listdir(_CATALOG):
        stem, ext = os.path.splitext(entry)
        if ext == ".py" and not stem.startswith("_"):
            found.append(stem)
    return sorted(found)


def get(name: str) -> Tweak:
    tweak = _loaded.get(name)
    if tweak is not None:
        return tweak
    if not name.isidentifier() or name.startswith("_") or name not in _catalog_names():
        raise TweakError(f"unknown tweak {name!r}")
    module = importlib.import_module(f"tweaks.catalog.{name}")
    tweak = module.TWEAK
    if not isinstance(tweak, Tweak):
        raise TweakError(f"tweaks.catalog.{name}.TWEAK is not a Tweak")
    tweak.__class__.name = name
    _loaded[name] = tweak
    return tweak


def journaled(name: str) -> bool:
    """True for a catalogue tweak: it changes the domain only through the ``Editor``, so the
    editor's journal can undo its rule (a registered tweak gets a copy to roll back to)."""
    return type(get(name)).__module__.startswith("tweaks.catalog.")


def all_tweaks() -> list[Tweak]:
    return [get(name) for name in names()]
