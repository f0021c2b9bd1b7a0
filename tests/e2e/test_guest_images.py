#!/usr/bin/env python3
"""The guest images themselves: each kernel boots, loads every module the e2e tests rely on,
runs the script delivered through fw_cfg and reports its exit status. No daemon is involved,
so a failure here points at scripts/build-guest.sh or the harness, not at our code."""

import re
import unittest

import harness

# The script's exit status must come back through E2E-RESULT unchanged.
SCRIPT_RC = 7
SCRIPT = f"""
echo "release $(uname -r)"
echo "modules $(cut -d' ' -f1 /proc/modules | tr '\\n' ' ')"
exit {SCRIPT_RC}
"""
# Loaded as modules by both Debian kernels; virtio_pci is built into 6.12.
REQUIRED_MODULES = {"vsock", "vmw_vsock_virtio_transport", "vsock_diag", "virtio_rng",
                    "virtio_net", "qemu_fw_cfg"}


class GuestImageTest(unittest.TestCase):
    def check_image(self, tag):
        image = harness.GuestImage(tag)
        with harness.Guest(image, SCRIPT, name=f"boot-{tag}") as guest:
            guest.wait_booted()
            self.assertEqual(guest.wait_exit(), 0, "QEMU's exit status after poweroff")
            self.assertEqual(guest.result(), SCRIPT_RC, "script status through E2E-RESULT")
            output = guest.script_output()
            self.assertIn(f"release {image.release}\n", output)
            modules = set(re.search(r"^modules (.*)$", output, re.M).group(1).split())
            self.assertLessEqual(REQUIRED_MODULES, modules, "modules loaded in the guest")
            # Loaded, it would take AF_VSOCK traffic to other CIDs away from the device.
            self.assertNotIn("vhost_vsock", modules)

    def test_kernel_6_1(self):
        self.check_image("6.1")

    def test_kernel_6_12(self):
        self.check_image("6.12")


if __name__ == "__main__":
    harness.main()
