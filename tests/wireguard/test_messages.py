"""Byte-exact layout of the WireGuard messages (whitepaper 5.4.2, 5.4.3, 5.4.7, 5.4.6)."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyralog.wireguard.constants import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    RESPONSE_SIZE,
    TRANSPORT_MIN_SIZE,
)
from pyralog.wireguard.messages import (
    COOKIE_REPLY,
    INITIATION,
    INITIATION_MAC1_OFFSET,
    RESPONSE,
    RESPONSE_MAC1_OFFSET,
    TRANSPORT_HEADER,
    CookieReply,
    Initiation,
    MalformedMessage,
    Response,
    message_type,
)

MessageClass = type[Initiation] | type[Response] | type[CookieReply]

u32 = st.integers(min_value=0, max_value=2**32 - 1)


def blob(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


def _initiation(sender: int = 0x11223344) -> Initiation:
    return Initiation(
        sender, os.urandom(32), os.urandom(48), os.urandom(28), os.urandom(16), os.urandom(16)
    )


def _response() -> Response:
    return Response(
        0x01020304, 0xA0B0C0D0, os.urandom(32), os.urandom(16), os.urandom(16), os.urandom(16)
    )


def _cookie_reply() -> CookieReply:
    return CookieReply(0xDEADBEEF, os.urandom(24), os.urandom(32))


# --------------------------------------------------------------------------- sizes


def test_sizes() -> None:
    assert INITIATION_SIZE == INITIATION.size == 148
    assert RESPONSE_SIZE == RESPONSE.size == 92
    assert COOKIE_REPLY_SIZE == COOKIE_REPLY.size == 64
    assert TRANSPORT_HEADER.size == 16
    assert TRANSPORT_MIN_SIZE == 32
    assert len(_initiation().pack()) == 148
    assert len(_response().pack()) == 92
    assert len(_cookie_reply().pack()) == 64


def test_mac_offsets() -> None:
    # mac1 covers everything before it; mac2 follows it and ends the message.
    assert INITIATION_MAC1_OFFSET == 116
    assert RESPONSE_MAC1_OFFSET == 60


# --------------------------------------------------------------------------- round trips


@settings(max_examples=60, deadline=None)
@given(u32, blob(32), blob(48), blob(28), blob(16), blob(16))
def test_initiation_round_trip(
    sender: int, eph: bytes, static: bytes, stamp: bytes, mac1: bytes, mac2: bytes
) -> None:
    data = Initiation(sender, eph, static, stamp, mac1, mac2).pack()
    msg = Initiation.parse(data)
    assert (msg.sender, msg.ephemeral, msg.encrypted_static) == (sender, eph, static)
    assert (msg.encrypted_timestamp, msg.mac1, msg.mac2) == (stamp, mac1, mac2)
    assert msg.pack() == data
    assert message_type(data) == MESSAGE_INITIATION


@settings(max_examples=60, deadline=None)
@given(u32, u32, blob(32), blob(16), blob(16), blob(16))
def test_response_round_trip(
    sender: int, receiver: int, eph: bytes, empty: bytes, mac1: bytes, mac2: bytes
) -> None:
    data = Response(sender, receiver, eph, empty, mac1, mac2).pack()
    msg = Response.parse(data)
    assert (msg.sender, msg.receiver, msg.ephemeral) == (sender, receiver, eph)
    assert (msg.empty, msg.mac1, msg.mac2) == (empty, mac1, mac2)
    assert msg.pack() == data
    assert message_type(data) == MESSAGE_RESPONSE


@settings(max_examples=60, deadline=None)
@given(u32, blob(24), blob(32))
def test_cookie_reply_round_trip(receiver: int, nonce: bytes, sealed: bytes) -> None:
    data = CookieReply(receiver, nonce, sealed).pack()
    msg = CookieReply.parse(data)
    assert (msg.receiver, msg.nonce, msg.encrypted_cookie) == (receiver, nonce, sealed)
    assert msg.pack() == data
    assert message_type(data) == MESSAGE_COOKIE_REPLY


def test_default_macs_are_zero() -> None:
    data = Initiation(1, bytes(32), bytes(48), bytes(28)).pack()
    assert data[116:148] == bytes(32)
    data = Response(1, 2, bytes(32), bytes(16)).pack()
    assert data[60:92] == bytes(32)


# --------------------------------------------------------------------------- layout


def test_initiation_layout() -> None:
    msg = _initiation(sender=0x11223344)
    data = msg.pack()
    assert data[0:4] == b"\x01\x00\x00\x00"  # type, then three reserved zero bytes
    assert data[4:8] == b"\x44\x33\x22\x11"  # sender index, little-endian
    assert data[8:40] == msg.ephemeral
    assert data[40:88] == msg.encrypted_static
    assert data[88:116] == msg.encrypted_timestamp
    assert data[INITIATION_MAC1_OFFSET : INITIATION_MAC1_OFFSET + 16] == msg.mac1
    assert data[116:132] == msg.mac1
    assert data[132:148] == msg.mac2


def test_response_layout() -> None:
    msg = _response()
    data = msg.pack()
    assert data[0:4] == b"\x02\x00\x00\x00"
    assert data[4:8] == b"\x04\x03\x02\x01"  # sender
    assert data[8:12] == b"\xd0\xc0\xb0\xa0"  # receiver
    assert data[12:44] == msg.ephemeral
    assert data[44:60] == msg.empty
    assert data[RESPONSE_MAC1_OFFSET : RESPONSE_MAC1_OFFSET + 16] == msg.mac1
    assert data[60:76] == msg.mac1
    assert data[76:92] == msg.mac2


def test_cookie_reply_layout() -> None:
    msg = _cookie_reply()
    data = msg.pack()
    assert data[0:4] == b"\x03\x00\x00\x00"
    assert data[4:8] == b"\xef\xbe\xad\xde"  # receiver
    assert data[8:32] == msg.nonce
    assert data[32:64] == msg.encrypted_cookie


def test_transport_header_layout() -> None:
    data = TRANSPORT_HEADER.pack(MESSAGE_TRANSPORT, 0x0A0B0C0D, 0x0102030405060708)
    assert data == b"\x04\x00\x00\x00" + b"\x0d\x0c\x0b\x0a" + bytes(range(8, 0, -1))


def test_indices_at_extremes() -> None:
    for index in (0, 1, 2**32 - 1):
        assert Initiation.parse(_initiation(sender=index).pack()).sender == index
        reply = CookieReply(index, bytes(24), bytes(32))
        assert CookieReply.parse(reply.pack()).receiver == index


# --------------------------------------------------------------------------- parse errors


@pytest.mark.parametrize(
    ("cls", "good"),
    [
        (Initiation, lambda: _initiation().pack()),
        (Response, lambda: _response().pack()),
        (CookieReply, lambda: _cookie_reply().pack()),
    ],
)
def test_parse_rejects_wrong_size(cls: MessageClass, good: Callable[[], bytes]) -> None:
    data = good()
    for bad in (b"", data[:4], data[:-1], data + b"\x00", data + bytes(100)):
        with pytest.raises(MalformedMessage):
            cls.parse(bad)


@pytest.mark.parametrize(
    ("cls", "good"),
    [
        (Initiation, lambda: _initiation().pack()),
        (Response, lambda: _response().pack()),
        (CookieReply, lambda: _cookie_reply().pack()),
    ],
)
def test_parse_rejects_wrong_type_or_reserved(cls: MessageClass, good: Callable[[], bytes]) -> None:
    data = good()
    for kind in (0, 1, 2, 3, 4, 5, 255):
        if kind == data[0]:
            continue
        with pytest.raises(MalformedMessage):
            cls.parse(bytes([kind]) + data[1:])
    for i in (1, 2, 3):
        bad = bytearray(data)
        bad[i] = 0x01
        with pytest.raises(MalformedMessage):
            cls.parse(bytes(bad))


def test_malformed_message_is_a_value_error() -> None:
    assert issubclass(MalformedMessage, ValueError)


def test_each_parser_rejects_the_other_messages() -> None:
    init, resp, reply = _initiation().pack(), _response().pack(), _cookie_reply().pack()
    cases: list[tuple[MessageClass, tuple[bytes, bytes]]] = [
        (Initiation, (resp, reply)),
        (Response, (init, reply)),
        (CookieReply, (init, resp)),
    ]
    for cls, others in cases:
        for data in others:
            with pytest.raises(MalformedMessage):
                cls.parse(data)


# --------------------------------------------------------------------------- message_type


def test_message_type_of_well_formed_messages() -> None:
    assert message_type(_initiation().pack()) == MESSAGE_INITIATION == 1
    assert message_type(_response().pack()) == MESSAGE_RESPONSE == 2
    assert message_type(_cookie_reply().pack()) == MESSAGE_COOKIE_REPLY == 3


@pytest.mark.parametrize("data", [b"", b"\x01", b"\x04\x00", b"\x04\x00\x00"])
def test_message_type_too_short(data: bytes) -> None:
    assert message_type(data) == 0


@pytest.mark.parametrize("kind", [0, 5, 6, 0x7F, 0x80, 255])
def test_message_type_unknown_types(kind: int) -> None:
    for size in (4, 32, 64, 92, 148, 200):
        assert message_type(bytes([kind]) + bytes(size - 1)) == 0


@pytest.mark.parametrize("kind", [1, 2, 3, 4])
@pytest.mark.parametrize("reserved", [1, 2, 3])
def test_message_type_nonzero_reserved(kind: int, reserved: int) -> None:
    size = {1: 148, 2: 92, 3: 64, 4: 100}[kind]
    data = bytearray(size)
    data[0] = kind
    assert message_type(bytes(data)) == kind
    data[reserved] = 0x80
    assert message_type(bytes(data)) == 0


@pytest.mark.parametrize(
    ("kind", "size"),
    [(MESSAGE_INITIATION, 148), (MESSAGE_RESPONSE, 92), (MESSAGE_COOKIE_REPLY, 64)],
)
def test_message_type_handshake_sizes_are_exact(kind: int, size: int) -> None:
    header = struct.pack("<I", kind)
    for n in (4, 32, size - 16, size - 1, size + 1, size + 16, 148 + 92):
        assert message_type(header + bytes(n - 4)) == 0, n
    assert message_type(header + bytes(size - 4)) == kind


def test_message_type_transport() -> None:
    header = struct.pack("<I", MESSAGE_TRANSPORT)
    for n in (4, 16, 17, 31):
        assert message_type(header + bytes(n - 4)) == 0, n
    # A keepalive: 16-byte header plus the 16-byte tag of an empty payload.
    assert message_type(header + bytes(28)) == MESSAGE_TRANSPORT
    for n in (33, 48, 64, 92, 148, 1500, 65535):
        assert message_type(header + bytes(n - 4)) == MESSAGE_TRANSPORT, n
