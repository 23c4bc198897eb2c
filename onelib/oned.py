"""oned's XML-RPC API, found and authenticated the way OpenNebula's own tools do.

Endpoint: ``$ONE_XMLRPC``, else the first line of ``~/.one/one_endpoint``, else
``http://localhost:2633/RPC2``. Credentials: the file named by ``$ONE_AUTH``, else
``~/.one/one_auth`` (``user:password``; oneadmin's home is ``/var/lib/one``).
"""

from __future__ import annotations

import os
import re
from typing import Any

from lxml import etree

from . import http, xmldoc
from .errors import DriverError, NotFound, Transient

DEFAULT_ENDPOINT = "http://localhost:2633/RPC2"
# OpenNebula error codes (ErrorCode in oned): 0x0400 = NO_EXISTS
_NO_EXISTS = 0x0400


def _first_line(path: str) -> str | None:
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as fh:
            line = fh.readline().strip()
    except OSError:
        return None
    return line or None


def endpoint() -> str:
    return os.environ.get("ONE_XMLRPC") or _first_line("~/.one/one_endpoint") or DEFAULT_ENDPOINT


def session() -> str:
    auth_file = os.environ.get("ONE_AUTH") or "~/.one/one_auth"
    line = _first_line(auth_file)
    if line is None or ":" not in line:
        raise DriverError(f"no OpenNebula credentials in {auth_file} (user:password)")
    return line


class Fault(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code, self.text = code, text


# characters XML 1.0 cannot carry at all (C0 controls but tab, LF and CR; U+FFFE/U+FFFF;
# lone surrogates, which UTF-8 cannot encode either)
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


# XML-RPC by hand rather than ``xmlrpc.client``: that module imports ``http.client`` (the
# e-mail parser, ssl), about 11 ms on every driver action; oned's calls need only strings,
# integers and booleans, and lxml is loaded anyway.
def escape(text: str) -> str:
    """``text`` as XML character data. A CR is sent as ``&#13;``: a literal one would reach
    oned as LF (XML end-of-line handling)."""
    bad = _NOT_XML.search(text)
    if bad:
        raise DriverError(f"OpenNebula API: the character {bad.group()!r} cannot be sent in XML-RPC")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return f"<boolean>{int(value)}</boolean>"
    if isinstance(value, int):
        if not -(2**31) <= value < 2**31:
            raise DriverError(f"OpenNebula API: integer {value} does not fit XML-RPC's int")
        return f"<int>{value}</int>"
    if isinstance(value, str):
        return f"<string>{escape(value)}</string>"
    raise TypeError(f"no XML-RPC form for {type(value).__name__}")


def method_call(method: str, args: tuple[Any, ...]) -> bytes:
    params = "".join(f"<param><value>{_param(a)}</value></param>" for a in args)
    return (f"<?xml version='1.0'?>\n<methodCall><methodName>{escape(method)}</methodName>"
            f"<params>{params}</params></methodCall>\n").encode()


_REPLY_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)


def _value(el: etree._Element) -> Any:
    typed = next(iter(el), None)
    if typed is None:
        return el.text or ""
    tag, text = typed.tag, typed.text or ""
    if tag == "string":
        return text
    if tag in ("int", "i4", "i8"):
        return int(text)
    if tag == "boolean":
        return text.strip() == "1"
    if tag == "double":
        return float(text)
    if tag == "nil":
        return None
    if tag == "array":
        return [_value(v) for v in typed.iterfind("data/value")]
    if tag == "struct":
        members = {}
        for member in typed.iterfind("member"):
            value = member.find("value")
            if value is None:
                raise ValueError("struct member without a value")
            members[member.findtext("name", "")] = _value(value)
        return members
    raise ValueError(f"XML-RPC type {tag!r}")


def method_response(data: bytes) -> Any:
    """The value of a ``methodResponse``; raises ``Fault`` for a fault, ValueError for
    anything that is not an XML-RPC reply."""
    try:
        root = etree.fromstring(data, _REPLY_PARSER)
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"not XML: {exc}") from None
    if root.tag != "methodResponse":
        raise ValueError(f"<{root.tag}> is not a methodResponse")
    fault = root.find("fault/value")
    if fault is not None:
        detail = _value(fault)
        if not isinstance(detail, dict):
            raise ValueError("fault without a struct")
        raise Fault(int(detail.get("faultCode", 0)), str(detail.get("faultString", "")))
    value = root.find("params/param/value")
    if value is None:
        raise ValueError("methodResponse without a value")
    return _value(value)


class Oned:
    """A thin client; each method returns the parsed XML document oned answered."""

    def __init__(self, url: str | None = None, auth: str | None = None, timeout: float = 30.0) -> None:
        self.url = url or endpoint()
        self._auth = auth
        self.timeout = timeout
        self.calls = 0
        try:
            self._scheme, self._host, self._port, self._path = http.split_url(self.url)
        except ValueError as exc:
            raise DriverError(f"OpenNebula API endpoint: {exc}") from None

    @property
    def auth(self) -> str:
        if self._auth is None:
            self._auth = session()
        return self._auth

    def call(self, method: str, *args: Any) -> Any:
        self.calls += 1
        body = method_call(method, (self.auth, *args))
        # A read whose connection broke is asked once more; a change (allocate, update)
        # never is: oned may have applied it.
        attempts = 2 if method.endswith((".info", ".infoextended")) else 1
        for attempt in range(attempts):
            try:
                response = http.request("POST", self._host, self._port, self._path, body=body,
                                        headers={"Content-Type": "text/xml", "User-Agent": "one-tweaks"},
                                        timeout=self.timeout, tls=self._scheme == "https")
                break
            except (ConnectionError, http.ProtocolError) as exc:
                if attempt + 1 == attempts:
                    raise Transient(f"OpenNebula API at {self.url} unreachable: {exc}") from None
            except OSError as exc:
                raise Transient(f"OpenNebula API at {self.url} unreachable: {exc}") from None
        if response.status != 200:
            raise Transient(f"OpenNebula API at {self.url} answered HTTP {response.status} {response.reason}")
        try:
            reply = method_response(response.body)
        except Fault as exc:
            raise DriverError(f"OpenNebula API {method}: {exc.text}") from None
        except ValueError as exc:
            raise Transient(f"OpenNebula API at {self.url} answered something that is not XML-RPC ({exc})") from None
        if not isinstance(reply, list) or not reply:
            raise DriverError(f"OpenNebula API {method}: unexpected reply")
        if not reply[0]:
            message = str(reply[1]) if len(reply) > 1 else "failed"
            message = message.removeprefix(f"[{method}] ")  # oned already names the call
            code = reply[2] if len(reply) > 2 else 0
            error = NotFound if code == _NO_EXISTS else DriverError
            raise error(f"OpenNebula API {method}: {message}")
        return reply[1]

    def _doc(self, method: str, *args: Any) -> etree._Element:
        return xmldoc.parse(self.call(method, *args), method)

    def vm(self, vm_id: int) -> etree._Element:
        return self._doc("one.vm.info", vm_id, False)

    def datastore(self, ds_id: int) -> etree._Element:
        return self._doc("one.datastore.info", ds_id, False)

    def image(self, image_id: int) -> etree._Element:
        return self._doc("one.image.info", image_id, False)

    def host(self, host_id: int) -> etree._Element:
        return self._doc("one.host.info", host_id, False)

    def hosts(self) -> etree._Element:
        return self._doc("one.hostpool.info")

    def vms(self, state: int = -1) -> etree._Element:
        """Every VM with its whole template (all users; all states but DONE unless ``state``
        says otherwise). The short ``one.vmpool.info`` body leaves disks out."""
        return self._doc("one.vmpool.infoextended", -2, -1, -1, state)

    def images(self) -> etree._Element:
        return self._doc("one.imagepool.info", -2, -1, -1)

    def image_update(self, image_id: int, template: str, append: bool = True) -> None:
        self.call("one.image.update", image_id, template, 1 if append else 0)

    def image_allocate(self, template: str, ds_id: int) -> int:
        image_id = self.call("one.image.allocate", template, ds_id, False)
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise DriverError(f"OpenNebula API one.image.allocate: answered {str(image_id)[:40]!r}, not an image id")
        return image_id

    def host_by_name(self, name: str) -> etree._Element | None:
        for host in self.hosts().iterfind("HOST"):
            if xmldoc.text(host, "NAME") == name:
                return host
        return None
