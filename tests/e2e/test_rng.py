#!/usr/bin/env python3
"""vhost-user-rng serves guests one after another from one process: a 6.1 guest, then a 6.12
guest on the same socket, each reading 1 MiB from /dev/hwrng through vhost-user-rng-pci.

usage: test_rng.py --daemon-bin PATH/vhost-user-rng [--log-dir DIR]
"""

import re
import tempfile
import unittest
from pathlib import Path

import harness

READ_BYTES = 1 << 20
# Two separate reads: their sizes show the device delivers, their digests that it does not
# repeat itself, and the gzip size of one that it is not constant or patterned (1 MiB of
# random bytes does not compress; zeros or a repeated block shrink to a few KiB).
# iflag=fullblock: the count is of bytes delivered, however read() splits them.
SCRIPT = f"""
set -e
echo "rng-current $(cat /sys/class/misc/hw_random/rng_current)"
dd if=/dev/hwrng of=/tmp/a bs=4096 count={READ_BYTES // 4096} iflag=fullblock 2>/dev/null
dd if=/dev/hwrng of=/tmp/b bs=4096 count={READ_BYTES // 4096} iflag=fullblock 2>/dev/null
echo "rng-bytes $(wc -c </tmp/a) $(wc -c </tmp/b)"
echo "rng-md5 $(md5sum </tmp/a | cut -d' ' -f1) $(md5sum </tmp/b | cut -d' ' -f1)"
echo "rng-gzip-bytes $(gzip -c /tmp/a | wc -c)"
"""


def field(output, key):
    match = re.search(rf"^{key} (.*)$", output, re.M)
    if match is None:
        raise AssertionError(f"the guest printed no {key} line:\n{output}")
    return match.group(1).split()


class RngTest(unittest.TestCase):
    def read_hwrng(self, tag, socket_path):
        with harness.Guest(harness.GuestImage(tag), SCRIPT, chardev_sockets=[socket_path],
                           device="vhost-user-rng-pci", name=f"rng-{tag}") as guest:
            guest.wait_booted()
            self.assertEqual(guest.wait_exit(), 0, f"{tag}: QEMU's exit status")
            self.assertEqual(guest.result(), 0, f"{tag}: guest script status")
            output = guest.script_output()
        self.assertTrue(field(output, "rng-current")[0].startswith("virtio_rng"),
                        f"{tag}: /dev/hwrng is not backed by virtio-rng:\n{output}")
        sizes = [int(n) for n in field(output, "rng-bytes")]
        for size in sizes:
            self.assertGreaterEqual(size, READ_BYTES, f"{tag}: bytes read from /dev/hwrng")
        first, second = field(output, "rng-md5")
        self.assertNotEqual(first, second, f"{tag}: two reads returned the same bytes")
        compressed = int(field(output, "rng-gzip-bytes")[0])
        self.assertGreater(compressed, READ_BYTES * 99 // 100,
                           f"{tag}: 1 MiB from /dev/hwrng compresses to {compressed} bytes")

    def test_one_daemon_serves_a_6_1_then_a_6_12_guest(self):
        binary = harness.daemon_bin("vhost-user-rng")
        with tempfile.TemporaryDirectory(prefix="vsockd-e2e-rng-") as tmp:
            socket_path = str(Path(tmp) / "rng.sock")
            with harness.Daemon([binary, "--socket", socket_path]) as daemon:
                self.read_hwrng("6.1", socket_path)
                self.assertTrue(daemon.alive(), "vhost-user-rng died after the first guest")
                self.read_hwrng("6.12", socket_path)
                self.assertTrue(daemon.alive(), "vhost-user-rng died after the second guest")
                self.assertEqual(daemon.stop(), 0, "vhost-user-rng's exit status on SIGTERM:\n"
                                 + harness.tail(daemon.log()))


if __name__ == "__main__":
    harness.main()
