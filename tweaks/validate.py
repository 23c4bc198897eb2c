"""Validation against libvirt's own RelaxNG schema (``domain.rng``).

Compiling the schema costs about as much as the rest of a deploy, and lxml holds the GIL
while it compiles (measured: a compile thread stalls the main thread for most of it), so
the schema is compiled only when a rule has changed something and must be checked.
"""

from __future__ import annotations

import os

from lxml import etree

DEFAULT_RNG = "/usr/share/libvirt/schemas/domain.rng"


def rng_path() -> str:
    return os.environ.get("ONE_TWEAKS_DOMAIN_RNG", DEFAULT_RNG)


class DomainSchema:
    def __init__(self, path: str | None = None) -> None:
        self.path = path or rng_path()
        self.problem: str | None = None
        self._rng: etree.RelaxNG | None = None
        self._tried = False

    @property
    def available(self) -> bool:
        if not self._tried:
            self._tried = True
            if not os.path.exists(self.path):
                self.problem = f"libvirt schema {self.path} not found (install libvirt-clients); validation skipped"
            else:
                try:
                    self._rng = etree.RelaxNG(file=self.path)
                except (etree.RelaxNGParseError, OSError) as exc:
                    self.problem = f"libvirt schema {self.path} unusable ({exc}); validation skipped"
        return self._rng is not None

    def errors(self, tree: etree._ElementTree) -> frozenset[str] | None:
        """Schema errors of ``tree`` (None when no schema is available)."""
        if not self.available:
            return None
        assert self._rng is not None
        if self._rng.validate(tree):
            return frozenset()
        return frozenset(_describe(e) for e in self._rng.error_log)


def _describe(entry: etree._LogEntry) -> str:
    where = f" at {entry.path}" if getattr(entry, "path", None) else ""
    return f"{entry.message}{where}"
