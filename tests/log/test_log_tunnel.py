"""The log over WireGuard, end to end: every connection to the broker rides a tunnel.

- ``test_stock_clients_reach_a_broker_behind_pyralog_wg`` (root): the product
  document's client-to-cluster example. Namespace A runs ``pyralog-wg`` (set up with
  ``wg`` and ``ip``, mesh address 10.0.0.1) and ``pyralog broker --listen 10.0.0.1:9092``;
  namespace B runs stock ``wireguard-go`` brought up by ``wg-quick up`` (10.0.0.2). From B,
  kcat and confluent-kafka each produce 10,000 records with acks=all and read them back in
  order byte for byte; the broker is not reachable on A's veth address, and A's ``wg show``
  counts at least the payload received from B's key.
- ``test_node_serves_the_log_to_an_enrolled_client_over_the_mesh`` (no root): ``pyralog
  node`` (embedded backend, user nobody) with a ``[log]`` section; a client enrolled with
  ``pyralog-admin client add`` reaches its broker through an embedded tunnel made from the
  wg-quick file it was given (in this process): 2,000 records produced with acks=-1 and
  consumed in order, metadata naming the node's mesh address; an admin client, whose role
  this policy keeps to port 7701, reaches the identity service but the broker closes its
  connection; after a restart the node serves the same records from its ``data_dir``.
- ``test_embedded_broker_and_client_in_one_process`` (no root): two embedded tunnels over
  loopback UDP; a ``Broker`` on A's mesh address through A's network, ``PyralogClient``
  over B's; 1,000 records there and back, and the broker's peer is B's mesh address and key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import stockclients

from meshlab import Proc, mesh_lab
from netns import Lab, Namespace, WireGuard, daemon_env, genkey, missing_tools
from ports import free_port
from processes import console_script, stop_process, wait_until
from pyralog.log.broker import Broker
from pyralog.log.client import PyralogClient
from pyralog.log.context import BrokerConfig
from pyralog.log.storage import Storage
from pyralog.mesh import http
from pyralog.net import EmbeddedNetwork
from pyralog.wireguard.config import load, parse
from pyralog.wireguard.keys import PrivateKey, PublicKey

HERE = Path(__file__).parent
TESTS = HERE.parent


# -- shared -------------------------------------------------------------------------------------


async def _read_back(client: PyralogClient, topic: str, n: int) -> list[tuple[int, bytes, bytes]]:
    """The first n records of the topic, read with ``consume`` (its Metadata and
    ListOffsets, then Fetch), as (offset, key, value)."""
    out: list[tuple[int, bytes, bytes]] = []
    messages = client.consume(topic, from_beginning=True, max_wait_ms=200)
    async with contextlib.aclosing(messages):
        async for m in messages:
            out.append((m.offset, m.key or b"", m.value or b""))
            if len(out) == n:
                break
    return out


def _expected(sent: stockclients.Records) -> list[tuple[int, bytes, bytes]]:
    return [(i, k, v) for i, (k, v) in enumerate(sent)]


async def _produce_in_batches(client: PyralogClient, topic: str, sent: stockclients.Records,
                              size: int = 100) -> None:  # fmt: skip
    for i in range(0, len(sent), size):
        first = await client.produce_batch(topic, sent[i : i + size], acks=-1)
        assert first == i


async def _metadata(client: PyralogClient) -> Any:
    request = {
        "topics": None,
        "allow_auto_topic_creation": False,
        "include_cluster_authorized_operations": False,
        "include_topic_authorized_operations": False,
    }
    return await client.connection.call(3, request)


# -- stock clients behind wg-quick + wireguard-go, the broker behind pyralog-wg ------------------

_MISSING = [*missing_tools(), *(t for t in ("wg-quick", "kcat") if shutil.which(t) is None)]
A_MESH, B_MESH = "10.0.0.1", "10.0.0.2"
N = 10_000

# Run inside namespace B: produce with one stock client, read back by offset, print JSON.
_STOCK_CLIENT = textwrap.dedent(
    """
    import json, sys
    sys.path[:0] = sys.argv[1:3]
    import stockclients
    client, broker, topic, n = sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
    stockclients.produce(client, broker, topic, stockclients.records(n, topic))
    got = stockclients.read(client, broker, topic, n)
    print(json.dumps([[o, k.hex(), v.hex()] for o, k, v in got]))
    """
)


def _stock_round_trip(ns: Namespace, client: str, topic: str) -> list[tuple[int, bytes, bytes]]:
    done = ns.run(
        sys.executable, "-c", _STOCK_CLIENT, str(HERE), str(TESTS), client, f"{A_MESH}:9092",
        topic, str(N), timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{client} in namespace B failed: {done.stderr[-3000:]}"
    return [(o, bytes.fromhex(k), bytes.fromhex(v)) for o, k, v in json.loads(done.stdout)]


def _start_broker_in(ns: Namespace, data: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = ns.popen(
            str(console_script("pyralog")), "broker", "--data", str(data),
            "--listen", f"{A_MESH}:9092", "--flush", "interval",
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip

    def ready() -> bool:
        return "listening on" in log.read_text() or proc.poll() is not None

    assert wait_until(ready, 20), f"the broker did not start: {log.read_text()}"
    assert proc.poll() is None, f"the broker exited: {log.read_text()}"
    return proc


def _wg_quick_up(lab: Lab, ns: Namespace, a: WireGuard, a_endpoint: str) -> tuple[str, str]:
    """Stock wireguard-go in ``ns``, brought up by wg-quick from a file; (interface, key)."""
    keys = genkey()
    name = lab.ifname("q")  # registered: its UAPI socket is removed at teardown
    conf = lab.tmp / "quick" / f"{name}.conf"
    conf.parent.mkdir(mode=0o700)
    conf.write_text(
        f"[Interface]\nPrivateKey = {keys.private}\nAddress = {B_MESH}/24\nListenPort = 51820\n\n"
        f"[Peer]\nPublicKey = {a.public_key}\nAllowedIPs = {A_MESH}/32\n"
        f"Endpoint = {a_endpoint}:{a.port}\n"
    )
    conf.chmod(0o600)
    env = daemon_env(WG_QUICK_USERSPACE_IMPLEMENTATION="wireguard-go")
    up = ns.run("wg-quick", "up", str(conf), env=env, timeout=30, check=False)
    lab.defer(lambda: ns.run("wg-quick", "down", str(conf), env=env, timeout=30, check=False))
    assert up.returncode == 0, up.stderr
    assert "wireguard-go" in up.stderr, up.stderr  # wg-quick shows the command it ran
    return name, keys.public


def _refused(ns: Namespace, host: str, port: int) -> bool:
    probe = (
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(({host!r}, {port}), timeout=5)\n"
        "except ConnectionRefusedError:\n"
        "    sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    return ns.run(sys.executable, "-c", probe, check=False, timeout=20).returncode == 0


@pytest.mark.privileged
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and TUN devices")
@pytest.mark.skipif(bool(_MISSING), reason=f"needs {', '.join(_MISSING)}")
def test_stock_clients_reach_a_broker_behind_pyralog_wg() -> None:
    with Lab() as lab:
        link = lab.veth(lab.namespace("a"), lab.namespace("b"))
        ns_a, ns_b = link.a, link.b
        # A: pyralog-wg, configured with wg and ip as an operator would.
        a = lab.wireguard(ns_a, "pyralog")
        a.configure()
        b_if, b_key = _wg_quick_up(lab, ns_b, a, link.a4)
        a.add_peer(b_key, allowed_ips=[f"{B_MESH}/32"])
        ns_a.ip("address", "add", f"{A_MESH}/24", "dev", a.ifname)
        ns_a.ip("link", "set", a.ifname, "up")
        broker_log = lab.tmp / "broker.log"
        _start_broker_in(ns_a, lab.tmp / "data", broker_log)
        assert ns_b.ping(A_MESH), "no ping through the tunnel"

        payload = 0  # keys and values, once per client
        for client in ("kcat", "confluent"):
            topic = f"tunnel-{client}"
            sent = stockclients.records(N, topic)
            started = time.monotonic()
            got = _stock_round_trip(ns_b, client, topic)
            print(f"{client}: {N} records through the tunnel in {time.monotonic() - started:.1f} s")
            assert got == _expected(sent), f"{client}: {len(got)} records, not as sent"
            payload += sum(len(k) + len(v) for k, v in sent)

        # The broker listens only on the mesh address: the veth address refuses it ...
        assert _refused(ns_b, link.a4, 9092)
        # ... and the records went through WireGuard: `wg show` on A counts them received
        # from B's key (produced) and sent back to it (fetched).
        transfer = {
            key: (int(rx), int(tx))
            for key, rx, tx in (
                line.split("\t") for line in a.wg("show", a.ifname, "transfer").splitlines()
            )
        }
        received, sent_back = transfer[b_key]
        print(f"wg show {a.ifname} transfer: {received} B received, {sent_back} B sent; "
              f"payload {payload} B")  # fmt: skip
        assert received >= payload, (received, payload)
        assert sent_back >= payload, (sent_back, payload)
        assert b_if in ns_b.links()
        assert "Traceback" not in broker_log.read_text(), broker_log.read_text()


# -- pyralog node serves the log on its mesh address ------------------------------------------

# The default policy for members, and an admin role kept to the identity service: an
# admin client is a peer of the node (so its packets arrive) but may not open 9092.
NARROW_ADMIN = """
[policy]
node = ["node", "gateway", "coordinator"]
gateway = ["node", "gateway", "coordinator"]
client = ["node:9092", "gateway:9092"]
admin = ["node:7701", "coordinator"]
"""
LOG_SECTION = '[log]\ndata_dir = "log-data"\nflush = "interval"\n'


async def _whoami(network: EmbeddedNetwork, address: str) -> Any:
    return await http.call(lambda: network.open_connection(address, 7701), "GET", "/v1/whoami",
                           timeout=10)  # fmt: skip


def _wait_broker_up(node: Proc, since: int = 0) -> None:
    """The node's local socket comes before its broker; its "up" line after both. The
    log is appended to across restarts: look only past ``since``."""
    up = "log broker on port 9092"
    assert wait_until(lambda: up in node.output()[since:] or node.process.poll() is not None, 30)
    assert up in node.output()[since:], node.output()


def test_node_serves_the_log_to_an_enrolled_client_over_the_mesh() -> None:
    sent = stockclients.records(2000, "mesh")
    with mesh_lab(NARROW_ADMIN) as lab:
        lab.start_coordinator()
        lab.node_config("broker-1", lab.token(), extra=LOG_SECTION)
        node = lab.start_node("broker-1", None)
        _wait_broker_up(node)
        address = lab.address_of(node)
        laptop, ops = lab.root / "laptop.conf", lab.root / "ops.conf"
        lab.admin("client", "add", "--name", "laptop", "-o", str(laptop))
        lab.admin("client", "add", "--name", "ops", "--role", "admin", "-o", str(ops))
        lab.wait_peers(node, {"coordinator", "laptop", "ops"}, timeout=10)

        async def first() -> None:
            client_net = await EmbeddedNetwork.start(load(str(laptop)))
            admin_net = await EmbeddedNetwork.start(load(str(ops)))
            try:
                started = time.monotonic()
                async with await PyralogClient.connect(
                    f"{address}:9092", network=client_net, timeout=15
                ) as client:
                    await client.create_topic("mesh-events")
                    await _produce_in_batches(client, "mesh-events", sent)
                    got = await _read_back(client, "mesh-events", len(sent))
                    metadata = await _metadata(client)
                print(f"mesh client: {len(sent)} records in {time.monotonic() - started:.2f} s")
                assert got == _expected(sent)
                assert [(b.host, b.port) for b in metadata.brokers] == [(address, 9092)]
                assert [t.name for t in metadata.topics] == ["mesh-events"]
                assert metadata.cluster_id == "test"  # the mesh's, from enrollment

                # The admin's packets reach the node (its identity service answers) ...
                answer = await _whoami(admin_net, address)
                assert answer["you"]["node_id"] == "ops", answer
                # ... but the broker closes a connection from a role the policy keeps out.
                with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                    await PyralogClient.connect(f"{address}:9092", network=admin_net)
            finally:
                await client_net.close()
                await admin_net.close()

        asyncio.run(asyncio.wait_for(first(), 120))
        assert node.process.poll() is None, node.output()

        # The node stops cleanly and its restart serves the same log from its data_dir.
        stop_process(node.process, timeout=15)
        assert node.process.returncode == 0, node.output()
        before = len(node.output())
        node = lab.start_node("broker-1", None)
        _wait_broker_up(node, before)

        async def again() -> None:
            client_net = await EmbeddedNetwork.start(load(str(laptop)))
            try:
                async with await PyralogClient.connect(
                    f"{address}:9092", network=client_net, timeout=15
                ) as client:
                    assert await client.offsets("mesh-events") == (0, len(sent))
                    assert await _read_back(client, "mesh-events", len(sent)) == _expected(sent)
            finally:
                await client_net.close()

        asyncio.run(asyncio.wait_for(again(), 60))


# -- an embedded broker and an embedded client in one process ------------------------------


def _free_udp_port() -> int:
    return free_port(socket.SOCK_DGRAM, "0.0.0.0")


def _tunnel_config(key: PrivateKey, address: str, port: int, peer: PublicKey, peer_ip: str,
                   peer_port: int) -> str:  # fmt: skip
    return (
        f"[Interface]\nPrivateKey = {key.to_base64()}\nAddress = {address}/32\n"
        f"ListenPort = {port}\n\n[Peer]\nPublicKey = {peer.to_base64()}\n"
        f"AllowedIPs = {peer_ip}/32\nEndpoint = 127.0.0.1:{peer_port}\n"
    )


@contextlib.asynccontextmanager
async def _embedded_pair(a_ip: str, b_ip: str) -> AsyncIterator[tuple[EmbeddedNetwork, ...]]:
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    port_a, port_b = _free_udp_port(), _free_udp_port()
    text_a = _tunnel_config(key_a, a_ip, port_a, key_b.public_key, b_ip, port_b)
    text_b = _tunnel_config(key_b, b_ip, port_b, key_a.public_key, a_ip, port_a)
    a = await EmbeddedNetwork.start(parse(text_a, "a.conf"))
    try:
        b = await EmbeddedNetwork.start(parse(text_b, "b.conf"))
        try:
            yield a, b
        finally:
            await b.close()
    finally:
        await a.close()


def test_embedded_broker_and_client_in_one_process(tmp_path: Path) -> None:
    a_ip, b_ip = "10.42.0.1", "10.42.0.2"
    sent = stockclients.records(1000, "embedded")
    peers: list[tuple[str, PublicKey | None]] = []

    async def main() -> None:
        async with _embedded_pair(a_ip, b_ip) as (a, b):
            b_key = b.config.interface.private_key.public_key

            def admit(host: str) -> bool:
                # Who the broker sees: the mesh source address, and the WireGuard key
                # cryptokey routing ties it to.
                peers.append((host, a.peer_of(host)))
                return a.peer_of(host) == b_key

            storage = Storage(tmp_path)
            storage.open()
            config = BrokerConfig(advertised_host=a_ip, advertised_port=9092)
            broker = Broker(storage, config, tmp_path, admit=admit)
            try:
                await broker.start(a_ip, 9092, a)
                async with await PyralogClient.connect(f"{a_ip}:9092", network=b) as client:
                    await client.create_topic("t")
                    await _produce_in_batches(client, "t", sent)
                    got = await _read_back(client, "t", len(sent))
                    metadata = await _metadata(client)
                assert got == _expected(sent)
                assert [(x.host, x.port) for x in metadata.brokers] == [(a_ip, 9092)]
                assert peers and set(peers) == {(b_ip, b_key)}
            finally:
                await broker.close()

    asyncio.run(asyncio.wait_for(main(), 60))
