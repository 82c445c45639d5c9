#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ (docs/fuzzing.md) on the stable toolchain:
# cargo-fuzz without a sanitizer (`-s none`: ASan needs nightly; the code
# under test is safe Rust, so what we hunt is panics, overflows (debug
# assertions are on) and hangs), each target for a bounded time from its
# committed seed corpus, and prints executions and coverage per target.
#
#   scripts/fuzz.sh                      every target, 10 s each (scripts/test.sh)
#   scripts/fuzz.sh --seconds 600        the long run (docs/fuzzing.md has the figures)
#   scripts/fuzz.sh --jobs 2 job token   two targets at a time, only these
#   scripts/fuzz.sh --build-only
#
# Fails if a target crashes; the crashing input is left in
# fuzz/artifacts/<target>/ (reproduce: scripts/fuzz.sh --repro <file> <target>).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=10
jobs=1
build_only=false
repro=""
targets=()
while (($#)); do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --build-only) build_only=true; shift ;;
    --repro) repro="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done

# The instrumented build has its own target directory: its RUSTFLAGS differ
# from a normal build's, and sharing one would rebuild both every time.
target_dir="${FUZZ_TARGET_DIR:-$HOME/.cache/liveness-worker/fuzz-target}"
# The grown corpus stays outside the clone; fuzz/corpus holds the seeds.
work="${FUZZ_WORK_DIR:-$HOME/.cache/liveness-worker/fuzz-corpus}"
triple="$(rustc -vV | sed -n 's/^host: //p')"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(cargo fuzz list)
fi

# fuzz/Cargo.lock is committed: refuse to build if it would change.
cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null
echo "== building ${#targets[@]} fuzz targets (cargo fuzz build -s none --debug-assertions)"
cargo fuzz build -s none --debug-assertions --target-dir "$target_dir"
bin_dir="$target_dir/$triple/release"
$build_only && exit 0

if [[ -n "$repro" ]]; then
  exec "$bin_dir/${targets[0]}" "$repro"
fi

# Each target's libFuzzer log; kept when FUZZ_LOG_DIR names a directory.
if [[ -n "${FUZZ_LOG_DIR:-}" ]]; then
  logs="$FUZZ_LOG_DIR"
  mkdir -p "$logs"
else
  logs="$(mktemp -d)"
  trap 'rm -rf "$logs"' EXIT
fi

run_one() {
  local t="$1"
  mkdir -p "$work/$t" "fuzz/artifacts/$t"
  # The grown corpus first (new inputs go there), then the committed seeds.
  local rc=0
  "$bin_dir/$t" -max_total_time="$seconds" -print_final_stats=1 -timeout=10 \
    -rss_limit_mb=2048 -max_len=8192 -artifact_prefix="fuzz/artifacts/$t/" \
    "$work/$t" "fuzz/corpus/$t" >"$logs/$t.log" 2>&1 || rc=$?
  echo "$rc" >"$logs/$t.rc"
}

echo "== fuzzing ${#targets[@]} targets for ${seconds}s each, $jobs at a time"
for t in "${targets[@]}"; do
  run_one "$t" &
  while (($(jobs -rp | wc -l) >= jobs)); do wait -n || true; done
done
wait

failed=()
printf '%-16s %12s %8s %8s %8s %7s  %s\n' target executions exec/s cov ft corpus result
for t in "${targets[@]}"; do
  log="$logs/$t.log"
  rc="$(cat "$logs/$t.rc")"
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  # The last status line: "#N DONE cov: C ft: F corp: K/SIZE ..."
  status="$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 || true)"
  cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status")"
  ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status")"
  corp="$(sed -n 's/.* corp: \([0-9]*\/[0-9A-Za-z]*\).*/\1/p' <<<"$status")"
  rate=$(( ${execs:-0} / (seconds > 0 ? seconds : 1) ))
  result=ok
  if [[ "$rc" != 0 ]]; then
    result="CRASH (exit $rc)"
    failed+=("$t")
  fi
  printf '%-16s %12s %8s %8s %8s %7s  %s\n' "$t" "${execs:-?}" "$rate" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$result"
done

if ((${#failed[@]})); then
  for t in "${failed[@]}"; do
    echo "== $t crashed; the end of its log:" >&2
    tail -40 "$logs/$t.log" >&2
    echo "the input: $(ls -t fuzz/artifacts/"$t"/* 2>/dev/null | head -1)" >&2
  done
  exit 1
fi
