"""How long `one-tweaks apply` takes as a whole process, against the interpreter's floor.

Runs the `one-tweaks` console script with every shipped rule on a 16-disk VM that sets the
shipped attributes, and prints medians and the ratio to `python -c pass` with the same
interpreter, measured in the same run (goal: <= 3.0), twice: in this development venv (no
pyenv shim) and in a fresh venv with the project installed from a wheel, as operators get it.
The development install's import hook (editable mode) slows every start of that interpreter,
`python -c pass` included, which flatters its ratio; the wheel figures are the honest ones.
It also prints the ratio to `python -c "import lxml.etree"`: lxml's own import is a fixed part
of the cost that no rule work can go below.

Then, in-process, the engine's time per disk for 16, 64 and 256 disks (goal: flat).

``--against REV`` also installs git revision REV (e.g. the commit before a change) from a
wheel in its own fresh venv and times its `one-tweaks apply` (with its own shipped rules) on
the same VM, interleaved with today's wheel in the same rounds: the ratio today / REV says
whether the deploy path got slower, free of the machine's load of the moment. With valgrind
installed it also counts the user-space instructions of one run of each (callgrind): a
figure no other load on the machine changes, where the times of two processes on a shared
machine differ by several per cent from run to run.

    .venv/bin/python bench/bench_apply.py [--runs N] [--dev] [--against REV]
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


def medians_ms(cmds: dict[str, list[str]], runs: int, env: dict[str, str],
               envs: dict[str, dict[str, str]] | None = None) -> dict[str, float]:
    """Median wall time of each command; rounds interleave the commands so that a busy
    machine slows them all alike and the ratios stay meaningful."""
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(runs):
        for name, cmd in cmds.items():
            start = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                           env=(envs or {}).get(name, env))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


ROOT = Path(__file__).resolve().parent.parent


def installed_venv(tmp: Path, root: Path = ROOT) -> Path:
    """A fresh venv with the project (at ``root``) installed from a wheel, as an operator gets
    it: a development install's import hook (editable mode) would slow every interpreter
    start, ``python -c pass`` included, and flatter the ratio."""
    tmp.mkdir(parents=True, exist_ok=True)
    wheels = tmp / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(root)],
                   check=True, cwd=tmp, capture_output=True)
    shutil.rmtree(root / "build", ignore_errors=True)
    venv = tmp / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    (wheel,) = wheels.glob("*.whl")
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                         capture_output=True, text=True, check=False)
    if pip.returncode != 0:
        sys.exit(f"pip install of the wheel failed:\n{pip.stderr}")
    return venv / "bin" / "python"


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


def revision_tree(rev: str, tmp: Path) -> Path:
    """The project's files at git revision ``rev`` (git archive: no worktree left behind)."""
    tree = tmp / "tree"
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev], capture_output=True, check=False)
    if archive.returncode != 0:
        sys.exit(f"git archive {rev} failed: {archive.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def apply_command(python: str, tmp: Path) -> tuple[list[str], dict[str, str]]:
    """`one-tweaks apply` of a 16-disk VM with every shipped rule, its rule cache warmed."""
    script = shutil.which("one-tweaks", path=os.path.dirname(python))
    if script is None:
        sys.exit(f"one-tweaks is not installed next to {python} (pip install .)")
    tmp.mkdir(parents=True, exist_ok=True)
    dom_path, vm_path = Path(tmp, "deployment.0"), Path(tmp, "vm.xml")
    dom, vm = vmgen.make(16)
    dom_path.write_bytes(dom)
    vm_path.write_bytes(vm)
    env = dict(os.environ, ONE_TWEAKS_CACHE_DIR=str(Path(tmp, "cache")), ONE_TWEAKS_RULES_DIR=str(Path(tmp, "etc")))
    # A packaged install has its bytecode compiled; measure that, not the compiler.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    package = subprocess.run([python, "-c", "import os, tweaks; print(os.path.dirname(tweaks.__file__))"],
                             check=True, capture_output=True, text=True, env=env).stdout.strip()
    subprocess.run([python, "-m", "compileall", "-q", package], check=True, env=env)
    apply_cmd = [python, script, "apply", str(dom_path), "--vm", str(vm_path), "-o", str(Path(tmp, "o"))]
    subprocess.run(apply_cmd, check=True, env=env)  # warm the rule cache, as every deploy after the first
    return apply_cmd, env


def measure(python: str, tmp: Path, runs: int) -> dict[str, float]:
    apply_cmd, env = apply_command(python, tmp)
    return medians_ms({"pass": [python, "-c", "pass"], "lxml": [python, "-c", "import lxml.etree"],
                       "apply": apply_cmd}, runs, env)


def timed_rounds(cmds: dict[str, tuple[list[str], dict[str, str]]], runs: int) -> dict[str, dict[str, list[float]]]:
    """Wall and CPU (user + system, from the child's rusage) seconds of each command per
    round, the commands interleaved in every round. CPU time is what a busy machine
    disturbs least: waiting for a core is not counted."""
    out: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in cmds}
    for _ in range(runs):
        for name, (cmd, env) in cmds.items():
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            _, status, usage = os.wait4(proc.pid, 0)
            if status != 0:
                sys.exit(f"{name}: {' '.join(cmd)} failed (wait status {status})")
            out[name]["wall"].append(time.perf_counter() - start)
            out[name]["cpu"].append(usage.ru_utime + usage.ru_stime)
    return out


def instructions(cmd: list[str], env: dict[str, str], tmp: Path) -> int | None:
    """User-space instructions one run executes, counted by valgrind (callgrind): the same
    on every run, whatever else the machine is doing (None without valgrind)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None
    out = tmp / "callgrind.out"
    proc = subprocess.run([valgrind, "--tool=callgrind", f"--callgrind-out-file={out}", *cmd], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    found = [line.rsplit(":", 1)[1] for line in proc.stderr.splitlines() if "Collected :" in line]
    return int(found[0].strip()) if proc.returncode == 0 and found else None


def against(rev: str, tmp: Path, runs: int) -> tuple[dict[str, dict[str, list[float]]], dict[str, int | None]]:
    """Wall and CPU times of today's wheel's apply and of revision ``rev``'s, interleaved,
    and the instructions of one run of each."""
    now_cmd, env = apply_command(str(installed_venv(tmp / "now")), tmp / "now-run")
    then_cmd, then_env = apply_command(str(installed_venv(tmp / "then", revision_tree(rev, tmp / "then"))),
                                       tmp / "then-run")
    counted = {"now": instructions(now_cmd, env, tmp / "now-run"),
               "then": instructions(then_cmd, then_env, tmp / "then-run")}
    return timed_rounds({"now": (now_cmd, env), "then": (then_cmd, then_env)}, runs), counted


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--dev", action="store_true", help="only this interpreter's own (development) install")
    ap.add_argument("--against", metavar="REV", help="also time git revision REV's apply (wheel) alongside today's")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["development venv (editable)"] = measure(sys.executable, Path(tmp, "dev"), args.runs)
        if not args.dev:
            results["wheel in a fresh venv"] = measure(str(installed_venv(Path(tmp))), Path(tmp, "wheel"), args.runs)
    for name, ms in results.items():
        floor, lxml_floor, total = ms["pass"], ms["lxml"], ms["apply"]
        print(f"-- {name}")
        print(f"python -c pass:             {floor:6.1f} ms")
        print(f"python -c 'import lxml':    {lxml_floor:6.1f} ms  ({lxml_floor / floor:.2f}x pass)")
        print(f"one-tweaks apply, 16 disks: {total:6.1f} ms")
        print(f"ratio apply / pass: {total / floor:.2f} (goal <= 3.0)")
        print(f"ratio apply / import lxml: {total / lxml_floor:.2f}")
    if args.against:
        with tempfile.TemporaryDirectory() as tmp:
            times, counted = against(args.against, Path(tmp), args.runs)
        rev = args.against
        print(f"-- against {rev} (wheels, interleaved, {args.runs} rounds)")
        if counted["now"] is not None and counted["then"] is not None:
            print(f"one-tweaks apply, 16 disks, instructions (valgrind): today {counted['now']:,}, {rev} "
                  f"{counted['then']:,} (ratio {counted['now'] / counted['then']:.3f})")
        else:
            print("instructions: not counted (no valgrind)")
        for kind in ("wall", "cpu"):
            now, then = times["now"][kind], times["then"][kind]
            med_now, med_then = statistics.median(now) * 1000, statistics.median(then) * 1000
            q1_now, q1_then = (statistics.quantiles(x, n=4)[0] * 1000 for x in (now, then))
            print(f"one-tweaks apply, 16 disks, {kind:4s} time: median today {med_now:6.1f} ms, {rev} "
                  f"{med_then:6.1f} ms (ratio {med_now / med_then:.3f}); lower quartile ratio "
                  f"{q1_now / q1_then:.3f}")
        print("goal: ratios <= 1.0 within noise")
    for disks in (16, 64, 256):
        print(f"engine in-process, {disks:3d} disks: {per_disk_ms(disks, 15):.3f} ms per disk")
    return 0


if __name__ == "__main__":
    sys.exit(main())
