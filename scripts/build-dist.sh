#!/usr/bin/env bash
# Build kubecert's offline distribution (README: "Air-gapped install"), under dist/:
#
#   kubecert-VERSION-linux-ARCH   single-file executable (PyInstaller onefile): no Python, pip or
#                                 network needed on the node; glibc >= the baseline printed below
#   share/man/man1/kubecert.1     man page, generated from the click commands
#   share/bash-completion/completions/kubecert, share/zsh/site-functions/_kubecert,
#   share/fish/vendor_completions.d/kubecert.fish     completion scripts (click's own)
#   wheelhouse/                   kubecert's wheel (man page and completions as data files) and every
#                                 runtime dependency's wheels for CPython 3.9-3.13, manylinux x86_64
#                                 and aarch64: pip install --no-index --find-links wheelhouse kubecert
#   SHA256SUMS                    of every file above (sha256sum -c SHA256SUMS)
#   SHA256SUMS.sig                with --sign: OpenSSH's signature of SHA256SUMS, namespace kubecert-dist
#                                 (ssh-keygen -Y verify -f allowed_signers -I SIGNER -n kubecert-dist
#                                 -s SHA256SUMS.sig < SHA256SUMS; the role checks it the same way)
#
# Needs: the build Python with kubecert's dependencies and PyInstaller (the test extras), objdump
# (binutils, PyInstaller needs it too), and PyPI for the wheelhouse and the wheel's build backend.
# The single file needs at least the glibc of the machine it is built on (Debian 12: 2.36, or
# lower: the exact baseline is checked and printed); build on an older distribution for an older one.
#
# Options:
#   --out DIR            write there instead of dist/ (only the files above are replaced)
#   --local-wheelhouse   dependencies for this Python on this machine only (fast; the tests use it)
#   --no-binary          skip the single file      --no-wheelhouse   skip the wheelhouse
#   --sign KEY           sign SHA256SUMS with this OpenSSH private key (ssh-keygen -Y sign; an
#                        ssh-agent holding it answers too); its public key goes in allowed_signers
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
OUT=$ROOT/dist
LOCAL=0
BINARY=1
WHEELHOUSE=1
SIGN_KEY=
PYTHONS="3.9 3.10 3.11 3.12 3.13"
ARCHES="x86_64 aarch64"

while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --local-wheelhouse) LOCAL=1; shift ;;
    --no-binary) BINARY=0; shift ;;
    --no-wheelhouse) WHEELHOUSE=0; shift ;;
    --sign) [ $# -ge 2 ] && [ -n "$2" ] || { echo "build-dist.sh: --sign needs a KEY file" >&2; exit 3; }
            SIGN_KEY=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-dist.sh: unknown option $1 (see --help)" >&2; exit 3 ;;
  esac
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

say() { printf '%s %s\n' "[build-dist $(date -u +%H:%M:%S)]" "$*"; }
die() { echo "build-dist.sh: $*" >&2; exit 1; }

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/pyproject.toml" | head -1)
CODE_VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/src/kubecert/__init__.py")
[ -n "$VERSION" ] || die "no version in pyproject.toml"
[ "$VERSION" = "$CODE_VERSION" ] || die "pyproject.toml says $VERSION, src/kubecert/__init__.py says $CODE_VERSION"
ARCH=$(uname -m)
NAME="kubecert-$VERSION-linux-$ARCH"
command -v objdump >/dev/null || die "objdump not found: apt-get install binutils"
if [ -n "$SIGN_KEY" ]; then  # checked before the long build, not after it
  command -v ssh-keygen >/dev/null || die "--sign needs ssh-keygen (OpenSSH 8.1 or later)"
  [ -f "$SIGN_KEY" ] && [ -r "$SIGN_KEY" ] || die "--sign $SIGN_KEY: no such readable key file"
  SIGN_KEY=$(cd "$(dirname "$SIGN_KEY")" && pwd)/$(basename "$SIGN_KEY")
fi
if [ $BINARY = 1 ]; then
  "$PY" -c "import PyInstaller" 2>/dev/null || die "PyInstaller missing: $PY -m pip install pyinstaller (in the test extras)"
fi

TMP=$(mktemp -d /tmp/kubecert-build-dist.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
START=$(date +%s)

# Only what this script writes is replaced: --out may be a directory holding other things.
rm -rf "$OUT/share" "$OUT/wheelhouse" "$OUT/SHA256SUMS" "$OUT/SHA256SUMS.sig"
rm -f "$OUT"/kubecert-*-linux-*

say "kubecert $VERSION -> $OUT"
# 1. man page and completions, from the click commands of this source tree
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT/share/man/man1" "$OUT/share/bash-completion/completions" "$OUT/share/zsh/site-functions" \
         "$OUT/share/fish/vendor_completions.d"
"$PY" -m kubecert.manpage > "$OUT/share/man/man1/kubecert.1"
"$PY" -m kubecert completion bash > "$OUT/share/bash-completion/completions/kubecert"
"$PY" -m kubecert completion zsh > "$OUT/share/zsh/site-functions/_kubecert"
"$PY" -m kubecert completion fish > "$OUT/share/fish/vendor_completions.d/kubecert.fish"
unset PYTHONPATH
say "man page ($(grep -c '^\.SS kubecert' "$OUT/share/man/man1/kubecert.1") commands) and bash/zsh/fish completions written"

# 2. kubecert's wheel, built from a clean copy (no stale build/lib, no egg-info of the work tree),
#    carrying the man page and completions as data files (pyproject.toml [tool.setuptools.data-files])
mkdir -p "$TMP/proj/dist" "$OUT/wheelhouse"
(cd "$ROOT" && tar cf - --exclude=__pycache__ --exclude='*.egg-info' src pyproject.toml README.md) | tar xf - -C "$TMP/proj"
cp -r "$OUT/share" "$TMP/proj/dist/share"
"$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$OUT/wheelhouse" "$TMP/proj"
WHEEL=$(ls "$OUT/wheelhouse"/kubecert-"$VERSION"-*.whl)
say "wheel: $(basename "$WHEEL")"

# 3. the single file
if [ $BINARY = 1 ]; then
  PYI_VERSION=$("$PY" -c "import PyInstaller; print(PyInstaller.__version__)")
  PY_VERSION=$("$PY" -c "import platform; print(platform.python_version())")
  printf '{"pyinstaller": "%s", "python": "%s", "built": "%s", "platform": "linux-%s"}\n' \
    "$PYI_VERSION" "$PY_VERSION" "$(date -u +%Y-%m-%d)" "$ARCH" > "$TMP/BUILD_INFO.json"
  # packaging/kubecert.spec: every kubecert submodule (commands are loaded by name), kubecert's data
  # files and BUILD_INFO.json, stripped libraries stored uncompressed (start-up), unused extras excluded
  say "PyInstaller $PYI_VERSION, Python $PY_VERSION: building $NAME"
  KUBECERT_ROOT="$ROOT" KUBECERT_NAME="$NAME" KUBECERT_BUILD_INFO="$TMP/BUILD_INFO.json" \
    "$PY" -m PyInstaller --noconfirm --clean --log-level WARN --distpath "$TMP/out" --workpath "$TMP/work" \
    "$ROOT/packaging/kubecert.spec"
  mv "$TMP/out/$NAME" "$OUT/$NAME"
  say "single file: $OUT/$NAME ($(du -h "$OUT/$NAME" | cut -f1))"
  "$PY" "$ROOT/packaging/glibc_baseline.py" "$OUT/$NAME" | sed 's/^/  /'
  say "build machine glibc: $(ldd --version 2>/dev/null | head -1 | sed 's/.* //')"
  (cd "$TMP" && env -i "$OUT/$NAME" --version) | sed 's/^/  /'
fi

# 4. the wheelhouse: every runtime dependency, for each target Python and architecture
if [ $WHEELHOUSE = 1 ]; then
  PIP=("$PY" -m pip download -q --disable-pip-version-check --only-binary=:all: -d "$OUT/wheelhouse")
  if [ $LOCAL = 1 ]; then
    say "wheelhouse: dependencies for $("$PY" -V) on $ARCH only (--local-wheelhouse)"
    "${PIP[@]}" "$WHEEL"
  else
    for py in $PYTHONS; do
      for arch in $ARCHES; do
        say "wheelhouse: CPython $py, manylinux $arch"
        # manylinux2014 (glibc 2.17) first: where a project publishes both, the wheel that installs
        # on the oldest masters wins; manylinux_2_28 for what is no longer built for 2014
        "${PIP[@]}" --implementation cp --python-version "$py" --abi "cp${py/./}" --abi abi3 --abi none \
          --platform "manylinux2014_$arch" --platform "manylinux_2_17_$arch" --platform "manylinux_2_28_$arch" \
          "$WHEEL"
      done
    done
  fi
  if [ $LOCAL = 0 ]; then
    # the one-line install must work from the wheelhouse alone: resolve every target offline,
    # without this machine's pip configuration (its indexes and find-links)
    for py in $PYTHONS; do
      for arch in $ARCHES; do
        PIP_CONFIG_FILE=/dev/null "$PY" -m pip install -q --disable-pip-version-check --dry-run --ignore-installed \
          --no-index --find-links "$OUT/wheelhouse" --only-binary=:all: --target "$TMP/resolve" \
          --implementation cp --python-version "$py" --abi "cp${py/./}" --abi abi3 --abi none \
          --platform "manylinux2014_$arch" --platform "manylinux_2_17_$arch" --platform "manylinux_2_28_$arch" \
          kubecert || die "the wheelhouse cannot install kubecert on CPython $py $arch"
      done
    done
    say "wheelhouse: kubecert resolves offline for CPython ${PYTHONS// /, } on ${ARCHES// / and }"
  fi
  say "wheelhouse: $(ls "$OUT/wheelhouse" | wc -l) wheels, $(du -sh "$OUT/wheelhouse" | cut -f1)"
fi

# 5. checksums of everything, relative to dist/ (sha256sum -c SHA256SUMS, in dist/)
(cd "$OUT" && find . -type f ! -name SHA256SUMS ! -name SHA256SUMS.sig ! -path './.*' | sed 's|^\./||' \
   | LC_ALL=C sort | xargs -d '\n' sha256sum > SHA256SUMS)
if [ -n "$SIGN_KEY" ]; then
  ssh-keygen -q -Y sign -f "$SIGN_KEY" -n kubecert-dist "$OUT/SHA256SUMS" \
    || die "signing SHA256SUMS with $SIGN_KEY failed (dist/ is built but unsigned)"
  say "SHA256SUMS.sig: signed with $(ssh-keygen -l -f "$SIGN_KEY" | cut -d ' ' -f 2) (namespace kubecert-dist)"
fi
say "SHA256SUMS: $(wc -l < "$OUT/SHA256SUMS") files; done in $(( $(date +%s) - START ))s"
