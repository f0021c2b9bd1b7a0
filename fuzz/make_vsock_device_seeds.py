#!/usr/bin/env python3
"""Writes the seed corpus of the `vsock_device` fuzz target (format: vsock_device.cpp).

Seeds walk the device's main paths, so the fuzzer mutates from deep states: a guest
connecting to a host listener and sending data, a host client's CONNECT, credit traffic,
half-close and RST; and between sibling VMs (CIDs 3 {a}, 4 {a, b}, 5 {b}): a connection
with data both ways cut to the receiver's buffers, a sender held by a receiver without rx
buffers, refusals (no shared group, unknown CID, own CID, spoofed source, the connection
cap), SEQPACKET messages, and VMs that pause, restart, lose their front-end, break their rx
ring or go away with packets on their way.
"""
import struct
import sys
from pathlib import Path

REQUEST, RESPONSE, RST, SHUTDOWN, RW, CREDIT_UPDATE, CREDIT_REQUEST = 1, 2, 3, 4, 5, 6, 7
STREAM, SEQPACKET = 1, 2
EOM = 1
VM3, VM4, VM5 = 0, 1, 2  # VM indexes in the target: CIDs 3, 4, 5
HOST = None

# Step kinds (low 3 bits of a step byte; the VM index is in the bits above).
TX, RX, HOST_CLIENT, LISTENER, HOST_SOCKET, RUN, LIFECYCLE, RUN_ONE = range(8)
PAUSE, TX_RESTART, DRIVER_RESTART, FRONTEND_RECONNECT, REMOVE, BREAK_RING = range(6)


def step(kind, vm=0):
    return bytes([kind | (vm << 3)])


def features(event_idx=False, seqpacket=False):
    """The same features for the three VMs (two bits each)."""
    bits = (1 if event_idx else 0) | (2 if seqpacket else 0)
    return bytes([bits | bits << 2 | bits << 4])


def rx(vm, chains, size=4096, second=None):
    out = step(RX, vm) + bytes([chains - 1])
    for _ in range(chains):
        out += struct.pack("<H", size)
        out += bytes([1]) + struct.pack("<H", second) if second is not None else bytes([0])
    return out


def tx(vm, op, src_port, dst_port, payload=b"", dst=HOST, flags=0, buf_alloc=262144, fwd_cnt=0, parts=(),
       sock_type=STREAM, spoof_as=None, to_host_port=False):
    """A packet from VM `vm` to the host (dst=HOST), to VM index `dst`, or to the raw CID
    ("cid", n); `spoof_as`: another VM's index, claimed as the source."""
    which = 8  # len = payload length
    if spoof_as is None:
        which |= 1
    else:
        which |= 32
    if dst is HOST:
        which |= 2
    if sock_type == STREAM:
        which |= 4
    if to_host_port:  # dst port 2^30 + dst_port: a host-initiated connection's host port
        which |= 16
    out = step(TX, vm) + bytes([which])
    if spoof_as is not None:
        out += bytes([spoof_as])
    out += struct.pack("<H", src_port)
    if dst is not HOST:
        if isinstance(dst, tuple):
            out += bytes([3]) + struct.pack("<I", dst[1])
        else:
            out += bytes([dst])
    out += bytes([dst_port]) if to_host_port else struct.pack("<H", dst_port)
    if sock_type != STREAM:
        out += bytes([sock_type])
    out += bytes([op, flags]) + struct.pack("<II", buf_alloc, fwd_cnt)
    out += struct.pack("<H", len(payload)) + payload
    # Each part at most 256 bytes; the rest of the packet goes into one more descriptor.
    out += bytes([len(parts)]) + b"".join(struct.pack("<H", p - 1) for p in parts)
    return out


def listener(vm, port):
    return step(LISTENER, vm) + bytes([port])


def host_client(vm, line):
    return step(HOST_CLIENT, vm) + bytes([len(line)]) + line


def host_send(index, data):
    return step(HOST_SOCKET) + bytes([index, 0]) + struct.pack("<H", len(data)) + data


def run():
    return step(RUN)


def run_one(handlers=1):
    return step(RUN_ONE) + bytes([handlers - 1])


def lifecycle(vm, what, ring=0):
    out = step(LIFECYCLE, vm) + bytes([what])
    return out + bytes([ring]) if what == BREAK_RING else out


def connect(a, b, a_port, b_port, sock_type=STREAM):
    """VM a connects to VM b's port; b's guest answers."""
    return (tx(a, REQUEST, a_port, b_port, dst=b, sock_type=sock_type) + run()
            + tx(b, RESPONSE, b_port, a_port, dst=a, sock_type=sock_type) + run())


DATA = bytes(range(250)) * 32  # 8000 bytes: payloads are at most 8191 bytes in the input

SEEDS = {
    # The host side, on VM 3.
    "guest-connects": features() + rx(VM3, 8) + listener(VM3, 1) + tx(VM3, REQUEST, 5000, 1) + run()
    + tx(VM3, RW, 5000, 1, b"hello host" * 50, parts=(44, 100)) + run() + host_send(0, b"hi guest" * 100) + run()
    + tx(VM3, SHUTDOWN, 5000, 1, flags=3) + run(),
    "guest-refused": features() + rx(VM3, 2) + tx(VM3, REQUEST, 5001, 3) + run() + tx(VM3, RW, 5001, 3, b"x") + run(),
    "host-connects": features(event_idx=True) + rx(VM3, 8) + host_client(VM3, b"CONNECT 1234\npayload") + run() + run()
    + tx(VM3, RESPONSE, 1234, 0, to_host_port=True) + run() + host_send(0, b"more") + run()
    + tx(VM3, CREDIT_REQUEST, 1234, 0, to_host_port=True) + run()
    + tx(VM3, RW, 1234, 0, b"back", to_host_port=True) + run(),
    "seqpacket": features(seqpacket=True) + rx(VM3, 4) + host_client(VM3, b"connect 77\n") + run()
    + tx(VM3, RST, 77, 0) + run(),
    # Sibling VMs.
    "sibling-stream": features() + rx(VM3, 8) + rx(VM4, 8, 1024, 512) + connect(VM3, VM4, 40000, 5000)
    + tx(VM3, RW, 40000, 5000, DATA, dst=VM4, parts=(44, 200)) + run()
    + tx(VM4, CREDIT_UPDATE, 5000, 40000, dst=VM3, fwd_cnt=len(DATA)) + rx(VM4, 8)
    + tx(VM4, RW, 5000, 40000, DATA[:3000], dst=VM3) + run()
    + tx(VM3, SHUTDOWN, 40000, 5000, dst=VM4, flags=3) + run() + tx(VM4, RST, 5000, 40000, dst=VM3) + run(),
    "sibling-backpressure": features(event_idx=True) + rx(VM3, 8) + connect(VM4, VM3, 40001, 5001)
    + tx(VM3, RW, 5001, 40001, DATA[:6000], dst=VM4) + run()  # VM 4 has no rx buffers: held
    + tx(VM3, REQUEST, 5002, 9) + run() + run_one()  # queued behind the held packet
    + rx(VM4, 2, 1024) + run_one(2) + run()  # part of it goes
    + lifecycle(VM3, TX_RESTART) + run()  # the rest is set aside, the chain returned
    + rx(VM4, 8) + run() + lifecycle(VM4, PAUSE) + run(),
    "sibling-refused": features() + rx(VM3, 8) + rx(VM4, 8) + rx(VM4, 8) + rx(VM5, 4)
    + tx(VM3, REQUEST, 41000, 80, dst=VM5) + tx(VM3, REQUEST, 41001, 80, dst=("cid", 9))
    + tx(VM3, REQUEST, 41002, 80, dst=VM3) + tx(VM3, RW, 41003, 80, b"liar", dst=VM4, spoof_as=VM5) + run()
    + tx(VM5, REQUEST, 41004, 80, dst=VM4) + run()
    + b"".join(tx(VM3, REQUEST, 42000 + i, 80, dst=VM4) + run() for i in range(10)),
    "sibling-gone": features() + rx(VM3, 8) + rx(VM4, 1) + connect(VM3, VM4, 40002, 5003)
    + tx(VM3, RW, 40002, 5003, DATA, dst=VM4) + run_one() + lifecycle(VM4, REMOVE) + run()
    + tx(VM3, REQUEST, 40003, 5003, dst=VM4) + run(),
    "sibling-restart": features() + rx(VM4, 8) + connect(VM5, VM4, 40004, 5004)
    + tx(VM4, RW, 5004, 40004, DATA[:5000], dst=VM5) + run()  # VM 5 has no rx buffers
    + lifecycle(VM4, DRIVER_RESTART) + run() + rx(VM5, 4) + run()
    + connect(VM5, VM4, 40005, 5005) + tx(VM5, RW, 40005, 5005, DATA[:2000], dst=VM4) + run_one()
    + lifecycle(VM5, FRONTEND_RECONNECT) + run() + rx(VM4, 4) + run(),
    "sibling-seqpacket": features(seqpacket=True) + rx(VM3, 4) + rx(VM4, 4, 1024)
    + connect(VM3, VM4, 40006, 5006, SEQPACKET)
    + tx(VM3, RW, 40006, 5006, DATA[:5000], dst=VM4, flags=EOM, sock_type=SEQPACKET, parts=(44, 256, 100)) + run(),
    "sibling-rx-broken": features() + rx(VM3, 4) + tx(VM3, RW, 40007, 5007, DATA[:100], dst=VM4) + run()
    + lifecycle(VM3, BREAK_RING, 0) + tx(VM4, RW, 5007, 40007, DATA[:100], dst=VM3) + run()
    + tx(VM3, REQUEST, 40008, 9) + run() + rx(VM4, 2) + run(),
}

out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "corpus" / "vsock_device")
out_dir.mkdir(parents=True, exist_ok=True)
for name, data in SEEDS.items():
    (out_dir / name).write_bytes(data)
print(f"wrote {len(SEEDS)} seeds to {out_dir}")
