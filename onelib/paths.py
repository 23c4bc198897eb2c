"""TM argument forms: ``host:path`` pairs, ``disk.N`` names and the system datastore layout."""

from __future__ import annotations

import posixpath
import re

from . import numbers
from .errors import DriverError

_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}")
_DISK = re.compile(r"disk\.([0-9]{1,6})")


def split_host_path(arg: str, what: str = "argument") -> tuple[str, str]:
    """``node1:/var/lib/one//datastores/101/42/disk.0`` -> ("node1", normalised path)."""
    host, sep, path = arg.partition(":")
    if not sep or not host or not path:
        raise DriverError(f"{what} {arg!r} is not HOST:PATH")
    return check_host(host), clean_path(path, what)


def check_host(host: str) -> str:
    if not _HOST.fullmatch(host):
        raise DriverError(f"host name {host!r} is not acceptable")
    return host


def host_list(raw: str, what: str) -> list[str]:
    """A space-separated list of host names (BRIDGE_LIST...), every name checked: one that
    starts with ``-`` would reach ssh as an option."""
    hosts = raw.split()
    for host in hosts:
        if not _HOST.fullmatch(host):
            raise DriverError(f"{what}: host name {host!r} is not acceptable")
    return hosts


def clean_path(path: str, what: str = "path") -> str:
    if not path.startswith("/") or "\0" in path or "\n" in path:
        raise DriverError(f"{what} {path!r} is not an absolute path")
    if ".." in path.split("/"):  # before normpath, which would resolve it silently
        raise DriverError(f"{what} {path!r} leaves its directory")
    norm = posixpath.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    return norm


def disk_id(path: str) -> int:
    """The N of ``.../disk.N``."""
    match = _DISK.fullmatch(posixpath.basename(path))
    if not match:
        raise DriverError(f"{path!r} does not name a VM disk (disk.N)")
    return int(match.group(1))


def number(arg: str, what: str) -> int:
    return numbers.whole(arg, what, minimum=-(10**12 - 1), maximum=10**12 - 1, signed=True, unit="a number")
