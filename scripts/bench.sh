#!/usr/bin/env bash
# Builds the benchmarks optimised and runs them, printing figures (DEVELOPERS.md: speed is
# measured by benchmarks that print figures, never by timed assertions in tests).
#   scripts/bench.sh                  vsock_bench, 256 MiB per direction per row, median of 3
#   scripts/bench.sh --mib 64 ...     any vsock_bench options (--connections, --tx-buffer-size)
# vsock_bench drives the device through the simulator fixture, which is test code, so it is
# built in its own Release tree with the tests enabled (build-release has none), and only
# that target is built. `ctest -L bench` runs it small in the sanitizer build, as a smoke test.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$root/build-bench
cmake -S "$root" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DVSOCKD_SANITIZE=OFF -DVSOCKD_TESTS=ON >/dev/null
ninja -C "$dir" -j "$(nproc)" vsock_bench
if [ $# -eq 0 ]; then set -- --mib 256 --repeat 3; fi
"$dir/tests/sim/vsock_bench" "$@"
