"""xpath_patch: a generic, operator-only patch of the domain XML.

For what no dedicated tweak covers. Every parameter is a literal in the rule file;
a ``{from: ...}`` value is refused (``operator_only``), so no VM attribute can ever
reach this tweak. Example (put it in /etc/one/tweaks.d/85-no-tablet.yaml)::

    name: no-usb-tablet
    when: {fact: domain.machine, regex: q35}
    tweaks:
      - xpath_patch:
          xpath: /domain/devices/input[@type='tablet']
          action: remove-element
      - xpath_patch:
          xpath: /domain/devices/interface[model/@type='virtio']
          action: add-element
          xml: <link state='up'/>

``xpath`` selects elements (the ``qemu:`` and ``one:`` prefixes are known); the
``action`` applies to each of them, at most ``limit`` of them:

- ``set-attribute`` / ``remove-attribute``: attribute ``name`` (= ``value``);
- ``add-element``: append the ``xml`` element as a child, unless an equal child is
  already there (so the rule stays idempotent);
- ``replace-element``: replace the selected element by ``xml`` (no change when it
  already is equal to it);
- ``remove-element``: remove it (never the root ``<domain>``).

The ``xml`` snippet is one element, at most 8 KiB, parsed without DTDs, entities or
network access; comments and processing instructions are dropped. The engine's
schema check still applies: a patch that makes the domain invalid is rolled back.
"""

from __future__ import annotations

import re

from lxml import etree

from ..errors import ParamError
from ..params import Choice, Format, Int, Text
from ..tweak import Context, Tweak

NAMESPACES = {"qemu": "http://libvirt.org/schemas/domain/qemu/1.0",
              "one": "http://opennebula.org/xmlns/libvirt/1.0"}
ACTIONS = ("set-attribute", "remove-attribute", "add-element", "replace-element", "remove-element")
MAX_XML = 8192
_FORBIDDEN = re.compile(r"<!(?:DOCTYPE|ENTITY)", re.IGNORECASE)


def parse_xpath(text: str) -> str:
    try:
        # lxml reports some mistakes (unknown functions, "foo(") only when evaluating.
        etree.XPath(text, namespaces=NAMESPACES)(etree.Element("domain"))
    except etree.XPathError as exc:
        raise ParamError(f"not a usable XPath expression: {exc}") from None
    return text


def parse_snippet(text: str) -> str:
    snippet(text)
    return text


def snippet(text: str) -> etree._Element:
    """The one element ``text`` holds, parsed safely; ParamError otherwise."""
    if len(text.encode()) > MAX_XML:
        raise ParamError(f"longer than {MAX_XML} bytes")
    if _FORBIDDEN.search(text):
        raise ParamError("DTDs and entity declarations are not allowed")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
                             remove_comments=True, remove_pis=True)
    try:
        el = etree.fromstring(text.encode(), parser)
    except etree.XMLSyntaxError as exc:
        raise ParamError(f"not one well-formed XML element: {exc}") from None
    for node in el.iter():
        if not isinstance(node.tag, str):  # entity references left unresolved
            raise ParamError("entity references are not allowed")
    return el


def _canon(el: etree._Element) -> tuple[object, ...]:
    """An element's content for comparison, ignoring indentation."""
    return (el.tag, sorted((str(k), str(v)) for k, v in el.attrib.items()), (el.text or "").strip(),
            tuple(_canon(c) for c in el if isinstance(c.tag, str)))


class XPathPatch(Tweak):
    summary = "operator-only: set/remove an attribute, add/replace/remove elements selected by XPath"
    operator_only = True
    params = (
        Format("xpath", "XPath selecting the elements to patch", parser=parse_xpath, syntax="XPath", max_len=512),
        Choice("action", "what to do with each selected element", choices=ACTIONS),
        Text("name", "attribute name (set-attribute, remove-attribute)", default="",
             pattern=r"[A-Za-z_][A-Za-z0-9_.-]{0,63}", hint="an attribute name", max_len=64),
        Text("value", "attribute value (set-attribute)", default="", pattern=r".*", max_len=1024,
             hint="printable text"),
        Format("xml", "one XML element (add-element, replace-element)", default="", parser=parse_snippet,
               syntax="<element .../>", max_len=MAX_XML),
        Int("limit", "most elements one call may patch", default=64, minimum=1, maximum=4096),
    )

    def apply(self, ctx: Context) -> None:
        action: str = ctx.params["action"]
        needs = {"set-attribute": ("name", "value"), "remove-attribute": ("name",),
                 "add-element": ("xml",), "replace-element": ("xml",)}.get(action, ())
        for name in needs:
            if not ctx.params[name]:
                raise ctx.reject(name, f"action {action} needs {name}")
        try:
            found = etree.XPath(ctx.params["xpath"], namespaces=NAMESPACES)(ctx.root)
        except etree.XPathError as exc:
            raise ctx.reject("xpath", f"cannot be evaluated: {exc}") from None
        if not isinstance(found, list):
            raise ctx.reject("xpath", "does not select elements")
        elements = [e for e in found if isinstance(e, etree._Element) and isinstance(e.tag, str)]
        if len(elements) != len(found):
            raise ctx.reject("xpath", "does not select elements")
        self._patch(ctx, action, elements)

    def _patch(self, ctx: Context, action: str, found: list[etree._Element]) -> None:
        if len(found) > ctx.params["limit"]:
            raise ctx.reject("xpath", f"selects {len(found)} elements, more than limit {ctx.params['limit']}")
        if not found:
            ctx.note("the XPath selects nothing")
            return
        editor = ctx.editor
        root = ctx.root
        for el in found:
            if not _attached(el, root):
                continue  # inside an element this call already removed or replaced
            if action == "set-attribute":
                editor.set_attr(el, ctx.params["name"], ctx.params["value"])
            elif action == "remove-attribute":
                editor.set_attr(el, ctx.params["name"], None)
            elif action != "add-element" and el.getparent() is None:
                raise ctx.reject("xpath", f"{action} cannot apply to the root <domain>")
            elif action == "remove-element":
                editor.remove(el)
            else:
                new = snippet(ctx.params["xml"])
                if action == "add-element":
                    if not any(_canon(c) == _canon(new) for c in el.iterchildren("*")):
                        _build(ctx, el, new, None)
                elif _canon(el) != _canon(new):
                    parent = el.getparent()
                    assert parent is not None
                    index = parent.index(el)
                    editor.remove(el)
                    _build(ctx, parent, new, index)


def _attached(el: etree._Element, root: etree._Element) -> bool:
    top = el
    while (parent := top.getparent()) is not None:
        top = parent
    return top is root


def _build(ctx: Context, parent: etree._Element, model: etree._Element, index: int | None) -> None:
    """Create a copy of ``model`` under ``parent`` through the editor."""
    text = model.text.strip() if model.text and model.text.strip() else None
    el = ctx.editor.add(parent, str(model.tag), {str(k): str(v) for k, v in model.attrib.items()},
                        text=text, index=index)
    for child in model:
        if isinstance(child.tag, str):
            _build(ctx, el, child, None)


TWEAK = XPathPatch()
