#!/usr/bin/env python3
"""The main job's demo: vhost-vsockd serving a real QEMU guest.

Starts vhost-vsockd for one VM (CID 3), boots a Debian guest with
`-device vhost-user-vsock-pci`, and has a host application and a guest application
exchange messages both ways over hybrid vsock (AF_UNIX on the host, AF_VSOCK in the guest):

  1. host -> guest: the host app connects to the VM's socket, writes "CONNECT 5000\\n",
     reads "OK <port>\\n", sends a greeting; the guest app (listening on vsock port 5000)
     echoes it back.
  2. guest -> host: the guest app connects to CID 2 port 1234, which the daemon connects
     to the host app listening on <uds-path>_1234; the host app sends a message, the guest
     prints it and closes.
"""
import argparse
import socket
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
import harness  # noqa: E402

GUEST_SCRIPT = """
echo "guest: kernel $(uname -r), $(vsock-tool cid 2>&1)"
vsock-tool listen 5000 --tag echo --timeout 60 echo >/dev/null 2>&1 &
echo "guest: listening on vsock port 5000 (echo)"
echo "guest: ready"
msg=$(vsock-tool connect 2 1234 --timeout 60 cat 2>/dev/null)
echo "guest: host app on CID 2 port 1234 says: $msg"
wait
"""


def recv_all(sock):
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--daemon-bin", required=True, help="path to vhost-vsockd")
    parser.add_argument("--kernel", default="6.12", choices=["6.1", "6.12"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vsockd-demo-") as tmp:
        vhost_socket = str(Path(tmp) / "vhost.sock")
        uds = str(Path(tmp) / "vm3.vsock")
        # The host app's listener for guest-initiated connections to port 1234.
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(uds + "_1234")
        listener.listen(1)
        listener.settimeout(60)
        argv = [args.daemon_bin, "--guest-cid", "3", "--socket", vhost_socket, "--uds-path", uds]
        print("== " + " ".join(argv))
        with harness.Daemon(argv) as daemon:
            print(f"== booting a Debian {args.kernel} guest with -device vhost-user-vsock-pci")
            with harness.Guest(harness.GuestImage(args.kernel), GUEST_SCRIPT, chardev_sockets=[vhost_socket],
                               device="vhost-user-vsock-pci", name="demo") as guest:
                guest.wait_booted()
                guest.wait_for(r"guest: ready", timeout=30)

                host = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                host.settimeout(30)
                host.connect(uds)
                host.sendall(b"CONNECT 5000\n")
                ok = b""
                while not ok.endswith(b"\n"):
                    byte = host.recv(1)
                    if not byte:
                        raise SystemExit("demo: the daemon closed the host connection (no guest listener?)")
                    ok += byte
                print(f"host: CONNECT 5000 -> {ok.decode().strip()}")
                greeting = b"hello guest, this is the host app"
                host.sendall(greeting)
                host.shutdown(socket.SHUT_WR)
                echoed = recv_all(host)
                print(f"host: sent {greeting.decode()!r}, the guest echoed {echoed.decode()!r}")
                host.close()

                conn, _ = listener.accept()
                conn.sendall(b"hello guest, the host app accepted your connection")
                conn.shutdown(socket.SHUT_WR)
                recv_all(conn)
                conn.close()
                guest.wait_for(r"host app on CID 2 port 1234 says", timeout=30)
                guest.wait_exit()
                print(guest.script_output().rstrip())
                status = guest.result()
                if echoed != greeting:
                    status = status or 1
            daemon.stop()
            print("== daemon log")
            print(daemon.log().rstrip())
    print("== demo " + ("succeeded" if status == 0 else f"failed (status {status})"))
    return status


if __name__ == "__main__":
    sys.exit(main())
