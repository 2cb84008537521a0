"""Micro-benchmark of the link (pyralog.link.Link) with and without datagram transforms.

Two Links in one process, each a Device and real UDP sockets on loopback, with an
established session. One sends bursts of 64 transport datagrams (``send_packet`` then
``Link.flush``: outbound pipeline, GSO batches), the other reads them (``Link.receive``:
GRO reads, inbound pipeline, decryption) until the burst is in. The figure is packets
per second through both ends on one core, the median and the best of several rounds
(the best is the run least disturbed by other load), for each pipeline:

- none: no transform (the pipeline is skipped);
- identity: one identity transform (the base class) on both sides: the pipeline sees it
  rewrites nothing and skips it, so this is the cost of the seam itself;
- pass-through: a transform that overrides both directions with identity bodies, the
  least a real transform costs per stage (one call per batch out, one per datagram in);
- pass-through x4: four of them, to show the cost grows per stage.

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

from pyralog.link import Datagram, Link, PeerChange, SetRequest, Transform
from pyralog.udp import UdpTransport
from pyralog.wireguard.device import Device
from pyralog.wireguard.endpoint import Endpoint
from pyralog.wireguard.keys import PrivateKey

BURST = 64


class PassThrough(Transform):
    """Overrides both directions, changes nothing."""

    def outbound(self, datagrams: list[Datagram], now: float) -> list[Datagram]:
        return datagrams

    def inbound(self, data: bytes, endpoint: Endpoint, now: float) -> Datagram | None:
        return data, endpoint


PIPELINES: dict[str, tuple[type[Transform], int]] = {
    "none": (Transform, 0),
    "identity": (Transform, 1),
    "pass-through": (PassThrough, 1),
    "pass-through x4": (PassThrough, 4),
}


def make_pair(kind: type[Transform], count: int) -> tuple[Link, Link]:
    a = Link(Device(PrivateKey.generate()), UdpTransport(0), [kind() for _ in range(count)])
    b = Link(Device(PrivateKey.generate()), UdpTransport(0), [kind() for _ in range(count)])
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


def measure(kind: type[Transform], count: int, packets: int, size: int) -> float:
    a, b = make_pair(kind, count)
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
        for name, (kind, count) in PIPELINES.items():
            runs[name].append(measure(kind, count, packets, 1420))
    result = {
        name: {
            "pps_median": median(values),
            "pps_best": max(values),
            "runs": values,
            "transforms": PIPELINES[name][1],
        }
        for name, values in runs.items()
    }
    reference, best = result["none"]["pps_median"], result["none"]["pps_best"]
    for entry in result.values():
        entry["ratio_to_none"] = ratio(entry["pps_median"], reference)
        entry["best_ratio_to_none"] = ratio(entry["pps_best"], best)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    print(f"link pump, 1420-byte packets, {rounds} rounds of {packets} packets each")
    for name, entry in result.items():
        pps, r = entry["pps_median"], entry["ratio_to_none"]
        top, best_r = entry["pps_best"], entry["best_ratio_to_none"]
        print(f"  {name:16} median {pps:>9,.0f} pkt/s ({r:.3f})  best {top:>9,.0f} ({best_r:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
