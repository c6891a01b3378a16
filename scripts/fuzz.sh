#!/usr/bin/env bash
# Runs every cargo fuzz target (fuzz/fuzz_targets) for a bounded time,
# starting from the committed seeds (fuzz/seeds/TARGET) and the working
# corpus a previous run left (fuzz/corpus/TARGET, not committed).
#
#   ./scripts/fuzz.sh                 # every target, 20 s each (what CI runs)
#   FUZZ_SECONDS=600 ./scripts/fuzz.sh dr_frame block_frame
#
# Runs FUZZ_JOBS targets at a time (default: one per core). Prints
# executions per target; exits non-zero if any crashed, naming the input
# (fuzz/artifacts/TARGET/) and how to replay it. A crash found
# here becomes a regression case: copy the input to fuzz/regressions/TARGET/
# (proto's tests replay every file there) and fix the parser.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${FUZZ_SECONDS:-20}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install --quiet --locked cargo-fuzz
fi
# No sanitizer: works on the stable toolchain; libFuzzer's coverage
# guidance and crash detection (panics abort) still apply.
cargo fuzz build --sanitizer none

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
# Targets run FUZZ_JOBS at a time (default: one per core), each on one core.
jobs="${FUZZ_JOBS:-$(nproc)}"
results="$(mktemp -d)"
trap 'rm -rf "$results"' EXIT
run_one() {
  local target="$1"
  mkdir -p "corpus/$target" "artifacts/$target"
  if cargo fuzz run --sanitizer none "$target" "corpus/$target" "seeds/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=10 \
      -artifact_prefix="artifacts/$target/" -print_final_stats=1 >"$results/$target.log" 2>&1; then
    sed -n 's/^stat::number_of_executed_units: *//p' "$results/$target.log" >"$results/$target.runs"
  else
    touch "$results/$target.crashed"
  fi
}
for target in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  run_one "$target" &
done
wait
printf '%-18s %14s %10s\n' target executions "exec/s"
failed=0
for target in "${targets[@]}"; do
  if [ -e "$results/$target.crashed" ]; then
    tail -40 "$results/$target.log" >&2
    echo "fuzz target $target crashed; input in fuzz/artifacts/$target/." >&2
    echo "replay: cd fuzz && cargo fuzz run --sanitizer none $target artifacts/$target/<file>" >&2
    failed=1
    continue
  fi
  runs="$(cat "$results/$target.runs")"
  printf '%-18s %14s %10s\n' "$target" "$runs" "$((runs / seconds))"
done
exit "$failed"
