"""The embedded backend: this process's own Device and netstack (no TUN, no privileges)."""

from __future__ import annotations

from collections.abc import Callable

from pyralog.link.control import SetRequest
from pyralog.mesh.backend import BackendSpec, PeerStatus
from pyralog.net.embedded import EmbeddedNetwork
from pyralog.netstack.embedded import EmbeddedTunnel
from pyralog.wireguard.config import Config, InterfaceConfig
from pyralog.wireguard.keys import PublicKey


class EmbeddedBackend:
    name = "embedded"

    def __init__(self, tunnel: EmbeddedTunnel) -> None:
        self.tunnel = tunnel

    @classmethod
    async def start(cls, spec: BackendSpec) -> EmbeddedBackend:
        config = Config(
            InterfaceConfig(
                spec.private_key,
                addresses=list(spec.addresses),
                listen_port=spec.listen_port,
                mtu=spec.mtu,
            ),
            [],
            path=f"embedded {spec.interface_name}",
        )
        try:
            tunnel = await EmbeddedTunnel.start(config)
        except OSError as e:
            from pyralog.mesh.backend import BackendError

            raise BackendError(f"embedded backend: UDP port {spec.listen_port}: {e}") from None
        return cls(tunnel)

    @property
    def network(self) -> EmbeddedNetwork:
        return self.tunnel

    @property
    def listen_port(self) -> int:
        return self.tunnel.listen_port

    async def apply(self, change: SetRequest) -> None:
        self.tunnel.apply(change)

    async def rekey(self, peer: PublicKey) -> None:
        self.tunnel.rekey(peer)

    async def set_forwarding(
        self, on: bool, allow: Callable[[bytes, bytes], bool] | None = None
    ) -> None:
        self.tunnel.forwarding = on
        self.tunnel.forward_filter = allow

    async def peers(self) -> list[PeerStatus]:
        device = self.tunnel.device
        return [
            PeerStatus(
                p.public_key,
                p.endpoint,
                tuple(str(n) for n in device.allowed_ips.entries(p)),
                p.last_handshake,
                p.rx_bytes,
                p.tx_bytes,
                p.persistent_keepalive,
            )
            for p in device.peers
        ]

    async def close(self) -> None:
        await self.tunnel.close()
