#!/usr/bin/env bash
# Debian packages the test bed needs besides the Go-built toolchain: PostgreSQL (the
# postgres:// backend of the sharing tests) and util-linux's unshare/setpriv (teammates on
# their own host names; PostgreSQL run as its own user). Installs only what is missing.
set -euo pipefail
missing=()
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
command -v unshare >/dev/null 2>&1 && command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
if [[ ${#missing[@]} -eq 0 ]]; then exit 0; fi
if [[ $(id -u) -ne 0 ]]; then
  echo "[toolchain] missing Debian packages: ${missing[*]}; install them (sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "[toolchain] installing Debian packages: ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
