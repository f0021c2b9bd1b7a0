"""Library of the end-to-end tests: real QEMU guests against the daemons we build.

Every wait has a deadline and ends as soon as its condition holds; nothing sleeps to
synchronise. Processes are watched through pidfds, and the daemon's readiness through its
sd_notify socket, both with select(). The one bounded poll is Guest.wait_for(): QEMU writes the
serial console to a plain file (-serial file:) and offers no notification when it grows, so
the log is re-read every POLL_SECONDS until the awaited line appears, QEMU exits (the pidfd
wakes the wait at once) or the deadline passes.

Everything a test starts is stopped by PID (SIGTERM, then SIGKILL after a deadline) and every
temporary directory is removed. Logs go to the --log-dir of main() when one is given (and
stay there), else into the temporary directories.

Environment:
  VSOCKD_GUEST_DIR       guest images from scripts/build-guest.sh (default <repo>/build/guest)
  VSOCKD_E2E_ACCEL       kvm or tcg to force the QEMU accelerator (default: detected)
  VSOCKD_E2E_DAEMON_BIN  same as --daemon-bin
  VSOCKD_E2E_LOG_DIR     same as --log-dir
"""

import argparse
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
POLL_SECONDS = 0.05
STOP_SECONDS = 10.0
TAIL_LINES = 40
# The markers printed by the guests' init (tests/e2e/guest/init).
BOOT_OK = re.compile(r"^E2E-BOOT-OK kernel=(\S+)$", re.M)
RESULT = re.compile(r"^E2E-RESULT rc=(\d+)$", re.M)
DEVICES = ("vhost-user-vsock-pci", "vhost-user-rng-pci")


class HarnessError(AssertionError):
    """A prerequisite is missing or a process misbehaved; the test fails with this message.

    An AssertionError so that unittest counts it as the test's failure.
    """


def tail(text, lines=TAIL_LINES):
    return "\n".join(text.splitlines()[-lines:])


# Set by main() from the command line; the environment gives the defaults.
options = argparse.Namespace(daemon_bin=os.environ.get("VSOCKD_E2E_DAEMON_BIN"),
                             log_dir=os.environ.get("VSOCKD_E2E_LOG_DIR"))


def daemon_bin(target):
    """The daemon binary given with --daemon-bin; `target` is its CMake target, for the message."""
    path = options.daemon_bin
    if not path:
        raise HarnessError(f"no daemon binary: pass --daemon-bin PATH (the {target} binary) "
                           "or set VSOCKD_E2E_DAEMON_BIN")
    if not os.access(path, os.X_OK):
        raise HarnessError(f"daemon binary {path} is missing or not executable: "
                           f"build the CMake target {target} first")
    return path


def _log_path(tmp, name):
    if options.log_dir is None:
        return Path(tmp) / name
    Path(options.log_dir).mkdir(parents=True, exist_ok=True)
    return Path(options.log_dir) / name


class _Process:
    """A child process started by the harness, watched through its pidfd."""

    def __init__(self, argv, log_path, env=None):
        self.argv = [str(arg) for arg in argv]
        self.log_path = Path(log_path)
        with open(self.log_path, "wb") as log:
            # The command line heads the log, so a failure can be reproduced by hand.
            log.write(f"$ {shlex.join(self.argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                           stderr=subprocess.STDOUT, env=env)
        self.pid = self._popen.pid
        self.pidfd = os.pidfd_open(self.pid)

    @property
    def returncode(self):
        return self._popen.poll()

    def wait(self, timeout):
        """Waits up to `timeout` seconds for the exit; returns the exit code or None."""
        select.select([self.pidfd], [], [], max(timeout, 0))
        return self._popen.poll()

    def stop(self, timeout=STOP_SECONDS):
        """SIGTERM, then SIGKILL if still running after `timeout` seconds; returns the exit code.

        Popen.send_signal() signals only a child not yet reaped, so a recycled PID is never hit.
        """
        if self.returncode is None:
            self._popen.send_signal(signal.SIGTERM)
            if self.wait(timeout) is None:
                self._popen.kill()
                self._popen.wait()
        return self.returncode

    def close(self):
        self.stop()
        os.close(self.pidfd)

    def log(self):
        return self.log_path.read_text(errors="replace")


class GuestImage:
    """OUTDIR/<tag>/{vmlinux,initramfs.cpio.gz,VERSION} built by scripts/build-guest.sh."""

    def __init__(self, tag):
        root = Path(os.environ.get("VSOCKD_GUEST_DIR", REPO / "build" / "guest"))
        self.tag = tag
        self.dir = root / tag
        self.vmlinux = self.dir / "vmlinux"
        self.initramfs = self.dir / "initramfs.cpio.gz"
        version = self.dir / "VERSION"
        missing = [p.name for p in (self.vmlinux, self.initramfs, version) if not p.is_file()]
        if missing:
            raise HarnessError(f"guest image {tag} is incomplete in {self.dir} (no "
                               f"{', '.join(missing)}): build it with "
                               f"scripts/build-guest.sh {root}")
        lines = version.read_text().splitlines()
        fields = dict(line.split("=", 1) for line in lines if "=" in line)
        if "release" not in fields:
            raise HarnessError(f"{version} names no release: rebuild with scripts/build-guest.sh")
        # The kernel's `uname -r`, which the guest reports in E2E-BOOT-OK.
        self.release = fields["release"]


class Daemon:
    """A daemon we built, started with NOTIFY_SOCKET and ready once it sent READY=1.

    Our daemons follow sd_notify(3): they send READY=1 once all their sockets listen, so a
    test can connect right after the constructor returns.
    """

    def __init__(self, argv, name=None, ready_timeout=10.0):
        self.name = name or Path(argv[0]).name
        if not os.access(argv[0], os.X_OK):
            raise HarnessError(f"{self.name}: {argv[0]} is missing or not executable")
        self._tmp = tempfile.mkdtemp(prefix=f"vsockd-e2e-{self.name}-")
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            notify_path = os.path.join(self._tmp, "notify")
            self._notify.bind(notify_path)
            env = dict(os.environ, NOTIFY_SOCKET=notify_path)
            self.process = _Process(argv, _log_path(self._tmp, f"{self.name}.log"), env)
            self._wait_ready(ready_timeout)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HarnessError(f"{self.name} sent no READY=1 within {timeout} s; its log:\n"
                                   f"{tail(self.log())}")
            ready, _, _ = select.select([self._notify, self.process.pidfd], [], [], remaining)
            if self._notify in ready:
                # One datagram holds newline-separated assignments (sd_notify(3)).
                if "READY=1" in self._notify.recv(4096).decode(errors="replace").split("\n"):
                    return
            elif self.process.pidfd in ready:
                raise HarnessError(f"{self.name} exited with status {self.process.returncode} "
                                   f"before sending READY=1; its log:\n{tail(self.log())}")

    def alive(self):
        return self.process.returncode is None

    @property
    def returncode(self):
        return self.process.returncode

    def stop(self, timeout=STOP_SECONDS):
        """SIGTERM to this daemon's PID, SIGKILL after `timeout` s; returns its exit status."""
        return self.process.stop(timeout)

    def log(self):
        return self.process.log()

    def close(self):
        if hasattr(self, "process"):
            self.process.close()
        self._notify.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        # A failure inside the block may well be the daemon's: show its side before its log
        # (possibly temporary) goes away.
        if exc_type is not None:
            self.stop()
            print(f"--- {self.name}'s log, last lines:\n{tail(self.log())}", file=sys.stderr,
                  flush=True)
        self.close()


_accel = None


def accelerator():
    """(accel, cpu) for QEMU: ("kvm", "host") or ("tcg", "max"), decided once and reported on
    stderr.

    KVM only when /dev/kvm opens read-write and is served by hardware virtualisation
    (kvm_intel or kvm_amd): some virtual machines offer a /dev/kvm from a paravirtual
    implementation such as kvm_pvm, on which Debian's kernels cannot boot.
    """
    global _accel
    if _accel is None:
        forced = os.environ.get("VSOCKD_E2E_ACCEL", "")
        if forced in ("kvm", "tcg"):
            accel, why = forced, "forced by VSOCKD_E2E_ACCEL"
        elif forced:
            raise HarnessError(f"VSOCKD_E2E_ACCEL={forced}: expected kvm or tcg")
        else:
            accel, why = _detect_kvm()
        print(f"e2e: QEMU accelerator {accel} ({why})", file=sys.stderr, flush=True)
        _accel = (accel, "host" if accel == "kvm" else "max")
    return _accel


def _detect_kvm():
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        return "tcg", f"/dev/kvm unusable: {e.strerror}"
    if not any(os.path.isdir(f"/sys/module/{m}") for m in ("kvm_intel", "kvm_amd")):
        return "tcg", "/dev/kvm is not backed by kvm_intel or kvm_amd"
    return "kvm", "/dev/kvm is usable"


def _qemu_value(text):
    """Escapes a value for a QEMU comma-separated option (a comma is written twice)."""
    return str(text).replace(",", ",,")


class Guest:
    """One QEMU guest booted from a GuestImage that runs `script_text` and powers off.

    Each path in `chardev_sockets` is a vhost-user backend socket (which must already listen:
    QEMU is the client) and becomes one `device`. The script runs under busybox sh; its exit
    status is the guest's result().

    With `reboot=True` QEMU runs without -no-reboot: a guest's `reboot -f` resets the machine
    and the same script runs again on the next boot (the console then shows E2E-BOOT-OK once
    per boot). A panic reboots too instead of ending QEMU, so such a test must bound its waits
    and end the guest itself.
    """

    def __init__(self, image, script_text, chardev_sockets=(), device="vhost-user-vsock-pci",
                 extra_qemu_args=(), mem="256M", name=None, reboot=False):
        if device not in DEVICES:
            raise HarnessError(f"device {device!r}: expected one of {', '.join(DEVICES)}")
        qemu = shutil.which("qemu-system-x86_64")
        if qemu is None:
            raise HarnessError("qemu-system-x86_64 not found: run scripts/setup.sh")
        self.image = image
        self.name = name or f"guest-{image.tag}"
        self._tmp = tempfile.mkdtemp(prefix=f"vsockd-e2e-{self.name}-")
        try:
            script = Path(self._tmp) / "script.sh"
            script.write_text(script_text)
            self.console_path = _log_path(self._tmp, f"{self.name}.console.log")
            self.console_path.write_bytes(b"")
            accel, cpu = accelerator()
            argv = [
                qemu, "-nodefaults", "-no-user-config", "-display", "none",
                *([] if reboot else ["-no-reboot"]),
                "-machine", f"q35,accel={accel},memory-backend=mem0",
                "-cpu", cpu, "-smp", "1", "-m", mem,
                # vhost-user backends map guest RAM: it must be a shared memfd.
                "-object", f"memory-backend-memfd,id=mem0,size={mem},share=on",
                "-kernel", image.vmlinux, "-initrd", image.initramfs,
                # panic=-1 with -no-reboot: a guest that panics ends QEMU instead of hanging.
                "-append", "console=ttyS0 quiet panic=-1",
                "-serial", f"file:{_qemu_value(self.console_path)}", "-monitor", "none",
                "-fw_cfg", f"name=opt/vsockd/script,file={_qemu_value(script)}",
            ]
            for i, path in enumerate(chardev_sockets):
                argv += ["-chardev", f"socket,id=vu{i},path={_qemu_value(path)}",
                         "-device", f"{device},chardev=vu{i}"]
            argv += list(extra_qemu_args)
            self._started = time.monotonic()
            self.process = _Process(argv, _log_path(self._tmp, f"{self.name}.qemu.log"))
        except BaseException:
            self.close()
            raise

    def console(self):
        """The serial console so far, complete lines only (a line still being written could
        otherwise match a prefix of what it will say)."""
        text = self.console_path.read_bytes().decode(errors="replace").replace("\r", "")
        return text[: text.rfind("\n") + 1]

    def _failure(self, what):
        # Name the log files only where they outlive the test (--log-dir).
        console, qemu = ((f" ({self.console_path})", f" ({self.process.log_path})")
                         if options.log_dir else ("", ""))
        return HarnessError(f"guest {self.name} ({self.image.tag}, pid {self.process.pid}): {what}"
                            f"\n--- last console lines{console}:\n{tail(self.console())}"
                            f"\n--- QEMU's output{qemu}:\n{tail(self.process.log(), 10)}")

    def wait_for(self, pattern, timeout):
        """Returns the first re.Match of `pattern` (multiline) in the console, waiting up to
        `timeout` seconds (a bounded wait for a condition: see the module's docstring)."""
        regex = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.console())
            if match:
                return match
            if self.process.returncode is not None:
                # Exited: the file is complete, one last look decides.
                match = regex.search(self.console())
                if match:
                    return match
                raise self._failure(f"QEMU exited with status {self.process.returncode} before "
                                    f"the console showed /{pattern}/")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._failure(f"no /{pattern}/ on the console within {timeout} s")
            self.process.wait(min(POLL_SECONDS, remaining))

    def wait_booted(self, timeout=60.0):
        """Waits for E2E-BOOT-OK, checks it is the image's kernel, and reports the boot time
        on stderr (a figure for the logs, never asserted); returns the seconds taken."""
        release = self.wait_for(BOOT_OK.pattern, timeout).group(1)
        seconds = time.monotonic() - self._started
        if release != self.image.release:
            raise self._failure(f"booted kernel {release}, expected {self.image.release}")
        print(f"e2e: guest {self.name} booted {release} in {seconds:.1f} s", file=sys.stderr,
              flush=True)
        return seconds

    def wait_exit(self, timeout=60.0):
        """Waits up to `timeout` seconds for QEMU to exit; returns its exit status."""
        rc = self.process.wait(timeout)
        if rc is None:
            raise self._failure(f"QEMU still running after {timeout} s")
        return rc

    def result(self):
        """The script's exit status, from the console's E2E-RESULT line."""
        match = RESULT.search(self.console())
        if match is None:
            raise self._failure("no E2E-RESULT line on the console")
        return int(match.group(1))

    def script_output(self):
        """The lines the script printed: between E2E-BOOT-OK and E2E-RESULT."""
        text = self.console()
        start, end = BOOT_OK.search(text), RESULT.search(text)
        if start is None or end is None:
            raise self._failure("the console lacks E2E-BOOT-OK or E2E-RESULT")
        return text[start.end() + 1 : end.start()]

    def close(self):
        """Stops QEMU if it still runs (by PID) and removes the temporary directory."""
        if hasattr(self, "process"):
            self.process.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_log(name, text):
    """Writes `text` to the file `name` of the --log-dir and returns its path; without a
    --log-dir, writes nothing and returns None (the test's failure messages carry the text)."""
    if options.log_dir is None:
        return None
    path = _log_path(None, name)
    path.write_text(text)
    return path


class PrivateLink:
    """A private Ethernet link between two guests, for control channels (e.g. the TCP control
    connection of the kernel's vsock_test): each end is a virtio-net NIC on QEMU's `dgram`
    netdev, whose frames go as datagrams between two AF_UNIX sockets in a temporary
    directory. No host interface, bridge or IP stack is involved; each QEMU binds its own
    end's socket at start-up and sends to the other's (a frame sent before the other QEMU
    bound its socket is dropped, like on a cable not yet plugged in: the guests' ARP and TCP
    retransmit).

    End `i` (0 or 1) gets MAC 52:54:00:00:77:0<i+1> and the address `address(i)` in
    10.77.0.0/24; `guest_setup(i)` is the guest script's shell line that configures it (the
    guests have this NIC only, so it is eth0; virtio_net is in every image).
    """

    SUBNET_PREFIX = "10.77.0."

    def __init__(self, name="link"):
        self.name = name
        self._tmp = tempfile.mkdtemp(prefix=f"vsockd-e2e-{name}-")
        self._paths = [os.path.join(self._tmp, f"end{i}.sock") for i in (0, 1)]

    def address(self, end):
        return f"{self.SUBNET_PREFIX}{end + 1}"

    def qemu_args(self, end):
        """QEMU arguments (for Guest's extra_qemu_args) of end 0 or 1."""
        local, remote = self._paths[end], self._paths[1 - end]
        netdev = f"{self.name}{end}"
        return ["-netdev", f"dgram,id={_qemu_value(netdev)},local.type=unix,"
                           f"local.path={_qemu_value(local)},remote.type=unix,"
                           f"remote.path={_qemu_value(remote)}",
                # romfile= : no option ROM, the guests boot from -kernel.
                "-device", f"virtio-net-pci,netdev={_qemu_value(netdev)},"
                           f"mac=52:54:00:00:77:{end + 1:02x},romfile="]

    def guest_setup(self, end):
        return (f"ip link set lo up && ip addr add {self.address(end)}/24 dev eth0 && "
                "ip link set eth0 up")

    def close(self):
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ControlClient:
    """`vhost-vsockd ctl -s PATH COMMAND [ARG...]`, the client of a daemon's --control-socket,
    run as a subprocess with a deadline (it prints the reply's body on stdout and exits 0, or
    the error on stderr and exits 1; 2 for a bad ctl command line).

    Every call is appended to `<name>.ctl.log` in the --log-dir (command, exit status, seconds,
    stdout, stderr), next to the daemon's own log.
    """

    def __init__(self, binary, path, name="ctl", timeout=30.0):
        self.binary, self.path, self.timeout = str(binary), str(path), timeout
        self.log_path = (Path(options.log_dir) / f"{name}.ctl.log") if options.log_dir else None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.write_text("")

    def run(self, *words, timeout=None):
        """Runs one command; returns (exit status, stdout, stderr, seconds). A client still
        running after `timeout` seconds is killed (by subprocess, its own child) and fails."""
        argv = [self.binary, "ctl", "-s", self.path, *map(str, words)]
        started = time.monotonic()
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=timeout or self.timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"{shlex.join(argv)}: no reply within {timeout or self.timeout} s")
        seconds = time.monotonic() - started
        if self.log_path is not None:
            with open(self.log_path, "a") as log:
                log.write(f"$ {shlex.join(argv)}\n# exit {done.returncode} after {seconds:.3f} s"
                          f"\n{done.stdout}"
                          + (f"# stderr:\n{done.stderr}" if done.stderr else "") + "\n")
        return done.returncode, done.stdout, done.stderr, seconds

    def ok(self, *words, timeout=None):
        """Runs a command that must succeed; returns its stdout."""
        rc, out, err, _ = self.run(*words, timeout=timeout)
        if rc != 0:
            raise AssertionError(f"ctl {' '.join(map(str, words))}: exit status {rc}, "
                                 f"stderr: {err.strip()!r}, stdout: {out.strip()!r}")
        return out

    def json(self, *words, timeout=None):
        """Runs a command that must succeed and answers JSON; returns the parsed body."""
        out = self.ok(*words, timeout=timeout)
        try:
            return json.loads(out)
        except ValueError as e:
            raise AssertionError(f"ctl {' '.join(map(str, words))}: the reply is not JSON "
                                 f"({e}): {out!r}") from None

    def fails(self, *words, status=1, timeout=None):
        """Runs a command that must fail with `status`; returns its stderr."""
        rc, out, err, _ = self.run(*words, timeout=timeout)
        if rc != status:
            raise AssertionError(f"ctl {' '.join(map(str, words))}: exit status {rc}, expected "
                                 f"{status}; stdout: {out.strip()!r}, stderr: {err.strip()!r}")
        return err


class _CountingResult(unittest.TextTestResult):
    """unittest counts runs and failures only; the closing line needs the passes too."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passed = 0

    def addSuccess(self, test):
        super().addSuccess(test)
        self.passed += 1


def main():
    """Entry point of every tests/e2e/test_*.py: reads the harness options, runs the module's
    unittest tests, and ends with the line "N passed, N failed". Other arguments go to
    unittest (test names, -k PATTERN)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--daemon-bin", default=options.daemon_bin,
                        help="daemon binary under test (env VSOCKD_E2E_DAEMON_BIN)")
    parser.add_argument("--log-dir", default=options.log_dir,
                        help="keep daemon, QEMU and console logs here (env VSOCKD_E2E_LOG_DIR)")
    args, rest = parser.parse_known_args()
    if "-h" in rest or "--help" in rest:
        parser.print_help()
    options.daemon_bin, options.log_dir = args.daemon_bin, args.log_dir

    program = unittest.main(module="__main__", argv=[sys.argv[0], *rest], exit=False,
                            testRunner=unittest.TextTestRunner(resultclass=_CountingResult,
                                                               verbosity=2))
    result = program.result
    # The project never skips a test (DEVELOPERS.md): a skipped one counts as failed.
    failed = (len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
              + len(result.skipped))
    sys.stderr.flush()
    print(f"{result.passed} passed, {failed} failed", flush=True)
    sys.exit(0 if failed == 0 and result.passed > 0 else 1)

