"""The package as pip builds it: shipped rules and the schema travel inside the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from conftest import ROOT


def test_wheel_carries_rules_and_schema_and_finds_them(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("one_tweaks-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in (ROOT / "rules.d").glob("*.yaml"))
    assert sorted(n.split("/")[-1] for n in names if n.startswith("tweaks/shipped_rules/")) == shipped
    assert "tweaks/rules.schema.json" in names
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import tweaks.loader as l, tweaks; "
             "print(tweaks.__file__); print(l.shipped_dir())")
    out = subprocess.run([sys.executable, "-c", probe, str(unpacked)], capture_output=True, text=True, check=True)
    module, rules = out.stdout.split()
    assert module.startswith(str(unpacked))
    assert rules == str(unpacked / "tweaks" / "shipped_rules")
