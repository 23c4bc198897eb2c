"""Two domain XMLs diffed for what differs in meaning, not in spelling.

oned writes attributes with ``'`` quotes and tab indentation; the XML library writes ``"``
and keeps whatever whitespace it read. Both files go through the same parser and serializer
(whitespace-only text dropped, two-space indentation, CDATA kept), so a unified diff of the
results shows only what changed. ``.ci/demo`` prints the sample's diff with it:

    python tests/xmlnorm.py BEFORE.xml AFTER.xml
"""

from __future__ import annotations

import difflib
import sys

from lxml import etree

_PARSER = etree.XMLParser(strip_cdata=False, resolve_entities=False, no_network=True)


def normalised(path: str) -> list[str]:
    tree = etree.parse(path, _PARSER)
    for el in tree.iter():
        if el.text is not None and not el.text.strip():
            el.text = None
        if el.tail is not None and not el.tail.strip():
            el.tail = None
    etree.indent(tree, space="  ")
    return etree.tostring(tree, encoding="unicode").splitlines()


def diff(before: str, after: str, labels: tuple[str, str] | None = None) -> list[str]:
    old, new = labels or (before, after)
    return list(difflib.unified_diff(normalised(before), normalised(after), old, new, lineterm=""))


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 4):
        sys.stderr.write("usage: xmlnorm.py BEFORE.xml AFTER.xml [BEFORE_LABEL AFTER_LABEL]\n")
        return 2
    labels = (argv[2], argv[3]) if len(argv) == 4 else None
    for line in diff(argv[0], argv[1], labels):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
