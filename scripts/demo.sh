#!/usr/bin/env bash
# The main job, from a fresh Debian 12: set-up, an optimised build, the guest images, then
# the daemon serving a real QEMU guest (scripts/demo.py).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh
bash scripts/build.sh release
bash scripts/build-guest.sh "$root/build-release/guest"
VSOCKD_GUEST_DIR="$root/build-release/guest" \
  python3 scripts/demo.py --daemon-bin "$root/build-release/app/vhost-user-rng" "$@"
