"""The Link over real loopback UDP: two Devices, their sockets, a transform pipeline, the
control path. Driven by a small select() loop, as any runtime would drive it."""

from __future__ import annotations

import errno
import select
import socket
import time
from collections.abc import Callable

import pytest

from pyralog.link import ConfigChangeError, Link, PeerChange, SetRequest
from pyralog.link.transform import Datagram, Transform
from pyralog.udp import UdpTransport
from pyralog.wireguard import events as ev
from pyralog.wireguard.device import Device
from pyralog.wireguard.endpoint import Endpoint
from pyralog.wireguard.keys import PresharedKey, PrivateKey

from wgsim import ipv4_packet

A_IP, B_IP = "10.7.0.1", "10.7.0.2"
MAGIC = b"PRLG"


class Prefix(Transform):
    """A fixed 4-byte prefix (sizes stay equal, so GSO runs survive); inbound datagrams
    without it are swallowed, so a plain WireGuard peer gets no answer."""

    def __init__(self) -> None:
        self.swallowed = 0

    def outbound(self, datagrams: list[Datagram], now: float) -> list[Datagram]:
        return [(MAGIC + d, e) for d, e in datagrams]

    def inbound(self, data: bytes, endpoint: Endpoint, now: float) -> Datagram | None:
        if not data.startswith(MAGIC):
            self.swallowed += 1
            return None
        return data[4:], endpoint


class Watcher:
    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []

    def watch(self, sock: socket.socket) -> None:
        assert sock not in self.sockets
        self.sockets.append(sock)

    def unwatch(self, sock: socket.socket) -> None:
        self.sockets.remove(sock)


class Side:
    def __init__(self, transforms: list[Transform]) -> None:
        self.key = PrivateKey.generate()
        self.device = Device(self.key)
        self.watcher = Watcher()
        self.link = Link(self.device, UdpTransport(0), transforms)
        self.link.attach(self.watcher)
        self.delivered: list[bytes] = []

    def endpoint(self) -> Endpoint:
        return ("127.0.0.1", self.link.listen_port())


def pair(a_transforms: list[Transform], b_transforms: list[Transform]) -> tuple[Side, Side]:
    a, b = Side(a_transforms), Side(b_transforms)
    now = time.monotonic()
    for me, other, other_ip in ((a, b, B_IP), (b, a, A_IP)):
        me.link.apply(
            SetRequest(
                peers=[
                    PeerChange(
                        other.key.public_key,
                        endpoint=other.endpoint(),
                        allowed_ips=[f"{other_ip}/32"],  # text: the control path parses it
                    )
                ]
            ),
            now,
        )
    return a, b


def run(sides: tuple[Side, ...], until: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Drive the links until ``until()`` or the timeout; True if it came true."""
    end = time.monotonic() + timeout
    by_socket = {s: side for side in sides for s in side.watcher.sockets}
    while time.monotonic() < end:
        if until():
            return True
        readable, _, _ = select.select(list(by_socket), [], [], 0.02)
        now = time.monotonic()
        for sock in readable:
            by_socket[sock].link.receive(sock, now, 64)
        for side in sides:
            deadline = side.link.next_deadline()
            if deadline is not None and deadline <= now:
                side.link.tick(now)
            side.link.flush(now)
            side.delivered += side.device.packets_to_deliver()
    return until()


def close(*sides: Side) -> None:
    for side in sides:
        side.link.close()
        assert side.watcher.sockets == []


def test_session_and_data_through_a_transform_on_both_sides() -> None:
    a, b = pair([Prefix()], [Prefix()])
    try:
        packets = [ipv4_packet(A_IP, B_IP, bytes([i]) * 1000) for i in range(40)]
        now = time.monotonic()
        for p in packets:
            a.device.send_packet(p, now)
        a.link.flush(now)
        assert run((a, b), lambda: len(b.delivered) == len(packets))
        assert b.delivered == packets
        # 40 equal-sized datagrams after the handshake: the prefix kept them equal, so
        # they left in GSO batches rather than one syscall each.
        if a.link.udp.gso:
            assert a.link.udp.gso_batches >= 1
    finally:
        close(a, b)


def test_plain_peer_gets_no_answer_from_a_transformed_port() -> None:
    a, b = pair([], [Prefix()])  # a speaks plain WireGuard, b only the prefixed form
    try:
        now = time.monotonic()
        a.device.send_packet(ipv4_packet(A_IP, B_IP), now)
        a.link.flush(now)
        prefix = b.link.pipeline.transforms[0]
        assert isinstance(prefix, Prefix)
        run((a, b), lambda: prefix.swallowed >= 1, timeout=2.0)
        assert prefix.swallowed >= 1
        assert sum(b.device.drops.values()) == 0  # the Device never saw it
        assert not any(isinstance(e, ev.HandshakeCompleted) for e in a.device.events())
        assert b.delivered == []
    finally:
        close(a, b)


def test_identity_transform_changes_nothing() -> None:
    a, b = pair([Transform()], [])
    try:
        now = time.monotonic()
        a.device.send_packet(ipv4_packet(A_IP, B_IP, b"same bytes"), now)
        a.link.flush(now)
        assert run((a, b), lambda: len(b.delivered) == 1)
        assert b.delivered == [ipv4_packet(A_IP, B_IP, b"same bytes")]
    finally:
        close(a, b)


def test_rebind_through_the_control_path_moves_the_watched_sockets() -> None:
    a, b = pair([], [])
    try:
        old = list(a.watcher.sockets)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("0.0.0.0", 0))
            free = probe.getsockname()[1]
        a.link.apply(SetRequest(listen_port=free), time.monotonic())
        assert a.link.listen_port() == free
        assert a.watcher.sockets and all(s not in old for s in a.watcher.sockets)
        assert all(s.fileno() == -1 for s in old)
        # b learns a's new port; traffic flows.
        b.link.apply(
            SetRequest(peers=[PeerChange(a.key.public_key, endpoint=a.endpoint())]),
            time.monotonic(),
        )
        now = time.monotonic()
        b.device.send_packet(ipv4_packet(B_IP, A_IP, b"to the new port"), now)
        b.link.flush(now)
        assert run((a, b), lambda: len(a.delivered) == 1)
    finally:
        close(a, b)


def test_failed_change_leaves_everything_as_it_was() -> None:
    a, b = pair([], [])
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        taken.bind(("0.0.0.0", 0))
        port_before, watched_before = a.link.listen_port(), list(a.watcher.sockets)
        psk = PresharedKey(bytes([4]) * 32)
        change = SetRequest(
            listen_port=taken.getsockname()[1],
            peers=[PeerChange(b.key.public_key, preshared_key=psk)],
        )
        with pytest.raises(ConfigChangeError) as info:
            a.link.apply(change, time.monotonic())
        assert info.value.code == errno.EADDRINUSE
        assert a.link.listen_port() == port_before and a.watcher.sockets == watched_before
        peer = a.device.get_peer(b.key.public_key)
        assert peer is not None and peer.preshared_key == PresharedKey.ZERO
    finally:
        taken.close()
        close(a, b)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (PeerChange(PrivateKey.generate().public_key, allowed_ips=["10.0.0.300/32"]), "allowed IP"),
        (PeerChange(PrivateKey.generate().public_key, endpoint=("host.example", 1)), "endpoint"),
        (PeerChange(PrivateKey.generate().public_key, endpoint=("192.0.2.1", 0)), "port"),
        (PeerChange(PrivateKey.generate().public_key, persistent_keepalive=70000), "keepalive"),
    ],
)
def test_programmatic_changes_are_validated_whole(change: PeerChange, message: str) -> None:
    a, b = pair([], [])
    try:
        good = PeerChange(PrivateKey.generate().public_key, allowed_ips=["10.7.9.0/24"])
        with pytest.raises(ConfigChangeError, match=message) as info:
            a.link.apply(SetRequest(peers=[good, change]), time.monotonic())
        assert info.value.code == errno.EINVAL
        assert a.device.get_peer(good.public_key) is None  # the valid half was not applied
        assert len(a.device.peers) == 1
    finally:
        close(a, b)


def test_own_key_as_peer_is_refused() -> None:
    a, b = pair([], [])
    try:
        with pytest.raises(ConfigChangeError, match="own public key"):
            a.link.apply(SetRequest(peers=[PeerChange(a.key.public_key)]), time.monotonic())
    finally:
        close(a, b)


def test_rekey_through_the_link_sends_the_initiation() -> None:
    a, b = pair([], [])
    try:
        now = time.monotonic()
        assert a.link.rekey(b.key.public_key, now)
        assert run((a, b), lambda: any(p.last_handshake for p in b.device.peers))
    finally:
        close(a, b)
