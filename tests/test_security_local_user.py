"""A local user on a control plane attacks a root run of `kubecert renew --update-user-kubeconfigs`.

Every attack is made by a REAL unprivileged account (created here with useradd) acting through its
own processes (subprocess with ``user=``), against a lab node whose ``/home/mallory`` belongs to
that account, the way it is on a real master. Each must leave the target untouched and mallory's
own file either updated as hers (she already held those credentials) or left alone with a note.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest
import yaml

from conftest import assert_no_traceback

NOW = "2026-11-30T12:00:00Z"
USER = "kubecert-mallory"
SECRET = b"root:$6$not-a-real-hash:19000:0:99999:7:::\n"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a user and run kubecert as root")


@pytest.fixture(scope="module")
def mallory() -> Tuple[int, int]:
    try:
        pw = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True)
        pw = pwd.getpwnam(USER)
    return pw.pw_uid, pw.pw_gid


@pytest.fixture(scope="module")
def lab() -> Iterator[Path]:
    """A lab node under a directory every user may traverse (tmp_path is root's own, 0700)."""
    base = Path(tempfile.mkdtemp(prefix="kubecert-attack-", dir="/tmp"))
    os.chmod(base, 0o755)
    subprocess.run([sys.executable, "-m", "kubecert", "lab", "create", str(base / "lab"), "--nodes", "1", "--now", NOW],
                   check=True, capture_output=True)
    yield base / "lab/master-1"
    shutil.rmtree(base, ignore_errors=True)


def node(lab: Path, tmp: str, mallory: Tuple[int, int]) -> Path:
    """A fresh copy of the lab node with a root-only secret and mallory's home (hers, as on a real host)."""
    root = Path(tempfile.mkdtemp(prefix=f"{tmp}-", dir=lab.parent.parent))
    os.chmod(root, 0o755)
    shutil.copytree(lab, root, symlinks=True, dirs_exist_ok=True)
    secret = root / "etc/shadow"
    secret.write_bytes(SECRET)
    os.chmod(secret, 0o600)
    home = root / "home/mallory"
    home.mkdir(parents=True)
    os.chown(home, *mallory)
    os.chmod(home, 0o755)
    return root


def as_mallory(mallory: Tuple[int, int], *argv: str) -> None:
    """Run a command as mallory (her own process, her own rights)."""
    subprocess.run(list(argv), user=mallory[0], group=mallory[1], extra_groups=[], check=True, timeout=30)


def admin_copy(root: Path, mallory: Tuple[int, int], key: bytes | None = None) -> Path:
    """mallory's ~/.kube/config: a copy of admin.conf (she was given it), optionally with another key."""
    kube = root / "home/mallory/.kube"
    as_mallory(mallory, "mkdir", "-m", "0700", str(kube))
    data = (root / "etc/kubernetes/admin.conf").read_bytes()
    if key is not None:
        doc = yaml.safe_load(data)
        doc["users"][0]["user"]["client-key-data"] = base64.b64encode(key).decode()
        data = yaml.safe_dump(doc, sort_keys=False).encode()
    cfg = kube / "config"
    cfg.write_bytes(data)
    os.chown(cfg, *mallory)
    os.chmod(cfg, 0o600)
    return cfg


def renew(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "kubecert", "renew", "admin.conf", "--root", str(root), "--now", NOW,
                           "--yes", "--update-user-kubeconfigs", *extra], capture_output=True, text=True, timeout=120)
    assert_no_traceback(proc.stdout, proc.stderr)
    return proc


def fingerprint(path: Path) -> Tuple[bytes, int, int, int]:
    st = path.lstat()
    return hashlib.sha256(path.read_bytes()).digest(), st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def user_key(cfg: Path) -> bytes:
    return base64.b64decode(yaml.safe_load(cfg.read_bytes())["users"][0]["user"]["client-key-data"])


def admin_key(root: Path) -> bytes:
    return user_key(root / "etc/kubernetes/admin.conf")


def test_symlink_at_the_staging_name_does_not_redirect_the_root_write(lab: Path, mallory: Tuple[int, int]) -> None:
    root = node(lab, "staged", mallory)
    cfg = admin_copy(root, mallory)
    secret = fingerprint(root / "etc/shadow")
    # the predictable names a root run used to write through, each a link to the root-only file
    for name in (".config.kubecert-new", ".config.kubecert-tmp", ".config.kubecert-new.kubecert-tmp"):
        as_mallory(mallory, "ln", "-s", "/etc/shadow", str(cfg.parent / name))
    proc = renew(root)
    assert proc.returncode == 0, proc.stderr
    assert fingerprint(root / "etc/shadow") == secret, "the root-only file was replaced through mallory's symlink"
    # her copy holds the new admin credentials (she held the old ones), is still hers and private
    st = cfg.lstat()
    assert stat.S_ISREG(st.st_mode) and (st.st_uid, st.st_gid) == mallory and stat.S_IMODE(st.st_mode) == 0o600
    assert user_key(cfg) == admin_key(root)
    # nothing in her directory is owned by root: every write there was made with her rights
    assert all(p.lstat().st_uid == mallory[0] for p in cfg.parent.iterdir()), list(cfg.parent.iterdir())


def test_kube_dir_that_is_a_symlink_is_skipped(lab: Path, mallory: Tuple[int, int]) -> None:
    root = node(lab, "dirlink", mallory)
    # ~/.kube -> /etc/kubernetes: a root run that followed it would "update" root's own files as hers
    as_mallory(mallory, "ln", "-s", "/etc/kubernetes", str(root / "home/mallory/.kube"))
    before = {p: fingerprint(p) for p in (root / "etc/kubernetes").iterdir() if p.is_file() and p.name != "admin.conf"}
    proc = renew(root)
    assert proc.returncode == 0, proc.stderr
    assert "/home/mallory/.kube: a symlink; left alone" in proc.stdout
    assert {p: fingerprint(p) for p in before} == before
    assert (root / "home/mallory/.kube").is_symlink()


def test_symlinked_config_and_parent_swaps_are_not_followed(lab: Path, mallory: Tuple[int, int]) -> None:
    root = node(lab, "filelink", mallory)
    kube = root / "home/mallory/.kube"
    as_mallory(mallory, "mkdir", "-m", "0700", str(kube))
    as_mallory(mallory, "ln", "-s", "/etc/shadow", str(kube / "config"))
    secret = fingerprint(root / "etc/shadow")
    proc = renew(root)
    assert proc.returncode == 0, proc.stderr
    assert fingerprint(root / "etc/shadow") == secret
    assert os.readlink(kube / "config") == "/etc/shadow"


def test_fifo_as_config_neither_hangs_nor_is_followed(lab: Path, mallory: Tuple[int, int]) -> None:
    root = node(lab, "fifo", mallory)
    kube = root / "home/mallory/.kube"
    as_mallory(mallory, "mkdir", "-m", "0700", str(kube))
    as_mallory(mallory, "mkfifo", str(kube / "config"))
    proc = renew(root)  # the 120 s timeout is the hang detector
    assert proc.returncode == 0, proc.stderr
    assert "/home/mallory/.kube/config: not a regular file; left alone" in proc.stdout
    assert stat.S_ISFIFO((kube / "config").lstat().st_mode)


def test_certificate_without_its_key_gets_no_new_admin_key(lab: Path, mallory: Tuple[int, int]) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    root = node(lab, "nokey", mallory)
    junk = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    cfg = admin_copy(root, mallory, key=junk)  # the public admin certificate, with a key of her own
    before = fingerprint(cfg)
    proc = renew(root)
    assert proc.returncode == 0, proc.stderr
    assert "holds the old admin.conf certificate but not its private key; left alone" in proc.stdout
    assert fingerprint(cfg) == before
    assert admin_key(root) not in cfg.read_bytes() and base64.b64encode(admin_key(root)) not in cfg.read_bytes()


def test_file_of_another_owner_in_her_directory_is_left_alone(lab: Path, mallory: Tuple[int, int]) -> None:
    root = node(lab, "rootfile", mallory)
    cfg = admin_copy(root, mallory)
    os.chown(cfg, 0, 0)  # `sudo cp admin.conf ~/.kube/config`: root's file, which she cannot read
    before = fingerprint(cfg)
    proc = renew(root)
    assert proc.returncode == 0, proc.stderr
    assert "owned by uid 0" in proc.stdout and "left alone" in proc.stdout
    assert fingerprint(cfg) == before


def test_the_real_copy_is_updated_and_kept_private(lab: Path, mallory: Tuple[int, int]) -> None:
    """The positive case next to the attacks: an honest copy is renewed, stays hers and 0600."""
    root = node(lab, "honest", mallory)
    cfg = admin_copy(root, mallory)
    os.chmod(cfg, 0o644)
    proc = renew(root)
    assert proc.returncode == 0, proc.stderr
    lines: List[str] = [ln for ln in proc.stdout.splitlines() if "/home/mallory/.kube/config" in ln]
    assert lines and "copy of admin.conf" in lines[0], proc.stdout
    assert user_key(cfg) == admin_key(root)
    st = cfg.lstat()
    assert (st.st_uid, st.st_gid) == mallory and stat.S_IMODE(st.st_mode) == 0o600
