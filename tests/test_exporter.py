"""`kubecert exporter` against a real Prometheus, openssl, promtool and prometheus_client's parser.

Two exporters run as fresh processes: one on a lab node, one on a copy of a kubeadm v1.28.4 fixture
node (now frozen at 2026-11-30). A real Prometheus (Debian's package) scrapes both on 127.0.0.1;
every ``x509_cert_not_after`` series it stores is compared with ``openssl x509 -enddate`` on the same
file (for kubeconfigs, the embedded certificate). The shipped alert rules go through ``promtool``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import node, secure_copy, tree_digest
from kubecert.exporter import Exporter, Options
from kubecert.exporter.metrics import FamiliesCollector, render_text
from kubecert.exporter.nodefs import ExporterFS, KeyNotRead
from kubecert.store import LocalFS
from treeutil import assert_one_line_error, clean_env, key_leaks, lab_create, private_keys_under, run_kubecert

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
NOW = "2026-11-30T12:00:00Z"
NOW_DT = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc)
FIXTURE = "single-stacked/master-1"


# --- helpers -----------------------------------------------------------------------------------------

def wait_for_binaries(*names: str, timeout: float = 600, poll: float = 20) -> None:
    """Debian's prometheus package may still be installing (by another process): wait, never install."""
    deadline = time.monotonic() + timeout
    while not all(shutil.which(n) for n in names):
        if time.monotonic() > deadline:
            pytest.fail(f"{', '.join(names)} not installed after {timeout:.0f}s (Debian package prometheus)")
        time.sleep(poll)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode())


def wait_http(url: str, proc: subprocess.Popen[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args!r} exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            return http_get(url)
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"{url} did not answer within {timeout}s")
            time.sleep(0.2)


class Running:
    """An exporter process; its stderr goes to a file (read it any time)."""

    def __init__(self, root: Path, log: Path, *args: str) -> None:
        self.port = free_port()
        self.log = log
        self._err = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubecert", "exporter", "--root", str(root), "--listen", f"127.0.0.1:{self.port}",
             "--now", NOW, *args], stdout=subprocess.DEVNULL, stderr=self._err, text=True, env=clean_env())
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        wait_http(self.url, self.proc)

    def metrics(self) -> str:
        return http_get(self.url)

    def stderr(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        finally:
            self._err.close()


def samples(text: str, name: str) -> List[Tuple[Dict[str, str], float]]:
    out = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out.append((dict(s.labels), float(s.value)))
    return out


def openssl_not_after(pem: bytes) -> float:
    proc = subprocess.run(["openssl", "x509", "-enddate", "-noout"], input=pem, capture_output=True, check=True)
    text = proc.stdout.decode().strip().split("=", 1)[1]  # e.g. "Nov 30 12:00:00 2027 GMT"
    return dt.datetime.strptime(" ".join(text.split()), "%b %d %H:%M:%S %Y %Z").replace(
        tzinfo=dt.timezone.utc).timestamp()


def pem_of_series(root: Path, labels: Dict[str, str]) -> bytes:
    """The PEM of the certificate a series is about, read independently of kubecert's exporter."""
    fs = LocalFS(str(root))
    path = labels["filepath"]
    if "embedded_kind" not in labels:
        return Path(fs.host_path(path)).read_bytes()
    doc = yaml.safe_load(Path(fs.host_path(path)).read_text())
    section, field = ("clusters", "certificate-authority") if labels["embedded_kind"] == "cluster" \
        else ("users", "client-certificate")
    kind = labels["embedded_kind"]
    entry = next(e[kind] for e in doc[section] if e["name"] == labels["embedded_key"])
    if field + "-data" in entry:
        return base64.b64decode(entry[field + "-data"])
    return Path(fs.host_path(entry[field])).read_bytes()  # kubelet-client-current.pem: a symlink in the root


# --- the running exporters -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    base = tmp_path_factory.mktemp("exporter")
    lab = lab_create(base, "--nodes", "1", "--now", NOW) / "master-1"
    fixture = secure_copy(node(FIXTURE), base / "fixture-node")
    before = {"lab": tree_digest(lab), "fixture": tree_digest(fixture)}
    running = {"lab": Running(lab, base / "lab.log", "--interval", "0s"),
               "fixture": Running(fixture, base / "fixture.log", "--interval", "0s")}
    try:
        yield {"base": base, "roots": {"lab": lab, "fixture": fixture}, "running": running, "before": before}
    finally:
        for r in running.values():
            r.stop()


@pytest.fixture(scope="module")
def prometheus(nodes: Dict[str, Any]) -> Iterator[str]:
    wait_for_binaries("prometheus", "promtool")
    base: Path = nodes["base"]
    port = free_port()
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": f"kubecert-{name}",
                                  "static_configs": [{"targets": [f"127.0.0.1:{r.port}"]}]}
                                 for name, r in nodes["running"].items()]}
    (base / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(base / "prometheus.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(["prometheus", f"--config.file={base / 'prometheus.yml'}",
                             f"--storage.tsdb.path={base / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=log, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", proc, timeout=120)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def prom_query(base: str, query: str) -> List[Dict[str, Any]]:
    data = json.loads(http_get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query})))
    assert data["status"] == "success", data
    return list(data["data"]["result"])


# --- tests -------------------------------------------------------------------------------------------

def test_prometheus_stores_openssls_dates_for_every_series(nodes: Dict[str, Any], prometheus: str) -> None:
    expected = {name: len(samples(r.metrics(), "x509_cert_not_after")) for name, r in nodes["running"].items()}
    assert expected["lab"] >= 19 and expected["fixture"] >= 17, expected  # every cert and kubeconfig entry
    deadline = time.monotonic() + 60
    while True:
        got = {name: len(prom_query(prometheus, f'x509_cert_not_after{{job="kubecert-{name}"}}'))
               for name in expected}
        if got == expected:
            break
        assert time.monotonic() < deadline, f"Prometheus holds {got} series, the exporters serve {expected}"
        time.sleep(1)
    assert {r["metric"]["job"] for r in prom_query(prometheus, "up == 1")} == {"kubecert-lab", "kubecert-fixture"}
    compared = 0
    for name, root in nodes["roots"].items():
        for series in prom_query(prometheus, f'x509_cert_not_after{{job="kubecert-{name}"}}'):
            labels = series["metric"]
            assert float(series["value"][1]) == openssl_not_after(pem_of_series(root, labels)), labels
            compared += 1
    assert compared == sum(expected.values())
    kinds = {r["metric"].get("embedded_kind") for r in prom_query(prometheus, "x509_cert_not_after")}
    assert kinds == {None, "cluster", "user"}
    # kubecert's own series reach Prometheus too, and join x509_* on filepath + serial_number
    joined = prom_query(prometheus, 'x509_cert_not_after * on(filepath, serial_number) group_left(name) '
                                    'kubecert_cert_info{job="kubecert-fixture"}')
    assert {r["metric"]["name"] for r in joined} >= {"apiserver", "etcd-server", "admin.conf", "ca"}


def test_exporter_never_writes_under_root_and_never_opens_a_key(nodes: Dict[str, Any]) -> None:
    for r in nodes["running"].values():
        r.metrics()
    for name, root in nodes["roots"].items():
        assert tree_digest(root) == nodes["before"][name], f"the exporter changed the {name} tree"
    fs = ExporterFS(LocalFS(str(nodes["roots"]["fixture"])))
    with pytest.raises(KeyNotRead):
        fs.read("/etc/kubernetes/pki/ca.key")
    with pytest.raises(Exception, match="never writes"):
        fs.write_atomic("/etc/kubernetes/pki/x.crt", b"x")
    ex = Exporter(Options(root=str(nodes["roots"]["fixture"])))
    scrape = ex.scrape(NOW_DT)
    assert ex.node_fs is not None and any(p.endswith("pki/ca.key") for p in ex.node_fs.refused)
    text = render_text(scrape.families)
    assert 'kind="unreadable"' not in text  # keys not read are no finding
    assert samples(text, "kubecert_ca_key_present") and all(v == 1 for _, v in samples(text, "kubecert_ca_key_present"))


def test_no_private_key_material_in_any_output(nodes: Dict[str, Any], tmp_path: Path) -> None:
    keys = private_keys_under(*nodes["roots"].values())
    assert len(keys) >= 20  # the key files and every client-key-data
    outputs = []
    for name, r in nodes["running"].items():
        outputs += [r.metrics(), r.stderr()]
        proc = run_kubecert("exporter", "--root", str(nodes["roots"][name]), "--textfile", str(tmp_path),
                            "--now", NOW, "--expose-relative-metrics", "--expose-per-cert-error-metrics")
        assert proc.returncode == 0, proc.stderr
        outputs += [proc.stdout, proc.stderr, (tmp_path / "kubecert.prom").read_text()]
    assert key_leaks(outputs, keys) == []


def test_textfile_is_atomic_and_parses(nodes: Dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "textfile"
    out.mkdir()
    (out / "other.prom").write_text("node_other 1\n")
    for _ in range(2):  # the second run replaces the first
        proc = run_kubecert("exporter", "--root", str(nodes["roots"]["lab"]), "--textfile", str(out), "--now", NOW)
        assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == ["kubecert.prom", "other.prom"]  # no temp file left
    text = (out / "kubecert.prom").read_text()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"x509_cert_not_after", "x509_cert_not_before", "x509_cert_expired", "x509_read_errors",
            "x509_exporter_build_info", "kubecert_cert_not_after", "kubecert_node_up"} <= names
    assert samples(text, "x509_read_errors") == [({}, 0.0)]
    assert samples(nodes["running"]["lab"].metrics(), "x509_cert_not_after") == samples(text, "x509_cert_not_after")
    bad = run_kubecert("exporter", "--root", str(nodes["roots"]["lab"]), "--textfile", str(tmp_path / "nope"))
    assert_one_line_error(bad, "not a directory")
    assert bad.returncode == 3


def test_fast_text_agrees_with_prometheus_client(nodes: Dict[str, Any]) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    ex = Exporter(Options(root=str(nodes["roots"]["fixture"]), relative_metrics=True, per_cert_errors=True))
    families = ex.scrape(NOW_DT).families
    registry = CollectorRegistry()
    registry.register(FamiliesCollector(lambda: families))  # type: ignore[arg-type]

    def flat(text: str) -> List[Tuple[str, Tuple[Tuple[str, str], ...], float]]:
        return sorted((s.name, tuple(sorted(s.labels.items())), float(s.value))
                      for f in text_string_to_metric_families(text) for s in f.samples)

    ours, theirs = flat(render_text(families)), flat(generate_latest(registry).decode())
    assert ours == theirs and len(ours) > 100
    expired = [v for _, labels, v in ours if _ == "x509_cert_expired"]
    assert expired and set(expired) == {0.0}  # the fixture's certs are valid at 2026-11-30


def test_corrupt_file_is_a_read_error_and_the_exporter_keeps_serving(tmp_path: Path) -> None:
    root = lab_create(tmp_path, "--nodes", "1", "--now", NOW) / "master-1"
    r = Running(root, tmp_path / "exporter.log", "--interval", "0s", "--expose-per-cert-error-metrics")
    try:
        good = r.metrics()
        assert samples(good, "x509_read_errors") == [({}, 0.0)]
        target = root / "etc/kubernetes/pki/front-proxy-client.crt"
        saved = target.read_bytes()
        target.write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIBroken\n-----END CERTIFICATE-----\n")
        for _ in range(3):
            text = r.metrics()
        assert samples(text, "x509_read_errors") == [({}, 1.0)]
        errs = {labels["filepath"]: v for labels, v in samples(text, "x509_cert_error")}
        assert errs["/etc/kubernetes/pki/front-proxy-client.crt"] == 1
        assert errs["/etc/kubernetes/pki/apiserver.crt"] == 0
        left = {labels["filepath"] for labels, _ in samples(text, "x509_cert_not_after")}
        assert "/etc/kubernetes/pki/front-proxy-client.crt" not in left and "/etc/kubernetes/pki/apiserver.crt" in left
        findings = {(labels["kind"], labels["severity"]): v for labels, v in samples(text, "kubecert_audit_findings")}
        assert findings.get(("unreadable", "error")) == 1
        log_lines = [ln for ln in r.stderr().splitlines() if "front-proxy-client.crt" in ln]
        assert len(log_lines) == 1, r.stderr()  # one line, not one per scrape
        assert "Traceback" not in r.stderr()
        target.write_bytes(saved)
        assert samples(r.metrics(), "x509_read_errors") == [({}, 0.0)]
        assert r.proc.poll() is None
    finally:
        r.stop()


def test_scrape_rereads_only_changed_files(tmp_path: Path) -> None:
    root = lab_create(tmp_path, "--nodes", "1", "--now", NOW) / "master-1"
    watched = tmp_path / "watched"
    watched.mkdir()
    for name in ("apiserver", "front-proxy-client", "ca"):
        shutil.copy(root / f"etc/kubernetes/pki/{name}.crt", watched / f"{name}.pem")
    (watched / "ignored.key").write_text("not read: keys are skipped\n")
    (watched / "README").write_text("no certificate here: skipped in a watched directory\n")
    ex = Exporter(Options(root=str(root), watch_dirs=(str(watched),),
                          watch_kubeconfs=(str(root / "etc/kubernetes/admin.conf"),)))
    first = ex.scrape(NOW_DT)
    assert first.files_read >= 20 and first.read_errors == 0
    assert ex.scrape(NOW_DT).files_read == 0
    assert ex.scrape(NOW_DT + dt.timedelta(minutes=5)).files_read == 0  # a new audit pass reads nothing either
    os.utime(watched / "apiserver.pem", ns=(1, 1))  # mtime only
    assert ex.scrape(NOW_DT).files_read == 1
    shutil.copy(watched / "ca.pem", watched / "ca.tmp")
    os.replace(watched / "ca.tmp", watched / "ca.pem")  # a new inode, same bytes
    assert ex.scrape(NOW_DT).files_read == 1
    os.remove(watched / "front-proxy-client.pem")
    text = render_text(ex.scrape(NOW_DT).families)
    paths = {labels["filepath"] for labels, _ in samples(text, "x509_cert_not_after")}
    assert str(watched / "front-proxy-client.pem") not in paths and str(watched / "apiserver.pem") in paths
    assert str(root / "etc/kubernetes/admin.conf") in paths  # --watch-kubeconf: a host path, labelled as given


def test_kubecert_metrics_follow_findings_renewals_and_interruptions(tmp_path: Path) -> None:
    root = lab_create(tmp_path, "--nodes", "1", "--now", NOW) / "master-1"
    ex = Exporter(Options(root=str(root)))
    text = render_text(ex.scrape(NOW_DT).families)
    assert samples(text, "kubecert_node_up") == [({"root": str(root)}, 1.0)]
    assert samples(text, "kubecert_interrupted_change") == [({"node": "master-1"}, 0.0)]
    assert samples(text, "kubecert_renewal_last_result") == []
    os.chmod(root / "etc/kubernetes/pki/apiserver.key", 0o644)
    proc = run_kubecert("renew", "apiserver", "--root", str(root), "--yes", "--now", "2026-12-01T00:00:00Z")
    assert proc.returncode == 0, proc.stderr
    text = render_text(ex.scrape(NOW_DT + dt.timedelta(days=1)).families)
    assert samples(text, "kubecert_renewal_last_result") == [({"node": "master-1", "action": "renew"}, 1.0)]
    assert samples(text, "kubecert_renewal_last_success_timestamp_seconds")[0][1] == \
        dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc).timestamp()
    not_after = {labels["name"]: v for labels, v in samples(text, "kubecert_cert_not_after")}
    assert not_after["apiserver"] > not_after["front-proxy-client"]  # the renewed one, re-read
    env = clean_env(KUBECERT_TEST_CRASH_AT="3")
    crashed = run_kubecert("renew", "all", "--root", str(root), "--yes", "--now", "2026-12-02T00:00:00Z", env=env)
    assert crashed.returncode == 137, crashed.stderr
    text = render_text(ex.scrape(NOW_DT + dt.timedelta(days=2)).families)
    assert samples(text, "kubecert_interrupted_change") == [({"node": "master-1"}, 1.0)]
    assert any(labels["kind"] == "interrupted" for labels, _ in samples(text, "kubecert_audit_findings"))


def test_no_kubeadm_pki_is_node_down_not_a_crash(tmp_path: Path) -> None:
    ex = Exporter(Options(root=str(tmp_path)))
    text = render_text(ex.scrape(NOW_DT).families)
    assert samples(text, "kubecert_node_up") == [({"root": str(tmp_path)}, 0.0)]
    assert samples(text, "x509_read_errors") == [({}, 1.0)]


@pytest.mark.parametrize("args,needle", [
    (("--root", "/nonexistent-kubecert-root"), "does not exist"),
    (("--listen", "localhost"), "HOST:PORT"),
    (("--interval", "soon"), "duration"),
])
def test_bad_input_is_one_line_and_exit_3(args: Tuple[str, ...], needle: str, tmp_path: Path) -> None:
    extra = ("--root", str(tmp_path)) if "--root" not in args else ()
    proc = run_kubecert("exporter", *extra, *args, "--textfile", str(tmp_path))
    assert_one_line_error(proc, needle)
    assert proc.returncode == 3


# --- deploy/ --------------------------------------------------------------------------------------------

RULES = DEPLOY / "prometheus/kubecert-alerts.yaml"
PROMETHEUSRULE = DEPLOY / "kubernetes/prometheusrule.yaml"


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    wait_for_binaries("promtool")
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(["promtool", "test", "rules", "kubecert-alerts.test.yaml"], cwd=RULES.parent,
                          capture_output=True, text=True, check=False)
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr
    tested = set(re.findall(r"alertname: (\w+)", (RULES.parent / "kubecert-alerts.test.yaml").read_text()))
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert alerts == tested  # every alert has a unit test that fires it


def test_rules_file_and_prometheusrule_hold_the_same_groups() -> None:
    plain = yaml.safe_load(RULES.read_text())
    cr = yaml.safe_load(PROMETHEUSRULE.read_text())
    assert cr["kind"] == "PrometheusRule" and cr["apiVersion"] == "monitoring.coreos.com/v1"
    assert cr["spec"]["groups"] == plain["groups"]
    alerts = {r["alert"] for g in plain["groups"] for r in g["rules"]}
    assert {"CertificateExpiringSoon", "CertificateExpiringCritical", "CertificateExpired", "X509ExporterReadErrors",
            "KubecertExporterDown", "KubecertRenewalFailing", "CertificateAuthorityExpiringWithinAYear"} <= alerts


def _metric_names(expr: str) -> set:  # type: ignore[type-arg]
    return set(re.findall(r"\b((?:x509|kubecert)_[a-z0-9_]+)", expr))


def test_dashboard_and_rules_use_only_metrics_the_exporter_serves(nodes: Dict[str, Any]) -> None:
    served = {f.name for f in text_string_to_metric_families(nodes["running"]["lab"].metrics())}
    ex = Exporter(Options(root=str(nodes["roots"]["lab"]), relative_metrics=True, per_cert_errors=True))
    served |= {f.name for f in ex.scrape(NOW_DT).families}  # every family, with or without samples now
    dashboard = json.loads((DEPLOY / "grafana/kubecert-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v.get("query", {}).get("query", "") if isinstance(v.get("query"), dict) else str(v.get("query", ""))
              for v in dashboard.get("templating", {}).get("list", [])]
    assert len(exprs) >= 5
    used = set().union(*(_metric_names(e) for e in exprs))
    rules = yaml.safe_load(RULES.read_text())
    used |= set().union(*(_metric_names(r["expr"]) for g in rules["groups"] for r in g["rules"]))
    assert used and used <= served, used - served
    titles = " ".join(p.get("title", "") for p in dashboard["panels"]).lower()
    assert "soonest" in titles and "finding" in titles and "node" in titles


def test_daemonset_mounts_read_only_and_tolerates_the_control_plane() -> None:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes/daemonset.yaml").read_text()) if d]
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    host_paths = [v for v in pod["volumes"] if "hostPath" in v]
    assert host_paths
    mounts = [m for c in pod["containers"] for m in c["volumeMounts"]]
    assert all(m.get("readOnly") is True for m in mounts if m["name"] in {v["name"] for v in host_paths})
    assert {"node-role.kubernetes.io/control-plane"} <= {t.get("key") for t in pod["tolerations"]}
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert "exporter" in container["args"] and "--root" in container["args"]
    assert "0600" in (DEPLOY / "kubernetes/daemonset.yaml").read_text()  # the comment on why it runs as root
