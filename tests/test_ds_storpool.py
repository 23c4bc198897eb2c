"""The ``storpool`` DS_MAD actions (datastore/storpool/*), run as oned runs them.

Each test runs the executables ``[python, datastore/storpool/<action>, ...]`` with the base64
``DS_DRIVER_ACTION_DATA`` built from the shared OpenNebula fixtures, against the StorPool API
simulator (tests/sim/storpool.py; NOT StorPool: volumes are sparse files, attachments real
loop devices with one link per client). The front-end is StorPool client 3 with its own
device directory; with an empty BRIDGE_LIST it stages image data itself. Images are made by
the real qemu-img from random data and checked by checksum through an attached device.
Needs root (loop devices), qemu-img and mkfs.ext4.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import gzip
import hashlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import drivers
import pytest
import storage_env
from lxml import etree
from sim.storpool import StorPoolSim
from storage_env import sshd

from datastore.backends.storpool_api import Api

ROOT = Path(__file__).resolve().parent.parent
EXE = drivers.ds("storpool")
ONE = Path(__file__).resolve().parent / "fixtures" / "opennebula"
TOKEN = "3712094213520841219"
MiB = 2**20
CLIENT = 3
ACTIONS = ("cp", "mkfs", "clone", "rm", "stat", "monitor", "snap_delete", "snap_revert", "snap_flatten", "export")
FORMS = ("6.8", "6.6.3", "6.6")
FIXTURES = (sshd,)


# --- images (made once) -----------------------------------------------------------------------


def _qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A raw image of random data with a hole and an unaligned tail (9 MiB + 4 KiB), and the
    same content as qcow2, compressed qcow2, VMDK, streamOptimized VMDK, VHDX, gzip."""
    d = tmp_path_factory.mktemp("images")
    data = os.urandom(6 * MiB) + bytes(3 * MiB) + os.urandom(4096)
    raw = d / "disk.raw"
    raw.write_bytes(data)
    _qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(d / "disk.qcow2"))
    _qemu_img("convert", "-f", "raw", "-O", "qcow2", "-c", str(raw), str(d / "disk-c.qcow2"))
    _qemu_img("convert", "-f", "raw", "-O", "vmdk", str(raw), str(d / "disk.vmdk"))
    _qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", str(raw),
              str(d / "disk-stream.vmdk"))
    _qemu_img("convert", "-f", "raw", "-O", "vhdx", str(raw), str(d / "disk.vhdx"))
    (d / "disk.qcow2.gz").write_bytes(gzip.compress((d / "disk.qcow2").read_bytes()))
    # refused ones: a backing file, a VMDK whose data is elsewhere, an unsupported format
    _qemu_img("create", "-f", "qcow2", "-b", str(raw), "-F", "raw", str(d / "backed.qcow2"))
    _qemu_img("create", "-f", "vmdk", "-o", "subformat=monolithicFlat", str(d / "flat.vmdk"), "10M")
    _qemu_img("convert", "-f", "raw", "-O", "vdi", str(raw), str(d / "disk.vdi"))
    return {"dir": d, "data": data, "files": {p.name: p for p in d.iterdir()}}


# --- the cloud: simulator, front-end client, configuration ----------------------------------


def image_element(image_id: int, **fields: Any) -> etree._Element:
    """ds-cp.xml's IMAGE with ID ``image_id`` and these fields (TEMPLATE: a dict) set."""
    doc = etree.parse(str(ONE / "ds-cp.xml")).getroot()
    img = doc.find("IMAGE")
    assert img is not None
    img.find("ID").text = str(image_id)  # type: ignore[union-attr]
    template = fields.pop("TEMPLATE", {})
    for name, value in fields.items():
        el = img.find(name)
        if el is None:
            el = etree.SubElement(img, name)
        el.text = None if value is None else str(value)
    tpl = img.find("TEMPLATE")
    assert tpl is not None
    for name, value in template.items():
        el = tpl.find(name)
        if el is None:
            el = etree.SubElement(tpl, name)
        el.text = value
    return img


def _our_loops(root: Path) -> set[str]:
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    return {line for line in out.splitlines() if str(root) in line}


class Cloud:
    def __init__(self, tmp: Path, sim: StorPoolSim, images: dict[str, Any]) -> None:
        self.tmp = tmp
        self.sim = sim
        self.images = images
        self.dev = tmp / "dev-fe"
        self.staging = tmp / "staging"
        self.staging.mkdir()
        self.api = Api(sim.host, sim.port, TOKEN, retries=0)
        (tmp / "storpool.conf").write_text(f"SP_OURID={CLIENT}\n")
        (tmp / "one_auth").write_text("oneadmin:secret\n")
        self.conf = tmp / "one-tweaks.conf"
        self.settings: dict[str, str] = {
            "SP_API_HTTP_HOST": sim.host, "SP_API_HTTP_PORT": str(sim.port), "SP_AUTH_TOKEN": TOKEN,
            "SP_DEVICE_DIR": str(self.dev), "SP_STORPOOL_CONF": str(tmp / "storpool.conf"),
            "LOCK_DIR": str(tmp / "locks"), "STAGING_DIR": str(self.staging), "API_RETRIES": "0",
        }
        self.write_conf()
        self.env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        self.env.update(ONE_TWEAKS_CONF=str(self.conf), ONE_XMLRPC="http://127.0.0.1:9/RPC2",
                        ONE_AUTH=str(tmp / "one_auth"), no_proxy="*")

    def write_conf(self, **extra: str) -> None:
        self.settings.update(extra)
        self.conf.write_text("".join(f"{k}={v}\n" for k, v in self.settings.items()))

    # --- payloads ------------------------------------------------------------------------------
    def datastore(self, ds_id: int = 100, **attrs: str) -> etree._Element:
        ds = etree.parse(str(ONE / "datastore-100-image.xml")).getroot()
        ds.find("ID").text = str(ds_id)  # type: ignore[union-attr]
        ds.find("DS_MAD").text = "storpool"  # type: ignore[union-attr]
        ds.find("TM_MAD").text = "storpool"  # type: ignore[union-attr]
        tpl = ds.find("TEMPLATE")
        assert tpl is not None
        values = {"DS_MAD": "storpool", "TM_MAD": "storpool", "BRIDGE_LIST": "", "RESTRICTED_DIRS": "/",
                  "SAFE_DIRS": f"/var/tmp {self.images['dir']}", **attrs}
        for name, value in values.items():
            el = tpl.find(name)
            if el is None:
                el = etree.SubElement(tpl, name)
            el.text = etree.CDATA(value) if value else None
        return ds

    @staticmethod
    def image(image_id: int, **fields: Any) -> etree._Element:
        return image_element(image_id, **fields)

    @staticmethod
    def message(*parts: etree._Element) -> bytes:
        root = etree.Element("DS_DRIVER_ACTION_DATA")
        for part in parts:
            root.append(copy.deepcopy(part))
        return base64.b64encode(etree.tostring(root))

    def payload(self, image_id: int, ds_id: int = 100, ds_attrs: dict[str, str] | None = None,
                **fields: Any) -> bytes:
        return self.message(self.image(image_id, **fields), self.datastore(ds_id, **(ds_attrs or {})))

    def stat_payload(self, path: str, **ds_attrs: str) -> bytes:
        doc = etree.parse(str(ONE / "ds-stat.xml")).getroot()
        doc.find("IMAGE/PATH").text = path  # type: ignore[union-attr]
        return self.message(doc.find("IMAGE"), self.datastore(**ds_attrs))  # type: ignore[arg-type]

    def monitor_payload(self, ds_id: int = 100) -> bytes:
        doc = etree.parse(str(ONE / "ds-monitor-image.xml")).getroot()
        assert doc.find("DATASTORE") is not None and doc.find("IMAGE") is None
        return self.message(self.datastore(ds_id))

    # --- running actions -----------------------------------------------------------------------
    def argv(self, action: str, payload: bytes, ident: int | str, form: str = "6.8") -> tuple[list[str], bytes]:
        exe = [sys.executable, str(EXE / action)]
        if form == "6.8":
            return [*exe, str(ident)], payload
        if form == "6.6.3":
            return [*exe, "-", str(ident)], payload
        return [*exe, payload.decode(), str(ident)], b""

    def run(self, action: str, payload: bytes, ident: int | str, form: str = "6.8",
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv, stdin = self.argv(action, payload, ident, form)
        proc = subprocess.run(argv, input=stdin, capture_output=True, env=self.env, timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())

    def ok(self, action: str, payload: bytes, ident: int | str, form: str = "6.8") -> str:
        proc = self.run(action, payload, ident, form)
        assert proc.returncode == 0, f"{action} failed: {proc.stderr}"
        return proc.stdout

    def fails(self, action: str, payload: bytes, ident: int | str, form: str = "6.8") -> str:
        proc = self.run(action, payload, ident, form)
        assert proc.returncode != 0, f"{action} succeeded: {proc.stdout}"
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].strip(), f"not one stderr line: {proc.stderr!r}"
        assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
        return lines[0]

    def cp(self, image_id: int, path: str | Path, **fields: Any) -> str:
        return self.ok("cp", self.payload(image_id, PATH=str(path), **fields), image_id)

    # --- looking at the cluster ----------------------------------------------------------------
    def calls(self) -> list[str]:
        return [name for name, _body in self.sim.calls]

    def reset_calls(self) -> None:
        self.sim.calls.clear()

    def volumes(self) -> dict[str, Any]:
        return dict(self.sim.inventory()["volumes"])

    def snapshots(self) -> dict[str, Any]:
        return dict(self.sim.inventory()["snapshots"])

    def clean(self) -> None:
        """No attachment, no device link, no scratch file is left behind."""
        inv = self.sim.inventory()
        assert inv["attachments"] == []
        assert not self.dev.exists() or list(self.dev.iterdir()) == []
        assert list(self.staging.iterdir()) == []

    def read(self, name: str, *, snapshot: bool = False) -> bytes:
        """A volume's whole content, read through a read-only attachment to the front-end."""
        key = "snapshot" if snapshot else "volume"
        self.api.call("VolumesReassignWait", {"reassign": [{key: name, "ro": [CLIENT]}]})
        try:
            return (self.dev / name).read_bytes()
        finally:
            self.api.call("VolumesReassignWait", {"reassign": [{key: name, "detach": [CLIENT]}]})

    def write(self, name: str, data: bytes, offset: int = 0) -> None:
        self.api.call("VolumesReassignWait", {"reassign": [{"volume": name, "rw": [CLIENT]}]})
        try:
            fd = os.open(self.dev / name, os.O_WRONLY)
            try:
                os.pwrite(fd, data, offset)
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            self.api.call("VolumesReassignWait", {"reassign": [{"volume": name, "detach": [CLIENT]}]})

    def create(self, name: str, size: int = 4 * MiB, template: str = "one-ds-100") -> None:
        self.api.call("VolumeCreate", {"name": name, "size": size, "template": template})

    def snapshot(self, volume: str, name: str) -> None:
        self.api.call(f"VolumeSnapshot/{volume}", {"name": name})

    def expect_image(self, name: str, data: bytes) -> None:
        """``name`` holds ``data`` (zeros after it) and has the size and tags of an import."""
        vol = self.volumes()[name]
        size = -(-len(data) // MiB) * MiB
        assert vol["size"] == size
        assert vol["template"] == "one-ds-100"
        assert vol["tags"] == {"virt": "one", "nloc": "one"}
        got = self.read(name)
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data + bytes(size - len(data))).hexdigest()


@pytest.fixture
def cloud(tmp_path: Path, images: dict[str, Any]) -> Iterator[Cloud]:
    root = tmp_path / "sp"
    with StorPoolSim(root, token=TOKEN) as sim:
        env = Cloud(tmp_path, sim, images)
        sim.add_client(CLIENT, env.dev)
        env.api.call("VolumeTemplateCreate", {"name": "one-ds-100", "replication": 3})
        env.api.call("VolumeTemplateCreate", {"name": "one-ds-101", "replication": 2})
        env.reset_calls()
        yield env
    assert not _our_loops(root), "loop devices leaked"


class _Files(http.server.SimpleHTTPRequestHandler):
    """Static files; answers ``Range: bytes=a-b`` with 206 when ``ranges`` is set (as most
    servers do; Python's own handler ignores Range)."""

    ranges = False

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/moved/"):          # /moved/<file> -> /<file>; /moved/ftp -> ftp://
            target = "ftp://127.0.0.1/disk.raw" if self.path == "/moved/ftp" else self.path[6:]
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        wanted = self.headers.get("Range", "")
        path = Path(self.translate_path(self.path))
        if not (self.ranges and wanted.startswith("bytes=") and path.is_file()):
            super().do_GET()
            return
        first, _, last = wanted[6:].partition("-")
        data = path.read_bytes()
        end = min(int(last or len(data) - 1), len(data) - 1)
        body = data[int(first):end + 1]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {first}-{end}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def _serve(directory: Path, ranges: bool) -> Iterator[str]:
    handler = type("Handler", (_Files,), {"ranges": ranges})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def web(images: dict[str, Any]) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 serving the images directory (no Range support)."""
    with _serve(images["dir"], ranges=False) as url:
        yield url


@pytest.fixture
def web_ranges(images: dict[str, Any]) -> Iterator[str]:
    """The same, answering Range requests with 206 Partial Content."""
    with _serve(images["dir"], ranges=True) as url:
        yield url


CP_CALLS = ["Volume", "Snapshot", "VolumesReassign", "VolumeCreate", "VolumesReassignWait",
            "VolumesReassignWait", "VolumeUpdate"]


# --- cp -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["disk.raw", "disk.qcow2", "disk-c.qcow2", "disk.vmdk", "disk-stream.vmdk",
                                  "disk.vhdx", "disk.qcow2.gz"])
def test_cp_local_file_every_format(cloud: Cloud, name: str) -> None:
    out = cloud.cp(9, cloud.images["files"][name])
    assert out == "one-img-9 raw\n"
    assert set(cloud.volumes()) == {"one-img-9"}
    assert cloud.snapshots() == {}
    assert cloud.calls() == CP_CALLS
    attach = cloud.sim.calls[4][1]["reassign"][0]
    assert attach == {"volume": "one-img-9-" + hashlib.md5(b"one-img-9\n").hexdigest(), "rw": [CLIENT]}
    cloud.expect_image("one-img-9", cloud.images["data"])
    cloud.clean()


def test_cp_tiny_unaligned_raw_file(cloud: Cloud, tmp_path: Path) -> None:
    data = os.urandom(1000)
    (cloud.images["dir"] / "tiny.raw").write_bytes(data)
    cloud.cp(8, cloud.images["dir"] / "tiny.raw")
    cloud.expect_image("one-img-8", data)
    cloud.clean()


def test_cp_no_decompress(cloud: Cloud) -> None:
    """NO_DECOMPRESS (datastore attribute, as downloader.sh): the gzip file is the image."""
    gz = cloud.images["files"]["disk.qcow2.gz"]
    cloud.ok("cp", cloud.payload(7, PATH=str(gz), ds_attrs={"NO_DECOMPRESS": "YES"}), 7)
    cloud.expect_image("one-img-7", gz.read_bytes())


def test_cp_from_http(cloud: Cloud, web: str) -> None:
    cloud.cp(10, f"{web}/disk-stream.vmdk")
    cloud.expect_image("one-img-10", cloud.images["data"])
    cloud.cp(11, f"{web}/disk.raw?x=1&y=2")      # a query string is fine
    cloud.expect_image("one-img-11", cloud.images["data"])
    cloud.cp(12, f"{web}/moved/disk.qcow2")      # redirects to http(s) are followed
    cloud.expect_image("one-img-12", cloud.images["data"])
    assert "redirect to ftp" in cloud.fails("cp", cloud.payload(13, PATH=f"{web}/moved/ftp"), 13)
    assert set(cloud.volumes()) == {"one-img-10", "one-img-11", "one-img-12"}
    cloud.clean()                                  # the download is gone from STAGING_DIR


def test_cp_http_errors_leave_nothing(cloud: Cloud, web: str) -> None:
    line = cloud.fails("cp", cloud.payload(12, PATH=f"{web}/missing.qcow2"), 12)
    assert "HTTP 404" in line
    line = cloud.fails("cp", cloud.payload(12, PATH="http://127.0.0.1:9/disk.raw"), 12)
    assert "127.0.0.1:9" in line
    assert cloud.volumes() == {}
    assert "VolumeCreate" not in cloud.calls()
    cloud.clean()


def test_cp_checks_md5_and_sha1(cloud: Cloud, web: str) -> None:
    path = cloud.images["files"]["disk.qcow2"]
    blob = path.read_bytes()
    md5, sha1 = hashlib.md5(blob).hexdigest(), hashlib.sha1(blob).hexdigest()
    cloud.cp(13, path, TEMPLATE={"MD5": md5.upper(), "SHA1": sha1})
    cloud.cp(14, f"{web}/disk.qcow2", TEMPLATE={"SHA1": sha1})
    line = cloud.fails("cp", cloud.payload(15, PATH=str(path), TEMPLATE={"MD5": "0" * 32}), 15)
    assert "MD5" in line and md5 in line
    line = cloud.fails("cp", cloud.payload(15, PATH=f"{web}/disk.qcow2", TEMPLATE={"SHA1": "1" * 40}), 15)
    assert "SHA1" in line
    line = cloud.fails("cp", cloud.payload(15, PATH=str(path), TEMPLATE={"MD5": "$(reboot)"}), 15)
    assert set(cloud.volumes()) == {"one-img-13", "one-img-14"}
    cloud.clean()


def test_cp_restricted_and_safe_dirs(cloud: Cloud, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "disk.raw").write_bytes(cloud.images["data"])
    line = cloud.fails("cp", cloud.payload(16, PATH=str(outside / "disk.raw")), 16)
    assert "restricted" in line
    # a symlink from a safe dir to a restricted file is the restricted file
    link = cloud.images["dir"] / "sneaky.raw"
    link.unlink(missing_ok=True)
    link.symlink_to(outside / "disk.raw")
    try:
        assert "restricted" in cloud.fails("cp", cloud.payload(16, PATH=str(link)), 16)
        # a safe dir's name as a prefix of another dir does not make that dir safe
        twin = Path(str(cloud.images["dir"]) + "x")
        twin.mkdir(exist_ok=True)
        (twin / "disk.raw").write_bytes(b"\0" * 512)
        assert "restricted" in cloud.fails("cp", cloud.payload(16, PATH=str(twin / "disk.raw")), 16)
    finally:
        link.unlink()
    assert cloud.sim.calls == [] and cloud.volumes() == {}
    # no RESTRICTED_DIRS: anything readable may be imported
    cloud.ok("cp", cloud.payload(16, PATH=str(outside / "disk.raw"), ds_attrs={"RESTRICTED_DIRS": ""}), 16)
    cloud.expect_image("one-img-16", cloud.images["data"])


@pytest.mark.parametrize(("name", "reason"), [("backed.qcow2", "backing file"), ("flat.vmdk", "another file"),
                                              ("disk.vdi", "format vdi")])
def test_cp_refuses_images_qemu_img_should_not_open(cloud: Cloud, name: str, reason: str) -> None:
    line = cloud.fails("cp", cloud.payload(17, PATH=str(cloud.images["files"][name])), 17)
    assert reason in line
    assert cloud.volumes() == {} and "VolumeCreate" not in cloud.calls()
    cloud.clean()


def test_cp_never_overwrites_an_existing_image_volume(cloud: Cloud) -> None:
    cloud.create("one-img-18")
    cloud.write("one-img-18", b"precious")
    line = cloud.fails("cp", cloud.payload(18, PATH=str(cloud.images["files"]["disk.raw"])), 18)
    assert "one-img-18 already exists" in line
    assert cloud.read("one-img-18").startswith(b"precious")
    assert set(cloud.volumes()) == {"one-img-18"}


def test_cp_replaces_a_crashed_runs_staging_volume(cloud: Cloud) -> None:
    staging = "one-img-19-" + hashlib.md5(b"one-img-19\n").hexdigest()
    cloud.create(staging, 64 * MiB)
    cloud.write(staging, b"half-written garbage" * 1000)
    cloud.api.call("VolumesReassignWait", {"reassign": [{"volume": staging, "rw": [CLIENT]}]})
    cloud.cp(19, cloud.images["files"]["disk.vhdx"])
    assert set(cloud.volumes()) == {"one-img-19"}
    cloud.expect_image("one-img-19", cloud.images["data"])
    cloud.clean()


def test_cp_a_failing_api_call_leaves_nothing_and_a_rerun_succeeds(cloud: Cloud) -> None:
    path = cloud.images["files"]["disk.qcow2"]
    seen: dict[str, int] = {}
    for step, call in enumerate(CP_CALLS):
        image_id = 20 + step
        cloud.sim.fail(call, skip=seen.get(call, 0))
        seen[call] = seen.get(call, 0) + 1
        line = cloud.fails("cp", cloud.payload(image_id, PATH=str(path)), image_id)
        assert "simulated error failure" in line, (call, line)
        cloud.sim.clear_faults()
        assert cloud.volumes() == {}, f"a volume is left after {call} failed"
        cloud.clean()
        cloud.cp(image_id, path)
        cloud.expect_image(f"one-img-{image_id}", cloud.images["data"])
        cloud.api.call(f"VolumeDelete/one-img-{image_id}", {})


def test_cp_rename_whose_reply_is_lost_counts_as_done(cloud: Cloud) -> None:
    cloud.sim.fail("VolumeUpdate", mode="drop", apply=True)
    cloud.cp(30, cloud.images["files"]["disk.raw"])
    cloud.expect_image("one-img-30", cloud.images["data"])
    cloud.clean()


def test_cp_retries_transient_errors(cloud: Cloud) -> None:
    cloud.write_conf(API_RETRIES="3")
    cloud.sim.fail("VolumeCreate", mode="transient", times=2)
    cloud.cp(31, cloud.images["files"]["disk.raw"])
    assert cloud.calls().count("VolumeCreate") == 3
    cloud.expect_image("one-img-31", cloud.images["data"])


def _kill_after(cloud: Cloud, action: str, payload: bytes, ident: int, calls: list[str], step: int) -> None:
    """Run ``action`` and SIGKILL it right after API call number ``step`` (1-based) returned:
    call ``step + 1`` is held back by the simulator, then applied with nobody to answer."""
    call = calls[step]
    cloud.reset_calls()
    cloud.sim.fail(call, mode="delay", delay=0.5, skip=calls[:step].count(call))
    argv, stdin = cloud.argv(action, payload, ident)
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=cloud.env)
    assert proc.stdin is not None
    proc.stdin.write(stdin)
    proc.stdin.close()
    deadline = time.monotonic() + 30
    while len(cloud.sim.calls) <= step and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cloud.calls() == calls[:step + 1], (action, step)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL
    time.sleep(1.5)                            # the held-back call is applied, its reply lost
    cloud.sim.clear_faults()


def test_cp_killed_after_each_api_call_then_rerun(cloud: Cloud) -> None:
    """SIGKILL right after each API call in turn, then a re-run: exactly one complete volume,
    no staging volume, attachment, link or scratch file."""
    path = cloud.images["files"]["disk.raw"]
    for step in range(1, len(CP_CALLS)):
        image_id = 40 + step
        payload = cloud.payload(image_id, PATH=str(path))
        _kill_after(cloud, "cp", payload, image_id, CP_CALLS, step)
        rerun = cloud.run("cp", payload, image_id)
        if CP_CALLS[step] == "VolumeUpdate":   # killed after the rename: the import is complete
            assert rerun.returncode == 1 and "already exists" in rerun.stderr
        else:
            assert rerun.returncode == 0, (step, rerun.stderr)
        assert set(cloud.volumes()) == {f"one-img-{image_id}"}, step
        cloud.expect_image(f"one-img-{image_id}", cloud.images["data"])
        cloud.clean()
        cloud.api.call(f"VolumeDelete/one-img-{image_id}", {})


def test_export_killed_after_each_api_call_then_rerun(cloud: Cloud) -> None:
    cloud.cp(99, cloud.images["files"]["disk.raw"])
    for step in range(1, len(EXPORT_CALLS)):
        payload = cloud.payload(99, SOURCE="one-img-99")
        _kill_after(cloud, "export", payload, 99, EXPORT_CALLS, step)
        info = etree.fromstring(cloud.ok("export", payload, 99).encode())
        target = Path(info.findtext("IMPORT_SOURCE") or "")
        assert info.findtext("MD5") == hashlib.md5(target.read_bytes()).hexdigest()
        assert cloud.snapshots() == {} and set(cloud.volumes()) == {"one-img-99"}
        target.unlink()
        cloud.clean()


def test_rm_and_snap_flatten_killed_after_each_api_call_then_rerun(cloud: Cloud) -> None:
    rm_calls = ["SnapshotsList", "VolumesReassign", "VolumeDelete", "VolumesReassign", "VolumesReassign",
                "SnapshotDelete", "VolumesReassign", "SnapshotDelete"]
    for step in range(1, len(rm_calls)):
        vol = _image_with_snapshots(cloud, 600 + step)
        payload = cloud.payload(600 + step, SOURCE=vol)
        _kill_after(cloud, "rm", payload, 600 + step, rm_calls, step)
        cloud.ok("rm", payload, 600 + step)
        assert cloud.volumes() == {} and cloud.snapshots() == {}, step
    flatten_calls = ["SnapshotsList", "VolumeRevert", "VolumesReassign", "SnapshotDelete", "VolumesReassign",
                     "SnapshotDelete"]
    for step in range(1, len(flatten_calls)):
        vol = _image_with_snapshots(cloud, 700 + step)
        payload = cloud.payload(700 + step, SOURCE=vol, TARGET_SNAPSHOT=0)
        _kill_after(cloud, "snap_flatten", payload, 700 + step, flatten_calls, step)
        cloud.ok("snap_flatten", payload, 700 + step)
        assert cloud.snapshots() == {}, step
        assert cloud.read(vol).startswith(b"first"), step
        cloud.api.call(f"VolumeDelete/{vol}", {})
    cloud.clean()


# --- mkfs ---------------------------------------------------------------------------------------


def test_mkfs_empty_datablock_is_one_call(cloud: Cloud) -> None:
    out = cloud.ok("mkfs", cloud.payload(50, SIZE=12, FORMAT="raw", FS="", PATH=""), 50)
    assert out == "one-img-50\n"
    assert cloud.calls() == ["VolumeCreate"]
    vol = cloud.volumes()["one-img-50"]
    assert vol["size"] == 12 * MiB and vol["template"] == "one-ds-100"
    assert vol["tags"] == {"virt": "one", "nloc": "one"}
    line = cloud.fails("mkfs", cloud.payload(50, SIZE=12, FORMAT="raw", PATH=""), 50)
    assert "one-img-50 already exists" in line


def test_qos_class_tag(cloud: Cloud) -> None:
    """addon-storpool's qc tag: the image's SP_QOSCLASS, else the datastore's."""
    cloud.ok("mkfs", cloud.payload(55, SIZE=4, PATH="", ds_attrs={"SP_QOSCLASS": "tier2"}), 55)
    cloud.ok("mkfs", cloud.payload(56, SIZE=4, PATH="", ds_attrs={"SP_QOSCLASS": "tier2"},
                                   TEMPLATE={"SP_QOSCLASS": "gold"}), 56)
    vols = cloud.volumes()
    assert vols["one-img-55"]["tags"] == {"virt": "one", "nloc": "one", "qc": "tier2"}
    assert vols["one-img-56"]["tags"]["qc"] == "gold"
    cloud.reset_calls()
    assert "SP_QOSCLASS" in cloud.fails("mkfs", cloud.payload(57, SIZE=4, PATH="",
                                                              TEMPLATE={"SP_QOSCLASS": "a b"}), 57)
    assert cloud.sim.calls == []


def test_mkfs_with_a_file_system(cloud: Cloud) -> None:
    assert cloud.ok("mkfs", cloud.payload(51, SIZE=16, FS="ext4", PATH=""), 51) == "one-img-51\n"
    assert set(cloud.volumes()) == {"one-img-51"}
    data = cloud.read("one-img-51")
    assert len(data) == 16 * MiB
    assert data[1080:1082] == b"\x53\xef"      # the ext2/3/4 superblock magic
    cloud.clean()


def test_mkfs_save_as_creates_nothing(cloud: Cloud) -> None:
    assert cloud.ok("mkfs", cloud.payload(52, SIZE=10, FORMAT="save_as", PATH=""), 52) == "one-img-52\n"
    assert cloud.sim.calls == []


@pytest.mark.parametrize(("fields", "reason"), [
    ({"FS": "ext4; rm -rf /"}, "not supported"),
    ({"FS": "ntfs"}, "not supported"),
    ({"FORMAT": "qcow2"}, "raw"),
    ({"SIZE": "0"}, "SIZE"),
    ({"SIZE": "ten"}, "SIZE"),
])
def test_mkfs_refuses(cloud: Cloud, fields: dict[str, str], reason: str) -> None:
    line = cloud.fails("mkfs", cloud.payload(53, **{"SIZE": "10", "PATH": "", **fields}), 53)
    assert reason in line
    assert cloud.sim.calls == []


def test_mkfs_failure_leaves_nothing(cloud: Cloud) -> None:
    cloud.write_conf(SUPPORTED_FS="ext4")
    assert "not supported" in cloud.fails("mkfs", cloud.payload(54, SIZE=10, FS="ext3", PATH=""), 54)
    cloud.sim.fail("VolumesReassignWait")
    cloud.fails("mkfs", cloud.payload(54, SIZE=10, FS="ext4", PATH=""), 54)
    assert cloud.volumes() == {}
    cloud.ok("mkfs", cloud.payload(54, SIZE=10, FS="ext4", PATH=""), 54)
    assert set(cloud.volumes()) == {"one-img-54"}
    cloud.clean()


# --- clone --------------------------------------------------------------------------------------


def test_clone(cloud: Cloud) -> None:
    cloud.cp(60, cloud.images["files"]["disk.raw"])
    cloud.reset_calls()
    out = cloud.ok("clone", cloud.payload(61, PATH="one-img-60", CLONING_ID=60), 61)
    assert out == "one-img-61 raw\n"
    assert cloud.calls() == ["VolumeCreate"]
    assert cloud.sim.calls[0][1]["baseOn"] == "one-img-60"
    cloud.expect_image("one-img-61", cloud.images["data"])
    # addon-storpool's SOURCE form, into another datastore (template)
    cloud.ok("clone", cloud.payload(62, ds_id=101, PATH="one-ds-100/one-img-60", CLONING_ID=60), 62)
    assert cloud.volumes()["one-img-62"]["template"] == "one-ds-101"
    assert cloud.read("one-img-62") == cloud.read("one-img-60")


def test_clone_errors(cloud: Cloud) -> None:
    cloud.create("one-img-63")
    line = cloud.fails("clone", cloud.payload(64, PATH="one-img-99", CLONING_ID=99), 64)
    assert "one-img-99" in line
    line = cloud.fails("clone", cloud.payload(63, PATH="one-img-63", CLONING_ID=63), 63)
    assert "itself" in line
    cloud.create("one-img-65")
    line = cloud.fails("clone", cloud.payload(65, PATH="one-img-63", CLONING_ID=63), 65)
    assert "one-img-65 already exists" in line
    for bad in ("one-img-63;reboot", "a/b/c", "../one-img-63", "one-img-63 x", ""):
        cloud.reset_calls()
        cloud.fails("clone", cloud.payload(66, PATH=bad, CLONING_ID=63), 66)
        assert cloud.sim.calls == []
    assert set(cloud.volumes()) == {"one-img-63", "one-img-65"}


def test_fifteen_parallel_clones_of_one_image(cloud: Cloud) -> None:
    cloud.cp(70, cloud.images["files"]["disk.raw"])
    with ThreadPoolExecutor(15) as pool:
        procs = list(pool.map(lambda i: cloud.run("clone", cloud.payload(100 + i, PATH="one-img-70"), 100 + i),
                              range(15)))
    assert all(p.returncode == 0 for p in procs), [p.stderr for p in procs if p.returncode]
    assert set(cloud.volumes()) == {"one-img-70", *(f"one-img-{100 + i}" for i in range(15))}
    cloud.expect_image("one-img-107", cloud.images["data"])


# --- rm -----------------------------------------------------------------------------------------


def test_rm_deletes_the_volume_its_snapshots_and_leftovers(cloud: Cloud) -> None:
    staging = "one-img-80-" + hashlib.md5(b"one-img-80\n").hexdigest()
    for name in ("one-img-80", staging, "one-img-800", "one-img-80-42-0"):
        cloud.create(name)
    for snap in ("one-img-80-snap0", "one-img-80-snap1", "one-img-80-export-3", "one-img-80-ONESNAP-1-1700000000"):
        cloud.snapshot("one-img-80", snap)
    cloud.snapshot("one-img-800", "one-img-800-snap0")
    cloud.snapshot("one-img-80-42-0", "one-img-80-42-0-snap0")
    cloud.api.call("VolumesReassignWait", {"reassign": [{"volume": "one-img-80", "rw": [CLIENT, 7]}]})
    cloud.reset_calls()
    assert cloud.ok("rm", cloud.payload(80, SOURCE="one-img-80"), 80) == ""
    assert set(cloud.volumes()) == {"one-img-800", "one-img-80-42-0"}
    assert set(cloud.snapshots()) == {"one-img-800-snap0", "one-img-80-42-0-snap0"}
    assert cloud.sim.inventory()["attachments"] == []
    assert len(cloud.sim.calls) == 1 + 2 + 2 + 2 * 4
    # again: nothing left to delete is no error, and costs 3 calls
    cloud.reset_calls()
    cloud.ok("rm", cloud.payload(80, SOURCE="one-img-80"), 80)
    assert cloud.calls() == ["SnapshotsList", "VolumesReassign", "VolumesReassign"]


def test_rm_uses_the_image_id_not_source(cloud: Cloud) -> None:
    cloud.create("one-img-81")
    cloud.create("one-img-82")
    cloud.ok("rm", cloud.payload(81, SOURCE="one-ds-100/one-img-82"), 81)
    assert set(cloud.volumes()) == {"one-img-82"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _backups(cloud: Cloud, location: str) -> list[dict[str, Any]]:
    return list(cloud.sim.inventory()["backups"].get(location, []))


def test_rm_backs_up_to_the_remote_location_before_deleting(cloud: Cloud) -> None:
    cloud.sim.add_location("remote-a")
    cloud.cp(84, cloud.images["files"]["disk.raw"])
    cloud.snapshot("one-img-84", "one-img-84-snap0")
    image = cloud.read("one-img-84")
    cloud.reset_calls()
    payload = cloud.payload(84, SOURCE="one-img-84", ds_attrs={"REMOTE_BACKUP_DELETE": "remote-a tag keep=1 src=one"})
    assert cloud.ok("rm", payload, 84) == ""
    # the backup is taken first (one call), then everything is deleted as without it
    assert cloud.calls() == ["SnapshotsList", "VolumeBackup", "VolumesReassign", "VolumeDelete", "VolumesReassign",
                             "VolumesReassign", "SnapshotDelete"]
    assert cloud.sim.calls[1][1] == {"volume": "one-img-84", "location": "remote-a",
                                     "tags": {"keep": "1", "src": "one"}}
    (backup,) = _backups(cloud, "remote-a")
    assert (backup["name"], backup["size"], backup["tags"]) == ("one-img-84", len(image), {"keep": "1", "src": "one"})
    assert _sha(Path(backup["path"]).read_bytes()) == _sha(image)
    assert cloud.volumes() == {} and cloud.snapshots() == {}
    cloud.clean()


def _expect_kept(cloud: Cloud, proc: subprocess.CompletedProcess[str], volume: str, image: bytes,
                 since: int) -> str:
    """rm failed with one line, and ``volume`` is kept as ``<volume>-<ts>``, tagged del=y,
    its data and other tags intact; returns the kept name."""
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    kept = [name for name in cloud.volumes() if name.startswith(volume + "-")]
    assert volume not in cloud.volumes() and len(kept) == 1, cloud.volumes()
    stamp = kept[0][len(volume) + 1:]
    assert stamp.isdigit() and since <= int(stamp) <= int(time.time())
    assert f"kept as {kept[0]}" in lines[0] and "remote backup" in lines[0]
    assert cloud.volumes()[kept[0]]["tags"] == {"virt": "one", "nloc": "one", "del": "y"}
    assert _sha(cloud.read(kept[0])) == _sha(image)
    return kept[0]


def test_rm_keeps_the_volume_when_the_remote_backup_fails(cloud: Cloud) -> None:
    cloud.sim.add_location("remote-a")
    cloud.cp(85, cloud.images["files"]["disk.raw"])
    cloud.snapshot("one-img-85", "one-img-85-snap0")
    image = cloud.read("one-img-85")
    cloud.reset_calls()
    cloud.sim.fail("VolumeBackup")
    since = int(time.time())
    payload = cloud.payload(85, SOURCE="one-img-85", ds_attrs={"REMOTE_BACKUP_DELETE": "remote-a"})
    proc = cloud.run("rm", payload, 85)
    assert cloud.calls() == ["SnapshotsList", "VolumeBackup", "Volume", "VolumeUpdate", "VolumeUpdate"]
    kept = _expect_kept(cloud, proc, "one-img-85", image, since)
    assert set(cloud.snapshots()) == {"one-img-85-snap0"} and _backups(cloud, "remote-a") == []
    # a re-run (the image volume is gone): no backup is needed, the rest goes, the kept volume stays
    cloud.reset_calls()
    assert cloud.ok("rm", payload, 85) == ""
    assert cloud.calls() == ["SnapshotsList", "VolumeBackup", "Volume", "Snapshot", "VolumesReassign",
                             "VolumesReassign", "VolumesReassign", "SnapshotDelete"]
    assert set(cloud.volumes()) == {kept} and cloud.snapshots() == {}
    assert _sha(cloud.read(kept)) == _sha(image) and _backups(cloud, "remote-a") == []
    cloud.clean()


def test_rm_keeps_the_volume_when_the_remote_location_is_unknown(cloud: Cloud) -> None:
    cloud.sim.add_location("remote-a")
    cloud.cp(86, cloud.images["files"]["disk.raw"])
    image = cloud.read("one-img-86")
    cloud.reset_calls()
    since = int(time.time())
    payload = cloud.payload(86, SOURCE="one-img-86", ds_attrs={"REMOTE_BACKUP_DELETE": "elsewhere"})
    proc = cloud.run("rm", payload, 86)
    assert cloud.calls() == ["SnapshotsList", "VolumeBackup", "Volume", "VolumeUpdate", "VolumeUpdate"]
    _expect_kept(cloud, proc, "one-img-86", image, since)
    assert "elsewhere" in proc.stderr and "does not exist" in proc.stderr
    assert _backups(cloud, "remote-a") == []
    cloud.clean()


@pytest.mark.parametrize("setting", ["remote/a", "list", "x" * 64, "remote-a tag", "remote-a keep", "remote-a k=$(id)",
                                     "remote-a tag k=v;id", "remote-a a=b=c"])
def test_rm_refuses_a_bad_remote_backup_setting(cloud: Cloud, setting: str) -> None:
    cloud.create("one-img-87")
    cloud.reset_calls()
    line = cloud.fails("rm", cloud.payload(87, ds_attrs={"REMOTE_BACKUP_DELETE": setting}), 87)
    assert "REMOTE_BACKUP_DELETE" in line and "nothing was deleted" in line
    assert cloud.sim.calls == [] and set(cloud.volumes()) == {"one-img-87"}


def test_rm_with_remote_backup_killed_after_each_api_call_then_rerun(cloud: Cloud) -> None:
    cloud.sim.add_location("remote-a")
    rm_calls = ["SnapshotsList", "VolumeBackup", "VolumesReassign", "VolumeDelete", "VolumesReassign",
                "VolumesReassign", "SnapshotDelete", "VolumesReassign", "SnapshotDelete"]
    for step in range(1, len(rm_calls)):
        vol = _image_with_snapshots(cloud, 620 + step)
        image = cloud.read(vol)
        payload = cloud.payload(620 + step, SOURCE=vol, ds_attrs={"REMOTE_BACKUP_DELETE": "remote-a"})
        _kill_after(cloud, "rm", payload, 620 + step, rm_calls, step)
        cloud.ok("rm", payload, 620 + step)
        assert cloud.volumes() == {} and cloud.snapshots() == {}, step
        mine = [b for b in _backups(cloud, "remote-a") if b["name"] == vol]
        assert mine and all(_sha(Path(b["path"]).read_bytes()) == _sha(image) for b in mine), step
    cloud.clean()


# --- stat ---------------------------------------------------------------------------------------


def test_stat_local_and_http(cloud: Cloud, web: str, web_ranges: str, tmp_path: Path) -> None:
    files = cloud.images["files"]
    for name in ("disk.raw", "disk.qcow2", "disk-stream.vmdk", "disk.vhdx"):
        assert cloud.ok("stat", cloud.stat_payload(str(files[name])), 1) == "10\n", name
    for server in (web, web_ranges):
        assert cloud.ok("stat", cloud.stat_payload(f"{server}/disk.raw"), 2) == "10\n"
        assert cloud.ok("stat", cloud.stat_payload(f"{server}/disk.qcow2"), 3) == "10\n"   # virtual size
        assert cloud.ok("stat", cloud.stat_payload(f"{server}/disk-c.qcow2"), 3) == "10\n"
    # a compressed qcow2's file is smaller than 10 MB; the tail of a vhdx is needed, so its
    # file size (> the virtual size here) is what stat can tell
    assert int(cloud.ok("stat", cloud.stat_payload(f"{web_ranges}/disk.vhdx"), 3)) >= 10
    (cloud.images["dir"] / "small.raw").write_bytes(b"x" * 1000)
    assert cloud.ok("stat", cloud.stat_payload(str(cloud.images["dir"] / "small.raw")), 4) == "1\n"
    assert "HTTP 404" in cloud.fails("stat", cloud.stat_payload(f"{web}/nothing"), 5)
    assert "does not exist" in cloud.fails("stat", cloud.stat_payload(str(cloud.images["dir"] / "nothing")), 5)
    assert "restricted" in cloud.fails("stat", cloud.stat_payload("/etc/passwd"), 5)
    assert "regular file" in cloud.fails("stat", cloud.stat_payload(str(cloud.images["dir"])), 5)
    assert "backing file" in cloud.fails("stat", cloud.stat_payload(str(files["backed.qcow2"])), 5)
    assert list(cloud.staging.iterdir()) == []
    assert cloud.sim.calls == []


# --- monitor ------------------------------------------------------------------------------------


def test_monitor_reports_the_template_capacity_in_one_call(cloud: Cloud) -> None:
    cloud.cp(90, cloud.images["files"]["disk.raw"])
    status = {t["name"]: t for t in cloud.api.call("VolumeTemplatesStatus")}["one-ds-100"]["stored"]
    cloud.reset_calls()
    out = cloud.ok("monitor", cloud.monitor_payload(), 100)
    values = dict(line.split("=") for line in out.split())
    assert values == {"TOTAL_MB": str(status["capacity"] // MiB), "FREE_MB": str(status["free"] // MiB),
                      "USED_MB": str((status["capacity"] - status["free"]) // MiB)}
    assert cloud.calls() == ["VolumeTemplatesStatus"]
    for count in (10, 10_000):
        cloud.sim.bulk_create(count, 10 * MiB, prefix=f"bulk{count}", template="one-ds-100", stored=MiB)
        cloud.reset_calls()
        out = cloud.ok("monitor", cloud.monitor_payload(), 100)
        assert cloud.calls() == ["VolumeTemplatesStatus"]
    used = int(dict(line.split("=") for line in out.split())["USED_MB"])
    assert used > int(values["USED_MB"])
    assert "one-ds-102" in cloud.fails("monitor", cloud.monitor_payload(102), 102)


# --- snapshots ----------------------------------------------------------------------------------


def _image_with_snapshots(cloud: Cloud, image_id: int) -> str:
    vol = f"one-img-{image_id}"
    cloud.create(vol)
    for n, text in enumerate((b"first", b"second")):
        cloud.write(vol, text)
        cloud.snapshot(vol, f"{vol}-snap{n}")
    cloud.write(vol, b"latest")
    return vol


def test_snap_revert(cloud: Cloud) -> None:
    vol = _image_with_snapshots(cloud, 91)
    cloud.reset_calls()
    cloud.ok("snap_revert", cloud.payload(91, SOURCE=vol, TARGET_SNAPSHOT=0), 91)
    assert cloud.calls() == ["VolumeRevert"]
    assert cloud.read(vol).startswith(b"first")
    assert set(cloud.snapshots()) == {f"{vol}-snap0", f"{vol}-snap1"}
    cloud.ok("snap_revert", cloud.payload(91, SOURCE=f"one-ds-100/{vol}", TARGET_SNAPSHOT=1), 91)
    assert cloud.read(vol).startswith(b"second")
    assert "does not exist" in cloud.fails("snap_revert", cloud.payload(91, SOURCE=vol, TARGET_SNAPSHOT=7), 91)
    assert "TARGET_SNAPSHOT" in cloud.fails("snap_revert", cloud.payload(91, SOURCE=vol, TARGET_SNAPSHOT=-1), 91)


def test_snap_delete(cloud: Cloud) -> None:
    vol = _image_with_snapshots(cloud, 92)
    cloud.reset_calls()
    cloud.ok("snap_delete", cloud.payload(92, SOURCE=vol, TARGET_SNAPSHOT=0), 92)
    assert set(cloud.snapshots()) == {f"{vol}-snap1"}
    assert len(cloud.sim.calls) <= 2
    cloud.ok("snap_delete", cloud.payload(92, SOURCE=vol, TARGET_SNAPSHOT=0), 92)   # gone already: fine
    assert cloud.read(vol).startswith(b"latest")


def test_snap_flatten(cloud: Cloud) -> None:
    vol = _image_with_snapshots(cloud, 93)
    cloud.snapshot(vol, f"{vol}-snap2")
    cloud.create("one-img-930")
    cloud.snapshot("one-img-930", "one-img-930-snap0")
    cloud.ok("snap_flatten", cloud.payload(93, SOURCE=vol, TARGET_SNAPSHOT=0), 93)
    assert cloud.read(vol).startswith(b"first")
    assert set(cloud.snapshots()) == {"one-img-930-snap0"}
    # a re-run (e.g. after a crash right at the end) finds the job done
    cloud.ok("snap_flatten", cloud.payload(93, SOURCE=vol, TARGET_SNAPSHOT=0), 93)
    vol2 = _image_with_snapshots(cloud, 94)
    assert "snap5" in cloud.fails("snap_flatten", cloud.payload(94, SOURCE=vol2, TARGET_SNAPSHOT=5), 94)
    assert set(cloud.snapshots()) >= {f"{vol2}-snap0", f"{vol2}-snap1"}


# --- export -------------------------------------------------------------------------------------


def test_export_gives_a_file_downloader_sh_can_read(cloud: Cloud, tmp_path: Path) -> None:
    cloud.cp(95, cloud.images["files"]["disk.vmdk"])
    before = cloud.sim.inventory()
    out = cloud.ok("export", cloud.payload(95, SOURCE="one-img-95"), 7)
    info = etree.fromstring(out.encode())
    assert info.tag == "IMPORT_INFO"
    values = {el.tag: el.text for el in info}
    assert set(values) == {"IMPORT_SOURCE", "MD5", "SIZE", "FORMAT", "DISPOSE", "DISPOSE_CMD"}
    path = Path(values["IMPORT_SOURCE"] or "")
    assert path == cloud.staging / "one-img-95-export-7.qcow2"
    assert values["FORMAT"] == "qcow2" and values["SIZE"] == "10" and values["DISPOSE"] == "YES"
    assert values["MD5"] == hashlib.md5(path.read_bytes()).hexdigest()
    raw = tmp_path / "back.raw"
    _qemu_img("convert", "-f", "qcow2", "-O", "raw", str(path), str(raw))
    assert raw.read_bytes() == cloud.images["data"] + bytes(10 * MiB - len(cloud.images["data"]))
    after = cloud.sim.inventory()
    assert after["volumes"].keys() == before["volumes"].keys() and after["snapshots"] == {}
    assert after["attachments"] == []
    subprocess.run(values["DISPOSE_CMD"] or "", shell=True, check=True)
    assert not path.exists()
    cloud.clean()


EXPORT_CALLS = ["Volume", "VolumesReassign", "VolumeSnapshot", "VolumesReassignWait", "VolumesReassign",
                "SnapshotDelete"]


def test_export_a_failing_api_call_leaves_nothing_and_a_rerun_succeeds(cloud: Cloud) -> None:
    cloud.cp(98, cloud.images["files"]["disk.raw"])
    cloud.reset_calls()
    cloud.ok("export", cloud.payload(98, SOURCE="one-img-98"), 1)
    assert cloud.calls() == EXPORT_CALLS
    (cloud.staging / "one-img-98-export-1.qcow2").unlink()
    seen: dict[str, int] = {}
    for step, call in enumerate(EXPORT_CALLS):
        cloud.sim.fail(call, skip=seen.get(call, 0))
        seen[call] = seen.get(call, 0) + 1
        line = cloud.fails("export", cloud.payload(98, SOURCE="one-img-98"), 10 + step)
        assert "simulated error failure" in line, (call, line)
        cloud.sim.clear_faults()
        assert cloud.snapshots() == {} and set(cloud.volumes()) == {"one-img-98"}, call
        cloud.clean()
        out = cloud.ok("export", cloud.payload(98, SOURCE="one-img-98"), 10 + step)
        target = Path(etree.fromstring(out.encode()).findtext("IMPORT_SOURCE") or "")
        target.unlink()
    cloud.clean()


def test_mkfs_a_failing_api_call_leaves_nothing_and_a_rerun_succeeds(cloud: Cloud) -> None:
    seen: dict[str, int] = {}
    for step, call in enumerate(CP_CALLS):
        image_id = 500 + step
        payload = cloud.payload(image_id, SIZE=8, FS="ext4", PATH="")
        cloud.sim.fail(call, skip=seen.get(call, 0))
        seen[call] = seen.get(call, 0) + 1
        assert "simulated error failure" in cloud.fails("mkfs", payload, image_id), call
        cloud.sim.clear_faults()
        assert cloud.volumes() == {}, call
        cloud.clean()
        cloud.reset_calls()
        cloud.ok("mkfs", payload, image_id)
        assert cloud.calls() == CP_CALLS
        assert cloud.read(f"one-img-{image_id}")[1080:1082] == b"\x53\xef"
        cloud.api.call(f"VolumeDelete/one-img-{image_id}", {})
    cloud.clean()


def test_export_failure_cleans_up(cloud: Cloud) -> None:
    cloud.cp(96, cloud.images["files"]["disk.raw"])
    cloud.sim.fail("VolumesReassignWait")
    cloud.fails("export", cloud.payload(96, SOURCE="one-img-96"), 8)
    assert cloud.snapshots() == {}
    cloud.clean()
    assert "no volume" in cloud.fails("export", cloud.payload(97, SOURCE="one-img-97"), 8)
    cloud.write_conf(EXPORT_FILE_FORMAT="vmdk")
    assert "EXPORT_FILE_FORMAT" in cloud.fails("export", cloud.payload(96, SOURCE="one-img-96"), 8)


# --- calling forms and bad input ----------------------------------------------------------------


def _valid(cloud: Cloud, action: str, image_id: int) -> tuple[bytes, int]:
    """A payload ``action`` succeeds with (creating what it needs first)."""
    vol = f"one-img-{image_id}"
    if action == "cp":
        return cloud.payload(image_id, PATH=str(cloud.images["files"]["disk.raw"])), image_id
    if action == "mkfs":
        return cloud.payload(image_id, SIZE=4, PATH=""), image_id
    if action == "stat":
        return cloud.stat_payload(str(cloud.images["files"]["disk.raw"])), 0
    if action == "monitor":
        return cloud.monitor_payload(), 100
    cloud.create(vol)
    if action == "clone":
        return cloud.payload(image_id + 1, PATH=vol), image_id + 1
    if action in ("snap_delete", "snap_revert", "snap_flatten"):
        cloud.snapshot(vol, f"{vol}-snap0")
        return cloud.payload(image_id, SOURCE=vol, TARGET_SNAPSHOT=0), image_id
    if action == "export":
        return cloud.payload(image_id, SOURCE=vol), 3
    return cloud.payload(image_id, SOURCE=vol), image_id


@pytest.mark.parametrize("action", ACTIONS)
def test_every_action_in_every_calling_form(cloud: Cloud, action: str) -> None:
    for n, form in enumerate(FORMS):
        payload, ident = _valid(cloud, action, 200 + 10 * n)
        proc = cloud.run(action, payload, ident, form)
        assert proc.returncode == 0, (form, proc.stderr)
        assert proc.stderr == ""


def _broken(cloud: Cloud, action: str) -> list[tuple[str, list[str], bytes]]:
    image = cloud.image(300, PATH=str(cloud.images["files"]["disk.raw"]), SOURCE="one-img-300", SIZE=4,
                        TARGET_SNAPSHOT=0)
    ds = cloud.datastore()
    no_id = copy.deepcopy(image)
    no_id.remove(no_id.find("ID"))  # type: ignore[arg-type]
    no_ds_id = copy.deepcopy(ds)
    no_ds_id.remove(no_ds_id.find("ID"))  # type: ignore[arg-type]
    b64 = base64.b64encode
    cases = [
        ("malformed base64", ["300"], b"not*base64!"),
        ("malformed XML", ["300"], b64(b"<DS_DRIVER_ACTION_DATA><IMAGE>")),
        ("wrong document", ["300"], b64(b"<VM><ID>1</ID></VM>")),
        ("empty stdin", ["300"], b""),
        ("no DATASTORE", ["300"], cloud.message(image)),
        ("no DATASTORE/ID", ["300"], cloud.message(image, no_ds_id)),
        ("bad id argument", ["30x"], cloud.message(image, ds)),
        ("too many arguments", ["1", "2", "3"], cloud.message(image, ds)),
    ]
    if action != "monitor":
        cases.append(("no IMAGE", ["300"], cloud.message(ds)))
    if action not in ("stat", "monitor"):
        cases.append(("no IMAGE/ID", ["300"], cloud.message(no_id, ds)))
    if action in ("cp", "mkfs", "clone", "rm", "snap_delete", "snap_revert", "snap_flatten"):
        cases.append(("id differs from IMAGE/ID", ["301"], cloud.message(image, ds)))
    if action in ("cp", "stat"):
        for bad in ("/var/tmp/x;reboot", "/var/tmp/$(reboot)", "/var/tmp/`id`", "/var/tmp/a b", "/var/tmp/x\nid",
                    "http://h/x;id", "http://h/$(id)", "ssh://h:/x", "relative/path", "/var/tmp/../etc/passwd"):
            bad_image = cloud.image(300, PATH=bad)
            cases.append((f"PATH {bad!r}", ["300"], cloud.message(bad_image, ds)))
    if action in ("clone",):
        cases.append(("PATH metacharacters", ["300"], cloud.message(cloud.image(300, PATH="one-img-1;id"), ds)))
    if action in ("snap_delete", "snap_revert", "snap_flatten", "export"):
        cases.append(("SOURCE metacharacters", ["300"],
                      cloud.message(cloud.image(300, SOURCE="one-img-1$(id)", TARGET_SNAPSHOT=0), ds)))
    if action in ("snap_delete", "snap_revert", "snap_flatten"):
        cases.append(("no TARGET_SNAPSHOT", ["300"],
                      cloud.message(cloud.image(300, SOURCE="one-img-300", TARGET_SNAPSHOT=""), ds)))
    return cases


@pytest.mark.parametrize("action", ACTIONS)
def test_bad_input_is_one_line_and_changes_nothing(cloud: Cloud, action: str) -> None:
    cloud.create("one-img-300")
    cloud.snapshot("one-img-300", "one-img-300-snap0")
    before = cloud.sim.inventory()
    cloud.reset_calls()
    for what, argv, stdin in _broken(cloud, action):
        proc = subprocess.run([sys.executable, str(EXE / action), *argv], input=stdin, capture_output=True,
                              env=cloud.env, timeout=60)
        err = proc.stderr.decode()
        assert proc.returncode != 0, what
        assert len(err.splitlines()) == 1 and "Traceback" not in err and "internal error" not in err, (what, err)
        assert proc.stdout == b"", what
        assert cloud.sim.calls == [], (what, cloud.calls())
    after = cloud.sim.inventory()
    assert after["volumes"] == before["volumes"] and after["snapshots"] == before["snapshots"]


def test_entry_points_are_three_line_executables() -> None:
    for action in ACTIONS:  # as one-tweaks install writes them (tests/drivers.py)
        exe = EXE / action
        assert os.access(exe, os.X_OK), exe
        assert exe.read_text().splitlines() == [f"#!{sys.executable}", "from datastore.entry import ds_main",
                                                "ds_main()"]


# --- staging on a BRIDGE_LIST host (tests/storage_env.py: real ssh to node1) -----------------


@pytest.fixture
def bridged(tmp_path: Path, sshd: storage_env.Sshd) -> Iterator[storage_env.Cloud]:
    """storage_env's cloud: image datastore 100 has BRIDGE_LIST=node1 (StorPool client 1)."""
    root = tmp_path / "cloud"
    with storage_env.build_cloud(root, sshd) as built:
        yield built
    assert not _our_loops(root), "loop devices leaked"


def _bridge_message(c: storage_env.Cloud, image: etree._Element, images: dict[str, Any]) -> etree._Element:
    ds = c.oned.served("datastore", storage_env.IMAGE_DS)
    safe = ds.find("TEMPLATE/SAFE_DIRS")
    assert safe is not None
    safe.text = f"/var/tmp {images['dir']}"
    root = etree.Element("DS_DRIVER_ACTION_DATA")
    root.append(image)
    root.append(ds)
    return root


def _bridge_ok(c: storage_env.Cloud, action: str, msg: etree._Element, ident: int) -> str:
    proc = c.run_ds(action, msg, ident)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def _bridge_clean(c: storage_env.Cloud) -> None:
    assert c.sim.inventory()["attachments"] == []
    for host in c.hosts:
        assert list(c.device_dir(host).iterdir()) == [], host
    assert list((c.root / "staging").iterdir()) == []


@pytest.mark.parametrize("name", ["disk.raw", "disk-stream.vmdk"])
def test_cp_staged_on_a_bridge_host(bridged: storage_env.Cloud, images: dict[str, Any], name: str) -> None:
    c = bridged
    msg = _bridge_message(c, image_element(9, PATH=str(images["files"][name])), images)
    assert _bridge_ok(c, "cp", msg, 9) == "one-img-9 raw\n"
    commands = [cmd for host, cmd in c.ssh_commands() if host == "node1"]
    assert any(cmd.startswith("dd ") for cmd in commands), commands
    assert any(cmd.startswith("qemu-img convert") for cmd in commands) == (name != "disk.raw"), commands
    attaches = [body["reassign"][0] for call, body in c.sim.calls if call == "VolumesReassignWait"]
    assert attaches[0]["rw"] == [c.hosts["node1"].client]
    data = images["data"]
    size = 10 * MiB
    vol = c.sim.inventory()["volumes"]["one-img-9"]
    assert vol["size"] == size and vol["template"] == "one-ds-100"
    link = c.attach("one-img-9", storage_env.FRONTEND, rw=False)
    try:
        assert c.sha256(link, size) == hashlib.sha256(data + bytes(size - len(data))).hexdigest()
    finally:
        c.detach("one-img-9", storage_env.FRONTEND)
    _bridge_clean(c)


def test_mkfs_on_a_bridge_host(bridged: storage_env.Cloud, images: dict[str, Any]) -> None:
    c = bridged
    msg = _bridge_message(c, image_element(12, SIZE=16, FS="ext4", PATH=""), images)
    assert _bridge_ok(c, "mkfs", msg, 12) == "one-img-12\n"
    assert any(host == "node1" and cmd.startswith("mkfs.ext4") for host, cmd in c.ssh_commands())
    link = c.attach("one-img-12", storage_env.FRONTEND, rw=False)
    try:
        with open(link, "rb") as dev:
            assert dev.read(1082)[1080:] == b"\x53\xef"
    finally:
        c.detach("one-img-12", storage_env.FRONTEND)
    _bridge_clean(c)


def test_export_staged_on_a_bridge_host(bridged: storage_env.Cloud, images: dict[str, Any],
                                        tmp_path: Path) -> None:
    c = bridged
    c.make_volume("one-img-13", 10, data=images["data"])
    msg = _bridge_message(c, image_element(13, SOURCE="one-img-13"), images)
    info = etree.fromstring(_bridge_ok(c, "export", msg, 4).encode())
    values = {el.tag: el.text or "" for el in info}
    target = c.root / "staging" / "one-img-13-export-4.qcow2"
    assert values["IMPORT_SOURCE"] == f"ssh://node1:{target}"
    # what downloader.sh does with an ssh:// source: ssh <host> cat <path>
    got = c.ssh("node1", "cat", str(target))
    assert got.returncode == 0
    assert hashlib.md5(got.stdout).hexdigest() == values["MD5"]
    copy_path = tmp_path / "copy.qcow2"
    copy_path.write_bytes(got.stdout)
    raw = tmp_path / "copy.raw"
    _qemu_img("convert", "-f", "qcow2", "-O", "raw", str(copy_path), str(raw))
    assert raw.read_bytes() == images["data"] + bytes(10 * MiB - len(images["data"]))
    assert c.sim.inventory()["snapshots"] == {}
    subprocess.run(values["DISPOSE_CMD"], shell=True, check=True)   # as a market driver would
    assert not target.exists()
    _bridge_clean(c)


def test_mkfs_with_a_file_system_killed_after_each_api_call_then_rerun(cloud: Cloud) -> None:
    """mkfs with FS stages like cp (create, attach, mkfs, detach, rename): SIGKILL right after
    each API call in turn, then a re-run: exactly one formatted volume, nothing else left."""
    cloud.reset_calls()
    assert cloud.ok("mkfs", cloud.payload(60, SIZE=16, FS="ext4", PATH=""), 60) == "one-img-60\n"
    calls = cloud.calls()
    cloud.clean()
    cloud.api.call("VolumeDelete/one-img-60", {})
    assert len(calls) > 2
    for step in range(1, len(calls)):
        image_id = 60 + step
        payload = cloud.payload(image_id, SIZE=16, FS="ext4", PATH="")
        _kill_after(cloud, "mkfs", payload, image_id, calls, step)
        rerun = cloud.run("mkfs", payload, image_id)
        if calls[step] == "VolumeUpdate":      # killed after the rename: the volume is complete
            assert rerun.returncode == 1 and "already exists" in rerun.stderr
        else:
            assert rerun.returncode == 0, (step, rerun.stderr)
        assert set(cloud.volumes()) == {f"one-img-{image_id}"}, step
        assert cloud.read(f"one-img-{image_id}")[1080:1082] == b"\x53\xef", step
        cloud.clean()
        cloud.api.call(f"VolumeDelete/one-img-{image_id}", {})
