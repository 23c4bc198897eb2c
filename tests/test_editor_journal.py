"""The editor's journal: a rule's edits undone byte for byte (what the engine relies on
instead of copying the domain before every rule)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import deployment
from lxml import etree

from tweaks.xmledit import Editor

PRETTY = deployment()
COMPACT = (b'<domain type="kvm"><name>one-1</name><!-- keep --><memory>1024</memory>'
           b'<devices><disk type="file" device="disk"><source file="/a"/><target dev="vda"/></disk>'
           b'<interface type="bridge"><mac address="02:00:00:00:00:01"/></interface></devices></domain>')


def _edits(editor: Editor) -> None:
    root = editor.root
    devices = root.find("devices")
    assert devices is not None
    disk = devices.find("disk")
    assert disk is not None
    editor.set_attr(disk, "type", "block")
    editor.set_attr(disk, "device", None)
    editor.set_text(editor.child(root, "iothreads"), 4)
    driver = editor.add(disk, "driver", {"name": "qemu", "iothread": 1}, index=0)
    editor.add(driver, "nested", {"a": "b"})
    editor.set_text(root.find("memory"), "2048")
    editor.adopt(root, devices.find("interface"))
    first = devices[0]
    editor.replace(first, "disk", {"type": "network"})
    editor.remove(root.find("name"))
    editor.merge(root.find("devices"), editor.add(root, "devices"))


@pytest.mark.parametrize("doc", [PRETTY, COMPACT], ids=["oned-tabs", "compact"])
@pytest.mark.parametrize("edits", [_edits])
def test_rollback_restores_the_document_byte_for_byte(doc: bytes, edits: Callable[[Editor], None]) -> None:
    tree = etree.ElementTree(etree.fromstring(doc))
    before = etree.tostring(tree)
    editor = Editor(tree)
    editor.begin()
    edits(editor)
    assert len(editor.changes) >= 10
    assert etree.tostring(tree) != before
    editor.rollback()
    assert etree.tostring(tree) == before


def test_rollback_undoes_only_what_followed_begin() -> None:
    tree = etree.ElementTree(etree.fromstring(PRETTY))
    editor = Editor(tree)
    editor.set_text(editor.child(editor.root, "title"), "kept")
    kept = etree.tostring(tree)
    editor.begin()
    editor.set_text(editor.root.find("title"), "undone")
    editor.add(editor.root, "iothreads", text="8")
    editor.rollback()
    assert etree.tostring(tree) == kept
    # the journal stays open: a second rollback after more edits undoes those too
    editor.set_attr(editor.root, "type", "qemu")
    editor.rollback()
    assert etree.tostring(tree) == kept


def test_without_begin_or_after_commit_nothing_is_recorded() -> None:
    tree = etree.ElementTree(etree.fromstring(COMPACT))
    editor = Editor(tree)
    editor.set_attr(editor.root, "type", "qemu")
    editor.begin()
    editor.commit()
    editor.set_attr(editor.root, "id", "7")
    editor.rollback()
    assert editor.root.get("type") == "qemu" and editor.root.get("id") == "7"
