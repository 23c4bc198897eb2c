"""Regression tests for defects a review of the session's package changes found.

Real components as elsewhere: the driver executables and ``one-tweaks`` run as processes
against the StorPool simulator and the oned double (tests/storage_env.py); the HTTP and
XML-RPC clients talk to real sockets served by throwaway servers in this module (each says
so in its docstring).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import xmlrpc.client
import xmlrpc.server

import pytest
from storage_env import IMAGE_DS, Cloud, cloud, sshd
from test_onelib_http import echo_server

from datastore.backends.storpool_api import Api
from onelib import http
from onelib.errors import DriverError, Transient
from onelib.oned import Oned

FIXTURES = (cloud, sshd)


def _tweaks(c: Cloud, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "tweaks", *args], capture_output=True, env=c.env,
                          cwd=c.home, timeout=120, check=False)


def _restore(c: Cloud, volume: str) -> tuple[int, str]:
    """A trash snapshot of ``volume`` restored by ``one-tweaks trash restore``: (image id, SOURCE)."""
    snap = f"{volume}-DELETED-1700000000"
    c.sp(f"VolumeSnapshot/{volume}", {"name": snap, "tags": {"virt": "one", "nloc": "one", "trash": volume}})
    before = set(c.oned.images)
    proc = _tweaks(c, "trash", "restore", snap, "--datastore", str(IMAGE_DS))
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    (new_id,) = set(c.oned.images) - before
    source = c.oned.image(new_id).findtext("SOURCE") or ""
    assert source.startswith("one-img-restored-")
    return new_id, source


def _rm(c: Cloud, image_id: int) -> subprocess.CompletedProcess[bytes]:
    return c.run_ds("rm", c.ds_message(image_id), image_id)


# --- DS rm of a trash-restored image ---------------------------------------------------------------


def test_rm_of_an_image_naming_another_images_restored_volume_keeps_that_volume(cloud: Cloud) -> None:
    """An image whose SOURCE names the volume of a restored image it is not (registered by
    hand with that SOURCE, or a second image over the same volume): deleting it must not
    delete the other image's volume."""
    cloud.make_volume("one-img-9100", 8)
    owner, source = _restore(cloud, "one-img-9100")
    cloud.make_image(9101, source=source)  # the crafted one
    proc = _rm(cloud, 9101)
    assert proc.returncode == 0, proc.stderr
    assert source in cloud.sim.inventory()["volumes"], f"rm of image 9101 deleted image {owner}'s volume"
    # the restored image itself still takes its volume with it
    proc = _rm(cloud, owner)
    assert proc.returncode == 0, proc.stderr
    assert source not in cloud.sim.inventory()["volumes"]


# --- XML-RPC and HTTP -------------------------------------------------------------------------------


def test_xml_rpc_strings_keep_carriage_returns() -> None:
    """A literal CR in XML character data reaches the server as LF (XML end-of-line
    handling); it must travel as a character reference. The request is decoded here by
    Python's own XML-RPC decoder, as a server decodes it."""
    port, thread, requests = _canned_once(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(Transient):
        Oned(f"http://127.0.0.1:{port}/RPC2", "a:b").call("one.echo", "x\ry\r\nz")
    thread.join(timeout=10)
    body = requests[0].partition(b"\r\n\r\n")[2]
    assert xmlrpc.client.loads(body) == (("a:b", "x\ry\r\nz"), "one.echo")


@pytest.mark.parametrize("text", ["bell\x07", "nul\x00", "\udcff surrogate", "\ufffe"])
def test_xml_rpc_refuses_characters_xml_cannot_carry(text: str) -> None:
    """XML 1.0 has no form for C0 controls (but tab/LF/CR) or lone surrogates: one clear
    error before anything is sent, not a malformed document (or an encoder traceback)."""
    with echo_server() as url, pytest.raises(DriverError, match="cannot be sent in XML-RPC"):
        Oned(url, "a:b").call("one.echo.info", text)


def _canned_once(reply: bytes, *, host: str = "127.0.0.1") -> tuple[int, threading.Thread, list[bytes]]:
    """A raw socket server (test double of an HTTP server) that reads one request (kept in
    the list returned) and answers ``reply`` verbatim."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, 0), family=family)
    requests: list[bytes] = []

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                data = b""
                while b"</methodCall>" not in data and b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                requests.append(data)
                conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread, requests


def test_xml_rpc_struct_member_without_value_is_not_an_internal_error() -> None:
    body = (b"<?xml version='1.0'?><methodResponse><params><param><value><struct><member><name>a</name>"
            b"</member></struct></value></param></params></methodResponse>")
    port, thread, _ = _canned_once(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    with pytest.raises(Transient, match="not XML-RPC"):
        Oned(f"http://127.0.0.1:{port}/RPC2", "a:b").call("one.user.info", -1)
    thread.join(timeout=10)


def test_url_port_out_of_range_is_a_driver_error() -> None:
    with pytest.raises(ValueError, match="out of range"):
        http.split_url("http://one-fe:99999/RPC2")
    with pytest.raises(DriverError, match="endpoint"):
        Oned("http://one-fe:70000/RPC2", "a:b")


@pytest.mark.parametrize("path", ["/ctrl/1.0/Volume/x HTTP/1.1\r\nX-Injected: 1", "/a b", "/a\x00b"])
def test_a_request_path_that_would_split_the_request_is_never_sent(path: str) -> None:
    """http.client refused such URLs; the hand-written client must too: the StorPool API
    path carries volume names."""
    port, thread, requests = _canned_once(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    try:
        with pytest.raises(ValueError, match="control characters"):
            http.request("GET", "127.0.0.1", port, path)
        with pytest.raises(ValueError, match="line break"):
            http.request("GET", "127.0.0.1", port, "/", headers={"Authorization": "Storpool v1:t\r\nX: y"})
    finally:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # let the double finish
        thread.join(timeout=10)
    assert requests == [b""]
    api = Api("127.0.0.1", port, "token", retries=0)
    with pytest.raises(DriverError, match=r"^StorPool Volume: .*control characters"):
        api.call(f"Volume/{path.removeprefix('/')}")
    with pytest.raises(ValueError, match="control characters"):
        http.split_url("http://one-fe:2633/RPC 2")


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\nab",  # latin-1 superscript two: str.isdigit() says yes
    b"HTTP/1.1 2\xb20 OK\r\nContent-Length: 0\r\n\r\n",
])
def test_non_ascii_digits_in_a_reply_are_a_protocol_error(reply: bytes) -> None:
    """Every malformed reply is an OSError (ProtocolError), which the callers turn into one
    line; a ValueError from int() would be an internal error."""
    port, thread, _ = _canned_once(reply)
    try:
        with pytest.raises(http.ProtocolError):
            http.request("POST", "127.0.0.1", port, "/RPC2", body=b"<methodCall></methodCall>")
    finally:
        thread.join(timeout=10)


def test_a_bracketed_ipv6_api_host_is_reached() -> None:
    """SP_API_HTTP_HOST="[fd00::1]" worked through http.client (it takes the brackets off a
    host given with a port); the hand-written client must reach it too."""
    body = b'{"data": [{"name": "one-img-1"}]}'
    port, thread, requests = _canned_once(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
                                          host="::1")
    try:
        assert Api("[::1]", port, "token", retries=0).call("VolumesList") == [{"name": "one-img-1"}]
    finally:
        thread.join(timeout=10)
    assert f"\r\nHost: [::1]:{port}\r\n".encode() in requests[0]


def test_a_result_that_cannot_be_written_is_one_line_and_a_failure() -> None:
    """oned's end of stdout gone or the disk full: exit 1 and one line, never a traceback."""
    code = "from onelib.main import finish, run\nfinish(run('one-tweaks-test', lambda argv: 'the result'))"
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-c", code], stdout=full, stderr=subprocess.PIPE, text=True,
                              timeout=60, check=False)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == ["one-tweaks-test: done, but the result could not be written: "
                                        "No space left on device"]


def test_trash_restore_keeps_the_volume_when_oned_may_have_registered_the_image(cloud: Cloud) -> None:
    """oned applies the registration but its reply never arrives (timeout): the image it made
    names the new volume, so the volume must stay; a refusal (no image) removes it."""
    volume = "one-img-9300-42-0"
    cloud.make_volume(volume, 8)
    snap = f"{volume}-DELETED-1700000000"
    cloud.sp(f"VolumeSnapshot/{volume}", {"name": snap, "tags": {"virt": "one", "nloc": "one", "trash": volume}})
    cloud.configure(API_TIMEOUT=1)
    before_volumes, before_images = set(cloud.sim.inventory()["volumes"]), set(cloud.oned.images)
    cloud.oned.fail("one.image.allocate", mode="delay", delay=2.5)
    proc = _tweaks(cloud, "trash", "restore", snap, "--datastore", str(IMAGE_DS))
    assert proc.returncode != 0
    (line,) = proc.stderr.decode().splitlines()
    (kept,) = set(cloud.sim.inventory()["volumes"]) - before_volumes
    assert f"its volume {kept} is kept" in line and "Traceback" not in line
    deadline = time.monotonic() + 10
    while set(cloud.oned.images) == before_images and time.monotonic() < deadline:
        time.sleep(0.1)
    (new_id,) = set(cloud.oned.images) - before_images
    assert cloud.oned.image(new_id).findtext("SOURCE") == kept, "the image oned made names the kept volume"

    cloud.oned.fail("one.image.allocate", mode="error", message="quota exceeded")
    proc = _tweaks(cloud, "trash", "restore", snap, "--datastore", str(IMAGE_DS))
    assert proc.returncode != 0 and "quota exceeded" in proc.stderr.decode()
    assert set(cloud.sim.inventory()["volumes"]) - before_volumes == {kept}, "a refused registration leaves nothing"
