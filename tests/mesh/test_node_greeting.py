"""A restarted node greets its peers (``MeshNode._greet_peers``), with a fake backend.

Greeting is a handshake started at once with each peer that has an endpoint, so peers
holding a session the node forgot get a new one, not WireGuard's 15 s retry. A peer it
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
from pyralog.mesh.node import MeshNode
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
