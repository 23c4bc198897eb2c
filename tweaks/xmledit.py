"""Recorded edits on a libvirt domain document.

Tweaks change the document only through an ``Editor``: every call that really changes
something appends a ``Change`` (XPath, before, after) for the report, and a call that
would set what is already there records nothing, which is what makes rules idempotent.
New elements get the indentation of their siblings so the result reads like oned's.

Every change to the tree goes through five primitives (attribute, text, tail, insert,
remove), which keep a journal while one is open (``begin``): ``rollback`` undoes a rule's
edits in reverse order. The engine used to deep-copy the whole domain before every rule
in case it had to be rolled back; a 16-disk domain cost 0.1 ms per copy, about 1.5 ms
per deploy, for rollbacks that almost never happen.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from functools import partial

from lxml import etree

from .record import record

# libvirt's own element order for <domain> children (as `virsh dumpxml` writes them);
# used to place a new top-level element next to its natural neighbours.
DOMAIN_ORDER = (
    "name", "uuid", "genid", "title", "description", "metadata", "maxMemory", "memory",
    "currentMemory", "blkiotune", "memtune", "memoryBacking", "vcpu", "vcpus", "iothreads",
    "iothreadids", "defaultiothread", "cputune", "numatune", "resource", "sysinfo",
    "bootloader", "bootloader_args", "os", "idmap", "features", "cpu", "clock", "on_poweroff",
    "on_reboot", "on_crash", "on_lockfailure", "pm", "perf", "devices", "seclabel",
    "keywrap", "launchSecurity",
)
_SNIPPET = 160

@record
class Change:
    xpath: str
    before: str | None
    after: str | None

    def as_dict(self) -> dict[str, str | None]:
        return {"xpath": self.xpath, "before": self.before, "after": self.after}

    def __str__(self) -> str:
        return f"{self.xpath}: {_show(self.before)} -> {_show(self.after)}"


def _show(value: str | None) -> str:
    return "(none)" if value is None else repr(value)


# compiled on first use: most snippets (disks, drivers) carry no namespace declaration
_NS_DECL = r' xmlns(?::[A-Za-z0-9_.-]+)?="[^"]*"'


def snippet(el: etree._Element) -> str:
    text = " ".join(etree.tostring(el, encoding="unicode", with_tail=False).split())
    # lxml repeats in-scope namespace declarations on a serialized subtree; they are noise here.
    if " xmlns" in text:
        text = re.sub(_NS_DECL, "", text)
    return text if len(text) <= _SNIPPET else text[: _SNIPPET - 3] + "..."


class Editor:
    def __init__(self, tree: etree._ElementTree) -> None:
        self.tree = tree
        self.changes: list[Change] = []
        root = tree.getroot()
        lead = root.text or ""
        # Indent unit from the document itself: oned writes tabs, libvirt two spaces.
        self.pretty = "\n" in lead and not lead.strip()
        self.unit = lead.rsplit("\n", 1)[-1] or "\t" if self.pretty else ""
        self._journal: list[Callable[[], object]] | None = None

    # --- the journal -------------------------------------------------------------------
    def begin(self) -> None:
        """Start recording how to undo what follows (one rule's edits)."""
        self._journal = []

    def commit(self) -> None:
        """Stop recording; what was done stays."""
        self._journal = None

    def rollback(self) -> None:
        """Undo everything since ``begin``, newest first; the journal stays open, empty."""
        journal = self._journal or []
        self._journal = None
        for undo in reversed(journal):
            undo()
        self._journal = []

    def _attr(self, el: etree._Element, name: str, value: str | None) -> None:
        if self._journal is not None:
            self._journal.append(partial(_set_attribute, el, name, el.get(name)))
        _set_attribute(el, name, value)

    def _text(self, el: etree._Element, value: str | None) -> None:
        if self._journal is not None:
            self._journal.append(partial(setattr, el, "text", el.text))
        el.text = value

    def _tail(self, el: etree._Element, value: str | None) -> None:
        if self._journal is not None:
            self._journal.append(partial(setattr, el, "tail", el.tail))
        el.tail = value

    def _put(self, parent: etree._Element, index: int, el: etree._Element) -> None:
        parent.insert(index, el)
        if self._journal is not None:
            self._journal.append(partial(parent.remove, el))

    def _take(self, parent: etree._Element, el: etree._Element) -> None:
        if self._journal is not None:
            self._journal.append(partial(parent.insert, parent.index(el), el))
        parent.remove(el)

    @property
    def root(self) -> etree._Element:
        return self.tree.getroot()

    def path(self, el: etree._Element) -> str:
        return self.tree.getpath(el)

    # --- attributes and text -------------------------------------------------------
    def set_attr(self, el: etree._Element, name: str, value: str | int | None) -> bool:
        """Set (or with None remove) an attribute; True when the document changed."""
        before = el.get(name)
        after = None if value is None else str(value)
        if before == after:
            return False
        self._attr(el, name, after)
        self.changes.append(Change(f"{self.path(el)}/@{name}", before, after))
        return True

    def set_attrs(self, el: etree._Element, attrs: Mapping[str, str | int | None]) -> bool:
        changed = False
        for name, value in attrs.items():
            changed = self.set_attr(el, name, value) or changed
        return changed

    def set_text(self, el: etree._Element, text: str | int) -> bool:
        before = el.text.strip() if el.text is not None else None
        after = str(text)
        if before == after and not len(el):
            return False
        self._text(el, after)
        self.changes.append(Change(f"{self.path(el)}/text()", before, after))
        return True

    # --- elements --------------------------------------------------------------------
    def child(
        self,
        parent: etree._Element,
        tag: str,
        attrs: Mapping[str, str | int] | None = None,
        *,
        after: Iterable[str] = (),
        order: tuple[str, ...] = (),
    ) -> etree._Element:
        """The first ``tag`` child of ``parent``, created (with ``attrs``) if missing."""
        found = parent.find(tag)
        if found is not None:
            return found
        return self.add(parent, tag, attrs, after=after, order=order)

    def add(
        self,
        parent: etree._Element,
        tag: str,
        attrs: Mapping[str, str | int] | None = None,
        *,
        text: str | None = None,
        after: Iterable[str] = (),
        order: tuple[str, ...] = (),
        index: int | None = None,
    ) -> etree._Element:
        """Insert a new element: after the last sibling named in ``after``, else at the
        place ``order`` gives it, else at the end."""
        el = etree.Element(tag, {k: str(v) for k, v in (attrs or {}).items()})
        if text is not None:
            el.text = text
        if index is None:
            index = _position(parent, tag, tuple(after), order or (DOMAIN_ORDER if parent is self.root else ()))
        self._insert(parent, index, el)
        self.changes.append(Change(self.path(el), None, snippet(el)))
        return el

    def adopt(self, parent: etree._Element, el: etree._Element, index: int | None = None) -> None:
        """Move an existing element (with its subtree) under ``parent``."""
        old = self.path(el)
        self._detach(el)
        self._insert(parent, len(parent) if index is None else index, el)
        self.changes.append(Change(self.path(el), f"moved from {old}", snippet(el)))

    def merge(self, into: etree._Element, other: etree._Element) -> None:
        """Move every child of ``other`` to the end of ``into`` and drop ``other``."""
        path = self.path(other)
        moved = list(other)
        for child in moved:
            self._detach(child)
            self._insert(into, len(into), child)
        self._detach(other)
        self.changes.append(
            Change(path, f"<{other.tag}> with {len(moved)} children", f"merged into {self.path(into)}")
        )

    def remove(self, el: etree._Element) -> None:
        path, text = self.path(el), snippet(el)
        self._detach(el)
        self.changes.append(Change(path, text, None))

    def replace(self, old: etree._Element, tag: str, attrs: Mapping[str, str | int]) -> etree._Element:
        parent = old.getparent()
        assert parent is not None
        index = parent.index(old)
        before = snippet(old)
        self._detach(old)
        el = etree.Element(tag, {k: str(v) for k, v in attrs.items()})
        self._insert(parent, index, el)
        self.changes.append(Change(self.path(el), before, snippet(el)))
        return el

    # --- whitespace-preserving primitives ------------------------------------------------
    def _depth(self, el: etree._Element) -> int:
        depth = 0
        parent = el.getparent()
        while parent is not None:
            depth += 1
            parent = parent.getparent()
        return depth

    def _insert(self, parent: etree._Element, index: int, el: etree._Element) -> None:
        if not self.pretty:
            self._put(parent, index, el)
            return
        depth = self._depth(parent)
        inner = "\n" + self.unit * (depth + 1)
        outer = "\n" + self.unit * depth
        children = list(parent)
        if not children:
            if parent.text is None or not parent.text.strip():
                self._text(parent, inner)
            self._tail(el, outer)
            self._put(parent, 0, el)
        elif index >= len(children):
            last = children[-1]
            self._tail(el, last.tail if last.tail is not None and not last.tail.strip() else outer)
            self._tail(last, inner if last.tail is None or not last.tail.strip() else last.tail)
            self._put(parent, len(children), el)
        else:
            self._tail(el, inner)
            self._put(parent, index, el)
        self._indent_subtree(el, depth + 1)

    def _detach(self, el: etree._Element) -> None:
        parent = el.getparent()
        assert parent is not None
        prev = el.getprevious()
        is_last = el.getnext() is None
        tail = el.tail
        # lxml carries an element's tail with it; hand whitespace back to the neighbours.
        if is_last:
            if prev is not None:
                if prev.tail is None or not prev.tail.strip():
                    self._tail(prev, tail)
            elif parent.text is None or not parent.text.strip():
                self._text(parent, None)
        elif tail and tail.strip():
            if prev is not None:
                self._tail(prev, (prev.tail or "") + tail)
            else:
                self._text(parent, (parent.text or "") + tail)
        self._tail(el, None)
        self._take(parent, el)

    def _indent_subtree(self, el: etree._Element, depth: int) -> None:
        children = list(el)
        if not children:
            return
        unit = self.unit
        inner = "\n" + unit * (depth + 1)
        if el.text is None or not el.text.strip():
            self._text(el, inner)
        for child in children:
            if child.tail is None or not child.tail.strip():
                self._tail(child, inner)
            self._indent_subtree(child, depth + 1)
        last = children[-1]
        if not (last.tail or "").strip():
            self._tail(last, "\n" + unit * depth)


def _position(parent: etree._Element, tag: str, after: tuple[str, ...], order: tuple[str, ...]) -> int:
    children = list(parent)
    if after:
        for i in range(len(children) - 1, -1, -1):
            if children[i].tag in after:
                return i + 1
    if order and tag in order:
        rank = order.index(tag)
        best = -1
        for i, child in enumerate(children):
            if isinstance(child.tag, str) and child.tag in order and order.index(child.tag) <= rank:
                best = i
        if best >= 0:
            return best + 1
        for i, child in enumerate(children):
            if isinstance(child.tag, str) and child.tag in order:
                return i
    return len(children)


def _set_attribute(el: etree._Element, name: str, value: str | None) -> None:
    if value is None:
        if name in el.attrib:
            del el.attrib[name]
    else:
        el.set(name, value)
