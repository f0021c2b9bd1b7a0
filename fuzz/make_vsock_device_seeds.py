#!/usr/bin/env python3
"""Writes the seed corpus of the `vsock_device` fuzz target (format: vsock_device.cpp).

Seeds walk the device's main paths, so the fuzzer mutates from deep states: a guest
connecting to a host listener and sending data, a host client's CONNECT, credit traffic,
half-close and RST.
"""
import struct
import sys
from pathlib import Path

REQUEST, RESPONSE, RST, SHUTDOWN, RW, CREDIT_UPDATE, CREDIT_REQUEST = 1, 2, 3, 4, 5, 6, 7


def rx(chains, size=4096):
    out = bytes([1, chains - 1])
    for _ in range(chains):
        out += struct.pack("<HB", size, 0)
    return out


def tx(op, src_port, dst_port, payload=b"", flags=0, buf_alloc=262144, fwd_cnt=0, parts=(), to_host_port=False):
    which = 1 | 2 | 4 | 8  # guest source, CID 2, stream, len = payload length
    if to_host_port:  # dst port 2^30 + dst_port: a host-initiated connection's host port
        which |= 16
        out = bytes([0, which]) + struct.pack("<HB", src_port, dst_port)
    else:
        out = bytes([0, which]) + struct.pack("<HH", src_port, dst_port)
    out += bytes([op, flags]) + struct.pack("<II", buf_alloc, fwd_cnt)
    out += struct.pack("<H", len(payload)) + payload
    out += bytes([len(parts)]) + b"".join(struct.pack("<H", p - 1) for p in parts)
    return out


def listener(port):
    return bytes([3, port])


def host_client(line):
    return bytes([2, len(line)]) + line


def host_send(index, data):
    return bytes([4, index, 0]) + struct.pack("<H", len(data)) + data


def run():
    return bytes([5])


SEEDS = {
    "guest-connects": bytes([0]) + rx(8) + listener(1) + tx(REQUEST, 5000, 1) + run()
    + tx(RW, 5000, 1, b"hello host" * 50, parts=(44, 100)) + run() + host_send(0, b"hi guest" * 100) + run()
    + tx(SHUTDOWN, 5000, 1, flags=3) + run(),
    "guest-refused": bytes([0]) + rx(2) + tx(REQUEST, 5001, 3) + run() + tx(RW, 5001, 3, b"x") + run(),
    "host-connects": bytes([1]) + rx(8) + host_client(b"CONNECT 1234\npayload") + run() + run()
    + tx(RESPONSE, 1234, 0, to_host_port=True) + run() + host_send(0, b"more") + run()
    + tx(CREDIT_REQUEST, 1234, 0, to_host_port=True) + run() + tx(RW, 1234, 0, b"back", to_host_port=True) + run(),
    "seqpacket": bytes([2]) + rx(4) + host_client(b"connect 77\n") + run() + tx(RST, 77, 0) + run(),
}

out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "corpus" / "vsock_device")
out_dir.mkdir(parents=True, exist_ok=True)
for name, data in SEEDS.items():
    (out_dir / name).write_bytes(data)
print(f"wrote {len(SEEDS)} seeds to {out_dir}")
