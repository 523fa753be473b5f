"""The single file against the installed package: its size, and what `kubecert check` costs in each.

The single file (PyInstaller onefile) unpacks its Python, libraries and modules into a temporary
directory on every run before it starts; the installed package is a wheel from the same dist's
wheelhouse in a fresh venv, bytecode compiled (what an operator gets from the wheelhouse route).
Both run `kubecert check` on one lab node, N times each, interleaved; the medians and their ratio
are printed (goal: single file <= 2x installed). `--version` (start-up alone) is timed the same way.

    python bench/bench_dist.py [--runs 20] [--dist dist]

A dist without the single file is built first (`scripts/build-dist.sh --local-wheelhouse`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
GOAL_RATIO = 2.0
NOW = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def version() -> str:
    for line in (ROOT / "src/kubecert/__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split('"')[1]
    raise SystemExit("no __version__ in src/kubecert/__init__.py")


def ensure_dist(dist: Path) -> Path:
    binary = dist / f"kubecert-{version()}-linux-{platform.machine()}"
    wheelhouse = dist / "wheelhouse"
    if not binary.is_file() or not list(wheelhouse.glob("kubecert-*.whl")) or not list(wheelhouse.glob("cryptography-*")):
        print(f"building {dist} (scripts/build-dist.sh --local-wheelhouse) ...", flush=True)
        subprocess.run(["bash", str(ROOT / "scripts/build-dist.sh"), "--out", str(dist), "--local-wheelhouse"],
                       check=True, stdout=subprocess.DEVNULL)
    return binary


def ensure_venv(dist: Path) -> Path:
    """A venv with kubecert from the wheelhouse (offline, no pip configuration), keyed by the wheel."""
    wheel = sorted((dist / "wheelhouse").glob("kubecert-*.whl"))[-1]
    key = hashlib.sha256(wheel.read_bytes()).hexdigest()[:16]
    venv = Path.home() / ".cache/kubecert/bench-dist-venv" / key
    if not (venv / "bin/kubecert").exists():
        for old in sorted(venv.parent.glob("*"), key=lambda p: p.stat().st_mtime)[:-2]:  # keep two
            shutil.rmtree(old, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", "--no-index",
                        "--find-links", str(dist / "wheelhouse"), "kubecert"],
                       check=True, env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    subprocess.run([str(venv / "bin/python"), "-m", "compileall", "-q", str(venv / "lib")], check=True,
                   capture_output=True)
    return venv / "bin/kubecert"


def timed(argv: List[str], env: Dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}")
    return elapsed


def interleaved(cases: List[Tuple[str, List[str]]], runs: int, env: Dict[str, str]) -> Dict[str, List[float]]:
    for _ in range(3):  # warm the page cache
        for _name, argv in cases:
            timed(argv, env)
    out: Dict[str, List[float]] = {name: [] for name, _ in cases}
    for _ in range(runs):
        for name, argv in cases:
            out[name].append(timed(argv, env))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--dist", default=str(ROOT / "dist"))
    args = ap.parse_args()
    dist = Path(args.dist).resolve()
    binary = ensure_dist(dist)
    kubecert = ensure_venv(dist)
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    built = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True, env=env).stdout
    with tempfile.TemporaryDirectory(prefix="kubecert-bench-dist-") as tmp:
        subprocess.run([str(kubecert), "lab", "create", f"{tmp}/lab", "--nodes", "1", "--now", NOW], check=True,
                       capture_output=True, env=env)
        node = f"{tmp}/lab/master-1"
        check = ["check", "--root", node, "--now", NOW]
        results = interleaved([("single file: check", [str(binary), *check]),
                               ("installed:   check", [str(kubecert), *check]),
                               ("single file: --version", [str(binary), "--version"]),
                               ("installed:   --version", [str(kubecert), "--version"])], args.runs, env)
    size = binary.stat().st_size
    print(f"{built.strip()}; {args.runs} runs each, interleaved, {os.cpu_count()} CPUs, "
          f"TMPDIR={os.environ.get('TMPDIR', '/tmp')}")
    print(f"single file {binary.name}: {size / 2**20:.1f} MiB ({size} bytes)")
    width = max(len(name) for name in results)
    print(f"{'':<{width}}  {'median':>9}  {'min':>9}  {'max':>9}")
    for name, times in results.items():
        print(f"{name:<{width}}  {statistics.median(times) * 1000:7.1f}ms  {min(times) * 1000:7.1f}ms  "
              f"{max(times) * 1000:7.1f}ms")
    single = statistics.median(results["single file: check"])
    inst = statistics.median(results["installed:   check"])
    ratio = single / inst
    verdict = "meets" if ratio <= GOAL_RATIO else "MISSES"
    print(f"check: single file {single * 1000:.1f}ms vs installed {inst * 1000:.1f}ms = {ratio:.2f}x "
          f"(goal <= {GOAL_RATIO:.0f}x: {verdict} it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
