"""Renewal on a timer: `renew --if-expiring-within` on fresh and expiring labs, `kubecert timer
install|remove|status` (units checked by `systemd-analyze verify`, cron entries, the marker, the
scheduler detection), and `cluster timer` staggering, on local lab roots and over real sshd."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from cryptography import x509

from kubecert import timer as T
from kubecert.errors import ConfigError
from kubecert.store import LocalFS
from treeutil import assert_one_line_error, clean_env, copy_tree, diff, lab_create, run_kubecert, tree_state

SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"
UNITS = "etc/systemd/system"
# `kubecert cluster` with the timer group attached as the cluster CLI will attach it
CLUSTER_WITH_TIMER = ("import sys; from kubecert.cli.cluster import cluster; "
                      "from kubecert.cli.cluster_timer import timer; cluster.add_command(timer); "
                      "from kubecert.cli import main; main(sys.argv[1:])")


@pytest.fixture(scope="module")
def labs(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    base = tmp_path_factory.mktemp("timer")
    fresh = lab_create(base / "fresh", "--nodes", "3", "--workers", "2")
    expiring = lab_create(base / "expiring", "--nodes", "1", "--expires-in", "10d")
    return {"fresh": fresh, "expiring": expiring}


def _not_after(root: Path, name: str = "apiserver") -> dt.datetime:
    cert = x509.load_pem_x509_certificate((root / f"etc/kubernetes/pki/{name}.crt").read_bytes())
    return cert.not_valid_after_utc


# --- renew --if-expiring-within ----------------------------------------------------------------------

def test_if_expiring_within_on_a_fresh_lab_does_nothing(labs: Dict[str, Path], tmp_path: Path) -> None:
    root = copy_tree(labs["fresh"] / "master-1", tmp_path / "node")
    before = tree_state(root)
    for args in (["all", "--yes"], ["all", "--yes", "--restart"], ["apiserver", "admin.conf", "--yes"],
                 ["all", "--dry-run"]):
        proc = run_kubecert("renew", *args, "--root", str(root), "--if-expiring-within", "30d")
        assert proc.returncode == 0, proc.stderr
        assert "nothing to do" in proc.stdout
        assert tree_state(root) == before, diff(before, tree_state(root))  # not even the lock file
    assert not (root / "etc/kubernetes/.kubecert").exists()


def test_if_expiring_within_on_an_expiring_lab_renews_every_selected_name(labs: Dict[str, Path],
                                                                          tmp_path: Path) -> None:
    root = copy_tree(labs["expiring"] / "master-1", tmp_path / "node")
    old = _not_after(root)
    # 5d: nothing is due yet (the leafs have 10 days)
    before = tree_state(root)
    proc = run_kubecert("renew", "all", "--root", str(root), "--if-expiring-within", "5d", "--yes")
    assert proc.returncode == 0 and "nothing to do" in proc.stdout, proc.stderr
    assert tree_state(root) == before
    proc = run_kubecert("renew", "all", "--root", str(root), "--if-expiring-within", "30d", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert "due within 30d" in proc.stdout and "renewed 12 item(s)" in proc.stdout, proc.stdout
    assert _not_after(root) - old > dt.timedelta(days=300)
    # the next day's run: nothing due any more, nothing touched
    before = tree_state(root)
    proc = run_kubecert("renew", "all", "--root", str(root), "--if-expiring-within", "30d", "--yes")
    assert proc.returncode == 0 and "nothing to do" in proc.stdout
    assert tree_state(root) == before


def test_if_expiring_within_triggered_by_one_renews_all(labs: Dict[str, Path], tmp_path: Path) -> None:
    """Only the pki leafs are due (the kubeconfigs were renewed since): `renew all` renews them all."""
    root = copy_tree(labs["expiring"] / "master-1", tmp_path / "node")
    proc = run_kubecert("renew", "all", "--root", str(root), "--yes")
    assert proc.returncode == 0, proc.stderr
    shutil.rmtree(root / "etc/kubernetes/pki")
    shutil.copytree(labs["expiring"] / "master-1/etc/kubernetes/pki", root / "etc/kubernetes/pki")
    proc = run_kubecert("renew", "all", "--root", str(root), "--yes", "--if-expiring-within", "30d")
    assert proc.returncode == 0, proc.stderr
    due = next(line for line in proc.stdout.splitlines() if line.startswith("due within 30d: "))
    assert "apiserver," in due and "admin.conf" not in due, due
    # admin.conf & the other kubeconfigs (not due) too; the kubelet's (renewed, beyond 30 days) are
    # left to its own rotation, as `renew all` always does
    assert "renewed 10 item(s)" in proc.stdout, proc.stdout
    assert any(line.split()[:2] == ["admin.conf", "renew"] for line in proc.stdout.splitlines())


def test_if_expiring_within_must_be_shorter_than_days(labs: Dict[str, Path], tmp_path: Path) -> None:
    root = copy_tree(labs["expiring"] / "master-1", tmp_path / "node")
    before = tree_state(root)
    proc = run_kubecert("renew", "all", "--root", str(root), "--yes", "--days", "30", "--if-expiring-within", "30d")
    assert_one_line_error(proc, "must be shorter than --days")
    assert proc.returncode == 3
    proc = run_kubecert("renew", "all", "--root", str(root), "--yes", "--if-expiring-within", "soon")
    assert_one_line_error(proc, "not a duration")
    assert tree_state(root) == before


# --- kubecert timer install | remove | status --------------------------------------------------------

def _verify(unit_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(unit_dir / "kubecert-renew.service"),
                           str(unit_dir / "kubecert-renew.timer")], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.skipif(not os.path.exists(SYSTEMD_ANALYZE), reason="systemd-analyze not installed")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    root = tmp_path / "node"
    root.mkdir()
    # an ExecStart that exists on this machine: this Python, -m kubecert
    proc = run_kubecert("timer", "install", "--root", str(root), "--systemd", "--kubecert", sys.executable)
    assert proc.returncode == 0, proc.stderr
    units = root / UNITS
    service = (units / "kubecert-renew.service").read_text()
    timer = (units / "kubecert-renew.timer").read_text()
    assert f"ExecStart={sys.executable} renew all --if-expiring-within 30d --restart --yes" in service
    for line in ("OnCalendar=daily", "RandomizedDelaySec=3600", "Persistent=true", "WantedBy=timers.target"):
        assert line in timer.splitlines()
    for path in units.iterdir():
        assert path.stat().st_mode & 0o7777 == 0o644
    result = _verify(units)
    # verify warns about unknown keys and bad values on stderr but still exits 0: both must be clean
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    # it does check: a unit whose command is missing fails
    bad = tmp_path / "bad-root"
    bad.mkdir()
    proc = run_kubecert("timer", "install", "--root", str(bad), "--systemd", "--kubecert", "/nonexistent/kubecert")
    assert proc.returncode == 0, proc.stderr
    assert _verify(bad / UNITS).returncode != 0
    # a staggered schedule too
    proc = run_kubecert("timer", "install", "--root", str(root), "--systemd", "--kubecert", sys.executable,
                        "--on-calendar", "Tue *-*-* 03:00:00", "--within", "21d")
    assert proc.returncode == 0, proc.stderr
    assert "OnCalendar=Tue *-*-* 03:00:00" in (units / "kubecert-renew.timer").read_text()
    result = _verify(units)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_install_is_idempotent_and_refuses_foreign_files(tmp_path: Path) -> None:
    root = tmp_path / "node"
    (root / UNITS).mkdir(parents=True)
    args = ("timer", "install", "--root", str(root), "--systemd", "--kubecert", "/usr/local/bin/kubecert")
    assert run_kubecert(*args).returncode == 0
    before = tree_state(root)
    proc = run_kubecert(*args)
    assert proc.returncode == 0 and proc.stdout.count("unchanged") == 2, proc.stdout
    assert tree_state(root) == before
    # a unit the operator wrote (or masked) at our path is never overwritten without --force
    (root / UNITS / "kubecert-renew.timer").write_text("[Timer]\nOnCalendar=weekly\n")
    before = tree_state(root)
    proc = run_kubecert(*args)
    assert_one_line_error(proc, "kubecert-renew.timer", "not written by kubecert", "--force")
    assert proc.returncode == 3 and tree_state(root) == before
    (root / UNITS / "kubecert-renew.timer").unlink()
    (root / UNITS / "kubecert-renew.timer").symlink_to("/dev/null")
    proc = run_kubecert(*args)
    assert_one_line_error(proc, "a symlink to /dev/null")
    assert run_kubecert(*args, "--force").returncode == 0
    assert T.MARKER in (root / UNITS / "kubecert-renew.timer").read_text()
    assert not (root / UNITS / "kubecert-renew.timer").is_symlink()
    # remove refuses a foreign file too, and removes nothing then
    (root / "etc/cron.d").mkdir(parents=True)
    (root / "etc/cron.d/kubecert").write_text("0 0 * * * root true\n")
    before = tree_state(root)
    proc = run_kubecert("timer", "remove", "--root", str(root))
    assert_one_line_error(proc, "etc/cron.d/kubecert", "not written by kubecert")
    assert tree_state(root) == before


def test_remove_removes_exactly_what_install_wrote(tmp_path: Path) -> None:
    root = tmp_path / "node"
    (root / UNITS / "timers.target.wants").mkdir(parents=True)
    (root / UNITS / "other.service").write_text("[Service]\nExecStart=/bin/true\n")
    before = tree_state(root)
    proc = run_kubecert("timer", "install", "--root", str(root), "--systemd", "--kubecert", "/usr/bin/kubecert")
    assert proc.returncode == 0, proc.stderr
    assert "on the node itself (this root is not /), run: systemctl daemon-reload && systemctl enable --now " \
           "kubecert-renew.timer" in proc.stdout
    # what `systemctl enable` would add
    (root / UNITS / "timers.target.wants/kubecert-renew.timer").symlink_to("/etc/systemd/system/kubecert-renew.timer")
    status = run_kubecert("timer", "status", "--root", str(root))
    assert status.returncode == 0 and "installed: systemd" in status.stdout and "enabled" in status.stdout
    proc = run_kubecert("timer", "remove", "--root", str(root))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("removed ") == 3
    assert tree_state(root) == before, diff(before, tree_state(root))
    status = run_kubecert("timer", "status", "--root", str(root))
    assert status.returncode == 1 and "no kubecert timer installed" in status.stdout
    assert run_kubecert("timer", "remove", "--root", str(root)).returncode == 0  # nothing to remove: fine


def test_cron_entry_and_scheduler_detection(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    proc = run_kubecert("timer", "install", "--root", str(bare))
    assert_one_line_error(proc, "pass --systemd or --cron")
    assert list(bare.iterdir()) == []
    # a root with only cron: cron, detected
    cron_root = tmp_path / "cron"
    (cron_root / "etc/cron.d").mkdir(parents=True)
    proc = run_kubecert("timer", "install", "--root", str(cron_root), "--kubecert", "/usr/local/bin/kubecert",
                        "--on-calendar", "Wed *-*-* 04:30")
    assert proc.returncode == 0, proc.stderr
    assert "scheduler: cron (no systemd; /etc/cron.d exists)" in proc.stdout
    entry = (cron_root / "etc/cron.d/kubecert").read_text()
    assert entry.splitlines()[0] == T.MARKER
    assert ("30 4 * * 3 root /usr/local/bin/kubecert renew all --if-expiring-within 30d --restart --yes 2>&1 "
            "| logger -t kubecert-renew") in entry.splitlines()
    assert entry.endswith("\n") and (cron_root / "etc/cron.d/kubecert").stat().st_mode & 0o7777 == 0o644
    assert not (cron_root / UNITS).exists()
    # cron cannot express every calendar: refused, nothing written
    before = tree_state(cron_root)
    proc = run_kubecert("timer", "install", "--root", str(cron_root), "--on-calendar", "Mon..Fri 10:00")
    assert_one_line_error(proc, "cron cannot express it")
    assert tree_state(cron_root) == before
    # systemd installed under the root: systemd, and kubecert's cron entry is replaced
    (cron_root / "usr/lib/systemd").mkdir(parents=True)
    (cron_root / "usr/lib/systemd/systemd").write_text("")
    proc = run_kubecert("timer", "install", "--root", str(cron_root), "--kubecert", "/usr/local/bin/kubecert")
    assert proc.returncode == 0, proc.stderr
    assert "scheduler: systemd (systemd is installed (/usr/lib/systemd/systemd))" in proc.stdout
    assert not (cron_root / "etc/cron.d/kubecert").exists() and (cron_root / UNITS / "kubecert-renew.timer").exists()
    # /run/systemd/system (systemd as PID 1) wins
    run_root = tmp_path / "run"
    (run_root / "run/systemd/system").mkdir(parents=True)
    (run_root / "etc/cron.d").mkdir(parents=True)
    assert T.detect(LocalFS(str(run_root))) == ("systemd", "systemd is running (/run/systemd/system)")


def test_bad_values_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "node"
    root.mkdir()
    for args, needle in ((["--kubecert", "kubecert"], "absolute path"),
                         (["--kubecert", "/opt/my kubecert"], "may hold only"),
                         (["--within", "400d"], "shorter than the 365 days"),
                         (["--on-calendar", "every tuesday"], "not a systemd calendar expression")):
        proc = run_kubecert("timer", "install", "--root", str(root), "--systemd", *args)
        assert_one_line_error(proc, needle)
        assert proc.returncode == 3
    assert list(root.iterdir()) == []


# --- staggering --------------------------------------------------------------------------------------

def test_stagger_gives_every_control_plane_a_day_of_its_own() -> None:
    hosts = [("etcd-1", "etcd"), ("m1", "control-plane"), ("m2", "control-plane"), ("m3", "control-plane"),
             ("w1", "worker"), ("w2", "worker")]
    s = T.stagger(hosts)
    quorum = [s[n].on_calendar for n in ("etcd-1", "m1", "m2", "m3")]
    assert quorum == ["Mon *-*-* 03:00:00", "Tue *-*-* 03:00:00", "Wed *-*-* 03:00:00", "Thu *-*-* 03:00:00"]
    assert [s[n].cron for n in ("m1", "m2")] == ["0 3 * * 2", "0 3 * * 3"]
    assert s["w1"] == s["w2"] and s["w1"].on_calendar == "*-*-* 03:00:00"
    # more than a week of control planes: days of the month, still all distinct
    many = T.stagger([(f"m{i}", "control-plane") for i in range(12)])
    days = [many[f"m{i}"].on_calendar for i in range(12)]
    assert len(set(days)) == 12 and days[0] == "*-*-01 03:00:00" and days[11] == "*-*-12 03:00:00"
    with pytest.raises(ConfigError):
        T.stagger([(f"m{i}", "control-plane") for i in range(29)])
    with pytest.raises(ConfigError, match="next day"):
        T.stagger(hosts, hour=23, delay=3600)
    for name, sched in s.items():  # the cron form says the same day and hour
        assert T.cron_of(sched.on_calendar) == sched.cron, name


def test_cron_translation() -> None:
    assert T.cron_of("Mon *-*-* 03:00") == "0 3 * * 1"
    assert T.cron_of("*-*-15 22:05:00") == "5 22 15 * *"
    assert T.cron_of("daily") == "0 0 * * *"
    minute = T.cron_of("daily", "node-a").split()[0]
    assert T.cron_of("daily", "node-a") == f"{minute} 0 * * *" and 0 <= int(minute) < 60
    for bad in ("Mon..Fri 10:00", "*-*-* 25:00", "hourly"):
        with pytest.raises(ConfigError):
            T.cron_of(bad)


def test_cluster_timer_on_local_lab_roots(labs: Dict[str, Path], tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    shutil.copytree(labs["fresh"], lab, symlinks=True)
    inventory = lab / "inventory.yaml"
    inventory.write_text(inventory.read_text().replace(str(labs["fresh"]), str(lab)))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", CLUSTER_WITH_TIMER, "cluster", "timer", *args],
                              capture_output=True, text=True, timeout=120, check=False, env=clean_env())

    before = {n: tree_state(lab / n) for n in ("master-1", "worker-1")}
    proc = cli("install", "-i", str(inventory), "--local", "--dry-run", "--systemd")
    assert proc.returncode == 0 and "dry run: nothing was written" in proc.stdout, proc.stderr
    assert tree_state(lab / "master-1") == before["master-1"]
    proc = cli("install", "-i", str(inventory), "--local", "--systemd", "--kubecert", sys.executable)
    assert proc.returncode == 0, proc.stderr
    calendars = {}
    for n in ("master-1", "master-2", "master-3", "worker-1", "worker-2"):
        text = (lab / n / UNITS / "kubecert-renew.timer").read_text()
        calendars[n] = next(line for line in text.splitlines() if line.startswith("OnCalendar="))
    masters = [calendars[f"master-{i}"] for i in (1, 2, 3)]
    assert len(set(masters)) == 3, masters
    assert calendars["worker-1"] == calendars["worker-2"] == "OnCalendar=*-*-* 03:00:00"
    if os.path.exists(SYSTEMD_ANALYZE):
        result = _verify(lab / "master-2" / UNITS)
        assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    proc = cli("status", "-i", str(inventory), "--local")
    assert proc.returncode == 0 and proc.stdout.count("systemd") == 5, proc.stdout
    proc = cli("remove", "-i", str(inventory), "--local")
    assert proc.returncode == 0, proc.stderr
    assert not (lab / "master-1" / UNITS / "kubecert-renew.timer").exists()
    proc = cli("status", "-i", str(inventory), "--local")
    assert proc.returncode == 1


# --- over SSH: the same writer through SFTP ----------------------------------------------------------

sshd: Any
try:
    import sshd
except ImportError:  # pragma: no cover
    sshd = None


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if sshd is None or sshd.available() is not None:
        pytest.skip(str(sshd.available() if sshd else "tests/sshd.py missing"))
    with sshd.start_sshds(3, tmp_path_factory.mktemp("sshd")) as group:
        yield group


def test_cluster_timer_over_real_sshd(servers: Any, tmp_path: Path) -> None:
    from kubecert.cluster import timer as CT
    from kubecert.remote.hosts import Host
    from kubecert.remote.ssh import Connection

    roles = ["control-plane", "control-plane", "worker"]
    hosts: List[Any] = []
    for i, (server, role) in enumerate(zip(servers, roles)):
        root = tmp_path / f"node-{i}"
        (root / "etc/cron.d").mkdir(parents=True)
        if i != 2:
            (root / "run/systemd/system").mkdir(parents=True)  # systemd on the masters, cron on the worker
        hosts.append(Host(f"node-{i}", "127.0.0.1", role, port=server.port, key=str(server.client_key),
                          root=str(root)))

    def connect(h: Any) -> Any:
        return Connection(h, known_hosts=str(servers.known_hosts)).open()

    results = CT.install(hosts, connect, command=("/usr/local/bin/kubecert",))
    assert [(r.name, r.status, r.kind) for r in results] == [
        ("node-0", "installed", "systemd"), ("node-1", "installed", "systemd"), ("node-2", "installed", "cron")]
    t0 = (tmp_path / "node-0" / UNITS / "kubecert-renew.timer").read_text()
    t1 = (tmp_path / "node-1" / UNITS / "kubecert-renew.timer").read_text()
    assert "OnCalendar=Mon *-*-* 03:00:00" in t0 and "OnCalendar=Tue *-*-* 03:00:00" in t1
    cron = (tmp_path / "node-2/etc/cron.d/kubecert").read_text()
    assert "0 3 * * * root /usr/local/bin/kubecert renew all --if-expiring-within 30d" in cron
    for p in (tmp_path / "node-0" / UNITS / "kubecert-renew.service", tmp_path / "node-2/etc/cron.d/kubecert"):
        assert p.stat().st_mode & 0o7777 == 0o644 and p.stat().st_uid == 0
    assert all(r.warnings for r in results)  # /usr/local/bin/kubecert is not in those roots
    again = CT.install(hosts, connect, command=("/usr/local/bin/kubecert",))
    assert [r.status for r in again] == ["unchanged"] * 3
    # a foreign unit on one node: that node fails, the others are done
    (tmp_path / "node-1" / UNITS / "kubecert-renew.service").write_text("[Service]\n")
    mixed = CT.install(hosts, connect, command=("/usr/local/bin/kubecert",), within=dt.timedelta(days=20))
    assert [r.status for r in mixed] == ["installed", "failed", "installed"]
    assert "not written by kubecert" in mixed[1].detail
    removed = CT.remove(hosts, connect)
    assert [r.status for r in removed] == ["removed", "failed", "removed"]
    assert not (tmp_path / "node-0" / UNITS / "kubecert-renew.timer").exists()
    assert not (tmp_path / "node-2/etc/cron.d/kubecert").exists()
    assert (tmp_path / "node-1" / UNITS / "kubecert-renew.service").read_text() == "[Service]\n"
