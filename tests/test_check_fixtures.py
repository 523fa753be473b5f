"""`kubecert check` against trees written by real kubeadm v1.28.4, and against kubeadm's own output.

Every fixture node carries ``check-expiration.txt`` (what ``kubeadm certs check-expiration`` printed)
and ``kubeadm-ran-at.txt``; kubecert, run as a fresh process with ``--now`` pinned to that moment, must
print kubeadm's rows byte for byte. Signature verdicts are checked against ``openssl verify``.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import re
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import pytest
import yaml
from cryptography import x509

from conftest import (
    assert_no_traceback,
    check_now,
    fixture_nodes,
    is_etcd_host,
    node,
    node_id,
    ran_at,
    run_kubecert,
    secure_copy,
)
from kubecert import layout, spec, x509ops
from kubecert.cli import parse_now

NODES = fixture_nodes()
CONTROL_PLANES = [n for n in NODES if not is_etcd_host(n)]
ETCD_HOSTS = [n for n in NODES if is_etcd_host(n)]


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def params(nodes: Sequence[Path]) -> Any:
    return pytest.mark.parametrize("fixture_node", nodes, ids=[node_id(n) for n in nodes])


# -- running kubecert once per (root, now, format) --------------------------------------------------

@functools.cache
def _check(root: str, now: str, output: str = "table") -> subprocess.CompletedProcess[str]:
    proc = run_kubecert("check", "--root", root, "--now", now, "-o", output)
    assert_no_traceback(proc.stdout, proc.stderr)
    assert proc.stderr == "", proc.stderr
    return proc


def check_text(n: Path) -> str:
    return _check(str(n), check_now(n)).stdout


def check_json(n: Path) -> Dict[str, Any]:
    data: Dict[str, Any] = json.loads(_check(str(n), check_now(n), "json").stdout)
    return data


# -- kubeadm's tables -------------------------------------------------------------------------------

def split_tables(text: str) -> Tuple[List[str], List[str]]:
    """The certificate table and the CA table (header + rows each) from kubeadm-shaped output."""
    certs, rest = text.split("\n\n", 1)
    cas = rest.split("\n\n", 1)[0]
    return certs.split("\n"), cas.rstrip("\n").split("\n")


def kubeadm_block(text: str) -> str:
    """Our output up to (and including) the newline ending the CA table."""
    certs, cas = split_tables(text)
    return "\n".join(certs) + "\n\n" + "\n".join(cas) + "\n"


def cells(table: List[str]) -> List[List[str]]:
    """Split rows at the header's column starts; the last cell keeps its trailing spaces."""
    header = table[0]
    starts = [m.start() for m in re.finditer(r"\S+(?: \S+)*", header)]
    out = []
    for row in table:
        row_cells = [row[a:b].rstrip() for a, b in zip(starts, starts[1:])]
        out.append(row_cells + [row[starts[-1]:]])
    return out


def go_tabwriter(rows: List[List[str]], minwidth: int = 10, padding: int = 3) -> List[str]:
    """Go text/tabwriter with kubeadm's settings, for tables where every row has every cell."""
    widths = [max(minwidth, *(len(r[j]) + padding for r in rows)) for j in range(len(rows[0]) - 1)]
    return ["".join(c.ljust(w) for c, w in zip(r, widths)) + r[-1] for r in rows]


def is_missing(row: str) -> bool:
    return row.startswith("!MISSING! ")


def kubeadm_date(when: dt.datetime) -> str:
    return f"{_MONTHS[when.month - 1]} {when.day:02d}, {when.year} {when.hour:02d}:{when.minute:02d} UTC"


def human_days(seconds: int) -> str:
    """ShortHumanDuration for residuals of a day or more (all the fixtures show)."""
    hours = seconds // 3600
    assert hours >= 24
    return f"{hours // 24}d" if hours < 24 * 365 else f"{int(hours / 24 / 365)}y"


# -- tables -------------------------------------------------------------------------------------------

@params(NODES)
def test_tabwriter_model_reproduces_kubeadm(fixture_node: Path) -> None:
    """Sanity check of the test's own Go-tabwriter model on kubeadm's files."""
    for table in split_tables((fixture_node / "check-expiration.txt").read_text()):
        assert go_tabwriter(cells(table)) == table


@params(NODES)
def test_kubeadm_rows_are_ours(fixture_node: Path) -> None:
    kubeadm = (fixture_node / "check-expiration.txt").read_text()
    ours = check_text(fixture_node)
    our_lines = set(ours.split("\n"))
    profile = spec.Profile(tuple(check_json(fixture_node)["profile"]["roles"]))
    etcd_host = is_etcd_host(fixture_node)
    assert profile.is_control_plane is not etcd_host

    for k_table, o_table in zip(split_tables(kubeadm), split_tables(ours)):
        k_rows = k_table[1:]
        missing = [r.split()[1] for r in k_rows if is_missing(r)]
        if not etcd_host:
            # a control plane: kubeadm's lines verbatim (missing rows too, if any)
            for row in k_table:
                assert row in our_lines, f"kubeadm row not in kubecert output: {row!r}"
            continue
        # An etcd host: kubeadm lists the control-plane files an etcd host never has as !MISSING!.
        # kubecert knows the node's role and leaves them out ...
        assert missing, "expected kubeadm to list control-plane files as missing on an etcd host"
        for name in missing:
            assert name not in profile.names
            assert f"!MISSING! {name}" not in ours
        # ... so its table holds exactly kubeadm's other rows, same cells, same order. The rows cannot
        # be byte-identical to kubeadm's: tabwriter pads each column to its widest cell, and in
        # kubeadm's file that is "!MISSING! apiserver-kubelet-client". What kubecert prints must be
        # exactly what kubeadm's tabwriter prints for the same rows without the missing ones.
        present = [c for c in cells(k_table) if not is_missing(c[0])]
        assert o_table == go_tabwriter(present)
        assert [c[0] for c in cells(o_table)[1:]] == [c[0] for c in present[1:]]


@params(CONTROL_PLANES)
def test_kubeadm_block_is_byte_identical(fixture_node: Path) -> None:
    kubeadm = (fixture_node / "check-expiration.txt").read_text()
    assert kubeadm_block(check_text(fixture_node)) == kubeadm


# -- structured output ------------------------------------------------------------------------------

def _parse_time(text: str) -> dt.datetime:
    assert _RFC3339_Z.match(text), text
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@params(NODES)
def test_json_matches_kubeadm_shape_and_the_table(fixture_node: Path) -> None:
    data = check_json(fixture_node)
    assert data["apiVersion"] == "output.kubeadm.k8s.io/v1alpha3"
    assert data["kind"] == "CertificateExpirationInfo"
    now = ran_at(fixture_node) + dt.timedelta(milliseconds=500)

    our_certs, our_cas = (cells(t) for t in split_tables(check_text(fixture_node)))
    k_certs, k_cas = split_tables((fixture_node / "check-expiration.txt").read_text())
    for key, rows, k_rows, with_ca in (("certificates", our_certs, k_certs, True),
                                       ("certificateAuthorities", our_cas, k_cas, False)):
        by_name = {r[0]: r for r in rows[1:]}
        items = data[key]
        assert [i["name"] for i in items] == [r[0] for r in rows[1:]]
        assert {i["name"] for i in items} == {r.split()[0] for r in k_rows[1:] if not is_missing(r)}
        for item in items:
            for field in ("name", "expirationDate", "residualTime", "externallyManaged", "missing"):
                assert field in item, (key, item["name"], field)
            expires = _parse_time(item["expirationDate"])
            residual = item["residualTime"]
            assert isinstance(residual, int) and not isinstance(residual, bool)
            assert residual == int((expires - now).total_seconds())
            assert item["missing"] is False
            assert isinstance(item["externallyManaged"], bool)
            row = by_name[item["name"]]
            assert row[1] == kubeadm_date(expires)
            assert row[2] == human_days(residual)
            assert row[-1].rstrip() == ("yes" if item["externallyManaged"] else "no")
            if with_ca:
                assert item["caName"] == row[3] == spec.entry(item["name"]).ca
            else:
                assert "caName" not in item


@params(NODES)
def test_yaml_is_the_json_data(fixture_node: Path) -> None:
    as_yaml = yaml.safe_load(_check(str(fixture_node), check_now(fixture_node), "yaml").stdout)
    assert as_yaml == check_json(fixture_node)


# -- signatures: x509ops.signed_by vs openssl verify ------------------------------------------------

def _openssl_verify(cert: Path, ca: Path, at: dt.datetime) -> bool:
    # -attime: openssl checks dates too; judge at the moment kubeadm looked, not the real clock
    proc = subprocess.run(["openssl", "verify", "-attime", str(int(at.timestamp())), "-CAfile", str(ca), str(cert)],
                          capture_output=True, text=True, check=False)
    ok = proc.returncode == 0
    assert ok == proc.stdout.strip().endswith(": OK"), proc.stdout + proc.stderr
    return ok


def _signed_by(cert: Path, ca: Path) -> bool:
    return x509ops.signed_by(x509.load_pem_x509_certificate(cert.read_bytes()),
                             x509.load_pem_x509_certificate(ca.read_bytes()))


def _client_cert_pem(kubeconfig: Path) -> bytes:
    doc = yaml.safe_load(kubeconfig.read_text())
    ctx = next(c["context"] for c in doc["contexts"] if c["name"] == doc["current-context"])
    user = next(u["user"] for u in doc["users"] if u["name"] == ctx["user"])
    return base64.b64decode(user["client-certificate-data"])


def _signed_files(n: Path, tmp: Path) -> List[Tuple[str, Path, Path]]:
    """(entry name, cert file, its CA's cert file) for every leaf cert and kubeconfig on the node."""
    lay = layout.Layout()
    by_path = {lay.cert(e): e for e in spec.ENTRIES}
    out = []
    for crt in sorted(n.glob("etc/kubernetes/**/*.crt")):
        e = by_path.get("/" + str(crt.relative_to(n)))
        assert e is not None, f"{crt}: not a file of the certificate table"
        if e.is_ca:
            continue
        assert e.ca is not None
        out.append((e.name, crt, n / lay.cert(spec.entry(e.ca)).lstrip("/")))
    for conf in sorted(n.glob("etc/kubernetes/*.conf")):
        e = spec.entry(conf.name)
        assert e.kind is spec.Kind.KUBECONFIG and e.ca is not None
        pem = tmp / f"{conf.name}.client.crt"
        pem.write_bytes(_client_cert_pem(conf))
        out.append((e.name, pem, n / lay.cert(spec.entry(e.ca)).lstrip("/")))
    return out


@params(NODES)
def test_signed_by_agrees_with_openssl(fixture_node: Path, tmp_path: Path) -> None:
    files = _signed_files(fixture_node, tmp_path)
    expect = {"etcd-server", "etcd-peer", "etcd-healthcheck-client", "apiserver-etcd-client"}
    if not is_etcd_host(fixture_node):
        expect = {"apiserver", "apiserver-kubelet-client", "front-proxy-client", "apiserver-etcd-client",
                  "admin.conf", "controller-manager.conf", "scheduler.conf", "kubelet.conf"}
        if "external-etcd" not in str(fixture_node):
            expect |= {"etcd-server", "etcd-peer", "etcd-healthcheck-client"}
    assert {name for name, _, _ in files} == expect
    at = ran_at(fixture_node)
    for name, crt, ca in files:
        assert ca.is_file(), f"{name}: no CA {ca}"
        ours, openssl = _signed_by(crt, ca), _openssl_verify(crt, ca, at)
        assert ours == openssl, f"{name}: signed_by={ours}, openssl verify={openssl}"
        assert ours, f"{name}: {crt} is not signed by {ca}"


def _fixture_file(rel: str) -> Tuple[Path, Path]:
    """(file, its fixture node) for ``scenario/node/etc/...``."""
    scenario, name, rest = rel.split("/", 2)
    n = node(f"{scenario}/{name}")
    return n / rest, n


@pytest.mark.parametrize(("cert", "ca", "signed"), [
    # same subject (CN=kubernetes), different CA key: only the signature tells them apart
    ("ha-stacked/master-1/etc/kubernetes/pki/apiserver.crt", "single-stacked/master-1/etc/kubernetes/pki/ca.crt", False),
    ("single-stacked/master-1/etc/kubernetes/pki/etcd/server.crt", "external-etcd/etcd-1/etc/kubernetes/pki/etcd/ca.crt",
     False),
    ("external-etcd/master-1/etc/kubernetes/pki/front-proxy-client.crt",
     "ha-stacked/master-1/etc/kubernetes/pki/front-proxy-ca.crt", False),
    # the node's own CA file, but the wrong one
    ("single-stacked/master-1/etc/kubernetes/pki/apiserver.crt",
     "single-stacked/master-1/etc/kubernetes/pki/front-proxy-ca.crt", False),
    # CAs shared by the nodes of one cluster, and kept across a renewal
    ("ha-stacked/master-3/etc/kubernetes/pki/apiserver.crt", "ha-stacked/master-1/etc/kubernetes/pki/ca.crt", True),
    ("single-stacked/master-1.renewed-by-kubeadm/etc/kubernetes/pki/apiserver.crt",
     "single-stacked/master-1/etc/kubernetes/pki/ca.crt", True),
    ("external-etcd/etcd-3/etc/kubernetes/pki/etcd/peer.crt", "external-etcd/etcd-1/etc/kubernetes/pki/etcd/ca.crt", True),
])
def test_signed_by_across_fixtures(cert: str, ca: str, signed: bool) -> None:
    cert_path, cert_node = _fixture_file(cert)
    ca_path, _ = _fixture_file(ca)
    assert _signed_by(cert_path, ca_path) is signed
    assert _openssl_verify(cert_path, ca_path, ran_at(cert_node)) is signed


# -- exit codes ----------------------------------------------------------------------------------------

@functools.cache
def _secure(n: Path, base: Path) -> Path:
    return secure_copy(n, base / node_id(n).replace("/", "_"))


@pytest.fixture(scope="module")
def secure_root(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("secure")
    return lambda n: _secure(n, base)


@params(NODES)
@pytest.mark.parametrize(("now", "code", "marker"), [
    (None, 0, "status: OK (exit 0"),
    ("2027-11-10T00:00:00Z", 1, "status: WARNING (exit 1"),  # leaves expire 2027-11-30: within --warn 30d
    ("2027-11-28T00:00:00Z", 2, "status: CRITICAL (exit 2"),  # within --crit 7d
    ("2028-01-01T00:00:00Z", 2, "<invalid>"),  # expired: kubeadm's residual "<invalid>"
], ids=["at-kubeadm", "warn", "crit", "expired"])
def test_exit_code(fixture_node: Path, now: Any, code: int, marker: str, secure_root: Any) -> None:
    root = secure_root(fixture_node)
    when = now or check_now(fixture_node)
    proc = run_kubecert("check", "--root", str(root), "--now", when)
    assert_no_traceback(proc.stdout, proc.stderr)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert marker in proc.stdout
    if now is None:
        assert "  no findings" in proc.stdout
    as_json = json.loads(_check(str(root), when, "json").stdout)
    assert as_json["exitCode"] == code
    if code == 2 and now == "2028-01-01T00:00:00Z":
        assert {f["code"] for f in as_json["findings"]} == {"expired"}
        assert all(i["residualTime"] < 0 for i in as_json["certificates"])


@pytest.mark.parametrize(("text", "want"), [
    ("2026-11-30T03:53:02Z", dt.datetime(2026, 11, 30, 3, 53, 2, tzinfo=dt.timezone.utc)),
    ("2026-11-30T03:53:02.5Z", dt.datetime(2026, 11, 30, 3, 53, 2, 500000, tzinfo=dt.timezone.utc)),
    ("2026-11-30T03:53:02.123Z", dt.datetime(2026, 11, 30, 3, 53, 2, 123000, tzinfo=dt.timezone.utc)),
    ("2026-11-30T04:53:02.25+01:00", dt.datetime(2026, 11, 30, 3, 53, 2, 250000, tzinfo=dt.timezone.utc)),
])
def test_now_accepts_rfc3339(text: str, want: dt.datetime) -> None:
    assert parse_now(text) == want
