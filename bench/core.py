"""Micro-benchmark of Pyralog's sans-IO core alone: no TUN, no sockets, no event loop.

Two ``Device``s complete a handshake in memory; then we time

- encrypt: ``Device.send_packet`` of an IPv4 packet on the established session (routing
  by destination, padding, ChaCha20-Poly1305, header, timers) with the output drained;
- decrypt: ``Device.receive_datagram`` of the datagrams the encrypt loop produced (index
  lookup, ChaCha20-Poly1305, replay window, source check) with the output drained;

for a 1420-byte IP packet (the tunnel MTU) and a 64-byte one. The figure is packets per
second on one core, the best of several repetitions (the least disturbed by other load).

It also times one packet's round trip through the core (encrypt on a, decrypt on b, an
84-byte ping-sized packet) back to back and after the process slept 10 ms, as a tunnel
carrying pings does between packets: the difference is what an idle tunnel pays per
packet for caches and predictors that went cold, which bounds idle ping latency.

    .venv/bin/python bench/core.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import struct
import sys
import time

from stats import median

from pyralog.wireguard.device import Device
from pyralog.wireguard.keys import PrivateKey

A_EP = ("192.0.2.1", 51820)
B_EP = ("192.0.2.2", 51820)
A_IP = "10.0.0.1"
B_IP = "10.0.0.2"
SIZES = (1420, 64)


def ipv4_packet(src: str, dst: str, size: int) -> bytes:
    """A UDP-in-IPv4 packet of exactly ``size`` bytes (header checksum left zero)."""
    payload = bytes(size - 28)
    udp = struct.pack("!HHHH", 40000, 5201, 8 + len(payload), 0)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        size,
        0,
        0,
        64,
        17,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return header + udp + payload


def make_session(now: float = 1.0) -> tuple[Device, Device]:
    """Two devices with a confirmed session a -> b (b has received a's first data)."""
    a_key, b_key = PrivateKey.generate(), PrivateKey.generate()
    wall = time.time() - now
    a = Device(a_key, clock_offset=wall)
    b = Device(b_key, clock_offset=wall)
    a.add_peer(b_key.public_key, now, endpoint=B_EP, allowed_ips=[f"{B_IP}/32"])
    b.add_peer(a_key.public_key, now, endpoint=A_EP, allowed_ips=[f"{A_IP}/32"])
    a.send_packet(ipv4_packet(A_IP, B_IP, 64), now)  # starts the handshake
    endpoints = {A_EP: a, B_EP: b}
    sources = {id(a): A_EP, id(b): B_EP}
    for _ in range(20):
        moved = False
        for dev in (a, b):
            for data, dst in dev.datagrams_to_send():
                moved = True
                endpoints[dst].receive_datagram(data, sources[id(dev)], now)
        if not moved:
            break
    delivered = b.packets_to_deliver()
    if len(delivered) != 1:
        raise RuntimeError(f"handshake failed in memory: drops a={a.drops} b={b.drops}")
    return a, b


def _time_encrypt(a: Device, packet: bytes, count: int, now: float) -> tuple[float, list]:
    send, drain = a.send_packet, a.datagrams_to_send
    out: list = []
    start = time.perf_counter()
    for _ in range(count // 256):
        for _ in range(256):
            send(packet, now)
        out.extend(drain())
    elapsed = time.perf_counter() - start
    return elapsed, out


def _time_decrypt(b: Device, datagrams: list, now: float) -> float:
    receive, drain = b.receive_datagram, b.packets_to_deliver
    delivered = 0
    start = time.perf_counter()
    for i in range(0, len(datagrams), 256):
        for data, _ in datagrams[i : i + 256]:
            receive(data, A_EP, now)
        delivered += len(drain())
    elapsed = time.perf_counter() - start
    if delivered != len(datagrams):
        raise RuntimeError(f"decrypt delivered {delivered} of {len(datagrams)}: {b.drops}")
    return elapsed


COLD_GAP = 0.010  # seconds asleep before each "cold" packet: the benchmark's ping interval


def cold_path(samples: int = 60) -> dict:
    """Median microseconds for one packet through encrypt and decrypt, warm and cold."""
    a, b = make_session()
    packet = ipv4_packet(A_IP, B_IP, 84)
    clock = time.perf_counter_ns

    def one(now: float) -> float:
        start = clock()
        a.send_packet(packet, now)
        for data, _ in a.datagrams_to_send():
            b.receive_datagram(data, A_EP, now)
        delivered = b.packets_to_deliver()
        elapsed = (clock() - start) / 1000
        if len(delivered) != 1:
            raise RuntimeError(f"cold-path packet not delivered: {b.drops}")
        return elapsed

    def empty(now: float) -> float:
        start = clock()
        return (clock() - start) / 1000

    out: dict = {"idle_gap_ms": COLD_GAP * 1000, "samples": samples}
    for name, fn in (("round_trip", one), ("empty", empty)):
        warm, cold = [], []
        for i in range(samples):
            fn(2.0 + i * 1e-3)  # warms up, then measured back to back
            warm.append(fn(2.0 + i * 1e-3))
            time.sleep(COLD_GAP)
            cold.append(fn(2.0 + i * 1e-3))
        out[f"{name}_warm_us"] = median(warm)
        out[f"{name}_cold_us"] = median(cold)
    return out


def run(quick: bool = False) -> dict:
    """Packets per second for each size and path; JSON-ready."""
    repeats = 3 if quick else 7
    results: dict = {"repeats": repeats, "sizes": {}}
    gc_was_enabled = gc.isenabled()
    for size in SIZES:
        count = (4096 if quick else 16384) if size > 512 else (8192 if quick else 32768)
        a, b = make_session()
        now = 1.0
        packet = ipv4_packet(A_IP, B_IP, size)
        enc, dec = [], []
        for _ in range(repeats):
            gc.disable()
            try:
                t_enc, datagrams = _time_encrypt(a, packet, count, now)
                t_dec = _time_decrypt(b, datagrams, now)
            finally:
                if gc_was_enabled:
                    gc.enable()
            enc.append(len(datagrams) / t_enc)
            dec.append(len(datagrams) / t_dec)
        results["sizes"][str(size)] = {
            "packet_bytes": size,
            "packets_per_repeat": count,
            "encrypt_pps": max(enc),
            "decrypt_pps": max(dec),
            "encrypt_pps_median": median(enc),
            "decrypt_pps_median": median(dec),
            "encrypt_gbit_s": max(enc) * size * 8 / 1e9,
            "decrypt_gbit_s": max(dec) * size * 8 / 1e9,
            "encrypt_runs": enc,
            "decrypt_runs": dec,
        }
    results["cold"] = cold_path(30 if quick else 60)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Micro-benchmark of the sans-IO core.")
    p.add_argument("--quick", action="store_true", help="fewer, shorter repetitions")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    res = run(args.quick)
    if args.json:
        json.dump(res, sys.stdout, indent=1)
        print()
        return 0
    print(f"{'packet':>8} {'encrypt pkt/s':>14} {'decrypt pkt/s':>14} {'enc Gbit/s':>11}")
    for size, r in res["sizes"].items():
        print(
            f"{size:>7}B {r['encrypt_pps']:>14,.0f} {r['decrypt_pps']:>14,.0f}"
            f" {r['encrypt_gbit_s']:>11.3f}"
        )
    c = res["cold"]
    print(
        f"one 84-byte packet, encrypt + decrypt: {c['round_trip_warm_us']:.1f} us back to back,"
        f" {c['round_trip_cold_us']:.1f} us after {c['idle_gap_ms']:.0f} ms idle"
        f" (an empty timing: {c['empty_warm_us']:.1f} / {c['empty_cold_us']:.1f} us)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
