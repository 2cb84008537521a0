"""A node's backend reaches the coordinator at once after enrolling, with the same key.

The enrollment's handshake and the backend's first one come a few milliseconds apart.
The coordinator drops an initiation that follows another from the same key within
1/INITIATIONS_PER_SECOND (or in the same TAI64N tick), without an answer, and the node
retries only after REKEY_TIMEOUT: every first boot waited 5 s to mesh (bench/mesh.py
found it). ``join.enroll`` now returns no sooner than ``NEXT_HANDSHAKE_AFTER``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from pathlib import Path

from ports import free_port
from pyralog.mesh import coordinator_config
from pyralog.mesh.agent import Agent
from pyralog.mesh.backend_embedded import EmbeddedBackend
from pyralog.mesh.coordinator import CoordinatorService
from pyralog.mesh.join import NEXT_HANDSHAKE_AFTER, enroll
from pyralog.mesh.token import JoinToken
from pyralog.netstack.embedded import EmbeddedTunnel
from pyralog.wireguard.config import Config, InterfaceConfig
from pyralog.wireguard.constants import INITIATIONS_PER_SECOND
from pyralog.wireguard.keys import PrivateKey
from pyralog.wireguard.tai64n import RESOLUTION, tai64n


def test_spacing_outlasts_the_flood_limit_and_the_timestamp_tick() -> None:
    assert NEXT_HANDSHAKE_AFTER > 1.0 / INITIATIONS_PER_SECOND
    assert NEXT_HANDSHAKE_AFTER > RESOLUTION
    t = 1_700_000_000.0
    assert tai64n(t + NEXT_HANDSHAKE_AFTER) > tai64n(t)  # whatever the tick phase
    assert tai64n(t + RESOLUTION / 2) in (tai64n(t), tai64n(t + RESOLUTION))


async def _enroll_then_call(root: Path) -> tuple[float, dict, dict]:
    port = free_port(kind=socket.SOCK_DGRAM)
    (root / "coordinator.toml").write_text(
        "[coordinator]\n"
        'cluster_id = "test"\n'
        'network = "10.77.0.0/16"\n'
        f"listen_port = {port}\n"
        f'endpoints = ["127.0.0.1:{port}"]\n'
        'store = "coordinator.db"\n'
        'private_key_file = "coordinator.key"\n'
    )
    service = CoordinatorService(coordinator_config.load(root / "coordinator.toml"))
    await service.start()
    tunnel = None
    try:
        assert service.registry is not None and service.tunnel is not None
        text, _ = await service.registry.create_token(role="node", now=time.time())
        await service.refresh_tokens()
        key = PrivateKey.generate()
        node_port = free_port(kind=socket.SOCK_DGRAM)
        welcome = await enroll(key, JoinToken.decode(text), "n1", node_port, timeout=5)
        # As the node does next: its backend, same key, the coordinator as its peer.
        prefix = ipaddress.ip_network(welcome["network"]).prefixlen
        address = ipaddress.ip_interface(f"{welcome['node']['address']}/{prefix}")
        tunnel = await EmbeddedTunnel.start(
            Config(InterfaceConfig(key, addresses=[address], listen_port=node_port), [])
        )
        agent = Agent(EmbeddedBackend(tunnel), welcome["coordinator"], endpoints=[])
        await agent.apply_view(None)
        started = time.monotonic()
        view = await agent.call("GET", "/v1/mesh?wait=0", timeout=3.0)  # a drop costs 5 s
        return time.monotonic() - started, view, dict(service.tunnel.device.drops)
    finally:
        if tunnel is not None:
            await tunnel.close()
        await service.close()


def test_the_backend_handshakes_at_once_after_enrolling(tmp_path: Path) -> None:
    took, view, drops = asyncio.run(_enroll_then_call(tmp_path))
    assert view["self"]["node_id"] == "n1"
    assert not drops.get("initiation_flood") and not drops.get("initiation_replayed"), drops
    assert took < 2.0
