"""A restarted node greets its peers (``MeshNode._greet_peers``), with a fake backend.

Greeting is a handshake started at once with each peer that has an endpoint, so peers
holding a session the node forgot get a new one, not WireGuard's 15 s retry. Roaming
peers (stock clients: the coordinator has no endpoint for them) are greeted where they
last reached the node, which it keeps in its state. A peer it
already has a session with (the coordinator, reached a moment before) is left alone: a
second initiation so soon would be dropped as a flood (a peer answers one per 20 ms),
and the node would be cut off from it for 5 s.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from pyralog.mesh.backend import PeerStatus
from pyralog.mesh.diff import Wanted
from pyralog.mesh.node import ROAMING_KEY, MeshNode
from pyralog.mesh.state import NodeState
from pyralog.wireguard.keys import PrivateKey, PublicKey

COORDINATOR, MET, STRANGER, NO_ENDPOINT = (PrivateKey.generate().public_key for _ in range(4))


class FakeBackend:
    def __init__(self, name: str, handshakes: dict[PublicKey, float | None]) -> None:
        self.name = name
        self.handshakes = handshakes
        self.rekeyed: list[PublicKey] = []

    async def peers(self) -> list[PeerStatus]:
        return [PeerStatus(k, None, (), t, 0, 0) for k, t in self.handshakes.items()]

    async def rekey(self, peer: PublicKey) -> None:
        self.rekeyed.append(peer)


def _greet(tmp_path: Path, backend: str) -> list[PublicKey]:
    node = MeshNode(cast(Any, SimpleNamespace(path=str(tmp_path / "wireguard.toml"))))
    now = time.time()
    fake = FakeBackend(
        backend, {COORDINATOR: now - 0.01, MET: now - 30, STRANGER: None, NO_ENDPOINT: None}
    )
    applied = {
        k.to_base64(): Wanted(k.to_base64(), None if k == NO_ENDPOINT else "172.30.1.9:51820", ())
        for k in (COORDINATOR, MET, STRANGER, NO_ENDPOINT)
    }
    node.backend = cast(Any, fake)
    node.agent = cast(Any, SimpleNamespace(applied=applied))
    asyncio.run(node._greet_peers())
    return fake.rekeyed


@pytest.mark.parametrize("backend", ["embedded", "userspace"])
def test_greets_only_the_peers_it_has_no_session_with(tmp_path: Path, backend: str) -> None:
    assert _greet(tmp_path, backend) == [STRANGER]


def test_the_kernel_backend_cannot_greet(tmp_path: Path) -> None:
    assert _greet(tmp_path, "kernel") == []


# -- roaming peers: stock clients, whose endpoint only their own packets tell ----------------

CLIENT, FORGOTTEN = (PrivateKey.generate().public_key for _ in range(2))


class RoamingBackend(FakeBackend):
    def __init__(self, name: str, peers: list[PeerStatus]) -> None:
        super().__init__(name, {p.public_key: p.last_handshake for p in peers})
        self.status = peers
        self.applied: list[Any] = []

    async def peers(self) -> list[PeerStatus]:
        return self.status

    async def apply(self, change: Any) -> None:
        self.applied.append(change)


def _node(tmp_path: Path, backend: RoamingBackend, roaming: dict[str, str]) -> MeshNode:
    key = tmp_path / "node.key"
    config = SimpleNamespace(path=str(tmp_path / "wireguard.toml"), private_key_file=key)
    node = MeshNode(cast(Any, config))
    node.state = NodeState("n1", "key", "10.77.0.2", "10.77.0.0/16", "test", {},
                           extra={ROAMING_KEY: roaming} if roaming else {})  # fmt: skip
    applied = {k.to_base64(): Wanted(k.to_base64(), None, ()) for k in (CLIENT, FORGOTTEN)}
    applied[COORDINATOR.to_base64()] = Wanted(COORDINATOR.to_base64(), "172.30.1.1:51820", ())
    node.backend = cast(Any, backend)
    node.agent = cast(Any, SimpleNamespace(applied=applied))
    return node


def test_a_restarted_node_greets_a_roaming_peer_where_it_last_was(tmp_path: Path) -> None:
    """A stock client holds a session the restarted node forgot and would go on sending
    into it for 15 s; the node knows no endpoint for it from the coordinator, but
    remembers where the client last reached it."""
    now = time.time()
    fake = RoamingBackend("userspace", [PeerStatus(COORDINATOR, ("172.30.1.1", 51820), (), now,
                                                   0, 0),
                                        PeerStatus(CLIENT, None, (), None, 0, 0),
                                        PeerStatus(FORGOTTEN, None, (), None, 0, 0)])  # fmt: skip
    node = _node(tmp_path, fake, {CLIENT.to_base64(): "172.30.1.9:40000"})
    asyncio.run(node._greet_peers())
    assert len(fake.applied) == 1
    (change,) = fake.applied[0].peers
    assert (change.public_key, change.endpoint, change.update_only) == (
        CLIENT,
        ("172.30.1.9", 40000),
        True,
    )
    assert fake.rekeyed == [CLIENT]  # not the one it never saw, nor the coordinator


def test_where_roaming_peers_reach_the_node_is_kept_in_its_state(tmp_path: Path) -> None:
    now = time.time()
    fake = RoamingBackend("userspace", [PeerStatus(CLIENT, ("172.30.1.9", 40000), (), now, 0, 0),
                                        PeerStatus(FORGOTTEN, None, (), None, 0, 0),
                                        PeerStatus(COORDINATOR, ("172.30.1.1", 51820), (), now,
                                                   0, 0)])  # fmt: skip
    node = _node(tmp_path, fake, {})
    asyncio.run(node._note_roaming())
    saved = NodeState.load(NodeState.path_for(tmp_path / "node.key"))
    assert saved is not None
    assert saved.extra[ROAMING_KEY] == {CLIENT.to_base64(): "172.30.1.9:40000"}
    # A peer the coordinator no longer lists is forgotten.
    del node.agent.applied[CLIENT.to_base64()]
    asyncio.run(node._note_roaming())
    saved = NodeState.load(NodeState.path_for(tmp_path / "node.key"))
    assert saved is not None and saved.extra[ROAMING_KEY] == {}
