#!/usr/bin/env bash
# The README's test command: install dependencies, lint, type-check, run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
python3 -m ruff check src tests bench
python3 -m mypy
# Tests that need the real control plane fail here instead of skipping (tests/kubebin.py).
export KUBECERT_REQUIRE_KUBE=1
# Two workers (the suite mostly waits on components starting and on gates); each file runs whole on
# one worker and the network-namespace cluster tests one at a time (tests/conftest.py).
python3 -m pytest -q -rs --durations=15 -n 2 --dist loadgroup --no-loadscope-reorder
