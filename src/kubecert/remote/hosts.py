"""The cluster inventory: which hosts to reach over SSH, as whom, and what each one is.

Reads kubecert's own YAML inventory and the Ansible inventories operators already keep (INI or YAML,
with kubespray's group names recognised by default). Pure parsing: nothing here touches the network.

Ansible semantics followed (and checked against ansible-core itself by tests/test_inventory_parity.py):
ranges in host names (``node[01:03]``, ``[a:c]``, ``[1:9:2]``), groups nested with ``children``, INI
values read as Python literals (``ansible_become=True`` is a bool, ``'x'`` a string; no inline comment in
``[group:vars]``), the ``group_vars/`` and ``host_vars/`` directories beside the inventory file, variable
precedence as Ansible's (low to high: inventory ``all`` vars, other groups' inventory vars - deeper group
over its parents, then ``ansible_group_priority``, then name -, ``group_vars/all``, ``group_vars/<group>``
in the same order, the host's inventory vars, ``host_vars/<host>``), the ``ansible_ssh_*`` spelling
winning over the plain one (``ansible_ssh_user`` over ``ansible_user``, as Ansible's ssh connection),
Ansible's booleans for ``ansible_become``, the address defaulting to the inventory hostname, and
``{{ var }}`` references to plain variables (anything richer in Jinja is refused, not guessed).

What an inventory may cost is bounded, each limit a one-line :class:`ConfigError`: the file is a
regular file of at most :data:`kubecert.yamlsafe.MAX_BYTES` bytes (YAML also at most
:data:`kubecert.yamlsafe.MAX_NODES` values, aliases counted), at most :data:`MAX_INVENTORY_HOSTS`
hosts after range expansion, :data:`MAX_CLUSTER_HOSTS` control-plane and etcd hosts and
:data:`MAX_WORKER_HOSTS` workers to reach, groups nested at most :data:`MAX_GROUP_DEPTH` deep, and a
value at most :data:`MAX_RENDERED` characters once its ``{{ var }}`` references are substituted.
"""

from __future__ import annotations

import ast
import os
import posixpath
import re
import shlex
import stat
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple, Union

import yaml

from .. import yamlsafe
from ..errors import ConfigError

CONTROL_PLANE = "control-plane"
ETCD = "etcd"
WORKER = "worker"
ROLES = (CONTROL_PLANE, ETCD, WORKER)
_ROLE_ORDER = {ETCD: 0, CONTROL_PLANE: 1, WORKER: 2}

# Ansible group names recognised by default (kubespray + common)
CP_GROUPS = ("kube_control_plane", "control_plane", "masters", "kube-master", "kube_master")
ETCD_GROUPS = ("etcd",)
WORKER_GROUPS = ("kube_node", "workers", "kube-node")

KIND = "KubecertInventory"

MAX_INVENTORY_HOSTS = 100_000  # hosts in the whole inventory, workers included, after range expansion
MAX_CLUSTER_HOSTS = 1000  # control planes and etcd hosts to reach (a real cluster has a handful)
MAX_WORKER_HOSTS = 20_000  # workers to reach (most of a big cluster)
MAX_GROUP_DEPTH = 100  # groups nested in groups
MAX_RENDERED = 65536  # characters of a value after {{ var }} substitution


@dataclass(frozen=True)
class Host:
    """One node to reach: where, as whom, and its part in the cluster."""

    name: str
    address: str
    role: str  # "control-plane" | "etcd" | "worker"
    user: str = "root"
    port: int = 22
    key: Optional[str] = None  # private key file (expanded ~)
    jump: Optional[str] = None  # "[user@]host[:port]"
    sudo: bool = False
    root: str = "/"  # the node's file-system root on that host (path prefix, absolute)
    etcd_member: bool = False  # runs an etcd member: every etcd host, and control planes in the etcd group


def load_inventory(path: str, *, cp_group: Optional[str] = None, etcd_group: Optional[str] = None,
                   worker_group: Optional[str] = None) -> List[Host]:
    """Read a kubecert or Ansible (INI or YAML) inventory: etcd-only hosts first, then control planes,
    then workers, in file order.

    ``cp_group`` / ``etcd_group`` / ``worker_group`` name the Ansible groups; by default the first of
    :data:`CP_GROUPS` that has hosts, ``etcd`` if present (no etcd group: etcd is stacked, nothing
    extra to reach) and the first of :data:`WORKER_GROUPS` that has hosts (kubespray's ``kube_node``
    also lists control planes that run pods: those stay control planes).
    Raises :class:`ConfigError` naming the file, and the line and host where there is one.
    """
    src = _Src(path)
    parsed = _parse(path, src)
    if not isinstance(parsed, _Inventory):
        data, doc = parsed
        if cp_group is not None or etcd_group is not None or worker_group is not None:
            raise src.error("--cp-group/--etcd-group/--worker-group apply to Ansible inventories; this "
                            "kubecert inventory gives each host's role")
        return _order(_kubecert_hosts(data, doc, src), src)
    return _order(_ansible_hosts(parsed, src, cp_group, etcd_group, worker_group, _VarsDirs(path)), src)


def ansible_groups(path: str) -> Dict[str, List[str]]:
    """Every group of an Ansible inventory (INI or YAML) that has hosts, but ``all``: its hosts, those
    of its children included, sorted; ``ungrouped`` as Ansible has it (the hosts in no other group).
    What ``ansible-inventory --list`` says, for the parity test and for tools that pick hosts by group.
    Raises :class:`ConfigError` for a kubecert inventory (it has roles, not groups)."""
    src = _Src(path)
    inv = _parse(path, src)
    if not isinstance(inv, _Inventory):
        raise src.error("a kubecert inventory has roles, not Ansible groups")
    tree = _Tree(inv, src)
    out = {}
    for name in inv.groups:
        if name == "all":
            continue
        members = tree.hosts(name)
        if name == "ungrouped":  # Ansible drops from `ungrouped` a host that some other group lists
            members = [h for h in inv.host_vars if not set(tree.direct.get(h, [])) - {"all", "ungrouped"}]
        if members:
            out[name] = sorted(members)
    return out


def _parse(path: str, src: _Src) -> Union[_Inventory, Tuple[Dict[Any, Any], _Doc]]:
    """An Ansible inventory's model, or a kubecert inventory's document (and its lines)."""
    text = _read(path)
    if _INI_SECTION.search(text):
        return _parse_ini(text, src)
    data, doc = _load_yaml(text, src)
    if data is None:
        raise src.error("empty inventory: no hosts")
    if isinstance(data, str):  # bare host lines: an INI inventory without sections
        return _parse_ini(text, src)
    if not isinstance(data, dict):
        raise src.error("not an inventory: expected a kubecert `hosts:` list, Ansible groups (YAML) "
                        "or [group] sections (INI)", doc.line_of(data) or 1)
    if _is_kubecert(data):
        return data, doc
    return _parse_ansible_yaml(data, doc, src)


def _order(hosts: Sequence[Host], src: _Src) -> List[Host]:
    cluster = sum(h.role != WORKER for h in hosts)
    _check_limits(cluster, len(hosts) - cluster, src)
    # sorted() is stable: file order within each role
    return sorted(hosts, key=lambda h: _ROLE_ORDER[h.role])


def _check_limits(cluster: int, workers: int, src: _Src) -> None:
    """Refuse more than :data:`MAX_CLUSTER_HOSTS` control-plane and etcd hosts, or more than
    :data:`MAX_WORKER_HOSTS` workers (two limits: workers are most of a big cluster)."""
    if cluster > MAX_CLUSTER_HOSTS:
        raise src.error(f"{cluster} control-plane and etcd hosts, more than {MAX_CLUSTER_HOSTS} hosts in one "
                        "cluster; a wrong group or range?")
    if workers > MAX_WORKER_HOSTS:
        raise src.error(f"{workers} workers, more than {MAX_WORKER_HOSTS} in one cluster; a wrong "
                        "group or range?")


# ---------------------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class _Src:
    path: str

    def error(self, msg: str, line: Optional[int] = None) -> ConfigError:
        where = f"{self.path}:{line}" if line else self.path
        return ConfigError(_printable(f"{where}: {msg}".replace("\n", " ")))


def _printable(text: str) -> str:
    """``text`` with control characters escaped: an inventory's bytes never reach a terminal raw."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _show(value: object) -> str:
    """A value for an error message: its repr, cut short (a YAML value can be a whole document)."""
    try:
        text = repr(value)
    except ValueError:  # an integer of more than 4300 digits in it (YAML reads 0x with thousands of digits)
        return "a value holding a huge number"
    return text if len(text) <= 60 else text[:57] + "..."


def _str(value: object) -> str:
    """``str(value)``, also for a value Python refuses to print (see :func:`_show`)."""
    try:
        return str(value)
    except ValueError:
        return "<a huge number>"


@dataclass(frozen=True)
class _Where:
    """Where a value came from, so an error can point at it."""

    src: _Src
    line: Optional[int]
    host: Optional[str] = None

    def error(self, msg: str) -> ConfigError:
        return self.src.error(f"host {self.host}: {msg}" if self.host else msg, self.line)


def _read(path: str) -> str:
    """The inventory's text: a regular file (a FIFO or a device could block or never end) of at most
    :data:`kubecert.yamlsafe.MAX_BYTES` bytes."""
    limit = yamlsafe.MAX_BYTES
    shown = _printable(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"{shown}: no such inventory file") from None
    except ValueError:  # a NUL byte in the name
        raise ConfigError(f"{shown}: not a valid file name") from None
    except OSError as e:
        raise ConfigError(f"{shown}: cannot read the inventory: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{shown}: is a directory, not an inventory file")
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{shown}: not a regular file (a FIFO or a device?); an inventory is a file")
        if st.st_size > limit:
            raise ConfigError(f"{shown}: {st.st_size} bytes, more than the {limit} bytes an inventory may have")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise ConfigError(f"{shown}: cannot read the inventory: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ConfigError(f"{shown}: grew past the {limit} bytes an inventory may have")
    try:
        text = data.decode("utf-8-sig")  # a BOM would hide the first [group]
    except UnicodeDecodeError:
        raise ConfigError(f"{shown}: not a text file (neither YAML nor an Ansible INI inventory)") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as a text-mode open()


# ---------------------------------------------------------------------------------------- YAML with lines


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that remembers the line of every mapping and of each of its keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.map_lines: Dict[int, int] = {}
        self.key_lines: Dict[int, Dict[str, int]] = {}


def _construct_map(loader: _LineLoader, node: yaml.MappingNode) -> Iterator[Dict[Any, Any]]:
    gen = loader.construct_yaml_map(node)
    data = next(gen)
    loader.map_lines[id(data)] = node.start_mark.line + 1
    loader.key_lines[id(data)] = {
        str(k.value): k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)
    }
    yield data
    for _ in gen:  # fills data
        pass


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)


class _Tagged:
    """A YAML value with an application tag (Ansible's ``!vault``, ``!unsafe``): kept as unreadable, so
    a vaulted variable kubecert does not need costs nothing, and one it needs is refused by name."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __repr__(self) -> str:
        return f"a {self.tag} value (kubecert does not decrypt or evaluate it; give the value in clear)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Tagged) and other.tag == self.tag

    def __hash__(self) -> int:
        return hash(self.tag)


def _construct_tagged(loader: _LineLoader, suffix: str, node: yaml.Node) -> _Tagged:
    return _Tagged(node.tag)


_LineLoader.add_multi_constructor("!", _construct_tagged)


@dataclass
class _Doc:
    """Line numbers of a loaded YAML document (by object identity: the document must stay alive)."""

    map_lines: Dict[int, int] = field(default_factory=dict)
    key_lines: Dict[int, Dict[str, int]] = field(default_factory=dict)

    def line_of(self, obj: object) -> Optional[int]:
        return self.map_lines.get(id(obj))

    def key_line(self, mapping: object, key: object) -> Optional[int]:
        return self.key_lines.get(id(mapping), {}).get(_str(key)) or self.line_of(mapping)


def _load_yaml(text: str, src: _Src) -> Tuple[Any, _Doc]:
    try:
        loader = _LineLoader(text)  # the reader refuses control characters at once
    except yaml.reader.ReaderError as e:
        raise src.error(f"neither YAML nor an Ansible INI inventory (YAML: {e.reason}: #x{e.character:04x} at "
                        f"character {e.position})") from None
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        context, context_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
        if context_mark is not None and (mark is None or mark.index >= len(text.rstrip())):
            mark = context_mark  # an unclosed bracket is reported at the end of the file: point at its start
        problem = getattr(e, "problem", None) or str(e)
        raise src.error(f"neither YAML nor an Ansible INI inventory (YAML: {context + ': ' if context else ''}{problem})",
                        mark.line + 1 if mark is not None else None) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as e:  # nesting too deep, a bad date...
        raise src.error(f"unreadable YAML ({type(e).__name__})") from None
    finally:
        loader.dispose()
    yamlsafe.bounded(data, src.path, ConfigError)
    return data, _Doc(loader.map_lines, loader.key_lines)


# ---------------------------------------------------------------------------------------- field values


def _text(value: object, what: str, w: _Where) -> str:
    if not isinstance(value, str) or not value.strip():
        raise w.error(f"{what} must be a non-empty string, not {_show(value)}")
    value = value.strip()
    if any(c.isspace() for c in value):
        raise w.error(f"{what} {_show(value)} contains whitespace")
    return value


def _port(value: object, what: str, w: _Where) -> int:
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise w.error(f"bad {what} {_show(value)}: not a port number (1-65535)")
    return value


_DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII digits only, and never more than int() takes quickly


_TRUE = {"true", "yes", "on", "1", "y", "t"}  # ansible.module_utils.parsing.convert_bool
_FALSE = {"false", "no", "off", "0", "n", "f"}


def _bool(value: object, what: str, w: _Where) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise w.error(f"{what} must be true or false, not {_show(value)}")


def _key(value: object, what: str, w: _Where) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise w.error(f"{what} must be a file name, not {_show(value)}")
    return os.path.expanduser(value.strip())


def _root(value: object, what: str, w: _Where) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise w.error(f"{what} {_show(value)} is not an absolute path")
    root = posixpath.normpath(value)
    return "/" + root.lstrip("/")  # normpath keeps a leading "//"


_JUMP = re.compile(r"(?:(?P<user>[^@\s/:]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^@\s:/\[\]]+)(?::(?P<port>\d+))?")


def _jump(value: object, what: str, w: _Where) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str):
        raise w.error(f"{what} {_show(value)} is not [user@]host[:port]")
    jump = value.strip()
    if jump.lower() == "none":
        return None
    if "," in jump:
        raise w.error(f"{what} {value!r} chains several jump hosts; kubecert takes one [user@]host[:port]")
    if jump.startswith("ssh://"):
        jump = jump[len("ssh://"):]
    m = _JUMP.fullmatch(jump)
    if m is None:
        raise w.error(f"{what} {value!r} is not [user@]host[:port]")
    if m.group("port") is not None:
        _port(m.group("port"), f"{what} port", w)
    return jump


# ---------------------------------------------------------------------------------------- kubecert format

_TOP_KEYS = ("kind", "defaults", "hosts")
_FIELDS = ("user", "port", "key", "jump", "sudo", "root")
_HOST_KEYS = ("name", "address", "role", *_FIELDS, "etcd_member")


def _is_kubecert(data: Dict[Any, Any]) -> bool:
    return "kind" in data or isinstance(data.get("hosts"), list)


def _kubecert_hosts(data: Dict[Any, Any], doc: _Doc, src: _Src) -> List[Host]:
    if data.get("kind", KIND) != KIND:
        raise src.error(f"kind {_show(data['kind'])} is not {KIND}", doc.key_line(data, "kind"))
    for k in data:
        if k not in _TOP_KEYS:
            raise src.error(f"unknown key {_show(k)} in a kubecert inventory (kind, defaults, hosts)",
                            doc.key_line(data, k))
    defaults = data.get("defaults")
    if defaults is None:
        defaults = {}
    if not isinstance(defaults, dict):
        raise src.error("defaults must be a mapping", doc.key_line(data, "defaults"))
    for k in defaults:
        if k not in _FIELDS:
            raise src.error(f"unknown key {_show(k)} in defaults ({', '.join(_FIELDS)})", doc.key_line(defaults, k))
    entries = data.get("hosts")
    if not isinstance(entries, list):
        raise src.error("hosts must be a list of {name, address, role, ...}", doc.key_line(data, "hosts"))
    if not entries:
        raise src.error("no hosts: the hosts list is empty", doc.key_line(data, "hosts"))

    hosts: List[Host] = []
    seen: Dict[str, Optional[int]] = {}
    for i, entry in enumerate(entries):
        line = doc.line_of(entry) or doc.key_line(data, "hosts")
        if not isinstance(entry, dict):
            raise src.error(f"hosts[{i}] must be a mapping with name, address and role, not {_show(entry)}", line)
        for k in entry:
            if k not in _HOST_KEYS:
                raise src.error(f"hosts[{i}]: unknown key {_show(k)} ({', '.join(_HOST_KEYS)})",
                                doc.key_line(entry, k))
        if "name" not in entry:
            raise src.error(f"hosts[{i}] has no name", line)
        name = _text(entry["name"], "name", _Where(src, doc.key_line(entry, "name"), f"#{i}"))

        def where(key: str, _entry: Dict[Any, Any] = entry, _name: str = name, _line: Optional[int] = line) -> _Where:
            at = doc.key_line(_entry, key) if key in _entry else doc.key_line(defaults, key) if key in defaults else _line
            return _Where(src, at, _name)

        if name in seen:
            raise where("name").error(f"duplicate host name (first at line {seen[name]})")
        seen[name] = line
        if entry.get("address") is None:
            raise _Where(src, line, name).error("no address")
        address = _text(entry["address"], "address", where("address"))
        role = entry.get("role")
        if role is None:
            raise _Where(src, line, name).error("no role (control-plane, etcd or worker)")
        if role not in ROLES:
            raise where("role").error(f"unknown role {_show(role)} (control-plane, etcd or worker)")
        merged = {**defaults, **entry}
        etcd_member = _bool(merged.get("etcd_member", role == ETCD), "etcd_member", where("etcd_member"))
        if role == ETCD and not etcd_member:
            raise where("etcd_member").error("an etcd host is always an etcd member")
        if role == WORKER and etcd_member:
            raise where("etcd_member").error("a worker runs no etcd member (make it an etcd host)")
        hosts.append(Host(
            name=name,
            address=address,
            role=role,
            user=_text(merged.get("user", "root"), "user", where("user")),
            port=_port(merged.get("port", 22), "port", where("port")),
            key=_key(merged.get("key"), "key", where("key")),
            jump=_jump(merged.get("jump"), "jump", where("jump")),
            sudo=_bool(merged.get("sudo", False), "sudo", where("sudo")),
            root=_root(merged.get("root", "/"), "root", where("root")),
            etcd_member=etcd_member,
        ))
    return hosts


# ---------------------------------------------------------------------------------------- Ansible model


class _Var(NamedTuple):
    value: object
    line: Optional[int]
    path: Optional[str] = None  # the group_vars/ or host_vars/ file it came from; None: the inventory


@dataclass
class _Group:
    name: str
    line: Optional[int]
    hosts: List[str] = field(default_factory=list)  # direct members, in file order
    members: Set[str] = field(default_factory=set)  # the same, to test membership at once
    children: List[str] = field(default_factory=list)
    vars: Dict[str, _Var] = field(default_factory=dict)


@dataclass
class _Inventory:
    groups: Dict[str, _Group] = field(default_factory=dict)
    host_vars: Dict[str, Dict[str, _Var]] = field(default_factory=dict)  # insertion order = file order
    host_lines: Dict[str, Optional[int]] = field(default_factory=dict)

    def group(self, name: str, line: Optional[int]) -> _Group:
        if name not in self.groups:
            self.groups[name] = _Group(name, line)
        return self.groups[name]

    def add_hosts(self, group: str, hosts: Sequence[str], line: Optional[int], hvars: Dict[str, _Var],
                  src: _Src) -> None:
        g = self.group(group, line)
        for host in hosts:
            if host not in g.members:
                g.hosts.append(host)
                g.members.add(host)
            self.host_lines.setdefault(host, line)
            self.host_vars.setdefault(host, {}).update(hvars)
        if len(self.host_vars) > MAX_INVENTORY_HOSTS:
            raise src.error(f"more than {MAX_INVENTORY_HOSTS} hosts in the inventory", line)

    def add_child(self, parent: str, child: str, line: Optional[int]) -> None:
        p = self.group(parent, line)
        self.group(child, line)
        if child not in p.children:
            p.children.append(child)


_RANGE = re.compile(r"\[([^\[\]]*)\]")
_RANGE_BOUND = re.compile(r"[0-9]{1,9}")


def _range_values(spec: str, pattern: str, w: _Where) -> List[str]:
    """The names one ``[start:end(:step)]`` stands for."""
    bad = f"bad host range [{spec}] in {pattern!r} (expected [start:end] or [start:end:step])"
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise w.error(bad)
    beg, end = parts[0] or "0", parts[1]
    step_text = parts[2] if len(parts) == 3 else "1"
    if not _RANGE_BOUND.fullmatch(step_text) or int(step_text) < 1:
        raise w.error(bad)
    step = int(step_text)
    width = 0
    if _RANGE_BOUND.fullmatch(beg) and _RANGE_BOUND.fullmatch(end):
        width = len(beg) if beg.startswith("0") and len(beg) > 1 else 0
        if width and len(end) != width:
            raise w.error(f"host range [{spec}] in {pattern!r}: a zero-padded start needs an end of the same width")
        lo, hi = int(beg), int(end)
        letters = False
    elif len(beg) == 1 and len(end) == 1 and beg.isascii() and beg.isalpha() and end.isascii() and end.isalpha():
        lo, hi = ord(beg), ord(end)
        letters = True
    else:
        raise w.error(bad)
    if lo > hi:
        raise w.error(f"host range [{spec}] in {pattern!r} ends before it starts")
    if (hi - lo) // step + 1 > MAX_INVENTORY_HOSTS:
        raise w.error(f"host pattern {pattern!r} expands to more than {MAX_INVENTORY_HOSTS} hosts")
    return [chr(c) if letters else str(c).zfill(width) for c in range(lo, hi + 1, step)]


def _expand(pattern: str, w: _Where) -> List[str]:
    """Ansible host ranges: ``node[01:03]`` (zero-padded), ``master-[1:3]``, ``[a:c]``, ``[1:9:2]``."""
    names = [""]
    rest = pattern
    while True:
        m = _RANGE.search(rest)
        if m is None:
            if "[" in rest or "]" in rest:
                raise w.error(f"unbalanced brackets in host pattern {pattern!r}")
            return [n + rest for n in names]
        head = rest[:m.start()]
        if "[" in head or "]" in head:
            raise w.error(f"bad host range [{m.group(1)}] in {pattern!r} (expected [start:end] or [start:end:step])")
        values = _range_values(m.group(1), pattern, w)
        if len(names) * len(values) > MAX_INVENTORY_HOSTS:
            raise w.error(f"host pattern {pattern!r} expands to more than {MAX_INVENTORY_HOSTS} hosts")
        names = [n + head + v for n in names for v in values]
        rest = rest[m.end():]


def _split_port(pattern: str) -> Tuple[str, Optional[str]]:
    """``host:2222`` -> (host, "2222"); ranges and bare IPv6 addresses keep their colons."""
    m = re.fullmatch(r"(.+):(\d+)", pattern)
    if m and not any(c in _RANGE.sub("", m.group(1)) for c in ":[]"):
        return m.group(1), m.group(2)
    return pattern, None


def _host_pattern(pattern: str, line: Optional[int], src: _Src) -> Tuple[List[str], Dict[str, _Var]]:
    name, port = _split_port(pattern)
    names = _expand(name, _Where(src, line))
    return names, ({"ansible_port": _Var(port, line)} if port is not None else {})


# ---------------------------------------------------------------------------------------- Ansible INI

_INI_SECTION = re.compile(r"^\[[^\[\]\s]+\][ \t]*(?:#.*)?$", re.M)
_SECTION = re.compile(r"\[([^\[\]\s]+)\]\s*(?:#.*)?")  # Ansible: only `#` after a header
_GROUP_NAME = re.compile(r"[^\s\[\]:=#;]+")


def _strip_comment(value: str) -> str:
    """Cut an inline ``#`` comment that follows whitespace outside quotes (Ansible's group-name pattern
    takes ``#`` comments after a child group, not ``;``)."""
    quote = ""
    for i, c in enumerate(value):
        if quote:
            if c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or value[i - 1].isspace()):
            return value[:i].rstrip()
    return value


def _ini_value(text: str) -> object:
    """An INI value as Ansible's ini plugin reads it (``_parse_value``): a Python literal when it is one
    (``True``, ``2222``, ``'a b'``, ``[1, 2]``), else the text as it stands."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _parse_ini(text: str, src: _Src) -> _Inventory:
    inv = _Inventory()
    inv.group("all", None)
    group, kind = "ungrouped", "hosts"
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            m = _SECTION.fullmatch(line)
            if m is None:
                raise src.error(f"bad section header {line!r}", lineno)
            group, _, kind = m.group(1).partition(":")
            kind = kind or "hosts"
            if kind not in ("hosts", "vars", "children") or not _GROUP_NAME.fullmatch(group):
                raise src.error(f"bad section [{m.group(1)}] (expected [group], [group:vars] or [group:children])",
                                lineno)
            inv.group(group, lineno)
            continue
        if kind == "hosts":
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError as e:
                raise src.error(f"cannot parse host line ({e})", lineno) from None
            if not tokens:
                continue
            names, hvars = _host_pattern(tokens[0], lineno, src)
            for token in tokens[1:]:
                k, eq, v = token.partition("=")
                if not eq or not k:
                    raise src.error(f"expected key=value after host {tokens[0]!r}, got {token!r}", lineno)
                hvars[k] = _Var(_ini_value(v), lineno)
            inv.add_hosts(group, names, lineno, hvars, src)
        elif kind == "vars":
            k, eq, v = line.partition("=")
            if not eq or not k.strip():
                raise src.error(f"expected key=value in [{group}:vars], got {line!r}", lineno)
            # Ansible keeps an inline comment here as part of the value: so must kubecert
            inv.group(group, lineno).vars[k.strip()] = _Var(_ini_value(v.strip()), lineno)
        else:
            child = _strip_comment(line)
            if not _GROUP_NAME.fullmatch(child):
                raise src.error(f"expected a group name in [{group}:children], got {line!r}", lineno)
            inv.add_child(group, child, lineno)
    return inv


# ---------------------------------------------------------------------------------------- Ansible YAML

_GROUP_KEYS = ("hosts", "vars", "children")


def _parse_ansible_yaml(data: Dict[Any, Any], doc: _Doc, src: _Src) -> _Inventory:
    inv = _Inventory()
    inv.group("all", None)
    for name, body in data.items():
        line = doc.key_line(data, name)
        if body is not None and not isinstance(body, dict):
            raise src.error(f"not an inventory: top-level {_show(name)} is neither a kubecert `hosts:` list "
                            "nor an Ansible group", line)
        _yaml_group(inv, _str(name), body, line, None, doc, src, 0)
    return inv


def _yaml_vars(mapping: object, what: str, line: Optional[int], doc: _Doc, src: _Src) -> Dict[str, _Var]:
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise src.error(f"{what} must be a mapping of variables, not {_show(mapping)}", line)
    return {_str(k): _Var(v, doc.key_line(mapping, k)) for k, v in mapping.items()}


def _yaml_group(inv: _Inventory, name: str, body: object, line: Optional[int], parent: Optional[str],
                doc: _Doc, src: _Src, depth: int) -> None:
    if depth > MAX_GROUP_DEPTH:
        raise src.error(f"groups nested deeper than {MAX_GROUP_DEPTH} (at {name})", line)
    inv.group(name, line)
    if parent is not None:
        inv.add_child(parent, name, line)
    if body is None:
        return
    if not isinstance(body, dict):
        raise src.error(f"group {name}: expected a mapping of hosts, vars and children, not {_show(body)}", line)
    for k in body:
        if k not in _GROUP_KEYS:
            raise src.error(f"group {name}: unexpected key {_show(k)} (hosts, vars or children)",
                            doc.key_line(body, k))
    hosts = body.get("hosts")
    if hosts is not None:
        if not isinstance(hosts, dict):
            raise src.error(f"group {name}: hosts must be a mapping of host names, not {_show(hosts)}",
                            doc.key_line(body, "hosts"))
        for pattern, hvars in hosts.items():
            hline = doc.key_line(hosts, pattern)
            names, port = _host_pattern(_str(pattern), hline, src)
            own = _yaml_vars(hvars, f"host {pattern}", hline, doc, src)
            inv.add_hosts(name, names, hline, {**port, **own}, src)
    inv.group(name, line).vars.update(_yaml_vars(body.get("vars"), f"group {name}: vars",
                                                 doc.key_line(body, "vars"), doc, src))
    children = body.get("children")
    if children is not None:
        if not isinstance(children, dict):
            raise src.error(f"group {name}: children must be a mapping of groups, not {_show(children)}",
                            doc.key_line(body, "children"))
        for child, child_body in children.items():
            _yaml_group(inv, _str(child), child_body, doc.key_line(children, child), name, doc, src, depth + 1)


# ---------------------------------------------------------------------------------------- group_vars/, host_vars/

_VARS_EXTENSIONS = (".yml", ".yaml", ".json")  # Ansible's YAML_FILENAME_EXTENSIONS
MAX_VARS_FILES = 10_000  # files read from group_vars/ and host_vars/


class _VarsDirs:
    """``group_vars/`` and ``host_vars/`` beside an inventory file, read as Ansible's host_group_vars
    plugin reads them: for NAME the first that exists of ``NAME`` (a file, or a directory read whole),
    ``NAME.yml``, ``NAME.yaml``, ``NAME.json``; in a directory every file, sorted and recursively, with
    no extension or one of those (hidden files and ``~`` backups skipped); a later file's variables
    replace an earlier one's. Read only for the hosts kubecert reaches, each file once."""

    def __init__(self, inventory: str) -> None:
        self.base = os.path.dirname(os.path.abspath(inventory))
        self.listing: Dict[str, Set[str]] = {}
        self.cache: Dict[Tuple[str, str], Dict[str, _Var]] = {}
        self.files = 0

    def vars(self, kind: str, name: str) -> Dict[str, _Var]:
        if (kind, name) not in self.cache:
            self.cache[kind, name] = self._vars(kind, name)
        return self.cache[kind, name]

    def _vars(self, kind: str, name: str) -> Dict[str, _Var]:
        folder = os.path.join(self.base, kind)
        if kind not in self.listing:
            try:
                self.listing[kind] = set(os.listdir(folder)) if os.path.isdir(folder) else set()
            except OSError as e:
                raise ConfigError(f"{_printable(folder)}: cannot list it: {e.strerror}") from None
        if "/" in name or name in (".", ".."):
            return {}
        for candidate in (name, *(name + ext for ext in _VARS_EXTENSIONS)):
            if candidate in self.listing[kind]:
                path = os.path.join(folder, candidate)
                merged: Dict[str, _Var] = {}
                for file in self._walk(path, 0) if os.path.isdir(path) else [path]:
                    merged.update(self._load(file))
                return merged
        return {}

    def _walk(self, folder: str, depth: int) -> List[str]:
        if depth > MAX_GROUP_DEPTH:
            raise ConfigError(f"{_printable(folder)}: directories nested deeper than {MAX_GROUP_DEPTH}")
        try:
            entries = sorted(os.listdir(folder))
        except OSError as e:
            raise ConfigError(f"{_printable(folder)}: cannot list it: {e.strerror}") from None
        found: List[str] = []
        for entry in entries:
            if entry.startswith(".") or entry.endswith("~"):
                continue
            path, ext = os.path.join(folder, entry), os.path.splitext(entry)[1]
            if os.path.isdir(path) and not ext:
                found += self._walk(path, depth + 1)
            elif os.path.isfile(path) and (not ext or ext in _VARS_EXTENSIONS):
                found.append(path)
        return found

    def _load(self, path: str) -> Dict[str, _Var]:
        self.files += 1
        if self.files > MAX_VARS_FILES:
            raise ConfigError(f"{_printable(path)}: more than {MAX_VARS_FILES} files in group_vars/ and host_vars/")
        src = _Src(path)
        data, doc = _load_yaml(_read(path), src)
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise src.error(f"expected a mapping of variables, not {_show(data)}", doc.line_of(data) or 1)
        return {_str(k): _Var(v, doc.key_line(data, k), path) for k, v in data.items()}


# ---------------------------------------------------------------------------------------- Ansible -> hosts


class _Tree:
    """Group relations of an inventory: parents, depth from ``all``, hosts below a group."""

    def __init__(self, inv: _Inventory, src: _Src) -> None:
        self.inv = inv
        self.parents: Dict[str, List[str]] = {g: [] for g in inv.groups}
        for group in inv.groups.values():
            for c in group.children:
                self.parents[c].append(group.name)
        for name, ps in self.parents.items():
            if name != "all" and not ps:
                ps.append("all")
        self.direct: Dict[str, List[str]] = {}  # host -> the groups that list it
        for group in inv.groups.values():
            for h in group.hosts:
                self.direct.setdefault(h, []).append(group.name)
        self.depth: Dict[str, int] = {}
        for name in inv.groups:
            self._depth(name, [], src)

    def _depth(self, group: str, path: List[str], src: _Src) -> int:
        if group in path:
            cycle = " -> ".join([*path[path.index(group):], group][::-1])
            raise src.error(f"group cycle: {cycle}", self.inv.groups[group].line)
        if len(path) > MAX_GROUP_DEPTH:
            raise src.error(f"groups nested deeper than {MAX_GROUP_DEPTH} (below {path[0]})",
                            self.inv.groups[group].line)
        if group not in self.depth:
            ps = self.parents[group]
            self.depth[group] = 1 + max(self._depth(p, [*path, group], src) for p in ps) if ps else 0
        return self.depth[group]

    def hosts(self, group: str) -> List[str]:
        """Every host in ``group`` or below it, in file order."""
        found: Set[str] = set()
        todo, seen = [group], set()
        while todo:
            g = todo.pop()
            if g not in seen:
                seen.add(g)
                found.update(self.inv.groups[g].hosts)
                todo.extend(self.inv.groups[g].children)
        return [h for h in self.inv.host_vars if h in found]

    def groups_of(self, host: str) -> List[str]:
        """Every group ``host`` belongs to, directly or through children, plus ``all``."""
        todo, seen = [*self.direct.get(host, []), "all"], set()
        while todo:
            g = todo.pop()
            if g not in seen:
                seen.add(g)
                todo.extend(self.parents[g])
        return list(seen)


def _priority(group: _Group, src: _Src) -> int:
    var = group.vars.get("ansible_group_priority")
    if var is None:
        return 1
    if isinstance(var.value, int) and not isinstance(var.value, bool):
        return var.value
    if isinstance(var.value, str) and re.fullmatch(r"-?[0-9]{1,18}", var.value.strip()):
        return int(var.value)
    raise src.error(f"group {group.name}: ansible_group_priority {_show(var.value)} is not a number", var.line)


def _host_vars(tree: _Tree, host: str, src: _Src, dirs: Optional[_VarsDirs] = None) -> Dict[str, _Var]:
    """Ansible's precedence (its VARIABLE_PRECEDENCE default, then the host's): the inventory's group
    vars (all < parent groups < child groups, then priority, then name) < group_vars/ files in the same
    order (group_vars/all too beats every group's vars in the inventory) < the host's inventory vars <
    host_vars/ files."""
    groups = [tree.inv.groups[g] for g in tree.groups_of(host)]
    groups.sort(key=lambda g: (tree.depth[g.name], _priority(g, src), g.name))  # `all` first: depth 0
    merged: Dict[str, _Var] = {}
    for g in groups:
        merged.update(g.vars)
    if dirs is not None:
        for g in groups:
            merged.update(dirs.vars("group_vars", g.name))
    merged.update(tree.inv.host_vars[host])
    if dirs is not None:
        merged.update(dirs.vars("host_vars", host))
    return merged


_JINJA_VAR = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def _render(var: _Var, what: str, hvars: Dict[str, _Var], host: str, w: _Where) -> object:
    """Substitute ``{{ name }}`` references to plain variables; refuse any other Jinja."""
    value = var.value
    for _ in range(10):
        if not isinstance(value, str) or "{{" not in value and "{%" not in value:
            return value
        if _JINJA_VAR.fullmatch(value.strip()):  # a lone reference keeps the variable's type
            ref = _JINJA_VAR.fullmatch(value.strip())
            assert ref is not None
            value = _lookup(ref.group(1), what, hvars, host, w)
            continue

        rendered = _substitute(value, var, what, hvars, host, w)
        if rendered == value:
            raise w.error(f"{what} {var.value!r} is a Jinja expression kubecert does not evaluate; "
                          "give the value literally")
        value = rendered
    raise w.error(f"{what} {var.value!r}: variables refer to each other in a loop")


def _substitute(value: str, var: _Var, what: str, hvars: Dict[str, _Var], host: str, w: _Where) -> str:
    """``value`` with every ``{{ name }}`` replaced, refused once longer than :data:`MAX_RENDERED`
    (checked while building it: references can multiply a value's size at each round)."""
    parts: List[str] = []
    size = 0
    end = 0
    for m in _JINJA_VAR.finditer(value):
        text = _str(_lookup(m.group(1), what, hvars, host, w))
        size += m.start() - end + len(text)
        if size > MAX_RENDERED:
            raise w.error(f"{what} {_show(var.value)} is longer than {MAX_RENDERED} characters once its "
                          "variables are substituted")
        parts += [value[end:m.start()], text]
        end = m.end()
    return "".join(parts) + value[end:]


def _lookup(name: str, what: str, hvars: Dict[str, _Var], host: str, w: _Where) -> object:
    if name == "inventory_hostname":
        return host
    if name == "inventory_hostname_short":
        return host.split(".")[0]
    if name not in hvars:
        raise w.error(f"{what} refers to undefined variable {name!r}")
    return hvars[name].value


_SSH_OPTS_WITH_ARG = set("BbcDEeFIiJLlmOoPpQRSWw")


def _ssh_words(words: Sequence[str]) -> Tuple[List[Tuple[str, str]], List[str]]:
    """Split ssh arguments into (flag, value) options and positional arguments."""
    opts: List[Tuple[str, str]] = []
    args: List[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("-") or word == "-":
            args.append(word)
            continue
        for j, flag in enumerate(word[1:], 1):
            if flag in _SSH_OPTS_WITH_ARG:
                value = word[j + 1:]
                if not value and i < len(words):
                    value, i = words[i], i + 1
                opts.append((flag, value))
                break
            opts.append((flag, ""))
    return opts, args


def _ssh_option(value: str) -> Tuple[str, str]:
    """``ProxyJump=x`` / ``ProxyJump x`` -> ("proxyjump", "x")."""
    m = re.fullmatch(r"\s*([A-Za-z]+)\s*(?:=\s*|\s+)(.*)", value, re.S)
    return (m.group(1).lower(), m.group(2).strip()) if m else (value.strip().lower(), "")


def _jump_from_ssh_args(args: str, what: str, w: _Where) -> Optional[str]:
    try:
        words = shlex.split(args)
    except ValueError as e:
        raise w.error(f"cannot split {what} {args!r} ({e})") from None
    opts, _ = _ssh_words(words)
    for flag, value in opts:
        if flag == "J":
            return _jump(value, f"{what} -J", w)
        if flag == "o":
            key, val = _ssh_option(value)
            if key == "proxyjump":
                return _jump(val, f"{what} ProxyJump", w)
            if key == "proxycommand":
                return _jump_from_proxy_command(val, what, w)
    return None


def _jump_from_proxy_command(command: str, what: str, w: _Where) -> Optional[str]:
    """``ssh -W %h:%p [-p port] [-l user] [user@]bastion`` is a jump host; any other command is refused."""
    if command.strip().lower() == "none":
        return None
    refuse = w.error(f"{what} ProxyCommand {command!r} is not `ssh -W %h:%p [user@]host`; "
                     "give the jump host as -o ProxyJump=[user@]host[:port]")
    try:
        words = shlex.split(command)
    except ValueError:
        raise refuse from None
    if not words or posixpath.basename(words[0]) != "ssh":
        raise refuse
    opts, args = _ssh_words(words[1:])
    flags = dict(opts)
    if "W" not in flags or "J" in flags or len(args) != 1:
        raise refuse
    user, port = flags.get("l"), flags.get("p")
    for flag, value in opts:
        if flag == "o":
            key, val = _ssh_option(value)
            if key == "user":
                user = val
            elif key == "port":
                port = val
            elif key in ("proxyjump", "proxycommand") and val.lower() != "none":
                raise refuse
    dest = args[0][len("ssh://"):] if args[0].startswith("ssh://") else args[0]
    if user and "@" not in dest:
        dest = f"{user}@{dest}"
    if port and not re.search(r":\d+$", dest):
        dest = f"{dest}:{port}"
    return _jump(dest, f"{what} ProxyCommand", w)


def _first(hvars: Dict[str, _Var], *names: str) -> Optional[Tuple[str, _Var]]:
    for n in names:
        if n in hvars:
            return n, hvars[n]
    return None


def _ansible_host(name: str, role: str, etcd_member: bool, hvars: Dict[str, _Var], line: Optional[int],
                  src: _Src) -> Host:
    def get(*names: str, default: object = None) -> Tuple[object, str, _Where]:
        found = _first(hvars, *names)
        if found is None:
            return default, names[0], _Where(src, line, name)
        what, var = found
        w = _Where(_Src(var.path), var.line, name) if var.path else _Where(src, var.line or line, name)
        return _render(var, what, hvars, name, w), what, w

    # the ansible_ssh_* spelling first: Ansible's MAGIC_VARIABLE_MAPPING (and its ssh plugin) let it win
    address, a_what, a_w = get("ansible_ssh_host", "ansible_host", default=name)
    user, u_what, u_w = get("ansible_ssh_user", "ansible_user", default="root")
    port, p_what, p_w = get("ansible_ssh_port", "ansible_port", default=22)
    key, k_what, k_w = get("ansible_ssh_private_key_file", "ansible_private_key_file")
    sudo, s_what, s_w = get("ansible_become", default=False)  # ansible_sudo: gone from Ansible, ignored
    root, r_what, r_w = get("kubecert_root", default="/")
    jump: Optional[str] = None
    for var_name in ("ansible_ssh_common_args", "ansible_ssh_extra_args"):
        args, what, w = get(var_name)
        if args is not None and jump is None:
            if not isinstance(args, str):
                raise w.error(f"{what} must be a string, not {_show(args)}")
            jump = _jump_from_ssh_args(args, what, w)
    return Host(
        name=name,
        address=_text(address, a_what, a_w),
        role=role,
        user=_text(user, u_what, u_w),
        port=_port(port, p_what, p_w),
        key=_key(key, k_what, k_w),
        jump=jump,
        sudo=_bool(sudo, s_what, s_w),
        root=_root(root, r_what, r_w),
        etcd_member=etcd_member,
    )


def _real_groups(inv: _Inventory) -> str:
    names = sorted(g for g in inv.groups if g not in ("all", "ungrouped"))
    return ", ".join(names) if names else "none"


def _ansible_hosts(inv: _Inventory, src: _Src, cp_group: Optional[str], etcd_group: Optional[str],
                   worker_group: Optional[str] = None, dirs: Optional[_VarsDirs] = None) -> List[Host]:
    tree = _Tree(inv, src)
    for flag, named in (("--cp-group", cp_group), ("--etcd-group", etcd_group), ("--worker-group", worker_group)):
        if named is not None and named not in inv.groups:
            raise src.error(f"no group {named!r} ({flag}); groups here: {_real_groups(inv)}")

    def pick(named: Optional[str], flag: str, defaults: Sequence[str]) -> List[str]:
        """The hosts of the group the flag names (which must have some), else of the first default
        group that has any."""
        if named is not None:
            found = tree.hosts(named)
            if not found:
                raise src.error(f"no hosts in group {named} ({flag})")
            return found
        return next((hs for hs in (tree.hosts(g) for g in defaults if g in inv.groups) if hs), [])

    cps = pick(cp_group, "--cp-group", CP_GROUPS)
    if not cps:
        raise src.error(f"no hosts in groups {'/'.join(CP_GROUPS)}; pass --cp-group (groups here: "
                        f"{_real_groups(inv)})")
    etcd = pick(etcd_group, "--etcd-group", ETCD_GROUPS)
    workers = pick(worker_group, "--worker-group", WORKER_GROUPS)

    members, cp_set = set(etcd), set(cps)  # sets: groups may hold up to MAX_INVENTORY_HOSTS hosts
    etcd_only = [name for name in etcd if name not in cp_set]
    # kubespray lists schedulable control planes (and etcd hosts that run pods) in kube_node too
    workers = [name for name in workers if name not in cp_set and name not in members]
    _check_limits(len(etcd_only) + len(cps), len(workers), src)  # before the work per host
    hosts: List[Host] = []
    for name in etcd_only:
        hosts.append(_ansible_host(name, ETCD, True, _host_vars(tree, name, src, dirs), inv.host_lines[name], src))
    for name in cps:
        hosts.append(_ansible_host(name, CONTROL_PLANE, name in members, _host_vars(tree, name, src, dirs),
                                   inv.host_lines[name], src))
    for name in workers:
        hosts.append(_ansible_host(name, WORKER, False, _host_vars(tree, name, src, dirs), inv.host_lines[name], src))
    return hosts
