"""The offline distribution of scripts/build-dist.sh: the single file, the wheelhouse, completion, man page.

The distribution is built once per session (``build-dist.sh --local-wheelhouse``: the wheelhouse
holds the dependencies for this Python on this machine only; the full multi-platform download is the
script's own job) and cached under ``~/.cache/kubecert/dist/<hash of the sources>``, so a second
run is fast and a fresh machine builds it in about a minute.

The single file runs the way it would on an air-gapped master: a network namespace with nothing but
``lo``, a mount namespace where every Python installation (and this checkout) is hidden under an
empty tmpfs, an empty environment (``env -i``), a working directory outside the checkout. Its
results are compared with the installed package's (``python -m kubecert``) on the same lab trees.
"""

from __future__ import annotations

import datetime as dt
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from kubecert import __version__
from treeutil import clean_env, copy_tree, node_state, run_kubecert

pytestmark = pytest.mark.timeout(900)  # a cold build: about a minute here, a few on a slow CI machine

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("KUBECERT_DIST_CACHE") or Path.home() / ".cache/kubecert/dist")
BINARY_NAME = f"kubecert-{__version__}-linux-{platform.machine()}"
# the lab's and every command's clock: the real one (new certificates must be valid now), pinned
NOW = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
CA_NAMES = {"ca", "front-proxy-ca", "etcd-ca", "sa", "all"}


# --- the build -----------------------------------------------------------------------------------

def _source_key() -> str:
    """What the distribution is built from: kubecert's sources, the build inputs, the tool versions."""
    h = hashlib.sha256()
    files = sorted(p for p in (ROOT / "src/kubecert").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    files += [ROOT / "pyproject.toml", ROOT / "README.md", ROOT / "scripts/build-dist.sh"]
    files += sorted(p for p in (ROOT / "packaging").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    import PyInstaller  # type: ignore[import-untyped]

    h.update(f"{sys.version} {PyInstaller.__version__} {platform.machine()}".encode())
    return h.hexdigest()[:20]


@pytest.fixture(scope="module")
def dist() -> Path:
    """dist/ as build-dist.sh writes it (cached by source hash; built here when absent)."""
    out = CACHE / _source_key()
    if (out / "SHA256SUMS").is_file():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / f"{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    proc = subprocess.run(["bash", str(ROOT / "scripts/build-dist.sh"), "--out", str(tmp), "--local-wheelhouse"],
                          capture_output=True, text=True, check=False, timeout=840,
                          env={**clean_env(), "PYTHON": sys.executable})
    assert proc.returncode == 0, f"build-dist.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    (tmp / "build.log").write_text(proc.stdout)  # after SHA256SUMS: not part of the distribution
    try:
        tmp.rename(out)
    except OSError:  # another session finished the same build first
        shutil.rmtree(tmp, ignore_errors=True)
    # keep the three newest builds (about 45 MB each): every change to src/ makes a new one
    builds = sorted((p for p in CACHE.iterdir() if p.is_dir() and ".tmp-" not in p.name),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in builds[3:]:
        shutil.rmtree(old, ignore_errors=True)
    return out


@pytest.fixture(scope="module")
def binary(dist: Path) -> Path:
    path = dist / BINARY_NAME
    assert path.is_file() and os.access(path, os.X_OK), f"{path} missing"
    return path


# --- running the single file as on an air-gapped master ------------------------------------------

def _hidden_dirs() -> List[str]:
    """Every Python installation on this machine, and the checkout: hidden from the single file."""
    found = {sys.base_prefix, sys.prefix, sysconfig.get_paths()["purelib"], str(ROOT)}
    found.update(glob.glob("/usr/lib/python3*") + glob.glob("/usr/local/lib/python3*"))
    dirs = sorted(os.path.realpath(d) for d in found if os.path.isdir(d))
    return [d for d in dirs if not any(d.startswith(other + "/") for other in dirs)]  # not below another


_SANDBOX = """
set -e
for d in "$@"; do [ "$d" = -- ] && break; mount -t tmpfs -o size=1m none "$d"; done
while [ "$1" != -- ]; do shift; done; shift
exec env -i "$@"
"""


def sandboxed(*argv: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``env -i ARGV`` with no network but ``lo``, no Python install and no checkout visible."""
    cmd = ["unshare", "--net", "--mount", "--propagation", "private", "--", "sh", "-c", _SANDBOX, "sandbox",
           *_hidden_dirs(), "--", *argv]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False, timeout=timeout)


def frozen(binary: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return sandboxed(str(binary), *args, cwd=cwd)


def installed(*args: str) -> subprocess.CompletedProcess[str]:
    return run_kubecert(*args)


@pytest.fixture()
def lab(tmp_path: Path) -> Path:
    """A 2-control-plane + 1-worker lab written by the installed package, leafs expiring in 20 days
    (so check warns and renew has work), plus one finding (a key readable by others)."""
    proc = installed("lab", "create", str(tmp_path / "lab"), "--nodes", "2", "--workers", "1",
                     "--expires-in", "20d", "--now", NOW)
    assert proc.returncode == 0, proc.stderr
    os.chmod(tmp_path / "lab/master-1/etc/kubernetes/pki/front-proxy-client.key", 0o644)
    return tmp_path / "lab"


def _nodes(lab: Path) -> List[str]:
    return sorted(p.name for p in lab.iterdir() if p.is_dir())


def _check_json(root: Path) -> Dict[str, Any]:
    """The installed package's ``check -o json`` of ``root``: kubeadm's records plus kubecert's."""
    proc = installed("check", "--root", str(root), "--now", NOW, "-o", "json")
    assert proc.returncode in (0, 1, 2), proc.stderr
    data: Dict[str, Any] = json.loads(proc.stdout)
    return data


def _facts(root: Path) -> Dict[str, Any]:
    """What must be equal between two trees with the same certificates but other keys: every
    certificate's subject, issuer, SANs, validity, key type, CA, path; and the findings."""
    data = _check_json(root)
    volatile = {"serial", "sha256Fingerprint"}

    def clean(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items() if k not in volatile}
        if isinstance(obj, list):
            return [clean(v) for v in obj]
        if isinstance(obj, str):
            return obj.replace(str(root), "ROOT")
        return obj

    return {k: clean(v) for k, v in data.items()}


def _shape(root: Path) -> Dict[str, Tuple[object, ...]]:
    """The tree without file contents: paths, kinds, modes, owners, symlink targets (dated kubelet
    pem names and backup directories carry --now, so they are equal too)."""
    return {rel: entry[:-1] if entry[0] == "file" else entry for rel, entry in node_state(root).items()}


_NEW_SERIAL = re.compile(r"(\b[0-9A-F]{6,}\s+->\s+)[0-9A-F]{6,}\b")


def _normal(text: str, root: Path) -> List[str]:
    """Output lines with the root replaced, new serials (random) masked and spacing squeezed
    (column widths follow the serials' lengths)."""
    text = _NEW_SERIAL.sub(r"\1NEW", text.replace(str(root), "ROOT"))
    return [" ".join(line.split()) for line in _free(text).splitlines()]


_FREE = re.compile(r"\(\d+(?:\.\d+)? [KMGTP]?i?B free\)")


def _free(text: str) -> str:
    """The disk's free space masked: other tests write to the same disk between the two runs."""
    return _FREE.sub("(N free)", text)


# --- the tests -----------------------------------------------------------------------------------

def test_version_says_how_it_was_built(binary: Path, tmp_path: Path) -> None:
    proc = frozen(binary, "--version", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    m = re.fullmatch(r"kubecert (\S+) \(single-file, PyInstaller (6\.\S+), Python (\S+), built (\S+)\)\n", proc.stdout)
    assert m, proc.stdout
    assert m.group(1) == __version__
    assert m.group(3) == platform.python_version()
    dt.date.fromisoformat(m.group(4))
    mine = installed("--version")
    assert re.fullmatch(rf"kubecert {re.escape(__version__)} \((installed package|source checkout), "
                        rf"Python {re.escape(platform.python_version())}\)\n", mine.stdout), mine.stdout


def test_sandbox_has_only_lo_and_no_python(tmp_path: Path) -> None:
    """The premise of the tests below: the single file runs where nothing else would."""
    links = sandboxed(shutil.which("ip") or "/sbin/ip", "-o", "link", cwd=tmp_path)
    assert links.returncode == 0, links.stderr
    assert [line.split(":")[1].strip() for line in links.stdout.splitlines()] == ["lo"]
    python = sandboxed(sys.executable, "-c", "import kubecert", cwd=tmp_path)
    assert python.returncode != 0
    checkout = sandboxed("/bin/ls", "-A", str(ROOT), cwd=tmp_path)
    assert checkout.returncode == 0 and checkout.stdout == ""


def test_lab_create_same_as_installed(binary: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    args = ("--nodes", "2", "--workers", "1", "--topology", "external-etcd", "--expires-in", "40d", "--now", NOW)
    mine = frozen(binary, "lab", "create", "frozen-lab", *args, cwd=work)
    ref = installed("lab", "create", str(tmp_path / "ref-lab"), *args)
    assert (mine.returncode, ref.returncode) == (0, 0), mine.stderr + ref.stderr
    frozen_lab, ref_lab = work / "frozen-lab", tmp_path / "ref-lab"
    assert _nodes(frozen_lab) == _nodes(ref_lab) and len(_nodes(ref_lab)) == 5  # 2 etcd, 2 cp, 1 worker
    assert _normal(mine.stdout, frozen_lab) == _normal(ref.stdout, ref_lab)
    for node in _nodes(ref_lab):
        assert _shape(frozen_lab / node) == _shape(ref_lab / node), node
        assert _facts(frozen_lab / node) == _facts(ref_lab / node), node


def test_check_same_as_installed(binary: Path, lab: Path, tmp_path: Path) -> None:
    for node in _nodes(lab):
        for output in ("table", "json", "yaml"):
            args = ("check", "--root", str(lab / node), "--now", NOW, "-o", output)
            mine, ref = frozen(binary, *args, cwd=tmp_path), installed(*args)
            assert (mine.returncode, _free(mine.stdout), mine.stderr) == (ref.returncode, _free(ref.stdout), ref.stderr), \
                f"{node} -o {output}"
    # the lab has what check must report: leafs within --warn and a finding
    assert installed("check", "--root", str(lab / "master-1"), "--now", NOW).returncode == 1
    assert any("front-proxy-client.key" in str(f) for f in _check_json(lab / "master-1")["findings"])


def test_renew_dry_run_same_as_installed(binary: Path, lab: Path, tmp_path: Path) -> None:
    for node in _nodes(lab):
        a, b = copy_tree(lab / node, tmp_path / "a" / node), copy_tree(lab / node, tmp_path / "b" / node)
        before = node_state(a)
        mine = frozen(binary, "renew", "--dry-run", "--root", str(a), "--now", NOW, cwd=tmp_path)
        ref = installed("renew", "--dry-run", "--root", str(b), "--now", NOW)
        assert mine.returncode == ref.returncode == 0, mine.stderr + ref.stderr
        assert _normal(mine.stdout, a) == _normal(ref.stdout, b), node
        assert _normal(mine.stderr, a) == _normal(ref.stderr, b), node
        assert "nothing was written" in mine.stdout
        assert node_state(a) == before


def test_renew_all_same_as_installed(binary: Path, lab: Path, tmp_path: Path) -> None:
    renewed = 0
    for node in _nodes(lab):
        a, b = copy_tree(lab / node, tmp_path / "a" / node), copy_tree(lab / node, tmp_path / "b" / node)
        before = _facts(a)
        mine = frozen(binary, "renew", "all", "--yes", "--root", str(a), "--now", NOW, cwd=tmp_path)
        ref = installed("renew", "all", "--yes", "--root", str(b), "--now", NOW)
        assert mine.returncode == ref.returncode == 0, mine.stderr + ref.stderr
        assert _normal(mine.stdout, a) == _normal(ref.stdout, b), node
        assert _shape(a) == _shape(b), node
        after_frozen, after_ref = _facts(a), _facts(b)
        assert after_frozen == after_ref, node
        # something was renewed (NotAfter moved from 20 days to a year), and check is clean of it
        moved = [c["name"] for c, old in zip(after_frozen["certificates"], before["certificates"])
                 if c["expirationDate"] != old["expirationDate"]]
        renewed += len(moved)
        assert not [f for f in after_frozen["findings"] if "signed" in str(f) or "match" in str(f)], node
    assert renewed >= 10


def test_completion_scripts(binary: Path, tmp_path: Path) -> None:
    for shell in ("bash", "zsh", "fish"):
        mine = frozen(binary, "completion", shell, cwd=tmp_path)
        ref = installed("completion", shell)
        assert mine.returncode == 0 and "_KUBECERT_COMPLETE" in mine.stdout, mine.stderr
        assert mine.stdout == ref.stdout
        if shutil.which(shell) and shell != "bash":
            assert subprocess.run([shell, "-n"], input=mine.stdout, text=True, check=False).returncode == 0


def _bash_complete(binary: Path, tmp_path: Path, *words: str) -> List[str]:
    """Source `kubecert completion bash` in bash and complete WORDS (the last one being typed), as
    bash does on TAB: the completion function runs `kubecert` from PATH (here, the single file)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    if not (bindir / "kubecert").exists():
        (bindir / "kubecert").symlink_to(binary)
    script = (
        'source <(kubecert completion bash)\n'
        'COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMPREPLY=()\n'
        '_kubecert_completion kubecert\n'
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    proc = subprocess.run(["bash", "-c", script, "bash", "kubecert", *words], capture_output=True, text=True,
                          check=False, timeout=60, cwd=tmp_path, env={"PATH": f"{bindir}:/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


def test_sourced_bash_completion_completes_lazy_commands(binary: Path, tmp_path: Path) -> None:
    assert _bash_complete(binary, tmp_path, "cl") == ["cluster"]
    assert set(_bash_complete(binary, tmp_path, "cluster", "ca", "rotate", "")) == CA_NAMES
    assert "--dry-run" in _bash_complete(binary, tmp_path, "renew", "--dr")
    top = set(_bash_complete(binary, tmp_path, ""))
    assert {"check", "renew", "cluster", "lab", "completion"} <= top


def test_installed_completion_protocol(tmp_path: Path) -> None:
    """The installed package answers click's protocol the same way (no bash needed)."""
    env = clean_env(_KUBECERT_COMPLETE="bash_complete", COMP_WORDS="kubecert cluster ca rotate ", COMP_CWORD="4")
    proc = run_kubecert(env=env)
    assert proc.returncode == 0, proc.stderr
    assert {line.split(",", 1)[1] for line in proc.stdout.splitlines()} == CA_NAMES


def _top_level_commands(help_text: str) -> List[str]:
    section = help_text.split("Commands:", 1)[1]
    return sorted(line.split()[0] for line in section.splitlines() if line.startswith("  ") and line.split())


def test_man_page_lists_every_command_and_option(dist: Path, tmp_path: Path) -> None:
    page = (dist / "share/man/man1/kubecert.1").read_text()
    help_text = installed("--help").stdout
    commands = _top_level_commands(help_text)
    assert "completion" in commands and "check" in commands
    in_page = sorted({m.split()[0] for m in re.findall(r"^\.SS kubecert (\S+)", page, flags=re.M)})
    assert in_page == commands
    # every option of every level, e.g. cluster ca rotate --sa-grace
    from kubecert import cli
    from kubecert.manpage import walk

    missing = []
    for ctx, cmd in walk(cli.cli):
        if ctx.parent is not None:
            assert f".SS {ctx.command_path}\n".replace("-", "\\-") in page, ctx.command_path
        for param in cmd.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-") and opt.replace("-", "\\-") not in page:
                    missing.append(f"{ctx.command_path} {opt}")
    assert not missing, missing
    assert "\n.SH EXIT STATUS\n" in page and "\n.B 130\n" in page
    if shutil.which("man"):
        rendered = subprocess.run(["man", "-l", str(dist / "share/man/man1/kubecert.1")], capture_output=True,
                                  text=True, check=False, env={**clean_env(), "MANWIDTH": "100", "MANPAGER": "cat"})
        assert rendered.returncode == 0 and "kubecert cluster ca rotate" in rendered.stdout


def test_sha256sums_cover_the_distribution(dist: Path) -> None:
    listed = {line.split(None, 1)[1].lstrip("*") for line in (dist / "SHA256SUMS").read_text().splitlines()}
    present = {str(p.relative_to(dist)) for p in dist.rglob("*") if p.is_file()} - {"SHA256SUMS", "build.log"}
    assert listed == present
    assert {BINARY_NAME, "share/man/man1/kubecert.1", "share/bash-completion/completions/kubecert"} <= listed
    verify = subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=dist, capture_output=True,
                            text=True, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_sign_makes_an_openssh_signature_of_sha256sums(tmp_path: Path) -> None:
    """build-dist.sh --sign KEY: SHA256SUMS.sig that `ssh-keygen -Y verify` accepts for the release key
    (namespace kubecert-dist) and not once SHA256SUMS changes; a key that is not there is refused before
    anything is built. (The man page and completions only: the signature does not depend on the rest.)"""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "release", "-f", str(tmp_path / "key")],
                   check=True, timeout=30)
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"release@kubecert.example {(tmp_path / 'key.pub').read_text()}")
    out = tmp_path / "dist"

    missing = subprocess.run(["bash", str(ROOT / "scripts/build-dist.sh"), "--out", str(out), "--no-binary",
                              "--no-wheelhouse", "--sign", str(tmp_path / "nokey")], capture_output=True, text=True,
                             timeout=300, check=False)
    assert missing.returncode != 0 and "no such readable key file" in missing.stderr, missing.stderr
    assert not (out / "SHA256SUMS").exists()

    built = subprocess.run(["bash", str(ROOT / "scripts/build-dist.sh"), "--out", str(out), "--no-binary",
                            "--no-wheelhouse", "--sign", str(tmp_path / "key")], capture_output=True, text=True,
                           timeout=300, check=False)
    assert built.returncode == 0, built.stdout + built.stderr

    def verify() -> subprocess.CompletedProcess[str]:
        with open(out / "SHA256SUMS", "rb") as sums:
            return subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "release@kubecert.example",
                                   "-n", "kubecert-dist", "-s", str(out / "SHA256SUMS.sig")], stdin=sums,
                                  capture_output=True, timeout=30, check=False)

    assert verify().returncode == 0, verify().stderr
    with open(out / "SHA256SUMS", "a") as f:
        f.write(f"{'0' * 64}  planted\n")
    assert verify().returncode != 0

    # an empty or missing KEY is refused (a script's unset $KEY must not build an unsigned bundle)
    for bad in (["--sign", ""], ["--sign"]):
        r = subprocess.run(["bash", str(ROOT / "scripts/build-dist.sh"), "--out", str(out), "--no-binary",
                            "--no-wheelhouse", *bad], capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode != 0 and "--sign needs a KEY file" in r.stderr, (bad, r.stderr)
    # rebuilt unsigned into the same place: no old signature is left beside the new SHA256SUMS
    again = subprocess.run(["bash", str(ROOT / "scripts/build-dist.sh"), "--out", str(out), "--no-binary",
                            "--no-wheelhouse"], capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr
    assert (out / "SHA256SUMS").exists() and not (out / "SHA256SUMS.sig").exists()


def test_glibc_baseline_is_checked(binary: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "packaging/glibc_baseline.py"), str(binary), "--json"],
                          capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout)
    need = tuple(int(n) for n in result["glibc"].split("."))
    have = tuple(int(n) for n in os.confstr("CS_GNU_LIBC_VERSION").split()[1].split("."))  # type: ignore[union-attr]
    assert (2, 17) <= need <= have, result
    assert result["needed_by"] and result["files"] > 10


def test_wheelhouse_installs_offline_and_runs(dist: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    # no pip configuration (this machine's find-links / extra index), no network: the wheelhouse alone
    env = {"PATH": f"{venv}/bin:/usr/bin:/bin", "PIP_CONFIG_FILE": os.devnull, "HOME": str(tmp_path)}
    install = subprocess.run(
        ["unshare", "--net", "--", str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check",
         "--no-index", "--find-links", str(dist / "wheelhouse"), "kubecert"],
        capture_output=True, text=True, check=False, env=env, cwd=tmp_path, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    kubecert = str(venv / "bin/kubecert")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["unshare", "--net", "--", kubecert, *args], capture_output=True, text=True,
                              check=False, env=env, cwd=tmp_path, timeout=120)

    version = run("--version")
    assert "(installed package, Python" in version.stdout, version.stdout + version.stderr
    assert run("lab", "create", "lab", "--nodes", "1", "--expires-in", "3d", "--now", NOW).returncode == 0
    assert run("check", "--root", "lab/master-1", "--now", NOW).returncode == 2  # within --crit 7d
    renew = run("renew", "all", "--yes", "--root", "lab/master-1", "--now", NOW)
    assert renew.returncode == 0, renew.stdout + renew.stderr
    final = run("check", "--root", "lab/master-1", "--now", NOW)
    assert final.returncode == 0, final.stdout
    # the wheel's data files: the same man page and completions as the bundle
    for rel in ("share/man/man1/kubecert.1", "share/bash-completion/completions/kubecert",
                "share/zsh/site-functions/_kubecert", "share/fish/vendor_completions.d/kubecert.fish"):
        assert (venv / rel).read_bytes() == (dist / rel).read_bytes(), rel
