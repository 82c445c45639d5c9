#!/usr/bin/env bash
# The project's test command: starts RabbitMQ, Redis and Garage (installing what
# is missing), then runs formatting, lints, a short round of every fuzz target,
# the deployment checks, the examples in other languages, unit and property
# tests, the integration tests against the real services (the operator console
# in headless Chromium among them), the instruction count per job against its
# committed figure, and the chaos suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# One target directory outside the clone, so repeated runs reuse the build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/liveness-worker/target}"

eval "$(scripts/services.sh --print-env)"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== references to docs/ resolve"
python3 scripts/check-doc-links.py
echo "== module layering (docs/ARCHITECTURE.md): no import cycles, layers only downwards"
cargo test --locked --test it --quiet architecture
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== fuzz targets, a few seconds each (scripts/fuzz.sh; docs/fuzzing.md)"
FUZZ_SECONDS="${FUZZ_SECONDS:-10}"
scripts/fuzz.sh --seconds "$FUZZ_SECONDS"
echo "== deployment files (offline validation, alert rules with promtool)"
scripts/validate-deploy.sh
echo "== examples: Python and Node.js producers and consumers against a real worker"
scripts/examples.sh
echo "== OpenAPI conformance of the emulator (schemathesis)"
scripts/conformance.sh
echo "== browser tests: Debian's chromium and chromium-driver, playwright-core from npm (docs/console.md)"
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  apt-get install -y chromium chromium-driver >/dev/null \
    || { apt-get update >/dev/null && apt-get install -y chromium chromium-driver >/dev/null; }
fi
if ! command -v node >/dev/null; then
  apt-get install -y nodejs npm >/dev/null
fi
npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
# The browser test (console::browser_drives_the_console) fails rather than skips.
export LIVENESS_BROWSER_TESTS=1
echo "== cargo test"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
  # nextest does not run doctests.
  cargo test --locked --doc
else
  cargo test --locked --no-fail-fast
fi
echo "== instructions per job (callgrind, release build) against bench/instructions.json (docs/benchmark.md)"
scripts/bench.sh --check
echo "== chaos suite (own Garage and vhost; see scripts/chaos.sh)"
scripts/chaos.sh --jobs "${CHAOS_JOBS:-2000}"
