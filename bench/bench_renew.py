"""Benchmark: `kubecert renew all` on one lab node (RSA-2048), new keys and --key reuse.

Each run renews a fresh copy of the same node as a new process, as an operator runs it.
Goals (issue #3, this 2-core machine): new keys <= 0.4 s wall, --key reuse <= 0.15 s.
Usage: python bench/bench_renew.py [RUNS]
"""

from __future__ import annotations

import datetime as dt
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NOW = "2026-11-30T12:00:00Z"


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    with tempfile.TemporaryDirectory() as tmp:
        lab = Path(tmp) / "lab"
        subprocess.run([sys.executable, "-m", "kubecert", "lab", "create", str(lab), "--nodes", "1",
                        "--expires-in", "3d", "--now", NOW], check=True, capture_output=True)
        rows = []
        for label, extra in (("new RSA-2048 keys", []), ("--key reuse", ["--key", "reuse"])):
            times = []
            for i in range(runs):
                node = Path(tmp) / f"run-{label[:3]}-{i}"
                shutil.copytree(lab / "master-1", node, symlinks=True)
                t = time.perf_counter()
                subprocess.run([sys.executable, "-m", "kubecert", "renew", "all", "--root", str(node), "--yes",
                                "--now", NOW, *extra], check=True, capture_output=True)
                times.append(time.perf_counter() - t)
            rows.append((label, statistics.median(times), min(times), max(times)))
        # in-process, to separate interpreter start-up and imports from the work itself
        from kubecert import renew as R
        from kubecert.store import LocalFS

        node = Path(tmp) / "inproc"
        shutil.copytree(lab / "master-1", node, symlinks=True)
        now = dt.datetime(2026, 11, 30, 12, tzinfo=dt.timezone.utc)
        t = time.perf_counter()
        R.renew(LocalFS(str(node)), ["all"], now=now)
        inproc = time.perf_counter() - t
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare = time.perf_counter() - t
    print(f"{'renew all (1 node, 11 items)':<32} {'median':>8} {'min':>8} {'max':>8}")
    for label, med, lo, hi in rows:
        print(f"{label:<32} {med:8.3f} {lo:8.3f} {hi:8.3f}")
    print(f"{'in-process renew(), new keys':<32} {inproc:8.3f}")
    print(f"{'bare python -c pass':<32} {bare:8.3f}")


if __name__ == "__main__":
    main()
