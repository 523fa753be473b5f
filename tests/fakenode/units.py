"""systemd-like units for the ``systemctl`` and ``service`` stand-ins (standard library only).

A unit is ``STATE_DIR/units/<name>.json``::

    {"command": ["/usr/bin/etcd", "--name=..."],   # required: argv, absolute program path
     "env": {"KEY": "value"},                       # optional: added to a minimal systemd-like env
     "kill_signal": "SIGTERM",                      # optional: systemd's KillSignal=
     "stop_timeout": 10,                            # optional: seconds before SIGKILL (TimeoutStopSec=)
     "description": "..."}                          # optional

``<name>.service`` and ``<name>`` name the same unit. Its main process runs detached in its own
session, output appended to ``<name>.log``; ``<name>.pid`` holds "PID STARTTIME STARTED-AT", so a
recycled pid is never mistaken for the unit. Like systemd, the unit does not inherit the caller's
environment. A unit whose main process died without being stopped is "failed".
"""

from __future__ import annotations

import json
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import state as S

SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class UnitNotFound(S.FakeNodeError):
    pass


def unit_name(text: str) -> str:
    return text[: -len(".service")] if text.endswith(".service") else text


def units_dir(state: Path) -> Path:
    return state / "units"


@dataclass(frozen=True)
class MainProcess:
    pid: int
    starttime: int
    started: str


def define(state: Path, name: str, command: List[str], env: Optional[Dict[str, str]] = None, *,
           kill_signal: str = "SIGTERM", stop_timeout: float = 10.0, description: str = "") -> Path:
    """Write (or replace) a unit file; ``systemctl daemon-reload`` is not needed, as in a test."""
    name = unit_name(name)
    units_dir(state).mkdir(parents=True, exist_ok=True)
    doc = {"command": list(command), "env": dict(env or {}), "kill_signal": kill_signal,
           "stop_timeout": stop_timeout, "description": description or f"fake unit {name}"}
    path = units_dir(state) / f"{name}.json"
    S.write_atomic(path, (json.dumps(doc, indent=1) + "\n").encode())
    return path


def load(state: Path, name: str) -> Dict[str, Any]:
    path = units_dir(state) / f"{unit_name(name)}.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UnitNotFound(f"Unit {unit_name(name)}.service not found.") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("command"), list) or not doc["command"]:
        raise S.FakeNodeError(f"{path}: needs a non-empty \"command\" list")
    return doc


def exists(state: Path, name: str) -> bool:
    return (units_dir(state) / f"{unit_name(name)}.json").is_file()


def main_process(state: Path, name: str) -> Optional[MainProcess]:
    """The unit's recorded main process, alive or not (None if it was never started or was stopped)."""
    try:
        pid, starttime, started = (units_dir(state) / f"{unit_name(name)}.pid").read_text().split()
    except (FileNotFoundError, ValueError):
        return None
    return MainProcess(int(pid), int(starttime), started)


def active_state(state: Path, name: str) -> str:
    """"active", "inactive" (never started, or stopped) or "failed" (main process died by itself)."""
    mp = main_process(state, name)
    if mp is None:
        return "inactive"
    return "active" if S.alive(mp.pid, mp.starttime) else "failed"


def start(state: Path, name: str) -> Optional[MainProcess]:
    """Start the unit unless it is active (as ``systemctl start``); returns its main process."""
    name = unit_name(name)
    doc = load(state, name)
    mp = main_process(state, name)
    if mp is not None and S.alive(mp.pid, mp.starttime):
        return mp
    env = {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8", "HOME": "/root", S.STATE_ENV: str(state),
           S.OWNER_ENV: str(state)}
    env.update({str(k): str(v) for k, v in dict(doc.get("env", {})).items()})
    log_path = units_dir(state) / f"{name}.log"
    with open(log_path, "ab") as log:
        log.write(f"=== {S.rfc3339(S.utcnow())} start {' '.join(map(str, doc['command']))}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen([str(c) for c in doc["command"]], stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                    cwd=str(doc.get("cwd", state)))
        except OSError as exc:
            log.write(f"=== failed to start: {exc}\n".encode())
            raise S.FakeNodeError(f"{name}.service: cannot execute {doc['command'][0]}: {exc}") from None
    mp = MainProcess(proc.pid, S.start_time(proc.pid), S.rfc3339(S.utcnow()))
    S.write_atomic(units_dir(state) / f"{name}.pid", f"{mp.pid} {mp.starttime} {mp.started}\n".encode())
    return mp


def stop(state: Path, name: str) -> None:
    """KillSignal= to the main process group, SIGKILL after stop_timeout; forget the main process."""
    name = unit_name(name)
    doc = load(state, name)
    mp = main_process(state, name)
    if mp is not None:
        sig = getattr(signal, str(doc.get("kill_signal", "SIGTERM")))
        S.terminate(mp.pid, mp.starttime, float(doc.get("stop_timeout", 10.0)), sig)
    try:
        (units_dir(state) / f"{name}.pid").unlink()
    except FileNotFoundError:
        pass


def restart(state: Path, name: str) -> Optional[MainProcess]:
    load(state, name)  # fail before stopping anything if the unit does not exist
    stop(state, name)
    return start(state, name)


def status_text(state: Path, name: str) -> str:
    """Roughly what ``systemctl status`` prints."""
    name = unit_name(name)
    doc = load(state, name)
    mp = main_process(state, name)
    st = active_state(state, name)
    lines = [f"\u25cf {name}.service - {doc.get('description', name)}",
             f"     Loaded: loaded ({units_dir(state) / (name + '.json')}; enabled; preset: enabled)"]
    if st == "active" and mp is not None:
        lines.append(f"     Active: active (running) since {mp.started}")
        lines.append(f"   Main PID: {mp.pid} ({Path(str(doc['command'][0])).name})")
    elif st == "failed" and mp is not None:
        lines.append(f"     Active: failed (Result: exit-code) since {mp.started}")
        lines.append(f"   Main PID: {mp.pid} (code=exited)")
    else:
        lines.append("     Active: inactive (dead)")
    return "\n".join(lines) + "\n"


def all_main_processes(state: Path) -> List[MainProcess]:
    d = units_dir(state)
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.glob("*.pid")):
        mp = main_process(state, p.stem)
        if mp is not None:
            out.append(mp)
    return out
