"""The storage driver executables, as ``one-tweaks install`` writes them.

The repository commits no per-driver executables (``tm/<driver>/<action>``,
``datastore/<driver>/<action>``): the installer makes them for every driver a backend module
declares (``onelib.install.plan.build``). Tests that run the drivers directly take them from
``REMOTES``, a remotes tree built from the same plan once per test process in a temporary
directory (removed at exit); each executable runs this interpreter's package.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

from onelib.install import plan


def build(root: Path) -> Path:
    """Write every executable of the install plan under ``root`` (mode 755); returns ``root``."""
    for rel, content in plan.build(sys.executable).scripts.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        os.chmod(path, 0o755)
    return root


def _remotes() -> Path:
    root = Path(tempfile.mkdtemp(prefix="one-tweaks-remotes-"))
    atexit.register(shutil.rmtree, root, True)
    return build(root)


REMOTES = _remotes()


def tm(driver: str) -> Path:
    """The directory of ``driver``'s TM executables."""
    return REMOTES / "tm" / driver


def ds(driver: str) -> Path:
    """The directory of ``driver``'s DS executables."""
    return REMOTES / "datastore" / driver
