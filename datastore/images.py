"""Image data for the datastore actions: where it comes from (a local file or an http(s)
URL), what it is (``qemu-img info``), and how it lands on a block device
(``qemu-img convert`` on the staging host).

Untrusted input is handled the way OpenNebula's own drivers and OpenStack do:
- a PATH is refused unless it is an absolute path or an http(s) URL made of plain
  characters (no shell metacharacters, even though nothing here uses a shell);
- a local path under one of the datastore's RESTRICTED_DIRS is refused unless it is also
  under one of its SAFE_DIRS (libfs.sh ``check_restricted``, on the resolved path, by whole
  path components);
- ``qemu-img info`` runs under ``prlimit`` (address space and CPU time), and an image is
  refused when it is not raw, qcow2, vmdk or vhdx, or when it would make qemu-img read
  other files: a backing file, a qcow2 external data file, VMDK extents in other files;
- ``qemu-img convert`` is always told the source format (``-f``): it never probes again.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import http.client
import json
import lzma
import os
import re
import stat
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from typing import IO, Any

from onelib.errors import DriverError
from onelib.hostcmd import Host
from tweaks.record import record

MiB = 1 << 20
FORMATS = ("raw", "qcow2", "vmdk", "vhdx")
CHUNK = 4 * MiB

# qemu-img info on an untrusted file: bounded like OpenStack's image handling does
INFO_LIMITS = ("--as=2147483648", "--cpu=30")

_PATH_CHARS = re.compile(r"/[A-Za-z0-9._~:/@+,=%-]*")
_URL_CHARS = re.compile(r"https?://[A-Za-z0-9._~:/?#\[\]@&+,=%-]+")
_HEX = {"MD5": re.compile(r"[0-9a-fA-F]{32}"), "SHA1": re.compile(r"[0-9a-fA-F]{40}")}
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"))


def mb(size: int) -> int:
    """Bytes to whole MiB, rounded up (OpenNebula's sizes are MB)."""
    return (size + MiB - 1) // MiB


def is_url(path: str) -> bool:
    return path.lower().startswith(("http://", "https://"))


def check_source(path: str, what: str = "PATH") -> str:
    """An image PATH as OpenNebula passes it: an absolute local path or an http(s) URL."""
    if not path:
        raise DriverError(f"image {what} is empty")
    if is_url(path):
        if not _URL_CHARS.fullmatch(path):
            raise DriverError(f"image {what} {path!r} has characters that are not allowed in a URL here")
        parsed = urllib.parse.urlsplit(path)
        if not parsed.hostname:
            raise DriverError(f"image {what} {path!r} has no host")
        return path
    if "://" in path:
        scheme = path.split("://", 1)[0]
        raise DriverError(f"image {what}: {scheme}:// sources are not supported (a local path or http(s) URL)")
    if not _PATH_CHARS.fullmatch(path):
        raise DriverError(f"image {what} {path!r} is not an absolute path of plain characters")
    if ".." in path.split("/"):
        raise DriverError(f"image {what} {path!r} leaves its directory")
    return path


def _under(path: str, directory: str) -> bool:
    base = os.path.realpath(directory).rstrip("/")
    return path == base or path.startswith(base + "/")


def check_restricted(path: str, restricted: str, safe: str) -> None:
    """libfs.sh ``check_restricted``: a file under a RESTRICTED_DIRS entry is refused unless
    it is under a SAFE_DIRS entry (symlinks resolved, whole path components compared)."""
    real = os.path.realpath(path)
    if any(_under(real, d) for d in safe.split() if d.startswith("/")):
        return
    for directory in restricted.split():
        if directory.startswith("/") and _under(real, directory):
            raise DriverError(f"image path {path} is in a restricted directory ({directory}; "
                              f"datastore RESTRICTED_DIRS/SAFE_DIRS)")


def expected_digests(template: dict[str, str]) -> dict[str, str]:
    """MD5 / SHA1 the image template asks to be checked (lower case hex)."""
    out: dict[str, str] = {}
    for name, pattern in _HEX.items():
        value = template.get(name, "").strip()
        if not value:
            continue
        if not pattern.fullmatch(value):
            raise DriverError(f"image {name}={value!r} is not a {name} checksum")
        out[name] = value.lower()
    return out


class Hasher:
    """MD5 and SHA1 of a byte stream, computed while it is copied."""

    def __init__(self) -> None:
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.sha1 = hashlib.sha1(usedforsecurity=False)

    def update(self, data: bytes) -> None:
        self.md5.update(data)
        self.sha1.update(data)

    def digests(self) -> dict[str, str]:
        return {"MD5": self.md5.hexdigest(), "SHA1": self.sha1.hexdigest()}


def file_digests(path: str) -> dict[str, str]:
    hasher = Hasher()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                hasher.update(chunk)
    except OSError as exc:
        raise DriverError(f"cannot read {path}: {exc.strerror}") from None
    return hasher.digests()


def verify_digests(expected: dict[str, str], actual: dict[str, str], source: str) -> None:
    for name, value in expected.items():
        if actual.get(name) != value:
            raise DriverError(f"{name} checksum of {source} is {actual.get(name)}, the image expects {value}")


# --- local files ------------------------------------------------------------------------------


def local_file(path: str) -> int:
    """The size of a readable regular file (a clear error otherwise)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DriverError(f"image file {path} does not exist") from None
    except OSError as exc:
        raise DriverError(f"image file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise DriverError(f"image path {path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise DriverError(f"image file {path} is not readable")
    return st.st_size


def compression(path: str) -> str:
    """"gzip", "bzip2", "xz" or "" by the file's first bytes."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise DriverError(f"cannot read {path}: {exc.strerror}") from None
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return ""


def decompress(path: str, kind: str, dest: str) -> None:
    """Decompress ``path`` into ``dest`` (what OpenNebula's downloader.sh does unless
    NO_DECOMPRESS is set)."""
    opener: Any = {"gzip": gzip.open, "bzip2": bz2.open, "xz": lzma.open}[kind]
    try:
        with opener(path, "rb") as src, open(dest, "wb") as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise DriverError(f"cannot decompress {path} ({kind}): {exc}") from None


# --- qemu-img ---------------------------------------------------------------------------------


@record
class ImageInfo:
    format: str
    virtual_size: int


def parse_info(raw: str, path: str) -> ImageInfo:
    try:
        info = json.loads(raw)
    except ValueError:
        raise DriverError(f"qemu-img info {path}: unreadable output") from None
    if not isinstance(info, dict):
        raise DriverError(f"qemu-img info {path}: unexpected output")
    fmt = str(info.get("format", ""))
    if fmt not in FORMATS:
        raise DriverError(f"image {path} is in format {fmt or 'unknown'}; supported: {', '.join(FORMATS)}")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise DriverError(f"image {path} has a backing file ({info.get('backing-filename')}): import a "
                          f"self-contained image")
    if info.get("encrypted"):
        raise DriverError(f"image {path} is encrypted")
    specific = info.get("format-specific") or {}
    data = (specific.get("data") or {}) if isinstance(specific, dict) else {}
    if isinstance(data, dict):
        if data.get("data-file"):
            raise DriverError(f"image {path} keeps its data in another file ({data.get('data-file')})")
        for extent in data.get("extents") or []:
            name = extent.get("filename") if isinstance(extent, dict) else None
            if name != path:
                raise DriverError(f"image {path} is a VMDK whose data is in another file ({name}): "
                                  f"import a single-file VMDK (monolithicSparse or streamOptimized)")
    size = info.get("virtual-size")
    if not isinstance(size, int) or size <= 0:
        raise DriverError(f"image {path} has no virtual size")
    return ImageInfo(format=fmt, virtual_size=size)


def qemu_img_info(path: str, host: Host | None = None) -> ImageInfo:
    """Format and virtual size of ``path`` (on the front-end unless ``host`` is given)."""
    shell = host or Host("")
    argv = ["prlimit", *INFO_LIMITS, "qemu-img", "info", "--output=json", path]
    proc = shell.run(argv, check=False, timeout=120)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.decode(errors="replace").splitlines() if ln.strip()]
        reason = lines[-1][:300] if lines else f"exit code {proc.returncode}"
        raise DriverError(f"qemu-img cannot read image {path}: {reason}")
    return parse_info(proc.stdout.decode(errors="replace"), path)


def convert_argv(src: str, fmt: str, device: str, *, cache: str = "none") -> list[str]:
    """``qemu-img convert`` of ``src`` (format ``fmt``) onto a freshly created (all-zero) block
    device: no zeros written (--target-is-zero), out-of-order writes, O_DIRECT unless
    ``cache`` says otherwise."""
    # -m 16: more parallel requests in flight (measured ~5% faster than the default 8 here)
    argv = ["qemu-img", "convert", "-q", "-f", fmt, "-O", "raw", "-n", "--target-is-zero", "-W", "-m", "16"]
    if cache:
        argv += ["-t", cache]
    return [*argv, src, device]


def is_target(device: str) -> bool:
    """A network backend's protocol target (``rbd:pool/image...``) rather than a device path:
    only qemu-img reaches it (no dd, no mkfs, no link on a host)."""
    return not device.startswith("/")


def format_into(shell: Host, mkfs: Sequence[str], target: str, size: int, scratch: str, *,
                timeout: float = 3600) -> None:
    """Make a file system (``mkfs`` argv without the device) on the network ``target`` of
    ``size`` bytes: formatted in a sparse scratch file on ``shell``'s host, copied with
    qemu-img (zeros skipped), the scratch file removed however it ends."""
    with removing(scratch, shell):
        shell.run(["truncate", "-s", str(size), "--", scratch])
        shell.run([*mkfs, scratch], timeout=timeout)
        shell.run(convert_argv(scratch, "raw", target, cache=""), timeout=timeout)


# --- http(s) ----------------------------------------------------------------------------------


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) URLs only (urllib would also follow one to ftp://)."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        if not newurl.lower().startswith(("http://", "https://")):
            raise urllib.error.HTTPError(newurl, code, f"redirect to {newurl.split(':', 1)[0]}: refused",
                                         headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


def _open(url: str, timeout: float, method: str = "GET", headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(url, method=method, headers={"User-Agent": "one-tweaks", **(headers or {})})
    try:
        return _OPENER.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise DriverError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise DriverError(f"{url}: {exc.reason}") from None
    except TimeoutError:
        raise DriverError(f"{url}: no answer within {timeout:g}s") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise DriverError(f"{url}: {exc}") from None


def _content_length(response: Any) -> int | None:
    raw = response.headers.get("Content-Length")
    text = (raw or "").strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def download(url: str, dest: IO[bytes], *, timeout: float = 60.0) -> dict[str, str]:
    """Copy ``url`` into ``dest``; returns the MD5/SHA1 of what was received."""
    hasher = Hasher()
    response = _open(url, timeout)
    expected = _content_length(response)
    received = 0
    try:
        with response:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except TimeoutError:
                    raise DriverError(f"{url}: download stalled for {timeout:g}s") from None
                except (OSError, http.client.HTTPException) as exc:
                    raise DriverError(f"{url}: download failed: {exc}") from None
                if not chunk:
                    break
                hasher.update(chunk)
                dest.write(chunk)
                received += len(chunk)
    finally:
        dest.flush()
    if expected is not None and received != expected:
        raise DriverError(f"{url}: download ended after {received} of {expected} bytes")
    return hasher.digests()


def url_size(url: str, scratch: str, *, timeout: float = 60.0, probe: int = 4 * MiB) -> int:
    """What an image at ``url`` will need, in bytes: the virtual size qemu-img reads from its
    first ``probe`` bytes (one ranged GET), else (raw, or not readable from a prefix) the
    resource's length (Content-Range of a partial reply, else Content-Length)."""
    response = _open(url, timeout, headers={"Range": f"bytes=0-{probe - 1}"})
    with response:
        total = _content_length(response)
        if response.status == 206:
            match = re.search(r"/([0-9]{1,18})\s*$", response.headers.get("Content-Range") or "")
            total = int(match.group(1)) if match else None
        try:
            with open(scratch, "wb") as fh:
                remaining = probe
                while remaining > 0:
                    chunk = response.read(min(remaining, CHUNK))
                    if not chunk:
                        break
                    fh.write(chunk)
                    remaining -= len(chunk)
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            raise DriverError(f"{url}: {exc}") from None
    with contextlib.suppress(DriverError):
        info = qemu_img_info(scratch)
        if info.format != "raw":
            return info.virtual_size
    if total is None:
        raise DriverError(f"{url}: the server does not say how large the image is (no Content-Length)")
    return total


# --- copying to another host ------------------------------------------------------------------


def stream_to(host: Host, argv: Sequence[str], source: str, *, timeout: float) -> None:
    """Run ``argv`` on ``host`` with the file ``source`` on its stdin (e.g. ``dd of=...``)."""
    try:
        with open(source, "rb") as fh:
            proc = subprocess.run(host.command(argv), stdin=fh, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DriverError(f"{host.name}: copying {source} timed out") from None
    except OSError as exc:
        raise DriverError(f"cannot copy {source} to {host.name}: {exc.strerror}") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.decode(errors="replace").splitlines() if ln.strip()]
        raise DriverError(f"{host.name}: {argv[0]} failed: {lines[-1][:300] if lines else proc.returncode}")


@contextlib.contextmanager
def removing(path: str, host: Host | None = None) -> Iterator[str]:
    """``path`` (a scratch file) is removed when the block ends, however it ends."""
    try:
        yield path
    finally:
        if host is None or host.local:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        else:
            with contextlib.suppress(DriverError):
                host.run(["rm", "-f", "--", path], check=False)
