"""Preshared-key roll-over: the two peers switch keys at different moments, sessions go on.

The fake clock and the in-memory network (wgsim) show exactly which handshakes form and
which events each side reports, whichever side switches first and whoever initiates.
"""

from __future__ import annotations

import pytest

from pyralog.wireguard import events as ev
from pyralog.wireguard.constants import REKEY_TIMEOUT
from pyralog.wireguard.device import PSK_GRACE, Device
from pyralog.wireguard.keys import PresharedKey

from wgsim import A_EP, B_EP, Pair, make_pair

OLD = PresharedKey(bytes([1]) * 32)
NEW = PresharedKey(bytes([2]) * 32)
OTHER = PresharedKey(bytes([3]) * 32)


def events_of(device: Device, kind: type) -> list[ev.Event]:
    return [e for e in device.events() if isinstance(e, kind)]


def established(seed: int) -> Pair:
    pair = make_pair(seed=seed, psk=OLD)
    pair.a_to_b()
    pair.b_to_a()
    for d in (pair.a, pair.b):
        d.events()
    return pair


def switch(pair: Pair, side: str, psk: PresharedKey | None) -> None:
    device, other = (pair.a, pair.b_key) if side == "a" else (pair.b, pair.a_key)
    device.set_preshared_key(other.public_key, psk, pair.net.now)


def rekey(pair: Pair, side: str) -> bool:
    """``side`` starts a handshake now; the network runs until quiet. True if it formed."""
    device, other = (pair.a, pair.b_key) if side == "a" else (pair.b, pair.a_key)
    pair.net.now += REKEY_TIMEOUT + 0.1
    peer = device.get_peer(other.public_key)
    assert peer is not None
    before = peer.last_handshake
    assert device.rekey(other.public_key, pair.net.now)
    pair.net.pump()
    # The responder's session is confirmed by the initiator's first transport packet.
    (pair.a_to_b if side == "a" else pair.b_to_a)()
    return peer.last_handshake != before


def rekey_with_retry(pair: Pair, side: str) -> bool:
    """Like rekey(), but lets the initiator's REKEY_TIMEOUT retry run if the first fails.
    True if a new session formed on both sides."""
    device, other = (pair.a, pair.b_key) if side == "a" else (pair.b, pair.a_key)
    responder, me = (pair.b, pair.a_key) if side == "a" else (pair.a, pair.b_key)
    peer, peer_there = device.get_peer(other.public_key), responder.get_peer(me.public_key)
    assert peer is not None and peer_there is not None
    before, before_there = peer.last_handshake, peer_there.last_handshake
    if not rekey(pair, side):
        pair.net.advance(pair.net.now + REKEY_TIMEOUT + 1.0)
        (pair.a_to_b if side == "a" else pair.b_to_a)()
    return peer.last_handshake != before and peer_there.last_handshake != before_there


@pytest.mark.parametrize("first", ["a", "b"])
@pytest.mark.parametrize("initiator", ["a", "b"])
def test_handshakes_form_while_only_one_side_has_switched(first: str, initiator: str) -> None:
    pair = established(seed=10)
    switch(pair, first, NEW)
    # At most one REKEY_TIMEOUT retry: the responder that switched first answers under
    # the new key, and under the old one when the initiator tries again.
    assert rekey_with_retry(pair, initiator)
    # Still the old key in use: nobody reports confirmation yet.
    for d in (pair.a, pair.b):
        assert events_of(d, ev.PresharedKeyConfirmed) == []


@pytest.mark.parametrize("first", ["a", "b"])
@pytest.mark.parametrize("initiator", ["a", "b"])
def test_both_switched_confirms_the_new_key_and_retires_the_old(first: str, initiator: str) -> None:
    pair = established(seed=11)
    switch(pair, first, NEW)
    pair.net.now += 3.0
    switch(pair, "b" if first == "a" else "a", NEW)
    assert rekey_with_retry(pair, initiator)
    for d, other in ((pair.a, pair.b_key), (pair.b, pair.a_key)):
        confirmed = events_of(d, ev.PresharedKeyConfirmed)
        assert [e.peer for e in confirmed] == [other.public_key]
        peer = d.get_peer(other.public_key)
        assert peer is not None and peer.rollover is None  # the old key retired
        assert peer.preshared_key == NEW
    # The old key no longer opens anything: a peer still holding it fails.
    for side in ("a", "b"):
        switch(pair, side, NEW)  # unchanged: no new grace window
    assert pair.a.get_peer(pair.b_key.public_key).rollover is None  # type: ignore[union-attr]


def test_after_the_grace_period_a_side_that_never_switched_is_rejected() -> None:
    pair = established(seed=12)
    switch(pair, "a", NEW)
    pair.net.advance(pair.net.now + PSK_GRACE + 1.0)
    for d in (pair.a, pair.b):
        d.events()
    failed_before = pair.a.drops["response_decrypt_failed"]
    assert not rekey(pair, "a")
    assert pair.a.drops["response_decrypt_failed"] == failed_before + 1
    rejected = events_of(pair.a, ev.PresharedKeyRejected)
    assert [e.peer for e in rejected] == [pair.b_key.public_key]


def test_rejection_is_reported_once_per_initiation() -> None:
    """A response that fails to open, replayed, does not raise a second alarm."""
    pair = make_pair(seed=13, psk=OLD)
    pair.b.set_preshared_key(pair.a_key.public_key, OTHER, -PSK_GRACE)  # long-standing
    pair.a.send_packet(b"", 0.0)  # nothing routable: no handshake yet
    pair.a.rekey(pair.b_key.public_key, 0.0)
    ((init, _),) = pair.a.datagrams_to_send()
    pair.b.receive_datagram(init, A_EP, 0.0)
    ((response, _),) = pair.b.datagrams_to_send()
    for _ in range(3):
        pair.a.receive_datagram(response, B_EP, 0.0)
    assert pair.a.drops["response_decrypt_failed"] == 3
    assert len(events_of(pair.a, ev.PresharedKeyRejected)) == 1


def test_setting_the_same_key_again_opens_no_grace_window() -> None:
    pair = established(seed=14)
    peer = pair.a.get_peer(pair.b_key.public_key)
    assert peer is not None
    switch(pair, "a", OLD)
    assert peer.rollover is None


def test_removing_the_key_rolls_over_to_no_psk() -> None:
    pair = established(seed=15)
    switch(pair, "a", None)
    switch(pair, "b", None)
    assert rekey_with_retry(pair, "b")
    assert pair.a.get_peer(pair.b_key.public_key).preshared_key == PresharedKey.ZERO  # type: ignore[union-attr]
    assert events_of(pair.a, ev.PresharedKeyConfirmed)


def test_running_session_survives_a_key_change() -> None:
    pair = established(seed=16)
    switch(pair, "a", NEW)
    sent = pair.a_to_b(b"still flowing")
    assert pair.net.delivered[B_EP][-1] == sent


def test_confirmation_after_the_grace_period_is_still_reported() -> None:
    """The old key stops counting at the end of the grace period; a peer that switches
    later still gets its new key confirmed (and nothing of the old key is kept)."""
    pair = established(seed=17)
    switch(pair, "a", NEW)
    pair.net.advance(pair.net.now + PSK_GRACE + 1.0)
    switch(pair, "b", NEW)
    for d in (pair.a, pair.b):
        d.events()
    assert rekey_with_retry(pair, "a")
    rollover_a = pair.a.get_peer(pair.b_key.public_key).rollover  # type: ignore[union-attr]
    assert rollover_a is None
    assert [type(e) for e in events_of(pair.a, ev.PresharedKeyConfirmed)]


def test_old_key_is_forgotten_when_the_grace_period_ends() -> None:
    pair = established(seed=18)
    switch(pair, "a", NEW)
    peer = pair.a.get_peer(pair.b_key.public_key)
    assert peer is not None and peer.rollover is not None
    assert peer.rollover.previous_key(pair.net.now) == OLD.raw
    assert peer.rollover.previous_key(pair.net.now + PSK_GRACE) is None
    assert peer.rollover.previous is None  # zeroed, not just ignored
