"""Entry point of ``vmm/kvm/<name>``: a local VMM action gets the same argv the remote
script would, and the base64 of what the remote script would read on stdin."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence

from onelib import xmldoc
from onelib.errors import DriverError
from onelib.main import finish, run
from tweaks.record import record


@record
class VmmRequest:
    action: str
    args: list[str]
    stdin: bytes

    def arg(self, index: int, what: str) -> str:
        try:
            return self.args[index]
        except IndexError:
            raise DriverError(f"{self.action}: missing argument {index + 1} ({what})") from None

    def decoded_stdin(self, what: str) -> bytes:
        """stdin as oned sends a local action: base64 (plain XML is accepted too)."""
        data = self.stdin.strip()
        if data.startswith(b"<"):
            return data
        return xmldoc.decode_b64(data, what)


def alias_module(script: str) -> str | None:
    """The module of a seed add-on's script name (``tmsave``, ``save_linstor_un``, ...): a
    backend declares it (``Backend.vmm_aliases``) with the -l key it serves; None otherwise."""
    from onelib.install import plan

    key = plan.vmm_aliases().get(script)
    for known, modules, _ in plan.VMM_OVERRIDES if key else ():
        if known == key:
            return next((m for m in modules if importlib.util.find_spec(f"vmm.actions.{m}") is not None), None)
    return None


def vmm_main(path: str | None = None) -> None:
    script = os.path.abspath(path or sys.argv[0])
    name = os.path.basename(script)
    module_name = name.split(".", 1)[0].replace("-", "_")
    if importlib.util.find_spec(f"vmm.actions.{module_name}") is None:
        if module_name.endswith("_tweaks"):
            # installed names carry "-tweaks" so they never shadow OpenNebula's own scripts
            module_name = module_name.removesuffix("_tweaks")
        else:
            module_name = alias_module(name) or module_name

    def act(argv: Sequence[str]) -> str | None:
        stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
        try:
            module = importlib.import_module(f"vmm.actions.{module_name}")
        except ModuleNotFoundError:
            raise DriverError(f"VMM action {name!r} is not implemented") from None
        result: str | None = module.run(VmmRequest(action=name, args=list(argv), stdin=stdin))
        return result

    finish(run(f"one-tweaks-vmm-{name}", act))
