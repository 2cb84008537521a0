"""Two Devices on a fake network and a fake clock, crossing every timer rule of the whitepaper.

Each test asserts exactly which messages crossed the wire and when (``net.log``).
"""

from __future__ import annotations

import itertools

import pytest

from pyralog.wireguard import events as ev
from pyralog.wireguard.constants import (
    KEEPALIVE_TIMEOUT,
    MAX_STAGED_PACKETS,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME,
    REKEY_ON_RECEIVE_AGE,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    ZERO_KEY_MATERIAL_AFTER,
)
from pyralog.wireguard.keys import PresharedKey

from wgsim import A_EP, A_IP, B_EP, B_IP, Sent, ipv4_packet, ipv6_packet, make_pair

INIT, RESP, COOKIE, DATA = 1, 2, 3, 4


def kinds(log: list[Sent]) -> list[tuple[str, int]]:
    """(sender, message type) for each datagram, senders named 'A' or 'B'."""
    return [("A" if s.src == A_EP else "B", s.kind) for s in log]


def test_handshake_then_data_both_ways() -> None:
    pair = make_pair()
    pkt = pair.a_to_b(b"first")
    assert kinds(pair.net.log) == [("A", INIT), ("B", RESP), ("A", DATA)]
    assert pair.net.delivered[B_EP] == [pkt]
    back = pair.b_to_a(b"reply")
    assert pair.net.delivered[A_EP] == [back]
    assert kinds(pair.net.log)[3:] == [("B", DATA)]
    a_events = [e for e in pair.a.events() if isinstance(e, ev.HandshakeCompleted)]
    b_events = [e for e in pair.b.events() if isinstance(e, ev.HandshakeCompleted)]
    assert [e.initiator for e in a_events] == [True]
    assert [e.initiator for e in b_events] == [False]
    peer_b = pair.a.get_peer(pair.b_key.public_key)
    assert peer_b is not None and peer_b.last_handshake == pytest.approx(1_700_000_000.0)
    # initiation, then header + tag + the 24-byte packet padded to 32
    assert peer_b.tx_bytes == 148 + 16 + 16 + 32
    assert peer_b.rx_bytes == 92 + 16 + 16 + 32


def test_ipv6_inner_packets() -> None:
    pair = make_pair()
    pkt = ipv6_packet("fd00::1", "fd00::2", b"six")
    pair.a.send_packet(pkt, 0.0)
    pair.net.pump()
    assert pair.net.delivered[B_EP] == [pkt]


def test_padding_to_multiple_of_16_is_removed_on_delivery() -> None:
    pair = make_pair()
    for size in (0, 1, 15, 16, 17, 100, 1380):
        pkt = ipv4_packet(A_IP, B_IP, bytes(size))
        pair.a.send_packet(pkt, 0.0)
        pair.net.pump()
        sent = pair.net.log[-1].data
        assert (len(sent) - 32) % 16 == 0  # header 16 + tag 16 + padded plaintext
        assert pair.net.delivered[B_EP][-1] == pkt


def test_packets_queued_during_handshake_are_flushed_in_order() -> None:
    pair = make_pair()
    pair.net.drop.add(B_EP)  # hold the handshake: B's response is lost
    pkts = [ipv4_packet(A_IP, B_IP, bytes([i])) for i in range(3)]
    for p in pkts:
        pair.a.send_packet(p, 0.0)
    pair.net.pump()
    assert kinds(pair.net.log) == [("A", INIT), ("B", RESP)]  # one initiation, not three
    pair.net.drop.clear()
    pair.net.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX)
    assert kinds(pair.net.log)[2:] == [("A", INIT), ("B", RESP)] + [("A", DATA)] * 3
    assert pair.net.delivered[B_EP] == pkts


def test_staged_queue_is_bounded() -> None:
    pair = make_pair()
    pair.net.drop.add(B_EP)
    pkts = [ipv4_packet(A_IP, B_IP, i.to_bytes(2, "big")) for i in range(MAX_STAGED_PACKETS + 2)]
    for p in pkts:
        pair.a.send_packet(p, 0.0)
    assert pair.a.drops["staged_overflow"] == 2
    pair.net.pump()
    pair.net.drop.clear()
    pair.net.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX)
    assert pair.net.delivered[B_EP] == pkts[2:]  # the oldest two were dropped


def test_responder_waits_for_confirmation_before_using_new_keys() -> None:
    pair = make_pair()
    a, b = pair.a, pair.b
    a.send_packet(ipv4_packet(A_IP, B_IP, b"x"), 0.0)
    ((init, _),) = a.datagrams_to_send()
    b.receive_datagram(init, A_EP, 0.0)
    ((resp, _),) = b.datagrams_to_send()
    peer_a = b.get_peer(pair.a_key.public_key)
    assert peer_a is not None
    assert peer_a.keypairs.next is not None and peer_a.keypairs.current is None
    # B has data for A now, but the new keys are unconfirmed: B must not use them.
    b.send_packet(ipv4_packet(B_IP, A_IP, b"early"), 0.0)
    assert all(d[0] != DATA for d, _ in b.datagrams_to_send())
    a.receive_datagram(resp, B_EP, 0.0)
    ((data, _),) = a.datagrams_to_send()
    b.receive_datagram(data, A_EP, 0.0)
    assert peer_a.keypairs.current is not None and peer_a.keypairs.next is None
    flushed = b.datagrams_to_send()
    assert [d[0] for d, _ in flushed] == [DATA]  # the early packet, now under confirmed keys
    a.receive_datagram(flushed[0][0], B_EP, 0.0)
    assert a.packets_to_deliver() == [ipv4_packet(B_IP, A_IP, b"early")]


def test_keepalive_after_keepalive_timeout_when_only_receiving() -> None:
    pair = make_pair()
    pair.a_to_b()
    start = len(pair.net.log)
    pair.net.advance(KEEPALIVE_TIMEOUT - 0.01)
    assert pair.net.log[start:] == []
    pair.net.advance(KEEPALIVE_TIMEOUT)
    sent = pair.net.log[start:]
    assert kinds(sent) == [("B", DATA)] and sent[0].is_keepalive
    assert sent[0].time == KEEPALIVE_TIMEOUT
    # The keepalive told A the session is alive: no new handshake at 15 s.
    pair.net.advance(60.0)
    assert pair.net.log[start + 1 :] == []


def test_no_keepalive_when_reply_data_was_sent() -> None:
    pair = make_pair()
    pair.a_to_b()
    pair.net.now = 3.0
    pair.b_to_a()
    start = len(pair.net.log)
    pair.net.advance(60.0)
    # A got data at 3 s and answers with a keepalive at 13 s; B, which sent data, is silent.
    assert kinds(pair.net.log[start:]) == [("A", DATA)]
    assert pair.net.log[start].is_keepalive and pair.net.log[start].time == 13.0


def test_new_handshake_when_sent_data_gets_no_answer() -> None:
    pair = make_pair()
    pair.a_to_b()
    pair.net.advance(KEEPALIVE_TIMEOUT)  # B's keepalive at 10 s
    pair.net.drop.add(B_EP)  # from now on B's packets are lost
    pair.net.now = 20.0
    pair.a_to_b()
    start = len(pair.net.log)
    limit = 20.0 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT
    pair.net.advance(limit - 0.001)
    # B's keepalive at 30 s is lost; A hears nothing.
    assert kinds(pair.net.log[start:]) == [("B", DATA)]
    pair.net.advance(limit + REKEY_TIMEOUT_JITTER_MAX)
    tail = pair.net.log[start + 1 :]
    assert kinds(tail)[:2] == [("A", INIT), ("B", RESP)]
    assert limit <= tail[0].time <= limit + REKEY_TIMEOUT_JITTER_MAX


def test_persistent_keepalive_starts_handshake_and_repeats() -> None:
    pair = make_pair(a_keepalive=25)
    # Turning keepalive on sends one at once: handshake, then the keepalive itself.
    assert kinds(pair.net.log) == [("A", INIT), ("B", RESP), ("A", DATA)]
    assert pair.net.log[-1].is_keepalive
    start = len(pair.net.log)
    pair.net.advance(100.0)
    sent = pair.net.log[start:]
    assert kinds(sent) == [("A", DATA)] * 4
    assert [s.time for s in sent] == [25.0, 50.0, 75.0, 100.0]
    assert all(s.is_keepalive for s in sent)


def test_persistent_keepalive_waits_for_idle_interval() -> None:
    pair = make_pair(a_keepalive=25)
    pair.net.now = 10.0
    pair.a_to_b()  # A sends at 10 s; B's keepalive reaches A at 20 s
    start = len(pair.net.log)
    pair.net.advance(44.9)
    assert kinds(pair.net.log[start:]) == [("B", DATA)]
    assert pair.net.log[start].time == 20.0
    # Any authenticated packet, sent or received, restarts the interval: next at 45 s.
    pair.net.advance(45.0)
    assert [s.time for s in pair.net.log[start:] if s.src == A_EP] == [45.0]


def test_initiator_rekeys_after_rekey_after_time_on_send() -> None:
    pair = make_pair()
    pair.a_to_b()
    pair.net.advance(REKEY_AFTER_TIME - 0.1)
    pair.a_to_b()
    start = len(pair.net.log)
    assert kinds(pair.net.log[start - 1 :]) == [("A", DATA)]
    pair.net.advance(REKEY_AFTER_TIME)
    pair.a_to_b(b"after")
    # Data first (the old session is still good), then the rekey, then the confirmation.
    assert kinds(pair.net.log[start:]) == [("A", DATA), ("A", INIT), ("B", RESP), ("A", DATA)]
    assert pair.net.log[-1].is_keepalive
    assert pair.net.delivered[B_EP][-1] == ipv4_packet(A_IP, B_IP, b"after")


def test_responder_does_not_rekey_on_time() -> None:
    pair = make_pair()
    pair.a_to_b()
    pair.net.advance(REKEY_AFTER_TIME + 1)
    start = len(pair.net.log)
    pair.b_to_a()
    assert kinds(pair.net.log[start:]) == [("B", DATA)]


def test_initiator_rekeys_on_receive_near_rejection_once() -> None:
    pair = make_pair()
    pair.a_to_b()
    pair.net.advance(REKEY_ON_RECEIVE_AGE - 1)
    start = len(pair.net.log)
    pair.b_to_a()  # A's keypair is 164 s old: nothing
    assert kinds(pair.net.log[start:]) == [("B", DATA)]
    pair.net.drop.add(B_EP)
    pair.net.advance(REKEY_ON_RECEIVE_AGE + 0.5)
    pair.net.drop.clear()
    pair.b_to_a()  # now 165.5 s old: A starts a handshake
    pair.b_to_a()  # only once
    assert kinds(pair.net.log[start + 1 :]).count(("A", INIT)) == 1


def test_keypair_rejected_after_reject_after_time() -> None:
    pair = make_pair()
    pair.a_to_b()
    pair.net.drop.add(B_EP)  # nothing from B reaches A, so A never rekeys on receive
    pair.net.advance(REJECT_AFTER_TIME - 0.1)
    start = len(pair.net.log)
    pair.b_to_a()
    assert kinds(pair.net.log[start:]) == [("B", DATA)]
    late = pair.net.log[-1].data
    pair.net.advance(REJECT_AFTER_TIME)
    start = len(pair.net.log)
    pair.b_to_a(b"too late")
    # The session is dead for sending: the packet is queued and B starts a handshake.
    assert kinds(pair.net.log[start:]) == [("B", INIT)]
    peer_a = pair.b.get_peer(pair.a_key.public_key)
    assert peer_a is not None and len(peer_a.staged) == 1
    # And a packet sealed before the deadline but arriving after it is refused.
    dropped = pair.a.drops["expired_keypair"]
    pair.a.receive_datagram(late, B_EP, REJECT_AFTER_TIME)
    assert pair.a.drops["expired_keypair"] == dropped + 1
    assert pair.a.packets_to_deliver() == []


def test_handshake_retries_every_rekey_timeout_then_gives_up() -> None:
    pair = make_pair()
    pair.net.drop.add(B_EP)  # B never answers
    pair.a.send_packet(ipv4_packet(A_IP, B_IP), 0.0)
    pair.net.pump()
    pair.net.advance(200.0)
    inits = [s for s in pair.net.log if s.src == A_EP]
    assert all(s.kind == INIT for s in inits)
    assert len(inits) == int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)  # 18 attempts
    gaps = [b.time - a.time for a, b in itertools.pairwise(inits)]
    assert all(REKEY_TIMEOUT <= g <= REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX for g in gaps)
    failed = [e for e in pair.a.events() if isinstance(e, ev.HandshakeFailed)]
    assert len(failed) == 1
    assert REKEY_ATTEMPT_TIME <= failed[0].time - 1_700_000_000.0 <= REKEY_ATTEMPT_TIME + 6.0
    assert failed[0].dropped_packets == 1
    assert pair.a.drops["handshake_gave_up"] == 1
    # The cumulative counters metrics read: every initiation sent, one attempt given up.
    peer_b = pair.a.get_peer(pair.b_key.public_key)
    assert peer_b is not None
    assert (peer_b.handshake_initiations, peer_b.handshake_failures) == (len(inits), 1)
    peer_b = pair.a.get_peer(pair.b_key.public_key)
    assert peer_b is not None and not peer_b.staged


def test_new_packet_after_give_up_starts_over() -> None:
    pair = make_pair()
    pair.net.drop.add(B_EP)
    pair.a.send_packet(ipv4_packet(A_IP, B_IP), 0.0)
    pair.net.advance(200.0)
    pair.net.drop.clear()
    pair.a_to_b(b"again")
    assert pair.net.delivered[B_EP] == [ipv4_packet(A_IP, B_IP, b"again")]


def test_key_material_zeroed_after_three_reject_after_times() -> None:
    pair = make_pair()
    pair.a_to_b()
    pair.net.advance(ZERO_KEY_MATERIAL_AFTER - 0.1)
    peer_b = pair.a.get_peer(pair.b_key.public_key)
    assert peer_b is not None and peer_b.keypairs.current is not None
    assert pair.a.index_count() == 1
    pair.a.events()
    pair.b.events()
    pair.net.advance(ZERO_KEY_MATERIAL_AFTER)
    assert peer_b.keypairs.current is None and pair.a.index_count() == 0
    assert pair.b.index_count() == 0
    assert any(isinstance(e, ev.SessionExpired) for e in pair.a.events())
    assert any(isinstance(e, ev.SessionExpired) for e in pair.b.events())
    start = len(pair.net.log)
    pair.a_to_b(b"fresh")
    assert kinds(pair.net.log[start:]) == [("A", INIT), ("B", RESP), ("A", DATA)]


def test_rekey_after_messages_and_reject_after_messages() -> None:
    pair = make_pair()
    pair.a_to_b()
    pair.b_to_a()
    peer_a = pair.b.get_peer(pair.a_key.public_key)
    assert peer_a is not None and peer_a.keypairs.current is not None
    peer_a.keypairs.current.send_counter = REKEY_AFTER_MESSAGES + 1
    start = len(pair.net.log)
    pair.net.now = 6.0
    pair.b_to_a()
    # Past REKEY_AFTER_MESSAGES even the responder rekeys after sending.
    assert kinds(pair.net.log[start:])[:3] == [("B", DATA), ("B", INIT), ("A", RESP)]
    peer_a.keypairs.current.send_counter = REJECT_AFTER_MESSAGES
    start = len(pair.net.log)
    pair.net.now = 12.0
    pair.b_to_a(b"queued")
    assert kinds(pair.net.log[start:])[:3] == [("B", INIT), ("A", RESP), ("B", DATA)]
    assert pair.net.delivered[A_EP][-1] == ipv4_packet(B_IP, A_IP, b"queued")


def test_previous_keypair_still_decrypts_late_packets() -> None:
    pair = make_pair()
    pair.a_to_b()
    pair.net.drop.add(A_EP)
    pair.net.now = 1.0
    pair.a_to_b(b"late")  # sealed with the first session, held back
    late = pair.net.log[-1].data
    pair.net.drop.clear()
    pair.net.advance(REKEY_AFTER_TIME + 1)
    pair.a_to_b(b"rekey")  # triggers the second session
    peer_a = pair.b.get_peer(pair.a_key.public_key)
    assert peer_a is not None and peer_a.keypairs.previous is not None
    pair.b.receive_datagram(late, A_EP, pair.net.now)
    assert pair.b.packets_to_deliver() == [ipv4_packet(A_IP, B_IP, b"late")]


def test_endpoint_roams_to_source_of_authenticated_packets() -> None:
    pair = make_pair()
    pair.a_to_b()
    new_ep = ("198.51.100.7", 40000)
    pair.net.devices[new_ep] = pair.a
    pair.net.delivered[new_ep] = []
    pair.a.send_packet(ipv4_packet(A_IP, B_IP, b"moved"), 0.0)
    ((data, _dst),) = pair.a.datagrams_to_send()
    pair.b.receive_datagram(data, new_ep, 0.0)
    peer_a = pair.b.get_peer(pair.a_key.public_key)
    assert peer_a is not None and peer_a.endpoint == new_ep
    roamed = [e for e in pair.b.events() if isinstance(e, ev.EndpointChanged)]
    assert roamed[-1].old == A_EP and roamed[-1].new == new_ep
    pair.b.send_packet(ipv4_packet(B_IP, A_IP, b"follow"), 0.0)
    assert [ep for _, ep in pair.b.datagrams_to_send()] == [new_ep]
    # An unauthenticated packet from elsewhere does not move the endpoint.
    pair.b.receive_datagram(data[:20] + bytes(len(data) - 20), ("203.0.113.9", 1), 0.0)
    assert peer_a.endpoint == new_ep


def test_preshared_key_change_keeps_session_and_applies_to_next_handshake() -> None:
    psk1, psk2 = PresharedKey(bytes([1]) * 32), PresharedKey(bytes([2]) * 32)
    pair = make_pair(psk=psk1)
    pair.a_to_b()
    pair.a.set_preshared_key(pair.b_key.public_key, psk2, 1.0)
    pair.net.now = 1.0
    pair.a_to_b(b"still")
    assert pair.net.delivered[B_EP][-1] == ipv4_packet(A_IP, B_IP, b"still")
    # Only A changed: the next handshake fails at A, the response does not verify.
    pair.net.advance(REKEY_AFTER_TIME + 1)
    pair.a_to_b()
    assert pair.a.drops["response_decrypt_failed"] == 1
    # Once B agrees, the handshake succeeds.
    pair.b.set_preshared_key(pair.a_key.public_key, psk2, pair.net.now)
    pair.net.advance(pair.net.now + REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX)
    assert pair.a.drops["response_decrypt_failed"] == 1
    completed = [e for e in pair.a.events() if isinstance(e, ev.HandshakeCompleted)]
    assert len(completed) == 2


def test_removed_peer_gets_nothing_and_readding_restores() -> None:
    pair = make_pair()
    pair.a_to_b()
    key = pair.b_key.public_key
    assert pair.a.remove_peer(key, 1.0)
    assert pair.a.index_count() == 0
    pair.a.send_packet(ipv4_packet(A_IP, B_IP), 1.0)
    assert pair.a.drops["no_route"] == 1 and pair.a.datagrams_to_send() == []
    # B's packets under the old session are now unknown to A.
    pair.b_to_a()
    assert pair.a.drops["unknown_index"] == 1
    pair.a.add_peer(key, 2.0, endpoint=B_EP, allowed_ips=[f"{B_IP}/32"])
    pair.net.now = 2.0
    pair.a_to_b(b"back")
    assert pair.net.delivered[B_EP][-1] == ipv4_packet(A_IP, B_IP, b"back")


def test_allowed_ip_reassignment_moves_routing() -> None:
    pair = make_pair()
    from pyralog.wireguard.keys import PrivateKey

    third = PrivateKey(bytes(range(32))).public_key
    pair.a.add_peer(third, 0.0, allowed_ips=[f"{B_IP}/32"])
    assert pair.a.allowed_ips_of(pair.b_key.public_key) == [
        __import__("ipaddress").ip_network("fd00::2/128")
    ]
    pair.a.send_packet(ipv4_packet(A_IP, B_IP), 0.0)
    # Routed to the third peer, which has no endpoint: nothing leaves.
    assert pair.a.datagrams_to_send() == []
    assert pair.a.drops["no_endpoint"] == 1


def test_next_deadline_reflects_timers() -> None:
    pair = make_pair()
    assert pair.a.next_deadline() is None and pair.b.next_deadline() is None
    pair.a_to_b()
    b_deadline = pair.b.next_deadline()
    assert b_deadline == KEEPALIVE_TIMEOUT
