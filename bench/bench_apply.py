"""How long `one-tweaks apply` takes as a whole process, against the interpreter's floor.

Runs the installed `one-tweaks` console script with this interpreter (no pyenv shim),
every shipped rule, a 16-disk VM that sets the shipped attributes, and prints medians
and the ratio to `python -c pass` measured in the same run (goal: <= 3.0). It also prints
the ratio to `python -c "import lxml.etree"`: lxml's own import is a fixed part of the
cost that no rule work can go below.

Then, in-process, the engine's time per disk for 16, 64 and 256 disks (goal: flat).

    .venv/bin/python bench/bench_apply.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vmgen


def median_ms(cmd: list[str], runs: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def per_disk_ms(disks: int, rounds: int) -> float:
    from tweaks import engine, loader
    from tweaks.validate import DomainSchema

    dom, vm = vmgen.make(disks)
    rules = loader.load([]).rules
    schema = DomainSchema()
    schema.available  # noqa: B018 - compile once, outside the timing
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        out = engine.apply_rules(engine.parse_xml(dom, "d"), engine.parse_xml(vm, "v"), rules, schema=schema)
        engine.serialize(out.tree)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000 / disks


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args()
    script = shutil.which("one-tweaks", path=os.path.dirname(sys.executable))
    if script is None:
        print("one-tweaks is not installed next to this interpreter (pip install .)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        dom_path, vm_path = Path(tmp, "deployment.0"), Path(tmp, "vm.xml")
        dom, vm = vmgen.make(16)
        dom_path.write_bytes(dom)
        vm_path.write_bytes(vm)
        env = dict(os.environ, ONE_TWEAKS_CACHE_DIR=str(Path(tmp, "cache")),
                   ONE_TWEAKS_RULES_DIR=str(Path(tmp, "etc")))
        # A packaged install has its bytecode compiled; measure that, not the compiler.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        import tweaks

        subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.dirname(tweaks.__file__)],
                       check=True, env=env)
        apply_cmd = [sys.executable, script, "apply", str(dom_path), "--vm", str(vm_path), "-o", str(Path(tmp, "o"))]
        subprocess.run(apply_cmd, check=True, env=env)  # warm the rule cache, as every deploy after the first
        floor = median_ms([sys.executable, "-c", "pass"], args.runs, env)
        lxml_floor = median_ms([sys.executable, "-c", "import lxml.etree"], args.runs, env)
        total = median_ms(apply_cmd, args.runs, env)
    print(f"python -c pass:            {floor:7.1f} ms")
    print(f"python -c 'import lxml':   {lxml_floor:7.1f} ms  ({lxml_floor / floor:.2f}x pass)")
    print(f"one-tweaks apply, 16 disks: {total:6.1f} ms")
    print(f"ratio apply / pass: {total / floor:.2f} (goal <= 3.0)")
    print(f"ratio apply / import lxml: {total / lxml_floor:.2f}")
    for disks in (16, 64, 256):
        print(f"engine in-process, {disks:3d} disks: {per_disk_ms(disks, 15):.3f} ms per disk")
    return 0


if __name__ == "__main__":
    sys.exit(main())
