#!/usr/bin/env bash
# The tests need PostgreSQL at 127.0.0.1:5432 (trust authentication, user postgres) besides
# SQLite. Start the local cluster if it is installed but down; say clearly if there is none.
set -euo pipefail
if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  exit 0
fi
if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p 5432 && exit 0
    sleep 1
  done
fi
echo "PostgreSQL is not reachable at 127.0.0.1:5432; the tests need it (or set" \
     "BRIDGE_TEST_POSTGRES_URL to another server)." >&2
exit 1
