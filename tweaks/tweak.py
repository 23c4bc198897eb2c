"""The contract every tweak module in ``tweaks/catalog/`` fulfils.

A tweak module defines one ``Tweak`` subclass and exposes an instance as ``TWEAK``.
Its name is the module name; its parameters are declared with ``tweaks.params`` types,
which give both the JSON Schema for rule files and the deploy-time checks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from lxml import etree

from .errors import ParamError
from .facts import Facts
from .params import Param
from .record import field, record
from .xmledit import Editor

# Where a resolved parameter value came from. Only "vm" values are an explicit request
# by the VM's owner; tweaks let those win over what oned generated natively, and let
# oned's native output win over "rule" and "tweak" defaults.
ORIGIN_VM = "vm"
ORIGIN_RULE = "rule"
ORIGIN_TWEAK = "tweak"


@record
class Context:
    tweak: str
    editor: Editor
    facts: Facts
    params: dict[str, Any]
    origins: dict[str, str]
    sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    raws: dict[str, object] = field(default_factory=dict)

    @property
    def root(self) -> etree._Element:
        return self.editor.root

    def explicit(self, name: str) -> bool:
        """True when parameter ``name`` was set by the VM's own attribute."""
        return self.origins.get(name) == ORIGIN_VM

    def reject(self, name: str, message: str) -> ParamError:
        """A ParamError for a value that parsed but does not fit this VM (e.g. > vCPUs);
        it quotes the value as written, not its parsed form."""
        return ParamError(message, self.sources.get(name, f"parameter {name}"), self.raw(name))

    def raw(self, name: str) -> object:
        """Parameter ``name`` as its author wrote it (VM attribute text or rule literal)."""
        return self.raws.get(name, self.params.get(name))

    def note(self, message: str) -> None:
        """Say why the tweak left something alone (shown in --explain)."""
        self.notes.append(message)

    def devices(self) -> etree._Element:
        return self.editor.child(self.root, "devices")


class Tweak:
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    # Attribute names (USER_TEMPLATE) this tweak is documented for, for `list` and README.
    attributes: ClassVar[tuple[str, ...]] = ()
    # An operator-only tweak (e.g. raw XPath patches) never takes a value from a VM: its
    # parameters must be literals in the rule file.
    operator_only: ClassVar[bool] = False
    # The device elements (``disk``, ``interface``, ``controller``) this tweak can shape on
    # its own: given one new device inside the running domain, it decides for that device
    # exactly as it would at deploy (iothread round-robin, queues bounded by vCPUs, ...)
    # and changes nothing else the device needs. Tweaks that shape the domain as a whole
    # leave it empty; they never run on a hot-plugged device.
    fragments: ClassVar[tuple[str, ...]] = ()

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def apply(self, ctx: Context) -> None:
        raise NotImplementedError


Applier = Callable[[Context], None]
