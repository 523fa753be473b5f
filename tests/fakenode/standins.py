"""The ``crictl``, ``docker``, ``systemctl`` and ``service`` stand-ins (tests/fakenode/bin/*).

They act on the fake node named by ``$KUBECERT_FAKE_STATE``: containers are the real processes
the fake kubelet (kubelet.py) runs, units are STATE_DIR/units/*.json. Each invocation is appended
to STATE_DIR/calls.log first. Output and exit codes follow the real tools where a runtime
adapter could depend on them; whatever is not implemented fails loudly (exit 1, stderr naming
what is supported), never silently. Standard library only.

crictl  [-r|--runtime-endpoint X] [-i|--image-endpoint X] [-t|--timeout X] [-D|--debug] [-c|--config X] CMD
    ps [-a] [-q] [--name RE] [--state created|running|exited|unknown] [--id ID] [-p|--pod ID]
       [--label k=v]... [--image X] [--namespace RE] [-l|--latest] [-n|--last N] [--no-trunc] [-o table|json]
    pods [-q] [--name RE] [--namespace RE] [--state ready|notready] [--id ID] [--no-trunc] [-o table|json]
    inspect [-o json|go-template] [--template T] ID...        status.state CONTAINER_RUNNING|EXITED, info.pid
    stop [-t|--timeout N] ID... | stop -a                      SIGTERM, SIGKILL after N s (default 10); prints ID
    rm [-f] ID... | rm -a                                      running needs -f
    logs [--tail N] ID
    version
docker  ps [-a] [-q] [--no-trunc] [-f|--filter name=RE|id=X|status=S|label=k[=v]]... [--format TEMPLATE]
        restart [-t N] ID|NAME...    same id, new process (in place, as docker does); prints the argument
        stop [-t N] / kill [-s SIG] / rm [-f] / inspect [-f TEMPLATE] / logs [--tail N] ID|NAME...
        version [-f|--format TEMPLATE]
        k8s containers are named k8s_<container>_<pod>_kube-system_<pod uid>_<attempt>; each pod also
        has its k8s_POD_... (pause) container, listed only.
systemctl [--no-pager|-q|--quiet|--no-block|-l|--full|--value|-p PROP|--property=PROP|--system|--now]
        start|stop|restart|try-restart|reload-or-restart|is-active|is-failed|is-enabled|status|show UNIT...
        daemon-reload
service NAME start|stop|restart|force-reload|status
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import state as S
from . import units as U

TRUNC_CRICTL = 13
TRUNC_DOCKER = 12
STOP_WAIT_SLACK = 5.0
PAUSE_IMAGE = "registry.k8s.io/pause:3.9"
PAUSE_IMAGE_ID = hashlib.sha256(PAUSE_IMAGE.encode()).hexdigest()  # fake, as the kubelet.py image ids
DOCKER_HEADERS = {"ID": "CONTAINER ID", "Names": "NAMES", "Image": "IMAGE", "Command": "COMMAND",
                  "CreatedAt": "CREATED AT", "RunningFor": "CREATED", "Status": "STATUS", "State": "STATE",
                  "Ports": "PORTS", "Labels": "LABELS", "Mounts": "MOUNTS"}
CRICTL_STATES = {"running": "CONTAINER_RUNNING", "exited": "CONTAINER_EXITED"}


class Fail(Exception):
    """A command failed: message for stderr, exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def table(rows: List[List[str]]) -> None:
    """Columns padded like Go's tabwriter (minwidth 0, padding 3... close enough to read and to awk)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


class Args:
    """A tiny getopt: known options (with or without a value), ``-abc`` bundles, ``--x=y``, positionals."""

    def __init__(self, argv: List[str], flags: Dict[str, str], valued: Dict[str, str], multi: Tuple[str, ...] = ()):
        # flags/valued: spelling -> canonical name (e.g. {"-q": "quiet", "--quiet": "quiet"})
        self.opts: Dict[str, Any] = {}
        self.pos: List[str] = []
        i = 0
        while i < len(argv):
            a = argv[i]
            i += 1
            if a == "--":
                self.pos.extend(argv[i:])
                break
            if a.startswith("--"):
                name, eq, value = a.partition("=")
                if name in flags and not eq:
                    self.opts[flags[name]] = True
                elif name in valued:
                    if not eq:
                        if i >= len(argv):
                            raise Fail(f"flag needs an argument: {name}")
                        value = argv[i]
                        i += 1
                    self._set(valued[name], value, multi)
                else:
                    raise Fail(f"unknown flag: {name}")
            elif a.startswith("-") and len(a) > 1:
                j = 1
                while j < len(a):
                    short = "-" + a[j]
                    j += 1
                    if short in flags:
                        self.opts[flags[short]] = True
                    elif short in valued:
                        value = a[j:]
                        if not value:
                            if i >= len(argv):
                                raise Fail(f"flag needs an argument: {short}")
                            value = argv[i]
                            i += 1
                        self._set(valued[short], value.lstrip("="), multi)
                        break
                    else:
                        raise Fail(f"unknown shorthand flag: {short!r} in {a}")
            else:
                self.pos.append(a)

    def _set(self, name: str, value: str, multi: Tuple[str, ...]) -> None:
        if name in multi:
            self.opts.setdefault(name, []).append(value)
        else:
            self.opts[name] = value

    def get(self, name: str, default: Any = None) -> Any:
        return self.opts.get(name, default)


def opts(*spellings: str) -> Dict[str, str]:
    """``opts("-q,--quiet", "-a,--all")`` -> spelling -> canonical (the first long name, no dashes)."""
    table_: Dict[str, str] = {}
    for group in spellings:
        names = group.split(",")
        canonical = next((n for n in names if n.startswith("--")), names[0]).lstrip("-")
        for n in names:
            table_[n] = canonical
    return table_


# --------------------------------------------------------------------------------------------- go templates


_TEMPLATE = re.compile(r"{{\s*(.*?)\s*}}")


def render(template: str, data: Any, methods: Optional[Dict[str, Callable[[str], str]]] = None) -> str:
    """The slice of Go's text/template that adapters use: ``{{.A.B}}``, ``{{json .A}}``,
    ``{{.Label "k"}}``, ``{{index .Labels "k"}}`` and ``{{println}}``; anything else fails loudly."""

    def lookup(path: str) -> Any:
        cur = data
        for part in [p for p in path.split(".") if p]:
            if isinstance(cur, dict) and part in cur:
                cur = cur[part]
            else:
                raise Fail(f"template: {template!r}: can't evaluate field {part}")
        return cur

    def fmt(v: Any) -> str:
        if v is None:
            return "<no value>"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, dict):
            return "map[" + " ".join(f"{k}:{fmt(x)}" for k, x in sorted(v.items())) + "]"
        return str(v)

    def expr(e: str) -> str:
        if e == "println":
            return "\n"
        m = re.fullmatch(r"json\s+(\.[\w.]*)", e)
        if m:
            return json.dumps(lookup(m.group(1)), separators=(",", ":"))
        m = re.fullmatch(r'index\s+(\.[\w.]*)\s+"([^"]*)"', e)
        if m:
            v = lookup(m.group(1))
            return fmt(v.get(m.group(2)) if isinstance(v, dict) else None)
        m = re.fullmatch(r'\.(\w+)\s+"([^"]*)"', e)
        if m and methods and m.group(1) in methods:
            return methods[m.group(1)](m.group(2))
        if re.fullmatch(r"\.[\w.]*", e):
            return fmt(lookup(e))
        raise Fail(f"template: {template!r}: {{{{{e}}}}} is not supported by the fake node "
                   "(supported: .Field.Path, json .X, index .X \"k\", .Label \"k\", println)")

    text = _TEMPLATE.sub(lambda m: expr(m.group(1)), template)
    return text.replace("\\n", "\n").replace("\\t", "\t")


# --------------------------------------------------------------------------------------------- shared container ops


def _truncate(length: Optional[int]) -> Callable[[str], str]:
    """Ids as the tools print them: truncated unless --no-trunc."""
    return (lambda s: s) if length is None else (lambda s: s[:length])


def _running(rec: S.Record) -> bool:
    return rec.get("state") == "running" and S.alive(rec.get("pid"), rec.get("pid_starttime"))


def _state_of(rec: S.Record) -> str:
    return "running" if _running(rec) else "exited"


def _find(state: Path, given: str) -> S.Record:
    rec = S.resolve(S.containers(state), given)
    if rec is None:
        raise LookupError(given)
    return rec


def _stop(state: Path, rec: S.Record, timeout: float, sig: int = signal.SIGTERM) -> None:
    """Signal the container's process group and wait until it has exited (SIGKILL after ``timeout``)."""
    pid, st = rec.get("pid"), rec.get("pid_starttime")
    if not _running(rec):
        return
    S.signal_group(pid, sig, st)
    deadline = time.monotonic() + timeout
    killed = sig == signal.SIGKILL
    while S.alive(pid, st):
        if not killed and time.monotonic() > deadline:
            S.signal_group(pid, signal.SIGKILL, st)
            killed = True
        if time.monotonic() > deadline + STOP_WAIT_SLACK:
            raise Fail(f"container {rec['id']} (pid {pid}) did not stop")
        time.sleep(0.05)
    # the fake kubelet reaps its child and records the exit within a tick; wait for that too so a
    # `ps` right after `stop` never lists the stopped container as running
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        cur = S.resolve(S.containers(state), rec["id"])
        if cur is None or cur.get("state") != "running" or cur.get("pid") != pid:
            return
        time.sleep(0.05)


def _restart_in_place(state: Path, rec: S.Record, timeout: float) -> None:
    """What ``docker restart`` does: stop, start the same container again (new process, same id)."""
    if not (state / "requests").is_dir() or not _supervisor_alive(state):
        raise Fail(f"Error response from daemon: Cannot restart container {rec['id']}: "
                   "the fake kubelet (which runs the containers) is not running")
    old_pid = rec.get("pid")
    S.write_atomic(state / "requests" / f"restart-{rec['id']}", b"")
    if _running(rec):
        S.signal_group(old_pid, signal.SIGTERM, rec.get("pid_starttime"))
        deadline = time.monotonic() + timeout
        while S.alive(old_pid, rec.get("pid_starttime")):
            if time.monotonic() > deadline:
                S.signal_group(old_pid, signal.SIGKILL, rec.get("pid_starttime"))
                break
            time.sleep(0.05)
    end = time.monotonic() + timeout + 15.0
    while time.monotonic() < end:
        cur = S.resolve(S.containers(state), rec["id"])
        if cur is not None and cur.get("state") == "running" and cur.get("pid") != old_pid:
            return
        time.sleep(0.05)
    raise Fail(f"Error response from daemon: Cannot restart container {rec['id']}: not running again after "
               f"{timeout + 15:.0f}s")


def _supervisor_alive(state: Path) -> bool:
    pid = S.read_db(state).get("supervisor_pid")
    return isinstance(pid, int) and S.alive(pid)


def _remove(state: Path, rec: S.Record) -> None:
    with S.locked(state):
        db = S.read_db(state)
        db["containers"] = [r for r in db.get("containers", []) if r.get("id") != rec["id"]]
        S.write_db(state, db)


def _logs(rec: S.Record, tail: Optional[str]) -> None:
    try:
        lines = Path(rec.get("log_path", "")).read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    if tail is not None and tail not in ("all", "-1"):
        count = int(tail)
        lines = lines[-count:] if count > 0 else []
    for line in lines:
        out(line)


# --------------------------------------------------------------------------------------------- crictl


def _crictl_fatal(msg: str) -> Fail:
    stamp = S.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
    return Fail(f'time="{stamp}" level=fatal msg={json.dumps(msg)}')


def _not_found(cid: str) -> str:
    return f"rpc error: code = NotFound desc = an error occurred when try to find container {cid!r}: not found"


def _cri_container(rec: S.Record) -> Dict[str, Any]:
    created_ns = int(S.parse_time(rec["created"]).timestamp() * 1e9)
    return {
        "id": rec["id"], "podSandboxId": rec["pod_id"],
        "metadata": {"name": rec["name"], "attempt": rec["attempt"]},
        "image": {"image": rec["image_id"], "annotations": {}, "userSpecifiedImage": rec["image"]},
        "imageRef": rec["image_id"],
        "state": CRICTL_STATES[_state_of(rec)],
        "createdAt": str(created_ns),
        "labels": {"io.kubernetes.container.name": rec["name"], "io.kubernetes.pod.name": rec["pod_name"],
                   "io.kubernetes.pod.namespace": rec["pod_namespace"], "io.kubernetes.pod.uid": rec["pod_uid"]},
        "annotations": {"io.kubernetes.container.restartCount": str(rec["attempt"])},
    }


def _cri_status(rec: S.Record) -> Dict[str, Any]:
    c = _cri_container(rec)
    st = _state_of(rec)
    zero = "1970-01-01T00:00:00Z"
    return {
        "status": {
            "id": rec["id"], "metadata": c["metadata"], "state": c["state"],
            "createdAt": rec["created"], "startedAt": rec.get("started") or zero,
            "finishedAt": (rec.get("finished") or S.rfc3339(S.utcnow())) if st == "exited" else zero,
            "exitCode": (rec.get("exit_code") if rec.get("exit_code") is not None else (255 if st == "exited" else 0)),
            "image": c["image"], "imageRef": c["imageRef"], "reason": "Completed" if st == "exited" else "",
            "message": "", "labels": c["labels"], "annotations": c["annotations"], "mounts": [],
            "logPath": rec.get("log_path", ""),
        },
        "info": {"sandboxID": rec["pod_id"], "pid": rec.get("pid", 0) if st == "running" else 0,
                 "runtimeType": "io.containerd.runc.v2",
                 "config": {"metadata": c["metadata"], "image": {"image": rec["image"]},
                            "command": rec.get("spec_command") or rec.get("command", []), "labels": c["labels"]}},
    }


def _crictl_ps(state: Path, argv: List[str]) -> None:
    a = Args(argv, opts("-a,--all", "-q,--quiet", "--no-trunc", "-l,--latest", "-v,--verbose",
                        "-r,--resolve-image-path"),
             opts("--name", "--state,-s", "--id", "-p,--pod", "--label", "--image", "--namespace", "-n,--last",
                  "-o,--output"), multi=("label",))
    if a.pos:
        raise Fail(f"crictl ps takes no arguments (got {' '.join(a.pos)})")
    recs = S.containers(state)
    st = str(a.get("state", "")).lower()
    if st and st not in ("created", "running", "exited", "unknown"):
        raise _crictl_fatal("listing containers: --state should be one of created, running, exited or unknown")
    last = int(a.get("last", 0) or 0)
    if a.get("latest") or last:
        pass  # every state
    elif st:
        recs = [r for r in recs if _state_of(r) == st]
    elif not a.get("all"):
        recs = [r for r in recs if _state_of(r) == "running"]
    if a.get("id"):
        recs = [r for r in recs if r["id"].startswith(a.get("id"))]
    if a.get("pod"):
        recs = [r for r in recs if r["pod_id"].startswith(a.get("pod"))]
    if a.get("name"):
        rx = re.compile(a.get("name"))
        recs = [r for r in recs if rx.search(r["name"])]
    if a.get("namespace"):
        rx = re.compile(a.get("namespace"))
        recs = [r for r in recs if rx.search(r["pod_namespace"])]
    if a.get("image"):
        recs = [r for r in recs if a.get("image") in (r["image"], r["image_id"])]
    for lbl in a.get("label", []):
        k, _, v = lbl.partition("=")
        recs = [r for r in recs if _cri_container(r)["labels"].get(k) == v]
    if a.get("latest"):
        recs = recs[:1]
    elif last:
        recs = recs[:last]
    output = a.get("output", "table")
    if output == "json":
        out(json.dumps({"containers": [_cri_container(r) for r in recs]}, indent=2))
        return
    if output != "table":
        raise _crictl_fatal(f"listing containers: unsupported output format {output!r} (fake node: table, json)")
    if a.get("quiet"):
        for r in recs:
            out(r["id"])
        return
    trunc = _truncate(None if a.get("no-trunc") else TRUNC_CRICTL)
    rows = [["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID", "POD"]]
    for r in recs:
        image = r["image"] if a.get("resolve-image-path") else trunc(r["image_id"].split(":", 1)[1])
        rows.append([trunc(r["id"]), image, S.human_ago(r["created"]) + " ago",
                     _state_of(r).capitalize(), r["name"], str(r["attempt"]), trunc(r["pod_id"]), r["pod_name"]])
    table(rows)


def _crictl_pods(state: Path, argv: List[str]) -> None:
    a = Args(argv, opts("-q,--quiet", "--no-trunc", "-l,--latest", "-v,--verbose"),
             opts("--name", "--namespace", "-s,--state", "--id", "--label", "-o,--output", "-n,--last"),
             multi=("label",))
    pods = S.pods(state)
    if a.get("name"):
        rx = re.compile(a.get("name"))
        pods = [p for p in pods if rx.search(p["name"])]
    if a.get("namespace"):
        rx = re.compile(a.get("namespace"))
        pods = [p for p in pods if rx.search(p["namespace"])]
    if a.get("state"):
        pods = [p for p in pods if p["state"].lower() == str(a.get("state")).lower()]
    if a.get("id"):
        pods = [p for p in pods if p["sandbox_id"].startswith(a.get("id"))]
    if a.get("output") == "json":
        out(json.dumps({"items": [{"id": p["sandbox_id"], "metadata": {"name": p["name"], "uid": p["uid"],
                                                                        "namespace": p["namespace"], "attempt": 0},
                                   "state": "SANDBOX_READY" if p["state"] == "Ready" else "SANDBOX_NOTREADY",
                                   "labels": {"component": p["key"], "tier": "control-plane"}}
                                  for p in pods]}, indent=2))
        return
    if a.get("quiet"):
        for p in pods:
            out(p["sandbox_id"])
        return
    trunc = _truncate(None if a.get("no-trunc") else TRUNC_CRICTL)
    rows = [["POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"]]
    for p in pods:
        rows.append([trunc(p["sandbox_id"]), S.human_ago(p["created"]) + " ago", p["state"], p["name"],
                     p["namespace"], "0", "(default)"])
    table(rows)


def _crictl_inspect(state: Path, argv: List[str]) -> None:
    a = Args(argv, opts("-q,--quiet"), opts("-o,--output", "--template"))
    if not a.pos:
        raise _crictl_fatal("ID cannot be empty (the fake node's inspect needs container ids)")
    output = a.get("output", "json") or "json"
    docs = []
    for given in a.pos:
        try:
            docs.append(_cri_status(_find(state, given)))
        except LookupError:
            raise _crictl_fatal(f"getting the status of the container {given!r}: {_not_found(given)}") from None
    for d in docs:
        if output == "json":
            out(json.dumps(d, indent=2))
        elif output == "go-template":
            sys.stdout.write(render(a.get("template", ""), d))
        else:
            raise _crictl_fatal(f"unsupported output format {output!r} (fake node: json, go-template)")


def _crictl_stop(state: Path, argv: List[str]) -> None:
    a = Args(argv, opts("-a,--all"), opts("-t,--timeout"))
    timeout = float(a.get("timeout", 0) or 0) or 10.0
    if a.get("all"):
        if a.pos:
            raise Fail("cannot specify CONTAINER-ID(s) when using --all")
        ids = [r["id"] for r in S.containers(state) if _running(r)]
        if not ids:
            out("No running containers found.")
            return
    else:
        if not a.pos:
            raise Fail("you must specify at least one CONTAINER-ID or use --all")
        ids = a.pos
    for given in ids:
        try:
            rec = _find(state, given)
        except LookupError:
            raise _crictl_fatal(f"stopping the container {given!r}: {_not_found(given)}") from None
        _stop(state, rec, timeout)
        out(given)


def _crictl_rm(state: Path, argv: List[str]) -> None:
    a = Args(argv, opts("-f,--force", "-a,--all", "-k,--keep-logs"), {})
    ids = [r["id"] for r in S.containers(state)] if a.get("all") else a.pos
    if not ids:
        raise _crictl_fatal("ID cannot be empty")
    for given in ids:
        try:
            rec = _find(state, given)
        except LookupError:
            raise _crictl_fatal(f"getting container status {given!r}: {_not_found(given)}") from None
        if _running(rec):
            if not a.get("force"):
                raise _crictl_fatal(f"container {rec['id']!r} is running, please stop it first")
            _stop(state, rec, 0.001)
        _remove(state, rec)
        out(given)


def _crictl_logs(state: Path, argv: List[str]) -> None:
    a = Args(argv, opts("-f,--follow", "-p,--previous", "--timestamps,-t", "-r,--reverse"),
             opts("--tail", "--since", "--limit-bytes"))
    if len(a.pos) != 1:
        raise _crictl_fatal("ID cannot be empty (fake node: crictl logs [--tail N] ID)")
    if a.get("follow"):
        raise Fail("crictl logs -f is not supported by the fake node")
    try:
        _logs(_find(state, a.pos[0]), a.get("tail"))
    except LookupError:
        raise _crictl_fatal(f"failed to get container status {a.pos[0]!r}: {_not_found(a.pos[0])}") from None


def crictl(state: Path, argv: List[str]) -> None:
    # global options come before the command; they name the runtime endpoint, which is this node
    i = 0
    global_valued = {"-r", "--runtime-endpoint", "-i", "--image-endpoint", "-t", "--timeout", "-c", "--config"}
    while i < len(argv) and argv[i].startswith("-"):
        name = argv[i].split("=", 1)[0]
        if name in global_valued and "=" not in argv[i]:
            i += 1
        elif name not in global_valued | {"-D", "--debug"}:
            raise _crictl_fatal(f"flag provided but not defined: {argv[i]}")
        i += 1
    cmd, rest = (argv[i], argv[i + 1:]) if i < len(argv) else ("", [])
    commands: Dict[str, Callable[[Path, List[str]], None]] = {
        "ps": _crictl_ps, "pods": _crictl_pods, "inspect": _crictl_inspect, "stop": _crictl_stop,
        "rm": _crictl_rm, "logs": _crictl_logs, "version": lambda _s, _a: _crictl_version()}
    if cmd not in commands:
        raise Fail(f"crictl: {cmd or '(no command)'!r} is not implemented by the kubecert fake node "
                   f"(implemented: {', '.join(commands)})")
    commands[cmd](state, rest)


def _crictl_version() -> None:
    out("Version:  0.1.0")
    out("RuntimeName:  containerd")
    out("RuntimeVersion:  v1.7.2")
    out("RuntimeApiVersion:  v1")


# --------------------------------------------------------------------------------------------- docker


def _docker_name(rec: S.Record) -> str:
    return f"k8s_{rec['name']}_{rec['pod_name']}_{rec['pod_namespace']}_{rec['pod_uid']}_{rec['attempt']}"


def _quoted_command(argv: List[str]) -> str:
    text = " ".join(map(str, argv))
    return '"' + (text[:19] + "…" if len(text) > 20 else text) + '"'


def _docker_rows(state: Path) -> List[Dict[str, Any]]:
    """docker's view: every container plus one running pause container per pod (its sandbox id)."""
    rows = []
    for r in S.containers(state):
        st = _state_of(r)
        if st == "running":
            status = f"Up {S.human_ago(r.get('started'))}"
        else:
            code = r.get("exit_code")
            status = f"Exited ({255 if code is None else code}) {S.human_ago(r.get('finished'))} ago"
        rows.append({"rec": r, "ID": r["id"], "Names": _docker_name(r), "Image": r["image_id"].split(":", 1)[1],
                     "Command": _quoted_command(r.get("spec_command") or r.get("command", [])),
                     "CreatedAt": r["created"], "RunningFor": S.human_ago(r["created"]) + " ago",
                     "Status": status, "State": st, "Ports": "", "Mounts": "",
                     "Labels": _cri_container(r)["labels"]})
    for p in S.pods(state):
        rows.append({"rec": None, "ID": p["sandbox_id"], "Names": f"k8s_POD_{p['name']}_{p['namespace']}_{p['uid']}_0",
                     "Image": PAUSE_IMAGE_ID, "Command": '"/pause"', "CreatedAt": p["created"],
                     "RunningFor": S.human_ago(p["created"]) + " ago", "Status": f"Up {S.human_ago(p['created'])}",
                     "State": "running", "Ports": "", "Mounts": "",
                     "Labels": {"io.kubernetes.pod.name": p["name"], "io.kubernetes.pod.namespace": p["namespace"],
                                "io.kubernetes.pod.uid": p["uid"], "io.kubernetes.docker.type": "podsandbox"}})
    rows.sort(key=lambda row: str(row["CreatedAt"]), reverse=True)
    return rows


def _label_lookup(labels: Dict[str, str]) -> Callable[[str], str]:
    return lambda key: str(labels.get(key, ""))


def _docker_find(state: Path, given: str) -> Dict[str, Any]:
    rows = _docker_rows(state)
    for row in rows:
        if row["Names"] == given or row["Names"] == "/" + given:
            return row
    matches = [row for row in rows if row["ID"].startswith(given)] if given else []
    exact = [row for row in matches if row["ID"] == given]
    if exact:
        return exact[0]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise Fail(f"Error response from daemon: multiple IDs found with provided prefix: {given}")
    raise Fail(f"Error response from daemon: No such container: {given}")


def _docker_container(row: Dict[str, Any], given: str) -> S.Record:
    if row["rec"] is None:
        raise Fail(f"Error response from daemon: {given} is a pod sandbox (pause) container: the kubecert fake "
                   "node lists sandboxes but does not act on them")
    rec: S.Record = row["rec"]
    return rec


def _docker_ps(state: Path, argv: List[str]) -> None:
    a = Args(argv, opts("-a,--all", "-q,--quiet", "--no-trunc", "-l,--latest", "-s,--size"),
             opts("-f,--filter", "--format", "-n,--last"), multi=("filter",))
    rows = _docker_rows(state)
    status_filters = []
    for f in a.get("filter", []):
        key, eq, value = f.partition("=")
        if not eq:
            raise Fail(f'Error response from daemon: bad format of filter (expected name=value): "{f}"')
        if key == "name":
            rx = re.compile(value)
            rows = [r for r in rows if rx.search(r["Names"])]
        elif key == "id":
            rows = [r for r in rows if r["ID"].startswith(value)]
        elif key == "status":
            status_filters.append(value)
        elif key == "label":
            k, has_v, v = value.partition("=")
            rows = [r for r in rows if k in r["Labels"] and (not has_v or r["Labels"][k] == v)]
        else:
            raise Fail(f"Error response from daemon: filter {key!r} is not supported by the fake node "
                       "(name, id, status, label)")
    if status_filters:
        rows = [r for r in rows if r["State"] in status_filters]
    elif not a.get("all") and not a.get("latest") and not a.get("last"):
        rows = [r for r in rows if r["State"] == "running"]
    if a.get("latest"):
        rows = rows[:1]
    elif a.get("last"):
        rows = rows[: int(a.get("last"))]
    trunc = _truncate(None if a.get("no-trunc") else TRUNC_DOCKER)
    if a.get("quiet"):
        for r in rows:
            out(trunc(r["ID"]))
        return
    fmt = a.get("format")
    if fmt:
        header = fmt.startswith("table")
        fmt = fmt[len("table"):].lstrip() if header else fmt
        if header:
            out(_TEMPLATE.sub(lambda m: DOCKER_HEADERS.get(m.group(1).lstrip("."), m.group(1).upper()),
                              fmt).replace("\\t", "\t"))
        for r in rows:
            view = dict(r, ID=trunc(r["ID"]))
            out(render(fmt, view, {"Label": _label_lookup(r["Labels"])}))
        return
    table([["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]] +
          [[trunc(r["ID"]), trunc(r["Image"]), r["Command"], r["RunningFor"], r["Status"], r["Ports"], r["Names"]]
           for r in rows])


def _docker_inspect_doc(row: Dict[str, Any]) -> Dict[str, Any]:
    rec = row["rec"]
    running = row["State"] == "running"
    zero = "0001-01-01T00:00:00Z"
    return {
        "Id": row["ID"], "Created": row["CreatedAt"], "Name": "/" + row["Names"],
        "RestartCount": int(rec.get("restart_count", 0)) if rec else 0,
        "State": {"Status": row["State"], "Running": running, "Paused": False, "Restarting": False,
                  "Pid": (rec.get("pid", 0) if running else 0) if rec else 0,
                  "ExitCode": (rec.get("exit_code") or 0) if rec and not running else 0,
                  "StartedAt": (rec.get("started") if rec else row["CreatedAt"]) or zero,
                  "FinishedAt": (rec.get("finished") if rec and not running else None) or zero},
        "Image": "sha256:" + row["Image"],
        "Config": {"Labels": row["Labels"], "Image": rec["image"] if rec else PAUSE_IMAGE,
                   "Cmd": (rec.get("spec_command") or rec.get("command", [])) if rec else ["/pause"]},
        "LogPath": rec.get("log_path", "") if rec else "",
    }


def docker(state: Path, argv: List[str]) -> None:
    if not argv:
        raise Fail("Usage:  docker [OPTIONS] COMMAND (the fake node implements: ps, restart, stop, kill, rm, "
                   "inspect, logs, version)")
    cmd, rest = argv[0], argv[1:]
    if cmd == "container" and rest and rest[0] in ("ls", "ps", "restart", "stop", "kill", "rm", "inspect", "logs"):
        cmd, rest = ("ps" if rest[0] == "ls" else rest[0]), rest[1:]
    if cmd == "ps":
        _docker_ps(state, rest)
    elif cmd in ("restart", "stop", "kill", "rm"):
        a = Args(rest, opts("-f,--force", "-v,--volumes"), opts("-t,--timeout,--time", "-s,--signal"))
        if not a.pos:
            raise Fail(f'"docker {cmd}" requires at least 1 argument.')
        timeout = float(a.get("timeout", 10) or 10)
        for given in a.pos:
            rec = _docker_container(_docker_find(state, given), given)
            if cmd == "restart":
                _restart_in_place(state, rec, timeout)
            elif cmd == "stop":
                _stop(state, rec, timeout)
            elif cmd == "kill":
                if not _running(rec):
                    raise Fail(f"Error response from daemon: Cannot kill container: {given}: "
                               f"container {rec['id']} is not running")
                signame = str(a.get("signal", "KILL")).upper()
                sig = getattr(signal, signame if signame.startswith("SIG") else "SIG" + signame, None)
                if sig is None:
                    raise Fail(f"invalid signal: {signame}")
                _stop(state, rec, 0.0 if sig == signal.SIGKILL else timeout, sig)
            else:
                if _running(rec):
                    if not a.get("force"):
                        raise Fail(f"Error response from daemon: You cannot remove a running container {rec['id']}. "
                                   "Stop the container before attempting removal or force remove")
                    _stop(state, rec, 0.001)
                _remove(state, rec)
            out(given)
    elif cmd == "inspect":
        a = Args(rest, opts("-s,--size"), opts("-f,--format", "--type"))
        docs = [_docker_inspect_doc(_docker_find(state, given)) for given in a.pos]
        if not a.pos:
            raise Fail('"docker inspect" requires at least 1 argument.')
        if a.get("format"):
            for d in docs:
                out(render(a.get("format"), d))
        else:
            out(json.dumps(docs, indent=4))
    elif cmd == "logs":
        a = Args(rest, opts("-f,--follow", "-t,--timestamps"), opts("-n,--tail", "--since", "--until"))
        if len(a.pos) != 1:
            raise Fail('"docker logs" requires exactly 1 argument.')
        _logs(_docker_container(_docker_find(state, a.pos[0]), a.pos[0]), a.get("tail"))
    elif cmd == "version":
        a = Args(rest, {}, opts("-f,--format"))
        doc = {"Client": {"Version": "24.0.7", "ApiVersion": "1.43", "Os": "linux", "Arch": "amd64"},
               "Server": {"Version": "24.0.7", "ApiVersion": "1.43", "MinAPIVersion": "1.12", "Os": "linux",
                          "Arch": "amd64"}}
        if a.get("format"):
            out(render(a.get("format"), doc))
        else:
            out("Client: Docker Engine - Community\n Version:           24.0.7\n API version:       1.43\n"
                "\nServer: Docker Engine - Community\n Engine:\n  Version:          24.0.7\n"
                "  API version:      1.43 (minimum version 1.12)")
    else:
        raise Fail(f"docker: '{cmd}' is not a docker command implemented by the kubecert fake node "
                   "(ps, restart, stop, kill, rm, inspect, logs, version).")


# --------------------------------------------------------------------------------------------- systemctl, service


def _unit_or_fail(state: Path, name: str, verb: str) -> str:
    unit = U.unit_name(name)
    if not U.exists(state, unit):
        raise Fail(f"Failed to {verb} {unit}.service: Unit {unit}.service not found.", 5)
    return unit


def systemctl(state: Path, argv: List[str]) -> int:
    a = Args(argv, opts("--no-pager", "-q,--quiet", "--no-block", "-l,--full", "--value", "--system", "--now",
                        "--all,-a", "--no-legend"),
             opts("-p,--property", "-n,--lines", "-o,--output"), multi=("property",))
    if not a.pos:
        raise Fail("systemctl: a command is needed (fake node: start, stop, restart, is-active, status, show, "
                   "daemon-reload, ...)")
    cmd, names = a.pos[0], a.pos[1:]
    quiet = bool(a.get("quiet"))
    if cmd == "daemon-reload":
        return 0
    if not names:
        raise Fail(f"Too few arguments: systemctl {cmd} needs a unit.")
    if cmd in ("start", "stop", "restart", "try-restart", "reload-or-restart", "reload", "force-reload"):
        for n in names:
            unit = _unit_or_fail(state, n, cmd.replace("-", " "))
            if cmd == "start":
                U.start(state, unit)
            elif cmd == "stop":
                U.stop(state, unit)
            elif cmd == "try-restart":
                if U.active_state(state, unit) == "active":
                    U.restart(state, unit)
            else:
                U.restart(state, unit)
        return 0
    if cmd in ("is-active", "is-failed"):
        states = [U.active_state(state, U.unit_name(n)) for n in names]
        if not quiet:
            for s in states:
                out(s)
        want = "active" if cmd == "is-active" else "failed"
        return 0 if any(s == want for s in states) else (3 if cmd == "is-active" else 1)
    if cmd == "is-enabled":
        found = [U.exists(state, n) for n in names]
        if not quiet:
            for f in found:
                out("enabled" if f else "not-found")
        return 0 if all(found) else 1
    if cmd == "status":
        code = 0
        for n in names:
            unit = U.unit_name(n)
            if not U.exists(state, unit):
                sys.stderr.write(f"Unit {unit}.service could not be found.\n")
                code = max(code, 4)
                continue
            sys.stdout.write(U.status_text(state, unit))
            if U.active_state(state, unit) != "active":
                code = max(code, 3)
        return code
    if cmd == "show":
        props = [p for group in a.get("property", []) for p in group.split(",")]
        for n in names:
            unit = U.unit_name(n)
            mp = U.main_process(state, unit) if U.exists(state, unit) else None
            st = U.active_state(state, unit) if U.exists(state, unit) else "inactive"
            running = mp is not None and st == "active"
            values = {"Id": f"{unit}.service", "LoadState": "loaded" if U.exists(state, unit) else "not-found",
                      "ActiveState": st, "SubState": {"active": "running", "failed": "failed"}.get(st, "dead"),
                      "MainPID": str(mp.pid if running and mp else 0),
                      "ExecMainPID": str(mp.pid if running and mp else 0),
                      "ActiveEnterTimestamp": mp.started if running and mp else ""}
            for p in props or list(values):
                if p not in values:
                    raise Fail(f"systemctl show: property {p!r} is not provided by the fake node "
                               f"({', '.join(values)})")
                out(values[p] if a.get("value") else f"{p}={values[p]}")
        return 0
    raise Fail(f"systemctl: {cmd!r} is not implemented by the kubecert fake node")


def service(state: Path, argv: List[str]) -> int:
    if len(argv) != 2:
        raise Fail("Usage: service < option > | --status-all | [ service_name [ command | --full-restart ] ]\n"
                   "(fake node: service NAME start|stop|restart|force-reload|status)")
    name, action = argv
    if action == "status":
        return systemctl(state, ["status", name])
    if action in ("start", "stop", "restart", "force-reload", "reload"):
        return systemctl(state, [action, name])
    raise Fail(f"service: action {action!r} is not implemented by the kubecert fake node", 1)


# --------------------------------------------------------------------------------------------- entry point


TOOLS: Dict[str, Callable[[Path, List[str]], Optional[int]]] = {
    "crictl": crictl, "docker": docker, "systemctl": systemctl, "service": service}


def main(tool: str, argv: List[str]) -> int:
    """Run stand-in ``tool``: log the call, act, map failures to stderr + exit code."""
    try:
        state = S.state_dir_from_env()
    except S.FakeNodeError as exc:
        sys.stderr.write(f"{tool}: {exc}\n")
        return 1
    S.append_call(state, tool, argv)
    try:
        code = TOOLS[tool](state, argv)
    except Fail as exc:
        sys.stderr.write(f"{exc}\n")
        return exc.code
    except U.UnitNotFound as exc:
        sys.stderr.write(f"{exc}\n")
        return 5
    except S.FakeNodeError as exc:
        sys.stderr.write(f"{tool}: {exc}\n")
        return 1
    except re.error as exc:
        sys.stderr.write(f"{tool}: invalid regular expression: {exc}\n")
        return 1
    sys.stdout.flush()
    return int(code or 0)


def run_as(path: str) -> None:
    """Entry point of the bin/ scripts: the tool is the script's own name."""
    sys.exit(main(os.path.basename(path), sys.argv[1:]))
