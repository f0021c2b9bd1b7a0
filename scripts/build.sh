#!/usr/bin/env bash
# Configures and builds one flavour of the project.
#   scripts/build.sh test     gcc, ASan+UBSan, tests          -> build/
#   scripts/build.sh release  gcc, optimised, no tests        -> build-release/
#   scripts/build.sh fuzz     clang-14, libFuzzer+ASan+UBSan  -> build-fuzz/
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
flavour=${1:?usage: build.sh test|release|fuzz}
jobs=$(nproc)
case "$flavour" in
  test) dir=$root/build targets=()
        args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DVSOCKD_SANITIZE=ON -DVSOCKD_TESTS=ON) ;;
  release) dir=$root/build-release targets=()
        args=(-DCMAKE_BUILD_TYPE=Release -DVSOCKD_TESTS=OFF) ;;
  fuzz) dir=$root/build-fuzz targets=(fuzz-targets)  # the fuzzers only: CI time
        args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++-14 -DVSOCKD_FUZZ=ON -DVSOCKD_TESTS=OFF) ;;
  *) echo "build.sh: unknown flavour '$flavour'" >&2; exit 2 ;;
esac
# Line tables only (-g1): sanitizer reports and backtraces keep their file:line, and the
# build takes markedly less time than with full debug info (CI has two cores).
[ "$flavour" = release ] || args+=(-DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG")
cmake -S "$root" -B "$dir" -G Ninja "${args[@]}" >/dev/null
ninja -C "$dir" -j "$jobs" "${targets[@]}"
