"""Curve25519 keys in ``wg``'s base64 format.

A key on the command line or in a config file is 44 characters of standard base64 (32
bytes, one ``=`` of padding). Like ``wg``, we only accept the canonical encoding, so a key
has exactly one spelling and two configs naming the same key always compare equal.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pyralog.wireguard.constants import KEY_SIZE

BASE64_KEY_LENGTH = 44


class InvalidKeyError(ValueError):
    """A key that is not 32 bytes of canonical base64. The message names what is wrong."""


def key_from_base64(text: str, what: str = "key") -> bytes:
    """Decode a 44-character base64 key, rejecting anything ``wg`` would reject."""
    if not isinstance(text, str):
        raise InvalidKeyError(f"{what} must be a string")
    if len(text) != BASE64_KEY_LENGTH or not text.endswith("=") or text.endswith("=="):
        raise InvalidKeyError(
            f"{what} must be 44 base64 characters ending in one '=' (got {len(text)})"
        )
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKeyError(f"{what} is not valid base64") from None
    if len(raw) != KEY_SIZE or base64.b64encode(raw).decode() != text:
        raise InvalidKeyError(f"{what} is not a canonical base64 encoding of 32 bytes")
    return raw


def key_to_base64(raw: bytes) -> str:
    if len(raw) != KEY_SIZE:
        raise InvalidKeyError(f"key must be {KEY_SIZE} bytes, got {len(raw)}")
    return base64.b64encode(raw).decode()


def clamp(raw: bytes) -> bytes:
    """Clamp a Curve25519 scalar the way ``wg genkey`` stores it (RFC 7748, section 5)."""
    b = bytearray(raw)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


class PublicKey:
    """A peer's static public key. Hashable, compares by value, shown as base64."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_SIZE:
            raise InvalidKeyError(f"public key must be {KEY_SIZE} bytes, got {len(raw)}")
        self._raw = bytes(raw)

    @classmethod
    def from_base64(cls, text: str) -> PublicKey:
        return cls(key_from_base64(text, "public key"))

    @property
    def raw(self) -> bytes:
        return self._raw

    def to_base64(self) -> str:
        return key_to_base64(self._raw)

    def hex(self) -> str:
        return self._raw.hex()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"PublicKey({self.to_base64()!r})"

    def __str__(self) -> str:
        return self.to_base64()


class PrivateKey:
    """A static Curve25519 private key. Its repr never shows the secret."""

    __slots__ = ("_key", "_public", "_raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_SIZE:
            raise InvalidKeyError(f"private key must be {KEY_SIZE} bytes, got {len(raw)}")
        # X25519 clamps internally, so clamped and unclamped spellings act the same;
        # we keep the clamped form, as ``wg`` reports it.
        self._raw = clamp(raw)
        self._key = X25519PrivateKey.from_private_bytes(self._raw)
        self._public = PublicKey(
            self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        )

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(os.urandom(KEY_SIZE))

    @classmethod
    def from_base64(cls, text: str) -> PrivateKey:
        return cls(key_from_base64(text, "private key"))

    @property
    def raw(self) -> bytes:
        return self._raw

    @property
    def public_key(self) -> PublicKey:
        return self._public

    @property
    def x25519(self) -> X25519PrivateKey:
        return self._key

    def to_base64(self) -> str:
        return key_to_base64(self._raw)

    def exchange(self, public: bytes) -> bytes:
        """Curve25519 DH. Raises ``LowOrderPointError`` when the result is all zeros."""
        return dh(self._key, public)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrivateKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"PrivateKey(public={self._public.to_base64()!r})"


class PresharedKey:
    """A 32-byte symmetric key mixed into the handshake (Noise psk2). Repr hides it."""

    __slots__ = ("_raw",)

    ZERO: PresharedKey

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_SIZE:
            raise InvalidKeyError(f"preshared key must be {KEY_SIZE} bytes, got {len(raw)}")
        self._raw = bytes(raw)

    @classmethod
    def generate(cls) -> PresharedKey:
        return cls(os.urandom(KEY_SIZE))

    @classmethod
    def from_base64(cls, text: str) -> PresharedKey:
        return cls(key_from_base64(text, "preshared key"))

    @property
    def raw(self) -> bytes:
        return self._raw

    @property
    def is_zero(self) -> bool:
        return self._raw == bytes(KEY_SIZE)

    def to_base64(self) -> str:
        return key_to_base64(self._raw)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PresharedKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return "PresharedKey(<zero>)" if self.is_zero else "PresharedKey(<hidden>)"


PresharedKey.ZERO = PresharedKey(bytes(KEY_SIZE))


class LowOrderPointError(ValueError):
    """A Curve25519 exchange gave the all-zero secret: the public key has low order."""


def dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        # cryptography refuses the all-zero shared secret, which the protocol forbids too.
        raise LowOrderPointError("public key is a low-order point") from None


def is_low_order(public: bytes) -> bool:
    """True when no private key can agree a secret with ``public`` (all-zero DH result)."""
    try:
        dh(_PROBE_KEY, public)
    except LowOrderPointError:
        return True
    return False


# Any scalar works for the probe: a point of low order maps to zero under every clamped scalar.
_PROBE_KEY = X25519PrivateKey.generate()
