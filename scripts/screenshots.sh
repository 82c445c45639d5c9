#!/usr/bin/env bash
# Regenerates the console's pictures in docs/console/ (shown in docs/console.md
# and the README): runs the browser test against the real services with
# LIVENESS_SCREENSHOTS set. Needs what scripts/test.sh installs (chromium,
# tests/browser/node_modules).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/liveness-worker/target}"
eval "$(scripts/services.sh --print-env)"
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  npm ci --prefix tests/browser --no-audit --no-fund
fi
export LIVENESS_BROWSER_TESTS=1 LIVENESS_SCREENSHOTS="$PWD/docs/console"
cargo nextest run --locked -E 'test(browser_drives_the_console)'
ls -l docs/console/
