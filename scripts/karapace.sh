#!/usr/bin/env bash
# Karapace (a Confluent-compatible schema registry) for the interop test, against the test
# broker on loopback.
#
#   scripts/karapace.sh start    install (once) into .work/karapace-venv and start it; prints
#                                SCHEMA_REGISTRY_URL=http://127.0.0.1:<port>
#   scripts/karapace.sh stop     stop it
#   scripts/karapace.sh status   exit 0 and print SCHEMA_REGISTRY_URL when it answers, 3 otherwise
#
# Install: `pip install karapace` first; Karapace is not published on PyPI, so this fails
# today, and then a source checkout named by CALLSYNC_KARAPACE_SRC is installed (it needs
# Python >= 3.12, Go for its extension, and the network for its patched avro dependency).
# Without either it exits 4 and says why; the interop test then uses its own minimal
# registry (tests/interop/mini_registry.py). See docs/operations.md, "Schema registry interop".
#
# Environment: KAFKA_BOOTSTRAP (default 127.0.0.1:19092), CALLSYNC_KARAPACE_PORT (18081),
# CALLSYNC_WORK (.work), CALLSYNC_KARAPACE_SRC, CALLSYNC_KARAPACE_PYTHON.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${CALLSYNC_WORK:-$REPO_ROOT/.work}"
HOME_DIR="$WORK/karapace"
VENV="$WORK/karapace-venv"
PORT="${CALLSYNC_KARAPACE_PORT:-18081}"
BOOTSTRAP="${KAFKA_BOOTSTRAP:-127.0.0.1:19092}"
PID_FILE="$HOME_DIR/karapace.pid"
LOG_FILE="$HOME_DIR/karapace.log"
URL="http://127.0.0.1:$PORT"

log() { echo "karapace: $*" >&2; }

answering() { curl -fsS -m 2 "$URL/subjects" >/dev/null 2>&1; }

find_python() {
  if [[ -n "${CALLSYNC_KARAPACE_PYTHON:-}" ]]; then echo "$CALLSYNC_KARAPACE_PYTHON"; return; fi
  for p in python3.13 python3.12; do
    # `--version`, not just `command -v`: a pyenv shim exists for versions it will not run
    if "$p" --version >/dev/null 2>&1; then command -v "$p"; return; fi
  done
  for p in "$HOME"/.pyenv/versions/3.1[23]*/bin/python3; do
    if [[ -x "$p" ]]; then echo "$p"; return; fi
  done
  echo ""
}

install() {
  [[ -x "$VENV/bin/karapace" ]] && return 0
  local py; py="$(find_python)"
  if [[ -z "$py" ]]; then
    log "cannot install: Karapace needs Python >= 3.12 and none was found"; exit 4
  fi
  "$py" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip setuptools wheel >/dev/null 2>&1 || true
  if "$VENV/bin/pip" install --quiet karapace 2>>"$WORK/karapace-pip.log"; then
    return 0
  fi
  log "'pip install karapace' failed: Karapace is not published on PyPI (see $WORK/karapace-pip.log)"
  if [[ -n "${CALLSYNC_KARAPACE_SRC:-}" && -f "$CALLSYNC_KARAPACE_SRC/pyproject.toml" ]]; then
    log "installing from the source checkout $CALLSYNC_KARAPACE_SRC"
    if "$VENV/bin/pip" install --quiet "$CALLSYNC_KARAPACE_SRC" 2>>"$WORK/karapace-pip.log"; then
      return 0
    fi
    log "installing from source failed (it needs Go and its patched avro from GitHub); see $WORK/karapace-pip.log"
  else
    log "no source checkout either (set CALLSYNC_KARAPACE_SRC to a clone of Aiven-Open/karapace)"
  fi
  rm -rf "$VENV"
  exit 4
}

start() {
  mkdir -p "$HOME_DIR"
  if answering; then echo "SCHEMA_REGISTRY_URL=$URL"; return 0; fi
  install
  # Karapace reads its settings from KARAPACE_* environment variables
  (
    export KARAPACE_HOST=127.0.0.1 KARAPACE_PORT="$PORT" KARAPACE_BOOTSTRAP_URI="$BOOTSTRAP" \
           KARAPACE_TOPIC_NAME=_schemas KARAPACE_REGISTRY_HOST=127.0.0.1 \
           KARAPACE_REGISTRY_PORT="$PORT" KARAPACE_KARAPACE_REGISTRY=true \
           KARAPACE_LOG_LEVEL=WARNING KARAPACE_REPLICATION_FACTOR=1
    nohup "$VENV/bin/karapace" >"$LOG_FILE" 2>&1 &
    echo $! >"$PID_FILE"
  )
  for _ in $(seq 1 120); do
    if answering; then echo "SCHEMA_REGISTRY_URL=$URL"; return 0; fi
    if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
      log "exited during startup; log: $LOG_FILE"; tail -20 "$LOG_FILE" >&2 || true; exit 1
    fi
    sleep 0.5
  done
  log "did not answer on $URL within 60 s; log: $LOG_FILE"; exit 1
}

stop() {
  if [[ -f "$PID_FILE" ]]; then
    local pid; pid="$(cat "$PID_FILE")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
    rm -f "$PID_FILE"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if answering; then echo "SCHEMA_REGISTRY_URL=$URL"; else exit 3; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
