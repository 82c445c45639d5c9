#!/usr/bin/env bash
# OpenAPI conformance: the property-based API tester schemathesis (from PyPI, pinned, in
# its own venv) runs against the emulator's Argos endpoints with the project's own
# descriptions of those vendor APIs (docs/vendors/*.openapi.yaml, written from the
# vendors' public documents), so the emulator provably speaks the vendors' contracts.
# Takes a few seconds once the venv exists. LIVENESS_CONFORMANCE_SEED picks another seed
# to explore further.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/liveness-worker/target}"

version=4.32.5
venv="${LIVENESS_SCHEMATHESIS_VENV:-$HOME/.cache/liveness-worker/schemathesis-$version}"
if [ ! -x "$venv/bin/st" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi
contracts="$PWD/docs/vendors"
for f in argos-id-liveness argos-face-liveness; do
  [ -f "$contracts/$f.openapi.yaml" ] || { echo "missing $contracts/$f.openapi.yaml" >&2; exit 1; }
done
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
# The emulator must never post an Argos callback to a URL schemathesis made up.
python3 -c 'import sys, urllib.request as u; u.urlopen(u.Request(sys.argv[1], data=b"{\"drop_all\":true}", method="PUT", headers={"content-type": "application/json"}), timeout=5)' \
  "$url/_admin/argos/callbacks"

st() {
  # $1: the vendor's base URL on the emulator; the rest: the file and extra options.
  # From the scratch directory, so no example database lands in the repository.
  local base="$1"
  shift
  (cd "$work" && "$venv/bin/st" --config-file "$config" run "$@" \
    --url "$base" --header "x-api-key: $key" \
    --seed "${LIVENESS_CONFORMANCE_SEED:-20261124}" --max-examples 100 \
    --request-timeout 10 --generation-database none --no-color)
}

echo "-- Argos ID Liveness (POST /modules/document): all checks"
st "$url/modules" "$contracts/argos-id-liveness.openapi.yaml"
# Argos documents no 401 for Face Liveness, while ID Liveness (same host, same key)
# documents the 401 "Workspace is unavailable" the emulator answers on both. So the face
# endpoint runs every check with the key always sent, and ignored_auth alone separately:
# a request without the key, or with a wrong one, must be refused (401/403).
echo "-- Argos Face Liveness (POST /modules/liveness): all checks, authenticated"
st "$url/modules" "$contracts/argos-face-liveness.openapi.yaml" \
  --exclude-checks ignored_auth --generation-with-security-parameters false
echo "-- Argos Face Liveness (POST /modules/liveness): the key is enforced"
st "$url/modules" "$contracts/argos-face-liveness.openapi.yaml" --checks ignored_auth
echo "-- Didit passive liveness (POST /v3/passive-liveness/): all checks"
st "$url" "$contracts/didit-passive-liveness.openapi.yaml"
