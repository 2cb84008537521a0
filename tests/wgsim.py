"""Test support: a fake clock, a lossless in-memory network between Devices, packet builders,
and what a Device dropped or sent.

Two or more ``Device``s are wired together by endpoint; ``Net.pump()`` moves datagrams until
the network is quiet and records every datagram sent, so tests can assert exactly what
crossed the wire and when.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from dataclasses import dataclass, field

from pyralog.wireguard.device import Device
from pyralog.wireguard.keys import PresharedKey, PrivateKey

WALL_OFFSET = 1_700_000_000.0


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def ipv4_packet(src: str, dst: str, payload: bytes = b"hello", proto: int = 17) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        0,
        0,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def ipv6_packet(src: str, dst: str, payload: bytes = b"hello", next_header: int = 17) -> bytes:
    header = struct.pack(
        "!IHBB16s16s",
        6 << 28,
        len(payload),
        next_header,
        64,
        ipaddress.IPv6Address(src).packed,
        ipaddress.IPv6Address(dst).packed,
    )
    return header + payload


@dataclass
class Sent:
    time: float
    src: tuple[str, int]
    dst: tuple[str, int]
    data: bytes

    @property
    def kind(self) -> int:
        return self.data[0]

    @property
    def is_keepalive(self) -> bool:
        return self.data[0] == 4 and len(self.data) == 32


@dataclass
class Net:
    """Endpoints -> Devices. Datagrams to unknown endpoints, or dropped by ``drop``, vanish."""

    devices: dict[tuple[str, int], Device] = field(default_factory=dict)
    log: list[Sent] = field(default_factory=list)
    delivered: dict[tuple[str, int], list[bytes]] = field(default_factory=dict)
    now: float = 0.0
    drop: set[tuple[str, int]] = field(default_factory=set)  # senders whose datagrams are lost

    def attach(self, endpoint: tuple[str, int], device: Device) -> None:
        self.devices[endpoint] = device
        self.delivered[endpoint] = []

    def pump(self) -> None:
        """Deliver datagrams until no device has anything left to send."""
        for _ in range(10_000):
            moved = False
            for src, dev in list(self.devices.items()):
                for data, dst in dev.datagrams_to_send():
                    moved = True
                    self.log.append(Sent(self.now, src, dst, data))
                    target = self.devices.get(dst)
                    if target is not None and src not in self.drop:
                        target.receive_datagram(data, src, self.now)
            for ep, dev in self.devices.items():
                self.delivered[ep].extend(dev.packets_to_deliver())
            if not moved:
                return
        raise AssertionError("network never went quiet")

    def advance(self, to: float) -> None:
        """Run every timer up to ``to``, in deadline order, pumping after each tick."""
        while True:
            deadlines = [d for d in (dev.next_deadline() for dev in self.devices.values()) if d]
            due = [d for d in deadlines if d <= to]
            if not due:
                break
            self.now = max(self.now, min(due))
            for dev in self.devices.values():
                dev.tick(self.now)
            self.pump()
        self.now = to
        for dev in self.devices.values():
            dev.tick(self.now)
        self.pump()

    def sent_between(self, start: float, end: float) -> list[Sent]:
        return [s for s in self.log if start <= s.time <= end]


A_EP = ("192.0.2.1", 51820)
B_EP = ("192.0.2.2", 51820)
A_IP = "10.0.0.1"
B_IP = "10.0.0.2"


@dataclass
class Pair:
    net: Net
    a: Device
    b: Device
    a_key: PrivateKey
    b_key: PrivateKey

    def a_to_b(self, payload: bytes = b"ping") -> bytes:
        pkt = ipv4_packet(A_IP, B_IP, payload)
        self.a.send_packet(pkt, self.net.now)
        self.net.pump()
        return pkt

    def b_to_a(self, payload: bytes = b"pong") -> bytes:
        pkt = ipv4_packet(B_IP, A_IP, payload)
        self.b.send_packet(pkt, self.net.now)
        self.net.pump()
        return pkt


def make_pair(
    *,
    seed: int = 0,
    psk: PresharedKey | None = None,
    a_keepalive: int = 0,
    b_endpoint_known: bool = True,
) -> Pair:
    rng = random.Random(seed)
    a_key = PrivateKey(rng.randbytes(32))
    b_key = PrivateKey(rng.randbytes(32))
    a = Device(a_key, rng=random.Random(seed + 1), clock_offset=WALL_OFFSET)
    b = Device(b_key, rng=random.Random(seed + 2), clock_offset=WALL_OFFSET)
    net = Net()
    net.attach(A_EP, a)
    net.attach(B_EP, b)
    b.add_peer(
        a_key.public_key,
        0.0,
        preshared_key=psk,
        endpoint=A_EP if b_endpoint_known else None,
        allowed_ips=[f"{A_IP}/32", "fd00::1/128"],
    )
    a.add_peer(
        b_key.public_key,
        0.0,
        preshared_key=psk,
        endpoint=B_EP,
        allowed_ips=[f"{B_IP}/32", "fd00::2/128"],
        persistent_keepalive=a_keepalive,
    )
    net.pump()
    return Pair(net, a, b, a_key, b_key)


# -- what a Device dropped, what crossed the wire -----------------------------------------

Endpoint = tuple[str, int]


def drop_delta(device: Device, before: dict[str, int]) -> dict[str, int]:
    """The drop counters that changed since ``before``, with how much they grew."""
    return {k: v - before[k] for k, v in device.drops.items() if v != before[k]}


def feed(device: Device, data: bytes, endpoint: Endpoint, now: float) -> dict[str, int]:
    """Deliver one datagram; return the drop counters it moved."""
    before = dict(device.drops)
    device.receive_datagram(data, endpoint, now)
    return drop_delta(device, before)


def kinds(pair: Pair, start: int = 0) -> list[int]:
    """The message type of every datagram sent on the pair's network, from the ``start``th."""
    return [s.kind for s in pair.net.log[start:]]
