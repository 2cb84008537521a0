"""diff.plan: from the peers last applied to the one SetRequest that changes only what
changed (peers that stay keep their sessions; endpoints are not re-set needlessly)."""

from __future__ import annotations

import asyncio
import ipaddress

from pyralog.link.control import PeerChange, SetRequest
from pyralog.mesh.agent import Agent
from pyralog.mesh.diff import Wanted, plan
from pyralog.wireguard.keys import PrivateKey, PublicKey

KEYS = [PrivateKey(bytes([i + 1]) * 32).public_key.to_base64() for i in range(5)]
A, B, C, D, E = KEYS


def w(
    key: str,
    endpoint: str | None = "192.0.2.1:51820",
    allowed: tuple[str, ...] = ("10.0.0.1/32",),
    keepalive: int = 0,
) -> Wanted:
    return Wanted(key, endpoint, allowed, keepalive)


def changes_by_key(changes: list[PeerChange]) -> dict[str, PeerChange]:
    return {c.public_key.to_base64(): c for c in changes}


def test_from_nothing_every_peer_is_added_with_everything() -> None:
    wanted = [w(A), w(B, "[2001:db8::1]:51821", ("10.0.0.2/32", "fd00::2/128"), 25)]
    change, applied = plan({}, wanted)
    assert change is not None and not change.replace_peers
    got = changes_by_key(change.peers)
    assert set(got) == {A, B}
    a, b = got[A], got[B]
    assert not a.remove and a.endpoint == ("192.0.2.1", 51820)
    assert a.replace_allowed_ips and a.allowed_ips == ["10.0.0.1/32"]
    assert a.persistent_keepalive == 0
    assert b.endpoint == ("2001:db8::1", 51821)
    assert [ipaddress.ip_network(n) for n in b.allowed_ips] == [
        ipaddress.ip_network("10.0.0.2/32"),
        ipaddress.ip_network("fd00::2/128"),
    ]
    assert b.persistent_keepalive == 25
    assert applied == {A: wanted[0], B: wanted[1]}


def test_no_change_gives_none_and_the_same_applied() -> None:
    applied = {A: w(A), B: w(B)}
    change, after = plan(applied, [w(B), w(A)])
    assert change is None and after == applied


def test_nothing_to_nothing() -> None:
    assert plan({}, []) == (None, {})


def test_removed_peers_are_removed_and_nothing_else_is_touched() -> None:
    applied = {A: w(A), B: w(B), C: w(C)}
    change, after = plan(applied, [w(A), w(C)])
    assert change is not None
    assert len(change.peers) == 1
    (only,) = change.peers
    assert only.public_key == PublicKey.from_base64(B) and only.remove
    assert after == {A: w(A), C: w(C)}


def test_an_endpoint_change_sets_only_the_endpoint() -> None:
    applied = {A: w(A), B: w(B)}
    change, after = plan(applied, [w(A, "192.0.2.9:1"), w(B)])
    assert change is not None
    (only,) = change.peers
    assert only.public_key == PublicKey.from_base64(A)
    assert only.endpoint == ("192.0.2.9", 1)
    assert not only.replace_allowed_ips and only.allowed_ips == []
    assert only.persistent_keepalive is None and not only.remove
    assert after[A].endpoint == "192.0.2.9:1"


def test_an_allowed_ips_change_does_not_reset_the_endpoint() -> None:
    applied = {A: w(A)}
    change, _ = plan(applied, [w(A, allowed=("10.0.0.0/16",))])
    assert change is not None
    (only,) = change.peers
    # The endpoint is unchanged at the coordinator: a roamed endpoint stays as it is.
    assert only.endpoint is None
    assert only.replace_allowed_ips and only.allowed_ips == ["10.0.0.0/16"]
    assert only.persistent_keepalive is None


def test_a_keepalive_change_sets_only_the_keepalive() -> None:
    change, _ = plan({A: w(A)}, [w(A, keepalive=25)])
    assert change is not None
    (only,) = change.peers
    assert only.persistent_keepalive == 25
    assert only.endpoint is None and not only.replace_allowed_ips


def test_an_endpoint_going_away_does_not_clear_a_learned_one() -> None:
    change, after = plan({A: w(A)}, [w(A, endpoint=None)])
    assert change is not None
    (only,) = change.peers
    assert only.endpoint is None and not only.replace_allowed_ips and not only.remove
    assert after[A].endpoint is None


def test_a_host_name_endpoint_is_left_to_the_caller() -> None:
    change, _ = plan({}, [w(A, endpoint="coordinator.example.net:51820")])
    assert change is not None
    assert change.peers[0].endpoint is None
    assert change.peers[0].replace_allowed_ips


def test_keep_protects_keys_from_removal() -> None:
    applied = {A: w(A), B: w(B), C: w(C)}
    change, after = plan(applied, [w(A)], keep=[B])
    assert change is not None
    got = changes_by_key(change.peers)
    assert set(got) == {C} and got[C].remove
    assert B not in after  # not ours to track any more; but never removed by us
    # A kept key that is also wanted is planned as usual.
    change, _ = plan({}, [w(D)], keep=[D])
    assert change is not None and changes_by_key(change.peers)[D].replace_allowed_ips


def test_keep_alone_never_yields_a_removal() -> None:
    change, after = plan({A: w(A)}, [], keep=[A])
    assert change is None
    assert after == {A: w(A)}


def test_a_mixed_change_is_one_request_in_key_order() -> None:
    applied = {A: w(A), B: w(B), C: w(C)}
    wanted = [w(A), w(C, allowed=("10.0.0.3/32",)), w(D), w(E, endpoint=None)]
    change, after = plan(applied, wanted)
    assert change is not None
    got = changes_by_key(change.peers)
    assert set(got) == {B, C, D, E}
    assert got[B].remove
    assert got[C].replace_allowed_ips and got[C].endpoint is None
    assert got[D].endpoint == ("192.0.2.1", 51820)
    assert got[E].endpoint is None and got[E].replace_allowed_ips
    removals = [c for c in change.peers if c.remove]
    assert change.peers[: len(removals)] == removals  # removals first: addresses move freely
    assert set(after) == {A, C, D, E}
    # Applying the same wanted again is a no-op.
    assert plan(after, wanted)[0] is None


# -- the agent's use of the plan ----------------------------------------------------------


class RecordingBackend:
    name = "recording"

    def __init__(self) -> None:
        self.applied: list[SetRequest] = []

    async def apply(self, change: SetRequest) -> None:
        self.applied.append(change)


def coordinator_change(endpoint: str) -> PeerChange:
    backend = RecordingBackend()
    coordinator = {"public_key": A, "address": "10.100.0.1", "endpoints": [endpoint]}
    agent = Agent(backend, coordinator, endpoints=[])  # type: ignore[arg-type]
    assert asyncio.run(agent.apply_view(None)) is True
    ((change,),) = [r.peers for r in backend.applied]
    assert change.public_key == PublicKey.from_base64(A)
    assert change.allowed_ips == ["10.100.0.1/32"] and change.persistent_keepalive == 25
    return change


def test_the_agent_peers_with_the_coordinator_at_its_endpoint() -> None:
    assert coordinator_change("127.0.0.1:51820").endpoint == ("127.0.0.1", 51820)


def test_the_agent_peers_with_a_coordinator_named_by_host_name() -> None:
    assert coordinator_change("localhost:51820").endpoint == ("127.0.0.1", 51820)
