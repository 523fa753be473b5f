"""The audit on broken copies of real kubeadm trees: each defect gives its finding and exit code.

Every case breaks a private copy of a fixture node the way operators break real nodes (a bad copy,
a key from elsewhere, an edited config, a wrong chmod), runs the real CLI as a fresh process, and
checks the finding's code, the exit code, that nothing crashed and that nothing was written.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Optional

import pytest
import yaml
from cryptography import x509

from conftest import assert_no_traceback, check_now, node, run_kubecert, tree_digest

SINGLE = "single-stacked/master-1"
HA = "ha-stacked/master-1"
PKI = Path("etc/kubernetes/pki")
KUBE = Path("etc/kubernetes")


@dataclass
class Outcome:
    table: subprocess.CompletedProcess[str]
    data: Dict[str, Any]

    @property
    def codes(self) -> Dict[str, List[str]]:
        out: Dict[str, List[str]] = {}
        for f in self.data["findings"]:
            out.setdefault(f["code"], []).append(f["name"])
        return out

    def item(self, name: str) -> Dict[str, Any]:
        for key in ("certificates", "certificateAuthorities", "extraCertificates"):
            for i in self.data[key]:
                if i["name"] == name:
                    return dict(i)
        raise KeyError(name)


def audit(root: Path, now: Optional[str] = None, *, watch: Optional[List[Path]] = None) -> Outcome:
    """Run ``kubecert check`` (table and json) on ``root``; nothing under it may change."""
    now = now or check_now(node(SINGLE))
    trees = [root, *(watch or [])]
    before = [tree_digest(t) for t in trees]
    table = run_kubecert("check", "--root", str(root), "--now", now)
    as_json = run_kubecert("check", "--root", str(root), "--now", now, "-o", "json")
    assert [tree_digest(t) for t in trees] == before, "kubecert check modified the tree"
    for proc in (table, as_json):
        assert_no_traceback(proc.stdout, proc.stderr)
        assert proc.stderr == "", proc.stderr
    data = json.loads(as_json.stdout)
    assert table.returncode == as_json.returncode == data["exitCode"]
    assert f"(exit {table.returncode};" in table.stdout
    return Outcome(table, data)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def set_kubeconfig_field(path: Path, field: str, value: bytes) -> None:
    text = path.read_text()
    text, n = re.subn(rf"^(\s*{re.escape(field)}: )\S+$", lambda m: m.group(1) + b64(value), text, flags=re.M)
    assert n == 1, f"{path}: {field} found {n} times"
    path.write_text(text)


def kubeconfig_field(path: Path, field: str) -> bytes:
    m = re.search(rf"^\s*{re.escape(field)}: (\S+)$", path.read_text(), flags=re.M)
    assert m, f"{path}: no {field}"
    return base64.b64decode(m.group(1))


def edit_kubeadm_config(root: Path, edit: Callable[[Dict[str, Any]], None]) -> None:
    path = root / KUBE / "kubeadm-config.yaml"
    docs = list(yaml.safe_load_all(path.read_text()))
    for doc in docs:
        edit(doc)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


# -- one defect each --------------------------------------------------------------------------------

def break_corrupt_pem(root: Path) -> None:
    (root / PKI / "apiserver.crt").write_bytes(b"this is not a certificate\n\x00\xff garbage\n")


def break_truncated(root: Path) -> None:
    path = root / PKI / "apiserver.crt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def break_key_mismatch(root: Path) -> None:
    shutil.copyfile(root / PKI / "front-proxy-client.key", root / PKI / "apiserver.key")


def break_foreign_apiserver(root: Path) -> None:
    # a real apiserver pair from another cluster (its CA is also CN=kubernetes)
    for f in ("apiserver.crt", "apiserver.key"):
        shutil.copyfile(node(HA) / PKI / f, root / PKI / f)


def break_cert_is_directory(root: Path) -> None:
    # tests run as root, so chmod 000 would not stop the read; a directory does
    path = root / PKI / "apiserver.crt"
    path.unlink()
    path.mkdir()


def break_missing(root: Path) -> None:
    (root / PKI / "apiserver-kubelet-client.crt").unlink()


def break_kubeconfig_ca(root: Path) -> None:
    set_kubeconfig_field(root / KUBE / "admin.conf", "certificate-authority-data",
                         (root / PKI / "front-proxy-ca.crt").read_bytes())


def break_kubeconfig_foreign_client(root: Path) -> None:
    other = node(HA) / KUBE / "admin.conf"
    for field in ("client-certificate-data", "client-key-data"):
        set_kubeconfig_field(root / KUBE / "admin.conf", field, kubeconfig_field(other, field))


def break_apiserver_san(root: Path) -> None:
    def edit(doc: Dict[str, Any]) -> None:
        if doc.get("kind") == "ClusterConfiguration":
            doc.setdefault("apiServer", {}).setdefault("certSANs", []).append("extra.example.test")
    edit_kubeadm_config(root, edit)


def break_node_name(root: Path) -> None:
    def edit(doc: Dict[str, Any]) -> None:
        if doc.get("kind") == "InitConfiguration":
            doc["nodeRegistration"]["name"] = "master-9"
    edit_kubeadm_config(root, edit)


def break_key_mode(root: Path) -> None:
    os.chmod(root / PKI / "apiserver.key", 0o644)


def break_sa_pub(root: Path) -> None:
    shutil.copyfile(node(HA) / PKI / "sa.pub", root / PKI / "sa.pub")


@dataclass(frozen=True)
class Case:
    id: str
    defect: Callable[[Path], None]
    code: str
    name: str
    exit: int
    also: FrozenSet[str] = frozenset()  # other finding codes the same defect rightly causes


CASES = [
    Case("corrupt-pem", break_corrupt_pem, "unreadable", "apiserver", 2),
    Case("truncated", break_truncated, "unreadable", "apiserver", 2),
    Case("key-cert-mismatch", break_key_mismatch, "key-mismatch", "apiserver", 2),
    # the other cluster's apiserver also names its own endpoint and advertise address
    Case("cert-from-other-ca", break_foreign_apiserver, "wrong-ca", "apiserver", 2, frozenset({"apiserver-san"})),
    Case("cert-is-directory", break_cert_is_directory, "unreadable", "apiserver", 2),
    Case("missing-cert", break_missing, "missing", "apiserver-kubelet-client", 2),
    Case("kubeconfig-ca-data", break_kubeconfig_ca, "kubeconfig-ca", "admin.conf", 2),
    Case("kubeconfig-client-other-ca", break_kubeconfig_foreign_client, "wrong-ca", "admin.conf", 2),
    Case("apiserver-san", break_apiserver_san, "apiserver-san", "apiserver", 2),
    # a renamed node: the node name is also an apiserver SAN and kubelet.conf's CN
    Case("etcd-identity", break_node_name, "etcd-identity", "etcd-server", 2,
         frozenset({"apiserver-san", "subject"})),
    Case("key-permissions", break_key_mode, "key-permissions", "apiserver", 1),
    Case("sa-mismatch", break_sa_pub, "key-mismatch", "sa", 2),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_defect(case: Case, node_copy: Callable[..., Path]) -> None:
    root = node_copy(SINGLE)
    assert audit(root).data["exitCode"] == 0, "the untouched copy must be clean"
    case.defect(root)
    out = audit(root)
    assert case.name in out.codes.get(case.code, []), out.table.stdout
    assert set(out.codes) == {case.code} | case.also, out.table.stdout
    assert out.table.returncode == case.exit, out.table.stdout


def test_only_the_defect_is_reported(node_copy: Callable[..., Path]) -> None:
    """A key-mode slip is a warning and nothing else: exit 1, one finding, the chmod fix."""
    root = node_copy(SINGLE)
    break_key_mode(root)
    out = audit(root)
    assert out.data["exitCode"] == 1
    (finding,) = out.data["findings"]
    assert finding["severity"] == "warning"
    assert finding["fix"] == f"chmod 600 {root}/etc/kubernetes/pki/apiserver.key"


def test_missing_row_is_kubeadm_shaped(node_copy: Callable[..., Path]) -> None:
    root = node_copy(SINGLE)
    break_missing(root)
    out = audit(root)
    lines = out.table.stdout.split("\n")
    (row,) = [ln for ln in lines if "apiserver-kubelet-client" in ln and ln.startswith("!")]
    # kubeadm prints a missing row as the name and empty cells, padded up to the last (empty) column
    assert row.rstrip() == "!MISSING! apiserver-kubelet-client"
    assert len(row) == lines[0].index("EXTERNALLY MANAGED")
    assert out.item("apiserver-kubelet-client")["missing"] is True


def test_unreadable_kubeadm_row_is_not_shown_as_valid(node_copy: Callable[..., Path]) -> None:
    root = node_copy(SINGLE)
    break_corrupt_pem(root)
    out = audit(root)
    item = out.item("apiserver")
    assert item["expirationDate"] is None
    assert item["error"]


def test_expired_cas(node_copy: Callable[..., Path]) -> None:
    root = node_copy(SINGLE)
    out = audit(root, "2036-12-01T00:00:00Z")  # after every CA's NotAfter (2036-11-27)
    assert sorted(out.codes["ca-expired"]) == ["ca", "etcd-ca", "front-proxy-ca"]
    assert out.data["exitCode"] == 2


def test_leaf_outliving_its_ca(node_copy: Callable[..., Path]) -> None:
    """A leaf signed (by openssl, with the node's own CA key) to expire after the CA does."""
    root = node_copy(SINGLE)
    pki = root / PKI
    csr = subprocess.run(
        ["openssl", "req", "-new", "-key", str(pki / "apiserver-kubelet-client.key"),
         "-subj", "/O=system:masters/CN=kube-apiserver-kubelet-client"],
        capture_output=True, check=True).stdout
    crt = subprocess.run(
        ["openssl", "x509", "-req", "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
         "-set_serial", "0x1234567", "-days", "4000"],
        input=csr, capture_output=True, check=True).stdout
    (pki / "apiserver-kubelet-client.crt").write_bytes(crt)
    cert = x509.load_pem_x509_certificate(crt)
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    assert cert.not_valid_after_utc > ca.not_valid_after_utc
    # openssl starts the cert at the real clock; judge it an hour into its life
    now = (cert.not_valid_before_utc + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = audit(root, now)
    assert "apiserver-kubelet-client" in out.codes.get("outlives-ca", []), out.table.stdout
    assert out.data["exitCode"] >= 1


def test_missing_root_is_a_one_line_error(tmp_path: Path) -> None:
    for root in ("/nonexistent", str(tmp_path / "nope")):
        proc = run_kubecert("check", "--root", root, "--now", "2027-01-01T00:00:00Z")
        assert proc.returncode == 3
        assert proc.stdout == ""
        assert proc.stderr.startswith("kubecert: error: ")
        assert proc.stderr.count("\n") == 1 and proc.stderr.endswith("\n")
        assert root in proc.stderr


def test_root_without_pki_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "etc/kubernetes").mkdir(parents=True)
    proc = run_kubecert("check", "--root", str(tmp_path), "--now", "2027-01-01T00:00:00Z")
    assert proc.returncode == 3
    assert proc.stderr.startswith("kubecert: error: ") and proc.stderr.count("\n") == 1
    assert_no_traceback(proc.stdout, proc.stderr)


# -- symlinks that leave the root ---------------------------------------------------------------------

def _escape(root: Path, tmp_path: Path, target: str) -> List[Path]:
    """Replace the copy's apiserver.crt by a relative symlink climbing out of the root."""
    link = root / PKI / "apiserver.crt"
    if target == "outside-cert":
        # a valid certificate just outside the root: if kubecert followed the link it would look fine
        outside = tmp_path / "outside"
        outside.mkdir()
        shutil.copyfile(link, outside / "apiserver.crt")
        target = os.path.relpath(outside / "apiserver.crt", link.parent)
        assert target.startswith("../../../../")
    link.unlink()
    os.symlink(target, link)
    return [tmp_path / "outside"] if (tmp_path / "outside").exists() else []


ESCAPES = ["../../../../../../etc/passwd", "outside-cert"]


def _audit_escape(root: Path, watch: List[Path]) -> Optional[Outcome]:
    """None when kubecert refused the tree with a one-line error; the outcome otherwise."""
    before = [tree_digest(t) for t in (root, *watch)]
    proc = run_kubecert("check", "--root", str(root), "--now", check_now(node(SINGLE)), "-o", "json")
    assert_no_traceback(proc.stdout, proc.stderr)
    assert [tree_digest(t) for t in (root, *watch)] == before
    if proc.returncode == 3:
        assert proc.stderr.startswith("kubecert: error: ") and proc.stderr.count("\n") == 1, proc.stderr
        return None
    return audit(root, watch=watch)


@pytest.mark.parametrize("target", ESCAPES)
def test_symlink_out_of_root_is_never_read(target: str, node_copy: Callable[..., Path], tmp_path: Path) -> None:
    root = node_copy(SINGLE)
    out = _audit_escape(root, _escape(root, tmp_path, target))
    if out is None:
        return
    assert out.data["exitCode"] == 2
    assert "root:" not in out.table.stdout
    item = out.item("apiserver")
    assert item["expirationDate"] is None and item["sha256Fingerprint"] is None


@pytest.mark.parametrize("target", ESCAPES)
def test_symlink_out_of_root_is_reported_as_such(target: str, node_copy: Callable[..., Path],
                                                 tmp_path: Path) -> None:
    root = node_copy(SINGLE)
    out = _audit_escape(root, _escape(root, tmp_path, target))
    if out is None:
        return
    assert "apiserver" in out.codes.get("unreadable", []), out.table.stdout
    assert "apiserver" not in out.codes.get("missing", [])


# -- real layouts that are not defects ----------------------------------------------------------------

def test_absolute_symlink_resolves_inside_the_root(node_copy: Callable[..., Path]) -> None:
    """An absolute link means the node's own path (kubeadm --rootfs and the kubelet see it so)."""
    root = node_copy(SINGLE)
    (root / PKI / "archive").mkdir()
    (root / PKI / "apiserver.crt").rename(root / PKI / "archive/apiserver-1.crt")
    os.symlink("/etc/kubernetes/pki/archive/apiserver-1.crt", root / PKI / "apiserver.crt")
    out = audit(root)
    assert out.data["exitCode"] == 0, out.table.stdout
    kubeadm = (node(SINGLE) / "check-expiration.txt").read_text()
    (row,) = [ln for ln in kubeadm.split("\n") if ln.startswith("apiserver ")]
    assert row in out.table.stdout.split("\n")


def _kubelet_conf_with_rotated_pem(root: Path) -> Path:
    """kubelet.conf as after TLS bootstrap: client cert+key in kubelet-client-current.pem, an
    absolute symlink to the dated file the kubelet wrote."""
    conf = root / KUBE / "kubelet.conf"
    doc = yaml.safe_load(conf.read_text())
    user = doc["users"][0]["user"]
    pem = base64.b64decode(user.pop("client-certificate-data")) + base64.b64decode(user.pop("client-key-data"))
    user["client-certificate"] = user["client-key"] = "/var/lib/kubelet/pki/kubelet-client-current.pem"
    conf.write_text(yaml.safe_dump(doc))
    pki = root / "var/lib/kubelet/pki"
    pki.mkdir(parents=True)
    dated = pki / "kubelet-client-2026-11-30-03-53-02.pem"
    dated.write_bytes(pem)
    os.chmod(dated, 0o600)
    os.symlink("/var/lib/kubelet/pki/kubelet-client-2026-11-30-03-53-02.pem", pki / "kubelet-client-current.pem")
    return dated


def test_kubelet_conf_with_rotated_client_pem(node_copy: Callable[..., Path]) -> None:
    root = node_copy(SINGLE)
    dated = _kubelet_conf_with_rotated_pem(root)
    out = audit(root)
    assert out.data["exitCode"] == 0, out.table.stdout
    item = out.item("kubelet.conf")
    assert item["certificateSource"] == "/var/lib/kubelet/pki/kubelet-client-current.pem"
    assert item["subject"] == "CN=system:node:master-1,O=system:nodes"
    # the pem holds the kubelet's private key: a loose mode is the same warning as for a .key
    os.chmod(dated, 0o644)
    out = audit(root)
    assert out.codes == {"key-permissions": ["kubelet.conf"]}
    assert out.data["exitCode"] == 1
