"""``KernelNetwork``: the Network API over kernel sockets on a WireGuard interface.

For TUN mode (pyralog-wg, wireguard-go) and the kernel module alike: the interface holds
the mesh address, and the kernel's TCP/IP does the rest. Every socket this class makes
is bound to a mesh address (listeners and datagram endpoints by default, connections
from the address of the destination's family), so services never listen on a public
address by accident. With ``interface`` given, listeners and datagram endpoints are also
bound to the device (SO_BINDTODEVICE): Linux otherwise accepts a packet for the mesh
address arriving on any interface, and only packets that came through WireGuard carry
a source address that ``peer_of`` can vouch for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import socket
from collections.abc import Callable, Sequence

from pyralog.net.api import STREAM_LIMIT, Address, ClientCallback
from pyralog.net.peers import UAPI_DIR, PeerDirectory, UapiPeers
from pyralog.wireguard.keys import PublicKey

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class KernelNetwork:
    def __init__(
        self,
        addresses: Sequence[str | IPAddress],
        peers: PeerDirectory,
        *,
        interface: str | None = None,
    ) -> None:
        if not addresses:
            raise ValueError("a KernelNetwork needs at least one mesh address")
        self._addresses = [ipaddress.ip_address(a) for a in addresses]
        self.peers = peers
        self.interface = interface

    @classmethod
    def for_interface(cls, name: str, *, uapi_dir: str | None = None) -> KernelNetwork:
        """The addresses of interface ``name`` (read with pyroute2) and its peers from its
        UAPI socket."""
        # pyroute2's IPRoute runs its own asyncio loop, which cannot start inside a
        # running one: ask it from a worker thread.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            found = pool.submit(_interface_addresses, name).result()
        if not found:
            raise OSError(f"interface {name!r} has no address")
        return cls(found, UapiPeers(name, uapi_dir=uapi_dir or UAPI_DIR), interface=name)

    @property
    def addresses(self) -> list[IPAddress]:
        return list(self._addresses)

    def peer_of(self, address: str) -> PublicKey | None:
        return self.peers.peer_of(address)

    def _address_for(self, host: str) -> str:
        """Our mesh address of the same family as ``host`` (a name: the first one)."""
        try:
            version = ipaddress.ip_address(host.partition("%")[0]).version
        except ValueError:
            return str(self._addresses[0])
        for address in self._addresses:
            if address.version == version:
                return str(address)
        raise OSError(f"no mesh address of IPv{version} to reach {host} from")

    def _local(self, local_addr: Address | None, host_hint: str | None) -> Address:
        if local_addr is not None and local_addr[0]:
            return local_addr
        port = local_addr[1] if local_addr is not None else 0
        host = self._address_for(host_hint) if host_hint else str(self._addresses[0])
        return host, port

    def _bound_socket(self, kind: int, address: Address) -> socket.socket:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, kind)
        try:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and address[0] == "::":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # both families
            if self.interface is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode())
            sock.bind(address)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    # -- TCP ----------------------------------------------------------------------------

    async def open_connection(
        self,
        host: str,
        port: int,
        *,
        limit: int = STREAM_LIMIT,
        local_addr: Address | None = None,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            host, port, limit=limit, local_addr=self._local(local_addr, host)
        )

    async def create_connection(
        self,
        protocol_factory: Callable[[], asyncio.Protocol],
        host: str,
        port: int,
        *,
        local_addr: Address | None = None,
    ) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
        loop = asyncio.get_running_loop()
        return await loop.create_connection(
            protocol_factory, host, port, local_addr=self._local(local_addr, host)
        )

    async def start_server(
        self,
        client_connected_cb: ClientCallback,
        host: str | None = None,
        port: int | None = None,
        *,
        limit: int = STREAM_LIMIT,
    ) -> asyncio.Server:
        return await asyncio.start_server(
            client_connected_cb,
            limit=limit,
            **self._server_kw(host, port),  # type: ignore[arg-type]
        )

    async def create_server(
        self,
        protocol_factory: Callable[[], asyncio.Protocol],
        host: str | None = None,
        port: int | None = None,
    ) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(protocol_factory, **self._server_kw(host, port))  # type: ignore[arg-type]

    def _server_kw(self, host: str | None, port: int | None) -> dict[str, object]:
        """Where a server listens: ``host``, else every mesh address. With the interface
        known that is one wildcard socket bound to the device (it hears only what came
        through WireGuard, on every address the interface has, of both families)."""
        if host:
            return {"sock": self._bound_socket(socket.SOCK_STREAM, (host, port or 0))}
        if self.interface is not None:
            v6 = any(a.version == 6 for a in self._addresses)
            sock = self._bound_socket(socket.SOCK_STREAM, ("::" if v6 else "0.0.0.0", port or 0))
            return {"sock": sock}
        if len(self._addresses) == 1:
            address = (str(self._addresses[0]), port or 0)
            return {"sock": self._bound_socket(socket.SOCK_STREAM, address)}
        return {"host": [str(a) for a in self._addresses], "port": port, "reuse_address": True}

    # -- UDP ----------------------------------------------------------------------------

    async def create_datagram_endpoint(
        self,
        protocol_factory: Callable[[], asyncio.DatagramProtocol],
        local_addr: Address | None = None,
        remote_addr: Address | None = None,
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        loop = asyncio.get_running_loop()
        hint = remote_addr[0] if remote_addr is not None else None
        sock = self._bound_socket(socket.SOCK_DGRAM, self._local(local_addr, hint))
        try:
            if remote_addr is not None:
                sock.connect(remote_addr)
            return await loop.create_datagram_endpoint(protocol_factory, sock=sock)
        except BaseException:
            with contextlib.suppress(OSError):
                sock.close()
            raise

    async def close(self) -> None:
        """Nothing to release: the interface belongs to its daemon."""


def _interface_addresses(name: str) -> list[str]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = ipr.link_lookup(ifname=name)
        if not links:
            raise OSError(f"no interface named {name!r}")
        found = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=links[0])]
    # Link-local addresses (the fe80:: the kernel gives every interface) are not mesh ones.
    return [a for a in found if not ipaddress.ip_address(a.partition("%")[0]).is_link_local]
