"""The fake node's state directory, shared by the supervisor, the stand-in CLIs and the fixture.

Layout of STATE_DIR (``$KUBECERT_FAKE_STATE``)::

    containers.json        pods and containers (written atomically, under containers.lock)
    calls.log              one JSON line per stand-in invocation: {"time", "argv"}
    logs/                  each container's stdout+stderr
    requests/restart-<id>  "restart this container in place" (docker restart), for the supervisor
    fail-start/<name>      knob: that component's next start exits at once
    die-after/<name>       knob (N seconds): its next start is killed N seconds later (one shot)
    stale/<name>           knob: that component restarts with the certificate it first started with
    snapshots/<name>/      those first certificates
    units/<unit>.json      systemd-like units; <unit>.pid, <unit>.log beside them
    etcd-data/             the static etcd's data dir

Standard library only. Processes are identified by (pid, start time), never by pid alone, so a
recycled pid is never signalled; a zombie counts as dead.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

STATE_ENV = "KUBECERT_FAKE_STATE"
# set on every long-running process the fake node starts: teardown finds strays by it
OWNER_ENV = "KUBECERT_FAKENODE_OWNER"
NODE_ROOT_ENV = "KUBECERT_FAKE_NODE_ROOT"

PathLike = Union[str, "os.PathLike[str]"]
Record = Dict[str, Any]


class FakeNodeError(Exception):
    """Misuse of the fake node (bad state directory, unknown container); the message says which."""


def state_dir_from_env() -> Path:
    value = os.environ.get(STATE_ENV)
    if not value:
        raise FakeNodeError(f"{STATE_ENV} is not set: this is the kubecert test suite's fake-node stand-in, "
                            "run it through tests/fakenode/fixture.py (node.env)")
    path = Path(value)
    if not path.is_dir():
        raise FakeNodeError(f"{STATE_ENV}={value} is not a directory")
    return path


# --------------------------------------------------------------------------------------------- time


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)


def human_ago(text: Optional[str]) -> str:
    """Docker's/crictl's "About a minute ago" style, roughly."""
    if not text:
        return "Unknown"
    secs = max(0.0, (utcnow() - parse_time(text)).total_seconds())
    if secs < 1:
        return "Less than a second"
    if secs < 2:
        return "1 second"
    if secs < 60:
        return f"{int(secs)} seconds"
    if secs < 120:
        return "About a minute"
    if secs < 3600:
        return f"{int(secs // 60)} minutes"
    if secs < 7200:
        return "About an hour"
    return f"{int(secs // 3600)} hours"


# --------------------------------------------------------------------------------------------- files


def write_atomic(path: PathLike, data: bytes, mode: int = 0o644) -> None:
    """Temp file beside ``path``, fsync, rename: readers see the old or the new file, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(state: Path) -> Iterator[None]:
    """The lock every writer of containers.json holds for its read-modify-write."""
    fd = os.open(state / "containers.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def read_db(state: Path) -> Dict[str, Any]:
    """containers.json: {"node": ..., "pods": [...], "containers": [...]} (empty when absent)."""
    try:
        doc = json.loads((state / "containers.json").read_text())
    except FileNotFoundError:
        return {"node": "", "pods": [], "containers": []}
    return dict(doc)


def write_db(state: Path, doc: Dict[str, Any]) -> None:
    write_atomic(state / "containers.json", (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())


def containers(state: Path) -> List[Record]:
    """Every container record, newest first (as crictl and docker list them)."""
    recs = list(read_db(state).get("containers", []))
    return sorted(recs, key=lambda r: str(r.get("created", "")), reverse=True)


def pods(state: Path) -> List[Record]:
    return list(read_db(state).get("pods", []))


def resolve(records: List[Record], given: str, *, key: str = "id") -> Optional[Record]:
    """The record whose ``key`` equals ``given`` or, failing that, is the only one it prefixes
    (containerd and docker both accept truncated ids). Raises on an ambiguous prefix."""
    exact = [r for r in records if r.get(key) == given]
    if exact:
        return exact[0]
    if not given:
        return None
    matches = [r for r in records if str(r.get(key, "")).startswith(given)]
    if len(matches) > 1:
        raise FakeNodeError(f"ambiguous id prefix {given!r}: matches {len(matches)} containers")
    return matches[0] if matches else None


def append_call(state: Path, tool: str, args: List[str]) -> None:
    line = json.dumps({"time": rfc3339(utcnow()), "argv": [tool, *args]}) + "\n"
    fd = os.open(state / "calls.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())  # one write with O_APPEND: lines of concurrent callers never interleave
    finally:
        os.close(fd)


def read_calls(state: Path) -> List[List[str]]:
    try:
        text = (state / "calls.log").read_text()
    except FileNotFoundError:
        return []
    return [list(json.loads(line)["argv"]) for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------- processes


def proc_stat(pid: int) -> Optional[Tuple[str, int]]:
    """(state letter, start time in clock ticks since boot) of a process, None if there is none."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            data = fh.read()
    except (OSError, ValueError):
        return None
    fields = data[data.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[19])


def start_time(pid: int) -> int:
    st = proc_stat(pid)
    return st[1] if st else 0


def alive(pid: Optional[int], starttime: Optional[int] = None) -> bool:
    """``pid`` runs (not a zombie) and, if ``starttime`` is given, is still the process we started."""
    if not pid or pid <= 0:
        return False
    st = proc_stat(pid)
    if st is None or (st[0] in ("Z", "X") and not _threads_running(pid)):
        return False
    return not starttime or st[1] == starttime


def _threads_running(pid: int) -> bool:
    """Whether a thread of ``pid`` still runs. A multi-threaded process (the Go binaries) that was
    killed shows its leader as a zombie while its other threads are still exiting and still hold
    its sockets; it is gone only when every thread is."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0].decode()
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            return True
    return False


def signal_group(pid: Optional[int], sig: int, starttime: Optional[int] = None) -> bool:
    """Signal the process group led by ``pid`` (every process we start leads its own session), or
    just ``pid`` if it no longer leads one. False when it is not (any more) the process we mean."""
    if not pid or not alive(pid, starttime):
        return False
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def wait_dead(pid: int, starttime: Optional[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid, starttime):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def terminate(pid: Optional[int], starttime: Optional[int], grace: float, sig: int = signal.SIGTERM) -> None:
    """``sig`` to the group, SIGKILL after ``grace`` seconds if it still runs; returns once dead
    (bounded: a process that survives SIGKILL for 5 s is left to the caller)."""
    if not pid or not signal_group(pid, sig, starttime):
        return
    if not wait_dead(pid, starttime, grace):
        signal_group(pid, signal.SIGKILL, starttime)
        wait_dead(pid, starttime, 5.0)


def owned_processes(owner: str) -> List[int]:
    """Pids of live processes whose environment carries ``OWNER_ENV=owner`` (root reads any environ)."""
    marker = f"{OWNER_ENV}={owner}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:
            continue
        if marker in env and alive(int(entry)):
            found.append(int(entry))
    return found


def clean_env(**extra: str) -> Dict[str, str]:
    """The environment minus what would redirect our tools (proxies, KUBECONFIG, ETCD*), plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().endswith("_PROXY") and not k.startswith(("ETCD", "KUBECONFIG"))}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env
