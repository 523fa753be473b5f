"""Benchmarks for cluster mode (issue #5).

1. rollout: the rolling renewal of a 3-node test cluster (three lab control planes running the real
   kube-apiserver / controller-manager / scheduler v1.20.2, ONE real 3-member etcd with TLS, each
   node under a fake kubelet) while load generators write and read through the etcd client URLs and
   through every apiserver: total time, time per node, failed and retried requests (goal: 0 failed).
2. check: `kubecert cluster check` over N simulated hosts — N real sshd on distinct loopback ports,
   each serving a copy of a lab node: a realistic mix of 3 control planes (copies of a stacked lab's
   masters) and N - 3 workers (copies of its worker roots, inventory role worker) — for N = 10, 50,
   100, 500 (goal: 100 nodes in <= 5 s, 500 in <= 20 s, linear in N / --workers).
   Besides the total: the client's CPU and the rest of the machine's (sshd, the node-side commands,
   anything else running), and the wall time of each phase per host — connect+auth, the node's files
   (the prefetch command and its parse, or with --plain-sftp the SFTP session), scan+kubeconfigs,
   close; --profile adds cProfile tables of the worker threads and of the SSH event loop thread.

3. recover: `kubecert cluster recover` of the expired network-namespace lab (tests/netlab.py: 3 control
   planes with the real control plane and ONE 3-member etcd, 2 workers running tests/fakenode/node_agent.py,
   every host with its own sshd), run from the operator's namespace as an operator would: total time and
   time per phase (preflight, renew, etcd quorum, control plane ready, kubelets ready); goal <= 90 s.

Usage: python bench/bench_cluster.py [rollout] [check] [recover] [--sizes 10,50,100,500] [--rounds N]
                                     [--workers N] [--plain-sftp] [--shell-rc] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def bench_rollout() -> None:
    from clusterlab import ApiLoad, EtcdLoad, three_masters
    from kubecert.cluster import RunState, cluster_renew, inventory_digest
    from kubecert.node.restart import Timeouts
    from realworld import kubeconfig_client_pem

    with tempfile.TemporaryDirectory() as tmp, three_masters(Path(tmp)) as cl:
        m1 = cl.lab / "master-1/etc/kubernetes/pki"
        urls = [f"https://127.0.0.1:{cl.ports[h.name].etcd_client}" for h in cl.hosts]
        state = RunState(str(Path(tmp) / "state.json"), inventory_digest(cl.hosts))
        api_urls = [f"https://127.0.0.1:{cl.ports[h.name].apiserver}" for h in cl.hosts]
        cert, key = kubeconfig_client_pem(cl.lab / "master-1/etc/kubernetes/admin.conf")
        start = time.monotonic()
        with EtcdLoad(urls, (m1 / "etcd/ca.crt").read_bytes(), (m1 / "apiserver-etcd-client.crt").read_bytes(),
                      (m1 / "apiserver-etcd-client.key").read_bytes()) as load, \
                ApiLoad(api_urls, (m1 / "ca.crt").read_bytes(), cert, key) as api:
            run = cluster_renew(cl.hosts, cl.connect, now=dt.datetime.now(dt.timezone.utc), state=state,
                                timeouts=Timeouts(default_gate=90))
        total = time.monotonic() - start
    print("rolling renewal, 3 real control planes + 3-member etcd (local transport, fake kubelets)")
    for n in run.nodes:
        print(f"  {n.name:<10} {n.status:<8} {n.seconds:6.2f} s  {n.detail}")
    print(f"  total {total:.2f} s during the rollout:\n  {load.summary()}\n  {api.summary()}")


class _Phases:
    """Wall time and the worker thread's own CPU time per phase, summed over hosts (each host is
    gathered in one worker thread; the SSH work itself runs on the event loop thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seconds: Dict[str, float] = {}
        self.cpu: Dict[str, float] = {}
        self.counts: Dict[str, int] = {}

    def add(self, phase: str, since: Tuple[float, float]) -> None:
        wall, cpu = time.monotonic() - since[0], time.thread_time() - since[1]
        with self.lock:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + wall
            self.cpu[phase] = self.cpu.get(phase, 0.0) + cpu

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1


class _Timed:
    """A Connection whose phases are timed: connect+auth, the node's files, reading them, close."""

    def __init__(self, conn: Any, phases: _Phases, profiles: Optional[List[cProfile.Profile]]) -> None:
        self.phases = phases
        self.profile: Optional[cProfile.Profile] = None
        if profiles is not None:  # this worker thread's share of the client's CPU
            self.profile = cProfile.Profile(time.thread_time)  # CPU time: not the waits for the GIL
            profiles.append(self.profile)
            self.profile.enable()
        t = _now()
        self.conn = conn.open()
        phases.add("1 connect+auth", t)
        self.files_at: Optional[Tuple[float, float]] = None
        self.fs_obj: Any = None

    def fs(self) -> Any:
        return self._files(self.conn.fs, "2 SFTP session+root check")

    def _files(self, get: Any, phase: str) -> Any:
        t = _now()
        self.fs_obj = get()
        self.phases.add(phase, t)
        self.files_at = _now()
        return self.fs_obj

    def run(self, argv: Any, timeout: float, shell: bool = False) -> Any:
        return self.conn.run(argv, timeout, shell)

    def close(self) -> None:
        if self.files_at:
            self.phases.add("3 scan+kubeconfigs (parse, reads)", self.files_at)
        if getattr(self.fs_obj, "snapshot", None) is not None or getattr(self.fs_obj, "sftp_started", True) is False:
            self.phases.count("served from the snapshot")
        if getattr(self.fs_obj, "sftp_started", False):
            self.phases.count("SFTP session started")
        t = _now()
        self.conn.close()
        self.phases.add("4 close", t)
        if self.profile is not None:
            self.profile.disable()


class _TimedPrefetch(_Timed):
    def prefetched_fs(self) -> Any:
        return self._files(self.conn.prefetched_fs, "2 prefetch command+parse")


def _now() -> Tuple[float, float]:
    return time.monotonic(), time.thread_time()


def _busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all processes: sshd, and whatever else runs)."""
    with open("/proc/stat") as fh:
        ticks = [int(x) for x in fh.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def bench_check(sizes: List[int], *, workers: int, plain: bool, shell_rc: bool, profile: bool, rounds: int) -> None:
    import importlib

    from kubecert.cluster import cluster_check
    from kubecert.lab import LabSpec, create
    from kubecert.remote.hosts import Host
    from kubecert.remote.loop import event_loop
    from kubecert.remote.ssh import Connection

    start_sshds = importlib.import_module("sshd").start_sshds  # tests/sshd.py: real sshd processes

    now = dt.datetime.now(dt.timezone.utc)
    how = "plain SFTP" if plain else "prefetch (one remote find+tar per node)"
    print(f"cluster check over N real sshd on loopback, {os.cpu_count()} CPUs, {workers} workers, {how}"
          f"{', login shell reads ~/.bashrc' if shell_rc else ''}; best of {rounds}")
    with tempfile.TemporaryDirectory() as tmp:
        lab = Path(tmp) / "lab"
        # every worker its own identity (kubelet client and serving certs), as in a real cluster
        create(str(lab), LabSpec(nodes=CONTROL_PLANES, key_type="ecdsa",
                                 workers=max(0, max(sizes) - CONTROL_PLANES)), now=now)
        print(f"{CONTROL_PLANES} control planes + N - {CONTROL_PLANES} workers")
        print(f"{'hosts':>6} {'sshd start':>11} {'cluster check':>14} {'per host':>9} {'client CPU':>11} "
              f"{'rest of machine CPU (sshd, node commands, anything else running)':>10}")
        for n in sizes:
            roles = _mix(n)
            roots = []
            for i, (name, _role) in enumerate(roles):
                root = Path(tmp) / f"n{n}-{i}"
                shutil.copytree(lab / name, root, symlinks=True)
                roots.append(root)
            t = time.monotonic()
            with start_sshds(n, Path(tmp) / f"sshd-{n}", shell_rc=shell_rc) as servers:
                started = time.monotonic() - t
                hosts = [Host(roles[i][0], "127.0.0.1", roles[i][1], port=s.port, key=str(s.client_key),
                              root=str(roots[i])) for i, s in enumerate(servers)]
                known = str(servers[0].known_hosts)
                best: Optional[Tuple[float, float, float, _Phases, List[cProfile.Profile], Any, Any]] = None
                for _ in range(rounds):
                    phases = _Phases()
                    profiles: Optional[List[cProfile.Profile]] = [] if profile else None
                    loop_profile = cProfile.Profile(time.thread_time) if profile else None
                    if loop_profile is not None:
                        event_loop().call_soon_threadsafe(loop_profile.enable)
                    kind = _Timed if plain else _TimedPrefetch

                    def connect(h: Host, _known: str = known, _p: _Phases = phases,
                                _profiles: Optional[List[cProfile.Profile]] = profiles, _kind: Any = kind) -> Any:
                        return _kind(Connection(h, known_hosts=_known), _p, _profiles)

                    cpu, busy, t = time.process_time(), _busy_seconds(), time.monotonic()
                    report = cluster_check(hosts, connect, now=now, workers=workers, members=False)
                    took, cpu, busy = time.monotonic() - t, time.process_time() - cpu, _busy_seconds() - busy
                    if loop_profile is not None:
                        event_loop().call_soon_threadsafe(loop_profile.disable)
                        time.sleep(0.1)
                    errors = [x.error for x in report.nodes if x.error]
                    assert not errors, errors[:3]
                    profiles_seen = sorted({x.report.profile.name for x in report.nodes if x.report})
                    assert profiles_seen == sorted({"stacked", "worker"} if n > CONTROL_PLANES else {"stacked"}), \
                        profiles_seen
                    assert not report.findings, report.findings[:3]
                    if best is None or took < best[0]:
                        best = (took, cpu, busy, phases, profiles or [], loop_profile, report)
            assert best is not None
            took, cpu, busy, phases, profiles, loop_profile, report = best
            print(f"{n:>6} {started:>10.2f}s {took:>13.2f}s {took / n * 1000:>7.1f}ms {cpu:>10.2f}s "
                  f"{max(0.0, busy - cpu):>9.2f}s")
            for role in ("control-plane", "worker"):
                times = sorted(x.seconds for x in report.nodes if x.role == role)
                if times:
                    print(f"{'':>8}{role + ' nodes, time each (connect to close)':<44} "
                          f"median {times[len(times) // 2] * 1000:6.0f} ms, max {times[-1] * 1000:6.0f} ms "
                          f"({len(times)} nodes)")
            print(f"{'':>8}{'phase':<36} {'wall':>8} {'CPU of its thread':>18}  (ms per host)")
            for phase in sorted(phases.seconds):
                print(f"{'':>8}{phase:<36} {phases.seconds[phase] / n * 1000:8.1f} {phases.cpu[phase] / n * 1000:18.1f}")
            workers_cpu = sum(phases.cpu.values())
            print(f"{'':>8}{'client CPU: worker threads':<36} {workers_cpu / n * 1000:8.1f} ms/host; the event loop "
                  f"thread (SSH, SFTP) and the rest {max(0.0, cpu - workers_cpu) / n * 1000:.1f} ms/host")
            for what, count in sorted(phases.counts.items()):
                print(f"{'':>8}{what:<36} {count:>7} of {n} hosts")
            if profiles:
                _print_profile("worker threads (scan, parse, waiting)", profiles)
            if loop_profile is not None:
                _print_profile("event loop thread (SSH, SFTP)", [loop_profile])


CONTROL_PLANES = 3


def _mix(n: int) -> List[Tuple[str, str]]:
    """(name, role) of N hosts: the lab's control planes first, then workers (most of a big cluster)."""
    cps = [(f"master-{i}", "control-plane") for i in range(1, min(n, CONTROL_PLANES) + 1)]
    return cps + [(f"worker-{i}", "worker") for i in range(1, n - len(cps) + 1)]


def _print_profile(title: str, profiles: List[cProfile.Profile], top: int = 12) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profiles[0], stream=out)
    for p in profiles[1:]:
        stats.add(p)
    stats.sort_stats("tottime").print_stats(top)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    print(f"{'':>8}cProfile, {title}, by own time:")
    for line in lines[lines.index(next(x for x in lines if "ncalls" in x)):]:
        print(f"{'':>10}{line[:150]}")


def bench_recover(rounds: int) -> None:
    import re

    from netlab import netlab

    print("cluster recover of the expired netns lab: 3 control planes (real etcd x3, real apiserver /")
    print("controller-manager / scheduler v1.20.2) + 2 workers, each host its own sshd; over SSH")
    for i in range(rounds):
        with tempfile.TemporaryDirectory() as tmp, netlab(Path(tmp), workers=2, expired=True) as net:
            r = net.kubecert("cluster", "recover", "-i", str(net.inventory), "--known-hosts", str(net.known_hosts),
                             "--yes", "--gate-timeout", "120", timeout=600)
            m = re.search(r"^time: (.*)$", r.stdout, re.M)
            if r.returncode != 0 or not m:
                print(r.stdout[-3000:], r.stderr[-2000:])
                raise SystemExit(f"recover failed: exit {r.returncode}")
            print(f"  round {i + 1}: {m.group(1)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", nargs="*", default=["rollout", "check"])
    ap.add_argument("--sizes", default="10,50,100,500")
    ap.add_argument("--workers", type=int, default=64, help="check: nodes at once")
    ap.add_argument("--rounds", type=int, default=1, help="check: runs per size, the fastest is shown")
    ap.add_argument("--plain-sftp", action="store_true", help="check: no prefetch, every file over SFTP (as before)")
    ap.add_argument("--shell-rc", action="store_true", help="check: let the nodes' login shell read ~/.bashrc")
    ap.add_argument("--profile", action="store_true", help="check: cProfile of the worker and event-loop threads")
    args = ap.parse_args()
    if "rollout" in args.what:
        bench_rollout()
    if "check" in args.what:
        bench_check([int(s) for s in args.sizes.split(",")], workers=args.workers, plain=args.plain_sftp,
                    shell_rc=args.shell_rc, profile=args.profile, rounds=args.rounds)
    if "recover" in args.what:
        bench_recover(args.rounds)
    subprocess.run(["true"])


if __name__ == "__main__":
    main()
