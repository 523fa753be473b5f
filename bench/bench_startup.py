"""Start-up cost of `kubecert check` against its floor (issue: hardening, item 5).

In a fresh venv with a NON-editable install and compiled bytecode (what an operator gets), time N
runs of the bare floor ``python -c "import cryptography.x509"`` and of ``kubecert check`` on one lab
node, interleaved, and report the medians and their ratio (goal: <= 1.5x). Then list the imports
that `check` pays for beyond the floor, from ``python -X importtime``.

Usage: python bench/bench_startup.py [--runs 20] [--venv DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
NOW = "2026-11-30T12:00:00Z"


def make_venv(where: Path) -> Path:
    py = where / "bin/python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(HERE.parent)],
                       check=True)
    subprocess.run([str(py), "-m", "compileall", "-q", str(where / "lib")], check=True, capture_output=True)
    return py


def timed(argv: List[str], env: Dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def importtime(py: Path, node: Path, env: Dict[str, str]) -> Dict[str, int]:
    argv = ["kubecert", "check", "--root", str(node), "--now", NOW]
    code = f"import sys; from kubecert.cli import main; sys.argv = {argv!r}; main()"
    proc = subprocess.run([str(py), "-X", "importtime", "-c", code], capture_output=True, text=True, env=env)
    floor = subprocess.run([str(py), "-X", "importtime", "-c", "import cryptography.x509"], capture_output=True,
                           text=True, env=env)

    def parse(text: str) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for line in text.splitlines():  # "import time:  self [us] | cumulative | name"
            parts = line.removeprefix("import time:").split("|")
            if len(parts) == 3 and parts[0].strip().isdigit():
                out[parts[2].strip()] = int(parts[0])
        return out

    mine, base = parse(proc.stderr), parse(floor.stderr)
    return {k: v for k, v in mine.items() if k not in base}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--venv", default=os.path.expanduser("~/.cache/kubecert/bench-venv"))
    args = ap.parse_args()
    py = make_venv(Path(args.venv))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([str(py), "-m", "kubecert", "lab", "create", f"{tmp}/lab", "--nodes", "1", "--now", NOW],
                       check=True, capture_output=True)
        node = Path(tmp) / "lab/master-1"
        kubecert = str(Path(args.venv) / "bin/kubecert")
        floor_argv = [str(py), "-c", "import cryptography.x509"]
        check_argv = [kubecert, "check", "--root", str(node), "--now", NOW]
        for _ in range(3):  # warm the page cache
            timed(floor_argv, env), timed(check_argv, env)
        floors, checks = [], []
        for _ in range(args.runs):
            floors.append(timed(floor_argv, env))
            checks.append(timed(check_argv, env))
        extra = importtime(py, node, env)
    f, c = statistics.median(floors), statistics.median(checks)
    print(f"python {sys.version.split()[0]}, {args.runs} runs each, interleaved, bytecode compiled, non-editable")
    print(f"  floor  `python -c 'import cryptography.x509'`  median {f * 1000:6.1f} ms")
    print(f"  `kubecert check` (one lab node)             median {c * 1000:6.1f} ms")
    print(f"  ratio {c / f:.2f}x (goal <= 1.5x)")
    print("  imports beyond the floor, self time (us), largest first:")
    for name, us in sorted(extra.items(), key=lambda kv: -kv[1])[:15]:
        print(f"    {us:7d}  {name}")
    print(f"    {sum(extra.values()):7d}  total of {len(extra)} modules")


if __name__ == "__main__":
    main()
