#!/usr/bin/env python3
"""vhost-vsockd routes guest<->guest traffic between the VMs it serves ("sibling VMs",
docs/vsock.md): a guest connecting to another VM's CID reaches that VM's guest when both VMs
share a group, and gets RST at once otherwise.

One test per kernel (6.1, 6.12): ONE daemon serves three VMs given with repeated --vm, each
with its own vhost-user socket and UDS in the test's temporary directory:

  CID 3  groups=g1   the connecting side: runs every check below
  CID 4  groups=g1   its sibling: listens for guest 3
  CID 5  groups=g2   another group: listens on the port guest 3 tries, so a connection the
                     daemon wrongly routed would be accepted, not refused

The three guests boot at once. Guest 3's script runs, in order:

  unknown  connect(99, P): no VM has that CID; fails with ECONNRESET in under a second
           (vsock-tool measures the connect(); the guest's own connect timeout is 2 s), and
           the daemon logged the reason "no VM with that CID"
  cross    once guest 5 listens (the host lets guest 3 go on by closing a "go" connection):
           connect(5, P) fails with ECONNRESET in under a second, and the daemon logged the
           reason "the VMs share no group", not "not running": guest 5 is up, and its listener
           then accepts the host's connection as its first and only one. That ends guest 5's
           script, so only two guests share the CPUs for the transfers.
  bidi     once guest 4 listens on all three ports (second "go"): one connection, 4 MiB each
           way at the same time (write sizes 1 B .. 256 KiB), each side's shutdown(SHUT_WR)
           after its last byte, then EOF on both sides. Guest 4 sees guest 3's own address
           (3:<the port guest 3 sent from>): the header goes across as written.
  half     guest 3 sends 4 MiB and shuts down its sending side; guest 4 reads to EOF, then
           sends 4 MiB back over the half-closed connection, which guest 3 reads to EOF
  multi    16 concurrent connections (all connected before any data moves), each
           send-recv 256 KiB that guest 4 echoes; 16 distinct source ports at guest 4
  done     an empty connection to guest 4: only then does guest 4's script end (a guest
           powers off at once, dropping what its kernel had not yet handed to the device)

Every byte is checked: each guest's vsock-tool prints CRC-32s of what it sent and received,
compared with the host's generator. At the end every script succeeded, and the daemon
outlived the guests and exits 0 on SIGTERM.

usage: test_vsock_siblings.py --daemon-bin PATH/vhost-vsockd --vsock-tool PATH [--log-dir DIR]
"""

import contextlib
import re
import socket
import sys
import time
import unittest

import harness
import vsock_host as vh
from vsock_host import Deadline

MiB = 1 << 20
KiB = 1 << 10
CID_A, CID_B, CID_C = 3, 4, 5  # A and B in group g1, C in g2
GROUPS = {CID_A: "g1", CID_B: "g1", CID_C: "g2"}
CID_UNKNOWN = 99
BIDI = 4 * MiB
HALF = 4 * MiB
CONNS = 16
MULTI_BYTES = 256 * KiB

PORT_UNKNOWN, PORT_CROSS, PORT_BIDI, PORT_HALF, PORT_MULTI, PORT_DONE = range(5400, 5406)
# Host listeners of guest 3 (UDS3_<port>): closing the accepted connection lets it go on.
PORT_GO_CROSS, PORT_GO_SIBLING = 7400, 7401
# What each guest sends (all different, so an echo or a loop-back inside the daemon cannot
# pass for a transfer).
SEED_BIDI_A, SEED_BIDI_B, SEED_HALF_A, SEED_HALF_B = 601, 602, 603, 604
SEED_MULTI = 1000  # connection i: seed + i

STEP_SECONDS = 60
TRANSFER_SECONDS = 120
# A refused connect must fail faster than this (the guest's own connect timeout is 2 s).
REFUSED_MS = 1000

SCRIPT_A = vh.script([
    "run vsock-tool cid --tag cid",
    f"run vsock-tool connect {CID_UNKNOWN} {PORT_UNKNOWN} expect-reset --tag unknown",
    f"run vsock-tool connect 2 {PORT_GO_CROSS} cat --tag go-cross",
    f"run vsock-tool connect {CID_C} {PORT_CROSS} expect-reset --tag cross",
    f"run vsock-tool connect 2 {PORT_GO_SIBLING} cat --tag go-sibling",
    f"run vsock-tool connect {CID_B} {PORT_BIDI} send-recv {BIDI} --seed {SEED_BIDI_A}"
    " --tag bidi",
    f"run vsock-tool connect {CID_B} {PORT_HALF} send {HALF} --seed {SEED_HALF_A} --tag half",
    f"run vsock-tool connect {CID_B} {PORT_MULTI} --count {CONNS} send-recv {MULTI_BYTES}"
    f" --seed {SEED_MULTI} --tag multi",
    f"run vsock-tool connect {CID_B} {PORT_DONE} send 0 --tag done",
])
# Guest 4 listens on all its ports at once, so guest 3 needs one "go" for them all. A guest
# powers off as soon as its script ends, and what its kernel still holds for sending is lost
# then (close() does not wait for delivery; 16 echoes leave up to 16 x 256 KiB queued): so
# guest 4 ends only once guest 3 says, on the `done` connection, that it received everything.
SCRIPT_B = vh.script([
    "run vsock-tool cid --tag cid",
    f"vsock-tool listen {PORT_BIDI} send-recv {BIDI} --seed {SEED_BIDI_B} --tag bidi & bidi=$!",
    f"vsock-tool listen {PORT_HALF} recv-send {HALF} --seed {SEED_HALF_B} --tag half & half=$!",
    f"vsock-tool listen {PORT_MULTI} --count {CONNS} echo --tag multi & multi=$!",
    f"vsock-tool listen {PORT_DONE} recv --tag done & fin=$!",
    'run wait "$bidi"',
    'run wait "$half"',
    'run wait "$multi"',
    'run wait "$fin"',
])
SCRIPT_C = vh.script([
    "run vsock-tool cid --tag cid",
    f"run vsock-tool listen {PORT_CROSS} recv --tag target",
])
SCRIPTS = {CID_A: SCRIPT_A, CID_B: SCRIPT_B, CID_C: SCRIPT_C}


def crc(seed, n):
    return vh.crc_hex(vh.stream_crc(seed, n))


def note(text):
    """A figure for the log (never asserted)."""
    print(f"e2e: {text}", file=sys.stderr, flush=True)


class Vm:
    """One VM of the daemon: its sockets in the rig's directory and, once started, its
    guest."""

    def __init__(self, rig, cid):
        self.cid = cid
        self.vhost_socket = str(rig.dir / f"vm{cid}.vhost")
        self.uds = str(rig.dir / f"vm{cid}.vsock")
        self.guest = None

    def vm_arg(self):
        return (f"guest-cid={self.cid},socket={self.vhost_socket},uds-path={self.uds},"
                f"groups={GROUPS[self.cid]}")

    def listen(self, rig, port):
        """A host listener on UDS_<port>, where this VM's guest connections to port reach."""
        s = rig.track(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        s.bind(f"{self.uds}_{port}")
        s.listen(4)
        return s


class SiblingsTest(unittest.TestCase):
    def lines(self, vms, tag):
        """Every guest's lines of `tag` (and of its --count children), for a failure
        message."""
        out = []
        for vm in vms:
            found = [line for line in vh.vt_lines(vm.guest.console())
                     if line.tag == tag or line.tag.startswith(f"{tag}.")]
            out.append(f"guest {vm.cid}:\n  " + ("\n  ".join(map(repr, found)) or "(none)"))
        return "\n".join(out)

    def wait_lines(self, what, vms, waits):
        """Waits for each (vm, tag, event, timeout) of `waits` in turn and returns the lines;
        a failure shows the lines of both guests for each tag."""
        found = []
        for vm, tag, event, timeout in waits:
            try:
                found.append(vh.wait_line(vm.guest, tag, event, timeout))
            except AssertionError as e:
                raise AssertionError(f"{what}: {e}\n--- both guests' lines of {tag}:\n"
                                     f"{self.lines(vms, tag.split('.')[0])}") from None
        return found

    def assert_data(self, what, vms, vm, tag, event, index, value, seed):
        """The `index`-th `VT <tag> <event>` line of the guest is `value` bytes of the seed."""
        got = [(line.int(), line.fields.get("crc32"))
               for line in vh.vt_lines(vm.guest.console(), tag, event)]
        expected = (value, crc(seed, value))
        self.assertEqual(got[index] if index < len(got) else None, expected,
                         f"{what}: guest {vm.cid}'s '{tag} {event}' #{index} is not {value} "
                         f"bytes of seed {seed} (crc32={expected[1]}):\n"
                         f"{self.lines(vms, tag.split('.')[0])}")

    def assert_eof(self, what, vms, vm, tag):
        """Every read loop of the guest's `tag` ended at EOF (no error)."""
        ends = vh.vt_lines(vm.guest.console(), tag, "end")
        self.assertTrue(ends and all(end.values == ["eof"] for end in ends),
                        f"{what}: guest {vm.cid}'s reads of {tag} did not all end at the other "
                        f"side's shutdown(SHUT_WR):\n{self.lines(vms, tag.split('.')[0])}")

    def refused_fast(self, guest, tag, what):
        """The guest's `VT <tag> connect-failed` says ECONNRESET, in under REFUSED_MS."""
        # Either outcome of the connect() ends the wait: a connection must not be waited for.
        guest.wait_for(rf"^VT {re.escape(tag)} (connected|connect-failed) ", STEP_SECONDS)
        line = [line for line in vh.vt_lines(guest.console(), tag)
                if line.event in ("connected", "connect-failed")][0]
        self.assertEqual(line.event, "connect-failed",
                         f"{what}: the connect succeeded, it must be refused: {line!r}")
        self.assertEqual(line.fields["errno"], "ECONNRESET",
                         f"{what}: expected an RST from the daemon, the guest got {line!r}")
        self.assertLess(int(line.fields["ms"]), REFUSED_MS,
                        f"{what}: the RST came only after {line.fields['ms']} ms")
        note(f"{what}: ECONNRESET after {line.fields['ms']} ms")

    def refusal_logged(self, daemon, reason, dst_cid, port, what):
        """The daemon logged its refusal of guest 3's REQUEST to dst_cid:port with `reason`
        (it logs before it queues the RST, so the line is there once the guest saw it)."""
        pattern = (rf"cid {CID_A}: {re.escape(reason)}: REQUEST {CID_A}:\d+ -> "
                   rf"{dst_cid}:{port} ")
        self.assertRegex(daemon.log(), pattern,
                         f"{what}: the daemon did not log the refusal with the reason "
                         f"'{reason}'; its log:\n{harness.tail(daemon.log())}")

    def release(self, listener, waits, what):
        """Guest 3's `connect 2 <go port> cat` waits until the host closes it: accepts it,
        waits for the `(guest, tag)` listeners of `waits`, then closes."""
        go = vh.accept(listener, Deadline(STEP_SECONDS), f"{what}: guest {CID_A}'s go "
                       "connection")
        try:
            for guest, tag in waits:
                vh.wait_line(guest, tag, "listening", STEP_SECONDS)
        finally:
            go.close()

    # ---------------------------------------------------------------------------------------

    def run_siblings(self, kernel):
        started = time.monotonic()
        image = harness.GuestImage(kernel)
        with vh.VsockRig(f"siblings-{kernel}") as rig:
            vms = {cid: Vm(rig, cid) for cid in (CID_A, CID_B, CID_C)}
            a, b, c = vms[CID_A], vms[CID_B], vms[CID_C]
            go_cross = a.listen(rig, PORT_GO_CROSS)
            go_sibling = a.listen(rig, PORT_GO_SIBLING)
            argv = [vh.daemon_binary()]
            for vm in vms.values():
                argv += ["--vm", vm.vm_arg()]
            # Leaving the block stops the guests (QEMU, by PID) before the daemon.
            with harness.Daemon(argv, name=f"vhost-vsockd-siblings-{kernel}") as daemon, \
                    contextlib.ExitStack() as guests:
                # All three boot at once.
                for vm in vms.values():
                    vm.guest = guests.enter_context(harness.Guest(
                        image, SCRIPTS[vm.cid], chardev_sockets=[vm.vhost_socket],
                        name=f"vsock-siblings-{kernel}-cid{vm.cid}"))
                for vm in vms.values():
                    vm.guest.wait_booted()
                    vh.wait_line(vm.guest, "tool", "version", STEP_SECONDS)
                    vh.check_guest_tool(vm.guest.console())
                    self.assertEqual(vh.wait_line(vm.guest, "cid", "cid", STEP_SECONDS).int(),
                                     vm.cid, f"{kernel}: guest {vm.cid}'s CID is not its "
                                     "--vm guest-cid")
                note(f"{kernel}: three guests up {time.monotonic() - started:.1f} s after start")

                what = f"{kernel} unknown: guest {CID_A} connects to CID {CID_UNKNOWN} (no VM)"
                self.refused_fast(a.guest, "unknown", what)
                self.refusal_logged(daemon, "no VM with that CID", CID_UNKNOWN, PORT_UNKNOWN,
                                    what)
                self.cross_group(kernel, rig, daemon, a, c, go_cross)

                self.release(go_sibling, [(b.guest, t) for t in ("bidi", "half", "multi", "done")],
                             f"{kernel} siblings")
                self.bidi(kernel, a, b)
                self.half(kernel, a, b)
                self.multi(kernel, a, b)

                for vm in (a, b):
                    self.assertEqual(vm.guest.wait_exit(STEP_SECONDS), 0,
                                     f"{kernel}: guest {vm.cid}: QEMU's exit status")
                    self.assertEqual(vm.guest.result(), 0,
                                     f"{kernel}: guest {vm.cid}'s script failed:\n"
                                     + vh.tag_lines(vm.guest.console(), "script"))
                self.assertTrue(daemon.alive(), f"{kernel}: vhost-vsockd died:\n"
                                + harness.tail(daemon.log()))
                self.assertEqual(daemon.stop(), 0, f"{kernel}: vhost-vsockd's exit status on "
                                 f"SIGTERM:\n{harness.tail(daemon.log())}")
        note(f"{kernel}: siblings test took {time.monotonic() - started:.1f} s")

    def cross_group(self, kernel, rig, daemon, a, c, go_listener):
        what = (f"{kernel} cross: guest {CID_A} ({GROUPS[CID_A]}) connects to guest {CID_C} "
                f"({GROUPS[CID_C]}), which listens on port {PORT_CROSS}")
        # Guest 5 is running and listening before guest 3 tries: the refusal can only be the
        # groups' doing.
        self.release(go_listener, [(c.guest, "target")], what)
        self.refused_fast(a.guest, "cross", what)
        self.refusal_logged(daemon, "the VMs share no group", CID_C, PORT_CROSS, what)
        # Guest 5 was up all along: a host connection reaches its listener, whose first
        # connection must be this one (not guest 3's). Closing it ends guest 5's script.
        sock, host_port = vh.hybrid_connect(c.uds, PORT_CROSS, Deadline(
            STEP_SECONDS, f"{what}: host CONNECT to guest {CID_C} afterwards"))
        rig.track(sock)
        sock.close()
        accepted = vh.wait_line(c.guest, "target", "accepted", STEP_SECONDS)
        self.assertEqual(accepted.fields["peer"], f"2:{host_port}",
                         f"{what}: guest {CID_C}'s listener accepted a connection that is not "
                         f"the host's:\n{vh.tag_lines(c.guest.console(), 'target')}")
        self.assertEqual(c.guest.wait_exit(STEP_SECONDS), 0,
                         f"{kernel}: guest {CID_C}: QEMU's exit status")
        self.assertEqual(c.guest.result(), 0, f"{kernel}: guest {CID_C}'s script failed:\n"
                         + vh.tag_lines(c.guest.console(), "script"))

    def bidi(self, kernel, a, b):
        what = (f"{kernel} bidi: guest {CID_A} -> guest {CID_B} (both {GROUPS[CID_A]}), "
                f"{BIDI} bytes each way at once")
        started = time.monotonic()
        # `end` follows `recv` once the read loop saw EOF with everything written.
        connected, accepted, _, _ = self.wait_lines(what, (a, b), [
            (a, "bidi", "connected", STEP_SECONDS), (b, "bidi", "accepted", STEP_SECONDS),
            (a, "bidi", "end", TRANSFER_SECONDS), (b, "bidi", "end", TRANSFER_SECONDS)])
        note(f"{what}: done in {time.monotonic() - started:.1f} s")
        self.assertEqual(connected.fields["peer"], f"{CID_B}:{PORT_BIDI}",
                         f"{what}: guest {CID_A}'s connection: {connected!r}")
        # getsockname() of a connected socket names CID -1 (VMADDR_CID_ANY, its implicit
        # bind) and the port it sends from: guest 4 must see that port with CID 3.
        port_a = connected.fields["local"].rsplit(":", 1)[1]
        self.assertEqual((accepted.fields["peer"], accepted.fields["local"]),
                         (f"{CID_A}:{port_a}", f"{CID_B}:{PORT_BIDI}"),
                         f"{what}: guest {CID_B} must see guest {CID_A}'s own address "
                         f"({connected!r}): {accepted!r}")
        for vm, sent, received in ((a, SEED_BIDI_A, SEED_BIDI_B), (b, SEED_BIDI_B, SEED_BIDI_A)):
            self.assert_data(what, (a, b), vm, "bidi", "sent", 0, BIDI, sent)
            self.assert_data(what, (a, b), vm, "bidi", "recv", 0, BIDI, received)
            self.assert_eof(what, (a, b), vm, "bidi")

    def half(self, kernel, a, b):
        what = (f"{kernel} half: guest {CID_A} sends {HALF} bytes and shuts down its side, "
                f"guest {CID_B} reads to EOF, then answers {HALF} bytes")
        started = time.monotonic()
        # Guest 3 (send): sent, then reads the answer to EOF. Guest 4 (recv-send): reads to
        # EOF, sends, then reads again (EOF at once).
        self.wait_lines(what, (a, b), [(b, "half", "recv", TRANSFER_SECONDS),
                                       (b, "half", "sent", TRANSFER_SECONDS),
                                       (a, "half", "end", TRANSFER_SECONDS)])
        try:
            b.guest.wait_for(r"(?s)^VT half end .*^VT half end ", STEP_SECONDS)
        except AssertionError as e:
            raise AssertionError(f"{what}: guest {CID_B}'s read after its answer: {e}\n"
                                 f"--- both guests' lines of half:\n{self.lines((a, b), 'half')}"
                                 ) from None
        note(f"{what}: done in {time.monotonic() - started:.1f} s")
        self.assert_data(what, (a, b), a, "half", "sent", 0, HALF, SEED_HALF_A)
        self.assert_data(what, (a, b), b, "half", "recv", 0, HALF, SEED_HALF_A)
        self.assert_data(what, (a, b), b, "half", "sent", 0, HALF, SEED_HALF_B)
        self.assert_data(what, (a, b), a, "half", "recv", 0, HALF, SEED_HALF_B)
        for vm in (a, b):
            self.assert_eof(what, (a, b), vm, "half")

    def multi(self, kernel, a, b):
        what = (f"{kernel} multi: {CONNS} concurrent connections guest {CID_A} -> guest "
                f"{CID_B}, {MULTI_BYTES} bytes each, echoed")
        started = time.monotonic()
        self.wait_lines(what, (a, b), [(a, f"multi.{i}", "end", TRANSFER_SECONDS)
                                       for i in range(CONNS)]
                        + [(b, f"multi.{i}", "echo", STEP_SECONDS) for i in range(CONNS)])
        note(f"{what}: done in {time.monotonic() - started:.1f} s")
        ports = set()
        for i in range(CONNS):
            tag = f"multi.{i}"
            self.assert_data(what, (a, b), a, tag, "sent", 0, MULTI_BYTES, SEED_MULTI + i)
            self.assert_data(what, (a, b), a, tag, "recv", 0, MULTI_BYTES, SEED_MULTI + i)
            self.assert_eof(what, (a, b), a, tag)
            connected = vh.one_line(a.guest.console(), tag, "connected")
            ports.add(connected.fields["local"].rsplit(":", 1)[1])
            echo = vh.one_line(b.guest.console(), tag, "echo")
            self.assertEqual(echo.int(), MULTI_BYTES, f"{what}: guest {CID_B}: {echo!r}")
        self.assertEqual(len(ports), CONNS, f"{what}: guest {CID_A}'s source ports repeat: "
                         f"{sorted(ports)}")
        peers = {vh.one_line(b.guest.console(), f"multi.{i}", "accepted").fields["peer"]
                 for i in range(CONNS)}
        self.assertEqual(peers, {f"{CID_A}:{p}" for p in ports},
                         f"{what}: guest {CID_B}'s peers are not guest {CID_A}'s connections")

    def test_siblings_6_1(self):
        self.run_siblings("6.1")

    def test_siblings_6_12(self):
        self.run_siblings("6.12")


if __name__ == "__main__":
    vh.main()
