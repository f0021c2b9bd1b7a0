#!/usr/bin/env python3
"""The Linux kernel's own AF_VSOCK test suite, tools/testing/vsock/vsock_test, passes between
two sibling guests served by one vhost-vsockd.

vsock_test runs as a server in one guest and as a client in the other: each test of the
suite has a server half and a client half that talk over AF_VSOCK (SOCK_STREAM and
SOCK_SEQPACKET), coordinated over a TCP control connection. Here both guests are VMs of ONE
daemon in one group (--vm guest-cid=3,...,groups=suite and guest-cid=4), so every AF_VSOCK
packet of the suite goes through the daemon's sibling relay (the guests have no other vsock
transport: no vhost_vsock, no vsock_loopback).

The control connection runs over a private Ethernet link between the two guests
(harness.PrivateLink: virtio-net on QEMU's dgram netdev over two AF_UNIX sockets), never
through the daemon, so a relay bug cannot hide in the suite's own coordination.

Each image carries the suite of its own kernel, built from Debian's linux-source package of
the guest kernel's version (scripts/build-vsock-test.sh, called by scripts/build-guest.sh):
the 6.1 guests run 6.1's suite, the 6.12 guests 6.12's. One test per kernel, two runs of the
whole suite in one boot of the two guests, one per direction:

  run 1  server in guest 4 (--peer-cid=3), client in guest 3 (--peer-cid=4
         --control-host=<guest 4's link address>)
  run 2  server in guest 3, client in guest 4

  1. both guests boot; each prints its CID, the md5 of its /bin/vsock_test (it must be the
     copy next to the image, OUTDIR/<tag>/vsock_test: a stale image fails here) and
     `vsock_test --list`, which must name the same tests in both;
  2. for each run, the server starts; once it printed "Control socket listening", the host
     lets the client's guest go on (its `vsock-tool connect 2 <go port> cat` ends when the
     host closes it: vsock_test's client tries its control connection only once);
  3. server and client must both exit 0, each must report "ok" for every test --list named,
     in order, none "skipped" or missing, and both must pass the suite's final barrier ("All
     tests have been executed. Waiting other peer...ok"). Nothing is skipped (no --skip):
     tests/e2e/README.md says why none has to be.

Each guest's whole vsock_test output (--list and both runs) is written to
<log-dir>/vsock-kernel-suite-<kernel>-cid<N>.vsock_test.log; the consoles, QEMU's and the
daemon's logs are there too.

usage: test_vsock_kernel_suite.py --daemon-bin PATH/vhost-vsockd --vsock-tool PATH
                                  [--log-dir DIR]
"""

import contextlib
import hashlib
import re
import socket
import sys
import time
import unittest

import harness
import vsock_host as vh

CIDS = (3, 4)
GROUP = "suite"
# (server CID, client CID) of each run of the suite.
RUNS = ((4, 3), (3, 4))
CONTROL_PORT = 1234
# Each guest's host listener UDS<cid>_<port>: the host closes the accepted connection to let
# that guest start its client.
PORT_GO = 7600

STEP_SECONDS = 60
# One run of the whole suite, both sides (6.12's has 26 tests; under TCG on two CPUs shared
# by two guests and the daemon, a run takes 3 to 10 s, and vsock_test bounds each of its own
# waits by 10 s). Every wait of the test together stays well under ctest's TIMEOUT, so a hang
# ends here, where the guests are stopped and the logs saved.
SUITE_SECONDS = 120

# vsock_test's output (tools/testing/vsock/util.c): `--list` prints "ID\tTest name", then
# "<id>\t<name>" per test, and exits 1; a run prints "<id> - <name>..." and, once the test is
# done, "ok" (or "skipped"), and at the end "All tests have been executed. Waiting other
# peer...ok". A failing test prints its error and exits non-zero.
LIST_LINE = re.compile(r"^(\d+)\t(.+)$", re.M)
TEST_HEADER = re.compile(r"^(\d+) - (.+?)\.\.\.", re.M)
FINAL = "All tests have been executed. Waiting other peer..."


def note(text):
    """A figure for the log (never asserted)."""
    print(f"e2e: {text}", file=sys.stderr, flush=True)


def marker(run, role):
    return f"run{run}-{role}"


def guest_script(cid, link_end, link):
    """Guest `cid`'s script: what it runs, its CID, --list, the link's address, then its side
    of each run of RUNS, each run's output between `KS <mark>-begin` and `KS <mark>-end
    rc=<status>` (a non-zero status fails the script)."""
    peer = [c for c in CIDS if c != cid][0]
    steps = [
        "run vsock-tool cid --tag cid",
        # What the guest runs: the package it came from and the binary's md5 (compared with
        # the copy next to the image).
        'echo "KS version $(tr \'\\n\' \' \' </etc/vsock_test.version)"',
        'echo "KS md5 $(md5sum /bin/vsock_test)"',
        # --list exits 1 after listing (util.c's list_tests()); the list is what counts.
        'echo "KS list-begin"',
        "vsock_test --list 2>&1",
        'echo "KS list-end rc=$?"',
        f"run sh -c '{link.guest_setup(link_end)}'",
    ]
    for run, (server, client) in enumerate(RUNS, 1):
        if cid == server:
            role, command = "server", (f"vsock_test --mode=server --control-port={CONTROL_PORT}"
                                       f" --peer-cid={peer}")
        else:
            role = "client"
            steps.append(f"run vsock-tool connect 2 {PORT_GO} cat --tag go{run}")
            command = (f"vsock_test --mode=client --control-host="
                       f"{link.address(1 - link_end)} --control-port={CONTROL_PORT} "
                       f"--peer-cid={peer}")
        mark = marker(run, role)
        steps += [
            f'echo "KS {mark}-begin"',
            f"{command} 2>&1",
            "rc=$?",
            f'echo "KS {mark}-end rc=$rc"',
            '[ "$rc" -eq 0 ] || { echo "VT script step-failed rc=$rc vsock_test"; '
            "fails=$((fails + 1)); }",
        ]
    return vh.script(steps)


def section(text, mark):
    """(the console text between `KS <mark>-begin` and `KS <mark>-end rc=N`, N), or, if the
    section has not ended, (what it printed so far, None)."""
    m = re.search(rf"^KS {mark}-begin\n(.*?)^KS {mark}-end rc=(\d+)$", text, re.M | re.S)
    if m:
        return m.group(1), int(m.group(2))
    m = re.search(rf"^KS {mark}-begin\n", text, re.M)
    return (text[m.end():] if m else ""), None


def parse_run(text):
    """([(id, name, outcome, other output)], final barrier passed) of one vsock_test run's
    output. The outcome is "ok" or "skipped" when that ends the test's part of the output,
    else "failed" (the test's error, or nothing if the run stopped there)."""
    headers = list(TEST_HEADER.finditer(text))
    final = text.find(FINAL)
    results = []
    for i, m in enumerate(headers):
        if i + 1 < len(headers):
            end = headers[i + 1].start()
        else:
            end = final if final >= m.end() else len(text)
        # "ok" follows the header's "..." on the same line, unless the test (or the kernel,
        # on the console) printed lines in between.
        lines = text[m.end():end].strip().splitlines()
        last = lines[-1].strip() if lines else ""
        outcome = last if last in ("ok", "skipped") else "failed"
        other = lines[:-1] if outcome != "failed" else lines
        results.append((int(m.group(1)), m.group(2), outcome, "\n".join(other).strip()))
    barrier = final >= 0 and text[final + len(FINAL):].lstrip().startswith("ok")
    return results, barrier


class KernelSuiteTest(unittest.TestCase):

    def image_suite(self, image):
        """(md5, VERSION fields) of the vsock_test next to the image (build-guest.sh)."""
        binary, version = image.dir / "vsock_test", image.dir / "vsock_test.version"
        if not binary.is_file() or not version.is_file():
            raise harness.HarnessError(
                f"no vsock_test next to the guest image in {image.dir} (vsock_test, "
                "vsock_test.version): rebuild the images with scripts/build-guest.sh "
                "(it builds the kernel's suite with scripts/build-vsock-test.sh)")
        fields = dict(line.split("=", 1) for line in version.read_text().splitlines()
                      if "=" in line)
        return hashlib.md5(binary.read_bytes()).hexdigest(), fields

    def check_guest(self, kernel, cid, guest, md5):
        """Guest `cid` is up, is CID `cid`, runs the image's vsock_test; returns its list."""
        guest.wait_booted()
        vh.wait_line(guest, "tool", "version", STEP_SECONDS)
        vh.check_guest_tool(guest.console())
        self.assertEqual(vh.wait_line(guest, "cid", "cid", STEP_SECONDS).int(), cid,
                         f"{kernel}: guest {cid}'s CID is not its --vm guest-cid")
        guest.wait_for(r"^KS list-end rc=\d+$", STEP_SECONDS)
        console = guest.console()
        got = re.search(r"^KS md5 ([0-9a-f]{32}) ", console, re.M)
        self.assertEqual(got.group(1) if got else None, md5,
                         f"{kernel}: guest {cid}'s /bin/vsock_test is not the one next to "
                         "its image: rebuild the images (ctest runs e2e.build-guest)")
        text, _ = section(console, "list")
        tests = [(int(i), name) for i, name in LIST_LINE.findall(text)]
        self.assertTrue(tests, f"{kernel}: guest {cid}'s vsock_test --list named no test:\n"
                        f"{text}")
        self.assertEqual([i for i, _ in tests], list(range(len(tests))),
                         f"{kernel}: guest {cid}'s --list IDs are not 0..N-1:\n{text}")
        return tests

    def run_suite(self, kernel):
        started = time.monotonic()
        image = harness.GuestImage(kernel)
        md5, version = self.image_suite(image)
        suite = f"{version.get('package')} {version.get('version')}"
        note(f"{kernel}: vsock_test of {suite} (kernel {version.get('kernel-version')}); "
             f"guest kernel {image.release}")
        if version.get("requested") not in (version.get("version"), "none"):
            note(f"{kernel}: apt had no {version.get('package')} {version.get('requested')}: "
                 "this is not the guest kernel's own suite")
        with vh.VsockRig(f"kernel-suite-{kernel}") as rig, \
                harness.PrivateLink(f"ks{kernel.replace('.', '')}") as link:
            vhost = {cid: str(rig.dir / f"vm{cid}.vhost") for cid in CIDS}
            uds = {cid: str(rig.dir / f"vm{cid}.vsock") for cid in CIDS}
            go = {}
            for cid in CIDS:
                go[cid] = rig.track(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
                go[cid].bind(f"{uds[cid]}_{PORT_GO}")
                go[cid].listen(1)
            argv = [vh.daemon_binary()]
            for cid in CIDS:
                argv += ["--vm", f"guest-cid={cid},socket={vhost[cid]},uds-path={uds[cid]},"
                                 f"groups={GROUP}"]
            with harness.Daemon(argv, name=f"vhost-vsockd-kernel-suite-{kernel}") as daemon, \
                    contextlib.ExitStack() as stack:
                guests = {cid: stack.enter_context(harness.Guest(
                    image, guest_script(cid, end, link), chardev_sockets=[vhost[cid]],
                    extra_qemu_args=link.qemu_args(end),
                    name=f"vsock-kernel-suite-{kernel}-cid{cid}"))
                    for end, cid in enumerate(CIDS)}
                try:
                    lists = {cid: self.check_guest(kernel, cid, guest, md5)
                             for cid, guest in guests.items()}
                    listed = lists[CIDS[0]]
                    self.assertEqual(lists[CIDS[1]], listed,
                                     f"{kernel}: the two guests' --list differ")
                    note(f"{kernel}: both guests up {time.monotonic() - started:.1f} s after "
                         f"start; vsock_test --list names {len(listed)} tests")
                    for run, (server, client) in enumerate(RUNS, 1):
                        self.suite_run(kernel, run, guests[server], server, guests[client],
                                       client, go[client], listed, daemon)
                        note(f"{kernel}: run {run} (server guest {server}, client guest "
                             f"{client}): {len(listed)} of {len(listed)} tests ok on both "
                             "sides")
                finally:
                    for cid, guest in guests.items():
                        self.save_output(kernel, cid, guest)

                for cid, guest in guests.items():
                    self.assertEqual(guest.wait_exit(STEP_SECONDS), 0,
                                     f"{kernel}: guest {cid}: QEMU's exit status")
                    self.assertEqual(guest.result(), 0,
                                     f"{kernel}: guest {cid}'s script failed:\n"
                                     + vh.tag_lines(guest.console(), "script"))
                self.assertTrue(daemon.alive(), f"{kernel}: vhost-vsockd died:\n"
                                + harness.tail(daemon.log()))
                self.assertEqual(daemon.stop(), 0, f"{kernel}: vhost-vsockd's exit status on "
                                 f"SIGTERM:\n{harness.tail(daemon.log())}")
        note(f"{kernel}: {suite}: {len(listed)} tests, each passed in both directions; the "
             f"test took {time.monotonic() - started:.1f} s")

    def suite_run(self, kernel, run, server, server_cid, client, client_cid, go, listed,
                  daemon):
        what = f"{kernel} run {run}"
        # The client guest waits on its go connection until the server listens.
        conn = vh.accept(go, vh.Deadline(STEP_SECONDS), f"{what}: guest {client_cid}'s go "
                         "connection")
        try:
            server.wait_for(rf"(?s)^KS {marker(run, 'server')}-begin$.*^Control socket "
                            "listening", STEP_SECONDS)
        finally:
            conn.close()
        started = time.monotonic()
        for role, guest in (("client", client), ("server", server)):
            try:
                guest.wait_for(rf"^KS {marker(run, role)}-end rc=\d+$", SUITE_SECONDS)
            except AssertionError as e:
                raise AssertionError(f"{what}: the {role}'s vsock_test did not end:\n{e}\n"
                                     + self.outputs(run, server, client, daemon)) from None
        note(f"{what}: the suite ran in {time.monotonic() - started:.1f} s")
        for role, guest, cid in (("server", server, server_cid), ("client", client, client_cid)):
            self.check_run(f"{what}, {role} (guest {cid})", run, role, guest, listed,
                           self.outputs(run, server, client, daemon))

    def outputs(self, run, server, client, daemon):
        """Both sides' output of the run and the daemon's log, for a failure message."""
        parts = []
        for role, guest in (("server", server), ("client", client)):
            text, rc = section(guest.console(), marker(run, role))
            parts.append(f"--- the {role}'s vsock_test output (exit status {rc}), end:\n"
                         f"{harness.tail(text, 40)}")
        parts.append(f"--- the daemon's log, end:\n{harness.tail(daemon.log(), 20)}")
        return "\n".join(parts)

    def check_run(self, what, run, role, guest, listed, context):
        """`role`'s side of run `run` ran every listed test, in order, each "ok", passed the
        final barrier and exited 0."""
        text, rc = section(guest.console(), marker(run, role))
        results, barrier = parse_run(text)
        not_ok = [(i, name, outcome) for i, name, outcome, _ in results if outcome != "ok"]
        summary = (f"{what}: vsock_test exited {rc}; {len(results)} of {len(listed)} tests "
                   f"started; not ok: {not_ok or 'none'}\n{context}")
        self.assertEqual(rc, 0, summary)
        self.assertEqual([(i, name) for i, name, _, _ in results], listed,
                         f"{what}: the tests run are not those --list names\n{summary}")
        self.assertFalse(not_ok, summary)
        self.assertTrue(barrier, f"{what}: no 'ok' after the final barrier\n{summary}")
        for i, name, _, other in results:
            if other:
                note(f"{what}: test {i} ({name}) printed: {other!r}")

    def save_output(self, kernel, cid, guest):
        console = guest.console()
        parts = []
        text, rc = section(console, "list")
        parts.append(f"$ vsock_test --list   (exit status {rc}; 1 is its normal status)\n"
                     f"{text}")
        for run, (server, client) in enumerate(RUNS, 1):
            role = "server" if cid == server else "client"
            text, rc = section(console, marker(run, role))
            parts.append(f"$ vsock_test --mode={role} ...   (run {run}; exit status "
                         f"{'none: it did not end' if rc is None else rc})\n{text}")
        path = harness.write_log(f"vsock-kernel-suite-{kernel}-cid{cid}.vsock_test.log",
                                 "\n".join(parts))
        if path:
            note(f"{kernel}: guest {cid}'s vsock_test output: {path}")

    def test_kernel_suite_6_1(self):
        self.run_suite("6.1")

    def test_kernel_suite_6_12(self):
        self.run_suite("6.12")


if __name__ == "__main__":
    vh.main()
