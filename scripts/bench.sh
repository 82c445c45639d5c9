#!/usr/bin/env bash
# The benchmark (docs/benchmark.md, issue 8): the Rust worker against the Little's-law
# bound, its CPU and memory per job, and a Python pika + boto3 + requests
# worker measured in the same run. Rewrites bench/results/ (results.md,
# results.json, chart.png) and prints the table.
#
# Usage: scripts/bench.sh [--short] [--rounds N] [--only throughput,cpu,rss,drain,instructions|traffic] [--out DIR]
#        scripts/bench.sh --check [--update-instructions]
#   --short   a few minutes: fewer jobs, one round, 100 000 queued jobs instead of 1 000 000
#   --only traffic   vendor traffic control alone (docs/traffic.md): writes traffic.md/.json only
#   --check   instructions per job of the worker under valgrind's callgrind (a count, not
#             a time: steady on a busy machine) on a small fixed workload, against
#             bench/instructions.json; fails on a rise beyond its tolerance. Writes no
#             report. Part of scripts/test.sh. --update-instructions records the figure.
#
# Starts RabbitMQ and Garage like scripts/test.sh, builds the worker in release
# mode, installs the Python baseline's pinned dependencies (bench/requirements.txt)
# into a venv under ~/.cache/liveness-worker, then runs bench/bench.py. Timing
# drifts on shared machines: take figures on a quiet machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
case "${1:-}" in -h | --help) sed -n '2,/^set -euo/{/^#/p}' "$0"; exit 0 ;; esac

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/liveness-worker/target}"
eval "$(scripts/services.sh --print-env)"

# The instruction counts (--check, and the instructions scenario) need valgrind.
if ! command -v valgrind >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "== installing valgrind via apt (instruction counts)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update >&2
  apt-get install -y --no-install-recommends valgrind </dev/null >&2
fi

echo "== cargo build --release" >&2
cargo build --release --locked --quiet --bin liveness-worker

venv="$HOME/.cache/liveness-worker/bench-venv"
stamp="$venv/.requirements-$(sha256sum bench/requirements.txt | cut -c1-16)"
if [[ ! -e "$stamp" ]]; then
  echo "== Python baseline venv ($venv)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r bench/requirements.txt
  touch "$stamp"
fi
"$venv/bin/python" bench/python_worker.py --self-check >&2
"$venv/bin/python" bench/bench.py --self-check >&2

exec "$venv/bin/python" bench/bench.py --worker-bin "$CARGO_TARGET_DIR/release/liveness-worker" \
  --python "$venv/bin/python" "$@"
