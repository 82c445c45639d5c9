#!/usr/bin/env bash
# The chaos suite: real worker processes sharing the coordination store work
# through a batch while one thing breaks per scenario: a replica SIGKILLed,
# broker connections force-closed (also while vendor answers are slow), S3
# stopped for 20 s (also with a SIGTERM while answers are in hand), 30% vendor
# faults, the vendor key revoked, every job published three times, no queue
# bound to the results exchange, a broker memory alarm, forged progress headers.
# Prints, per scenario, every job accounted for, duplicates, vendor calls
# against recorded attempts, the peak of jobs in flight per replica, and dead
# letters (see tests/it/chaos.rs and docs/reliability.md).
#
# Usage: scripts/chaos.sh [--jobs N] [--scenarios a,b] [--report FILE]
#   scenarios: sigkill, close-connections, s3-outage, vendor-faults-30pct,
#   revoke-key, duplicate-storm, slow-connection-loss, unbound-results-20s,
#   memory-alarm-30s, sigterm-s3-outage, forged-headers
#
# It runs on its own Garage instance (ports 3910/3911/3913, state in
# /tmp/liveness-chaos-services) and its own RabbitMQ vhost (liveness-chaos), so
# stopping S3 and closing connections disturbs nothing else. The exception is
# memory-alarm-30s: a memory alarm blocks every publisher on the node for 30 s,
# so run it on a broker nothing else uses (the watermark is set back to
# RabbitMQ's default 0.4 afterwards, also when the scenario fails).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

jobs=2000 scenarios="" report=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --jobs) jobs="$2"; shift 2 ;;
    --scenarios) scenarios="$2"; shift 2 ;;
    --report) report="$2"; shift 2 ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/liveness-worker/target}"
export LIVENESS_SERVICES_DIR=/tmp/liveness-chaos-services
export LIVENESS_GARAGE_S3_PORT=3910 LIVENESS_GARAGE_RPC_PORT=3911 LIVENESS_GARAGE_ADMIN_PORT=3913
eval "$(scripts/services.sh --print-env)"

vhost=liveness-chaos
rabbitmqctl -q add_vhost "$vhost" >/dev/null 2>&1 || true
rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*'
export LIVENESS_CHAOS_VHOST="$vhost" CHAOS_JOBS="$jobs" CHAOS_SCENARIOS="$scenarios"
[[ -n "$report" ]] && export CHAOS_REPORT="$(realpath -m "$report")"

# The suite runs alone (one test) and prints its table.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --test it --run-ignored only --no-capture -E 'test(=chaos::chaos_suite)'
else
  cargo test --locked --test it -- --ignored --exact chaos::chaos_suite --nocapture
fi
