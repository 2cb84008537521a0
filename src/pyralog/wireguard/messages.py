"""The four WireGuard messages, parsed and built byte-exactly (whitepaper 5.4).

Every message starts with a little-endian u32 whose low byte is the type and whose three
high bytes are reserved zeros; we compare the whole u32, so a nonzero reserved byte makes
a datagram unknown, and unknown datagrams are dropped. Handshake messages are small
``__slots__`` classes; transport data is handled with raw structs on the hot path and
only described here.
"""

from __future__ import annotations

import struct

from pyralog.wireguard.constants import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    MAC_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    RESPONSE_SIZE,
    TRANSPORT_MIN_SIZE,
)

# type(u32) sender ephemeral encrypted_static encrypted_timestamp mac1 mac2
INITIATION = struct.Struct("<II32s48s28s16s16s")
# type(u32) sender receiver ephemeral encrypted_nothing mac1 mac2
RESPONSE = struct.Struct("<III32s16s16s16s")
# type(u32) receiver nonce encrypted_cookie
COOKIE_REPLY = struct.Struct("<II24s32s")
# type(u32) receiver counter(u64), then the AEAD ciphertext
TRANSPORT_HEADER = struct.Struct("<IIQ")
# The u32 prefix alone, to classify a datagram.
MESSAGE_TYPE = struct.Struct("<I")

assert INITIATION.size == INITIATION_SIZE
assert RESPONSE.size == RESPONSE_SIZE
assert COOKIE_REPLY.size == COOKIE_REPLY_SIZE

# Offsets of the MACs: mac1 covers everything before it, mac2 everything before mac2.
INITIATION_MAC1_OFFSET = INITIATION_SIZE - 2 * MAC_SIZE
RESPONSE_MAC1_OFFSET = RESPONSE_SIZE - 2 * MAC_SIZE


class MalformedMessage(ValueError):
    """A datagram that is not a well-formed WireGuard message."""


class Initiation:
    __slots__ = (
        "encrypted_static",
        "encrypted_timestamp",
        "ephemeral",
        "mac1",
        "mac2",
        "sender",
    )

    def __init__(
        self,
        sender: int,
        ephemeral: bytes,
        encrypted_static: bytes,
        encrypted_timestamp: bytes,
        mac1: bytes = bytes(MAC_SIZE),
        mac2: bytes = bytes(MAC_SIZE),
    ) -> None:
        self.sender = sender
        self.ephemeral = ephemeral
        self.encrypted_static = encrypted_static
        self.encrypted_timestamp = encrypted_timestamp
        self.mac1 = mac1
        self.mac2 = mac2

    @classmethod
    def parse(cls, data: bytes) -> Initiation:
        if len(data) != INITIATION_SIZE:
            raise MalformedMessage(f"initiation must be {INITIATION_SIZE} bytes, got {len(data)}")
        kind, *fields = INITIATION.unpack(data)
        if kind != MESSAGE_INITIATION:
            raise MalformedMessage("not an initiation")
        return cls(*fields)

    def pack(self) -> bytes:
        return INITIATION.pack(
            MESSAGE_INITIATION,
            self.sender,
            self.ephemeral,
            self.encrypted_static,
            self.encrypted_timestamp,
            self.mac1,
            self.mac2,
        )


class Response:
    __slots__ = ("empty", "ephemeral", "mac1", "mac2", "receiver", "sender")

    def __init__(
        self,
        sender: int,
        receiver: int,
        ephemeral: bytes,
        empty: bytes,
        mac1: bytes = bytes(MAC_SIZE),
        mac2: bytes = bytes(MAC_SIZE),
    ) -> None:
        self.sender = sender
        self.receiver = receiver
        self.ephemeral = ephemeral
        self.empty = empty
        self.mac1 = mac1
        self.mac2 = mac2

    @classmethod
    def parse(cls, data: bytes) -> Response:
        if len(data) != RESPONSE_SIZE:
            raise MalformedMessage(f"response must be {RESPONSE_SIZE} bytes, got {len(data)}")
        kind, *fields = RESPONSE.unpack(data)
        if kind != MESSAGE_RESPONSE:
            raise MalformedMessage("not a response")
        return cls(*fields)

    def pack(self) -> bytes:
        return RESPONSE.pack(
            MESSAGE_RESPONSE,
            self.sender,
            self.receiver,
            self.ephemeral,
            self.empty,
            self.mac1,
            self.mac2,
        )


class CookieReply:
    __slots__ = ("encrypted_cookie", "nonce", "receiver")

    def __init__(self, receiver: int, nonce: bytes, encrypted_cookie: bytes) -> None:
        self.receiver = receiver
        self.nonce = nonce
        self.encrypted_cookie = encrypted_cookie

    @classmethod
    def parse(cls, data: bytes) -> CookieReply:
        if len(data) != COOKIE_REPLY_SIZE:
            raise MalformedMessage(
                f"cookie reply must be {COOKIE_REPLY_SIZE} bytes, got {len(data)}"
            )
        kind, *fields = COOKIE_REPLY.unpack(data)
        if kind != MESSAGE_COOKIE_REPLY:
            raise MalformedMessage("not a cookie reply")
        return cls(*fields)

    def pack(self) -> bytes:
        return COOKIE_REPLY.pack(
            MESSAGE_COOKIE_REPLY, self.receiver, self.nonce, self.encrypted_cookie
        )


def message_type(data: bytes) -> int:
    """The message type of a datagram, or 0 when it cannot be a WireGuard message.

    Sizes are checked here so callers can trust them: handshake messages have one exact
    size, transport data at least a header and a tag.
    """
    n = len(data)
    if n < 4:
        return 0
    kind = MESSAGE_TYPE.unpack_from(data)[0]
    if kind == MESSAGE_TRANSPORT:
        return kind if n >= TRANSPORT_MIN_SIZE else 0
    if kind == MESSAGE_INITIATION:
        return kind if n == INITIATION_SIZE else 0
    if kind == MESSAGE_RESPONSE:
        return kind if n == RESPONSE_SIZE else 0
    if kind == MESSAGE_COOKIE_REPLY:
        return kind if n == COOKIE_REPLY_SIZE else 0
    return 0
