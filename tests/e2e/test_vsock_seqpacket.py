#!/usr/bin/env python3
"""vhost-vsockd keeps SOCK_SEQPACKET message boundaries between real guests (6.1 and 6.12) and
host apps (AF_UNIX SOCK_SEQPACKET), both ways, for messages from 1 byte to well over one vsock
packet (64 KiB): every message must arrive whole, alone and intact (length and CRC-32 each).
The reference daemon offered no SEQPACKET at all (peers.md §1.4, §8).

One guest per kernel runs, in order:
  g2h      guest connect(2, P, SEQPACKET) -> host SOCK_SEQPACKET listener UDS_P: SIZES
           messages; then EOF (the guest's shutdown(SHUT_WR)); then the host answers with
           REPLY_SIZES messages, which the guest receives whole
  h2g      host CONNECT on UDS_seqpacket -> guest listener: SIZES messages
  g2h-hi   host CONNECT on UDS_seqpacket -> guest listener that sends SIZES messages
  refused  a SEQPACKET connect to a port without host listener fails with ECONNRESET in under
           a second

A guest may send a SEQPACKET message only if it fits the peer's buf_alloc (Linux returns
EMSGSIZE otherwise), so the daemon runs with --tx-buffer-size 262144 for the 150000-byte ones.

usage: test_vsock_seqpacket.py --daemon-bin PATH/vhost-vsockd --vsock-tool PATH [--log-dir DIR]
"""

import socket
import sys
import unittest

import harness
import vsock_host as vh
from vsock_host import Deadline

CID = 23
SIZES = [1, 4096, 61440, 65536, 65537, 150000, 1, 4095, 32769]
REPLY_SIZES = [150000, 1, 61440, 69632]
TX_BUFFER = 262144
PORT_G2H, PORT_H2G, PORT_G2H_HI, PORT_REFUSED = 5300, 5301, 5302, 5303
SEED_G2H, SEED_REPLY, SEED_H2G, SEED_G2H_HI = 501, 502, 503, 504
STEP_SECONDS = 60
TRANSFER_SECONDS = 120
REFUSED_MS = 1000
SIZE_ARGS = " ".join(map(str, SIZES))

SCRIPT = vh.script([
    "run vsock-tool cid --tag cid",
    f"run vsock-tool connect 2 {PORT_G2H} --seqpacket send-msgs {SIZE_ARGS} --seed {SEED_G2H}"
    " --tag g2h",
    f"run vsock-tool listen {PORT_H2G} --seqpacket recv-msgs --tag h2g",
    f"run vsock-tool listen {PORT_G2H_HI} --seqpacket send-msgs {SIZE_ARGS} "
    f"--seed {SEED_G2H_HI} --tag g2h-hi",
    f"run vsock-tool connect 2 {PORT_REFUSED} --seqpacket expect-reset --tag refused",
])


def expected(seed, sizes):
    return [(n, crc, False) for n, crc in vh.message_sizes_crcs(seed, sizes)]


def describe(messages):
    return "\n".join(f"  {i}: {m[0]} bytes crc32={vh.crc_hex(m[1])}"
                     + (" TRUNCATED" if len(m) > 2 and m[2] else "")
                     if m[0] != "error" else f"  {i}: error {m[1]}"
                     for i, m in enumerate(messages)) or "  (none)"


class SeqpacketTest(unittest.TestCase):
    def assert_messages(self, got, want, what):
        self.assertEqual(got, want, f"{what}: messages differ.\nreceived:\n{describe(got)}\n"
                         f"expected:\n{describe(want)}")

    def guest_messages(self, guest, tag, what):
        """The (length, crc, truncated) of the messages the guest reports under `tag`."""
        vh.wait_line(guest, tag, "msgs", STEP_SECONDS)
        lines = vh.vt_lines(guest.console(), tag, "msg")
        if any(line.fields.get("crc32") is None for line in lines):
            raise AssertionError(f"{what}: malformed msg lines:\n"
                                 + vh.tag_lines(guest.console(), tag))
        return [(line.int(1), int(line.fields["crc32"], 16), "trunc" in line.values)
                for line in lines]

    def check_connect(self, guest, tag, what):
        """A SEQPACKET connect the guest's transport refused (no VIRTIO_VSOCK_F_SEQPACKET
        negotiated) is named as such."""
        failed = vh.vt_lines(guest.console(), tag, "connect-failed")
        if failed:
            hint = (" (the guest's transport does not allow SEQPACKET: the device did not "
                    "offer VIRTIO_VSOCK_F_SEQPACKET)"
                    if failed[0].fields.get("errno") == "ESOCKTNOSUPPORT" else "")
            raise AssertionError(f"{what}: the guest's connect failed: {failed[0]!r}{hint}")

    def run_guest(self, tag):
        with vh.VsockRig(f"seqpacket-{tag}") as rig:
            g2h_listener = rig.listen(PORT_G2H, seqpacket=True)
            with rig.daemon(CID, "--tx-buffer-size", str(TX_BUFFER), "--log-level",
                            "debug") as daemon, \
                    harness.Guest(harness.GuestImage(tag), SCRIPT,
                                  chardev_sockets=[rig.vhost_socket],
                                  name=f"vsock-seqpacket-{tag}") as guest:
                guest.wait_booted()
                vh.wait_line(guest, "tool", "version", STEP_SECONDS)
                vh.check_guest_tool(guest.console())
                self.assertEqual(vh.wait_line(guest, "cid", "cid", STEP_SECONDS).int(), CID,
                                 f"{tag}: the guest's CID is not --guest-cid {CID}")
                self.g2h(tag, rig, guest, g2h_listener)
                self.h2g(tag, rig, guest)
                self.g2h_host_initiated(tag, rig, guest)
                self.refused(tag, guest)
                vh.finish_guest(self, guest, daemon, tag)

    def g2h(self, tag, rig, guest, listener):
        what = f"{tag} g2h: guest-initiated, guest->host messages"
        guest.wait_for(r"^VT g2h (connected|connect-failed) ", STEP_SECONDS)
        self.check_connect(guest, "g2h", what)
        conn = rig.track(vh.accept(listener, Deadline(STEP_SECONDS),
                                   f"guest SEQPACKET connection on {rig.uds_port(PORT_G2H)}"))
        got = vh.recv_messages(conn, Deadline(TRANSFER_SECONDS, what), count=len(SIZES))
        self.assert_messages(got, expected(SEED_G2H, SIZES), what)
        self.assertEqual(vh.recv_messages(conn, Deadline(STEP_SECONDS, f"{what}: EOF after the "
                                          "guest's shutdown(SHUT_WR)")), [],
                         f"{what}: more than {len(SIZES)} messages")
        # The answer after the guest's half-close.
        answer = f"{tag} g2h: host->guest answer after the guest's shutdown(SHUT_WR)"
        vh.send_messages(conn, SEED_REPLY, REPLY_SIZES, Deadline(TRANSFER_SECONDS, answer))
        conn.shutdown(socket.SHUT_WR)
        discarded, _ = vh.wait_closed(conn, Deadline(TRANSFER_SECONDS, f"{answer}: the guest "
                                                     "reads to EOF, then closes"))
        conn.close()
        self.assertEqual(discarded, 0, answer)
        sent = [(line.int(1), int(line.fields["crc32"], 16), False)
                for line in vh.vt_lines(guest.console(), "g2h", "msg-sent")]
        self.assert_messages(sent, expected(SEED_G2H, SIZES), f"{what} (the guest's own list)")
        self.assert_messages(self.guest_messages(guest, "g2h", answer),
                             expected(SEED_REPLY, REPLY_SIZES), answer)

    def h2g(self, tag, rig, guest):
        what = f"{tag} h2g: host-initiated, host->guest messages"
        vh.wait_line(guest, "h2g", "listening", STEP_SECONDS)
        sock, host_port = vh.hybrid_connect_seqpacket(rig.uds, PORT_H2G, Deadline(STEP_SECONDS))
        rig.track(sock)
        vh.send_messages(sock, SEED_H2G, SIZES, Deadline(TRANSFER_SECONDS, what))
        sock.shutdown(socket.SHUT_WR)
        discarded, _ = vh.wait_closed(sock, Deadline(TRANSFER_SECONDS, f"{what}: the guest "
                                                     "reads to EOF, then closes"))
        sock.close()
        self.assertEqual(discarded, 0, what)
        self.assert_messages(self.guest_messages(guest, "h2g", what),
                             expected(SEED_H2G, SIZES), what)
        accepted = vh.one_line(guest.console(), "h2g", "accepted")
        self.assertEqual(accepted.fields["peer"], f"2:{host_port}", what)

    def g2h_host_initiated(self, tag, rig, guest):
        what = f"{tag} g2h-hi: host-initiated, guest->host messages"
        vh.wait_line(guest, "g2h-hi", "listening", STEP_SECONDS)
        sock, _ = vh.hybrid_connect_seqpacket(rig.uds, PORT_G2H_HI, Deadline(STEP_SECONDS))
        rig.track(sock)
        got = vh.recv_messages(sock, Deadline(TRANSFER_SECONDS, what), count=len(SIZES))
        self.assert_messages(got, expected(SEED_G2H_HI, SIZES), what)
        sock.close()
        vh.wait_line(guest, "g2h-hi", "msgs-sent", STEP_SECONDS)

    def refused(self, tag, guest):
        what = f"{tag} refused: SEQPACKET connect to port {PORT_REFUSED}, no host listener"
        line = vh.wait_line(guest, "refused", "connect-failed", STEP_SECONDS)
        self.assertEqual(line.fields["errno"], "ECONNRESET", f"{what}: {line!r}")
        self.assertLess(int(line.fields["ms"]), REFUSED_MS, f"{what}: {line!r}")
        print(f"e2e: {what}: ECONNRESET after {line.fields['ms']} ms", file=sys.stderr,
              flush=True)

    def test_seqpacket_6_1(self):
        self.run_guest("6.1")

    def test_seqpacket_6_12(self):
        self.run_guest("6.12")


if __name__ == "__main__":
    vh.main()
