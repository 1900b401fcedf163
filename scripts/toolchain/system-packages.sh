#!/usr/bin/env bash
# Debian packages the test bed needs besides the Go-built toolchain: PostgreSQL (the
# postgres:// backend of the sharing tests), util-linux's unshare/setpriv (teammates on
# their own host names; PostgreSQL run as its own user), and the real node's runtime:
# containerd, runc, the CNI plugins, iptables/conntrack (kube-proxy), iproute2 (network
# namespace and bridge clean-up), a static libc for the pause image, and what the database
# images copy (testbed.images.postgres / mariadb): MariaDB's server and client and
# busybox-static (their /bin/sh); and the brokers (testbed/brokers.py): RabbitMQ's server
# (with its management plugin and Erlang's epmd), a JDK for Kafka and Maven to fetch
# Kafka's jars (build.sh kafka). Installs only what is missing, and starts none of the
# servers it installs (the bed runs its own, on 127.0.0.1).
set -euo pipefail
missing=()
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
command -v unshare >/dev/null 2>&1 && command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
have() { command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" ]]; }
have containerd || missing+=(containerd)
have runc || missing+=(runc)
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] ||
  missing+=(containernetworking-plugins)
have iptables || missing+=(iptables)
have conntrack || missing+=(conntrack)
have ip || missing+=(iproute2)
have gcc || missing+=(gcc)
have sysctl || missing+=(procps)
have nsenter || missing+=(util-linux)
[[ -e /usr/lib/x86_64-linux-gnu/libc.a || -n "$(compgen -G '/usr/lib/*/libc.a')" ]] || missing+=(libc6-dev)
[[ -x /usr/sbin/mariadbd ]] || missing+=(mariadb-server)
[[ -x /usr/bin/mariadb && -x /usr/bin/mariadb-admin && -x /usr/bin/mariadb-dump ]] ||
  missing+=(mariadb-client)
{ [[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1; } || missing+=(busybox-static)
[[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || missing+=(rabbitmq-server)
have java || missing+=(default-jre-headless)
have mvn || missing+=(maven)
if [[ ${#missing[@]} -eq 0 ]]; then exit 0; fi
if [[ $(id -u) -ne 0 ]]; then
  echo "[toolchain] missing Debian packages: ${missing[*]}; install them (sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "[toolchain] installing Debian packages: ${missing[*]}" >&2
apt-get update -qq
# Package scripts would start their servers (PostgreSQL, MariaDB, RabbitMQ and epmd on every
# interface) where services run; a policy-rc.d that refuses keeps them stopped, unless the
# machine already has its own.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
