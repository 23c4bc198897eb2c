"""The driver executables the tests run: a remotes tree like the one oned syncs to hosts.

The repository commits no per-driver executables (``tm/<driver>/<action>``,
``datastore/<driver>/<action>``): the installer makes them for every driver a backend module
declares (``onelib.install.plan.build``). Tests that run the drivers directly take them from
``REMOTES``, built once per test process in a temporary directory (removed at exit): the
storage executables from the install plan (each runs this interpreter's package) and the
repository's ``vmm/kvm`` overrides as committed. The VMM overrides find the TM hooks next to
themselves (``<remotes>/tm/<TM_MAD>/presave``, as on a front-end), so they run from here too.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

from onelib.install import plan

REPO = Path(__file__).resolve().parent.parent


def build(root: Path) -> Path:
    """Write the install plan's storage executables and the repository's vmm/kvm scripts under
    ``root`` (mode 755); returns ``root``."""
    for rel, content in plan.build(sys.executable).scripts.items():
        if rel.startswith(("tm/", "datastore/")):
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            os.chmod(path, 0o755)
    shutil.copytree(REPO / "vmm" / "kvm", root / "vmm" / "kvm")
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


KVM = REMOTES / "vmm" / "kvm"
