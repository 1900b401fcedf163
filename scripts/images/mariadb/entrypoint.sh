#!/bin/sh
# preview-env.local/mariadb's entrypoint (busybox sh): a small subset of the official
# image's. As root it makes the data directory the mysql user's (uid 999) and runs itself
# again as that user. An empty data directory gets the system tables (mariadbd
# --bootstrap, as mariadb-install-db does, without the help tables and the test
# database) and, at the server's first start (--init-file), root@localhost and root@'%'
# with MARIADB_ROOT_PASSWORD (required unless MARIADB_ALLOW_EMPTY_ROOT_PASSWORD is set),
# MARIADB_DATABASE created and MARIADB_USER / MARIADB_PASSWORD granted all on it. The
# server runs in the foreground on 0.0.0.0:3306. A first argument other than `mariadbd`
# or an option is run as a command instead (`mariadb ...`).
set -eu
datadir=/var/lib/mysql
if [ $# -eq 0 ] || [ "${1#-}" != "$1" ]; then
  set -- mariadbd "$@"
fi
if [ "$1" != mariadbd ]; then
  exec "$@"
fi
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$datadir"
  chown mysql:mysql "$datadir"
  exec su -p -s /bin/sh mysql -c 'exec "$0" "$@"' "$0" "$@"
fi
shift
opts="--no-defaults --datadir=$datadir --socket=/tmp/mysqld.sock --pid-file=/tmp/mysqld.pid"
opts="$opts --skip-name-resolve --innodb-use-native-aio=0 --innodb-buffer-pool-size=64M"
opts="$opts --innodb-log-file-size=16M --character-set-server=utf8mb4"
init=""
# SQL string literal contents: ' doubled, \ escaped.
lit() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e "s/'/''/g"; }
if [ ! -d "$datadir/mysql" ]; then
  if [ -z "${MARIADB_ROOT_PASSWORD:-}" ] && [ -z "${MARIADB_ALLOW_EMPTY_ROOT_PASSWORD:-}" ]; then
    echo "entrypoint: MARIADB_ROOT_PASSWORD is required (or MARIADB_ALLOW_EMPTY_ROOT_PASSWORD)" >&2
    exit 1
  fi
  share=/usr/share/mysql
  {
    echo "create database if not exists mysql;"
    echo "use mysql;"
    echo "SET @auth_root_socket=NULL;"
    cat "$share/mysql_system_tables.sql" "$share/mysql_performance_tables.sql" \
      "$share/mysql_system_tables_data.sql" "$share/maria_add_gis_sp_bootstrap.sql" \
      "$share/mysql_sys_schema.sql"
  } | mariadbd $opts --bootstrap --skip-networking --log-warnings=0
  root="$(lit "${MARIADB_ROOT_PASSWORD:-}")"
  init=/tmp/preview-env-init.sql
  umask 077
  {
    echo "DELETE FROM mysql.global_priv WHERE User='' OR (User='root' AND Host<>'localhost');"
    echo "DELETE FROM mysql.proxies_priv WHERE Host<>'localhost';"
    echo "FLUSH PRIVILEGES;"
    echo "ALTER USER 'root'@'localhost' IDENTIFIED BY '$root';"
    echo "CREATE USER 'root'@'%' IDENTIFIED BY '$root';"
    echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
    if [ -n "${MARIADB_DATABASE:-}" ]; then
      db="$(printf '%s' "$MARIADB_DATABASE" | sed 's/`/``/g')"
      echo "CREATE DATABASE IF NOT EXISTS \`$db\`;"
    fi
    if [ -n "${MARIADB_USER:-}" ]; then
      user="$(lit "$MARIADB_USER")"
      echo "CREATE USER '$user'@'%' IDENTIFIED BY '$(lit "${MARIADB_PASSWORD:-}")';"
      if [ -n "${MARIADB_DATABASE:-}" ]; then
        echo "GRANT ALL ON \`$db\`.* TO '$user'@'%';"
      fi
    fi
  } >"$init"
  umask 022
  echo "entrypoint: initialised $datadir"
fi
if [ -n "$init" ]; then
  # The init file holds the passwords: gone once the server has read it (it does so
  # before it answers a ping, access denied or not).
  (
    until mariadb-admin --no-defaults --socket=/tmp/mysqld.sock ping --silent >/dev/null 2>&1; do
      sleep 1
    done
    rm -f "$init"
  ) &
fi
exec mariadbd $opts --bind-address=0.0.0.0 --port=3306 ${init:+--init-file=$init} "$@"
