"""onelib.http (the drivers' HTTP client) and onelib.oned's XML-RPC, against real servers:
raw sockets answering what HTTP servers answer (lengths, chunks, interim replies, garbage),
Python's own ``xmlrpc.server`` for the XML-RPC encoding, and a TLS server with a certificate
made here by openssl."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
import xmlrpc.server
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from onelib import http
from onelib.errors import DriverError, Transient
from onelib.oned import Oned


@contextmanager
def canned(reply: bytes, *, tls: ssl.SSLContext | None = None) -> Iterator[tuple[int, list[bytes]]]:
    """A server on 127.0.0.1 that reads one request, answers ``reply`` and closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    requests: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            if tls is not None:
                try:
                    conn = tls.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):
                    return
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                body += conn.recv(65536)
            requests.append(head + b"\r\n\r\n" + body)
            conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port, requests
    finally:
        thread.join(timeout=10)
        listener.close()


@pytest.mark.parametrize(("reply", "body"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
     b"hello world"),
    (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", b"until the end"),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok", b"ok"),
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", b""),
])
def test_reply_bodies_in_every_framing(reply: bytes, body: bytes) -> None:
    with canned(reply) as (port, requests):
        response = http.request("POST", "127.0.0.1", port, "/ctrl/1.0/X", body=b'{"a": 1}',
                                headers={"Authorization": "Storpool v1:t"})
    assert response.body == body
    head, _, sent = requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /ctrl/1.0/X HTTP/1.1\r\n")
    assert b"\r\nContent-Length: 8" in head and b"\r\nAuthorization: Storpool v1:t" in head and sent == b'{"a": 1}'


@pytest.mark.parametrize("reply", [
    b"",
    b"SSH-2.0-OpenSSH_9.2\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
])
def test_anything_that_is_not_http_is_a_protocol_error(reply: bytes) -> None:
    with canned(reply) as (port, _), pytest.raises(http.ProtocolError):
        http.request("GET", "127.0.0.1", port, "/")


def test_urls() -> None:
    assert http.split_url("http://one-fe:2633/RPC2") == ("http", "one-fe", 2633, "/RPC2")
    assert http.split_url("https://[::1]/RPC2") == ("https", "::1", 443, "/RPC2")
    assert http.split_url("HTTP://u:p@h") == ("http", "h", 80, "/")
    for bad in ("one-fe:2633", "ftp://h/", "http://:80/", "http://h:x/"):
        with pytest.raises(ValueError):
            http.split_url(bad)
    with pytest.raises(DriverError, match="endpoint"):
        Oned("one-fe:2633/RPC2", "a:b")


@contextmanager
def echo_server() -> Iterator[str]:
    """Python's own XML-RPC server: ``one.echo`` returns what it got; ``one.fail`` faults."""
    server = xmlrpc.server.SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False, allow_none=False)
    server.register_function(lambda *args: [True, list(args), 0], "one.echo.info")
    server.register_function(lambda *args: [False, "[one.vm.info] Error getting VM [7].", 0x0400, 7], "one.vm.info")

    def fail(*_: object) -> None:
        raise xmlrpc.server.Fault(-501, "Type mismatch")

    server.register_function(fail, "one.fail")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/RPC2"
    finally:
        server.shutdown()
        server.server_close()


def test_xml_rpc_values_survive_the_round_trip() -> None:
    hostile = "a&b<c>d]]>\"'\u00e9\u4e2d\U0001f600\n\t"
    big = "x" * (12 * 2**20)  # a large pool's XML is one string: beyond libxml2's default text limit
    with echo_server() as url:
        one = Oned(url, "oneadmin:secret")
        assert one.call("one.echo.info", hostile, 7, -1, True, False, 2**31 - 1) == [
            "oneadmin:secret", hostile, 7, -1, True, False, 2**31 - 1]
        assert one.call("one.echo.info", big) == ["oneadmin:secret", big]
        with pytest.raises(DriverError, match=r"^OpenNebula API one\.fail: Type mismatch$"):
            one.call("one.fail", 1)
        with pytest.raises(DriverError, match=r"^OpenNebula API one.vm.info: Error getting VM \[7\]\.$"):
            one.vm(7)
        with pytest.raises(DriverError, match="does not fit"):
            one.call("one.echo.info", 2**31)


def test_http_errors_and_non_xml_rpc_replies_are_transient() -> None:
    for reply, match in ((b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", "HTTP 503"),
                         (b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n<html>", "not XML-RPC"),
                         (b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n<other/>\n\n\n\n", "not XML-RPC")):
        with canned(reply) as (port, _), pytest.raises(Transient, match=match):
            Oned(f"http://127.0.0.1:{port}/RPC2", "a:b").call("one.user.info", -1)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True)
    return cert, key


def test_https_endpoint_is_verified(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = certificate
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    reply = (b"<?xml version='1.0'?><methodResponse><params><param><value><array><data>"
             b"<value><boolean>1</boolean></value><value><string>&lt;USER/&gt;</string></value>"
             b"</data></array></value></param></params></methodResponse>")
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(reply), reply)
    with canned(ok, tls=server_tls) as (port, _), pytest.raises(Transient, match="CERTIFICATE_VERIFY_FAILED"):
        Oned(f"https://127.0.0.1:{port}/RPC2", "a:b").call("one.user.info", -1)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # an operator's own CA, as OpenSSL reads it
    with canned(ok, tls=server_tls) as (port, requests):
        assert Oned(f"https://127.0.0.1:{port}/RPC2", "a:b").call("one.user.info", -1) == "<USER/>"
    assert b"<string>a:b</string>" in requests[0]


def test_driver_hot_paths_import_no_http_client() -> None:
    """What the drivers load for every action stays free of http.client/xmlrpc.client (the
    e-mail parser and ssl come with them: ~11 ms per action)."""
    code = ("import sys, tm.entry, datastore.entry, vmm.entry, tm.actions.clone, tm.actions.delete, "
            "tm.actions.monitor, tm.actions.context, vmm.actions.deploy_tweaks, datastore.driver, "
            "datastore.backends.storpool, onelib.oned\n"
            "print(sorted(m for m in ('http.client', 'xmlrpc.client', 'email.parser', 'ssl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
