#!/usr/bin/env bash
# Runs the producers and results consumers of examples/ (Python: pika + jsonschema,
# Node.js: amqplib + ajv) against the real services: RabbitMQ, Garage S3, a
# `liveness-worker run` and the vendor emulator, both started here on a broker
# prefix of their own. Each language's consumer binds its queues, its producer
# publishes two jobs (sample images with emulator scenarios, uploaded to S3
# first), and the consumer must receive a result for each, valid against
# schemas/, with the verdict the scenario asks for and the job's metadata echoed.
# Everything it started is stopped, and its queues, exchanges and S3 objects are
# deleted, at the end, on failure too.
#
# Installs what is missing: the examples' pinned packages in a venv and a
# node_modules under ~/.cache/liveness-worker (from examples/python/requirements.txt
# and examples/node/package-lock.json), RabbitMQ and Garage via scripts/services.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/liveness-worker/target}"
cache="$HOME/.cache/liveness-worker"
eval "$(scripts/services.sh --print-env)"

log() { printf '[examples] %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

echo "== examples: build" >&2
cargo build --locked --quiet --bin liveness-worker

venv="$cache/examples-venv"
stamp="$venv/.requirements-$(sha256sum examples/python/requirements.txt | cut -c1-16)"
if [[ ! -e "$stamp" ]]; then
  log "installing examples/python/requirements.txt into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r examples/python/requirements.txt
  touch "$stamp"
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  log "installing Node.js and npm (Debian packages)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; } >&2
fi
# The examples resolve their packages from NODE_PATH, so the clone stays free of
# node_modules; a user may equally run `npm ci` in examples/node.
node_dir="$cache/examples-node"
stamp="$node_dir/.lock-$(sha256sum examples/node/package-lock.json | cut -c1-16)"
if [[ ! -e "$stamp" ]]; then
  log "installing examples/node/package-lock.json into $node_dir"
  rm -rf "$node_dir" && mkdir -p "$node_dir"
  cp examples/node/package.json examples/node/package-lock.json "$node_dir/"
  (cd "$node_dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
  touch "$stamp"
fi
export NODE_PATH="$node_dir/node_modules"

run_id="$(date +%s)-$RANDOM"
prefix="examples-$run_id"
work="$(mktemp -d "${TMPDIR:-/tmp}/liveness-examples.XXXXXX")"
# A copy: the shared target directory's binary may be rebuilt by another build
# while this one runs.
bin="$work/liveness-worker"
cp "$CARGO_TARGET_DIR/debug/liveness-worker" "$bin"
images="s3://$LIVENESS_TEST_IMAGES_BUCKET/$prefix"
api_key="examples-$RANDOM$RANDOM"
pids=()

s3() {
  # Signed requests to the S3 server with curl (no SDK needed here). The payload
  # hash is sent as a header, as S3 servers require for signature v4.
  local hash=$1; shift
  curl -sS -f --aws-sigv4 "aws:amz:$LIVENESS_S3__REGION:s3" \
    -u "$LIVENESS_S3__ACCESS_KEY_ID:$LIVENESS_S3__SECRET_ACCESS_KEY" \
    -H "x-amz-content-sha256: $hash" "$@"
}
empty_hash=$(printf '' | sha256sum | cut -d' ' -f1)

s3_delete_prefix() {
  local bucket=$1 pfx=$2 keys
  keys=$(s3 "$empty_hash" "$LIVENESS_S3__ENDPOINT/$bucket?list-type=2&prefix=${pfx//\//%2F}" \
    | grep -o '<Key>[^<]*</Key>' | sed 's/<Key>\(.*\)<\/Key>/\1/') || return 0
  for k in $keys; do
    s3 "$empty_hash" -X DELETE "$LIVENESS_S3__ENDPOINT/$bucket/$k" || true
  done
}

cleanup() {
  local status=$?
  set +e
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null
  done
  for pid in "${pids[@]}"; do
    # The worker drains (worker.drain_timeout) before it exits.
    for _ in $(seq 1 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if ((status != 0)); then
    for f in emulator worker py-consumer node-consumer py-producer node-producer; do
      [[ -s "$work/$f.log" ]] && { log "--- last lines of $f.log"; tail -n 25 "$work/$f.log" >&2; }
    done
  fi
  # The broker objects of this run only: its prefix.
  queues=$(timeout 30 rabbitmqctl -q list_queues name 2>/dev/null | grep "^$prefix\." || true)
  # shellcheck disable=SC2086
  "$venv/bin/python" - "$LIVENESS_BROKER__URL" "$prefix" $queues <<'EOF' || log "could not delete the queues of $prefix"
import sys, pika
url, prefix, queues = sys.argv[1], sys.argv[2], sys.argv[3:]
conn = pika.BlockingConnection(pika.URLParameters(url))
ch = conn.channel()
for q in queues:
    ch.queue_delete(q)
for e in ("liveness.jobs", "liveness.results", "liveness.dead"):
    ch.exchange_delete(f"{prefix}.{e}")
conn.close()
EOF
  s3_delete_prefix "$LIVENESS_TEST_IMAGES_BUCKET" "$prefix/"
  s3_delete_prefix "$LIVENESS_TEST_RESULTS_BUCKET" "$prefix/"
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_log <file> <pid> <pattern> <seconds>: the first line of a JSON log matching
# pattern, or failure when the process exits or the time is up.
wait_log() {
  local file=$1 pid=$2 pattern=$3 secs=$4 line
  for _ in $(seq 1 $((secs * 10))); do
    line=$(grep -m1 -E "$pattern" "$file" 2>/dev/null) && { printf '%s\n' "$line"; return 0; }
    kill -0 "$pid" 2>/dev/null || { log "process $pid exited: $(tail -n 5 "$file")"; return 1; }
    sleep 0.1
  done
  log "timed out waiting for /$pattern/ in $file"
  return 1
}

echo "== examples: emulator and worker (broker prefix $prefix)" >&2
LIVENESS_TELEMETRY__LOG_FORMAT=json "$bin" emulator --listen 127.0.0.1:0 --argos-api-key "$api_key" \
  --intellicheck-processing-ms 50 >"$work/emulator.log" 2>&1 &
pids+=($!)
emulator_url=$(wait_log "$work/emulator.log" "$!" '"url":"http://127\.0\.0\.1:[0-9]+"' 30 \
  | grep -oE 'http://127\.0\.0\.1:[0-9]+' | head -n1) || die "the emulator did not start"

# Sample images, each carrying the emulator scenario that decides its verdict (a
# JPEG comment segment, as liveness_worker::samples writes them).
make_image() {
  python3 - "$root/src/samples/base.jpg" "$2" "$3" "$work/$1" <<'EOF'
import sys
base, scenario, seed, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
jpeg = open(base, "rb").read()
def com(data):
    return b"\xff\xfe" + (len(data) + 2).to_bytes(2, "big") + data
# After SOI: the scenario, then a per-image comment so each image has its own hash.
body = jpeg[:2] + com(b"liveness-scenario=" + scenario.encode()) + com(f"example {seed}".encode()) + jpeg[2:]
open(out, "wb").write(body)
EOF
  s3 "$(sha256sum "$work/$1" | cut -d' ' -f1)" -H "content-type: image/jpeg" -T "$work/$1" \
    "$LIVENESS_S3__ENDPOINT/$LIVENESS_TEST_IMAGES_BUCKET/$prefix/$1" >/dev/null \
    || die "cannot upload $1 to s3://$LIVENESS_TEST_IMAGES_BUCKET (is Garage up: scripts/services.sh?)"
}
make_image doc-screen-replay.jpg '{"screen_replay":12,"printed_copy":90,"portrait_substitution":95}' 1
make_image face-live.jpg '{"face":91}' 2
make_image doc-live-front.jpg '{"screen_replay":93,"printed_copy":88,"portrait_substitution":97}' 3
make_image doc-live-back.jpg '{"screen_replay":94,"printed_copy":90,"portrait_substitution":96}' 4
make_image face-spoof.jpg '{"face":8}' 5

(
  export LIVENESS_BROKER__PREFIX="$prefix"
  # The consumers bind their own queues; the worker's demo queue is not needed.
  export LIVENESS_BROKER__RESULTS_QUEUE=""
  export LIVENESS_BROKER__RETRY_DELAYS='["1s"]'
  export LIVENESS_RETRY__CREDENTIALS_PARK_STEP=0
  export LIVENESS_RESULTS__BUCKET="$LIVENESS_TEST_RESULTS_BUCKET"
  export LIVENESS_RESULTS__PREFIX="$prefix/"
  export LIVENESS_WORKER__ALLOWED_BUCKETS="[\"$LIVENESS_TEST_IMAGES_BUCKET\"]"
  export LIVENESS_TELEMETRY__LISTEN=127.0.0.1:0
  export LIVENESS_TELEMETRY__LOG_FORMAT=json
  export LIVENESS_PROVIDERS__ARGOS__BASE_URL="$emulator_url/modules"
  export LIVENESS_PROVIDERS__ARGOS__API_KEY="$api_key"
  export LIVENESS_PROVIDERS__INTELLICHECK__BASE_URL="$emulator_url"
  export LIVENESS_PROVIDERS__INTELLICHECK__CUSTOMER_ID=local-customer
  export LIVENESS_PROVIDERS__INTELLICHECK__SIGNING_KEY="$api_key"
  export LIVENESS_PROVIDERS__INTELLICHECK__POLL_INITIAL_INTERVAL=50ms
  export LIVENESS_PROVIDERS__DIDIT__BASE_URL="$emulator_url"
  export LIVENESS_PROVIDERS__DIDIT__API_KEY="$api_key"
  exec "$bin" run
) >"$work/worker.log" 2>&1 &
worker_pid=$!
pids+=("$worker_pid")
metrics=$(wait_log "$work/worker.log" "$worker_pid" 'Serving /metrics' 60 \
  | grep -oE '127\.0\.0\.1:[0-9]+' | head -n1) || die "the worker did not start"
ready=
for _ in $(seq 1 600); do
  if "$bin" probe "http://$metrics/readyz" >/dev/null 2>&1; then ready=1; break; fi
  kill -0 "$worker_pid" 2>/dev/null || die "the worker exited"
  sleep 0.1
done
[[ -n $ready ]] || die "the worker did not become ready (http://$metrics/readyz)"
log "worker ready (metrics on $metrics), emulator at $emulator_url"

export AMQP_URL="$LIVENESS_BROKER__URL" LIVENESS_BROKER__PREFIX="$prefix"

py_dir=examples/python
node_dir_src=examples/node
py_doc="py-$run_id-doc" py_face="py-$run_id-face"
node_doc="node-$run_id-doc" node_face="node-$run_id-face"

publish_py() { "$venv/bin/python" "$py_dir/producer.py" "$@"; }
publish_node() { node "$node_dir_src/producer.js" "$@"; }

echo "== examples: Python producer and consumer" >&2
"$venv/bin/python" "$py_dir/consumer.py" --dead-letters --expect "$py_doc" --expect "$py_face" --timeout 90 \
  >"$work/py-consumer.jsonl" 2>"$work/py-consumer.log" &
py_consumer=$!
pids+=("$py_consumer")
wait_ready() {
  local file=$1 pid=$2 name=$3
  for _ in $(seq 1 300); do
    (($(grep -c '"kind": *"ready"' "$file" 2>/dev/null || true) >= 2)) && return 0
    kill -0 "$pid" 2>/dev/null || die "$name consumer exited before binding its queues: $(cat "${file%.jsonl}.log")"
    sleep 0.1
  done
  die "$name consumer did not bind its queues"
}
wait_ready "$work/py-consumer.jsonl" "$py_consumer" Python
publish_py --job-id "$py_doc" --check document --image "$images/doc-screen-replay.jpg" \
  --metadata "{\"applicant\":\"py-1\",\"language\":\"python\"}" --correlation-id "corr-$py_doc" \
  || die "Python producer failed on $py_doc"
publish_py --job-id "$py_face" --check face --provider didit --image "$images/face-live.jpg" \
  --metadata "{\"applicant\":\"py-2\",\"language\":\"python\"}" \
  || die "Python producer failed on $py_face"

echo "== examples: Node.js producer and consumer" >&2
node "$node_dir_src/consumer.js" --dead-letters --expect "$node_doc" --expect "$node_face" --timeout 90 \
  >"$work/node-consumer.jsonl" 2>"$work/node-consumer.log" &
node_consumer=$!
pids+=("$node_consumer")
wait_ready "$work/node-consumer.jsonl" "$node_consumer" Node.js
publish_node --job-id "$node_doc" --check document --provider intellicheck \
  --image "$images/doc-live-front.jpg" --back-image "$images/doc-live-back.jpg" \
  --metadata "{\"applicant\":\"node-1\",\"language\":\"node\"}" --correlation-id "corr-$node_doc" \
  || die "Node.js producer failed on $node_doc"
publish_node --job-id "$node_face" --check face --image "$images/face-spoof.jpg" \
  --metadata "{\"applicant\":\"node-2\",\"language\":\"node\"}" \
  || die "Node.js producer failed on $node_face"

wait "$py_consumer" || die "Python consumer: $(cat "$work/py-consumer.log" "$work/py-consumer.jsonl")"
wait "$node_consumer" || die "Node.js consumer: $(cat "$work/node-consumer.log" "$work/node-consumer.jsonl")"

# What each consumer printed for each job: valid, the expected verdict, provider and
# metadata, and the correlation_id carried back.
expect_result() {
  local file=$1 job=$2 verdict=$3 provider=$4 language=$5 correlation=${6:-}
  "$venv/bin/python" - "$file" "$job" "$verdict" "$provider" "$language" "$correlation" <<'EOF' \
    || die "$job: expected a valid $verdict result from $provider in $(basename "$file"): $(grep -F "\"$job\"" "$file")"
import json, sys
path, job, verdict, provider, language, correlation = sys.argv[1:]
lines = [json.loads(l) for l in open(path) if l.strip()]
got = [m for m in lines if m.get("kind") == "result" and m.get("job_id") == job]
ok = bool(got) and all(
    m["valid"] and m["verdict"] == verdict and m["provider"] == provider
    and (m.get("metadata") or {}).get("language") == language
    and (not correlation or m.get("correlation_id") == correlation)
    for m in got
)
sys.exit(0 if ok else 1)
EOF
}
expect_result "$work/py-consumer.jsonl" "$py_doc" spoof argos python "corr-$py_doc"
expect_result "$work/py-consumer.jsonl" "$py_face" live didit python
expect_result "$work/node-consumer.jsonl" "$node_doc" live intellicheck node "corr-$node_doc"
expect_result "$work/node-consumer.jsonl" "$node_face" spoof argos node

echo "examples: 4 jobs published by the Python and Node.js producers, 4 results received and validated against schemas/ (Python: $py_doc spoof/argos, $py_face live/didit; Node.js: $node_doc live/intellicheck, $node_face spoof/argos)"
