"""The SSH transport: one connection per node, host keys checked, commands run, files over SFTP.

kubecert runs on the operator's machine and needs nothing on the nodes but sshd. A
:class:`Connection` connects to one :class:`~kubecert.remote.hosts.Host` (through its jump host if
it has one), verifies the host key against ``known_hosts``, runs commands (:meth:`Connection.run`,
a :data:`kubecert.node.runtime.Runner`) and hands out the node's file system
(:meth:`Connection.fs`, an :class:`~kubecert.remote.sftpfs.SFTPFS` with LocalFS semantics; for a
read-only pass :meth:`Connection.prefetched_fs`, the same served from a
:mod:`~kubecert.remote.snapshot` taken by one remote command).

All connections are driven by the one asyncio event loop of :mod:`kubecert.remote.loop`, in a daemon
thread started on first use; the synchronous methods submit coroutines to it and wait with a
timeout, so many connections can be used at once from a thread pool.

Host keys: a host absent from ``known_hosts`` is refused unless ``accept_new`` (then its key is
appended, the file created 0600); a host whose key differs from the recorded one is always refused.
Nothing here logs or puts into an exception text anything read from a node or from a key file.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shlex
import threading
import time
import weakref
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple

import asyncssh

from ..node.runtime import CommandResult
from . import snapshot
from .loop import DEFAULT_OP_TIMEOUT, TransportError, call, reason, started_here
from .sftpfs import SFTPFS, node_root

__all__ = ["DEFAULT_OP_TIMEOUT", "Connection", "HostLike", "TransportError", "call"]

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
PREFETCH_TIMEOUT = 60.0  # the one command that reads a node's PKI for a read-only pass
# AES-GCM first: hardware-accelerated, and the cheapest per packet in asyncssh (many small SFTP requests)
ENCRYPTION_ALGS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
                   "aes128-ctr", "aes192-ctr", "aes256-ctr")
OUTPUT_LIMIT = 4000  # characters of stdout / stderr kept, as runtime.run
KILL_AFTER = 5.0  # seconds from the TERM to the KILL of a command past its timeout
# where distributions put the SFTP server binary (started through sudo when the host needs sudo)
SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/lib/ssh/sftp-server",
                "/usr/libexec/sftp-server", "/usr/lib/sftp-server")


class HostLike(Protocol):
    """The shape of :class:`kubecert.remote.hosts.Host` that the transport reads."""

    @property
    def name(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def user(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def key(self) -> Optional[str]: ...
    @property
    def jump(self) -> Optional[str]: ...
    @property
    def sudo(self) -> bool: ...
    @property
    def root(self) -> str: ...


_open_connections: weakref.WeakSet[Connection] = weakref.WeakSet()


@atexit.register
def _close_all_at_exit() -> None:
    """Close what is still open when the program ends (sshd sees a clean disconnect)."""
    if not started_here():
        return
    for conn in list(_open_connections):
        try:
            conn.close(timeout=2.0)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


# --------------------------------------------------------------------------------------------------
# known_hosts


def _fingerprint(key: asyncssh.SSHKey) -> str:
    return f"{key.get_algorithm()} {key.get_fingerprint('sha256')}"


def _host_pattern(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


class _KnownHosts:
    """One known_hosts file, re-read when it changes; used from the loop thread only."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: Optional[Tuple[int, int, int]] = None
        self._parsed: Optional[asyncssh.SSHKnownHosts] = None

    def load(self) -> Optional[asyncssh.SSHKnownHosts]:
        """The parsed file; None when it does not exist."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._parsed = None, None
            return None
        except OSError as exc:
            raise TransportError(f"{self.path}: cannot read known_hosts ({exc.strerror})") from None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                self._parsed = asyncssh.read_known_hosts(self.path)
            except (OSError, ValueError, asyncssh.KeyImportError) as exc:
                raise TransportError(f"{self.path}: cannot parse known_hosts ({exc})") from None
            self._stamp = stamp
        return self._parsed

    def asyncssh_arg(self) -> Any:
        """What to hand asyncssh as ``known_hosts`` (never None: that would disable checking)."""
        parsed = self.load()
        return parsed if parsed is not None else ([], [], [])

    def recorded(self, host: str, addr: str, port: int) -> List[asyncssh.SSHKey]:
        """Host keys and CA keys recorded for ``host``."""
        parsed = self.load()
        if parsed is None:
            return []
        trusted, cas = parsed.match(host, addr, None if port == 22 else port)[:2]
        return list(trusted) + list(cas)

    def add(self, host: str, port: int, key: asyncssh.SSHKey) -> None:
        """Append ``key`` for ``host`` (creating the file 0600 and its directory 0700)."""
        line = f"{_host_pattern(host, port)} {' '.join(key.export_public_key('openssh').decode().split()[:2])}\n"
        directory = os.path.dirname(self.path)
        try:
            if directory and not os.path.isdir(directory):
                os.makedirs(directory, mode=0o700, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size:
                    with open(self.path, "rb") as fh:
                        fh.seek(size - 1)
                        if fh.read(1) != b"\n":
                            line = "\n" + line
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            raise TransportError(f"{self.path}: cannot record the host key of {host} ({exc.strerror})") from None
        self._stamp = None


_known_hosts_files: Dict[str, _KnownHosts] = {}


def _known_hosts_file(path: str) -> _KnownHosts:
    kh = _known_hosts_files.get(path)
    if kh is None:
        kh = _known_hosts_files[path] = _KnownHosts(path)
    return kh


@dataclass
class _Verdict:
    """Why a host key was refused, for the error message."""

    message: Optional[str] = None


class _Client(asyncssh.SSHClient):
    """Decides on host keys that known_hosts does not vouch for: unknown or changed."""

    def __init__(self, kh: _KnownHosts, accept_new: bool, label: str, verdict: _Verdict) -> None:
        self._kh = kh
        self._accept_new = accept_new
        self._label = label
        self._verdict = verdict

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        try:
            recorded = self._kh.recorded(host, addr, port)
            if recorded:
                if key in recorded:  # appended by a concurrent connection since this one started
                    return True
                self._verdict.message = (
                    f"host key for {self._label} CHANGED — possible man-in-the-middle; the server offers "
                    f"{_fingerprint(key)}, {self._kh.path} has another key for it. If the host was reinstalled, "
                    f"verify the new key, then: ssh-keygen -R '{_host_pattern(host, port)}' -f {self._kh.path}")
                return False
            if not self._accept_new:
                self._verdict.message = (
                    f"{self._label}: host key not in {self._kh.path}; verify it, then re-run with "
                    f"--accept-new-host-keys (the server offers {_fingerprint(key)})")
                return False
            self._kh.add(host, port, key)
            return True
        except TransportError as exc:
            self._verdict.message = str(exc)
            return False


# --------------------------------------------------------------------------------------------------
# client keys (held in memory, loaded once per file)

_client_keys: Dict[Tuple[str, int, int], Any] = {}


def _client_key(path: str, label: str) -> Any:
    full = os.path.expanduser(path)
    try:
        st = os.stat(full)
    except OSError as exc:
        raise TransportError(f"{label}: cannot read key {path} ({exc.strerror})") from None
    cache_key = (full, st.st_ino, st.st_mtime_ns)
    keys = _client_keys.get(cache_key)
    if keys is None:
        try:
            keys = asyncssh.load_keypairs([full])
        except (asyncssh.KeyEncryptionError, asyncssh.KeyImportError) as exc:
            if isinstance(exc, asyncssh.KeyEncryptionError) or "assphrase" in str(exc):
                raise TransportError(f"{label}: key {path} is passphrase-protected; load it into ssh-agent and "
                                     "leave the host's key unset") from None
            raise TransportError(f"{label}: cannot load key {path} ({exc})") from None
        except (OSError, ValueError) as exc:
            # asyncssh's messages name the problem, never the key's bytes
            raise TransportError(f"{label}: cannot load key {path} ({exc})") from None
        _client_keys[cache_key] = keys
    return keys


# --------------------------------------------------------------------------------------------------
# jump hosts: one shared tunnel connection per (jump host, credentials), reference counted


@dataclass(frozen=True)
class _JumpSpec:
    user: str
    address: str
    port: int

    @classmethod
    def parse(cls, spec: str, default_user: str) -> _JumpSpec:
        user, _, hostport = spec.rpartition("@")
        if hostport.startswith("["):  # [v6addr]:port
            address, _, rest = hostport[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        elif hostport.count(":") == 1:
            address, _, port = hostport.partition(":")
        else:
            address, port = hostport, ""
        if not address or (port and not port.isdigit()):
            raise TransportError(f"jump host {spec!r}: expected [user@]host[:port]")
        return cls(user or default_user, address, int(port) if port else 22)


@dataclass
class _Tunnel:
    conn: Optional[asyncssh.SSHClientConnection] = None
    users: int = 0
    ready: Optional[asyncio.Future[asyncssh.SSHClientConnection]] = None


_tunnels: Dict[Tuple[Any, ...], _Tunnel] = {}


# --------------------------------------------------------------------------------------------------
# the persistent shell that syncs directories (SFTP has no directory fsync)


@dataclass
class _DirSyncer:
    """``sync DIR`` through one long-lived ``sh`` per connection: the durability of renames, as
    LocalFS's directory fsync, without a new SSH session per sync. Best effort: if the shell cannot
    run, syncing stops silently (the file data itself is always fsynced through SFTP)."""

    conn: asyncssh.SSHClientConnection
    sudo: bool
    timeout: float = 30.0
    proc: Optional[asyncssh.SSHClientProcess[bytes]] = None
    broken: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def sync(self, directory: str) -> None:
        if self.broken:
            return
        async with self.lock:
            try:
                if self.proc is None:
                    self.proc = await self.conn.create_process(("sudo -n " if self.sudo else "") + "sh -s",
                                                               encoding=None, stderr=asyncssh.DEVNULL)
                self.proc.stdin.write(f"sync -- {shlex.quote(directory)} >/dev/null 2>&1; echo kubecert-synced\n"
                                      .encode())
                line = await asyncio.wait_for(self.proc.stdout.readline(), self.timeout)
                if line != b"kubecert-synced\n":
                    raise OSError("directory sync shell ended")
            except (OSError, asyncio.TimeoutError, asyncssh.Error):
                self.broken = True
                self.close()

    def close(self) -> None:
        if self.proc is not None:
            self.proc.close()
            self.proc = None


# --------------------------------------------------------------------------------------------------
# the connection


class Connection:
    """One SSH connection to one host: :meth:`run` commands, :meth:`fs` for its files."""

    def __init__(self, host: HostLike, *, known_hosts: Optional[str] = None, accept_new: bool = False,
                 connect_timeout: float = 10.0) -> None:
        self.host = host
        self.known_hosts = os.path.expanduser(known_hosts or DEFAULT_KNOWN_HOSTS)
        self.accept_new = accept_new
        self.connect_timeout = connect_timeout
        self.op_timeout = DEFAULT_OP_TIMEOUT
        self.label = f"{host.name} ({host.address}:{host.port})"
        self._conn: Optional[asyncssh.SSHClientConnection] = None
        self._tunnel_key: Optional[Tuple[Any, ...]] = None
        self._fs: Optional[SFTPFS] = None
        self._sftp: Optional[asyncssh.SFTPClient] = None
        self._sftp_start: Optional[asyncio.Future[Tuple[asyncssh.SFTPClient, _DirSyncer]]] = None
        self._syncer: Optional[_DirSyncer] = None
        self._uid: Optional[int] = None
        self._lock = threading.Lock()  # open() / fs() / close() from several threads

    # -- lifecycle ---------------------------------------------------------------------------------
    def open(self) -> Connection:
        """Connect (through ``host.jump`` if set), verify the host key, authenticate."""
        with self._lock:
            if self._conn is None:
                hops = 2 if self.host.jump else 1
                self._conn = call(self._open(), self.connect_timeout * hops + 5, self.label)
                _open_connections.add(self)
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Close the SFTP session, the connection and (when its last user goes) the jump tunnel."""
        with self._lock:
            if self._conn is None and self._tunnel_key is None:
                return
            try:
                call(self._close(), timeout, self.label)
            except TransportError:
                pass
            finally:
                self._conn = None
                self._fs = None
                self._sftp_start = None
                _open_connections.discard(self)

    def __enter__(self) -> Connection:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Connection {self.label} {'open' if self._conn is not None else 'closed'}>"

    # -- commands ----------------------------------------------------------------------------------
    def command_line(self, argv: Sequence[str], shell: bool = False, timeout: Optional[float] = None) -> str:
        """The command line sent to the host: ``argv`` shell-quoted (``argv[0]`` run by ``sh -c`` when
        ``shell``), behind ``sudo -n`` when the host needs sudo. With ``timeout`` it runs under the
        node's ``timeout`` (TERM, then KILL :data:`KILL_AFTER` s later), so that a command past its
        time is stopped on the node and not only abandoned: sshd does not deliver the SSH "signal"
        request in every configuration, and closing the channel does not stop a command without a
        terminal. A node without ``timeout`` runs the command as is."""
        words = ["sh", "-c", argv[0]] if shell else list(argv)
        line = " ".join(shlex.quote(a) for a in words)
        if timeout is not None:
            guard = (f'command -v timeout >/dev/null 2>&1 && exec timeout -k {KILL_AFTER:g} {max(timeout, 0.001):.3f} '
                     '"$@"; exec "$@"')
            line = f"sh -c {shlex.quote(guard)} kubecert-run {line}"
        return f"sudo -n -- {line}" if self.host.sudo else line

    def run(self, argv: Sequence[str], timeout: float, shell: bool = False) -> CommandResult:
        """Run one command on the host with a timeout (a :data:`~kubecert.node.runtime.Runner`): exit
        status, stdout and stderr captured; a timeout gives returncode -1 as ``runtime.run`` (and the
        command is killed on the node); a lost connection gives 255 as ``ssh`` does. Raises only when
        the connection was never opened."""
        conn = self._require()
        start = time.monotonic()
        line = self.command_line(argv, shell, timeout)
        try:
            return call(self._run(conn, argv, line, timeout, start), timeout + KILL_AFTER + 30, self.label)
        except TransportError as exc:
            return CommandResult(tuple(argv), 255, "", f"ssh: {exc}", time.monotonic() - start)

    # -- ports -------------------------------------------------------------------------------------
    def forward(self, host: str, port: int) -> Tuple[str, int]:
        """A local port on 127.0.0.1 forwarded through this connection to ``host:port`` as the node
        sees it (SSH direct-tcpip, as ``ssh -L``): how the operator's machine reaches what a node
        serves on its own loopback only, e.g. the kubelet's healthz. Open until :meth:`close`."""
        conn = self._require()
        what = f"{self.label}: forward to {host}:{port}"

        async def listen() -> int:
            try:
                listener = await conn.forward_local_port("127.0.0.1", 0, host, port)
            except (OSError, asyncssh.Error) as exc:
                raise TransportError(f"{what}: {reason(exc)}") from None
            # sshd says only when a channel is opened whether it forwards at all: ask once, now
            try:
                _, writer = await conn.open_connection(host, port)
                writer.close()
            except asyncssh.ChannelOpenError as exc:
                if exc.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED:
                    listener.close()
                    raise TransportError(f"{what}: sshd refuses port forwarding (AllowTcpForwarding); kubecert "
                                         "reaches the kubelet's healthz on the node's loopback that way") from None
            except OSError:
                pass  # nobody listening there yet: the gate will tell
            return int(listener.get_port())

        return "127.0.0.1", call(listen(), self.connect_timeout + 5, what)

    # -- files -------------------------------------------------------------------------------------
    def fs(self) -> SFTPFS:
        """The host's file system under ``host.root`` over SFTP (started on first use)."""
        with self._lock:
            if self._fs is None:
                self._require()
                uid = self._remote_uid()
                sftp = call(self._session(), self.connect_timeout + 30, self.label)
                fs = SFTPFS(sftp, root=self.host.root, name=self.host.name, dir_sync=self._dir_sync,
                            timeout=self.op_timeout, uid=uid)
                fs.check_root()
                self._fs = fs
            return self._fs

    def prefetched_fs(self, plan: snapshot.Plan = snapshot.PLAN) -> SFTPFS:
        """The host's file system for a read-only pass (``cluster check``): ``plan``'s files (the
        node's PKI, kubeconfigs, manifests, kubelet config) read first by one remote command
        (:mod:`kubecert.remote.snapshot`; through ``sudo -n`` on sudo hosts) and served from that
        snapshot, with SFTP started only for what it does not cover; the first write drops it.
        Without GNU find and tar on the node (or on any failure of that command): :meth:`fs`."""
        conn = self._require()
        uid = self._remote_uid()
        root = node_root(self.host.root, self.host.name)
        # no ``timeout`` guard (two processes less on every node): find and tar die of SIGPIPE when
        # the channel is closed at our timeout, and a node stuck in the kernel would ignore it anyway
        command = self.command_line(["sh", "-c", snapshot.script(plan), "kubecert-prefetch", root])
        try:
            output = call(self._prefetch(conn, command, plan.total_max), PREFETCH_TIMEOUT, self.label)
        except TransportError:  # too slow: SFTP may still do (and says so if the link is gone)
            output = None
        snap = None
        if output is not None:
            try:
                snap = snapshot.parse(output, root, plan)
            except snapshot.SnapshotError:
                snap = None
        if snap is None:
            return self.fs()
        fs = SFTPFS(self._session, root=root, name=self.host.name, dir_sync=self._dir_sync,
                    timeout=self.op_timeout, uid=uid, snapshot=snap)
        fs.check_root()
        return fs

    def _remote_uid(self) -> int:
        """The uid the SFTP server runs as: root through sudo or as root, else ``id -u`` (once);
        -1 when unknown (then only root's directories count as safe to follow links in)."""
        if self.host.sudo or self.host.user == "root":
            return 0
        if self._uid is None:
            r = self.run(["id", "-u"], 30)
            self._uid = int(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip().isdigit() else -1
        return self._uid

    # -- internals (run on the loop) ---------------------------------------------------------------
    def _require(self) -> asyncssh.SSHClientConnection:
        if self._conn is None:
            raise TransportError(f"{self.label}: not connected (call open() first)")
        return self._conn

    async def _open(self) -> asyncssh.SSHClientConnection:
        try:
            tunnel = await self._acquire_tunnel(self.host.jump) if self.host.jump else None
            return await self._connect(self.host.address, self.host.port, self.host.user, self.label, tunnel)
        except BaseException:
            await self._release_tunnel()
            raise

    async def _connect(self, address: str, port: int, user: str, label: str,
                       tunnel: Optional[asyncssh.SSHClientConnection]) -> asyncssh.SSHClientConnection:
        kh = _known_hosts_file(self.known_hosts)
        verdict = _Verdict()
        options: Dict[str, Any] = {
            "port": port, "username": user, "known_hosts": kh.asyncssh_arg(),
            "client_factory": lambda: _Client(kh, self.accept_new, label, verdict),
            "config": None,  # the inventory says how to reach a node, not ~/.ssh/config
            "connect_timeout": self.connect_timeout, "agent_forwarding": False,
            "keepalive_interval": 30, "keepalive_count_max": 3,
            "encryption_algs": ENCRYPTION_ALGS,
        }
        if self.host.key:
            options["client_keys"] = _client_key(self.host.key, label)
        if tunnel is not None:
            options["tunnel"] = tunnel
        try:
            return await asyncssh.connect(address, **options)
        except asyncssh.HostKeyNotVerifiable as exc:
            raise TransportError(verdict.message or f"{label}: host key not accepted ({exc.reason})") from None
        except asyncssh.PermissionDenied:
            how = f"key {self.host.key}" if self.host.key else "the default keys and ssh-agent"
            raise TransportError(f"{label}: authentication as {user} failed with {how}") from None
        except asyncssh.KeyExchangeFailed as exc:
            if kh.recorded(address, address, port):
                raise TransportError(f"host key for {label} CHANGED — possible man-in-the-middle; the server offers "
                                     f"none of the key types {self.known_hosts} has for it ({exc.reason})") from None
            raise TransportError(f"{label}: key exchange failed ({exc.reason})") from None
        except asyncssh.ChannelOpenError as exc:
            raise TransportError(f"{label}: the jump host {self.host.jump} cannot reach it ({exc.reason})") from None
        except asyncssh.DisconnectError as exc:
            raise TransportError(f"{label}: disconnected ({exc.reason})") from None
        except asyncio.TimeoutError:
            raise TransportError(f"{label}: no SSH session within {self.connect_timeout:.0f}s") from None
        except ConnectionRefusedError:
            raise TransportError(f"{label}: connection refused (is sshd running on port {port}?)") from None
        except OSError as exc:
            raise TransportError(f"{label}: cannot connect ({exc.strerror or exc})") from None

    def _tunnel_id(self, jump: _JumpSpec) -> Tuple[Any, ...]:
        return (jump, self.host.key, self.known_hosts, self.accept_new)

    async def _acquire_tunnel(self, spec: str) -> asyncssh.SSHClientConnection:
        jump = _JumpSpec.parse(spec, self.host.user)
        key = self._tunnel_id(jump)
        entry = _tunnels.setdefault(key, _Tunnel())
        entry.users += 1
        self._tunnel_key = key
        if entry.conn is not None and not entry.conn.is_closed():
            return entry.conn
        if entry.ready is None or entry.ready.done():
            entry.ready = asyncio.get_running_loop().create_future()
            ready = entry.ready
            label = f"jump host {jump.address}:{jump.port} for {self.host.name}"
            try:
                entry.conn = await self._connect(jump.address, jump.port, jump.user, label, None)
                ready.set_result(entry.conn)
            except BaseException as exc:
                ready.set_exception(exc)
                ready.exception()  # retrieved: no "never retrieved" warning when nobody else waits
                raise
            return entry.conn
        return await asyncio.shield(entry.ready)

    async def _release_tunnel(self) -> None:
        key, self._tunnel_key = self._tunnel_key, None
        if key is None:
            return
        entry = _tunnels.get(key)
        if entry is None:
            return
        entry.users -= 1
        if entry.users <= 0:
            _tunnels.pop(key, None)
            if entry.conn is not None:
                entry.conn.close()
                await entry.conn.wait_closed()

    async def _close(self) -> None:
        if self._sftp_start is not None and not self._sftp_start.done():
            self._sftp_start.cancel()
        self._sftp_start = None
        if self._syncer is not None:
            self._syncer.close()
            self._syncer = None
        if self._sftp is not None:
            self._sftp.exit()
            self._sftp = None
        if self._conn is not None:
            self._conn.close()
            await self._conn.wait_closed()
        await self._release_tunnel()

    async def _session(self) -> asyncssh.SFTPClient:
        """The connection's one SFTP session (and directory syncer), started on first need."""
        if self._sftp is not None:
            return self._sftp
        if self._sftp_start is None:
            self._sftp_start = asyncio.ensure_future(self._start_sftp(self._require()))
        start = self._sftp_start
        try:
            sftp, syncer = await asyncio.shield(start)
        except BaseException:
            if start.done() and self._sftp_start is start:
                self._sftp_start = None  # failed: the next use tries again
            raise
        self._sftp, self._syncer = sftp, syncer
        return sftp

    async def _dir_sync(self, directory: str) -> None:
        if self._syncer is not None:
            await self._syncer.sync(directory)

    async def _start_sftp(self, conn: asyncssh.SSHClientConnection) -> Tuple[asyncssh.SFTPClient, _DirSyncer]:
        # made on the loop: its asyncio.Lock must belong to it (Python 3.9 binds locks at creation)
        return await self._sftp_client(conn), _DirSyncer(conn, self.host.sudo)

    async def _prefetch(self, conn: asyncssh.SSHClientConnection, command: str, cap: int) -> Optional[bytes]:
        """The output of the prefetch command; None if it failed or wrote more than ``cap`` bytes."""
        try:
            proc = await conn.create_process(command, stdin=asyncssh.DEVNULL, stderr=asyncssh.DEVNULL,
                                             encoding=None)
        except (asyncssh.Error, OSError):
            return None
        try:
            chunks: List[bytes] = []
            total = 0
            while True:
                data = await proc.stdout.read(1 << 16)
                if not data:
                    break
                total += len(data)
                if total > cap:
                    return None
                chunks.append(data)
            done = await proc.wait(timeout=KILL_AFTER + 5)
            return b"".join(chunks) if done.exit_status == 0 else None
        except (asyncssh.Error, OSError, asyncio.TimeoutError):
            return None
        finally:
            proc.close()

    async def _sftp_client(self, conn: asyncssh.SSHClientConnection) -> asyncssh.SFTPClient:
        try:
            if not self.host.sudo:
                return await conn.start_sftp_client()
            # the sftp subsystem runs as the login user: for sudo hosts, start the server binary through
            # sudo on a plain exec channel and speak SFTP over it
            find = "; ".join(f'[ -x {p} ] && exec {p}' for p in SFTP_SERVERS)
            command = f"sudo -n -- sh -c {shlex.quote(find + '; echo kubecert: no sftp-server found >&2; exit 127')}"
            writer, reader, _ = await conn.open_session(command=command, encoding=None)
            from asyncssh.sftp import start_sftp_client

            return await start_sftp_client(conn, asyncio.get_running_loop(), "strict", reader, writer,
                                           "utf-8", "strict", 3)
        except (asyncssh.Error, OSError) as exc:
            how = " through sudo -n" if self.host.sudo else ""
            raise TransportError(f"{self.label}: cannot start SFTP{how} ({reason(exc)})") from None

    async def _run(self, conn: asyncssh.SSHClientConnection, argv: Sequence[str], command: str, timeout: float,
                   start: float) -> CommandResult:
        try:
            proc = await conn.create_process(command, stdin=asyncssh.DEVNULL, encoding=None)
        except (asyncssh.Error, OSError) as exc:
            what = "connection lost" if conn.is_closed() else "cannot start the command"
            return CommandResult(tuple(argv), 255, "", f"ssh: {self.label}: {what} ({reason(exc)})",
                                 time.monotonic() - start)
        timed_out = CommandResult(tuple(argv), -1, "", f"timed out after {timeout:.0f}s", 0.0)
        try:
            # the node's ``timeout`` stops the command at ``timeout`` (KILL_AFTER later at worst); past
            # that the node or the link is stuck: stop waiting
            done = await proc.wait(timeout=timeout + KILL_AFTER + 5)
        except asyncssh.TimeoutError as exc:
            proc.close()
            return replace(timed_out, stdout=_text(exc.stdout)[-OUTPUT_LIMIT:], seconds=time.monotonic() - start)
        except (asyncssh.Error, OSError) as exc:
            proc.close()
            return CommandResult(tuple(argv), 255, "", f"ssh: {self.label}: connection lost ({reason(exc)})",
                                 time.monotonic() - start)
        seconds = time.monotonic() - start
        code = done.returncode
        stdout, stderr = _text(done.stdout)[-OUTPUT_LIMIT:], _text(done.stderr)
        if code in (124, 128 + 9) and seconds >= timeout * 0.99:  # timeout(1): TERM worked / KILL was needed
            return replace(timed_out, stdout=stdout, seconds=seconds)
        if code is None:  # no exit status or signal: the channel closed under the command
            code, stderr = 255, stderr + f"ssh: {self.label}: connection lost"
        return CommandResult(tuple(argv), code, stdout, stderr[-OUTPUT_LIMIT:], seconds)


def _text(data: object) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data if isinstance(data, str) else ""
