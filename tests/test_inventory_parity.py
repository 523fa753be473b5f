"""kubecert's Ansible inventory reader (kubecert.remote.hosts) against Ansible itself.

For every inventory of the corpus under tests/fixtures/inventories/ (kubespray's sample, INI and YAML
with ranges, children, group_vars/ and host_vars/ directories, every connection variable, jump hosts),
``ansible-inventory --list`` (ansible-core) says which hosts and groups there are and each host's
variables after Ansible's precedence; kubecert's reader must find the same hosts, the same groups and
the same connection settings. Where they differ, Ansible is right.

How Ansible turns the variables into a connection is taken from Ansible and OpenSSH, not from
kubecert: the ``ansible_ssh_*`` spelling wins over the plain one (ansible.constants
MAGIC_VARIABLE_MAPPING, checked here against ``ansible -vvv``'s ssh command line), ``ansible_become``
goes through Ansible's own boolean(), and the jump host is what ``ssh -G`` resolves from the
``ansible_ssh_common_args`` / ``ansible_ssh_extra_args`` Ansible would pass.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

import pytest

from kubecert.errors import ConfigError
from kubecert.remote.hosts import CP_GROUPS, ETCD_GROUPS, WORKER_GROUPS, Host, ansible_groups, load_inventory

pytest.importorskip("ansible", reason="ansible-core is not installed (pip install ansible-core)")

CORPUS = Path(__file__).parent / "fixtures" / "inventories"
INVENTORIES = sorted(p for p in CORPUS.glob("*/*") if p.is_file() and p.name.split(".")[0] in ("hosts", "inventory"))
ANSIBLE_INVENTORY = shutil.which("ansible-inventory")
SSH = shutil.which("ssh")


def ansible_env(tmp: Path) -> Dict[str, str]:
    """No ansible.cfg from the checkout or the home directory, no warnings on stderr to mix with JSON."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_CONFIG=str(tmp / "none.cfg"), ANSIBLE_LOCAL_TEMP=str(tmp), ANSIBLE_HOME=str(tmp / "home"),
               ANSIBLE_LOCALHOST_WARNING="False", ANSIBLE_INVENTORY_UNPARSED_WARNING="False",
               ANSIBLE_DEPRECATION_WARNINGS="False", ANSIBLE_NOCOLOR="1", PYTHONWARNINGS="ignore")
    return env


def ansible_inventory(tmp: Path, inventory: Path, *args: str) -> Any:
    assert ANSIBLE_INVENTORY is not None
    r = subprocess.run([ANSIBLE_INVENTORY, "-i", str(inventory), *args], capture_output=True, text=True,
                       timeout=120, env=ansible_env(tmp), cwd=tmp, check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# ------------------------------------------------------------------------------------------ Ansible's answer


def groups_from_list(data: Dict[str, Any]) -> Dict[str, List[str]]:
    """group -> every host in it or below it (sorted), from ``ansible-inventory --list``; empty groups left out."""
    def below(group: str, seen: Set[str]) -> Set[str]:
        if group in seen:
            return set()
        seen.add(group)
        body = data.get(group, {})
        found = set(body.get("hosts", []))
        for child in body.get("children", []):
            found |= below(child, seen)
        return found

    out = {}
    for group in data:
        if group in ("_meta", "all"):
            continue
        hosts = below(group, set())
        if hosts:
            out[group] = sorted(hosts)
    return out


_TRUE = {"y", "yes", "on", "1", "true", "t"}  # ansible.module_utils.parsing.convert_bool, lowercased


def ansible_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value == 1
    return str(value).strip().lower() in _TRUE


def first(hvars: Dict[str, Any], *names: str) -> Any:
    return next((hvars[n] for n in names if n in hvars), None)


def ssh_resolved(args: List[str], user: str, port: int, address: str) -> Dict[str, str]:
    """What OpenSSH makes of the command line Ansible would run (``ssh -G``: resolve, do not connect)."""
    assert SSH is not None
    r = subprocess.run([SSH, "-G", "-F", "none", *args, "-p", str(port), "-l", user, address], capture_output=True,
                       text=True, timeout=30, check=False)
    assert r.returncode == 0, r.stderr
    return dict(line.split(" ", 1) for line in r.stdout.splitlines() if " " in line)


def jump_of(hvars: Dict[str, Any], user: str, port: int, address: str) -> Optional[str]:
    args: List[str] = []
    for name in ("ansible_ssh_common_args", "ansible_ssh_extra_args"):  # the order Ansible passes them in
        if hvars.get(name):
            args += shlex.split(str(hvars[name]))
    if not args:
        return None
    conf = ssh_resolved(args, user, port, address)
    if conf.get("proxyjump", "none") != "none":
        return conf["proxyjump"]
    command = conf.get("proxycommand", "none")
    if command == "none":
        return None
    # `ssh -W %h:%p [-p PORT] [-l USER] [-q] [USER@]HOST`: the bastion is that ssh's destination
    words = shlex.split(command)
    assert words[0] == "ssh" and "-W" in words, command
    flags = {words[i]: words[i + 1] for i in range(1, len(words) - 1) if words[i] in ("-W", "-p", "-l")}
    dest = words[-1]
    if "-l" in flags and "@" not in dest:
        dest = f"{flags['-l']}@{dest}"
    return f"{dest}:{flags['-p']}" if "-p" in flags else dest


_JUMP = re.compile(r"(?:(?P<user>[^@]+)@)?(?P<host>\[[^\]]+\]|[^:]+)(?::(?P<port>\d+))?")


def canonical(host: Host) -> Host:
    """``host`` with its jump host as (user, host, port): ``ssh -G`` writes an IP address in brackets."""
    if host.jump is None:
        return host
    m = _JUMP.fullmatch(host.jump)
    assert m is not None, host.jump
    jump = f"{m.group('user')}|{m.group('host').strip('[]')}|{int(m.group('port') or 22)}"
    return dataclasses.replace(host, jump=jump)


def expected_hosts(data: Dict[str, Any]) -> Dict[str, Host]:
    """The hosts kubecert must reach, as Ansible sees the inventory: kubecert's role rules (kubespray's
    groups) applied to Ansible's groups, connection settings from Ansible's merged host variables."""
    groups = groups_from_list(data)
    hostvars = data["_meta"]["hostvars"]

    def pick(defaults: tuple[str, ...]) -> List[str]:
        return next((groups[g] for g in defaults if groups.get(g)), [])

    cps, etcd, workers = pick(CP_GROUPS), pick(ETCD_GROUPS), pick(WORKER_GROUPS)
    roles = {**{h: "worker" for h in workers}, **{h: "etcd" for h in etcd}, **{h: "control-plane" for h in cps}}
    out = {}
    for name, role in roles.items():
        hv = hostvars.get(name, {})
        address = str(first(hv, "ansible_ssh_host", "ansible_host") or name)
        user = str(first(hv, "ansible_ssh_user", "ansible_user") or "root")
        port = int(first(hv, "ansible_ssh_port", "ansible_port") or 22)
        key = first(hv, "ansible_ssh_private_key_file", "ansible_private_key_file")
        out[name] = Host(name=name, address=address, role=role, user=user, port=port,
                         key=os.path.expanduser(key) if key else None, jump=jump_of(hv, user, port, address),
                         sudo=ansible_bool(hv.get("ansible_become", False)),
                         etcd_member=name in etcd)
    return out


# ------------------------------------------------------------------------------------------ the comparison


needs_ansible = pytest.mark.skipif(ANSIBLE_INVENTORY is None or SSH is None,
                                   reason="ansible-inventory (ansible-core) and ssh (openssh-client) needed")


def test_the_corpus_covers_what_it_must() -> None:
    names = {p.parent.name for p in INVENTORIES}
    assert names >= {"kubespray-sample", "kubespray-hosts", "ranges-ini", "ranges-yaml", "vars-dirs", "precedence",
                     "jump-hosts"}, names
    assert (CORPUS / "vars-dirs/group_vars").is_dir() and (CORPUS / "vars-dirs/host_vars").is_dir()
    text = "".join(p.read_text() for p in INVENTORIES)
    for needle in ("[01:03]", "[a:c]", ":children", "ansible_host", "ansible_port", "ansible_user", "ansible_become",
                   "ProxyJump", "ProxyCommand"):
        assert needle in text, needle


@needs_ansible
@pytest.mark.parametrize("inventory", INVENTORIES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_kubecert_reads_an_inventory_as_ansible_does(inventory: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    data = ansible_inventory(tmp_path, inventory, "--list")
    want = expected_hosts(data)
    # hosts and groups, every group (not only the three kubecert acts on)
    assert ansible_groups(str(inventory)) == groups_from_list(data)
    if not want:  # kubespray's sample as shipped: every host line is a comment
        with pytest.raises(ConfigError, match="no hosts in groups"):
            load_inventory(str(inventory))
        return
    got = {h.name: h for h in load_inventory(str(inventory))}
    assert sorted(got) == sorted(want)
    for name in want:  # one host at a time: the first difference names its host
        assert canonical(got[name]) == canonical(want[name]), name


@needs_ansible
def test_list_holds_what_host_says(tmp_path: Path) -> None:
    """The merged variables of ``--list`` are those of ``--host`` (what a play sees), so comparing with
    ``--list`` compares with what Ansible connects with: checked on the inventories where precedence
    (group_vars/ and host_vars/ files, nested groups, priorities) decides."""
    for rel, host in (("precedence/hosts.ini", "wk1"), ("precedence/hosts.ini", "cp1"), ("vars-dirs/hosts.yaml", "cp-2"),
                      ("vars-dirs/hosts.yaml", "wk-1"), ("ranges-yaml/hosts.yml", "wk-10")):
        listed = ansible_inventory(tmp_path, CORPUS / rel, "--list")["_meta"]["hostvars"][host]
        assert ansible_inventory(tmp_path, CORPUS / rel, "--host", host) == listed, (rel, host)


def test_precedence_spelled_out() -> None:
    """What the corpus pins, written out (so a change in Ansible's answer shows here too)."""
    hosts = {h.name: h for h in load_inventory(str(CORPUS / "precedence/hosts.ini"))}
    # group_vars/all.yml beats every group's vars in the inventory file; the host's own var beats it
    assert (hosts["wk1"].user, hosts["cp1"].user, hosts["cp2"].user) == ("group-vars-all", "group-vars-all",
                                                                        "host-wins")
    # group_vars/etcd.yml beats the inventory's [all:vars]; for wk1 a priority 5 group beats a later name
    assert (hosts["cp1"].port, hosts["cp2"].port, hosts["wk1"].port) == (2379, 2099, 2002)
    assert (hosts["cp1"].sudo, hosts["wk1"].sudo) == (True, False)  # "t" and "f", as Ansible's boolean()
    d = {h.name: h for h in load_inventory(str(CORPUS / "vars-dirs/hosts.yaml"))}
    assert (d["cp-1"].address, d["cp-1"].port, d["cp-1"].user) == ("172.16.0.11", 22, "cpadmin2")
    assert (d["cp-2"].key, d["cp-2"].sudo, d["cp-2"].jump) == ("/keys/cp2", False, "ops@gw.example.test:2022")
    assert (d["wk-1"].user, d["wk-2"].user, d["wk-2"].port, d["wk-2"].sudo) == ("from-host-vars", "admin", 2300, True)
    y = {h.name: h for h in load_inventory(str(CORPUS / "ranges-yaml/hosts.yml"))}
    assert (y["wk-10"].user, y["etcd-ext"].address, y["etcd-ext"].port) == ("deploy", "10.0.1.5", 2379)
