"""Cookies, the under-load heuristic and the per-source rate limiter (whitepaper 5.3, 5.4.7).

Under load a responder answers an initiation without a valid mac2 with a cookie reply
instead of doing Curve25519 work; the initiator stores the cookie and its next initiation
carries a mac2 bound to its source address. Initiations with a valid mac2 are then rate
limited per source IP (IPv6 per /64).
"""

from __future__ import annotations

import ipaddress
import random

import pytest

from pyralog.wireguard import ratelimiter as rl
from pyralog.wireguard.constants import (
    COOKIE_REPLY_SIZE,
    MAC_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
)
from pyralog.wireguard.cookie import CookieGenerator
from pyralog.wireguard.device import UNDER_LOAD_HANDSHAKES_PER_SECOND, Device
from pyralog.wireguard.handshake import Handshake, create_initiation
from pyralog.wireguard.keys import PrivateKey, PublicKey
from pyralog.wireguard.messages import CookieReply, Initiation
from pyralog.wireguard.peer import Peer
from pyralog.wireguard.ratelimiter import RateLimiter
from pyralog.wireguard.tai64n import tai64n

from wgsim import (
    A_EP,
    A_IP,
    B_EP,
    B_IP,
    WALL_OFFSET,
    Endpoint,
    Pair,
    drop_delta,
    feed,
    ipv4_packet,
    kinds,
    make_pair,
)

A2_EP = ("192.0.2.77", 40000)

INIT, RESP, COOKIE, DATA = (
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_TRANSPORT,
)


def mac2(datagram: bytes) -> bytes:
    return datagram[-MAC_SIZE:]


def peer_of(device: Device, key: PrivateKey) -> Peer:
    peer = device.get_peer(key.public_key)
    assert peer is not None
    return peer


def move(pair: Pair, old: Endpoint, new: Endpoint) -> None:
    """Re-attach the device at ``old`` under ``new``: it now sends from another address."""
    dev = pair.net.devices.pop(old)
    pair.net.attach(new, dev)


def initiation_from(key: PrivateKey, responder: PublicKey, now: float) -> bytes:
    """A genuine initiation (zero mac2) from a throwaway Device holding ``key``."""
    dev = Device(key, rng=random.Random(5), clock_offset=WALL_OFFSET)
    dev.add_peer(responder, now, endpoint=B_EP, allowed_ips=["0.0.0.0/0"])
    dev.send_packet(ipv4_packet(A_IP, B_IP), now)
    [(data, _)] = dev.datagrams_to_send()
    assert data[0] == INIT and mac2(data) == bytes(MAC_SIZE)
    return data


def junk_initiation(rng: random.Random, responder: PublicKey, now: float) -> bytes:
    """Random contents with a valid mac1: passes the cheap check, fails the Curve25519 one."""
    body = Initiation(rng.getrandbits(32), rng.randbytes(32), rng.randbytes(48), rng.randbytes(28))
    return CookieGenerator(responder.raw).add_macs(body.pack(), now)


# -- the cookie exchange -------------------------------------------------------------------


def test_forced_load_cookie_then_mac2_then_session() -> None:
    pair = make_pair(seed=40)
    pair.b.force_under_load = True
    a_peer = peer_of(pair.a, pair.b_key)
    packet = pair.a_to_b(b"through the cookie")

    assert kinds(pair) == [INIT, COOKIE]
    first, reply = pair.net.log
    assert mac2(first.data) == bytes(MAC_SIZE)
    assert len(reply.data) == COOKIE_REPLY_SIZE and reply.src == B_EP and reply.dst == A_EP
    assert reply.data[4:8] == first.data[4:8]  # addressed to the initiation's sender index
    assert a_peer.cookies.has_cookie
    assert pair.b.drops["cookie_sent"] == 1
    assert pair.net.delivered[B_EP] == []
    assert a_peer.keypairs.current is None

    pair.net.advance(5.4)  # the retransmission (REKEY_TIMEOUT + jitter <= 5.34 s)
    assert kinds(pair) == [INIT, COOKIE, INIT, RESP, DATA]
    retry = pair.net.log[2]
    assert 5.0 <= retry.time <= 5.4
    assert mac2(retry.data) != bytes(MAC_SIZE)
    assert retry.data[4:8] != first.data[4:8]  # a new handshake, a new index
    assert pair.net.delivered[B_EP] == [packet]
    assert pair.b.drops["cookie_sent"] == 1 and pair.b.drops["rate_limited"] == 0

    reply_packet = pair.b_to_a(b"and back")
    assert kinds(pair) == [INIT, COOKIE, INIT, RESP, DATA, DATA]
    assert pair.net.delivered[A_EP] == [reply_packet]
    for d in (pair.a, pair.b):
        assert sum(d.drops.values()) == d.drops["cookie_sent"]


def test_cookie_reply_is_accepted_once() -> None:
    pair = make_pair(seed=41)
    pair.b.force_under_load = True
    pair.a_to_b()
    assert kinds(pair) == [INIT, COOKIE]
    reply = pair.net.log[1].data
    assert feed(pair.a, reply, B_EP, 0.1) == {"bad_cookie_reply": 1}
    assert pair.a.datagrams_to_send() == []
    assert peer_of(pair.a, pair.b_key).cookies.has_cookie  # the first one is kept


def test_cookie_is_bound_to_the_source_endpoint() -> None:
    pair = make_pair(seed=42)
    pair.b.force_under_load = True
    packet = pair.a_to_b()
    assert kinds(pair) == [INIT, COOKIE]
    assert peer_of(pair.a, pair.b_key).cookies.has_cookie

    move(pair, A_EP, A2_EP)
    mark = len(pair.net.log)
    pair.net.advance(5.4)
    # A's mac2 is made with the cookie for A_EP: B does not take it from A2_EP.
    assert kinds(pair, mark) == [INIT, COOKIE]
    retry, new_reply = pair.net.log[mark:]
    assert retry.src == A2_EP and mac2(retry.data) != bytes(MAC_SIZE)
    assert new_reply.dst == A2_EP and new_reply.data != pair.net.log[1].data
    assert pair.b.drops["cookie_sent"] == 2
    assert pair.net.delivered[B_EP] == []

    # With the cookie for its new address, the next retransmission gets through.
    mark = len(pair.net.log)
    pair.net.advance(10.8)
    assert kinds(pair, mark) == [INIT, RESP, DATA]
    assert pair.net.delivered[B_EP] == [packet]
    assert peer_of(pair.b, pair.a_key).endpoint == A2_EP
    assert pair.b.drops["cookie_sent"] == 2


# -- the load heuristic ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("junk", "answer"),
    [
        (UNDER_LOAD_HANDSHAKES_PER_SECOND - 1, RESP),  # the real one is number 128
        (UNDER_LOAD_HANDSHAKES_PER_SECOND, COOKIE),  # the real one is number 129
    ],
)
def test_load_threshold(junk: int, answer: int) -> None:
    pair = make_pair(seed=43)
    b, b_pub = pair.b, pair.b_key.public_key
    rng = random.Random(junk)
    for i in range(junk):
        t = 0.5 * i / junk
        assert feed(b, junk_initiation(rng, b_pub, t), ("198.51.100.1", 1000 + i), t) == {
            "initiation_decrypt_failed": 1
        }
    assert b.datagrams_to_send() == []
    init = initiation_from(pair.a_key, b_pub, 0.6)
    delta = feed(b, init, A_EP, 0.6)
    [(out, dst)] = b.datagrams_to_send()
    assert out[0] == answer and dst == A_EP
    assert delta == ({} if answer == RESP else {"cookie_sent": 1})


def test_load_heuristic_demands_cookies_then_relents() -> None:
    pair = make_pair(seed=44)
    b, b_pub = pair.b, pair.b_key.public_key
    assert not b.force_under_load
    c_key = PrivateKey(bytes([3]) * 32)
    b.add_peer(c_key.public_key, 0.0, allowed_ips=["10.0.0.3/32"])
    rng = random.Random(1)
    for i in range(UNDER_LOAD_HANDSHAKES_PER_SECOND + 1):
        b.receive_datagram(junk_initiation(rng, b_pub, 0.0), ("198.51.100.1", 1000 + i), 0.0)
    # The 129th already found B under load: it got a cookie reply, not Curve25519 work.
    assert b.drops["initiation_decrypt_failed"] == UNDER_LOAD_HANDSHAKES_PER_SECOND
    assert b.drops["cookie_sent"] == 1
    b.datagrams_to_send()

    # Within the hold after the burst, a genuine initiation gets a cookie reply.
    assert feed(b, initiation_from(pair.a_key, b_pub, 0.6), A_EP, 0.6) == {"cookie_sent": 1}
    [(out, _)] = b.datagrams_to_send()
    assert out[0] == COOKIE
    # The counting window has rolled over, but the hold (1 s after the last excess) remains.
    assert feed(b, initiation_from(c_key, b_pub, 1.5), ("192.0.2.3", 51820), 1.5) == {
        "cookie_sent": 1
    }
    [(out, _)] = b.datagrams_to_send()
    assert out[0] == COOKIE
    # After a quiet period of more than a second, answers are normal again.
    assert feed(b, initiation_from(c_key, b_pub, 2.7), ("192.0.2.3", 51820), 2.7) == {}
    [(out, dst)] = b.datagrams_to_send()
    assert out[0] == RESP and dst == ("192.0.2.3", 51820)
    assert feed(b, initiation_from(pair.a_key, b_pub, 2.8), A_EP, 2.8) == {}
    [(out, _)] = b.datagrams_to_send()
    assert out[0] == RESP


# -- rate limiting under load ------------------------------------------------------------------


def test_rate_limit_under_load_per_source() -> None:
    pair = make_pair(seed=45)
    a, b = pair.a, pair.b
    b.force_under_load = True
    pair.a_to_b()  # fetches a cookie for A_EP
    assert kinds(pair) == [INIT, COOKIE]
    a_peer = peer_of(a, pair.b_key)
    assert a_peer.cookies.has_cookie
    hs = Handshake(pair.b_key.public_key.raw)
    hs.set_static_static(pair.a_key)
    stamp = [0]

    def genuine(now: float) -> bytes:
        """A genuine initiation from A with a fresh timestamp and A's mac2."""
        stamp[0] += 1
        msg = create_initiation(pair.a_key, hs, 1000 + stamp[0], tai64n(WALL_OFFSET + stamp[0]))
        datagram = a_peer.cookies.add_macs(msg.pack(), now)
        assert mac2(datagram) != bytes(MAC_SIZE)
        return datagram

    t = 2.0
    before = dict(b.drops)
    answers = []
    for _ in range(10):
        b.receive_datagram(genuine(t), A_EP, t)
        answers += [d[0] for d, _ in b.datagrams_to_send()]
    # A burst of five passes the limiter: one is answered, four are too close together
    # (the per-peer flood rule); the other five never reach the Curve25519 work.
    assert answers == [RESP]
    assert drop_delta(b, before) == {"initiation_flood": 4, "rate_limited": 5}

    # One token refills in 1/20 s.
    t += 0.06
    assert feed(b, genuine(t), A_EP, t) == {}
    assert [d[0] for d, _ in b.datagrams_to_send()] == [RESP]
    assert feed(b, genuine(t), A_EP, t) == {"rate_limited": 1}
    assert b.datagrams_to_send() == []

    # Another source address has its own bucket (once it holds its own cookie).
    assert feed(b, genuine(t), A2_EP, t) == {"cookie_sent": 1}
    [(reply, dst)] = b.datagrams_to_send()
    assert dst == A2_EP
    # (The handshakes above bypass A's index table, so hand the reply to A's cookie store.)
    parsed = CookieReply.parse(reply)
    assert a_peer.cookies.consume_reply(parsed.nonce, parsed.encrypted_cookie, t)
    assert feed(b, genuine(t), A2_EP, t) == {"initiation_flood": 1}  # past the limiter


def test_rate_limiter_not_applied_without_load() -> None:
    pair = make_pair(seed=46)
    b = pair.b
    rng = random.Random(2)
    for i in range(50):
        assert feed(b, junk_initiation(rng, pair.b_key.public_key, 0.0), A_EP, 0.0) == {
            "initiation_decrypt_failed": 1
        }, i


# -- RateLimiter ------------------------------------------------------------------------------

V4 = ipaddress.ip_address("203.0.113.5").packed
V4_OTHER = ipaddress.ip_address("203.0.113.6").packed


def test_rate_limiter_constants() -> None:
    assert rl.PACKETS_BURSTABLE == 5
    assert rl.PACKETS_PER_SECOND == 20


def test_rate_limiter_burst_then_refill() -> None:
    lim = RateLimiter()
    t = 10.0
    assert [lim.allow(V4, t) for _ in range(7)] == [True] * 5 + [False] * 2
    assert not lim.allow(V4, t + 0.04)  # not yet a whole token
    assert lim.allow(V4, t + 0.06)
    assert not lim.allow(V4, t + 0.06)
    # 20 per second sustained: one every 50 ms (plus a hair) keeps getting through.
    s = t + 0.06
    for i in range(1, 41):
        assert lim.allow(V4, s + i * 0.0501), i
    # After an idle second the bucket is full again: a burst of exactly five.
    u = s + 40 * 0.0501 + 1.0
    assert [lim.allow(V4, u) for _ in range(6)] == [True] * 5 + [False]


def test_rate_limiter_sources_are_independent() -> None:
    lim = RateLimiter()
    for _ in range(5):
        assert lim.allow(V4, 5.0)
    assert not lim.allow(V4, 5.0)
    assert lim.allow(V4_OTHER, 5.0)
    assert len(lim) == 2


def test_rate_limiter_aggregates_ipv6_by_64() -> None:
    lim = RateLimiter()
    same64 = [ipaddress.ip_address(f"2001:db8:1:2::{i:x}").packed for i in range(1, 7)]
    other64 = ipaddress.ip_address("2001:db8:1:3::1").packed
    t = 3.0
    assert [lim.allow(a, t) for a in same64] == [True] * 5 + [False]
    assert lim.allow(other64, t)
    assert len(lim) == 2


def test_rate_limiter_garbage_collects_idle_entries() -> None:
    lim = RateLimiter()
    ips = [ipaddress.ip_address(f"198.51.100.{i}").packed for i in range(1, 4)]
    for ip in ips:
        assert lim.allow(ip, 0.0)
    assert len(lim) == 3
    assert lim.allow(V4, 0.5)  # no collection yet: under a second since the last
    assert len(lim) == 4
    assert lim.allow(V4_OTHER, 1.2)  # collects the three idle since 0.0, keeps V4
    assert len(lim) == 2
    assert lim.allow(V4_OTHER, 5.0)  # everything else idle >= 1 s
    assert len(lim) == 1
    # A forgotten source starts with a full burst, exactly as if it had been kept.
    assert [lim.allow(ips[0], 5.0) for _ in range(6)] == [True] * 5 + [False]


def test_transport_data_is_not_rate_limited() -> None:
    pair = make_pair(seed=47)
    pair.a_to_b()
    pair.b.force_under_load = True
    for i in range(20):
        pair.a_to_b(bytes([i]))
    assert len(pair.net.delivered[B_EP]) == 21
    assert pair.b.drops["rate_limited"] == 0 and pair.b.drops["cookie_sent"] == 0
    assert all(s.kind == MESSAGE_TRANSPORT for s in pair.net.log[2:])
