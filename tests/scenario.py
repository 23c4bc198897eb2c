"""What the VM lifecycle scenarios (tests/test_lifecycle*.py) share: reading and writing a
disk through its device, the links left on the hosts, the UEFI variable store on an NVRAM
volume, and a /dev link for the os-nvram rule's device template."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
NVRAM_SIZE = 2**20


def ok(proc: subprocess.CompletedProcess[bytes]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr.decode(errors='replace')}"
    return proc.stdout.decode()


def import_qcow2(cloud: Any, image_id: int, path: Path) -> str:
    """oned's image create: LOCKED image, DS stat for the size, DS cp for the data, READY."""
    from sim import oned as oned_sim

    img = cloud.make_image(image_id, size_mb=0, source="", state=oned_sim.IMAGE_LOCKED, name="qcow2-image")
    img.find("PATH").text = str(path)
    size_mb = int(ok(cloud.run_ds("stat", cloud.ds_message(image_id), image_id)).strip())
    img.find("SIZE").text = str(size_mb)
    source, fmt = ok(cloud.run_ds("cp", cloud.ds_message(image_id), image_id, timeout=300)).split()
    img.find("SOURCE").text = source
    img.find("FORMAT").text = fmt
    img.find("STATE").text = str(oned_sim.IMAGE_READY)
    return str(source)


def read_at(path: Path | str, length: int, offset: int = 0) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(length)


def write_at(path: Path | str, data: bytes, offset: int = 0) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def links(cloud: Any) -> list[str]:
    """Every symlink under the hosts' datastore and device directories."""
    out: list[str] = []
    for host in cloud.hosts:
        for top in (cloud.ds_location(host), cloud.device_dir(host)):
            out += [str(p) for p in top.rglob("*") if p.is_symlink()]
    return out


@contextmanager
def dev_link(target: Path, tag: str) -> Iterator[Path]:
    """/dev/one-tweaks-<tag>-XXXX -> ``target``: the os-nvram rule's device template must be
    below /dev (on a real host it is the driver's device directory itself)."""
    link = Path(f"/dev/one-tweaks-{tag}-{uuid.uuid4().hex[:8]}")
    link.symlink_to(target)
    try:
        yield link
    finally:
        link.unlink()


def nvram_store(data: bytes) -> dict[tuple[str, str], bytes]:
    """The variable store of an NVRAM volume: the VARS template's size at its end."""
    from test_live_firmware_cpu import vars_store

    return vars_store(data[len(data) - OVMF_VARS.stat().st_size:])


def wait_nvram(path: Path, done: Callable[[dict[tuple[str, str], bytes]], bool], what: str,
               timeout: float = 120, quiet: float = 3) -> bytes:
    """Poll the volume until ``done(store)`` holds and it has not changed for ``quiet`` s."""
    deadline = time.monotonic() + timeout
    last, since, reached = b"", time.monotonic(), False
    while time.monotonic() < deadline:
        data = read_at(path, NVRAM_SIZE)
        if data != last:
            last, since = data, time.monotonic()
        reached = reached or done(nvram_store(data))
        if reached and time.monotonic() - since >= quiet:
            return data
        time.sleep(0.5)
    raise AssertionError(f"the firmware did not {what} within {timeout:.0f} s")
