"""`cluster recover` and worker batches, the parts that need no running cluster: preflight, dry run,
refusals, the state file, `renew --within`, batch sizes. On local lab roots (`--local`: the same
code as over SSH, with local files and commands); the real recovery is in test_netns_recover.py."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest
import yaml

from kubecert import renew as R
from kubecert.cluster import local_connect
from kubecert.cluster.recover import RecoverState, preflight
from kubecert.cluster.workers import batch_size, kubelet_node_name
from kubecert.errors import KubecertError
from kubecert.lab import LabSpec, create
from kubecert.remote.hosts import load_inventory
from kubecert.store import LocalFS
from treeutil import tree_state


def kubecert(*args: str, env: Dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubecert", *args], capture_output=True, text=True, timeout=120,
                          env=env, check=False)


@pytest.fixture
def expired(tmp_path: Path) -> Path:
    """An expired 3-master lab with 2 workers (written with the real clock: recover must issue certs valid now)."""
    lab = tmp_path / "lab"
    r = kubecert("lab", "create", str(lab), "--nodes", "3", "--workers", "2", "--expired", "--key-type", "ecdsa")
    assert r.returncode == 0, r.stderr
    return lab


def trees(lab: Path) -> Dict[str, object]:
    return {p.name: tree_state(p) for p in sorted(lab.iterdir()) if p.is_dir()}


def test_batch_sizes_are_ten_percent_and_never_all_at_once() -> None:
    assert [batch_size(n, None) for n in (1, 2, 9, 10, 11, 100, 497)] == [1, 1, 1, 1, 2, 10, 50]
    assert batch_size(5, 10) == 4 and batch_size(5, 3) == 3 and batch_size(1, 10) == 1


def test_renew_within_renews_only_what_is_due(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    create(str(tmp_path / "lab"), LabSpec(nodes=1, workers=1, leaf_lifetime=dt.timedelta(days=20)), now=now)
    fs = LocalFS(str(tmp_path / "lab/master-1"))
    later = R.plan(fs, ["all"], now=now, within=dt.timedelta(days=10))
    assert later.renewed == () and all("beyond --within" in i.reason for i in later.items), later.items
    due = R.plan(fs, ["all"], now=now, within=dt.timedelta(days=30))
    assert {i.name for i in due.renewed} >= {"apiserver", "admin.conf", "kubelet.conf", "etcd-peer"}
    forced = R.plan(fs, ["all", "apiserver"], now=now, within=dt.timedelta(days=10))
    assert [i.name for i in forced.renewed] == ["apiserver"]  # a name given explicitly always
    # a worker: its kubelet cert signed with the control plane's ca.key, held in memory
    worker = LocalFS(str(tmp_path / "lab/worker-1"))
    alone = R.plan(worker, ["all"], now=now, within=dt.timedelta(days=30))
    assert [i.action for i in alone.items if i.name == "kubelet.conf"] == ["skip"]  # no CA key here
    from kubecert.cluster import collect_signers
    hosts = load_inventory(str(tmp_path / "lab/inventory.yaml"))
    signers, where = collect_signers(hosts, local_connect)
    assert where == {"ca": "master-1", "front-proxy-ca": "master-1", "etcd-ca": "master-1"}
    signed = R.plan(worker, ["all"], now=now, within=dt.timedelta(days=30), signers=signers)
    assert [i.name for i in signed.renewed] == ["kubelet.conf", "kubelet-server"]
    assert kubelet_node_name(worker) == "worker-1"


def test_dry_run_shows_every_node_and_changes_nothing(expired: Path) -> None:
    before = trees(expired)
    r = kubecert("cluster", "recover", "-i", str(expired / "inventory.yaml"), "--local", "--dry-run")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()
            if line.startswith(("master-", "worker-"))}
    assert sorted(rows) == ["master-1", "master-2", "master-3", "worker-1", "worker-2"], r.stdout
    for name, row in rows.items():  # NODE ROLE CLOCK EXPIRED NOT-YET-VALID CA-KEYS ...
        assert row[1] == ("worker" if name.startswith("worker") else "control-plane"), row
        assert int(row[3]) > 0, row
    assert rows["master-1"][5] == "ca,front-proxy-ca,etcd-ca" and rows["worker-1"][5] == "-", rows
    assert "ca on master-1" in r.stdout and "dry run: nothing was written" in r.stdout
    for name in rows:
        assert f"== {name} (" in r.stdout, r.stdout
    assert trees(expired) == before


def test_refusals_are_one_line_and_change_nothing(expired: Path, tmp_path: Path) -> None:
    inv = str(expired / "inventory.yaml")
    before = trees(expired)
    r = kubecert("cluster", "recover", "-i", inv, "--local")
    assert r.returncode == 3 and len(r.stderr.strip().splitlines()) == 1 and "--yes" in r.stderr, r.stderr
    r = kubecert("cluster", "recover", "-i", inv, "--this-node", "--dry-run")
    assert r.returncode == 3 and "without -i" in r.stderr, r.stderr
    r = kubecert("cluster", "recover", "--dry-run")
    assert r.returncode == 3 and "-i INVENTORY" in r.stderr, r.stderr
    # every node's clock two hours ahead (a stand-in `date` first on PATH): refused, naming the node
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "date").write_text('#!/bin/sh\nexec /bin/date -d "@$(( $(/bin/date +%s) + 7200 ))" "$@"\n')
    (bin_dir / "date").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    r = kubecert("cluster", "recover", "-i", inv, "--local", "--yes", env=env)
    err = r.stderr.strip()
    assert r.returncode == 3 and len(err.splitlines()) == 1, r.stderr
    assert "master-1: its clock is 2h ahead of the operator's" in err and "--ignore-clock-skew" in err, err
    ok = kubecert("cluster", "recover", "-i", inv, "--local", "--dry-run", "--ignore-clock-skew", env=env)
    assert ok.returncode == 0, ok.stderr
    assert re.search(r"^master-2 .* \+7(19\d|20\d)s ", ok.stdout, re.M), ok.stdout
    assert trees(expired) == before


def test_preflight_reports_an_unreachable_node_and_the_rest(expired: Path) -> None:
    hosts = load_inventory(str(expired / "inventory.yaml"))
    gone = hosts[-1]
    os.rename(gone.root, gone.root + ".gone")
    now = dt.datetime.now(dt.timezone.utc)
    pre = preflight(hosts, local_connect, now=now, within=dt.timedelta(days=30))
    assert [n.name for n in pre.unreachable] == [gone.name] and "does not exist" in str(pre.unreachable[0].error)
    assert len(pre.reachable) == 4 and pre.refusals == ()
    m1 = next(n for n in pre.nodes if n.name == "master-1")
    assert m1.etcd_member == "master-1" and m1.etcd_peers == ("master-1",) and m1.components[0] == "etcd"
    assert m1.plan is not None and len(m1.plan.renewed) == len(m1.expired)


def test_state_file_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / "s.json")
    st = RecoverState(path, "digest-a")
    st.renewed, st.backups, st.phases = ["m1"], {"m1": ["20261201T000000Z-1"]}, {"etcd": ["m1"]}
    st.save()
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    back = RecoverState.load(path, "digest-a")
    assert (back.renewed, back.backups, back.passed("etcd", "m1"), back.passed("kubelet", "m1")) == \
        (["m1"], {"m1": ["20261201T000000Z-1"]}, True, False)
    assert RecoverState.load(path, "another inventory").renewed == []  # another cluster: start afresh
    (tmp_path / "s.json").write_text("{not json")
    assert RecoverState.load(path, "digest-a").renewed == []
    # a state dir another user can write to is refused; a planted link at the name is never followed
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(KubecertError, match="another user can write there"):
        RecoverState(str(shared / "s.json"), "d").save()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.symlink(victim, tmp_path / "planted.json")
    assert RecoverState.load(str(tmp_path / "planted.json"), "d").renewed == []
    RecoverState(str(tmp_path / "planted.json"), "d").save()
    assert victim.read_text() == "precious" and not (tmp_path / "planted.json").is_symlink()


def test_a_worker_cannot_get_another_identity_signed(expired: Path) -> None:
    """Root on a worker plants the apiserver's public kubelet-client cert (O=system:masters) as its
    kubelet cert: signing it with the control plane's ca.key would hand the worker cluster-admin.
    Refused (preflight, before anything changes), and so is a node cert whose key is not there."""
    before = trees(expired)
    pki = expired / "worker-1/var/lib/kubelet/pki"
    dated = pki / os.path.basename(os.readlink(pki / "kubelet-client-current.pem"))  # node-absolute link
    planted = (expired / "master-1/etc/kubernetes/pki/apiserver-kubelet-client.crt").read_bytes()
    dated.write_bytes(planted)  # the cert only: nobody here has its key
    r = kubecert("cluster", "recover", "-i", str(expired / "inventory.yaml"), "--local", "--dry-run")
    err = r.stderr.strip()
    assert r.returncode == 3 and len(err.splitlines()) == 1, r.stderr
    assert "worker-1" in err and "does not hold the certificate's private key" in err, err
    # worker-2's own node cert, but with worker-1's key: not the key of that cert either
    pki2 = expired / "worker-2/var/lib/kubelet/pki"
    own = (pki2 / os.path.basename(os.readlink(pki2 / "kubelet-client-current.pem"))).read_bytes()
    cert_only = own.split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
    other_key = (pki / "kubelet.key").read_bytes()
    dated.write_bytes(cert_only + other_key)
    r = kubecert("cluster", "recover", "-i", str(expired / "inventory.yaml"), "--local", "--dry-run")
    assert r.returncode == 3 and "worker-1" in r.stderr and "private key" in r.stderr, r.stderr
    after = trees(expired)
    assert {k: v for k, v in after.items() if k != "worker-1"} == {k: v for k, v in before.items() if k != "worker-1"}


def test_what_nothing_can_renew_is_refused(expired: Path, tmp_path: Path) -> None:
    """An inventory of workers only: no node keeps ca.key, so their expired kubelet certs cannot be
    renewed; preflight says so instead of "recovering" them."""
    inv = tmp_path / "workers.yaml"
    hosts = [h for h in yaml.safe_load((expired / "inventory.yaml").read_text())["hosts"] if h["role"] == "worker"]
    inv.write_text(yaml.safe_dump({"kind": "KubecertInventory", "hosts": hosts}))
    r = kubecert("cluster", "recover", "-i", str(inv), "--local", "--yes")
    err = r.stderr.strip()
    assert r.returncode == 3 and len(err.splitlines()) == 1, r.stderr
    assert "worker-1: kubelet.conf expires" in err and "cannot be renewed" in err, err
