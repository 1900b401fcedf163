#!/usr/bin/env bash
# The README's second demo: a preview with its own database branch, copied for real on the
# test bed's real node. Brings the test bed up in .testbed/, builds the PostgreSQL and
# preview-env images from the host's packages (cached), applies examples/db/ (a staging
# database with rows, and an app reading DATABASE_URL from a Secret), then runs
# `preview-env start` with examples/db/mirrord.json, shows the branch and its rows next to
# staging's, and cleans up. KEEP_TESTBED=1 leaves the bed running.
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
eval "$($BIN/python -m testbed images --state .testbed)"

sed -e "s|POSTGRES_IMAGE|$PREVIEW_ENV_POSTGRES_IMAGE|" -e "s|APP_IMAGE|$PREVIEW_ENV_ECHO_IMAGE|" \
  examples/db/staging.yaml >.testbed/db-staging.yaml
run kubectl apply -f .testbed/db-staging.yaml
run kubectl -n shop-db rollout status deployment/postgres deployment/orders --timeout=180s
run kubectl -n shop-db wait job/seed --for=condition=complete --timeout=180s
run preview-env start -f examples/db/mirrord.json -i "$PREVIEW_ENV_ECHO_IMAGE" -k pr-7 --routing none
run preview-env status -k pr-7
run kubectl -n shop-db get deployments,services,jobs,secrets -l app.kubernetes.io/part-of=pr-7

# The branch's rows next to staging's: psql in a pod on the real node, each database once.
query() { # name host password user: run psql in a pod, print what it printed
  kubectl -n shop-db run "$1" --restart=Never --quiet --image="$PREVIEW_ENV_POSTGRES_IMAGE" \
    --overrides='{"spec":{"nodeSelector":{"preview-env.dev/node":"real"},"tolerations":[{"key":"preview-env.dev/real-node","operator":"Exists","effect":"NoSchedule"}]}}' \
    --env="PGPASSWORD=$3" --command -- psql -h "$2" -U "$4" -d shop -c \
    "SELECT c.name, c.region, count(o.id) AS orders FROM customers c LEFT JOIN orders o ON o.customer_id = c.id GROUP BY c.id ORDER BY c.id" \
    >/dev/null
  kubectl -n shop-db wait "pod/$1" --for=jsonpath='{.status.phase}'=Succeeded --timeout=120s >/dev/null
  kubectl -n shop-db logs "pod/$1"
  kubectl -n shop-db delete "pod/$1" --wait=false >/dev/null
}
branch=$(kubectl -n shop-db get svc -l app.kubernetes.io/part-of=pr-7,preview-env.dev/component=db-branch -o jsonpath='{.items[0].spec.clusterIP}')
password=$(kubectl -n shop-db get secret -l app.kubernetes.io/part-of=pr-7,preview-env.dev/component=db-branch -o jsonpath='{.items[0].data.password}' | base64 -d)
printf '\n\033[1mstaging (10.96.77.77):\033[0m\n'; query staging 10.96.77.77 staging-s3cret app
printf '\n\033[1mbranch of pr-7 (%s): schema, and only customers in region eu\033[0m\n' "$branch"
query branch "$branch" "$password" preview
run preview-env clean -k pr-7
