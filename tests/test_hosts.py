"""The cluster inventory: kubecert's YAML, Ansible INI and YAML (kubespray's samples), errors naming file and line."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import List, Optional

import pytest

from kubecert.errors import ConfigError
from kubecert.remote import hosts as hosts_module
from kubecert.remote.hosts import CP_GROUPS, ETCD_GROUPS, WORKER_GROUPS, Host, load_inventory


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def load(tmp_path: Path, name: str, text: str, cp_group: Optional[str] = None,
         etcd_group: Optional[str] = None, worker_group: Optional[str] = None) -> List[Host]:
    return load_inventory(write(tmp_path, name, text), cp_group=cp_group, etcd_group=etcd_group,
                          worker_group=worker_group)


def by_name(hosts: List[Host]) -> dict[str, Host]:
    return {h.name: h for h in hosts}


def error(tmp_path: Path, name: str, text: str, cp_group: Optional[str] = None,
          etcd_group: Optional[str] = None, worker_group: Optional[str] = None) -> str:
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError) as e:
        load_inventory(path, cp_group=cp_group, etcd_group=etcd_group, worker_group=worker_group)
    msg = str(e.value)
    assert msg.startswith(path + ":"), msg
    assert "\n" not in msg
    return msg[len(path):]


def test_group_names() -> None:
    assert CP_GROUPS == ("kube_control_plane", "control_plane", "masters", "kube-master", "kube_master")
    assert ETCD_GROUPS == ("etcd",)
    assert WORKER_GROUPS == ("kube_node", "workers", "kube-node")


# ---------------------------------------------------------------------------------------- kubecert format

KUBECERT = """
kind: KubecertInventory
defaults: {user: root, port: 22, key: ~/.ssh/id_ed25519, sudo: false, jump: bastion.example:2222}
hosts:
  - {name: master-1, address: 198.51.100.11, role: control-plane, user: ubuntu, sudo: true, root: /}
  - {name: etcd-1, address: 198.51.100.21, role: etcd}
  - name: master-2
    address: 198.51.100.12
    role: control-plane
    port: 2200
    key: null
    jump: null
    etcd_member: true
  - {name: etcd-2, address: "2001:db8::22", role: etcd, root: /mnt/rescue/}
"""


def test_kubecert_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/op")
    hosts = load(tmp_path, "cluster.yaml", KUBECERT)
    key = "/home/op/.ssh/id_ed25519"
    assert hosts == [
        Host("etcd-1", "198.51.100.21", "etcd", key=key, jump="bastion.example:2222", etcd_member=True),
        Host("etcd-2", "2001:db8::22", "etcd", key=key, jump="bastion.example:2222", root="/mnt/rescue",
             etcd_member=True),
        Host("master-1", "198.51.100.11", "control-plane", user="ubuntu", key=key, jump="bastion.example:2222",
             sudo=True),
        Host("master-2", "198.51.100.12", "control-plane", port=2200, etcd_member=True),
    ]


def test_kubecert_without_kind_or_defaults(tmp_path: Path) -> None:
    hosts = load(tmp_path, "c.yml", """
        hosts:
          - {name: cp, address: cp.example, role: control-plane}
        """)
    assert hosts == [Host("cp", "cp.example", "control-plane")]


def test_kubecert_workers_after_control_planes_in_file_order(tmp_path: Path) -> None:
    hosts = load(tmp_path, "cluster.yaml", """
        kind: KubecertInventory
        defaults: {user: ops, sudo: true}
        hosts:
          - {name: w-b, address: 10.0.1.2, role: worker, port: 2202}
          - {name: cp-1, address: 10.0.0.1, role: control-plane, etcd_member: true}
          - {name: w-a, address: 10.0.1.1, role: worker, etcd_member: false, root: /mnt/w-a}
          - {name: etcd-1, address: 10.0.2.1, role: etcd}
          - {name: w-c, address: 10.0.1.3, role: worker, user: root, sudo: false}
        """)
    assert hosts == [
        Host("etcd-1", "10.0.2.1", "etcd", user="ops", sudo=True, etcd_member=True),
        Host("cp-1", "10.0.0.1", "control-plane", user="ops", sudo=True, etcd_member=True),
        Host("w-b", "10.0.1.2", "worker", user="ops", port=2202, sudo=True),
        Host("w-a", "10.0.1.1", "worker", user="ops", sudo=True, root="/mnt/w-a"),
        Host("w-c", "10.0.1.3", "worker"),
    ]


def test_kubecert_worker_refuses_etcd_member(tmp_path: Path) -> None:
    msg = error(tmp_path, "cluster.yaml", """
        kind: KubecertInventory
        hosts:
          - {name: cp, address: 10.0.0.1, role: control-plane}
          - name: w1
            address: 10.0.1.1
            role: worker
            etcd_member: true
        """)
    assert msg.startswith(":7: host w1: a worker runs no etcd member"), msg
    # any true spelling, in a flow mapping
    msg = error(tmp_path, "cluster.yaml", """
        kind: KubecertInventory
        hosts:
          - {name: cp, address: 10.0.0.1, role: control-plane, etcd_member: true}
          - {name: w1, address: 10.0.1.1, role: worker, etcd_member: yes}
        """)
    assert msg.startswith(":4: host w1: a worker runs no etcd member"), msg


def test_kubecert_missing_role_names_worker(tmp_path: Path) -> None:
    msg = error(tmp_path, "c.yaml", "hosts:\n  - {name: a, address: 10.0.0.1}\n")
    assert msg == ":2: host a: no role (control-plane, etcd or worker)"
    msg = error(tmp_path, "c.yaml", "hosts:\n  - {name: a, address: 10.0.0.1, role: node}\n")
    assert msg == ":2: host a: unknown role 'node' (control-plane, etcd or worker)"


# ---------------------------------------------------------------------------------------- Ansible INI

# kubespray's inventory/sample/inventory.ini before v2.24: hosts in [all], stacked etcd on the masters
KUBESPRAY_INI = """
# ## Configure 'ip' variable to bind kubernetes services on a
# ## different ip than the default iface
# ## We should set etcd_member_name for etcd cluster. The node that is not a etcd member do not need to set the value,
# ## or can set the empty string value.
[all]
node1 ansible_host=95.54.0.12  ip=10.3.0.1 etcd_member_name=etcd1
node2 ansible_host=95.54.0.13  ip=10.3.0.2 etcd_member_name=etcd2
node3 ansible_host=95.54.0.14  ip=10.3.0.3 etcd_member_name=etcd3
node4 ansible_host=95.54.0.15  ip=10.3.0.4 etcd_member_name=
node5 ansible_host=95.54.0.16  # ip=10.3.0.5 etcd_member_name=
node6 ansible_host=95.54.0.17  # ip=10.3.0.6 etcd_member_name=

# ## configure a bastion host if your nodes are not directly reachable
# [bastion]
# bastion ansible_host=x.x.x.x ansible_user=some_user

[all:vars]
ansible_user=ubuntu
ansible_become=true

[kube_control_plane]
node1
node2
node3

[etcd]
node1
node2
node3

[kube_node]
node2
node3
node4
node5
node6

[calico_rr]

[k8s_cluster:children]
kube_control_plane
kube_node
calico_rr
"""


def test_kubespray_ini(tmp_path: Path) -> None:
    hosts = load(tmp_path, "inventory.ini", KUBESPRAY_INI)
    # kube_node lists node2 and node3 too (schedulable masters): they stay control planes, listed once
    assert hosts == [
        Host(f"node{i}", f"95.54.0.1{i + 1}", "control-plane", user="ubuntu", sudo=True, etcd_member=True)
        for i in (1, 2, 3)
    ] + [
        Host(f"node{i}", f"95.54.0.1{i + 1}", "worker", user="ubuntu", sudo=True, etcd_member=False)
        for i in (4, 5, 6)
    ]


# kubespray's inventory/sample/inventory.ini since v2.24: etcd as children of the control plane
KUBESPRAY_INI_NEW = """
# This inventory describe a HA typology with stacked etcd (== same nodes as control plane)
# and 3 worker nodes
# See https://docs.ansible.com/ansible/latest/inventory_guide/intro_inventory.html
# for tips on building your # inventory

# Configure 'ip' variable to bind kubernetes services on a different ip than the default iface
# We should set etcd_member_name for etcd cluster. The node that are not etcd members do not need to set the value,
# or can set the empty string value.
[kube_control_plane]
node1 ansible_host=95.54.0.12  # ip=10.3.0.1 etcd_member_name=etcd1
node2 ansible_host=95.54.0.13  # ip=10.3.0.2 etcd_member_name=etcd2
node3 ansible_host=95.54.0.14  # ip=10.3.0.3 etcd_member_name=etcd3

[etcd:children]
kube_control_plane

[kube_node]
node4 ansible_host=95.54.0.15  # ip=10.3.0.4
node5 ansible_host=95.54.0.16  # ip=10.3.0.5
node6 ansible_host=95.54.0.17  # ip=10.3.0.6
"""


def test_kubespray_ini_etcd_children(tmp_path: Path) -> None:
    hosts = load(tmp_path, "inventory.ini", KUBESPRAY_INI_NEW)
    assert [(h.name, h.address, h.role, h.etcd_member) for h in hosts] == [
        ("node1", "95.54.0.12", "control-plane", True),
        ("node2", "95.54.0.13", "control-plane", True),
        ("node3", "95.54.0.14", "control-plane", True),
        ("node4", "95.54.0.15", "worker", False),
        ("node5", "95.54.0.16", "worker", False),
        ("node6", "95.54.0.17", "worker", False),
    ]
    assert all(h.user == "root" and h.port == 22 and not h.sudo and h.jump is None for h in hosts)


def test_ini_kube_node_with_masters_and_workers(tmp_path: Path) -> None:
    # workers listed before the control planes in the file, and in kube_node in another order than [all]
    hosts = load(tmp_path, "inventory.ini", """
        [all]
        wz ansible_host=10.0.1.26
        m1 ansible_host=10.0.0.1
        wa ansible_host=10.0.1.1 ansible_port=2201
        m2 ansible_host=10.0.0.2
        [kube_node]
        m2
        wa
        m1
        wz
        wm ansible_host=10.0.1.13
        [kube_control_plane]
        m1
        m2
        [etcd:children]
        kube_control_plane
        [kube_node:vars]
        ansible_user=node-admin
        """)
    assert [(h.name, h.address, h.role, h.etcd_member, h.port) for h in hosts] == [
        ("m1", "10.0.0.1", "control-plane", True, 22),
        ("m2", "10.0.0.2", "control-plane", True, 22),
        ("wz", "10.0.1.26", "worker", False, 22),  # file order: the first line naming each host
        ("wa", "10.0.1.1", "worker", False, 2201),
        ("wm", "10.0.1.13", "worker", False, 22),
    ]
    assert len({h.name for h in hosts}) == len(hosts)  # masters in kube_node are listed once
    assert {h.user for h in hosts} == {"node-admin"}  # every host here is in kube_node


def test_yaml_kube_node_with_masters_and_workers(tmp_path: Path) -> None:
    hosts = load(tmp_path, "hosts.yaml", """
        all:
          hosts:
            worker-b: {ansible_host: 10.0.1.2}
            master-1: {ansible_host: 10.0.0.1}
            worker-a: {ansible_host: 10.0.1.1}
            etcd-x: {ansible_host: 10.0.2.1}
          children:
            k8s_cluster:
              vars: {ansible_become: true}
              children:
                kube_control_plane:
                  hosts: {master-1: }
                kube_node:
                  hosts:
                    worker-a:
                    master-1:
                    worker-b:
            etcd:
              hosts: {etcd-x: , master-1: }
        """)
    assert [(h.name, h.address, h.role, h.etcd_member, h.sudo) for h in hosts] == [
        ("etcd-x", "10.0.2.1", "etcd", True, False),
        ("master-1", "10.0.0.1", "control-plane", True, True),
        ("worker-b", "10.0.1.2", "worker", False, True),
        ("worker-a", "10.0.1.1", "worker", False, True),
    ]


def test_default_worker_groups_in_order(tmp_path: Path) -> None:
    # the first of WORKER_GROUPS with hosts: an empty kube_node gives way to workers
    text = "[kube_control_plane]\ncp\n[kube_node]\n[workers]\nw1\n[kube-node]\nw2\n"
    assert [(h.name, h.role) for h in load(tmp_path, "hosts", text)] == [("cp", "control-plane"), ("w1", "worker")]
    # an inventory without any worker group has no workers
    assert [h.role for h in load(tmp_path, "hosts", "[masters]\nm\n[nodes]\nn\n")] == ["control-plane"]


def test_worker_group_option(tmp_path: Path) -> None:
    text = """
        [kube_control_plane]
        cp
        [kube_node]
        cp
        kn
        [compute]
        c1
        cp
        c2
        [gpu:children]
        compute
        [empty]
        """
    assert [(h.name, h.role) for h in load(tmp_path, "hosts", text, worker_group="compute")] == [
        ("cp", "control-plane"), ("c1", "worker"), ("c2", "worker")]
    assert [h.name for h in load(tmp_path, "hosts", text, worker_group="gpu")] == ["cp", "c1", "c2"]  # children
    assert error(tmp_path, "hosts", text, worker_group="nodes") == (
        ": no group 'nodes' (--worker-group); groups here: compute, empty, gpu, kube_control_plane, kube_node")
    assert error(tmp_path, "hosts", text, worker_group="empty") == ": no hosts in group empty (--worker-group)"
    # a kubecert inventory names each host's role
    assert "--worker-group" in error(tmp_path, "c.yaml", KUBECERT, worker_group="kube_node")


def test_worker_limit_is_separate_from_the_cluster_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hosts_module, "MAX_CLUSTER_HOSTS", 4)
    monkeypatch.setattr(hosts_module, "MAX_WORKER_HOSTS", 6)
    ini = "[kube_control_plane]\ncp[1:{cps}]\n[etcd]\ne1\n[kube_node]\ncp[1:{cps}]\nw[1:{workers}]\n"
    kubecert = "hosts:\n" + "".join(f"  - {{name: cp{i}, address: a, role: control-plane}}\n" for i in range(3)) + \
        "".join(f"  - {{name: w{i}, address: a, role: worker}}\n" for i in range(6))
    hosts = load(tmp_path, "ok", ini.format(cps=3, workers=6))  # 10 hosts: more than either limit alone
    assert [h.role for h in hosts].count("worker") == 6 and len(hosts) == 10
    assert len(load(tmp_path, "ok.yaml", kubecert)) == 9
    assert error(tmp_path, "w", ini.format(cps=3, workers=7)) == (
        ": 7 workers, more than 6 in one cluster; a wrong group or range?")
    assert error(tmp_path, "w.yaml", kubecert + "  - {name: w9, address: a, role: worker}\n") == (
        ": 7 workers, more than 6 in one cluster; a wrong group or range?")
    # control planes in kube_node count once, as control planes
    assert error(tmp_path, "c", ini.format(cps=4, workers=1)) == (
        ": 5 control-plane and etcd hosts, more than 4 hosts in one cluster; a wrong group or range?")


def test_real_limits(tmp_path: Path) -> None:
    assert hosts_module.MAX_CLUSTER_HOSTS < hosts_module.MAX_WORKER_HOSTS < hosts_module.MAX_INVENTORY_HOSTS
    many = hosts_module.MAX_WORKER_HOSTS
    hosts = load(tmp_path, "big", f"[kube_control_plane]\ncp[1:3]\n[kube_node]\nw[1:{many}]\n")
    assert len(hosts) == many + 3 and hosts[-1] == Host(f"w{many}", f"w{many}", "worker")
    assert error(tmp_path, "too-many", f"[kube_control_plane]\ncp\n[kube_node]\nw[0:{many}]\n").startswith(
        f": {many + 1} workers, more than {many} in one cluster")


def test_huge_groups_are_refused_quickly(tmp_path: Path) -> None:
    import time

    half = hosts_module.MAX_INVENTORY_HOSTS // 2 - 10
    start = time.monotonic()
    assert error(tmp_path, "cps", f"[kube_control_plane]\ncp[1:{half}]\n[etcd]\ne[1:{half}]\n").startswith(
        f": {2 * half} control-plane and etcd hosts, more than")
    assert error(tmp_path, "workers", f"[kube_control_plane]\ncp\n[kube_node]\nw[1:{2 * half}]\n").startswith(
        f": {2 * half} workers, more than")
    assert time.monotonic() - start < 10  # counted before any per-host work (was quadratic: 30 s and more)


def test_ini_external_etcd_hosts_come_first(tmp_path: Path) -> None:
    hosts = load(tmp_path, "hosts", """
        [masters]
        master-1 ansible_host=198.51.100.11
        master-2 ansible_host=198.51.100.12

        [etcd]
        etcd-b ansible_host=198.51.100.22
        etcd-a ansible_host=198.51.100.21
        """)
    assert [(h.name, h.role, h.etcd_member) for h in hosts] == [
        ("etcd-b", "etcd", True), ("etcd-a", "etcd", True),
        ("master-1", "control-plane", False), ("master-2", "control-plane", False),
    ]


def test_ini_mixed_etcd_listed_once(tmp_path: Path) -> None:
    hosts = load(tmp_path, "hosts.ini", """
        [kube_control_plane]
        cp1
        cp2
        [etcd]
        ext1
        cp2
        """)
    assert [(h.name, h.role, h.etcd_member) for h in hosts] == [
        ("ext1", "etcd", True), ("cp1", "control-plane", False), ("cp2", "control-plane", True),
    ]
    assert [h.address for h in hosts] == ["ext1", "cp1", "cp2"]  # the inventory hostname by default


def test_ini_legacy_group_and_named_groups(tmp_path: Path) -> None:
    text = """
        [kube-master]
        old1 ansible_ssh_host=10.0.0.1 ansible_ssh_port=2222 ansible_ssh_user=core
        [controllers]
        c1
        [etcd-cluster]
        e1
        [etcd]
        old1
        """
    assert load(tmp_path, "legacy", text) == [
        Host("old1", "10.0.0.1", "control-plane", user="core", port=2222, etcd_member=True)]
    hosts = load(tmp_path, "named", text, cp_group="controllers", etcd_group="etcd-cluster")
    assert [(h.name, h.role, h.etcd_member) for h in hosts] == [("e1", "etcd", True), ("c1", "control-plane", False)]


def test_ini_first_group_with_hosts_wins(tmp_path: Path) -> None:
    hosts = load(tmp_path, "hosts", """
        [kube_control_plane]
        [masters]
        m1
        [kube_master]
        other
        """)
    assert [h.name for h in hosts] == ["m1"]


def test_ini_syntax(tmp_path: Path) -> None:
    hosts = load(tmp_path, "hosts", """
        ; a comment
        ungrouped-host ansible_host=10.9.9.9
        [kube_control_plane]   # trailing comment
        cp1:2201 ansible_ssh_private_key_file="/keys/cp 1.pem" ansible_become=True
        cp2 ansible_host=cp2.example ansible_port=2202   # ip=10.0.0.2
        [kube_control_plane:vars]
        ansible_user = admin
        kubecert_root = "/srv/node#1"
        """)
    assert hosts == [
        Host("cp1", "cp1", "control-plane", user="admin", port=2201, key="/keys/cp 1.pem", sudo=True,
             root="/srv/node#1"),
        Host("cp2", "cp2.example", "control-plane", user="admin", port=2202, root="/srv/node#1"),
    ]


def test_ini_group_vars_keep_what_follows_the_equals_sign(tmp_path: Path) -> None:
    """In [group:vars] Ansible takes the whole rest of the line (a Python literal when it is one): an
    inline `# comment` is part of the value, so kubecert must not log in as the part before it (this
    test once expected `admin`; ansible-inventory says `admin   # inline comment`)."""
    msg = error(tmp_path, "hosts", """
        [kube_control_plane]
        cp1
        [kube_control_plane:vars]
        ansible_user = admin   # inline comment
        """)
    assert msg == ":4: host cp1: ansible_user 'admin   # inline comment' contains whitespace"
    hosts = load(tmp_path, "hosts2", """
        [kube_control_plane]
        cp1
        [kube_control_plane:vars]
        ansible_user = 'admin'
        ansible_port = 0x8ae
        ansible_become = True
        """)
    assert (hosts[0].user, hosts[0].port, hosts[0].sudo) == ("admin", 2222, True)


def test_ini_windows_file_with_bom(tmp_path: Path) -> None:
    path = tmp_path / "hosts.ini"
    path.write_bytes("\ufeff[kube_control_plane]\r\ncp1 ansible_host=10.0.0.1\r\n".encode())
    assert load_inventory(str(path)) == [Host("cp1", "10.0.0.1", "control-plane")]


def test_ini_host_in_several_sections_keeps_first_position_and_merges_vars(tmp_path: Path) -> None:
    hosts = load(tmp_path, "hosts", """
        [all]
        b ansible_host=10.0.0.2
        a ansible_host=10.0.0.1
        [kube_control_plane]
        a ansible_user=ops
        b
        """)
    assert [(h.name, h.address, h.user) for h in hosts] == [("b", "10.0.0.2", "root"), ("a", "10.0.0.1", "ops")]


# ---------------------------------------------------------------------------------------- ranges


def test_ranges(tmp_path: Path) -> None:
    hosts = load(tmp_path, "hosts", """
        [kube_control_plane]
        master-[1:3] ansible_user=ubuntu
        [etcd]
        etcd[01:03].example.com
        rack[a:b]-[8:10:2]:2222
        """)
    assert [h.name for h in hosts] == [
        "etcd01.example.com", "etcd02.example.com", "etcd03.example.com",
        "racka-8", "racka-10", "rackb-8", "rackb-10",
        "master-1", "master-2", "master-3",
    ]
    assert {h.port for h in hosts if h.name.startswith("rack")} == {2222}
    assert {h.user for h in hosts if h.role == "control-plane"} == {"ubuntu"}


def test_ranges_in_yaml(tmp_path: Path) -> None:
    hosts = load(tmp_path, "hosts.yaml", """
        all:
          children:
            control_plane:
              hosts:
                "cp[08:10]": {ansible_user: admin}
        """)
    assert [(h.name, h.user) for h in hosts] == [("cp08", "admin"), ("cp09", "admin"), ("cp10", "admin")]


@pytest.mark.parametrize("pattern", ["node[1-3]", "node[3:1]", "node[01:3]", "node[1:3", "node[a:3]", "node[1:3:0]"])
def test_bad_ranges(tmp_path: Path, pattern: str) -> None:
    msg = error(tmp_path, "hosts", f"[kube_control_plane]\nok\n{pattern}\n")
    assert msg.startswith(":3: ")
    assert pattern in msg


# ---------------------------------------------------------------------------------------- Ansible YAML

# kubespray's contrib inventory builder output (hosts.yaml)
KUBESPRAY_YAML = """
all:
  hosts:
    node1:
      ansible_host: 10.10.1.3
      ip: 10.10.1.3
      access_ip: 10.10.1.3
    node2:
      ansible_host: 10.10.1.4
      ip: 10.10.1.4
      access_ip: 10.10.1.4
    node3:
      ansible_host: 10.10.1.5
      ip: 10.10.1.5
      access_ip: 10.10.1.5
    node4:
      ansible_host: 10.10.1.6
      ip: 10.10.1.6
      access_ip: 10.10.1.6
  vars:
    ansible_user: centos
    ansible_become: yes
  children:
    kube_control_plane:
      hosts:
        node1:
        node2:
    kube_node:
      hosts:
        node1:
        node2:
        node3:
        node4:
    etcd:
      hosts:
        node1:
        node2:
        node3:
    k8s_cluster:
      children:
        kube_control_plane:
        kube_node:
    calico_rr:
      hosts: {}
"""


def test_kubespray_yaml(tmp_path: Path) -> None:
    hosts = load(tmp_path, "hosts.yaml", KUBESPRAY_YAML)
    assert hosts == [
        Host("node3", "10.10.1.5", "etcd", user="centos", sudo=True, etcd_member=True),
        Host("node1", "10.10.1.3", "control-plane", user="centos", sudo=True, etcd_member=True),
        Host("node2", "10.10.1.4", "control-plane", user="centos", sudo=True, etcd_member=True),
        # node3 is in kube_node and etcd: an etcd host (it is reached for its etcd certs either way)
        Host("node4", "10.10.1.6", "worker", user="centos", sudo=True),
    ]


def test_yaml_top_level_groups_and_kubecert_root(tmp_path: Path) -> None:
    hosts = load(tmp_path, "inv.yml", """
        masters:
          hosts:
            m1: {ansible_host: 192.0.2.1, kubecert_root: /mnt/m1}
          vars:
            ansible_port: 2022
        etcd:
          hosts:
            e1:
        """)
    assert hosts == [Host("e1", "e1", "etcd", etcd_member=True),
                     Host("m1", "192.0.2.1", "control-plane", port=2022, root="/mnt/m1")]


# ---------------------------------------------------------------------------------------- precedence


def test_precedence_ini(tmp_path: Path) -> None:
    hosts = by_name(load(tmp_path, "hosts", """
        [kube_control_plane]
        a ansible_port=2001
        b
        [etcd]
        e
        [k8s_cluster:children]
        kube_control_plane
        [all:vars]
        ansible_user=all-user
        ansible_port=1000
        kubecert_root=/all
        [k8s_cluster:vars]
        ansible_user=cluster-user
        ansible_port=1001
        [kube_control_plane:vars]
        ansible_port=1002
        """))
    # host > kube_control_plane (child) > k8s_cluster (parent) > all
    assert (hosts["a"].user, hosts["a"].port, hosts["a"].root) == ("cluster-user", 2001, "/all")
    assert (hosts["b"].user, hosts["b"].port) == ("cluster-user", 1002)
    assert (hosts["e"].user, hosts["e"].port) == ("all-user", 1000)


def test_precedence_order_in_file_does_not_matter(tmp_path: Path) -> None:
    # the parent's vars come after the child's in the file, and still lose
    hosts = load(tmp_path, "hosts", """
        [k8s_cluster:children]
        kube_control_plane
        [kube_control_plane:vars]
        ansible_user=child
        [k8s_cluster:vars]
        ansible_user=parent
        [all:vars]
        ansible_user=all
        [kube_control_plane]
        cp
        """)
    assert hosts[0].user == "child"


def test_precedence_same_depth_priority_then_name(tmp_path: Path) -> None:
    text = """
        [kube_control_plane]
        cp
        [zeta]
        cp
        [alpha]
        cp
        [zeta:vars]
        ansible_user=zeta
        [alpha:vars]
        ansible_user=alpha
        """
    assert load(tmp_path, "a", text)[0].user == "zeta"  # same depth: later name wins
    assert load(tmp_path, "b", text + "ansible_group_priority=10\n")[0].user == "alpha"


def test_precedence_yaml(tmp_path: Path) -> None:
    hosts = by_name(load(tmp_path, "hosts.yml", """
        all:
          vars: {ansible_user: all, ansible_become: false, ansible_port: 1}
          hosts:
            h1: {ansible_port: 11}
          children:
            k8s_cluster:
              vars: {ansible_user: cluster, ansible_port: 2}
              children:
                kube_control_plane:
                  vars: {ansible_become: true}
                  hosts:
                    h1:
                    h2: {ansible_user: h2}
        """))
    assert (hosts["h1"].user, hosts["h1"].port, hosts["h1"].sudo) == ("cluster", 11, True)
    assert (hosts["h2"].user, hosts["h2"].port, hosts["h2"].sudo) == ("h2", 2, True)


# ---------------------------------------------------------------------------------------- jump, sudo, root


@pytest.mark.parametrize(("var", "args", "jump"), [
    ("ansible_ssh_common_args", "'-o ProxyJump=ops@bastion.example:2222'", "ops@bastion.example:2222"),
    ("ansible_ssh_common_args", "-o StrictHostKeyChecking=no -o ProxyJump=bastion", "bastion"),
    ("ansible_ssh_common_args", "'-o \"ProxyJump ssh://jump@203.0.113.9:22\"'", "jump@203.0.113.9:22"),
    ("ansible_ssh_extra_args", "-J admin@10.0.0.1", "admin@10.0.0.1"),
    ("ansible_ssh_extra_args", "-qJbastion:2200", "bastion:2200"),
    ("ansible_ssh_common_args",
     "\"-o ProxyCommand='ssh -o UserKnownHostsFile=/dev/null -W %h:%p -p 2222 -q ops@bastion.example'\"",
     "ops@bastion.example:2222"),
    ("ansible_ssh_common_args", "'-o ProxyCommand=\"/usr/bin/ssh -l core -W [%h]:%p gw\"'", "core@gw"),
    ("ansible_ssh_common_args", "-o ProxyJump=none", None),
    ("ansible_ssh_common_args", "-o ServerAliveInterval=30", None),
])
def test_jump_from_ssh_args(tmp_path: Path, var: str, args: str, jump: Optional[str]) -> None:
    hosts = load(tmp_path, "hosts", f"[kube_control_plane]\ncp\n[all:vars]\n{var}={args}\n")
    assert hosts[0].jump == jump


def test_jump_in_yaml_and_common_args_first(tmp_path: Path) -> None:
    hosts = load(tmp_path, "hosts.yml", """
        all:
          vars:
            ansible_ssh_common_args: '-o ProxyJump=first:22'
            ansible_ssh_extra_args: '-J second'
          children:
            kube_control_plane: {hosts: {cp: {}}}
        """)
    assert hosts[0].jump == "first:22"


@pytest.mark.parametrize("args", [
    "-o ProxyCommand=\"nc -X 5 -x proxy:1080 %h %p\"",
    "-o ProxyCommand=\"ssh bastion nc %h %p\"",
    "-J a,b",
    "-o ProxyJump=user@host:port",
])
def test_jump_refused(tmp_path: Path, args: str) -> None:
    msg = error(tmp_path, "hosts", f"[kube_control_plane]\ncp\n[all:vars]\nansible_ssh_common_args={args}\n")
    assert msg.startswith(":4: host cp: ansible_ssh_common_args"), msg


@pytest.mark.parametrize(("value", "sudo"), [("true", True), ("True", True), ("yes", True), ("1", True),
                                             ("false", False), ("no", False), ("False", False)])
def test_become(tmp_path: Path, value: str, sudo: bool) -> None:
    assert load(tmp_path, "hosts", f"[kube_control_plane]\ncp ansible_become={value}\n")[0].sudo is sudo


def test_root_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/op")
    hosts = load(tmp_path, "hosts", """
        [kube_control_plane]
        cp1 kubecert_root=/mnt/rescue/./node1/ ansible_private_key_file=~/.ssh/cp1
        cp2 kubecert_root=// ansible_ssh_private_key_file=keys/cp2
        """)
    assert [(h.root, h.key) for h in hosts] == [("/mnt/rescue/node1", "/home/op/.ssh/cp1"), ("/", "keys/cp2")]


def test_jinja_plain_variables(tmp_path: Path) -> None:
    hosts = load(tmp_path, "hosts.yml", """
        all:
          vars:
            bastion: ops@203.0.113.5
            ansible_ssh_common_args: "-o ProxyJump={{ bastion }}"
            ansible_port: "{{ ssh_port }}"
            ssh_port: 2222
            kubecert_root: /srv/{{ inventory_hostname_short }}
          children:
            kube_control_plane:
              hosts:
                cp1.example: {ip: 10.0.0.1, ansible_host: "{{ ip }}"}
        """)
    assert hosts == [Host("cp1.example", "10.0.0.1", "control-plane", port=2222, jump="ops@203.0.113.5",
                          root="/srv/cp1")]


@pytest.mark.parametrize(("value", "hint"), [("{{ ip | default('x') }}", "Jinja"), ("{{ nope }}", "undefined"),
                                             ("{{ a }}", "loop")])
def test_jinja_refused(tmp_path: Path, value: str, hint: str) -> None:
    msg = error(tmp_path, "hosts.yml", f"""
        all:
          vars: {{a: "{{{{ b }}}}", b: "{{{{ a }}}}"}}
          children:
            kube_control_plane:
              hosts:
                cp: {{ansible_host: "{value}"}}
        """)
    assert msg.startswith(":6: host cp: ansible_host"), msg
    assert hint in msg


# ---------------------------------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.ini")
    with pytest.raises(ConfigError, match=r"nope\.ini: no such inventory file$"):
        load_inventory(path)
    with pytest.raises(ConfigError, match="is a directory"):
        load_inventory(str(tmp_path))


def test_not_text(tmp_path: Path) -> None:
    path = tmp_path / "inv.bin"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(ConfigError, match=r"inv\.bin: not a text file"):
        load_inventory(str(path))


@pytest.mark.parametrize(("text", "expected"), [
    ("hosts:\n  - {name: a\n  - b\n", ":2: neither YAML nor an Ansible INI inventory (YAML: while parsing a flow mapping"),
    ("all:\n  hosts:\n    a: b: c\n", ":3: neither YAML nor an Ansible INI inventory (YAML: mapping values are not allowed"),
    ("- a\n- b\n", ":1: not an inventory"),
    ("", ": empty inventory"),
    ("# only a comment\n", ": empty inventory"),
    ("cluster: 3\n", ":1: not an inventory: top-level 'cluster'"),
    ("[kube_control_plane\ncp\n", ":1: neither YAML"),
])
def test_not_an_inventory(tmp_path: Path, text: str, expected: str) -> None:
    assert error(tmp_path, "inv", text).startswith(expected)


@pytest.mark.parametrize(("entry", "expected"), [
    ("{name: a, role: etcd}", ":3: host a: no address"),
    ("{address: 10.0.0.1, role: etcd}", ":3: hosts[0] has no name"),
    ("{name: a, address: 10.0.0.1, role: etcd, port: ssh}", ":3: host a: bad port 'ssh'"),
    ("{name: a, address: 10.0.0.1, role: etcd, port: 70000}", ":3: host a: bad port 70000"),
    ("{name: a, address: 10.0.0.1, role: etcd, port: true}", ":3: host a: bad port True"),
    ("{name: a, address: 10.0.0.1, role: master}", ":3: host a: unknown role 'master' (control-plane, etcd or worker)"),
    ("{name: a, address: 10.0.0.1}", ":3: host a: no role"),
    ("{name: a, address: 10.0.0.1, role: etcd, root: mnt/a}", ":3: host a: root 'mnt/a' is not an absolute path"),
    ("{name: a, address: 10.0.0.1, role: etcd, sudo: maybe}", ":3: host a: sudo must be true or false"),
    ("{name: a, address: 10.0.0.1, role: etcd, jump: 'a b'}", ":3: host a: jump 'a b' is not [user@]host[:port]"),
    ("{name: a, address: 10.0.0.1, role: etcd, usr: x}", ":3: hosts[0]: unknown key 'usr'"),
    ("{name: a, address: 10.0.0.1, role: etcd, etcd_member: false}", ":3: host a: an etcd host is always"),
    ("just-a-name", ":2: hosts[0] must be a mapping"),
])
def test_kubecert_host_errors(tmp_path: Path, entry: str, expected: str) -> None:
    msg = error(tmp_path, "cluster.yaml", f"kind: KubecertInventory\nhosts:\n  - {entry}\n")
    assert msg.startswith(expected), msg


def test_kubecert_errors(tmp_path: Path) -> None:
    assert error(tmp_path, "c.yaml", """
        hosts:
          - {name: cp, address: 10.0.0.1, role: control-plane}
          - name: cp
            address: 10.0.0.2
            role: control-plane
        """).startswith(":3: host cp: duplicate host name (first at line 2)")
    assert error(tmp_path, "c.yaml", """
        defaults: {port: 0}
        hosts:
          - {name: cp, address: 10.0.0.1, role: control-plane}
        """).startswith(":1: host cp: bad port 0")
    assert error(tmp_path, "c.yaml", "kind: KubecertInventory\nhosts: []\n").startswith(":2: no hosts")
    assert error(tmp_path, "c.yaml", "kind: Deployment\nspec: {}\n").startswith(":1: kind 'Deployment' is not")
    assert error(tmp_path, "c.yaml", "kind: KubecertInventory\nhosts: {a: b}\n").startswith(":2: hosts must be a list")
    assert error(tmp_path, "c.yaml", "defaults: {sudo: true, become: x}\nhosts: []\n").startswith(
        ":1: unknown key 'become' in defaults")
    assert "--cp-group" in error(tmp_path, "c.yaml", KUBECERT, cp_group="masters")


def test_ansible_field_errors_point_at_the_variable(tmp_path: Path) -> None:
    assert error(tmp_path, "hosts", """
        [kube_control_plane]
        cp1
        [kube_control_plane:vars]
        ansible_port=twenty-two
        """) == ":4: host cp1: bad ansible_port 'twenty-two': not a port number (1-65535)"
    assert error(tmp_path, "hosts", "[kube_control_plane]\ncp1 kubecert_root=relative\n").startswith(
        ":2: host cp1: kubecert_root 'relative' is not an absolute path")
    assert error(tmp_path, "hosts", "[kube_control_plane]\ncp1 ansible_become=sometimes\n").startswith(
        ":2: host cp1: ansible_become must be true or false")
    assert error(tmp_path, "hosts.yml", """
        all:
          children:
            kube_control_plane:
              hosts:
                cp1:
                  ansible_host: ""
        """).startswith(":6: host cp1: ansible_host must be a non-empty string")
    assert error(tmp_path, "hosts.yml", """
        etcd:
          hosts:
            e1: {ansible_port: [22]}
        masters:
          hosts: {m1: }
        """).startswith(":3: host e1: bad ansible_port [22]")


def test_no_control_planes(tmp_path: Path) -> None:
    msg = error(tmp_path, "hosts", "[kube_node]\nw1\n[etcd]\ne1\n[kube_control_plane]\n")
    assert msg == (": no hosts in groups kube_control_plane/control_plane/masters/kube-master/kube_master; "
                   "pass --cp-group (groups here: etcd, kube_control_plane, kube_node)")
    assert error(tmp_path, "bare", "host1\nhost2 ansible_host=10.0.0.2\n").startswith(": no hosts in groups")
    assert error(tmp_path, "h.yml", "all:\n  hosts: {a: }\n").startswith(": no hosts in groups")


def test_named_groups(tmp_path: Path) -> None:
    text = "[kube_control_plane]\ncp\n[etcd]\n[workers]\nw\n"
    assert error(tmp_path, "hosts", text, cp_group="controllers") == (
        ": no group 'controllers' (--cp-group); groups here: etcd, kube_control_plane, workers")
    assert error(tmp_path, "hosts", text, etcd_group="etcd-hosts").startswith(": no group 'etcd-hosts' (--etcd-group)")
    assert error(tmp_path, "hosts", text, etcd_group="etcd") == ": no hosts in group etcd (--etcd-group)"
    assert error(tmp_path, "hosts", text, cp_group="etcd") == ": no hosts in group etcd (--cp-group)"
    # an empty default etcd group is fine; `workers` is a default worker group
    assert [(h.name, h.role) for h in load(tmp_path, "hosts", text)] == [("cp", "control-plane"), ("w", "worker")]
    # a host named as a control plane is never also a worker
    assert [(h.name, h.role) for h in load(tmp_path, "hosts", text, cp_group="workers")] == [("w", "control-plane")]


@pytest.mark.parametrize(("text", "expected"), [
    ("[kube_control_plane:hostvars]\n", ":1: bad section [kube_control_plane:hostvars]"),
    ("[kube_control_plane]\ncp ansible_port\n", ":2: expected key=value after host 'cp', got 'ansible_port'"),
    ("[kube_control_plane]\ncp ansible_user='ops\n", ":2: cannot parse host line"),
    ("[all:vars]\nansible_user\n", ":2: expected key=value in [all:vars]"),
    ("[k8s:children]\nkube_control_plane masters\n", ":2: expected a group name in [k8s:children]"),
    ("[a:children]\nb\n[b:children]\na\n", ":1: group cycle: a -> b -> a"),
    ("[kube_control_plane]\ncp\n[all:vars]\nansible_group_priority=high\n",
     ":4: group all: ansible_group_priority 'high'"),
])
def test_ini_errors(tmp_path: Path, text: str, expected: str) -> None:
    msg = error(tmp_path, "hosts.ini", text)
    assert msg.startswith(expected), msg


@pytest.mark.parametrize(("text", "expected"), [
    ("all:\n  children:\n    masters:\n      host: {a: }\n", ":4: group masters: unexpected key 'host'"),
    ("all:\n  hosts:\n    - a\n", ":2: group all: hosts must be a mapping"),
    ("all:\n  children: [masters]\n", ":2: group all: children must be a mapping"),
    ("all:\n  vars: [a]\n", ":2: group all: vars must be a mapping"),
    ("all:\n  children:\n    masters: 3\n", ":3: group masters: expected a mapping"),
    ("all:\n  children:\n    masters:\n      hosts:\n        m: 3\n", ":5: host m must be a mapping of variables"),
])
def test_ansible_yaml_errors(tmp_path: Path, text: str, expected: str) -> None:
    msg = error(tmp_path, "hosts.yaml", text)
    assert msg.startswith(expected), msg


def test_unreadable(tmp_path: Path) -> None:
    """Root reads a mode-0 file anyway (CAP_DAC_OVERRIDE): as root, the read is tried in a forked child
    that became nobody, in a directory it may enter, so the file's own mode is what refuses it."""
    where = tmp_path / "open"
    where.mkdir()
    path = write(where, "hosts", "[masters]\nm\n")
    os.chmod(path, 0)
    if os.geteuid() != 0:
        with pytest.raises(ConfigError, match="cannot read the inventory"):
            load_inventory(path)
        return
    for d in (where, *where.parents):  # traversable (not listable) up to the file, as for any user
        if d == Path("/"):
            break
        os.chmod(d, os.stat(d).st_mode | 0o111)
    pid = os.fork()
    if pid == 0:  # the child: only a read, then _exit (no pytest machinery runs here)
        code = 1
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            load_inventory(path)
        except ConfigError as exc:
            code = 0 if "cannot read the inventory" in str(exc) else 2
        except BaseException:  # noqa: BLE001 (any other outcome is the failure the parent reports)
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "as nobody: expected 'cannot read the inventory' " \
        f"(child exit {os.waitstatus_to_exitcode(status)}: 1 read it, 2 another error, 3 an exception)"
