#!/bin/sh
# preview-env.local/postgres's entrypoint (busybox sh): a small subset of the official
# image's. As root it makes $PGDATA the postgres user's (uid 999) and runs itself again as
# that user; an empty $PGDATA is initialised with POSTGRES_USER (default postgres) as the
# superuser, POSTGRES_PASSWORD as its password (required unless
# POSTGRES_HOST_AUTH_METHOD=trust) and POSTGRES_DB (default the user's name) created; the
# server then runs in the foreground on 0.0.0.0:5432, with scram-sha-256 passwords for
# every network client and trust for the local socket (in /tmp). A first argument other
# than `postgres` or an option is run as a command instead (`psql ...`).
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA
if [ $# -eq 0 ] || [ "${1#-}" != "$1" ]; then
  set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
  exec "$@"
fi
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA"
  chown postgres:postgres "$PGDATA"
  chmod 700 "$PGDATA"
  exec su -p -s /bin/sh postgres -c 'exec "$0" "$@"' "$0" "$@"
fi
shift
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  user="${POSTGRES_USER:-postgres}"
  db="${POSTGRES_DB:-$user}"
  method="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
  if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$method" != trust ]; then
    echo "entrypoint: POSTGRES_PASSWORD is required (or POSTGRES_HOST_AUTH_METHOD=trust)" >&2
    exit 1
  fi
  pwfile=""
  if [ -n "${POSTGRES_PASSWORD:-}" ]; then
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  fi
  initdb --username="$user" ${pwfile:+--pwfile="$pwfile"} --auth-local=trust \
    --auth-host="$method" --encoding=UTF8 --locale=C --no-sync --no-instructions
  [ -z "$pwfile" ] || rm -f "$pwfile"
  printf 'host all all all %s\n' "$method" >>"$PGDATA/pg_hba.conf"
  if [ "$db" != postgres ]; then
    quoted="$(printf '%s' "$db" | sed 's/"/""/g')"
    printf 'CREATE DATABASE "%s"\n' "$quoted" | postgres --single -D "$PGDATA" postgres >/dev/null
  fi
  echo "entrypoint: initialised $PGDATA (superuser $user, database $db)"
fi
exec postgres -c listen_addresses='*' -c port=5432 -c unix_socket_directories=/tmp "$@"
