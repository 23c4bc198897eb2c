"""File handling for install/uninstall: text that round-trips byte for byte, atomic writes
that keep a file's mode and owner, backups, and the install state."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import tempfile
import time
from typing import Any

from ..errors import DriverError

STATE_FILE = "state.json"
SAVED_DIR = "saved"


def read_text(path: str, what: str) -> str:
    """The file as text; undecodable bytes survive a write back unchanged."""
    try:
        with open(path, "rb") as fh:
            return fh.read().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        raise DriverError(f"{path}: {what} not found (give its path with the option)") from None
    except OSError as exc:
        raise DriverError(f"{path}: cannot read {what}: {exc.strerror}") from None


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def owner_of(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_uid, st.st_gid


def default_owner() -> tuple[int, int]:
    """oneadmin when that user exists, else whoever runs this."""
    try:
        user = pwd.getpwnam("oneadmin")
    except KeyError:
        return os.getuid(), os.getgid()
    try:
        gid = grp.getgrnam("oneadmin").gr_gid
    except KeyError:
        gid = user.pw_gid
    return user.pw_uid, gid


def _chown(path: str, owner: tuple[int, int]) -> None:
    st = os.lstat(path)
    if (st.st_uid, st.st_gid) == owner:
        return
    try:
        os.chown(path, *owner)
    except PermissionError:
        raise DriverError(f"{path}: cannot give it to uid {owner[0]} gid {owner[1]} (run as root)") from None


def write_atomic(path: str, data: bytes, *, mode: int | None = None, owner: tuple[int, int] | None = None) -> None:
    """Write via a temporary file in the same directory and rename: never half a file. An
    existing file keeps its mode and owner unless they are given."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    except OSError as exc:
        raise DriverError(f"{path}: cannot write: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode if mode is not None else (st.st_mode & 0o7777 if st else 0o644))
        if owner is None and st is not None:
            owner = (st.st_uid, st.st_gid)
        if owner is not None:
            _chown(tmp, owner)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise DriverError(f"{path}: cannot write: {exc.strerror}") from None
    except DriverError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def backup(path: str) -> str:
    """A copy of ``path`` next to it, taken before install first changes it:
    ``<file>.one-tweaks.bak``, or ``<file>.one-tweaks.<time>.bak`` when that exists."""
    target = f"{path}.one-tweaks.bak"
    if os.path.exists(target):
        target = f"{path}.one-tweaks.{time.strftime('%Y%m%dT%H%M%S')}.bak"
        n = 1
        while os.path.exists(target):
            n += 1
            target = f"{path}.one-tweaks.{time.strftime('%Y%m%dT%H%M%S')}-{n}.bak"
    try:
        shutil.copy2(path, target)
        st = os.stat(path)
        _chown(target, (st.st_uid, st.st_gid))
    except OSError as exc:
        raise DriverError(f"{target}: cannot write the backup: {exc.strerror}") from None
    return target


def make_dirs(root: str, rel_dir: str, created: list[str]) -> None:
    """Create ``root/rel_dir`` level by level, each new directory owned like its parent
    (the remotes directory itself: oneadmin when that user exists)."""
    if not os.path.isdir(root):
        os.makedirs(root, mode=0o755)
        _chown(root, default_owner())
    path = root
    rel = ""
    for part in rel_dir.split("/"):
        parent = path
        path = os.path.join(path, part)
        rel = f"{rel}/{part}" if rel else part
        if not os.path.isdir(path):
            try:
                os.mkdir(path, 0o755)
            except OSError as exc:
                raise DriverError(f"{path}: cannot create: {exc.strerror}") from None
            _chown(path, owner_of(parent))
            created.append(rel)


# --- install state -----------------------------------------------------------------------


def state_dir(remotes: str) -> str:
    """Where install keeps what it did: next to the remotes directory, not inside it
    (``onehost sync`` copies remotes/ to every host)."""
    remotes = os.path.normpath(os.path.abspath(remotes))
    return os.path.join(os.path.dirname(remotes), "one-tweaks-install")


def load_state(directory: str) -> dict[str, Any] | None:
    path = os.path.join(directory, STATE_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            state = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DriverError(f"{path}: unreadable install state: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != 1:
        raise DriverError(f"{path}: not an install state this version knows")
    return state


def dump_state(state: dict[str, Any]) -> bytes:
    return (json.dumps(state, indent=1, sort_keys=True) + "\n").encode()


def save_state(directory: str, state: dict[str, Any]) -> bool:
    """Write the state when it changed; True when written."""
    path = os.path.join(directory, STATE_FILE)
    data = dump_state(state)
    try:
        with open(path, "rb") as fh:
            if fh.read() == data:
                return False
    except FileNotFoundError:
        pass
    os.makedirs(directory, mode=0o700, exist_ok=True)
    write_atomic(path, data, mode=0o600)
    return True
