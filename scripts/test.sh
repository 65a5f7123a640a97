#!/usr/bin/env bash
# THE test command (README): starts PostgreSQL (scripts/postgres.sh), a real Kafka broker
# (scripts/kafka-broker.sh) and a schema registry (scripts/schema-registry.sh), exports
# DATABASE_URL, CALLSYNC_PG_DATA, KAFKA_BOOTSTRAP and SCHEMA_REGISTRY_URL, runs
# `cargo test --workspace "$@"` (without --workspace when "$@" names a package with -p), stops
# what it started, and exits with cargo's status.
#
#   scripts/test.sh                       the whole suite
#   scripts/test.sh -p callsync-sinks     extra arguments go to cargo test
#   scripts/test.sh -- --nocapture name   ... including the test binaries' own
#
# A service that is already running (started by you with the scripts) is reused and left
# running. If DATABASE_URL, KAFKA_BOOTSTRAP or SCHEMA_REGISTRY_URL is already set in the
# environment, that service is used as given and not started. A broker started here begins with
# empty data. A registry that cannot start fails the run under CI=true; elsewhere its tests skip.
#
# The whole suite runs in two lanes at once (see the end): the chaos test against a private
# broker and Postgres (ports 19192/19193 and 15442, under .work/chaos-lane), and every other
# test with plain `cargo test`. CALLSYNC_TEST_LANES=1 runs it all in one `cargo test`.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

log() { echo "test.sh: $*" >&2; }

started_pg=0
started_kafka=0
started_registry=0
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if ((started_registry)); then scripts/schema-registry.sh stop || log "warning: stopping the schema registry failed"; fi
  if ((started_kafka)); then scripts/kafka-broker.sh stop || log "warning: stopping Kafka failed"; fi
  if ((started_pg)); then scripts/postgres.sh stop || log "warning: stopping PostgreSQL failed"; fi
  rm -f "${registry_out:-}"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# exports the NAME=value lines a start script prints
export_from() {
  local line
  while IFS= read -r line; do
    if [[ "$line" =~ ^(DATABASE_URL|CALLSYNC_PG_DATA|KAFKA_BOOTSTRAP|SCHEMA_REGISTRY_URL)=(.*)$ ]]; then
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

# the schema registry needs no other service: it starts in the background while Kafka starts
# (two JVMs starting side by side), and is waited for after Kafka
registry_job=""
registry_out="$(mktemp)"
if [[ -n "${SCHEMA_REGISTRY_URL:-}" ]]; then
  log "using SCHEMA_REGISTRY_URL=$SCHEMA_REGISTRY_URL from the environment"
else
  scripts/schema-registry.sh status >/dev/null 2>&1 || started_registry=1
  scripts/schema-registry.sh start >"$registry_out" &
  registry_job=$!
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
if [[ -n "$registry_job" ]]; then
  if wait "$registry_job"; then
    export_from "$(cat "$registry_out")"
  elif [[ "${CI:-}" == "true" || "${CI:-}" == "1" ]]; then
    log "error: the schema registry did not start (scripts/schema-registry.sh start)"
    exit 1
  else
    log "warning: the schema registry did not start; the schema-registry interop tests skip"
  fi
fi
rm -f "$registry_out"
[[ -n "${DATABASE_URL:-}" ]] || { log "error: no DATABASE_URL after starting PostgreSQL"; exit 1; }
[[ -n "${KAFKA_BOOTSTRAP:-}" ]] || { log "error: no KAFKA_BOOTSTRAP after starting Kafka"; exit 1; }
log "services ready in $((SECONDS - t0))s: DATABASE_URL=$DATABASE_URL KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP SCHEMA_REGISTRY_URL=${SCHEMA_REGISTRY_URL:-}"

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

# The whole suite (no arguments) runs in two lanes at once: the chaos test, which stops and
# restarts its broker and Postgres and so gets a private pair of its own, beside every other
# test. It spends much of its ~4 minutes waiting on outages and restarts, so the lanes overlap
# instead of adding up. CALLSYNC_TEST_LANES=1 runs everything in one cargo test, one binary
# after another.
CHAOS_TEST=chaos_backfill_with_kills_and_outages_equals_ground_truth
if (($# == 0)) && [[ "${CALLSYNC_TEST_LANES:-2}" == "2" ]]; then
  set +e
  build_log="$(mktemp)"
  cargo test --workspace --no-run --message-format=json-render-diagnostics >"$build_log"
  status=$?
  set -e
  chaos_exe="$(grep '"name":"chaos"' "$build_log" | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | tail -n1)"
  rm -f "$build_log"
  if ((status != 0)) || [[ -z "$chaos_exe" ]]; then
    log "building the tests failed (status $status)"
    exit $((status ? status : 1))
  fi
  chaos_work="${CALLSYNC_WORK:-$REPO_ROOT/.work}/chaos-lane"
  chaos_log="$chaos_work/chaos.log"
  mkdir -p "$chaos_work"
  (
    export CALLSYNC_WORK="$chaos_work" CALLSYNC_KAFKA_PORT=19192 CALLSYNC_KAFKA_CONTROLLER_PORT=19193 \
      CALLSYNC_PG_PORT=15442 CALLSYNC_KAFKA_LIB="${CALLSYNC_KAFKA_LIB:-$REPO_ROOT/.work/kafka/lib}"
    stop_chaos_services() {
      scripts/kafka-broker.sh stop >/dev/null 2>&1 || true
      scripts/postgres.sh stop >/dev/null 2>&1 || true
    }
    trap stop_chaos_services EXIT
    # not the shared services' (test.sh exported those above)
    unset CALLSYNC_PG_DATA DATABASE_URL KAFKA_BOOTSTRAP
    CALLSYNC_KAFKA_FRESH=1 scripts/kafka-broker.sh start >/dev/null || exit 1
    pg_out="$(scripts/postgres.sh start)" || exit 1
    export_from "$pg_out"
    [[ "$DATABASE_URL" == *":15442/"* ]] || { echo "chaos lane: unexpected DATABASE_URL=$DATABASE_URL" >&2; exit 1; }
    export KAFKA_BOOTSTRAP=127.0.0.1:19192
    cd "$REPO_ROOT" && "$chaos_exe" --exact "$CHAOS_TEST" --nocapture
  ) >"$chaos_log" 2>&1 &
  chaos_pid=$!
  log "chaos test running beside the others (log: $chaos_log)"
  set +e
  cargo test --workspace "${fail_fast[@]}" -- --skip "$CHAOS_TEST"
  status=$?
  wait "$chaos_pid"
  chaos_status=$?
  set -e
  echo "---- chaos lane ($chaos_exe), exit $chaos_status ----"
  cat "$chaos_log"
  log "cargo test exited with $status; the chaos test with $chaos_status"
  if ((status == 0 && chaos_status != 0)); then status=$chaos_status; fi
  exit "$status"
fi

set +e
cargo test "${scope[@]}" "${fail_fast[@]}" "$@"
status=$?
set -e
log "cargo test exited with $status"
exit "$status"
