"""Two EmbeddedTunnels in one process, peers of each other over loopback UDP.

Tunnel A is 10.9.0.1, tunnel B is 10.9.0.2; each one's only peer is the other, reached at
127.0.0.1 on the other's ListenPort. Everything runs in a single asyncio event loop: the
WireGuard Devices, the UDP sockets and both userspace TCP/IP stacks. No root needed.

Every test runs under ``asyncio.wait_for`` so a hang fails the test instead of blocking.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import hashlib
import random
import socket
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from ports import free_port
from pyralog.netstack import tcp
from pyralog.netstack.embedded import STREAM_LIMIT, EmbeddedTunnel
from pyralog.netstack.tcp import State
from pyralog.wireguard.config import parse
from pyralog.wireguard.constants import DEFAULT_MTU
from pyralog.wireguard.keys import PrivateKey, PublicKey

A_IP, B_IP = "10.9.0.1", "10.9.0.2"
TIMEOUT = 10.0  # per test; each takes a few seconds at most when things work


# -- helpers -------------------------------------------------------------------------------


def _config_text(
    private: PrivateKey, address: str, listen_port: int, peer: PublicKey, peer_ip: str, port: int
) -> str:
    return (
        "[Interface]\n"
        f"PrivateKey = {private.to_base64()}\n"
        f"Address = {address}/32\n"
        f"ListenPort = {listen_port}\n"
        "\n"
        "[Peer]\n"
        f"PublicKey = {peer.to_base64()}\n"
        f"AllowedIPs = {peer_ip}/32\n"
        f"Endpoint = 127.0.0.1:{port}\n"
    )


async def _start_pair() -> tuple[EmbeddedTunnel, EmbeddedTunnel]:
    """A on an ephemeral port; B on a port picked beforehand, so both configs can name
    each other's Endpoint. Retries if someone else grabbed B's port in between."""
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    for attempt in range(5):
        # free on 0.0.0.0; UdpTransport also binds :: on it, and a collision there is
        # EADDRINUSE, retried below
        port_b = free_port(socket.SOCK_DGRAM, "0.0.0.0")
        a = await EmbeddedTunnel.start(
            parse(_config_text(key_a, A_IP, 0, key_b.public_key, B_IP, port_b), "a.conf")
        )
        try:
            b = await EmbeddedTunnel.start(
                parse(
                    _config_text(key_b, B_IP, port_b, key_a.public_key, A_IP, a.listen_port),
                    "b.conf",
                )
            )
        except OSError as e:
            await a.close()
            if e.errno != errno.EADDRINUSE or attempt == 4:
                raise
            continue
        return a, b
    raise AssertionError("unreachable")


@contextlib.asynccontextmanager
async def tunnel_pair() -> AsyncIterator[tuple[EmbeddedTunnel, EmbeddedTunnel]]:
    a, b = await _start_pair()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def run(test: Callable[[], Awaitable[Any]], timeout: float = TIMEOUT) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(test(), timeout)

    return asyncio.run(main())


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await asyncio.wait_for(writer.wait_closed(), 5)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


async def write_all(writer: asyncio.StreamWriter, data: bytes, chunk: int = 64 * 1024) -> None:
    for i in range(0, len(data), chunk):
        writer.write(data[i : i + chunk])
        await writer.drain()


def server_connection(tunnel: EmbeddedTunnel, port: int) -> tcp.TcpConnection:
    """The tunnel's (only) connection whose local port is ``port``."""
    found = [
        c
        for c in tunnel.stack.connections()
        if tunnel.stack.endpoints_of(c)[0][1] == port and c.state != State.CLOSED
    ]
    assert len(found) == 1, found
    return found[0]


# -- TCP -----------------------------------------------------------------------------------


def test_tcp_full_duplex_bulk_transfer_and_addresses() -> None:
    """2 MB each way at the same time; both sides half-close when done and read to EOF."""
    size = 2 * 1024 * 1024
    up, down = random_bytes(size, 1), random_bytes(size, 2)

    async def main() -> None:
        async with tunnel_pair() as (a, b):
            server_side: dict[str, Any] = {}

            async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                server_side["peername"] = writer.get_extra_info("peername")
                server_side["sockname"] = writer.get_extra_info("sockname")

                async def send() -> None:
                    await write_all(writer, down)
                    writer.write_eof()

                received, _ = await asyncio.gather(reader.read(), send())
                server_side["received"] = received
                await close_writer(writer)

            server = await a.start_server(handler, port=7000)
            assert server.port == 7000 and server.is_serving()
            reader, writer = await b.open_connection(A_IP, 7000)
            assert isinstance(reader, asyncio.StreamReader)
            assert isinstance(writer, asyncio.StreamWriter)
            peername = writer.get_extra_info("peername")
            sockname = writer.get_extra_info("sockname")
            assert peername == (A_IP, 7000)
            assert sockname[0] == B_IP and 49152 <= sockname[1] <= 65535

            async def send() -> None:
                await write_all(writer, up)
                writer.write_eof()

            received, _ = await asyncio.gather(reader.read(), send())
            assert reader.at_eof()
            await close_writer(writer)
            server.close()

            assert len(received) == size and sha(received) == sha(down)
            assert len(server_side["received"]) == size
            assert sha(server_side["received"]) == sha(up)
            assert server_side["peername"] == sockname
            assert server_side["sockname"] == (A_IP, 7000)

    run(main)


def test_tcp_half_close_then_reply() -> None:
    """The client's write_eof() is EOF for the server, which can still answer afterwards."""
    request = random_bytes(2 * 1024 * 1024, 3)
    reply_body = random_bytes(1024 * 1024, 4)

    async def main() -> None:
        async with tunnel_pair() as (a, b):
            eof_seen = asyncio.Event()

            async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                data = await reader.read()  # returns only at EOF
                assert reader.at_eof()
                eof_seen.set()
                writer.write(sha(data).encode() + b"\n")
                await write_all(writer, reply_body)
                await close_writer(writer)

            server = await b.start_server(handler, port=7001)
            reader, writer = await a.open_connection(B_IP, 7001)
            await write_all(writer, request)
            assert not eof_seen.is_set()
            assert writer.can_write_eof()
            writer.write_eof()
            await asyncio.wait_for(eof_seen.wait(), 5)
            # Our sending side is shut; the receiving side still works.
            digest = await reader.readline()
            assert digest == sha(request).encode() + b"\n"
            body = await reader.read()
            assert sha(body) == sha(reply_body)
            assert reader.at_eof()
            await close_writer(writer)
            server.close()

    run(main)


def test_tcp_backpressure_bounds_memory_end_to_end() -> None:
    """A server that does not read stalls the client's drain(); nothing piles up anywhere.

    While the handler sleeps, what the client has managed to write (each chunk followed by
    ``await drain()``) is at most what the pipeline can hold:
      - the client transport's pending bytes: above its high-water mark (64 KiB) drain()
        blocks, so at most high-water mark + one chunk;
      - the client TcpConnection's send buffer (sent-but-unacked and unsent data);
      - on the server, the TcpConnection's receive buffer (its window, plus the overcommit
        the window rounding may promise), and the StreamReader's buffer: it pauses reading
        above 2 * limit, after taking at most one receive buffer's worth in one delivery.
    """
    total = 20 * 1024 * 1024
    chunk = 64 * 1024
    pause = 1.2
    payload = random_bytes(total, 5)

    high_water = 64 * 1024  # TcpTransport's default high-water mark (checked below)
    receive_window = tcp.DEFAULT_BUFFER + tcp.DEFAULT_BUFFER // tcp.OVERCOMMIT_DIVISOR
    server_bound = 2 * STREAM_LIMIT + 2 * receive_window
    client_bound = high_water + chunk + tcp.DEFAULT_BUFFER + server_bound

    async def main() -> None:
        async with tunnel_pair() as (a, b):
            written = 0
            samples: list[tuple[int, int]] = []  # (written by client, held by server)
            result: dict[str, Any] = {}
            handled = asyncio.Event()

            async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                conn = server_connection(a, 7002)
                deadline = time.monotonic() + pause
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                    # StreamReader has no public size; _buffer is what it holds.
                    held = conn.readable + len(reader._buffer)
                    samples.append((written, held))
                data = await reader.read()
                result["data"] = data
                await close_writer(writer)
                handled.set()

            server = await a.start_server(handler, port=7002)
            _, writer = await b.open_connection(A_IP, 7002)
            assert writer.transport.get_write_buffer_limits() == (high_water // 4, high_water)

            async def produce() -> None:
                nonlocal written
                for i in range(0, total, chunk):
                    writer.write(payload[i : i + chunk])
                    await writer.drain()
                    written += chunk
                writer.write_eof()

            await produce()
            await asyncio.wait_for(handled.wait(), 10)
            server.close()
            assert sha(result["data"]) == sha(payload)
            await close_writer(writer)

            n = len(samples)
            assert n >= 10, samples
            assert max(w for w, _ in samples) <= client_bound, (client_bound, samples)
            assert max(h for _, h in samples) <= server_bound, (server_bound, samples)
            # Stalled: in the second half of the pause the client made no progress at all.
            stalled = {w for w, _ in samples[n // 2 :]}
            assert len(stalled) == 1, samples
            assert 0 < stalled.pop() < total

    run(main)


def test_connection_refused_promptly_both_directions() -> None:
    async def main() -> None:
        async with tunnel_pair() as (a, b):
            for tunnel, host in ((b, A_IP), (a, B_IP)):
                start = time.monotonic()
                with pytest.raises(ConnectionRefusedError) as info:
                    await asyncio.wait_for(tunnel.open_connection(host, 7999), 5)
                assert time.monotonic() - start < 1.0  # the RST, not a timeout
                assert info.value.errno == errno.ECONNREFUSED
                assert tunnel.stack.connections() == []  # nothing left half-open
            assert a.stack.drops["no_listener"] == 1
            assert b.stack.drops["no_listener"] == 1

    run(main)


def test_connection_refused_after_server_closed() -> None:
    async def main() -> None:
        async with tunnel_pair() as (a, b):
            server = await a.start_server(lambda r, w: None, port=7003)
            server.close()
            assert not server.is_serving()
            await asyncio.wait_for(server.wait_closed(), 1)
            with pytest.raises(ConnectionRefusedError):
                await asyncio.wait_for(b.open_connection(A_IP, 7003), 5)

    run(main)


def test_many_concurrent_echo_connections() -> None:
    count, size = 20, 8 * 1024

    async def main() -> None:
        async with tunnel_pair() as (a, b):

            async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                while data := await reader.read(4096):
                    writer.write(data)
                    await writer.drain()
                await close_writer(writer)

            server = await a.start_server(echo, port=7004)

            async def client(i: int) -> tuple[str, str, tuple[str, int]]:
                data = random_bytes(size, 100 + i)
                reader, writer = await b.open_connection(A_IP, 7004)
                sockname = writer.get_extra_info("sockname")

                async def send() -> None:
                    await write_all(writer, data, chunk=1000)
                    writer.write_eof()

                back, _ = await asyncio.gather(reader.read(), send())
                await close_writer(writer)
                return sha(data), sha(back), sockname

            results = await asyncio.gather(*(client(i) for i in range(count)))
            server.close()
            for sent, echoed, _ in results:
                assert sent == echoed
            assert len({s for _, _, s in results}) == count  # distinct local ports

    run(main)


# -- UDP -----------------------------------------------------------------------------------


class Collector(asyncio.DatagramProtocol):
    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.transport: asyncio.DatagramTransport | None = None
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.errors: list[Exception] = []
        self.lost = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.echo:
            assert self.transport is not None
            self.transport.sendto(data, addr)
        self.queue.put_nowait((data, addr))

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()


UDP_MAX = DEFAULT_MTU - 28  # IPv4 header (20) + UDP header (8)


def test_udp_echo_round_trip_sizes_and_oversize() -> None:
    sizes = [0, 1, 100, 1000, UDP_MAX - 1, UDP_MAX]

    async def main() -> None:
        async with tunnel_pair() as (a, b):
            server, client = Collector(echo=True), Collector()
            server_t, _ = await a.create_datagram_endpoint(lambda: server, local_addr=(A_IP, 5300))
            client_t, _ = await b.create_datagram_endpoint(lambda: client)
            assert server_t.get_extra_info("sockname") == (A_IP, 5300)
            client_addr = client_t.get_extra_info("sockname")
            assert client_addr[0] == B_IP

            for i, size in enumerate(sizes):
                data = random_bytes(size, 200 + i)
                client_t.sendto(data, (A_IP, 5300))
                got, source = await asyncio.wait_for(server.queue.get(), 5)
                assert got == data and source == client_addr
                back, source = await asyncio.wait_for(client.queue.get(), 5)
                assert back == data and source == (A_IP, 5300)
            assert client.errors == [] and server.errors == []

            # One byte too many: reported through error_received (as asyncio's own UDP
            # transports report send errors), with both sizes in the message; nothing sent.
            client_t.sendto(b"x" * (UDP_MAX + 1), (A_IP, 5300))
            assert len(client.errors) == 1
            error = client.errors[0]
            assert isinstance(error, OSError) and error.errno == errno.EMSGSIZE
            assert f"{UDP_MAX + 1} bytes" in str(error) and str(UDP_MAX) in str(error)
            # Still usable afterwards; the oversized datagram never arrived.
            client_t.sendto(b"after", (A_IP, 5300))
            got, _ = await asyncio.wait_for(server.queue.get(), 5)
            assert got == b"after"
            await asyncio.wait_for(client.queue.get(), 5)

            client_t.close()
            server_t.close()
            await asyncio.wait_for(client.lost.wait(), 1)
            await asyncio.wait_for(server.lost.wait(), 1)

    run(main)


def test_udp_connected_endpoint_uses_remote_addr_and_filters_sources() -> None:
    async def main() -> None:
        async with tunnel_pair() as (a, b):
            client = Collector()
            server_t, _ = await a.create_datagram_endpoint(
                lambda: Collector(echo=True), local_addr=(A_IP, 5301)
            )
            client_t, _ = await b.create_datagram_endpoint(lambda: client, remote_addr=(A_IP, 5301))
            client_t.sendto(b"ping")  # no address: goes to remote_addr
            got, _ = await asyncio.wait_for(client.queue.get(), 5)
            assert got == b"ping"
            # A datagram from another port of A does not reach the connected endpoint.
            other_t, _ = await a.create_datagram_endpoint(Collector, local_addr=(A_IP, 5302))
            other_t.sendto(b"stranger", client_t.get_extra_info("sockname"))
            client_t.sendto(b"pong")
            got, _ = await asyncio.wait_for(client.queue.get(), 5)
            assert got == b"pong"
            assert client.queue.empty()
            for t in (client_t, server_t, other_t):
                t.close()

    run(main)


# -- close() -------------------------------------------------------------------------------


def _port_is_free(port: int) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("0.0.0.0", port))
    except OSError:
        return False
    return True


def test_close_releases_udp_sockets_and_resets_peer_connections() -> None:
    """close() aborts every connection: the peer's streams fail with ConnectionResetError
    (the RST leaves before the sockets close); the UDP port is released, no ResourceWarning.
    """

    async def main() -> None:
        a, b = await _start_pair()
        try:
            accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
            accepted = asyncio.Queue()

            async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                accepted.put_nowait((reader, writer))

            await b.start_server(handler, port=7005)
            conns = [await a.open_connection(B_IP, 7005) for _ in range(3)]
            peers = [await asyncio.wait_for(accepted.get(), 5) for _ in range(3)]
            # Some data in flight both ways first, so the connections are truly in use.
            for (a_reader, a_writer), (b_reader, b_writer) in zip(conns, peers, strict=True):
                a_writer.write(b"hello")
                assert await asyncio.wait_for(b_reader.readexactly(5), 5) == b"hello"
                b_writer.write(b"world")
                assert await asyncio.wait_for(a_reader.readexactly(5), 5) == b"world"

            port = a.listen_port
            sockets = a.link.udp.sockets()  # type: ignore[union-attr]
            assert not _port_is_free(port)
            await a.close()
            assert all(s.fileno() == -1 for s in sockets)
            assert _port_is_free(port)
            await a.close()  # idempotent

            for reader, writer in peers:
                with pytest.raises(ConnectionResetError) as info:
                    await asyncio.wait_for(reader.read(), 5)
                assert info.value.errno == errno.ECONNRESET
                assert writer.transport.is_closing()
            assert b.stack.connections() == []
            # A's own streams were told too: each reader fails, as after an abort.
            for reader, writer in conns:
                with pytest.raises(ConnectionAbortedError):
                    await asyncio.wait_for(reader.read(), 1)
                assert writer.transport.is_closing()
                writer.close()
        finally:
            await a.close()
            await b.close()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        run(main)
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_close_tells_local_streams_the_connection_is_gone() -> None:
    async def main() -> None:
        async with tunnel_pair() as (a, b):
            server = await b.start_server(lambda r, w: None, port=7006)
            reader, writer = await a.open_connection(B_IP, 7006)
            try:
                await a.close()
                await asyncio.sleep(0.05)
                read = asyncio.ensure_future(reader.read())
                done, _ = await asyncio.wait([read], timeout=1)
                assert done, "reader still blocked 1 s after the tunnel closed"
                with pytest.raises(ConnectionError):
                    read.result()
                assert writer.transport.is_closing(), "transport still open after close()"
            finally:
                writer.close()
                server.close()

    run(main)
