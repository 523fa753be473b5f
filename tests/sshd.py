"""Real OpenSSH servers on 127.0.0.1 for the SSH transport tests (no mocks).

:func:`start_sshds` (a context manager; :func:`start` without one) launches N independent
``/usr/sbin/sshd -D`` processes, in parallel, each on a free port with its own ed25519 host key,
accepting one temp client key for root (``PermitRootLogin prohibit-password``, ``StrictModes no``,
``UsePAM no``, ``Subsystem sftp internal-sftp``), logging to a file (``-E``). Commands run as on a node:
bash, started by sshd for a command, reads the login user's ``~/.bashrc`` when ``SHLVL`` < 2, and
root's on a development machine (pyenv, cargo) costs ~120 ms of CPU per command, which a node's root
does not have; the servers set ``SHLVL=1`` for their sessions so it is skipped (``shell_rc=True``
keeps it, to measure with it). The config is checked
with ``sshd -t`` first; the start waits, bounded, until each port accepts; :meth:`Servers.stop` (or
leaving the ``with`` block) kills them all, and each dies with the test process anyway
(``PR_SET_PDEATHSIG``). Keys are generated in-process with cryptography, so 100 servers start in
about a second.

Each :class:`Server` has its port, host key (``ssh-ed25519 AAAA...``), the client key path and a
``known_hosts`` file holding the ``[127.0.0.1]:PORT <hostkey>`` lines of every server of the group
(one file serves a whole simulated cluster); :meth:`Server.known_hosts_line` is its own line.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from realworld import free_ports  # the one helper for free loopback ports

SSHD = "/usr/sbin/sshd"  # sshd re-execs itself: it must be started by absolute path
PRIVSEP_DIR = "/run/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
LOOPBACK = "127.0.0.1"


def available() -> Optional[str]:
    """None if real sshd servers can be started here, else why not (for pytest.skip)."""
    if not os.path.exists(SSHD):
        return f"{SSHD} not installed (apt-get install openssh-server)"
    if os.geteuid() != 0:
        return "sshd test servers need root (privilege separation, root login)"
    return None


def keypair(path: Path, comment: str) -> str:
    """Write an unencrypted ed25519 private key (OpenSSH format, 0600) to ``path`` and ``path.pub``;
    return the public key line ``ssh-ed25519 AAAA... comment``."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    line = f"{public.decode()} {comment}"
    Path(f"{path}.pub").write_text(line + "\n")
    return line


def known_hosts_line(port: int, host_key: str) -> str:
    return f"[{LOOPBACK}]:{port} {' '.join(host_key.split()[:2])}"


@dataclass
class Server:
    dir: Path
    port: int
    host_key: str  # "ssh-ed25519 AAAA..." (public)
    host_key_path: Path  # private host key file
    client_key: Path  # private key accepted for root
    known_hosts: Path  # every server's line: [127.0.0.1]:PORT <host_key>
    log: Path
    proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def config(self) -> Path:
        return self.dir / "sshd_config"

    def known_hosts_line(self) -> str:
        return known_hosts_line(self.port, self.host_key)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def sftp_log_text(self) -> str:
        """The SFTP server's request log (servers started with ``sftp_log``)."""
        p = self.dir / "sftp.log"
        return p.read_text(errors="replace") if p.exists() else ""


@dataclass
class Servers:
    dir: Path
    client_key: Path
    known_hosts: Path  # every server's line
    servers: List[Server] = field(default_factory=list)

    def __getitem__(self, i: int) -> Server:
        return self.servers[i]

    def __len__(self) -> int:
        return len(self.servers)

    def __iter__(self) -> Iterator[Server]:
        return iter(self.servers)

    def stop(self) -> None:
        for s in self.servers:
            if s.proc is not None and s.proc.poll() is None:
                s.proc.terminate()
        deadline = time.monotonic() + 5
        for s in self.servers:
            if s.proc is None:
                continue
            try:
                s.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait(5)


def _config(d: Path, port: int, host_key: Path, authorized: Path, sftp_log: Optional[str], shell_rc: bool,
            env: Dict[str, str]) -> str:
    session = {**({} if shell_rc else {"SHLVL": "1"}), **env}
    setenv = " ".join(f"{k}={v}" for k, v in session.items())
    return f"""\
Port {port}
ListenAddress {LOOPBACK}
HostKey {host_key}
AuthorizedKeysFile {authorized}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
UseDNS no
PidFile {d}/sshd.pid
{_subsystem(d, sftp_log)}
LogLevel VERBOSE
MaxStartups 200
MaxSessions 50
{f"SetEnv {setenv}" if setenv else ""}
"""


def _subsystem(d: Path, sftp_log: Optional[str]) -> str:
    if not sftp_log:
        return "Subsystem sftp internal-sftp"
    # the external server, run by the login shell: its request log (stderr) appended to sftp.log
    return f"Subsystem sftp {SFTP_SERVER} -e -l {sftp_log} 2>>{d}/sftp.log"


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, so no sshd outlives a killed pytest."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5) as s:
            s.settimeout(0.5)
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def _check_configs(servers: List[Server]) -> None:
    procs: List[Tuple[Server, subprocess.Popen[bytes]]] = [
        (s, subprocess.Popen([SSHD, "-t", "-f", str(s.config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        for s in servers]
    for s, p in procs:
        out, _ = p.communicate(timeout=30)
        if p.returncode != 0:
            raise RuntimeError(f"sshd -t -f {s.config} failed: {out.decode(errors='replace').strip()}")


def start(n: int, where: Path, timeout: float = 20.0, sftp_log: Optional[str] = None,
          shell_rc: bool = False, env: Optional[Dict[str, str]] = None) -> Servers:
    """Start ``n`` sshd servers under directory ``where`` (created); stop them with ``.stop()``.
    ``sftp_log`` (``DEBUG3``...) makes the SFTP server log each request into the server's log;
    ``shell_rc`` lets commands read the login user's ``~/.bashrc`` (see the module docstring);
    ``env`` is set for every session (``SetEnv``: e.g. a ``PATH`` without find and tar)."""
    why = available()
    if why:
        raise RuntimeError(why)
    os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
    where.mkdir(parents=True, exist_ok=True)
    client_key = where / "client_ed25519"
    client_pub = keypair(client_key, "kubecert-test-client")
    authorized = where / "authorized_keys"
    authorized.write_text(client_pub + "\n")
    group = Servers(where, client_key, where / "known_hosts")
    for i, port in enumerate(free_ports(n)):
        d = where / f"sshd-{i}"
        d.mkdir()
        host_key_path = d / "ssh_host_ed25519_key"
        host_key = keypair(host_key_path, f"sshd-{i}")
        server = Server(d, port, " ".join(host_key.split()[:2]), host_key_path, client_key, group.known_hosts,
                        d / "sshd.log")
        server.config.write_text(_config(d, port, host_key_path, authorized, sftp_log, shell_rc, env or {}))
        group.servers.append(server)
    group.known_hosts.write_text("".join(known_hosts_line(s.port, s.host_key) + "\n" for s in group))
    group.known_hosts.chmod(0o600)
    _check_configs(group.servers[:1] if n > 1 else group.servers)  # the configs differ only in paths and port
    try:
        for s in group:
            s.proc = subprocess.Popen([SSHD, "-D", "-f", str(s.config), "-E", str(s.log)], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        pending = list(group)
        while pending:
            for s in list(pending):
                assert s.proc is not None
                if s.proc.poll() is not None:
                    raise RuntimeError(f"sshd on port {s.port} exited with {s.proc.returncode}: {s.log_text()[-500:]}")
                if _accepts(s.port):
                    pending.remove(s)
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} sshd server(s) not accepting after {timeout:.0f}s "
                                   f"(port {pending[0].port}: {pending[0].log_text()[-300:]})")
            if pending:
                time.sleep(0.05)
    except BaseException:
        group.stop()
        raise
    return group


@contextlib.contextmanager
def start_sshds(n: int, where: Path, sftp_log: Optional[str] = None, shell_rc: bool = False,
                env: Optional[Dict[str, str]] = None) -> Iterator[Servers]:
    """``with start_sshds(n, dir) as servers:`` — N running servers, all killed on leaving."""
    group = start(n, where, sftp_log=sftp_log, shell_rc=shell_rc, env=env)
    try:
        yield group
    finally:
        group.stop()


def remove(where: Path) -> None:
    shutil.rmtree(where, ignore_errors=True)
