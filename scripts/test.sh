#!/usr/bin/env bash
# THE test command (README): starts PostgreSQL (scripts/postgres.sh) and a real Kafka broker
# (scripts/kafka-broker.sh), exports DATABASE_URL, CALLSYNC_PG_DATA and KAFKA_BOOTSTRAP, runs
# `cargo test --workspace "$@"` (without --workspace when "$@" names a package with -p), stops
# what it started, and exits with cargo's status.
#
#   scripts/test.sh                       the whole suite
#   scripts/test.sh -p callsync-sinks     extra arguments go to cargo test
#   scripts/test.sh -- --nocapture name   ... including the test binaries' own
#
# A service that is already running (started by you with the scripts) is reused and left
# running. If DATABASE_URL or KAFKA_BOOTSTRAP is already set in the environment, that service is
# used as given and not started. A broker started here begins with empty data.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

log() { echo "test.sh: $*" >&2; }

started_pg=0
started_kafka=0
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if ((started_kafka)); then scripts/kafka-broker.sh stop || log "warning: stopping Kafka failed"; fi
  if ((started_pg)); then scripts/postgres.sh stop || log "warning: stopping PostgreSQL failed"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# exports the NAME=value lines a start script prints
export_from() {
  local line
  while IFS= read -r line; do
    if [[ "$line" =~ ^(DATABASE_URL|CALLSYNC_PG_DATA|KAFKA_BOOTSTRAP)=(.*)$ ]]; then
      export "${BASH_REMATCH[1]}=${BASH_REMATCH[2]}"
    fi
  done <<<"$1"
}

t0=$SECONDS
if [[ -n "${DATABASE_URL:-}" ]]; then
  log "using DATABASE_URL from the environment"
else
  scripts/postgres.sh status >/dev/null 2>&1 || started_pg=1
  out="$(scripts/postgres.sh start)"
  export_from "$out"
fi

if [[ -n "${KAFKA_BOOTSTRAP:-}" ]]; then
  log "using KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP from the environment"
else
  if scripts/kafka-broker.sh status >/dev/null 2>&1; then
    out="$(scripts/kafka-broker.sh start)"
  else
    started_kafka=1
    out="$(CALLSYNC_KAFKA_FRESH=1 scripts/kafka-broker.sh start)"
  fi
  export_from "$out"
fi
[[ -n "${DATABASE_URL:-}" ]] || { log "error: no DATABASE_URL after starting PostgreSQL"; exit 1; }
[[ -n "${KAFKA_BOOTSTRAP:-}" ]] || { log "error: no KAFKA_BOOTSTRAP after starting Kafka"; exit 1; }
log "services ready in $((SECONDS - t0))s: DATABASE_URL=$DATABASE_URL KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP"

# `-p crate` narrows the run: then no --workspace (cargo would let --workspace win).
# --no-fail-fast: one run reports every failing test binary, not just the first.
scope=(--workspace)
fail_fast=(--no-fail-fast)
for arg in "$@"; do
  case "$arg" in
    --) break ;;
    -p | --package | -p* | --package=*) scope=() ;;
    --no-fail-fast) fail_fast=() ;;
  esac
done

# sqlx's query! macros must not check themselves against this throwaway DATABASE_URL (the
# build then matches clippy's, which runs without one)
export SQLX_OFFLINE="${SQLX_OFFLINE:-true}"

set +e
cargo test "${scope[@]}" "${fail_fast[@]}" "$@"
status=$?
set -e
log "cargo test exited with $status"
exit "$status"
