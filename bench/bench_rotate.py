"""Benchmark of `kubecert cluster ca rotate` (issue 10): the full rotation of the network-namespace
lab (tests/netlab.py: 3 control planes with the real etcd x3 and the real kube-apiserver /
controller-manager / scheduler v1.20.2, 2 workers running tests/fakenode/node_agent.py, each host
its own sshd), run from the operator's namespace over SSH as an operator would, under load: etcd
clients and API clients that follow master-1's credentials as kubecert updates them.

Reports the time of each stage (trust both, re-issue, drop old) and of each node in it, and the
failed and retried requests (goal: 0 failed).

Usage: python bench/bench_rotate.py [ca|front-proxy-ca|etcd-ca|all|sa ...] [--include-sa] [--sa-grace 0s]
(default: ca; `all --include-sa --sa-grace 0s` rotates the three CAs and the service-account key
together, stage 3 included)
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

PROGRESS = re.compile(r"^\[\s*([\d.]+)s\] (\S+)\s+(\S+)\s+(.*)$")


def stage_times(stdout: str, total: float) -> List[Tuple[str, float, Dict[str, float]]]:
    """(stage, seconds, node -> seconds) from the progress lines: a stage runs from its own line to
    the next stage's (or the end); a node from its pre-check to the next node's."""
    out: List[Tuple[str, float, Dict[str, float]]] = []
    marks: List[Tuple[float, str]] = []
    nodes: List[Tuple[float, str, str]] = []
    for line in stdout.splitlines():
        m = PROGRESS.match(line)
        if not m:
            continue
        t, who, step, msg = float(m.group(1)), m.group(2), m.group(3), m.group(4)
        if who == "cluster" and step == "stage":
            marks.append((t, msg))
        elif step == "pre-check":
            nodes.append((t, who, marks[-1][1] if marks else ""))
    for i, (t, label) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else total
        per: Dict[str, float] = {}
        mine = [n for n in nodes if n[2] == label]
        for j, (nt, who, _) in enumerate(mine):
            per[who] = (mine[j + 1][0] if j + 1 < len(mine) else end) - nt
        out.append((label, end - t, per))
    return out


def main() -> None:
    from netlab import netlab

    args = sys.argv[1:]
    flags = [a for i, a in enumerate(args) if a.startswith("--") or (i and args[i - 1] == "--sa-grace")]
    names = [a for a in args if a not in flags] or ["ca"]
    print("cluster ca rotate of the netns lab: 3 control planes (real etcd x3, real apiserver / controller-manager /")
    print("scheduler v1.20.2) + 2 workers, each host its own sshd; over SSH, under load")
    with tempfile.TemporaryDirectory() as tmp, netlab(Path(tmp), workers=2) as net:
        with net.load(follow=True) as load, net.api_load(follow=True) as api:
            time.sleep(0.5)
            for name in names:
                start = time.monotonic()
                r = net.kubecert("cluster", "ca", "rotate", name, *flags, "--yes", "--gate-timeout", "120", "-i",
                                 str(net.inventory), "--known-hosts", str(net.known_hosts), timeout=2400)
                took = time.monotonic() - start
                if r.returncode != 0:
                    print(r.stdout[-4000:], r.stderr[-2000:])
                    raise SystemExit(f"rotate {name} failed: exit {r.returncode}")
                print(f"\n{name}: {took:.1f} s in all")
                for label, seconds, per in stage_times(r.stdout, took):
                    nodes = ", ".join(f"{n} {s:.1f}" for n, s in per.items())
                    print(f"  {label:<34} {seconds:7.1f} s   ({nodes})")
            time.sleep(0.5)
        print(f"\n{load.summary()}; credentials reloaded {load.reloads} times")
        print(f"{api.summary()}; credentials reloaded {api.reloads} times")


if __name__ == "__main__":
    main()
