"""Renewal safety, end to end: every test runs the real CLI (``python -m kubecert``) as a separate
process against lab trees in ``tmp_path`` and compares whole trees before and after.

* a crash (``os._exit(137)``, as kill -9) at *every* transaction step of ``renew all`` and of
  ``rollback``, enumerated from the step log, followed by ``recover``, leaves the node all-old or
  all-new, never mixed;
* the lock refuses a second run naming the holder's pid; ``--dry-run`` writes nothing;
* backups, rollback (and rollback of a rollback), the audit log, file modes and owners;
* bad input is refused with one line naming the file, and changes nothing;
* ``--update-user-kubeconfigs`` and the kubelet's dated client pem + symlink.

No private key material may appear in anything kubecert prints or logs: every test's output is
checked against every key found in its trees (the ``kubecert`` fixture does it at teardown).

Where kubecert is wrong, the test asserts the right behaviour and is a strict xfail naming the bug.
"""

from __future__ import annotations

import base64
import concurrent.futures
import datetime as dt
import getpass
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from treeutil import (
    STATE_DIR,
    State,
    after_crash_invariants,
    assert_one_line_error,
    changed,
    clean_env,
    copy_tree,
    diff,
    key_leaks,
    monotonic,
    node_state,
    private_keys_under,
    run_kubecert,
    strays,
    tree_state,
)

NOW = "2026-11-30T00:00:00Z"
NOW_DT = dt.datetime(2026, 11, 30, tzinfo=dt.timezone.utc)
LATER = "2026-11-30T01:00:00Z"  # a second transaction gets its own backup id
NODE = "master-1"
KUBELET_PKI = "var/lib/kubelet/pki"
NEW_DATED = f"{KUBELET_PKI}/kubelet-client-2026-11-30-00-00-00.pem"  # as the kubelet names it
CURRENT = f"{KUBELET_PKI}/kubelet-client-current.pem"
JOURNAL = f"{STATE_DIR}/journal.json"
CORE = {"apiserver", "apiserver-kubelet-client", "front-proxy-client", "etcd-server", "etcd-peer",
        "etcd-healthcheck-client", "apiserver-etcd-client", "admin.conf", "controller-manager.conf",
        "scheduler.conf", "kubelet.conf"}
WORKERS = max(2, min(4, os.cpu_count() or 2))


# --- fixtures ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Labs:
    dir: Path
    expiring: Path  # every leaf, and the kubelet client cert, expire 3 days after NOW
    healthy: Path  # a fresh cluster (365 days left) with CAs of its own: "another lab"


@pytest.fixture(scope="module")
def labs(tmp_path_factory: pytest.TempPathFactory) -> Labs:
    base = tmp_path_factory.mktemp("labs")
    for name, extra in (("expiring", ["--expires-in", "3d"]), ("healthy", [])):
        proc = run_kubecert("lab", "create", str(base / name), "--nodes", "1", "--key-type", "ecdsa",
                            "--now", NOW, *extra)
        assert proc.returncode == 0, proc.stderr
    return Labs(base, base / "expiring" / NODE, base / "healthy" / NODE)


class Kubecert:
    """Runs the CLI and keeps everything it printed, for the key-material check."""

    def __init__(self) -> None:
        self.record: List[str] = []

    def __call__(self, *args: object, env: Optional[Dict[str, str]] = None,
                 timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run_kubecert(*map(str, args), env=env, timeout=timeout, record=self.record)


@pytest.fixture
def kubecert(tmp_path: Path, labs: Labs) -> Iterator[Kubecert]:
    kc = Kubecert()
    yield kc
    logs = [p.read_text() for p in tmp_path.rglob("audit.log")]
    leaks = key_leaks(kc.record + logs, private_keys_under(tmp_path, labs.dir))
    assert not leaks, f"private key material in kubecert output or audit.log: {leaks}"


def renew_args(root: Path, *names: str, now: str = NOW, extra: Sequence[str] = ()) -> List[str]:
    return ["renew", *(names or ("all",)), "--root", str(root), "--now", now, "--yes", *extra]


def rollback_args(root: Path, *backup: str, now: str = LATER) -> List[str]:
    return ["rollback", *backup, "--root", str(root), "--now", now, "--yes"]


def steps_of(log: Path) -> List[Tuple[int, str]]:
    steps = [(int(n), label) for n, label in (line.split(" ", 1) for line in log.read_text().splitlines())]
    assert [n for n, _ in steps] == list(range(1, len(steps) + 1)), "steps are not numbered 1..N"
    return steps


def learn_steps(kubecert: Kubecert, tree: Path, where: Path, args: Callable[[Path], List[str]]
                ) -> Tuple[List[Tuple[int, str]], Path]:
    """Run ``args`` once on a copy of ``tree`` with the step log on; returns the steps and the copy."""
    root = copy_tree(tree, where)
    log = where.parent / f"{where.name}.steps"
    proc = kubecert(*args(root), env=clean_env(KUBECERT_TEST_STEP_LOG=str(log)))
    assert proc.returncode == 0, proc.stderr
    return steps_of(log), root


def touched(steps: Sequence[Tuple[int, str]]) -> Set[str]:
    """Relative paths a transaction puts in place (its ``rename`` steps, removals included)."""
    return {label.split(" ", 1)[1].lstrip("/") for _, label in steps if label.startswith("rename ")}


def check_clean(kubecert: Kubecert, root: Path) -> Optional[str]:
    """None if ``kubecert check`` passes with exit 0 and no audit finding; else why not."""
    proc = kubecert("check", "--root", root, "--now", NOW, "-o", "json")
    if proc.returncode != 0:
        return f"check exit {proc.returncode}: {proc.stderr.strip() or proc.stdout[-2000:]}"
    findings = json.loads(proc.stdout).get("findings")
    return f"check findings: {findings}" if findings else None


def renew_records(root: Path) -> List[str]:
    """The names of the renew records in the audit log, sorted (duplicates kept)."""
    log = root / STATE_DIR / "audit.log"
    if not log.exists():
        return []
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return sorted(str(r.get("name")) for r in records if r.get("action") == "renew")


def mode(path: Path) -> int:
    return os.lstat(path).st_mode & 0o7777


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def chattr_supported(where: Path) -> bool:
    probe = where / "chattr-probe"
    probe.write_text("x")
    try:
        if shutil.which("chattr") is None:
            return False
        ok = subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode == 0
        if ok:
            subprocess.run(["chattr", "-i", str(probe)], check=True, capture_output=True)
        return ok
    finally:
        probe.unlink()


# --- 1. a crash at every step ----------------------------------------------------------------------

def test_crash_at_every_renew_step_then_recover_is_all_old_or_all_new(kubecert: Kubecert, tmp_path: Path,
                                                                       labs: Labs) -> None:
    # every kind of write in one transaction: certs, keys, kubeconfigs, copies of admin.conf in home
    # directories, the kubelet's new dated pem (a new file) and its symlink switch
    template = copy_tree(labs.expiring, tmp_path / "template")
    _add_user_kubeconfigs(template)
    original = node_state(template)

    def args(root: Path) -> List[str]:
        return renew_args(root, extra=["--update-user-kubeconfigs"])

    steps, learned = learn_steps(kubecert, template, tmp_path / "learn", args)
    labels = [label for _, label in steps]
    for rel in (NEW_DATED, CURRENT, "root/.kube/config", "home/alice/.kube/config"):
        assert f"rename /{rel}" in labels, labels
    new_paths = touched(steps)
    assert new_paths == changed(original, node_state(learned)), "step log and tree disagree"
    assert check_clean(kubecert, learned) is None

    def crash_then_recover(k: int) -> Tuple[int, str]:
        root = copy_tree(template, tmp_path / f"crash-{k}")
        proc = kubecert(*args(root), env=clean_env(KUBECERT_TEST_CRASH_AT=str(k)))
        if proc.returncode != 137:
            return k, f"crash run exit {proc.returncode}: {proc.stderr.strip()}"
        rec = kubecert("recover", "--root", root, "--now", NOW)
        if rec.returncode != 0:
            return k, f"recover exit {rec.returncode}: {rec.stderr.strip()}"
        problems = after_crash_invariants(root)
        state = node_state(root)
        audited = renew_records(root)
        if state == original:
            outcome = "old"
            if audited:
                problems.append(f"audit.log records a renewal that was undone: {audited}")
        elif changed(original, state) == new_paths:
            outcome = "new"
            why = check_clean(kubecert, root)
            if why:
                problems.append(why)
            if sorted(set(audited)) != audited or not set(audited) >= CORE:
                problems.append(f"audit.log must record each renewal exactly once: {audited}")
        else:
            outcome = "MIXED:\n" + diff(original, state)
        return k, "; ".join([outcome, *problems])

    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        results = dict(pool.map(crash_then_recover, range(1, len(steps) + 1)))
    bad = {k: f"{labels[k - 1]}: {r}" for k, r in results.items() if r not in ("old", "new")}
    assert not bad, "\n".join(f"crash at {k} ({r})" for k, r in sorted(bad.items()))
    outcomes = [results[k] for k in range(1, len(steps) + 1)]
    assert outcomes[0] == "old" and outcomes[-1] == "new", outcomes
    assert monotonic(outcomes, "old", "new"), list(zip(labels, outcomes))


def _pick(steps: Sequence[Tuple[int, str]]) -> List[int]:
    """A few representative crash points: in backup, in staging, at the switch, mid-switch, last rename."""
    labels = [label for _, label in steps]

    def first(prefix: str) -> int:
        return next(i for i, label in enumerate(labels, 1) if label.startswith(prefix))

    renames = [i for i, label in enumerate(labels, 1) if label.startswith("rename ")]
    return sorted({first("backup "), first("stage ") + 2, first("journal applying"),
                   renames[len(renames) // 2], renames[-1]})


def test_next_renew_after_a_crash_recovers_first_then_renews(kubecert: Kubecert, tmp_path: Path,
                                                             labs: Labs) -> None:
    original = node_state(labs.expiring)
    steps, learned = learn_steps(kubecert, labs.expiring, tmp_path / "learn", renew_args)
    new_paths = changed(original, node_state(learned))
    for k in _pick(steps):
        root = copy_tree(labs.expiring, tmp_path / f"crash-{k}")
        assert kubecert(*renew_args(root), env=clean_env(KUBECERT_TEST_CRASH_AT=str(k))).returncode == 137
        proc = kubecert(*renew_args(root))
        assert proc.returncode == 0, f"crash at {k}: {proc.stderr}"
        assert "recovered:" in proc.stdout, f"crash at {k}: the run did not say it recovered"
        assert changed(original, node_state(root)) == new_paths, f"crash at {k}"
        assert after_crash_invariants(root) == [], f"crash at {k}"
        assert check_clean(kubecert, root) is None, f"crash at {k}"


def test_dry_run_after_a_crash_writes_nothing(kubecert: Kubecert, tmp_path: Path, labs: Labs) -> None:
    """Sensible behaviour, documented: a dry run never recovers (that is a write) and never touches
    the journal; the interrupted change is still there for `recover` or the next real run."""
    steps, _ = learn_steps(kubecert, labs.expiring, tmp_path / "learn", renew_args)
    for k in _pick(steps):
        root = copy_tree(labs.expiring, tmp_path / f"crash-{k}")
        assert kubecert(*renew_args(root), env=clean_env(KUBECERT_TEST_CRASH_AT=str(k))).returncode == 137
        before = tree_state(root)
        proc = kubecert("renew", "all", "--root", root, "--now", NOW, "--dry-run")
        assert "Traceback" not in proc.stderr
        assert tree_state(root) == before, f"crash at {k}: the dry run wrote:\n{diff(before, tree_state(root))}"
        assert kubecert("recover", "--root", root, "--now", NOW).returncode == 0
        assert node_state(root) == node_state(labs.expiring), f"crash at {k}"


def test_dry_run_after_a_crash_reports_the_interrupted_change(kubecert: Kubecert, tmp_path: Path,
                                                              labs: Labs) -> None:
    """A dry run must not hide an interrupted change: it says so (and that recover / the next run will
    roll it back), since the plan it would show is computed from a possibly half-renewed tree."""
    steps, _ = learn_steps(kubecert, labs.expiring, tmp_path / "learn", renew_args)
    for k in _pick(steps):
        root = copy_tree(labs.expiring, tmp_path / f"crash-{k}")
        assert kubecert(*renew_args(root), env=clean_env(KUBECERT_TEST_CRASH_AT=str(k))).returncode == 137
        proc = kubecert("renew", "all", "--root", root, "--now", NOW, "--dry-run")
        said = (proc.stdout + proc.stderr).lower()
        assert "interrupted" in said and "recover" in said, f"crash at {k}: dry run hid it:\n{proc.stdout}"


def test_crash_after_commit_still_leaves_the_renewal_in_the_audit_log(kubecert: Kubecert, tmp_path: Path,
                                                                     labs: Labs) -> None:
    steps, _ = learn_steps(kubecert, labs.expiring, tmp_path / "learn", renew_args)
    root = copy_tree(labs.expiring, tmp_path / "node")
    last = len(steps)
    assert kubecert(*renew_args(root), env=clean_env(KUBECERT_TEST_CRASH_AT=str(last))).returncode == 137
    assert kubecert("recover", "--root", root, "--now", NOW).returncode == 0
    assert node_state(root) != node_state(labs.expiring), "precondition: the renewal took effect"
    log = root / STATE_DIR / "audit.log"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    names = {r.get("name") for r in records if r.get("action") == "renew"}
    assert names >= CORE, f"renewed but not audited: {sorted(CORE - names)}"


def test_crash_at_every_rollback_step_then_recover_is_consistent(kubecert: Kubecert, tmp_path: Path,
                                                                 labs: Labs) -> None:
    original = node_state(labs.expiring)
    renewed_tree = copy_tree(labs.expiring, tmp_path / "renewed")
    assert kubecert(*renew_args(renewed_tree)).returncode == 0
    renewed = node_state(renewed_tree)
    steps, learned = learn_steps(kubecert, renewed_tree, tmp_path / "learn", rollback_args)
    labels = [label for _, label in steps]
    assert node_state(learned) == original
    # the rollback removes the new dated pem and switches the symlink back
    assert f"rename /{NEW_DATED}" in labels and f"rename /{CURRENT}" in labels, labels

    def crash_then_recover(k: int) -> Tuple[int, str]:
        root = copy_tree(renewed_tree, tmp_path / f"crash-{k}")
        proc = kubecert(*rollback_args(root), env=clean_env(KUBECERT_TEST_CRASH_AT=str(k)))
        if proc.returncode != 137:
            return k, f"crash run exit {proc.returncode}: {proc.stderr.strip()}"
        rec = kubecert("recover", "--root", root, "--now", LATER)
        if rec.returncode != 0:
            return k, f"recover exit {rec.returncode}: {rec.stderr.strip()}"
        state = node_state(root)
        outcome = ("renewed" if state == renewed else "restored" if state == original
                   else "MIXED:\n" + diff(renewed, state))
        return k, "; ".join([outcome, *after_crash_invariants(root)])

    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        results = dict(pool.map(crash_then_recover, range(1, len(steps) + 1)))
    bad = {k: f"{labels[k - 1]}: {r}" for k, r in results.items() if r not in ("renewed", "restored")}
    assert not bad, "\n".join(f"crash at {k} ({r})" for k, r in sorted(bad.items()))
    outcomes = [results[k] for k in range(1, len(steps) + 1)]
    assert outcomes[0] == "renewed" and outcomes[-1] == "restored", outcomes
    assert monotonic(outcomes, "renewed", "restored"), list(zip(labels, outcomes))


# --- 2. the lock ---------------------------------------------------------------------------------

def test_second_run_refuses_naming_the_holder_pid_and_changes_nothing(kubecert: Kubecert, tmp_path: Path,
                                                                      labs: Labs) -> None:
    root = copy_tree(labs.expiring, tmp_path / "node")
    fifo = tmp_path / "steps.fifo"
    os.mkfifo(fifo)
    # a real run, paused at its first transaction step: opening the FIFO blocks until a reader comes
    holder = subprocess.Popen([sys.executable, "-m", "kubecert", *renew_args(root)],
                              env=clean_env(KUBECERT_TEST_STEP_LOG=str(fifo)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = root / STATE_DIR / "lock"
        deadline = time.monotonic() + 30
        while not (lock.exists() and lock.read_text().split()[:1] == [str(holder.pid)] and (root / JOURNAL).exists()):
            assert holder.poll() is None, f"the holder ended early: {holder.communicate()}"
            assert time.monotonic() < deadline, "the holder never took the lock"
            time.sleep(0.05)
        before = tree_state(root)
        for args in (renew_args(root), renew_args(root, "apiserver"), rollback_args(root),
                     ["recover", "--root", str(root), "--now", NOW]):
            proc = kubecert(*args)
            line = assert_one_line_error(proc)
            assert re.search(rf"\bpid {holder.pid}\b.*, since 20\d\d-", line), line
        assert tree_state(root) == before, diff(before, tree_state(root))
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGKILL)
        out, err = holder.communicate(timeout=30)
        kubecert.record += [out, err]
    assert holder.returncode == -signal.SIGKILL
    # the dead holder's lock goes with it; its half-started change is cleaned up
    proc = kubecert("recover", "--root", root, "--now", NOW)
    assert proc.returncode == 0, proc.stderr
    assert node_state(root) == node_state(labs.expiring)
    assert after_crash_invariants(root) == []


# --- 3. --dry-run ----------------------------------------------------------------------------------

def _add_user_kubeconfigs(root: Path) -> Tuple[Path, Path]:
    admin = (root / "etc/kubernetes/admin.conf").read_bytes()
    root_cfg = root / "root/.kube/config"
    root_cfg.parent.mkdir(parents=True)
    root_cfg.write_bytes(admin)
    os.chmod(root_cfg, 0o600)
    doc = yaml.safe_load(admin)
    other = yaml.safe_load((root / "etc/kubernetes/controller-manager.conf").read_bytes())
    bob = {"name": "bob", "user": other["users"][0]["user"]}
    doc["users"].append(bob)
    doc["contexts"].append({"name": "bob@kubernetes", "context": {"cluster": "kubernetes", "user": "bob"}})
    doc["contexts"][0]["context"]["namespace"] = "kube-system"  # an extra field that must survive
    alice_cfg = root / "home/alice/.kube/config"
    alice_cfg.parent.mkdir(parents=True)
    alice_cfg.write_bytes(yaml.safe_dump(doc, sort_keys=False).encode())
    os.chmod(alice_cfg, 0o600)
    os.chown(alice_cfg, 1000, 1000)
    return root_cfg, alice_cfg


def test_dry_run_writes_nothing(kubecert: Kubecert, tmp_path: Path, labs: Labs) -> None:
    root = copy_tree(labs.expiring, tmp_path / "node")
    _add_user_kubeconfigs(root)
    before = tree_state(root)
    for extra in (["--update-user-kubeconfigs"], ["--key", "reuse"], []):
        proc = kubecert("renew", "all", "--root", root, "--now", NOW, "--dry-run", *extra)
        assert proc.returncode == 0, proc.stderr
        assert "nothing was written" in proc.stdout
    proc = kubecert("renew", "kubelet.conf", "apiserver", "--root", root, "--now", NOW, "--dry-run", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert tree_state(root) == before, diff(before, tree_state(root))
    assert not (root / STATE_DIR).exists(), "a dry run created kubecert's state directory"
    # and on a node kubecert already changed: not a byte of the backups, log or lock either
    assert kubecert(*renew_args(root)).returncode == 0
    before = tree_state(root)
    proc = kubecert("renew", "all", "--root", root, "--now", LATER, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert tree_state(root) == before, diff(before, tree_state(root))


# --- 4. backups and rollback -------------------------------------------------------------------------

def _backups(kubecert: Kubecert, root: Path) -> List[List[str]]:
    proc = kubecert("backups", "list", "--root", root)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split()[0] == "ID", proc.stdout
    return [line.split() for line in lines[1:]]


def test_backup_manifest_and_rollback_restore_the_tree_exactly(kubecert: Kubecert, tmp_path: Path,
                                                               labs: Labs) -> None:
    root = copy_tree(labs.expiring, tmp_path / "node")
    original = node_state(root)
    assert kubecert(*renew_args(root)).returncode == 0
    renewed = node_state(root)
    rows = _backups(kubecert, root)
    assert len(rows) == 1 and rows[0][2] == "renew", rows
    bid = rows[0][0]
    assert re.fullmatch(r"\d{8}T\d{6}Z(-\d+)?", bid), bid
    state_dir = root / STATE_DIR
    bdir = state_dir / "backups" / bid
    for d in (state_dir, state_dir / "backups", bdir):
        assert mode(d) == 0o700, f"{d}: {oct(mode(d))}"
    for p in bdir.rglob("*"):
        if p.is_file():
            assert mode(p) & 0o077 == 0, f"backup copy readable by others: {p} {oct(mode(p))}"

    manifest = json.loads((bdir / "manifest.json").read_text())
    entries = {e["path"].lstrip("/"): e for e in manifest["entries"]}
    assert set(entries) == changed(original, renewed), "the backup must hold exactly the files renewal touched"
    backed_up = {sha(p) for p in bdir.rglob("*") if p.is_file() and not p.is_symlink()}
    for rel, e in entries.items():
        was = original.get(rel)
        if was is None:
            assert e["existed"] is False, e
        elif was[0] == "link":
            assert e["existed"] and e["link_target"] == was[1], e
        else:
            assert e["existed"] and (e["mode"], e["uid"], e["gid"], e["sha256"]) == was[1:], e
            assert e["sha256"] in backed_up, f"no copy of {rel} in the backup"

    proc = kubecert(*rollback_args(root))
    assert proc.returncode == 0, proc.stderr
    assert node_state(root) == original, diff(original, node_state(root))
    assert not (root / NEW_DATED).exists()
    assert os.readlink(root / CURRENT) == os.readlink(labs.expiring / CURRENT)
    rows = _backups(kubecert, root)
    assert [r[2] for r in rows] == ["renew", "rollback"], rows
    undo = rows[1][0]

    before = tree_state(root)
    for unknown in ("20991231T235959Z", "no-such-backup", "../backups"):
        assert_one_line_error(kubecert(*rollback_args(root, unknown)), unknown)
    assert tree_state(root) == before

    proc = kubecert(*rollback_args(root, undo, now="2026-11-30T02:00:00Z"))
    assert proc.returncode == 0, proc.stderr
    assert node_state(root) == renewed, diff(renewed, node_state(root))


@pytest.mark.parametrize("failure", ["failed-write", "crash-recover"])
def test_rollback_default_skips_renewals_that_never_happened(kubecert: Kubecert, tmp_path: Path, labs: Labs,
                                                            failure: str) -> None:
    root = copy_tree(labs.expiring, tmp_path / "node")
    original = node_state(root)
    assert kubecert(*renew_args(root)).returncode == 0
    renewed = node_state(root)
    second = "2026-12-01T00:00:00Z"
    if failure == "failed-write":
        if not chattr_supported(tmp_path):
            pytest.skip("chattr +i is not supported here")
        target = root / "etc/kubernetes/scheduler.conf"
        subprocess.run(["chattr", "+i", str(target)], check=True)
        try:
            proc = kubecert(*renew_args(root, now=second))
        finally:
            subprocess.run(["chattr", "-i", str(target)], check=True)
        assert proc.returncode != 0
    else:
        steps, _ = learn_steps(kubecert, root, tmp_path / "learn", lambda r: renew_args(r, now=second))
        k = next(n for n, label in steps if label.startswith("rename "))
        assert kubecert(*renew_args(root, now=second), env=clean_env(KUBECERT_TEST_CRASH_AT=str(k))).returncode == 137
        assert kubecert("recover", "--root", root, "--now", second).returncode == 0
    assert node_state(root) == renewed, "precondition: the second renewal was undone"
    proc = kubecert(*rollback_args(root, now="2026-12-02T00:00:00Z"))
    assert proc.returncode == 0, proc.stderr
    assert node_state(root) == original, "rollback did not undo the last renewal that happened:\n" + \
        diff(original, node_state(root))


# --- 5. the audit log ----------------------------------------------------------------------------

def _cert_in(root: Path, shown: str) -> x509.Certificate:
    """The certificate now in the file an audit record names (a display path under ``root``)."""
    assert shown.startswith(str(root) + "/"), shown
    node_path = shown[len(str(root)):]
    path = root / node_path.lstrip("/")
    if path.is_symlink() and os.readlink(path).startswith("/"):  # the kubelet's link, a node path
        path = root / os.readlink(path).lstrip("/")
    data = path.read_bytes()
    if path.suffix == ".conf":
        doc = yaml.safe_load(data)
        data = base64.b64decode(doc["users"][0]["user"]["client-certificate-data"])
    return x509.load_pem_x509_certificates(data)[0]


def test_audit_log_records_every_renewal_without_key_material(kubecert: Kubecert, tmp_path: Path,
                                                              labs: Labs) -> None:
    root = copy_tree(labs.expiring, tmp_path / "node")
    assert kubecert(*renew_args(root)).returncode == 0
    log = root / STATE_DIR / "audit.log"
    assert mode(log) == 0o600
    text = log.read_text()
    records = [json.loads(line) for line in text.splitlines()]
    renewals = [r for r in records if r.get("action") == "renew"]
    assert {r["name"] for r in renewals} >= CORE, sorted(r["name"] for r in renewals)
    for r in renewals:
        for field in ("time", "user", "host", "action", "name", "oldSerial", "newSerial", "sha256Fingerprint",
                      "newNotAfter"):
            assert r.get(field) not in (None, ""), f"{r.get('name')}: no {field}: {r}"
        assert r["time"].startswith("2026-11-30T00:00:00"), r
        assert r["user"] == getpass.getuser() and r["host"] == socket.gethostname(), r
        new = _cert_in(root, r["file"])
        old = _cert_in(labs.expiring, str(labs.expiring) + r["file"][len(str(root)):])
        assert int(r["oldSerial"], 16) == old.serial_number, r
        assert int(r["newSerial"], 16) == new.serial_number, r
        assert r["sha256Fingerprint"].replace(":", "").lower() == new.fingerprint(hashes.SHA256()).hex(), r
        assert r["newNotAfter"].startswith(new.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%S")), r
    # rollback is audited too
    assert kubecert(*rollback_args(root)).returncode == 0
    actions = [json.loads(line)["action"] for line in log.read_text().splitlines()]
    assert actions[-1] == "rollback", actions
    # every other key-material check runs in the `kubecert` fixture, over stdout, stderr and audit.log
    assert "PRIVATE KEY" not in log.read_text()


# --- 6. modes and owners ---------------------------------------------------------------------------

def test_modes_and_owners_after_renew(kubecert: Kubecert, tmp_path: Path, labs: Labs) -> None:
    root = copy_tree(labs.expiring, tmp_path / "node")
    pki = root / "etc/kubernetes/pki"
    os.chown(pki / "apiserver.crt", 1234, 1234)
    os.chown(pki / "front-proxy-client.key", 1234, 1234)
    os.chmod(root / "etc/kubernetes/scheduler.conf", 0o640)
    before = node_state(root)
    assert kubecert(*renew_args(root)).returncode == 0
    renewed = node_state(root)
    for p in pki.rglob("*.key"):
        assert mode(p) == 0o600, f"{p}: {oct(mode(p))}"
    for p in pki.rglob("*.crt"):
        assert mode(p) == 0o644, f"{p}: {oct(mode(p))}"
    for p in (root / "etc/kubernetes").glob("*.conf"):
        assert mode(p) == 0o600, f"{p}: {oct(mode(p))}"
    assert mode(root / NEW_DATED) == 0o600
    assert mode(root / KUBELET_PKI / "kubelet.key") == 0o600
    assert mode(root / KUBELET_PKI / "kubelet.crt") == 0o644
    for rel in ("etc/kubernetes/pki/apiserver.crt", "etc/kubernetes/pki/front-proxy-client.key"):
        assert renewed[rel] != before[rel], f"{rel} was not renewed"
        st = os.lstat(root / rel)
        assert (st.st_uid, st.st_gid) == (1234, 1234), f"{rel}: owner not preserved"
    # rollback puts modes and owners back too
    assert kubecert(*rollback_args(root)).returncode == 0
    assert node_state(root) == before, diff(before, node_state(root))


# --- 7. bad input --------------------------------------------------------------------------------

def _replace_ca_key(root: Path, labs: Labs) -> str:
    shutil.copyfile(labs.healthy / "etc/kubernetes/pki/ca.key", root / "etc/kubernetes/pki/ca.key")
    return "pki/ca.key"


def _foreign_leaf(root: Path, labs: Labs) -> str:
    for ext in ("crt", "key"):
        shutil.copyfile(labs.healthy / f"etc/kubernetes/pki/apiserver.{ext}", root / f"etc/kubernetes/pki/apiserver.{ext}")
    return "pki/apiserver.crt"


def _corrupt_pem(root: Path, labs: Labs) -> str:
    (root / "etc/kubernetes/pki/apiserver.crt").write_text(
        "-----BEGIN CERTIFICATE-----\nthis is not base64 at all!!\n-----END CERTIFICATE-----\n")
    return "pki/apiserver.crt"


def _garbage(root: Path, labs: Labs) -> str:
    (root / "etc/kubernetes/pki/etcd/peer.crt").write_bytes(bytes(range(256)) * 4)
    return "pki/etcd/peer.crt"


def _truncated_pem(root: Path, labs: Labs) -> str:
    path = root / "etc/kubernetes/pki/front-proxy-client.crt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return "pki/front-proxy-client.crt"


def _kubeconfig_without_user(root: Path, labs: Labs) -> str:
    path = root / "etc/kubernetes/scheduler.conf"
    doc = yaml.safe_load(path.read_bytes())
    doc["contexts"][0]["context"]["user"] = "nobody"
    path.write_bytes(yaml.safe_dump(doc, sort_keys=False).encode())
    return "scheduler.conf"


BAD_INPUT: Dict[str, Callable[[Path, Labs], str]] = {
    "ca-key-does-not-match-ca-cert": _replace_ca_key,
    "leaf-not-issued-by-its-ca": _foreign_leaf,
    "corrupt-pem": _corrupt_pem,
    "garbage-bytes": _garbage,
    "truncated-pem": _truncated_pem,
    "kubeconfig-current-user-missing": _kubeconfig_without_user,
}


def _assert_refused_unchanged(root: Path, before: State) -> None:
    after = node_state(root)
    assert after == before, diff(before, after)
    state_dir = root / STATE_DIR
    if state_dir.exists():  # the lock must live somewhere; nothing else may be left
        assert sorted(os.listdir(state_dir)) in ([], ["lock"]), os.listdir(state_dir)
    assert strays(root) == []


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_refused_with_one_line_and_changes_nothing(kubecert: Kubecert, tmp_path: Path, labs: Labs,
                                                               case: str) -> None:
    root = copy_tree(labs.expiring, tmp_path / "node")
    names_file = BAD_INPUT[case](root, labs)
    before = node_state(root)
    assert_one_line_error(kubecert(*renew_args(root)), names_file)
    _assert_refused_unchanged(root, before)


@pytest.mark.parametrize("target", ["../../../outside/etc/kubernetes/pki", "../../../../.."])
def test_root_escaping_through_a_symlink_is_refused(kubecert: Kubecert, tmp_path: Path, labs: Labs,
                                                    target: str) -> None:
    outside = copy_tree(labs.expiring, tmp_path / "outside")
    root = copy_tree(labs.expiring, tmp_path / "node")
    shutil.rmtree(root / "etc/kubernetes/pki")
    os.symlink(target, root / "etc/kubernetes/pki")
    before, outside_before = node_state(root), tree_state(outside)
    for args in (renew_args(root), ["renew", "all", "--root", str(root), "--now", NOW, "--dry-run"]):
        proc = kubecert(*args)
        assert tree_state(outside) == outside_before, "kubecert wrote outside --root"
        line = assert_one_line_error(proc, "pki")
        assert "escape" in line, line
        _assert_refused_unchanged(root, before)


def test_permission_denied_part_way_rolls_back(kubecert: Kubecert, tmp_path: Path, labs: Labs) -> None:
    """root ignores file modes, but not the immutable attribute: scheduler.conf is renamed after
    sixteen other files are already in place, so the failure comes part-way through the switch."""
    if not chattr_supported(tmp_path):
        pytest.skip("chattr +i is not supported on this file system (or without CAP_LINUX_IMMUTABLE)")
    root = copy_tree(labs.expiring, tmp_path / "node")
    steps, _ = learn_steps(kubecert, labs.expiring, tmp_path / "learn", renew_args)
    renames = [label for _, label in steps if label.startswith("rename ")]
    late = "/etc/kubernetes/scheduler.conf"
    assert renames.index(f"rename {late}") >= 5, "pick a file renamed later in the transaction"
    before = node_state(root)
    target = root / late.lstrip("/")
    subprocess.run(["chattr", "+i", str(target)], check=True)
    try:
        proc = kubecert(*renew_args(root))
    finally:
        subprocess.run(["chattr", "-i", str(target)], check=True)
    line = assert_one_line_error(proc, "scheduler.conf")
    assert "rolled back" in line, line
    assert node_state(root) == before, diff(before, node_state(root))
    assert after_crash_invariants(root) == []
    # and nothing is left half-done for the next run
    proc = kubecert(*renew_args(root))
    assert proc.returncode == 0, proc.stderr
    assert "recovered" not in proc.stdout


def _ro_bind_works(where: Path) -> bool:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    d = where / "ro-probe"
    d.mkdir()
    try:
        script = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && ! touch "$1/x" 2>/dev/null'
        return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(d)], capture_output=True,
                              timeout=30).returncode == 0
    finally:
        shutil.rmtree(d)


def test_read_only_file_system_part_way_changes_nothing(kubecert: Kubecert, tmp_path: Path, labs: Labs) -> None:
    """/var/lib/kubelet/pki read-only (a private read-only bind mount): every file under /etc/kubernetes
    is backed up and staged first, then writing the kubelet's new pem fails."""
    if not _ro_bind_works(tmp_path):
        pytest.skip("no private read-only bind mounts here (unshare -m)")
    root = copy_tree(labs.expiring, tmp_path / "node")
    before = node_state(root)
    ro = root / KUBELET_PKI
    script = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && shift && exec "$@"'
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(ro), sys.executable, "-m", "kubecert",
                           *renew_args(root)], capture_output=True, text=True, timeout=60, env=clean_env())
    kubecert.record += [proc.stdout, proc.stderr]
    assert_one_line_error(proc, "var/lib/kubelet/pki", "Read-only file system")
    assert node_state(root) == before, diff(before, node_state(root))
    assert after_crash_invariants(root) == []


# --- 8. --update-user-kubeconfigs ---------------------------------------------------------------------

def _users(path: Path) -> Dict[str, Dict[str, str]]:
    return {u["name"]: u["user"] for u in yaml.safe_load(path.read_bytes())["users"]}


def test_update_user_kubeconfigs(kubecert: Kubecert, tmp_path: Path, labs: Labs) -> None:
    root = copy_tree(labs.expiring, tmp_path / "node")
    root_cfg, alice_cfg = _add_user_kubeconfigs(root)
    alice_before = yaml.safe_load(alice_cfg.read_bytes())
    assert kubecert(*renew_args(root, extra=["--update-user-kubeconfigs"])).returncode == 0
    admin = _users(root / "etc/kubernetes/admin.conf")["kubernetes-admin"]
    assert admin != alice_before["users"][0]["user"], "precondition: admin.conf was renewed"
    for cfg in (root_cfg, alice_cfg):
        assert _users(cfg)["kubernetes-admin"] == admin, f"{cfg}: not the new admin cert and key"
    alice = yaml.safe_load(alice_cfg.read_bytes())
    assert _users(alice_cfg)["bob"] == {u["name"]: u["user"] for u in alice_before["users"]}["bob"]
    assert alice["contexts"] == alice_before["contexts"] and alice["clusters"] == alice_before["clusters"]
    st = os.lstat(alice_cfg)
    assert (st.st_uid, st.st_gid, mode(alice_cfg)) == (1000, 1000, 0o600)
    if shutil.which("kubectl"):
        for cfg in (root_cfg, alice_cfg):
            view = subprocess.run(["kubectl", "config", "view", "--kubeconfig", str(cfg), "--raw", "-o", "json"],
                                  capture_output=True, text=True, timeout=60)
            assert view.returncode == 0, view.stderr
            assert {u["name"] for u in json.loads(view.stdout)["users"]} >= {"kubernetes-admin"}
    bid = _backups(kubecert, root)[-1][0]
    manifest = json.loads((root / STATE_DIR / "backups" / bid / "manifest.json").read_text())
    paths = {e["path"] for e in manifest["entries"]}
    assert {"/root/.kube/config", "/home/alice/.kube/config"} <= paths


def test_update_user_kubeconfigs_keeps_a_symlink_to_admin_conf(kubecert: Kubecert, tmp_path: Path,
                                                              labs: Labs) -> None:
    root = copy_tree(labs.expiring, tmp_path / "node")
    link = root / "root/.kube/config"
    link.parent.mkdir(parents=True)
    os.symlink("/etc/kubernetes/admin.conf", link)
    assert kubecert(*renew_args(root, extra=["--update-user-kubeconfigs"])).returncode == 0
    assert link.is_symlink(), "the symlink to admin.conf was replaced by a copy"
    assert os.readlink(link) == "/etc/kubernetes/admin.conf"


def test_user_kubeconfigs_untouched_without_the_flag(kubecert: Kubecert, tmp_path: Path, labs: Labs) -> None:
    root = copy_tree(labs.expiring, tmp_path / "node")
    _add_user_kubeconfigs(root)
    homes = {d: tree_state(root / d) for d in ("root", "home")}
    assert kubecert(*renew_args(root)).returncode == 0
    assert {d: tree_state(root / d) for d in ("root", "home")} == homes


# --- 9. the kubelet's client cert ---------------------------------------------------------------------

def _kubelet_pem(root: Path) -> Tuple[x509.Certificate, object]:
    data = (root / NEW_DATED).read_bytes()
    return x509.load_pem_x509_certificates(data)[0], serialization.load_pem_private_key(data, None)


def test_kubelet_client_cert_near_expiry_gets_a_new_dated_pem(kubecert: Kubecert, tmp_path: Path,
                                                              labs: Labs) -> None:
    root = copy_tree(labs.expiring, tmp_path / "node")
    old_link = os.readlink(root / CURRENT)
    old_dated = root / old_link.lstrip("/")
    old_sha = sha(old_dated)
    kubelet_conf = sha(root / "etc/kubernetes/kubelet.conf")
    assert kubecert(*renew_args(root)).returncode == 0
    new = root / NEW_DATED
    assert new.is_file() and not new.is_symlink() and mode(new) == 0o600
    assert os.readlink(root / CURRENT) == "/" + NEW_DATED, "the symlink must name the new pem as the kubelet does"
    assert sha(old_dated) == old_sha, "the old dated pem must stay"
    assert sha(root / "etc/kubernetes/kubelet.conf") == kubelet_conf
    cert, key = _kubelet_pem(root)
    ca = x509.load_pem_x509_certificate((root / "etc/kubernetes/pki/ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.rfc4514_string() == "CN=system:node:master-1,O=system:nodes"
    assert cert.not_valid_after_utc == NOW_DT + dt.timedelta(days=365)
    assert cert.public_key() == key.public_key()  # type: ignore[attr-defined]
    st_old, st_new = os.lstat(old_dated), os.lstat(new)
    assert (st_new.st_uid, st_new.st_gid) == (st_old.st_uid, st_old.st_gid)


def test_healthy_kubelet_cert_is_left_to_the_kubelet_unless_named(kubecert: Kubecert, tmp_path: Path,
                                                                  labs: Labs) -> None:
    root = copy_tree(labs.healthy, tmp_path / "node")
    kubelet_before = tree_state(root / KUBELET_PKI)
    proc = kubecert(*renew_args(root))
    assert proc.returncode == 0, proc.stderr
    row = re.search(r"^kubelet\.conf\s+skip\s+(\S.*)$", proc.stdout, re.M)
    assert row and "rotates" in row.group(1), proc.stdout
    assert tree_state(root / KUBELET_PKI) == kubelet_before, "renew all touched a healthy kubelet cert"

    before = node_state(root)
    proc = kubecert(*renew_args(root, "kubelet.conf", now=LATER))
    assert proc.returncode == 0, proc.stderr
    dated = f"{KUBELET_PKI}/kubelet-client-2026-11-30-01-00-00.pem"
    assert changed(before, node_state(root)) == {dated, CURRENT}
    assert os.readlink(root / CURRENT) == "/" + dated
    assert mode(root / dated) == 0o600
