"""Issue 10, part 1: `kubecert ca renew` on the PKI trees real kubeadm v1.28.4 wrote, and on lab nodes.

A renewed CA keeps its key, subject, issuer, SKI, AKI and extensions; everything it signed still
verifies (``openssl verify``, an independent checker) against the new version and the old one;
every copy on the node is the new one afterwards; bad input changes nothing; a crash at any step
leaves the node all-old or all-new; ``kubecert rollback`` undoes it byte for byte.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest
import yaml
from cryptography import x509

from conftest import FIXTURES, ran_at
from kubecert import x509ops
from treeutil import (
    after_crash_invariants,
    changed,
    clean_env,
    copy_tree,
    diff,
    lab_create,
    monotonic,
    node_state,
    run_kubecert,
)

CAS = {"ca": "ca.crt", "front-proxy-ca": "front-proxy-ca.crt", "etcd-ca": "etcd/ca.crt"}
KUBECONFIGS = ("admin.conf", "super-admin.conf", "controller-manager.conf", "scheduler.conf", "kubelet.conf")
DAY = dt.timedelta(days=1)


def _nodes() -> List[str]:
    return sorted(str(p.parent.relative_to(FIXTURES)) for p in FIXTURES.glob("*/*/check-expiration.txt")
                  if not p.parent.name.endswith(".renewed-by-kubeadm"))


def _now(node: Path) -> Tuple[dt.datetime, str]:
    """A day after kubeadm made the node, as a whole minute."""
    when = (ran_at(node) + DAY).replace(second=0, microsecond=0)
    return when, when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _load(path: Path) -> x509.Certificate:
    return x509ops.load_certs(path.read_bytes(), str(path))[0]


def _signed_here(root: Path, scratch: Path) -> Dict[str, Tuple[Path, str]]:
    """Every leaf and kubeconfig client cert on the node as a PEM file (a kubeconfig's copied out
    into ``scratch``) -> the CA file that signed it."""
    pki = root / "etc/kubernetes/pki"
    out: Dict[str, Tuple[Path, str]] = {}
    cas = {n: _load(pki / f) for n, f in CAS.items() if (pki / f).exists()}
    for crt in sorted(pki.rglob("*.crt")):
        cert = _load(crt)
        if x509ops.is_ca_cert(cert):
            continue
        for n, ca in cas.items():
            if x509ops.signed_by(cert, ca):
                out[str(crt.relative_to(root))] = (crt, CAS[n])
    for conf in KUBECONFIGS:
        path = root / "etc/kubernetes" / conf
        if path.exists():
            user = yaml.safe_load(path.read_text())["users"][0]["user"]
            if "client-certificate-data" in user:
                pem = scratch / (conf + ".client.pem")
                pem.write_bytes(base64.b64decode(user["client-certificate-data"]))
                out[conf] = (pem, "ca.crt")
    return out


def _openssl_verify(cafile: Path, cert: Path) -> str:
    r = subprocess.run(["openssl", "verify", "-CAfile", str(cafile), str(cert)], capture_output=True, text=True,
                       check=False)
    return "OK" if r.returncode == 0 else (r.stdout + r.stderr).strip()


def _ca_data(root: Path, conf: str) -> bytes:
    doc = yaml.safe_load((root / "etc/kubernetes" / conf).read_text())
    return base64.b64decode(doc["clusters"][0]["cluster"]["certificate-authority-data"])


def _extensions(cert: x509.Certificate) -> List[Tuple[object, bool, object]]:
    return [(e.oid, e.critical, e.value) for e in cert.extensions]


@pytest.mark.parametrize("rel", [n for n in _nodes() if (FIXTURES / n / "etc/kubernetes/pki/ca.key").exists()
                                 or (FIXTURES / n / "etc/kubernetes/pki/etcd/ca.key").exists()])
def test_every_kubeadm_ca_renews_with_its_key_and_everything_it_signed_still_verifies(
        rel: str, node_copy: Callable[..., Path], tmp_path: Path) -> None:
    root = node_copy(rel)
    pki = root / "etc/kubernetes/pki"
    now, now_text = _now(FIXTURES / rel)
    before = node_state(root)
    old = {n: _load(pki / f) for n, f in CAS.items() if (pki / f).exists()}
    old_files = {n: (pki / f).read_bytes() for n, f in CAS.items() if (pki / f).exists()}
    for n, data in old_files.items():
        (tmp_path / f"old-{n}.crt").write_bytes(data)
    with_key = {n for n, f in CAS.items() if (pki / f.replace(".crt", ".key")).exists()}
    # --now is a day after the node was made, not the real clock: --force-validity says we mean it
    r = run_kubecert("ca", "renew", "all", "--within", "3650d", "--root", str(root), "--now", now_text, "--yes",
                     "--force-validity", "--no-cluster-info")
    assert r.returncode == 0, r.stdout + r.stderr
    for n, ca in old.items():
        new = _load(pki / CAS[n])
        if n not in with_key:  # a CA whose key lives elsewhere is left alone, with the reason
            assert new.serial_number == ca.serial_number
            assert "its key" in r.stdout and f"kubecert ca renew {n} --cert FILE" in r.stdout, r.stdout
            continue
        assert x509ops.same_ca(ca, new) and new.issuer == ca.issuer
        assert _extensions(new) == _extensions(ca), n  # SKI, KU, BC, SAN: verbatim, in order
        assert new.serial_number != ca.serial_number
        assert x509ops.not_after(new) == now + dt.timedelta(days=3650)
        assert x509ops.not_before(new) == now - dt.timedelta(minutes=5)
        assert new.signature_hash_algorithm.name == ca.signature_hash_algorithm.name  # type: ignore[union-attr]
    for what, (cert, cafile) in _signed_here(root, tmp_path).items():
        name = next(n for n, f in CAS.items() if f == cafile)
        assert _openssl_verify(pki / cafile, cert) == "OK", f"{what} against the renewed {name}"
        assert _openssl_verify(tmp_path / f"old-{name}.crt", cert) == "OK", f"{what} against the old {name}"
    if "ca" in with_key:
        for conf in KUBECONFIGS:
            if (root / "etc/kubernetes" / conf).exists():
                assert _ca_data(root, conf) == (pki / "ca.crt").read_bytes(), conf
    check = run_kubecert("check", "--root", str(root), "--now", now_text, "-o", "json")
    codes = {f["code"] for f in json.loads(check.stdout)["findings"]}
    assert not codes & {"ca-copy-stale", "kubeconfig-ca", "wrong-ca", "key-mismatch"}, codes

    backup = r.stdout.split("backup ", 1)[1].split()[0]
    back = run_kubecert("rollback", backup, "--root", str(root), "--yes")
    assert back.returncode == 0, back.stdout + back.stderr
    assert node_state(root) == before, diff(before, node_state(root))


def test_a_node_without_the_key_takes_the_renewed_ca_from_where_the_key_is(node_copy: Callable[..., Path]) -> None:
    """External etcd: etcd-1 keeps etcd-ca's key, master-1 only its certificate (for --etcd-cafile)."""
    etcd, master = node_copy("external-etcd/etcd-1"), node_copy("external-etcd/master-1")
    now, now_text = _now(FIXTURES / "external-etcd/etcd-1")
    common = ("--now", now_text, "--yes", "--force-validity", "--no-cluster-info")
    skipped = run_kubecert("ca", "renew", "etcd-ca", "--root", str(master), *common)
    assert skipped.returncode == 0 and "kubecert ca renew etcd-ca --cert FILE" in skipped.stdout, skipped.stdout
    assert run_kubecert("ca", "renew", "etcd-ca", "--root", str(etcd), *common).returncode == 0
    renewed = etcd / "etc/kubernetes/pki/etcd/ca.crt"
    r = run_kubecert("ca", "renew", "--cert", str(renewed), "--root", str(master), *common)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (master / "etc/kubernetes/pki/etcd/ca.crt").read_bytes() == renewed.read_bytes()
    client = master / "etc/kubernetes/pki/apiserver-etcd-client.crt"
    assert _openssl_verify(master / "etc/kubernetes/pki/etcd/ca.crt", client) == "OK"
    # the same file again: nothing left to write, the CA named as already current
    again = run_kubecert("ca", "renew", "--cert", str(renewed), "--root", str(master), *common)
    assert again.returncode == 0 and "already this version" in again.stdout, again.stdout


def _refused(root: Path, *args: str, needle: str) -> None:
    before = node_state(root)
    r = run_kubecert("ca", "renew", *args, "--root", str(root), "--yes", "--no-cluster-info")
    assert r.returncode == 3, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert node_state(root) == before, diff(before, node_state(root))


def test_a_certificate_that_is_not_a_renewal_of_this_nodes_ca_is_refused(node_copy: Callable[..., Path],
                                                                          tmp_path: Path) -> None:
    root = node_copy("ha-stacked/master-1")
    other = FIXTURES / "single-stacked/master-1/etc/kubernetes/pki"
    _refused(root, "--cert", str(other / "ca.crt"), needle="not a version of any CA on this node")
    _refused(root, "--cert", str(root / "etc/kubernetes/pki/apiserver.crt"), needle="expected one CA certificate")
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes((root / "etc/kubernetes/pki/ca.crt").read_bytes() + (other / "ca.crt").read_bytes())
    _refused(root, "--cert", str(bundle), needle="expected one CA certificate, found 2")
    _refused(root, "--cert", str(tmp_path / "absent.crt"), needle="absent.crt")
    # an older version than the node has: renew once, then hand back the original
    original = tmp_path / "original-ca.crt"
    original.write_bytes((root / "etc/kubernetes/pki/ca.crt").read_bytes())
    assert run_kubecert("ca", "renew", "ca", "--root", str(root), "--yes", "--no-cluster-info").returncode == 0
    _refused(root, "--cert", str(original), needle="before the ca this node has")
    # the same name with another key is a rotation, not a renewal
    now = dt.datetime.now(dt.timezone.utc)
    rekeyed = x509ops.make_ca(x509ops.Template("kubernetes"), x509ops.generate_key("rsa-2048"), now,
                              now + dt.timedelta(days=3650))
    (tmp_path / "rekeyed.crt").write_bytes(x509ops.cert_pem(rekeyed))
    _refused(root, "--cert", str(tmp_path / "rekeyed.crt"), needle="not a version of any CA")


def test_a_renewal_that_would_not_outlive_the_current_ca_is_refused(node_copy: Callable[..., Path]) -> None:
    root = node_copy("single-stacked/master-1")
    _refused(root, "ca", "--days", "30", needle="no later than the one it replaces")
    _refused(root, "ca", "--now", "2030-01-01T00:00:00Z", needle="would not be valid now")


def _lab(tmp_path: Path, *args: str) -> Path:
    """A lab master made a day ago: a CA made this very second and renewed at once for the same 3650
    days would expire in the same second as before, which kubecert refuses (nothing to gain)."""
    made = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return lab_create(tmp_path, "--nodes", "1", "--now", made, *args) / "master-1"


def test_every_copy_on_a_lab_node_flags_bundles_and_an_operators_kubeconfig(tmp_path: Path) -> None:
    """The files the components' flags name are copies too (here a bundle of etcd-ca and another CA
    behind --etcd-cafile), and /root/.kube/config is updated only with --update-user-kubeconfigs."""
    root = _lab(tmp_path)
    kube = root / "etc/kubernetes"
    other = _load(FIXTURES / "single-stacked/master-1/etc/kubernetes/pki/ca.crt")
    bundle = kube / "pki/etcd-trust-bundle.crt"
    bundle.write_bytes((kube / "pki/etcd/ca.crt").read_bytes() + x509ops.cert_pem(other))
    manifest = kube / "manifests/kube-apiserver.yaml"
    text = manifest.read_text()
    assert "--etcd-cafile=/etc/kubernetes/pki/etcd/ca.crt" in text
    manifest.write_text(text.replace("--etcd-cafile=/etc/kubernetes/pki/etcd/ca.crt",
                                     "--etcd-cafile=/etc/kubernetes/pki/etcd-trust-bundle.crt"))
    user = root / "root/.kube/config"
    user.parent.mkdir(parents=True, exist_ok=True)
    user.write_bytes((kube / "admin.conf").read_bytes())
    user.chmod(0o600)
    plain = run_kubecert("ca", "renew", "ca", "etcd-ca", "--root", str(root), "--yes", "--no-cluster-info")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert _ca_data(root, "../../root/.kube/config") != (kube / "pki/ca.crt").read_bytes()
    certs = x509ops.load_certs(bundle.read_bytes(), "bundle")
    assert [x509ops.fingerprint(c) for c in certs] == [
        x509ops.fingerprint(_load(kube / "pki/etcd/ca.crt")), x509ops.fingerprint(other)]
    assert "etcd-ca in etcd-trust-bundle.crt" in plain.stdout and "kube-apiserver" in plain.stdout, plain.stdout
    # one more day: a second renewal within the same second would expire exactly when the first does,
    # which kubecert refuses (a renewed CA must outlive the one it replaces)
    again = run_kubecert("ca", "renew", "ca", "--root", str(root), "--yes", "--no-cluster-info",
                         "--update-user-kubeconfigs", "--days", "3651")
    assert again.returncode == 0, again.stdout + again.stderr
    assert _ca_data(root, "../../root/.kube/config") == (kube / "pki/ca.crt").read_bytes()
    assert (user.stat().st_mode & 0o777) == 0o600


def test_check_warns_of_a_ca_near_its_end_and_of_a_stale_copy(tmp_path: Path) -> None:
    root = _lab(tmp_path)
    ca = _load(root / "etc/kubernetes/pki/ca.crt")
    late = (x509ops.not_after(ca) - dt.timedelta(days=100)).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = run_kubecert("check", "--root", str(root), "--now", late, "-o", "json", "--warn", "1d", "--crit", "1d")
    found = [f for f in json.loads(r.stdout)["findings"] if f["code"] == "ca-expiring"]
    assert {f["name"] for f in found} == set(CAS), found
    assert r.returncode >= 1 and "kubecert ca renew ca" in found[0]["fix"]
    quiet = run_kubecert("check", "--root", str(root), "--now", late, "-o", "json", "--ca-warn", "30d")
    assert not [f for f in json.loads(quiet.stdout)["findings"] if f["code"] == "ca-expiring"]
    # the PKI dir's ca.crt renewed by hand, the kubeconfigs left behind: each is a stale copy
    elsewhere = copy_tree(root, tmp_path / "elsewhere")
    assert run_kubecert("ca", "renew", "ca", "--root", str(elsewhere), "--yes", "--no-cluster-info").returncode == 0
    (root / "etc/kubernetes/pki/ca.crt").write_bytes((elsewhere / "etc/kubernetes/pki/ca.crt").read_bytes())
    stale = run_kubecert("check", "--root", str(root), "-o", "json")
    codes = [(f["code"], f["path"].rsplit("/", 1)[-1]) for f in json.loads(stale.stdout)["findings"]]
    assert ("ca-copy-stale", "admin.conf") in codes and ("ca-copy-stale", "kubelet.conf") in codes, codes
    assert not [c for c in codes if c[0] == "kubeconfig-ca"], codes
    fix = run_kubecert("ca", "renew", "--cert", str(root / "etc/kubernetes/pki/ca.crt"), "--root", str(root),
                       "--yes", "--no-cluster-info")
    assert fix.returncode == 0, fix.stdout + fix.stderr
    after = run_kubecert("check", "--root", str(root), "-o", "json")
    assert not [f for f in json.loads(after.stdout)["findings"] if f["code"] == "ca-copy-stale"]


def test_a_crash_at_every_step_then_recover_is_all_old_or_all_new(tmp_path: Path) -> None:
    template = _lab(tmp_path)
    original = node_state(template)
    args = ["ca", "renew", "ca", "front-proxy-ca", "etcd-ca", "--yes", "--no-cluster-info", "--now", "2026-11-30T00:00:00Z",
            "--force-validity"]
    learn = copy_tree(template, tmp_path / "learn")
    log = tmp_path / "learn.steps"
    done = run_kubecert(*args, "--root", str(learn), env=clean_env(KUBECERT_TEST_STEP_LOG=str(log)))
    assert done.returncode == 0, done.stderr
    renewed = node_state(learn)
    steps = len(log.read_text().splitlines())
    assert steps >= 8, log.read_text()
    outcomes = []
    for k in range(1, steps + 1):
        root = copy_tree(template, tmp_path / f"crash-{k}")
        crashed = run_kubecert(*args, "--root", str(root), env=clean_env(KUBECERT_TEST_CRASH_AT=str(k)))
        assert crashed.returncode == 137, (k, crashed.stderr)
        rec = run_kubecert("recover", "--root", str(root), "--now", "2026-11-30T00:00:00Z")
        assert rec.returncode == 0, (k, rec.stderr)
        state = node_state(root)
        assert after_crash_invariants(root) == [], k
        if state == original:
            outcomes.append("old")
            continue
        # new serials every run: "all-new" is the same files changed, and no copy left behind
        assert changed(original, state) == changed(original, renewed), f"step {k}: MIXED\n" + diff(renewed, state)
        check = run_kubecert("check", "--root", str(root), "-o", "json")
        stale = [f for f in json.loads(check.stdout)["findings"] if f["code"] in ("ca-copy-stale", "kubeconfig-ca")]
        assert not stale, (k, stale)
        outcomes.append("new")
    assert "old" in outcomes and monotonic(outcomes, "old", "new"), outcomes
