#!/usr/bin/env bash
# Everything the project tests, from a fresh Debian 12: set-up, the sanitizer build, guest
# images, every ctest (unit, property, simulator, corpus replay, end-to-end with QEMU
# guests), then each fuzz target for 60 s. `.ci/run` runs exactly this.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

bash scripts/setup.sh
bash scripts/build.sh test
bash scripts/build-guest.sh "$root/build/guest"
bash scripts/build.sh fuzz

status=0
ctest --test-dir build --output-on-failure -j "$(nproc)" --timeout 900 | tee build/ctest.log || status=1
bash scripts/fuzz.sh | tee build/fuzz.log || status=1

# One closing line over both runs (ctest's own summary counts only its part).
summary=$(grep -E 'tests passed, [0-9]+ tests failed out of [0-9]+' build/ctest.log | tail -1 || true)
total=$(sed -nE 's/.* out of ([0-9]+).*/\1/p' <<<"$summary")
failed=$(sed -nE 's/.* ([0-9]+) tests failed.*/\1/p' <<<"$summary")
fz_passed=$(sed -nE 's/^fuzz: ([0-9]+) passed.*/\1/p' build/fuzz.log)
fz_failed=$(sed -nE 's/^fuzz: [0-9]+ passed, ([0-9]+) failed.*/\1/p' build/fuzz.log)
: "${total:=0}" "${failed:=0}" "${fz_passed:=0}" "${fz_failed:=1}"
echo "ctest: ${summary:-no summary line found}"
echo "all: $(( total - failed + fz_passed )) passed, $(( failed + fz_failed )) failed"
exit $status
