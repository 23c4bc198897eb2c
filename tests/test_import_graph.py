"""The import graph runs one way: ``vmm`` (VMM overrides) and ``tm`` (transfer manager
actions) never import each other; what both need lives below them (``datastore``,
``onelib``). Every import statement counts, those inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

from storage_env import REPO


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def crossings(top: str, other: str) -> list[str]:
    out = []
    for path in sorted((REPO / top).rglob("*.py")):
        for imported in sorted(imports(path)):
            if imported == other or imported.startswith(other + "."):
                out.append(f"{path.relative_to(REPO)} imports {imported}")
    return out


def test_vmm_and_tm_do_not_import_each_other() -> None:
    assert crossings("vmm", "tm") == []
    assert crossings("tm", "vmm") == []


def test_the_walk_sees_relative_and_function_level_imports() -> None:
    """The check above could not pass by missing an import form."""
    sample = REPO / "vmm" / "actions" / "attach_disk.py"
    found = imports(sample)
    assert "vmm.domain_ops" in found, "from .. import domain_ops"
    assert "onelib.hypervisor" in found
    checkpoint = imports(REPO / "tm" / "actions" / "presave.py")
    assert "datastore.checkpoint" in checkpoint and "tm.entry" in checkpoint
    lazy = imports(REPO / "vmm" / "actions" / "deploy_tweaks.py")
    assert "tweaks.engine" in lazy, "imports inside functions count"
