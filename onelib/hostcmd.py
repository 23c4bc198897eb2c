"""Commands on OpenNebula hosts: locally or over ssh, always as argument lists.

Over ssh the remote side runs a shell, so each argument is quoted with ``shlex.quote``
and no caller ever builds a command string. ``SSH_COMMAND`` (config) replaces the
default ``ssh`` invocation, e.g. ``ssh -F /etc/one/ssh_config``.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence

from .errors import DriverError, Transient

LOCAL_NAMES = frozenset({"", "localhost", "-"})


class Host:
    def __init__(self, name: str, *, ssh: Sequence[str] = ("ssh",), local: bool | None = None,
                 timeout: float = 300.0) -> None:
        self.name = name
        self.ssh = list(ssh)
        self.local = name in LOCAL_NAMES if local is None else local
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Host({self.name!r}{', local' if self.local else ''})"

    def command(self, argv: Sequence[str]) -> list[str]:
        if self.local:
            return list(argv)
        return [*self.ssh, "-o", "BatchMode=yes", self.name, "--", shlex.join(argv)]

    def run(self, argv: Sequence[str], *, input: bytes | None = None, check: bool = True,
            timeout: float | None = None, what: str | None = None) -> subprocess.CompletedProcess[bytes]:
        """``what`` names the command in a failure's reason (default: its first words)."""
        cmd = self.command(argv)
        where = self.name or "localhost"
        try:
            proc = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout or self.timeout)
        except subprocess.TimeoutExpired:
            raise Transient(f"{where}: {argv[0]} timed out") from None
        except OSError as exc:
            raise DriverError(f"{where}: cannot run {cmd[0]}: {exc.strerror}") from None
        if check and proc.returncode != 0:
            if not self.local and proc.returncode == 255:
                raise Transient(f"{self.name}: ssh failed: {_last_line(proc.stderr)}")
            raise DriverError(f"{where}: {what or ' '.join(argv[:2])} failed: {_last_line(proc.stderr)}")
        return proc

    def output(self, argv: Sequence[str], **kwargs: object) -> str:
        return self.run(argv, **kwargs).stdout.decode(errors="replace")  # type: ignore[arg-type]

    def ok(self, argv: Sequence[str]) -> bool:
        return self.run(argv, check=False).returncode == 0


def _last_line(data: bytes) -> str:
    lines = [ln.strip() for ln in data.decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no error output"
