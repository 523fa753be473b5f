"""kubecert.pki.kubecert_restart on a running node: a lab master under the fake kubelet with real etcd,
kube-apiserver, kube-controller-manager and kube-scheduler (tests/fakenode: the container runtime and
systemd are stand-ins, behind the same adapters as on a real node). Ansible reaches it with the local
connection; kubecert on the "node" is the installed package, run in the node's environment (the
stand-ins' PATH), through a wrapper.

Check mode restarts nothing but refuses what a real run would; a restart returns each component's
restart and gate checks from `kubecert restart -o json` and the containers are new; a component that
never comes back fails the task with the failed check named.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

pytest.importorskip("ansible", reason="ansible-core is not installed (pip install ansible-core)")

from ansiblerun import kubecert_wrapper, module_result  # noqa: E402
from fakenode.fixture import FakeNode, NodePorts, lab_node, running_node, runtime_socket  # noqa: E402

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Tuple[Path, NodePorts, FakeNode]]:
    root, ports = lab_node(tmp_path / "lab")
    runtime_socket(root, "containerd")
    with running_node(root, tmp_path) as n:
        n.install_unit_file("kubelet")
        yield root, ports, n


def restart(tmp_path: Path, root: Path, n: FakeNode, *extra: str, **options: Any) -> Dict[str, Any]:
    """kubecert_restart on the node with ``options``, kubecert run in the node's environment; its result."""
    env = dict(n.env)
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    args = dict(root=str(root), kubecert_bin=str(kubecert_wrapper(tmp_path, env)), **options)
    return module_result(tmp_path, "kubecert.pki.kubecert_restart", args, *extra, timeout=400)


def stops(n: FakeNode) -> List[List[str]]:
    return [c for c in n.calls() if c[:2] == ["crictl", "stop"]]


def test_restart_module_check_mode_restart_and_a_failed_gate(node: Tuple[Path, NodePorts, FakeNode],
                                                             tmp_path: Path) -> None:
    root, _, n = node
    before = {c: n.container_id(c) for c in ("etcd", "kube-apiserver")}

    planned = restart(tmp_path, root, n, "--check", components=["etcd", "kube-apiserver"])
    assert planned["changed"] is True and planned.get("failed") is not True, planned
    assert [(s["component"], s["adapter"].split(" ")[0]) for s in planned["plan"]] == [
        ("etcd", "static-pod/crictl/container"), ("kube-apiserver", "static-pod/crictl/container")], planned
    # check mode refuses what the real run would: here a restart command without its component
    refused = restart(tmp_path, root, n, "--check", components=["etcd"], restart_command=["systemctl restart etcd"])
    assert refused["failed"] is True and refused["changed"] is False, refused
    assert "--restart-command" in refused["msg"] and "COMPONENT=COMMAND" in refused["msg"], refused["msg"]
    assert stops(n) == [] and {c: n.container_id(c) for c in before} == before, "check mode restarted something"

    done = restart(tmp_path, root, n, components=["etcd", "kube-apiserver"], gate_timeout=["90"])
    assert done.get("failed") is not True and done["changed"] is True, done
    assert [s["component"] for s in done["restarts"]] == ["etcd", "kube-apiserver"], done["restarts"]
    assert all(s["ok"] and s["gate"]["ok"] for s in done["restarts"]), done["restarts"]
    checks = {c["name"] for s in done["restarts"] for c in s["gate"]["checks"]}
    assert "served-cert" in checks, checks
    after = {c: n.container_id(c) for c in before}
    assert all(after[c] and after[c] != before[c] for c in before), (before, after)
    assert [s[2] for s in stops(n)] == [before["etcd"], before["kube-apiserver"]]

    n.fail_start("kube-apiserver")
    failed = restart(tmp_path, root, n, components=["kube-apiserver"], gate_timeout=["10"])
    assert failed["failed"] is True and failed["rc"] == 2 and failed["changed"] is True, failed
    assert "kube-apiserver failed its restart or health gate" in failed["msg"], failed["msg"]
    (step,) = failed["restarts"]
    assert step["component"] == "kube-apiserver" and step["ok"] is False, step
    assert not all(c["ok"] for c in step["gate"]["checks"]), step
