#!/usr/bin/env python3
"""Runtime control of vhost-vsockd with real guests: its --control-socket and
`vhost-vsockd ctl` add a VM that then boots and talks to a sibling, change a VM's groups under
a live sibling connection, and remove a VM in the middle of transfers, while the daemon goes on
serving the other VM.

One test per kernel (6.1, 6.12). ONE daemon, started with `--control-socket` and VM A only,
and two guests serve all three scenarios, in this order:

  CID 3  A  given with --vm at start (groups=g1), booted first
  CID 4  B  added at run time with `ctl add` (groups=g1), then booted

  add      `ctl list` shows A "listening" before its QEMU starts; A boots; `ctl add` B:
           `ctl list` shows both, B "listening", its three socket files exist, and a second
           `ctl add` of CID 4 is refused (exit 1). B boots against the new vhost-user socket.
           Then, all CRC-checked in both guests against the host's generator:
             b2a   B connects to A: 4 MiB each way at once (send-recv), EOF on both sides
             a2b   A connects to B: 2 MiB each way at once
             hold  A connects to B: 256 KiB each way, then the connection stays open and idle
                   (vsock-tool's `hold`: no shutdown by either side)
           With hold open, `ctl list`, `ctl stats` and `ctl metrics` agree with what was sent:
           both VMs "running", one front-end served each, each VM's tx and rx byte counters at
           least the payload its guest sent and received, and `stats` of each VM lists the
           hold connection from its own end (ports, peer CID, type) with at least 256 KiB
           counted each way.
  groups   `ctl groups 4 other` with hold open: both ends of hold end (Linux reports an RST
           on an established socket as EOF, see below) within RESET_SECONDS, the daemon then
           counts no sibling connection for either VM, and B's groups are ["other"]. A's next
           connect to B fails with ECONNRESET (logged with its reason and counted as drop
           no_shared_group), although B listens on that port; after `ctl groups 4 g1` the same port accepts A's connection
           as its first, and 1 MiB goes each way.
  remove   Three transfers of 1 GiB that cannot finish: B -> A and A -> B (sibling), and B ->
           the host over B's hybrid UDS (CONNECT), plus hold2, an idle open connection A -> B.
           Once A and B each printed that 1 MiB arrived (vsock-tool --progress) and the host
           read 1 MiB, `ctl stats 4` shows the four connections with at least those byte
           counts; then `ctl remove 4`. When its reply has come, B's vhost-user socket, UDS and
           UDS_seqpacket are gone, `ctl list` shows A only and `ctl stats 4` fails. Within
           RESET_SECONDS: hold2 ends in A (only the daemon's RST can end it: neither guest
           sends on it, whereas A's next packet on a busy connection to the gone B would be
           refused with an RST anyway), A's reader of B's data ends with what arrived an
           intact prefix of B's stream, A's writer to B fails (EPIPE or ECONNRESET) instead of
           waiting for credit forever, and the host's connection to B is closed (EOF or
           ECONNRESET) with an intact prefix. A fresh host -> A connection (CONNECT on A's
           UDS) then moves 1 MiB each way: A's device still serves both its rings (a tx queue
           left waiting for a packet to the removed VM fails here, with "the guest did not
           answer the REQUEST"). A's script ends with status 0, and the daemon exits 0 on
           SIGTERM.

What B's QEMU does once its vhost-user back-end is gone is only observed (a note on stderr
and its log): QEMU 7.2's vhost-user-vsock has no reconnect, the guest's device just stops; the
test stops that QEMU by PID.

A guest sees the daemon's RST on an ESTABLISHED connection as EOF, not as an error: Linux's
virtio_transport_recv_connected() handles RST with virtio_transport_do_close(), which marks
the socket done and shut down both ways without setting sk_err (only an RST answering a
connect gives ECONNRESET). So a reset shows as a read that ends at EOF before the data was
complete (or with an errno), and as a write that fails with EPIPE.

Synchronisation: the guests' scripts wait on "go" connections to host listeners
(`vsock-tool connect 2 <port> cat`), which the host closes when the next step may start; the
host waits for the guests' console lines, for ctl's replies, and for its own sockets, each with
a deadline. Nothing sleeps. `ctl` calls, their exit status and output are kept in
<log-dir>/vhost-vsockd-runtime-<kernel>.ctl.log; the daemon runs with --log-level debug.

usage: test_vsock_runtime.py --daemon-bin PATH/vhost-vsockd --vsock-tool PATH [--log-dir DIR]
"""

import contextlib
import os
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
CID_A, CID_B = 3, 4
GROUP, OTHER = "g1", "other"

B2A_BYTES = 4 * MiB
A2B_BYTES = 2 * MiB
HOLD_BYTES = 256 * KiB
BACK_BYTES = 1 * MiB
FRESH_BYTES = 1 * MiB
# The transfers that B's removal interrupts: far more than can move before it.
BIG = 1 << 30
PROGRESS = 1 * MiB

# Guest ports.
P_B2A, P_A2B, P_HOLD, P_BACK, P_TO_A, P_TO_B, P_HOST_B, P_FRESH, P_HOLD2 = range(5500, 5509)
# Host listeners UDS_<port> of A (and one of B): closing the accepted connection lets the
# guest's script go on.
GO_SIBLING, GO_CROSS, GO_BACK, GO_REMOVE = range(7500, 7504)
GO_REMOVE_B = 7504
# What each side sends (all different, so no echo or loop could pass for a transfer).
S_B2A_A, S_B2A_B, S_A2B_A, S_A2B_B, S_HOLD_A, S_HOLD_B = 701, 702, 703, 704, 705, 706
S_BACK_A, S_BACK_B, S_TO_A, S_TO_B, S_HOST_B, S_FRESH_A, S_FRESH_H = range(707, 714)
S_HOLD2_A, S_HOLD2_B = 714, 715
HOLD2_BYTES = 64 * KiB

STEP_SECONDS = 60
TRANSFER_SECONDS = 120
# A connection the daemon resets ends within milliseconds; without the RST it would never end
# (an established vsock connection has no timeout of its own). A deadline, not a speed.
RESET_SECONDS = 20

SCRIPT_A = vh.script([
    "run vsock-tool cid --tag cid",
    f"vsock-tool listen {P_B2A} send-recv {B2A_BYTES} --seed {S_B2A_A} --tag b2a & b2a=$!",
    f"vsock-tool listen {P_TO_A} recv --progress {PROGRESS} --tag s2recv & s2recv=$!",
    f"vsock-tool listen {P_FRESH} send-recv {FRESH_BYTES} --seed {S_FRESH_A} --tag fresh"
    " & fresh=$!",
    # add: once B is up and listens.
    f"run vsock-tool connect 2 {GO_SIBLING} cat --tag go-sibling",
    f"run vsock-tool connect {CID_B} {P_A2B} send-recv {A2B_BYTES} --seed {S_A2B_A} --tag a2b",
    f"vsock-tool connect {CID_B} {P_HOLD} hold {HOLD_BYTES} --seed {S_HOLD_A} --tag hold"
    " & hold=$!",
    # groups: once B is in another group (and hold has ended).
    f"run vsock-tool connect 2 {GO_CROSS} cat --tag go-cross",
    f"run vsock-tool connect {CID_B} {P_BACK} expect-reset --tag cross",
    # ... and once it is back in g1.
    f"run vsock-tool connect 2 {GO_BACK} cat --tag go-back",
    f"run vsock-tool connect {CID_B} {P_BACK} send-recv {BACK_BYTES} --seed {S_BACK_A}"
    " --tag back",
    # remove: the two sibling transfers fail by design (the host judges their lines).
    f"run vsock-tool connect 2 {GO_REMOVE} cat --tag go-remove",
    f"vsock-tool connect {CID_B} {P_HOLD2} hold {HOLD2_BYTES} --seed {S_HOLD2_A} --tag hold2"
    " & hold2=$!",
    f"vsock-tool connect {CID_B} {P_TO_B} send {BIG} --seed {S_TO_B} --tag s2send & s2send=$!",
    'wait "$s2send"; echo "VT script s2send rc=$?"',
    'wait "$s2recv"; echo "VT script s2recv rc=$?"',
    'run wait "$fresh"',
    'run wait "$b2a"',
    'run wait "$hold"',
    'run wait "$hold2"',
])
# B's script never ends: B is removed in the middle of its transfers, and its QEMU stopped.
SCRIPT_B = vh.script([
    "run vsock-tool cid --tag cid",
    f"vsock-tool listen {P_A2B} send-recv {A2B_BYTES} --seed {S_A2B_B} --tag a2b &",
    f"vsock-tool listen {P_HOLD} hold {HOLD_BYTES} --seed {S_HOLD_B} --tag hold &",
    f"vsock-tool listen {P_BACK} send-recv {BACK_BYTES} --seed {S_BACK_B} --tag back &",
    f"vsock-tool listen {P_TO_B} recv --progress {PROGRESS} --tag s2in &",
    f"vsock-tool listen {P_HOST_B} send {BIG} --seed {S_HOST_B} --tag s2host &",
    f"vsock-tool listen {P_HOLD2} hold {HOLD2_BYTES} --seed {S_HOLD2_B} --tag hold2 &",
    f"run vsock-tool connect {CID_A} {P_B2A} send-recv {B2A_BYTES} --seed {S_B2A_B} --tag b2a",
    f"run vsock-tool connect 2 {GO_REMOVE_B} cat --tag go-remove",
    f"run vsock-tool connect {CID_A} {P_TO_A} send {BIG} --seed {S_TO_A} --tag s2send",
    "wait",
])
B_LISTENERS = ("a2b", "hold", "back", "s2in", "s2host", "hold2")


def crc(seed, n):
    return vh.crc_hex(vh.stream_crc(seed, n))


def note(text):
    """A figure or an observation for the log (never asserted)."""
    print(f"e2e: {text}", file=sys.stderr, flush=True)


def port_of(address):
    """The port of a vsock-tool address `<cid>:<port>`."""
    return int(address.rsplit(":", 1)[1])


class Vm:
    """One VM of the daemon: its paths in the rig's directory and, once booted, its guest."""

    def __init__(self, rig, cid, name):
        self.cid, self.name = cid, name
        self.vhost_socket = str(rig.dir / f"vm{cid}.vhost")
        self.uds = str(rig.dir / f"vm{cid}.vsock")
        self.guest = None

    def vm_arg(self, groups=GROUP):
        return f"guest-cid={self.cid},socket={self.vhost_socket},uds-path={self.uds},groups={groups}"

    def paths(self):
        """Every socket file the daemon binds for this VM."""
        return (self.vhost_socket, self.uds, f"{self.uds}_seqpacket")

    def listen(self, rig, port):
        """A host listener on UDS_<port>: this VM's guest connections to port reach it."""
        s = rig.track(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        s.bind(f"{self.uds}_{port}")
        s.listen(4)
        return s


class RuntimeTest(unittest.TestCase):

    # --- helpers ----------------------------------------------------------------------------

    def lines(self, tag):
        """Both guests' lines of `tag`, for a failure message."""
        out = []
        for vm in self.vms:
            found = (vh.tag_lines(vm.guest.console(), tag) if vm.guest else "(not booted)")
            out.append(f"guest {vm.cid} ({vm.name}):\n  " + found.replace("\n", "\n  "))
        return "\n".join(out)

    def context(self, tag):
        return (f"\n--- both guests' lines of {tag}:\n{self.lines(tag)}"
                f"\n--- the daemon's log, end:\n{harness.tail(self.daemon.log(), 25)}")

    def wait_line(self, what, vm, tag, event, timeout=STEP_SECONDS):
        try:
            return vh.wait_line(vm.guest, tag, event, timeout)
        except AssertionError as e:
            raise AssertionError(f"{what}: {e}{self.context(tag)}") from None

    def wait_regex(self, what, vm, tag, pattern, timeout):
        """Waits for `VT <tag> <pattern>` on the guest's console; returns the elapsed seconds."""
        started = time.monotonic()
        try:
            vm.guest.wait_for(rf"^VT {re.escape(tag)} {pattern}", timeout)
        except AssertionError as e:
            raise AssertionError(f"{what}: {e}{self.context(tag)}") from None
        return time.monotonic() - started

    def one(self, what, vm, tag, event):
        lines = vh.vt_lines(vm.guest.console(), tag, event)
        self.assertEqual(len(lines), 1, f"{what}: guest {vm.cid}: expected one '{tag} {event}' "
                         f"line{self.context(tag)}")
        return lines[0]

    def assert_data(self, what, vm, tag, event, value, seed):
        """Guest `vm`'s only `VT <tag> <event>` line is `value` bytes of the seed's stream."""
        line = self.one(what, vm, tag, event)
        self.assertEqual((line.int(), line.fields.get("crc32")), (value, crc(seed, value)),
                         f"{what}: guest {vm.cid}'s '{tag} {event}' is not {value} bytes of seed "
                         f"{seed}{self.context(tag)}")

    def exchange(self, what, tag, sender, receiver, nbytes, seed_s, seed_r):
        """`sender` connected to `receiver`'s listener and both ran send-recv `nbytes`:
        everything arrived intact both ways, both reads ended at EOF. Returns the
        (connected, accepted) lines."""
        started = time.monotonic()
        connected = self.wait_line(what, sender, tag, "connected")
        accepted = self.wait_line(what, receiver, tag, "accepted")
        for vm in (sender, receiver):
            self.wait_line(what, vm, tag, "end", TRANSFER_SECONDS)
        note(f"{what}: done in {time.monotonic() - started:.1f} s")
        self.assertEqual(connected.fields["peer"], f"{receiver.cid}:{port_of(accepted.fields['local'])}",
                         f"{what}: {connected!r} / {accepted!r}")
        self.assertEqual(accepted.fields["peer"],
                         f"{sender.cid}:{port_of(connected.fields['local'])}",
                         f"{what}: guest {receiver.cid} must see guest {sender.cid}'s own "
                         f"address: {connected!r} / {accepted!r}")
        for vm, sent, received in ((sender, seed_s, seed_r), (receiver, seed_r, seed_s)):
            self.assert_data(what, vm, tag, "sent", nbytes, sent)
            self.assert_data(what, vm, tag, "recv", nbytes, received)
            self.assertEqual(self.one(what, vm, tag, "end").values, ["eof"],
                             f"{what}: guest {vm.cid}'s read did not end at EOF"
                             f"{self.context(tag)}")
        return connected, accepted

    def release(self, listener, what):
        """Accepts a guest's go connection and closes it: the guest's script goes on."""
        conn = vh.accept(listener, Deadline(STEP_SECONDS), f"{what}: the go connection")
        conn.close()

    def vm_entry(self, listing, cid, what):
        found = [vm for vm in listing["vms"] if vm["guest_cid"] == cid]
        self.assertEqual(len(found), 1, f"{what}: `ctl list` has no VM {cid}: {listing}")
        return found[0]

    def assert_cids(self, listing, cids, what):
        self.assertEqual([vm["guest_cid"] for vm in listing["vms"]], list(cids),
                         f"{what}: `ctl list` names other VMs: {listing}")

    def sibling(self, stats, local_port, peer_cid, peer_port, what):
        """The entry of `stats`' sibling_connections with these ends."""
        found = [c for c in stats["sibling_connections"]
                 if (c["local_port"], c["peer_cid"], c["peer_port"]) ==
                 (local_port, peer_cid, peer_port)]
        self.assertEqual(len(found), 1, f"{what}: `ctl stats {stats['guest_cid']}` lists no "
                         f"sibling connection {local_port} -> {peer_cid}:{peer_port}: "
                         f"{stats['sibling_connections']}")
        self.assertEqual(found[0]["type"], "stream", f"{what}: {found[0]}")
        return found[0]

    # --- the test ---------------------------------------------------------------------------

    def run_runtime(self, kernel):
        started = time.monotonic()
        image = harness.GuestImage(kernel)
        binary = vh.daemon_binary()
        with vh.VsockRig(f"runtime-{kernel}") as rig:
            a, b = Vm(rig, CID_A, "A"), Vm(rig, CID_B, "B")
            self.vms = (a, b)
            go = {port: a.listen(rig, port) for port in (GO_SIBLING, GO_CROSS, GO_BACK,
                                                         GO_REMOVE)}
            go[GO_REMOVE_B] = b.listen(rig, GO_REMOVE_B)
            control = str(rig.dir / "control.sock")
            self.ctl = harness.ControlClient(binary, control,
                                             name=f"vhost-vsockd-runtime-{kernel}")
            argv = [binary, "--control-socket", control, "--vm", a.vm_arg(),
                    "--log-level", "debug"]
            # Leaving the block stops the guests (QEMU, by PID) before the daemon.
            with harness.Daemon(argv, name=f"vhost-vsockd-runtime-{kernel}") as daemon, \
                    contextlib.ExitStack() as guests:
                self.daemon = daemon
                listing = self.ctl.json("list")
                self.assert_cids(listing, [CID_A], f"{kernel} start")
                entry = self.vm_entry(listing, CID_A, f"{kernel} start")
                self.assertEqual((entry["state"], entry["groups"], entry["socket"],
                                  entry["uds_path"], entry["frontends_served"]),
                                 ("listening", [GROUP], a.vhost_socket, a.uds, 0),
                                 f"{kernel} start: VM A before its QEMU: {entry}")

                a.guest = guests.enter_context(harness.Guest(
                    image, SCRIPT_A, chardev_sockets=[a.vhost_socket],
                    name=f"vsock-runtime-{kernel}-A"))
                self.check_guest(kernel, a)
                self.scenario_add(kernel, rig, a, b, go, guests, image)
                self.scenario_groups(kernel, a, b, go)
                self.scenario_remove(kernel, rig, a, b, go)

                self.assertEqual(a.guest.wait_exit(STEP_SECONDS), 0,
                                 f"{kernel}: guest A: QEMU's exit status")
                self.assertEqual(a.guest.result(), 0, f"{kernel}: guest A's script failed:\n"
                                 + vh.tag_lines(a.guest.console(), "script"))
                self.assertTrue(daemon.alive(), f"{kernel}: vhost-vsockd died:\n"
                                + harness.tail(daemon.log()))
                self.assertEqual(daemon.stop(), 0, f"{kernel}: vhost-vsockd's exit status on "
                                 f"SIGTERM:\n{harness.tail(daemon.log())}")
        note(f"{kernel}: runtime test took {time.monotonic() - started:.1f} s")

    def check_guest(self, kernel, vm):
        vm.guest.wait_booted()
        vh.wait_line(vm.guest, "tool", "version", STEP_SECONDS)
        vh.check_guest_tool(vm.guest.console())
        self.assertEqual(vh.wait_line(vm.guest, "cid", "cid", STEP_SECONDS).int(), vm.cid,
                         f"{kernel}: guest {vm.name}'s CID is not its guest-cid")

    # --- 1. a VM added at run time --------------------------------------------------------------

    def scenario_add(self, kernel, rig, a, b, go, guests, image):
        what = f"{kernel} add"
        for path in b.paths():
            self.assertFalse(os.path.exists(path), f"{what}: {path} exists before `ctl add`")
        rc, _, err, seconds = self.ctl.run("add", b.vm_arg())
        self.assertEqual(rc, 0, f"{what}: `ctl add {b.vm_arg()}` failed: {err.strip()}"
                         f"\n{harness.tail(self.daemon.log())}")
        note(f"{what}: `ctl add` answered in {seconds * 1000:.0f} ms")
        for path in b.paths():
            self.assertTrue(os.path.exists(path), f"{what}: `ctl add` did not create {path}")
        # The same CID again is refused, and changes nothing.
        err = self.ctl.fails("add", b.vm_arg())
        note(f"{what}: a second `ctl add` of CID {CID_B}: {err.strip()}")
        listing = self.ctl.json("list")
        self.assert_cids(listing, [CID_A, CID_B], what)
        entry = self.vm_entry(listing, CID_B, what)
        self.assertEqual((entry["state"], entry["groups"], entry["socket"], entry["uds_path"]),
                         ("listening", [GROUP], b.vhost_socket, b.uds),
                         f"{what}: VM B before its QEMU: {entry}")

        b.guest = guests.enter_context(harness.Guest(
            image, SCRIPT_B, chardev_sockets=[b.vhost_socket], name=f"vsock-runtime-{kernel}-B"))
        self.check_guest(kernel, b)
        for tag in B_LISTENERS:
            self.wait_line(what, b, tag, "listening")
        self.release(go[GO_SIBLING], f"{what}: guest A")

        self.exchange(f"{what} b2a: guest B -> guest A, {B2A_BYTES} bytes each way", "b2a",
                      b, a, B2A_BYTES, S_B2A_B, S_B2A_A)
        self.exchange(f"{what} a2b: guest A -> guest B, {A2B_BYTES} bytes each way", "a2b",
                      a, b, A2B_BYTES, S_A2B_A, S_A2B_B)
        hold_what = f"{what} hold: guest A -> guest B, {HOLD_BYTES} bytes each way, left open"
        connected = self.wait_line(hold_what, a, "hold", "connected")
        for vm in (a, b):
            self.wait_line(hold_what, vm, "hold", "held", TRANSFER_SECONDS)
        for vm, sent, received in ((a, S_HOLD_A, S_HOLD_B), (b, S_HOLD_B, S_HOLD_A)):
            self.assert_data(hold_what, vm, "hold", "sent", HOLD_BYTES, sent)
            self.assert_data(hold_what, vm, "hold", "recv", HOLD_BYTES, received)
        self.hold_port = port_of(connected.fields["local"])
        self.assertEqual(self.one(hold_what, b, "hold", "accepted").fields["peer"],
                         f"{CID_A}:{self.hold_port}", f"{hold_what}{self.context('hold')}")
        self.check_reports(what, a, b)

    def check_reports(self, what, a, b):
        """With hold open and idle: list, stats and metrics against what the guests moved."""
        listing = self.ctl.json("list")
        self.assert_cids(listing, [CID_A, CID_B], what)
        # Payload each guest sent (= what the other received) through its device so far.
        moved = {CID_A: B2A_BYTES + A2B_BYTES + HOLD_BYTES, CID_B: B2A_BYTES + A2B_BYTES
                 + HOLD_BYTES}
        for vm in (a, b):
            entry = self.vm_entry(listing, vm.cid, what)
            self.assertEqual((entry["state"], entry["groups"], entry["frontends_served"]),
                             ("running", [GROUP], 1), f"{what}: VM {vm.name}: {entry}")
            self.assertGreaterEqual(entry["connections"]["sibling"], 1,
                                    f"{what}: VM {vm.name} counts no sibling connection while "
                                    f"hold is open: {entry}")
            counters = entry["counters"]
            for direction in ("tx", "rx"):
                self.assertGreaterEqual(counters[direction]["bytes"], moved[vm.cid],
                                        f"{what}: VM {vm.name}'s {direction} bytes are fewer "
                                        f"than its guest moved ({moved[vm.cid]}): {counters}")
                self.assertGreater(counters[direction]["packets"], 0, f"{what}: {counters}")
        note(f"{what}: `ctl list`: " + "; ".join(
            f"VM {e['guest_cid']} tx {e['counters']['tx']['bytes']} B / rx "
            f"{e['counters']['rx']['bytes']} B, sibling connections "
            f"{e['connections']['sibling']}" for e in listing["vms"]))

        stats_a, stats_b = self.ctl.json("stats", CID_A), self.ctl.json("stats", CID_B)
        for stats, vm in ((stats_a, a), (stats_b, b)):
            self.assertEqual((stats["guest_cid"], stats["state"]), (vm.cid, "running"),
                             f"{what}: `ctl stats {vm.cid}`: {stats}")
        end_a = self.sibling(stats_a, self.hold_port, CID_B, P_HOLD, what)
        end_b = self.sibling(stats_b, P_HOLD, CID_A, self.hold_port, what)
        for end, vm in ((end_a, a), (end_b, b)):
            for direction in ("sent", "received"):
                self.assertGreaterEqual(end[direction]["bytes"], HOLD_BYTES,
                                        f"{what}: VM {vm.name}'s end of hold: {direction} "
                                        f"fewer than {HOLD_BYTES} bytes: {end}")
        # Both ends describe one connection: what one sent, the other received.
        self.assertEqual((end_a["sent"]["bytes"], end_a["received"]["bytes"]),
                         (end_b["received"]["bytes"], end_b["sent"]["bytes"]),
                         f"{what}: the two ends of hold disagree: A {end_a}, B {end_b}")
        note(f"{what}: `ctl stats`: hold from A's end {end_a}")

        metrics = self.ctl.ok("metrics")
        samples = dict(re.findall(r"^(vhost_vsockd_\S+) (\d+)$", metrics, re.M))
        expected = {"vhost_vsockd_vms": 2}
        for vm in (a, b):
            expected[f'vhost_vsockd_vm_state{{cid="{vm.cid}",state="running"}}'] = 1
        got = {k: int(samples[k]) if k in samples else None for k in expected}
        self.assertEqual(got, expected, f"{what}: `ctl metrics`:\n{metrics}")
        for vm in (a, b):
            for direction in ("tx", "rx"):
                key = f'vhost_vsockd_bytes_total{{cid="{vm.cid}",direction="{direction}"}}'
                self.assertGreaterEqual(int(samples.get(key, -1)), moved[vm.cid],
                                        f"{what}: `ctl metrics` {key}:\n{metrics}")

    # --- 3. groups changed under a live connection ---------------------------------------------

    def scenario_groups(self, kernel, a, b, go):
        what = f"{kernel} groups"
        started = time.monotonic()
        self.ctl.ok("groups", CID_B, OTHER)
        replied = time.monotonic() - started
        # hold ends on both sides: the daemon reset it (nobody else ends it).
        for vm in (a, b):
            self.wait_regex(f"{what}: guest {vm.name}'s end of the open connection after "
                            f"`ctl groups {CID_B} {OTHER}`", vm, "hold", "end ", RESET_SECONDS)
        note(f"{what}: `ctl groups` answered in {replied * 1000:.0f} ms; both ends of hold "
             f"ended {time.monotonic() - started:.2f} s after the command was issued "
             f"(A: {self.one(what, a, 'hold', 'end')!r}, B: {self.one(what, b, 'hold', 'end')!r})")
        for vm in (a, b):
            self.assertEqual(self.one(what, vm, "hold", "after").int(), 0,
                             f"{what}: data after the hold{self.context('hold')}")
        listing = self.ctl.json("list")
        self.assertEqual(self.vm_entry(listing, CID_B, what)["groups"], [OTHER],
                         f"{what}: {listing}")
        for vm in (a, b):
            self.assertEqual(self.vm_entry(listing, vm.cid, what)["connections"]["sibling"], 0,
                             f"{what}: VM {vm.name} still counts sibling connections: {listing}")

        # A new connect from A to B, which listens on P_BACK: refused by the daemon.
        self.release(go[GO_CROSS], f"{what}: guest A")
        cross = f"{what}: guest A ({GROUP}) connects to guest B ({OTHER})"
        self.wait_regex(cross, a, "cross", "(connected|connect-failed) ", STEP_SECONDS)
        line = [line for line in vh.vt_lines(a.guest.console(), "cross")
                if line.event in ("connected", "connect-failed")][0]
        self.assertEqual((line.event, line.fields.get("errno")), ("connect-failed", "ECONNRESET"),
                         f"{cross}: expected an RST from the daemon: {line!r}{self.context('cross')}")
        note(f"{cross}: ECONNRESET after {line.fields['ms']} ms")
        # The daemon logs the refusal (before it queues the RST) and counts it.
        self.assertRegex(self.daemon.log(), rf"cid {CID_A}: the VMs share no group: REQUEST "
                         rf"{CID_A}:\d+ -> {CID_B}:{P_BACK} ",
                         f"{cross}: the daemon did not log the refusal with its reason; its log:"
                         f"\n{harness.tail(self.daemon.log())}")
        drops = self.ctl.json("stats", CID_A)["counters"]["drops"]
        self.assertGreaterEqual(drops["no_shared_group"], 1, f"{cross}: not counted: {drops}")

        # Back in the shared group: the same port accepts A's connection as its first.
        self.ctl.ok("groups", CID_B, GROUP)
        # A report runs on B's strand after the regroup the command queued there.
        self.assertEqual(self.vm_entry(self.ctl.json("list"), CID_B, what)["groups"], [GROUP])
        self.release(go[GO_BACK], f"{what}: guest A")
        self.exchange(f"{what} back: guest A -> guest B after `ctl groups {CID_B} {GROUP}`, "
                      f"{BACK_BYTES} bytes each way", "back", a, b, BACK_BYTES, S_BACK_A,
                      S_BACK_B)

    # --- 2. a VM removed mid-transfer -------------------------------------------------------------

    def progress(self, vm, tag):
        """The last `VT <tag> progress` byte count on the guest's console (0 if none)."""
        lines = vh.vt_lines(vm.guest.console(), tag, "progress")
        return lines[-1].int() if lines else 0

    def scenario_remove(self, kernel, rig, a, b, go):
        what = f"{kernel} remove"
        self.release(go[GO_REMOVE], f"{what}: guest A")
        self.release(go[GO_REMOVE_B], f"{what}: guest B")
        # An idle connection between A and B: only the daemon can end it (neither guest sends
        # anything on it any more), unlike the transfers, where a packet of A's to the gone B
        # would be refused and answered with an RST anyway.
        for vm in (a, b):
            self.wait_line(what, vm, "hold2", "held", TRANSFER_SECONDS)
        hold2_port = port_of(vh.one_line(a.guest.console(), "hold2", "connected").fields["local"])
        sock, host_port = vh.hybrid_connect(b.uds, P_HOST_B, Deadline(
            STEP_SECONDS, f"{what}: host CONNECT {P_HOST_B} on B's UDS"))
        rig.track(sock)
        host = vh.Flow(sock, f"host <- guest B port {P_HOST_B}", expect_seed=S_HOST_B)
        vh.pump([host], Deadline(TRANSFER_SECONDS, f"{what}: the first {PROGRESS} bytes from "
                                 "guest B to the host"), until=lambda: host.received >= PROGRESS)
        # Both sibling transfers under way: each receiver printed that PROGRESS bytes arrived.
        self.wait_line(what, a, "s2recv", "progress", TRANSFER_SECONDS)
        self.wait_line(what, b, "s2in", "progress", TRANSFER_SECONDS)
        to_a, to_b = self.progress(a, "s2recv"), self.progress(b, "s2in")
        stats = self.ctl.json("stats", CID_B)
        out_b = vh.one_line(b.guest.console(), "s2send", "connected")
        in_b = vh.one_line(b.guest.console(), "s2in", "accepted")
        b_to_a = self.sibling(stats, port_of(out_b.fields["local"]), CID_A, P_TO_A, what)
        a_to_b = self.sibling(stats, P_TO_B, CID_A, port_of(in_b.fields["peer"]), what)
        self.assertGreaterEqual(b_to_a["sent"]["bytes"], to_a, f"{what}: {b_to_a}")
        self.assertGreaterEqual(a_to_b["received"]["bytes"], to_b, f"{what}: {a_to_b}")
        hosts = [c for c in stats["host_connections"]
                 if (c["local_port"], c["peer_port"]) == (host_port, P_HOST_B)]
        self.assertEqual(len(hosts), 1, f"{what}: `ctl stats {CID_B}` lists no host connection "
                         f"{host_port} -> guest port {P_HOST_B}: {stats['host_connections']}")
        self.assertGreaterEqual(hosts[0]["from_guest"]["bytes"], host.received,
                                f"{what}: {hosts[0]}")
        idle = self.sibling(stats, P_HOLD2, CID_A, hold2_port, what)
        self.assertEqual((idle["sent"]["bytes"], idle["received"]["bytes"]),
                         (HOLD2_BYTES, HOLD2_BYTES), f"{what}: {idle}")
        note(f"{what}: before `ctl remove`: B -> A {to_a}+ bytes, A -> B {to_b}+ bytes, "
             f"B -> host {host.received}+ bytes; VM B counts {stats['connections']}")

        qemu_log_before = len(b.guest.process.log())
        started = time.monotonic()
        rc, _, err, seconds = self.ctl.run("remove", CID_B)
        self.assertEqual(rc, 0, f"{what}: `ctl remove {CID_B}` failed: {err.strip()}"
                         f"\n{harness.tail(self.daemon.log())}")
        note(f"{what}: `ctl remove` answered in {seconds * 1000:.0f} ms")
        # The reply comes once B is closed: its socket files are gone by now.
        left = [path for path in b.paths() if os.path.lexists(path)]
        self.assertFalse(left, f"{what}: B's socket files remain after `ctl remove`: {left}")
        listing = self.ctl.json("list")
        self.assert_cids(listing, [CID_A], what)
        self.assertEqual(self.vm_entry(listing, CID_A, what)["state"], "running", f"{listing}")
        err = self.ctl.fails("stats", CID_B)
        self.assertIn(str(CID_B), err, f"{what}: `ctl stats {CID_B}` after the removal: {err}")

        # The idle connection ends on A's side (B's guest is cut off: it hears nothing).
        self.wait_regex(f"{what}: guest A's end of the idle connection to B", a, "hold2",
                        "end ", RESET_SECONDS)
        idle_ended = time.monotonic() - started
        self.assertEqual(self.one(what, a, "hold2", "after").int(), 0,
                         f"{what}: data after the hold{self.context('hold2')}")
        idle_end = self.one(what, a, "hold2", "end")
        # The host's connection to B: closed, what came an intact prefix of B's stream.
        vh.pump([host], Deadline(RESET_SECONDS, f"{what}: the host's connection to B after "
                                 "`ctl remove`"))
        host_closed = time.monotonic() - started
        self.assertTrue(host.eof or host.error, f"{what}: {host.describe()}")
        self.assertIsNone(host.verifier.mismatch, f"{what}: corrupted data: {host.describe()}")
        self.assertLess(host.received, BIG, f"{what}: {host.describe()}")

        # A's reader of B's stream ends; what arrived is an intact prefix.
        self.wait_regex(f"{what}: guest A's reader of guest B's transfer", a, "s2recv", "end ",
                        RESET_SECONDS)
        got = self.one(what, a, "s2recv", "recv")
        self.assertGreaterEqual(got.int(), to_a, f"{what}: {got!r}")
        self.assertLess(got.int(), BIG, f"{what}: {got!r}")
        self.assertEqual(got.fields["crc32"], crc(S_TO_A, got.int()),
                         f"{what}: guest A got {got.int()} bytes that are not a prefix of guest "
                         f"B's stream{self.context('s2recv')}")
        end_recv = self.one(what, a, "s2recv", "end")
        # A's writer to B, which may have been waiting for B's credit, fails.
        self.wait_regex(f"{what}: guest A's writer to guest B", a, "s2send", "error write ",
                        RESET_SECONDS)
        write_error = self.one(what, a, "s2send", "error")
        self.assertIn(write_error.fields.get("errno"), ("EPIPE", "ECONNRESET"),
                      f"{what}: {write_error!r}")
        sent = self.one(what, a, "s2send", "sent")
        self.assertEqual(sent.fields["crc32"], crc(S_TO_B, sent.int()), f"{what}: {sent!r}")
        note(f"{what}: seconds after `ctl remove` was issued: the idle connection ended in "
             f"guest A ({idle_end!r}) by {idle_ended:.2f} s, the host's connection to B "
             f"({host.error or 'EOF'} after {host.received} bytes) by {host_closed:.2f} s; "
             f"then guest A's reader had {got.int()} bytes and {end_recv!r}, guest A's writer "
             f"had sent {sent.int()} bytes and got {write_error!r}")

        # The daemon goes on serving A: a host connection made now.
        fresh = f"{what}: fresh host -> guest A connection after the removal"
        try:
            sock, host_port = vh.hybrid_connect(a.uds, P_FRESH, Deadline(STEP_SECONDS, fresh))
        except AssertionError as e:
            # E.g. "the guest did not answer the REQUEST": guest A's tx queue is no longer
            # served (its console shows whether it accepted).
            raise AssertionError(f"{fresh}: {e}{self.context('fresh')}") from None
        rig.track(sock)
        flow = vh.Flow(sock, fresh, send_seed=S_FRESH_H, send_bytes=FRESH_BYTES,
                       expect_seed=S_FRESH_A, expect_bytes=FRESH_BYTES)
        vh.pump([flow], Deadline(TRANSFER_SECONDS, fresh))
        vh.check_flow(self, flow, fresh)
        self.assertEqual(self.wait_line(fresh, a, "fresh", "accepted").fields["peer"],
                         f"2:{host_port}", f"{fresh}{self.context('fresh')}")
        self.wait_line(fresh, a, "fresh", "end")
        self.assert_data(fresh, a, "fresh", "recv", FRESH_BYTES, S_FRESH_H)
        self.assert_data(fresh, a, "fresh", "sent", FRESH_BYTES, S_FRESH_A)

        # B's QEMU lost its back-end: what it did is observed, not asserted; it is stopped.
        qemu = b.guest.process
        state = ("still running" if qemu.returncode is None
                 else f"exited by itself with status {qemu.returncode}")
        new_log = qemu.log()[qemu_log_before:].strip()
        note(f"{what}: guest B's QEMU {time.monotonic() - started:.1f} s after the removal: "
             f"{state}; its log since: " + (repr(harness.tail(new_log, 5)) if new_log else "nothing"))
        status = qemu.stop()
        note(f"{what}: guest B's QEMU stopped by PID (SIGTERM): exit status {status}; its last "
             f"lines: {harness.tail(qemu.log()[qemu_log_before:].strip(), 3)!r}")

    def test_runtime_6_1(self):
        self.run_runtime("6.1")

    def test_runtime_6_12(self):
        self.run_runtime("6.12")


if __name__ == "__main__":
    vh.main()
