# shellcheck shell=bash
# Process helpers shared by scripts/kafka-broker.sh and scripts/schema-registry.sh (sourced).
# They expect the sourcing script to define `log` and `die`.

# Prints the pid of our process and returns 0: the pid in $1 (a pid file) when predicate $2
# accepts it, else the first process in /proc that $2 accepts (never another instance's).
find_our_pid() {
  local pid_file="$1" ours="$2" pid d
  if [[ -f "$pid_file" ]]; then
    pid="$(cat "$pid_file" 2>/dev/null || true)"
    if [[ -n "$pid" ]] && "$ours" "$pid"; then echo "$pid"; return 0; fi
  fi
  for d in /proc/[0-9]*; do
    pid="${d#/proc/}"
    if "$ours" "$pid"; then echo "$pid"; return 0; fi
  done
  return 1
}

# Whether the command line of process $1 contains $2.
cmdline_has() {
  local cmdline
  cmdline="$(tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline" || true)"
  [[ "$cmdline" == *"$2"* ]]
}

# Waits up to $2 seconds for probe $3 to succeed while process $1 ($4 names it) lives.
wait_until_serving() {
  local pid="$1" deadline=$((SECONDS + $2)) probe="$3" what="$4"
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "$what process $pid exited"
      return 1
    fi
    if "$probe"; then return 0; fi
    sleep 0.2
  done
  return 1
}

# SIGTERM to process $1, SIGKILL after $2 seconds; returns 1 when it had to be killed.
terminate() {
  local pid="$1" timeout="$2"
  log "stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + timeout))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "still running after ${timeout}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    return 1
  fi
  return 0
}

# Whether something listens on 127.0.0.1:$1.
port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Runs "$@" holding the lock file $1/.lock (waiting up to 300 s for it).
with_lock_in() {
  local dir="$1"
  shift
  mkdir -p "$dir"
  exec 9>"$dir/.lock"
  flock -w 300 9 || die "timed out waiting for $dir/.lock"
  "$@"
}
