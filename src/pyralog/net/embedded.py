"""``EmbeddedNetwork``: the Network API over an in-process ``EmbeddedTunnel``."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable

from pyralog.net.api import STREAM_LIMIT, Address, ClientCallback
from pyralog.net.peers import DevicePeers
from pyralog.netstack.embedded import EmbeddedTunnel, TunnelServer
from pyralog.wireguard.config import Config
from pyralog.wireguard.keys import PublicKey


class EmbeddedNetwork:
    def __init__(self, tunnel: EmbeddedTunnel) -> None:
        self.tunnel = tunnel
        self._peers = DevicePeers(tunnel.device)

    @classmethod
    async def start(cls, config: Config) -> EmbeddedNetwork:
        return cls(await EmbeddedTunnel.start(config))

    @property
    def addresses(self) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return [ipaddress.ip_address(str(a)) for a in self.tunnel.stack.addresses]

    def peer_of(self, address: str) -> PublicKey | None:
        return self._peers.peer_of(address)

    async def open_connection(
        self,
        host: str,
        port: int,
        *,
        limit: int = STREAM_LIMIT,
        local_addr: Address | None = None,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await self.tunnel.open_connection(host, port, limit=limit, local_addr=local_addr)

    async def create_connection(
        self,
        protocol_factory: Callable[[], asyncio.Protocol],
        host: str,
        port: int,
        *,
        local_addr: Address | None = None,
    ) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
        return await self.tunnel.create_connection(
            protocol_factory, host, port, local_addr=local_addr
        )

    async def start_server(
        self,
        client_connected_cb: ClientCallback,
        host: str | None = None,
        port: int | None = None,
        *,
        limit: int = STREAM_LIMIT,
    ) -> TunnelServer:
        return await self.tunnel.start_server(client_connected_cb, host, port, limit=limit)

    async def create_server(
        self,
        protocol_factory: Callable[[], asyncio.Protocol],
        host: str | None = None,
        port: int | None = None,
    ) -> TunnelServer:
        return await self.tunnel.create_server(protocol_factory, host, port)

    async def create_datagram_endpoint(
        self,
        protocol_factory: Callable[[], asyncio.DatagramProtocol],
        local_addr: Address | None = None,
        remote_addr: Address | None = None,
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        return await self.tunnel.create_datagram_endpoint(
            protocol_factory, local_addr=local_addr, remote_addr=remote_addr
        )

    async def close(self) -> None:
        await self.tunnel.close()
