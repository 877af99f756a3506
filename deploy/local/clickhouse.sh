#!/usr/bin/env bash
# Local ClickHouse server (Debian's clickhouse-server 18.16) on loopback, with
# its own config under the data dir; the system config and service are unused.
# Usage: deploy/local/clickhouse.sh {install|start|stop|restart|status}
set -euo pipefail

SERVICE=clickhouse
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/local/common.sh
source "$HERE/common.sh"

TCP_PORT="${HERALD_CLICKHOUSE_PORT:-9000}"
HTTP_PORT="${HERALD_CLICKHOUSE_HTTP_PORT:-8123}"
START_TIMEOUT="${HERALD_CLICKHOUSE_START_TIMEOUT:-60}"
STOP_TIMEOUT=60

CH_DIR="$HERALD_DATA_DIR/clickhouse"
LOG_DIR="$CH_DIR/logs"
CONFIG="$CH_DIR/config.xml"
PID_FILE="$CH_DIR/clickhouse.pid"
PID_PATTERN="clickhouse-server"

# Fresh CI machines lack the package.
install() {
  if command -v clickhouse-server >/dev/null && command -v clickhouse-client >/dev/null; then
    return 0
  fi
  apt_install clickhouse-server clickhouse-client
}

# Regenerated on every start so port overrides and template edits take effect.
write_config() {
  mkdir -p "$CH_DIR"/{data,tmp,user_files,format_schemas,logs}
  sed -e "s|@DIR@|$CH_DIR|g" \
      -e "s|@TCP_PORT@|$TCP_PORT|g" \
      -e "s|@HTTP_PORT@|$HTTP_PORT|g" \
      "$HERE/clickhouse/config.xml.template" >"$CONFIG"
  cp "$HERE/clickhouse/users.xml" "$CH_DIR/users.xml"
}

# /ping answers "Ok." once the server accepts queries; without curl, ask
# clickhouse-client instead.
ping_ok() {
  if command -v curl >/dev/null; then
    [[ $(curl -s --max-time 2 "http://127.0.0.1:$HTTP_PORT/ping" 2>/dev/null) == "Ok." ]]
  else
    clickhouse-client --host 127.0.0.1 --port "$TCP_PORT" -q 'SELECT 1' >/dev/null 2>&1
  fi
}

wait_ready() {
  local pid=$1 deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      show_tail "$LOG_DIR/clickhouse-server.log" "$LOG_DIR/clickhouse-server.err.log" "$LOG_DIR/stdout.log"
      rm -f "$PID_FILE"
      die "clickhouse-server (pid $pid) exited during startup"
    fi
    ping_ok && return 0
    sleep 0.3
  done
  show_tail "$LOG_DIR/clickhouse-server.log" "$LOG_DIR/clickhouse-server.err.log" "$LOG_DIR/stdout.log"
  # Don't leave a half-started server behind: a later start would take it
  # for a healthy one.
  stop_pid "$PID_FILE" "$PID_PATTERN" "$STOP_TIMEOUT"
  die "not ready on 127.0.0.1:$HTTP_PORT after ${START_TIMEOUT}s; stopped it (logs in $LOG_DIR)"
}

start() {
  local pid
  if pid=$(running_pid "$PID_FILE" "$PID_PATTERN"); then
    log "already running (pid $pid) on 127.0.0.1:$TCP_PORT (http :$HTTP_PORT)"
    return 0
  fi
  install
  require_ports_free "$TCP_PORT" "$HTTP_PORT"
  write_config

  local t0=$SECONDS
  log "starting on 127.0.0.1:$TCP_PORT (http :$HTTP_PORT)"
  # Foreground mode under setsid rather than --daemon: 18.16 ignores --pid-file
  # without --daemon, and with it the forked child writes the file a moment
  # after the parent returns, so an early crash would go unnoticed until the
  # timeout. Running as root is fine: 18.16 does not switch to or require the
  # clickhouse user.
  spawn "$PID_FILE" "$LOG_DIR/stdout.log" \
    clickhouse-server --config-file="$CONFIG"
  pid=$(<"$PID_FILE")
  wait_ready "$pid"
  log "ready on 127.0.0.1:$TCP_PORT (http :$HTTP_PORT, pid $pid, $((SECONDS - t0))s)"
}

stop() {
  stop_pid "$PID_FILE" "$PID_PATTERN" "$STOP_TIMEOUT"
}

# Exit 0 if running, 3 if not (LSB convention).
status() {
  local pid
  if pid=$(running_pid "$PID_FILE" "$PID_PATTERN"); then
    log "running (pid $pid) on 127.0.0.1:$TCP_PORT (http :$HTTP_PORT), data in $CH_DIR"
  else
    log "stopped"
    return 3
  fi
}

case "${1:-}" in
  install | start | stop | restart) take_lock "$CH_DIR/.lock" ;;
esac
case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  restart) stop && start ;;
  status) status ;;
  *) echo "usage: $0 {install|start|stop|restart|status}" >&2; exit 2 ;;
esac
