"""The ``Network`` interface: asyncio's socket API over a WireGuard mesh.

Signatures and return types follow ``asyncio`` (``open_connection`` returns a
StreamReader/StreamWriter pair, ``start_server`` an object with asyncio.Server's
``sockets``, ``close``, ``wait_closed``, ``is_serving`` and ``serve_forever``), so code
written for asyncio moves onto the mesh by swapping ``asyncio`` for a Network. Where
asyncio would bind to every address, a Network binds to its mesh addresses only.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from pyralog.wireguard.keys import PublicKey

Address = tuple[str, int]
ClientCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]
STREAM_LIMIT = 2**16


@runtime_checkable
class Network(Protocol):
    @property
    def addresses(self) -> Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """This node's mesh addresses."""
        ...

    async def open_connection(
        self,
        host: str,
        port: int,
        *,
        limit: int = STREAM_LIMIT,
        local_addr: Address | None = None,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...

    async def create_connection(
        self,
        protocol_factory: Callable[[], asyncio.Protocol],
        host: str,
        port: int,
        *,
        local_addr: Address | None = None,
    ) -> tuple[asyncio.BaseTransport, asyncio.Protocol]: ...

    async def start_server(
        self,
        client_connected_cb: ClientCallback,
        host: str | None = None,
        port: int | None = None,
        *,
        limit: int = STREAM_LIMIT,
    ) -> Any: ...

    async def create_server(
        self,
        protocol_factory: Callable[[], asyncio.Protocol],
        host: str | None = None,
        port: int | None = None,
    ) -> Any: ...

    async def create_datagram_endpoint(
        self,
        protocol_factory: Callable[[], asyncio.DatagramProtocol],
        local_addr: Address | None = None,
        remote_addr: Address | None = None,
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]: ...

    def peer_of(self, address: str) -> PublicKey | None:
        """The public key of the peer whose allowed IPs hold ``address`` (e.g. a
        connection's ``peername[0]``), or None if no peer does."""
        ...

    async def close(self) -> None: ...
