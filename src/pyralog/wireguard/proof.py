"""Handshake proofs: a MAC in an initiation's mac2 field that says "I hold this secret".

The protocol leaves mac2 all zeros unless the initiator holds a cookie, and a responder
only looks at it under load. An enrolling node puts a proof there instead: a MAC of the
message (mac1 included, as for a cookie) keyed by a key derived from a join token. The
responder can check it before any Curve25519 work and before it answers, which is what
lets a coordinator stay silent to everyone without a live token (see
``pyralog.mesh.enrollment``). The wire format is unchanged.

Under load the responder demands a cookie. An initiator holding both a cookie and a proof
key then keys mac2 with HASH(cookie || proof key): the one field proves both the address
(the cookie) and the secret (the proof).
"""

from __future__ import annotations

import hmac

from pyralog.wireguard.constants import MAC_SIZE
from pyralog.wireguard.crypto import hash_, mac

_MAC2_END = -MAC_SIZE


def proof_mac2(proof_key: bytes, body_and_mac1: bytes, cookie: bytes | None) -> bytes:
    """The mac2 an initiator holding ``proof_key`` (and maybe a cookie) sends."""
    key = proof_key if cookie is None else hash_(cookie, proof_key)
    return mac(key, body_and_mac1)


def check_proof(proof_key: bytes, message: bytes, cookie: bytes | None) -> bool:
    """True when ``message``'s mac2 is the proof for ``proof_key`` (with ``cookie``, if
    the responder is under load and would give the sender that cookie)."""
    expected = proof_mac2(proof_key, message[:_MAC2_END], cookie)
    return hmac.compare_digest(expected, message[_MAC2_END:])
