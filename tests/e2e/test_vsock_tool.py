#!/usr/bin/env python3
"""The vsock tests' own instrument, without any daemon: guest/vsock-tool.c and vsock_host.py
generate the same bytes, and the guest images carry this very vsock-tool and run it.

If test_vsock_* fail, this one tells whether the instrument or the device is at fault.

usage: test_vsock_tool.py --vsock-tool PATH [--log-dir DIR]
"""

import subprocess
import unittest

import harness
import vsock_host as vh

# Sizes around the 4096-byte block edges, and seeds at the ends of the u64 range.
SEEDS = (0, 1, 5, 123456789, (1 << 64) - 1)
SIZES = (0, 1, 4095, 4096, 4097, 100003, 8 << 20)
DUMP_SEED, DUMP_BYTES = 77, 300001
GUEST_SEED, GUEST_BYTES = 9, 3 << 20

SCRIPT = vh.script([
    f"run vsock-tool gen {GUEST_BYTES} --seed {GUEST_SEED} --tag guest-gen",
    "vsock-tool --help >/dev/null && echo 'VT help ok'",
    # A usage error: --seqpacket with a stream ACTION must exit 2 before opening a socket.
    'vsock-tool listen 1 recv --seqpacket 2>/dev/null; echo "VT usage rc $?"',
])


class VsockToolTest(unittest.TestCase):
    def gen(self, *args):
        done = subprocess.run([vh.tool_path(), "gen", *map(str, args)], capture_output=True,
                              timeout=60, check=True)
        return done.stdout

    def test_python_generator_matches_vsock_tool(self):
        for seed in SEEDS:
            for size in SIZES:
                line = vh.one_line(self.gen(size, "--seed", seed).decode(), "gen", "gen")
                self.assertEqual(line.fields["crc32"], vh.crc_hex(vh.stream_crc(seed, size)),
                                 f"seed {seed}, {size} bytes: vsock-tool and vsock_host.py "
                                 "generate different data")
        raw = self.gen(DUMP_BYTES, "--seed", DUMP_SEED, "--dump")
        self.assertEqual(raw, vh.stream_bytes(DUMP_SEED, DUMP_BYTES),
                         "vsock-tool gen --dump differs from vsock_host.stream_bytes")

    def run_in_guest(self, tag):
        vh.tool_path()
        with harness.Guest(harness.GuestImage(tag), SCRIPT, chardev_sockets=[],
                           name=f"vsock-tool-{tag}") as guest:
            guest.wait_booted()
            self.assertEqual(guest.wait_exit(), 0, f"{tag}: QEMU's exit status")
            output = guest.script_output()
            result = guest.result()
        vh.check_guest_tool(output)
        self.assertEqual(result, 0, f"{tag}: guest script status:\n{output}")
        line = vh.one_line(output, "guest-gen", "gen")
        self.assertEqual(line.fields["crc32"],
                         vh.crc_hex(vh.stream_crc(GUEST_SEED, GUEST_BYTES)),
                         f"{tag}: the guest generates other data than the host")
        self.assertEqual(len(vh.vt_lines(output, "help", "ok")), 1, f"{tag}: --help:\n{output}")
        self.assertEqual(vh.one_line(output, "usage", "rc").int(), 2,
                         f"{tag}: a usage error must exit 2:\n{output}")

    def test_vsock_tool_runs_in_the_6_1_guest(self):
        self.run_in_guest("6.1")

    def test_vsock_tool_runs_in_the_6_12_guest(self):
        self.run_in_guest("6.12")


if __name__ == "__main__":
    vh.main()
