"""The drivers' configuration file and its per-datastore overrides.

``/etc/one/one-tweaks.conf`` (or ``$ONE_TWEAKS_CONF``) holds ``NAME=value`` lines in
the shell syntax of addon-storpool's ``addon-storpoolrc``, with the seed add-ons'
variable names where they exist (ONE_PX, DELAY_DELETE, DISKSNAPSHOT_LIMIT, SP_API_HTTP_HOST,
...). It is parsed, never executed. A datastore's TEMPLATE attribute of the same name
overrides the file for that datastore, as addon-storpool allows.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping

from . import numbers
from .errors import DriverError

DEFAULT_PATH = "/etc/one/one-tweaks.conf"

DEFAULTS: dict[str, str] = {
    "ONE_PX": "one",
    "DELAY_DELETE": "48h",
    "DISKSNAPSHOT_LIMIT": "",
    "VMSNAPSHOT_LIMIT": "",
    "VMSNAPSHOT_FSFREEZE": "0",
    # addon-storpool's names for settings every driver has
    "SP_SYSTEM": "ssh",
    "SP_CHECKPOINT_BD": "1",
    "ATTACH_TIMEOUT": "20",
    "API_TIMEOUT": "30",
    "API_RETRIES": "5",
    "SSH_COMMAND": "ssh",
    "STAGING_DIR": "/var/tmp",
    "BRIDGE_LIST": "",
    "REMOTE_BACKUP_DELETE": "",
    "CHECKPOINT_MARGIN": "1.1",
}

SANE_MAX = 10**9  # any count or number of seconds a setting can mean (31 years)



def parse_shell_vars(text: str, source: str) -> dict[str, str]:
    """``NAME=value`` / ``export NAME="value"`` lines; comments and blanks ignored."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:].strip()
        name, eq, rest = line.partition("=")
        if not eq or not name.replace("_", "").isalnum() or not name[0].isalpha():
            raise DriverError(f"{source}:{number}: not NAME=value")
        try:
            words = shlex.split(rest, comments=True)
        except ValueError as exc:
            raise DriverError(f"{source}:{number}: {exc}") from None
        values[name] = " ".join(words)
    return values


class Config:
    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self.values = dict(DEFAULTS)
        self.values.update(values or {})

    @classmethod
    def load(cls, path: str | None = None) -> Config:
        path = path or os.environ.get("ONE_TWEAKS_CONF") or DEFAULT_PATH
        try:
            with open(path, encoding="utf-8") as fh:
                return cls(parse_shell_vars(fh.read(), path))
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise DriverError(f"{path}: cannot read: {exc.strerror}") from None

    def get(self, name: str, default: str = "") -> str:
        return self.values.get(name, default)

    def overlay(self, attrs: Mapping[str, str], names: frozenset[str] = frozenset(),
                prefixes: tuple[str, ...] = ()) -> Config:
        """This configuration with a datastore's (or VM's) same-named attributes on top: the
        names it has (defaults and the file's), ``names`` and those starting with ``prefixes``."""
        merged = dict(self.values)
        merged.update({k: v for k, v in attrs.items()
                       if k in self.values or k in names or (prefixes and k.startswith(prefixes))})
        return Config(merged)

    def declared(self, defaults: Mapping[str, str], prefixes: tuple[str, ...] = (),
                 attrs: Mapping[str, str] | None = None) -> Config:
        """The configuration a storage backend's action sees (``Backend.configure``): the
        backend's declared ``defaults`` under this configuration's values, then a datastore's
        ``attrs`` of the declared names (and ``prefixes``) on top."""
        merged = dict(defaults)
        merged.update(self.values)
        return Config(merged).overlay(attrs or {}, frozenset(defaults), prefixes)

    def integer(self, name: str, minimum: int = 0, maximum: int = SANE_MAX) -> int | None:
        """A whole-number setting (counts, sizes, timeouts in seconds); None when unset."""
        return numbers.maybe(self.get(name), f"configuration {name}=", minimum=minimum, maximum=maximum)

    def ssh_command(self) -> list[str]:
        """SSH_COMMAND as argv, split as a shell would split it (quotes and all): every
        command that reaches a host goes through this, so all hosts see the same ssh."""
        raw = self.get("SSH_COMMAND").strip() or "ssh"
        try:
            words = shlex.split(raw)
        except ValueError as exc:
            raise DriverError(f"configuration SSH_COMMAND={raw!r}: {exc}") from None
        return words or ["ssh"]

    def seconds(self, name: str) -> int:
        """``48h``, ``30m``, ``90s``, ``2d`` or a plain number of seconds."""
        raw = self.get(name).strip().lower()
        units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
        scale = units.get(raw[-1:])
        digits = raw[:-1] if scale else raw
        try:
            return numbers.whole(digits, "", maximum=SANE_MAX // (scale or 1)) * (scale or 1)
        except DriverError:
            raise DriverError(f"configuration {name}={self.get(name).strip()!r} is not a duration like 48h "
                              f"(at most {SANE_MAX // 86400} days)") from None
