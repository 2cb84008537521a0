"""MAC1, MAC2 and cookie replies: WireGuard's DoS mitigation (whitepaper 5.4.4 and 5.4.7).

Every handshake message carries mac1, keyed by the receiver's public key, so a responder
can ignore anything from a sender who does not know it. Under load, a responder demands a
valid mac2 too, keyed by a cookie bound to the sender's address; without one it answers
with an encrypted cookie reply instead of doing Curve25519 work. The checker is the
responder's side (one per device), the generator the initiator's side (one per peer).
"""

from __future__ import annotations

import hmac
import os

from pyralog.wireguard.constants import (
    COOKIE_NONCE_SIZE,
    COOKIE_SECRET_MAX_AGE,
    COOKIE_VALIDITY,
    LABEL_COOKIE,
    LABEL_MAC1,
    MAC_SIZE,
)
from pyralog.wireguard.crypto import AuthenticationError, hash_, mac, xaead_decrypt, xaead_encrypt
from pyralog.wireguard.messages import COOKIE_REPLY, MESSAGE_COOKIE_REPLY
from pyralog.wireguard.proof import proof_mac2

_MAC2_END = -MAC_SIZE
_MAC1_END = -2 * MAC_SIZE


class CookieChecker:
    """Validates macs on incoming handshake messages and makes cookie replies."""

    __slots__ = ("_cookie_key", "_mac1_key", "_secret", "_secret_born", "_urandom")

    def __init__(self, own_public_key: bytes, urandom=os.urandom) -> None:
        self._urandom = urandom
        self._mac1_key = hash_(LABEL_MAC1, own_public_key)
        self._cookie_key = hash_(LABEL_COOKIE, own_public_key)
        self._secret = b""
        self._secret_born: float | None = None

    def check_mac1(self, message: bytes) -> bool:
        expected = mac(self._mac1_key, message[:_MAC1_END])
        return hmac.compare_digest(expected, message[_MAC1_END:_MAC2_END])

    def check_mac2(self, message: bytes, source: bytes, now: float) -> bool:
        """True when mac2 was made with the cookie we would give ``source`` right now."""
        cookie = self.cookie_for(source, now)
        if cookie is None:
            return False
        expected = mac(cookie, message[:_MAC2_END])
        return hmac.compare_digest(expected, message[_MAC2_END:])

    def cookie_for(self, source: bytes, now: float) -> bytes | None:
        """The cookie ``source`` holds if it answered our last cookie reply; None when no
        current secret exists (then nobody holds a valid cookie)."""
        if self._secret_born is None or now - self._secret_born > COOKIE_SECRET_MAX_AGE:
            return None
        return mac(self._secret, source)

    def create_reply(self, message: bytes, receiver: int, source: bytes, now: float) -> bytes:
        """A cookie reply to ``message`` (a handshake message from ``source``)."""
        if self._secret_born is None or now - self._secret_born > COOKIE_SECRET_MAX_AGE:
            # A new random secret every two minutes: old cookies stop working by themselves.
            self._secret = self._urandom(32)
            self._secret_born = now
        cookie = mac(self._secret, source)
        nonce = self._urandom(COOKIE_NONCE_SIZE)
        sealed = xaead_encrypt(self._cookie_key, nonce, cookie, message[_MAC1_END:_MAC2_END])
        return COOKIE_REPLY.pack(MESSAGE_COOKIE_REPLY, receiver, nonce, sealed)


class CookieGenerator:
    """Adds macs to the handshake messages we send to one peer; stores its cookies."""

    __slots__ = (
        "_cookie",
        "_cookie_born",
        "_cookie_key",
        "_last_mac1",
        "_mac1_key",
        "proof_key",
    )

    def __init__(self, peer_public_key: bytes) -> None:
        self._mac1_key = hash_(LABEL_MAC1, peer_public_key)
        self._cookie_key = hash_(LABEL_COOKIE, peer_public_key)
        self._cookie: bytes | None = None
        self._cookie_born = 0.0
        self._last_mac1: bytes | None = None
        # A handshake proof key (``pyralog.wireguard.proof``): mac2 carries it, always.
        self.proof_key: bytes | None = None

    @property
    def has_cookie(self) -> bool:
        return self._cookie is not None

    def add_macs(self, message: bytes, now: float) -> bytes:
        """``message`` with its last 32 bytes replaced by mac1 and (if we hold a cookie) mac2."""
        body = message[:_MAC1_END]
        mac1 = mac(self._mac1_key, body)
        self._last_mac1 = mac1
        cookie = self._cookie
        if cookie is not None and now - self._cookie_born >= COOKIE_VALIDITY:
            cookie = None
        if self.proof_key is not None:
            mac2 = proof_mac2(self.proof_key, body + mac1, cookie)
        elif cookie is not None:
            mac2 = mac(cookie, body + mac1)
        else:
            mac2 = bytes(MAC_SIZE)
        return body + mac1 + mac2

    def consume_reply(self, nonce: bytes, encrypted_cookie: bytes, now: float) -> bool:
        """Store the cookie from a reply to the last message we sent; False if not genuine."""
        if self._last_mac1 is None:
            return False
        try:
            cookie = xaead_decrypt(self._cookie_key, nonce, encrypted_cookie, self._last_mac1)
        except AuthenticationError:
            return False
        self._cookie = cookie
        self._cookie_born = now
        self._last_mac1 = None  # one cookie per message sent
        return True
