"""MAC1, MAC2 and cookie replies (whitepaper 5.4.4 and 5.4.7), checker and generator sides."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import pytest

from pyralog.wireguard.constants import (
    COOKIE_REPLY_SIZE,
    COOKIE_SECRET_MAX_AGE,
    COOKIE_VALIDITY,
    LABEL_COOKIE,
    LABEL_MAC1,
    MESSAGE_COOKIE_REPLY,
)
from pyralog.wireguard.cookie import CookieChecker, CookieGenerator
from pyralog.wireguard.crypto import xaead_decrypt
from pyralog.wireguard.keys import PrivateKey
from pyralog.wireguard.messages import CookieReply, Initiation, Response

SOURCE = bytes([192, 0, 2, 1]) + (51820).to_bytes(2, "big")
OTHER_IP = bytes([192, 0, 2, 2]) + (51820).to_bytes(2, "big")
OTHER_PORT = bytes([192, 0, 2, 1]) + (51821).to_bytes(2, "big")
SOURCE6 = bytes.fromhex("20010db8000000000000000000000001") + (443).to_bytes(2, "big")


class CountingRandom:
    """A deterministic ``urandom``: distinct, reproducible bytes on every call."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        out = hashlib.blake2s(len(self.calls).to_bytes(4, "little"), digest_size=32).digest()
        out = (out * (n // 32 + 1))[:n]
        self.calls.append(out)
        return out


def _initiation() -> bytes:
    return Initiation(7, os.urandom(32), os.urandom(48), os.urandom(28)).pack()


def _response() -> bytes:
    return Response(8, 9, os.urandom(32), os.urandom(16)).pack()


def _public() -> bytes:
    return PrivateKey.generate().public_key.raw


def _blake2s_mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def _reply(checker: CookieChecker, message: bytes, source: bytes, now: float) -> CookieReply:
    return CookieReply.parse(checker.create_reply(message, 1234, source, now))


@pytest.fixture
def responder() -> bytes:
    return _public()


# --------------------------------------------------------------------------- mac1


@pytest.mark.parametrize("make", [_initiation, _response])
def test_mac1_accepted(responder: bytes, make: Callable[[], bytes]) -> None:
    gen = CookieGenerator(responder)
    checker = CookieChecker(responder)
    msg = gen.add_macs(make(), now=0.0)
    assert checker.check_mac1(msg)


def test_mac1_matches_whitepaper(responder: bytes) -> None:
    # mac1 = MAC(HASH(LABEL_MAC1 || Spub_m'), msg_alpha), msg_alpha = everything before mac1.
    body = _initiation()
    msg = CookieGenerator(responder).add_macs(body, now=0.0)
    key = hashlib.blake2s(b"mac1----" + responder).digest()
    assert LABEL_MAC1 == b"mac1----"
    assert len(msg) == len(body)
    assert msg[:116] == body[:116]
    assert msg[116:132] == _blake2s_mac(key, body[:116])
    assert msg[132:148] == bytes(16)


def test_add_macs_overwrites_existing_macs(responder: bytes) -> None:
    gen = CookieGenerator(responder)
    body = _initiation()
    junk = body[:116] + os.urandom(32)
    assert gen.add_macs(junk, now=0.0) == gen.add_macs(body, now=0.0)


def test_mac1_for_another_key_rejected(responder: bytes) -> None:
    checker = CookieChecker(responder)
    msg = CookieGenerator(_public()).add_macs(_initiation(), now=0.0)
    assert not checker.check_mac1(msg)


def test_mac1_invalidated_by_any_body_byte(responder: bytes) -> None:
    checker = CookieChecker(responder)
    msg = CookieGenerator(responder).add_macs(_initiation(), now=0.0)
    for i in range(132):  # the body and mac1 itself
        bad = bytearray(msg)
        bad[i] ^= 0x01
        assert not checker.check_mac1(bytes(bad)), i
    for i in range(132, 148):  # mac2 is not covered by mac1
        bad = bytearray(msg)
        bad[i] ^= 0x01
        assert checker.check_mac1(bytes(bad)), i


def test_mac1_of_response_invalidated_by_any_body_byte(responder: bytes) -> None:
    checker = CookieChecker(responder)
    msg = CookieGenerator(responder).add_macs(_response(), now=0.0)
    for i in range(76):
        bad = bytearray(msg)
        bad[i] ^= 0x80
        assert not checker.check_mac1(bytes(bad)), i


def test_zero_mac1_rejected(responder: bytes) -> None:
    assert not CookieChecker(responder).check_mac1(_initiation())


# --------------------------------------------------------------------------- mac2


def test_without_cookie_mac2_is_zero_and_fails(responder: bytes) -> None:
    checker = CookieChecker(responder)
    gen = CookieGenerator(responder)
    assert not gen.has_cookie
    msg = gen.add_macs(_initiation(), now=0.0)
    assert msg[-16:] == bytes(16)
    assert not checker.check_mac2(msg, SOURCE, now=0.0)  # no secret yet
    _reply(checker, msg, SOURCE, now=0.0)  # now the checker has a secret
    assert not checker.check_mac2(msg, SOURCE, now=0.0)


def test_full_cookie_flow(responder: bytes) -> None:
    checker = CookieChecker(responder, urandom=CountingRandom())
    gen = CookieGenerator(responder)
    first = gen.add_macs(_initiation(), now=10.0)
    assert checker.check_mac1(first)
    assert not checker.check_mac2(first, SOURCE, now=10.0)

    reply = _reply(checker, first, SOURCE, now=10.0)
    assert reply.receiver == 1234
    assert gen.consume_reply(reply.nonce, reply.encrypted_cookie, now=10.5)
    assert gen.has_cookie

    second = gen.add_macs(_initiation(), now=11.0)
    assert second[-16:] != bytes(16)
    assert checker.check_mac1(second)
    assert checker.check_mac2(second, SOURCE, now=11.0)
    assert not checker.check_mac2(second, OTHER_IP, now=11.0)
    assert not checker.check_mac2(second, OTHER_PORT, now=11.0)
    assert not checker.check_mac2(second, SOURCE6, now=11.0)

    # mac2 covers the whole message up to itself, mac1 included.
    for i in range(132):
        bad = bytearray(second)
        bad[i] ^= 0x01
        assert not checker.check_mac2(bytes(bad), SOURCE, now=11.0), i
    bad = bytearray(second)
    bad[-1] ^= 0x01
    assert not checker.check_mac2(bytes(bad), SOURCE, now=11.0)


def test_cookie_flow_for_responses(responder: bytes) -> None:
    checker = CookieChecker(responder)
    gen = CookieGenerator(responder)
    first = gen.add_macs(_response(), now=0.0)
    reply = _reply(checker, first, SOURCE6, now=0.0)
    assert gen.consume_reply(reply.nonce, reply.encrypted_cookie, now=0.0)
    second = gen.add_macs(_response(), now=1.0)
    assert checker.check_mac2(second, SOURCE6, now=1.0)
    assert not checker.check_mac2(second, SOURCE, now=1.0)


def test_cookie_reply_matches_whitepaper(responder: bytes) -> None:
    rng = CountingRandom()
    checker = CookieChecker(responder, urandom=rng)
    msg = CookieGenerator(responder).add_macs(_initiation(), now=0.0)
    raw = checker.create_reply(msg, 0xCAFEBABE, SOURCE, now=0.0)
    assert len(raw) == COOKIE_REPLY_SIZE
    assert raw[:4] == bytes([MESSAGE_COOKIE_REPLY, 0, 0, 0])
    reply = CookieReply.parse(raw)
    assert reply.receiver == 0xCAFEBABE
    secret, nonce = rng.calls  # one random secret, then one random nonce
    assert len(secret) == 32
    assert reply.nonce == nonce and len(nonce) == 24
    # tau = MAC(R_m, A_m'); msg.cookie = XAEAD(HASH(LABEL_COOKIE || Spub_m), nonce, tau, mac1)
    tau = _blake2s_mac(secret, SOURCE)
    key = hashlib.blake2s(LABEL_COOKIE + responder).digest()
    assert xaead_decrypt(key, nonce, reply.encrypted_cookie, msg[116:132]) == tau
    # ...and mac2 = MAC(tau, msg_beta) is what the checker accepts.
    forged = msg[:132] + _blake2s_mac(tau, msg[:132])
    assert checker.check_mac2(forged, SOURCE, now=1.0)


def test_mac2_matches_whitepaper(responder: bytes) -> None:
    rng = CountingRandom()
    checker = CookieChecker(responder, urandom=rng)
    gen = CookieGenerator(responder)
    first = gen.add_macs(_initiation(), now=0.0)
    reply = _reply(checker, first, SOURCE, now=0.0)
    assert gen.consume_reply(reply.nonce, reply.encrypted_cookie, now=0.0)
    tau = _blake2s_mac(rng.calls[0], SOURCE)
    second = gen.add_macs(_initiation(), now=1.0)
    assert second[132:] == _blake2s_mac(tau, second[:132])


def test_secret_is_kept_for_two_minutes(responder: bytes) -> None:
    rng = CountingRandom()
    checker = CookieChecker(responder, urandom=rng)
    msg = CookieGenerator(responder).add_macs(_initiation(), now=0.0)
    _reply(checker, msg, SOURCE, now=0.0)
    _reply(checker, msg, SOURCE, now=COOKIE_SECRET_MAX_AGE - 1)
    assert len(rng.calls) == 3  # secret, nonce, nonce: no new secret
    _reply(checker, msg, SOURCE, now=COOKIE_SECRET_MAX_AGE + 1)
    assert len(rng.calls) == 5  # new secret, nonce
    assert len({c for c in rng.calls if len(c) == 32}) == 2


def test_secret_rotates_after_120_seconds(responder: bytes) -> None:
    assert COOKIE_SECRET_MAX_AGE == 120.0
    checker = CookieChecker(responder, urandom=CountingRandom())
    gen = CookieGenerator(responder)
    _reply(checker, _initiation(), SOURCE, now=0.0)  # secret born at t=0
    # A cookie handed out late in the secret's life, still fresh for the generator.
    late = gen.add_macs(_initiation(), now=100.0)
    reply = _reply(checker, late, SOURCE, now=100.0)
    assert gen.consume_reply(reply.nonce, reply.encrypted_cookie, now=100.0)
    msg = gen.add_macs(_initiation(), now=119.0)
    assert checker.check_mac2(msg, SOURCE, now=119.0)

    msg = gen.add_macs(_initiation(), now=125.0)
    assert msg[-16:] != bytes(16)  # the generator still trusts its 25 s old cookie
    assert not checker.check_mac2(msg, SOURCE, now=125.0)  # but the secret is too old
    _reply(checker, msg, SOURCE, now=125.0)  # rotates the secret
    assert not checker.check_mac2(msg, SOURCE, now=125.0)  # cookie older than the secret

    fresh = gen.add_macs(_initiation(), now=126.0)
    reply = _reply(checker, fresh, SOURCE, now=126.0)
    assert gen.consume_reply(reply.nonce, reply.encrypted_cookie, now=126.0)
    assert checker.check_mac2(gen.add_macs(_initiation(), now=127.0), SOURCE, now=127.0)


def test_generator_drops_cookie_after_validity(responder: bytes) -> None:
    assert COOKIE_VALIDITY < COOKIE_SECRET_MAX_AGE
    checker = CookieChecker(responder)
    gen = CookieGenerator(responder)
    first = gen.add_macs(_initiation(), now=1000.0)
    reply = _reply(checker, first, SOURCE, now=1000.0)
    assert gen.consume_reply(reply.nonce, reply.encrypted_cookie, now=1000.0)

    ok = gen.add_macs(_initiation(), now=1000.0 + COOKIE_VALIDITY - 0.5)
    assert ok[-16:] != bytes(16)
    assert checker.check_mac2(ok, SOURCE, now=1000.0 + COOKIE_VALIDITY - 0.5)

    stale = gen.add_macs(_initiation(), now=1000.0 + COOKIE_VALIDITY + 0.5)
    assert stale[-16:] == bytes(16)
    assert not checker.check_mac2(stale, SOURCE, now=1000.0 + COOKIE_VALIDITY + 0.5)


# --------------------------------------------------------------------------- consume_reply


def test_consume_reply_without_a_message_sent(responder: bytes) -> None:
    checker = CookieChecker(responder)
    msg = CookieGenerator(responder).add_macs(_initiation(), now=0.0)
    reply = _reply(checker, msg, SOURCE, now=0.0)
    fresh = CookieGenerator(responder)  # never sent anything
    assert not fresh.consume_reply(reply.nonce, reply.encrypted_cookie, now=0.0)
    assert not fresh.has_cookie


def test_consume_reply_rejects_tampering(responder: bytes) -> None:
    checker = CookieChecker(responder)
    gen = CookieGenerator(responder)
    msg = gen.add_macs(_initiation(), now=0.0)
    reply = _reply(checker, msg, SOURCE, now=0.0)
    for i in range(24):
        nonce = bytearray(reply.nonce)
        nonce[i] ^= 0x01
        assert not gen.consume_reply(bytes(nonce), reply.encrypted_cookie, now=0.0)
    for i in range(32):
        sealed = bytearray(reply.encrypted_cookie)
        sealed[i] ^= 0x01
        assert not gen.consume_reply(reply.nonce, bytes(sealed), now=0.0)
    assert not gen.has_cookie
    # Failed attempts do not use up the message: the genuine reply still works.
    assert gen.consume_reply(reply.nonce, reply.encrypted_cookie, now=0.0)
    assert gen.has_cookie


def test_consume_reply_only_once_per_message(responder: bytes) -> None:
    checker = CookieChecker(responder)
    gen = CookieGenerator(responder)
    msg = gen.add_macs(_initiation(), now=0.0)
    reply = _reply(checker, msg, SOURCE, now=0.0)
    assert gen.consume_reply(reply.nonce, reply.encrypted_cookie, now=0.0)
    assert not gen.consume_reply(reply.nonce, reply.encrypted_cookie, now=0.0)
    second = _reply(checker, msg, SOURCE, now=0.0)  # another reply to the same message
    assert not gen.consume_reply(second.nonce, second.encrypted_cookie, now=0.0)


def test_consume_reply_answers_only_the_latest_message(responder: bytes) -> None:
    checker = CookieChecker(responder)
    gen = CookieGenerator(responder)
    old = gen.add_macs(_initiation(), now=0.0)
    old_reply = _reply(checker, old, SOURCE, now=0.0)
    new = gen.add_macs(_initiation(), now=1.0)
    assert not gen.consume_reply(old_reply.nonce, old_reply.encrypted_cookie, now=1.0)
    new_reply = _reply(checker, new, SOURCE, now=1.0)
    assert gen.consume_reply(new_reply.nonce, new_reply.encrypted_cookie, now=1.0)


def test_consume_reply_for_another_peer_key(responder: bytes) -> None:
    gen = CookieGenerator(responder)
    msg = gen.add_macs(_initiation(), now=0.0)
    impostor = CookieChecker(_public())  # seals the cookie under a different key
    reply = _reply(impostor, msg, SOURCE, now=0.0)
    assert not gen.consume_reply(reply.nonce, reply.encrypted_cookie, now=0.0)
    assert not gen.has_cookie
    assert gen.add_macs(_initiation(), now=0.0)[-16:] == bytes(16)


def test_consume_reply_with_wrong_ad_keeps_no_cookie(responder: bytes) -> None:
    checker = CookieChecker(responder)
    gen = CookieGenerator(responder)
    gen.add_macs(_initiation(), now=0.0)
    # A reply to some other message (different mac1 as associated data).
    other = CookieGenerator(responder).add_macs(_initiation(), now=0.0)
    reply = _reply(checker, other, SOURCE, now=0.0)
    assert not gen.consume_reply(reply.nonce, reply.encrypted_cookie, now=0.0)
    assert not gen.has_cookie
