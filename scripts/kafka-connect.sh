#!/usr/bin/env bash
# Kafka Connect (standalone worker) with the Debezium JDBC sink connector, run from Maven Central
# jars: no Docker, no tarball. The peer that `callsync-bench sink` runs beside callsync's sink.
#
#   scripts/kafka-connect.sh fetch              fetch the worker's jars and the connector's plugin
#                                               archive if needed; prints CONNECT_PLUGIN_PATH=<dir>
#                                               (the worker's plugin.path). Idempotent.
#   scripts/kafka-connect.sh run WORKER CONN... fetch, then run the standalone worker in the
#                                               foreground (exec: the caller's child is the JVM)
#   scripts/kafka-connect.sh start WORKER CONN... the same in the background; waits until the worker
#                                               has started its connectors. Idempotent.
#   scripts/kafka-connect.sh stop               stop it (SIGTERM, then SIGKILL after a timeout)
#   scripts/kafka-connect.sh status             exit 0 when it runs, 3 otherwise
#
# WORKER is a connect-standalone.properties file (bootstrap.servers, converters, listeners,
# offset.storage.file.filename, plugin.path=$CONNECT_PLUGIN_PATH); each CONN is a connector's
# .properties or .json file (ConnectStandalone's own arguments).
#
# Environment (all optional):
#   CALLSYNC_WORK                  work dir, default <repo>/.work
#   CALLSYNC_CONNECT_HOME          Connect dir (log, pid), default $CALLSYNC_WORK/kafka-connect
#   CALLSYNC_CONNECT_LIB           worker jar cache, default $CALLSYNC_CONNECT_HOME/lib
#   CALLSYNC_CONNECT_PLUGINS       plugin dir, default $CALLSYNC_CONNECT_HOME/plugins
#   CALLSYNC_CONNECT_HEAP_OPTS     heap, default "-Xms256M -Xmx2G" (connect-standalone.sh's)
#   CALLSYNC_CONNECT_JVM_OPTS      extra JVM options (appended, so they win)
#   CALLSYNC_CONNECT_START_TIMEOUT seconds `start` waits, default 90
#   JAVA_HOME                      java to use (else `java` on PATH)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CALLSYNC_WORK="${CALLSYNC_WORK:-$REPO_ROOT/.work}"
CONNECT_HOME="${CALLSYNC_CONNECT_HOME:-$CALLSYNC_WORK/kafka-connect}"
CONNECT_LIB="${CALLSYNC_CONNECT_LIB:-$CONNECT_HOME/lib}"
CONNECT_PLUGINS="${CALLSYNC_CONNECT_PLUGINS:-$CONNECT_HOME/plugins}"
HEAP_OPTS="${CALLSYNC_CONNECT_HEAP_OPTS:--Xms256M -Xmx2G}"
START_TIMEOUT="${CALLSYNC_CONNECT_START_TIMEOUT:-90}"
STOP_TIMEOUT=30
POM="$REPO_ROOT/scripts/kafka-connect/pom.xml"
LOG_FILE="$CONNECT_HOME/connect.log"
PID_FILE="$CONNECT_HOME/connect.pid"
LOG4J="$CONNECT_HOME/log4j2.properties"
MAIN_CLASS="org.apache.kafka.connect.cli.ConnectStandalone"

if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then JAVA="$JAVA_HOME/bin/java"; else JAVA="java"; fi

log() { echo "kafka-connect: $*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=scripts/lib/service.sh
source "$REPO_ROOT/scripts/lib/service.sh"

need() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' not found; $2"
}

# ---------------------------------------------------------------- jars

pom_stamp() { sha256sum "$POM" | cut -d' ' -f1; }

fetched() {
  [[ -f "$CONNECT_HOME/.complete" ]] && [[ "$(cat "$CONNECT_HOME/.complete")" == "$(pom_stamp)" ]] \
    && compgen -G "$CONNECT_LIB/connect-runtime-*.jar" >/dev/null \
    && compgen -G "$CONNECT_PLUGINS/debezium-connector-jdbc/debezium-connector-jdbc-*.jar" >/dev/null
}

# mvn GOAL ARGS... against the pom, its output in $CONNECT_HOME/mvn.log
mvn_pom() {
  local mvn_log="$CONNECT_HOME/mvn.log"
  if ! mvn -B -q -f "$POM" "$@" >"$mvn_log" 2>&1; then
    tail -n 40 "$mvn_log" >&2 || true
    return 1
  fi
}

fetch() {
  if fetched; then
    echo "CONNECT_PLUGIN_PATH=$CONNECT_PLUGINS"
    return 0
  fi
  need mvn "install Maven (Debian: apt-get install -y maven)"
  need "$JAVA" "install a JDK 17+ (Debian: apt-get install -y openjdk-17-jdk-headless)"
  mkdir -p "$CONNECT_HOME"
  log "fetching Kafka Connect and the Debezium JDBC sink from Maven Central into $CONNECT_HOME (once)"
  local lib_tmp="$CONNECT_LIB.tmp.$$" plugins_tmp="$CONNECT_PLUGINS.tmp.$$"
  rm -rf "$lib_tmp" "$plugins_tmp" "$plugins_tmp.markers"
  mkdir -p "$lib_tmp" "$plugins_tmp"
  # the worker: Connect's jars on a flat classpath
  mvn_pom dependency:copy-dependencies -DincludeScope=runtime -DexcludeTypes=tar.gz \
    -DoutputDirectory="$lib_tmp" \
    || { rm -rf "$lib_tmp" "$plugins_tmp"; die "fetching the worker's jars failed (pom $POM)"; }
  # the connector: its plugin archive, one directory that Connect loads in isolation
  # (its "already unpacked" markers go to a temporary dir, never next to the pom)
  mvn_pom dependency:unpack-dependencies -DincludeTypes=tar.gz -DoutputDirectory="$plugins_tmp" \
    -DmarkersDirectory="$plugins_tmp.markers" \
    || { rm -rf "$lib_tmp" "$plugins_tmp"; die "fetching the connector's plugin archive failed (pom $POM)"; }
  compgen -G "$plugins_tmp/debezium-connector-jdbc/debezium-connector-jdbc-*.jar" >/dev/null \
    || die "the plugin archive has no debezium-connector-jdbc/ directory (in $plugins_tmp)"
  rm -rf "$CONNECT_LIB" "$CONNECT_PLUGINS" "$plugins_tmp.markers"
  mv "$lib_tmp" "$CONNECT_LIB"
  mv "$plugins_tmp" "$CONNECT_PLUGINS"
  pom_stamp >"$CONNECT_HOME/.complete"
  log "fetched $(find "$CONNECT_LIB" -name '*.jar' | wc -l) worker jars and $(find "$CONNECT_PLUGINS" -name '*.jar' | wc -l) plugin jars"
  echo "CONNECT_PLUGIN_PATH=$CONNECT_PLUGINS"
}

# ---------------------------------------------------------------- process

write_log4j() {
  mkdir -p "$CONNECT_HOME/logs"
  cat >"$LOG4J" <<'EOF'
# generated by scripts/kafka-connect.sh
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = STDOUT
# the readiness line ("Kafka Connect started") and the connector's own errors
logger.connect.name = org.apache.kafka.connect.runtime.Connect
logger.connect.level = INFO
logger.standalone.name = org.apache.kafka.connect.cli
logger.standalone.level = INFO
EOF
}

# sets JOPTS: connect-standalone.sh's heap and kafka-run-class.sh's JVM performance options, as a
# user who starts Connect from Kafka's own scripts runs it
java_opts() {
  local heap extra
  read -r -a heap <<<"$HEAP_OPTS"
  JOPTS=("${heap[@]}" -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15
    -Djava.awt.headless=true "-Dkafka.logs.dir=$CONNECT_HOME/logs"
    "-Dlog4j2.configurationFile=$LOG4J")
  if [[ -n "${CALLSYNC_CONNECT_JVM_OPTS:-}" ]]; then
    read -r -a extra <<<"$CALLSYNC_CONNECT_JVM_OPTS"
    JOPTS+=("${extra[@]}")
  fi
}

check_args() {
  (($# >= 2)) || die "usage: $0 run|start WORKER.properties CONNECTOR.(properties|json)..."
  local f
  for f in "$@"; do [[ -f "$f" ]] || die "no such file: $f"; done
  grep -q '^plugin.path=' "$1" || die "$1 has no plugin.path= line (set it to $CONNECT_PLUGINS)"
}

run() {
  check_args "$@"
  fetch >/dev/null
  write_log4j
  java_opts
  exec "$JAVA" "${JOPTS[@]}" -cp "$CONNECT_LIB/*" "$MAIN_CLASS" "$@"
}

is_our_worker() { cmdline_has "$1" " $MAIN_CLASS "; }
worker_pid() { find_our_pid "$PID_FILE" is_our_worker; }
started() { [[ -f "$LOG_FILE" ]] && grep -q "Kafka Connect started" "$LOG_FILE"; }

start() {
  check_args "$@"
  local pid
  if pid="$(worker_pid)"; then
    log "already running (pid $pid)"
    return 0
  fi
  fetch >/dev/null
  write_log4j
  java_opts
  [[ -f "$LOG_FILE" ]] && mv -f "$LOG_FILE" "$LOG_FILE.prev"
  local t0=$SECONDS
  setsid "$JAVA" "${JOPTS[@]}" -cp "$CONNECT_LIB/*" "$MAIN_CLASS" "$@" \
    </dev/null >"$LOG_FILE" 2>&1 9>&- &
  pid=$!
  sleep 0.2
  if ! is_our_worker "$pid"; then pid="$(worker_pid || echo "$pid")"; fi
  echo "$pid" >"$PID_FILE"
  if ! wait_until_serving "$pid" "$START_TIMEOUT" started "Connect worker"; then
    log "the worker did not start within ${START_TIMEOUT}s; last lines of $LOG_FILE:"
    tail -n 60 "$LOG_FILE" >&2 || true
    if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; fi
    rm -f "$PID_FILE"
    exit 1
  fi
  log "started (pid $pid) in $((SECONDS - t0))s; log: $LOG_FILE"
}

stop() {
  local pid
  if ! pid="$(worker_pid)"; then
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
  if pid="$(worker_pid)"; then
    log "running (pid $pid), log: $LOG_FILE"
    return 0
  fi
  log "not running"
  return 3
}

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
  fetch) with_lock_in "$CONNECT_HOME" fetch ;;
  run) with_lock_in "$CONNECT_HOME" fetch >/dev/null && exec 9>&- && run "$@" ;;
  start) with_lock_in "$CONNECT_HOME" start "$@" ;;
  stop) with_lock_in "$CONNECT_HOME" stop ;;
  status) status ;;
  *)
    echo "usage: $0 {fetch|run|start|stop|status} [WORKER.properties CONNECTOR...]" >&2
    exit 2
    ;;
esac
