#!/usr/bin/env bash
# The README's demo: a lab cluster whose certificates expire in 5 days -> check -> renew -> check.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --no-kube >/dev/null
LAB=$(mktemp -d /tmp/kubecert-demo.XXXXXX)
NODE="$LAB/lab/master-1"
run() { echo; echo "\$ $*"; "$@"; echo "(exit $?)"; }
run kubecert lab create "$LAB/lab" --nodes 3 --expires-in 5d
run kubecert check --root "$NODE"
if kubecert renew --help >/dev/null 2>&1; then
  run kubecert renew all --root "$NODE" --yes
  run kubecert check --root "$NODE"
fi
echo; echo "lab left in $LAB (remove with: rm -rf $LAB)"
