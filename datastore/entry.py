"""How oned calls a DS_MAD action, in all its forms, turned into one ``DsRequest``.

- OpenNebula <= 6.6.1: ``<action> <base64 DS_DRIVER_ACTION_DATA> <id>``
- 6.6.3 (transitional): ``<action> - <id>``, the payload on stdin
- 6.8+ (6.10, 7.x): ``<action> <id>``, the base64 payload on stdin (no newline)

The executable ``datastore/<driver>/<action>`` names the driver and the action by its
own path, so every entry point is the same three lines.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from lxml import etree

from onelib import numbers, xmldoc
from onelib.errors import DriverError
from onelib.main import finish, run
from tweaks.record import record


@record
class DsRequest:
    driver: str
    action: str
    id: int
    root: etree._Element

    @property
    def image(self) -> etree._Element:
        found = self.root.find("IMAGE")
        if found is None:
            raise DriverError(f"{self.action}: no IMAGE in the driver action data")
        return found

    @property
    def datastore(self) -> etree._Element:
        found = self.root.find("DATASTORE")
        if found is None:
            raise DriverError(f"{self.action}: no DATASTORE in the driver action data")
        return found


def parse_request(driver: str, action: str, argv: Sequence[str], stdin: bytes | None) -> DsRequest:
    args = list(argv)
    if len(args) == 2 and args[0] != "-":
        payload, raw_id = args[0].encode(), args[1]
    elif len(args) == 2:
        payload, raw_id = stdin or b"", args[1]
    elif len(args) == 1:
        payload, raw_id = stdin or b"", args[0]
    else:
        raise DriverError(f"{action}: expected '<id>' (payload on stdin) or '<payload> <id>', "
                          f"got {len(args)} arguments")
    obj_id = numbers.object_id(raw_id, f"{action}: id", signed=True)
    root = xmldoc.parse_b64(payload, f"{action}: driver action data")
    if root.tag != "DS_DRIVER_ACTION_DATA":
        raise DriverError(f"{action}: driver action data is <{root.tag}>, not <DS_DRIVER_ACTION_DATA>")
    return DsRequest(driver=driver, action=action, id=obj_id, root=root)


def ds_main(path: str | None = None) -> None:
    """Entry point of ``datastore/<driver>/<action>``."""
    script = os.path.abspath(path or sys.argv[0])
    action = os.path.basename(script).split(".", 1)[0]
    driver = os.path.basename(os.path.dirname(script))

    def act(argv: Sequence[str]) -> str | None:
        stdin = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
        if len(argv) == 2 and argv[0] != "-":
            stdin = None
        request = parse_request(driver, action, argv, stdin)
        try:
            module = importlib.import_module(f"datastore.actions.{action}")
        except ModuleNotFoundError:
            raise DriverError(f"datastore action {action!r} is not implemented by {driver}") from None
        result: str | None = module.run(request)
        return result

    finish(run(f"one-tweaks-ds-{driver}-{action}", act))
