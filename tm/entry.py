"""Entry point of ``tm/<driver>/<action>``: oned's transfer-line argv (and, for the
migrate actions, the base64 ``<VM>`` on stdin) turned into one ``TmRequest``.

``CLONE.ssh``-style names (mixed mode) fall back to the plain action, as one_tm does.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from onelib.errors import DriverError
from onelib.main import finish, run
from tweaks.record import record


@record
class TmRequest:
    driver: str
    action: str
    args: list[str]
    stdin: bytes

    def arg(self, index: int, what: str) -> str:
        try:
            return self.args[index]
        except IndexError:
            raise DriverError(f"{self.action}: missing argument {index + 1} ({what})") from None


def tm_main(path: str | None = None) -> None:
    script = os.path.abspath(path or sys.argv[0])
    action = os.path.basename(script).split(".", 1)[0]
    driver = os.path.basename(os.path.dirname(script))

    def act(argv: Sequence[str]) -> str | None:
        stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
        try:
            module = importlib.import_module(f"tm.actions.{action}")
        except ModuleNotFoundError:
            raise DriverError(f"TM action {action!r} is not implemented by {driver}") from None
        result: str | None = module.run(TmRequest(driver=driver, action=action, args=list(argv), stdin=stdin))
        return result

    finish(run(f"one-tweaks-tm-{driver}-{action}", act))
