"""Logging the way OpenNebula's drivers do: details to syslog, VM-log lines on stderr.

OpenNebula 7 turns stderr lines ``INFO: <vmid> text`` / ``ERROR: <vmid> text`` into VM
log entries and keeps them out of a failure's reason; 6.x shows stderr only when the
action fails. So routine detail goes to syslog, and ``vm_log`` is for what an operator
reading the VM log should see.
"""

from __future__ import annotations

import os
import sys
import syslog

# The syslog socket: /dev/log (through libc's syslog) unless ONE_TWEAKS_SYSLOG_SOCKET names
# another local datagram socket (a host whose syslog daemon listens elsewhere; the tests'
# own listener). Read once, at the first setup().
SOCKET_ENV = "ONE_TWEAKS_SYSLOG_SOCKET"

_ident = ""
_socket_path = ""


def setup(ident: str) -> None:
    global _ident, _socket_path
    if ident != _ident:
        _socket_path = os.environ.get(SOCKET_ENV, "")
        if not _socket_path:
            syslog.openlog(ident, syslog.LOG_PID, syslog.LOG_USER)
        _ident = ident


def info(message: str) -> None:
    _emit(syslog.LOG_INFO, message)


def error(message: str) -> None:
    _emit(syslog.LOG_ERR, message)


def _emit(priority: int, message: str) -> None:
    if not _socket_path:
        syslog.syslog(priority, message)
        return
    import socket  # only on this path: the deploy path does not pay for it

    # what libc's syslog(3) sends (RFC 3164 without the timestamp, which the daemon adds)
    datagram = f"<{syslog.LOG_USER | priority}>{_ident}[{os.getpid()}]: {message}".encode(errors="replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(datagram, _socket_path)
    except OSError:
        pass  # like syslog(3): a missing or full log socket never fails the action


def vm_log(vm_id: int | str | None, message: str, *, severity: str = "INFO") -> None:
    """A line for the VM's log (OpenNebula 7); also to syslog."""
    one_line = " ".join(message.split())
    _emit(syslog.LOG_ERR if severity == "ERROR" else syslog.LOG_INFO, one_line)
    prefix = f"{severity}: {vm_id} " if vm_id not in (None, "") else f"{severity}: "
    sys.stderr.write(prefix + one_line + "\n")
