"""Acceptance 1 of the renewal engine: every kubeadm v1.28.4 fixture node renews offline, and the result
has exactly the shape kubeadm itself produced on renewal; openssl and kubectl accept it."""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import FIXTURES, assert_no_traceback, node_id, run_kubecert, secure_copy
from kubecert import spec, x509ops
from kubecert.kubeconfig import parse as parse_kubeconfig
from kubecert.layout import Layout
from kubecert.store import LocalFS

# renewal "now": a month after the fixtures were made, as a whole minute
NOW = dt.datetime(2026, 12, 30, 10, 20, tzinfo=dt.timezone.utc)
NOW_TEXT = "2026-12-30T10:20:00Z"


def _nodes() -> list[Path]:
    return sorted(p.parent for p in FIXTURES.glob("*/*/check-expiration.txt")
                  if not p.parent.name.endswith(".renewed-by-kubeadm"))


def _leafs_and_kubeconfigs(root: Path) -> Dict[str, Tuple[x509.Certificate, Optional[str]]]:
    """name -> (certificate, node path of the file) for each leaf and embedded kubeconfig cert."""
    fs = LocalFS(str(root))
    lay = Layout()
    out: Dict[str, Tuple[x509.Certificate, Optional[str]]] = {}
    for e in spec.ENTRIES:
        if e.kind is spec.Kind.LEAF and fs.exists(lay.cert(e)):
            out[e.name] = (x509ops.load_cert(fs.read(lay.cert(e)), e.name), lay.cert(e))
        elif e.kind is spec.Kind.KUBECONFIG and fs.exists(lay.kubeconfig(e.path)):
            kc = parse_kubeconfig(fs.read(lay.kubeconfig(e.path)), e.name)
            assert kc.client_cert_data is not None
            out[e.name] = (x509ops.load_cert(kc.client_cert_data, e.name), lay.kubeconfig(e.path))
    return out


def _shape(c: x509.Certificate) -> Tuple[object, ...]:
    """What renewal must keep: subject, issuer, SANs (order too), KU, EKU, BC, extension order."""
    def ext(cls: type) -> object:
        try:
            return c.extensions.get_extension_for_class(cls).value  # type: ignore[arg-type]
        except x509.ExtensionNotFound:
            return None

    return (c.subject, c.issuer, x509ops.sans(c), ext(x509.KeyUsage), ext(x509.ExtendedKeyUsage),
            ext(x509.BasicConstraints), [(e.oid, e.critical) for e in c.extensions])


def _openssl_verify(ca: Path, cert_pem: bytes, tmp: Path) -> subprocess.CompletedProcess[str]:
    f = tmp / "cert-under-test.pem"
    f.write_bytes(cert_pem)
    # -attime: the fixtures' CA is valid from 2026-11-30 on; verify at our pinned "now"
    return subprocess.run(["openssl", "verify", "-attime", str(int(NOW.timestamp())), "-CAfile", str(ca), str(f)],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def renewed(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Tuple[Path, Path, str]]:
    """Each fixture node copied and renewed once: id -> (original, renewed copy, stdout)."""
    out = {}
    for n in _nodes():
        dest = tmp_path_factory.mktemp(node_id(n).replace("/", "_"))
        secure_copy(n, dest)
        # a rehearsal 30 days after kubeadm ran, ahead of the real clock: the operator means it
        r = run_kubecert("renew", "all", "--root", str(dest), "--yes", "--now", NOW_TEXT, "--force-validity")
        assert_no_traceback(r.stdout, r.stderr)
        assert r.returncode == 0, (node_id(n), r.stdout, r.stderr)
        out[node_id(n)] = (n, dest, r.stdout)
    return out


@pytest.mark.parametrize("nid", [node_id(n) for n in _nodes()])
def test_renewed_fixture_matches_kubeadm_facts(renewed: Dict[str, Tuple[Path, Path, str]], nid: str,
                                               tmp_path: Path) -> None:
    original, copy, _ = renewed[nid]
    before = _leafs_and_kubeconfigs(original)
    after = _leafs_and_kubeconfigs(copy)
    assert before.keys() == after.keys()
    lay = Layout()
    renewed_names = []
    for name, (old, _path) in before.items():
        new, _ = after[name]
        e = spec.entry(name)
        assert e.ca is not None
        ca_key = copy / "etc/kubernetes/pki" / (spec.entry(e.ca).path + ".key")
        ca_crt = copy / "etc/kubernetes/pki" / (spec.entry(e.ca).path + ".crt")
        # the same shape as before, whatever happened
        assert _shape(new) == _shape(old), name
        # openssl, an independent checker, accepts the chain
        v = _openssl_verify(ca_crt, new.public_bytes(serialization.Encoding.PEM), tmp_path)
        assert v.returncode == 0, (name, v.stdout, v.stderr)
        if not ca_key.exists():  # externally managed: left alone, as kubeadm does
            assert new.serial_number == old.serial_number, name
            continue
        renewed_names.append(name)
        assert new.serial_number != old.serial_number, name
        assert x509ops.not_after(new) == NOW + dt.timedelta(days=365), name
        assert x509ops.not_before(new) == NOW - dt.timedelta(minutes=5), name
        assert x509ops.spki_der(new.public_key()) != x509ops.spki_der(old.public_key()), f"{name}: new key"  # type: ignore[arg-type]
    assert renewed_names or nid.startswith("external-etcd/etcd-"), f"{nid}: nothing renewed"
    # CAs and the sa pair: byte-identical
    for e in spec.ENTRIES:
        if e.kind in (spec.Kind.CA, spec.Kind.KEYPAIR):
            for p in (lay.cert(e), lay.key(e)):
                if (original / p.lstrip("/")).exists():
                    assert (copy / p.lstrip("/")).read_bytes() == (original / p.lstrip("/")).read_bytes(), p


@pytest.mark.parametrize("scenario", sorted({p.parent.name + "/" + p.name.split(".")[0]
                                             for p in FIXTURES.glob("*/*.renewed-by-kubeadm")}))
def test_same_as_kubeadm_renewal(renewed: Dict[str, Tuple[Path, Path, str]], scenario: str) -> None:
    """Compare with what `kubeadm certs renew all` wrote for the same node: the same certificates
    renewed, with the same subject, issuer, SANs, usages and extension DER (AKI included)."""
    _, ours, _ = renewed[scenario]
    theirs = FIXTURES / (scenario + ".renewed-by-kubeadm")
    a, b = _leafs_and_kubeconfigs(ours), _leafs_and_kubeconfigs(theirs)
    assert a.keys() == b.keys()
    for name in a:
        ca, kb = a[name][0], b[name][0]
        assert _shape(ca) == _shape(kb), name
        assert [e.value for e in ca.extensions] == [e.value for e in kb.extensions], name


@pytest.mark.parametrize("nid", [node_id(n) for n in _nodes() if not n.name.startswith("etcd-")])
def test_renewed_kubeconfigs_load_in_kubectl(renewed: Dict[str, Tuple[Path, Path, str]], nid: str,
                                             tmp_path: Path) -> None:
    original, copy, _ = renewed[nid]
    for name in ("admin.conf", "controller-manager.conf", "scheduler.conf", "kubelet.conf"):
        f = copy / "etc/kubernetes" / name
        r = subprocess.run(["kubectl", "config", "view", "--kubeconfig", str(f), "--raw", "-o", "json"],
                           capture_output=True, text=True)
        assert r.returncode == 0, (name, r.stderr)
        doc = json.loads(r.stdout)
        user = doc["users"][0]["user"]
        cert = base64.b64decode(user["client-certificate-data"])
        v = _openssl_verify(copy / "etc/kubernetes/pki/ca.crt", cert, tmp_path)
        assert v.returncode == 0, (name, v.stdout)
        key = x509ops.load_key(base64.b64decode(user["client-key-data"]), name)
        assert x509ops.key_matches_cert(x509ops.load_cert(cert, name), key), name
        # everything but the client credentials is as kubeadm wrote it
        old = json.loads(subprocess.run(["kubectl", "config", "view", "--kubeconfig",
                                         str(original / "etc/kubernetes" / name), "--raw", "-o", "json"],
                                        capture_output=True, text=True, check=True).stdout)
        for d in (doc, old):
            d["users"][0]["user"].pop("client-certificate-data")
            d["users"][0]["user"].pop("client-key-data")
        assert doc == old, name


def test_externally_managed_etcd_host_is_skipped_with_reason(renewed: Dict[str, Tuple[Path, Path, str]]) -> None:
    """etcd-2 has no etcd/ca.key (the guide deletes it): its leafs are skipped, not an error."""
    _, copy, out = renewed["external-etcd/etcd-2"]
    assert "externally managed" in out
    for line in out.splitlines():
        if line.startswith(("etcd-server", "etcd-peer", "etcd-healthcheck-client", "apiserver-etcd-client")):
            assert " skip " in line, line


def test_external_etcd_master_renews_only_what_its_cas_sign(renewed: Dict[str, Tuple[Path, Path, str]]) -> None:
    """master-1 of external-etcd holds no etcd CA key: apiserver-etcd-client is skipped."""
    original, copy, out = renewed["external-etcd/master-1"]
    p = "etc/kubernetes/pki/apiserver-etcd-client.crt"
    assert (copy / p).read_bytes() == (original / p).read_bytes()
    assert "externally managed" in out
