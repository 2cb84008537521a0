"""The Network API, run against both implementations.

Side B is always an embedded tunnel (10.9.0.2). Side A (10.9.0.1) is either another
embedded tunnel in the same process (``embedded``, no root) or a real kernel interface:
a pyralog-wg TUN interface in this namespace, used through ``KernelNetwork`` with its
peers read from the UAPI socket (``kernel``, needs root; traffic goes only between our
own interface and our own embedded tunnel over loopback UDP).

Every test runs both directions where it matters and under a timeout.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from netns import unique
from ports import free_port
from processes import console_script, stop_process, wait_until
from pyralog.net import EmbeddedNetwork, KernelNetwork, Network
from pyralog.wireguard.config import parse
from pyralog.wireguard.keys import PrivateKey, PublicKey

A_IP, B_IP = "10.9.0.1", "10.9.0.2"
TIMEOUT = 20.0


def config_text(
    key: PrivateKey, address: str, port: int, peer: PublicKey, peer_ip: str, peer_port: int
) -> str:
    return (
        f"[Interface]\nPrivateKey = {key.to_base64()}\nAddress = {address}/32\n"
        f"ListenPort = {port}\n\n[Peer]\nPublicKey = {peer.to_base64()}\n"
        f"AllowedIPs = {peer_ip}/32\nEndpoint = 127.0.0.1:{peer_port}\n"
    )


def free_udp_port() -> int:
    return free_port(socket.SOCK_DGRAM, "0.0.0.0")


class Sides:
    def __init__(self, a: Network, b: Network, a_key: PublicKey, b_key: PublicKey) -> None:
        self.a, self.b, self.a_key, self.b_key = a, b, a_key, b_key


@asynccontextmanager
async def embedded_pair() -> AsyncIterator[Sides]:
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    port_a, port_b = free_udp_port(), free_udp_port()
    a = await EmbeddedNetwork.start(
        parse(config_text(key_a, A_IP, port_a, key_b.public_key, B_IP, port_b), "a.conf")
    )
    b = await EmbeddedNetwork.start(
        parse(config_text(key_b, B_IP, port_b, key_a.public_key, A_IP, port_a), "b.conf")
    )
    try:
        yield Sides(a, b, key_a.public_key, key_b.public_key)
    finally:
        await a.close()
        await b.close()


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=20)


@asynccontextmanager
async def kernel_pair(daemon: str = "pyralog-wg") -> AsyncIterator[Sides]:
    """A is a TUN interface served by ``daemon`` (pyralog-wg or wireguard-go)."""
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun") or shutil.which("wg") is None:
        pytest.skip("the kernel side needs root, /dev/net/tun and wg (CI runs as root)")
    if daemon == "wireguard-go" and shutil.which("wireguard-go") is None:
        pytest.skip("wireguard-go is not installed (scripts/bootstrap.sh installs it)")
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    port_a, port_b = free_udp_port(), free_udp_port()
    ifname = unique("wgnet")[:15]
    proc = subprocess.Popen(
        [str(console_script(daemon)) if daemon == "pyralog-wg" else daemon, "-f", ifname],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k not in ("LOG_LEVEL",)},
    )
    sock = Path("/var/run/wireguard") / f"{ifname}.sock"
    b: EmbeddedNetwork | None = None
    with tempfile.NamedTemporaryFile("w", delete=False) as secret:
        secret.write(key_a.to_base64())
    try:
        assert wait_until(sock.exists, 10), "pyralog-wg did not create its UAPI socket"
        sh("wg", "set", ifname, "private-key", secret.name, "listen-port", str(port_a))
        sh(
            "wg", "set", ifname, "peer", key_b.public_key.to_base64(),
            "allowed-ips", f"{B_IP}/32", "endpoint", f"127.0.0.1:{port_b}",
        )  # fmt: skip
        sh("ip", "address", "add", f"{A_IP}/32", "dev", ifname)
        sh("ip", "link", "set", ifname, "up")
        sh("ip", "route", "add", f"{B_IP}/32", "dev", ifname)
        b = await EmbeddedNetwork.start(
            parse(config_text(key_b, B_IP, port_b, key_a.public_key, A_IP, port_a), "b.conf")
        )
        a = KernelNetwork.for_interface(ifname)
        yield Sides(a, b, key_a.public_key, key_b.public_key)
    finally:
        os.unlink(secret.name)
        if b is not None:
            await b.close()
        stop_process(proc)
        subprocess.run(["ip", "link", "del", ifname], capture_output=True)


PAIRS: dict[str, Callable[[], Any]] = {
    "embedded": embedded_pair,
    "kernel": kernel_pair,
    "kernel-go": lambda: kernel_pair("wireguard-go"),
}


@pytest.fixture(
    params=[
        "embedded",
        pytest.param("kernel", marks=pytest.mark.privileged),
        pytest.param("kernel-go", marks=pytest.mark.privileged),
    ]
)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def run(kind: str, test: Callable[[Sides], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with PAIRS[kind]() as sides:
            return await asyncio.wait_for(test(sides), TIMEOUT)

    return asyncio.run(main())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def write_all(writer: asyncio.StreamWriter, data: bytes) -> None:
    for i in range(0, len(data), 65536):
        writer.write(data[i : i + 65536])
        await writer.drain()


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await asyncio.wait_for(writer.wait_closed(), 5)


# -- TCP ---------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["b_to_a", "a_to_b"])
def test_bulk_both_ways_addresses_and_peer_identity(kind: str, direction: str) -> None:
    up, down = random.Random(1).randbytes(600_000), random.Random(2).randbytes(400_000)

    async def main(s: Sides) -> None:
        server_net, client_net = (s.a, s.b) if direction == "b_to_a" else (s.b, s.a)
        server_ip, client_ip = (A_IP, B_IP) if direction == "b_to_a" else (B_IP, A_IP)
        client_key = s.b_key if direction == "b_to_a" else s.a_key
        seen: dict[str, Any] = {}
        handled = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("peername")
            seen["peer"], seen["identity"] = peer, server_net.peer_of(peer[0])
            seen["sockname"] = writer.get_extra_info("sockname")

            async def send() -> None:
                await write_all(writer, down)
                writer.write_eof()

            seen["received"], _ = await asyncio.gather(reader.read(), send())
            await close_writer(writer)
            handled.set()

        server = await server_net.start_server(handler, server_ip, 7100)
        assert [sock.getsockname()[:2] for sock in server.sockets] == [(server_ip, 7100)]
        assert server.is_serving()
        reader, writer = await client_net.open_connection(server_ip, 7100)
        assert writer.get_extra_info("peername")[:2] == (server_ip, 7100)
        assert writer.get_extra_info("sockname")[0] == client_ip  # bound to the mesh address

        async def send() -> None:
            await write_all(writer, up)
            writer.write_eof()

        received, _ = await asyncio.gather(reader.read(), send())
        await close_writer(writer)
        await asyncio.wait_for(handled.wait(), 5)
        server.close()
        await server.wait_closed()
        assert sha(received) == sha(down) and sha(seen["received"]) == sha(up)
        assert seen["peer"][0] == client_ip
        assert seen["identity"] == client_key  # the connection's WireGuard identity
        assert seen["sockname"][:2] == (server_ip, 7100)

    run(kind, main)


def test_peer_of_unknown_and_bad_addresses(kind: str) -> None:
    async def main(s: Sides) -> None:
        assert isinstance(s.a, Network) and isinstance(s.b, Network)
        for net in (s.a, s.b):
            assert net.peer_of("10.9.0.77") is None
            assert net.peer_of("not an address") is None
        assert s.a.peer_of(B_IP) == s.b_key and s.b.peer_of(A_IP) == s.a_key
        assert [str(x) for x in s.a.addresses] == [A_IP]

    run(kind, main)


def test_connection_refused_both_directions(kind: str) -> None:
    async def main(s: Sides) -> None:
        for net, host in ((s.b, A_IP), (s.a, B_IP)):
            start = time.monotonic()
            with pytest.raises(ConnectionRefusedError) as info:
                await asyncio.wait_for(net.open_connection(host, 7999), 5)
            assert info.value.errno == errno.ECONNREFUSED
            assert time.monotonic() - start < 2.0  # a RST, not a timeout

    run(kind, main)


def test_concurrent_echo_connections(kind: str) -> None:
    async def main(s: Sides) -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
            await close_writer(writer)

        server = await s.a.start_server(echo, A_IP, 7101)

        async def client(i: int) -> bool:
            data = random.Random(100 + i).randbytes(8000)
            reader, writer = await s.b.open_connection(A_IP, 7101)
            writer.write(data)
            writer.write_eof()
            back = await reader.read()
            await close_writer(writer)
            return back == data

        assert all(await asyncio.gather(*(client(i) for i in range(10))))
        server.close()

    run(kind, main)


# -- UDP ---------------------------------------------------------------------------------


class Collector(asyncio.DatagramProtocol):
    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.transport: Any = None
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.echo:
            self.transport.sendto(data, addr)
        self.queue.put_nowait((data, addr))


@pytest.mark.parametrize("direction", ["b_to_a", "a_to_b"])
def test_udp_echo_with_sizes_and_connected_endpoint(kind: str, direction: str) -> None:
    async def main(s: Sides) -> None:
        server_net, client_net = (s.a, s.b) if direction == "b_to_a" else (s.b, s.a)
        server_ip, client_ip = (A_IP, B_IP) if direction == "b_to_a" else (B_IP, A_IP)
        server, client = Collector(echo=True), Collector()
        server_t, _ = await server_net.create_datagram_endpoint(
            lambda: server, local_addr=(server_ip, 5400)
        )
        assert server_t.get_extra_info("sockname")[:2] == (server_ip, 5400)
        client_t, _ = await client_net.create_datagram_endpoint(
            lambda: client, remote_addr=(server_ip, 5400)
        )
        assert client_t.get_extra_info("sockname")[0] == client_ip
        # No empty datagram: asyncio's own transport (the kernel side) silently sends
        # nothing for b"" before Python 3.12; the embedded one's tests cover it.
        for i, size in enumerate((1, 500, 1392)):
            data = random.Random(200 + i).randbytes(size)
            client_t.sendto(data)  # connected: no address needed
            got, source = await asyncio.wait_for(server.queue.get(), 5)
            assert got == data and source[0] == client_ip
            assert server_net.peer_of(source[0]) is not None
            back, source = await asyncio.wait_for(client.queue.get(), 5)
            assert back == data and source[:2] == (server_ip, 5400)
        client_t.close()
        server_t.close()

    run(kind, main)


def test_port_forwarder_runs_over_either_network(kind: str) -> None:
    """pyralog forward's Forwarder only needs a Network: a local port reaches a service on
    the other side through it."""
    from pyralog.net.forward import Forward, Forwarder

    async def main(s: Sides) -> None:
        async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"hello from " + (await reader.readline()))
            await close_writer(writer)

        server = await s.b.start_server(hello, B_IP, 7102)
        forwarder = Forwarder(s.a)
        local_port = free_port()
        await forwarder.add_forward(Forward("127.0.0.1", local_port, B_IP, 7102))
        reader, writer = await asyncio.open_connection("127.0.0.1", local_port)
        writer.write(b"A\n")
        assert await asyncio.wait_for(reader.read(), 5) == b"hello from A\n"
        await close_writer(writer)
        await forwarder.close()
        server.close()

    run(kind, main)


@pytest.mark.privileged
def test_kernel_listeners_hear_only_the_wireguard_interface() -> None:
    """KernelNetwork.for_interface binds what listens to the device (SO_BINDTODEVICE), so
    a packet for the mesh address arriving on another interface never reaches it."""

    async def main(s: Sides) -> None:
        assert isinstance(s.a, KernelNetwork) and s.a.interface is not None
        server = await s.a.start_server(lambda r, w: None)
        endpoint, _ = await s.a.create_datagram_endpoint(asyncio.DatagramProtocol)
        try:
            for sock in (server.sockets[0], endpoint.get_extra_info("socket")):
                bound = sock.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16)
                assert bound.rstrip(b"\0").decode() == s.a.interface
            # Without a host, the server takes every mesh address: one wildcard socket on
            # the device, and a datagram endpoint defaults to the mesh address.
            assert server.sockets[0].getsockname()[0] in ("::", "0.0.0.0")
            assert endpoint.get_extra_info("sockname")[0] == A_IP
        finally:
            server.close()
            endpoint.close()

    run("kernel", main)


def test_uapi_peers_fail_closed_when_the_daemon_is_gone(tmp_path: Path) -> None:
    """No answer from the UAPI socket is an error naming it, never 'no peer'."""
    from pyralog.net import UapiPeers

    peers = UapiPeers("wg-missing", uapi_dir=str(tmp_path))
    with pytest.raises(OSError, match=r"wg-missing\.sock"):
        peers.peer_of("10.9.0.1")
    assert peers.peer_of("not an address") is None  # nothing to ask about


def test_kernel_network_refuses_to_exist_without_addresses() -> None:
    from pyralog.net import UapiPeers

    with pytest.raises(ValueError, match="at least one mesh address"):
        KernelNetwork([], UapiPeers("wg0"))
