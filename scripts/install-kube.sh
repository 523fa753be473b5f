#!/usr/bin/env bash
# Build the real Kubernetes control plane the tests run (kube-apiserver, kube-controller-manager,
# kube-scheduler, and kubeadm as a second oracle) from Debian's own `kubernetes` source package
# (Debian 12 ships upstream v1.20.2 as 1.20.5+really1.20.2), with Debian's Go, offline:
# GOPATH mode with the tree's vendor/, GOPROXY=off, nothing fetched but Debian packages.
#
# Idempotent: the binaries land in $KUBECERT_KUBE_DIR (default ~/.cache/kubecert/kube-v1.20.2/bin),
# outside the checkout; a second run with them present only prints their versions.
#
# Two known traps of this tree under a modern Go, both handled below:
#  - vendored github.com/modern-go/reflect2 v1.0.1 crashes every JSON/YAML encode on Go >= 1.18;
#    Debian's golang-github-modern-go-reflect2-dev (v1.0.2) drops in for it.
#  - the tarball lacks pkg/generated/openapi/zz_generated.openapi.go (kube-apiserver needs it to
#    link); it is generated with the tree's own vendored openapi-gen, as upstream's Makefile does.
set -euo pipefail

KUBE_VERSION=v1.20.2
DIR=${KUBECERT_KUBE_DIR:-${HOME}/.cache/kubecert/kube-${KUBE_VERSION}}
BIN=$DIR/bin
WANT=(kube-apiserver kube-controller-manager kube-scheduler kubeadm)

have_all() {
  local b
  for b in "${WANT[@]}"; do [ -x "$BIN/$b" ] || return 1; done
}

print_versions() {
  echo "kube binaries in $BIN:"
  "$BIN/kube-apiserver" --version
  "$BIN/kube-controller-manager" --version
  "$BIN/kube-scheduler" --version
  echo "kubeadm $("$BIN/kubeadm" version -o short)"
}

if have_all; then
  print_versions
  exit 0
fi

start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
src_list=/etc/apt/sources.list.d/kubecert-deb-src.sources
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
  cat >"$src_list" <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $codename
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends golang-go golang-github-modern-go-reflect2-dev \
  dpkg-dev ca-certificates >/dev/null

work=$DIR/build
rm -rf "$work"
mkdir -p "$work" "$BIN"
cd "$work"
apt-get source -qq kubernetes 2>&1 | grep -v '^W: Download is performed unsandboxed' || true
tree=$(find "$work" -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
[ -n "$tree" ] || { echo "install-kube: apt-get source kubernetes gave no tree" >&2; exit 1; }

export GOPATH=$work/go GO111MODULE=off GOPROXY=off GOFLAGS= CGO_ENABLED=0
export GOCACHE=$work/gocache
mkdir -p "$GOPATH/src/k8s.io"
ln -sfn "$tree" "$GOPATH/src/k8s.io/kubernetes"
cd "$GOPATH/src/k8s.io/kubernetes"

# Trap 1: reflect2 v1.0.2 from Debian in place of the vendored v1.0.1.
rm -rf vendor/github.com/modern-go/reflect2
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
rm -f vendor/github.com/modern-go/reflect2/go.mod

# Trap 2: generate the missing openapi definitions the way build/root/Makefile.generated_files
# does for its KUBE target: every Go dir (staging named as vendor/, the rest of vendor/ left out)
# with a '+k8s:openapi-gen=' tag, minus code-generator and sample-apiserver.
go build -o "$work/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
top=$(ls -d */ | grep -v -e '^vendor/' -e '^debian/' -e '^_')
# shellcheck disable=SC2086
dirs=$(grep -rl --include='*.go' '^// *+k8s:openapi-gen=' $top \
       | sed 's|^staging/src|vendor|; s|/[^/]*$||' | LC_ALL=C sort -u \
       | grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' \
       | sed 's|^|k8s.io/kubernetes/|' | paste -sd, -)
"$work/openapi-gen" --logtostderr -i "$dirs" \
  -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
  -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt -r "$work/openapi-violations.report" \
  >"$work/openapi-gen.log" 2>&1 || { tail -n 20 "$work/openapi-gen.log" >&2; exit 1; }
test -s pkg/generated/openapi/zz_generated.openapi.go

ver=k8s.io/kubernetes/vendor/k8s.io/component-base/version
ldflags="-s -w -X $ver.gitVersion=$KUBE_VERSION -X $ver.gitMajor=1 -X $ver.gitMinor=20"
ldflags+=" -X $ver.gitTreeState=archive -X $ver.buildDate=1970-01-01T00:00:00Z"
ldflags+=" -X k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"
for b in "${WANT[@]}"; do
  echo "install-kube: building $b ($(($(date +%s) - start)) s)"
  go build -trimpath -tags selinux,notest -ldflags "$ldflags" -o "$BIN/$b.tmp" "./cmd/$b"
  mv -f "$BIN/$b.tmp" "$BIN/$b"
done

# Keep the binaries, drop the 1.5 GB build tree and Go cache.
cd "$DIR"
rm -rf "$work"
echo "install-kube: built in $(($(date +%s) - start)) s"
print_versions
