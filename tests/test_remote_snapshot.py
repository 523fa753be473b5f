"""The prefetched snapshot and the new NodeFS operations over SFTP, against real sshd (no mocks).

* one node, three views: ``LocalFS`` on the tree, ``SFTPFS`` over plain SFTP, ``SFTPFS`` serving a
  snapshot taken by one remote find+tar (``Connection.prefetched_fs()``): ``scan()`` and every
  file operation give the same answers, on lab and kubeadm trees, on trees the snapshot only
  partly covers (symlinked pki, deep directories, backups, big files, FIFOs, sockets, odd names)
  and on random trees of links;
* the snapshot is used only while nothing is written, and needs no SFTP session when it covers
  what is read; a node without find/tar gets plain SFTP;
* the rules the lead added to LocalFS hold over SFTP too: symlinks in directories another user
  controls refused with LocalFS's words, reads bounded and never of a FIFO, rmdir, set_meta
  (not through a final symlink), free_space;
* the module graph: ``loop`` <- ``sftpfs`` <- ``ssh``, no cycle;
* ``cluster check`` gives the same report with the prefetch as on local roots.

No private key material may appear in any log record or exception text (checked after every test).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

import sshd
from conftest import FIXTURES, secure_copy
from kubecert import inventory
from kubecert.cluster import cluster_check, local_connect
from kubecert.errors import StoreError
from kubecert.remote import snapshot
from kubecert.remote.hosts import Host
from kubecert.remote.sftpfs import SFTPFS
from kubecert.remote.ssh import Connection
from kubecert.store.fs import MAX_READ, LocalFS, NodeFS
from treeutil import copy_tree, key_leaks, lab_create, private_keys_under

pytestmark = pytest.mark.skipif(sshd.available() is not None, reason=str(sshd.available()))

NOW = "2026-11-30T00:00:00Z"
NOW_DT = dt.datetime(2026, 11, 30, tzinfo=dt.timezone.utc)
Op = Callable[[Any], Any]  # a file operation, on any of the three views
KUBEADM_NODES = ("single-stacked/master-1", "ha-stacked/master-2", "external-etcd/master-1", "external-etcd/etcd-1")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sshd.Servers]:
    with sshd.start_sshds(2, tmp_path_factory.mktemp("sshd")) as group:
        yield group


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lab_create(tmp_path_factory.mktemp("lab"), "--nodes", "3", "--key-type", "ecdsa", "--now", NOW)


@pytest.fixture
def said(caplog: pytest.LogCaptureFixture, tmp_path: Path, lab: Path) -> Iterator[List[str]]:
    """Texts the transport produced; at teardown these and every log record (asyncssh's too, at
    DEBUG) are checked for the private keys of the trees involved."""
    caplog.set_level(logging.DEBUG)
    texts: List[str] = []
    yield texts
    keys = private_keys_under(tmp_path, lab)
    assert keys, "no private keys found to check against"
    leaks = key_leaks(texts + [caplog.text], keys)
    assert not leaks, f"private key material in logs or exception texts: {leaks}"


def connect(server: sshd.Server, root: Path, name: str = "node-1", **kw: Any) -> Connection:
    h = Host(name, "127.0.0.1", "control-plane", port=server.port, key=str(server.client_key), root=str(root), **kw)
    return Connection(h, known_hosts=str(server.known_hosts)).open()


def outcome(fs: NodeFS, op: Op, root: Path) -> object:
    """What ``op`` gives, or its error without the display prefix (``node-1:`` before the root);
    SFTP v3 has no ENOTDIR: OpenSSH reports a file used as a directory as "no such file"."""
    try:
        return op(fs)
    except StoreError as exc:
        text = str(exc).replace(f"node-1:{root}", str(root))
        for enotdir in ("cannot stat (Not a directory)", "cannot read (Not a directory)"):
            text = text.replace(enotdir, "no such file")
        return "error: " + text


def three_views(conn: Connection, root: Path) -> Tuple[LocalFS, SFTPFS, SFTPFS]:
    prefetched = conn.prefetched_fs()
    assert prefetched.snapshot is not None, "the prefetch should work on this node"
    plain = conn.fs()
    assert plain.snapshot is None and plain is not prefetched
    return LocalFS(str(root)), plain, prefetched


def same_everywhere(views: Tuple[NodeFS, ...], root: Path, ops: Dict[str, Op]) -> None:
    for label, op in ops.items():
        got = [outcome(fs, op, root) for fs in views]
        assert got[0] == got[1] == got[2], f"{label}: LocalFS {got[0]!r}, SFTP {got[1]!r}, snapshot {got[2]!r}"


def as_local(report: inventory.NodeReport, root: Path) -> inventory.NodeReport:
    prefix = f"node-1:{root}"
    findings = tuple(dataclasses.replace(f, path=f.path.replace(prefix, str(root)),
                                         message=f.message.replace(prefix, str(root)),
                                         fix=f.fix.replace(prefix, str(root))) for f in report.findings)
    items = tuple(dataclasses.replace(i, error=i.error.replace(prefix, str(root)) if i.error else i.error)
                  for i in report.items)
    return dataclasses.replace(report, findings=findings, items=items)


def assert_same_scan(views: Tuple[NodeFS, ...], root: Path, said: List[str]) -> None:
    local, plain, prefetched = (inventory.scan(fs, now=NOW_DT) for fs in views)
    for remote in (plain, prefetched):
        remote = as_local(remote, root)
        assert remote.items == local.items
        assert remote.profile == local.profile and remote.facts == local.facts
        assert remote.findings == local.findings
        said.extend(f.message for f in remote.findings)


# --- the module graph -----------------------------------------------------------------------------

def test_loop_is_shared_and_sftpfs_does_not_import_ssh() -> None:
    code = ("import sys\n"
            "import kubecert.remote.sftpfs\n"
            "assert 'kubecert.remote.ssh' not in sys.modules, 'sftpfs imports ssh'\n"
            "import kubecert.remote as r, kubecert.remote.loop as loop, kubecert.remote.ssh as ssh\n"
            "assert r.TransportError is loop.TransportError is ssh.TransportError\n"
            "assert ssh.call is loop.call and ssh.DEFAULT_OP_TIMEOUT == loop.DEFAULT_OP_TIMEOUT\n"
            "assert r.SFTPFS is kubecert.remote.sftpfs.SFTPFS and r.Connection is ssh.Connection\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-c", "import sys, kubecert.remote.loop; "
                           "assert not {'kubecert.remote.ssh', 'kubecert.remote.sftpfs'} & set(sys.modules)"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


# --- scan through three views ---------------------------------------------------------------------

@pytest.mark.parametrize("tree", ["lab/master-1", "lab/master-3", *KUBEADM_NODES])
def test_scan_from_the_snapshot_equals_sftp_and_localfs(servers: sshd.Servers, lab: Path, tmp_path: Path,
                                                        said: List[str], tree: str) -> None:
    if tree.startswith("lab/"):
        root = copy_tree(lab / tree.split("/")[1], tmp_path / "node")
    else:
        if not (FIXTURES / tree).is_dir():
            pytest.skip(f"fixture {tree} not found")
        root = secure_copy(FIXTURES / tree, tmp_path / "node")
    pki = root / "etc/kubernetes/pki"
    (pki / "ca.key" if (pki / "ca.key").exists() else pki / "etcd/ca.key").chmod(0o644)  # a finding to compare
    with connect(servers[0], root) as conn:
        views = three_views(conn, root)
        assert_same_scan(views, root, said)
        prefetched = views[2]
        assert not prefetched.sftp_started, "the snapshot should have served the whole scan"
        ca = pki / "etcd/ca.crt" if tree.endswith("etcd-1") else pki / "ca.crt"
        assert prefetched.snapshot is not None and prefetched.snapshot.data(str(ca)) == ca.read_bytes()


def _odd_tree(root: Path, lab: Path) -> None:
    """A lab node with everything the snapshot does not simply cover."""
    copy_tree(lab / "master-1", root)
    k8s = root / "etc/kubernetes"
    # etcd's pki elsewhere, behind an absolute symlink (outside the prefetch plan: read over SFTP)
    (root / "srv").mkdir()
    shutil.move(str(k8s / "pki/etcd"), str(root / "srv/etcd-pki"))
    (k8s / "pki/etcd").symlink_to("/srv/etcd-pki")
    os.mkfifo(k8s / "pki/front-proxy-client.crt.fifo")
    (k8s / "pki/front-proxy-client.crt").unlink()
    (k8s / "pki/front-proxy-client.crt").symlink_to("front-proxy-client.crt.fifo")  # scan must not hang
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(k8s / "pki/agent.sock"))  # tar skips sockets; the listing has it
    (k8s / "pki/big.bin").write_bytes(os.urandom(300_000))  # above the snapshot's per-file size
    (k8s / "pki/huge.bin").write_bytes(b"x" * (MAX_READ + 1))  # above what kubecert reads
    (k8s / "a/b/c/d").mkdir(parents=True)  # deeper than the plan's depth
    (k8s / "a/b/c/d/deep.txt").write_text("deep")
    (k8s / "a/b/c/shallow.txt").write_text("shallow")
    (k8s / "we ird\nname.crt").write_text("odd")
    (k8s / "dangling").symlink_to("/etc/kubernetes/none")
    (k8s / "loop").symlink_to("loop")
    backups = k8s / ".kubecert/backups/20261129T000000Z/files"
    backups.mkdir(parents=True)
    (backups / "ca.crt").write_text("backup")
    (root / "var/lib/kubelet/config.yaml").unlink()


def test_partly_covered_tree_same_answers_everywhere(servers: sshd.Servers, lab: Path, tmp_path: Path,
                                                     said: List[str]) -> None:
    root = tmp_path / "node"
    _odd_tree(root, lab)
    paths = ["/etc/kubernetes/pki/etcd/ca.crt", "/etc/kubernetes/pki/etcd", "/srv/etcd-pki/server.key",
             "/etc/kubernetes/pki/front-proxy-client.crt", "/etc/kubernetes/pki/front-proxy-client.crt.fifo",
             "/etc/kubernetes/pki/agent.sock", "/etc/kubernetes/pki/big.bin", "/etc/kubernetes/pki/huge.bin",
             "/etc/kubernetes/a/b/c/d/deep.txt", "/etc/kubernetes/a/b/c/shallow.txt", "/etc/kubernetes/a/b/c/d",
             "/etc/kubernetes/we ird\nname.crt", "/etc/kubernetes/dangling", "/etc/kubernetes/loop",
             "/etc/kubernetes/.kubecert/backups/20261129T000000Z/files/ca.crt", "/etc/kubernetes/.kubecert/backups",
             "/var/lib/kubelet/config.yaml", "/var/lib/kubelet/pki/kubelet-client-current.pem", "/etc/none/x",
             "/etc/kubernetes/admin.conf/below-a-file", "/etc/kubernetes/../kubernetes/./pki/ca.crt", "/",
             "/etc/hostname", "/../escape"]
    with connect(servers[0], root) as conn:
        views = three_views(conn, root)
        for path in paths:
            ops: Dict[str, Op] = {
                f"host_path {path!r}": lambda fs, p=path: fs.host_path(p),
                f"host_path nofollow {path!r}": lambda fs, p=path: fs.host_path(p, follow_last=False),
                f"exists {path!r}": lambda fs, p=path: fs.exists(p),
                f"readlink {path!r}": lambda fs, p=path: fs.readlink(p),
                f"info {path!r}": lambda fs, p=path: fs.info(p),
                f"lstat info {path!r}": lambda fs, p=path: fs.info(p, follow=False),
                f"read {path!r}": lambda fs, p=path: fs.read(p),
                f"read unbounded {path!r}": lambda fs, p=path: len(fs.read(p, limit=None)),
                f"read 10 bytes {path!r}": lambda fs, p=path: fs.read(p, limit=10),
            }
            if outcome(views[0], lambda fs, p=path: fs.exists(p) and fs.info(p).is_dir, root) is True:
                ops[f"listdir {path!r}"] = lambda fs, p=path: fs.listdir(p)
            start = time.monotonic()
            same_everywhere(views, root, ops)
            assert time.monotonic() - start < 20, f"{path}: too slow (a FIFO opened?)"
        assert_same_scan(views, root, said)
        assert views[2].sftp_started, "what the snapshot does not cover is asked over SFTP"
        message = outcome(views[2], lambda fs: fs.read("/etc/kubernetes/pki/front-proxy-client.crt"), root)
        assert message == f"error: {root}/etc/kubernetes/pki/front-proxy-client.crt: not a regular file (a FIFO, " \
                          "socket or device?); not reading it"
        said.append(str(message))


def test_random_links_resolve_the_same_three_ways(servers: sshd.Servers, tmp_path: Path, said: List[str]) -> None:
    """A tree of directories and symlinks (absolute, relative, climbing, chained, dangling, looping,
    into and out of the prefetched /etc/kubernetes): every path built from its names resolves,
    exists, stats, lists and reads the same from the snapshot, over SFTP and on LocalFS."""
    rnd = random.Random(7)
    root = tmp_path / "node"
    k8s = root / "etc/kubernetes"
    for d in ("a/b/c", "c", "pki/etcd"):
        (k8s / d).mkdir(parents=True)
    (root / "srv/out").mkdir(parents=True)
    (k8s / "a/file").write_text("x")
    (k8s / "c/f2").write_text("y")
    (k8s / "pki/etcd/ca.crt").write_text("z")
    (root / "srv/out/f3").write_text("w")
    targets = ["/etc/kubernetes/a", "/etc/kubernetes/a/b", "../..", "..", "b", "/etc/kubernetes/c/f2", "../c",
               "/nope/x", "../../../../../..", "/etc/kubernetes/a/l1", "file", "/", "/srv/out", "../../../srv/out/f3",
               "l6", "/etc/kubernetes/pki/etcd"]
    for link in ("a/l1", "a/b/l2", "c/l3", "l4", "a/b/c/l5", "c/l6", "pki/l7"):
        (k8s / link).symlink_to(rnd.choice(targets))
    names = ["a", "b", "c", "..", ".", "l1", "l2", "l3", "l4", "l5", "l6", "l7", "file", "f2", "f3", "pki", "etcd",
             "ca.crt", "nope", "srv", "out"]
    paths = ["/etc/kubernetes/" + "/".join(rnd.choice(names) for _ in range(rnd.randint(1, 5))) for _ in range(200)]
    local = LocalFS(str(root))
    with connect(servers[0], root) as conn:
        views = three_views(conn, root)
        for path in paths:
            ops: Dict[str, Op] = {
                "host_path": lambda fs, p=path: fs.host_path(p),
                "host_path nofollow": lambda fs, p=path: fs.host_path(p, follow_last=False),
                "exists": lambda fs, p=path: fs.exists(p),
                "readlink": lambda fs, p=path: fs.readlink(p),
                "lstat info": lambda fs, p=path: fs.info(p, follow=False),
                "read": lambda fs, p=path: fs.read(p) if fs.exists(p) and not fs.info(p).is_dir else None,
            }
            if outcome(local, lambda fs, p=path: fs.exists(p) and fs.info(p).is_dir, root) is True:
                ops["listdir"] = lambda fs, p=path: fs.listdir(p)
            same_everywhere(views, root, {f"{k} {path!r}": v for k, v in ops.items()})
        said.extend(str(outcome(views[2], lambda fs, p=p: fs.read(p), root)) for p in paths[:20])


# --- the rules over SFTP --------------------------------------------------------------------------

def test_symlinks_in_directories_other_users_control_are_refused(servers: sshd.Servers, tmp_path: Path,
                                                                 said: List[str]) -> None:
    root = tmp_path / "node"
    pki = root / "etc/kubernetes/pki"
    pki.mkdir(parents=True)
    (pki / "ca.crt").write_text("ca")
    cases = {"user": (4321, 4321, 0o755), "world": (0, 0, 0o777), "group-root": (0, 0, 0o775),
             "group-user": (0, 4321, 0o775), "ours": (0, 0, 0o755)}
    for name, (uid, gid, mode) in cases.items():
        d = pki / name
        d.mkdir()
        (d / "link").symlink_to("/etc/kubernetes/pki/ca.crt")
        (d / "file").write_text(name)
        os.chown(d / "file", uid, gid)  # in a user's directory only that user's files are read
        (d / "sub").mkdir()
        (d / "sub/link").symlink_to("../file")  # below an untrusted directory: refused too
        os.chown(d, uid, gid)
        d.chmod(mode)
    (pki / "user/rootfile").write_text("secret")
    with connect(servers[0], root) as conn:
        views = three_views(conn, root)
        for name in cases:
            ops: Dict[str, Op] = {
                f"read {name}/link": lambda fs, n=name: fs.read(f"/etc/kubernetes/pki/{n}/link"),
                f"read {name}/sub/link": lambda fs, n=name: fs.read(f"/etc/kubernetes/pki/{n}/sub/link"),
                f"read {name}/file": lambda fs, n=name: fs.read(f"/etc/kubernetes/pki/{n}/file"),
                f"lstat {name}/link": lambda fs, n=name: fs.info(f"/etc/kubernetes/pki/{n}/link", follow=False).is_link,
                f"readlink {name}/link": lambda fs, n=name: fs.readlink(f"/etc/kubernetes/pki/{n}/link"),
            }
            same_everywhere(views, root, ops)
        for fs in views[1:]:
            for name, who in (("user", 4321), ("world", 0), ("group-user", 0)):
                message = outcome(fs, lambda f, n=name: f.read(f"/etc/kubernetes/pki/{n}/link"), root)
                assert message == (f"error: {root}/etc/kubernetes/pki/{name}/link: refusing to follow the symlink "
                                   f"{root}/etc/kubernetes/pki/{name}/link: it is in a directory that uid {who} "
                                   "controls"), message
                said.append(str(message))
            assert fs.read("/etc/kubernetes/pki/group-root/link") == b"ca"  # group-writable by root's group only
            assert fs.read("/etc/kubernetes/pki/ours/sub/link") == b"ours"
            assert fs.read("/etc/kubernetes/pki/user/file") == b"user"  # files there are still read
        # ...but only the user's own: root's file in her directory could be a swapped-in redirect
        for fs in views:
            message = outcome(fs, lambda f: f.read("/etc/kubernetes/pki/user/rootfile"), root)
            assert message == (f"error: {root}/etc/kubernetes/pki/user/rootfile: owned by uid 0, in a directory "
                               "that uid 4321 controls; not reading it"), message


def test_reads_are_bounded_and_never_open_a_fifo(servers: sshd.Servers, tmp_path: Path, said: List[str]) -> None:
    root = tmp_path / "node"
    d = root / "etc/kubernetes"
    d.mkdir(parents=True)
    os.mkfifo(d / "fifo")
    (d / "twenty").write_bytes(b"0123456789" * 2)
    (d / "huge").write_bytes(b"y" * (MAX_READ + 1))
    with connect(servers[0], root) as conn:
        for fs in (conn.fs(), conn.prefetched_fs()):
            start = time.monotonic()
            message = outcome(fs, lambda f: f.read("/etc/kubernetes/fifo"), root)
            assert message == f"error: {root}/etc/kubernetes/fifo: not a regular file (a FIFO, socket or device?); " \
                              "not reading it"
            assert time.monotonic() - start < 5
            message = outcome(fs, lambda f: f.read("/etc/kubernetes/twenty", limit=10), root)
            assert message == f"error: {root}/etc/kubernetes/twenty: 20 bytes, more than the 10 kubecert reads from " \
                              "one file; not a kubeadm file?"
            assert fs.read("/etc/kubernetes/twenty", limit=20) == b"0123456789" * 2
            message = outcome(fs, lambda f: f.read("/etc/kubernetes/huge"), root)
            assert message == f"error: {root}/etc/kubernetes/huge: {MAX_READ + 1} bytes, more than the {MAX_READ} " \
                              "kubecert reads from one file; not a kubeadm file?"
            assert len(fs.read("/etc/kubernetes/huge", limit=None)) == MAX_READ + 1
            said.append(str(message))


def test_rmdir_set_meta_free_space_as_localfs(servers: sshd.Servers, tmp_path: Path, said: List[str]) -> None:
    root = tmp_path / "node"
    d = root / "etc/kubernetes/.kubecert"
    (d / "empty").mkdir(parents=True)
    (d / "full").mkdir()
    (d / "full/f").write_text("f")
    (d / "f").write_text("f")
    (d / "target").write_text("t")
    (d / "link").symlink_to("target")
    (d / "dirlink").symlink_to("full")
    local = LocalFS(str(root))
    with connect(servers[0], root) as conn:
        fs = conn.fs()
        fs.rmdir("/etc/kubernetes/.kubecert/empty")
        assert not (d / "empty").exists()
        fs.rmdir("/etc/kubernetes/.kubecert/empty")  # missing: no error, as LocalFS
        fs.rmdir("/etc/kubernetes/.kubecert/dirlink")  # a link to a directory is left alone, as LocalFS
        fs.rmdir("/etc/kubernetes/.kubecert/f")
        assert (d / "dirlink").is_symlink() and (d / "f").is_file()
        message = outcome(fs, lambda f: f.rmdir("/etc/kubernetes/.kubecert/full"), root)
        assert str(message).startswith(f"error: {root}/etc/kubernetes/.kubecert/full: removing the directory failed")
        assert (d / "full/f").exists()
        said.append(str(message))

        fs.set_meta("/etc/kubernetes/.kubecert/f", 0o640, 4321, 4322)
        st = (d / "f").stat()
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o640, 4321, 4322)
        fs.set_meta("/etc/kubernetes/.kubecert/link", 0o600, 4323, 4324)  # the link itself, never its target
        lst, tst = os.lstat(d / "link"), (d / "target").stat()
        assert (lst.st_uid, lst.st_gid) == (4323, 4324)
        assert (tst.st_mode & 0o777, tst.st_uid, tst.st_gid) == (0o644, 0, 0)
        assert outcome(fs, lambda f: f.set_meta("/etc/kubernetes/none", 0o600, 0, 0), root) == \
            outcome(local, lambda f: f.set_meta("/etc/kubernetes/none", 0o600, 0, 0), root)

        for path in ("/etc/kubernetes/.kubecert/f", "/etc/kubernetes/not/yet/there"):
            remote, here = fs.free_space(path), local.free_space(path)
            assert remote is not None and here is not None
            assert abs(remote - here) < 64 << 20, (remote, here)  # the same file system, give or take writes


# --- the snapshot's lifecycle ---------------------------------------------------------------------

def test_snapshot_is_a_moment_until_the_first_write(servers: sshd.Servers, lab: Path, tmp_path: Path,
                                                    said: List[str]) -> None:
    root = copy_tree(lab / "master-1", tmp_path / "node")
    conf = root / "etc/kubernetes/kubeadm-config.yaml"
    with connect(servers[0], root) as conn:
        fs = conn.prefetched_fs()
        before = fs.read("/etc/kubernetes/kubeadm-config.yaml")
        conf.write_bytes(before + b"# changed on the node\n")
        # a read-only pass sees the node as of one moment
        assert fs.read("/etc/kubernetes/kubeadm-config.yaml") == before
        assert not fs.sftp_started
        fs.write_atomic("/etc/kubernetes/other.txt", b"written", 0o600)
        assert fs.snapshot is None and fs.sftp_started
        assert fs.read("/etc/kubernetes/kubeadm-config.yaml") == before + b"# changed on the node\n"
        assert fs.read("/etc/kubernetes/other.txt") == b"written"
        again = conn.prefetched_fs()  # each call takes a new snapshot
        assert again.snapshot is not None and again.listdir("/etc/kubernetes") == sorted(os.listdir(root / "etc/kubernetes"))
        with again.lock("/etc/kubernetes/.kubecert/lock"):
            assert again.snapshot is None, "under the lock the node is read as it is"


def test_node_without_find_and_tar_gets_plain_sftp(lab: Path, tmp_path: Path, said: List[str]) -> None:
    root = copy_tree(lab / "master-1", tmp_path / "node")
    with sshd.start_sshds(1, tmp_path / "sshd", env={"PATH": "/nonexistent"}) as group, connect(group[0], root) as conn:
        fs = conn.prefetched_fs()
        assert fs.snapshot is None and fs.sftp_started
        report = inventory.scan(fs, now=NOW_DT)
    assert report.items == inventory.scan(LocalFS(str(root)), now=NOW_DT).items


def test_prefetch_on_a_missing_root_refuses_as_before(servers: sshd.Servers, tmp_path: Path, said: List[str]) -> None:
    with connect(servers[0], tmp_path / "missing") as conn, pytest.raises(StoreError) as exc:
        conn.prefetched_fs()
    said.append(str(exc.value))
    assert str(exc.value) == f"node-1:{tmp_path}/missing: root directory does not exist"


@pytest.mark.skipif(shutil.which("sudo") is None, reason="sudo not installed")
def test_prefetch_through_sudo(servers: sshd.Servers, lab: Path, tmp_path: Path, said: List[str]) -> None:
    root = copy_tree(lab / "master-2", tmp_path / "node")
    before = servers[1].log_text().count("Starting session: command")
    with connect(servers[1], root, sudo=True) as conn:
        assert conn.command_line(["sh", "-c", "x"]).startswith("sudo -n -- sh -c")
        fs = conn.prefetched_fs()
        assert fs.snapshot is not None and fs.uid == 0
        report = inventory.scan(fs, now=NOW_DT)
        assert not fs.sftp_started
    assert servers[1].log_text().count("Starting session: command") == before + 1
    assert as_local(report, root).items == inventory.scan(LocalFS(str(root)), now=NOW_DT).items


def test_parse_refuses_what_the_script_does_not_write(tmp_path: Path) -> None:
    root = "/node"
    with pytest.raises(snapshot.SnapshotError):
        snapshot.parse(b"no terminator", root)
    with pytest.raises(snapshot.SnapshotError):
        snapshot.parse(b"Af 644 0 0 1 ./../etc/passwd\0\0\0", root)  # climbing out of the root
    with pytest.raises(snapshot.SnapshotError):
        snapshot.parse(b"Xf 644 0 0 1 ./x\0\0\0", root)  # no such group
    # a tar member that was not listed, or whose size differs from the listing, gives no content
    (tmp_path / "etc/kubernetes").mkdir(parents=True)
    (tmp_path / "etc/kubernetes/a").write_text("aaa")
    (tmp_path / "etc/kubernetes/b").write_text("bbb")
    stream = tmp_path / "t.tar"
    with tarfile.open(stream, "w", format=tarfile.GNU_FORMAT) as tar:
        tar.add(tmp_path / "etc/kubernetes/a", "./etc/kubernetes/a")
        tar.add(tmp_path / "etc/kubernetes/b", "./etc/kubernetes/b")
    listing = (b"Ad 755 0 0 4096 .\0\0Ad 755 0 0 4096 ./etc\0\0Id 755 0 0 4096 ./etc/kubernetes\0\0"
               b"If 644 0 0 3 ./etc/kubernetes/a\0\0If 644 0 0 9 ./etc/kubernetes/c\0\0\0")
    snap = snapshot.parse(listing + stream.read_bytes(), root)
    assert snap.data("/node/etc/kubernetes/a") == b"aaa"
    assert snap.data("/node/etc/kubernetes/b") is None and snap.lstat("/node/etc/kubernetes/b") is None
    assert snap.data("/node/etc/kubernetes/c") is None  # listed, not in the stream: read over SFTP
    assert snap.listdir("/node/etc/kubernetes") == ["a", "c"]
    assert snap.lstat("/node/etc/kubernetes/pki") is None  # in a completely listed directory
    assert snap.lstat("/node/etc/hosts") is snapshot.NOT_COVERED  # /etc was only searched for the plan
    assert snap.lstat("/node/var") is None  # planned, and "." was searched
    with pytest.raises(snapshot.SnapshotError):
        snapshot.parse(listing + b"\xff" * 1024, root)


# --- cluster check --------------------------------------------------------------------------------

def test_cluster_check_with_the_prefetch_equals_local_roots(lab: Path, tmp_path: Path, said: List[str]) -> None:
    roots = [copy_tree(lab / f"master-{i}", tmp_path / f"master-{i}") for i in (1, 2, 3)]
    (roots[1] / "etc/kubernetes/pki/ca.crt").write_bytes((roots[1] / "etc/kubernetes/pki/front-proxy-ca.crt").read_bytes())
    with sshd.start_sshds(3, tmp_path / "sshd") as group:
        hosts = [Host(f"master-{i + 1}", "127.0.0.1", "control-plane", port=s.port, key=str(s.client_key),
                      root=str(roots[i])) for i, s in enumerate(group)]
        used: List[SFTPFS] = []

        def ssh_connect(h: Host) -> Any:
            conn = Connection(h, known_hosts=str(group.known_hosts)).open()
            real = conn.prefetched_fs

            def prefetched() -> SFTPFS:
                used.append(real())
                return used[-1]

            conn.prefetched_fs = prefetched  # type: ignore[method-assign,assignment]
            return conn

        remote = cluster_check(hosts, ssh_connect, now=NOW_DT, members=False)
    local = cluster_check(hosts, local_connect, now=NOW_DT, members=False)
    assert len(used) == 3 and all(fs.snapshot is not None and not fs.sftp_started for fs in used)
    assert [n.error for n in remote.nodes] == [None, None, None]
    for r, lo, root in zip(remote.nodes, local.nodes, roots):
        assert r.servers == lo.servers
        assert r.report is not None and lo.report is not None
        assert r.report.items == lo.report.items
        assert [dataclasses.replace(f, path="", message=f.message.replace(f"{r.name}:", "")) for f in r.report.findings] \
            == [dataclasses.replace(f, path="") for f in lo.report.findings], root
    assert remote.findings == local.findings
    assert any(f.code == "cross-node" for f in remote.findings), "the tampered CA should be found"
    said.extend(f.message for f in remote.findings)
