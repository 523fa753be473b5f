"""Helpers for tests that run kubecert as a subprocess against node trees and compare whole trees.

A tree *state* maps every path under a root (relative, symlinks not followed) to what it is: a
symlink and its target, a directory and its mode, or a file with its mode, owner and sha256. Two
states are equal when the trees are indistinguishable to the kubelet and the control plane.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

STATE_DIR = "etc/kubernetes/.kubecert"
STRAY_SUFFIXES = (".kubecert-new", ".kubecert-tmp")

Entry = Tuple[object, ...]
State = Dict[str, Entry]


def clean_env(**extra: str) -> Dict[str, str]:
    """The current environment without any test seam, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBECERT_TEST_")}
    env.update(extra)
    return env


def run_kubecert(*args: str, env: Optional[Mapping[str, str]] = None, timeout: float = 60,
                 record: Optional[List[str]] = None) -> subprocess.CompletedProcess[str]:
    """``python -m kubecert ARGS`` as a fresh process; stdout and stderr are appended to ``record``."""
    proc = subprocess.run([sys.executable, "-m", "kubecert", *args], capture_output=True, text=True,
                          timeout=timeout, check=False, env=dict(env) if env is not None else clean_env())
    if record is not None:
        record.append(proc.stdout)
        record.append(proc.stderr)
    return proc


def lab_create(base: Path, *args: str) -> Path:
    """``kubecert lab create BASE/lab ARGS`` (it must succeed); returns the lab directory."""
    proc = run_kubecert("lab", "create", str(base / "lab"), *args)
    assert proc.returncode == 0, proc.stderr
    return base / "lab"


def copy_tree(src: Path, dest: Path) -> Path:
    """A private copy of a node tree: symlinks stay symlinks (the kubelet's are absolute node paths),
    modes and owners are kept."""
    shutil.copytree(src, dest, symlinks=True)
    for dirpath, dirnames, filenames in os.walk(src):
        for name in [".", *dirnames, *filenames]:
            s = os.lstat(os.path.join(dirpath, name))
            d = os.path.join(dest, os.path.relpath(dirpath, src), name)
            if (s.st_uid, s.st_gid) != (os.lstat(d).st_uid, os.lstat(d).st_gid):
                os.lchown(d, s.st_uid, s.st_gid)
    return dest


def tree_state(root: Path, *, exclude: Sequence[str] = ()) -> State:
    """Every entry under ``root`` except the relative paths in ``exclude`` (and what is below them)."""
    out: State = {}
    skip = {e.rstrip("/") for e in exclude}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        prefix = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = [d for d in dirnames if prefix + d not in skip]
        for name in sorted(dirnames + filenames):
            rel = prefix + name
            if rel in skip:
                continue
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                out[rel] = ("dir", st.st_mode & 0o7777, st.st_uid, st.st_gid)
            elif not stat.S_ISREG(st.st_mode):  # a FIFO or socket: never open it
                out[rel] = ("special", stat.S_IFMT(st.st_mode), st.st_mode & 0o7777)
            else:
                with open(path, "rb") as fh:
                    digest = hashlib.sha256(fh.read()).hexdigest()
                out[rel] = ("file", st.st_mode & 0o7777, st.st_uid, st.st_gid, digest)
    return out


def node_state(root: Path) -> State:
    """The node's own files: everything but kubecert's state directory (backups, journal, lock, log)."""
    return tree_state(root, exclude=(STATE_DIR,))


def changed(a: State, b: State) -> Set[str]:
    """The relative paths whose entry differs between two states (added and removed ones too)."""
    return {rel for rel in set(a) | set(b) if a.get(rel) != b.get(rel)}


def after_crash_invariants(root: Path) -> List[str]:
    """What a crash followed by ``kubecert recover`` must not leave behind: temp files, the journal."""
    problems = [f"stray file {s}" for s in strays(root)]
    if (root / STATE_DIR / "journal.json").exists():
        problems.append("journal still present")
    return problems


def monotonic(outcomes: Sequence[str], first: str, second: str) -> bool:
    """Outcomes by crash step: all ``first`` up to one commit point, then all ``second``."""
    switch = outcomes.index(second) if second in outcomes else len(outcomes)
    return all(o == first for o in outcomes[:switch]) and all(o == second for o in outcomes[switch:])


def diff(a: State, b: State, limit: int = 12) -> str:
    """A short human description of how two states differ (for assertion messages)."""
    lines = []
    for rel in sorted(set(a) | set(b)):
        if a.get(rel) != b.get(rel):
            lines.append(f"  {rel}: {a.get(rel, 'absent')} -> {b.get(rel, 'absent')}")
    more = f"\n  ... {len(lines) - limit} more" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + more


def strays(root: Path) -> List[str]:
    """Leftover temp or staged files of an atomic write, anywhere under ``root``."""
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            if f.endswith(STRAY_SUFFIXES) or ".kubecert-tmp-" in f:
                found.append(os.path.relpath(os.path.join(dirpath, f), root))
    return sorted(found)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Non-zero exit, no traceback, and stderr is exactly one ``kubecert: error:`` line."""
    assert proc.returncode != 0, f"expected a refusal, got exit 0:\n{proc.stdout}"
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{proc.stderr}"
    assert lines[0].startswith("kubecert: error: "), lines[0]
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


# --- key material --------------------------------------------------------------------------------

_PEM_KEY = re.compile(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----\n?", re.S)
_KEY_DATA = re.compile(rb"client-key-data:\s*(\S+)")


def private_keys_under(*roots: Path) -> Set[bytes]:
    """Every private key PEM block found under ``roots``: key files, kubelet pems, backups, and
    ``client-key-data`` embedded in kubeconfigs."""
    keys: Set[bytes] = set()
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for f in files:
                path = os.path.join(dirpath, f)
                if not stat.S_ISREG(os.lstat(path).st_mode):  # symlinks, FIFOs (a FIFO would block)
                    continue
                try:
                    with open(path, "rb") as fh:
                        data = fh.read()
                except OSError:
                    continue
                keys.update(m.group(0) for m in _PEM_KEY.finditer(data))
                for m in _KEY_DATA.finditer(data):
                    try:
                        decoded = base64.b64decode(m.group(1), validate=True)
                    except ValueError:
                        continue
                    keys.update(k.group(0) for k in _PEM_KEY.finditer(decoded))
    return keys


def key_leaks(texts: Iterable[str], keys: Iterable[bytes]) -> List[str]:
    """What of ``keys`` shows up in ``texts``: the words PRIVATE KEY, a PEM body line, the whole
    body as one base64 string, or the base64 of the whole PEM (as kubeconfigs embed it)."""
    blob = "\n".join(texts)
    found = []
    if "PRIVATE KEY" in blob:
        found.append("the words 'PRIVATE KEY'")
    for pem in keys:
        text = pem.decode()
        body = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("-----")]
        needles = [ln for ln in body if len(ln) >= 16]
        needles.append("".join(body))
        needles.append(base64.b64encode(pem).decode())
        needles.append(base64.b64encode(pem.rstrip(b"\n") + b"\n").decode())
        for n in needles:
            if n and n in blob:
                found.append(f"key material {n[:24]}...")
                break
    return found
