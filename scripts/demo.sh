#!/usr/bin/env bash
# The README's demo: a preview environment on the local test bed, end to end.
# Brings the test bed up in .testbed/, applies examples/staging/, then runs
# `preview-env start`, `status` and `clean`, printing each command first.
# KEEP_TESTBED=1 leaves the bed running afterwards (stop it with `make testbed-down`).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin

run() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

$BIN/python -m testbed up --state .testbed
if [[ "${KEEP_TESTBED:-0}" != 1 ]]; then
  trap '$BIN/python -m testbed down --state .testbed' EXIT
fi
# shellcheck disable=SC1091
source .testbed/env
export PATH="$PWD/$BIN:$PATH"

run kubectl apply -f examples/staging/
run kubectl -n staging rollout status deployment/users deployment/orders deployment/frontend --timeout=60s
run preview-env start -f examples/mirrord.json -i ghcr.io/acme/users:pr-42 -k pr-42 --ttl 90m
run preview-env status
run kubectl -n staging get deployments,services,httproutes,pods -l app.kubernetes.io/managed-by=preview-env
run preview-env status -k pr-42 --output json
run preview-env clean -k pr-42
run preview-env status
