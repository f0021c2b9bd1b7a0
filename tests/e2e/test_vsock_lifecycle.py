#!/usr/bin/env python3
"""vhost-vsockd's connection lifecycle with real guests (6.1 and 6.12), where the reference
daemon failed (peers.md §8: no RST anywhere, half-close lost; §4: host sockets closed
before the guest is ready).

test_errors_and_half_close (one guest per kernel):
  refused   a guest connect() to a port without host listener fails with ECONNRESET in under
            a second (vsock-tool measures the connect(); the reference daemon sent no RST and
            the guest timed out after 2 s with ETIMEDOUT)
  nolisten  a host CONNECT to a guest port nobody listens on is closed (EOF) with nothing
            written
  hshut     host shutdown(SHUT_WR): the guest reads all data then EOF, and afterwards still
            sends 1 MiB that the host receives
  gshut     guest shutdown(SHUT_WR): the host reads all data then EOF, and afterwards still
            sends 1 MiB that the guest receives

test_host_connects_before_the_guest_is_up (one guest per kernel): two host apps connect and
  write CONNECT before QEMU even starts. The guest boots without a vsock device, listens on
  one of the two ports, and only then is the device hot-plugged (QMP device_add), so the
  guest's listener exists when its driver comes up. Until then both host sockets must be
  pending (neither answered nor closed); then the listened one gets `OK` and carries 1 MiB,
  the other one is closed.

test_reboot_mid_transfer (one guest per kernel, booting twice): while 1+ MiB moved each way
  on a guest-initiated and a host-initiated connection, and two more connections (one each
  way) sit idle, the guest runs `reboot -f`. The host ends of all four must be closed (EOF or
  an error, not a hang), the bytes that arrived must be an intact prefix, and on the second
  boot the same daemon serves new transfers both ways. The idle connections are the ones only
  the daemon's own reset handling can close: packets of the busy ones reach the new guest
  kernel, which answers them with RST. Each boot asks the host which boot it is over vsock
  (the script given by fw_cfg is the same on both).

usage: test_vsock_lifecycle.py --daemon-bin PATH/vhost-vsockd --vsock-tool PATH [--log-dir DIR]
"""

import socket
import sys
import time
import unittest

import harness
import vsock_host as vh
from vsock_host import Deadline, Flow

CID = 22
MiB = 1 << 20
STEP_SECONDS = 60
TRANSFER_SECONDS = 120
# A refused connect must fail faster than this (the guest's own connect timeout is 2 s).
REFUSED_MS = 1000
# How long the daemon may take to close a host socket once its guest connection is gone.
CLOSE_SECONDS = 30
DAEMON_ARGS = ("--log-level", "debug")

# -- test_errors_and_half_close
PORT_REFUSED, PORT_NOLISTEN, PORT_HSHUT, PORT_GSHUT = 5100, 5101, 5102, 5103
SEED_HSHUT_HOST, SEED_HSHUT_GUEST, SEED_GSHUT_GUEST, SEED_GSHUT_HOST = 201, 202, 203, 204
ERRORS_SCRIPT = vh.script([
    "run vsock-tool cid --tag cid",
    f"run vsock-tool connect 2 {PORT_REFUSED} expect-reset --tag refused",
    f"run vsock-tool listen {PORT_HSHUT} recv-send {MiB} --seed {SEED_HSHUT_GUEST} --tag hshut",
    f"run vsock-tool connect 2 {PORT_GSHUT} send {MiB} --seed {SEED_GSHUT_GUEST} --tag gshut",
])

# -- test_host_connects_before_the_guest_is_up
PORT_EARLY, PORT_EARLY_NONE = 5200, 5201
SEED_EARLY = 301
# The pending connections must outlive this: the guest boots for longer (2+ s under TCG),
# which shows that the connect timeout only starts once the guest's driver is up.
EARLY_CONNECT_TIMEOUT_MS = 2000
EARLY_SCRIPT = vh.script([
    f"run vsock-tool listen {PORT_EARLY} recv --tag early",
    "run vsock-tool cid --tag cid",
])

# -- test_reboot_mid_transfer
PORT_PHASE, PORT_GO = 7100, 7101
PORT_G2H_CUT, PORT_H2G_CUT, PORT_G2H_AFTER, PORT_H2G_AFTER = 7000, 6000, 7001, 6001
PORT_G2H_IDLE, PORT_H2G_IDLE = 7002, 6002
SEED_G2H_CUT, SEED_H2G_CUT, SEED_G2H_AFTER, SEED_H2G_AFTER = 401, 411, 402, 412
AFTER_BYTES = 4 * MiB
UNBOUNDED = 1 << 40
REBOOT_SCRIPT = vh.script([
    # Which boot this is, from the host (vsock-tool cat: the data on stdout, its VT lines on
    # the console).
    f"boot=$(vsock-tool connect 2 {PORT_PHASE} cat --tag phase)",
    'echo "VT script boot $boot"',
    'case "$boot" in',
    "1)",
    f"  vsock-tool listen {PORT_H2G_CUT} recv --tag h2g-cut &",
    f"  vsock-tool listen {PORT_H2G_IDLE} recv --tag h2g-idle &",
    f"  vsock-tool connect 2 {PORT_G2H_CUT} send 1T --seed {SEED_G2H_CUT} --tag g2h-cut &",
    f"  vsock-tool connect 2 {PORT_G2H_IDLE} recv --tag g2h-idle &",
    # Returns when the host closes it: both transfers are then under way.
    f"  run vsock-tool connect 2 {PORT_GO} cat --tag go",
    '  echo "VT script rebooting"',
    "  reboot -f",
    "  ;;",
    "2)",
    "  run vsock-tool cid --tag cid",
    f"  run vsock-tool connect 2 {PORT_G2H_AFTER} send {AFTER_BYTES} --seed {SEED_G2H_AFTER}"
    " --tag g2h-after",
    f"  run vsock-tool listen {PORT_H2G_AFTER} recv --tag h2g-after",
    "  ;;",
    "*)",
    '  echo "VT script unexpected-boot $boot"',
    "  fails=$((fails + 1))",
    "  ;;",
    "esac",
])


def crc(seed, n):
    return vh.crc_hex(vh.stream_crc(seed, n))


def note(text):
    """A figure for the log (never asserted)."""
    print(f"e2e: {text}", file=sys.stderr, flush=True)


class LifecycleTest(unittest.TestCase):
    def guest_line(self, guest, tag, event, value, crc_hex, what):
        line = vh.wait_line(guest, tag, event, STEP_SECONDS)
        self.assertEqual((line.int(), line.fields.get("crc32")), (value, crc_hex),
                         f"{what}: the guest reports {line!r}, expected {value} bytes with "
                         f"crc32={crc_hex}; its lines:\n{vh.tag_lines(guest.console(), tag)}")

    def check_cid(self, guest, tag):
        self.assertEqual(vh.wait_line(guest, "cid", "cid", STEP_SECONDS).int(), CID,
                         f"{tag}: the guest's CID is not --guest-cid {CID}")

    # ---------------------------------------------------------------------------------------

    def errors_and_half_close(self, tag):
        with vh.VsockRig(f"errors-{tag}") as rig:
            gshut_listener = rig.listen(PORT_GSHUT)
            with rig.daemon(CID, *DAEMON_ARGS) as daemon, \
                    harness.Guest(harness.GuestImage(tag), ERRORS_SCRIPT,
                                  chardev_sockets=[rig.vhost_socket],
                                  name=f"vsock-errors-{tag}") as guest:
                guest.wait_booted()
                vh.wait_line(guest, "tool", "version", STEP_SECONDS)
                vh.check_guest_tool(guest.console())
                self.check_cid(guest, tag)
                self.refused(tag, guest)
                self.no_listener(tag, rig, guest)
                self.host_half_close(tag, rig, guest)
                self.guest_half_close(tag, rig, guest, gshut_listener)
                vh.finish_guest(self, guest, daemon, tag)

    def refused(self, tag, guest):
        what = f"{tag} refused: guest connect to port {PORT_REFUSED}, no host listener"
        line = vh.wait_line(guest, "refused", "connect-failed", STEP_SECONDS)
        self.assertEqual(line.fields["errno"], "ECONNRESET",
                         f"{what}: expected an RST from the daemon, the guest got {line!r}")
        self.assertLess(int(line.fields["ms"]), REFUSED_MS,
                        f"{what}: the RST came only after {line.fields['ms']} ms")
        note(f"{what}: ECONNRESET after {line.fields['ms']} ms")

    def no_listener(self, tag, rig, guest):
        what = f"{tag} nolisten: host CONNECT {PORT_NOLISTEN}, no guest listener"
        # The guest is up (its next listener is there), so the REQUEST reaches its kernel.
        vh.wait_line(guest, "hshut", "listening", STEP_SECONDS)
        with self.assertRaises(vh.HandshakeClosed, msg=f"{what}: the daemon answered OK") as cm:
            sock, _ = vh.hybrid_connect(rig.uds, PORT_NOLISTEN,
                                        Deadline(STEP_SECONDS, f"{what}: waiting for EOF"))
            sock.close()
        self.assertEqual(cm.exception.received, b"", f"{what}: {cm.exception}")
        note(f"{what}: EOF after {cm.exception.seconds:.2f} s")

    def host_half_close(self, tag, rig, guest):
        what = f"{tag} hshut: host shutdown(SHUT_WR) after {MiB} bytes"
        sock, _ = vh.hybrid_connect(rig.uds, PORT_HSHUT, Deadline(STEP_SECONDS))
        rig.track(sock)
        # The guest answers only after it read EOF: the host's data arriving back proves the
        # EOF reached it and the connection still carries guest->host data.
        flow = Flow(sock, "hshut", send_seed=SEED_HSHUT_HOST, send_bytes=MiB,
                    expect_seed=SEED_HSHUT_GUEST, expect_bytes=MiB, want_eof=True)
        vh.pump([flow], Deadline(TRANSFER_SECONDS, f"{what}: the guest must read EOF, then "
                                 "answer"))
        vh.check_flow(self, flow, what)
        sock.close()
        recv = vh.vt_lines(guest.console(), "hshut", "recv")
        self.assertTrue(recv, f"{what}: the guest reported no recv")
        self.assertEqual((recv[0].int(), recv[0].fields["crc32"]),
                         (MiB, crc(SEED_HSHUT_HOST, MiB)), f"{what}: {recv[0]!r}")
        self.guest_line(guest, "hshut", "sent", MiB, crc(SEED_HSHUT_GUEST, MiB), what)

    def guest_half_close(self, tag, rig, guest, listener):
        what = f"{tag} gshut: guest shutdown(SHUT_WR) after {MiB} bytes"
        conn = rig.track(vh.accept(listener, Deadline(STEP_SECONDS), "the guest's connection"))
        flow = Flow(conn, "gshut", expect_seed=SEED_GSHUT_GUEST, expect_bytes=MiB,
                    want_eof=False, shut_wr=False)
        vh.pump([flow], Deadline(TRANSFER_SECONDS, what))
        vh.check_flow(self, flow, what)
        vh.expect_eof(conn, Deadline(STEP_SECONDS),
                      f"{what}: the guest's shutdown(SHUT_WR), after all data arrived intact,")
        # The guest still reads: the host's answer after the EOF must reach it.
        answer = Flow(conn, "gshut answer", send_seed=SEED_GSHUT_HOST, send_bytes=MiB,
                      want_eof=False)
        vh.pump([answer], Deadline(TRANSFER_SECONDS, f"{what}: the host's answer"))
        vh.check_flow(self, answer, what)
        conn.close()
        self.guest_line(guest, "gshut", "sent", MiB, crc(SEED_GSHUT_GUEST, MiB), what)
        self.guest_line(guest, "gshut", "recv", MiB, crc(SEED_GSHUT_HOST, MiB),
                        f"{what}: the host's answer after the half-close")

    def test_errors_and_half_close_6_1(self):
        self.errors_and_half_close("6.1")

    def test_errors_and_half_close_6_12(self):
        self.errors_and_half_close("6.12")

    # ---------------------------------------------------------------------------------------

    def host_connects_first(self, tag):
        what = f"{tag} early: host connected before the guest was up"
        with vh.VsockRig(f"early-{tag}") as rig:
            with rig.daemon(CID, "--connect-timeout-ms", str(EARLY_CONNECT_TIMEOUT_MS),
                            *DAEMON_ARGS) as daemon:
                deadline = Deadline(STEP_SECONDS)
                early = rig.track(vh.connect_unix(rig.uds, socket.SOCK_STREAM, deadline))
                early.sendall(f"CONNECT {PORT_EARLY}\n".encode())
                orphan = rig.track(vh.connect_unix(rig.uds, socket.SOCK_STREAM, deadline))
                orphan.sendall(f"CONNECT {PORT_EARLY_NONE}\n".encode())
                connected_at = time.monotonic()
                qmp = vh.Qmp(str(rig.dir / "qmp.sock"))
                rig.on_close(qmp.close)
                # No vsock device at boot: only a hot-plug slot, the vhost-user chardev (QEMU
                # connects to the daemon at start-up) and QMP.
                extra = ["-device", "pcie-root-port,id=rp0,chassis=1",
                         "-chardev", f"socket,id=vu0,path={rig.vhost_socket}", *qmp.qemu_args()]
                with harness.Guest(harness.GuestImage(tag), EARLY_SCRIPT, chardev_sockets=[],
                                   extra_qemu_args=extra, name=f"vsock-early-{tag}") as guest:
                    qmp.accept(Deadline(STEP_SECONDS))
                    guest.wait_booted()
                    vh.wait_line(guest, "tool", "version", STEP_SECONDS)
                    vh.check_guest_tool(guest.console())
                    vh.wait_line(guest, "early", "listening", STEP_SECONDS)
                    waited = time.monotonic() - connected_at
                    for sock, port in ((early, PORT_EARLY), (orphan, PORT_EARLY_NONE)):
                        self.assertFalse(vh.readable_now(sock),
                                         f"{what}: CONNECT {port} was answered or closed "
                                         f"after {waited:.1f} s, while the guest had no vsock "
                                         "device yet: it must wait for the guest")
                    note(f"{what}: both connections pending for {waited:.1f} s before the "
                         f"device exists (--connect-timeout-ms {EARLY_CONNECT_TIMEOUT_MS})")
                    qmp.execute("device_add", Deadline(STEP_SECONDS),
                                driver="vhost-user-vsock-pci", chardev="vu0", bus="rp0",
                                id="vsock0")
                    plugged_at = time.monotonic()
                    host_port = vh.hybrid_finish(early, PORT_EARLY, Deadline(
                        STEP_SECONDS, f"{what}: OK once the guest's driver is up"))
                    note(f"{what}: OK {time.monotonic() - plugged_at:.2f} s after device_add")
                    flow = Flow(early, "early", send_seed=SEED_EARLY, send_bytes=MiB,
                                want_eof=True)
                    vh.pump([flow], Deadline(TRANSFER_SECONDS, what))
                    vh.check_flow(self, flow, what)
                    early.close()
                    self.guest_line(guest, "early", "recv", MiB, crc(SEED_EARLY, MiB), what)
                    accepted = vh.one_line(guest.console(), "early", "accepted")
                    self.assertEqual(accepted.fields["peer"], f"2:{host_port}", what)
                    discarded, how = vh.wait_closed(orphan, Deadline(
                        CLOSE_SECONDS, f"{what}: CONNECT {PORT_EARLY_NONE} (no guest listener)"))
                    self.assertEqual(discarded, 0, f"{what}: CONNECT {PORT_EARLY_NONE} (no "
                                     f"guest listener) got {discarded} bytes before closing")
                    note(f"{what}: CONNECT {PORT_EARLY_NONE} without listener ended with {how}")
                    self.check_cid(guest, tag)
                    vh.finish_guest(self, guest, daemon, tag)

    def test_host_connects_before_the_guest_is_up_6_1(self):
        self.host_connects_first("6.1")

    def test_host_connects_before_the_guest_is_up_6_12(self):
        self.host_connects_first("6.12")

    # ---------------------------------------------------------------------------------------

    def tell_boot(self, listener, number):
        """Answers the guest's "which boot is this" connection."""
        conn = vh.accept(listener, Deadline(STEP_SECONDS), f"boot {number}'s phase request")
        conn.sendall(str(number).encode())
        conn.close()

    def reboot_mid_transfer(self, tag):
        what = f"{tag} reboot"
        with vh.VsockRig(f"reboot-{tag}") as rig:
            listeners = {p: rig.listen(p) for p in
                         (PORT_PHASE, PORT_GO, PORT_G2H_CUT, PORT_G2H_IDLE, PORT_G2H_AFTER)}
            with rig.daemon(CID, *DAEMON_ARGS) as daemon, \
                    harness.Guest(harness.GuestImage(tag), REBOOT_SCRIPT,
                                  chardev_sockets=[rig.vhost_socket], reboot=True,
                                  name=f"vsock-reboot-{tag}") as guest:
                guest.wait_booted()
                vh.wait_line(guest, "tool", "version", STEP_SECONDS)
                vh.check_guest_tool(guest.console())
                self.tell_boot(listeners[PORT_PHASE], 1)

                # Both directions under way, and one idle connection each way...
                vh.wait_line(guest, "h2g-cut", "listening", STEP_SECONDS)
                h2g_sock, _ = vh.hybrid_connect(rig.uds, PORT_H2G_CUT, Deadline(STEP_SECONDS))
                rig.track(h2g_sock)
                vh.wait_line(guest, "h2g-idle", "listening", STEP_SECONDS)
                h2g_idle, _ = vh.hybrid_connect(rig.uds, PORT_H2G_IDLE, Deadline(STEP_SECONDS))
                rig.track(h2g_idle)
                g2h_sock = rig.track(vh.accept(listeners[PORT_G2H_CUT], Deadline(STEP_SECONDS),
                                               "the guest's transfer connection"))
                g2h_idle = rig.track(vh.accept(listeners[PORT_G2H_IDLE], Deadline(STEP_SECONDS),
                                               "the guest's idle connection"))
                go = rig.track(vh.accept(listeners[PORT_GO], Deadline(STEP_SECONDS),
                                         "the guest's go connection"))
                h2g = Flow(h2g_sock, "host->guest", send_seed=SEED_H2G_CUT,
                           send_bytes=UNBOUNDED, shut_wr=False, want_eof=True)
                g2h = Flow(g2h_sock, "guest->host", expect_seed=SEED_G2H_CUT, want_eof=True,
                           shut_wr=False)
                vh.pump([h2g, g2h], Deadline(TRANSFER_SECONDS, f"{what}: 1 MiB each way "
                                             "before the reboot"),
                        until=lambda: h2g.sent >= MiB and g2h.received >= MiB)
                # ...then the guest reboots, while the host keeps both transfers going.
                go.close()
                vh.wait_line(guest, "script", "rebooting", STEP_SECONDS)
                rebooted_at = time.monotonic()
                closing = Deadline(CLOSE_SECONDS, f"{what}: the daemon must close the host "
                                   "ends of the interrupted connections")
                vh.pump([h2g, g2h], closing)
                note(f"{what}: busy connections closed within "
                     f"{time.monotonic() - rebooted_at:.2f} s of the reboot; host->guest "
                     f"ended with {h2g.error or 'EOF'} after {h2g.sent} bytes, guest->host "
                     f"with {g2h.error or 'EOF'} after {g2h.received} bytes")
                for sock, name in ((h2g_idle, "host-initiated"), (g2h_idle, "guest-initiated")):
                    try:
                        discarded, how = vh.wait_closed(sock, closing)
                    except AssertionError as e:
                        raise AssertionError(f"{what}: the idle {name} connection of the "
                                             f"rebooted guest: {e}") from None
                    self.assertEqual(discarded, 0, f"{what}: idle {name} connection")
                    sock.close()
                note(f"{what}: idle connections closed within "
                     f"{time.monotonic() - rebooted_at:.2f} s of the reboot")
                self.assertIsNone(g2h.verifier.mismatch, f"{what}: the guest's data before "
                                  f"the reboot arrived altered: {g2h.describe()}")
                h2g_sock.close()
                g2h_sock.close()

                # The second boot: the same daemon serves new transfers both ways.
                guest.wait_for(r"(?s)^E2E-BOOT-OK kernel=\S+$.*^E2E-BOOT-OK kernel=\S+$",
                               STEP_SECONDS)
                self.tell_boot(listeners[PORT_PHASE], 2)
                self.check_cid(guest, tag)
                after = f"{what}: after the reboot, guest->host {AFTER_BYTES} bytes"
                conn = rig.track(vh.accept(listeners[PORT_G2H_AFTER], Deadline(STEP_SECONDS),
                                           "the guest's connection after the reboot"))
                flow = Flow(conn, "g2h-after", expect_seed=SEED_G2H_AFTER,
                            expect_bytes=AFTER_BYTES, want_eof=False, shut_wr=False)
                vh.pump([flow], Deadline(TRANSFER_SECONDS, after))
                vh.check_flow(self, flow, after)
                conn.close()
                self.guest_line(guest, "g2h-after", "sent", AFTER_BYTES,
                                crc(SEED_G2H_AFTER, AFTER_BYTES), after)
                after = f"{what}: after the reboot, host->guest {AFTER_BYTES} bytes"
                vh.wait_line(guest, "h2g-after", "listening", STEP_SECONDS)
                sock, _ = vh.hybrid_connect(rig.uds, PORT_H2G_AFTER, Deadline(STEP_SECONDS))
                rig.track(sock)
                flow = Flow(sock, "h2g-after", send_seed=SEED_H2G_AFTER, send_bytes=AFTER_BYTES,
                            want_eof=True)
                vh.pump([flow], Deadline(TRANSFER_SECONDS, after))
                vh.check_flow(self, flow, after)
                sock.close()
                self.guest_line(guest, "h2g-after", "recv", AFTER_BYTES,
                                crc(SEED_H2G_AFTER, AFTER_BYTES), after)
                vh.finish_guest(self, guest, daemon, tag)
                self.assertEqual(len(vh.vt_lines(guest.console(), "script", "boot")), 2,
                                 f"{what}: the guest booted other than twice:\n"
                                 + vh.tag_lines(guest.console(), "script"))

    def test_reboot_mid_transfer_6_1(self):
        self.reboot_mid_transfer("6.1")

    def test_reboot_mid_transfer_6_12(self):
        self.reboot_mid_transfer("6.12")


if __name__ == "__main__":
    vh.main()
