"""A small HTTP/1.1 client for the APIs the drivers call on every action: StorPool's REST API
and oned's XML-RPC endpoint.

``http.client`` imports the e-mail parser and ``ssl`` before its first request, about 11 ms
on every disk operation; this module needs neither for plain http (``ssl`` is imported only
for an https URL). One request per connection (``Connection: close``); the reply's body is
delimited by Content-Length, chunked transfer coding or the end of the connection.
Every failure is an ``OSError``: ``TimeoutError``, ``ConnectionRefusedError`` and the like
from the socket, ``ProtocolError`` for a reply that is not HTTP.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import IO, Any

MAX_LINE = 65536
MAX_HEADERS = 100


class ProtocolError(OSError):
    """The server's reply is not well-formed HTTP."""


class Response:
    __slots__ = ("body", "headers", "reason", "status")

    def __init__(self, status: int, reason: str, headers: dict[str, str], body: bytes) -> None:
        self.status, self.reason, self.headers, self.body = status, reason, headers, body


def split_url(url: str) -> tuple[str, str, int, str]:
    """``scheme, host, port, path`` of an http(s) URL."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https"):
        raise ValueError(f"{url!r} is not an http or https URL")
    authority, _, path = rest.partition("/")
    authority = authority.rpartition("@")[2]
    if authority.startswith("["):  # [IPv6]:port
        host, _, port_text = authority[1:].partition("]")
        port_text = port_text.removeprefix(":")
    else:
        host, _, port_text = authority.partition(":")
    if not host:
        raise ValueError(f"{url!r} names no host")
    if port_text and not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        raise ValueError(f"{url!r}: port {port_text!r} is not a number")
    port = int(port_text) if port_text else (443 if scheme == "https" else 80)
    if not 0 < port < 65536:
        raise ValueError(f"{url!r}: port {port} is out of range")
    if any(c <= " " or c == "\x7f" for c in rest):
        raise ValueError(f"{url!r} has spaces or control characters")
    return scheme, host, port, "/" + path


def request(method: str, host: str, port: int, path: str, *, body: bytes | None = None,
            headers: Mapping[str, str] | None = None, timeout: float = 30.0, tls: Any = None) -> Response:
    """One request; ``tls`` is an ``ssl.SSLContext`` (or True for the default one) for https.
    A path with spaces or control characters, or a header with CR/LF, is a ValueError
    before anything is sent (it would split the request)."""
    if not path.startswith("/") or any(c <= " " or c == "\x7f" for c in path):
        raise ValueError(f"HTTP request path {path[:80]!r} has spaces or control characters")
    for key, value in (headers or {}).items():
        if any(c in "\r\n\0" for c in key + value) or ":" in key:
            raise ValueError(f"HTTP header {key[:40]!r} has a line break or NUL")
    if host.startswith("[") and host.endswith("]"):  # an IPv6 address as URLs write it
        host = host[1:-1]
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        if tls:
            import ssl

            context = ssl.create_default_context() if tls is True else tls
            sock = context.wrap_socket(sock, server_hostname=host)
        head = [f"{method} {path} HTTP/1.1", f"Host: {_host_header(host, port)}", "Connection: close",
                "Accept-Encoding: identity"]
        if body is not None or method in ("POST", "PUT"):
            head.append(f"Content-Length: {len(body or b'')}")
        head += [f"{key}: {value}" for key, value in (headers or {}).items()]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b""))
        with sock.makefile("rb") as reply:
            return _read_response(reply, method)
    finally:
        sock.close()


def _host_header(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _line(reply: IO[bytes]) -> bytes:
    line = reply.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise ProtocolError("reply line too long")
    return line


def _read_response(reply: IO[bytes], method: str) -> Response:
    while True:
        status_line = _line(reply)
        if not status_line:
            raise ProtocolError("connection closed without a reply")
        parts = status_line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not (
                len(parts[1]) == 3 and parts[1].isascii() and parts[1].isdigit()):
            raise ProtocolError(f"not an HTTP reply: {status_line[:60]!r}")
        status, reason = int(parts[1]), parts[2] if len(parts) > 2 else ""
        headers = _read_headers(reply)
        if not 100 <= status < 200:  # 1xx: an interim reply, the real one follows
            break
    if method == "HEAD" or status in (204, 304):
        return Response(status=status, reason=reason, headers=headers, body=b"")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _read_chunked(reply)
    elif "content-length" in headers:
        length = headers["content-length"].strip()
        if not (length.isascii() and length.isdigit() and len(length) <= 18):
            raise ProtocolError(f"bad Content-Length {length!r}")
        body = reply.read(int(length))
        if len(body) != int(length):
            raise ProtocolError(f"reply cut short: {len(body)} of {length} bytes")
    else:
        body = reply.read()
    return Response(status=status, reason=reason, headers=headers, body=body)


def _read_headers(reply: IO[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = _line(reply)
        if line in (b"\r\n", b"\n", b""):
            return headers
        key, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise ProtocolError(f"bad header line {line[:60]!r}")
        headers[key.strip().lower()] = value.strip()
    raise ProtocolError("too many headers")


def _read_chunked(reply: IO[bytes]) -> bytes:
    chunks: list[bytes] = []
    while True:
        size_text = _line(reply).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            _read_headers(reply)  # trailers
            return b"".join(chunks)
        chunk = reply.read(size)
        if len(chunk) != size or _line(reply) not in (b"\r\n", b"\n"):
            raise ProtocolError("chunked reply cut short")
        chunks.append(chunk)
