"""The SSH transport against real OpenSSH servers on 127.0.0.1 (``tests/sshd.py``; no mocks).

* :class:`Connection`: open/close, commands (exit status, stdout, stderr, quoting, timeout that
  kills the command on the node), host keys (unknown refused, ``accept_new`` records it, a changed key
  refused even then), authentication and connection failures as one line, a jump host shared by
  the hosts behind it, ``sudo`` hosts;
* :class:`SFTPFS`: atomic writes (temp file created exclusively, mode, owner, fsync, posix rename,
  as the SFTP server's own request log shows), symlinks, chroot-like resolution (absolute links
  inside the root, ``..`` escaping it refused), the lock, error messages;
* kubecert's own code over it: ``scan`` gives the same report as over LocalFS; ``renew`` renews
  (``kubecert check`` exit 0, ``openssl verify``); a renewal interrupted part-way and then
  ``recover``-ed over SFTP leaves the node all-old;
* many connections at once from a thread pool, on the one shared event loop.

No private key material may appear in any log record or exception text (checked after every test).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import json
import logging
import os
import random
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

import sshd
from kubecert import inventory, renew
from kubecert.errors import StoreError
from kubecert.remote.sftpfs import SFTPFS
from kubecert.remote.ssh import Connection, TransportError
from kubecert.store import txn
from kubecert.store.fs import LocalFS, LockHeld
from treeutil import copy_tree, diff, key_leaks, node_state, private_keys_under, run_kubecert, strays

try:
    from kubecert.remote.hosts import Host
except ImportError:  # the inventory module lands separately; the transport needs only this shape
    @dataclasses.dataclass(frozen=True)
    class Host:  # type: ignore[no-redef]
        name: str
        address: str
        role: str
        user: str = "root"
        port: int = 22
        key: Optional[str] = None
        jump: Optional[str] = None
        sudo: bool = False
        root: str = "/"

pytestmark = pytest.mark.skipif(sshd.available() is not None, reason=str(sshd.available()))

NOW = "2026-11-30T00:00:00Z"
NOW_DT = dt.datetime(2026, 11, 30, tzinfo=dt.timezone.utc)
NODE = "master-1"
HOSTNAME = socket.gethostname()


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sshd.Servers]:
    with sshd.start_sshds(3, tmp_path_factory.mktemp("sshd")) as group:
        yield group


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sshd.Server]:
    """A server whose SFTP server logs every request (to check what write_atomic sends)."""
    with sshd.start_sshds(1, tmp_path_factory.mktemp("sshd-logged"), sftp_log="DEBUG3") as group:
        yield group[0]


@pytest.fixture(scope="module")
def labs(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    base = tmp_path_factory.mktemp("labs")
    out = {}
    for name, extra in (("healthy", []), ("expiring", ["--expires-in", "3d"])):
        proc = run_kubecert("lab", "create", str(base / name), "--nodes", "1", "--key-type", "ecdsa", "--now", NOW,
                            *extra)
        assert proc.returncode == 0, proc.stderr
        out[name] = base / name / NODE
    return out


@pytest.fixture
def said(caplog: pytest.LogCaptureFixture, tmp_path: Path, servers: sshd.Servers,
         labs: Dict[str, Path]) -> Iterator[List[str]]:
    """Texts the transport produced (exception messages, command output); at teardown these and
    every log record (asyncssh's included, at DEBUG) are checked for private key material."""
    caplog.set_level(logging.DEBUG)
    texts: List[str] = []
    yield texts
    keys = private_keys_under(tmp_path, servers.dir, labs["healthy"].parent, labs["expiring"].parent)
    assert keys, "no private keys found to check against"
    leaks = key_leaks(texts + [caplog.text], keys)
    assert not leaks, f"private key material in logs or exception texts: {leaks}"


def host(server: sshd.Server, name: str = "node-1", **kw: Any) -> Host:
    return Host(name, "127.0.0.1", "control-plane", port=server.port, key=str(server.client_key), **kw)


def connect(server: sshd.Server, name: str = "node-1", **kw: Any) -> Connection:
    return Connection(host(server, name, **kw), known_hosts=str(server.known_hosts)).open()


def refusal(said: List[str], exc_type: type, fn: Any, *needles: str) -> str:
    """``fn()`` raises ``exc_type`` with a one-line message holding every needle; the message."""
    with pytest.raises(exc_type) as info:
        fn()
    message = str(info.value)
    said.append(message)
    assert "\n" not in message, message
    for n in needles:
        assert n in message, f"{n!r} not in {message!r}"
    return message


def node_tree(tmp_path: Path) -> Path:
    root = tmp_path / "node"
    root.mkdir()
    return root


# --- connection, commands -------------------------------------------------------------------------

def test_open_run_close(servers: sshd.Servers, said: List[str]) -> None:
    conn = connect(servers[0])
    assert conn.open() is conn  # opening twice is a no-op
    r = conn.run(["sh", "-c", "echo out; echo err >&2; exit 3"], 10)
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    assert r.argv == ("sh", "-c", "echo out; echo err >&2; exit 3")
    r = conn.run(["printf", "%s|", "a b", "it's", "$HOME", "*", ""], 10)  # each word reaches the command as is
    assert (r.returncode, r.stdout) == (0, "a b|it's|$HOME|*||")
    r = conn.run(["echo $((6 * 7)) >&2; false"], 10, shell=True)
    assert (r.returncode, r.stderr) == (1, "42\n")
    r = conn.run(["/nonexistent/binary"], 10)
    assert r.returncode == 127, r
    said.extend([r.stdout, r.stderr])
    conn.close()
    conn.close()  # idempotent
    refusal(said, TransportError, lambda: conn.run(["true"], 5), "node-1 (127.0.0.1:", "not connected")
    with Connection(host(servers[0]), known_hosts=str(servers[0].known_hosts)) as again:
        assert again.run(["true"], 10).returncode == 0


def test_run_timeout_kills_the_command_on_the_node(servers: sshd.Servers, said: List[str]) -> None:
    marker = f"{os.getpid() % 1000 + 4000}.25"  # an unusual sleep argument to find the process by
    with connect(servers[0]) as conn:
        start = time.monotonic()
        r = conn.run(["sh", "-c", f"echo started; sleep {marker}"], 1)
        assert r.returncode == -1 and "timed out after 1s" in r.stderr, r
        assert r.stdout == "started\n"  # output before the timeout is kept
        assert time.monotonic() - start < 5
        deadline = time.monotonic() + 5
        while subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "the timed-out command is still running on the node"
            time.sleep(0.1)
        assert conn.run(["true"], 10).returncode == 0  # the connection is still usable


# --- host keys, authentication --------------------------------------------------------------------

def test_unknown_host_key_refused_then_accepted_and_recorded(servers: sshd.Servers, tmp_path: Path,
                                                             said: List[str]) -> None:
    s = servers[0]
    kh = tmp_path / "ssh" / "known_hosts"
    h = host(s)
    message = refusal(said, TransportError, lambda: Connection(h, known_hosts=str(kh)).open(),
                      f"node-1 (127.0.0.1:{s.port}): host key not in {kh}; verify it, then re-run with "
                      "--accept-new-host-keys", "SHA256:")
    assert not kh.exists(), "a refused key must not be recorded"
    assert "PRIVATE" not in message
    with Connection(h, known_hosts=str(kh), accept_new=True) as conn:
        assert conn.run(["true"], 10).returncode == 0
    assert kh.read_text() == s.known_hosts_line() + "\n"
    assert kh.stat().st_mode & 0o777 == 0o600
    with Connection(h, known_hosts=str(kh)) as conn:  # now known: no flag needed
        assert conn.run(["true"], 10).returncode == 0
    # another host is appended to an existing file (even one without a final newline)
    other = tmp_path / "other_known_hosts"
    other.write_text("example.invalid ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFiWmKbPnei2EV0S4f2i/S/Cz8sCikDJQzMmXeXrxW1Q")
    with Connection(host(servers[1]), known_hosts=str(other), accept_new=True):
        pass
    assert other.read_text().splitlines()[1] == servers[1].known_hosts_line()


def test_changed_host_key_refused_even_with_accept_new(servers: sshd.Servers, tmp_path: Path,
                                                       said: List[str]) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{servers[0].port} {servers[1].host_key}\n")  # another server's key
    before = kh.read_text()
    for accept_new in (False, True):
        refusal(said, TransportError,
                lambda a=accept_new: Connection(host(servers[0]), known_hosts=str(kh), accept_new=a).open(),
                f"host key for node-1 (127.0.0.1:{servers[0].port}) CHANGED — possible man-in-the-middle",
                str(kh))
    assert kh.read_text() == before


def test_authentication_and_connection_failures_are_one_line(servers: sshd.Servers, tmp_path: Path,
                                                              said: List[str]) -> None:
    stranger = tmp_path / "stranger_ed25519"
    sshd.keypair(stranger, "not-authorized")
    h = dataclasses.replace(host(servers[0]), key=str(stranger))
    refusal(said, TransportError, lambda: Connection(h, known_hosts=str(servers[0].known_hosts)).open(),
            "node-1 (127.0.0.1:", "authentication as root failed", str(stranger))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    h = dataclasses.replace(host(servers[0]), port=closed)
    refusal(said, TransportError, lambda: Connection(h, known_hosts=str(servers[0].known_hosts)).open(),
            f"node-1 (127.0.0.1:{closed})", "connection refused")
    h = dataclasses.replace(host(servers[0]), key=str(tmp_path / "no-such-key"))
    refusal(said, TransportError, lambda: Connection(h, known_hosts=str(servers[0].known_hosts)).open(),
            "cannot read key", "no-such-key")


def test_passphrase_protected_key_is_refused_with_the_fix(servers: sshd.Servers, tmp_path: Path,
                                                          said: List[str]) -> None:
    locked = tmp_path / "locked_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret-passphrase", "-f", str(locked)], check=True)
    h = dataclasses.replace(host(servers[0]), key=str(locked))
    refusal(said, TransportError, lambda: Connection(h, known_hosts=str(servers[0].known_hosts)).open(),
            f"key {locked} is passphrase-protected; load it into ssh-agent")


def test_lost_connection_is_a_transport_error(tmp_path: Path, said: List[str]) -> None:
    root = node_tree(tmp_path)
    (root / "f").write_text("x")
    with sshd.start_sshds(1, tmp_path / "sshd") as group:
        conn = connect(group[0], root=str(root))
        fs = conn.fs()
        assert fs.read("/f") == b"x"
        assert group[0].proc is not None
        subprocess.run(["pkill", "-KILL", "-P", str(group[0].proc.pid)], check=True)  # the session's sshd
        start = time.monotonic()
        refusal(said, TransportError, lambda: fs.read("/f"), "node-1: connection lost")
        r = conn.run(["true"], 10)
        assert r.returncode == 255 and "connection lost" in r.stderr, r
        said.append(r.stderr)
        conn.close()
        assert time.monotonic() - start < 10


def _accepted(server: sshd.Server) -> int:
    return server.log_text().count("Accepted publickey")


def test_jump_host_tunnel_shared_by_the_hosts_behind_it(servers: sshd.Servers, said: List[str]) -> None:
    jump, target = servers[0], servers[1]
    before_jump, before_target = _accepted(jump), _accepted(target)
    behind = [dataclasses.replace(host(target, f"node-{i}"), jump=spec)
              for i, spec in enumerate([f"root@127.0.0.1:{jump.port}", f"127.0.0.1:{jump.port}"])]
    conns = [Connection(h, known_hosts=str(target.known_hosts)).open() for h in behind]
    try:
        for c in conns:
            r = c.run(["echo", c.host.name], 10)
            assert (r.returncode, r.stdout) == (0, f"{c.host.name}\n")
        fs = conns[0].fs()
        assert fs.exists("/etc/hostname")
    finally:
        for c in conns:
            c.close()
    assert _accepted(target) == before_target + 2
    assert _accepted(jump) == before_jump + 1, "the two hosts behind the jump host should share one tunnel"
    h = dataclasses.replace(host(target), jump="root@127.0.0.1:not-a-port")
    refusal(said, TransportError, lambda: Connection(h, known_hosts=str(target.known_hosts)).open(),
            "expected [user@]host[:port]")


@pytest.mark.skipif(shutil.which("sudo") is None, reason="sudo not installed")
def test_sudo_host_runs_commands_and_sftp_through_sudo(servers: sshd.Servers, tmp_path: Path,
                                                       said: List[str]) -> None:
    root = node_tree(tmp_path)
    (root / "etc").mkdir()
    (root / "etc" / "hello").write_text("hi\n")
    with connect(servers[2], sudo=True, root=str(root)) as conn:
        assert conn.command_line(["id", "-u"]) == "sudo -n -- id -u"
        r = conn.run(["id", "-u"], 10)
        assert (r.returncode, r.stdout) == (0, "0\n")
        fs = conn.fs()
        assert fs.read("/etc/hello") == b"hi\n"
        fs.write_atomic("/etc/new", b"x", 0o600)
    assert (root / "etc" / "new").read_bytes() == b"x"
    assert "Starting session: command" in servers[2].log_text()  # sftp-server started by sudo, not the subsystem


# --- SFTPFS: writes, links, resolution, lock -------------------------------------------------------

def test_write_atomic_mode_owner_fsync_rename(logged: sshd.Server, tmp_path: Path, said: List[str]) -> None:
    root = node_tree(tmp_path)
    outside = tmp_path / "outside"
    outside.write_text("untouched")
    with connect(logged, root=str(root)) as conn:
        fs = conn.fs()
        assert isinstance(fs, SFTPFS) and fs.root == str(root)
        fs.makedirs("/etc/kubernetes/pki", 0o755)
        target = root / "etc/kubernetes/pki/apiserver.crt"
        fs.write_atomic("/etc/kubernetes/pki/apiserver.crt", b"one", 0o640)
        assert (target.read_bytes(), target.stat().st_mode & 0o7777) == (b"one", 0o640)
        inode = target.stat().st_ino
        # a symlink planted at the old fixed temp name is left alone (the name is unpredictable now)
        (root / "etc/kubernetes/pki/.apiserver.crt.kubecert-tmp").symlink_to(outside)
        fs.write_atomic("/etc/kubernetes/pki/apiserver.crt", b"two", 0o600, uid=4321, gid=4322)
        st = target.stat()
        assert (target.read_bytes(), st.st_mode & 0o7777, st.st_uid, st.st_gid) == (b"two", 0o600, 4321, 4322)
        assert st.st_ino != inode, "replaced by rename, not rewritten in place"
        assert outside.read_text() == "untouched"
        big = os.urandom(300_000)  # several SFTP reads and writes
        fs.write_atomic("/etc/kubernetes/pki/big", big, 0o600)
        assert fs.read("/etc/kubernetes/pki/big") == big
        assert fs.info("/etc/kubernetes/pki/big").size == len(big)
        fs.write_atomic("/etc/kubernetes/pki/empty", b"", 0o644)
        assert fs.read("/etc/kubernetes/pki/empty") == b""
    (root / "etc/kubernetes/pki/.apiserver.crt.kubecert-tmp").unlink()
    assert strays(root) == []
    assert sorted(os.listdir(root / "etc/kubernetes/pki")) == ["apiserver.crt", "big", "empty"]
    # what went over the wire, in order: exclusive create of ".<base>.kubecert-tmp-<16 hex>" (a new
    # name each time), chmod/chown, data, fsync, rename
    log = logged.sftp_log_text().splitlines()
    tmp_name = re.compile(rf'open "{re.escape(str(root))}/etc/kubernetes/pki/\.apiserver\.crt\.kubecert-tmp-[0-9a-f]{{16}}"')
    opens = [i for i, line in enumerate(log) if tmp_name.match(line)]
    assert len(opens) == 2 and all("flags WRITE,CREATE,EXCL" in log[i] for i in opens), log
    assert log[opens[0]].split('"')[1] != log[opens[1]].split('"')[1], "the temp name must not repeat"
    last = log[opens[-1]:]
    requests = [m.group(1) for m in (re.match(r"debug\d: request \d+: ([a-z-]+)", line) for line in last)
                if m and m.group(1) != "sent"]
    assert requests[:5] == ["fsetstat", "write", "fsync", "close", "posix-rename"], last[:30]


def test_symlink_atomic_readlink_and_listdir(servers: sshd.Servers, tmp_path: Path, said: List[str]) -> None:
    root = node_tree(tmp_path)
    pki = root / "var/lib/kubelet/pki"
    pki.mkdir(parents=True)
    (pki / "a.pem").write_text("A")
    (pki / "b.pem").write_text("B")
    with connect(servers[0], root=str(root)) as conn:
        fs = conn.fs()
        current = "/var/lib/kubelet/pki/kubelet-client-current.pem"
        fs.symlink_atomic(current, "/var/lib/kubelet/pki/a.pem")
        assert (os.readlink(pki / "kubelet-client-current.pem"), fs.read(current)) == ("/var/lib/kubelet/pki/a.pem", b"A")
        fs.symlink_atomic(current, "/var/lib/kubelet/pki/b.pem")  # switched atomically
        assert (fs.readlink(current), fs.read(current)) == ("/var/lib/kubelet/pki/b.pem", b"B")
        assert fs.info(current, follow=False).is_link and not fs.info(current).is_link
        assert fs.readlink("/var/lib/kubelet/pki/a.pem") is None
        assert fs.readlink("/var/lib/kubelet/pki/none") is None
        assert fs.listdir("/var/lib/kubelet/pki") == ["a.pem", "b.pem", "kubelet-client-current.pem"]
        assert fs.listdir("/var/lib/nothing") == []
        assert fs.info("/var/lib/kubelet").is_dir
        fs.rename("/var/lib/kubelet/pki/a.pem", "/var/lib/kubelet/pki/c.pem")
        fs.remove("/var/lib/kubelet/pki/b.pem")
        fs.remove("/var/lib/kubelet/pki/b.pem")  # absent: no error, as LocalFS
        assert fs.listdir("/var/lib/kubelet/pki") == ["c.pem", "kubelet-client-current.pem"]
        assert not fs.exists(current)  # dangling now
    assert strays(root) == []


def test_resolution_inside_the_root(servers: sshd.Servers, tmp_path: Path, said: List[str]) -> None:
    root = node_tree(tmp_path)
    (root / "data").mkdir()
    (root / "data/file").write_text("inside")
    (root / "srv/k8s/pki").mkdir(parents=True)
    (root / "srv/k8s/pki/ca.crt").write_text("ca")
    (root / "etc").mkdir()
    (root / "etc/abs").symlink_to("/data/file")  # absolute: means <root>/data/file
    (root / "etc/rel").symlink_to("../data/file")
    (root / "etc/kubernetes").symlink_to("/srv/k8s")  # a directory link, absolute
    (root / "etc/up").symlink_to("../../../../../..")  # climbs above the root
    (root / "etc/loop").symlink_to("/etc/loop")
    assert not Path("/data/file").exists()
    local = LocalFS(str(root))
    with connect(servers[0], root=str(root)) as conn:
        fs = conn.fs()
        for path in ("/etc/abs", "/etc/rel", "/etc/./abs", "/data/../etc/abs"):
            assert fs.read(path) == b"inside", path
        assert fs.read("/etc/kubernetes/pki/ca.crt") == b"ca"
        assert fs.host_path("/etc/kubernetes/pki/ca.crt") == local.host_path("/etc/kubernetes/pki/ca.crt")
        assert fs.info("/etc/abs", follow=False).is_link
        assert fs.info("/etc/abs").size == len("inside")
        for path in ("/../etc/passwd", "/etc/up/etc/passwd", "/etc/../../x"):
            msg = refusal(said, StoreError, lambda p=path: fs.exists(p), "escapes the root")
            with pytest.raises(StoreError) as local_exc:
                local.exists(path)
            assert msg.split(": ", 1)[1] == str(local_exc.value).split(": ", 1)[1]  # the same words as LocalFS
        refusal(said, StoreError, lambda: fs.read("/etc/loop"), "too many levels of symbolic links")
        refusal(said, StoreError, lambda: fs.read("etc/abs"), "must be absolute")


def _outcome(fn: Any, fs: Any, path: str) -> object:
    try:
        return fn(fs, path)
    except StoreError as exc:
        message = str(exc).split(": ", 1)[1]  # without the display prefix
        # SFTP v3 has no ENOTDIR: OpenSSH's server reports a file used as a directory as "no such file"
        return "error: " + message.replace("cannot stat (Not a directory)", "no such file")


def test_resolution_matches_localfs_on_random_paths(servers: sshd.Servers, tmp_path: Path, said: List[str]) -> None:
    """A tree of directories and symlinks (absolute, relative, climbing, chained, dangling, to files):
    every path built from its names resolves, exists, stats and reads the same over SFTP as LocalFS."""
    rnd = random.Random(5)
    root = node_tree(tmp_path)
    for d in ("a/b/c", "c"):
        (root / d).mkdir(parents=True)
    (root / "a/file").write_text("x")
    (root / "c/f2").write_text("y")
    targets = ["/a", "/a/b", "../..", "..", "b", "/c/f2", "../c", "/nope/x", "../../../..", "/a/l1", "file", "/"]
    for link in ("a/l1", "a/b/l2", "c/l3", "l4", "a/b/c/l5", "c/l6"):
        (root / link).symlink_to(rnd.choice(targets))
    names = ["a", "b", "c", "..", ".", "l1", "l2", "l3", "l4", "l5", "l6", "file", "f2", "nope"]
    paths = ["/" + "/".join(rnd.choice(names) for _ in range(rnd.randint(1, 5))) for _ in range(150)]
    local = LocalFS(str(root))
    with connect(servers[0], root=str(root)) as conn:
        fs = conn.fs()
        for path in paths:
            for f in (lambda x, p: x.host_path(p), lambda x, p: x.host_path(p, follow_last=False),
                      lambda x, p: x.exists(p), lambda x, p: x.readlink(p), lambda x, p: x.info(p, follow=False).is_link,
                      lambda x, p: x.read(p) if x.exists(p) and not x.info(p).is_dir else None):
                assert _outcome(f, fs, path) == _outcome(f, local, path), path


def test_errors_name_host_and_file(servers: sshd.Servers, tmp_path: Path, said: List[str]) -> None:
    root = node_tree(tmp_path)
    (root / "etc").mkdir()
    shown = f"node-1:{root}"
    with connect(servers[0], root=str(root)) as conn:
        fs = conn.fs()
        assert fs.display("/etc/x") == f"{shown}/etc/x"
        assert not fs.exists("/etc/none")
        refusal(said, StoreError, lambda: fs.read("/etc/none"), f"{shown}/etc/none: no such file")
        refusal(said, StoreError, lambda: fs.read("/etc"), f"{shown}/etc: is a directory, expected a file")
        refusal(said, StoreError, lambda: fs.info("/etc/none"), f"{shown}/etc/none: no such file")
        refusal(said, StoreError, lambda: fs.write_atomic("/nodir/x", b"x"), f"{shown}/nodir/x: write failed")
        (root / "etc/file").write_text("f")
        refusal(said, StoreError, lambda: fs.makedirs("/etc/file"), f"{shown}/etc/file: creating the directory failed")
    with connect(servers[0], root=str(root / "missing")) as conn:
        refusal(said, StoreError, conn.fs, f"node-1:{root}/missing: root directory does not exist")
    with connect(servers[0]) as conn:
        assert conn.fs().display("/etc/hostname") == "node-1:/etc/hostname"


def test_lock_refuses_a_second_run_naming_the_holder(servers: sshd.Servers, tmp_path: Path, said: List[str]) -> None:
    root = node_tree(tmp_path)
    lock = root / "etc/kubernetes/.kubecert/lock"
    mine = re.compile(rf"{os.getpid()}@{re.escape(HOSTNAME)} \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ\n")
    with connect(servers[0], root=str(root)) as one, connect(servers[1], root=str(root)) as two:
        with one.fs().lock(txn.LOCK) as broken:
            assert broken is None
            content = lock.read_text()
            assert mine.fullmatch(content), content  # "<pid>@<host> <since>"
            since = content.split()[1]
            assert abs(dt.datetime.strptime(since, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
                       - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(minutes=1), "the real clock"
            assert lock.parent.stat().st_mode & 0o777 == 0o700
            for break_lock in (False, True):  # a live run of this machine is never broken
                with pytest.raises(LockHeld) as held:
                    two.fs().lock(txn.LOCK, break_lock=break_lock).__enter__()
                said.append(str(held.value))
                assert (held.value.holder, held.value.since) == (f"{os.getpid()}@{HOSTNAME}", since)
                assert str(held.value) == (f"another kubecert run (pid {os.getpid()} on {HOSTNAME}, since {since}) "
                                           f"holds the lock node-1:{root}/etc/kubernetes/.kubecert/lock; it is still "
                                           "running: wait for it to finish")
            assert lock.read_text() == content
        assert not lock.exists(), "released: removed"
        for stale in ("", f"999999999@{HOSTNAME}\n", f"999999999@{HOSTNAME} 2026-01-01T00:00:00Z\n"):
            lock.write_text(stale)  # released by LocalFS (empty); its run is gone: cleaned up unasked
            with two.fs().lock(txn.LOCK) as broken:
                assert broken is None and mine.fullmatch(lock.read_text())
        # another machine's run (old and new format): maybe gone, maybe not; refused with the way out,
        # taken over only with break_lock
        for content, who in (("4242@operator-laptop\n", "pid 4242 on operator-laptop"),
                             ("4242@operator-laptop 2026-11-29T10:00:00Z\n",
                              "pid 4242 on operator-laptop, since 2026-11-29T10:00:00Z")):
            lock.write_text(content)
            message = refusal(said, LockHeld, lambda: one.fs().lock(txn.LOCK).__enter__(),
                              f"another kubecert run ({who}) holds the lock",
                              "if that run is gone: kubecert recover --break-lock")
            assert "still running" not in message
            assert lock.read_text() == content, "a refusal leaves the lock as it was"
            with one.fs().lock(txn.LOCK, break_lock=True) as broken:
                assert broken == who
                assert mine.fullmatch(lock.read_text())
            assert not lock.exists()
        # a run on the node itself (a bare pid): its flock is invisible over SFTP, so even break_lock
        # refuses and points at the node
        lock.write_text("31337 2026-11-29T10:00:00Z\n")
        for brk in (False, True):
            refusal(said, LockHeld, lambda b=brk: one.fs().lock(txn.LOCK, break_lock=b).__enter__(),
                    "another kubecert run (pid 31337 on node-1, since 2026-11-29T10:00:00Z) holds the lock",
                    "it runs on the node itself: wait for it, or run `kubecert recover` there")
            assert lock.read_text() == "31337 2026-11-29T10:00:00Z\n"
        lock.unlink()


# --- kubecert over SFTP ----------------------------------------------------------------------------

def test_scan_over_sftp_equals_scan_over_localfs(servers: sshd.Servers, labs: Dict[str, Path], tmp_path: Path,
                                                 said: List[str]) -> None:
    root = copy_tree(labs["healthy"], tmp_path / NODE)
    (root / "etc/kubernetes/pki/front-proxy-client.key").chmod(0o644)  # an audit finding to compare
    (root / "etc/kubernetes/pki/apiserver-kubelet-client.crt").unlink()  # a missing row too
    local = inventory.scan(LocalFS(str(root)), now=NOW_DT)
    with connect(servers[0], root=str(root)) as conn:
        remote = inventory.scan(conn.fs(), now=NOW_DT)
    assert remote.items == local.items
    assert remote.profile == local.profile and remote.facts == local.facts
    assert local.findings, "the test tree should have findings"
    prefix = f"node-1:{root}"
    as_local = [dataclasses.replace(f, path=f.path.replace(prefix, str(root)), message=f.message.replace(prefix, str(root)),
                                    fix=f.fix.replace(prefix, str(root))) for f in remote.findings]
    assert as_local == list(local.findings)
    said.extend(f.message for f in remote.findings)


def _openssl_verify(ca: Path, cert: Path) -> None:
    r = subprocess.run(["openssl", "verify", "-CAfile", str(ca), str(cert)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip().endswith(": OK"), r.stdout + r.stderr


def test_renew_over_sftp(servers: sshd.Servers, labs: Dict[str, Path], tmp_path: Path, said: List[str]) -> None:
    root = copy_tree(labs["expiring"], tmp_path / NODE)
    pki = root / "etc/kubernetes/pki"
    old_serial = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", str(pki / "apiserver.crt")],
                                capture_output=True, text=True).stdout
    with connect(servers[0], root=str(root)) as conn:
        result = renew.renew(conn.fs(), ["all"], now=NOW_DT)
    assert len(result.plan.renewed) >= 10
    proc = run_kubecert("check", "--root", str(root), "--now", NOW, "-o", "json")
    said.extend([proc.stdout, proc.stderr])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert not json.loads(proc.stdout).get("findings")
    for ca, cert in (("ca.crt", "apiserver.crt"), ("ca.crt", "apiserver-kubelet-client.crt"),
                     ("etcd/ca.crt", "etcd/server.crt"), ("etcd/ca.crt", "etcd/peer.crt"),
                     ("front-proxy-ca.crt", "front-proxy-client.crt")):
        _openssl_verify(pki / ca, pki / cert)
    assert subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", str(pki / "apiserver.crt")],
                          capture_output=True, text=True).stdout != old_serial
    state = root / "etc/kubernetes/.kubecert"
    backup = state / "backups" / result.backup.id
    assert (backup / "manifest.json").is_file() and backup.stat().st_mode & 0o777 == 0o700
    assert (backup / "files/etc/kubernetes/pki/apiserver.crt").is_file()
    records = [json.loads(line) for line in (state / "audit.log").read_text().splitlines()]
    assert {r["name"] for r in records if r.get("action") == "renew"} >= {"apiserver", "etcd-server", "admin.conf"}
    assert not (state / "journal.json").exists() and not (state / "lock").exists()
    assert strays(root) == []
    assert (pki / "apiserver.key").stat().st_mode & 0o777 == 0o600
    said.append((state / "audit.log").read_text())


@pytest.mark.parametrize("crash_at, outcome", [("stage", "old"), ("rename", "old"), ("audit log", "new")])
def test_interrupted_renewal_then_recover_over_sftp(servers: sshd.Servers, labs: Dict[str, Path], tmp_path: Path,
                                                    said: List[str], crash_at: str, outcome: str) -> None:
    root = copy_tree(labs["expiring"], tmp_path / NODE)
    before = node_state(root)
    seen: List[str] = []

    class Crash(Exception):
        pass

    def fault(step: int, label: str) -> None:
        seen.append(label)
        hits = [s for s in seen if s.startswith(crash_at)]
        if label.startswith(crash_at) and len(hits) == (3 if crash_at != "audit log" else 1):
            raise Crash(label)

    with connect(servers[0], root=str(root)) as conn:
        fs = conn.fs()
        with pytest.raises(Crash), fs.lock(txn.LOCK):
            renew.apply(fs, renew.plan(fs, ["all"], now=NOW_DT), fault=fault)
        assert (root / "etc/kubernetes/.kubecert/journal.json").exists()
        if crash_at == "rename":
            assert node_state(root) != before  # really part-way: some targets switched
    with connect(servers[1], root=str(root)) as conn:  # the next run, from another connection
        fs = conn.fs()
        with fs.lock(txn.LOCK):
            message = txn.recover(fs, NOW_DT)
    assert message, "recover found nothing to do"
    said.append(message)
    after = node_state(root)
    if outcome == "old":
        assert after == before, diff(before, after)
    else:
        changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
        assert "etc/kubernetes/pki/apiserver.crt" in changed
        assert run_kubecert("check", "--root", str(root), "--now", NOW).returncode == 0
    assert strays(root) == []
    assert not (root / "etc/kubernetes/.kubecert/journal.json").exists()


def test_many_connections_at_once(tmp_path: Path, labs: Dict[str, Path], said: List[str]) -> None:
    """20 hosts opened and scanned from a thread pool over the one shared event loop."""
    n = 20
    with sshd.start_sshds(n, tmp_path / "sshd") as group:
        hosts = [host(s, f"node-{i}", root=str(labs["healthy"])) for i, s in enumerate(group)]

        def check(h: Host) -> inventory.NodeReport:
            with Connection(h, known_hosts=str(group.known_hosts)) as conn:
                assert conn.run(["true"], 10).returncode == 0
                return inventory.scan(conn.fs(), now=NOW_DT)

        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            reports = list(pool.map(check, hosts))
        took = time.monotonic() - start
    local = inventory.scan(LocalFS(str(labs["healthy"])), now=NOW_DT)
    assert all(r.items == local.items for r in reports)
    assert took < 30, f"{n} hosts took {took:.1f}s"
