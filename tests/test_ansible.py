"""The Ansible collection kubecert.pki (ansible_collections/kubecert/pki) against the network-namespace
lab (tests/netlab.py): ansible-core runs in the operator namespace (``ip netns exec kc-op-...``) and
reaches each host's own sshd with the lab's key and known_hosts, as an operator's Ansible would.

The single-file build (scripts/build-dist.sh) is not used here: on the nodes ``rolling_renew_bin`` is a
two-line wrapper script that runs the installed package (``python -m kubecert``), and the hosts'
Python is this interpreter (the lab's hosts share this machine's file system). The role's install
step is tested on its own with a stand-in file and its SHA256SUMS.

What runs: with the cluster not started (``netlab(..., running=False)``), a check play, a renew play in
check mode, a renew play (without restart) twice, and the role's checksum-verified install; with the
cluster running (real etcd, kube-apiserver, ... behind each sshd), the collection's rolling_renew
playbook with master-2's etcd made to fail at its next start: the play stops there, master-2 rolled
back, master-3 untouched. The collection's static checks (build, syntax, ansible-lint, ansible-test
sanity) are in test_collection.py, the fleet playbook in test_ansible_fleet.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

pytest.importorskip("ansible", reason="ansible-core is not installed (pip install ansible-core)")

from ansiblerun import BIN, REPO, ansible_env, kubecert_wrapper, out  # noqa: E402
from netlab import NAMES, NetLab, lab_problem, netlab, tree_state  # noqa: E402

pytestmark = pytest.mark.timeout(600)

COLLECTION = REPO / "ansible_collections" / "kubecert" / "pki"
PLAYBOOK = BIN / "ansible-playbook"
KUBECERT_STATE = "etc/kubernetes/.kubecert"
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\s+skipped=(\d+)", re.M)


@pytest.fixture(scope="module")
def lab_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetLab]:
    """The lab's hosts (three masters, one worker), network and sshd; no cluster running."""
    why = lab_problem()
    if why:
        pytest.fail(f"the namespaced lab cannot run here: {why}", pytrace=False)
    with netlab(tmp_path_factory.mktemp("ansible-lab"), workers=1, running=False) as lab:
        yield lab


def wrapper(lab: NetLab) -> Path:
    """``rolling_renew_bin`` on the nodes: runs the installed package (the single file is not built here)."""
    return kubecert_wrapper(lab.dir)


def inventory(lab: NetLab, extra: str = "") -> Path:
    """kubespray's groups over the lab's hosts, with their roots, the lab's key and known_hosts."""
    path = lab.dir / "ansible-inventory.ini"
    masters = "\n".join(f"{h.name} ansible_host={h.address} rolling_renew_root={h.root}" for h in lab.masters)
    workers = "\n".join(f"{h.name} ansible_host={h.address} rolling_renew_root={h.root}" for h in lab.workers)
    path.write_text(f"""[kube_control_plane]
{masters}

[etcd:children]
kube_control_plane

[kube_node]
{workers}

[all:vars]
ansible_user=root
ansible_ssh_private_key_file={lab.client_key}
ansible_ssh_common_args='-o UserKnownHostsFile={lab.known_hosts} -o StrictHostKeyChecking=yes'
ansible_python_interpreter={sys.executable}
rolling_renew_bin={wrapper(lab)}
{extra}
""")
    return path


def playbook(lab: NetLab, name: str, text: str) -> Path:
    path = lab.dir / name
    path.write_text(text)
    return path


def _control_dir(lab: NetLab) -> str:
    """A short directory for ssh's ControlPath sockets: a Unix socket path has at most 107 bytes, and
    pytest's temporary directories under xdist are deeper than that leaves room for."""
    cp = lab.dir / "ansible-cp"
    if not cp.exists():
        short = Path(tempfile.mkdtemp(prefix="kca-", dir="/tmp"))
        cp.symlink_to(short)
    return os.readlink(cp)


def play(lab: NetLab, book: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """ansible-playbook from the operator namespace, five forks, over the lab's sshd."""
    env = ansible_env(lab.dir, ANSIBLE_SSH_CONTROL_PATH_DIR=_control_dir(lab), ANSIBLE_SSH_RETRIES="2",
                      PATH=f"{BIN}:/usr/bin:/bin:/usr/sbin:/sbin")
    return lab.op.run([str(PLAYBOOK), "-i", str(inventory(lab)), "-f", "5", str(book), *args], timeout=timeout,
                      env=env)


def recap(r: subprocess.CompletedProcess[str]) -> Dict[str, Dict[str, int]]:
    return {m.group(1): {"ok": int(m.group(2)), "changed": int(m.group(3)), "unreachable": int(m.group(4)),
                         "failed": int(m.group(5))} for m in RECAP.finditer(r.stdout)}


def all_trees(lab: NetLab) -> Dict[str, Dict[str, str]]:
    return {h.name: tree_state(h.root) for h in lab.hosts.values()}


def local_check(root: Path) -> Dict[str, object]:
    r = subprocess.run([sys.executable, "-m", "kubecert", "check", "--root", str(root), "-o", "json"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode in (0, 1, 2), r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def without_time(records: List[Dict[str, object]]) -> List[Dict[str, object]]:
    return [{k: v for k, v in rec.items() if k != "residualTime"} for rec in records]


# ------------------------------------------------------------------------------------------ no cluster running


def test_check_play_returns_the_facts(lab_files: NetLab) -> None:
    facts = lab_files.dir / "facts"
    facts.mkdir()
    book = playbook(lab_files, "check.yml", f"""
- hosts: all
  gather_facts: false
  tasks:
    - kubecert.pki.kubecert_check:
        root: "{{{{ rolling_renew_root }}}}"
        kubecert_bin: "{{{{ rolling_renew_bin }}}}"
      register: pki
    - ansible.builtin.copy:
        content: "{{{{ pki | to_json }}}}"
        dest: "{facts}/{{{{ inventory_hostname }}}}.json"
        mode: "0600"
      delegate_to: localhost
""")
    before = all_trees(lab_files)
    r = play(lab_files, book)
    assert r.returncode == 0, out(r)
    rc = recap(r)
    assert sorted(rc) == sorted(lab_files.hosts), out(r)
    for name, h in lab_files.hosts.items():
        got = json.loads((facts / f"{name}.json").read_text())
        want = local_check(h.root)
        assert got["changed"] is False
        assert without_time(got["certificates"]) == without_time(want["certificates"]), name  # type: ignore[arg-type]
        assert without_time(got["extra_certificates"]) == without_time(want["extraCertificates"]), name  # type: ignore[arg-type]
        assert got["findings"] == want["findings"], name
        assert got["check_exit_code"] == 2, name  # the lab's leaves expire in a day: critical
        assert "kubelet-server" in got["expiring"], (name, got["expiring"])
        if h.role != "worker":
            assert {"apiserver", "etcd-server", "admin.conf"} <= set(got["expiring"]), (name, got["expiring"])
    assert all_trees(lab_files) == before, "a check changed a node"


RENEW = """
- hosts: all
  gather_facts: false
  tasks:
    - kubecert.pki.kubecert_renew:
        root: "{{ rolling_renew_root }}"
        kubecert_bin: "{{ rolling_renew_bin }}"
        days: 200
      register: renewal
    - ansible.builtin.copy:
        content: "{{ renewal | to_json }}"
        dest: "OUT/{{ inventory_hostname }}.json"
        mode: "0600"
      delegate_to: localhost
      check_mode: false
"""


def test_check_mode_is_the_plan_and_changes_nothing(lab_files: NetLab) -> None:
    result = lab_files.dir / "plan"
    result.mkdir()
    book = playbook(lab_files, "plan.yml", RENEW.replace("OUT", str(result)))
    before = all_trees(lab_files)
    r = play(lab_files, book, "--check", "--diff")
    assert r.returncode == 0, out(r)
    assert all_trees(lab_files) == before, "check mode changed a file"
    # each node: the renewal that would happen, and the result file written on the controller
    assert {n: c["changed"] for n, c in recap(r).items()} == {n: 2 for n in lab_files.hosts}, out(r)
    for name in NAMES:
        plan = json.loads((result / f"{name}.json").read_text())
        assert plan["changed"] is True
        assert {"apiserver", "etcd-peer", "admin.conf", "kubelet.conf"} <= {p["name"] for p in plan["plan"]}
        # kubecert's own dry run (renew --dry-run -o json) made the plan's NotAfter
        assert (plan["renewal"]["result"], plan["renewal"]["dryRun"]) == ("planned", True)
        planned = {i["name"]: i["newNotAfter"] for i in plan["renewal"]["items"] if i["action"] == "renew"}
        assert {p["name"]: p["new_not_after"] for p in plan["plan"]} == {n: planned[n] for n in planned}
        now = {c["name"]: c["serial"] for c in local_check(lab_files[name].root)["certificates"]}  # type: ignore[attr-defined]
        assert plan["diff"]["before"]["apiserver"]["serial"] == now["apiserver"]
        assert plan["diff"]["after"]["apiserver"]["serial"] == "(new)"
    worker = json.loads((result / "worker-1.json").read_text())
    assert [p["name"] for p in worker["plan"]] == ["kubelet-server"]
    assert worker["not_renewable"] == [{"name": "kubelet.conf", "reason": "its CA key (ca) is not on this node"}]
    assert '"serial": "(new)"' in r.stdout, "diff mode shows the new serial"


def test_renew_play_renews_every_node_and_a_second_run_changes_nothing(lab_files: NetLab) -> None:
    result = lab_files.dir / "renewed"
    result.mkdir()
    book = playbook(lab_files, "renew.yml", RENEW.replace("OUT", str(result)))
    old = {h.name: local_check(h.root) for h in lab_files.hosts.values()}
    r = play(lab_files, book, "--diff")
    assert r.returncode == 0, out(r)
    assert all(c["changed"] == 2 and c["failed"] == 0 for c in recap(r).values()), out(r)
    for name, h in lab_files.hosts.items():
        res = json.loads((result / f"{name}.json").read_text())
        new = local_check(h.root)
        renewed = set(res["renewed"])
        assert renewed == {p["name"] for p in res["plan"]}, name
        old_serials = {c["name"]: c["serial"] for c in old[name]["extraCertificates"] + old[name]["certificates"]}  # type: ignore[operator]
        for rec in new["certificates"] + new["extraCertificates"]:  # type: ignore[operator]
            if rec["name"] in renewed:
                assert rec["serial"] != old_serials[rec["name"]], (name, rec["name"])
                assert rec["residualTime"] > 199 * 86400, (name, rec["name"])
                assert res["after"][rec["name"]]["serial"] == rec["serial"]
        if h.role != "worker":
            assert len(renewed) >= 10, (name, renewed)
            assert (h.root / KUBECERT_STATE / "audit.log").is_file()
    trees = all_trees(lab_files)
    again = play(lab_files, book)
    assert again.returncode == 0, out(again)
    assert {n: c["changed"] for n, c in recap(again).items()} == {n: 1 for n in lab_files.hosts}, out(again)
    # the only change is the result file written on the controller: the nodes' trees are as they were
    assert all_trees(lab_files) == trees
    for name in lab_files.hosts:
        res = json.loads((result / f"{name}.json").read_text())
        assert (res["changed"], res["renewed"], res["plan"]) == (False, [], []), name


def test_role_installs_the_build_checksum_verified(lab_files: NetLab) -> None:
    dist = lab_files.dir / "dist"
    dist.mkdir()
    build = dist / "kubecert-0.0.0-test-linux-x86_64"  # a stand-in for the single file: the wrapper
    shutil.copy(wrapper(lab_files), build)

    def sums() -> None:
        (dist / "SHA256SUMS").write_text(f"{hashlib.sha256(build.read_bytes()).hexdigest()}  {build.name}\n")

    sums()
    nodes = lab_files.dir / "node-bin"
    for name in lab_files.hosts:
        (nodes / name).mkdir(parents=True)
    book = playbook(lab_files, "install.yml", f"""
- hosts: all
  gather_facts: false
  vars:
    rolling_renew_dist_file: {build}
    rolling_renew_bin: "{nodes}/{{{{ inventory_hostname }}}}/kubecert"
  tasks:
    - ansible.builtin.include_role:
        name: kubecert.pki.rolling_renew
        tasks_from: install.yml
    - ansible.builtin.command:
        argv: ["{{{{ rolling_renew_bin }}}}", "--version"]
      changed_when: false
""")
    r = play(lab_files, book)
    assert r.returncode == 0, out(r)
    assert {n: c["changed"] for n, c in recap(r).items()} == {n: 1 for n in lab_files.hosts}, out(r)
    for name in lab_files.hosts:
        assert (nodes / name / "kubecert").read_bytes() == build.read_bytes()
        assert (nodes / name / "kubecert").stat().st_mode & 0o777 == 0o755
    again = play(lab_files, book)  # the same version everywhere: nothing copied
    assert {n: c["changed"] for n, c in recap(again).items()} == {n: 0 for n in lab_files.hosts}, out(again)
    (nodes / "master-2" / "kubecert").write_text("#!/bin/sh\necho another version\n")
    third = play(lab_files, book)  # another version on one node: that one replaced
    assert {n: c["changed"] for n, c in recap(third).items()} == {n: int(n == "master-2") for n in lab_files.hosts}
    assert (nodes / "master-2" / "kubecert").read_bytes() == build.read_bytes()
    # the same build, but another user's and writable by all: put back as root's 0755
    os.chown(nodes / "master-1" / "kubecert", 65534, 65534)
    (nodes / "master-1" / "kubecert").chmod(0o777)
    fourth = play(lab_files, book)
    assert {n: c["changed"] for n, c in recap(fourth).items()} == {n: int(n == "master-1") for n in lab_files.hosts}
    st = (nodes / "master-1" / "kubecert").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o755)
    # a directory another user can write is refused: the file could be swapped between runs
    (nodes / "master-3").chmod(0o777)
    loose = play(lab_files, book)
    assert loose.returncode != 0 and re.search(r"fatal: \[master-3\].*refusing to run it", loose.stdout), out(loose)
    (nodes / "master-3").chmod(0o755)
    # check mode: a node holding another kubecert is told so, and that file is never run
    marker = lab_files.dir / "unverified-kubecert-ran"
    (nodes / "master-2" / "kubecert").write_text(f"#!/bin/sh\ntouch {marker}\n")
    (nodes / "master-2" / "kubecert").chmod(0o755)
    role = playbook(lab_files, "role-check.yml", f"""
- hosts: all
  gather_facts: false
  vars:
    rolling_renew_dist_file: {build}
    rolling_renew_bin: "{nodes}/{{{{ inventory_hostname }}}}/kubecert"
    rolling_renew_restart: false
  roles:
    - kubecert.pki.rolling_renew
""")
    checked = play(lab_files, role, "--check")
    assert checked.returncode == 0, out(checked)
    assert not marker.exists(), "check mode ran an unverified kubecert"
    assert "kubecert on master-2 is absent or not the verified build" in checked.stdout, out(checked)
    assert (nodes / "master-2" / "kubecert").read_text().startswith("#!/bin/sh\ntouch"), "check mode copied"
    # SHA256SUMS as `sha256sum dist/*` writes it (a directory prefix), in capitals: still the build's line
    (dist / "SHA256SUMS").write_text(f"{hashlib.sha256(build.read_bytes()).hexdigest().upper()}  dist/{build.name}\n")
    fifth = play(lab_files, book)
    assert fifth.returncode == 0, out(fifth)
    assert (nodes / "master-2" / "kubecert").read_bytes() == build.read_bytes()
    # a relative path is refused (the lookup, the stat and the copy would each resolve it elsewhere)
    rel = play(lab_files, book, "-e", f"rolling_renew_dist_file={build.name}")
    assert rel.returncode != 0 and "must be absolute paths on the controller" in rel.stdout, out(rel)
    # a build that is not the one SHA256SUMS names is refused before anything is copied
    (nodes / "master-3" / "kubecert").unlink()
    build.write_text(build.read_text() + "# tampered\n")
    bad = play(lab_files, book)
    assert bad.returncode != 0, out(bad)
    assert "SHA256SUMS says" in bad.stdout, out(bad)
    assert not (nodes / "master-3" / "kubecert").exists()


# ------------------------------------------------------------------------------------------ the cluster running


@pytest.fixture
def lab_running(tmp_path: Path) -> Iterator[NetLab]:
    why = lab_problem()
    if why:
        pytest.fail(f"the namespaced lab cannot run here: {why}", pytrace=False)
    with netlab(tmp_path, running=True) as lab:
        yield lab


def test_rolling_renew_stops_at_a_node_that_fails_its_gate(lab_running: NetLab) -> None:
    """The collection's playbook, one control plane at a time, real components behind each sshd:
    master-1 renewed and restarted; master-2's etcd never comes back, its gate fails, kubecert rolls
    it back, and any_errors_fatal ends the run before master-3."""
    lab = lab_running
    trees = all_trees(lab)
    lab["master-2"].node.fail_start("etcd")
    book = COLLECTION / "playbooks" / "rolling_renew.yml"
    # etcd's gate: short for master-2 (never back), long enough for master-1's (must pass, on loaded cores)
    r = play(lab, book, "-e", "rolling_renew_install=false", "-e", '{"rolling_renew_gate_timeout": ["90", "etcd=30"]}',
             "-e", "rolling_renew_verify=false", timeout=500)
    rc = recap(r)
    assert r.returncode != 0, out(r)
    assert rc["master-1"]["failed"] == 0 and rc["master-1"]["changed"] >= 1, out(r)
    assert rc["master-2"]["failed"] == 1, out(r)
    assert "master-3" not in rc or rc["master-3"]["ok"] == 0, out(r)
    fatal = re.search(r"^fatal: \[master-2\]: FAILED! => (\{.*\})$", r.stdout, re.M)
    assert fatal, out(r)
    failed = json.loads(fatal.group(1))  # the module's result, kubecert's renew -o json document inside
    # etcd fails every start from now on, so after the restore too: kubecert exits 5, restored but not
    # healthy (exit 4 would be restored AND healthy)
    assert failed["rc"] == 5 and failed["rolled_back"] is False, failed
    assert failed["renewal"]["result"] == "failed", failed["renewal"]
    assert failed["renewal"]["restartsAfterRollback"], failed["renewal"]  # the backup was put back first
    etcd_step = next(s for s in failed["renewal"]["restarts"] if s["component"] == "etcd")
    assert etcd_step["ok"] is False, etcd_step
    assert tree_state(lab["master-2"].root, skip=[KUBECERT_STATE]) == \
        {k: v for k, v in trees["master-2"].items() if not k.startswith(KUBECERT_STATE)}, "master-2 rolled back"
    assert tree_state(lab["master-3"].root) == trees["master-3"], "master-3 untouched"
    assert tree_state(lab["master-1"].root) != trees["master-1"], "master-1 renewed"
