"""The Device's seams for the layers above: rekey, the event queue, unknown initiators,
reproducible handshakes and the drop reasons."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest

import pyralog.wireguard.handshake as handshake_module
from pyralog.wireguard import events as ev
from pyralog.wireguard.admission import Admission, UnknownInitiator
from pyralog.wireguard.constants import MESSAGE_INITIATION, MESSAGE_RESPONSE, REKEY_TIMEOUT
from pyralog.wireguard.device import DROP_REASONS, Device
from pyralog.wireguard.keys import PresharedKey, PrivateKey

from wgsim import A_EP, A_IP, B_EP, B_IP, WALL_OFFSET, Net, ipv4_packet, make_pair

# -- rekey --------------------------------------------------------------------------------


def test_rekey_starts_a_handshake_now_and_keeps_the_session() -> None:
    pair = make_pair(seed=20)
    pair.a_to_b()
    pair.b_to_a()
    peer = pair.b.get_peer(pair.a_key.public_key)
    assert peer is not None
    old = peer.keypairs.current
    pair.net.now += REKEY_TIMEOUT + 1
    start = len(pair.net.log)
    assert pair.b.rekey(pair.a_key.public_key, pair.net.now)
    pair.net.pump()
    kinds = [s.kind for s in pair.net.log[start:]]
    assert kinds[:2] == [MESSAGE_INITIATION, MESSAGE_RESPONSE]
    assert peer.keypairs.current is not old  # b initiated: its new session is usable at once
    assert pair.b.rekey(pair.a_key.public_key, pair.net.now) is False  # within REKEY_TIMEOUT
    # Traffic flows on the new session.
    sent = pair.b_to_a(b"after rekey")
    assert pair.net.delivered[A_EP][-1] == sent


def test_rekey_of_unknown_peer_is_a_config_error() -> None:
    pair = make_pair(seed=21)
    with pytest.raises(ValueError, match="no peer"):
        pair.a.rekey(PrivateKey.generate().public_key, 0.0)


def test_rekey_without_endpoint_is_counted_not_sent() -> None:
    pair = make_pair(seed=22, b_endpoint_known=False)
    assert pair.b.rekey(pair.a_key.public_key, 0.0) is False
    assert pair.b.drops["no_endpoint"] == 1
    assert pair.b.datagrams_to_send() == []


# -- the event queue ------------------------------------------------------------------------


def test_full_event_queue_reports_what_it_lost() -> None:
    device = Device(PrivateKey.generate())
    device.max_events = 3
    keys = [PrivateKey.generate().public_key for _ in range(5)]
    for i, key in enumerate(keys):
        device.add_peer(key, float(i))
    assert device.has_events
    got = device.events()
    assert [type(e) for e in got] == [ev.PeerAdded] * 3 + [ev.EventsLost]
    assert [e.peer for e in got[:3]] == keys[:3]  # type: ignore[attr-defined]
    lost = got[-1]
    assert isinstance(lost, ev.EventsLost) and lost.count == 2
    assert lost.time == 3.0  # when the first lost event happened
    assert device.events_lost == 2
    assert not device.has_events and device.events() == []
    # After a drain there is room again; the running total stays.
    device.remove_peer(keys[0], 9.0)
    assert [type(e) for e in device.events()] == [ev.PeerRemoved]
    assert device.events_lost == 2


# -- unknown initiators -----------------------------------------------------------------------


def lone_pair(
    policy_result: Admission | None, a_psk: PresharedKey | None = None
) -> tuple[Net, Device, Device, list[UnknownInitiator]]:
    """A knows B; B knows nobody but has a policy that records what it was shown."""
    rng = random.Random(30)
    a_key, b_key = PrivateKey(rng.randbytes(32)), PrivateKey(rng.randbytes(32))
    a = Device(a_key, rng=random.Random(31), clock_offset=WALL_OFFSET)
    b = Device(b_key, rng=random.Random(32), clock_offset=WALL_OFFSET)
    seen: list[UnknownInitiator] = []

    def policy(who: UnknownInitiator) -> Admission | None:
        seen.append(who)
        return policy_result

    b.unknown_initiator_policy = policy
    net = Net()
    net.attach(A_EP, a)
    net.attach(B_EP, b)
    a.add_peer(
        b_key.public_key, 0.0, preshared_key=a_psk, endpoint=B_EP, allowed_ips=[f"{B_IP}/32"]
    )
    return net, a, b, seen


def test_policy_admits_an_unknown_initiator_as_provisional_peer() -> None:
    psk = PresharedKey(bytes([7]) * 32)
    net, a, b, seen = lone_pair(Admission(preshared_key=psk, allowed_ips=[f"{A_IP}/32"]), psk)
    a.send_packet(ipv4_packet(A_IP, B_IP, b"enroll me"), 0.0)
    net.pump()
    assert len(seen) == 1
    who = seen[0]
    assert who.public_key == a.public_key and who.endpoint == A_EP
    assert len(who.message) == 148 and who.message[0] == MESSAGE_INITIATION
    peer = b.get_peer(a.public_key)  # type: ignore[arg-type]
    assert peer is not None and peer.provisional
    assert peer.preshared_key == psk and peer.endpoint == A_EP
    assert [str(n) for n in b.allowed_ips_of(a.public_key)] == [f"{A_IP}/32"]  # type: ignore[arg-type]
    assert net.delivered[B_EP] == [ipv4_packet(A_IP, B_IP, b"enroll me")]
    admitted = [e for e in b.events() if isinstance(e, ev.PeerAdmitted)]
    assert [(e.peer, e.endpoint) for e in admitted] == [(a.public_key, A_EP)]
    b.confirm_peer(a.public_key)  # type: ignore[arg-type]
    assert not peer.provisional


def test_policy_that_declines_leaves_the_device_silent() -> None:
    net, a, b, seen = lone_pair(None)
    a.send_packet(ipv4_packet(A_IP, B_IP), 0.0)
    net.pump()
    assert len(seen) == 1
    assert b.peers == [] and b.drops["unknown_peer"] == 1
    assert [s.kind for s in net.log] == [MESSAGE_INITIATION]  # no answer at all


@pytest.mark.parametrize(
    "admission",
    [Admission(allowed_ips=["not a network"]), Admission(persistent_keepalive=70000)],
)
def test_admission_the_device_refuses_is_counted_and_silent(admission: Admission) -> None:
    net, a, b, _ = lone_pair(admission)
    a.send_packet(ipv4_packet(A_IP, B_IP), 0.0)
    net.pump()
    assert b.peers == [] and b.drops["admission_refused"] == 1
    assert [s.kind for s in net.log] == [MESSAGE_INITIATION]
    assert not any(isinstance(e, ev.PeerAdded | ev.PeerRemoved) for e in b.events())


def test_policy_is_not_asked_about_initiations_with_a_bad_mac1() -> None:
    _, a, b, seen = lone_pair(Admission())
    a.send_packet(ipv4_packet(A_IP, B_IP), 0.0)
    ((init, _),) = a.datagrams_to_send()
    forged = bytearray(init)
    forged[116] ^= 1  # inside mac1
    b.receive_datagram(bytes(forged), A_EP, 0.0)
    assert seen == [] and b.drops["bad_mac1"] == 1


def test_without_a_policy_unknown_keys_stay_unanswered() -> None:
    net, a, b, _ = lone_pair(None)
    b.unknown_initiator_policy = None
    a.send_packet(ipv4_packet(A_IP, B_IP), 0.0)
    net.pump()
    assert b.drops["unknown_peer"] == 1 and b.peers == []


# -- reproducible handshakes ---------------------------------------------------------------


def test_injected_randomness_makes_handshakes_reproducible() -> None:
    """Ephemeral keys come from the Device's urandom, indices from its rng: the same seeds
    give byte-identical initiations (and different seeds different ones)."""
    key, peer = PrivateKey(bytes([5]) * 32), PrivateKey(bytes([6]) * 32).public_key

    def initiation(seed: int) -> bytes:
        stream = random.Random(seed)
        device = Device(key, rng=random.Random(seed), urandom=stream.randbytes)
        device.add_peer(peer, 0.0, endpoint=B_EP, allowed_ips=["10.0.0.2/32"])
        assert device.rekey(peer, 0.0)
        ((data, _),) = device.datagrams_to_send()
        return data

    assert initiation(1) == initiation(1)
    assert initiation(1)[8:40] != initiation(2)[8:40]  # the ephemeral public key


# -- drop reasons -----------------------------------------------------------------------------


def test_every_reason_the_handshake_can_raise_has_a_drop_counter() -> None:
    """A reason missing from DROP_REASONS would be counted as an internal error instead."""
    tree = ast.parse(Path(handshake_module.__file__).read_text())
    raised = {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == "HandshakeRejected"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }
    assert len(raised) >= 8
    assert raised <= set(DROP_REASONS), raised - set(DROP_REASONS)


def test_policy_that_raises_drops_the_initiation_quietly() -> None:
    net, a, b, _ = lone_pair(None)

    def broken(who: UnknownInitiator) -> Admission | None:
        raise RuntimeError("policy bug")

    b.unknown_initiator_policy = broken
    a.send_packet(ipv4_packet(A_IP, B_IP), 0.0)
    net.pump()  # must not raise out of the Device
    assert b.drops["internal_error"] == 1 and b.peers == []
    assert [s.kind for s in net.log] == [MESSAGE_INITIATION]
