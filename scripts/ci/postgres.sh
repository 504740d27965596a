#!/usr/bin/env bash
# PostgreSQL for the fleet persistence tests (tests/fleet): install Debian's postgresql if it is missing,
# then start a throwaway cluster on 127.0.0.1:${EDGEGEN_PG_PORT:-55432} (user edgegen, trust auth on
# loopback only, fsync off). The tests look for it there (or at EDGEGEN_TEST_PG_URL); when neither works
# they start their own cluster, and skip with a message if that fails too.
set -euo pipefail
PORT="${EDGEGEN_PG_PORT:-55432}"
DIR="${EDGEGEN_PG_DIR:-/tmp/edgegen-ci-postgres}"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi; }

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "installing postgresql from Debian"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -q
    as_root apt-get install -y -q --no-install-recommends postgresql
fi
BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"

if "$BIN/pg_isready" -h 127.0.0.1 -p "$PORT" -q; then
    echo "postgresql already accepting connections on 127.0.0.1:$PORT"
    exit 0
fi

# initdb refuses to run as root: run the server as the postgres user (created by the Debian package).
run() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
rm -rf "$DIR"
mkdir -p "$DIR"
if [ "$(id -u)" -eq 0 ]; then chown postgres "$DIR"; fi
run "$BIN/initdb" -D "$DIR/data" -U edgegen -A trust -E UTF8 --no-sync >/dev/null
run "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
    -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start
"$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U edgegen edgegen 2>/dev/null || true
echo "postgresql ready: postgresql://edgegen@127.0.0.1:$PORT/edgegen"
