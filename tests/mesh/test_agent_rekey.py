"""The agent handshakes with the coordinator again at once when a watch gets no answer,
with one coordinator endpoint as with several.

A coordinator that restarted has forgotten the node's WireGuard session; a node with a
single endpoint went on sending into it until WireGuard's own timers started a new
handshake, some 15 s after the watch had already failed (test_mesh_cluster's
``test_nodes_keep_working_without_the_coordinator_and_state_survives`` timed out on it).
"""

from __future__ import annotations

import asyncio
from typing import Any

from pyralog.link.control import SetRequest
from pyralog.mesh.agent import Agent
from pyralog.mesh.backend import PeerStatus
from pyralog.wireguard.keys import PrivateKey, PublicKey

COORDINATOR = PrivateKey.generate().public_key


class DownBackend:
    """A backend whose network reaches nothing: every call gets no answer."""

    name = "fake"
    listen_port = 51820

    def __init__(self) -> None:
        self.changes: list[SetRequest] = []
        self.rekeys: list[PublicKey] = []

    @property
    def network(self) -> Any:
        return self

    async def open_connection(self, host: str, port: int) -> Any:
        raise ConnectionRefusedError(f"{host}:{port} is down")

    async def apply(self, change: SetRequest) -> None:
        self.changes.append(change)

    async def rekey(self, peer: PublicKey) -> None:
        self.rekeys.append(peer)

    async def set_forwarding(self, on: bool) -> None:
        pass

    async def peers(self) -> list[PeerStatus]:
        return []

    async def close(self) -> None:
        pass


async def _first_failure(endpoints: list[str]) -> tuple[Agent, DownBackend]:
    backend = DownBackend()
    coordinator = {
        "public_key": COORDINATOR.to_base64(),
        "address": "10.77.0.1",
        "endpoints": endpoints,
        "api_port": 7700,
    }
    agent = Agent(backend, coordinator, endpoints=[])
    await agent.apply_view(None)
    task = asyncio.create_task(agent.run())
    try:
        for _ in range(200):
            if agent.failures and backend.rekeys:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return agent, backend


def test_one_endpoint_rekeys_on_no_answer() -> None:
    agent, backend = asyncio.run(_first_failure(["127.0.0.1:51820"]))
    assert agent.failures == 1
    assert backend.rekeys == [COORDINATOR]
    assert agent._coordinator_wanted().endpoint == "127.0.0.1:51820"
    assert len(backend.changes) == 1  # only the first apply_view: nothing to move


def test_several_endpoints_move_on_and_rekey() -> None:
    agent, backend = asyncio.run(_first_failure(["127.0.0.1:51820", "127.0.0.2:51820"]))
    assert agent.failures == 1
    assert backend.rekeys == [COORDINATOR]
    assert agent._coordinator_wanted().endpoint == "127.0.0.2:51820"
    assert len(backend.changes) == 2  # the coordinator's endpoint moved
