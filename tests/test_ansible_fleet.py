"""The collection's fleet playbook (ansible_collections/kubecert/pki/playbooks/fleet.yml) on a fleet of
three lab clusters in one kubespray-style inventory: the order it takes them in (one cluster at a
time, or two at once), that it renews every node and changes nothing the second time, and that the
first node that fails stops the whole fleet; that --limit plans over the limited hosts alone, worker
batches as a percentage, and the plans it refuses (a host in two clusters, a kube node in none, batch sizes
below one).

Every host here is a `kubecert lab create` tree on this machine reached with Ansible's local
connection: what is under test is the batching and the stop, which do not depend on the transport
(the role over real sshd, with the cluster's components running and gated, is test_ansible.py).
No component runs, so the role runs with rolling_renew_restart=false; the nodes' kubecert is the
installed package (a two-line wrapper), as in test_ansible.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Set

import pytest
import yaml

pytest.importorskip("ansible", reason="ansible-core is not installed (pip install ansible-core)")

from ansiblerun import BIN, REPO, ansible_env, kubecert_wrapper, out  # noqa: E402
from netlab import tree_state  # noqa: E402

pytestmark = pytest.mark.timeout(600)

FLEET = REPO / "ansible_collections" / "kubecert" / "pki" / "playbooks" / "fleet.yml"
STATE = "etc/kubernetes/.kubecert"
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
# cluster -> `kubecert lab create` options; a: external etcd, b: stacked with workers, c: one master
CLUSTERS = {
    "a": ["--nodes", "2", "--topology", "external-etcd", "--workers", "3"],
    "b": ["--nodes", "2", "--workers", "2"],
    "c": ["--nodes", "1"],
}
# the names `kubecert renew` takes (module_utils/kubecert.py RENEWABLE)
RENEWABLE = {"apiserver", "apiserver-kubelet-client", "front-proxy-client", "etcd-server", "etcd-peer",
             "etcd-healthcheck-client", "apiserver-etcd-client", "admin.conf", "super-admin.conf",
             "controller-manager.conf", "scheduler.conf", "kubelet.conf", "kubelet-server"}


def make_fleet(base: Path) -> Dict[str, Path]:
    """host name (cluster-node) -> its root; every leaf expires in 5 days (due within the role's 30d)."""
    roots: Dict[str, Path] = {}
    for cluster, opts in CLUSTERS.items():
        r = subprocess.run([sys.executable, "-m", "kubecert", "lab", "create", str(base / cluster), *opts,
                            "--expires-in", "5d"], capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 0, r.stderr
        for node in sorted(p.name for p in (base / cluster).iterdir() if p.is_dir()):
            roots[f"{cluster}-{node}"] = base / cluster / node
    return roots


def write_inventory(base: Path, roots: Dict[str, Path]) -> Path:
    """kubespray's groups (stacked masters in etcd, masters in kube_node too), one group per cluster."""
    wrapper = kubecert_wrapper(base)

    def kind(host: str) -> str:
        return host.split("-", 1)[1].rsplit("-", 1)[0]  # etcd / master / worker

    stacked = {c for c, opts in CLUSTERS.items() if "external-etcd" not in opts}
    groups: Dict[str, List[str]] = {"etcd": [], "kube_control_plane": [], "kube_node": []}
    for h in roots:
        if kind(h) == "etcd" or (kind(h) == "master" and h[0] in stacked):
            groups["etcd"].append(h)
        if kind(h) == "master":
            groups["kube_control_plane"].append(h)
        if kind(h) in ("master", "worker"):
            groups["kube_node"].append(h)
    children = {g: {"hosts": {h: None for h in hs}} for g, hs in groups.items()}
    for c in CLUSTERS:
        children[f"cluster_{c}"] = {"hosts": {h: {"rolling_renew_root": str(r)} for h, r in roots.items()
                                              if h.startswith(f"{c}-")}}
    inv = {"all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                            "rolling_renew_bin": str(wrapper), "rolling_renew_install": False,
                            "rolling_renew_restart": False},
                   "children": children}}
    path = base / "fleet.yml"
    path.write_text(yaml.safe_dump(inv, sort_keys=False))
    return path


def edit_inventory(inventory: Path, edit: Callable[[Dict[str, Any]], None]) -> None:
    """Rewrite the inventory written by write_inventory: edit gets all's children (group -> {hosts: ...})."""
    inv = yaml.safe_load(inventory.read_text())
    edit(inv["all"]["children"])
    inventory.write_text(yaml.safe_dump(inv, sort_keys=False))


def fleet(base: Path, inventory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), "-f", "10", str(FLEET), *extra],
                          capture_output=True, text=True, timeout=540, env=ansible_env(base), check=False)


def batches(r: subprocess.CompletedProcess[str]) -> List[Set[str]]:
    """The hosts of each run of the role's renew task, in the order they ran (one run per batch)."""
    found: List[Set[str]] = []
    current = None
    for line in r.stdout.splitlines():
        if line.startswith("TASK ["):
            current = set() if "rolling_renew : Renew what is due" in line else None
            if current is not None:
                found.append(current)
        elif current is not None:
            m = re.match(r"^(?:ok|changed|failed|fatal): \[([^\]]+)\]", line)
            if m:
                current.add(m.group(1))
    return found


def recap(r: subprocess.CompletedProcess[str]) -> Dict[str, Dict[str, int]]:
    return {m.group(1): {"ok": int(m.group(2)), "changed": int(m.group(3)), "failed": int(m.group(5))}
            for m in RECAP.finditer(r.stdout)}


def check(root: Path) -> List[Dict[str, object]]:
    r = subprocess.run([sys.executable, "-m", "kubecert", "check", "--root", str(root), "-o", "json"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode in (0, 1, 2), r.stderr
    report = json.loads(r.stdout)
    return [rec for rec in report["certificates"] + report["extraCertificates"]
            if rec.get("name") in RENEWABLE and rec.get("kind") != "keypair" and not rec.get("missing")]


def due(root: Path) -> Dict[str, str]:
    """name -> serial of what the role must renew on this node: due within 30 days, CA key on the node."""
    return {str(rec["name"]): str(rec["serial"]) for rec in check(root)
            if int(rec["residualTime"]) < 30 * 86400 and not rec.get("externallyManaged")}  # type: ignore[call-overload]


def test_fleet_one_cluster_at_a_time_then_nothing_left_to_do(tmp_path: Path) -> None:
    roots = make_fleet(tmp_path)
    inventory = write_inventory(tmp_path, roots)
    before = {h: due(root) for h, root in roots.items()}
    # work on every master and on etcd-1 (the lab's second external etcd host, as a worker, holds no CA key)
    assert all(before[h] for h in roots if "master" in h) and before["a-etcd-1"], before

    r = fleet(tmp_path, inventory, "-e", "kubecert_worker_batch=2")
    assert r.returncode == 0, out(r)
    # external etcd one at a time, then control planes one at a time, then workers two at a time (never a
    # master, though kubespray lists them in kube_node too), a cluster finished before the next begins
    assert batches(r) == [{"a-etcd-1"}, {"a-etcd-2"}, {"a-master-1"}, {"a-master-2"},
                          {"a-worker-1", "a-worker-2"}, {"a-worker-3"},
                          {"b-master-1"}, {"b-master-2"}, {"b-worker-1", "b-worker-2"},
                          {"c-master-1"}], out(r)
    for host, root in roots.items():
        now = {str(rec["name"]): rec for rec in check(root)}
        for name, serial in before[host].items():
            assert now[name]["serial"] != serial, (host, name)
            assert int(now[name]["residualTime"]) > 300 * 86400, (host, name)  # type: ignore[call-overload]
        assert not due(root), host

    trees = {h: tree_state(root) for h, root in roots.items()}
    again = fleet(tmp_path, inventory, "-e", "kubecert_worker_batch=2")
    assert again.returncode == 0, out(again)
    rc = recap(again)
    assert set(rc) == set(roots), out(again)  # the plan runs on the fleet's hosts (no localhost in the inventory)
    assert all(c["changed"] == 0 and c["failed"] == 0 for c in rc.values()), out(again)
    assert {h: tree_state(root) for h, root in roots.items()} == trees


def test_fleet_two_clusters_at_once(tmp_path: Path) -> None:
    roots = make_fleet(tmp_path)
    inventory = write_inventory(tmp_path, roots)
    r = fleet(tmp_path, inventory, "-e", "kubecert_parallel_clusters=2", "-e", "kubecert_worker_batch=3")
    assert r.returncode == 0, out(r)
    # a and b together: one etcd host and one control plane of each per batch, then up to three
    # workers of each; c after both are done
    assert batches(r) == [{"a-etcd-1"}, {"a-etcd-2"}, {"a-master-1", "b-master-1"}, {"a-master-2", "b-master-2"},
                          {"a-worker-1", "a-worker-2", "a-worker-3", "b-worker-1", "b-worker-2"},
                          {"c-master-1"}], out(r)
    assert not any(due(root) for root in roots.values())


def test_the_first_failure_stops_the_fleet(tmp_path: Path) -> None:
    """b-master-1's CA key is damaged: kubecert refuses to renew there (changing nothing), the play
    fails that host, and any_errors_fatal stops the fleet: cluster a done, the rest untouched."""
    roots = make_fleet(tmp_path)
    inventory = write_inventory(tmp_path, roots)
    ca_key = roots["b-master-1"] / "etc/kubernetes/pki/ca.key"
    ca_key.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    trees = {h: tree_state(root, skip=[STATE]) for h, root in roots.items()}

    r = fleet(tmp_path, inventory, "-e", "kubecert_worker_batch=2")
    assert r.returncode != 0, out(r)
    assert re.search(r"^fatal: \[b-master-1\]", r.stdout, re.M), out(r)
    assert batches(r)[-1] == {"b-master-1"}, out(r)
    rc = recap(r)
    assert rc["b-master-1"]["failed"] == 1, out(r)
    for host, root in roots.items():
        if host.startswith("a-"):
            assert not due(root), host  # cluster a finished before b began
        else:
            assert tree_state(root, skip=[STATE]) == trees[host], host  # b-master-1 included: nothing written
            assert rc.get(host, {}).get("changed", 0) == 0, (host, out(r))


def refused(r: subprocess.CompletedProcess[str]) -> str:
    """The refusal's message (the play's assert), after checking the fleet stopped before any node."""
    assert r.returncode != 0, out(r)
    assert batches(r) == [], out(r)
    assert "PLAY [Renew the fleet" not in r.stdout, out(r)
    m = re.search(r"^fatal: \[[^\]]+\]: FAILED! => (\{.*\})$", r.stdout, re.M)
    assert m, out(r)
    msg = str(json.loads(m.group(1))["msg"])
    assert msg.startswith("refused: ") and msg.endswith("nothing was renewed"), msg
    return msg


def test_limit_plans_only_the_limited_hosts(tmp_path: Path) -> None:
    """--limit: the batches are made of the limited hosts (serial's sizes fit the hosts that run); the
    plan runs without localhost in the limit or in the inventory. Check mode: nothing is written."""
    roots = make_fleet(tmp_path)
    inventory = write_inventory(tmp_path, roots)
    trees = {h: tree_state(root) for h, root in roots.items()}
    limit = "localhost,a-etcd-1,a-worker-1,a-worker-2,a-worker-3,b-master-1,b-master-2"
    r = fleet(tmp_path, inventory, "--check", "-e", "kubecert_worker_batch=2", "--limit", limit)
    assert r.returncode == 0, out(r)
    assert batches(r) == [{"a-etcd-1"}, {"a-worker-1", "a-worker-2"}, {"a-worker-3"},
                          {"b-master-1"}, {"b-master-2"}], out(r)
    assert set(recap(r)) == set(limit.split(",")) - {"localhost"}, out(r)

    # two clusters at a time over what the limit leaves: a's etcd-2 and b's masters pair up, c after
    r = fleet(tmp_path, inventory, "--check", "-e", "kubecert_parallel_clusters=2", "--limit", "a-etcd-2,b-master-*,c-*")
    assert r.returncode == 0, out(r)
    assert batches(r) == [{"a-etcd-2"}, {"b-master-1"}, {"b-master-2"}, {"c-master-1"}], out(r)
    assert {h: tree_state(root) for h, root in roots.items()} == trees


def test_limit_to_one_cluster_renews_it_in_order(tmp_path: Path) -> None:
    """--limit cluster_b (no localhost in it): b is renewed, control planes one at a time then its workers,
    and nothing else is touched."""
    roots = make_fleet(tmp_path)
    inventory = write_inventory(tmp_path, roots)
    trees = {h: tree_state(root) for h, root in roots.items()}
    r = fleet(tmp_path, inventory, "--limit", "cluster_b")
    assert r.returncode == 0, out(r)
    assert batches(r) == [{"b-master-1"}, {"b-master-2"}, {"b-worker-1", "b-worker-2"}], out(r)
    assert set(recap(r)) == {h for h in roots if h.startswith("b-")}, out(r)
    for host, root in roots.items():
        if host.startswith("b-"):
            assert not due(root), host
        else:
            assert tree_state(root) == trees[host], host


def test_a_host_in_two_cluster_groups_is_refused(tmp_path: Path) -> None:
    """A child group of cluster_b that also matches the prefix, and one host listed in two clusters: the
    plan is refused, naming each such host and its groups, before any node is renewed."""
    roots = make_fleet(tmp_path)
    inventory = write_inventory(tmp_path, roots)

    def edit(groups: Dict[str, Any]) -> None:
        b = groups["cluster_b"]["hosts"]
        groups["cluster_b"] = {"hosts": {h: v for h, v in b.items() if "worker" not in h},
                               "children": {"cluster_b_workers": {"hosts": {h: v for h, v in b.items() if "worker" in h}}}}
        groups["cluster_a"]["hosts"]["c-master-1"] = None

    edit_inventory(inventory, edit)
    trees = {h: tree_state(root) for h, root in roots.items()}
    msg = refused(fleet(tmp_path, inventory, "-e", "kubecert_worker_batch=2"))
    assert "3 host(s) in more than one cluster group" in msg, msg
    for shared in ("b-worker-1 (cluster_b, cluster_b_workers)", "b-worker-2 (cluster_b, cluster_b_workers)",
                   "c-master-1 (cluster_a, cluster_c)"):
        assert shared in msg, msg
    assert {h: tree_state(root) for h, root in roots.items()} == trees

    # only the run's hosts count: with c out of the run, c-master-1 is not planned twice (the workers' child group still is)
    msg = refused(fleet(tmp_path, inventory, "--check", "--limit", "cluster_b"))
    assert "2 host(s)" in msg and "c-master-1" not in msg, msg


def test_kube_nodes_outside_every_cluster_are_refused_and_other_hosts_left_out(tmp_path: Path) -> None:
    """A kube node in no cluster group (it would never be renewed) refuses the plan; a host of a cluster
    group in none of etcd / kube_control_plane / kube_node (a bastion) is left out, and the plan says so."""
    roots = make_fleet(tmp_path)
    inventory = write_inventory(tmp_path, roots)

    def orphan(groups: Dict[str, Any]) -> None:
        del groups["cluster_a"]["hosts"]["a-worker-3"]
        del groups["cluster_b"]["hosts"]["b-master-2"]

    edit_inventory(inventory, orphan)
    trees = {h: tree_state(root) for h, root in roots.items()}
    msg = refused(fleet(tmp_path, inventory, "-e", "kubecert_worker_batch=2"))
    assert "2 host(s) of etcd / kube_control_plane / kube_node in no cluster group" in msg, msg
    assert re.search(r": (a-worker-3, b-master-2|b-master-2, a-worker-3); ", msg), msg
    assert {h: tree_state(root) for h, root in roots.items()} == trees
    # a kube node in no cluster but out of the run (--limit) is no reason to refuse the run
    r = fleet(tmp_path, inventory, "--check", "--limit", "cluster_c")
    assert r.returncode == 0, out(r)
    assert batches(r) == [{"c-master-1"}], out(r)

    inventory = write_inventory(tmp_path, roots)
    edit_inventory(inventory, lambda groups: groups["cluster_b"]["hosts"].update({"b-bastion": None}))
    r = fleet(tmp_path, inventory, "--check", "-e", "kubecert_worker_batch=2")
    assert r.returncode == 0, out(r)
    assert "not renewed, in none of etcd / kube_control_plane / kube_node: cluster_b: b-bastion" in r.stdout, out(r)
    assert batches(r) == [{"a-etcd-1"}, {"a-etcd-2"}, {"a-master-1"}, {"a-master-2"},
                          {"a-worker-1", "a-worker-2"}, {"a-worker-3"},
                          {"b-master-1"}, {"b-master-2"}, {"b-worker-1", "b-worker-2"},
                          {"c-master-1"}], out(r)
    # a run with no kube node of any cluster in it is refused rather than doing nothing
    msg = refused(fleet(tmp_path, inventory, "--check", "--limit", "b-bastion"))
    assert "hold no host of etcd / kube_control_plane / kube_node in a cluster group" in msg, msg


def test_worker_batch_as_a_percentage_and_sizes_below_one_refused(tmp_path: Path) -> None:
    """kubecert_worker_batch=50%: ceil(50% of each cluster's workers), a's 3 -> 2, b's 2 -> 1; 10% -> 1
    (at least one). 0, 0%, abc and kubecert_parallel_clusters=0 are refused before any node."""
    roots = make_fleet(tmp_path)
    inventory = write_inventory(tmp_path, roots)
    r = fleet(tmp_path, inventory, "--check", "-e", "kubecert_parallel_clusters=2", "-e", "kubecert_worker_batch=50%")
    assert r.returncode == 0, out(r)
    assert batches(r) == [{"a-etcd-1"}, {"a-etcd-2"}, {"a-master-1", "b-master-1"}, {"a-master-2", "b-master-2"},
                          {"a-worker-1", "a-worker-2", "b-worker-1"}, {"a-worker-3", "b-worker-2"},
                          {"c-master-1"}], out(r)
    r = fleet(tmp_path, inventory, "--check", "-e", "kubecert_worker_batch=10%", "--limit", "cluster_a")
    assert r.returncode == 0, out(r)
    assert batches(r) == [{"a-etcd-1"}, {"a-etcd-2"}, {"a-master-1"}, {"a-master-2"},
                          {"a-worker-1"}, {"a-worker-2"}, {"a-worker-3"}], out(r)

    trees = {h: tree_state(root) for h, root in roots.items()}
    for value in ("0", "0%", "-1", "abc", "2.5"):
        msg = refused(fleet(tmp_path, inventory, "-e", f"kubecert_worker_batch={value}"))
        assert "kubecert_worker_batch must be a whole number >= 1 or a percentage > 0" in msg, msg
        assert f"it is {json.dumps(value)}" in msg, msg
    for value in ("0", "-2", "all"):
        msg = refused(fleet(tmp_path, inventory, "-e", f"kubecert_parallel_clusters={value}"))
        assert f"kubecert_parallel_clusters must be a whole number >= 1, it is {json.dumps(value)}" in msg, msg
    assert {h: tree_state(root) for h, root in roots.items()} == trees
