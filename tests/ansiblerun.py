"""What the tests of the Ansible collection share: kubecert on the "node" behind a two-line wrapper (the
installed package; the single file is tested in test_dist.py), an environment in which the user's own
Ansible settings play no part, and plays on one host reached with Ansible's local connection."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HOST = "master-1"


def kubecert_wrapper(directory: Path, env: Optional[Dict[str, str]] = None) -> Path:
    """``kubecert_bin`` for the nodes: this interpreter's kubecert; with ``env``, run in exactly that
    environment (a fake node's stand-ins on PATH, say)."""
    path = directory / "kubecert-wrapper"
    if env is None:
        line = f'exec {sys.executable} -m kubecert "$@"'
    else:
        assigns = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
        line = f'exec env -i {assigns} {shlex.quote(sys.executable)} -m kubecert "$@"'
    path.write_text(f"#!/bin/sh\n{line}\n")
    path.chmod(0o755)
    return path


def ansible_env(directory: Path, **extra: str) -> Dict[str, str]:
    """This environment without ANSIBLE_* / KUBECERT_*, Ansible's config and home under ``directory``,
    the collection from this checkout, no colours and no deprecation noise; ``extra`` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "KUBECERT_"))}
    home = directory / "ansible-home"
    env.update(ANSIBLE_CONFIG=str(directory / "no-ansible.cfg"), ANSIBLE_HOME=str(home),
               ANSIBLE_LOCAL_TEMP=str(home / "tmp"), ANSIBLE_COLLECTIONS_PATH=str(REPO), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", ANSIBLE_DEPRECATION_WARNINGS="False", ANSIBLE_LOCALHOST_WARNING="False",
               PYTHONWARNINGS="ignore")
    env.update(extra)
    return env


def local_play(directory: Path, tasks: str, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """One play of ``tasks`` (YAML, indented four spaces) on host master-1, local connection."""
    book = directory / "play.yml"
    book.write_text(f"- hosts: {HOST}\n  gather_facts: false\n  tasks:\n{tasks}")
    inventory = directory / "inventory.ini"
    inventory.write_text(f"{HOST} ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), str(book), *extra],
                          capture_output=True, text=True, timeout=timeout, env=ansible_env(directory), check=False)


def module_result(directory: Path, module: str, args: Dict[str, Any], *extra: str,
                  timeout: float = 240) -> Dict[str, Any]:
    """The registered result of one task of ``module`` with ``args`` on master-1 (ignore_errors: the
    module's own failure is in the result); ``extra``: ansible-playbook's options (--check, ...)."""
    result = directory / "result.json"
    options = "\n".join(f"        {k}: {json.dumps(v)}" for k, v in args.items())
    r = local_play(directory, f"""    - name: the module
      {module}:
{options}
      register: out
      ignore_errors: true
    - name: keep its result
      ansible.builtin.copy:
        content: "{{{{ out | to_json }}}}"
        dest: {result}
      delegate_to: localhost
      check_mode: false
""", *extra, timeout=timeout)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    found: Dict[str, Any] = json.loads(result.read_text())
    return found


def out(r: subprocess.CompletedProcess[str]) -> str:
    """A run's exit code and the ends of its output, for an assertion's message."""
    return f"exit {r.returncode}\n--- stdout ---\n{r.stdout[-8000:]}\n--- stderr ---\n{r.stderr[-3000:]}"
