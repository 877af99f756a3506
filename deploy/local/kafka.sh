#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, broker+controller in one JVM) on loopback.
# Usage: deploy/local/kafka.sh {fetch|start|stop|restart|status}
set -euo pipefail

SERVICE=kafka
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/local/common.sh
source "$HERE/common.sh"

PORT="${HERALD_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${HERALD_KAFKA_CONTROLLER_PORT:-9093}"
# Optional TLS listeners: SSL (TLS only) and SASL_SSL (TLS, then PLAIN or SCRAM login as the user
# below, the one Herald's clients log in as). Off unless their ports are set.
TLS_PORT="${HERALD_KAFKA_TLS_PORT:-}"
SASL_PORT="${HERALD_KAFKA_SASL_PORT:-}"
SASL_USERNAME="${HERALD_KAFKA_SASL_USERNAME:-herald}"
SASL_PASSWORD="${HERALD_KAFKA_SASL_PASSWORD:-herald-local-secret}"
# Bounded heap: the machine is shared with ClickHouse, the app and tests.
HEAP_OPTS="${HERALD_KAFKA_HEAP_OPTS:--Xms256m -Xmx768m}"
START_TIMEOUT="${HERALD_KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT=60

POM="$HERE/kafka/pom.xml"
# Cache keyed by the pom's hash: changing a version in the pom re-fetches.
LIB_DIR="$HERALD_CACHE_DIR/kafka-$(sha256sum "$POM" | cut -c1-12)/lib"

KAFKA_DIR="$HERALD_DATA_DIR/kafka"
DATA_DIR="$KAFKA_DIR/data"
LOG_DIR="$KAFKA_DIR/logs"
PROPS="$KAFKA_DIR/server.properties"
PID_FILE="$KAFKA_DIR/kafka.pid"
TLS_DIR="$KAFKA_DIR/tls"
PID_PATTERN="kafka.Kafka"

JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"

# Resolve the broker's runtime jars from Maven Central into the cache.
# A .complete marker makes an interrupted download count as missing.
fetch() {
  if [[ -f $LIB_DIR/.complete ]]; then
    log "jars already in $LIB_DIR"
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found (apt-get install -y maven)"
  log "fetching Kafka jars with Maven into $LIB_DIR"
  local tmp="$LIB_DIR.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  # mvn output goes to a file (even -q -B prints stray ANSI codes); shown on failure.
  if ! mvn -q -B -f "$POM" dependency:copy-dependencies \
    -DoutputDirectory="$tmp" -DincludeScope=runtime >"$tmp/mvn.log" 2>&1; then
    show_tail "$tmp/mvn.log"
    rm -rf "$tmp"
    die "mvn dependency:copy-dependencies failed"
  fi
  rm -f "$tmp/mvn.log"
  touch "$tmp/.complete"
  rm -rf "$LIB_DIR"
  mkdir -p "$(dirname "$LIB_DIR")"
  mv "$tmp" "$LIB_DIR"
  log "fetched $(find "$LIB_DIR" -name '*.jar' | wc -l) jars"
}

tls_enabled() { [[ -n $TLS_PORT || -n $SASL_PORT ]]; }

# A value as the replacement of a sed s||| command.
sed_escape() { printf '%s' "$1" | sed -e 's/[|&\\]/\\&/g'; }

# The broker's TLS key and certificate, made once per data dir: a local CA (ca.pem, what clients
# trust) and a certificate it issues for 127.0.0.1 and localhost, in a PKCS12 keystore.
make_certs() {
  [[ -f $TLS_DIR/broker.p12 ]] && return 0
  command -v openssl >/dev/null || die "openssl not found (apt-get install -y openssl)"
  log "making the broker's TLS certificate in $TLS_DIR"
  local tmp="$TLS_DIR.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp" && chmod 700 "$tmp"
  (
    cd "$tmp"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
      -subj "/CN=Herald local Kafka CA" -keyout ca.key -out ca.pem \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=127.0.0.1" \
      -keyout broker.key -out broker.csr
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
      "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" \
      "authorityKeyIdentifier=keyid" >broker.ext
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile broker.ext -out broker.pem
    openssl rand -hex 16 >keystore.password
    openssl pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem -name broker \
      -passout file:keystore.password -out broker.p12
    rm -f broker.csr broker.ext ca.srl
  ) >"$tmp/openssl.log" 2>&1 || { show_tail "$tmp/openssl.log"; rm -rf "$tmp"; die "making the TLS certificate failed"; }
  rm -rf "$TLS_DIR"
  mv "$tmp" "$TLS_DIR"
}

# Regenerated on every start so port overrides take effect.
write_config() {
  mkdir -p "$DATA_DIR" "$LOG_DIR"
  local tls_listeners=""
  [[ -n $TLS_PORT ]] && tls_listeners+=",SSL://127.0.0.1:$TLS_PORT"
  [[ -n $SASL_PORT ]] && tls_listeners+=",SASL_SSL://127.0.0.1:$SASL_PORT"
  sed -e "s|@PORT@|$PORT|g" \
      -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g" \
      -e "s|@TLS_LISTENERS@|$tls_listeners|g" \
      -e "s|@LOG_DIRS@|$DATA_DIR|g" \
      "$HERE/kafka/server.properties.template" >"$PROPS"
  tls_enabled || return 0
  [[ $SASL_USERNAME$SASL_PASSWORD != *[\"\\]* ]] || die "the SASL username and password may not hold \" or \\"
  sed -e "s|@TLS_DIR@|$TLS_DIR|g" \
      -e "s|@TLS_PASSWORD@|$(<"$TLS_DIR/keystore.password")|g" \
      -e "s|@SASL_USERNAME@|$(sed_escape "$SASL_USERNAME")|g" \
      -e "s|@SASL_PASSWORD@|$(sed_escape "$SASL_PASSWORD")|g" \
      "$HERE/kafka/tls.properties.template" >>"$PROPS"
  chmod 600 "$PROPS"
}

# KRaft needs formatted storage (cluster id + meta.properties) once.
format_storage() {
  [[ -f $DATA_DIR/meta.properties ]] && return 0
  local cluster_id
  cluster_id=$("$JAVA" -cp "$LIB_DIR/*" kafka.tools.StorageTool random-uuid)
  log "formatting storage in $DATA_DIR (cluster id $cluster_id)"
  # No --standalone: the quorum is given statically by controller.quorum.voters.
  # The SASL user's SCRAM credentials live in the cluster metadata, written here (PLAIN needs none).
  local scram=()
  tls_enabled && scram=(--add-scram "SCRAM-SHA-256=[name=$SASL_USERNAME,password=$SASL_PASSWORD]"
                        --add-scram "SCRAM-SHA-512=[name=$SASL_USERNAME,password=$SASL_PASSWORD]")
  "$JAVA" -cp "$LIB_DIR/*" kafka.tools.StorageTool format \
    -t "$cluster_id" -c "$PROPS" --ignore-formatted "${scram[@]}" >>"$LOG_DIR/stdout.log" 2>&1 \
    || { show_tail "$LOG_DIR/stdout.log"; die "storage format failed"; }
}

# Ready = the port accepts connections and this run logged "Kafka Server started"
# (the port is bound before request processing is enabled, so TCP alone is not enough).
wait_ready() {
  local pid=$1 log_offset=$2 deadline=$((SECONDS + START_TIMEOUT))
  local server_log="$LOG_DIR/server.log"
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      show_tail "$server_log" "$LOG_DIR/stdout.log"
      rm -f "$PID_FILE"
      die "broker process $pid exited during startup"
    fi
    # If the log rolled over meanwhile, it is all from this run.
    local size
    size=$(stat -c %s "$server_log" 2>/dev/null || echo 0)
    ((size >= log_offset)) || log_offset=0
    if port_open 127.0.0.1 "$PORT" &&
      tail -c +$((log_offset + 1)) "$server_log" 2>/dev/null | grep -q 'Kafka Server started'; then
      return 0
    fi
    sleep 0.5
  done
  show_tail "$server_log" "$LOG_DIR/stdout.log"
  # Don't leave a half-started broker behind: a later start would take it
  # for a healthy one.
  stop_pid "$PID_FILE" "$PID_PATTERN" "$STOP_TIMEOUT"
  die "broker not ready on 127.0.0.1:$PORT after ${START_TIMEOUT}s; stopped it (logs in $LOG_DIR)"
}

start() {
  local pid
  if pid=$(running_pid "$PID_FILE" "$PID_PATTERN"); then
    log "already running (pid $pid) on 127.0.0.1:$PORT"
    return 0
  fi
  command -v "$JAVA" >/dev/null || die "java not found (need Java 17+)"
  require_ports_free "$PORT" "$CONTROLLER_PORT" $TLS_PORT $SASL_PORT
  fetch
  if tls_enabled; then make_certs; fi
  write_config
  format_storage

  # Remember where this run's log output starts, for wait_ready.
  local log_offset
  log_offset=$(stat -c %s "$LOG_DIR/server.log" 2>/dev/null || echo 0)
  local t0=$SECONDS
  log "starting broker on 127.0.0.1:$PORT (controller :$CONTROLLER_PORT)"
  # shellcheck disable=SC2086 # HEAP_OPTS is a list of JVM flags
  spawn "$PID_FILE" "$LOG_DIR/stdout.log" \
    "$JAVA" $HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dkafka.logs.dir="$LOG_DIR" \
    -Dlog4j2.configurationFile="$HERE/kafka/log4j2.properties" \
    -cp "$LIB_DIR/*" kafka.Kafka "$PROPS"
  pid=$(<"$PID_FILE")
  wait_ready "$pid" "$log_offset"
  log "ready on 127.0.0.1:$PORT${TLS_PORT:+, SSL on :$TLS_PORT}${SASL_PORT:+, SASL_SSL on :$SASL_PORT} (pid $pid, $((SECONDS - t0))s)"
}

stop() {
  stop_pid "$PID_FILE" "$PID_PATTERN" "$STOP_TIMEOUT"
}

# Exit 0 if running, 3 if not (LSB convention).
status() {
  local pid
  if pid=$(running_pid "$PID_FILE" "$PID_PATTERN"); then
    log "running (pid $pid) on 127.0.0.1:$PORT, data in $KAFKA_DIR"
  else
    log "stopped"
    return 3
  fi
}

case "${1:-}" in
  fetch | start | stop | restart) take_lock "$KAFKA_DIR/.lock" ;;
esac
case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  restart) stop && start ;;
  status) status ;;
  *) echo "usage: $0 {fetch|start|stop|restart|status}" >&2; exit 2 ;;
esac
