"""Wire formats and the Stack: TCP segment encode/decode and options (RFC 9293 3.1/3.2,
RFC 7323), the Internet checksum (RFC 1071) against a plain reference, IP parsing, and the
Stack's demultiplexing, resets (RFC 9293 3.10.7.1), ICMP/ICMPv6 echo, UDP, backlog and an
end-to-end transfer between two Stacks over a lossy, reordering fake link.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyralog.netstack import ip
from pyralog.netstack.checksum import checksum, ones_sum, pseudo_header_sum
from pyralog.netstack.stack import MAX_HALF_OPEN, Stack
from pyralog.netstack.tcp import MSL, State, TcpConnection, TcpOwner
from pyralog.netstack.tcp_segment import (
    ACK,
    FIN,
    HEADER,
    PSH,
    RST,
    SYN,
    Malformed,
    Segment,
    decode,
)
from tcplink import Clock, run_link, stack_end

LOCAL4 = "10.0.0.1"
REMOTE4 = "10.0.0.2"
LOCAL6 = "fd00::1"
REMOTE6 = "fd00::2"
L4 = ip.address_bytes(LOCAL4)
R4 = ip.address_bytes(REMOTE4)
L6 = ip.address_bytes(LOCAL6)
R6 = ip.address_bytes(REMOTE6)

FUZZ = settings(max_examples=200, derandomize=True, database=None, deadline=None)


# -- reference implementations -------------------------------------------------------------


def ref_ones_sum(data: bytes) -> int:
    """RFC 1071 section 4.1, literally: add 16-bit words, fold the carries."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ref_checksum(data: bytes, initial: int = 0) -> int:
    if len(data) % 2:
        data += b"\0"
    total = initial
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ref_pseudo_header(src: bytes, dst: bytes, protocol: int, length: int) -> bytes:
    if len(src) == 4:  # RFC 9293 3.1
        return src + dst + bytes([0, protocol]) + length.to_bytes(2, "big")
    return src + dst + length.to_bytes(4, "big") + bytes([0, 0, 0, protocol])  # RFC 8200 8.1


# -- helpers ----------------------------------------------------------------------------------


def tcp_packet(seg: Segment, src: bytes = R4, dst: bytes = L4) -> bytes:
    return ip.build(src, dst, ip.PROTO_TCP, seg.encode(src, dst))


def parse_tcp(packet: bytes) -> tuple[ip.IPPacket, Segment]:
    pkt = ip.parse(packet)
    assert pkt.protocol == ip.PROTO_TCP
    return pkt, decode(pkt.payload, pkt.src, pkt.dst)  # verifies the TCP checksum


def raw_tcp(
    options: bytes,
    payload: bytes = b"",
    *,
    offset_words: int | None = None,
    src: bytes = R4,
    dst: bytes = L4,
) -> bytes:
    """A TCP segment with hand-written option bytes and a correct checksum."""
    words = offset_words if offset_words is not None else (20 + len(options)) // 4
    header = HEADER.pack(1234, 80, 1, 2, words << 4, SYN, 1000, 0, 0)
    seg = header + options + payload
    value = checksum(seg, pseudo_header_sum(src, dst, ip.PROTO_TCP, len(seg)))
    return seg[:16] + value.to_bytes(2, "big") + seg[18:]


def ipv4_header(
    *,
    total: int,
    ihl: int = 5,
    frag: int = 0x4000,
    proto: int = ip.PROTO_UDP,
    fix_checksum: bool = True,
    options: bytes = b"",
) -> bytes:
    header = ip.IPV4_HEADER.pack(0x40 | ihl, 0, total, 7, frag, 64, proto, 0, R4, L4) + options
    if fix_checksum:
        header = header[:10] + checksum(header).to_bytes(2, "big") + header[12:]
    return header


def icmp_echo(ident: int, seq: int, payload: bytes, *, v6: bool = False) -> bytes:
    msg = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, ident, seq) + payload
    total = pseudo_header_sum(R6, L6, ip.PROTO_ICMPV6, len(msg)) if v6 else 0
    value = checksum(msg, total)
    return msg[:2] + value.to_bytes(2, "big") + msg[4:]


def udp_datagram(
    sport: int, dport: int, payload: bytes, src: bytes = R4, dst: bytes = L4, *, zero: bool = False
) -> bytes:
    length = 8 + len(payload)
    header = struct.pack("!HHHH", sport, dport, length, 0)
    if zero:
        return header + payload
    value = checksum(header + payload, pseudo_header_sum(src, dst, ip.PROTO_UDP, length))
    return struct.pack("!HHHH", sport, dport, length, value or 0xFFFF) + payload


def make_stack(seed: int = 1) -> Stack:
    return Stack([LOCAL4, LOCAL6], rng=random.Random(seed))


# -- TCP segments ------------------------------------------------------------------------------

addresses = st.sampled_from([(R4, L4), (L4, R4), (R6, L6), (L6, R6)])


@FUZZ
@given(
    sport=st.integers(0, 65535),
    dport=st.integers(0, 65535),
    seq=st.integers(0, 2**32 - 1),
    ack=st.integers(0, 2**32 - 1),
    flags=st.integers(0, 0x3F),
    window=st.integers(0, 65535),
    payload=st.binary(max_size=300),
    mss=st.none() | st.integers(0, 65535),
    wscale=st.none() | st.integers(0, 255),
    sack=st.booleans(),
    addrs=addresses,
)
def test_segment_round_trip(
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    payload: bytes,
    mss: int | None,
    wscale: int | None,
    sack: bool,
    addrs: tuple[bytes, bytes],
) -> None:
    src, dst = addrs
    seg = Segment(
        sport, dport, seq, ack, flags, window, payload, mss=mss, wscale=wscale, sack_permitted=sack
    )
    raw = seg.encode(src, dst)
    header_len = (raw[12] >> 4) * 4
    assert header_len % 4 == 0
    assert len(raw) == header_len + len(payload)
    assert checksum(raw, pseudo_header_sum(src, dst, ip.PROTO_TCP, len(raw))) == 0
    got = decode(raw, src, dst)
    assert (got.src_port, got.dst_port, got.seq, got.ack) == (sport, dport, seq, ack)
    assert (got.flags, got.window, got.payload) == (flags, window, payload)
    assert got.mss == mss
    assert got.wscale == (None if wscale is None else min(wscale, 14))
    assert got.sack_permitted is sack
    assert got.length == len(payload) + bool(flags & SYN) + bool(flags & FIN)


@FUZZ
@given(
    payload=st.binary(max_size=200),
    mss=st.none() | st.integers(0, 65535),
    where=st.integers(0, 10_000),
    xor=st.integers(1, 255),
    addrs=addresses,
)
def test_corrupting_any_byte_is_detected(
    payload: bytes, mss: int | None, where: int, xor: int, addrs: tuple[bytes, bytes]
) -> None:
    src, dst = addrs
    raw = bytearray(Segment(5, 6, 77, 88, ACK | PSH, 512, payload, mss=mss).encode(src, dst))
    raw[where % len(raw)] ^= xor
    with pytest.raises(Malformed):
        decode(bytes(raw), src, dst)


def test_segment_checksum_depends_on_addresses() -> None:
    raw = Segment(5, 6, 77, 88, ACK, 512, b"data").encode(R4, L4)
    decode(raw, R4, L4)
    with pytest.raises(Malformed):
        decode(raw, R4, ip.address_bytes("10.0.0.3"))


@pytest.mark.parametrize("size", [0, 1, 19])
def test_truncated_segment_is_malformed(size: int) -> None:
    with pytest.raises(Malformed):
        decode(bytes(size), R4, L4)


@pytest.mark.parametrize(
    ("options", "mss", "wscale", "sack"),
    [
        (b"\x02\x04\x05\xb4", 1460, None, False),
        (b"\x01\x03\x03\x07", None, 7, False),
        (b"\x01\x03\x03\x0f", None, 14, False),  # shift above 14 treated as 14 (RFC 7323 2.3)
        (b"\x01\x01\x04\x02", None, None, True),
        (b"\x02\x04\x05\xb4\x01\x03\x03\x02\x01\x01\x04\x02", 1460, 2, True),
        # an unknown option (timestamps) is skipped by its length
        (b"\x08\x0a" + bytes(8) + b"\x02\x04\x02\x18\x01\x01", 536, None, False),
        # end of option list: whatever follows is padding
        (b"\x00\x02\x00\x00", None, None, False),
        # known kind with the wrong length: ignored, parsing continues by the length given
        (b"\x02\x03\x05\x01\x03\x03\x05\x00", None, 5, False),
        (b"", None, None, False),
    ],
)
def test_option_parsing(options: bytes, mss: int | None, wscale: int | None, sack: bool) -> None:
    seg = decode(raw_tcp(options, b"xyz"), R4, L4)
    assert (seg.mss, seg.wscale, seg.sack_permitted) == (mss, wscale, sack)
    assert seg.payload == b"xyz"


@pytest.mark.parametrize(
    "options",
    [
        b"\x02\x00\x00\x00",  # length 0
        b"\x03\x01\x00\x00",  # length 1
        b"\x02\x08\x05\xb4",  # runs past the header
        b"\x01\x01\x01\x02",  # kind in the last byte, no room for its length
        b"\x08\x0a\x00\x00\x00\x00\x00\x00",  # runs past the header
    ],
)
def test_malformed_option_lengths(options: bytes) -> None:
    with pytest.raises(Malformed):
        decode(raw_tcp(options), R4, L4)


@pytest.mark.parametrize("offset_words", [0, 4, 6, 15])
def test_bad_data_offset(offset_words: int) -> None:
    with pytest.raises(Malformed):
        decode(raw_tcp(b"", offset_words=offset_words), R4, L4)


@FUZZ
@given(data=st.binary(min_size=20, max_size=80), addrs=addresses)
def test_decode_random_bytes_raises_only_malformed(data: bytes, addrs: tuple[bytes, bytes]) -> None:
    src, dst = addrs
    # give random header/option bytes a valid checksum so option parsing is reached
    body = data[:16] + b"\0\0" + data[18:]
    value = checksum(body, pseudo_header_sum(src, dst, ip.PROTO_TCP, len(body)))
    body = body[:16] + value.to_bytes(2, "big") + body[18:]
    try:
        seg = decode(body, src, dst)
    except Malformed:
        return
    assert seg.mss is None or 0 <= seg.mss <= 0xFFFF
    assert seg.wscale is None or 0 <= seg.wscale <= 14


# -- the Internet checksum -----------------------------------------------------------------------

interesting_bytes = st.one_of(
    st.binary(max_size=300),
    st.integers(0, 64).map(bytes),  # all zero
    st.integers(0, 64).map(lambda n: b"\xff" * n),
    st.lists(st.sampled_from([b"\x00", b"\xff", b"\x01", b"\xfe"]), max_size=64).map(b"".join),
)


@FUZZ
@given(data=interesting_bytes, initial=st.integers(0, 0xFFFF))
def test_checksum_matches_reference(data: bytes, initial: int) -> None:
    assert checksum(data, initial) == ref_checksum(data, initial)
    assert checksum(bytearray(data), initial) == ref_checksum(data, initial)
    assert checksum(memoryview(data), initial) == ref_checksum(data, initial)


@FUZZ
@given(data=interesting_bytes)
def test_ones_sum_matches_reference(data: bytes) -> None:
    assert ones_sum(data) == ref_ones_sum(data)


@FUZZ
@given(data=st.binary(max_size=300).map(lambda b: b + b"\0" * (2 + len(b) % 2)))
def test_inserted_checksum_verifies(data: bytes) -> None:
    body = bytearray(data)
    body[-2:] = b"\0\0"
    value = checksum(body)
    body[-2:] = value.to_bytes(2, "big")
    assert checksum(body) == 0
    assert ref_checksum(bytes(body)) == 0


def test_checksum_rfc1071_example() -> None:
    data = bytes.fromhex("0001f203f4f5f6f7")  # RFC 1071 section 3: the sum is 0xddf2
    assert ones_sum(data) == 0xDDF2
    assert checksum(data) == 0x220D


@FUZZ
@given(
    v6=st.booleans(),
    src=st.binary(min_size=16, max_size=16),
    dst=st.binary(min_size=16, max_size=16),
    protocol=st.integers(0, 255),
    length=st.integers(0, 65535),
)
def test_pseudo_header_sum_matches_reference(
    v6: bool, src: bytes, dst: bytes, protocol: int, length: int
) -> None:
    if not v6:
        src, dst = src[:4], dst[:4]
    expected = ref_ones_sum(ref_pseudo_header(src, dst, protocol, length))
    assert pseudo_header_sum(src, dst, protocol, length) % 0xFFFF == expected % 0xFFFF
    # and it composes with the data the same way a single pass over both would
    data = b"payload!"
    whole = ref_pseudo_header(src, dst, protocol, length) + data
    assert checksum(data, pseudo_header_sum(src, dst, protocol, length)) == ref_checksum(whole)


# -- IP parsing ----------------------------------------------------------------------------------


def test_ipv4_build_parse_round_trip() -> None:
    packet = ip.build(R4, L4, ip.PROTO_UDP, b"payload", ttl=9)
    assert checksum(packet[:20]) == 0
    pkt = ip.parse(packet + b"\0\0\0")  # link-layer padding after total length is ignored
    assert (pkt.version, pkt.src, pkt.dst, pkt.protocol, pkt.ttl) == (4, R4, L4, 17, 9)
    assert pkt.payload == b"payload"
    assert (pkt.src_address, pkt.dst_address) == (REMOTE4, LOCAL4)


def test_ipv4_with_options_skips_them() -> None:
    header = ipv4_header(total=24 + 3, ihl=6, options=b"\x01\x01\x01\x00")
    pkt = ip.parse(header + b"abc")
    assert pkt.payload == b"abc"


def test_ipv6_build_parse_round_trip() -> None:
    packet = ip.build(R6, L6, ip.PROTO_TCP, b"segment", ttl=3)
    pkt = ip.parse(packet + b"trailer")
    assert (pkt.version, pkt.src, pkt.dst, pkt.protocol, pkt.ttl) == (6, R6, L6, 6, 3)
    assert pkt.payload == b"segment"


@pytest.mark.parametrize(
    "frag",
    [0x2000, 0x0001, 0x1FFF, 0x6000, 0x4001],
    ids=["MF", "off1", "offmax", "DF+MF", "DF+off"],
)
def test_ipv4_fragments_rejected(frag: int) -> None:
    packet = ipv4_header(total=28, frag=frag) + bytes(8)
    with pytest.raises(ip.Malformed):
        ip.parse(packet)


def test_ipv4_df_only_accepted() -> None:
    assert ip.parse(ipv4_header(total=28, frag=0x4000) + bytes(8)).payload == bytes(8)
    assert ip.parse(ipv4_header(total=28, frag=0) + bytes(8)).payload == bytes(8)


def test_ipv4_bad_header_checksum_rejected() -> None:
    packet = bytearray(ip.build(R4, L4, ip.PROTO_UDP, b"12345678"))
    packet[8] ^= 1  # TTL
    with pytest.raises(ip.Malformed):
        ip.parse(bytes(packet))
    packet = bytearray(ipv4_header(total=28, fix_checksum=False) + bytes(8))
    packet[10:12] = b"\x12\x34"
    with pytest.raises(ip.Malformed):
        ip.parse(bytes(packet))


@pytest.mark.parametrize(
    "packet",
    [
        ipv4_header(total=29) + bytes(8),  # total length beyond the packet
        ipv4_header(total=19) + bytes(8),  # total length shorter than the header
        ipv4_header(total=28, ihl=4) + bytes(8),  # header length below 20
        ipv4_header(total=28, ihl=15) + bytes(8),  # header length beyond total length
        ipv4_header(total=28)[:19],  # truncated header
        b"\x45",
        b"",
        bytes([0x60]) + bytes(38),  # truncated IPv6 header
        ip.build(R6, L6, 17, b"12345678")[:-1],  # IPv6 payload length beyond the packet
        bytes([0x50]) + bytes(40),  # version 5
        bytes(40),  # version 0
    ],
)
def test_ip_parse_rejects_bad_lengths_and_versions(packet: bytes) -> None:
    with pytest.raises(ip.Malformed):
        ip.parse(packet)


@FUZZ
@given(data=st.binary(max_size=100))
def test_ip_parse_random_bytes_raises_only_malformed(data: bytes) -> None:
    try:
        pkt = ip.parse(data)
    except ip.Malformed:
        return
    assert pkt.version in (4, 6)
    assert len(pkt.payload) <= len(data)


# -- Stack: TCP resets --------------------------------------------------------------------------


@pytest.mark.parametrize(("remote", "local"), [(R4, L4), (R6, L6)], ids=["v4", "v6"])
@pytest.mark.parametrize(
    ("flags", "payload", "extra"),
    [(SYN, b"", 1), (SYN, b"0123456789", 11), (SYN | FIN, b"ab", 4), (PSH, b"xyz", 3)],
)
def test_segment_without_ack_to_closed_port_gets_rst_ack(
    remote: bytes, local: bytes, flags: int, payload: bytes, extra: int
) -> None:
    stack = make_stack()
    seq = 0xFFFFFFF0
    stack.receive_packet(
        tcp_packet(Segment(5555, 81, seq, 0, flags, 1000, payload), remote, local), 0.0
    )
    [out] = stack.packets_to_send()
    pkt, rst = parse_tcp(out)
    assert (pkt.src, pkt.dst) == (local, remote)
    assert (rst.src_port, rst.dst_port) == (81, 5555)
    assert rst.flags == RST | ACK
    assert rst.seq == 0
    assert rst.ack == (seq + extra) & 0xFFFFFFFF  # SEG.SEQ + SEG.LEN
    assert stack.drops["no_listener"] == 1
    assert stack.connections() == []


def test_ack_to_nothing_gets_rst_with_seq_equal_to_its_ack() -> None:
    stack = make_stack()
    stack.receive_packet(tcp_packet(Segment(5555, 81, 100, 123456, ACK, 1000, b"hi")), 0.0)
    [out] = stack.packets_to_send()
    _, rst = parse_tcp(out)
    assert rst.flags == RST
    assert rst.seq == 123456


def test_non_syn_to_a_listening_port_gets_rst() -> None:
    stack = make_stack()
    stack.listen(80, lambda conn: TcpOwner())
    stack.receive_packet(tcp_packet(Segment(5555, 80, 100, 999, ACK, 1000)), 0.0)
    [out] = stack.packets_to_send()
    _, rst = parse_tcp(out)
    assert (rst.flags, rst.seq) == (RST, 999)
    stack.receive_packet(tcp_packet(Segment(5555, 80, 100, 999, SYN | ACK, 1000)), 0.0)
    [out] = stack.packets_to_send()
    assert parse_tcp(out)[1].flags == RST
    assert stack.connections() == []


@pytest.mark.parametrize("flags", [RST, RST | ACK, RST | SYN])
def test_rst_to_nothing_gets_nothing(flags: int) -> None:
    stack = make_stack()
    stack.receive_packet(tcp_packet(Segment(5555, 81, 100, 5, flags, 0)), 0.0)
    assert stack.packets_to_send() == []


def test_packet_for_another_address_is_counted_and_ignored() -> None:
    stack = make_stack()
    other = ip.address_bytes("10.0.0.99")
    stack.receive_packet(tcp_packet(Segment(5555, 81, 1, 0, SYN, 1000), R4, other), 0.0)
    assert stack.packets_to_send() == []
    assert stack.drops["not_for_us"] == 1


# -- Stack: ICMP -----------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"ping data", bytes(range(256)) * 4, b"odd"])
def test_icmp_echo_reply(payload: bytes) -> None:
    stack = make_stack()
    request = icmp_echo(0x1234, 7, payload)
    stack.receive_packet(ip.build(R4, L4, ip.PROTO_ICMP, request), 0.0)
    [out] = stack.packets_to_send()
    pkt = ip.parse(out)
    assert (pkt.src, pkt.dst, pkt.protocol) == (L4, R4, ip.PROTO_ICMP)
    reply = pkt.payload
    assert checksum(reply) == 0
    assert reply[:2] == b"\x00\x00"  # echo reply, code 0
    assert reply[4:] == request[4:]  # identifier, sequence number and data echoed


@pytest.mark.parametrize("payload", [b"", b"ping6", bytes(range(256)) * 4])
def test_icmpv6_echo_reply(payload: bytes) -> None:
    stack = make_stack()
    request = icmp_echo(0xBEEF, 9, payload, v6=True)
    stack.receive_packet(ip.build(R6, L6, ip.PROTO_ICMPV6, request), 0.0)
    [out] = stack.packets_to_send()
    pkt = ip.parse(out)
    assert (pkt.src, pkt.dst, pkt.protocol) == (L6, R6, ip.PROTO_ICMPV6)
    reply = pkt.payload
    assert checksum(reply, pseudo_header_sum(L6, R6, ip.PROTO_ICMPV6, len(reply))) == 0
    assert reply[:2] == bytes([129, 0])
    assert reply[4:] == request[4:]


def test_icmp_bad_checksum_counted_and_not_answered() -> None:
    stack = make_stack()
    request = bytearray(icmp_echo(1, 1, b"data"))
    request[-1] ^= 0xFF
    stack.receive_packet(ip.build(R4, L4, ip.PROTO_ICMP, bytes(request)), 0.0)
    v6 = bytearray(icmp_echo(1, 1, b"data", v6=True))
    v6[-1] ^= 0xFF
    stack.receive_packet(ip.build(R6, L6, ip.PROTO_ICMPV6, bytes(v6)), 0.0)
    stack.receive_packet(ip.build(R4, L4, ip.PROTO_ICMP, b"\x08\x00"), 0.0)  # truncated
    assert stack.packets_to_send() == []
    assert stack.drops["malformed"] == 3


def test_icmp_non_echo_is_not_answered() -> None:
    stack = make_stack()
    msg = bytearray(icmp_echo(1, 1, b"data"))
    msg[0] = 0  # an echo reply
    msg[2:4] = b"\0\0"
    msg[2:4] = checksum(bytes(msg)).to_bytes(2, "big")
    stack.receive_packet(ip.build(R4, L4, ip.PROTO_ICMP, bytes(msg)), 0.0)
    assert stack.packets_to_send() == []


def test_wrong_family_icmp_and_unknown_protocol_counted() -> None:
    stack = make_stack()
    stack.receive_packet(ip.build(R4, L4, ip.PROTO_ICMPV6, icmp_echo(1, 1, b"")), 0.0)
    stack.receive_packet(ip.build(R6, L6, ip.PROTO_ICMP, icmp_echo(1, 1, b"")), 0.0)
    stack.receive_packet(ip.build(R4, L4, 132, b"sctp"), 0.0)
    assert stack.packets_to_send() == []
    assert stack.drops["unsupported_protocol"] == 3


# -- Stack: UDP ------------------------------------------------------------------------------------


def test_udp_to_unbound_port_is_dropped_and_counted() -> None:
    stack = make_stack()
    stack.receive_packet(ip.build(R4, L4, ip.PROTO_UDP, udp_datagram(999, 53, b"q")), 0.0)
    assert stack.packets_to_send() == []
    assert stack.drops["no_udp_endpoint"] == 1


@pytest.mark.parametrize(
    ("remote", "local", "remote_str"), [(R4, L4, REMOTE4), (R6, L6, REMOTE6)], ids=["v4", "v6"]
)
def test_udp_delivered_to_bound_handler_with_source_address(
    remote: bytes, local: bytes, remote_str: str
) -> None:
    stack = make_stack()
    got: list[tuple[bytes, tuple[str, int]]] = []
    assert stack.udp_bind(53, lambda data, addr: got.append((data, addr))) == 53
    payload = b"question?"
    stack.receive_packet(
        ip.build(remote, local, ip.PROTO_UDP, udp_datagram(4444, 53, payload, remote, local)), 0.0
    )
    assert got == [(payload, (remote_str, 4444))]
    assert stack.packets_to_send() == []


def test_udp_bound_to_specific_host_and_zero_checksum_rules() -> None:
    stack = make_stack()
    got: list[bytes] = []
    stack.udp_bind(53, lambda data, addr: got.append(data), host=LOCAL4)
    stack.receive_packet(ip.build(R4, L4, 17, udp_datagram(1, 53, b"v4-zero", zero=True)), 0.0)
    assert got == [b"v4-zero"]  # IPv4: zero means no checksum
    stack.receive_packet(
        ip.build(R6, L6, 17, udp_datagram(1, 53, b"v6-zero", R6, L6, zero=True)), 0.0
    )
    assert got == [b"v4-zero"]  # IPv6: a zero checksum is invalid (RFC 8200 8.1)
    assert stack.drops["malformed"] == 1
    assert stack.drops["no_udp_endpoint"] == 0


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d[:6] + bytes([d[6] ^ 0x55]) + d[7:],  # checksum
        lambda d: d[:-1] + bytes([d[-1] ^ 1]),  # payload
        lambda d: d[:4] + (len(d) + 1).to_bytes(2, "big") + d[6:],  # length beyond packet
        lambda d: d[:4] + (7).to_bytes(2, "big") + d[6:],  # length below the header
        lambda d: d[:7],  # truncated header
    ],
    ids=["checksum", "payload", "long", "short", "truncated"],
)
def test_udp_malformed_counted(mutate: Callable[[bytes], bytes]) -> None:
    stack = make_stack()
    got: list[bytes] = []
    stack.udp_bind(53, lambda data, addr: got.append(data))
    datagram = mutate(udp_datagram(1, 53, b"payload"))
    stack.receive_packet(ip.build(R4, L4, 17, datagram), 0.0)
    assert got == []
    assert stack.drops["malformed"] == 1


@FUZZ
@given(payload=st.binary(max_size=1392), v6=st.booleans(), port=st.integers(1, 65535))
def test_udp_send_builds_a_verifiable_datagram(payload: bytes, v6: bool, port: int) -> None:
    stack = make_stack()
    remote = REMOTE6 if v6 else REMOTE4
    if v6 and len(payload) > stack.mtu - 48:
        with pytest.raises(OSError):
            stack.udp_send(5353, remote, port, payload)
        return
    stack.udp_send(5353, remote, port, payload)
    [out] = stack.packets_to_send()
    pkt = ip.parse(out)
    assert pkt.protocol == ip.PROTO_UDP
    assert (pkt.src, pkt.dst) == ((L6, R6) if v6 else (L4, R4))
    sport, dport, length, value = struct.unpack("!HHHH", pkt.payload[:8])
    assert (sport, dport, length) == (5353, port, 8 + len(payload))
    assert value != 0
    assert checksum(pkt.payload, pseudo_header_sum(pkt.src, pkt.dst, 17, length)) == 0
    assert pkt.payload[8:] == payload
    # and the receiving side of a Stack accepts it
    peer = Stack([remote], rng=random.Random(2))
    got: list[tuple[bytes, tuple[str, int]]] = []
    peer.udp_bind(port, lambda data, addr: got.append((data, addr)))
    peer.receive_packet(out, 0.0)
    assert got == [(payload, (LOCAL6 if v6 else LOCAL4, 5353))]


def test_udp_send_too_large_raises() -> None:
    stack = make_stack()
    with pytest.raises(OSError):
        stack.udp_send(1, REMOTE4, 2, bytes(stack.mtu - 27))
    stack.udp_send(1, REMOTE4, 2, bytes(stack.mtu - 28))
    [out] = stack.packets_to_send()
    assert len(out) == stack.mtu


# -- Stack: robustness -----------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_packets_are_counted_not_raised(data: bytes) -> None:
    stack = make_stack()
    stack.listen(80, lambda conn: TcpOwner())
    stack.receive_packet(data, 0.0)
    try:
        ip.parse(data)
    except ip.Malformed:
        assert stack.drops["malformed"] == 1
        assert stack.packets_to_send() == []
        return
    assert sum(stack.drops.values()) <= 1


@FUZZ
@given(
    protocol=st.sampled_from([ip.PROTO_TCP, ip.PROTO_UDP, ip.PROTO_ICMP, ip.PROTO_ICMPV6, 99]),
    payload=st.binary(max_size=120),
    v6=st.booleans(),
    fix_tcp_checksum=st.booleans(),
)
def test_random_transport_payloads_never_raise(
    protocol: int, payload: bytes, v6: bool, fix_tcp_checksum: bool
) -> None:
    stack = make_stack()
    stack.listen(80, lambda conn: TcpOwner())
    stack.udp_bind(53, lambda data, addr: None)
    src, dst = (R6, L6) if v6 else (R4, L4)
    if protocol == ip.PROTO_TCP and fix_tcp_checksum and len(payload) >= 20:
        body = payload[:16] + b"\0\0" + payload[18:]
        value = checksum(body, pseudo_header_sum(src, dst, ip.PROTO_TCP, len(body)))
        payload = body[:16] + value.to_bytes(2, "big") + body[18:]
    stack.receive_packet(ip.build(src, dst, protocol, payload), 0.0)
    for out in stack.packets_to_send():
        pkt = ip.parse(out)  # whatever the stack answers is well-formed
        assert (pkt.src, pkt.dst) == (dst, src)
        if pkt.protocol == ip.PROTO_TCP:
            decode(pkt.payload, pkt.src, pkt.dst)
    if protocol == ip.PROTO_TCP:
        try:
            decode(payload, src, dst)
        except Malformed:
            assert stack.drops["malformed"] == 1
    stack.tick(1000.0)
    stack.packets_to_send()


# -- Stack: listen backlog -------------------------------------------------------------------------


class Accepted(TcpOwner):
    def __init__(self, log: list[TcpConnection]) -> None:
        self.log = log

    def tcp_connected(self, conn: TcpConnection) -> None:
        self.log.append(conn)


def syn_from(port: int, seq: int = 1000) -> bytes:
    return tcp_packet(Segment(port, 80, seq, 0, SYN, 65535, mss=1360, wscale=7))


def synacks(stack: Stack) -> list[Segment]:
    segs = [parse_tcp(p)[1] for p in stack.packets_to_send()]
    assert all(s.flags == SYN | ACK for s in segs)
    return segs


def test_backlog_limit_enforced_and_released() -> None:
    stack = make_stack()
    accepted: list[TcpConnection] = []
    stack.listen(80, lambda conn: Accepted(accepted))
    replies: dict[int, Segment] = {}
    for i in range(MAX_HALF_OPEN):
        stack.receive_packet(syn_from(10_000 + i), 0.0)
        [synack] = synacks(stack)
        assert synack.ack == 1001
        replies[10_000 + i] = synack
    stack.receive_packet(syn_from(20_000), 0.0)
    assert stack.packets_to_send() == []
    assert stack.drops["backlog_full"] == 1
    # a duplicate SYN for a half-open connection goes to it, not the backlog
    stack.receive_packet(syn_from(10_005), 0.1)
    assert [s.dst_port for s in synacks(stack)] == [10_005]
    assert stack.drops["backlog_full"] == 1

    # completing a handshake frees a slot
    s0 = replies[10_000]
    stack.receive_packet(tcp_packet(Segment(10_000, 80, 1001, s0.seq + 1, ACK, 512)), 0.2)
    assert len(accepted) == 1
    assert accepted[0].state is State.ESTABLISHED
    stack.receive_packet(syn_from(20_001), 0.2)
    assert len(synacks(stack)) == 1
    stack.receive_packet(syn_from(20_002), 0.2)
    assert stack.packets_to_send() == []
    assert stack.drops["backlog_full"] == 2

    # a reset half-open connection frees a slot
    stack.receive_packet(tcp_packet(Segment(10_001, 80, 1001, 0, RST, 0)), 0.3)
    assert stack.packets_to_send() == []
    stack.receive_packet(syn_from(20_003), 0.3)
    assert len(synacks(stack)) == 1

    # half-open connections time out and free the whole backlog
    now = 0.3
    while (d := stack.next_deadline()) is not None:
        now = d
        stack.tick(now)
        stack.packets_to_send()
    assert now < 200
    assert [c.state for c in stack.connections()] == [State.ESTABLISHED]
    for i in range(MAX_HALF_OPEN):
        stack.receive_packet(syn_from(30_000 + i), now)
    assert len(synacks(stack)) == MAX_HALF_OPEN
    stack.receive_packet(syn_from(40_000), now)
    assert stack.packets_to_send() == []
    assert stack.drops["backlog_full"] == 3


# -- two Stacks back to back -----------------------------------------------------------------------


class Sink(TcpOwner):
    """Server side: reads everything, closes when the client does."""

    def __init__(self, clock: Clock, done: list[Sink]) -> None:
        self.clock = clock
        self.data = bytearray()
        self.eof = False
        self.errors: list[OSError | None] = []
        done.append(self)

    def tcp_readable(self, conn: TcpConnection) -> None:
        self.data += conn.read(1 << 30, self.clock.now)

    def tcp_eof(self, conn: TcpConnection) -> None:
        self.eof = True
        conn.close(self.clock.now)

    def tcp_closed(self, conn: TcpConnection, error: OSError | None) -> None:
        self.errors.append(error)


class Source(TcpOwner):
    """Client side: writes ``data`` as buffer space allows, then closes."""

    def __init__(self, clock: Clock, data: bytes) -> None:
        self.clock = clock
        self.data = data
        self.offset = 0
        self.conn: TcpConnection | None = None
        self.closed = False
        self.errors: list[OSError | None] = []

    def tcp_connected(self, conn: TcpConnection) -> None:
        self.conn = conn
        self.push()

    def tcp_writable(self, conn: TcpConnection) -> None:
        self.push()

    def push(self) -> None:
        conn = self.conn
        if conn is None or self.closed or conn.state is not State.ESTABLISHED:
            return
        if self.offset < len(self.data):
            self.offset += conn.send(memoryview(self.data)[self.offset :], self.clock.now)
        if self.offset == len(self.data):
            conn.close(self.clock.now)
            self.closed = True

    def tcp_closed(self, conn: TcpConnection, error: OSError | None) -> None:
        self.errors.append(error)


def test_two_stacks_transfer_1mb_over_lossy_reordering_link() -> None:
    rng = random.Random(2024)
    clock = Clock()
    client = Stack(["10.9.0.1"], rng=random.Random(1))
    server = Stack(["10.9.0.2"], rng=random.Random(2))
    sinks: list[Sink] = []
    server.listen(7000, lambda conn: Sink(clock, sinks))
    data = rng.randbytes(1 << 20)
    source = Source(clock, data)
    conn = client.connect("10.9.0.2", 7000, source, clock.now)
    sent = lost = 0

    def transmit(index: int, packet: bytes, now: float) -> list[tuple[float, bytes]]:
        nonlocal sent, lost
        sent += 1
        if rng.random() < 0.05:
            lost += 1
            return []
        delay = 0.010 + rng.random() * 0.010  # jitter reorders packets
        return [(now + delay, packet)]

    run_link(
        clock,
        (stack_end(client), stack_end(server)),
        transmit,
        lambda: conn.state in (State.TIME_WAIT, State.CLOSED) and bool(sinks and sinks[0].errors),
        before_round=source.push,
        limit=600,
        rounds=500_000,
        drain=False,  # done once both sides have closed, even with packets still in flight
        describe=lambda: f"{conn} {len(sinks[0].data) if sinks else 0}",
    )
    assert lost > 0.03 * sent
    [sink] = sinks
    assert len(sink.data) == len(data)
    assert hashlib.sha256(sink.data).digest() == hashlib.sha256(data).digest()
    assert sink.eof
    assert sink.errors == [None]
    # the client lingers in TIME-WAIT for 2 MSL, then both Stacks are empty
    end = clock.now + 2 * MSL + 1
    while (d := client.next_deadline()) is not None and d <= end:
        clock.now = d
        client.tick(d)
        client.packets_to_send()
    assert conn.state is State.CLOSED
    assert source.errors == [None]
    client.packets_to_send()
    server.packets_to_send()
    assert client.connections() == []
    assert server.connections() == []
    assert sum(client.drops.values()) + sum(server.drops.values()) == 0
