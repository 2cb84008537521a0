"""The sans-IO core against wireguard-go, over loopback: proof of wire compatibility.

Each test starts its own ``wireguard-go`` interface (configured only with ``wg set``), and
drives our ``Device`` from a UDP socket on 127.0.0.1. The kernel, through the wireguard-go
interface, plays the far host: it answers pings, and sends and receives UDP on the
interface's own private addresses. Nothing leaves 127.0.0.1 and the test interface.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import random
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from processes import stop_process
from pyralog.wireguard import events as ev
from pyralog.wireguard.device import Device
from pyralog.wireguard.keys import PresharedKey, PrivateKey, PublicKey

from wgsim import checksum, ipv4_packet, ipv6_packet

_MISSING = [name for name in ("wireguard-go", "wg") if shutil.which(name) is None]

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(bool(_MISSING), reason=f"needs {' and '.join(_MISSING)} on PATH"),
    pytest.mark.skipif(
        not os.path.exists("/dev/net/tun"), reason="needs /dev/net/tun for wireguard-go"
    ),
]

UAPI_DIR = Path("/var/run/wireguard")
RCVBUF = 4 << 20
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; Python lacks the constant
_link_numbers = itertools.count(1)


# -- packets -----------------------------------------------------------------------------


def icmp_echo(kind: int, ident: int, seq: int, payload: bytes) -> bytes:
    """An ICMPv4 echo message (8 request, 0 reply) with a correct checksum."""
    body = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + payload
    return body[:2] + struct.pack("!H", checksum(body)) + body[4:]


def udp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """An IPv4 or IPv6 UDP packet with a correct UDP checksum."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    length = 8 + len(payload)
    if s.version == 4:
        pseudo = s.packed + d.packed + struct.pack("!BBH", 0, 17, length)
    else:
        pseudo = s.packed + d.packed + struct.pack("!I3xB", length, 17)
    header = struct.pack("!HHHH", sport, dport, length, 0)
    csum = checksum(pseudo + header + payload) or 0xFFFF
    datagram = header[:6] + struct.pack("!H", csum) + payload
    build = ipv4_packet if s.version == 4 else ipv6_packet
    return build(src, dst, datagram)


@dataclass(frozen=True)
class Udp:
    src: str
    dst: str
    sport: int
    dport: int
    payload: bytes


def parse_udp(packet: bytes) -> Udp | None:
    """The UDP datagram in an IPv4/IPv6 packet, or None if it is something else."""
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 15) * 4
        if packet[9] != 17:
            return None
        src, dst = packet[12:16], packet[16:20]
    elif packet[0] >> 4 == 6:
        ihl = 40
        if packet[6] != 17:
            return None
        src, dst = packet[8:24], packet[24:40]
    else:
        return None
    sport, dport, length, _ = struct.unpack_from("!HHHH", packet, ihl)
    return Udp(
        str(ipaddress.ip_address(src)),
        str(ipaddress.ip_address(dst)),
        sport,
        dport,
        packet[ihl + 8 : ihl + length],
    )


def echo_reply_for(packet: bytes) -> bytes | None:
    """The ICMPv4 echo reply answering ``packet``, if it is an echo request."""
    if packet[0] >> 4 != 4 or packet[9] != 1:
        return None
    ihl = (packet[0] & 15) * 4
    icmp = packet[ihl : int.from_bytes(packet[2:4], "big")]
    if icmp[0] != 8:
        return None
    ident, seq = struct.unpack_from("!HH", icmp, 4)
    src = str(ipaddress.IPv4Address(packet[12:16]))
    dst = str(ipaddress.IPv4Address(packet[16:20]))
    return ipv4_packet(dst, src, icmp_echo(0, ident, seq, icmp[8:]), proto=1)


def _rcvbuf(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)


def drain(sock: socket.socket) -> list[tuple[bytes, tuple]]:
    """Everything waiting on ``sock``, without blocking."""
    out = []
    while True:
        try:
            out.append(sock.recvfrom(65535, socket.MSG_DONTWAIT))
        except BlockingIOError:
            return out


# -- the driver around our Device ----------------------------------------------------------


class Driver:
    """Runs a Device on a real UDP socket on 127.0.0.1, in the test's own thread."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        _rcvbuf(self.sock)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.delivered: list[bytes] = []
        self.events: list[ev.Event] = []
        self.sent = 0
        # Called with each delivered packet; a packet it returns is sent back through us.
        self.responder: Callable[[bytes], bytes | None] | None = None

    def send(self, packet: bytes) -> None:
        self.device.send_packet(packet, time.monotonic())
        self._flush()

    def run(self, until: Callable[[], bool], timeout: float) -> bool:
        """Pump until ``until()`` holds (True) or ``timeout`` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while True:
            self._flush()
            if until():
                return True
            now = time.monotonic()
            if now >= deadline:
                return False
            wait = min(0.02, deadline - now)
            due = self.device.next_deadline()
            if due is not None:
                wait = max(0.0, min(wait, due - now))
            select.select([self.sock], [], [], wait)
            for data, endpoint in drain(self.sock):
                self.device.receive_datagram(data, endpoint, time.monotonic())
            now = time.monotonic()
            self.device.tick(now)
            for packet in self.device.packets_to_deliver():
                self.delivered.append(packet)
                reply = self.responder(packet) if self.responder else None
                if reply is not None:
                    self.device.send_packet(reply, now)
            self.events.extend(self.device.events())

    def idle(self, seconds: float) -> None:
        self.run(lambda: False, seconds)

    def handshakes(self) -> list[ev.HandshakeCompleted]:
        return [e for e in self.events if isinstance(e, ev.HandshakeCompleted)]

    def _flush(self) -> None:
        for data, endpoint in self.device.datagrams_to_send():
            self.sock.sendto(data, endpoint)
            self.sent += 1


# -- the wireguard-go side -------------------------------------------------------------------


@dataclass(frozen=True)
class PeerDump:
    public_key: str
    latest_handshake: int
    rx: int
    tx: int


@dataclass
class Link:
    """A wireguard-go interface with our Device as its one peer."""

    ifname: str
    net: int
    go_key: PrivateKey
    our_key: PrivateKey
    driver: Driver
    go_port: int = 0
    cleanups: list[Callable[[], object]] = field(default_factory=list)

    @property
    def device(self) -> Device:
        return self.driver.device

    @property
    def go_ip(self) -> str:
        return f"10.213.{self.net}.1"

    @property
    def our_ip(self) -> str:
        return f"10.213.{self.net}.2"

    @property
    def go_ip6(self) -> str:
        return f"fd00:213:{self.net}::1"

    @property
    def our_ip6(self) -> str:
        return f"fd00:213:{self.net}::2"

    def kernel_socket(self, family: int = socket.AF_INET) -> socket.socket:
        """A UDP socket bound to the interface's own address, closed at teardown."""
        sock = socket.socket(family, socket.SOCK_DGRAM)
        self.cleanups.append(sock.close)
        _rcvbuf(sock)
        sock.bind((self.go_ip if family == socket.AF_INET else self.go_ip6, 0))
        return sock

    def peer_dump(self) -> PeerDump:
        out = wg("show", self.ifname, "dump").splitlines()
        peers = [line.split("\t") for line in out[1:]]
        assert len(peers) == 1, out
        p = peers[0]
        return PeerDump(p[0], int(p[4]), int(p[5]), int(p[6]))


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=5)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def wg(*args: str) -> str:
    return _run("wg", *args)


def ip(*args: str) -> None:
    _run("ip", *args)


def _start_wireguard_go(link: Link, workdir: Path) -> None:
    log = (workdir / "wireguard-go.log").open("wb")
    link.cleanups.append(log.close)
    proc = subprocess.Popen(
        ["wireguard-go", "-f", link.ifname],
        env=dict(os.environ, WG_PROCESS_FOREGROUND="1"),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    link.cleanups.append(lambda: stop_process(proc, timeout=3))
    uapi = UAPI_DIR / f"{link.ifname}.sock"
    deadline = time.monotonic() + 5
    while not uapi.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"wireguard-go did not start: {(workdir / 'wireguard-go.log').read_text()}"
            )
        time.sleep(0.01)


@pytest.fixture
def make_link() -> Iterator[Callable[..., Link]]:
    """Factory: a wireguard-go interface peered with a fresh Device; always torn down.

    ``go_peer`` is the key wireguard-go believes is ours, ``our_peer`` the key our Device
    believes is wireguard-go's (both default to the truth); the PSKs may differ.
    """
    links: list[Link] = []

    def make(
        *,
        go_psk: PresharedKey | None = None,
        our_psk: PresharedKey | None = None,
        go_peer: PublicKey | None = None,
        our_peer: PublicKey | None = None,
    ) -> Link:
        n = next(_link_numbers)
        our_key, go_key = PrivateKey.generate(), PrivateKey.generate()
        device = Device(our_key, clock_offset=time.time() - time.monotonic())
        link = Link(
            ifname=f"wgpc{os.getpid() % 10000}{n}",
            # A subnet per test (and, mostly, per concurrent run): 10.213.<net>.0/24.
            net=(os.getpid() % 40) * 6 + n % 6 + 1,
            go_key=go_key,
            our_key=our_key,
            driver=Driver(device),
        )
        links.append(link)
        link.cleanups.append(link.driver.sock.close)
        workdir = Path(tempfile.mkdtemp(prefix="pyralog-interop-"))
        link.cleanups.append(lambda: shutil.rmtree(workdir, ignore_errors=True))
        # Registered before starting, run after stopping (cleanups run in reverse).
        uapi = UAPI_DIR / f"{link.ifname}.sock"
        link.cleanups.append(lambda: uapi.unlink(missing_ok=True))
        link.cleanups.append(
            lambda: subprocess.run(["ip", "link", "del", link.ifname], capture_output=True)
        )
        _start_wireguard_go(link, workdir)

        key_file = workdir / "private"
        key_file.write_text(go_key.to_base64())
        peer = go_peer or our_key.public_key
        args = ["set", link.ifname, "private-key", str(key_file), "listen-port", "0"]
        args += ["peer", peer.to_base64()]
        if go_psk is not None:
            psk_file = workdir / "psk"
            psk_file.write_text(go_psk.to_base64())
            args += ["preshared-key", str(psk_file)]
        args += ["allowed-ips", f"{link.our_ip}/32,{link.our_ip6}/128"]
        args += ["endpoint", f"127.0.0.1:{link.driver.port}"]
        wg(*args)
        ip("address", "add", f"{link.go_ip}/24", "dev", link.ifname)
        ip("-6", "address", "add", f"{link.go_ip6}/64", "dev", link.ifname, "nodad")
        ip("link", "set", link.ifname, "up")
        # listen-port 0: wireguard-go binds a free port once up; read back which.
        deadline = time.monotonic() + 5
        while not (port := int(wg("show", link.ifname, "listen-port").strip() or 0)):
            assert time.monotonic() < deadline, "wireguard-go never bound its UDP port"
            time.sleep(0.01)
        link.go_port = port

        device.add_peer(
            our_peer or go_key.public_key,
            time.monotonic(),
            preshared_key=our_psk,
            endpoint=("127.0.0.1", port),
            allowed_ips=[f"{link.go_ip}/32", f"{link.go_ip6}/128"],
        )
        device.events()  # PeerAdded
        return link

    try:
        yield make
    finally:
        errors = []
        for link in links:
            for cleanup in reversed(link.cleanups):
                try:
                    cleanup()
                except Exception as e:  # keep tearing down; report at the end
                    errors.append(e)
        if errors:
            raise errors[0]


# -- tests ---------------------------------------------------------------------------------


def _ping_through_device(link: Link) -> None:
    """Our Device initiates: an echo request to wireguard-go's host comes back answered."""
    payload = b"pyralog-interop-" + os.urandom(8)
    request = icmp_echo(8, 0x5179, 7, payload)
    link.driver.send(ipv4_packet(link.our_ip, link.go_ip, request, proto=1))

    assert link.driver.run(lambda: bool(link.driver.delivered), timeout=5), link.device.drops
    [reply] = link.driver.delivered
    ihl = (reply[0] & 15) * 4
    assert checksum(reply[:ihl]) == 0
    assert reply[9] == 1
    assert reply[12:16] == ipaddress.IPv4Address(link.go_ip).packed
    assert reply[16:20] == ipaddress.IPv4Address(link.our_ip).packed
    icmp = reply[ihl:]
    assert checksum(icmp) == 0
    kind, code, _, ident, seq = struct.unpack_from("!BBHHH", icmp)
    assert (kind, code, ident, seq, icmp[8:]) == (0, 0, 0x5179, 7, payload)
    assert [e.initiator for e in link.driver.handshakes()] == [True]

    dump = link.peer_dump()
    assert dump.public_key == link.our_key.public_key.to_base64()
    assert dump.latest_handshake > 0
    assert dump.rx > 0
    assert dump.tx > 0


def test_we_initiate_and_get_an_echo_reply(make_link: Callable[..., Link]) -> None:
    _ping_through_device(make_link())


def test_we_initiate_with_a_preshared_key(make_link: Callable[..., Link]) -> None:
    psk = PresharedKey.generate()
    _ping_through_device(make_link(go_psk=psk, our_psk=psk))


def test_wireguard_go_initiates_and_we_answer_pings(make_link: Callable[..., Link]) -> None:
    # Like `ping -c 3 -W 1 -I <if> <our ip>`, from a raw ICMP socket on the interface.
    link = make_link()
    link.driver.responder = echo_reply_for
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    link.cleanups.append(sock.close)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, link.ifname.encode())
    sock.bind((link.go_ip, 0))
    ident = random.getrandbits(16)

    for seq in range(1, 4):
        payload = os.urandom(24)
        sock.sendto(icmp_echo(8, ident, seq, payload), (link.our_ip, 0))
        replies: list[bytes] = []

        def answered(seq: int = seq, payload: bytes = payload, replies: list = replies) -> bool:
            for data, _ in drain(sock):
                ihl = (data[0] & 15) * 4
                icmp = data[ihl:]
                if icmp[0] == 0 and struct.unpack_from("!HH", icmp, 4) == (ident, seq):
                    assert data[12:16] == ipaddress.IPv4Address(link.our_ip).packed
                    assert checksum(icmp) == 0
                    assert icmp[8:] == payload
                    replies.append(data)
            return bool(replies)

        assert link.driver.run(answered, timeout=3), f"no reply to seq {seq}"

    assert [e.initiator for e in link.driver.handshakes()] == [False]
    assert len(link.driver.delivered) == 3
    assert link.peer_dump().latest_handshake > 0


@pytest.mark.parametrize("initiator", ["us", "wireguard-go"])
def test_mismatched_preshared_key_never_completes(
    make_link: Callable[..., Link], initiator: str
) -> None:
    link = make_link(go_psk=PresharedKey.generate(), our_psk=PresharedKey.generate())
    drops = link.device.drops
    if initiator == "us":
        link.driver.send(ipv4_packet(link.our_ip, link.go_ip, icmp_echo(8, 1, 1, b"x"), 1))
        # wireguard-go answers the initiation, but the response's AEAD fails under our PSK.
        assert link.driver.run(lambda: drops["response_decrypt_failed"] > 0, timeout=5), drops
        assert link.driver.sent == 1  # the initiation, and nothing after it
    else:
        link.kernel_socket().sendto(b"hello", (link.our_ip, 9))
        # The PSK is not in the initiation: we accept it and respond, but wireguard-go
        # cannot open our response, so never sends data to confirm the session.
        assert link.driver.run(lambda: link.driver.sent > 0, timeout=5), drops
        link.driver.idle(1.0)
        assert link.driver.sent == 1  # the response
    link.driver.idle(0.3)
    assert link.driver.delivered == []
    assert link.driver.handshakes() == []
    assert link.peer_dump().latest_handshake == 0
    assert {k: v for k, v in drops.items() if v} == (
        {"response_decrypt_failed": 1} if initiator == "us" else {}
    )


@pytest.mark.parametrize(
    ("wrong_side", "reason"),
    [("our peer key", "unknown_peer"), ("wireguard-go's peer key", "bad_mac1")],
)
def test_unknown_key_gets_no_answer(
    make_link: Callable[..., Link], wrong_side: str, reason: str
) -> None:
    # If our Device has the wrong key for wireguard-go, the initiation's mac1 (keyed by
    # *our* public key) is valid, but its static key names no peer: unknown_peer. If
    # wireguard-go has the wrong key for us, mac1 is keyed wrongly: bad_mac1.
    stranger = PrivateKey.generate().public_key
    if wrong_side == "our peer key":
        link = make_link(our_peer=stranger)
    else:
        link = make_link(go_peer=stranger)
    drops = link.device.drops
    link.kernel_socket().sendto(b"knock knock", (link.our_ip, 9))

    assert link.driver.run(lambda: drops[reason] > 0, timeout=5), drops
    link.driver.idle(0.5)
    assert link.driver.sent == 0
    assert link.driver.delivered == []
    assert {k: v for k, v in drops.items() if v} == {reason: 1}
    unknown = [e for e in link.driver.events if isinstance(e, ev.UnknownPeerHandshake)]
    if reason == "unknown_peer":
        assert [e.public_key for e in unknown] == [link.go_key.public_key]
        assert unknown[0].endpoint == ("127.0.0.1", link.go_port)
    else:
        assert unknown == []
    assert link.peer_dump().latest_handshake == 0


def test_data_in_volume_both_ways(make_link: Callable[..., Link]) -> None:
    link = make_link()
    driver = link.driver
    rng = random.Random(213)
    sizes = [1, 2, 15, 16, 17, 1300, 1299, *(rng.randint(1, 1300) for _ in range(193))]
    payloads = [bytes([i & 0xFF]) + rng.randbytes(size - 1) for i, size in enumerate(sizes)]
    payloads6 = [rng.randbytes(rng.randint(1, 1300)) for _ in range(10)]
    kernel4 = link.kernel_socket()
    kernel6 = link.kernel_socket(socket.AF_INET6)
    port4, port6 = kernel4.getsockname()[1], kernel6.getsockname()[1]
    our_port = 40213

    # Out: our Device -> wireguard-go -> kernel sockets; in batches, so no buffer overflows.
    received: list[tuple[bytes, tuple]] = []
    outbound = [
        *(udp_packet(link.our_ip, link.go_ip, our_port, port4, p) for p in payloads),
        *(udp_packet(link.our_ip6, link.go_ip6, our_port, port6, p) for p in payloads6),
    ]
    for start in range(0, len(outbound), 25):
        batch = outbound[start : start + 25]
        for packet in batch:
            driver.send(packet)

        def batch_arrived(want: int = start + len(batch)) -> bool:
            received.extend(drain(kernel4) + drain(kernel6))
            return len(received) >= want

        assert driver.run(batch_arrived, timeout=5), (len(received), link.device.drops)
    got4 = [data for data, src in received if src[0] == link.our_ip]
    got6 = [data for data, src in received if src[0] == link.our_ip6]
    assert got4 == payloads
    assert got6 == payloads6
    assert {src[1] for _, src in received} == {our_port}

    # In: kernel sockets -> wireguard-go -> our Device.
    driver.delivered.clear()
    inbound = [(kernel4, p, link.our_ip) for p in payloads]
    inbound += [(kernel6, p, link.our_ip6) for p in payloads6]
    for start in range(0, len(inbound), 25):
        for sock, payload, dst in inbound[start : start + 25]:
            sock.sendto(payload, (dst, our_port))
        want = min(start + 25, len(inbound))
        assert driver.run(lambda want=want: len(driver.delivered) >= want, timeout=5), (
            len(driver.delivered),
            link.device.drops,
        )
    udps = [parse_udp(packet) for packet in driver.delivered]
    assert all(u is not None for u in udps)
    expected = [Udp(link.go_ip, link.our_ip, port4, our_port, p) for p in payloads]
    expected += [Udp(link.go_ip6, link.our_ip6, port6, our_port, p) for p in payloads6]
    assert udps == expected
    for packet in driver.delivered:
        if packet[0] >> 4 == 4:
            assert checksum(packet[:20]) == 0

    assert {k: v for k, v in link.device.drops.items() if v} == {}
    assert [e.initiator for e in driver.handshakes()] == [True]
    dump = link.peer_dump()
    assert dump.rx > 0
    assert dump.tx > 0
