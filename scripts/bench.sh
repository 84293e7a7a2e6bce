#!/usr/bin/env bash
# make bench: the benchmarks under bench/, each writing bench/results/<name>.json.
#   scripts/bench.sh                  every benchmark: lab and drill (bring the lab up), then backup, wal, restore
#   scripts/bench.sh lab [ARGS]       bench/lab.py only: one task over podman vs SSH, a killed host's detection
#   scripts/bench.sh drill [ARGS]     bench/drill.py only (the lab must come up)
#   scripts/bench.sh failover [ARGS]  bench/failover.py only: failover.yml RTO, switchover.yml write unavailability
#   scripts/bench.sh backup [ARGS]    bench/backup.py only (no lab: its own PostgreSQL, S3 endpoint, pgBackRest)
#   scripts/bench.sh wal [ARGS]       bench/wal.py only (no lab: its own small PostgreSQL, S3 endpoint, pgBackRest)
#   scripts/bench.sh restore [ARGS]   bench/restore.py only (no lab: the backup benchmark's cluster, its own S3 endpoint)
# A first argument that is an option (e.g. --drills 5) goes to drill.py, as before.
set -euo pipefail
cd "$(dirname "$0")/.."

which=all
case "${1:-}" in
  lab|drill|failover|backup|wal|restore|all) which=$1; shift ;;
esac

run_lab() { scripts/lab.sh up; .venv/bin/python bench/lab.py "$@"; }
run_drill() { scripts/lab.sh up; .venv/bin/python bench/drill.py "$@"; }
run_failover() { scripts/lab.sh up; .venv/bin/python bench/failover.py "$@"; }
# The backup benchmark runs PostgreSQL and pgBackRest as the postgres user: it needs root (as scripts/setup.sh).
run_backup() { .venv/bin/python bench/backup.py "$@"; }
# The WAL benchmark too (PostgreSQL runs our archive/restore commands as the postgres user).
run_wal() { .venv/bin/python bench/wal.py "$@"; }
# The restore benchmark too (pgBackRest restore and the PITR's restore_command run as the postgres user).
run_restore() { .venv/bin/python bench/restore.py "$@"; }

case "$which" in
  lab) run_lab "$@" ;;
  drill) run_drill "$@" ;;
  failover) run_failover "$@" ;;
  backup) run_backup "$@" ;;
  wal) run_wal "$@" ;;
  restore) run_restore "$@" ;;
  all)
    run_lab
    if [ $# -gt 0 ] && [[ "$1" == -* ]]; then run_drill "$@"; else run_drill; fi
    run_failover
    run_backup
    run_wal
    run_restore
    ;;
esac
