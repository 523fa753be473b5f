"""kubecert.pki's modules and role on the edges an operator meets: a CA that expires within the renewal
window, `days` no longer than `within`, a hook that fails after the renewal, check mode and hooks, and
certificates missing or unreadable after the role's renewal.

Each host is a `kubecert lab create` tree reached with Ansible's local connection (what is tested is
the modules' decisions, not the transport; over real sshd they run in test_ansible.py). kubecert on
the "node" is the installed package behind a two-line wrapper.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest

pytest.importorskip("ansible", reason="ansible-core is not installed (pip install ansible-core)")

from ansiblerun import BIN, ansible_env, kubecert_wrapper, local_play, module_result, out  # noqa: E402
from netlab import tree_state  # noqa: E402

pytestmark = pytest.mark.timeout(300)

STATE = "etc/kubernetes/.kubecert"


def lab(base: Path, *opts: str) -> Path:
    r = subprocess.run([sys.executable, "-m", "kubecert", "lab", "create", str(base / "lab"), "--nodes", "1", *opts],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    return base / "lab" / "master-1"


def renew(base: Path, root: Path, *extra: str, **options: Any) -> Dict[str, Any]:
    """kubecert_renew on the lab node with ``options``; its result (a failure included)."""
    args = dict(root=str(root), kubecert_bin=str(kubecert_wrapper(base)), **options)
    return module_result(base, "kubecert.pki.kubecert_renew", args, *extra)


def hook(root: Path, phase: str, body: str) -> None:
    d = root / "etc/kubecert/hooks" / phase
    d.mkdir(parents=True, exist_ok=True)
    for p in (root / "etc/kubecert", root / "etc/kubecert/hooks", d):
        p.chmod(0o755)
    f = d / "10-test"
    f.write_text(f"#!/bin/sh\n{body}\n")
    f.chmod(0o755)


def test_a_ca_expiring_within_the_window_is_not_renewed_again_and_again(tmp_path: Path) -> None:
    """The lab's CAs (3650 days) were made so that they expire 18 days from now: every leaf they sign,
    renewed now, would be capped at that date, within 30 days, so due again at the next run (and
    restarted again, with restart). The module renews none of them and says why; only the kubelet's
    self-signed serving cert (no CA to cap it) is renewed, once. With a 7-day window they are renewed."""
    made = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3650 - 18)).replace(microsecond=0)
    ca_end = made + dt.timedelta(days=3650)
    root = lab(tmp_path, "--now", f"{made:%Y-%m-%dT%H:%M:%SZ}")
    res = renew(tmp_path, root, within="30d")
    assert res.get("failed") is not True, res
    assert res["changed"] is True and res["renewed"] == ["kubelet-server"], res
    reasons = {n["name"]: n["reason"] for n in res["not_renewable"]}
    assert {"apiserver", "etcd-server", "front-proxy-client", "admin.conf"} <= set(reasons), reasons
    assert all("renew or rotate the CA first" in why for why in reasons.values()), reasons
    assert any(w.startswith(f"apiserver: its CA expires {ca_end:%Y-%m-%d}") for w in res["warnings"]), res["warnings"]
    trees = tree_state(root, skip=[STATE])
    again = renew(tmp_path, root, within="30d")
    assert again["changed"] is False and again["renewed"] == [], again
    assert tree_state(root, skip=[STATE]) == trees
    # a window the capped NotAfter clears: renewed, once
    res = renew(tmp_path, root, within="7d")
    assert res["changed"] is True and "apiserver" in res["renewed"], res
    again = renew(tmp_path, root, within="7d")
    assert again["changed"] is False, again


def test_days_no_longer_than_within_is_refused(tmp_path: Path) -> None:
    root = lab(tmp_path, "--expires-in", "5d")
    trees = tree_state(root)
    res = renew(tmp_path, root, within="30d", days=30)
    assert res["failed"] is True and "must be longer than within" in res["msg"], res
    assert tree_state(root) == trees


def test_a_hook_failing_after_the_renewal_fails_the_task_as_changed(tmp_path: Path) -> None:
    root = lab(tmp_path, "--expires-in", "5d")
    hook(root, "post", "exit 1")
    res = renew(tmp_path, root)
    assert res["failed"] is True and res["rc"] == 6, res
    assert res["changed"] is True and "apiserver" in res["renewed"], res  # renewed, then the hook failed
    assert res["after"]["apiserver"]["serial"] != res["before"]["apiserver"]["serial"]
    assert res["renewal"]["result"] == "renewed"
    assert "rolled_back" not in res


def test_check_mode_runs_no_hook(tmp_path: Path) -> None:
    root = lab(tmp_path, "--expires-in", "5d")
    marker = tmp_path / "pre-hook-ran"
    hook(root, "pre", f"touch {marker}")
    trees = tree_state(root)
    res = renew(tmp_path, root, "--check")
    assert res["changed"] is True and res["renewal"]["result"] == "planned", res
    assert not marker.exists(), "a hook ran in check mode"
    assert tree_state(root) == trees
    res = renew(tmp_path, root)  # for real: the hook runs (so the check above can fail)
    assert res["changed"] is True and marker.exists(), res


def role(base: Path, root: Path) -> subprocess.CompletedProcess[str]:
    """The role, no restart (nothing runs here), kubecert already on the node."""
    return local_play(base, f"""    - name: the role
      ansible.builtin.include_role:
        name: kubecert.pki.rolling_renew
      vars:
        rolling_renew_root: {root}
        rolling_renew_bin: {kubecert_wrapper(base)}
        rolling_renew_install: false
        rolling_renew_restart: false
""")


def test_the_role_fails_a_node_with_a_missing_or_unreadable_certificate(tmp_path: Path) -> None:
    """Nothing is due there (renewal cannot help), but the node is broken: the role says so."""
    root = lab(tmp_path)
    ok = role(tmp_path, root)
    assert ok.returncode == 0, out(ok)
    (root / "etc/kubernetes/pki/apiserver.crt").unlink()
    (root / "etc/kubernetes/pki/front-proxy-client.crt").write_text("garbage\n")
    r = role(tmp_path, root)
    assert r.returncode != 0, out(r)
    assert "apiserver" in r.stdout and "front-proxy-client" in r.stdout and "No certificate is missing" in r.stdout, out(r)


def test_check_mode_refuses_what_the_real_run_would(tmp_path: Path) -> None:
    """restart options kubecert would refuse fail the check too (kubecert's dry run parses them)."""
    root = lab(tmp_path, "--expires-in", "5d")
    res = renew(tmp_path, root, "--check", restart=True, gate_timeout=["abc"])
    assert res["failed"] is True and "--gate-timeout" in res["msg"] and "'abc'" in res["msg"], res
    res = renew(tmp_path, root, "--check", restart=True, gate_timeout=["90", "etcd=180"])
    assert res.get("failed") is not True and res["changed"] is True, res


def test_the_modules_run_no_kubecert_another_user_can_change(tmp_path: Path) -> None:
    """Each module runs as root: the executable, and every directory above it as written and resolved,
    must be root's and not group/world-writable (sticky /tmp, where these tests live, is fine). Otherwise
    the task fails naming the culprit and nothing is run (the wrapper would leave a trace)."""
    root = lab(tmp_path)
    before = tree_state(root)
    trace = tmp_path / "ran"
    real = kubecert_wrapper(tmp_path)
    safe = tmp_path / "safe"
    safe.mkdir(mode=0o755)
    exe = safe / "kubecert"
    exe.write_text(f"#!/bin/sh\ntouch {trace}\nexec {real} \"$@\"\n")
    exe.chmod(0o755)

    def call(module: str, bin_path: Path, *extra: str) -> Dict[str, Any]:
        return module_result(tmp_path, module, dict(root=str(root), kubecert_bin=str(bin_path)), *extra)

    ok = call("kubecert.pki.kubecert_check", exe)
    assert ok.get("failed") is not True and trace.exists(), ok  # the trusted path runs
    trace.unlink()

    exe.chmod(0o775)  # group-writable file
    res = call("kubecert.pki.kubecert_check", exe)
    assert res["failed"] is True and res["msg"] == (
        f"refusing to run {exe}: {exe} is owned by uid 0 with mode 0775 (must be root's, not group/world-writable)"), res
    exe.chmod(0o755)

    os.chown(safe, 65534, 65534)  # a directory above it that another user owns
    res = call("kubecert.pki.kubecert_renew", exe, "--check")
    assert res["failed"] is True, res
    assert res["msg"] == f"refusing to run {exe}: directory {safe} is owned by uid 65534, not root", res
    os.chown(safe, 0, 0)

    loose = tmp_path / "loose"  # root's path, but the link resolves into a world-writable (not sticky) directory
    loose.mkdir()
    loose.chmod(0o777)
    (loose / "kubecert").write_text(exe.read_text())
    (loose / "kubecert").chmod(0o755)
    link = safe / "kubecert-link"
    link.symlink_to(loose / "kubecert")
    res = call("kubecert.pki.kubecert_restart", link, "--check")
    assert res["failed"] is True and res["changed"] is False, res
    assert res["msg"] == f"refusing to run {link}: directory {loose} is writable by group or others", res

    # every link followed counts: a chain whose middle link sits where anyone can repoint it, and a
    # link another user owns in a sticky directory, both ending at the trusted file
    (loose / "hop").symlink_to(exe)
    chain = safe / "kubecert-chain"
    chain.symlink_to(loose / "hop")
    res = call("kubecert.pki.kubecert_check", chain)
    assert res["msg"] == f"refusing to run {chain}: directory {loose} is writable by group or others", res
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (sticky / "kubecert").symlink_to(exe)
    os.lchown(sticky / "kubecert", 65534, 65534)
    theirs = sticky / "kubecert"
    res = call("kubecert.pki.kubecert_check", theirs)
    assert res["msg"] == f"refusing to run {theirs}: symlink {theirs} is owned by uid 65534, not root", res
    assert not trace.exists(), "a refused kubecert was run"
    assert tree_state(root) == before

    os.lchown(sticky / "kubecert", 0, 0)  # root's link in a sticky directory: no one else can repoint it
    assert call("kubecert.pki.kubecert_check", sticky / "kubecert").get("failed") is not True and trace.exists()


def test_the_role_installs_only_a_build_whose_sha256sums_the_release_key_signed(tmp_path: Path) -> None:
    """With rolling_renew_dist_allowed_signers, SHA256SUMS must carry a valid OpenSSH signature
    (ssh-keygen -Y, namespace kubecert-dist, as build-dist.sh --sign makes) by the named signer; a
    re-made SHA256SUMS, another key's signature, no signature or no signer install nothing."""
    root = lab(tmp_path)
    dist = tmp_path / "dist"
    dist.mkdir()
    build = dist / "kubecert-0.1.0-linux-x86_64"  # the installed package behind a wrapper stands in for the build
    build.write_text(kubecert_wrapper(tmp_path).read_text())
    sums = dist / "SHA256SUMS"
    sums.write_text(f"{hashlib.sha256(build.read_bytes()).hexdigest()}  {build.name}\n")

    def key(name: str) -> Path:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(tmp_path / name)],
                       check=True, timeout=30)
        return tmp_path / name

    def sign(with_key: Path) -> None:
        (dist / "SHA256SUMS.sig").unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(with_key), "-n", "kubecert-dist", str(sums)],
                       check=True, timeout=30)

    release, other = key("release"), key("other")
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"release@kubecert.example {(tmp_path / 'release.pub').read_text()}")

    def install(case: str, signer: str = "release@kubecert.example",
                allowed: object = allowed) -> Tuple[subprocess.CompletedProcess[str], Path]:
        bin_dir = tmp_path / f"bin-{case}"
        bin_dir.mkdir(mode=0o755)
        r = local_play(tmp_path, f"""    - name: the role
      ansible.builtin.include_role:
        name: kubecert.pki.rolling_renew
      vars:
        rolling_renew_root: {root}
        rolling_renew_bin: {bin_dir / 'kubecert'}
        rolling_renew_dist_file: {build}
        rolling_renew_dist_allowed_signers: "{allowed}"
        rolling_renew_dist_signer: "{signer}"
        rolling_renew_restart: false
""")
        return r, bin_dir / "kubecert"

    sign(release)
    r, installed = install("signed")
    assert r.returncode == 0, out(r)
    assert installed.read_bytes() == build.read_bytes()

    sums.write_text(sums.read_text() + f"{'0' * 64}  extra-file\n")  # changed after signing
    r, installed = install("changed")
    assert r.returncode != 0 and "carries no valid signature by release@kubecert.example" in r.stdout, out(r)
    assert not installed.exists()

    sign(other)
    r, installed = install("other-key")
    assert r.returncode != 0 and "carries no valid signature by release@kubecert.example" in r.stdout, out(r)
    assert not installed.exists()

    sign(release)
    r, installed = install("wrong-signer", signer="someone@else.example")
    assert r.returncode != 0 and "carries no valid signature by someone@else.example" in r.stdout, out(r)
    assert not installed.exists()
    r, installed = install("no-signer", signer="")
    assert r.returncode != 0 and "rolling_renew_dist_signer names the signer" in r.stdout, out(r)
    assert not installed.exists()

    r, installed = install("no-allowed-signers", signer="release@kubecert.example", allowed="")
    assert r.returncode != 0 and "rolling_renew_dist_allowed_signers is not set" in r.stdout, out(r)
    assert not installed.exists()

    # two hosts, one play: each checks the SHA256SUMS it read, none inherits another's pass (h2 names an
    # unsigned SHA256SUMS listing another build)
    evil = dist / "evil"
    evil.mkdir()
    (evil / build.name).write_text("#!/bin/sh\necho EVIL\n")
    (evil / "SHA256SUMS").write_text(f"{hashlib.sha256((evil / build.name).read_bytes()).hexdigest()}  {build.name}\n")
    bins = {h: tmp_path / f"bin-two-{h}" for h in ("h1", "h2")}
    for d in bins.values():
        d.mkdir(mode=0o755)
    inventory = tmp_path / "two.ini"
    inventory.write_text("".join(
        f"{h} ansible_connection=local ansible_python_interpreter={sys.executable} rolling_renew_bin={bins[h] / 'kubecert'}"
        f" rolling_renew_dist_file={(build if h == 'h1' else evil / build.name)}\n" for h in bins))
    book = tmp_path / "two.yml"
    book.write_text(f"""- hosts: all
  gather_facts: false
  tasks:
    - name: the role
      ansible.builtin.include_role:
        name: kubecert.pki.rolling_renew
      vars:
        rolling_renew_root: {root}
        rolling_renew_dist_allowed_signers: {allowed}
        rolling_renew_dist_signer: release@kubecert.example
        rolling_renew_restart: false
""")
    r = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), str(book)], capture_output=True,
                       text=True, timeout=240, env=ansible_env(tmp_path), check=False)
    assert r.returncode != 0 and "carries no valid signature" in r.stdout, out(r)
    assert (bins["h1"] / "kubecert").read_bytes() == build.read_bytes(), out(r)
    assert not (bins["h2"] / "kubecert").exists(), out(r)

    (dist / "SHA256SUMS.sig").unlink()
    r, installed = install("unsigned")
    assert r.returncode != 0 and "carries no valid signature" in r.stdout, out(r)
    assert not installed.exists()
