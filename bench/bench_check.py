"""How long does `kubecert check` take on one real kubeadm node, against doing it by hand?

Compares, on a copy of the kubeadm v1.28.4 fixture ``single-stacked/master-1`` (keys 0600):

* ``python -m kubecert check --root ... --now ...`` as a fresh process (what an operator or a cron
  job pays, interpreter start-up included);
* the manual operator method: one ``openssl x509 -noout -dates -in F`` per certificate file, plus
  each kubeconfig's embedded client certificate decoded and piped through ``openssl x509``;
* the in-process ``kubecert.inventory.scan()`` (the work itself, imports already paid);
* ``python -c pass`` (the interpreter's own floor, for scale).

Goal (from the issue): <= 0.12 s wall for one node. When the fresh process misses it, the script
runs ``python -X importtime`` and prints the imports that dominate start-up.

    python bench/bench_check.py [--runs 20] [--node single-stacked/master-1] [--importtime]
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

GOAL_S = 0.12
FIXTURES = Path(
    os.environ.get("KUBECERT_FIXTURES")
    or Path(__file__).resolve().parents[1] / "tests/fixtures/kubeadm-v1.28.4"
)


def secure_copy(src: Path, dest: Path) -> Path:
    """The node's etc tree with the modes kubeadm writes (git keeps neither 0600 nor 0444)."""
    shutil.copytree(src / "etc", dest / "etc")
    for dirpath, dirnames, filenames in os.walk(dest):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o600 if f.endswith((".key", ".conf")) or f == "sa.pub" else 0o644)
    return dest


def pinned_now(node: Path) -> str:
    ran = dt.datetime.fromisoformat((node / "kubeadm-ran-at.txt").read_text().strip().replace("Z", "+00:00"))
    return (ran + dt.timedelta(milliseconds=500)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def timed(fn: Callable[[], object], runs: int, warmup: int = 2) -> List[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def client_cert(kubeconfig: Path) -> bytes:
    m = re.search(r"^\s*client-certificate-data: (\S+)$", kubeconfig.read_text(), flags=re.M)
    if not m:
        raise SystemExit(f"{kubeconfig}: no client-certificate-data")
    return base64.b64decode(m.group(1))


def manual_method(root: Path) -> Tuple[Callable[[], None], int]:
    crts = sorted((root / "etc/kubernetes/pki").rglob("*.crt"))
    confs = sorted((root / "etc/kubernetes").glob("*.conf"))

    def run() -> None:
        for crt in crts:
            subprocess.run(["openssl", "x509", "-noout", "-dates", "-in", str(crt)],
                           check=True, capture_output=True)
        for conf in confs:
            subprocess.run(["openssl", "x509", "-noout", "-dates"], input=client_cert(conf),
                           check=True, capture_output=True)

    return run, len(crts) + len(confs)


def importtime(cmd: List[str], runs: int = 5) -> Tuple[List[Tuple[str, float, float]], List[Tuple[str, float]]]:
    """``-X importtime`` over ``runs`` runs, medians in ms:

    * (module, self, cumulative) of the imports made directly by the program (depth 0, which
      includes kubecert's lazy imports inside the command);
    * (package, self) summed over every module of each top-level package, at any depth.
    """
    direct: Dict[str, List[Tuple[int, int]]] = {}
    by_package: List[Dict[str, int]] = []
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-X", "importtime", *cmd[1:]], capture_output=True, text=True,
                              check=False)
        totals: Dict[str, int] = {}
        for line in proc.stderr.splitlines():
            m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
            if not m:
                continue
            self_us, cum_us, mod = int(m.group(1)), int(m.group(2)), m.group(4)
            totals[mod.split(".")[0]] = totals.get(mod.split(".")[0], 0) + self_us
            if len(m.group(3)) == 1:  # one space: not imported while importing another module
                direct.setdefault(mod, []).append((self_us, cum_us))
        by_package.append(totals)
    rows = [(mod, statistics.median(s for s, _ in v) / 1000, statistics.median(c for _, c in v) / 1000)
            for mod, v in direct.items()]
    packages = {p for t in by_package for p in t}
    pkg_rows = [(p, statistics.median(t.get(p, 0) for t in by_package) / 1000) for p in packages]
    return sorted(rows, key=lambda r: -r[2]), sorted(pkg_rows, key=lambda r: -r[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--node", default="single-stacked/master-1")
    ap.add_argument("--importtime", action="store_true", help="profile imports even when the goal is met")
    args = ap.parse_args()

    src = FIXTURES / args.node
    if not (src / "check-expiration.txt").is_file():
        print(f"fixture node {src} not found (set KUBECERT_FIXTURES)", file=sys.stderr)
        return 3
    now = pinned_now(src)
    with tempfile.TemporaryDirectory(prefix="kubecert-bench-") as tmp:
        root = secure_copy(src, Path(tmp) / "node")
        cmd = [sys.executable, "-m", "kubecert", "check", "--root", str(root), "--now", now]
        first = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if first.returncode != 0:
            print(first.stdout + first.stderr, file=sys.stderr)
            print(f"kubecert check exited {first.returncode}, expected 0 on a clean copy", file=sys.stderr)
            return 1

        results: List[Tuple[str, List[float]]] = []
        results.append(("kubecert check (fresh process)",
                        timed(lambda: subprocess.run(cmd, capture_output=True, check=True), args.runs)))
        # With PYTHONDONTWRITEBYTECODE set (as in some CI images) every run compiles kubecert's
        # sources again; an installed kubecert has its .pyc. Measure that too, with the cache in
        # the temp dir so nothing is written into the source tree.
        cached_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        cached_env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        if "PYTHONDONTWRITEBYTECODE" in os.environ:
            results.append(("kubecert check (fresh process, .pyc cached)",
                            timed(lambda: subprocess.run(cmd, capture_output=True, check=True, env=cached_env),
                                  args.runs)))
        manual, nprocs = manual_method(root)
        results.append((f"manual openssl x509 ({nprocs} processes)", timed(manual, args.runs)))
        manual_times = results[-1][1]

        from kubecert.inventory import scan
        from kubecert.store import LocalFS

        when = dt.datetime.fromisoformat(now.replace("Z", "+00:00"))
        results.append(("scan() in-process", timed(lambda: scan(LocalFS(str(root)), now=when), args.runs)))
        results.append(("python -c pass (interpreter floor)",
                        timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), args.runs)))

        print(f"node {args.node} ({root}), --now {now}, {args.runs} runs each, "
              f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
              f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}")
        width = max(len(name) for name, _ in results)
        print(f"{'method':<{width}}  {'median':>9}  {'min':>9}  {'max':>9}")
        for name, times in results:
            print(f"{name:<{width}}  {statistics.median(times) * 1000:7.1f}ms  {min(times) * 1000:7.1f}ms  "
                  f"{max(times) * 1000:7.1f}ms")
        proc_median = statistics.median(results[0][1])
        verdict = "meets" if proc_median <= GOAL_S else "MISSES"
        print(f"goal: <= {GOAL_S * 1000:.0f}ms wall for one node -> kubecert check {verdict} it "
              f"(median {proc_median * 1000:.1f}ms, {statistics.median(manual_times) / proc_median:.1f}x "
              f"faster than the manual method)")

        if args.importtime or proc_median > GOAL_S:
            direct, packages = importtime(cmd)
            print("\nimports made by the program itself (python -X importtime, median of 5 runs):")
            print(f"{'module':<32} {'self':>9} {'cumulative':>11}")
            for mod, self_ms, cum_ms in direct[:8]:
                print(f"{mod:<32} {self_ms:7.1f}ms {cum_ms:9.1f}ms")
            total = sum(ms for _, ms in packages)
            print(f"\nimport time by top-level package (self time of all its modules; total {total:.1f}ms):")
            for pkg, ms in packages[:12]:
                print(f"{pkg:<32} {ms:7.1f}ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
