"""The renewal timer on every node of an inventory, staggered: each control plane (and external etcd
host) renews on a day of its own, so no two restart their etcd member or apiserver on the same day;
workers share a daily schedule. The files are written by :mod:`kubecert.timer` through each node's
file-system interface (SFTP over SSH, or a local root with ``--local``), node after node; a node that
fails is reported and the others go on (certbot's way: collect, then report together).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

from .. import timer as T
from ..errors import KubecertError
from .base import Connect

Progress = Callable[[str, str], None]  # (node, message)


def _quiet(node: str, message: str) -> None:
    return None


@dataclass(frozen=True)
class NodeTimer:
    name: str
    role: str
    status: str  # installed | unchanged | planned | removed | absent | failed
    kind: str = ""
    schedule: Optional[T.Schedule] = None
    detail: str = ""
    warnings: Tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status != "failed"


def _role(h: Any) -> str:
    return "etcd" if h.role == "etcd" else ("control-plane" if h.role == "control-plane" else "worker")


def install(hosts: Sequence[Any], connect: Connect, *, command: Tuple[str, ...], kind: Optional[str] = None,
            within: dt.timedelta = dt.timedelta(days=30), hour: int = T.DEFAULT_HOUR,
            delay: int = T.DEFAULT_DELAY, force: bool = False, dry_run: bool = False,
            progress: Progress = _quiet) -> List[NodeTimer]:
    """Install on every host; ``kind`` None: detected per node (:func:`kubecert.timer.detect`)."""
    schedules = T.stagger([(h.name, _role(h)) for h in hosts], hour=hour, delay=delay)
    # a bad command or window is refused before any node is touched
    T.TimerConfig(kind or "systemd", command, within, schedules[hosts[0].name] if hosts else T.Schedule())
    out = []
    for h in hosts:
        sched = schedules[h.name]
        try:
            conn = connect(h)
        except KubecertError as exc:
            out.append(NodeTimer(h.name, _role(h), "failed", kind or "", sched, f"unreachable: {exc}"))
            continue
        try:
            fs = conn.fs()
            k = kind
            if k is None:
                k, why = T.detect(fs)
                if k is None:
                    raise KubecertError(f"{why}: pass --systemd or --cron")
            cfg = T.TimerConfig(k, command, within, sched)
            warnings = () if fs.exists(command[0]) else (
                f"{command[0]} is not on this node: install kubecert there before the timer fires",)
            if dry_run:
                out.append(NodeTimer(h.name, _role(h), "planned", k, sched, " ".join(cfg.argv), warnings))
                continue
            change = T.install(fs, cfg, force=force)
            status = "installed" if change.written or change.removed else "unchanged"
            progress(h.name, f"{status}: {k} {sched.on_calendar if k == 'systemd' else sched.cron}")
            out.append(NodeTimer(h.name, _role(h), status, k, sched,
                                 ", ".join(change.written + change.removed), warnings))
        except KubecertError as exc:
            out.append(NodeTimer(h.name, _role(h), "failed", kind or "", sched, str(exc)))
        finally:
            conn.close()
    return out


def remove(hosts: Sequence[Any], connect: Connect, *, progress: Progress = _quiet) -> List[NodeTimer]:
    out = []
    for h in hosts:
        try:
            conn = connect(h)
        except KubecertError as exc:
            out.append(NodeTimer(h.name, _role(h), "failed", detail=f"unreachable: {exc}"))
            continue
        try:
            change = T.remove(conn.fs())
            status = "removed" if change.removed else "absent"
            progress(h.name, status)
            out.append(NodeTimer(h.name, _role(h), status, detail=", ".join(change.removed)))
        except KubecertError as exc:
            out.append(NodeTimer(h.name, _role(h), "failed", detail=str(exc)))
        finally:
            conn.close()
    return out


def status(hosts: Sequence[Any], connect: Connect) -> List[Tuple[Any, Optional[T.Status], str]]:
    """(host, status or None, error) per host."""
    out: List[Tuple[Any, Optional[T.Status], str]] = []
    for h in hosts:
        try:
            conn = connect(h)
        except KubecertError as exc:
            out.append((h, None, f"unreachable: {exc}"))
            continue
        try:
            out.append((h, T.status(conn.fs()), ""))
        except KubecertError as exc:
            out.append((h, None, str(exc)))
        finally:
            conn.close()
    return out
