#!/usr/bin/env bash
# The main job, from a fresh Debian 12: set-up, an optimised build, the guest images, then
# vhost-vsockd serving a real QEMU guest, a host app and a guest app talking both ways
# (scripts/demo.py).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh
bash scripts/build.sh release
# The guest side of the demo is the static vsock-tool the end-to-end tests use.
mkdir -p "$root/build-release/guest-bin"
gcc -static -O2 -std=gnu11 -o "$root/build-release/guest-bin/vsock-tool" "$root/tests/e2e/guest/vsock-tool.c"
bash scripts/build-guest.sh --extra-bin "$root/build-release/guest-bin" "$root/build-release/guest"
VSOCKD_GUEST_DIR="$root/build-release/guest" \
  python3 scripts/demo.py --daemon-bin "$root/build-release/app/vhost-vsockd" "$@"
