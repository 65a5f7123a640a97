#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for callsync's tests: loopback TCP only, trust auth, durability
# off (fsync, synchronous_commit, full_page_writes), so never put data you need in it.
#
#   scripts/postgres.sh start     initdb once, start, wait; prints DATABASE_URL=... and
#                                 CALLSYNC_PG_DATA=... Idempotent.
#   scripts/postgres.sh stop      fast shutdown (CALLSYNC_PG_STOP_MODE=immediate for a crash)
#   scripts/postgres.sh restart   stop + start (data kept)
#   scripts/postgres.sh status    exit 0 and print DATABASE_URL when running, 3 otherwise
#   scripts/postgres.sh clean     stop and delete the cluster
#
# Environment (all optional):
#   CALLSYNC_WORK          work dir, default <repo>/.work
#   CALLSYNC_PG_DATA       data directory, default $CALLSYNC_WORK/postgres/data (the log and
#                          lock files go next to it); as root with a repo the server user cannot
#                          reach (e.g. under /root): /tmp/callsync-postgres-<hash>/data
#   CALLSYNC_PG_PORT       TCP port on 127.0.0.1, default 15432
#   CALLSYNC_PG_BIN        directory with initdb/pg_ctl, default the newest
#                          /usr/lib/postgresql/*/bin, else `pg_ctl` on PATH
#   CALLSYNC_PG_USER       OS user that runs the server when this script runs as root
#                          (initdb refuses root), default `callsync` (created if missing)
#   CALLSYNC_PG_STOP_MODE  pg_ctl stop mode: fast (default), smart or immediate
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CALLSYNC_WORK="${CALLSYNC_WORK:-$REPO_ROOT/.work}"
PORT="${CALLSYNC_PG_PORT:-15432}"
STOP_MODE="${CALLSYNC_PG_STOP_MODE:-fast}"
RUN_USER="${CALLSYNC_PG_USER:-callsync}"

log() { echo "postgres: $*" >&2; }
die() { log "error: $*"; exit 1; }

# As root the server runs as $RUN_USER, who must reach the data dir. A clone under a private
# directory (e.g. /root) is not reachable: then the cluster lives under /tmp instead.
default_data_dir() {
  local home="$CALLSYNC_WORK/postgres"
  if [[ "$(id -u)" == "0" ]] && ! runuser -u nobody -- test -x "$REPO_ROOT" 2>/dev/null; then
    home="/tmp/callsync-postgres-$(echo "$CALLSYNC_WORK" | sha256sum | cut -c1-12)"
  fi
  echo "$home/data"
}
DATA_DIR="${CALLSYNC_PG_DATA:-$(default_data_dir)}"
[[ "$DATA_DIR" == /* ]] || DATA_DIR="$PWD/$DATA_DIR"
PG_HOME="$(dirname "$DATA_DIR")"
LOG_FILE="$PG_HOME/postgres.log"
URL="postgres://postgres@127.0.0.1:$PORT/postgres"

find_bin() {
  if [[ -n "${CALLSYNC_PG_BIN:-}" ]]; then echo "$CALLSYNC_PG_BIN"; return 0; fi
  local d
  d="$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1 || true)"
  if [[ -n "$d" && -x "$d/pg_ctl" ]]; then echo "$d"; return 0; fi
  if command -v pg_ctl >/dev/null 2>&1; then dirname "$(command -v pg_ctl)"; return 0; fi
  return 1
}

install_postgres() {
  if [[ "$(id -u)" != "0" ]]; then
    die "PostgreSQL server binaries (initdb, pg_ctl) not found; install them (Debian: sudo apt-get install -y postgresql) or set CALLSYNC_PG_BIN"
  fi
  log "PostgreSQL not found; installing it with apt-get (no default cluster)"
  # keep the package from creating and starting its own cluster on 5432
  mkdir -p /etc/postgresql-common
  if [[ ! -f /etc/postgresql-common/createcluster.conf ]]; then
    echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2
}

PG_BIN="$(find_bin || true)"

# as root, every server command runs as $RUN_USER
as_user() {
  if [[ "$(id -u)" == "0" ]]; then
    # from / : the caller's directory may not be readable by that user
    (cd / && runuser -u "$RUN_USER" -- "$@")
  else
    "$@"
  fi
}

ensure_user() {
  [[ "$(id -u)" == "0" ]] || return 0
  if ! id -u "$RUN_USER" >/dev/null 2>&1; then
    log "creating system user $RUN_USER to run PostgreSQL (initdb refuses root)"
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$RUN_USER" \
      || die "useradd $RUN_USER failed; set CALLSYNC_PG_USER to an existing unprivileged user"
  fi
  mkdir -p "$PG_HOME"
  chown "$RUN_USER" "$PG_HOME"
  # every parent must be traversable by that user (a clone under /root is not)
  if ! runuser -u "$RUN_USER" -- test -w "$PG_HOME"; then
    die "user $RUN_USER cannot write $PG_HOME (a parent directory is not traversable); set CALLSYNC_PG_DATA to a path under /tmp"
  fi
}

running() {
  [[ -n "$PG_BIN" && -f "$DATA_DIR/postmaster.pid" ]] && as_user "$PG_BIN/pg_ctl" status -D "$DATA_DIR" >/dev/null 2>&1
}

ready() {
  as_user "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres
}

print_env() {
  echo "DATABASE_URL=$URL"
  echo "CALLSYNC_PG_DATA=$DATA_DIR"
}

init_cluster() {
  [[ -f "$DATA_DIR/PG_VERSION" ]] && return 0
  log "initdb $DATA_DIR"
  as_user mkdir -p "$DATA_DIR"
  chmod 700 "$DATA_DIR" 2>/dev/null || as_user chmod 700 "$DATA_DIR"
  if ! as_user "$PG_BIN/initdb" -D "$DATA_DIR" -U postgres --auth=trust --encoding=UTF8 --locale=C \
      --no-sync >"$PG_HOME/initdb.log" 2>&1; then
    cat "$PG_HOME/initdb.log" >&2 || true
    die "initdb failed for $DATA_DIR"
  fi
  as_user tee -a "$DATA_DIR/postgresql.conf" >/dev/null <<EOF

# callsync test cluster (scripts/postgres.sh): loopback only, no durability
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = ''
max_connections = 200
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = minimal
max_wal_senders = 0
max_wal_size = 2GB
checkpoint_timeout = 30min
dynamic_shared_memory_type = mmap
log_min_messages = warning
log_min_error_statement = panic
EOF
}

start() {
  if [[ -z "$PG_BIN" ]]; then
    install_postgres
    PG_BIN="$(find_bin)" || die "PostgreSQL installed but pg_ctl not found"
  fi
  ensure_user
  if running; then
    log "already running ($DATA_DIR)"
    print_env
    return 0
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    die "port $PORT on 127.0.0.1 is taken by another process; set CALLSYNC_PG_PORT"
  fi
  init_cluster
  local t0=$SECONDS
  # -p/-c on the command line win over postgresql.conf, so a changed CALLSYNC_PG_PORT applies
  if ! as_user "$PG_BIN/pg_ctl" start -D "$DATA_DIR" -l "$LOG_FILE" -w -t 60 \
      -o "-p $PORT -c listen_addresses=127.0.0.1" >/dev/null 9>&-; then
    log "pg_ctl start failed; last lines of $LOG_FILE:"
    tail -n 40 "$LOG_FILE" >&2 || true
    exit 1
  fi
  local deadline=$((SECONDS + 30))
  until ready; do
    ((SECONDS < deadline)) || die "server started but does not accept connections on 127.0.0.1:$PORT"
    sleep 0.2
  done
  log "started in $((SECONDS - t0))s; log: $LOG_FILE"
  print_env
}

stop() {
  if ! running; then
    log "not running"
    return 0
  fi
  as_user "$PG_BIN/pg_ctl" stop -D "$DATA_DIR" -m "$STOP_MODE" -w -t 60 >/dev/null
  log "stopped ($STOP_MODE)"
}

status() {
  if running && ready; then
    log "running ($DATA_DIR)"
    print_env
    return 0
  fi
  log "not running"
  return 3
}

with_lock() {
  mkdir -p "$PG_HOME"
  exec 9>"$PG_HOME/.lock"
  flock -w 120 9 || die "timed out waiting for $PG_HOME/.lock"
  "$@"
}

case "${1:-}" in
  start) with_lock start ;;
  stop) with_lock stop ;;
  restart) with_lock stop && with_lock start ;;
  status) status ;;
  clean) with_lock stop && rm -rf "$DATA_DIR" && log "deleted $DATA_DIR" ;;
  *)
    echo "usage: $0 {start|stop|restart|status|clean}" >&2
    exit 2
    ;;
esac
