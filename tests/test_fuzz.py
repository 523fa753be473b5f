"""Fuzzing every input kubecert reads: no traceback, no wedge, a documented exit code, nothing changed.

One lab node is built per module; each example copies it, breaks one file (or one flag) and runs the
real CLI in this process (:func:`fuzz_inputs.kubecert`). The contract (:func:`fuzz_inputs.assert_contract`):
the exit code is 0, 1, 2 or 3 (never 70, an internal error), no traceback, a refusal (3) is exactly one
printable ``kubecert: error: ...`` line, and ``check`` and ``renew --dry-run`` leave the tree as it was.
Parsers are also fuzzed directly, with more examples: they either return something every later step
can use, or raise the module's one-line error.

Deterministic (``derandomize``) so that CI sees the same examples every run; the example counts keep
the whole module well under 90 s on two cores.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x25519
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_kubecert, tree_digest
from fuzz_inputs import (
    DURATIONS,
    RFC3339_EXTREMES,
    UNIT_LINES,
    YAML_VALUES,
    Run,
    alias_bomb,
    assert_contract,
    blocks,
    broken_kubeconfig,
    broken_kubelet_config,
    broken_manifest,
    broken_pem,
    broken_yaml,
    dump,
    huge_number,
    kubecert,
    pem,
    wrong_typed,
)
from kubecert import spec, x509ops, yamlsafe
from kubecert.errors import ConfigError, KubecertError
from kubecert.facts import gather
from kubecert.lab import LabSpec
from kubecert.lab import create as create_lab
from kubecert.node import endpoints, runtime
from kubecert.remote.hosts import MAX_CLUSTER_HOSTS, MAX_WORKER_HOSTS, load_inventory
from kubecert.store import MAX_READ, LocalFS

pytestmark = pytest.mark.timeout(120)  # a wedge fails its test in two minutes, not the suite's ten

NOW = "2026-11-30T12:00:00Z"
NOW_DT = dt.datetime(2026, 11, 30, 12, tzinfo=dt.timezone.utc)
NODE = "master-1"
PKI = "etc/kubernetes/pki"
KUBE = "etc/kubernetes"

CERTS = [f"{PKI}/ca.crt", f"{PKI}/apiserver.crt", f"{PKI}/etcd/ca.crt", f"{PKI}/etcd/server.crt",
         f"{PKI}/front-proxy-ca.crt", f"{PKI}/apiserver-kubelet-client.crt", "var/lib/kubelet/pki/kubelet.crt",
         "var/lib/kubelet/pki/kubelet-client-current.pem"]
KEYS = [f"{PKI}/ca.key", f"{PKI}/apiserver.key", f"{PKI}/etcd/ca.key", f"{PKI}/etcd/peer.key", f"{PKI}/sa.key",
        f"{PKI}/sa.pub", "var/lib/kubelet/pki/kubelet.key"]
KUBECONFIGS = [f"{KUBE}/admin.conf", f"{KUBE}/controller-manager.conf", f"{KUBE}/scheduler.conf",
               f"{KUBE}/kubelet.conf"]
MANIFESTS = [f"{KUBE}/manifests/{c}.yaml" for c in ("kube-apiserver", "etcd", "kube-controller-manager",
                                                    "kube-scheduler")]
KUBEADM_CONFIG = f"{KUBE}/kubeadm-config.yaml"
KUBELET_CONFIG = "var/lib/kubelet/config.yaml"


def fuzz(examples: int) -> Callable[[Any], Any]:
    """Deterministic (the same examples on every run), no per-example deadline (a whole CLI run per
    example), no example database written into the checkout. No health check needs suppressing."""
    return settings(max_examples=examples, derandomize=True, deadline=None, database=None)


@dataclass(frozen=True)
class Lab:
    dir: Path
    root: Path  # the pristine node: never changed (tests copy it)
    scratch: Path

    def original(self, rel: str) -> bytes:
        return host_path(self.root, rel).read_bytes()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    os.environ.pop("KUBECERT_DEBUG", None)  # an internal error must show as exit 70, not a traceback
    base = tmp_path_factory.mktemp("fuzz")
    run = kubecert("lab", "create", str(base / "lab"), "--nodes", "1", "--now", NOW)
    assert run.code == 0, str(run)
    scratch = base / "scratch"
    scratch.mkdir()
    return Lab(base / "lab", base / "lab" / NODE, scratch)


@contextlib.contextmanager
def node_copy(lab: Lab) -> Iterator[Path]:
    """A private copy of the lab node (symlinks kept as links, modes kept)."""
    where = Path(tempfile.mkdtemp(dir=lab.scratch))
    root = where / NODE
    shutil.copytree(lab.root, root, symlinks=True)
    try:
        yield root
    finally:
        shutil.rmtree(where)


def host_path(root: Path, rel: str) -> Path:
    """Where node file ``rel`` is, following an absolute symlink inside the root (as kubecert does)."""
    path = root / rel
    if path.is_symlink():
        path = root / os.readlink(path).lstrip("/")
    return path


def put(root: Path, rel: str, data: bytes) -> None:
    """Replace the file at ``rel`` (through a symlink: its target, as a broken disk would)."""
    host_path(root, rel).write_bytes(data)


def check_node(root: Path, *, names: Sequence[str] = ("all",), output: str = "table",
               verify: bool = False) -> List[Any]:
    """``check`` and ``renew --dry-run`` (and ``verify``, whose probes find nothing listening) on
    ``root``: the contract holds and the tree is unchanged."""
    before = tree_digest(root)
    runs = []
    commands = [["check", "--root", str(root), "--now", NOW, "-o", output],
                ["renew", *names, "--dry-run", "--key", "reuse", "--root", str(root), "--now", NOW]]
    if verify:
        commands.append(["verify", "--root", str(root), "--timeout", "0.05"])
    for argv in commands:
        run = kubecert(*argv)
        assert_contract(run)
        assert tree_digest(root) == before, f"{run}\nthe tree changed"
        runs.append(run)
    return runs


OUTPUTS = st.sampled_from(["table", "json", "yaml"])
RENEW_NAMES = st.one_of(st.just(("all",)), st.lists(st.sampled_from(spec.RENEWABLE), min_size=1, max_size=3,
                                                     unique=True).map(tuple))


# ---------------------------------------------------------------------------------------------
# PEM certificates and keys


def _usable(cert: x509.Certificate, ca: x509.Certificate, ca_key: x509ops.PrivateKey) -> None:
    """Everything check and renew do with a certificate that loaded."""
    x509ops.fingerprint(cert)
    x509ops.not_before(cert)
    x509ops.not_after(cert)
    cert.serial_number  # noqa: B018 - parses the serial
    cert.subject.rfc4514_string()
    cert.issuer.rfc4514_string()
    x509ops.common_name(cert.subject)
    x509ops.organizations(cert.subject)
    x509ops.sans(cert)
    x509ops.ekus(cert)
    x509ops.is_ca_cert(cert)
    x509ops.key_description(cert.public_key())  # type: ignore[arg-type]
    x509ops.spki_der(cert.public_key())  # type: ignore[arg-type]
    x509ops.signed_by(cert, ca)
    x509ops.signed_by(ca, cert)
    x509ops.key_matches_cert(cert, ca_key)
    x509ops.reissue(cert, ca_key.public_key(), ca, ca_key, NOW_DT, NOW_DT + dt.timedelta(days=1))
    x509ops.reissue(cert, ca_key.public_key(), None, ca_key, NOW_DT, NOW_DT + dt.timedelta(days=1))


@fuzz(400)
@given(data=st.data())
def test_pem_parsers_return_usable_objects_or_one_error(lab: Lab, data: st.DataObject) -> None:
    ca = x509ops.load_cert(lab.original(f"{PKI}/ca.crt"), "ca.crt")
    ca_key = x509ops.load_key(lab.original(f"{PKI}/ca.key"), "ca.key")
    rel = data.draw(st.sampled_from(CERTS + KEYS))
    broken = data.draw(broken_pem(lab.original(rel), [lab.original(r) for r in (CERTS + KEYS)[:6]]))
    for load in (x509ops.load_cert, x509ops.load_certs):
        try:
            loaded = load(broken, "the-file")
        except KubecertError as exc:
            assert str(exc).startswith("the-file: ") and "\n" not in str(exc), str(exc)
            continue
        for cert in loaded if isinstance(loaded, list) else [loaded]:
            _usable(cert, ca, ca_key)
    try:
        key = x509ops.load_key(broken, "the-file")
        x509ops.key_matches_cert(ca, key)
        x509ops.key_description(key)
        x509ops.key_pem(key)
    except KubecertError as exc:
        assert str(exc).startswith("the-file: ") and "\n" not in str(exc), str(exc)
    try:
        x509ops.key_description(x509ops.load_public_key(broken, "the-file"))
    except KubecertError as exc:
        assert str(exc).startswith("the-file: "), str(exc)


@pytest.mark.parametrize("files, others", [(CERTS, CERTS[:3] + KEYS[:2]), (KEYS, KEYS[:3] + CERTS[:2])],
                         ids=["certificates", "keys"])
@fuzz(35)
@given(data=st.data())
def test_fuzz_pem_files(lab: Lab, files: List[str], others: List[str], data: st.DataObject) -> None:
    """A broken PEM file (``others``: files that may stand in its place, as a bad copy does)."""
    rel = data.draw(st.sampled_from(files))
    with node_copy(lab) as root:
        put(root, rel, data.draw(broken_pem(lab.original(rel), [lab.original(r) for r in others])))
        check_node(root, names=data.draw(RENEW_NAMES), output=data.draw(OUTPUTS))


def _pair(key: Any, ca: x509.Certificate, ca_key: x509ops.PrivateKey, old: x509.Certificate) -> bytes:
    cert = x509ops.reissue(old, key.public_key(), ca, ca_key, NOW_DT - dt.timedelta(days=1),
                           NOW_DT + dt.timedelta(days=100))
    return x509ops.cert_pem(cert)


ODD_KEYS: Dict[str, Callable[[], Any]] = {
    "ecdsa-p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "ecdsa-p521": lambda: ec.generate_private_key(ec.SECP521R1()),
    "ecdsa-k256": lambda: ec.generate_private_key(ec.SECP256K1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
    "ed448": ed448.Ed448PrivateKey.generate,
    "rsa-1024": lambda: rsa.generate_private_key(65537, 1024),
}


@pytest.mark.parametrize("kind", sorted(ODD_KEYS))
def test_leaf_with_an_unusual_key_type(lab: Lab, kind: str) -> None:
    """A leaf signed by its CA but with a key kubeadm never makes: check, and renew with a new key."""
    ca = x509ops.load_cert(lab.original(f"{PKI}/ca.crt"), "ca.crt")
    ca_key = x509ops.load_key(lab.original(f"{PKI}/ca.key"), "ca.key")
    old = x509ops.load_cert(lab.original(f"{PKI}/apiserver.crt"), "apiserver.crt")
    key = ODD_KEYS[kind]()
    with node_copy(lab) as root:
        put(root, f"{PKI}/apiserver.crt", _pair(key, ca, ca_key, old))
        put(root, f"{PKI}/apiserver.key", key.private_bytes(serialization.Encoding.PEM,
                                                            serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()))
        check_node(root, names=("apiserver",))
        before = tree_digest(root)
        run = kubecert("renew", "apiserver", "--dry-run", "--root", str(root), "--now", NOW)
        assert_contract(run)
        assert tree_digest(root) == before


@pytest.mark.parametrize("kind", ["dsa", "x25519", "encrypted", "public-for-private"])
def test_key_file_of_a_type_kubecert_cannot_use(lab: Lab, kind: str) -> None:
    if kind == "dsa":
        data = dsa.generate_private_key(2048).private_bytes(serialization.Encoding.PEM,
                                                            serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption())
    elif kind == "x25519":
        data = x25519.X25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM,
                                                                serialization.PrivateFormat.PKCS8,
                                                                serialization.NoEncryption())
    elif kind == "encrypted":
        key = x509ops.load_key(lab.original(f"{PKI}/ca.key"), "ca.key")
        data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.BestAvailableEncryption(b"secret"))
    else:
        data = lab.original(f"{PKI}/sa.pub")
    with node_copy(lab) as root:
        put(root, f"{PKI}/ca.key", data)
        check, dry = check_node(root)
        assert check.code == 2 and "ca.key" in check.out, str(check)
        assert dry.code == 3 and "ca.key" in dry.err, str(dry)


# ---------------------------------------------------------------------------------------------
# YAML files of the node


YAML_FILES: Dict[str, Tuple[List[str], Callable[[bytes], st.SearchStrategy[bytes]]]] = {
    "kubeconfigs": (KUBECONFIGS, broken_kubeconfig),
    "kubeadm-config": ([KUBEADM_CONFIG], broken_yaml),
    "static-pod-manifests": (MANIFESTS, broken_manifest),
    "kubelet-config": ([KUBELET_CONFIG], broken_kubelet_config),
}


@pytest.mark.parametrize("kind", sorted(YAML_FILES))
@fuzz(30)
@given(data=st.data())
def test_fuzz_node_yaml_files(lab: Lab, kind: str, data: st.DataObject) -> None:
    files, broken = YAML_FILES[kind]
    rel = data.draw(st.sampled_from(files))
    with node_copy(lab) as root:
        put(root, rel, data.draw(broken(lab.original(rel))))
        check_node(root, names=data.draw(RENEW_NAMES), output=data.draw(OUTPUTS), verify=True)
        _node_readers(root)


def _node_readers(root: Path) -> None:
    """What verify and restart read from a node (endpoints, runtime adapters): a one-line error at most."""
    fs = LocalFS(str(root))
    try:
        facts = gather(fs)
        endpoints.discover(fs, facts)
        endpoints.etcd_initial_cluster(fs)
        runtime.file_check_frequency(fs)
        runtime.detect_cri(fs, facts)
        runtime.choose(fs, facts, spec.COMPONENTS, runtime.Options(cri="crictl", service_manager="systemd"))
    except KubecertError as exc:
        assert "\n" not in str(exc), str(exc)


@fuzz(40)
@given(data=st.data())
def test_fuzz_etcd_unit_and_environment_files(lab: Lab, data: st.DataObject) -> None:
    """An external etcd host's systemd unit and environment file (verify and restart read them)."""
    with node_copy(lab) as root:
        (root / f"{KUBE}/manifests/etcd.yaml").unlink()
        for rel in ("etc/systemd/system/etcd.service", "etc/default/etcd"):
            if data.draw(st.booleans()):
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                text = "\n".join(data.draw(st.lists(UNIT_LINES, max_size=6)))
                (root / rel).write_bytes(text.encode("utf-8", errors="surrogateescape"))
        _node_readers(root)


# ---------------------------------------------------------------------------------------------
# inventories (cluster check --local on the lab)

GROUPS = st.sampled_from(["kube_control_plane", "etcd", "masters", "all", "ungrouped", "kube_node", "k8s_cluster",
                          "g1", "g2"])
ANSIBLE_VARS = st.sampled_from(["ansible_host", "ansible_port", "ansible_user", "ansible_become",
                                "kubecert_root", "ansible_ssh_common_args", "ansible_ssh_private_key_file",
                                "ansible_group_priority", "ansible_ssh_host", "x"])
HOST_PATTERNS = st.one_of(
    st.sampled_from(["master-1", "node[1:3]", "node[01:03]", "n[a:c]", "n[1:9:2]", "n[3:1]", "n[1:", "h:2222",
                     "[::1]", "n[0:99999]", "x[1:2][1:2][1:2]", "n[01:3]", "n[\u0661:\u0663]", "n[1:2:0]",
                     "a]", "n[" + "9" * 500 + ":1]"]),
    st.text(alphabet="abc-_.[]:019", min_size=1, max_size=12),
)


def _ini_value(root: str) -> st.SearchStrategy[str]:
    return st.one_of(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"),
                             max_size=20),
                     st.sampled_from([root, "/", "relative", "yes", "no", "2222", "0", "99999", "{{ x }}",
                                      "{{ ansible_host }}", "{{ a | default(1) }}", "{% if %}", "'quoted'",
                                      '"-o ProxyJump=bastion:22"', '"-J a@b:1"', "-o ProxyCommand='ssh -W %h:%p b'",
                                      '"unbalanced']))


@st.composite
def ini_inventory(draw: st.DrawFn, root: str) -> bytes:
    lines = []
    for _ in range(draw(st.integers(1, 6))):
        group = draw(GROUPS)
        kind = draw(st.sampled_from(["", "", ":vars", ":children", ":bogus"]))
        lines.append(f"[{group}{kind}]")
        for _ in range(draw(st.integers(0, 4))):
            if kind == ":vars":
                lines.append(f"{draw(ANSIBLE_VARS)}={draw(_ini_value(root))}")
            elif kind == ":children":
                lines.append(draw(GROUPS))
            else:
                hvars = " ".join(f"{draw(ANSIBLE_VARS)}={draw(_ini_value(root))}"
                                 for _ in range(draw(st.integers(0, 3))))
                lines.append(f"{draw(HOST_PATTERNS)} {hvars}".rstrip())
        if draw(st.integers(0, 5)) == 0:
            lines.append(draw(st.text(max_size=30)).replace("\n", " "))
    return ("\n".join(lines) + "\n").encode("utf-8", errors="surrogateescape")


@st.composite
def ansible_yaml_inventory(draw: st.DrawFn, root: str) -> bytes:
    def group(depth: int) -> Dict[str, Any]:
        body: Dict[str, Any] = {}
        if draw(st.booleans()):
            body["hosts"] = {draw(HOST_PATTERNS): draw(st.one_of(
                st.none(), st.dictionaries(ANSIBLE_VARS, st.one_of(_ini_value(root), YAML_VALUES), max_size=3)))
                for _ in range(draw(st.integers(0, 3)))}
        if draw(st.booleans()):
            body["vars"] = draw(st.one_of(YAML_VALUES, st.dictionaries(ANSIBLE_VARS, _ini_value(root), max_size=3)))
        if depth < 3 and draw(st.booleans()):
            body["children"] = {draw(GROUPS): group(depth + 1) for _ in range(draw(st.integers(0, 2)))}
        return body

    doc: Any = {draw(GROUPS): group(0) for _ in range(draw(st.integers(1, 3)))}
    if draw(st.integers(0, 4)) == 0:
        doc = draw(wrong_typed([doc]))[0]
    return dump([doc])


@st.composite
def kubecert_inventory(draw: st.DrawFn, root: str) -> bytes:
    doc = {"kind": "KubecertInventory",
           "defaults": {"user": "root", "port": 22},
           "hosts": [{"name": NODE, "address": "127.0.0.1", "role": "control-plane", "root": root}]}
    return dump(draw(wrong_typed([doc], st.one_of(YAML_VALUES, _ini_value(root)))))


def _inventory(root: str) -> st.SearchStrategy[bytes]:
    return st.one_of(ini_inventory(root), ansible_yaml_inventory(root), kubecert_inventory(root),
                     st.one_of(ansible_yaml_inventory(root), kubecert_inventory(root)).flatmap(huge_number),
                     st.binary(max_size=200))


@fuzz(200)
@given(data=st.data())
def test_inventory_parser_returns_hosts_or_one_error(lab: Lab, data: st.DataObject) -> None:
    text = data.draw(_inventory(str(lab.root)))
    groups = data.draw(st.one_of(st.none(), GROUPS))
    with tempfile.NamedTemporaryFile(dir=lab.scratch, suffix=".inv") as fh:
        fh.write(text)
        fh.flush()
        try:
            hosts = load_inventory(fh.name, cp_group=groups)
        except ConfigError as exc:
            assert str(exc).startswith(fh.name) and "\n" not in str(exc), str(exc)
            return
    assert len(hosts) > 0
    assert sum(h.role != "worker" for h in hosts) <= MAX_CLUSTER_HOSTS
    assert sum(h.role == "worker" for h in hosts) <= MAX_WORKER_HOSTS
    for h in hosts:
        assert h.root.startswith("/") and 1 <= h.port <= 65535 and h.address and h.user


@fuzz(60)
@given(data=st.data())
def test_fuzz_cluster_check_inventories(lab: Lab, data: st.DataObject) -> None:
    text = data.draw(_inventory(str(lab.root)))
    extra = data.draw(st.lists(st.sampled_from([["-o", "json"], ["--cp-group", "g1"], ["--etcd-group", "etcd"],
                                                ["--user", "ubuntu"], ["--sudo"], ["--workers", "2"]]),
                               max_size=2))
    before = tree_digest(lab.root)
    with tempfile.NamedTemporaryFile(dir=lab.scratch, suffix=".inv") as fh:
        fh.write(text)
        fh.flush()
        run = kubecert("cluster", "check", "--local", "-i", fh.name, "--no-etcd-members", "--now", NOW,
                       *[a for pair in extra for a in pair])
    assert_contract(run)
    assert tree_digest(lab.root) == before


# ---------------------------------------------------------------------------------------------
# flags


@fuzz(80)
@given(data=st.data())
def test_fuzz_flags(lab: Lab, data: st.DataObject) -> None:
    now = data.draw(st.one_of(RFC3339_EXTREMES, st.text(max_size=25)))
    cmd = data.draw(st.sampled_from(["check", "check", "renew", "renew", "lab"]))
    root = data.draw(st.one_of(st.just(str(lab.root)), st.sampled_from([
        "", "relative", "/nonexistent", "/dev/null", f"{lab.root}/../..", f"{lab.root}/etc/kubernetes/admin.conf",
        f"{lab.root}\x00x", f"{lab.root}\udcff", f"{lab.root}\n"]), st.text(max_size=12)))
    before = tree_digest(lab.root)
    if cmd == "check":
        run = kubecert("check", "--root", root, "--now", now, "--warn", data.draw(DURATIONS),
                       "--crit", data.draw(DURATIONS))
    elif cmd == "renew":
        days = data.draw(st.one_of(st.sampled_from(["1", "365", "36500", "36501", "0", "-1", "9" * 30, "1e3", ""]),
                                   st.integers().map(str)))
        names = data.draw(st.lists(st.one_of(st.sampled_from(spec.RENEWABLE), st.text(max_size=10)), max_size=3))
        run = kubecert("renew", *names, "--dry-run", "--key", "reuse", "--root", root, "--now", now, "--days", days)
    else:
        target = lab.scratch / f"lab-{data.draw(st.integers(0, 10 ** 9))}"
        nodes = data.draw(st.sampled_from(["0", "1", "51", "99", "100", "-3", "x", "9" * 40]))
        lifetime = data.draw(st.one_of(st.just([]), DURATIONS.map(lambda d: ["--expires-in", d])))
        run = kubecert("lab", "create", str(target), "--nodes", nodes, "--now", now, "--key-type", "ecdsa",
                       *lifetime)
        if run.code == 3:
            assert not target.exists(), f"{run}\na refused lab create left {target}"
        shutil.rmtree(target, ignore_errors=True)
    assert_contract(run)
    assert tree_digest(lab.root) == before


@pytest.mark.parametrize("args", [
    ["--now", "0001-01-01T00:00:00Z"], ["--now", "1949-12-31T23:59:59Z"], ["--now", "9999-12-31T23:59:59Z"],
    ["--now", "9990-01-01T00:00:00Z"], ["--expires-in", "3650000d"], ["--now", "1950-01-01T00:30:00Z", "--expired"],
], ids=["year-1", "before-1950", "year-9999", "ca-past-9999", "leafs-past-9999", "expired-before-1950"])
def test_lab_dates_out_of_range_are_refused_before_writing(lab: Lab, args: List[str]) -> None:
    target = lab.scratch / "lab-out-of-range"
    run = kubecert("lab", "create", str(target), "--nodes", "1", "--key-type", "ecdsa", *args)
    assert_contract(run)
    assert run.code == 3, str(run)
    assert not target.exists()


@pytest.mark.parametrize("now, lifetime", [
    (dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc), None),
    (dt.datetime(1950, 1, 1, 0, 30, tzinfo=dt.timezone.utc), None),
    (dt.datetime(9999, 12, 31, tzinfo=dt.timezone.utc), None),
    (NOW_DT, dt.timedelta(days=3_000_000)),
    (NOW_DT, -dt.timedelta(days=30_000)),
], ids=["year-1", "ca-before-1950", "year-9999", "leafs-past-9999", "leafs-before-1950"])
def test_lab_api_refuses_dates_x509_cannot_hold(lab: Lab, now: dt.datetime, lifetime: Any) -> None:
    """The library call behind `lab create` (the CLI bounds --now itself): refused, nothing written."""
    target = lab.scratch / "lab-api-out-of-range"
    with pytest.raises(ConfigError, match="must lie between 1950-01-01 and 9999-12-31"):
        create_lab(str(target), LabSpec(nodes=1, key_type="ecdsa", leaf_lifetime=lifetime), now=now)
    assert not target.exists()


@pytest.mark.parametrize("suffix", ["\x00x", "\udcff", "\n", "\x1b[2J", "/etc/kubernetes/admin.conf", "/../.."],
                         ids=["nul", "surrogate", "newline", "escape", "a-file", "dotdot"])
@pytest.mark.parametrize("cmd", [["check"], ["renew", "--dry-run", "--key", "reuse"]], ids=["check", "renew"])
def test_odd_root_paths(lab: Lab, cmd: List[str], suffix: str) -> None:
    """--root as typed or pasted wrong: one printable line (a path is shown escaped, never raw)."""
    before = tree_digest(lab.root)
    run = kubecert(*cmd, "--root", f"{lab.root}{suffix}", "--now", NOW)
    assert_contract(run)
    assert tree_digest(lab.root) == before


# ---------------------------------------------------------------------------------------------
# explicit limits: what a hostile or broken file may cost


def _json_check(root: Path) -> Dict[str, Any]:
    run = kubecert("check", "--root", str(root), "--now", NOW, "-o", "json")
    assert_contract(run)
    return dict(json.loads(run.out))


def _finding(report: Dict[str, Any], path_end: str) -> str:
    found = [f["message"] for f in report["findings"] if f["path"].endswith(path_end)]
    assert found, report["findings"]
    return " ".join(found)


def _refused(lab: Lab, rel: str, data: bytes, name: str, expected: str) -> None:
    """``data`` at ``rel``: check reports it (exit 2) and `renew NAME --dry-run` refuses, both saying
    ``expected``; nothing changes."""
    with node_copy(lab) as root:
        put(root, rel, data)
        report = _json_check(root)
        assert expected in _finding(report, rel.rsplit("/", 1)[-1])
        assert report["exitCode"] == 2
        before = tree_digest(root)
        run = kubecert("renew", name, "--dry-run", "--root", str(root), "--now", NOW)
        assert_contract(run)
        assert run.code == 3 and expected in run.err, str(run)
        assert tree_digest(root) == before


def test_alias_bomb_as_kubeconfig_is_refused(lab: Lab) -> None:
    bomb = alias_bomb("apiVersion: v1\nkind: Config\ncurrent-context: x\n"
                      "contexts: [{name: x, context: {user: u, cluster: c}}]\n")
    bomb += "users: [{name: u, user: {client-certificate-data: AAAA, junk: *l8}}]\nclusters: []\n"
    _refused(lab, f"{KUBE}/admin.conf", bomb.encode(), "admin.conf", f"more than {yamlsafe.MAX_NODES} values")


def test_alias_bomb_as_kubeadm_config_is_refused(lab: Lab) -> None:
    bomb = alias_bomb("apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\n")
    with node_copy(lab) as root:
        put(root, KUBEADM_CONFIG, bomb.encode())
        report = _json_check(root)
        assert f"more than {yamlsafe.MAX_NODES} values" in _finding(report, "")
        assert report["exitCode"] == 1  # a config problem is a warning: the PKI itself is fine
        # verify and restart read it too (the container runtime's socket): no endpoint from it, no hang
        _node_readers(root)
        check_node(root)


def test_alias_bomb_as_inventory_is_refused(lab: Lab) -> None:
    path = lab.scratch / "bomb.yaml"
    path.write_text(alias_bomb() + "kube_control_plane: {hosts: {master-1: {x: *l8}}}\n")
    run = kubecert("cluster", "check", "--local", "-i", str(path), "--no-etcd-members", "--now", NOW)
    assert_contract(run)
    assert run.code == 3 and f"more than {yamlsafe.MAX_NODES} values" in run.err, str(run)


def test_50_mb_file_as_a_certificate_is_refused(lab: Lab) -> None:
    cert = lab.original(f"{PKI}/apiserver.crt")
    _refused(lab, f"{PKI}/apiserver.crt", cert * (50_000_000 // len(cert)), "apiserver",
             f"more than the {MAX_READ} kubecert reads")


def test_50_mb_inventory_is_refused(lab: Lab) -> None:
    path = lab.scratch / "huge.ini"
    with open(path, "w") as fh:
        fh.write("[kube_control_plane]\n")
        fh.write(f"master-1 kubecert_root={lab.root}\n" * (50_000_000 // 40))
    run = kubecert("cluster", "check", "--local", "-i", str(path), "--no-etcd-members", "--now", NOW)
    assert_contract(run)
    assert run.code == 3 and f"more than the {yamlsafe.MAX_BYTES} bytes" in run.err, str(run)
    path.unlink()


def test_inventory_that_is_not_a_regular_file_is_refused(lab: Lab) -> None:
    fifo = lab.scratch / "inventory.fifo"
    os.mkfifo(fifo)
    try:  # a FIFO nobody writes to would block a plain open() forever
        run = kubecert("cluster", "check", "--local", "-i", str(fifo), "--no-etcd-members", "--now", NOW)
        assert run.code == 3 and "not a regular file" in run.err, str(run)
        run = kubecert("cluster", "check", "--local", "-i", "/dev/zero", "--no-etcd-members", "--now", NOW)
        assert run.code == 3 and "not a regular file" in run.err, str(run)
    finally:
        fifo.unlink()
    assert stat.S_ISCHR(os.stat("/dev/zero").st_mode)


@pytest.mark.parametrize("text, expected", [
    ("[kube_control_plane]\nnode[0:1500]\n", f"more than {MAX_CLUSTER_HOSTS} hosts"),
    ("[kube_control_plane]\n" + "".join(f"g{i}-[0:99999]\n" for i in range(5)), "hosts"),
    ("[kube_control_plane]\nn" + "[1:2]" * 40 + "\n", "expands to more than"),
    ("[kube_control_plane]\nm\n[all:vars]\nansible_host={{ a }}\n"
     + "".join(f"{c}={('{{ ' + chr(ord(c) + 1) + ' }}') * 20}\n" for c in "abcdefghi") + "j=x\n", "longer than"),
    # the deepest group first: its depth is computed through every group above it
    ("".join(f"[g{i + 1}:children]\ng{i}\n" for i in range(3000)) + "[g0]\nm\n[kube_control_plane:children]\ng3000\n",
     "deeper than"),
    ("kube_control_plane:\n  hosts: {m: {ansible_port: " + "9" * 4000 + "}}\n", "not a port"),
    ("kube_control_plane:\n  hosts: {m: {ansible_port: " + "9" * 5000 + "}}\n", "unreadable YAML"),
    ("- " * 60_000 + "x\n", "unreadable YAML (RecursionError)"),
], ids=["range-of-cluster-hosts", "inventory-hosts", "range-product", "jinja-growth", "group-depth",
        "port-digits", "yaml-int-digits", "yaml-nesting"])
def test_inventory_costs_are_bounded(lab: Lab, text: str, expected: str) -> None:
    path = lab.scratch / "costly.ini"
    path.write_text(text)
    run = kubecert("cluster", "check", "--local", "-i", str(path), "--no-etcd-members", "--now", NOW)
    assert_contract(run)
    assert run.code == 3 and expected in run.err, str(run)


@pytest.mark.parametrize("text", ["[kube_control_plane]\nm\x00\n", "all:\n  hosts: {m\x07: }\n",
                                  "kube_control_plane: {hosts: {m: {ansible_port: 0x" + "F" * 4000 + "}}}\n",
                                  "kube_control_plane: {hosts: {0x" + "F" * 4000 + ": }}\n"],
                         ids=["nul-in-ini", "bell-in-yaml", "huge-hex-port", "huge-hex-host"])
def test_inventory_with_what_python_cannot_print(lab: Lab, text: str) -> None:
    path = lab.scratch / "odd.inv"
    path.write_text(text)
    run = kubecert("cluster", "check", "--local", "-i", str(path), "--no-etcd-members", "--now", NOW)
    assert_contract(run)
    assert run.code in (2, 3), str(run)


def test_bundle_of_thousands_of_certificates_as_ca(lab: Lab) -> None:
    """A ca.crt made of 3000 certificates: refused by the documented bundle limit, at no great cost."""
    ca = lab.original(f"{PKI}/ca.crt")
    others = b"".join(lab.original(r) for r in CERTS[:6] if r != f"{PKI}/ca.crt")
    with node_copy(lab) as root:
        put(root, f"{PKI}/ca.crt", ca + (others * 600)[:3000 * len(ca)])
        report = _json_check(root)
        assert f"more than the {x509ops.MAX_CERTS} certificates" in _finding(report, "ca.crt")
        check_node(root)


def test_bundle_within_the_limit_is_read(lab: Lab) -> None:
    """A CA bundle as kubeadm allows it during a CA rotation (the first cert is the CA) still works."""
    ca = lab.original(f"{PKI}/ca.crt")
    other = lab.original(f"{PKI}/front-proxy-ca.crt")
    with node_copy(lab) as root:
        put(root, f"{PKI}/ca.crt", ca + other * (x509ops.MAX_CERTS - 1))
        assert _json_check(root)["exitCode"] in (0, 1)


@pytest.mark.parametrize("text", [b"a: " + b"[" * 100_000, b"a: " + b"[" * 30_000 + b"]" * 30_000,
                                  b"- " * 20_000 + b"x\n", b"{a: " * 30_000 + b"1" + b"}" * 30_000,
                                  b"- " * 60_000 + b"x\n", b"? " * 60_000 + b"x\n"],
                         ids=["unclosed-flow", "flow", "block", "flow-mappings", "block-60k", "block-keys-60k"])
def test_deep_yaml_nesting_is_one_error(lab: Lab, text: bytes) -> None:
    """Nesting deeper than any parser's stack: in a child process, so that a crash of the YAML
    library (a segfault is no exception) fails this test instead of the whole run."""
    with node_copy(lab) as root:
        put(root, KUBEADM_CONFIG, text)
        put(root, KUBELET_CONFIG, text)
        put(root, f"{KUBE}/admin.conf", text)
        before = tree_digest(root)
        for argv in (["check", "--root", str(root), "--now", NOW], ["verify", "--root", str(root), "--timeout", "0.05"]):
            proc = run_kubecert(*argv)
            assert_contract(Run(tuple(argv), proc.returncode, proc.stdout, proc.stderr, ()))
        assert tree_digest(root) == before


def test_valid_variants_still_work(lab: Lab) -> None:
    """What fuzzing must not break: CRLF PEM, a kubeconfig in UTF-16 with a BOM, a cert with comments."""
    with node_copy(lab) as root:
        put(root, f"{PKI}/apiserver.crt", b"# copied from master-2\n" + lab.original(f"{PKI}/apiserver.crt")
            .replace(b"\n", b"\r\n"))
        text = lab.original(f"{KUBE}/scheduler.conf").decode()
        put(root, f"{KUBE}/scheduler.conf", text.encode("utf-16"))
        report = _json_check(root)
        assert report["exitCode"] == 0, report["findings"]
        der = blocks(lab.original(f"{PKI}/ca.crt"))[0][1]
        assert x509ops.load_cert(pem("CERTIFICATE", der), "x").subject


def _with_serial(der: bytes, serial: bytes) -> bytes:
    """``der`` with its serial number's content bytes replaced by ``serial`` (of the same length)."""
    # Certificate ::= SEQUENCE { tbs SEQUENCE { [0] version, INTEGER serial, ... } }, long lengths
    i = 4 + 4  # the two SEQUENCE headers (30 82 LL LL)
    i += 2 + der[i + 1]  # [0] { INTEGER version }
    assert der[i] == 0x02
    n = der[i + 1]
    assert len(serial) == n
    return der[:i + 2] + serial + der[i + 2 + n:]


@pytest.mark.parametrize("first", [0x80, 0xFF], ids=["most-negative", "minus-small"])
def test_certificate_with_a_serial_rfc5280_forbids(lab: Lab, first: int) -> None:
    """cryptography only warns (today) about a serial <= 0: kubecert refuses the file, in one line."""
    der = blocks(lab.original(f"{PKI}/apiserver.crt"))[0][1]
    n = der[8 + 2 + der[9] + 1]
    broken = _with_serial(der, bytes([first]) + b"\x01" * (n - 1))  # a negative INTEGER, minimally encoded
    with node_copy(lab) as root:
        put(root, f"{PKI}/apiserver.crt", pem("CERTIFICATE", broken))
        report = _json_check(root)
        assert "is not positive (RFC 5280)" in _finding(report, "apiserver.crt")
        check_node(root)


def test_subject_longer_than_x520_allows(lab: Lab) -> None:
    """A CN over 64 characters (a long node name in system:node:<name>): Go accepts it, cryptography
    warns at every read. The operator must see no Python warning (two lines of source on stderr)."""
    ca = x509ops.load_cert(lab.original(f"{PKI}/ca.crt"), "ca.crt")
    ca_key = x509ops.load_key(lab.original(f"{PKI}/ca.key"), "ca.key")
    key = x509ops.load_key(lab.original(f"{PKI}/apiserver-kubelet-client.key"), "key")
    old = x509ops.load_cert(lab.original(f"{PKI}/apiserver-kubelet-client.crt"), "crt")
    with pytest.warns(UserWarning, match="length must be"):  # cryptography's own warning, at every read
        cn = x509.NameAttribute(x509.NameOID.COMMON_NAME, "system:node:" + "n" * 60, _validate=False)
    long_name = x509.Name([x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "kubeadm:cluster-admins"), cn])
    builder = (x509.CertificateBuilder().subject_name(long_name).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509ops.random_serial())
               .not_valid_before(old.not_valid_before_utc).not_valid_after(old.not_valid_after_utc))
    for ext in old.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    with node_copy(lab) as root:
        put(root, f"{PKI}/apiserver-kubelet-client.crt", x509ops.cert_pem(builder.sign(ca_key, hashes.SHA256())))
        check_node(root, names=("apiserver-kubelet-client",))


def test_a_flipped_byte_in_a_signature_is_an_audit_error(lab: Lab) -> None:
    """Fuzzing's baseline: a cert whose signature is broken loads and is reported, never trusted."""
    der = bytearray(blocks(lab.original(f"{PKI}/apiserver.crt"))[0][1])
    der[-5] ^= 0xFF  # inside the signature value
    with node_copy(lab) as root:
        put(root, f"{PKI}/apiserver.crt", pem("CERTIFICATE", bytes(der)))
        report = _json_check(root)
        assert "not signed by ca" in _finding(report, "apiserver.crt"), report["findings"]
        run = kubecert("renew", "apiserver", "--dry-run", "--root", str(root), "--now", NOW)
        assert run.code == 3 and "not signed by ca" in run.err, str(run)

