"""What every cluster operation shares: the host and connection interfaces, CA keys held in memory,
the state file that makes a cluster-wide run resumable, and local roots as a transport.

Transports are injected (``connect``), so the same code runs over SSH or on local roots.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import stat
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Sequence, Tuple

from cryptography import x509

from .. import spec, x509ops
from ..errors import KubecertError
from ..node.restart import Outcome
from ..node.runtime import CommandResult
from ..store import NodeFS, privdir

GATED = (spec.ETCD, spec.APISERVER)  # what the operator's machine can probe on a remote node


class HostLike(Protocol):
    name: str
    address: str
    role: str

    @property
    def etcd_member(self) -> bool: ...


class Conn(Protocol):
    def fs(self) -> NodeFS: ...

    def run(self, argv: Sequence[str], timeout: float, shell: bool = False) -> CommandResult: ...

    def forward(self, host: str, port: int) -> Tuple[str, int]: ...

    def close(self) -> None: ...


Connect = Callable[[Any], Conn]
Progress = Callable[[str, str, str], None]  # (node, step, message)


def _quiet(node: str, step: str, message: str) -> None:
    return None


def reachable(hosts: Sequence[Any], connect: Connect) -> Iterator[Tuple[Any, Conn]]:
    """(host, open connection) for each host that can be reached, in order; unreachable ones are
    passed over; each connection is closed when the loop moves on."""
    yield from every_node(hosts, connect, False, "")


def every_node(hosts: Sequence[Any], connect: Connect, strict: bool, what: str) -> Iterator[Tuple[Any, Conn]]:
    """(host, open connection) for each host, in order; ``strict``: a host that cannot be reached
    stops the loop with an error naming it and ``what`` needs it (otherwise it is passed over)."""
    for h in hosts:
        try:
            conn = connect(h)
        except KubecertError as exc:
            if strict:
                raise KubecertError(f"{h.name}: cannot be reached ({exc}); {what} is read from every node, so "
                                    "nothing was changed; bring it back (or fix the inventory) and run again") from exc
            continue
        try:
            yield h, conn
        finally:
            conn.close()


def is_etcd_member(h: Any) -> bool:
    return h.role == "etcd" or bool(getattr(h, "etcd_member", False))


Signers = Dict[str, Tuple[x509.Certificate, Any]]


def collect_signers(hosts: Sequence[Any], connect: Connect, *,
                    skip_unreachable: bool = False) -> Tuple[Signers, Dict[str, str]]:
    """Each CA's cert and key, from whichever node keeps the key (held in memory only); workers keep
    none. ``skip_unreachable``: a node that cannot be reached is passed over instead of raising."""
    from ..layout import Layout

    signers: Signers = {}
    where: Dict[str, str] = {}
    for h in hosts:
        if len(signers) == len(spec.CA_NAMES):
            break
        if h.role == "worker":
            continue
        try:
            conn = connect(h)
        except KubecertError:
            if skip_unreachable:
                continue
            raise
        try:
            fs = conn.fs()
            lay = Layout()
            for name in spec.CA_NAMES:
                if name in signers:
                    continue
                e = spec.entry(name)
                if fs.exists(lay.key(e)) and fs.exists(lay.cert(e)):
                    cert = x509ops.load_cert(fs.read(lay.cert(e)), fs.display(lay.cert(e)))
                    key = x509ops.load_key(fs.read(lay.key(e)), fs.display(lay.key(e)))
                    if x509ops.key_matches_cert(cert, key):
                        signers[name] = (cert, key)
                        where[name] = h.name
        finally:
            conn.close()
    return signers, where


def _state_dir_ok(path: str) -> None:
    """The state file's directory is not one another user could plant things in."""
    d = os.path.dirname(os.path.abspath(path)) or "."
    try:
        st = os.stat(d)
    except OSError as exc:
        raise KubecertError(f"{d}: cannot use it for the state file: {exc.strerror}") from None
    if not privdir.safe_dir(st):
        raise KubecertError(f"{d}: another user can write there; put the state file elsewhere (--state FILE)")


def read_state(path: str, inventory: str) -> Optional[Dict[str, Any]]:
    """A state file's document, if it is one of a run over the same inventory (else None: start afresh)."""
    _state_dir_ok(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            data = json.loads(fh.read(1 << 22) or b"null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("inventory") == inventory else None


def write_state(path: str, doc: Dict[str, Any]) -> None:
    """Atomically (a new temp file with an unpredictable name, fsync, rename), 0600: the operator's
    record of a cluster-wide run."""
    _state_dir_ok(path)
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       f".{os.path.basename(path)}.kubecert-tmp-{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_state(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


@dataclass
class RunState:
    """Which nodes a rolling renewal already did: resume after a stop."""

    path: str
    inventory: str
    done: List[str] = field(default_factory=list)
    started: str = ""
    stage: str = ""  # a multi-pass run (CA rotation): the pass that ``done`` belongs to

    @classmethod
    def load(cls, path: str, inventory: str) -> RunState:
        data = read_state(path, inventory)
        if data is None:
            return cls(path, inventory)
        return cls(path, inventory, [str(n) for n in data.get("done") or []], str(data.get("started", "")),
                   str(data.get("stage", "")))

    def save(self) -> None:
        write_state(self.path, {"inventory": self.inventory, "done": self.done, "started": self.started,
                                "stage": self.stage})

    def finish(self) -> None:
        remove_state(self.path)


def inventory_digest(hosts: Sequence[Any]) -> str:
    text = "\n".join(f"{h.name} {h.address} {h.role} {getattr(h, 'root', '/')}" for h in hosts)
    return hashlib.sha256(text.encode()).hexdigest()


class LocalConn:
    """A node whose root is a directory on this machine, commands run here: for rehearsals on lab
    trees (``kubecert cluster ... --local``) and tests. Same interface as the SSH connection."""

    def __init__(self, host: Any) -> None:
        from ..store import LocalFS

        self._fs = LocalFS(getattr(host, "root", "/"))

    def fs(self) -> NodeFS:
        return self._fs

    def run(self, argv: Sequence[str], timeout: float, shell: bool = False) -> CommandResult:
        from ..node.runtime import run

        return run(argv, timeout, shell)

    def forward(self, host: str, port: int) -> Tuple[str, int]:
        return host, port  # the node's loopback is this machine's

    def close(self) -> None:
        return None


def local_connect(host: Any) -> Conn:
    return LocalConn(host)


@dataclass(frozen=True)
class NodeRun:
    name: str
    status: str  # done | skipped (already done) | failed | not-started
    outcome: Optional[Outcome] = None
    detail: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class ClusterRun:
    nodes: Tuple[NodeRun, ...]
    signers_from: Dict[str, str]

    @property
    def ok(self) -> bool:
        return all(n.status in ("done", "skipped") for n in self.nodes)
