"""Host side of the vsock end-to-end tests: AF_UNIX only (DEVELOPERS.md: never AF_VSOCK here).

- The data generator and CRC-32 of guest/vsock-tool.c, so the host produces and checks the
  very bytes the guest tool sends and verifies (`Stream`, `Verifier`, `stream_crc`).
- The parser of the tool's output lines, `VT <tag> <event> [<value>] [key=value]...`.
- The daemon's hybrid-vsock contract: `hybrid_connect` (`CONNECT <port>\\n` on the UDS, reply
  `OK <host_port>\\n`) for SOCK_STREAM and SOCK_SEQPACKET (`<uds>_seqpacket`), and the
  listeners `<uds>_<port>` that guest connections reach.
- `pump()`: one select() loop that moves data on any number of connections at once (send a
  seed's stream, verify the incoming one, echo) until each ends as asked.
- `Qmp`: a minimal QMP client for the device hot-plug of the "host connects before the guest
  is up" test.

Every blocking step takes a `Deadline` and waits in select()/poll() (or a socket timeout,
which is poll() inside CPython) for exactly the event it needs; nothing sleeps.
"""

import errno
import json
import os
import re
import select
import socket
import sys
import tempfile
import shutil
import time
import zlib
from pathlib import Path

import harness

# ------------------------------------------------------------------------------------------
# Generator and CRC-32: the same definitions as guest/vsock-tool.c (see its header comment).

BLOCK = 4096
MASK64 = (1 << 64) - 1
# 1 in every 64-bit lane of a block: key * _LANES puts `key` in each lane, with no carries.
_LANES = int.from_bytes((1).to_bytes(8, "little") * (BLOCK // 8), "little")
# vsock-tool's default write() sizes: the host cycles through the same ones. 32769 and above
# exceed what fits one page-order-3 skb, so 6.12 guests split such TX packets over several
# descriptors (peers.md §8).
WRITE_CYCLE = (1, 1000, 4096, 32769, 65536, 131072, 262144)


def _mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


class Stream:
    """The byte stream of a seed, read sequentially: read(n) returns the next n bytes."""

    def __init__(self, seed):
        self.seed = seed & MASK64
        words = (_mix64((self.seed + (j + 1) * 0x9E3779B97F4A7C15) & MASK64)
                 for j in range(BLOCK // 8))
        self._pattern = int.from_bytes(b"".join(w.to_bytes(8, "little") for w in words),
                                       "little")
        self.offset = 0
        self._block_index = -1
        self._block = b""

    def block(self, k):
        if k != self._block_index:
            key = _mix64(self.seed ^ (((k + 1) * 0xA0761D6478BD642F) & MASK64))
            self._block = (self._pattern ^ (key * _LANES)).to_bytes(BLOCK, "little")
            self._block_index = k
        return self._block

    def read(self, n):
        parts = []
        while n > 0:
            k, within = divmod(self.offset, BLOCK)
            take = min(BLOCK - within, n)
            parts.append(self.block(k)[within:within + take])
            self.offset += take
            n -= take
        return b"".join(parts)


def stream_bytes(seed, n):
    return Stream(seed).read(n)


def stream_crc(seed, n, offset=0):
    """CRC-32 of bytes [offset, offset + n) of the seed's stream, as vsock-tool prints it."""
    s = Stream(seed)
    if offset:
        s.read(offset)
    crc = 0
    while n > 0:
        chunk = s.read(min(n, 1 << 20))
        crc = zlib.crc32(chunk, crc)
        n -= len(chunk)
    return crc


def crc_hex(crc):
    return f"{crc:08x}"


def message_sizes_crcs(seed, sizes):
    """[(size, crc)] of SEQPACKET messages cut one after the other from the seed's stream,
    as `vsock-tool send-msgs` sends them."""
    s = Stream(seed)
    return [(n, zlib.crc32(s.read(n))) for n in sizes]


class Verifier:
    """Checks bytes arriving in order against a seed's stream; keeps the first mismatch."""

    def __init__(self, seed):
        self.seed = seed
        self._stream = Stream(seed)
        self.count = 0
        self.crc = 0
        self.mismatch = None  # offset of the first wrong byte

    def feed(self, data):
        expected = self._stream.read(len(data))
        if self.mismatch is None and data != expected:
            first = next(i for i, (a, b) in enumerate(zip(data, expected)) if a != b)
            self.mismatch = self.count + first
        self.crc = zlib.crc32(data, self.crc)
        self.count += len(data)

    def describe(self):
        bad = "" if self.mismatch is None else f", first wrong byte at offset {self.mismatch}"
        return f"{self.count} bytes of seed {self.seed} (crc32 {crc_hex(self.crc)}{bad})"


# ------------------------------------------------------------------------------------------
# Deadlines


class Deadline:
    """A point in time; remaining() raises AssertionError(what) once it has passed."""

    def __init__(self, seconds, what="operation"):
        self.seconds = seconds
        self.what = what
        self.end = time.monotonic() + seconds

    def remaining(self):
        left = self.end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{self.what}: not done within {self.seconds:g} s")
        return left

    def left(self):
        """Seconds left, 0 once passed (no exception)."""
        return max(0.0, self.end - time.monotonic())


# ------------------------------------------------------------------------------------------
# vsock-tool's output lines


class Line:
    """One `VT <tag> <event> [<values>] [key=value]...` line."""

    def __init__(self, tag, event, words):
        self.tag, self.event = tag, event
        self.values = [w for w in words if "=" not in w]
        self.fields = dict(w.split("=", 1) for w in words if "=" in w)

    def int(self, i=0):
        return int(self.values[i])

    def __repr__(self):
        extra = " ".join(self.values + [f"{k}={v}" for k, v in self.fields.items()])
        return f"VT {self.tag} {self.event} {extra}".rstrip()


_VT = re.compile(r"^VT (\S+) (\S+)(.*)$", re.M)


def vt_lines(text, tag=None, event=None):
    """The tool's lines in `text`, optionally only those of one tag and/or event."""
    found = []
    for m in _VT.finditer(text):
        line = Line(m.group(1), m.group(2), m.group(3).split())
        if (tag is None or line.tag == tag) and (event is None or line.event == event):
            found.append(line)
    return found


def one_line(text, tag, event):
    lines = vt_lines(text, tag, event)
    if len(lines) != 1:
        raise AssertionError(f"expected one 'VT {tag} {event}' line from the guest, found "
                             f"{len(lines)}; the guest's lines of {tag}:\n"
                             + "\n".join(map(repr, vt_lines(text, tag))))
    return lines[0]


def wait_line(guest, tag, event, timeout):
    """Waits for the first `VT <tag> <event>` line on the guest's console and returns it."""
    guest.wait_for(rf"^VT {re.escape(tag)} {re.escape(event)}(?: |$)", timeout)
    return vt_lines(guest.console(), tag, event)[0]


def tag_lines(text, tag):
    return "\n".join(map(repr, vt_lines(text, tag))) or f"(no line of {tag})"


# ------------------------------------------------------------------------------------------
# The host tool binary and the daemon


_tool_path = os.environ.get("VSOCKD_E2E_VSOCK_TOOL")


def tool_path():
    """The vsock-tool built for the guests (--vsock-tool or VSOCKD_E2E_VSOCK_TOOL)."""
    if not _tool_path:
        raise harness.HarnessError("no vsock-tool: pass --vsock-tool PATH (the CMake target "
                                   "vsock-tool builds tests/e2e/guest-bin/vsock-tool) or set "
                                   "VSOCKD_E2E_VSOCK_TOOL")
    if not os.access(_tool_path, os.X_OK):
        raise harness.HarnessError(f"vsock-tool {_tool_path} is missing: build the CMake "
                                   "target vsock-tool")
    return _tool_path


def check_guest_tool(text):
    """Checks that the guest ran `vsock-tool version --tag tool` and that it is the binary
    built here: a stale image would fail the tests in confusing ways."""
    lines = vt_lines(text, "tool", "version")
    if not lines:
        raise AssertionError("the guest did not run vsock-tool: rebuild the guest images with "
                             "scripts/build-guest.sh --extra-bin <build>/tests/e2e/guest-bin "
                             "(ctest's e2e.build-guest does)")
    host_crc = crc_hex(zlib.crc32(Path(tool_path()).read_bytes()))
    if lines[0].fields.get("exe-crc32") != host_crc:
        raise AssertionError(f"the guest image holds another vsock-tool (crc32 "
                             f"{lines[0].fields.get('exe-crc32')}) than {tool_path()} (crc32 "
                             f"{host_crc}): rebuild the images (ctest runs e2e.build-guest)")


def daemon_binary():
    """vhost-vsockd from --daemon-bin; a missing one fails the test with "vhost-vsockd not
    built" (it is being written: CMake registers these tests either way)."""
    path = harness.options.daemon_bin
    if not path or not os.access(path, os.X_OK):
        raise harness.HarnessError(
            "vhost-vsockd not built: " + (f"{path} is missing or not executable" if path else
                                          "no --daemon-bin given (CMake passes it once the "
                                          "target vhost-vsockd exists)")
            + "; build the CMake target vhost-vsockd and re-run")
    return path


class VsockRig:
    """A temporary directory holding the sockets of one test: the vhost-user socket, the UDS,
    listeners on UDS_<port>; closes them all and removes the directory on exit."""

    def __init__(self, name):
        tool_path()  # a missing prerequisite fails before anything starts
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix=f"vsockd-e2e-{name}-"))
        self.vhost_socket = str(self.dir / "vhost.sock")
        self.uds = str(self.dir / "vsock")
        self._sockets = []
        self._closers = []

    def uds_port(self, port):
        return f"{self.uds}_{port}"

    def listen(self, port, seqpacket=False, backlog=256):
        """A host listener on UDS_<port>, where the daemon delivers guest connections."""
        kind = socket.SOCK_SEQPACKET if seqpacket else socket.SOCK_STREAM
        s = self.track(socket.socket(socket.AF_UNIX, kind))
        s.bind(self.uds_port(port))
        s.listen(backlog)
        return s

    def track(self, sock):
        self._sockets.append(sock)
        return sock

    def on_close(self, fn):
        self._closers.append(fn)

    def daemon(self, cid, *extra, name=None):
        """Starts vhost-vsockd for one VM and returns the harness.Daemon, ready (READY=1).
        Use it in a `with`, which stops it and shows its log if the block fails."""
        argv = [daemon_binary(), "--guest-cid", str(cid), "--socket", self.vhost_socket,
                "--uds-path", self.uds, *extra]
        return harness.Daemon(argv, name=name or f"vhost-vsockd-{self.name}")

    def close(self):
        for sock in self._sockets:
            sock.close()
        for fn in reversed(self._closers):
            fn()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------------------------------
# AF_UNIX primitives with deadlines


def accept(listener, deadline, what="a connection"):
    """Accepts one connection, waiting in select() until `deadline`."""
    while True:
        ready, _, _ = select.select([listener], [], [], deadline.left())
        if not ready:
            raise AssertionError(f"no {what} within {deadline.seconds:g} s")
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            continue
        conn.setblocking(True)
        return conn


def connect_unix(path, kind, deadline):
    s = socket.socket(socket.AF_UNIX, kind)
    s.settimeout(deadline.remaining())
    s.connect(path)
    return s


class HandshakeClosed(AssertionError):
    """The daemon closed the host socket instead of answering OK (e.g. no guest listener)."""

    def __init__(self, port, received, seconds):
        super().__init__(f"CONNECT {port}: the daemon closed the connection after {seconds:.2f} s "
                         f"having sent {received!r} instead of 'OK <port>\\n'")
        self.received = received
        self.seconds = seconds


def read_line(sock, deadline, limit=64):
    """Reads one byte at a time up to and including b"\\n" (never past it: what follows is
    payload). Returns (bytes, eof); raises on the deadline."""
    got = b""
    while not got.endswith(b"\n") and len(got) < limit:
        sock.settimeout(deadline.remaining())
        try:
            byte = sock.recv(1)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return got, True
        if not byte:
            return got, True
        got += byte
    return got, False


_OK = re.compile(rb"^OK (\d+)\n$")


def _parse_ok(port, line):
    m = _OK.match(line)
    if m is None:
        raise AssertionError(f"CONNECT {port}: the daemon answered {line!r}, expected "
                             "'OK <host_port>\\n'")
    host_port = int(m.group(1))
    if host_port > 0xFFFFFFFF:
        raise AssertionError(f"CONNECT {port}: host port {host_port} is not a u32")
    return host_port


def hybrid_connect(uds, port, deadline, pieces=None):
    """Host-initiated STREAM connection: connects to the UDS, writes `CONNECT <port>\\n`
    (as the list of byte strings `pieces` if given, one send each) and reads the
    `OK <host_port>\\n` line. Returns (socket, host_port); raises HandshakeClosed at EOF."""
    started = time.monotonic()
    s = connect_unix(uds, socket.SOCK_STREAM, deadline)
    try:
        for piece in pieces or [f"CONNECT {port}\n".encode()]:
            s.settimeout(deadline.remaining())
            s.sendall(piece)
        return s, hybrid_finish(s, port, deadline, started)
    except BaseException:
        s.close()
        raise


def hybrid_finish(s, port, deadline, started=None):
    """Reads the daemon's answer to a CONNECT already written on `s`; returns host_port."""
    started = time.monotonic() if started is None else started
    line, eof = read_line(s, deadline)
    if eof:
        raise HandshakeClosed(port, line, time.monotonic() - started)
    s.settimeout(None)
    return _parse_ok(port, line)


def hybrid_connect_seqpacket(uds, port, deadline):
    """Host-initiated SEQPACKET connection on `<uds>_seqpacket`: the message
    `CONNECT <port>\\n`, answered by the message `OK <host_port>\\n`."""
    started = time.monotonic()
    s = connect_unix(f"{uds}_seqpacket", socket.SOCK_SEQPACKET, deadline)
    try:
        s.settimeout(deadline.remaining())
        s.send(f"CONNECT {port}\n".encode())
        s.settimeout(deadline.remaining())
        data, _, flags, _ = s.recvmsg(256)
        if not data:
            raise HandshakeClosed(port, b"", time.monotonic() - started)
        s.settimeout(None)
        return s, _parse_ok(port, data)
    except BaseException:
        s.close()
        raise


def expect_eof(sock, deadline, what):
    """Asserts that the next thing `sock` reads is EOF, arriving before `deadline`."""
    ready, _, _ = select.select([sock], [], [], deadline.left())
    if not ready:
        raise AssertionError(f"{what}: no EOF within {deadline.seconds:g} s")
    try:
        data = sock.recv(65536)
    except OSError as e:
        raise AssertionError(f"{what}: {errno.errorcode.get(e.errno, e.errno)} instead of EOF")
    if data:
        raise AssertionError(f"{what}: {len(data)} more bytes instead of EOF")


def wait_closed(sock, deadline):
    """Waits until the peer closed `sock`, discarding what arrives. Returns (bytes discarded,
    "eof" | errno name); raises AssertionError if still open at the deadline."""
    discarded = 0
    while True:
        ready, _, _ = select.select([sock], [], [], deadline.left())
        if not ready:
            raise AssertionError(f"the connection is still open after {deadline.seconds:g} s "
                                 f"({discarded} bytes arrived meanwhile)")
        try:
            data = sock.recv(1 << 20)
        except OSError as e:
            return discarded, errno.errorcode.get(e.errno, str(e.errno))
        if not data:
            return discarded, "eof"
        discarded += len(data)


def readable_now(sock):
    """True if a recv() would not block now (data or EOF pending), without consuming it."""
    ready, _, _ = select.select([sock], [], [], 0)
    return bool(ready)


# ------------------------------------------------------------------------------------------
# pump(): data on many connections at once


class Flow:
    """What pump() does on one connected stream socket.

    send_seed/send_bytes: write that many bytes of the seed's stream (write sizes cycling
      through `write_sizes`), then shutdown(SHUT_WR) if `shut_wr`. A flow that neither sends
      nor echoes never shuts down its socket.
    expect_seed: verify incoming bytes against that seed's stream (a Verifier).
    expect_bytes: how many bytes must arrive; with want_eof the flow also waits for EOF.
    echo: write back whatever arrives; shutdown(SHUT_WR) after EOF once all is written.
    already_sent: the first bytes of the stream went out before (e.g. in the same write as
      the CONNECT line); the flow continues after them.
    The flow is done when its sending is done and it received expect_bytes (and EOF if
    want_eof, or EOF at all when expect_bytes is None).
    """

    def __init__(self, sock, name, send_seed=None, send_bytes=0, expect_seed=None,
                 expect_bytes=None, want_eof=True, echo=False, shut_wr=True,
                 write_sizes=WRITE_CYCLE, already_sent=b""):
        self.sock, self.name = sock, name
        self.send_bytes = send_bytes if send_seed is not None else 0
        self._source = Stream(send_seed) if send_seed is not None else None
        self.send_seed = send_seed
        self.verifier = Verifier(expect_seed) if expect_seed is not None else None
        self.expect_bytes, self.want_eof = expect_bytes, want_eof
        self.echo, self.shut_wr = echo, shut_wr
        self._sizes, self._turn = write_sizes, 0
        self.sent = 0
        self.sent_crc = 0
        self.received = 0
        self.eof = False
        self.error = None  # errno name of a failed read or write
        self.shut = False
        self._out = b""
        if already_sent:
            if self._source.read(len(already_sent)) != already_sent:
                raise ValueError(f"{name}: already_sent is not the start of seed {send_seed}")
            self.sent = len(already_sent)
            self.sent_crc = zlib.crc32(already_sent)

    # -- state

    def sending(self):
        if self.error:
            return False
        if self.echo:
            return bool(self._out)
        return self.sent < self.send_bytes or bool(self._out)

    def wants_read(self):
        if self.eof or self.error:
            return False
        if self.expect_bytes is not None and self.received >= self.expect_bytes and \
                not self.want_eof:
            return False
        return True

    def done(self):
        if self.error:
            return True
        if self.sending():
            return False
        if self.echo:
            return self.eof and self.shut
        if self.expect_bytes is not None and self.received < self.expect_bytes:
            return False
        if self.want_eof or self.expect_bytes is None:
            return self.eof
        return True

    def describe(self):
        parts = [self.name]
        if self.send_seed is not None:
            parts.append(f"sent {self.sent}/{self.send_bytes} of seed {self.send_seed}")
        if self.echo:
            parts.append(f"echoed {self.sent} of {self.received}")
        if self.verifier:
            parts.append(f"received {self.verifier.describe()}"
                         + (f" of {self.expect_bytes} expected" if self.expect_bytes is not None
                            else ""))
        elif not self.echo:
            parts.append(f"received {self.received} bytes")
        parts.append("EOF seen" if self.eof else "no EOF")
        if self.error:
            parts.append(f"error {self.error}")
        return ", ".join(parts)

    # -- I/O (socket non-blocking)

    def on_writable(self):
        if not self._out and not self.echo and self.sent < self.send_bytes:
            n = min(self._sizes[self._turn % len(self._sizes)], self.send_bytes - self.sent)
            self._turn += 1
            self._out = self._source.read(n)
        try:
            n = self.sock.send(self._out)
        except BlockingIOError:
            return
        except OSError as e:
            self.error = errno.errorcode.get(e.errno, str(e.errno))
            return
        self.sent_crc = zlib.crc32(self._out[:n], self.sent_crc)
        self._out = self._out[n:]
        self.sent += n
        self._maybe_shut()

    def _maybe_shut(self):
        if self._source is None and not self.echo:
            return
        finished = (self.eof if self.echo else self.sent >= self.send_bytes) and not self._out
        if finished and self.shut_wr and not self.shut and not self.error:
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError as e:
                self.error = errno.errorcode.get(e.errno, str(e.errno))
            self.shut = True

    def on_readable(self):
        try:
            data = self.sock.recv(1 << 18)
        except BlockingIOError:
            return
        except OSError as e:
            self.error = errno.errorcode.get(e.errno, str(e.errno))
            return
        if not data:
            self.eof = True
            self._maybe_shut()
            return
        self.received += len(data)
        if self.verifier:
            self.verifier.feed(data)
        if self.echo:
            self._out += data


def pump(flows, deadline, until=None):
    """Runs every Flow until each is done, or until `until()` holds; select() waits for the
    next event. On the deadline, raises AssertionError listing every flow's progress."""
    for f in flows:
        f.sock.setblocking(False)
        if f.send_bytes == 0 and not f.echo:
            f._maybe_shut()  # sends nothing: half-closes at once (if it sends at all)
    while True:
        active = [f for f in flows if not f.done()]
        if not active or (until is not None and until()):
            break
        readers = [f for f in active if f.wants_read()]
        writers = [f for f in active if f.sending()]
        if not readers and not writers:
            break  # nothing can progress: described by the caller's checks
        left = deadline.left()
        if left <= 0:
            raise AssertionError(f"{deadline.what}: not done within {deadline.seconds:g} s:\n  "
                                 + "\n  ".join(f.describe() for f in active))
        r, w, _ = select.select([f.sock for f in readers], [f.sock for f in writers], [], left)
        rset, wset = set(r), set(w)
        for f in writers:
            if f.sock in wset:
                f.on_writable()
        for f in readers:
            if f.sock in rset:
                f.on_readable()
    for f in flows:
        f.sock.setblocking(True)
    return flows


def check_flow(testcase, flow, what):
    """Asserts a Flow finished cleanly: everything sent, the expected bytes intact, EOF."""
    testcase.assertIsNone(flow.error, f"{what}: {flow.describe()}")
    testcase.assertEqual(flow.sent, flow.send_bytes, f"{what}: {flow.describe()}")
    if flow.verifier is not None:
        testcase.assertIsNone(flow.verifier.mismatch, f"{what}: corrupted data: "
                              f"{flow.describe()}")
        if flow.expect_bytes is not None:
            testcase.assertEqual(flow.received, flow.expect_bytes, f"{what}: {flow.describe()}")
    if flow.want_eof:
        testcase.assertTrue(flow.eof, f"{what}: {flow.describe()}")


# ------------------------------------------------------------------------------------------
# SEQPACKET messages


def send_messages(sock, seed, sizes, deadline):
    """Sends one message per size, cut one after the other from the seed's stream."""
    s = Stream(seed)
    for i, n in enumerate(sizes):
        data = s.read(n)
        sock.settimeout(deadline.remaining())
        sent = sock.send(data)
        if sent != n:
            raise AssertionError(f"message {i}: send() took {sent} of {n} bytes")
    sock.settimeout(None)


def recv_messages(sock, deadline, count=None, limit=512, bufsize=1 << 20):
    """Receives `count` messages, or all until EOF: [(length, crc32, truncated)]; an error
    ends the list with ("error", errno name)."""
    got = []
    while len(got) < (limit if count is None else count):
        sock.settimeout(deadline.remaining())
        try:
            data, _, flags, _ = sock.recvmsg(bufsize)
        except TimeoutError:
            continue
        except OSError as e:
            got.append(("error", errno.errorcode.get(e.errno, str(e.errno))))
            break
        if not data and not flags & socket.MSG_TRUNC:
            break
        got.append((len(data), zlib.crc32(data), bool(flags & socket.MSG_TRUNC)))
    sock.settimeout(None)
    return got


# ------------------------------------------------------------------------------------------
# QMP (device hot-plug), over a socket the test listens on and QEMU connects to


class Qmp:
    """QEMU's monitor in control mode. The test listens on `path`; QEMU connects to it as a
    client (`-chardev socket,id=qmp,path=PATH -mon chardev=qmp,mode=control`), so there is no
    race with QEMU creating a socket. accept() then execute()."""

    def __init__(self, path):
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.sock = None
        self._buf = b""

    def qemu_args(self):
        return ["-chardev", f"socket,id=qmp0,path={self.path}", "-mon",
                "chardev=qmp0,mode=control"]

    def _message(self, deadline):
        while b"\n" not in self._buf:
            self.sock.settimeout(deadline.remaining())
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError("QEMU closed the QMP connection")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def accept(self, deadline):
        self.sock = accept(self.listener, deadline, "QMP connection from QEMU")
        greeting = self._message(deadline)
        if "QMP" not in greeting:
            raise AssertionError(f"unexpected QMP greeting {greeting}")
        self.execute("qmp_capabilities", deadline=deadline)

    def execute(self, command, deadline, **arguments):
        self.sock.sendall(json.dumps({"execute": command, "arguments": arguments}).encode()
                          + b"\n")
        while True:
            msg = self._message(deadline)
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                raise AssertionError(f"QMP {command} {arguments}: {msg['error']}")
            # An asynchronous event: not the reply.

    def close(self):
        if self.sock:
            self.sock.close()
        self.listener.close()


# ------------------------------------------------------------------------------------------
# Guest scripts


def script(steps):
    """A guest script running `steps` (shell lines) in order: it first runs
    `vsock-tool version` (checked by check_guest_tool), counts the steps that fail (each
    prints `VT script step-failed rc=N <command>`), and exits with that count."""
    return "\n".join([
        "fails=0",
        'run() { "$@" || { rc=$?; echo "VT script step-failed rc=$rc $*"; '
        "fails=$((fails + 1)); }; }",
        "run vsock-tool version --tag tool",
        *steps,
        'echo "VT script done fails=$fails"',
        'exit "$fails"',
        "",
    ])


def finish_guest(testcase, guest, daemon, tag, timeout=60.0):
    """The common end of a test: the guest script ends with status 0 and powers off, the
    daemon outlived it and exits 0 on SIGTERM (sanitizer reports at exit make it non-zero)."""
    testcase.assertEqual(guest.wait_exit(timeout), 0, f"{tag}: QEMU's exit status")
    output = guest.console()
    testcase.assertEqual(guest.result(), 0, f"{tag}: the guest script failed:\n"
                         + tag_lines(output, "script"))
    testcase.assertTrue(daemon.alive(), f"{tag}: vhost-vsockd died:\n"
                        + harness.tail(daemon.log()))
    testcase.assertEqual(daemon.stop(), 0, f"{tag}: vhost-vsockd's exit status on SIGTERM:\n"
                         + harness.tail(daemon.log()))


def main():
    """Like harness.main(), plus --vsock-tool PATH (env VSOCKD_E2E_VSOCK_TOOL)."""
    global _tool_path
    argv = sys.argv[1:]
    if "--vsock-tool" in argv:
        i = argv.index("--vsock-tool")
        if i + 1 >= len(argv):
            sys.exit("--vsock-tool needs a path")
        _tool_path = argv[i + 1]
        del argv[i:i + 2]
        sys.argv[1:] = argv
    harness.main()
