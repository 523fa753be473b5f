"""Every way a renewal can go wrong on an operator's node ends in one line, a documented exit code and
a node that is all-old (or all-new): certificates that would not be valid now, read-only and full
disks, no root, immutable or misshapen state directories, extreme flags, other encodings, a stale
lock from a dropped SSH run, Ctrl-C, and the leftovers of a crash.

Real things throughout: lab trees written by `kubecert lab create`, the CLI as a fresh process, real
tmpfs mounts for a full disk, real read-only bind mounts, real SIGINT. The validity tests use the
real clock on purpose: "valid now" is about the wall clock, whatever --now says.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from kubecert.cli.common import real_now  # the wall clock, read when each test runs (never at import)
from treeutil import (
    STATE_DIR,
    assert_one_line_error,
    clean_env,
    copy_tree,
    diff,
    lab_create,
    node_state,
    run_kubecert,
    strays,
)

NOW = "2026-11-30T12:00:00Z"
JOURNAL = f"{STATE_DIR}/journal.json"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lab made at the real time (so that renewing it is valid now)."""
    return lab_create(tmp_path_factory.mktemp("lab"), "--nodes", "1", "--expires-in", "3d") / "master-1"


@pytest.fixture(scope="module")
def pinned_lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lab made at the fixtures' pinned time, renewed with --now NOW."""
    return lab_create(tmp_path_factory.mktemp("pinned"), "--nodes", "1", "--expires-in", "3d", "--now", NOW) / "master-1"


def kubecert(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = run_kubecert(*map(str, args), timeout=timeout)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def resign_ca(root: Path, not_after: dt.datetime) -> None:
    """Replace pki/ca.crt by the same CA (key, subject, extensions) with another NotAfter."""
    pki = root / "etc/kubernetes/pki"
    old = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    b = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(old.subject).public_key(old.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(min(old.not_valid_before_utc, not_after))
         .not_valid_after(not_after))
    for ext in old.extensions:
        b = b.add_extension(ext.value, ext.critical)
    (pki / "ca.crt").write_bytes(b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))  # type: ignore[arg-type]


# --- 2. never issue a certificate that is not valid now ------------------------------------------------

@pytest.mark.parametrize("now", ["2031-06-01T00:00:00Z", "2027-12-31T00:00:00Z"])
def test_now_far_from_the_real_clock_is_refused(lab: Path, tmp_path: Path, now: str) -> None:
    root = copy_tree(lab, tmp_path / "node")
    before = node_state(root)
    assert_one_line_error(kubecert("renew", "all", "--root", root, "--now", now, "--yes"),
                          "would not be valid now", "is not the real time", "--force-validity", "nothing was changed")
    assert node_state(root) == before, diff(before, node_state(root))
    forced = kubecert("renew", "all", "--root", root, "--now", now, "--yes", "--force-validity", "--min-days", "0")
    assert forced.returncode in (0, 3), forced.stderr  # 2031 is past the CA: then refused by the CA rule
    if forced.returncode == 3:
        assert "CA ca expired" in forced.stderr or "CA etcd-ca expired" in forced.stderr


def test_now_before_the_ca_existed_is_refused(lab: Path, tmp_path: Path) -> None:
    root = copy_tree(lab, tmp_path / "node")
    before = node_state(root)
    for extra in ([], ["--force-validity"]):
        assert_one_line_error(kubecert("renew", "all", "--root", root, "--now", "2020-01-01T00:00:00Z", "--yes", *extra),
                              "nothing was changed")
    assert node_state(root) == before


def test_ca_expiring_within_minutes_is_refused_then_allowed_by_min_days(lab: Path, tmp_path: Path) -> None:
    root = copy_tree(lab, tmp_path / "node")
    resign_ca(root, (real_now() + dt.timedelta(minutes=30)).replace(microsecond=0))
    before = node_state(root)
    assert_one_line_error(kubecert("renew", "apiserver", "--root", root, "--yes"),
                          "apiserver: the new certificate would live only", "when its CA ca expires", "--min-days")
    assert node_state(root) == before
    ok = kubecert("renew", "apiserver", "--root", root, "--yes", "--min-days", "0")
    assert ok.returncode == 0, ok.stderr
    assert "capped" in ok.stdout
    cert = x509.load_pem_x509_certificate((root / "etc/kubernetes/pki/apiserver.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((root / "etc/kubernetes/pki/ca.crt").read_bytes())
    assert cert.not_valid_after_utc == ca.not_valid_after_utc
    assert cert.not_valid_before_utc >= ca.not_valid_before_utc
    assert cert.not_valid_before_utc <= dt.datetime.now(dt.timezone.utc) < cert.not_valid_after_utc


def test_expired_ca_is_one_line_and_check_does_not_suggest_renew(lab: Path, tmp_path: Path) -> None:
    root = copy_tree(lab, tmp_path / "node")
    resign_ca(root, (real_now() - dt.timedelta(days=1)).replace(microsecond=0))
    before = node_state(root)
    line = assert_one_line_error(kubecert("renew", "all", "--root", root, "--yes"), "CA ca expired on ",
                                 "renew it first (`kubecert ca renew ca`; on a cluster `kubecert cluster ca renew ca`) "
                                 "or rotate it")
    assert kubecert("renew", "all", "--root", root, "--yes").returncode == 3, line
    assert node_state(root) == before
    # check's hint for a leaf of the expired CA must not be a command that then fails
    later = (real_now() + dt.timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = kubecert("check", "--root", root, "--now", later).stdout
    fixes = [ln for ln in out.splitlines() if "fix:" in ln]
    assert any("ca" in ln and ("rotate" in ln or "kubecert ca renew" in ln) for ln in fixes), out
    assert not any(ln.strip() in ("fix: kubecert renew apiserver", "fix: kubecert renew admin.conf") for ln in fixes), out


# --- 3. no traceback, no wedge ------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["check", "--now", "9999-12-31T23:59:59Z"],
    ["check", "--now", "0001-01-01T00:00:00Z"],
    ["check", "--warn", "99999999999999999999d"],
    ["check", "--crit", "1000000000y"],
    ["renew", "all", "--now", "9999-12-31T23:59:59Z", "--dry-run"],
    ["renew", "all", "--days", "99999999999", "--dry-run"],
    ["check", "--bogus-flag"],
    ["renew", "not-a-cert"],
    ["lab", "create"],
], ids=lambda a: " ".join(a))
def test_bad_flags_are_one_line_exit_3(pinned_lab: Path, args: List[str]) -> None:
    before = node_state(pinned_lab)
    proc = kubecert(*args, "--root", pinned_lab) if args[0] != "lab" else kubecert(*args)
    assert proc.returncode == 3, proc.stderr
    assert_one_line_error(proc)
    assert node_state(pinned_lab) == before


@pytest.mark.parametrize("shape", ["state-dir-is-a-file", "lock-is-a-directory"])
def test_misshapen_state_directory_is_one_line(pinned_lab: Path, tmp_path: Path, shape: str) -> None:
    root = copy_tree(pinned_lab, tmp_path / "node")
    state = root / STATE_DIR
    if shape == "state-dir-is-a-file":
        state.write_text("not a directory\n")
    else:
        (state / "lock").mkdir(parents=True)
    before = node_state(root)
    for args in (["renew", "all", "--now", NOW, "--yes"], ["rollback", "--yes"], ["recover"],
                 ["backups", "prune", "--keep", "1"]):
        assert_one_line_error(kubecert(*args, "--root", root))
    assert node_state(root) == before


def test_immutable_kubernetes_dir_is_one_line(pinned_lab: Path, tmp_path: Path) -> None:
    root = copy_tree(pinned_lab, tmp_path / "node")
    target = root / "etc/kubernetes"
    if subprocess.run(["chattr", "+i", str(target)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    try:
        before = node_state(root)
        assert_one_line_error(kubecert("renew", "all", "--root", root, "--now", NOW, "--yes"), "nothing was changed")
        assert node_state(root) == before
    finally:
        subprocess.run(["chattr", "-i", str(target)], check=True)


def _in_ro_mount(root: Path, *args: object) -> subprocess.CompletedProcess[str]:
    script = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && shift && exec "$@"'
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(root), sys.executable, "-m", "kubecert",
                           *map(str, args)], capture_output=True, text=True, timeout=60, env=clean_env())


def test_read_only_root_renew_rollback_recover(pinned_lab: Path, tmp_path: Path) -> None:
    """A rescue disk mounted read-only: renew and rollback refuse in one line, recover has nothing to do."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    root = copy_tree(pinned_lab, tmp_path / "node")
    assert kubecert("renew", "all", "--root", root, "--now", NOW, "--yes").returncode == 0  # a backup to roll back to
    before = node_state(root)
    probe = _in_ro_mount(root, "check", "--root", root, "--now", NOW)
    if "Permission denied" in probe.stderr or "mount:" in probe.stderr:
        pytest.skip("no private read-only bind mounts here")
    assert_one_line_error(_in_ro_mount(root, "renew", "all", "--root", root, "--now", NOW, "--yes"),
                          "read-only file system", "nothing was changed")
    assert_one_line_error(_in_ro_mount(root, "rollback", "--root", root, "--yes"), "read-only file system")
    rec = _in_ro_mount(root, "recover", "--root", root)
    assert rec.returncode == 0 and "nothing to recover" in rec.stdout, rec.stderr
    assert node_state(root) == before


def test_without_root_it_says_so(pinned_lab: Path, tmp_path: Path) -> None:
    """Not root: uid 0 with every capability dropped (setpriv) against a tree another uid owns is what a
    non-root operator meets (EACCES everywhere); a real other uid cannot run this machine's Python."""
    if shutil.which("setpriv") is None:
        pytest.skip("no setpriv")
    root = copy_tree(pinned_lab, tmp_path / "node")
    for top in ("etc", "var"):
        subprocess.run(["chown", "-R", "12345:12345", str(root / top)], check=True)
    os.chmod(root / "etc/kubernetes", 0o700)
    before = node_state(root)
    for args in (["renew", "all", "--now", NOW, "--yes"], ["check", "--now", NOW], ["recover"], ["rollback", "--yes"],
                 ["backups", "list"]):
        proc = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-m", "kubecert",
                               *args, "--root", str(root)], capture_output=True, text=True, timeout=60, env=clean_env())
        assert_one_line_error(proc, "permission denied")
        assert proc.returncode == 3
    assert node_state(root) == before


@pytest.mark.parametrize("encoding", ["utf-16", "latin-1"])
def test_kubeconfig_in_another_encoding(pinned_lab: Path, tmp_path: Path, encoding: str) -> None:
    root = copy_tree(pinned_lab, tmp_path / "node")
    conf = root / "etc/kubernetes/scheduler.conf"
    text = conf.read_text()
    if encoding == "latin-1":
        text = text.replace("name: kubernetes\n", "name: kubernetes\n# propri\u00e9taire\n", 1)
        conf.write_bytes(text.encode("latin-1"))
    else:
        conf.write_bytes(text.encode("utf-16"))  # with its byte-order mark
    before = node_state(root)
    proc = kubecert("renew", "scheduler.conf", "--root", root, "--now", NOW, "--yes")
    if encoding == "utf-16":
        assert proc.returncode == 0, proc.stderr
        raw = conf.read_bytes()
        assert raw.startswith(b"\xff\xfe") and raw.decode("utf-16") != text  # still UTF-16, renewed
    else:
        assert_one_line_error(proc, "scheduler.conf")
        assert node_state(root) == before


# --- disk full -------------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path, leave: int = 0) -> None:
    """Fill the file system to ``leave`` free bytes (0: completely)."""
    with open(disk / "filler", "ab") as fh:
        while True:
            st = os.statvfs(disk)
            free = st.f_bavail * st.f_frsize - leave
            if free <= 0:
                break
            try:
                fh.write(b"\0" * min(free, 1 << 20))
                fh.flush()
            except OSError:
                break


def test_disk_full_renew_changes_nothing_and_cleans_up(pinned_lab: Path, small_disk: Path) -> None:
    root = copy_tree(pinned_lab, small_disk / "node")
    out = kubecert("check", "--root", root, "--now", NOW).stdout
    assert "disk: a renewal needs about" in out and "free" in out, out
    fill(small_disk, leave=8 << 10)
    before = node_state(root)
    check = kubecert("check", "--root", root, "--now", NOW)
    assert "NOT ENOUGH" in check.stdout and check.returncode == 2, check.stdout
    line = assert_one_line_error(kubecert("renew", "all", "--root", root, "--now", NOW, "--yes"),
                                 "nothing was changed", "free some space")
    assert "No space left" in line, line
    assert node_state(root) == before, diff(before, node_state(root))
    assert strays(root) == []
    assert not list((root / STATE_DIR / "backups").glob("*")), "the partial backup was left behind"


def test_recover_works_on_a_full_disk(pinned_lab: Path, small_disk: Path) -> None:
    root = copy_tree(pinned_lab, small_disk / "node")
    original = node_state(root)
    # learn where the renames start, then die there (kill -9 semantics)
    log = small_disk / "steps.log"
    learn = copy_tree(pinned_lab, small_disk / "learn")
    run_kubecert("renew", "all", "--root", str(learn), "--now", NOW, "--yes",
                 env=clean_env(KUBECERT_TEST_STEP_LOG=str(log)))
    steps = [ln.split(" ", 1) for ln in log.read_text().splitlines()]
    shutil.rmtree(learn)
    log.unlink()
    renames = [int(n) for n, label in steps if label.startswith("rename ")]
    crash = run_kubecert("renew", "all", "--root", str(root), "--now", NOW, "--yes",
                         env=clean_env(KUBECERT_TEST_CRASH_AT=str(renames[len(renames) // 2])))
    assert crash.returncode == 137, crash.stderr
    assert (root / JOURNAL).exists()
    fill(small_disk)  # not a byte left
    rec = kubecert("recover", "--root", root, "--now", NOW)
    assert rec.returncode == 0, rec.stderr
    assert "rolled back" in rec.stdout, rec.stdout
    assert not (root / JOURNAL).exists()
    state = node_state(root)
    assert state == original, diff(original, state)
    assert strays(root) == []


# --- leftovers, prune ---------------------------------------------------------------------------------------

def test_recover_removes_leftover_temp_files_holding_keys(pinned_lab: Path, tmp_path: Path) -> None:
    root = copy_tree(pinned_lab, tmp_path / "node")
    pki = root / "etc/kubernetes/pki"
    leftovers = [pki / ".apiserver.key.kubecert-tmp-0123456789abcdef", pki / ".apiserver.key.kubecert-new",
                 root / "var/lib/kubelet/pki/.kubelet-client-current.pem.kubecert-tmp-fedcba9876543210"]
    for p in leftovers:
        p.write_bytes((pki / "apiserver.key").read_bytes())
    rec = kubecert("recover", "--root", root)
    assert rec.returncode == 0 and "removed 3 leftover temp file(s)" in rec.stdout, rec.stdout
    assert not any(p.exists() for p in leftovers)
    assert (pki / "apiserver.key").exists()


def test_backups_prune(pinned_lab: Path, tmp_path: Path) -> None:
    root = copy_tree(pinned_lab, tmp_path / "node")
    for hour in range(5):
        assert kubecert("renew", "apiserver", "--root", root, "--now", f"2026-11-30T1{hour}:00:00Z", "--yes",
                        "--force-validity").returncode == 0
    backups = root / STATE_DIR / "backups"
    ids = sorted(p.name for p in backups.iterdir())
    assert len(ids) == 5
    assert_one_line_error(kubecert("backups", "prune", "--root", root), "--keep")
    dry = kubecert("backups", "prune", "--root", root, "--keep", "2", "--dry-run")
    assert dry.returncode == 0 and "3 backup(s) would be removed" in dry.stdout
    assert len(list(backups.iterdir())) == 5
    old = kubecert("backups", "prune", "--root", root, "--older-than", "2h", "--now", "2026-11-30T14:30:00Z")
    assert old.returncode == 0 and "3 backup(s) removed" in old.stdout, old.stdout  # made at 10, 11 and 12
    assert sorted(p.name for p in backups.iterdir()) == ids[3:]
    assert kubecert("backups", "prune", "--root", root, "--keep", "1").returncode == 0
    assert sorted(p.name for p in backups.iterdir()) == ids[4:]


# --- a stale lock from a dropped SSH run ---------------------------------------------------------------------

def _half_renewed(pinned_lab: Path, tmp_path: Path) -> Path:
    root = copy_tree(pinned_lab, tmp_path / "node")
    crash = run_kubecert("renew", "all", "--root", str(root), "--now", NOW, "--yes",
                         env=clean_env(KUBECERT_TEST_CRASH_AT="40"))
    assert crash.returncode == 137 and (root / JOURNAL).exists(), crash.stderr
    return root


def test_stale_remote_lock_is_shown_and_broken_on_request(pinned_lab: Path, tmp_path: Path) -> None:
    original = node_state(copy_tree(pinned_lab, tmp_path / "pristine"))
    root = _half_renewed(pinned_lab, tmp_path)
    (root / STATE_DIR / "lock").write_text("4242@operator-laptop 2026-11-30T11:58:00Z\n")
    for args in (["recover"], ["renew", "all", "--now", NOW, "--yes"]):
        assert_one_line_error(kubecert(*args, "--root", root), "pid 4242 on operator-laptop",
                              "since 2026-11-30T11:58:00Z", "kubecert recover --break-lock")
    rec = kubecert("recover", "--root", root, "--break-lock", "--now", NOW)
    assert rec.returncode == 0, rec.stderr
    assert "took over the lock left by pid 4242 on operator-laptop" in rec.stdout, rec.stdout
    assert "had changed nothing" in rec.stdout or "rolled back" in rec.stdout, rec.stdout
    assert node_state(root) == original, diff(original, node_state(root))
    records = [json.loads(ln) for ln in (root / STATE_DIR / "audit.log").read_text().splitlines()]
    assert any(r.get("action") == "break-lock" and "4242" in r.get("holder", "") for r in records), records


def test_lock_of_a_live_process_on_this_host_is_not_broken(pinned_lab: Path, tmp_path: Path) -> None:
    root = _half_renewed(pinned_lab, tmp_path)
    (root / STATE_DIR / "lock").write_text(f"{os.getpid()}@{socket.gethostname()} 2026-11-30T11:58:00Z\n")
    assert_one_line_error(kubecert("recover", "--root", root, "--break-lock"), "still running")
    assert (root / JOURNAL).exists()


# --- Ctrl-C ---------------------------------------------------------------------------------------------------

def _steps(pinned_lab: Path, tmp_path: Path) -> List[str]:
    """The transaction's step labels for `renew all` on the pinned lab, learned from a run on a copy."""
    learn = copy_tree(pinned_lab, tmp_path / "learn")
    log = tmp_path / "steps.log"
    run_kubecert("renew", "all", "--root", str(learn), "--now", NOW, "--yes",
                 env=clean_env(KUBECERT_TEST_STEP_LOG=str(log)))
    return [ln.split(" ", 1)[1] for ln in log.read_text().splitlines()]


@pytest.mark.parametrize("where", ["stage ", "rename "])
def test_ctrl_c_during_a_change_rolls_back_and_says_so(pinned_lab: Path, tmp_path: Path, where: str) -> None:
    labels = _steps(pinned_lab, tmp_path)
    step = 1 + [i for i, label in enumerate(labels) if label.startswith(where)][3]
    root = copy_tree(pinned_lab, tmp_path / "node")
    before = node_state(root)
    flag = tmp_path / "paused"
    proc = subprocess.Popen([sys.executable, "-m", "kubecert", "renew", "all", "--root", str(root), "--now", NOW,
                             "--yes"], env=clean_env(KUBECERT_TEST_PAUSE_AT=str(step), KUBECERT_TEST_PAUSE_FLAG=str(flag)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # as from a terminal: a background job (CI) inherits SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in out + err
    want = ("interrupted while switching files; rolled back: every file is as it was before" if where == "rename "
            else "interrupted before any file changed; nothing was changed")
    assert want in err, err
    assert node_state(root) == before, diff(before, node_state(root))
    assert not (root / JOURNAL).exists() and strays(root) == []
