"""Benchmarks for cluster mode (issue #5).

1. rollout: the rolling renewal of a 3-node test cluster (three lab control planes, ONE real 3-member
   etcd with TLS, each node under a fake kubelet) while a load generator writes and reads through
   the etcd client URLs: total time, time per node, failed client requests (goal: 0).
2. check: `kubecert cluster check` over N simulated hosts — N real sshd on distinct loopback ports,
   each serving a copy of a lab node — for N = 10, 50, 100 (goal: 100 nodes in <= 5 s).

Usage: python bench/bench_cluster.py [rollout] [check] [--sizes 10,50,100]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def bench_rollout() -> None:
    from clusterlab import EtcdLoad, three_masters
    from kubecert.cluster import RunState, cluster_renew, inventory_digest
    from kubecert.node.restart import Timeouts

    with tempfile.TemporaryDirectory() as tmp, three_masters(Path(tmp)) as cl:
        m1 = cl.lab / "master-1/etc/kubernetes/pki"
        urls = [f"https://127.0.0.1:{cl.ports[h.name].etcd_client}" for h in cl.hosts]
        state = RunState(str(Path(tmp) / "state.json"), inventory_digest(cl.hosts))
        start = time.monotonic()
        with EtcdLoad(urls, (m1 / "etcd/ca.crt").read_bytes(), (m1 / "apiserver-etcd-client.crt").read_bytes(),
                      (m1 / "apiserver-etcd-client.key").read_bytes()) as load:
            run = cluster_renew(cl.hosts, cl.connect, now=dt.datetime.now(dt.timezone.utc), state=state,
                                timeouts=Timeouts(default_gate=60))
        total = time.monotonic() - start
    print("rolling renewal, 3 control planes + 3-member etcd (local transport, fake kubelets, real etcd)")
    for n in run.nodes:
        print(f"  {n.name:<10} {n.status:<8} {n.seconds:6.2f} s  {n.detail}")
    print(f"  total {total:.2f} s; client requests during the rollout: {load.ok} ok, {load.failed} failed "
          f"({load.endpoint_errors} retried on another endpoint)")


def bench_check(sizes: list[int]) -> None:
    import importlib

    from kubecert.cluster import cluster_check
    from kubecert.lab import LabSpec, create
    from kubecert.remote.hosts import Host
    from kubecert.remote.ssh import Connection

    start_sshds = importlib.import_module("sshd").start_sshds  # tests/sshd.py: real sshd processes

    now = dt.datetime.now(dt.timezone.utc)
    with tempfile.TemporaryDirectory() as tmp:
        lab = Path(tmp) / "lab"
        create(str(lab), LabSpec(nodes=1, key_type="ecdsa"), now=now)
        print(f"{'hosts':>6} {'sshd start':>11} {'cluster check':>14} {'per host':>9}")
        for n in sizes:
            roots = []
            for i in range(n):
                root = Path(tmp) / f"n{n}-{i}"
                shutil.copytree(lab / "master-1", root, symlinks=True)
                roots.append(root)
            t = time.monotonic()
            with start_sshds(n, Path(tmp) / f"sshd-{n}") as servers:
                started = time.monotonic() - t
                hosts = [Host(f"node-{i}", "127.0.0.1", "control-plane", port=s.port, key=str(s.client_key),
                              root=str(roots[i])) for i, s in enumerate(servers)]
                known = str(servers[0].known_hosts)

                def connect(h: Host, _known: str = known) -> Connection:
                    return Connection(h, known_hosts=_known).open()

                t = time.monotonic()
                report = cluster_check(hosts, connect, now=now, workers=64, members=False)
                took = time.monotonic() - t
                errors = [x.error for x in report.nodes if x.error]
                assert not errors, errors[:3]
            print(f"{n:>6} {started:>10.2f}s {took:>13.2f}s {took / n * 1000:>7.1f}ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", nargs="*", default=["rollout", "check"])
    ap.add_argument("--sizes", default="10,50,100")
    args = ap.parse_args()
    if "rollout" in args.what:
        bench_rollout()
    if "check" in args.what:
        bench_check([int(s) for s in args.sizes.split(",")])
    subprocess.run(["true"])


if __name__ == "__main__":
    main()
