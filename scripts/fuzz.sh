#!/usr/bin/env bash
# Runs every libFuzzer target of build-fuzz/ for VSOCKD_FUZZ_SECONDS (default 60) each,
# starting from the committed seed corpus (copied, so the repository stays clean). A crash,
# leak, timeout or sanitizer report fails the run; the reproducer is kept in build-fuzz/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${VSOCKD_FUZZ_SECONDS:-60}
build=$root/build-fuzz
shopt -s nullglob
targets=("$build"/fuzz/fuzz-*)
if [ ${#targets[@]} -eq 0 ]; then
  echo "fuzz.sh: no fuzz targets in $build/fuzz (run scripts/build.sh fuzz first)" >&2
  exit 1
fi
passed=0 failed=0
for bin in "${targets[@]}"; do
  name=${bin##*/fuzz-}
  work=$(mktemp -d)
  cp -r "$root/fuzz/corpus/$name/." "$work/"
  echo "== fuzz $name for ${seconds}s"
  if (cd "$build" && "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 \
        -artifact_prefix="$build/crash-$name-" -print_final_stats=1 "$work" 2>"$build/fuzz-$name.log"); then
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb|cov:" "$build/fuzz-$name.log" | tail -3 || true
    passed=$((passed + 1))
  else
    echo "fuzz $name FAILED; log: $build/fuzz-$name.log" >&2
    tail -40 "$build/fuzz-$name.log" >&2
    failed=$((failed + 1))
  fi
  rm -rf "$work"
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
