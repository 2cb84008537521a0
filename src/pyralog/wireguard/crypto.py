"""The whitepaper's primitives (section 5.4): HASH, MAC, HMAC, KDF1-3, AEAD and XAEAD.

Thin wrappers over ``hashlib`` (BLAKE2s), ``hmac``, ``cryptography`` (ChaCha20-Poly1305)
and PyNaCl (XChaCha20-Poly1305, which ``cryptography`` does not offer). Nothing here is
hand-rolled cryptography; the wrappers only fix the protocol's nonce and key layouts.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

from pyralog.wireguard.constants import MAC_SIZE

__all__ = [
    "AuthenticationError",
    "aead_decrypt",
    "aead_encrypt",
    "aead_nonce",
    "hash_",
    "hmac",
    "kdf1",
    "kdf2",
    "kdf3",
    "mac",
    "xaead_decrypt",
    "xaead_encrypt",
]

_NONCE = struct.Struct("<4xQ")  # 32 zero bits then the 64-bit little-endian counter


class AuthenticationError(Exception):
    """An AEAD tag did not verify: wrong key, wrong data, or tampering."""


def hash_(*parts: bytes) -> bytes:
    """HASH(a || b || ...): BLAKE2s-256."""
    h = hashlib.blake2s()
    for p in parts:
        h.update(p)
    return h.digest()


def mac(key: bytes, data: bytes) -> bytes:
    """MAC(key, data): keyed BLAKE2s with a 128-bit output."""
    return hashlib.blake2s(data, key=key, digest_size=MAC_SIZE).digest()


def hmac(key: bytes, data: bytes) -> bytes:
    """HMAC(key, data) with BLAKE2s-256 (RFC 2104 construction, 64-byte block)."""
    return _hmac.digest(key, data, "blake2s")


def kdf1(key: bytes, data: bytes) -> bytes:
    t0 = hmac(key, data)
    return hmac(t0, b"\x01")


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    t0 = hmac(key, data)
    t1 = hmac(t0, b"\x01")
    return t1, hmac(t0, t1 + b"\x02")


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    t0 = hmac(key, data)
    t1 = hmac(t0, b"\x01")
    t2 = hmac(t0, t1 + b"\x02")
    return t1, t2, hmac(t0, t2 + b"\x03")


def aead_nonce(counter: int) -> bytes:
    return _NONCE.pack(counter)


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    """AEAD(key, counter, plaintext, ad): ChaCha20-Poly1305 with the 96-bit protocol nonce."""
    return ChaCha20Poly1305(key).encrypt(_NONCE.pack(counter), plaintext, ad)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(_NONCE.pack(counter), ciphertext, ad)
    except InvalidTag:
        raise AuthenticationError("AEAD authentication failed") from None


def xaead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """XAEAD: XChaCha20-Poly1305 with a 192-bit random nonce (cookie replies)."""
    return crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key)


def xaead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    try:
        return crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, ad, nonce, key)
    except CryptoError:
        raise AuthenticationError("XAEAD authentication failed") from None
