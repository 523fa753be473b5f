"""The fake kubelet: runs a node root's static pod manifests as REAL processes, as the kubelet does.

    python tests/fakenode/kubelet.py --root NODE_ROOT --state STATE_DIR [--file-check-frequency SECONDS]
                                     [--owner-pid PID[:STARTTIME]] [--kube-bin DIR]

``NODE_ROOT/var/lib/kubelet/config.yaml`` (KubeletConfiguration), when present, gives
``staticPodPath``, ``fileCheckFrequency`` (the flag wins; default 0.5 s) and the plain-HTTP
``/healthz`` endpoint (``healthzBindAddress``:``healthzPort``, 0 = off) the supervisor serves, as
the kubelet does; without it no healthz is served (never the shared default port 10248).

Every file-check period it reads the static pod directory (default
``NODE_ROOT/etc/kubernetes/manifests``; every
regular file not starting with a dot, as the kubelet does: a ``etcd.yaml.bak`` left *inside* the
directory is a pod too; the first file naming a pod wins; the pod's UID hashes its content, the node
and the file's path, so an edit or a rename replaces the pod and a ``touch`` does not) and every
0.2 s it checks its processes:

* ``etcd``: ``/usr/bin/etcd`` (``$KUBECERT_FAKE_ETCD`` overrides) with the manifest's flags;
* ``kube-apiserver``, ``kube-controller-manager``, ``kube-scheduler``: the REAL binaries in
  ``--kube-bin DIR`` (scripts/install-kube.sh; v1.20.2) with the manifest's flags, adjusted for
  v1.20 by ``tests/kubebin.py`` (``v120_argv``); without ``--kube-bin`` they cannot start (exit 1);
* any other container: a process that sleeps until stopped.

Paths under /etc/kubernetes and /var/lib are rewritten into NODE_ROOT, etcd's ``--data-dir`` to
STATE_DIR/etcd-data; URLs are used as written. Each start is a container with a new random
64-hex id, recorded in STATE_DIR/containers.json with its pid, state and times (an exit by
signal N is recorded as exit code 128+N, as container runtimes report it). A container
whose process exits is started again, with a new id and attempt+1, after 0.3 s (doubling up to
2 s while it keeps failing at once: a crash loop). A removed manifest stops its container
(SIGTERM, SIGKILL after 5 s); a changed one replaces the pod. ``requests/restart-<id>`` (written
by ``docker restart``) restarts a container in place: same id, new process.

Knobs: ``STATE_DIR/fail-start/<container>`` makes each start exit at once;
``STATE_DIR/die-after/<container>`` (holding N seconds) makes the next start run as usual and be
killed N seconds later (one shot: "healthy, then crashed on its first real work");
``STATE_DIR/stale/<container>`` makes it start with the certificate files it FIRST started with
(copied to STATE_DIR/snapshots/ on the first start): "restarted, still serving the old cert".

``--register-node HOST=IP,...``: also do what the kubelet does with its credentials (node_agent.py:
the Node and its Lease; healthz is then the agent's health) and, as the real kubelet, exit at start
(status 1) when the client certificate has expired and there is no bootstrap-kubelet.conf.

``--owner-pid``: once that process (the test run) is gone, stop every container and every other
unit of STATE_DIR, then exit — no orphans even if pytest itself is killed.

SIGTERM or SIGINT: stop every container, then exit. SIGUSR1: exit and leave the containers
running, as a restarted kubelet does; the next supervisor on the same STATE_DIR adopts them
(checked by pid and process start time) instead of restarting them.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for `fakenode` when run as a script

import yaml  # noqa: E402

import kubebin  # noqa: E402
from fakenode import state as S  # noqa: E402
from fakenode import units as U  # noqa: E402

TICK = 0.2
BACKOFF = 0.3
BACKOFF_MAX = 2.0
QUICK_EXIT = 2.0  # an error exit this soon after start counts towards the crash-loop back-off
STOP_GRACE = 5.0
DEAD_PER_CONTAINER = 1  # exited containers kept per pod, as the kubelet's --maximum-dead-containers-per-container
SERVERS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
# flags naming the files a component serves (or authenticates) with: what "stale" freezes
CERT_FLAGS = {
    "etcd": ("--cert-file", "--key-file"),
    "kube-apiserver": ("--tls-cert-file", "--tls-private-key-file"),
    "kube-controller-manager": ("--kubeconfig", "--authentication-kubeconfig", "--authorization-kubeconfig"),
    "kube-scheduler": ("--kubeconfig", "--authentication-kubeconfig", "--authorization-kubeconfig"),
}
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}
SLEEPER = "import time\nwhile True:\n    time.sleep(3600)\n"
# argv: SECONDS COMMAND...: run COMMAND, kill it SECONDS later, exit 1 (a crash after a healthy start)
DIE_AFTER = ("import subprocess, sys, time\np = subprocess.Popen(sys.argv[2:])\ntime.sleep(float(sys.argv[1]))\n"
             "p.kill()\np.wait()\nsys.stderr.write('fake node: die-after knob: killed\\n')\nsys.exit(1)\n")


def _inside(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in ("/etc/kubernetes", "/var/lib"))


def rewrite(token: str, container: str, root: Path, state: Path) -> str:
    """One argument of a manifest's command as the fake node runs it: paths under /etc/kubernetes
    and /var/lib moved into ``root``, etcd's ``--data-dir`` to ``state``/etcd-data."""
    if token.startswith("--") and "=" in token:
        flag, value = token.split("=", 1)
        if container == "etcd" and flag == "--data-dir":
            return f"{flag}={state / 'etcd-data'}"
        return f"{flag}={root}{value}" if _inside(value) else token
    return f"{root}{token}" if _inside(token) else token


def etcd_binary() -> str:
    return os.environ.get("KUBECERT_FAKE_ETCD") or shutil.which("etcd") or "/usr/bin/etcd"


KUBELET_CONFIG = "var/lib/kubelet/config.yaml"
_DURATION = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """A Go duration as KubeletConfiguration writes them ("20s", "200ms", "1m30s"), in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * _DURATION[u] for n, u in parts)


def kubelet_config(root: Path) -> Dict[str, Any]:
    """NODE_ROOT/var/lib/kubelet/config.yaml (the KubeletConfiguration kubeadm writes), {} if absent."""
    try:
        doc = yaml.safe_load((root / KUBELET_CONFIG).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return dict(doc) if isinstance(doc, dict) else {}


def log(msg: str) -> None:
    print(f"{S.rfc3339(S.utcnow())} kubelet: {msg}", flush=True)


class _Healthz(http.server.BaseHTTPRequestHandler):
    health: Optional[Callable[[], Tuple[int, str]]] = None  # --register-node: the node agent's

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        ok = self.path.split("?")[0] == "/healthz"
        status, text = (self.health() if self.health is not None else (200, "ok")) if ok else (404, "")
        body = text.encode() if ok else b"404 page not found\n"
        self.send_response(status if ok else 404)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature of the base class)
        pass


class _HealthzServer(http.server.ThreadingHTTPServer):
    allow_reuse_address = True  # a restarted kubelet binds its port again at once
    daemon_threads = True


@dataclass(frozen=True)
class Manifest:
    key: str  # metadata.name: the pod as the manifest names it
    path: Path
    digest: str  # the static pod's UID
    container: Dict[str, Any]


@dataclass
class Pod:
    key: str
    name: str  # <key>-<node name>, as the kubelet names a static pod
    uid: str
    sandbox_id: str
    manifest: Manifest
    attempt: int = 0
    current: Optional[str] = None  # id of the running (or stopping) container
    restart_at: Optional[float] = None
    backoff: float = BACKOFF
    removing: bool = False
    replacement: Optional[Manifest] = None
    stop_deadline: Optional[float] = None
    created: str = field(default_factory=lambda: S.rfc3339(S.utcnow()))


class Supervisor:
    def __init__(self, root: Path, state: Path, file_check_frequency: float, config: Dict[str, Any],
                 owner: Optional[Tuple[int, int]] = None, kube_bin: Optional[Path] = None,
                 agent: Optional[Any] = None) -> None:
        self.root = root
        self.agent = agent  # node_agent.Agent: registers the Node; healthz is its health
        self.kube_bin = kube_bin
        self.state = state
        self.frequency = file_check_frequency
        self.config = config
        self.owner = owner
        static = str(config.get("staticPodPath") or "/etc/kubernetes/manifests")
        self.manifests_dir = root / static.lstrip("/")
        self.node = self._node_name()
        self.pods: Dict[str, Pod] = {}
        self.records: Dict[str, S.Record] = {}
        self.procs: Dict[str, Optional[subprocess.Popen[bytes]]] = {}  # None: adopted, not our child
        self.dirty: Set[str] = set()
        self.deleted: Set[str] = set()
        self.pods_changed = True
        self.shutdown: Optional[str] = None
        for d in ("logs", "requests", "fail-start", "die-after", "stale", "snapshots"):
            (state / d).mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------------------------------- setup

    def _node_name(self) -> str:
        for name in ("kubeadm-config.yaml", "kubeadm.yaml"):
            try:
                docs = list(yaml.safe_load_all((self.root / "etc/kubernetes" / name).read_text()))
            except (OSError, yaml.YAMLError):
                continue
            for d in docs:
                if isinstance(d, dict) and d.get("kind") in ("InitConfiguration", "JoinConfiguration"):
                    reg = d.get("nodeRegistration") or {}
                    if reg.get("name"):
                        return str(reg["name"])
        return self.root.name

    def adopt(self) -> None:
        """Take over what a previous supervisor on this STATE_DIR left: running containers stay."""
        db = S.read_db(self.state)
        for rec in db.get("containers", []):
            self.records[rec["id"]] = rec
        live = {p.key: p for p in (self._scan() or [])}
        for prec in db.get("pods", []):
            m = live.get(prec["key"])
            if m is None or m.digest != prec.get("digest"):
                m = Manifest(prec["key"], Path(prec["manifest"]), str(prec.get("digest")), {})
            pod = Pod(prec["key"], prec["name"], prec["uid"], prec["sandbox_id"], m, attempt=int(prec["attempt"]),
                      created=prec.get("created", S.rfc3339(S.utcnow())))
            self.pods[pod.key] = pod
        for rec in self.records.values():
            if rec.get("state") != "running":
                continue
            owner = self.pods.get(rec.get("pod_key", ""))
            running = S.alive(rec.get("pid"), rec.get("pid_starttime"))
            if running and owner is not None and owner.current is None:
                owner.current = rec["id"]
                self.procs[rec["id"]] = None
                log(f"adopted {rec['name']} {rec['id'][:13]} pid {rec['pid']}")
                continue
            if running:  # a container of no known pod (or a second one for a pod): the kubelet kills those
                log(f"killing unexpected container {rec['name']} {rec['id'][:13]} pid {rec['pid']}")
                S.terminate(rec.get("pid"), rec.get("pid_starttime"), STOP_GRACE)
            self._mark_exited(rec["id"], None)

    # ----------------------------------------------------------------------------------- manifests

    def _scan(self) -> Optional[List[Manifest]]:
        """The manifests now present; None if the directory cannot be read (then change nothing)."""
        try:
            entries = sorted(self.manifests_dir.iterdir())
        except FileNotFoundError:
            return []
        except OSError as exc:
            log(f"cannot read {self.manifests_dir}: {exc}")
            return None
        out: Dict[str, Manifest] = {}
        for p in entries:
            if p.name.startswith(".") or not p.is_file():
                continue
            try:
                raw = p.read_bytes()
                doc = yaml.safe_load(raw)
                key = str(doc["metadata"]["name"])
                container = dict(doc["spec"]["containers"][0])
            except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError) as exc:
                log(f"ignoring {p}: not a pod manifest ({type(exc).__name__}: {exc})")
                continue
            if key in out:
                log(f"ignoring {p}: pod {key} is already defined by {out[key].path.name}")
                continue
            # the kubelet's static pod UID: a hash of the pod object, the node and the file's path, so
            # content changes and renames (even inside the directory) replace the pod, `touch` does not
            source = "/" + str(p.relative_to(self.root))
            uid = hashlib.md5(json.dumps(doc, sort_keys=True, default=str).encode()
                              + f"host:{self.node}file:{source}".encode()).hexdigest()
            out[key] = Manifest(key, p, uid, container)
        return list(out.values())

    def reconcile(self, manifests: List[Manifest]) -> None:
        desired = {m.key: m for m in manifests}
        for key, pod in list(self.pods.items()):
            if key in desired:
                continue
            if not pod.removing:
                log(f"manifest for {pod.name} is gone: stopping its pod")
                pod.removing, pod.replacement, pod.restart_at = True, None, None
            if pod.current is None:
                self._drop_pod(pod)
            else:
                self._begin_stop(pod)
        for key, m in desired.items():
            existing = self.pods.get(key)
            if existing is None:
                self._new_pod(m)
            elif existing.removing or m.digest != existing.manifest.digest:
                if existing.replacement is None or existing.replacement.digest != m.digest:
                    log(f"manifest for {existing.name} changed: replacing the pod")
                existing.replacement, existing.removing, existing.restart_at = m, False, None
                if existing.current is None:
                    self._drop_pod(existing)
                    self._new_pod(m)
                else:
                    self._begin_stop(existing)
            elif not existing.manifest.container and m.container:  # adopted before its manifest was read
                existing.manifest = m

    def _new_pod(self, m: Manifest) -> None:
        pod = Pod(m.key, f"{m.key}-{self.node}", m.digest, secrets.token_hex(32), m)
        self.pods[m.key] = pod
        self.pods_changed = True
        self._start(pod, attempt=0)

    def _drop_pod(self, pod: Pod) -> None:
        self.pods.pop(pod.key, None)
        self.pods_changed = True

    # ----------------------------------------------------------------------------------- containers

    def _snapshot(self, name: str, argv: List[str]) -> Dict[str, str]:
        """flag -> snapshot path of the files ``name`` first started with (copied now if it never did)."""
        flags = CERT_FLAGS.get(name, ())
        snap_dir = self.state / "snapshots" / name
        fresh = not snap_dir.exists()
        snap_dir.mkdir(parents=True, exist_ok=True)
        out = {}
        for tok in argv:
            flag, _, value = tok.partition("=")
            if flag in flags and value:
                dest = snap_dir / f"{flag.lstrip('-')}__{Path(value).name}"
                if fresh and Path(value).is_file():
                    shutil.copy2(value, dest)
                if dest.is_file():
                    out[flag] = str(dest)
        return out

    def _command(self, pod: Pod) -> List[str]:
        c = pod.manifest.container
        name = str(c.get("name", pod.key))
        command = [str(x) for x in list(c.get("command") or []) + list(c.get("args") or [])]
        if not command:
            command = [name]
        flags = [rewrite(tok, name, self.root, self.state) for tok in command[1:]]
        snapshots = self._snapshot(name, flags)
        if (self.state / "stale" / name).exists():
            flags = [f"{tok.partition('=')[0]}={snapshots[tok.partition('=')[0]]}"
                     if tok.partition("=")[0] in snapshots else tok for tok in flags]
        if (self.state / "fail-start" / name).exists():
            return [sys.executable, "-c",
                    f"import sys; sys.stderr.write('fake node: fail-start knob set for {name}\\n'); sys.exit(1)"]
        die = self.state / "die-after" / name
        if die.exists():
            seconds = float(die.read_text().strip() or "5")
            die.unlink()  # one shot: the start after it (a rollback's) runs as usual
            return [sys.executable, "-c", DIE_AFTER, str(seconds), *self._real_argv(name, flags)]
        return self._real_argv(name, flags)

    def _real_argv(self, name: str, flags: List[str]) -> List[str]:
        if name == "etcd":
            return [etcd_binary(), *flags]
        if name in SERVERS and self.kube_bin is not None:
            return kubebin.v120_argv(name, flags, self.kube_bin)
        if name in SERVERS:
            return [sys.executable, "-c", f"import sys; sys.stderr.write('fake node: no --kube-bin for {name}\\n'); "
                    "sys.exit(1)"]
        return [sys.executable, "-c", SLEEPER]

    @staticmethod
    def _spec_command(pod: Pod) -> List[str]:
        c = pod.manifest.container
        return [str(x) for x in list(c.get("command") or []) + list(c.get("args") or [])]

    def _start(self, pod: Pod, attempt: int, reuse_id: Optional[str] = None) -> None:
        c = pod.manifest.container
        name = str(c.get("name", pod.key))
        cid = reuse_id or secrets.token_hex(32)
        pod.attempt, pod.restart_at = attempt, None
        argv = self._command(pod)
        log_path = self.state / "logs" / f"{name}_{attempt}_{cid[:12]}.log"
        env = S.clean_env(**{S.OWNER_ENV: str(self.state), S.NODE_ROOT_ENV: str(self.root),
                             S.STATE_ENV: str(self.state)})
        arch = _GOARCH.get(platform.machine(), platform.machine())
        if name == "etcd" and arch != "amd64":
            env["ETCD_UNSUPPORTED_ARCH"] = arch  # etcd 3.4 refuses other architectures without it
        now = S.rfc3339(S.utcnow())
        rec: S.Record = dict(self.records.get(cid, {})) if reuse_id else {}
        rec.update({
            "id": cid, "name": name, "pod_key": pod.key, "pod_name": pod.name, "pod_namespace": "kube-system",
            "pod_uid": pod.uid, "pod_id": pod.sandbox_id, "attempt": attempt, "image": str(c.get("image", "")),
            "image_id": "sha256:" + hashlib.sha256(str(c.get("image", "")).encode()).hexdigest(),
            "manifest": str(pod.manifest.path), "command": argv, "spec_command": self._spec_command(pod),
            "log_path": str(log_path), "state": "running",
            "started": now, "finished": None, "exit_code": None, "signal": None, "node": self.node,
        })
        rec.setdefault("created", now)
        rec.setdefault("restart_count", 0)
        if reuse_id:
            rec["restart_count"] = int(rec["restart_count"]) + 1
        with open(log_path, "ab") as out:
            out.write(f"=== {now} {' '.join(argv)}\n".encode())
            out.flush()
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True, env=env, cwd=str(self.state))
            except OSError as exc:
                out.write(f"=== cannot start: {exc}\n".encode())
                proc = None
        if proc is None:
            rec.update({"pid": 0, "pid_starttime": 0, "state": "exited", "finished": now, "exit_code": 128})
            self._put(rec)
            pod.current = None
            self._schedule_restart(pod, rec)
            return
        rec.update({"pid": proc.pid, "pid_starttime": S.start_time(proc.pid)})
        self.procs[cid] = proc
        pod.current = cid
        pod.stop_deadline = None
        self._put(rec)
        self.pods_changed = True
        log(f"started {name} {cid[:13]} attempt {attempt} pid {proc.pid}")

    def _put(self, rec: S.Record) -> None:
        self.records[rec["id"]] = rec
        self.dirty.add(rec["id"])
        self.deleted.discard(rec["id"])

    def _mark_exited(self, cid: str, returncode: Optional[int]) -> None:
        """Record an exit as a container runtime reports it: killed by signal N is exit code 128+N."""
        rec = dict(self.records[cid])
        signum = -returncode if returncode is not None and returncode < 0 else None
        code = 128 + signum if signum is not None else returncode
        rec.update({"state": "exited", "finished": S.rfc3339(S.utcnow()), "exit_code": code, "signal": signum})
        self._put(rec)
        self.procs.pop(cid, None)

    def _begin_stop(self, pod: Pod) -> None:
        if pod.current is None or pod.stop_deadline is not None:
            return
        rec = self.records[pod.current]
        S.signal_group(rec.get("pid"), signal.SIGTERM, rec.get("pid_starttime"))
        pod.stop_deadline = time.monotonic() + STOP_GRACE

    def _exit_code(self, cid: str) -> Optional[int]:
        """The exit code if container ``cid`` has exited (-signal if killed), else None; -255 if unknown."""
        proc = self.procs.get(cid)
        if proc is not None:
            return proc.poll()
        rec = self.records[cid]
        return None if S.alive(rec.get("pid"), rec.get("pid_starttime")) else -255

    def _schedule_restart(self, pod: Pod, rec: S.Record) -> None:
        code = rec.get("exit_code")
        ran = (S.parse_time(rec["finished"]) - S.parse_time(rec["started"])).total_seconds()
        if isinstance(code, int) and code > 0 and rec.get("signal") is None and ran < QUICK_EXIT:
            delay = pod.backoff
            pod.backoff = min(pod.backoff * 2, BACKOFF_MAX)
        else:
            delay = pod.backoff = BACKOFF
        pod.restart_at = time.monotonic() + delay

    def check_processes(self) -> None:
        now = time.monotonic()
        for pod in list(self.pods.values()):
            cid = pod.current
            if cid is not None:
                code = self._exit_code(cid)
                if code is None:
                    if pod.stop_deadline is not None and now > pod.stop_deadline:
                        rec = self.records[cid]
                        S.signal_group(rec.get("pid"), signal.SIGKILL, rec.get("pid_starttime"))
                    continue
                self._mark_exited(cid, None if code == -255 else code)
                rec = self.records[cid]
                pod.current, pod.stop_deadline = None, None
                log(f"{rec['name']} {cid[:13]} exited ({code})")
                request = self.state / "requests" / f"restart-{cid}"
                if request.exists() and not pod.removing and pod.replacement is None:
                    request.unlink()
                    self._start(pod, pod.attempt, reuse_id=cid)
                elif pod.removing:
                    self._drop_pod(pod)
                elif pod.replacement is not None:
                    m = pod.replacement
                    self._drop_pod(pod)
                    self._new_pod(m)
                else:
                    self._schedule_restart(pod, rec)
            elif pod.restart_at is None and not pod.removing:
                self._start(pod, pod.attempt + 1 if self._has_container(pod) else 0)
            elif pod.restart_at is not None and now >= pod.restart_at:
                self._start(pod, pod.attempt + 1)

    def _has_container(self, pod: Pod) -> bool:
        return any(r.get("pod_id") == pod.sandbox_id for r in self.records.values())

    # ----------------------------------------------------------------------------------- persistence

    def _gc(self) -> None:
        by_pod: Dict[str, List[S.Record]] = {}
        for rec in self.records.values():
            if rec.get("state") == "exited":
                by_pod.setdefault(f"{rec.get('pod_key')}/{rec.get('name')}", []).append(rec)
        for recs in by_pod.values():
            recs.sort(key=lambda r: str(r.get("created")), reverse=True)
            for old in recs[DEAD_PER_CONTAINER:]:
                self.records.pop(old["id"], None)
                self.dirty.discard(old["id"])
                self.deleted.add(old["id"])

    def flush(self) -> None:
        self._gc()
        if not (self.dirty or self.deleted or self.pods_changed):
            return
        with S.locked(self.state):
            db = S.read_db(self.state)
            on_disk = {r["id"]: r for r in db.get("containers", [])}
            for cid in list(self.records):  # removed by `crictl rm` / `docker rm` meanwhile
                if cid not in on_disk and cid not in self.dirty and self.records[cid].get("state") == "exited":
                    self.records.pop(cid)
            for cid in self.deleted:
                on_disk.pop(cid, None)
            for cid in self.dirty:
                on_disk[cid] = self.records[cid]
            pods = [{"key": p.key, "name": p.name, "namespace": "kube-system", "uid": p.uid,
                     "sandbox_id": p.sandbox_id, "attempt": p.attempt, "manifest": str(p.manifest.path),
                     "digest": p.manifest.digest, "created": p.created,
                     "state": "NotReady" if p.removing else "Ready"} for p in self.pods.values()]
            S.write_db(self.state, {"node": self.node, "root": str(self.root), "supervisor_pid": os.getpid(),
                                    "pods": pods, "containers": list(on_disk.values())})
        self.dirty.clear()
        self.deleted.clear()
        self.pods_changed = False

    # ----------------------------------------------------------------------------------- main loop

    def serve_healthz(self) -> None:
        """The kubelet's plain-HTTP /healthz on healthzBindAddress:healthzPort of config.yaml (0: off;
        no config.yaml: off too, rather than the real default 10248, which tests would share)."""
        if not self.config:
            log(f"no {KUBELET_CONFIG}: healthz not served")
            return
        port = int(self.config.get("healthzPort", 10248) or 0)
        host = str(self.config.get("healthzBindAddress") or "127.0.0.1")
        if port == 0:
            return

        handler: Any = _Healthz
        if self.agent is not None:
            handler = type("_AgentHealthz", (_Healthz,), {"health": staticmethod(self.agent.health)})
        try:
            server = _HealthzServer((host, port), handler)
        except OSError as exc:
            log(f"cannot serve healthz on {host}:{port}: {exc}")
            return
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
        log(f"healthz on http://{host}:{port}/healthz")

    def _owner_gone(self) -> bool:
        return self.owner is not None and not S.alive(*self.owner)

    def _stop_units(self) -> None:
        """Stop every other unit of this node (the test that owned them is gone)."""
        for path in sorted((self.state / "units").glob("*.json")):
            mp = U.main_process(self.state, path.stem)
            if mp is not None and mp.pid != os.getpid():
                try:
                    U.stop(self.state, path.stem)
                except S.FakeNodeError as exc:
                    log(f"cannot stop unit {path.stem}: {exc}")

    def run(self) -> int:
        self.adopt()
        self.serve_healthz()
        next_scan = 0.0
        while self.shutdown is None:
            if self._owner_gone():
                log(f"owner process {self.owner[0] if self.owner else '?'} is gone: stopping everything")
                self._stop_units()
                self.shutdown = "stop"
                break
            try:
                now = time.monotonic()
                if now >= next_scan:
                    manifests = self._scan()
                    if manifests is not None:
                        self.reconcile(manifests)
                    next_scan = now + self.frequency
                self.check_processes()
                self.flush()
            except Exception:  # a bug here must not leave the node unsupervised: log it and go on
                log("error in the supervision loop:\n" + traceback.format_exc())
            time.sleep(TICK)
        if self.shutdown == "stop":
            self.stop_all()
        else:
            log("detaching: containers keep running")
        self.flush()
        return 0

    def stop_all(self) -> None:
        log("stopping every container")
        for pod in self.pods.values():
            pod.removing = True
            self._begin_stop(pod)
        deadline = time.monotonic() + STOP_GRACE
        while any(p.current and self._exit_code(p.current) is None for p in self.pods.values()):
            if time.monotonic() > deadline:
                for p in self.pods.values():
                    if p.current:
                        rec = self.records[p.current]
                        S.signal_group(rec.get("pid"), signal.SIGKILL, rec.get("pid_starttime"))
                break
            time.sleep(0.05)
        for pod in list(self.pods.values()):
            if pod.current is not None:
                rec = self.records[pod.current]
                S.wait_dead(rec["pid"], rec.get("pid_starttime"), 5.0)
                code = self._exit_code(pod.current)
                self._mark_exited(pod.current, None if code in (None, -255) else code)
                pod.current = None
        self.pods.clear()
        self.pods_changed = True


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True, type=Path, help="the node's root file system")
    ap.add_argument("--state", required=True, type=Path, help="the fake node's state directory")
    ap.add_argument("--file-check-frequency", type=float, default=None,
                    help="seconds between reads of the manifests directory (default: fileCheckFrequency of "
                         f"NODE_ROOT/{KUBELET_CONFIG}, else 0.5)")
    ap.add_argument("--owner-pid", default=None, metavar="PID[:STARTTIME]",
                    help="stop every container and unit, then exit, once this process is gone (the test run)")
    ap.add_argument("--kube-bin", type=Path, default=None, metavar="DIR",
                    help="run the real kube-apiserver, kube-controller-manager and kube-scheduler from DIR "
                         "instead of the stand-ins")
    ap.add_argument("--register-node", default=None, metavar="HOST=IP[,IP...]",
                    help="also do what the kubelet does with its credentials (tests/fakenode/node_agent.py: the "
                         "Node and its Lease through the apiserver, healthz only while that works); the "
                         "value is node_agent's --resolve")
    args = ap.parse_args(argv)
    root, state = args.root.resolve(), args.state.resolve()
    if not (root / "etc/kubernetes").is_dir():
        ap.error(f"{root}/etc/kubernetes is missing: is --root a node root?")
    state.mkdir(parents=True, exist_ok=True)
    config = kubelet_config(root)
    frequency = args.file_check_frequency
    if frequency is None:
        try:
            frequency = parse_duration(str(config["fileCheckFrequency"])) if "fileCheckFrequency" in config else 0.5
        except ValueError as exc:
            ap.error(f"{root}/{KUBELET_CONFIG}: fileCheckFrequency: {exc}")
    owner = None
    if args.owner_pid:
        pid, _, started = args.owner_pid.partition(":")
        owner = (int(pid), int(started) if started else S.start_time(int(pid)))
    agent = None
    if args.register_node:
        from fakenode import node_agent

        creds = node_agent.Credentials(root)  # read once, at start, as the kubelet does
        if creds.not_after <= S.utcnow() and not (root / "etc/kubernetes/bootstrap-kubelet.conf").exists():
            # what the real kubelet does with an expired client cert (after a reboot, say): it would
            # bootstrap a new one, and kubeadm deleted bootstrap-kubelet.conf after the join
            log("Part of the existing bootstrap client certificate in /etc/kubernetes/kubelet.conf is expired: "
                f"{creds.not_after:%Y-%m-%d %H:%M:%S} +0000 UTC")
            log("failed to run Kubelet: unable to load bootstrap kubeconfig: stat "
                "/etc/kubernetes/bootstrap-kubelet.conf: no such file or directory")
            return 1
        host, _, ips = args.register_node.partition("=")
        if host != creds.host or not ips:
            ap.error(f"--register-node {args.register_node}: want {creds.host}=IP[,IP...]")
        agent = node_agent.Agent(creds, [ip.strip() for ip in ips.split(",") if ip.strip()], 1.0)
        threading.Thread(target=agent.loop, args=(threading.Event(),), name="node-agent", daemon=True).start()
        log(f"registering node {creds.node} with {creds.server}")
    sup = Supervisor(root, state, max(0.05, frequency), config, owner, args.kube_bin, agent)

    def on_signal(signum: int, _frame: Any) -> None:
        sup.shutdown = "detach" if signum == signal.SIGUSR1 else "stop"

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, on_signal)
    log(f"supervising {sup.manifests_dir} (node {sup.node}) every {sup.frequency:g}s with state in {state}, "
        f"pid {os.getpid()}")
    return sup.run()


if __name__ == "__main__":
    sys.exit(main())
