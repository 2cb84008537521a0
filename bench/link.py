"""Micro-benchmark of the link (pyralog.link.Link) with and without datagram transforms.

Two Links in one process, each a Device and real UDP sockets on loopback, with an
established session. One sends bursts of 64 transport datagrams (``send_packet`` then
``Link.flush``: outbound pipeline, GSO batches), the other reads them (``Link.receive``:
GRO reads, inbound pipeline, decryption) until the burst is in. The figure is packets
per second through both ends on one core, median of several rounds, for each pipeline:

- none: no transform (the pipeline is skipped);
- identity: one identity transform on both sides (the cost of the seam itself);
- identity x4: four of them, to make a per-transform cost visible if there is one.

Rounds interleave the pipelines so machine noise hits them alike; ratios are to "none"
in the same run.

    .venv/bin/python bench/link.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import select
import sys
import time

from core import A_IP, B_IP, ipv4_packet
from stats import median, ratio

from pyralog.link import Link, PeerChange, SetRequest, Transform
from pyralog.udp import UdpTransport
from pyralog.wireguard.device import Device
from pyralog.wireguard.keys import PrivateKey

BURST = 64
PIPELINES = {"none": 0, "identity": 1, "identity x4": 4}


def make_pair(transforms: int) -> tuple[Link, Link]:
    a = Link(
        Device(PrivateKey.generate()), UdpTransport(0), [Transform() for _ in range(transforms)]
    )
    b = Link(
        Device(PrivateKey.generate()), UdpTransport(0), [Transform() for _ in range(transforms)]
    )
    now = time.monotonic()
    for me, other, ip in ((a, b, B_IP), (b, a, A_IP)):
        key = other.device.public_key
        assert key is not None
        me.apply(
            SetRequest(
                peers=[
                    PeerChange(
                        key, endpoint=("127.0.0.1", other.listen_port()), allowed_ips=[f"{ip}/32"]
                    )
                ]
            ),
            now,
        )
    # Handshake and first packet both ways, so the timed loop sees only transport data.
    move(a, b, [ipv4_packet(A_IP, B_IP, 100)], expect=1)
    move(b, a, [ipv4_packet(B_IP, A_IP, 100)], expect=1)
    return a, b


def pump_once(links: tuple[Link, ...], timeout: float) -> None:
    socks = {s: link for link in links for s in link.udp.sockets()}
    readable, _, _ = select.select(list(socks), [], [], timeout)
    now = time.monotonic()
    for sock in readable:
        socks[sock].receive(sock, now, BURST)
    for link in links:
        link.flush(now)


def move(src: Link, dst: Link, packets: list[bytes], expect: int) -> int:
    """Send ``packets`` from src and pump until dst delivered ``expect`` of them."""
    now = time.monotonic()
    for p in packets:
        src.device.send_packet(p, now)
    src.flush(now)
    got = len(dst.device.packets_to_deliver())
    deadline = time.monotonic() + 5
    while got < expect and time.monotonic() < deadline:
        pump_once((src, dst), 0.5)
        got += len(dst.device.packets_to_deliver())
    return got


def measure(transforms: int, packets: int, size: int) -> float:
    a, b = make_pair(transforms)
    try:
        burst = [ipv4_packet(A_IP, B_IP, size)] * BURST
        gc.collect()
        start = time.perf_counter()
        moved = 0
        for _ in range(packets // BURST):
            moved += move(a, b, burst, BURST)
        elapsed = time.perf_counter() - start
        return moved / elapsed
    finally:
        a.close()
        b.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    rounds, packets = (3, 20_000) if args.quick else (7, 64_000)
    runs: dict[str, list[float]] = {name: [] for name in PIPELINES}
    for _ in range(rounds):
        for name, count in PIPELINES.items():
            runs[name].append(measure(count, packets, 1420))
    result = {
        name: {"pps_median": median(values), "runs": values, "transforms": PIPELINES[name]}
        for name, values in runs.items()
    }
    reference = result["none"]["pps_median"]
    for entry in result.values():
        entry["ratio_to_none"] = ratio(entry["pps_median"], reference)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    print(f"link pump, 1420-byte packets, {rounds} rounds of {packets} packets each")
    for name, entry in result.items():
        print(
            f"  {name:12} {entry['pps_median']:>10,.0f} pkt/s  ratio {entry['ratio_to_none']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
