"""A small typed client of StorPool's REST API (JSON over HTTP, ``/ctrl/1.0/<Call>``).

Why not the vendor's ``storpool.spapi``: it still carries Python 2 compatibility
(six), reads its configuration through confget, prints to stderr on import, and
generates 124 methods at import time, where a driver action needs a dozen calls and
must start fast. This client does only what the drivers use, with a timeout on every
call, retries with backoff for what StorPool marks transient (and for connections
that never reached it), and one-line errors. The tests run the vendor client against
the same simulator for every call used here, which keeps both honest.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

from onelib import http
from onelib.config import parse_shell_vars
from onelib.errors import Conflict, DriverError, NotFound, Transient

API_PREFIX = "/ctrl/1.0/"


class StorPoolError(DriverError):
    def __init__(self, call: str, name: str, descr: str, transient: bool) -> None:
        super().__init__(f"StorPool {call}: {descr or name}")
        self.name = name
        self.transient = transient


class ObjectMissing(StorPoolError, NotFound):
    pass


class ObjectExists(StorPoolError, Conflict):
    pass


class Api:
    def __init__(self, host: str, port: int, token: str, *, timeout: float = 30.0, retries: int = 5,
                 backoff: float = 0.2) -> None:
        if not host or not token:
            raise DriverError("StorPool API not configured: SP_API_HTTP_HOST and SP_AUTH_TOKEN are needed")
        self.host, self.port, self.token = host, port, token
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.calls = 0

    def __repr__(self) -> str:
        return f"Api({self.host}:{self.port})"

    def call(self, name: str, body: Mapping[str, Any] | list[Any] | None = None, *,
             method: str | None = None) -> Any:
        """One API call (``name`` may carry a path argument, e.g. ``VolumeDelete/one-img-7``);
        returns the reply's ``data``."""
        verb = method or ("POST" if body is not None else "GET")
        payload = None if body is None else json.dumps(body).encode()
        call = name.split("/", 1)[0]
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                status, raw = self._send(verb, API_PREFIX + name, payload)
            except ValueError as exc:  # a name that cannot be part of a request path: never sent
                raise DriverError(f"StorPool {call}: {exc}") from None
            except ConnectionRefusedError:
                error: DriverError = Transient(f"StorPool API {self.host}:{self.port} refused the connection")
            except TimeoutError:
                # A POST may have been applied: do not repeat it blindly; the caller's
                # action is re-runnable and sees the outcome on the next run.
                if verb == "POST":
                    raise Transient(f"StorPool {call}: no reply within {self.timeout:g}s") from None
                error = Transient(f"StorPool {call}: no reply within {self.timeout:g}s")
            except OSError as exc:
                if verb == "POST":
                    raise Transient(f"StorPool {call}: connection lost ({exc})") from None
                error = Transient(f"StorPool {call}: connection lost ({exc})")
            else:
                result = self._decode(call, status, raw)
                if not isinstance(result, StorPoolError):
                    return result
                if not result.transient:
                    raise result
                error = result
            if attempt == self.retries:
                raise error
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    def _send(self, verb: str, path: str, payload: bytes | None) -> tuple[int, bytes]:
        self.calls += 1
        headers = {"Authorization": f"Storpool v1:{self.token}"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        response = http.request(verb, self.host, self.port, path, body=payload, headers=headers, timeout=self.timeout)
        return response.status, response.body

    @staticmethod
    def _decode(call: str, status: int, raw: bytes) -> Any:
        try:
            reply = json.loads(raw) if raw else {}
        except ValueError:
            return StorPoolError(call, "badReply", f"HTTP {status}, reply is not JSON", status >= 500)
        if not isinstance(reply, dict):
            return StorPoolError(call, "badReply", f"HTTP {status}, unexpected reply", False)
        if "error" in reply:
            err = reply["error"] if isinstance(reply["error"], dict) else {}
            name = str(err.get("name", "error"))
            descr = str(err.get("descr", ""))
            transient = bool(err.get("transient", False))
            cls = {"objectDoesNotExist": ObjectMissing, "objectExists": ObjectExists}.get(name, StorPoolError)
            return cls(call, name, descr, transient)
        if status >= 400:
            return StorPoolError(call, "httpError", f"HTTP {status}", status >= 500)
        return reply.get("data")


def read_storpool_conf(path: str, hostname: str | None = None) -> dict[str, str]:
    """``/etc/storpool.conf`` (and ``.conf.d/*.conf``): global ``KEY=value`` lines, then the
    ``[hostname]`` section's (this host's by default), the way StorPool's tools read it."""
    import socket

    files = [path]
    conf_d = path + ".d"
    if os.path.isdir(conf_d):
        files += sorted(os.path.join(conf_d, f) for f in os.listdir(conf_d) if f.endswith(".conf"))
    host = hostname or socket.gethostname()
    values: dict[str, str] = {}
    for name in files:
        try:
            with open(name, encoding="utf-8") as fh:
                text = fh.read()
        except OSError:
            continue
        sections: dict[str, list[str]] = {"": []}
        current = ""
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith("[") and stripped.endswith("]"):
                current = stripped[1:-1].strip()
                sections.setdefault(current, [])
            else:
                sections[current].append(line)
        values.update(parse_shell_vars("\n".join(sections[""]), name))
        values.update(parse_shell_vars("\n".join(sections.get(host, [])), name))
    return values
