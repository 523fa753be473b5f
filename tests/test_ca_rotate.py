"""Issue 10, part 2, on one node's files: `kubecert ca rotate NAME` to a new key, stage by stage, on the
trees real kubeadm v1.28.4 wrote and on lab nodes. `openssl verify` is the independent checker of
what each stage leaves: every certificate verifies against the node's trust bundle at every stage,
against the old CA alone before stage 2 and against the new CA alone after it; stage 3 leaves one
CA; --abort goes back; a crash at any step leaves the node all-old or all-new.
(The running components are in tests/test_ca_rotate_real.py.)
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import subprocess
from pathlib import Path
from typing import Callable, Dict, List

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kubecert import spec
from treeutil import (
    after_crash_invariants,
    assert_one_line_error,
    changed,
    clean_env,
    copy_tree,
    diff,
    lab_create,
    monotonic,
    node_state,
    run_kubecert,
)

CA_FILES = {"ca": "ca", "front-proxy-ca": "front-proxy-ca", "etcd-ca": "etcd/ca"}


def _rotate(root: Path, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_kubecert("ca", "rotate", name, "--root", str(root), "--yes", *extra)


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    return r.stdout


def _certs(path: Path) -> List[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def _spki(obj: object) -> bytes:
    key = obj.public_key() if hasattr(obj, "public_key") else obj  # type: ignore[union-attr]
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _signed_by(root: Path, name: str, scratch: Path) -> Dict[str, Path]:
    """Every leaf and kubeconfig client cert of CA ``name`` on the node, as PEM files."""
    pki = root / "etc/kubernetes/pki"
    out = {}
    scratch.mkdir(parents=True, exist_ok=True)
    for e in spec.ENTRIES:
        if e.ca != name:
            continue
        if e.kind is spec.Kind.LEAF and (pki / f"{e.path}.crt").exists():
            out[e.name] = pki / f"{e.path}.crt"
        elif e.kind is spec.Kind.KUBECONFIG and (root / "etc/kubernetes" / e.path).exists():
            user = yaml.safe_load((root / "etc/kubernetes" / e.path).read_text())["users"][0]["user"]
            if "client-certificate-data" in user:
                pem = scratch / f"{e.path}.crt"
                pem.write_bytes(base64.b64decode(user["client-certificate-data"]))
                out[e.name] = pem
            else:  # kubelet.conf -> kubelet-client-current.pem (node paths, resolved inside the root)
                target = root / str(user["client-certificate"]).lstrip("/")
                if target.is_symlink():
                    dest = os.readlink(target)
                    target = root / dest.lstrip("/") if dest.startswith("/") else target.parent / dest
                out[e.name] = target
    return out


def _verifies(ca_pems: List[x509.Certificate], cert: Path, scratch: Path) -> bool:
    bundle = scratch / "trust.pem"
    bundle.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in ca_pems))
    return subprocess.run(["openssl", "verify", "-CAfile", str(bundle), str(cert)], capture_output=True,
                          check=False).returncode == 0


@pytest.mark.parametrize("name", sorted(CA_FILES))
def test_each_stage_on_a_kubeadm_fixture_node(name: str, node_copy: Callable[..., Path], tmp_path: Path) -> None:
    root = node_copy("single-stacked/master-1")
    pki = root / "etc/kubernetes/pki"
    ca_file = pki / f"{CA_FILES[name]}.crt"
    [old] = _certs(ca_file)
    leaves = _signed_by(root, name, tmp_path / "s0")
    assert leaves and all(_verifies([old], p, tmp_path) for p in leaves.values())

    out = _ok(_rotate(root, name))
    assert "now at stage 1" in out, out
    old_then, new = _certs(ca_file)
    assert old_then == old and new.subject == old.subject and _spki(new) != _spki(old)
    assert _certs(pki / f"{CA_FILES[name]}-new.crt") == [new]
    new_key = serialization.load_pem_private_key((pki / f"{CA_FILES[name]}-new.key").read_bytes(), None)
    assert _spki(new_key) == _spki(new)
    assert oct((pki / f"{CA_FILES[name]}-new.key").stat().st_mode & 0o777) == "0o600"
    leaves = _signed_by(root, name, tmp_path / "s1")
    assert all(_verifies([old], p, tmp_path) for p in leaves.values()), "stage 1 must sign nothing with the new CA"
    if name == "ca":
        for conf in ("admin.conf", "controller-manager.conf", "scheduler.conf", "kubelet.conf"):
            data = yaml.safe_load((root / "etc/kubernetes" / conf).read_text())["clusters"][0]["cluster"]
            assert x509.load_pem_x509_certificates(base64.b64decode(data["certificate-authority-data"])) == \
                [old, new], conf
    assert run_kubecert("check", "--root", str(root)).returncode in (0, 1)

    out = _ok(_rotate(root, name))
    assert "now at stage 2" in out, out
    leaves = _signed_by(root, name, tmp_path / "s2")
    for what, pem in leaves.items():
        assert _verifies([new], pem, tmp_path), f"{what} not re-issued by the new CA"
        assert not _verifies([old], pem, tmp_path), what
        assert _verifies(_certs(ca_file), pem, tmp_path), what
    assert _spki(serialization.load_pem_private_key((pki / f"{CA_FILES[name]}.key").read_bytes(), None)) == _spki(new)
    assert _spki(serialization.load_pem_private_key((pki / f"{CA_FILES[name]}-old.key").read_bytes(), None)) == \
        _spki(old)
    status = _ok(run_kubecert("ca", "rotate", name, "--root", str(root), "--status"))
    assert "stage 2" in status and "signed by the old CA" not in status, status
    assert run_kubecert("check", "--root", str(root)).returncode in (0, 1)

    out = _ok(_rotate(root, name))
    assert "now at stage 0" in out, out
    assert _certs(ca_file) == [new]
    assert not list(pki.rglob("*-new.*")) and not list(pki.rglob("*-old.*"))
    for what, pem in _signed_by(root, name, tmp_path / "s3").items():
        assert _verifies([new], pem, tmp_path), what
    if name == "ca":
        for conf in ("admin.conf", "controller-manager.conf", "scheduler.conf", "kubelet.conf"):
            data = yaml.safe_load((root / "etc/kubernetes" / conf).read_text())["clusters"][0]["cluster"]
            assert x509.load_pem_x509_certificates(base64.b64decode(data["certificate-authority-data"])) == [new]
    assert run_kubecert("check", "--root", str(root)).returncode in (0, 1)


def _lab(tmp_path: Path) -> Path:
    return lab_create(tmp_path, "--nodes", "1") / "master-1"


def test_the_controller_managers_signer_is_one_certificate_at_every_stage(tmp_path: Path) -> None:
    """kube-controller-manager's csrsigning refuses a cert file with two certificates ("expected 1
    certificate", found by the real control plane test): while ca.crt is a bundle, its
    --cluster-signing-cert-file names ca-signing.crt, the CA that matches ca.key, alone."""
    root = _lab(tmp_path)
    pki = root / "etc/kubernetes/pki"
    manifest = root / "etc/kubernetes/manifests/kube-controller-manager.yaml"

    def flag() -> str:
        line = next(ln for ln in manifest.read_text().splitlines() if "--cluster-signing-cert-file=" in ln)
        return line.split("=", 1)[1]

    assert flag() == "/etc/kubernetes/pki/ca.crt"
    _ok(_rotate(root, "ca"))
    key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    assert flag() == "/etc/kubernetes/pki/ca-signing.crt"
    assert [_spki(c) for c in _certs(pki / "ca-signing.crt")] == [_spki(key)]
    _ok(_rotate(root, "ca"))
    key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    assert [_spki(c) for c in _certs(pki / "ca-signing.crt")] == [_spki(key)]
    _ok(_rotate(root, "ca"))
    assert flag() == "/etc/kubernetes/pki/ca.crt" and not (pki / "ca-signing.crt").exists()


def test_abort_goes_back_from_each_stage(tmp_path: Path) -> None:
    root = _lab(tmp_path)
    pki = root / "etc/kubernetes/pki"
    before = node_state(root)
    [old] = _certs(pki / "ca.crt")
    _ok(_rotate(root, "ca"))
    _ok(_rotate(root, "ca", "--abort"))
    assert node_state(root) == before, diff(before, node_state(root))  # byte for byte: nothing was signed
    _ok(_rotate(root, "ca"))
    _ok(_rotate(root, "ca"))  # stage 2: the new CA signs
    out = _ok(_rotate(root, "ca", "--abort"))
    assert "now at stage 1" in out, out
    for what, pem in _signed_by(root, "ca", tmp_path / "a1").items():
        assert _verifies([old], pem, tmp_path), f"{what} not re-issued by the old CA"
    assert _spki(serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)) == _spki(old)
    out = _ok(_rotate(root, "ca", "--abort"))
    assert "now at stage 0" in out, out
    assert _certs(pki / "ca.crt") == [old]
    assert all(p.startswith(("etc/kubernetes/pki/", "etc/kubernetes/", "var/lib/kubelet/pki/"))
               for p in changed(before, node_state(root)))
    assert_one_line_error(_rotate(root, "ca", "--abort"), "no rotation in progress")


def test_dropping_the_old_ca_is_refused_while_anything_still_chains_to_it(tmp_path: Path) -> None:
    root = _lab(tmp_path)
    pki = root / "etc/kubernetes/pki"
    keep = {f: (pki / f).read_bytes() for f in ("apiserver.crt", "apiserver.key")}
    _ok(_rotate(root, "ca"))
    _ok(_rotate(root, "ca"))
    for f, data in keep.items():  # an old-CA certificate comes back (restored by hand, say)
        (pki / f).write_bytes(data)
    state = node_state(root)
    r = _rotate(root, "ca")
    assert_one_line_error(r, "still signed by the old CA on this node: apiserver")
    assert r.returncode == 3 and node_state(root) == state
    # running stage 2 again re-issues it; then the old CA can go
    _ok(run_kubecert("ca", "rotate", "ca", "--root", str(root), "--status"))


def test_a_node_without_the_ca_key_is_refused(node_copy: Callable[..., Path]) -> None:
    root = node_copy("single-stacked/master-1")
    (root / "etc/kubernetes/pki/front-proxy-ca.key").unlink()
    state = node_state(root)
    assert_one_line_error(_rotate(root, "front-proxy-ca"), "not on this node")
    assert node_state(root) == state


def test_a_crash_at_every_step_of_the_reissue_stage_is_all_old_or_all_new(tmp_path: Path) -> None:
    template = _lab(tmp_path)
    _ok(_rotate(template, "ca"))  # stage 1 done: the crash is in stage 2, the biggest transaction
    original = node_state(template)
    # one instant for the learning run and every crashed run: the kubelet's new pem is named by the
    # second (kubelet-client-<now>.pem), and a run in the second of the template's own pem would
    # overwrite it, one step more than the others: crash points must mean the same step in every run
    at = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    learn = copy_tree(template, tmp_path / "learn")
    log = tmp_path / "learn.steps"
    done = run_kubecert("ca", "rotate", "ca", "--root", str(learn), "--yes", "--now", at,
                        env=clean_env(KUBECERT_TEST_STEP_LOG=str(log)))
    assert done.returncode == 0, done.stderr
    rotated = node_state(learn)
    steps = len(log.read_text().splitlines())
    assert steps >= 10, log.read_text()
    outcomes = []
    for k in range(1, steps + 1, max(1, steps // 12)):
        root = copy_tree(template, tmp_path / f"crash-{k}")
        crashed = run_kubecert("ca", "rotate", "ca", "--root", str(root), "--yes", "--now", at,
                               env=clean_env(KUBECERT_TEST_CRASH_AT=str(k)))
        assert crashed.returncode == 137, (k, crashed.stderr)
        rec = run_kubecert("recover", "--root", str(root))
        assert rec.returncode == 0, (k, rec.stderr)
        assert after_crash_invariants(root) == [], k
        state = node_state(root)
        if state == original:
            outcomes.append("old")
            continue
        assert changed(original, state) == changed(original, rotated), f"step {k}: MIXED\n" + diff(rotated, state)
        outcomes.append("new")
        status = _ok(run_kubecert("ca", "rotate", "ca", "--root", str(root), "--status"))
        assert "stage 2" in status, status
    assert "old" in outcomes and monotonic(outcomes, "old", "new"), outcomes
