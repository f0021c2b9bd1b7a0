#!/usr/bin/env python3
"""The main job's demo: our daemon serving a real QEMU guest.

Starts vhost-user-rng, boots a Debian guest (QEMU, vhost-user-rng-pci) that reads entropy
from /dev/hwrng through it, and shows what both sides said. Until the vsock device exists
this is the rng device; the harness is the one the end-to-end tests use.
"""
import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
import harness  # noqa: E402

GUEST_SCRIPT = """
echo "guest: kernel $(uname -r), /dev/hwrng backed by $(cat /sys/class/misc/hw_random/rng_current)"
start=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/hwrng of=/tmp/entropy bs=4096 count=1024 iflag=fullblock 2>/dev/null
end=$(cut -d' ' -f1 /proc/uptime)
echo "guest: read $(wc -c </tmp/entropy) bytes in $(awk "BEGIN{print $end-$start}") s (TCG guest)"
echo "guest: first bytes:"
hexdump -C /tmp/entropy | head -4
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--daemon-bin", required=True, help="path to vhost-user-rng")
    parser.add_argument("--kernel", default="6.12", choices=["6.1", "6.12"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vsockd-demo-") as tmp:
        socket_path = str(Path(tmp) / "rng.sock")
        print(f"== starting {args.daemon_bin} --socket {socket_path}")
        with harness.Daemon([args.daemon_bin, "--socket", socket_path]) as daemon:
            print(f"== booting a Debian {args.kernel} guest under QEMU ({harness.accelerator()[0]})")
            with harness.Guest(harness.GuestImage(args.kernel), GUEST_SCRIPT, chardev_sockets=[socket_path],
                               device="vhost-user-rng-pci", name="demo") as guest:
                guest.wait_booted()
                guest.wait_exit()
                print(guest.script_output().rstrip())
                status = guest.result()
            daemon.stop()
            print("== daemon log")
            print(daemon.log().rstrip())
    print("== demo " + ("succeeded" if status == 0 else f"failed (guest status {status})"))
    return status


if __name__ == "__main__":
    sys.exit(main())
