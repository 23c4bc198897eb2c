"""Entry points other packages give the engine, found without ``importlib.metadata``.

``importlib.metadata`` costs ``one-tweaks apply`` 10-15 ms to import (e-mail parsing, zip
and csv support) before it reads anything; what the engine needs is one line of one file.
``entry_point`` reads the ``entry_points.txt`` of the installed distributions on
``sys.path`` itself (about a millisecond). Groups:

- ``one_tweaks.facts``: ``supplier(vm, domain) -> (scalars, disks)``, the storage side's
  facts (``storage.*``, ``system_ds.*``, ``disk.storage_*``; see ``tweaks.facts``) for a run
  that was given none (``one-tweaks apply``; the deploy hook passes its own). The engine
  imports no storage code: the storage half of the package declares it in pyproject.toml.
- ``one_tweaks.commands``: extra ``one-tweaks`` commands (``tweaks.cli``).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lxml import etree

    from .facts import Supplied

FACTS_GROUP = "one_tweaks.facts"


def _entries(group: str) -> Iterator[tuple[str, str]]:
    """(name, "module:attr") of every entry point of ``group``, first distribution on
    sys.path first (lazily: the caller stops at the first it can use)."""
    seen: set[str] = set()

    # distributions are never installed in the standard library's own directories, the
    # largest on sys.path: listing them cost apply about a millisecond
    stdlib = os.path.dirname(os.__file__)
    for base in sys.path:
        if base.endswith(".zip") or base in (stdlib, os.path.join(stdlib, "lib-dynload")):
            continue
        try:
            names = os.listdir(base or ".")
        except OSError:
            continue
        for entry in sorted(names):
            if not entry.endswith((".dist-info", ".egg-info")):
                continue
            dist = entry.split("-", 1)[0].lower().replace("_", "-")
            if dist in seen:
                continue
            try:
                with open(os.path.join(base or ".", entry, "entry_points.txt"), encoding="utf-8") as fh:
                    text = fh.read()
            except OSError:
                continue
            seen.add(dist)
            if group not in text:  # most distributions have other groups only
                continue
            section = ""
            for raw in text.splitlines():
                line = raw.strip()
                if line.startswith("[") and line.endswith("]"):
                    section = line[1:-1].strip()
                elif section == group and "=" in line and not line.startswith(("#", ";")):
                    name, _, target = line.partition("=")
                    yield name.strip(), target.strip()


# The facts supplier's target as the rule cache remembers it (``loader``): the cache's key
# covers the directories distributions are installed in, so while it is current the scan
# (a listing and a few reads, about half a millisecond per deploy) would find the same.
_remembered: dict[str, str] = {}


def search_dirs() -> list[str]:
    """The sys.path directories distributions can be installed in (what ``_entries`` lists)."""
    stdlib = os.path.dirname(os.__file__)
    return [base for base in sys.path
            if not base.endswith(".zip") and base not in (stdlib, os.path.join(stdlib, "lib-dynload"))]


def remember(targets: dict[str, str]) -> None:
    """Use these ``group -> "module:attr"`` (``""``: none) instead of scanning."""
    _remembered.update(targets)


def first_target(group: str) -> str:
    """The ``"module:attr"`` of the first entry point of ``group`` ("" when none)."""
    return next((target for _, target in _entries(group)), "")


def _resolve(target: str) -> Any | None:
    module, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module.strip())
        for part in attr.strip().split(".") if attr.strip() else ():
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return obj


def entry_point(group: str, name: str | None = None) -> Any | None:
    """The object the first entry point of ``group`` (named ``name``, if given) names, or
    None when there is none or it cannot be imported."""
    if name is None and group in _remembered:
        target = _remembered[group]
        if not target:
            return None
        found = _resolve(target)
        if found is not None:
            return found
    for entry, target in _entries(group):
        if name is not None and entry != name:
            continue
        obj = _resolve(target)
        if obj is not None:
            return obj
    return None


def supplied_facts(vm: etree._Element | None, domain: etree._Element | None) -> Supplied | None:
    """The storage side's facts for this VM and domain (``one_tweaks.facts``), None without one."""
    supplier = entry_point(FACTS_GROUP)
    if supplier is None:
        return None
    found: Supplied = supplier(vm, domain)
    return found
