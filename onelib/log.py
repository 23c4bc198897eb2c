"""Logging the way OpenNebula's drivers do: details to syslog, VM-log lines on stderr.

OpenNebula 7 turns stderr lines ``INFO: <vmid> text`` / ``ERROR: <vmid> text`` into VM
log entries and keeps them out of a failure's reason; 6.x shows stderr only when the
action fails. So routine detail goes to syslog, and ``vm_log`` is for what an operator
reading the VM log should see.
"""

from __future__ import annotations

import sys
import syslog

_ident = ""


def setup(ident: str) -> None:
    global _ident
    if ident != _ident:
        syslog.openlog(ident, syslog.LOG_PID, syslog.LOG_USER)
        _ident = ident


def info(message: str) -> None:
    syslog.syslog(syslog.LOG_INFO, message)


def error(message: str) -> None:
    syslog.syslog(syslog.LOG_ERR, message)


def vm_log(vm_id: int | str | None, message: str, *, severity: str = "INFO") -> None:
    """A line for the VM's log (OpenNebula 7); also to syslog."""
    one_line = " ".join(message.split())
    syslog.syslog(syslog.LOG_ERR if severity == "ERROR" else syslog.LOG_INFO, one_line)
    prefix = f"{severity}: {vm_id} " if vm_id not in (None, "") else f"{severity}: "
    sys.stderr.write(prefix + one_line + "\n")
