"""The service-account key's rotation across control planes, node by node as the cluster driver does
it (issue 10, `cluster ca rotate sa` / `--include-sa`), on local lab roots: the nodes' stages and the
rotation's keys read back from the nodes, one key for every control plane, a resumed pass that does
nothing twice, the grace counted from the last control plane's switch, and a CA's stage and the sa
key's in one transaction. The rolling passes with restarts, gates and load run on the real control
plane in test_netns_cluster.py."""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Dict, List

import pytest

from kubecert import rotate as RT
from kubecert import rotations, x509ops
from kubecert import sarotate as SR
from kubecert.cluster import local_connect
from kubecert.cluster.rotate import discover as ca_discover
from kubecert.cluster.rotate import start
from kubecert.cluster.sarotate import SaPair, SaWhere, discover
from kubecert.errors import KubecertError, PKIError
from kubecert.lab import LabSpec, create
from kubecert.store import LocalFS
from kubecert.store.txn import list_backups
from test_cluster import H

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc)
MASTERS = ["master-1", "master-2", "master-3"]
PKI = "etc/kubernetes/pki"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sa") / "lab"
    create(str(d), LabSpec(nodes=3, key_type="ecdsa", workers=1), now=NOW - dt.timedelta(days=1))
    return d


@pytest.fixture()
def lab(template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "lab", symlinks=True))


def _hosts(lab: Path) -> List[H]:
    return [H(n, "127.0.0.1", "control-plane", str(lab / n)) for n in MASTERS] + \
        [H("worker-1", "127.0.0.1", "worker", str(lab / "worker-1"))]


def _step(lab: Path, node: str, pair: SaPair, target: int, *, now: dt.datetime = NOW, abort: bool = False,
          givens: tuple = ()) -> int:  # type: ignore[type-arg]
    """One node's pass of a stage, as the cluster driver plans and applies it; -> files written."""
    fs = LocalFS(str(lab / node))
    p = rotations.plan(fs, now=now, stage=target, givens=givens, sa=pair, abort=abort)
    if p.writes:
        rotations.apply(fs, p)
    return len(p.writes)


def _bytes(lab: Path, node: str, name: str) -> bytes:
    return (lab / node / PKI / name).read_bytes()


def _key(lab: Path, node: str) -> x509ops.PrivateKey:
    return x509ops.load_key(_bytes(lab, node, "sa.key"), f"{node}/sa.key")


def test_one_key_for_every_control_plane_read_back_from_the_nodes(lab: Path) -> None:
    hosts = _hosts(lab)
    w = discover(hosts, local_connect)
    assert w.new_key is None and w.stage == 0 and w.key_type == "ecdsa-p256"
    old_fp = x509ops.spki_sha256(_key(lab, "master-1"))
    assert w.old_fp == old_fp
    pair = w.pair(dt.timedelta(0))
    assert _step(lab, "master-1", pair, 1) > 0
    # interrupted here: the key in memory is gone, and the nodes say which one it was
    again = discover(hosts, local_connect)
    assert again.stages == {"master-1": 1, "master-2": 0, "master-3": 0} and again.stage == 0
    assert again.new_key is not None and x509ops.spki_sha256(again.new_key) == pair.new_fp
    resumed = again.pair(dt.timedelta(0))
    assert _step(lab, "master-1", resumed, 1) == 0  # already there: nothing written twice
    for n in MASTERS[1:]:
        assert _step(lab, n, resumed, 1) > 0
    assert len({_bytes(lab, n, "sa-new.key") for n in MASTERS}) == 1
    assert len({_bytes(lab, n, "sa.pub") for n in MASTERS}) == 1
    assert _bytes(lab, "master-1", "sa.pub").count(b"BEGIN PUBLIC KEY") == 2
    assert discover(hosts, local_connect).stage == 1


def test_the_old_key_is_dropped_only_a_grace_after_the_last_switch(lab: Path) -> None:
    hosts = _hosts(lab)
    grace = dt.timedelta(minutes=65)
    pair = discover(hosts, local_connect).pair(grace)
    for n in MASTERS:
        _step(lab, n, pair, 1)
    late = NOW + dt.timedelta(minutes=30)  # the last control plane switches half an hour after the first
    for n, when in zip(MASTERS, (NOW, NOW, late)):
        _step(lab, n, pair, 2, now=when)
    w = discover(hosts, local_connect)
    assert w.stage == 2 and w.old_retired == late and w.due(False, grace) == late + grace
    # master-1 switched first; its own stamp would allow the drop at NOW + 65m, the cluster's not
    pair3 = SaPair(pair.old_fp, pair.new_key, grace, retired_at=w.old_retired)
    before = _bytes(lab, "master-1", "sa.pub")
    with pytest.raises(KubecertError, match="--sa-grace"):
        _step(lab, "master-1", pair3, 3, now=NOW + dt.timedelta(minutes=66))
    assert _bytes(lab, "master-1", "sa.pub") == before
    for n in MASTERS:
        _step(lab, n, pair3, 3, now=late + grace)
    for n in MASTERS:
        assert x509ops.load_public_keys(_bytes(lab, n, "sa.pub"), n) and \
            _bytes(lab, n, "sa.pub").count(b"BEGIN PUBLIC KEY") == 1
        assert not list((lab / n / PKI).glob("sa-*")), n
        assert x509ops.spki_sha256(_key(lab, n)) == pair.new_fp
    # done: nothing left of the rotation, every control plane signs with the one new key
    done = discover(hosts, local_connect)
    assert done.new_key is None and done.old_fp == pair.new_fp


def test_an_abort_goes_back_and_waits_for_the_new_keys_tokens(lab: Path) -> None:
    hosts = _hosts(lab)
    grace = dt.timedelta(minutes=65)
    pair = discover(hosts, local_connect).pair(grace)
    original = {n: (_bytes(lab, n, "sa.key"), _bytes(lab, n, "sa.pub")) for n in MASTERS}
    for target in (1, 2):
        for n in MASTERS:
            _step(lab, n, pair, target)
    for n in MASTERS:
        _step(lab, n, pair, 1, abort=True)
    w = discover(hosts, local_connect)
    assert w.stage == 1 and w.new_retired == NOW and w.due(True, grace) == NOW + grace
    for n in MASTERS:
        assert _bytes(lab, n, "sa.key") == original[n][0]  # the old key signs again
    with pytest.raises(KubecertError, match="--sa-grace"):  # the new key signed tokens: they are honoured
        _step(lab, "master-1", SaPair(pair.old_fp, pair.new_key, grace, NOW), 0, abort=True)
    for n in MASTERS:
        _step(lab, n, SaPair(pair.old_fp, pair.new_key, grace, NOW), 0, abort=True, now=NOW + grace)
        kept = x509ops.load_public_keys(_bytes(lab, n, "sa.pub"), n)
        assert [x509ops.spki_sha256(k) for k in kept] == [pair.old_fp], n
        assert not list((lab / n / PKI).glob("sa-*")), n
    assert discover(hosts, local_connect).new_key is None


def test_control_planes_with_other_keys_are_refused(lab: Path, tmp_path: Path) -> None:
    hosts = _hosts(lab)
    other = x509ops.generate_key("ecdsa-p256")
    pki3 = lab / "master-3" / PKI
    (pki3 / "sa.key").write_bytes(x509ops.key_pem(other))
    (pki3 / "sa.pub").write_bytes(x509ops.public_key_pem(other.public_key()))
    with pytest.raises(PKIError, match="different service-account keys"):
        discover(hosts, local_connect)
    # a node that holds another key than the rotation's is refused, unchanged
    good = lab / "master-1"
    pair = SaWhere(x509ops.spki_sha256(_key(lab, "master-1")), None,
                   "ecdsa-p256").pair(dt.timedelta(0))
    before = (pki3 / "sa.pub").read_bytes()
    with pytest.raises(PKIError, match="other service-account keys"):
        _step(lab, "master-3", pair, 1)
    assert (pki3 / "sa.pub").read_bytes() == before and not (pki3 / "sa-new.key").exists()
    assert _step(lab, good.name, pair, 1) > 0
    # two control planes on two different new keys: refused as a cluster
    (pki3 / "sa.key").write_bytes(_bytes(lab, "master-2", "sa.key"))
    (pki3 / "sa.pub").write_bytes(_bytes(lab, "master-2", "sa.pub"))
    _step(lab, "master-3", SaPair(pair.old_fp, x509ops.generate_key("ecdsa-p256")), 1)
    with pytest.raises(PKIError, match="different service-account keys"):
        discover(hosts, local_connect)


def test_a_ca_stage_and_the_sa_stage_are_one_transaction(lab: Path) -> None:
    hosts = _hosts(lab)
    given = start(hosts, local_connect, "ca", now=NOW, days=3650, clock=NOW)
    pair = discover(hosts, local_connect).pair(dt.timedelta(0))
    fs = LocalFS(str(lab / "master-1"))
    before = len(list_backups(fs))
    assert _step(lab, "master-1", pair, 1, givens=(given,)) > 0
    backups = list_backups(fs)
    assert len(backups) == before + 1
    paths = {e.path for e in backups[-1].entries} if backups[-1].entries else set()
    assert any(p.endswith("pki/sa.pub") for p in paths) and any(p.endswith("pki/ca.crt") for p in paths), paths
    st: Dict[str, int] = {n: RT.status(LocalFS(str(lab / n)), "ca", given.old, given.new).stage
                          for n in ("master-1", "master-2")}
    assert st == {"master-1": 1, "master-2": 0}
    assert ca_discover(hosts, local_connect, "ca").stages["master-1"] == 1
    assert discover(hosts, local_connect).stages["master-1"] == 1
    # a worker gets the CA's stage and nothing of the sa key (the driver gives sa only to control planes)
    wfs = LocalFS(str(lab / "worker-1"))
    p = rotations.plan(wfs, now=NOW, stage=1, givens=(given,), sa=None)
    assert p.writes and not any("sa." in w.path for w in p.writes)
    with pytest.raises(KubecertError, match="not on this node"):
        rotations.plan(wfs, now=NOW, stage=1, givens=(given,), sa=pair)
    assert SR.STAGES[1] == "trust both"


def test_a_control_plane_out_of_reach_stops_the_rotation_before_anything_changes(lab: Path) -> None:
    """The stages to run and whether a new key exists can only be read from every control plane: one
    that cannot be reached refuses the discovery (not silently passed over), and before each pass every
    node is read again: one that missed a stage is never skipped past."""
    from kubecert.cluster.rotate import ready_for

    hosts = _hosts(lab)

    def flaky(h: H) -> object:
        if h.name == "master-3":
            raise KubecertError("connection refused")
        return local_connect(h)

    with pytest.raises(KubecertError, match="master-3: cannot be reached"):
        discover(hosts, flaky)  # type: ignore[arg-type]
    assert set(discover(hosts, flaky, strict=False).stages) == set()  # type: ignore[arg-type]
    pair = discover(hosts, local_connect).pair(dt.timedelta(0))
    for n in MASTERS:
        _step(lab, n, pair, 1)
    for n in MASTERS[:2]:
        _step(lab, n, pair, 2)
    lagging = discover(hosts, flaky, strict=False)  # type: ignore[arg-type]
    assert lagging.stages == {"master-1": 2, "master-2": 2} and lagging.stage == 2  # what a lenient read would do
    with pytest.raises(KubecertError, match=r"master-3 \(stage 1\) not ready for stage 3"):
        ready_for(hosts, local_connect, [], discover(hosts, local_connect).stages, 3, False)
    ready_for(hosts, local_connect, [], discover(hosts, local_connect).stages, 2, False)  # resuming stage 2: fine


def test_the_retired_keys_stamp_moves_to_when_the_restarts_finished(lab: Path) -> None:
    hosts = _hosts(lab)
    pair = discover(hosts, local_connect).pair(dt.timedelta(0))
    for target in (1, 2):
        _step(lab, "master-1", pair, target)
    fs = LocalFS(str(lab / "master-1"))
    stamp = lab / "master-1" / PKI / "sa-old.retired"
    assert stamp.read_text().strip() == "2026-11-30T12:00:00Z"
    assert SR.restamp(fs, NOW - dt.timedelta(minutes=5)) is None  # never earlier
    assert SR.restamp(fs, NOW + dt.timedelta(minutes=3)) == "/etc/kubernetes/pki/sa-old.retired"
    assert stamp.read_text().strip() == "2026-11-30T12:03:00Z" and stamp.stat().st_mode & 0o777 == 0o600
    assert discover(hosts, local_connect).old_retired == NOW + dt.timedelta(minutes=3)
    # the stage stamps the real clock it is given, not the run's (possibly rehearsed) now
    _step(lab, "master-2", pair, 1)
    fs2 = LocalFS(str(lab / "master-2"))
    rotations.apply(fs2, rotations.plan(fs2, now=NOW, stage=2, sa=pair, clock=NOW + dt.timedelta(minutes=7)))
    assert (lab / "master-2" / PKI / "sa-old.retired").read_text().strip() == "2026-11-30T12:07:00Z"
    with pytest.raises(KubecertError, match="--sa-grace"):  # and measures the grace on it
        rotations.plan(fs2, now=NOW + dt.timedelta(days=1), stage=3, sa=replace(pair, grace=dt.timedelta(hours=1)),
                       clock=NOW + dt.timedelta(minutes=30))
