#!/usr/bin/env bash
# Installs everything the build, the tests and the demo need on a fresh Debian 12.
# Idempotent: apt-get skips what is already installed.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
export DEBIAN_FRONTEND=noninteractive
packages=(
  # toolchain and build
  build-essential cmake ninja-build pkg-config
  # libraries (DEVELOPERS.md)
  libboost1.81-dev libboost-json1.81-dev libcli11-dev libspdlog-dev libfmt-dev libyaml-cpp-dev
  libgtest-dev libgmock-dev librapidcheck-dev
  # fuzzing
  clang-14 libfuzzer-14-dev libclang-rt-14-dev
  # end-to-end guests
  qemu-system-x86 busybox-static cpio kmod gzip xz-utils zstd
  # end-to-end test harness (tests/e2e/harness.py: standard library only)
  python3
)
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}"
