"""Issue 10, part 2 (`--include-sa`, one node): `kubecert ca rotate sa` rotates the service-account key
pair in three stages. On a lab node's files: what each stage writes, the grace before the old key
leaves sa.pub, the aborts, refusals that change nothing. On the REAL kube-apiserver and
kube-controller-manager v1.20.2 (tests/kubebin.py; the kubelet is the fake one, restarts go through
the crictl stand-in): a token issued before the rotation keeps authenticating through stages 1 and 2
and until the grace ends, a token issued after stage 2 is signed by the new key, and once the old key
is dropped the old token gets 401 while the new one still authenticates.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import List

import pytest
import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

import realcp
from fakenode.fixture import lab_node, running_node, runtime_socket
from test_real_control_plane import READY, _real_binaries, kubecert  # noqa: F401 (an autouse fixture)
from treeutil import (
    after_crash_invariants,
    assert_one_line_error,
    clean_env,
    copy_tree,
    diff,
    lab_create,
    monotonic,
    node_state,
    run_kubecert,
)

PKI = "etc/kubernetes/pki"


def _pubs(root: Path) -> List[bytes]:
    """sa.pub's public keys, as DER SubjectPublicKeyInfo, in file order."""
    data = (root / PKI / "sa.pub").read_bytes()
    blocks = [b"-----BEGIN" + b for b in data.split(b"-----BEGIN")[1:]]
    return [serialization.load_pem_public_key(b).public_bytes(serialization.Encoding.DER,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo)
            for b in blocks]


def _spki(root: Path, name: str) -> bytes:
    key = serialization.load_pem_private_key((root / PKI / name).read_bytes(), None)
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _at(delta: dt.timedelta) -> str:
    return (dt.datetime.now(dt.timezone.utc) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ok(r: object) -> str:
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr  # type: ignore[attr-defined]
    return r.stdout  # type: ignore[attr-defined,no-any-return]


def _one_line_refusal(r: subprocess.CompletedProcess[str], text: str) -> None:
    assert_one_line_error(r, text)
    assert r.returncode == 3, r.returncode


def _check_clean(root: Path) -> None:
    r = run_kubecert("check", "--root", str(root), "-o", "json")
    findings = [f for f in json.loads(r.stdout)["findings"] if f["name"] == "sa"]
    assert findings == [], findings


def test_three_stages_and_the_grace_on_a_lab_node(tmp_path: Path) -> None:
    root = lab_create(tmp_path, "--nodes", "1") / "master-1"
    old = _spki(root, "sa.key")
    assert "stage 0" in _ok(run_kubecert("ca", "rotate", "sa", "--root", str(root), "--status"))

    _ok(run_kubecert("ca", "rotate", "sa", "--root", str(root), "--yes"))  # stage 1: trust both
    new = _spki(root, "sa-new.key")
    assert new != old and _pubs(root) == [old, new] and _spki(root, "sa.key") == old
    assert (root / PKI / "sa-new.key").stat().st_mode & 0o777 == 0o600
    _check_clean(root)

    _ok(run_kubecert("ca", "rotate", "sa", "--root", str(root), "--yes"))  # stage 2: the new key signs
    assert _spki(root, "sa.key") == new and _spki(root, "sa-old.key") == old and _pubs(root) == [old, new]
    assert not (root / PKI / "sa-new.key").exists()
    retired = dt.datetime.strptime((root / PKI / "sa-old.retired").read_text().strip(),
                                   "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    assert abs((dt.datetime.now(dt.timezone.utc) - retired).total_seconds()) < 60
    _check_clean(root)

    # stage 3 waits for the grace: refused with one line, nothing changed
    state = node_state(root)
    _one_line_refusal(run_kubecert("ca", "rotate", "sa", "--root", str(root), "--yes"), "--sa-grace 65m")
    _one_line_refusal(run_kubecert("ca", "rotate", "sa", "--root", str(root), "--yes", "--sa-grace", "30m"),
                      "run again then")
    # a rehearsal's --now does not move the real clock: the grace is counted on it
    _one_line_refusal(run_kubecert("ca", "rotate", "sa", "--root", str(root), "--yes", "--now", _at(dt.timedelta(
        minutes=66))), "--sa-grace 65m")
    assert node_state(root) == state

    out = _ok(run_kubecert("ca", "rotate", "sa", "--root", str(root), "--yes", "--sa-grace", "0m"))
    assert "legacy token Secrets" in out and "now at stage 0" in out, out  # one key again
    assert _pubs(root) == [new] and _spki(root, "sa.key") == new
    assert not list((root / PKI).glob("sa-*")), list((root / PKI).glob("sa-*"))
    _check_clean(root)


def test_abort_goes_back_and_respects_tokens_the_new_key_signed(tmp_path: Path) -> None:
    root = lab_create(tmp_path, "--nodes", "1") / "master-1"
    original = node_state(root)
    old = _spki(root, "sa.key")
    _ok(run_kubecert("ca", "rotate", "sa", "--root", str(root), "--yes"))
    _ok(run_kubecert("ca", "rotate", "sa", "--root", str(root), "--yes", "--abort"))  # 1 -> 0 at once: never signed
    assert node_state(root) == original

    _ok(run_kubecert("ca", "rotate", "sa", "--root", str(root), "--yes"))
    new = _spki(root, "sa-new.key")
    _ok(run_kubecert("ca", "rotate", "sa", "--root", str(root), "--yes"))  # stage 2: the new key signed tokens
    out = _ok(run_kubecert("ca", "rotate", "sa", "--root", str(root), "--yes", "--abort"))  # 2 -> 1
    assert "now at stage 1" in out and "new key retired" in out, out
    assert _spki(root, "sa.key") == old and _spki(root, "sa-new.key") == new and _pubs(root) == [old, new]
    state = node_state(root)
    _one_line_refusal(run_kubecert("ca", "rotate", "sa", "--root", str(root), "--yes", "--abort"),
                      "the new key signed tokens until")
    assert node_state(root) == state
    _ok(run_kubecert("ca", "rotate", "sa", "--root", str(root), "--yes", "--abort", "--sa-grace", "0m"))
    assert _pubs(root) == [old] and _spki(root, "sa.key") == old
    assert not list((root / PKI).glob("sa-*"))
    _one_line_refusal(run_kubecert("ca", "rotate", "sa", "--root", str(root), "--yes", "--abort"),
                      "no rotation in progress")


def test_a_rollback_of_stage_2_keeps_the_grace_for_the_key_that_signed(tmp_path: Path) -> None:
    """Rolled back after stage 2, the node is at stage 1 again with sa.key the old key, but the new key
    signed tokens meanwhile: dropping it (abort to 0) waits for the grace, counted from the rollback."""
    root = lab_create(tmp_path, "--nodes", "1") / "master-1"
    _ok(run_kubecert("ca", "rotate", "sa", "--root", str(root), "--yes"))
    _ok(run_kubecert("ca", "rotate", "sa", "--root", str(root), "--yes"))
    _ok(run_kubecert("rollback", "--root", str(root), "--yes"))
    assert "stage 1" in _ok(run_kubecert("ca", "rotate", "sa", "--root", str(root), "--status"))
    state = node_state(root)
    _one_line_refusal(run_kubecert("ca", "rotate", "sa", "--root", str(root), "--yes", "--abort"),
                      "the new key signed tokens until")
    assert node_state(root) == state
    _one_line_refusal(run_kubecert("ca", "rotate", "sa", "--root", str(root), "--yes", "--abort", "--now",
                                   _at(dt.timedelta(minutes=66))), "the new key signed tokens until")
    _ok(run_kubecert("ca", "rotate", "sa", "--root", str(root), "--yes", "--abort", "--sa-grace", "0m"))


def test_every_control_plane_gets_the_key_the_first_one_made(tmp_path: Path) -> None:
    """HA: the first control plane makes the new key and says how the others get it; --new-key takes
    it (from a private file only), and every control plane then trusts and signs with the same keys."""
    lab = lab_create(tmp_path, "--nodes", "3")
    m1, m2 = lab / "master-1", lab / "master-2"
    out = _ok(run_kubecert("ca", "rotate", "sa", "--root", str(m1), "--yes"))
    assert "--new-key" in out and "never let two control planes make their own" in out, out
    private = tmp_path / "carry"
    private.mkdir(mode=0o700)
    carried = private / "sa-new.key"
    carried.write_bytes((m1 / PKI / "sa-new.key").read_bytes())
    carried.chmod(0o644)  # readable by others: refused, nothing changed
    state = node_state(m2)
    _one_line_refusal(run_kubecert("ca", "rotate", "sa", "--root", str(m2), "--yes", "--new-key", str(carried)),
                      "readable by others")
    assert node_state(m2) == state
    carried.chmod(0o600)
    out = _ok(run_kubecert("ca", "rotate", "sa", "--root", str(m2), "--yes", "--new-key", str(carried)))
    assert "never let two" not in out, out
    assert (m2 / PKI / "sa.pub").read_bytes() == (m1 / PKI / "sa.pub").read_bytes()
    assert _spki(m2, "sa-new.key") == _spki(m1, "sa-new.key")
    # once started, --new-key has no place: one line, nothing changed
    state = node_state(m2)
    _one_line_refusal(run_kubecert("ca", "rotate", "sa", "--root", str(m2), "--yes", "--new-key", str(carried)),
                      "--new-key starts a rotation")
    assert node_state(m2) == state


def test_a_state_kubecert_does_not_leave_is_refused(tmp_path: Path) -> None:
    root = lab_create(tmp_path, "--nodes", "1") / "master-1"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = other.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (root / PKI / "sa.pub").write_bytes((root / PKI / "sa.pub").read_bytes() + pub)  # a second key, no rotation
    state = node_state(root)
    _one_line_refusal(run_kubecert("ca", "rotate", "sa", "--root", str(root), "--yes"), "not a state kubecert leaves")
    assert node_state(root) == state
    # `check` still sees a pair: sa.key matches one of sa.pub's keys
    _check_clean(root)
    # a certificate in sa.pub (the apiserver may take a key from it): rotating would drop it, refused
    lab2 = lab_create(tmp_path / "2", "--nodes", "1") / "master-1"
    (lab2 / PKI / "sa.pub").write_bytes((lab2 / PKI / "sa.pub").read_bytes() + (lab2 / PKI / "ca.crt").read_bytes())
    state = node_state(lab2)
    _one_line_refusal(run_kubecert("ca", "rotate", "sa", "--root", str(lab2), "--yes"), "other than public keys")
    assert node_state(lab2) == state


def test_a_crash_at_every_step_of_stage_2_is_all_old_or_all_new(tmp_path: Path) -> None:
    """Stage 2 rewrites sa.key and writes sa-old.key and sa-old.retired in one transaction: killed at any
    step and recovered, the node signs with one key and can say which (never sa.key = sa-old.key)."""
    template = lab_create(tmp_path, "--nodes", "1") / "master-1"
    _ok(run_kubecert("ca", "rotate", "sa", "--root", str(template), "--yes"))
    original = node_state(template)
    at = _at(dt.timedelta(seconds=2))  # one instant for every run's backups

    def keys_state(root: Path) -> object:
        """The node's files, sa-old.retired's content aside (the real time of each run: it must only be a
        time, checked below)."""
        st = node_state(root)
        stamp = st.get(f"{PKI}/sa-old.retired")
        if stamp is not None:
            text = (root / PKI / "sa-old.retired").read_text().strip()
            assert dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ"), text
            st[f"{PKI}/sa-old.retired"] = stamp[:4]
        return st

    learn = copy_tree(template, tmp_path / "learn")
    log = tmp_path / "learn.steps"
    _ok(run_kubecert("ca", "rotate", "sa", "--root", str(learn), "--yes", "--now", at,
                     env=clean_env(KUBECERT_TEST_STEP_LOG=str(log))))
    rotated = keys_state(learn)
    steps = len(log.read_text().splitlines())
    assert steps >= 8, log.read_text()
    outcomes = []
    for k in range(1, steps + 1):
        root = copy_tree(template, tmp_path / f"crash-{k}")
        crashed = run_kubecert("ca", "rotate", "sa", "--root", str(root), "--yes", "--now", at,
                               env=clean_env(KUBECERT_TEST_CRASH_AT=str(k)))
        assert crashed.returncode == 137, (k, crashed.stdout, crashed.stderr)
        assert run_kubecert("recover", "--root", str(root)).returncode == 0, k
        assert after_crash_invariants(root) == [], k
        state = keys_state(root)
        if state == original:
            outcomes.append("old")
            continue
        assert state == rotated, f"step {k}: MIXED\n" + diff(rotated, state)  # the same key files, byte for byte
        outcomes.append("new")
        assert "stage 2" in _ok(run_kubecert("ca", "rotate", "sa", "--root", str(root), "--status"))
    assert "old" in outcomes and "new" in outcomes and monotonic(outcomes, "old", "new"), outcomes


def test_an_sa_pub_in_pkcs1_form_is_read_and_rotated(tmp_path: Path) -> None:
    """sa.pub as "RSA PUBLIC KEY" (PKCS#1; the apiserver reads it as well as kubeadm's PKIX form)."""
    root = lab_create(tmp_path, "--nodes", "1", "--key-type", "rsa") / "master-1"
    key = serialization.load_pem_private_key((root / PKI / "sa.key").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    (root / PKI / "sa.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                      serialization.PublicFormat.PKCS1))
    _check_clean(root)
    _ok(run_kubecert("ca", "rotate", "sa", "--root", str(root), "--yes"))
    assert _pubs(root) == [_spki(root, "sa.key"), _spki(root, "sa-new.key")]
    _check_clean(root)


# ------------------------------------------------------------------------------------------- real apiserver


def _who(kc: Path) -> str:
    """What the apiserver says of the token: 'rotator' (authenticated, RBAC refuses) or 'Unauthorized'."""
    r = realcp.kubectl(kc, "get", "secrets")
    if "system:serviceaccount:default:rotator" in r.stderr:
        return "rotator"
    return "Unauthorized" if "Unauthorized" in r.stderr else f"? {r.returncode} {r.stdout} {r.stderr}"


def _signed_by(token: str, spki: bytes) -> bool:
    """The token's JWS signature (RS256, or ES256 for an ECDSA key) verifies with the public key ``spki``."""
    head, body, sig = token.split(".")
    raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    signed = f"{head}.{body}".encode()
    key = serialization.load_der_public_key(spki)
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(raw, signed, padding.PKCS1v15(), hashes.SHA256())
        else:
            assert isinstance(key, ec.EllipticCurvePublicKey) and len(raw) == 64, type(key)
            der = utils.encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
            key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
        return True
    except InvalidSignature:  # another key signed it
        return False


@pytest.mark.timeout(600)
def test_tokens_keep_working_through_an_sa_rotation_on_the_real_apiserver(tmp_path: Path) -> None:
    root, _ = lab_node(tmp_path / "lab")
    runtime_socket(root, "containerd")
    old = _spki(root, "sa.key")
    with running_node(root, tmp_path / "run", timeout=READY) as node:
        node.install_unit_file("kubelet")
        admin = realcp.local_kubeconfig(root, "admin.conf", tmp_path / "kc")
        assert realcp.kubectl(admin, "create", "serviceaccount", "rotator").returncode == 0

        def token(name: str) -> Path:
            r = realcp.kubectl(admin, "create", "token", "rotator", "--duration", "1h")
            assert r.returncode == 0, r.stderr
            return realcp.token_kubeconfig(admin, r.stdout.strip(), tmp_path / "kc" / f"{name}.conf")

        def tok(kc: Path) -> str:
            return str(yaml.safe_load(kc.read_text())["users"][0]["user"]["token"])

        def rotate(*extra: str) -> str:
            return _ok(kubecert(node.env, "ca", "rotate", "sa", "--root", str(root), "--yes", "--restart",
                                "--gate-timeout", "120", *extra))

        before = token("before")
        assert _who(before) == "rotator" and _signed_by(tok(before), old)

        assert "now at stage 1" in rotate()
        node.wait_ready(READY)
        assert _who(before) == "rotator"

        out = rotate()
        assert "now at stage 2" in out and "kube-controller-manager" in out, out
        node.wait_ready(READY)
        new = _spki(root, "sa.key")
        after = token("after")
        assert _signed_by(tok(after), new) and not _signed_by(tok(after), old)
        assert _who(before) == "rotator" and _who(after) == "rotator"  # both keys verify

        r = kubecert(node.env, "ca", "rotate", "sa", "--root", str(root), "--yes", "--restart")
        assert r.returncode == 3 and "--sa-grace" in r.stderr, r.stdout + r.stderr  # within the grace
        assert _who(before) == "rotator"

        out = rotate("--sa-grace", "0m")  # the grace has passed (as far as this test waits)
        assert "now at stage 0" in out, out
        node.wait_ready(READY)
        assert _who(before) == "Unauthorized"  # signed by the dropped key
        assert _who(after) == "rotator"
        assert _who(token("last")) == "rotator"
