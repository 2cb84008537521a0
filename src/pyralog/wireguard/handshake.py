"""The Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s handshake (whitepaper 5.4.2 to 5.4.6).

One ``Handshake`` per peer holds the in-progress state for both roles. Functions here
compute messages and validate them; they never touch the network, the clock or the
index table. A failed validation raises ``HandshakeRejected`` naming the reason, and
leaves the handshake exactly as it was.

Randomness can come from the caller: each function that needs an ephemeral key takes one
(the Device makes them from its injectable ``urandom``), so tests can replay handshakes
byte for byte; without one, a fresh key comes from OpenSSL. The preshared key is an
argument too: the Device may hold two for a peer while a new one is rolled out (see
``consume_response``).
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pyralog.wireguard.constants import CONSTRUCTION, IDENTIFIER, INITIATIONS_PER_SECOND, KEY_SIZE
from pyralog.wireguard.crypto import (
    AuthenticationError,
    aead_decrypt,
    aead_encrypt,
    hash_,
    kdf1,
    kdf2,
    kdf3,
)
from pyralog.wireguard.keys import LowOrderPointError, PrivateKey, dh
from pyralog.wireguard.messages import Initiation, Response

INITIAL_CHAIN_KEY = hash_(CONSTRUCTION)
INITIAL_HASH = hash_(INITIAL_CHAIN_KEY, IDENTIFIER)
_ZERO_KEY = bytes(KEY_SIZE)
_MIN_INITIATION_INTERVAL = 1.0 / INITIATIONS_PER_SECOND


class HandshakeRejected(Exception):
    """A handshake message failed validation; ``reason`` is a short counter name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class State(enum.IntEnum):
    ZEROED = 0
    INITIATION_CREATED = 1
    INITIATION_CONSUMED = 2
    RESPONSE_CREATED = 3
    RESPONSE_CONSUMED = 4


def _public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class Handshake:
    """Handshake state with one peer. ``remote_static`` is the peer's public key."""

    __slots__ = (
        "chaining_key",
        "hash",
        "initial_hash",
        "last_initiation_consumed",
        "last_sent",
        "latest_timestamp",
        "local_ephemeral",
        "local_index",
        "owner",
        "preshared_key",
        "remote_ephemeral",
        "remote_index",
        "remote_static",
        "state",
        "static_static",
    )

    def __init__(self, remote_static: bytes, owner: object = None) -> None:
        self.remote_static = remote_static
        self.owner = owner  # the Peer, for index-table lookups
        self.preshared_key = _ZERO_KEY
        self.initial_hash = hash_(INITIAL_HASH, remote_static)
        self.static_static = _ZERO_KEY
        self.latest_timestamp = b""
        self.last_initiation_consumed: float | None = None
        self.last_sent: float | None = None
        self.local_index = 0
        self.remote_index = 0
        self.clear()

    def clear(self) -> None:
        """Forget the in-progress handshake's secrets (not replay state or the last send)."""
        self.state = State.ZEROED
        self.chaining_key = _ZERO_KEY
        self.hash = _ZERO_KEY
        self.local_ephemeral: X25519PrivateKey | None = None
        self.remote_ephemeral = _ZERO_KEY

    def set_static_static(self, identity: PrivateKey | None) -> None:
        """Precompute DH(our static, their static); all zeros means no handshake possible."""
        if identity is None:
            self.static_static = _ZERO_KEY
            return
        try:
            self.static_static = identity.exchange(self.remote_static)
        except LowOrderPointError:
            self.static_static = _ZERO_KEY


def create_initiation(
    identity: PrivateKey,
    hs: Handshake,
    sender_index: int,
    timestamp: bytes,
    ephemeral: X25519PrivateKey | None = None,
) -> Initiation:
    """Build an initiation (macs left zero) and move ``hs`` to INITIATION_CREATED."""
    if hs.static_static == _ZERO_KEY:
        raise HandshakeRejected("invalid_static_key")
    if ephemeral is None:
        ephemeral = X25519PrivateKey.generate()
    e_pub = _public_bytes(ephemeral)
    c = kdf1(INITIAL_CHAIN_KEY, e_pub)
    h = hash_(hs.initial_hash, e_pub)
    c, k = kdf2(c, dh(ephemeral, hs.remote_static))
    encrypted_static = aead_encrypt(k, 0, identity.public_key.raw, h)
    h = hash_(h, encrypted_static)
    c, k = kdf2(c, hs.static_static)
    encrypted_timestamp = aead_encrypt(k, 0, timestamp, h)
    h = hash_(h, encrypted_timestamp)

    hs.chaining_key = c
    hs.hash = h
    hs.local_ephemeral = ephemeral
    hs.local_index = sender_index
    hs.state = State.INITIATION_CREATED
    return Initiation(sender_index, e_pub, encrypted_static, encrypted_timestamp)


class ResponderContext:
    """What a responder precomputes from its own identity to open initiations quickly."""

    __slots__ = ("identity", "initial_hash")

    def __init__(self, identity: PrivateKey) -> None:
        self.identity = identity
        self.initial_hash = hash_(INITIAL_HASH, identity.public_key.raw)


def open_initiation_static(ctx: ResponderContext, msg: Initiation) -> tuple[bytes, bytes, bytes]:
    """First half of consuming an initiation: learn who sent it.

    Returns (chaining key, hash, initiator's static public key); the caller finds the peer
    and passes its Handshake to ``consume_initiation``.
    """
    c = kdf1(INITIAL_CHAIN_KEY, msg.ephemeral)
    h = hash_(ctx.initial_hash, msg.ephemeral)
    try:
        c, k = kdf2(c, ctx.identity.exchange(msg.ephemeral))
        remote_static = aead_decrypt(k, 0, msg.encrypted_static, h)
    except (LowOrderPointError, AuthenticationError):
        raise HandshakeRejected("initiation_decrypt_failed") from None
    h = hash_(h, msg.encrypted_static)
    return c, h, remote_static


def consume_initiation(
    hs: Handshake, msg: Initiation, chaining_key: bytes, hash_value: bytes, now: float
) -> None:
    """Second half: check the timestamp and flood limit, then move to INITIATION_CONSUMED."""
    if hs.static_static == _ZERO_KEY:
        raise HandshakeRejected("invalid_static_key")
    c, k = kdf2(chaining_key, hs.static_static)
    try:
        timestamp = aead_decrypt(k, 0, msg.encrypted_timestamp, hash_value)
    except AuthenticationError:
        raise HandshakeRejected("initiation_decrypt_failed") from None
    h = hash_(hash_value, msg.encrypted_timestamp)
    # TAI64N labels are big-endian, so byte order is time order.
    if timestamp <= hs.latest_timestamp:
        raise HandshakeRejected("initiation_replayed")
    if (
        hs.last_initiation_consumed is not None
        and now - hs.last_initiation_consumed < _MIN_INITIATION_INTERVAL
    ):
        raise HandshakeRejected("initiation_flood")

    hs.chaining_key = c
    hs.hash = h
    hs.remote_ephemeral = msg.ephemeral
    hs.remote_index = msg.sender
    hs.latest_timestamp = timestamp
    hs.last_initiation_consumed = now
    hs.local_ephemeral = None
    hs.state = State.INITIATION_CONSUMED


def create_response(
    hs: Handshake,
    sender_index: int,
    ephemeral: X25519PrivateKey | None = None,
    preshared_key: bytes | None = None,
) -> Response:
    """Answer a consumed initiation (macs left zero); moves ``hs`` to RESPONSE_CREATED.
    ``preshared_key`` defaults to the handshake's own."""
    if hs.state != State.INITIATION_CONSUMED:
        raise HandshakeRejected("no_initiation_to_answer")
    if ephemeral is None:
        ephemeral = X25519PrivateKey.generate()
    if preshared_key is None:
        preshared_key = hs.preshared_key
    e_pub = _public_bytes(ephemeral)
    c = kdf1(hs.chaining_key, e_pub)
    h = hash_(hs.hash, e_pub)
    try:
        c = kdf1(c, dh(ephemeral, hs.remote_ephemeral))
        c = kdf1(c, dh(ephemeral, hs.remote_static))
    except LowOrderPointError:
        raise HandshakeRejected("low_order_ephemeral") from None
    c, tau, k = kdf3(c, preshared_key)
    h = hash_(h, tau)
    empty = aead_encrypt(k, 0, b"", h)
    h = hash_(h, empty)

    hs.chaining_key = c
    hs.hash = h
    hs.local_ephemeral = ephemeral
    hs.local_index = sender_index
    hs.state = State.RESPONSE_CREATED
    return Response(sender_index, hs.remote_index, e_pub, empty)


def consume_response(
    identity: PrivateKey,
    hs: Handshake,
    msg: Response,
    preshared_keys: Sequence[bytes] | None = None,
) -> int:
    """Validate a response to our initiation; moves ``hs`` to RESPONSE_CONSUMED.

    The response is sealed under the responder's preshared key, which the initiator
    cannot see: each of ``preshared_keys`` is tried in turn (the Diffie-Hellman work is
    done once) and the position of the one that opened it is returned. The default is
    the handshake's own key alone.
    """
    if hs.state != State.INITIATION_CREATED or hs.local_ephemeral is None:
        raise HandshakeRejected("unexpected_response")
    c = kdf1(hs.chaining_key, msg.ephemeral)
    h = hash_(hs.hash, msg.ephemeral)
    try:
        c = kdf1(c, dh(hs.local_ephemeral, msg.ephemeral))
        c = kdf1(c, identity.exchange(msg.ephemeral))
    except LowOrderPointError:
        raise HandshakeRejected("low_order_ephemeral") from None
    for position, psk in enumerate(preshared_keys or (hs.preshared_key,)):
        c_psk, tau, k = kdf3(c, psk)
        h_psk = hash_(h, tau)
        try:
            aead_decrypt(k, 0, msg.empty, h_psk)
        except AuthenticationError:
            continue
        hs.chaining_key = c_psk
        hs.hash = hash_(h_psk, msg.empty)
        hs.remote_index = msg.sender
        hs.state = State.RESPONSE_CONSUMED
        return position
    raise HandshakeRejected("response_decrypt_failed")


def derive_transport_keys(hs: Handshake) -> tuple[bytes, bytes, bool]:
    """(sending key, receiving key, we are the initiator), then forget the handshake secrets.

    Only valid after RESPONSE_CONSUMED (initiator) or RESPONSE_CREATED (responder).
    """
    if hs.state == State.RESPONSE_CONSUMED:
        is_initiator = True
    elif hs.state == State.RESPONSE_CREATED:
        is_initiator = False
    else:
        raise HandshakeRejected("no_session_to_derive")
    first, second = kdf2(hs.chaining_key, b"")
    hs.clear()
    if is_initiator:
        return first, second, True
    return second, first, False


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
