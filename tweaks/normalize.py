"""Known quirks of OpenNebula's domain XML that libvirt accepts but domain.rng rejects.

oned 6.x writes q35 PCIe controllers and the guest-agent channel in extra ``<devices>``
blocks; RAW data can add a second ``<features>``. libvirt's parser reads all of them
as one (it selects ``./devices/*``), so merging them keeps the meaning and makes valid
input stay valid through the rules.
"""

from __future__ import annotations

from .xmledit import Editor

MERGED = ("devices", "features")


def normalize(editor: Editor) -> None:
    root = editor.root
    for tag in MERGED:
        blocks = root.findall(tag)
        if len(blocks) < 2:
            continue
        first = blocks[0]
        for extra in blocks[1:]:
            editor.merge(first, extra)
