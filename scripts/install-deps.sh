#!/usr/bin/env bash
# Install what kubecert's tests and demo need on a fresh Debian machine (run as root).
# Debian: openssl (independent checker), etcd-server/etcd-client (real etcd in tests),
# openssh-server (real sshd in tests), iproute2, prometheus (real Prometheus, promtool),
# chromium (headless, the HTML report), systemd (systemd-analyze verify), binutils (PyInstaller),
# openssh-client (Ansible), man-db. Python: kubecert itself with its test extras.
# Then the real control plane (kube-apiserver, -controller-manager, -scheduler, kubeadm v1.20.2),
# built from Debian's kubernetes source package by scripts/install-kube.sh (cached outside the
# checkout; ~7 min the first time, nothing after; `--no-kube` skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=()
command -v openssl >/dev/null || need_apt+=(openssl)
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v etcdctl >/dev/null || need_apt+=(etcd-client)
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v kubectl >/dev/null || need_apt+=(kubernetes-client)   # independent kubeconfig checker
command -v chattr >/dev/null || need_apt+=(e2fsprogs)
command -v sudo >/dev/null || need_apt+=(sudo)          # the SSH tests of sudo hosts
command -v prometheus >/dev/null || need_apt+=(prometheus)   # real Prometheus + promtool (exporter tests)
command -v chromium >/dev/null || need_apt+=(chromium)       # headless rendering of the HTML report
command -v systemd-analyze >/dev/null || need_apt+=(systemd) # systemd-analyze verify of the timer units
command -v objdump >/dev/null || need_apt+=(binutils)        # PyInstaller (objdump, strip): the single file
command -v ssh >/dev/null || need_apt+=(openssh-client)      # Ansible's transport (and ssh -G in its tests)
command -v man >/dev/null || need_apt+=(man-db)              # man -l renders the generated man page
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -e ".[test]"
if [ "${1:-}" != "--no-kube" ]; then   # the demo needs neither
  bash scripts/install-kube.sh
  # ansible-test sanity's venvs, built now from PyPI (tests/test_collection.py then needs no network)
  python3 scripts/ansible-test-bootstrap.py --prime
fi
