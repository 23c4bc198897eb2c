"""oned's XML-RPC API, found and authenticated the way OpenNebula's own tools do.

Endpoint: ``$ONE_XMLRPC``, else the first line of ``~/.one/one_endpoint``, else
``http://localhost:2633/RPC2``. Credentials: the file named by ``$ONE_AUTH``, else
``~/.one/one_auth`` (``user:password``; oneadmin's home is ``/var/lib/one``).
"""

from __future__ import annotations

import http.client
import os
import xmlrpc.client
from typing import Any
from xml.parsers.expat import ExpatError

from lxml import etree

from . import xmldoc
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


class _Transport(xmlrpc.client.Transport):
    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    def make_connection(self, host: Any) -> Any:
        conn = super().make_connection(host)
        conn.timeout = self.timeout
        return conn


class Oned:
    """A thin client; each method returns the parsed XML document oned answered."""

    def __init__(self, url: str | None = None, auth: str | None = None, timeout: float = 30.0) -> None:
        self.url = url or endpoint()
        self._auth = auth
        self.timeout = timeout
        self.calls = 0
        self._proxy = xmlrpc.client.ServerProxy(self.url, transport=_Transport(timeout), allow_none=False)

    @property
    def auth(self) -> str:
        if self._auth is None:
            self._auth = session()
        return self._auth

    def call(self, method: str, *args: Any) -> Any:
        self.calls += 1
        try:
            reply = getattr(self._proxy, method)(self.auth, *args)
        except (TimeoutError, OSError, xmlrpc.client.ProtocolError, http.client.HTTPException) as exc:
            raise Transient(f"OpenNebula API at {self.url} unreachable: {exc}") from None
        except xmlrpc.client.Fault as exc:
            raise DriverError(f"OpenNebula API {method}: {exc.faultString}") from None
        except (xmlrpc.client.ResponseError, ExpatError, ValueError) as exc:
            raise Transient(f"OpenNebula API at {self.url} answered something that is not XML-RPC "
                            f"({type(exc).__name__})") from None
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
        return int(self.call("one.image.allocate", template, ds_id, False))

    def host_by_name(self, name: str) -> etree._Element | None:
        for host in self.hosts().iterfind("HOST"):
            if xmldoc.text(host, "NAME") == name:
                return host
        return None
