"""What every `kubecert cluster ...` command shares: which hosts it reaches (the inventory options,
parsed into a :class:`Target`), a dry run's per-node plans, and a rolling run's progress lines."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import click

from .common import F, fail, print_plan

_TARGET_KEYS = ("inventory", "cp_group", "etcd_group", "worker_group", "known_hosts", "accept_new_host_keys",
                "local_roots", "ssh_user", "use_sudo")


@dataclass(frozen=True)
class Target:
    """Which hosts a cluster command reaches, and how (the inventory options, parsed)."""

    inventory: Optional[str]
    cp_group: Optional[str]
    etcd_group: Optional[str]
    worker_group: Optional[str]
    known_hosts: Optional[str]
    accept_new_host_keys: bool
    local_roots: bool
    ssh_user: Optional[str]
    use_sudo: Optional[bool]

    def hosts(self) -> List[Any]:
        from ..remote.hosts import load_inventory

        if not self.inventory:
            fail("pass -i/--inventory FILE (a kubecert or Ansible inventory)")
        assert self.inventory is not None
        hosts = load_inventory(self.inventory, cp_group=self.cp_group, etcd_group=self.etcd_group,
                               worker_group=self.worker_group)
        changes: Dict[str, Any] = {}
        if self.ssh_user:
            changes["user"] = self.ssh_user
        if self.use_sudo:
            changes["sudo"] = True
        return [dataclasses.replace(h, **changes) for h in hosts] if changes else hosts

    def connector(self) -> Any:
        if self.local_roots:
            from ..cluster import local_connect

            return local_connect
        from ..remote.ssh import Connection

        known_hosts, accept_new = self.known_hosts, self.accept_new_host_keys

        def connect(host: Any) -> Any:
            return Connection(host, known_hosts=known_hosts, accept_new=accept_new).open()

        return connect


def inventory_options(fn: F) -> F:
    """The options that say which hosts to reach; the command gets them as ``target: Target``."""
    opts = [
        click.option("-i", "--inventory", metavar="FILE",
                     help="kubecert YAML inventory, or an Ansible inventory (INI or YAML)."),
        click.option("--cp-group", help="Ansible group of the control planes (default: kube_control_plane, ...)."),
        click.option("--etcd-group", help="Ansible group of the etcd hosts (default: etcd)."),
        click.option("--worker-group", help="Ansible group of the workers (default: kube_node; its control "
                     "planes stay control planes)."),
        click.option("--known-hosts", metavar="FILE", help="known_hosts to verify host keys (default ~/.ssh/known_hosts)."),
        click.option("--accept-new-host-keys", is_flag=True,
                     help="Accept and record keys of hosts not yet in known_hosts (a changed key is always refused)."),
        click.option("--local", "local_roots", is_flag=True,
                     help="The inventory's `root` paths are directories on this machine, commands run here "
                          "(rehearse on a lab; or a one-node inventory with root / on the node itself)."),
        click.option("--user", "ssh_user", help="SSH user for every host (overrides the inventory)."),
        click.option("--sudo", "use_sudo", is_flag=True, default=None,
                     help="Run commands with sudo -n on every host (Ansible inventories rarely say so)."),
    ]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs["target"] = Target(**{k: kwargs.pop(k) for k in _TARGET_KEYS})
        return fn(*args, **kwargs)

    out: Any = wrapper
    for o in reversed(opts):
        out = o(out)
    return out  # type: ignore[no-any-return]


def dry_run_plans(hosts: Any, connect: Any, console: Any, plan_of: Any) -> None:
    """Each node's plan (``plan_of(host, fs)``), in rollout order; nothing written."""
    from ..cluster import rollout_order

    for h in rollout_order(hosts):
        conn = connect(h)
        try:
            p = plan_of(h, conn.fs())
        finally:
            conn.close()
        console.print(f"\n== {h.name} ({h.role}, {h.address})")
        print_plan(p, console)
    console.print("\ndry run: nothing was written")


def roll_out(console: Any, state: Any, roll: Any) -> Any:
    """``roll(progress)`` with timestamped progress lines, then the per-node table; exits 4/5 at a
    failed node; returns (the run, seconds) when every node is done."""
    import time

    start = time.monotonic()

    def progress(node: str, step: str, message: str) -> None:
        console.print(f"[{time.monotonic() - start:6.1f}s] {node:<12} {step:<24} {message}")

    run = roll(progress)
    console.print("")
    for n in run.nodes:
        console.print(f"{n.name:<14} {n.status:<12} {n.seconds:6.1f}s  {n.detail}")
    if not run.ok:
        failed = next(n for n in run.nodes if n.status == "failed")
        fail(f"stopped at {failed.name}: {failed.detail}; nodes after it were not touched; "
             f"re-run to resume (state: {state.path})", 4 if failed.outcome and failed.outcome.exit_code == 4 else 5)
    return run, time.monotonic() - start
