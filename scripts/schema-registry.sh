#!/usr/bin/env bash
# A real Confluent-compatible schema registry for callsync's tests: Apicurio Registry 3.x,
# whose Confluent API is served under /apis/ccompat/v7, run on loopback from its published
# Quarkus build on Maven Central (io.apicurio:apicurio-registry-app:<v>:tar.gz:all, see
# scripts/schema-registry/pom.xml): no Docker, nothing from outside Maven Central. Storage is
# its default in-memory H2 database: schemas live as long as the process. Global
# compatibility is BACKWARD, as in Confluent's registry. See docs/operations.md, "Schema
# registry interop".
#
#   scripts/schema-registry.sh fetch     only fetch and unpack the registry (once)
#   scripts/schema-registry.sh start     fetch if needed, start, wait until it answers; prints
#                                        SCHEMA_REGISTRY_URL=http://127.0.0.1:<port>/apis/ccompat/v7
#                                        Idempotent: a running registry is reused.
#   scripts/schema-registry.sh stop      stop it (SIGTERM, then SIGKILL after a timeout) and wait
#   scripts/schema-registry.sh restart   stop + start (an empty registry again)
#   scripts/schema-registry.sh status    exit 0 and print SCHEMA_REGISTRY_URL when it answers,
#                                        3 otherwise
#
# Environment (all optional):
#   CALLSYNC_WORK                          work dir, default <repo>/.work
#   CALLSYNC_SCHEMA_REGISTRY_HOME          registry dir (app, log, pid), default $CALLSYNC_WORK/schema-registry
#   CALLSYNC_SCHEMA_REGISTRY_PORT          HTTP port, default 18081
#   CALLSYNC_SCHEMA_REGISTRY_MGMT_PORT     Quarkus management port (health, metrics), default port+1
#   CALLSYNC_SCHEMA_REGISTRY_HEAP          max heap, default 384m
#   CALLSYNC_SCHEMA_REGISTRY_START_TIMEOUT seconds to wait for readiness, default 90
#   CALLSYNC_SCHEMA_REGISTRY_JAVA          the java to run it with (Java 21 or later); default:
#                                          the first of $JAVA_HOME, `java` on PATH and
#                                          /usr/lib/jvm/*/bin/java that is 21+
#   CALLSYNC_SCHEMA_REGISTRY_JVM_OPTS      extra JVM options and -Dkey=value settings (appended, so they win)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CALLSYNC_WORK="${CALLSYNC_WORK:-$REPO_ROOT/.work}"
REG_HOME="${CALLSYNC_SCHEMA_REGISTRY_HOME:-$CALLSYNC_WORK/schema-registry}"
APP_DIR="$REG_HOME/app"
PORT="${CALLSYNC_SCHEMA_REGISTRY_PORT:-18081}"
MGMT_PORT="${CALLSYNC_SCHEMA_REGISTRY_MGMT_PORT:-$((PORT + 1))}"
HEAP="${CALLSYNC_SCHEMA_REGISTRY_HEAP:-384m}"
START_TIMEOUT="${CALLSYNC_SCHEMA_REGISTRY_START_TIMEOUT:-90}"
STOP_TIMEOUT=30
MIN_JAVA=21
POM="$REPO_ROOT/scripts/schema-registry/pom.xml"
LOG_FILE="$REG_HOME/registry.log"
PID_FILE="$REG_HOME/registry.pid"
API_PATH="/apis/ccompat/v7"
URL="http://127.0.0.1:$PORT$API_PATH"

log() { echo "schema-registry: $*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=scripts/lib/service.sh
source "$REPO_ROOT/scripts/lib/service.sh"

# ---------------------------------------------------------------- the distribution

pom_stamp() { sha256sum "$POM" | cut -d' ' -f1; }

app_complete() {
  [[ -f "$APP_DIR/.complete" ]] && [[ "$(cat "$APP_DIR/.complete")" == "$(pom_stamp)" ]] \
    && [[ -f "$APP_DIR/quarkus-run.jar" ]]
}

fetch_app() {
  if app_complete; then return 0; fi
  command -v mvn >/dev/null 2>&1 || die "'mvn' not found; install Maven (Debian: apt-get install -y maven)"
  log "fetching Apicurio Registry from Maven Central into $APP_DIR (once)"
  mkdir -p "$REG_HOME"
  local tmp="$APP_DIR.tmp.$$" mvn_log="$REG_HOME/mvn.log"
  rm -rf "$tmp"
  if ! mvn -B -q -f "$POM" dependency:unpack -Dcallsync.registry.dir="$tmp" \
      >"$mvn_log" 2>&1; then
    tail -n 40 "$mvn_log" >&2 || true
    rm -rf "$tmp" "$tmp.markers"
    die "mvn dependency:unpack failed for $POM (log: $mvn_log)"
  fi
  rm -rf "$tmp.markers"
  [[ -f "$tmp/quarkus-run.jar" ]] || die "mvn ran but there is no quarkus-run.jar in $tmp"
  pom_stamp >"$tmp/.complete"
  rm -rf "$APP_DIR"
  mv "$tmp" "$APP_DIR"
  log "fetched $(find "$APP_DIR/lib" -name '*.jar' | wc -l) jars"
}

# ---------------------------------------------------------------- java

# the major version of a java binary, or nothing
java_major() {
  local v
  v="$("$1" -version 2>&1 | sed -n 's/.* version "\([0-9][0-9]*\).*/\1/p' | head -n 1)"
  echo "${v:-0}"
}

find_java() {
  if [[ -n "${CALLSYNC_SCHEMA_REGISTRY_JAVA:-}" ]]; then
    (($(java_major "$CALLSYNC_SCHEMA_REGISTRY_JAVA") >= MIN_JAVA)) \
      || die "CALLSYNC_SCHEMA_REGISTRY_JAVA=$CALLSYNC_SCHEMA_REGISTRY_JAVA is not Java $MIN_JAVA or later"
    echo "$CALLSYNC_SCHEMA_REGISTRY_JAVA"
    return 0
  fi
  local candidates=() j
  [[ -n "${JAVA_HOME:-}" ]] && candidates+=("$JAVA_HOME/bin/java")
  command -v java >/dev/null 2>&1 && candidates+=("$(command -v java)")
  # then every JDK installed in the Debian layout
  while IFS= read -r j; do candidates+=("$j"); done \
    < <(find /usr/lib/jvm -mindepth 3 -maxdepth 3 -path '*/bin/java' 2>/dev/null | sort -V -r)
  for j in "${candidates[@]}"; do
    if [[ -x "$j" ]] && (($(java_major "$j") >= MIN_JAVA)); then
      echo "$j"
      return 0
    fi
  done
  die "Apicurio Registry 3 needs Java $MIN_JAVA or later and none was found (looked at \$JAVA_HOME, \`java\` on PATH, /usr/lib/jvm/*); set CALLSYNC_SCHEMA_REGISTRY_JAVA"
}

# ---------------------------------------------------------------- process

# our registry: a JVM running quarkus-run.jar from our app dir (never another registry)
is_our_registry() { cmdline_has "$1" " -jar $APP_DIR/quarkus-run.jar"; }
registry_pid() { find_our_pid "$PID_FILE" is_our_registry; }
wait_ready() { wait_until_serving "$1" "$START_TIMEOUT" answering registry; }
with_lock() { with_lock_in "$REG_HOME" "$@"; }

# a real API call: GET /apis/ccompat/v7/subjects answers 200 with a JSON array
answering() {
  local reply
  # shellcheck disable=SC2016 # the inner script expands its own $1 and $2
  reply="$(timeout 5 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "GET %s/subjects HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: application/vnd.schemaregistry.v1+json\r\n\r\n" "$2" >&3
    head -c 4096 <&3
  ' _ "$PORT" "$API_PATH" 2>/dev/null || true)"
  [[ "$reply" == "HTTP/1."?" 200"* && "${reply##*$'\r\n\r\n'}" == "["* ]]
}

# sets JOPTS (an array)
java_opts() {
  # C1 only and Serial GC: the fastest start and smallest footprint on a small box, plenty
  # for a registry that serves a few requests per test
  JOPTS=(-Xms64m "-Xmx$HEAP" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData
    -Djava.awt.headless=true
    # loopback only
    -Dquarkus.http.host=127.0.0.1 "-Dquarkus.http.port=$PORT"
    -Dquarkus.management.host=127.0.0.1 "-Dquarkus.management.port=$MGMT_PORT"
    # the default in-memory H2 storage, with a small pool (default 20 connections up front)
    -Dapicurio.datasource.jdbc.initial-size=2 -Dapicurio.datasource.jdbc.min-size=2
    -Dapicurio.datasource.jdbc.max-size=20
    # BACKWARD compatibility unless a subject says otherwise: Confluent's default (Apicurio's
    # is none)
    -Dapicurio.rules.global.compatibility=BACKWARD
    # schema files of an import/export go to our dir, not /tmp
    "-Dapicurio.storage.snapshot.location=$REG_HOME" "-Dapicurio.import.work-dir=$REG_HOME")
  if [[ -n "${CALLSYNC_SCHEMA_REGISTRY_JVM_OPTS:-}" ]]; then
    local extra
    read -r -a extra <<<"$CALLSYNC_SCHEMA_REGISTRY_JVM_OPTS"
    JOPTS+=("${extra[@]}")
  fi
}

start() {
  local pid
  if pid="$(registry_pid)"; then
    if answering || wait_ready "$pid"; then
      log "already running (pid $pid)"
      echo "SCHEMA_REGISTRY_URL=$URL"
      return 0
    fi
    die "a registry (pid $pid) is running but not answering; see $LOG_FILE or run: $0 stop"
  fi
  for p in "$PORT" "$MGMT_PORT"; do
    if port_in_use "$p"; then
      die "port $p on 127.0.0.1 is taken by another process; set CALLSYNC_SCHEMA_REGISTRY_PORT/CALLSYNC_SCHEMA_REGISTRY_MGMT_PORT"
    fi
  done
  local java
  java="$(find_java)"
  fetch_app
  local t0=$SECONDS
  [[ -f "$LOG_FILE" ]] && mv -f "$LOG_FILE" "$LOG_FILE.prev"
  java_opts
  # own session (setsid): survives the shell and the test process that started it
  (cd "$REG_HOME" && exec setsid "$java" "${JOPTS[@]}" -jar "$APP_DIR/quarkus-run.jar" \
    </dev/null >"$LOG_FILE" 2>&1 9>&-) &
  pid=$!
  # setsid forks when it is a process group leader: then $! is not the JVM; find the JVM by
  # its command line
  sleep 0.2
  if ! is_our_registry "$pid"; then pid="$(registry_pid || echo "$pid")"; fi
  echo "$pid" >"$PID_FILE"
  if ! wait_ready "$pid"; then
    log "registry did not answer within ${START_TIMEOUT}s; last lines of $LOG_FILE:"
    tail -n 60 "$LOG_FILE" >&2 || true
    if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; fi
    rm -f "$PID_FILE"
    exit 1
  fi
  log "started (pid $pid, $("$java" -version 2>&1 | head -n 1)) in $((SECONDS - t0))s; log: $LOG_FILE"
  echo "SCHEMA_REGISTRY_URL=$URL"
}

stop() {
  local pid
  if ! pid="$(registry_pid)"; then
    rm -f "$PID_FILE"
    log "not running"
    return 0
  fi
  terminate "$pid" "$STOP_TIMEOUT" || true
  rm -f "$PID_FILE"
  log "stopped"
}

status() {
  local pid
  if pid="$(registry_pid)" && answering; then
    log "running (pid $pid), log: $LOG_FILE"
    echo "SCHEMA_REGISTRY_URL=$URL"
    return 0
  fi
  if [[ -n "${pid:-}" ]]; then log "process $pid exists but does not answer on $URL"; else log "not running"; fi
  return 3
}

case "${1:-}" in
  fetch) with_lock fetch_app ;;
  start) with_lock start ;;
  stop) with_lock stop ;;
  restart) with_lock stop && with_lock start ;;
  status) status ;;
  *)
    echo "usage: $0 {fetch|start|stop|restart|status}" >&2
    exit 2
    ;;
esac
