#!/usr/bin/env python3
"""Writes the seed corpus of the `session` fuzz target (see session.cpp for the format).

Seeds are the sequences QEMU really sends (qemu-7.2 trace, pre-7.2, pause/resume), so the
fuzzer starts from deep protocol states instead of rediscovering the handshake.
"""
import struct
import sys
from pathlib import Path

UADDR = 0x7F0000000000
RAM = 64 * 1024
BIT30 = 1 << 30
VERSION_1 = 1 << 32
EVENT_IDX = 1 << 29
INDIRECT = 1 << 28
PROTOCOL = 0x1A209  # MQ|REPLY_ACK|CONFIG|RESET_DEVICE|CONFIGURE_MEM_SLOTS|STATUS
MEMFD, EVENTFD = 0, 1


def msg(req, body=b"", fds=(), flags=1):
    return bytes([0, req, flags]) + struct.pack("<H", len(body)) + body + bytes([len(fds)]) + bytes(fds)


def poke(offset, data):
    return bytes([1]) + struct.pack("<HB", offset, len(data)) + data


def kick(q):
    return bytes([2, q])


def u64(v):
    return struct.pack("=Q", v)


def ring(q):
    base = 0x1000 + q * 0x1000
    return base, base + 0x400, base + 0x800  # desc, avail, used


def start(features, enable=True, base=0):
    out = msg(2, u64(features))
    out += msg(5, struct.pack("=II", 1, 0) + struct.pack("=QQQQ", 0, RAM, UADDR, 0), [MEMFD], flags=9)
    for q in (0, 1):
        desc, avail, used = ring(q)
        out += msg(8, struct.pack("=II", q, 16))
        out += msg(10, struct.pack("=II", q, base))
        out += msg(9, struct.pack("=IIQQQQ", q, 0, UADDR + desc, UADDR + used, UADDR + avail, 0))
        out += msg(12, u64(q), [EVENTFD])
    if enable:
        for q in (0, 1):
            out += msg(18, struct.pack("=II", q, 1))
    return out


def post_chains():
    out = b""
    for q in (0, 1):
        desc, avail, _ = ring(q)
        write = 2 if q == 0 else 0
        # head 0: two chained buffers; head 2: an indirect table at 0x8000
        out += poke(desc, struct.pack("<QIHH", 0x6000, 64, 1 | write, 1))
        out += poke(desc + 16, struct.pack("<QIHH", 0x6100, 32, write, 0))
        out += poke(desc + 32, struct.pack("<QIHH", 0x8000, 32, 4, 0))
        out += poke(0x8000, struct.pack("<QIHH", 0x7000, 16, 1 | write, 1) + struct.pack("<QIHH", 0x7100, 16, write, 0))
        out += poke(avail, struct.pack("<HHHH", 0, 2, 0, 2))
    return out


def stop():
    out = b""
    for q in (0, 1):
        out += msg(18, struct.pack("=II", q, 0))
    for q in (0, 1):
        out += msg(11, struct.pack("=II", q, 0))
    return out


def realize():
    return (msg(1) + msg(15) + msg(16, u64(PROTOCOL)) + msg(17) + msg(36) + msg(3) + msg(1)
            + msg(13, u64(0), [EVENTFD]) + msg(14, u64(0), [EVENTFD])
            + msg(13, u64(1), [EVENTFD]) + msg(14, u64(1), [EVENTFD])
            + msg(24, struct.pack("=III", 0, 8, 0) + bytes(8)))


SEEDS = {
    "qemu-7.2": realize() + start(VERSION_1 | BIT30 | EVENT_IDX | INDIRECT) + post_chains() + kick(0) + kick(1) + stop(),
    "pre-7.2": msg(1) + msg(3) + start(VERSION_1, enable=False) + post_chains() + kick(0) + kick(1),
    "pause-resume": realize() + start(VERSION_1 | BIT30) + post_chains() + kick(1) + stop()
    + start(VERSION_1 | BIT30, base=2) + kick(0) + bytes([3]),
    "kick-before-enable": realize() + start(VERSION_1 | BIT30 | EVENT_IDX, enable=False) + post_chains() + kick(0)
    + msg(18, struct.pack("=II", 0, 1)),
    "mem-slots": msg(16, u64(PROTOCOL)) + msg(37, struct.pack("=Q", 0) + struct.pack("=QQQQ", 0, RAM, UADDR, 0), [MEMFD])
    + msg(38, struct.pack("=Q", 0) + struct.pack("=QQQQ", 0, RAM, UADDR, 0)),
}

out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "corpus" / "session")
out_dir.mkdir(parents=True, exist_ok=True)
for name, data in SEEDS.items():
    (out_dir / name).write_bytes(data)
print(f"wrote {len(SEEDS)} seeds to {out_dir}")
