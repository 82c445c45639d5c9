#!/usr/bin/env bash
# The demo: starts RabbitMQ and Garage (installing what is missing), then runs
# `liveness-worker demo`, which starts the vendor emulator and a worker in one
# process, enqueues a few hundred sample jobs and prints a summary.
# Extra arguments go to the demo command, e.g. scripts/demo.sh --jobs 1000 --concurrency 64
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/liveness-worker/target}"
eval "$(scripts/services.sh --print-env)"
# The services' settings are all the configuration the demo needs.
export LIVENESS_WORKER__ALLOWED_BUCKETS="[\"$LIVENESS_TEST_IMAGES_BUCKET\"]"
cargo run --quiet --locked --bin liveness-worker -- demo "$@"
