#!/usr/bin/env bash
# Local backing services for liveness-worker: RabbitMQ (AMQP), Redis (the
# coordination store) and Garage (S3).
#
# Usage: scripts/services.sh [up|--print-env|start-s3|stop-s3|down|help]
#   up           (default) ensure RabbitMQ, Redis and Garage are running and provisioned
#                (and openssl + stunnel4 for the TLS tests are installed),
#                write <state dir>/env and print the export lines on stdout
#   --print-env  same as up; stdout carries ONLY export lines, so
#                  eval "$(scripts/services.sh --print-env)"  works
#   stop-s3      stop the Garage server (data is kept; used by chaos tests)
#   start-s3     start the Garage server again from the same state dir
#   down         stop Garage; RabbitMQ is left running (other users may need it)
#
# Environment overrides: LIVENESS_SERVICES_DIR, GARAGE_BIN, LIVENESS_S3_ACCESS_KEY,
# LIVENESS_S3_SECRET_KEY, LIVENESS_TEST_IMAGES_BUCKET, LIVENESS_TEST_RESULTS_BUCKET,
# LIVENESS_GARAGE_{S3,RPC,ADMIN}_PORT (default 3900/3901/3903).
#
# Idempotent: every step checks current state first, so re-running is cheap.
set -euo pipefail

# Fixed dev-only credentials: tests and local runs must agree on them across
# restarts, and Garage never lets a deleted key ID be imported again, so keep
# them stable. Garage requires "GK" + 24 hex for the ID and 64 hex for the secret.
LIVENESS_S3_ACCESS_KEY="${LIVENESS_S3_ACCESS_KEY:-GK6c6976656e6573732d646576}"
LIVENESS_S3_SECRET_KEY="${LIVENESS_S3_SECRET_KEY:-6c6976656e6573732d6465762d7365637265742d6b65792d30303030303030}"
IMAGES_BUCKET="${LIVENESS_TEST_IMAGES_BUCKET:-liveness-images}"
RESULTS_BUCKET="${LIVENESS_TEST_RESULTS_BUCKET:-liveness-results}"
GARAGE_VERSION="2.5.0"
KEY_NAME="liveness"

STATE_DIR="${LIVENESS_SERVICES_DIR:-/tmp/liveness-services}"
GARAGE_CONFIG="$STATE_DIR/garage.toml"
GARAGE_PID_FILE="$STATE_DIR/garage.pid"
GARAGE_LOG="$STATE_DIR/garage.log"
ENV_FILE="$STATE_DIR/env"

# Port overrides exist so a second, isolated instance can run side by side.
S3_HOST=127.0.0.1
S3_PORT="${LIVENESS_GARAGE_S3_PORT:-3900}"
RPC_PORT="${LIVENESS_GARAGE_RPC_PORT:-3901}"
ADMIN_PORT="${LIVENESS_GARAGE_ADMIN_PORT:-3903}"
AMQP_HOST=127.0.0.1 AMQP_PORT=5672

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf '[services] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

port_open() { timeout 2 bash -c ": </dev/tcp/$1/$2" 2>/dev/null; }

# wait_for <seconds> <description> <command...>: poll until the command succeeds.
wait_for() {
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
  log "$what: ok"
}

# ---------------------------------------------------------------- RabbitMQ

rabbit_ok() {
  # `status` alone can succeed while the listener is still coming up.
  port_open "$AMQP_HOST" "$AMQP_PORT" && timeout 30 rabbitmqctl -q status >/dev/null 2>&1
}

ensure_rabbitmq() {
  if ! command -v rabbitmqctl >/dev/null 2>&1; then
    log "installing rabbitmq-server via apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    # Its postinst may start the broker: keep our lock fd out of that daemon.
    apt-get install -y rabbitmq-server </dev/null 9>&-
  fi
  if rabbit_ok; then
    log "rabbitmq: already running on $AMQP_HOST:$AMQP_PORT"
    return
  fi
  # No systemd in containers, so start the node directly (the Debian wrapper
  # drops to the rabbitmq user). Tolerate "already running but still booting".
  log "rabbitmq: starting (rabbitmq-server -detached)"
  # Output goes to a file, not our stderr: a daemon holding the caller's pipe
  # open would make `eval "$(...)"` or `| tee` hang forever.
  rabbitmq-server -detached >"$STATE_DIR/rabbitmq-start.log" 2>&1 </dev/null 9>&- \
    || log "rabbitmq-server -detached returned non-zero; waiting anyway (see $STATE_DIR/rabbitmq-start.log)"
  # await_startup fails fast while the node isn't registered yet, hence the loop.
  wait_for 90 "rabbitmq: startup" \
    bash -c "timeout 30 rabbitmqctl -q await_startup && timeout 2 bash -c ': </dev/tcp/$AMQP_HOST/$AMQP_PORT'" \
    || die "RabbitMQ did not come up within 90s (see /var/log/rabbitmq/)"
}

# ---------------------------------------------------------------- Redis

REDIS_HOST=127.0.0.1 REDIS_PORT=6379

ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    log "installing redis-server via apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y redis-server </dev/null 9>&-
  fi
  if timeout 2 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then
    log "redis: already running on $REDIS_HOST:$REDIS_PORT"
    return
  fi
  log "redis: starting (no persistence: the coordination store needs none)"
  mkdir -p "$STATE_DIR/redis"
  redis-server --daemonize yes --bind "$REDIS_HOST" --port "$REDIS_PORT" --save "" \
    --appendonly no --dir "$STATE_DIR/redis" --logfile "$STATE_DIR/redis.log" </dev/null 9>&- >/dev/null
  wait_for 30 "redis: ping" bash -c "redis-cli -h $REDIS_HOST -p $REDIS_PORT ping | grep -q PONG" \
    || die "Redis did not come up within 30s (see $STATE_DIR/redis.log)"
}

# ---------------------------------------------------------------- Garage binary

garage_is_wanted_version() {
  # Builds print e.g. "garage cargo:2.5.0 [features: ...]" or "garage v2.5.0".
  local re="(^|[^0-9.])${GARAGE_VERSION//./\\.}([^0-9.]|\$)"
  [[ "$("$1" --version 2>/dev/null)" =~ $re ]]
}

resolve_garage_bin() {
  if [[ -n "${GARAGE_BIN:-}" ]]; then
    [[ -x "$GARAGE_BIN" ]] || GARAGE_BIN="$(command -v "$GARAGE_BIN" || true)"
    [[ -x "$GARAGE_BIN" ]] || die "GARAGE_BIN is set but not executable"
    return
  fi
  local shared="$REPO_ROOT/../shared/bin/garage"
  if [[ -x "$shared" ]]; then
    GARAGE_BIN="$(cd "$(dirname "$shared")" && pwd)/garage"
  elif type -P garage >/dev/null 2>&1 && garage_is_wanted_version "$(type -P garage)"; then
    GARAGE_BIN="$(type -P garage)"
  elif [[ -x "$HOME/.cargo/bin/garage" ]] && garage_is_wanted_version "$HOME/.cargo/bin/garage"; then
    GARAGE_BIN="$HOME/.cargo/bin/garage"
  else
    command -v cargo >/dev/null 2>&1 || die "no garage binary found and cargo is not installed"
    log "garage $GARAGE_VERSION not found: running 'cargo install garage --locked --version $GARAGE_VERSION' (takes ~11 minutes)"
    cargo install garage --locked --version "$GARAGE_VERSION"
    GARAGE_BIN="$HOME/.cargo/bin/garage"
  fi
}

garage() { "$GARAGE_BIN" -c "$GARAGE_CONFIG" "$@"; }

# ---------------------------------------------------------------- Garage server

write_garage_config() {
  mkdir -p "$STATE_DIR/meta" "$STATE_DIR/data"
  # The RPC secret must survive restarts or the node can't reuse its metadata.
  if [[ ! -s "$STATE_DIR/rpc_secret" ]]; then
    (umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$STATE_DIR/rpc_secret")
  fi
  local tmp="$GARAGE_CONFIG.tmp"
  (umask 077; cat >"$tmp" <<EOF
# Generated by scripts/services.sh -- edits will be overwritten.
metadata_dir = "$STATE_DIR/meta"
data_dir = "$STATE_DIR/data"
db_engine = "sqlite"
replication_factor = 1

rpc_bind_addr = "127.0.0.1:$RPC_PORT"
rpc_public_addr = "127.0.0.1:$RPC_PORT"
rpc_secret = "$(cat "$STATE_DIR/rpc_secret")"

[s3_api]
api_bind_addr = "$S3_HOST:$S3_PORT"
s3_region = "garage"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$ADMIN_PORT"
EOF
  )
  mv -f "$tmp" "$GARAGE_CONFIG"
}

# Prints the pid of the garage server started from *this* state dir, if alive.
# Checking the cmdline guards against a stale pid file whose pid was reused.
garage_pid() {
  local pid
  [[ -s "$GARAGE_PID_FILE" ]] || return 1
  pid="$(cat "$GARAGE_PID_FILE")"
  [[ "$pid" =~ ^[0-9]+$ && -r "/proc/$pid/cmdline" ]] || return 1
  [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline")" == *"$GARAGE_CONFIG"* ]] || return 1
  echo "$pid"
}

start_garage() {
  local pid="" log_offset=0
  write_garage_config
  if pid="$(garage_pid)"; then
    # Alive: give a server that is still booting a moment before giving up on it.
    if port_open "$S3_HOST" "$S3_PORT" || wait_for 15 "garage: s3 port" port_open "$S3_HOST" "$S3_PORT"; then
      log "garage: already running (pid $pid)"
    else
      log "garage: pid $pid alive but S3 port not answering; restarting"
      stop_garage
      pid=""
    fi
  fi
  if [[ -z "$pid" ]]; then
    port_open "$S3_HOST" "$S3_PORT" &&
      die "port $S3_PORT is taken by something not started from $STATE_DIR (another garage?)"
    log "garage: starting $GARAGE_BIN (log: $GARAGE_LOG)"
    log_offset=$(stat -c %s "$GARAGE_LOG" 2>/dev/null || echo 0)
    # setsid: detach from our process group so the server outlives the caller
    # (eval "$(...)", CI step, killed terminal). Every fd is a file or closed:
    # a daemon holding a caller's pipe makes `eval "$(...)"` hang, and holding
    # fd 9 would keep our lock forever.
    (
      for fd in "/proc/$BASHPID/fd"/*; do
        fd=${fd##*/}
        ((fd > 2)) && eval "exec $fd>&-"
      done
      NO_COLOR=1 exec setsid nohup "$GARAGE_BIN" -c "$GARAGE_CONFIG" server
    ) >>"$GARAGE_LOG" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$GARAGE_PID_FILE"
  fi
  # Fail fast (with this run's errors) if the server dies, e.g. a port is
  # taken. kill -0 rather than garage_pid: right after fork the child's
  # cmdline is still ours. `timeout`: status hangs if something squats on RPC.
  local deadline=$((SECONDS + 60))
  until timeout 5 "$GARAGE_BIN" -c "$GARAGE_CONFIG" status >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -c +"$((log_offset + 1))" "$GARAGE_LOG" | grep -E -A1 'ERROR|panicked' | tail -n 6 >&2 || true
      die "garage exited during startup; see $GARAGE_LOG"
    fi
    ((SECONDS < deadline)) || die "garage did not answer 'garage status' within 60s; see $GARAGE_LOG"
    sleep 0.5
  done
  log "garage: rpc status: ok"
  wait_for 30 "garage: s3 port $S3_PORT" port_open "$S3_HOST" "$S3_PORT" \
    || die "garage S3 API not listening on $S3_PORT; see $GARAGE_LOG"
}

stop_garage() {
  local pid
  if ! pid="$(garage_pid)"; then
    log "garage: not running"
    rm -f "$GARAGE_PID_FILE"
    return
  fi
  log "garage: stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 20))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    log "garage: did not exit after SIGTERM, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$GARAGE_PID_FILE"
}

# ---------------------------------------------------------------- Garage provisioning

# True if our node already holds a role in the *applied* layout (staged
# changes don't count). Parsed from JSON because the table output is for humans.
node_has_role() {
  garage json-api GetClusterLayout 2>/dev/null | awk -v id="\"id\": \"$1\"" '
    /^  "roles": \[$/ { r = 1; next }
    r && /^  \]/      { r = 0 }
    r && index($0, id) { found = 1 }
    END { exit !found }'
}

layout_version() {
  garage json-api GetClusterLayout 2>/dev/null | sed -n 's/^  "version": \([0-9]*\).*/\1/p'
}

provision_garage() {
  local node_id
  node_id="$(garage node id -q 2>/dev/null)"
  node_id="${node_id%%@*}"
  [[ -n "$node_id" ]] || die "could not read garage node id"

  if node_has_role "$node_id"; then
    log "garage: layout already has node ${node_id:0:16}"
  else
    log "garage: assigning layout role to node ${node_id:0:16}"
    garage layout assign -z dc1 -c 1G "$node_id" >/dev/null
    # apply demands exactly current+1; computing it also recovers from a
    # previous run that staged the role but died before applying.
    garage layout apply --version "$(($(layout_version) + 1))" >/dev/null
  fi
  # Key/bucket calls return 500 "Layout not ready" until the cluster is healthy.
  wait_for 60 "garage: cluster healthy" garage health -q \
    || die "garage cluster not healthy within 60s"

  # Look the key up by ID: the name is not unique, and a renamed key would
  # otherwise make import fail with KeyAlreadyExists.
  if garage key info "$LIVENESS_S3_ACCESS_KEY" >/dev/null 2>&1; then
    log "garage: key $LIVENESS_S3_ACCESS_KEY exists"
  else
    garage key import --yes -n "$KEY_NAME" "$LIVENESS_S3_ACCESS_KEY" "$LIVENESS_S3_SECRET_KEY" >/dev/null
    log "garage: imported key $LIVENESS_S3_ACCESS_KEY"
  fi

  local b
  for b in "$IMAGES_BUCKET" "$RESULTS_BUCKET"; do
    if garage bucket info "$b" >/dev/null 2>&1; then
      log "garage: bucket $b exists"
    else
      garage bucket create "$b" >/dev/null
      log "garage: created bucket $b"
    fi
    # allow is idempotent, so always (re)grant in case permissions drifted.
    garage bucket allow --read --write --owner "$b" --key "$LIVENESS_S3_ACCESS_KEY" >/dev/null
  done
}

# ---------------------------------------------------------------- env output

write_env() {
  local tmp="$ENV_FILE.tmp" i
  local -a pairs=(
    LIVENESS_BROKER__URL "amqp://guest:guest@$AMQP_HOST:$AMQP_PORT/%2f"
    LIVENESS_S3__ENDPOINT "http://$S3_HOST:$S3_PORT"
    LIVENESS_S3__REGION "garage"
    LIVENESS_S3__ACCESS_KEY_ID "$LIVENESS_S3_ACCESS_KEY"
    LIVENESS_S3__SECRET_ACCESS_KEY "$LIVENESS_S3_SECRET_KEY"
    LIVENESS_S3__FORCE_PATH_STYLE "true"
    LIVENESS_TEST_IMAGES_BUCKET "$IMAGES_BUCKET"
    LIVENESS_TEST_RESULTS_BUCKET "$RESULTS_BUCKET"
    LIVENESS_TEST_REDIS_URL "redis://$REDIS_HOST:$REDIS_PORT/0"
    LIVENESS_SERVICES_DIR "$STATE_DIR"
    GARAGE_BIN "$GARAGE_BIN"
    GARAGE_CONFIG "$GARAGE_CONFIG"
  )
  : >"$tmp"
  for ((i = 0; i < ${#pairs[@]}; i += 2)); do
    printf 'export %s=%q\n' "${pairs[i]}" "${pairs[i + 1]}" >>"$tmp"
  done
  mv -f "$tmp" "$ENV_FILE"
}

# ------------------------------------------------------- TLS test tools

# The TLS integration tests (tests/it/tls.rs) make their certificates with
# openssl and put stunnel in front of RabbitMQ; they fail, naming these
# packages, when the tools are missing.
ensure_tls_test_tools() {
  if command -v openssl >/dev/null 2>&1 &&
    { command -v stunnel4 >/dev/null 2>&1 || command -v stunnel >/dev/null 2>&1; }; then
    return
  fi
  command -v apt-get >/dev/null 2>&1 ||
    die "the TLS tests need openssl and stunnel, and apt-get is not available: install them"
  log "installing openssl and stunnel4 via apt (TLS tests)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends openssl stunnel4 </dev/null 9>&-
}

# ---------------------------------------------------------------- main

usage() { sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

up() {
  local started=$SECONDS
  ensure_rabbitmq
  ensure_redis
  ensure_tls_test_tools
  resolve_garage_bin
  start_garage
  provision_garage
  write_env
  log "ready in $((SECONDS - started))s; env written to $ENV_FILE (source it, or eval --print-env)"
}

# Serialise concurrent runs (e.g. a chaos test calling stop-s3 while another
# test runs up) so they don't race on the pid file or double-start garage.
take_lock() {
  mkdir -p "$STATE_DIR"
  exec 9>"$STATE_DIR/.lock"
  flock -n 9 || { log "waiting for another services.sh run to finish"; flock 9; }
}

main() {
  local cmd="${1:-up}"
  case "$cmd" in -h | --help | help) ;; *) take_lock ;; esac
  # Work runs with stdout sent to stderr so tool chatter can never end up in
  # what `eval "$(scripts/services.sh --print-env)"` evaluates.
  case "$cmd" in
    up | --print-env)
      up >&2
      cat "$ENV_FILE"
      ;;
    start-s3)
      # Provisioning is idempotent and ~1s, so also do it here: start-s3 on a
      # wiped state dir then still yields a usable S3.
      { resolve_garage_bin; start_garage; provision_garage; } >&2
      ;;
    stop-s3 | down)
      stop_garage >&2
      ;;
    -h | --help | help)
      usage
      ;;
    *)
      usage >&2
      die "unknown command: $cmd"
      ;;
  esac
}

main "$@"
