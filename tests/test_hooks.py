"""Renewal hooks (``kubecert.hooks``), end to end through the real CLI on lab trees: order, environment,
certbot's rules (pre before any change and aborting, deploy only after a renewal and never on a dry
run, post always), output to stderr and the audit log, the timeout, and refusing every hook a
non-root user could control — with whole trees hashed before and after where nothing may change."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Dict, List, Mapping

import pytest

from kubecert import hooks as H
from kubecert.errors import KubecertError
from treeutil import STATE_DIR, State, clean_env, copy_tree, diff, lab_create, run_kubecert, tree_state

NODE = "master-1"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
# a hook that appends its phase, name and environment to $HOOK_LOG (outside the node tree)
RECORDER = """#!/bin/sh
printf '%s|%s|%s|%s|%s|%s|%s\\n' "$KUBECERT_PHASE" "$(basename "$0")" "$KUBECERT_RENEWED_NAMES" \
  "$KUBECERT_NODE" "$KUBECERT_BACKUP_ID" "$KUBECERT_ROOT" "$KUBECERT_RESULT" >> "$HOOK_LOG"
echo "said by $(basename "$0")"
"""


@pytest.fixture(scope="module")
def expiring(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-node stacked lab whose leafs expire in 10 days."""
    return lab_create(tmp_path_factory.mktemp("hooks"), "--nodes", "1", "--expires-in", "10d")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lab_create(tmp_path_factory.mktemp("hooks-fresh"), "--nodes", "1", "--workers", "1")


def node(lab: Path, tmp_path: Path, name: str = NODE) -> Path:
    return copy_tree(lab / name, tmp_path / name)


def add_hook(root: Path, phase: str, name: str, text: str = RECORDER, mode: int = 0o755) -> Path:
    d = root / "etc/kubecert/hooks" / phase
    d.mkdir(parents=True, exist_ok=True)
    path = d / name
    path.write_text(text)
    path.chmod(mode)
    return path


def records(log: Path) -> List[Dict[str, str]]:
    if not log.exists():
        return []
    keys = ("phase", "hook", "names", "node", "backup", "root", "result")
    return [dict(zip(keys, line.split("|"))) for line in log.read_text().splitlines()]


def env_for(log: Path) -> Dict[str, str]:
    return clean_env(HOOK_LOG=str(log))


def flag_hook(phase: str) -> str:
    """A --PHASE-hook command recording itself like RECORDER (as hook name "flag")."""
    return (f"printf '%s|flag|%s|%s|%s|%s|%s\\n' {phase} \"$KUBECERT_RENEWED_NAMES\" \"$KUBECERT_NODE\" "
            "\"$KUBECERT_BACKUP_ID\" \"$KUBECERT_ROOT\" \"$KUBECERT_RESULT\" >> \"$HOOK_LOG\"")


def test_order_environment_and_logs_of_a_renewal(expiring: Path, tmp_path: Path) -> None:
    root = node(expiring, tmp_path)
    log = tmp_path / "hooks.log"
    add_hook(root, "pre", "20-second")
    add_hook(root, "pre", "10-first")
    add_hook(root, "pre", "30-not-executable", mode=0o644)  # passed over, as certbot does
    add_hook(root, "pre", ".hidden")
    add_hook(root, "pre", "backup~")
    (root / "etc/kubecert/hooks/pre/subdir").mkdir()
    add_hook(root, "deploy", "10-deploy")
    add_hook(root, "post", "10-post")
    proc = run_kubecert("renew", "all", "--root", str(root), "--yes", "--if-expiring-within", "30d",
                        "--pre-hook", flag_hook("pre"), "--deploy-hook", flag_hook("deploy"),
                        "--post-hook", flag_hook("post"), env=env_for(log))
    assert proc.returncode == 0, proc.stderr
    got = records(log)
    assert [(r["phase"], r["hook"]) for r in got] == [
        ("pre", "10-first"), ("pre", "20-second"), ("pre", "flag"),
        ("deploy", "10-deploy"), ("deploy", "flag"), ("post", "10-post"), ("post", "flag")]
    backups = os.listdir(root / "etc/kubernetes/.kubecert/backups")
    assert len(backups) == 1
    for r in got:
        assert r["node"] == NODE and r["root"] == str(root)
        names = r["names"].split(" ")
        assert {"apiserver", "etcd-server", "admin.conf", "kubelet.conf"} <= set(names), r
        # the backup id exists once the change is made: not for pre
        assert r["backup"] == ("" if r["phase"] == "pre" else backups[0]), r
    assert [r["result"] for r in got if r["phase"] == "post"] == ["renewed", "renewed"]
    # output: on stderr (the journal under the timer) and in the node's audit log, with the run
    assert "hook pre: " in proc.stderr and "| said by 10-first" in proc.stderr
    audit = [json.loads(line) for line in (root / "etc/kubernetes/.kubecert/audit.log").read_text().splitlines()]
    hooks = [a for a in audit if a["action"] == "hook"]
    assert [(a["phase"], os.path.basename(a["hook"].split(" ")[0])) for a in hooks][:2] == \
        [("pre", "10-first"), ("pre", "20-second")]
    assert all(a["backup"] == backups[0] and a["exit"] == 0 for a in hooks)
    assert hooks[0]["output"] == "said by 10-first\n"


def test_failing_pre_hook_changes_nothing_and_post_still_runs(expiring: Path, tmp_path: Path) -> None:
    root = node(expiring, tmp_path)
    log = tmp_path / "hooks.log"
    add_hook(root, "pre", "10-ok")
    add_hook(root, "pre", "20-fails", RECORDER + "echo drain failed >&2\nexit 7\n")
    add_hook(root, "pre", "30-never")
    add_hook(root, "deploy", "10-deploy")
    add_hook(root, "post", "10-post")
    before = tree_state(root)
    proc = run_kubecert("renew", "all", "--root", str(root), "--yes", env=env_for(log))
    assert proc.returncode == 3, proc.stderr
    assert_only_the_lock_added(root, before)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("kubecert: error: pre-hook ") and "20-fails" in last and "exit 7" in last, last
    assert "nothing was changed" in last
    assert "| drain failed" in proc.stderr
    assert [(r["phase"], r["hook"], r["result"]) for r in records(log)] == [
        ("pre", "10-ok", ""), ("pre", "20-fails", ""), ("post", "10-post", "failed")]
    # again, now that the node has its lock file: every file, byte for byte, as it was
    before = tree_state(root)
    proc = run_kubecert("renew", "all", "--root", str(root), "--yes", env=env_for(log))
    assert proc.returncode == 3, proc.stderr
    assert tree_state(root) == before, diff(before, tree_state(root))


def assert_only_the_lock_added(root: Path, before: State) -> None:
    """The project's rule for a refused run (test_renew_safety): kubecert's lock must live somewhere;
    nothing else may change — every other file hashed before and after."""
    after = tree_state(root)
    added = {STATE_DIR: ("dir", 0o700, 0, 0), f"{STATE_DIR}/lock": ("file", 0o600, 0, 0, EMPTY_SHA256)}
    assert {k: v for k, v in after.items() if k not in added or k in before} == before, diff(before, after)
    assert {k: after[k] for k in set(after) - set(before)} == {k: v for k, v in added.items() if k not in before}


def test_dry_run_runs_pre_and_post_never_deploy(expiring: Path, tmp_path: Path) -> None:
    root = node(expiring, tmp_path)
    log = tmp_path / "hooks.log"
    for phase in ("pre", "deploy", "post"):
        add_hook(root, phase, f"10-{phase}")
    before = tree_state(root)
    proc = run_kubecert("renew", "all", "--root", str(root), "--dry-run", "--deploy-hook", flag_hook("deploy"),
                        env=env_for(log))
    assert proc.returncode == 0, proc.stderr
    assert tree_state(root) == before, diff(before, tree_state(root))
    got = records(log)
    assert [(r["phase"], r["hook"]) for r in got] == [("pre", "10-pre"), ("post", "10-post")]
    assert got[1]["result"] == "dry-run" and "apiserver" in got[1]["names"].split(" ")


def test_nothing_due_runs_no_hook_and_leaves_the_tree_byte_identical(fresh: Path, tmp_path: Path) -> None:
    root = node(fresh, tmp_path)
    log = tmp_path / "hooks.log"
    for phase in ("pre", "deploy", "post"):
        add_hook(root, phase, f"10-{phase}")
    before = tree_state(root)
    proc = run_kubecert("renew", "all", "--root", str(root), "--yes", "--restart", "--if-expiring-within", "30d",
                        "--post-hook", flag_hook("post"), env=env_for(log))
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" in proc.stdout
    assert tree_state(root) == before, diff(before, tree_state(root))
    assert records(log) == []


def test_deploy_not_run_when_nothing_is_renewed(fresh: Path, tmp_path: Path) -> None:
    """A worker whose kubelet certs are healthy: `renew all` has nothing to write, so no renewal is
    attempted and no hook runs (certbot's rule: hooks run only around an attempt)."""
    root = node(fresh, tmp_path, "worker-1")
    log = tmp_path / "hooks.log"
    for phase in ("pre", "deploy", "post"):
        add_hook(root, phase, f"10-{phase}")
    before = tree_state(root, exclude=("etc/kubernetes/.kubecert",))  # the lock file
    proc = run_kubecert("renew", "all", "--root", str(root), "--yes", env=env_for(log))
    assert proc.returncode == 0, proc.stderr
    assert "nothing to renew" in proc.stdout
    assert tree_state(root, exclude=("etc/kubernetes/.kubecert",)) == before
    assert records(log) == []


def test_post_runs_after_a_failed_renewal_and_deploy_does_not(expiring: Path, tmp_path: Path) -> None:
    root = node(expiring, tmp_path)
    log = tmp_path / "hooks.log"
    for phase in ("pre", "deploy", "post"):
        add_hook(root, phase, f"10-{phase}")
    before = tree_state(root, exclude=("etc/kubernetes/.kubecert",))
    # certificates issued "in 2031" would not be valid now: the renewal is refused after it started
    proc = run_kubecert("renew", "all", "--root", str(root), "--yes", "--now", "2031-01-01T00:00:00Z",
                        env=env_for(log))
    assert proc.returncode == 3, proc.stderr
    assert "would not be valid now" in proc.stderr.strip().splitlines()[-1]
    assert tree_state(root, exclude=("etc/kubernetes/.kubecert",)) == before
    assert [(r["phase"], r["result"]) for r in records(log)] == [("post", "failed")]


def test_failing_deploy_hook_exits_6_after_the_renewal(expiring: Path, tmp_path: Path) -> None:
    root = node(expiring, tmp_path)
    log = tmp_path / "hooks.log"
    add_hook(root, "post", "10-post")
    proc = run_kubecert("renew", "all", "--root", str(root), "--yes", "--deploy-hook", "echo no; exit 2",
                        env=env_for(log))
    assert proc.returncode == 6, proc.stderr
    assert "renewal itself succeeded" in proc.stderr.strip().splitlines()[-1]
    assert os.listdir(root / "etc/kubernetes/.kubecert/backups"), "the renewal happened"
    assert [(r["phase"], r["result"]) for r in records(log)] == [("post", "renewed")]


def test_a_hook_that_runs_over_its_timeout_is_killed(expiring: Path, tmp_path: Path) -> None:
    root = node(expiring, tmp_path)
    before = tree_state(root)
    start = time.monotonic()
    proc = run_kubecert("renew", "all", "--root", str(root), "--yes", "--hook-timeout", "1",
                        "--pre-hook", "sleep 30 & sleep 30; echo late")
    assert time.monotonic() - start < 20
    assert proc.returncode == 3
    assert "timed out after 1s" in proc.stderr.strip().splitlines()[-1]
    assert "| late" not in proc.stderr
    assert_only_the_lock_added(root, before)


def _group_writable(path: Path) -> None:
    path.chmod(0o775)


def _other_owner(path: Path) -> None:
    os.chown(path, 4321, 4321)


def _symlink(path: Path) -> None:
    target = path.with_name("real-target")
    path.rename(target)
    path.symlink_to(target)


def _writable_dir(path: Path) -> None:
    path.parent.chmod(0o777)


def _foreign_dir(path: Path) -> None:
    os.chown(path.parent.parent, 4321, 0)  # etc/kubecert/hooks: its owner could swap pre/


@pytest.mark.parametrize("spoil, needle", [
    (_group_writable, "writable by group or others"),
    (_other_owner, "owned by uid 4321"),
    (_symlink, "not a regular file"),
    (_writable_dir, "writable by group or others"),
    (_foreign_dir, "owned by uid 4321"),
], ids=["group-writable", "other-owner", "symlink", "writable-dir", "foreign-parent-dir"])
def test_a_hook_a_non_root_user_controls_is_refused(expiring: Path, tmp_path: Path, spoil: object,
                                                    needle: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    root = node(expiring, tmp_path)
    log = tmp_path / "hooks.log"
    add_hook(root, "post", "10-post")
    hook = add_hook(root, "pre", "10-pre")
    spoil(hook)  # type: ignore[operator]
    before = tree_state(root)
    proc = run_kubecert("renew", "all", "--root", str(root), "--yes", env=env_for(log))
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kubecert: error: "), proc.stderr
    assert "refusing to run hook" in lines[0] and needle in lines[0], lines[0]
    assert str(root / "etc/kubecert/hooks") in lines[0]
    assert tree_state(root) == before and records(log) == []  # nothing ran, not even post


def test_session_unit_rules(tmp_path: Path) -> None:
    """The core without the CLI: post only after an attempt, once; a failing pre stops the others."""
    from kubecert.store import LocalFS

    ran: List[str] = []

    def runner(hook: H.Hook, env: Mapping[str, str], timeout: float) -> H.HookRun:
        ran.append(f"{hook.phase}:{hook.label}:{env.get('KUBECERT_RESULT', '')}")
        return H.HookRun(hook, 1 if "bad" in hook.label else 0, "", 0.0)

    def mk(phase: str, label: str) -> H.Hook:
        return H.Hook(phase, label, ("true",))

    import datetime as dt

    hooks = H.Hooks(pre=(mk("pre", "a"), mk("pre", "bad"), mk("pre", "c")), post=(mk("post", "p"),))
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    idle = H.Session(hooks, LocalFS(str(tmp_path)), "n", now, runner=runner)
    with idle.guard():
        pass
    assert ran == []  # nothing attempted: no post
    s = H.Session(hooks, LocalFS(str(tmp_path)), "n", now, runner=runner)
    with pytest.raises(H.HookFailed), s.guard():
        s.pre(["apiserver"])
    s.post()
    assert ran == ["pre:a:", "pre:bad:", "post:p:failed"]
    with pytest.raises(KubecertError):
        H.discover(str(tmp_path), pre=["  "])


def test_directory_hooks_checks_the_resolved_chain(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "pre").mkdir(parents=True)
    hook = elsewhere / "pre" / "10"
    hook.write_text("#!/bin/sh\n")
    hook.chmod(0o755)
    root = tmp_path / "root"
    (root / "etc/kubecert").mkdir(parents=True)
    (root / "etc/kubecert/hooks").symlink_to(elsewhere)
    assert [h.label for h in H.directory_hooks(str(root), "pre")] == [str(root / "etc/kubecert/hooks/pre/10")]
    os.chown(elsewhere, 4321, 4321)
    with pytest.raises(H.HookError, match="owned by uid 4321"):
        H.directory_hooks(str(root), "pre")
    assert stat.S_IMODE(hook.stat().st_mode) == 0o755
    os.chown(elsewhere, 0, 0)

    # every link on the way counts, not only the last target: a root-owned link into a world-writable
    # directory whose own link another user could repoint, and a link another user owns (sticky dir)
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    (loose / "hooks").symlink_to(elsewhere)
    (root / "etc/kubecert/hooks").unlink()
    (root / "etc/kubecert/hooks").symlink_to(loose / "hooks")
    with pytest.raises(H.HookError, match=f"directory {loose} is writable by group or others"):
        H.directory_hooks(str(root), "pre")
    loose.chmod(0o1777)
    os.lchown(loose / "hooks", 4321, 4321)
    with pytest.raises(H.HookError, match=f"symlink {loose / 'hooks'} is owned by uid 4321"):
        H.directory_hooks(str(root), "pre")
    os.lchown(loose / "hooks", 0, 0)  # root's link in a sticky directory: no one else can repoint it
    assert [h.label for h in H.directory_hooks(str(root), "pre")] == [str(root / "etc/kubecert/hooks/pre/10")]
