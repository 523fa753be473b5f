"""Renewal hooks, as certbot has them: ``pre`` before the first change, ``deploy`` after a renewal
(and its restarts), ``post`` after every attempt, failed ones included.

Hooks are the executables in ``ROOT/etc/kubecert/hooks/{pre,post,deploy}/`` (run in lexical order
of their names) and the shell commands of ``--pre-hook/--deploy-hook/--post-hook`` (run after the
directory's). kubecert runs as root, so it never runs a file that anyone but root could have
written: a hook must be a regular file owned by root, not writable by group or others, in a chain
of directories (every one from ``/`` down, symlinks resolved and unresolved) that only root can
change; otherwise the whole run is refused before anything runs, naming the file. Files whose name
starts with ``.`` or ends with ``~`` and regular files without an execute bit are passed over (as
certbot and run-parts do); directories are not hooks.

A :class:`Session` carries one renewal run: the workflow calls :meth:`Session.pre` just before its
first change (a failing pre-hook raises :class:`HookFailed`: nothing is changed), :meth:`Session.deploy`
after a successful renewal, and :meth:`Session.post` at the end (it runs only if the run attempted a
renewal: pre was started or the run failed). Every hook gets ``KUBECERT_PHASE``,
``KUBECERT_RENEWED_NAMES`` (space-separated), ``KUBECERT_NODE``, ``KUBECERT_BACKUP_ID``,
``KUBECERT_ROOT``, ``KUBECERT_DRY_RUN`` and, for post, ``KUBECERT_RESULT``; its output (stdout and
stderr together) goes to the session's log line by line and into the node's audit log when the run
changed something. Each hook has a timeout; its whole process group is killed when it runs over.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import stat
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar

from .errors import KubecertError
from .store import NodeFS

PHASES = ("pre", "deploy", "post")
HOOKS_DIR = "/etc/kubecert/hooks"
DEFAULT_TIMEOUT = 300.0  # seconds, per hook
OUTPUT_LIMIT = 64 * 1024  # characters of a hook's output kept (the end of it)
AUDIT_OUTPUT = 2000  # characters of a hook's output recorded in the audit log

Log = Callable[[str], None]
T = TypeVar("T")


class HookError(KubecertError):
    """A hook kubecert must not run (a file a non-root user controls), or a bad hook option."""


class HookFailed(KubecertError):
    """A pre-hook failed: the renewal was not started and nothing was changed."""


@dataclass(frozen=True)
class Hook:
    phase: str
    label: str  # the file, or "--pre-hook" and the command
    argv: Tuple[str, ...]


@dataclass(frozen=True)
class HookRun:
    hook: Hook
    returncode: Optional[int]  # None: it timed out or could not be started
    output: str
    seconds: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def status(self) -> str:
        return self.error or f"exit {self.returncode}"


@dataclass(frozen=True)
class Hooks:
    """The hooks of one node, per phase, in the order they run."""

    pre: Tuple[Hook, ...] = ()
    deploy: Tuple[Hook, ...] = ()
    post: Tuple[Hook, ...] = ()
    timeout: float = DEFAULT_TIMEOUT

    def of(self, phase: str) -> Tuple[Hook, ...]:
        hooks: Tuple[Hook, ...] = getattr(self, phase)
        return hooks

    def __bool__(self) -> bool:
        return bool(self.pre or self.deploy or self.post)


# --- discovery -----------------------------------------------------------------------------------

def _trusted_ids() -> Tuple[int, ...]:
    return (0, os.geteuid())  # root, or the user running kubecert (the same when it runs as root)


def _dir_problem(path: str, st: os.stat_result) -> Optional[str]:
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if st.st_uid not in _trusted_ids():
        return f"directory {path} is owned by uid {st.st_uid}, not root"
    # a sticky directory (/tmp) lets others add entries but not replace root's: the next step,
    # checked in turn, must be root's own
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        return f"directory {path} is writable by group or others"
    return None


def _chain_problem(path: str) -> Optional[str]:
    """Why a non-root user could change what the directory ``path`` (absolute) names, or None: it is
    resolved the way the kernel does, one component at a time, and every directory passed through
    (it included) must be safe (:func:`_dir_problem`) and every symlink followed root's, so that no
    link on the way, however many there are, can be repointed by another user."""
    parts = [p for p in path.split("/") if p]
    current, links = "/", 0
    problem = _dir_problem("/", os.lstat("/"))
    while parts and problem is None:
        name = parts.pop(0)
        if name in (".", ".."):
            current = os.path.dirname(current) if name == ".." else current
            continue
        entry = os.path.join(current, name)
        try:
            st = os.lstat(entry)
        except OSError as exc:
            return f"{entry}: {exc.strerror}"
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if st.st_uid not in _trusted_ids():
                return f"symlink {entry} is owned by uid {st.st_uid}, not root"
            if links > 40:
                return f"{path}: too many levels of symbolic links"
            target = os.readlink(entry)
            current = "/" if target.startswith("/") else current
            parts[:0] = [p for p in target.split("/") if p]
            continue
        current = entry
        problem = _dir_problem(current, st)
    return problem


def _skipped(name: str) -> bool:
    return name.startswith(".") or name.endswith("~")


def directory_hooks(root: str, phase: str) -> Tuple[Hook, ...]:
    """The hooks of ``ROOT/etc/kubecert/hooks/PHASE``, checked; HookError names the first unsafe one."""
    directory = os.path.join(os.path.abspath(root), HOOKS_DIR.lstrip("/"), phase)
    if not os.path.lexists(directory):
        return ()
    if not os.path.isdir(directory):
        raise HookError(f"{directory}: hook directory is not a directory; refusing to run hooks")
    problem = _chain_problem(directory)
    if problem:
        raise HookError(f"{directory}: refusing to run hooks from it: {problem} (kubecert runs them as root)")
    out = []
    for name in sorted(os.listdir(directory)):
        if _skipped(name):
            continue
        path = os.path.join(directory, name)
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            continue
        if not stat.S_ISREG(st.st_mode):
            raise HookError(f"{path}: refusing to run hook: not a regular file (symlink, FIFO or device)")
        if not st.st_mode & 0o111:
            continue  # not executable: not a hook (certbot passes it over too)
        if st.st_uid not in _trusted_ids():
            raise HookError(f"{path}: refusing to run hook: owned by uid {st.st_uid}, not root "
                            f"(chown root: {path})")
        if st.st_mode & 0o022:
            raise HookError(f"{path}: refusing to run hook: writable by group or others (chmod go-w {path})")
        out.append(Hook(phase, path, (path,)))
    return tuple(out)


def discover(root: str, *, pre: Sequence[str] = (), deploy: Sequence[str] = (), post: Sequence[str] = (),
             timeout: float = DEFAULT_TIMEOUT) -> Hooks:
    """The node's hook directories plus the commands given as options (run with /bin/sh -c)."""
    if not 0 < timeout <= 24 * 3600:
        raise HookError(f"hook timeout {timeout}s: must be more than 0 and at most a day")
    commands = {"pre": pre, "deploy": deploy, "post": post}
    found: Dict[str, Tuple[Hook, ...]] = {}
    for phase in PHASES:
        flag = f"--{phase}-hook"
        given = []
        for cmd in commands[phase]:
            if not cmd.strip():
                raise HookError(f"{flag}: empty command")
            given.append(Hook(phase, f"{flag} {cmd!r}", ("/bin/sh", "-c", cmd)))
        found[phase] = directory_hooks(root, phase) + tuple(given)
    return Hooks(found["pre"], found["deploy"], found["post"], timeout)


# --- running -------------------------------------------------------------------------------------

Runner = Callable[[Hook, Mapping[str, str], float], HookRun]


def run_hook(hook: Hook, env: Mapping[str, str], timeout: float) -> HookRun:
    """Run one hook in its own process group, stdin from /dev/null, stdout and stderr together."""
    start = time.monotonic()
    try:
        proc = subprocess.Popen(hook.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=dict(env), cwd="/", start_new_session=True)
    except OSError as exc:
        return HookRun(hook, None, "", time.monotonic() - start, f"cannot run: {exc.strerror or exc}")
    error = ""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # a child left the group and holds the pipe: give up on it
            proc.kill()
            out = b""
        error = f"timed out after {timeout:g}s (killed)"
    text = out.decode(errors="replace")[-OUTPUT_LIMIT:]
    code = None if error else proc.returncode
    return HookRun(hook, code, text, time.monotonic() - start, error)


def _quiet(line: str) -> None:
    return None


@dataclass
class Session:
    """The hooks of one renewal run on one node (see the module docstring for the order)."""

    hooks: Hooks
    fs: NodeFS
    node: str
    now: dt.datetime
    dry_run: bool = False
    log: Log = _quiet
    runner: Runner = run_hook
    runs: List[HookRun] = field(default_factory=list)
    attempted: bool = False
    renewed: Tuple[str, ...] = ()
    backup_id: str = ""
    result: str = "nothing"  # what post is told: renewed | failed | dry-run | nothing
    _posted: bool = False

    def environment(self, phase: str, names: Sequence[str]) -> Dict[str, str]:
        env = dict(os.environ)
        env.update({
            "KUBECERT_PHASE": phase,
            "KUBECERT_RENEWED_NAMES": " ".join(names),
            "KUBECERT_NODE": self.node,
            "KUBECERT_BACKUP_ID": self.backup_id,
            "KUBECERT_ROOT": self.fs.root,
            "KUBECERT_DRY_RUN": "1" if self.dry_run else "",
        })
        if phase == "post":
            env["KUBECERT_RESULT"] = self.result
        return env

    def _run(self, phase: str, names: Sequence[str], stop_on_failure: bool) -> List[HookRun]:
        done = []
        env = self.environment(phase, names)
        for hook in self.hooks.of(phase):
            self.log(f"hook {phase}: {hook.label}: running")
            r = self.runner(hook, env, self.hooks.timeout)
            for line in r.output.splitlines():
                self.log(f"hook {phase}: {hook.label}: | {line}")
            self.log(f"hook {phase}: {hook.label}: {r.status()} ({r.seconds:.1f}s)")
            done.append(r)
            self.runs.append(r)
            if stop_on_failure and not r.ok:
                break
        return done

    def pre(self, names: Sequence[str]) -> None:
        """Before the first change of a renewal of ``names``; HookFailed if a pre-hook fails."""
        self.attempted = True
        self.renewed = tuple(names)
        runs = self._run("pre", names, stop_on_failure=True)
        bad = next((r for r in runs if not r.ok), None)
        if bad is not None:
            self.result = "failed"
            raise HookFailed(f"pre-hook {bad.hook.label} failed ({bad.status()}); the renewal was not started "
                             "and nothing was changed")

    def deploy(self, names: Sequence[str], backup_id: str) -> None:
        """After a successful renewal (and its restarts); never on a dry run."""
        self.renewed, self.backup_id, self.result = tuple(names), backup_id, "renewed"
        if not self.dry_run:
            self._run("deploy", names, stop_on_failure=False)

    def failed(self) -> None:
        self.attempted = True
        self.result = "failed"

    def post(self) -> None:
        """Once, at the end of a run that attempted a renewal (whatever its outcome); then the hook
        runs go to the node's audit log if the run changed something there."""
        if self._posted or not self.attempted:
            return
        self._posted = True
        if self.dry_run and self.result != "failed":
            self.result = "dry-run"
        names = self.renewed if self.result in ("renewed", "dry-run") else ()
        self._run("post", names, stop_on_failure=False)
        if self.backup_id and self.runs:
            self._audit()

    @property
    def failures(self) -> List[HookRun]:
        return [r for r in self.runs if not r.ok]

    def _audit(self) -> None:
        from .store.txn import LOCK, audit

        records = [{"action": "hook", "phase": r.hook.phase, "hook": r.hook.label, "backup": self.backup_id,
                    "exit": r.returncode, "error": r.error or None, "seconds": round(r.seconds, 3),
                    "output": r.output[-AUDIT_OUTPUT:]} for r in self.runs]
        try:
            with self.fs.lock(LOCK):
                audit(self.fs, records, self.now)
        except KubecertError as exc:
            self.log(f"hook output not recorded in the audit log: {exc}")

    @contextlib.contextmanager
    def guard(self) -> Iterator[Session]:
        """Around a renewal: a failure marks the run failed; post runs at the end in any case (its
        own failures never hide the run's error)."""
        try:
            yield self
        except SystemExit:  # the CLI's prompt declined (or refused) before pre: no attempt by itself
            if self.attempted:
                self.failed()
            raise
        except BaseException:
            self.failed()
            raise
        finally:
            self.post()


def with_pre(session: Optional[Session], applier: Callable[..., T]) -> Callable[..., T]:
    """``applier`` (renew's shape: ``applier(fs, plan, fault=...)``) preceded by the pre-hooks."""
    if session is None:
        return applier

    def apply(fs: NodeFS, p: object, **kwargs: object) -> T:
        session.pre([i.name for i in getattr(p, "renewed", ())])
        return applier(fs, p, **kwargs)

    return apply


def node_name(fs: NodeFS, facts_name: Optional[str]) -> str:
    """KUBECERT_NODE: kubeadm's node name when the node's config says it, else this host's name."""
    if facts_name:
        return facts_name
    import socket

    return socket.gethostname() if fs.root in ("", "/") else os.path.basename(fs.root.rstrip("/")) or "/"


__all__ = ["PHASES", "HOOKS_DIR", "Hook", "HookRun", "Hooks", "HookError", "HookFailed", "Session", "discover",
           "directory_hooks", "run_hook", "with_pre", "node_name"]
