# Shared helpers for deploy/local/*.sh. Sourced, not executed.
# Callers set SERVICE (used as log prefix) before sourcing.

# Repo root = two levels above this file, so the scripts work from any cwd.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERALD_DATA_DIR="${HERALD_DATA_DIR:-$REPO_ROOT/.herald}"
mkdir -p "$HERALD_DATA_DIR"
# Absolute path: it ends up in generated configs read by the servers.
HERALD_DATA_DIR="$(cd "$HERALD_DATA_DIR" && pwd)"
HERALD_CACHE_DIR="${HERALD_CACHE_DIR:-$HERALD_DATA_DIR/cache}"

log() { printf '[%s] %s\n' "$SERVICE" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Print the pid from $1 if that process is alive and its command line
# contains $2; guards against a stale pid file whose pid got reused.
running_pid() {
  local pidfile=$1 pattern=$2 pid
  [[ -s $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pattern" || return 1
  echo "$pid"
}

# True if something accepts TCP connections on host:port (bash /dev/tcp,
# so no netcat needed).
port_open() {
  timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

# Refuse to start if a foreign process already holds one of our ports;
# otherwise our server would die with a bind error further down.
require_ports_free() {
  local port
  for port in "$@"; do
    if port_open 127.0.0.1 "$port"; then
      die "port 127.0.0.1:$port is already in use by another process (see: ss -ltnp 'sport = :$port')"
    fi
  done
}

# Show the end of each existing log file, for failure reports.
show_tail() {
  local f
  for f in "$@"; do
    [[ -s $f ]] || continue
    echo "----- last 40 lines of $f -----" >&2
    tail -n 40 "$f" >&2
  done
}

# SIGTERM, wait up to $3 seconds for a clean exit, then SIGKILL.
stop_pid() {
  local pidfile=$1 pattern=$2 timeout=$3 pid i
  if ! pid=$(running_pid "$pidfile" "$pattern"); then
    log "not running"
    rm -f "$pidfile"
    return 0
  fi
  log "stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < timeout * 5; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "still running after ${timeout}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  fi
  rm -f "$pidfile"
  log "stopped"
}

# Start "$@" detached: own session (setsid) so it survives the calling shell
# and its Ctrl-C, stdin closed, output appended to $2. Pid written to $1.
# These scripts run without job control, so the background child is not a
# process-group leader and setsid execs in place: $! is the server's pid.
spawn() {
  local pidfile=$1 out=$2
  shift 2
  # 9>&-: the server must not inherit take_lock's lock fd, or it would hold
  # the lock for its whole life.
  setsid "$@" </dev/null >>"$out" 2>&1 9>&- &
  echo $! >"$pidfile"
}

# apt-get install "$@" (as root, or via sudo). A temporary policy-rc.d stops a package's postinst
# from starting its system service, which would grab the ports with the system's config.
apt_install() {
  local sudo=""
  ((EUID == 0)) || sudo=sudo
  log "installing $* with apt-get"
  local policy=/usr/sbin/policy-rc.d added_policy=""
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
    added_policy=1
  fi
  local rc=0
  {
    $sudo apt-get update &&
      $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
  } || rc=$?
  [[ -z $added_policy ]] || $sudo rm -f "$policy"
  ((rc == 0)) || die "apt-get install $* failed (rc $rc)"
}

# Serialise start/stop of one service (e.g. parallel test workers all calling
# start): the lock is held on fd 9 until the script exits.
take_lock() {
  mkdir -p "$(dirname "$1")"
  exec 9>"$1"
  flock -w 120 9 || die "could not lock $1 within 120s"
}
