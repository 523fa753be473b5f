"""Runtime adapters: how a component is restarted on this node, chosen with a reason.

* static pods (kubeadm's default) under containerd / CRI-O through ``crictl``, or under Docker
  (``docker`` CLI, dockershim / cri-dockerd). Two strategies: ``container`` restarts the container
  through the runtime CLI (the kubelet starts a new one); ``manifest`` moves the manifest out of
  ``manifests/``, waits for the container to go, moves it back and waits for a new container, as
  ``kubeadm upgrade`` does.
* ``systemd`` (``systemctl restart``) and ``sysv`` (``service NAME restart``) for the kubelet and for
  etcd on external etcd hosts.
* ``command``: a user-given shell command per component, for anything else.

Every external command runs with a timeout and its output is captured into the result. Nothing
here prints.
"""

from __future__ import annotations

import abc
import re
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .. import layout as L
from .. import spec, yamlsafe
from ..errors import ConfigError, KubecertError
from ..facts import NodeFacts, describe
from ..store import NodeFS
from .parked import PARKED_DIR

STATIC_POD_COMPONENTS = (spec.ETCD, spec.APISERVER, spec.CONTROLLER_MANAGER, spec.SCHEDULER)
DEFAULT_FILE_CHECK_FREQUENCY = 20.0  # the kubelet's default fileCheckFrequency, seconds

CRI_SOCKETS: Tuple[Tuple[str, str, str], ...] = (
    # (path, runtime name, CLI)
    ("/run/containerd/containerd.sock", "containerd", "crictl"),
    ("/var/run/containerd/containerd.sock", "containerd", "crictl"),
    ("/var/run/crio/crio.sock", "cri-o", "crictl"),
    ("/run/crio/crio.sock", "cri-o", "crictl"),
    ("/var/run/cri-dockerd.sock", "cri-dockerd", "docker"),
    ("/run/cri-dockerd.sock", "cri-dockerd", "docker"),
    ("/var/run/dockershim.sock", "dockershim", "docker"),
    ("/var/run/docker.sock", "docker", "docker"),
)
SYSTEMD_UNIT_DIRS = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")


@dataclass(frozen=True)
class CommandResult:
    argv: Tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def summary(self) -> str:
        out = (self.stdout.strip() or self.stderr.strip()).splitlines()
        tail = f": {out[-1][:120]}" if out else ""
        return f"$ {' '.join(self.argv)} -> {self.returncode}{tail}"


@dataclass(frozen=True)
class RestartResult:
    component: str
    adapter: str
    ok: bool
    detail: str
    seconds: float
    commands: Tuple[CommandResult, ...] = ()
    old_id: Optional[str] = None
    new_id: Optional[str] = None


def run(argv: Sequence[str], timeout: float, shell: bool = False) -> CommandResult:
    """Run one external command on this machine with a timeout; never raises for the command's own
    failure. The default :data:`Runner`; an SSH transport provides another."""
    start = time.monotonic()
    try:
        p = subprocess.run(list(argv) if not shell else argv[0], shell=shell, capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        return CommandResult(tuple(argv), p.returncode, p.stdout[-4000:], p.stderr[-4000:], time.monotonic() - start)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return CommandResult(tuple(argv), -1, out[-4000:], f"timed out after {timeout:.0f}s",
                             time.monotonic() - start)
    except OSError as exc:
        return CommandResult(tuple(argv), 127, "", f"cannot run: {exc.strerror or exc}", time.monotonic() - start)


Runner = Callable[[Sequence[str], float, bool], CommandResult]


class Adapter(abc.ABC):
    """Restarts components of one kind, running its commands through ``runner``."""

    name: str
    reason: str
    runner: Runner = staticmethod(run)

    @abc.abstractmethod
    def restart(self, component: str, timeout: float) -> RestartResult: ...

    def identity(self, component: str) -> Optional[str]:
        """What changes whenever ``component`` is started again (a container id, a unit's invocation):
        a gate compares it across its settle window to see a crash the health probes missed. None:
        this adapter cannot tell."""
        return None

    def describe(self) -> str:
        return f"{self.name} ({self.reason})"


@dataclass
class _Log:
    runner: Runner
    commands: List[CommandResult] = field(default_factory=list)

    def run(self, argv: Sequence[str], timeout: float, shell: bool = False) -> CommandResult:
        r = self.runner(argv, timeout, shell)
        self.commands.append(r)
        return r


class CRIAdapter(Adapter):
    """Static pods through ``crictl`` or ``docker``."""

    def __init__(self, cli: str, reason: str, fs: NodeFS, strategy: str = "container",
                 file_check_frequency: float = DEFAULT_FILE_CHECK_FREQUENCY, poll: float = 0.5) -> None:
        if cli not in ("crictl", "docker"):
            raise ConfigError(f"unknown container CLI {cli!r}")
        if strategy not in ("container", "manifest"):
            raise ConfigError(f"unknown restart strategy {strategy!r} (container or manifest)")
        self.cli = cli
        self.name = f"static-pod/{cli}/{strategy}"
        self.reason = reason
        self.fs = fs
        self.strategy = strategy
        self.file_check_frequency = file_check_frequency
        self.poll = poll

    def identity(self, component: str) -> Optional[str]:
        ids = self.running_ids(component, _Log(self.runner))
        return None if ids is None else ",".join(sorted(ids))

    def running_ids(self, component: str, log: _Log) -> Optional[List[str]]:
        if self.cli == "crictl":
            r = log.run(["crictl", "ps", "--name", component, "--state", "running", "-q"], 30)
        else:
            r = log.run(["docker", "ps", "--filter", f"name=k8s_{component}_", "-q"], 30)
        if r.returncode != 0:
            return None
        return [line.strip() for line in r.stdout.splitlines() if line.strip()]

    def _wait(self, component: str, log: _Log, deadline: float, want_new_than: Optional[Sequence[str]],
              want_gone: bool = False) -> Optional[str]:
        while True:
            ids = self.running_ids(component, log) or []
            if want_gone and not ids:
                return ""
            if not want_gone:
                fresh = [i for i in ids if want_new_than is None or i not in want_new_than]
                if fresh:
                    return fresh[0]
            if time.monotonic() >= deadline:
                return None
            time.sleep(self.poll)

    def restart(self, component: str, timeout: float) -> RestartResult:
        log = _Log(self.runner)
        start = time.monotonic()
        deadline = start + timeout

        def result(ok: bool, detail: str, old: Optional[str] = None, new: Optional[str] = None) -> RestartResult:
            return RestartResult(component, self.name, ok, detail, time.monotonic() - start,
                                 tuple(log.commands), old, new)

        old_ids = self.running_ids(component, log)
        if old_ids is None:
            return result(False, f"{self.cli} failed: {log.commands[-1].summary()}")
        old = old_ids[0] if old_ids else None
        if self.strategy == "manifest":
            return self._bounce(component, log, deadline, old_ids, result)
        if not old_ids:
            # crash-looping (or between two attempts): the kubelet starts it again by itself, and a
            # container started from now on reads the files as they are now
            new = self._wait(component, log, deadline, [])
            if new is None:
                return result(False, f"no running {component} container to restart, and the kubelet started "
                                     f"none within {timeout:.0f}s")
            return result(True, f"was not running; the kubelet started {_short(new)}", None, new)
        if self.cli == "crictl":
            r = log.run(["crictl", "stop", *old_ids], timeout)
        else:
            r = log.run(["docker", "restart", *old_ids], timeout)
        if r.returncode != 0:
            return result(False, f"restart command failed: {r.summary()}", old)
        # docker restart keeps the id; crictl stop makes the kubelet start a new container
        new = self._wait(component, log, deadline, old_ids if self.cli == "crictl" else None)
        if new is None:
            return result(False, f"{component} did not come back within {timeout:.0f}s", old)
        return result(True, f"container {_short(old)} -> {_short(new)}", old, new)

    def _bounce(self, component: str, log: _Log, deadline: float, old_ids: List[str],
                result: Callable[..., RestartResult]) -> RestartResult:
        manifest = f"{L.MANIFESTS_DIR}/{component}.yaml"
        parked = f"{PARKED_DIR}/{component}.yaml"
        old = old_ids[0] if old_ids else None
        if not self.fs.exists(manifest):
            return result(False, f"{self.fs.display(manifest)} not found")
        self.fs.makedirs(PARKED_DIR, 0o700)
        self.fs.rename(manifest, parked)
        try:
            gone = self._wait(component, log, min(deadline, time.monotonic() + 3 * self.file_check_frequency + 30),
                              None, want_gone=True)
        finally:
            self.fs.rename(parked, manifest)
        if gone is None:
            return result(False, f"{component} container did not stop after its manifest was moved out", old)
        new = self._wait(component, log, deadline, old_ids)
        if new is None:
            return result(False, f"{component} did not come back within the timeout after its manifest "
                                 "was moved back", old)
        return result(True, f"manifest bounced; container {_short(old)} -> {_short(new)}", old, new)


class ServiceAdapter(Adapter):
    """systemd units (``systemctl``) or SysV services (``service``)."""

    def __init__(self, kind: str, unit: str, reason: str, poll: float = 0.5) -> None:
        if kind not in ("systemd", "sysv"):
            raise ConfigError(f"unknown service manager {kind!r}")
        self.kind = kind
        self.unit = unit
        self.name = f"{kind}/{unit}"
        self.reason = reason
        self.poll = poll

    def identity(self, component: str) -> Optional[str]:
        if self.kind != "systemd":
            return None
        r = self.runner(["systemctl", "show", "--property", "InvocationID,MainPID", self.unit], 30, False)
        return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None

    def restart(self, component: str, timeout: float) -> RestartResult:
        log = _Log(self.runner)
        start = time.monotonic()
        if self.kind == "systemd":
            r = log.run(["systemctl", "restart", self.unit], timeout)
            status = ["systemctl", "is-active", "--quiet", self.unit]
        else:
            r = log.run(["service", self.unit, "restart"], timeout)
            status = ["service", self.unit, "status"]
        if r.returncode != 0:
            return RestartResult(component, self.name, False, f"restart failed: {r.summary()}",
                                 time.monotonic() - start, tuple(log.commands))
        while True:
            s = log.run(status, 30)
            if s.returncode == 0:
                return RestartResult(component, self.name, True, f"{self.unit} restarted and active",
                                     time.monotonic() - start, tuple(log.commands))
            if time.monotonic() - start >= timeout:
                return RestartResult(component, self.name, False, f"{self.unit} not active after {timeout:.0f}s",
                                     time.monotonic() - start, tuple(log.commands))
            time.sleep(self.poll)


class CommandAdapter(Adapter):
    """A user-given shell command; success is its exit status 0 (the health gate does the rest)."""

    def __init__(self, command: str, reason: str = "given by the operator") -> None:
        self.command = command
        self.name = "command"
        self.reason = reason

    def restart(self, component: str, timeout: float) -> RestartResult:
        log = _Log(self.runner)
        start = time.monotonic()
        r = log.run([self.command], timeout, shell=True)
        return RestartResult(component, self.name, r.returncode == 0,
                             "command succeeded" if r.returncode == 0 else f"command failed: {r.summary()}",
                             time.monotonic() - start, tuple(log.commands))


def _short(cid: Optional[str]) -> str:
    return (cid or "-")[:13]


# ---------------------------------------------------------------------------------------------
# detection


@dataclass(frozen=True)
class Choice:
    component: str
    adapter: Adapter

    @property
    def reason(self) -> str:
        return self.adapter.reason


@dataclass(frozen=True)
class Options:
    """Operator overrides, from flags or a config file."""

    cri: Optional[str] = None  # crictl | docker
    strategy: str = "container"
    service_manager: Optional[str] = None  # systemd | sysv
    commands: Dict[str, str] = field(default_factory=dict)  # component -> shell command
    file_check_frequency: Optional[float] = None


def detect_cri(fs: NodeFS, facts: NodeFacts) -> Tuple[Optional[str], str]:
    """(CLI, reason) for the node's container runtime."""
    for path, runtime, cli in CRI_SOCKETS:
        if fs.exists(path):
            return cli, f"{runtime}: socket {path} found"
    endpoint = _cri_socket_setting(fs)
    if endpoint:
        value, source = endpoint
        for path, runtime, cli in CRI_SOCKETS:
            if value.endswith(path):
                return cli, f"{runtime}: {value} in {source}"
    return None, "no container runtime socket found"


def _cri_socket_setting(fs: NodeFS) -> Optional[Tuple[str, str]]:
    flags_env = "/var/lib/kubelet/kubeadm-flags.env"
    if fs.exists(flags_env):
        text = fs.read(flags_env).decode(errors="replace")
        for token in text.replace('"', " ").split():
            if token.startswith("--container-runtime-endpoint="):
                return token.split("=", 1)[1], flags_env
    for cand in L.KUBEADM_CONFIG_CANDIDATES:
        if fs.exists(cand):
            try:
                docs = yamlsafe.load_all(fs.read(cand), fs.display(cand))
            except KubecertError:
                continue  # the audit reports it (kubecert.facts); a socket may still be found elsewhere
            for doc in docs:
                reg = doc.get("nodeRegistration") if isinstance(doc, dict) else None
                sock = reg.get("criSocket") if isinstance(reg, dict) else None
                if isinstance(sock, str) and sock:
                    return sock, cand
    return None


def _service(fs: NodeFS, unit: str, forced: Optional[str]) -> Tuple[Optional[str], str]:
    if forced:
        return forced, f"forced: {forced}"
    for d in SYSTEMD_UNIT_DIRS:
        for cand in (f"{d}/{unit}.service", f"{d}/{unit}.service.d"):
            if fs.exists(cand):
                return "systemd", f"systemd: unit {cand} found"
    if fs.exists(f"/etc/init.d/{unit}"):
        return "sysv", f"sysv: /etc/init.d/{unit} found"
    if fs.exists("/run/systemd/system"):
        return "systemd", "systemd: /run/systemd/system found"
    return None, f"no systemd unit or init script for {unit}"


_GO_DURATION = re.compile(r"(?:[0-9]{1,12}(?:\.[0-9]{0,9})?(?:ns|us|\u00b5s|ms|s|m|h))+")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _go_duration(text: str) -> Optional[float]:
    """Seconds of a Go ``time.Duration`` string (``20s``, ``1m30s``, ``1.5h``); None if it is not one."""
    text = text.strip()
    if text == "0":
        return 0.0
    if not _GO_DURATION.fullmatch(text):
        return None
    return sum(float(n) * _GO_UNITS[u] for n, u in re.findall(r"([0-9.]+)(ns|us|\u00b5s|ms|s|m|h)", text))


def file_check_frequency(fs: NodeFS) -> float:
    """The kubelet's ``fileCheckFrequency`` (how often it rereads static pod manifests), in seconds."""
    if not fs.exists(L.KUBELET_CONFIG):
        return DEFAULT_FILE_CHECK_FREQUENCY
    cfg = yamlsafe.load(fs.read(L.KUBELET_CONFIG), fs.display(L.KUBELET_CONFIG))
    value = cfg.get("fileCheckFrequency") if isinstance(cfg, dict) else None
    if value is None:
        return DEFAULT_FILE_CHECK_FREQUENCY
    seconds = _go_duration(value) if isinstance(value, str) else None
    if seconds is None:
        raise ConfigError(f"{fs.display(L.KUBELET_CONFIG)}: fileCheckFrequency {describe(value)} is not a duration "
                          "like 20s")
    return seconds or DEFAULT_FILE_CHECK_FREQUENCY


def choose(fs: NodeFS, facts: NodeFacts, components: Sequence[str],
           options: Optional[Options] = None, runner: Optional[Runner] = None) -> Dict[str, Choice]:
    """The adapter for each component, with the reason it was chosen. Raises when one has none.
    ``runner`` runs the adapters' commands (default: on this machine)."""
    options = options or Options()
    out = _choose(fs, facts, components, options)
    if runner is not None:
        for choice in out.values():
            choice.adapter.runner = runner
    return out


def _choose(fs: NodeFS, facts: NodeFacts, components: Sequence[str], options: Options) -> Dict[str, Choice]:
    out: Dict[str, Choice] = {}
    cri, cri_reason = (options.cri, f"forced: {options.cri}") if options.cri else detect_cri(fs, facts)
    fcf = options.file_check_frequency or file_check_frequency(fs)
    for c in components:
        if c in options.commands:
            out[c] = Choice(c, CommandAdapter(options.commands[c]))
            continue
        is_static_pod = c in STATIC_POD_COMPONENTS and (
            fs.exists(f"{L.MANIFESTS_DIR}/{c}.yaml") or fs.exists(f"{PARKED_DIR}/{c}.yaml"))
        if is_static_pod:
            if cri is None:
                raise ConfigError(f"{c}: runs as a static pod but {cri_reason}; pass --runtime crictl|docker "
                                  "or --restart-command")
            out[c] = Choice(c, CRIAdapter(cri, cri_reason, fs, options.strategy, fcf))
            continue
        unit = {spec.KUBELET: "kubelet", spec.ETCD: "etcd"}.get(c)
        if unit is None:
            raise ConfigError(f"{c}: no static pod manifest in {fs.display(L.MANIFESTS_DIR)}; "
                              "pass --restart-command")
        kind, why = _service(fs, unit, options.service_manager)
        if kind is None:
            raise ConfigError(f"{c}: {why}; pass --service-manager systemd|sysv or --restart-command")
        out[c] = Choice(c, ServiceAdapter(kind, unit, why))
    return out
