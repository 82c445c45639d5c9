#!/usr/bin/env bash
# OpenAPI conformance: the property-based API tester schemathesis (from PyPI, pinned, in
# its own venv) runs against the emulator's Argos endpoints with the vendor's own OpenAPI
# files, so the emulator provably speaks the vendor's contract. Takes a few seconds once
# the venv exists. LIVENESS_CONFORMANCE_SEED picks another seed to explore further.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/liveness-worker/target}"

version=4.32.5
venv="${LIVENESS_SCHEMATHESIS_VENV:-$HOME/.cache/liveness-worker/schemathesis-$version}"
if [ ! -x "$venv/bin/st" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi
contracts="${LIVENESS_CONTRACTS_DIR:-../shared/providers}"
for f in argos-id-liveness argos-face-liveness; do
  [ -f "$contracts/$f.openapi.yaml" ] || { echo "missing $contracts/$f.openapi.yaml" >&2; exit 1; }
done
contracts="$(cd "$contracts" && pwd)"
config="$PWD/scripts/conformance/schemathesis.toml"

cargo build --locked --quiet --bin liveness-worker
work="$(mktemp -d)"
key="conformance-$RANDOM$RANDOM"
# Its address is read from its first log line, whatever the caller's log settings.
env -u RUST_LOG LIVENESS_TELEMETRY__LOG_FORMAT=json LIVENESS_TELEMETRY__LOG_LEVEL=info \
  "$CARGO_TARGET_DIR/debug/liveness-worker" emulator \
  --listen 127.0.0.1:0 --argos-api-key "$key" 2>"$work/emulator.log" &
emulator=$!
trap 'kill "$emulator" 2>/dev/null || true; wait "$emulator" 2>/dev/null || true; rm -rf "$work"' EXIT
url=""
for _ in $(seq 100); do
  url="$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$work/emulator.log" | head -n1 || true)"
  [ -n "$url" ] && break
  kill -0 "$emulator" 2>/dev/null || { cat "$work/emulator.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$url" ] || { echo "the emulator did not start" >&2; cat "$work/emulator.log" >&2; exit 1; }

st() {
  # From the scratch directory, so no example database lands in the repository.
  (cd "$work" && "$venv/bin/st" --config-file "$config" run "$@" \
    --url "$url/modules" --header "x-api-key: $key" \
    --seed "${LIVENESS_CONFORMANCE_SEED:-20261124}" --max-examples 100 \
    --request-timeout 10 --generation-database none --no-color)
}

echo "-- ID Liveness (POST /document): all checks"
st "$contracts/argos-id-liveness.openapi.yaml"
# The Face Liveness file declares the x-api-key scheme but documents no 401, while the ID
# Liveness file (same host, same key) documents the 401 "Workspace is unavailable" the
# emulator answers. So the face endpoint runs every check with the key always sent, and
# ignored_auth alone separately: a request without the key must be refused (401/403).
echo "-- Face Liveness (POST /liveness): all checks, authenticated"
st "$contracts/argos-face-liveness.openapi.yaml" \
  --exclude-checks ignored_auth --generation-with-security-parameters false
echo "-- Face Liveness (POST /liveness): the key is enforced"
st "$contracts/argos-face-liveness.openapi.yaml" --checks ignored_auth
