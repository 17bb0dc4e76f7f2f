#!/usr/bin/env bash
# The PostgreSQL tests start a throwaway server of their own (tests/support/postgres.py): they need
# Debian's server binaries (initdb, pg_ctl, postgres under /usr/lib/postgresql/*/bin, not on
# PATH). Install them when missing, without letting the package create or start a cluster of
# its own on 5432. Nothing to do when $BATCHGEN_TEST_POSTGRES names a server to use instead.
# On failure: one line on stderr, exit 1 (so `make test` stops there, saying why).
set -uo pipefail

have_server() { compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; }
fail() { echo "make test: no PostgreSQL for the tests: $1 (or set BATCHGEN_TEST_POSTGRES=postgresql://...)" >&2; exit 1; }

if [ -n "${BATCHGEN_TEST_POSTGRES:-}" ] || have_server; then exit 0; fi
command -v apt-get >/dev/null 2>&1 || fail "no initdb under /usr/lib/postgresql/*/bin and no apt-get to install it"
SUDO=""
if [ "$(id -u)" != "0" ]; then
    command -v sudo >/dev/null 2>&1 || fail "installing Debian's postgresql needs root or sudo"
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive

# No main cluster: postgresql-common reads this file when the server package is configured.
# Our copy is kept over the package's template and stays for later upgrades.
$SUDO mkdir -p /etc/postgresql-common
if ! grep -qs '^create_main_cluster *= *false' /etc/postgresql-common/createcluster.conf; then
    echo "create_main_cluster = false" | $SUDO tee -a /etc/postgresql-common/createcluster.conf >/dev/null
fi
# No service start during the install (exit 101: "action forbidden by policy"); only our
# own policy-rc.d is removed afterwards, a machine's existing one is left alone.
OWN_POLICY=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    OWN_POLICY=1
fi
cleanup() { if [ -n "$OWN_POLICY" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT

LOG=$(mktemp)
# createcluster.conf is kept by ucf, not dpkg: UCF_FORCE_CONFFOLD keeps ours over the template
if ! { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive \
        UCF_FORCE_CONFFOLD=1 apt-get install -y -qq \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        postgresql; } >"$LOG" 2>&1; then
    fail "apt-get install postgresql failed (its output: $LOG)"
fi
rm -f "$LOG"
have_server || fail "postgresql installed but no initdb under /usr/lib/postgresql/*/bin"
