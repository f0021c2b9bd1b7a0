#!/usr/bin/env python3
"""vhost-vsockd carries SOCK_STREAM data between real guests and host apps, intact.

One guest per kernel (6.1, then 6.12; 6.12 guests split TX packets over 32 KiB across several
descriptors, which stalled the reference daemon: peers.md §8). The guest script runs these
phases in order; the host side of each is below in StreamTest.run_guest():

  cid     the guest's CID is the daemon's --guest-cid (GET_CONFIG)
  g2h     guest connect(2, P) -> host listener UDS_P: 8 MiB, write sizes 1 B .. 256 KiB
  h2g     host CONNECT -> guest listener: 8 MiB the same way; OK <host_port> is the source
          port the guest sees
  bidi    one host-initiated connection, 4 MiB each way at the same time
  gmulti  64 concurrent guest-initiated connections (all open before any data moves), each
          echoed by the host: 128 KiB each way per connection
  hmulti  64 concurrent host-initiated connections (all handshakes done before any data
          moves), each echoed by the guest: 64 KiB each way, 64 distinct host ports
  split   the CONNECT line cut in two writes (the second made only after another connection
          completed a whole handshake through the guest), and payload in the same write as
          the newline; 1 MiB each, nothing lost

Every byte is checked: the host verifies what it receives against the generator, and the
guest's vsock-tool prints CRC-32s of what it sent and received, compared with the host's.

usage: test_vsock_stream.py --daemon-bin PATH/vhost-vsockd --vsock-tool PATH [--log-dir DIR]
"""

import socket
import unittest

import harness
import vsock_host as vh
from vsock_host import Deadline, Flow

CID = 21
MiB = 1 << 20
BULK = 8 * MiB
BIDI = 4 * MiB
CONNS = 64
GMULTI_BYTES = 128 * 1024
HMULTI_BYTES = 64 * 1024
SPLIT_BYTES = 1 * MiB
# Payload written together with the CONNECT line: more than one vsock packet.
SPLIT_INLINE = 70000

PORT_G2H, PORT_H2G, PORT_BIDI, PORT_GMULTI, PORT_HMULTI, PORT_SPLIT = range(5001, 5007)
# Seeds of the data each side sends (guest-sent and host-sent differ, so an echo or a
# loop-back inside the daemon cannot pass for a transfer).
SEED_G2H, SEED_H2G, SEED_BIDI_G, SEED_BIDI_H = 101, 102, 103, 104
SEED_GMULTI, SEED_HMULTI = 1000, 2000  # connection i: seed + i
SEED_SPLIT_A, SEED_SPLIT_B = 3001, 3002

# Deadlines. Bulk ones allow TCG on a loaded 2-core machine a wide margin; they bound a hang,
# they do not measure speed.
PHASE_SECONDS = 120
STEP_SECONDS = 60

SCRIPT = vh.script([
    "run vsock-tool cid --tag cid",
    f"run vsock-tool connect 2 {PORT_G2H} send {BULK} --seed {SEED_G2H} --tag g2h",
    f"run vsock-tool listen {PORT_H2G} recv --tag h2g",
    f"run vsock-tool listen {PORT_BIDI} send-recv {BIDI} --seed {SEED_BIDI_G} --tag bidi",
    f"run vsock-tool connect 2 {PORT_GMULTI} --count {CONNS} send-recv {GMULTI_BYTES} "
    f"--seed {SEED_GMULTI} --tag gmulti",
    f"run vsock-tool listen {PORT_HMULTI} --count {CONNS} echo --tag hmulti",
    f"run vsock-tool listen {PORT_SPLIT} --count 2 recv --tag split",
])


def crc(seed, n):
    return vh.crc_hex(vh.stream_crc(seed, n))


class StreamTest(unittest.TestCase):
    def assert_line(self, guest, tag, event, value, crc_hex, what):
        """The guest printed `VT <tag> <event> <value> crc32=<crc_hex>`."""
        line = vh.wait_line(guest, tag, event, STEP_SECONDS)
        self.assertEqual((line.int(), line.fields.get("crc32")), (value, crc_hex),
                         f"{what}: the guest reports {line!r}, expected {value} bytes with "
                         f"crc32={crc_hex}; its lines:\n{vh.tag_lines(guest.console(), tag)}")

    def run_guest(self, tag):
        with vh.VsockRig(f"stream-{tag}") as rig:
            listeners = {p: rig.listen(p) for p in (PORT_G2H, PORT_GMULTI)}
            with rig.daemon(CID) as daemon:
                with harness.Guest(harness.GuestImage(tag), SCRIPT,
                                   chardev_sockets=[rig.vhost_socket],
                                   name=f"vsock-stream-{tag}") as guest:
                    guest.wait_booted()
                    vh.wait_line(guest, "tool", "version", STEP_SECONDS)
                    vh.check_guest_tool(guest.console())
                    self.assertEqual(vh.wait_line(guest, "cid", "cid", STEP_SECONDS).int(), CID,
                                     f"{tag}: the guest's CID is not --guest-cid {CID}")
                    self.g2h(tag, rig, guest, listeners[PORT_G2H])
                    self.h2g(tag, rig, guest)
                    self.bidi(tag, rig, guest)
                    self.gmulti(tag, rig, guest, listeners[PORT_GMULTI])
                    self.hmulti(tag, rig, guest)
                    self.split(tag, rig, guest)
                    vh.finish_guest(self, guest, daemon, tag)

    def g2h(self, tag, rig, guest, listener):
        what = f"{tag} g2h: guest->host {BULK} bytes"
        conn = rig.track(vh.accept(listener, Deadline(STEP_SECONDS),
                                   f"guest connection on {rig.uds_port(PORT_G2H)}"))
        # Exactly BULK bytes first, then EOF separately: a daemon that loses the guest's
        # shutdown(SHUT_WR) then fails with that message, not as a transfer failure.
        flow = Flow(conn, "g2h", expect_seed=SEED_G2H, expect_bytes=BULK, want_eof=False,
                    shut_wr=False)
        vh.pump([flow], Deadline(PHASE_SECONDS, what))
        vh.check_flow(self, flow, what)
        vh.expect_eof(conn, Deadline(STEP_SECONDS), f"{what}: after all the data arrived "
                      "intact, the guest's shutdown(SHUT_WR)")
        conn.close()
        self.assert_line(guest, "g2h", "sent", BULK, crc(SEED_G2H, BULK), what)
        connected = vh.one_line(guest.console(), "g2h", "connected")
        self.assertEqual(connected.fields["peer"], f"2:{PORT_G2H}", what)

    def h2g(self, tag, rig, guest):
        what = f"{tag} h2g: host->guest {BULK} bytes"
        vh.wait_line(guest, "h2g", "listening", STEP_SECONDS)
        sock, host_port = vh.hybrid_connect(rig.uds, PORT_H2G, Deadline(STEP_SECONDS))
        rig.track(sock)
        # Send, shutdown(SHUT_WR), then EOF once the guest read everything and closed.
        flow = Flow(sock, "h2g", send_seed=SEED_H2G, send_bytes=BULK, want_eof=True)
        vh.pump([flow], Deadline(PHASE_SECONDS, f"{what} (the guest reads to EOF, then "
                                 "closes)"))
        vh.check_flow(self, flow, what)
        sock.close()
        self.assert_line(guest, "h2g", "recv", BULK, crc(SEED_H2G, BULK), what)
        accepted = vh.one_line(guest.console(), "h2g", "accepted")
        self.assertEqual(accepted.fields["peer"], f"2:{host_port}",
                         f"{what}: 'OK {host_port}' must name the host-side port the guest "
                         "sees as its peer")

    def bidi(self, tag, rig, guest):
        what = f"{tag} bidi: {BIDI} bytes each way at once on one connection"
        vh.wait_line(guest, "bidi", "listening", STEP_SECONDS)
        sock, _ = vh.hybrid_connect(rig.uds, PORT_BIDI, Deadline(STEP_SECONDS))
        rig.track(sock)
        flow = Flow(sock, "bidi", send_seed=SEED_BIDI_H, send_bytes=BIDI,
                    expect_seed=SEED_BIDI_G, expect_bytes=BIDI, want_eof=True)
        vh.pump([flow], Deadline(PHASE_SECONDS, what))
        vh.check_flow(self, flow, what)
        sock.close()
        self.assert_line(guest, "bidi", "sent", BIDI, crc(SEED_BIDI_G, BIDI), what)
        self.assert_line(guest, "bidi", "recv", BIDI, crc(SEED_BIDI_H, BIDI), what)

    def gmulti(self, tag, rig, guest, listener):
        what = f"{tag} gmulti: {CONNS} concurrent guest connections, echoed by the host"
        deadline = Deadline(PHASE_SECONDS, what)
        # The guest's connections all complete before any sends (vsock-tool's barrier), so
        # all of them are accepted here before data moves.
        conns = [rig.track(vh.accept(listener, deadline, f"guest connection {i + 1} of "
                                     f"{CONNS} on {rig.uds_port(PORT_GMULTI)}"))
                 for i in range(CONNS)]
        flows = [Flow(c, f"host end {i}", echo=True) for i, c in enumerate(conns)]
        vh.pump(flows, deadline)
        for f in flows:
            self.assertIsNone(f.error, f"{what}: {f.describe()}")
            self.assertEqual((f.received, f.sent), (GMULTI_BYTES, GMULTI_BYTES),
                             f"{what}: {f.describe()}")
            f.sock.close()
        for i in range(CONNS):
            expected = crc(SEED_GMULTI + i, GMULTI_BYTES)
            self.assert_line(guest, f"gmulti.{i}", "sent", GMULTI_BYTES, expected, what)
            self.assert_line(guest, f"gmulti.{i}", "recv", GMULTI_BYTES, expected,
                             f"{what}: connection {i}'s data came back altered")

    def hmulti(self, tag, rig, guest):
        what = f"{tag} hmulti: {CONNS} concurrent host connections, echoed by the guest"
        vh.wait_line(guest, "hmulti", "listening", STEP_SECONDS)
        deadline = Deadline(PHASE_SECONDS, what)
        socks = []
        for _ in range(CONNS):
            s = rig.track(vh.connect_unix(rig.uds, socket.SOCK_STREAM, deadline))
            s.sendall(f"CONNECT {PORT_HMULTI}\n".encode())
            socks.append(s)
        ports = [vh.hybrid_finish(s, PORT_HMULTI, deadline) for s in socks]
        self.assertEqual(len(set(ports)), CONNS, f"{what}: host ports {sorted(ports)} repeat")
        flows = [Flow(s, f"connection {i} (host port {p})", send_seed=SEED_HMULTI + i,
                      send_bytes=HMULTI_BYTES, expect_seed=SEED_HMULTI + i,
                      expect_bytes=HMULTI_BYTES, want_eof=True)
                 for i, (s, p) in enumerate(zip(socks, ports))]
        vh.pump(flows, deadline)
        for f in flows:
            vh.check_flow(self, f, what)
            f.sock.close()
        for i in range(CONNS):
            line = vh.wait_line(guest, f"hmulti.{i}", "echo", STEP_SECONDS)
            self.assertEqual(line.int(), HMULTI_BYTES, f"{what}: {line!r}")
        peers = {vh.one_line(guest.console(), f"hmulti.{i}", "accepted").fields["peer"]
                 for i in range(CONNS)}
        self.assertEqual(peers, {f"2:{p}" for p in ports},
                         f"{what}: the guest's peers are not the host ports the OKs named")

    def split(self, tag, rig, guest):
        what = f"{tag} split: CONNECT over two writes, payload in the newline's write"
        vh.wait_line(guest, "split", "listening", STEP_SECONDS)
        deadline = Deadline(PHASE_SECONDS, what)
        # A: the command cut inside its keyword. B completes a whole handshake (through the
        # guest) before A's second write, so the daemon has long read A's first piece alone.
        a = rig.track(vh.connect_unix(rig.uds, socket.SOCK_STREAM, deadline))
        a.sendall(b"CONN")
        b_inline = vh.stream_bytes(SEED_SPLIT_B, SPLIT_INLINE)
        b, port_b = vh.hybrid_connect(rig.uds, PORT_SPLIT, deadline,
                                      pieces=[f"CONNECT {PORT_SPLIT}\n".encode() + b_inline])
        rig.track(b)
        a_inline = vh.stream_bytes(SEED_SPLIT_A, SPLIT_INLINE)
        a.sendall(f"ECT {PORT_SPLIT}\n".encode() + a_inline)
        port_a = vh.hybrid_finish(a, PORT_SPLIT, deadline)
        flows = [Flow(a, "A (split command)", send_seed=SEED_SPLIT_A, send_bytes=SPLIT_BYTES,
                      already_sent=a_inline, want_eof=True),
                 Flow(b, "B (payload with the command)", send_seed=SEED_SPLIT_B,
                      send_bytes=SPLIT_BYTES, already_sent=b_inline, want_eof=True)]
        vh.pump(flows, deadline)
        for f in flows:
            vh.check_flow(self, f, what)
            f.sock.close()
        seeds = {f"2:{port_a}": SEED_SPLIT_A, f"2:{port_b}": SEED_SPLIT_B}
        for i in range(2):
            recv = vh.wait_line(guest, f"split.{i}", "recv", STEP_SECONDS)
            peer = vh.one_line(guest.console(), f"split.{i}", "accepted").fields["peer"]
            self.assertIn(peer, seeds, f"{what}: unknown peer {peer}")
            self.assertEqual((recv.int(), recv.fields["crc32"]),
                             (SPLIT_BYTES, crc(seeds[peer], SPLIT_BYTES)),
                             f"{what}: connection {'A' if seeds[peer] == SEED_SPLIT_A else 'B'}"
                             f" arrived altered (bytes after the newline lost?): {recv!r}")

    def test_stream_6_1(self):
        self.run_guest("6.1")

    def test_stream_6_12(self):
        self.run_guest("6.12")


if __name__ == "__main__":
    vh.main()
