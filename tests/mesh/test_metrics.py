"""Prometheus metrics (``pyralog.mesh.metrics``): collectors against a sans-IO Device, the
``[metrics]`` config, and real processes: a node's local and mesh endpoints (the role
policy decides who may scrape over the mesh), drops after garbage datagrams, and the
coordinator's enrollment counters after an admitted and a refused enrollment.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import re
import shutil
import socket
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshlab import MeshLab, Proc, mesh_lab
from netns import missing_tools
from ports import free_port
from processes import wait_until
from pyralog.mesh import config, coordinator_config, http
from pyralog.mesh.backend import PeerStatus
from pyralog.mesh.metrics import (
    DeviceCollector,
    EnrollmentCollector,
    MetricsEndpoint,
    PeersCollector,
)
from pyralog.mesh.token import JoinToken
from pyralog.net import EmbeddedNetwork
from pyralog.wireguard.config import load
from tunmesh import ENROLL_TIMEOUT, tun_lab

from wgsim import WALL_OFFSET, make_pair

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    for (found, have), value in samples.items():
        if found == name and all(dict(have).get(k) == v for k, v in labels.items()):
            return value
    return None


def _scrape(endpoint: MetricsEndpoint) -> Samples:
    request = http.Request("GET", "/metrics", {}, b"", None)
    response = asyncio.run(endpoint.handle(request))
    assert response.status == 200 and response.content_type.startswith("text/plain")
    return _samples(response.encoded().decode())


# -- collectors against a sans-IO Device --------------------------------------------------


def test_device_collector_reports_peer_traffic_handshake_and_drops() -> None:
    pair = make_pair()
    b_key = pair.b_key.public_key.to_base64()
    endpoint = MetricsEndpoint(
        [DeviceCollector(pair.a, lambda: {b_key: "node-b"}, lambda: WALL_OFFSET + pair.net.now)]
    )
    before = _scrape(endpoint)
    assert _value(before, "pyralog_wireguard_peers") == 1
    age = _value(before, "pyralog_wireguard_peer_last_handshake_age_seconds", peer="node-b")
    assert age is not None and math.isnan(age)  # never handshaken: NaN, not 0
    pair.a_to_b()
    pair.net.advance(3.0)
    after = _scrape(endpoint)
    labels = {"peer": "node-b", "public_key": b_key}
    for name in ("sent_bytes", "received_bytes", "sent_packets", "received_packets"):
        assert (_value(after, f"pyralog_wireguard_peer_{name}_total", **labels) or 0) > 0, name
    assert _value(after, "pyralog_wireguard_peer_handshake_initiations_total", **labels) == 1
    assert _value(after, "pyralog_wireguard_peer_handshake_failures_total", **labels) == 0
    age = _value(after, "pyralog_wireguard_peer_last_handshake_age_seconds", **labels)
    assert age is not None and 2.5 <= age <= 3.5
    pair.a.receive_datagram(b"\x09garbage", ("192.0.2.9", 1), pair.net.now)
    assert _value(_scrape(endpoint), "pyralog_wireguard_drops_total", reason="malformed") == 1
    assert _value(after, "pyralog_wireguard_cookie_replies_sent_total") == 0


def test_unknown_peer_is_labelled_by_its_public_key() -> None:
    pair = make_pair()
    key = pair.b_key.public_key.to_base64()
    samples = _scrape(MetricsEndpoint([DeviceCollector(pair.a)]))
    assert _value(samples, "pyralog_wireguard_peer_sent_bytes_total", peer=key) is not None


def test_enrollment_collector_by_reason() -> None:
    counts = {"admitted": 2, "refused_no_token": 3, "refused_new_reason": 1}
    samples = _scrape(MetricsEndpoint([EnrollmentCollector(lambda: counts)]))
    assert _value(samples, "pyralog_mesh_enrollment_admitted_total") == 2
    refused = "pyralog_mesh_enrollment_refused_total"
    assert _value(samples, refused, reason="no_token") == 3
    assert _value(samples, refused, reason="revoked") == 0
    assert _value(samples, refused, reason="new_reason") == 1


def test_peers_collector_gives_what_backend_peers_gives() -> None:
    """Userspace and kernel backends: bytes and handshake age, refreshed per scrape."""
    key = make_pair().b_key.public_key
    collector = PeersCollector(lambda: {key.to_base64(): "n2"}, lambda: 1000.0)
    calls = []

    async def refresh() -> None:
        calls.append(1)
        collector.snapshot = [PeerStatus(key, None, (), 990.0, 10 * len(calls), 5)]

    endpoint = MetricsEndpoint([collector], refresh)
    assert _bytes(_scrape(endpoint), "n2") == (10, 5)
    samples = _scrape(endpoint)
    assert _bytes(samples, "n2") == (20, 5)
    assert _value(samples, "pyralog_wireguard_peer_last_handshake_age_seconds", peer="n2") == 10
    assert _value(samples, "pyralog_wireguard_peers") == 1
    assert not any(name.endswith("_packets_total") for name, _ in samples)


def test_two_endpoints_in_one_process_do_not_share_a_registry() -> None:
    one, two = make_pair(seed=1), make_pair(seed=2)
    a, b = MetricsEndpoint([DeviceCollector(one.a)]), MetricsEndpoint([DeviceCollector(two.a)])
    assert _scrape(a) != _scrape(b)


# -- config ----------------------------------------------------------------------------

NODE = '[interface]\nprivate_key_file = "node.key"\n'


def test_metrics_defaults_and_settings() -> None:
    default = config.parse(NODE).metrics
    assert (default.enabled, default.port, default.listen) == (True, 9100, None)
    text = NODE + '[metrics]\nenabled = false\nport = 9200\nlisten = "127.0.0.1:9101"\n'
    got = config.parse(text).metrics
    assert (got.enabled, got.port, got.listen) == (False, 9200, ("127.0.0.1", 9101))
    assert coordinator_config.parse("[metrics]\nport = 9300\n").metrics.port == 9300


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("port = 0", "[metrics] port: expected 1-65535, got 0"),
        ('listen = "localhost:9101"', '[metrics] listen: expected IP:PORT, got "localhost:9101"'),
        ('listen = "127.0.0.1"', "[metrics] listen: expected IP:PORT"),
        ("enabled = 1", "[metrics] enabled: expected true or false, got 1"),
        ("path = 1", "[metrics] path: unknown key"),
    ],
)
def test_metrics_config_errors(body: str, message: str) -> None:
    with pytest.raises(config.MeshConfigError, match=r"^wireguard.toml: " + _re(message)):
        config.parse(NODE + "[metrics]\n" + body + "\n")
    with pytest.raises(config.MeshConfigError, match=r"^coordinator.toml: " + _re(message)):
        coordinator_config.parse("[metrics]\n" + body + "\n")


def _re(text: str) -> str:
    return re.escape(text)


# -- real processes ---------------------------------------------------------------------


def _local(port: int) -> Samples:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.headers["content-type"].startswith("text/plain; version=")
        return _samples(answer.read().decode())


async def _get(opener: Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
               ) -> tuple[int, str]:  # fmt: skip
    reader, writer = await asyncio.wait_for(opener(), 10)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: mesh\r\nConnection: close\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def _bytes(samples: Samples, peer: str) -> tuple[float, float]:
    rx = _value(samples, "pyralog_wireguard_peer_received_bytes_total", peer=peer)
    tx = _value(samples, "pyralog_wireguard_peer_sent_bytes_total", peer=peer)
    assert rx is not None and tx is not None, sorted(samples)
    return rx, tx


def _node(lab: MeshLab, name: str, token: str, local: int | None = None) -> Proc:
    extra = f'[metrics]\nlisten = "127.0.0.1:{local}"\n' if local else ""
    return lab.start_node(name, token, extra=extra)


def test_node_and_coordinator_metrics_end_to_end() -> None:
    coordinator_local = free_port()
    with mesh_lab(f'[metrics]\nlisten = "127.0.0.1:{coordinator_local}"\n') as lab:
        lab.start_coordinator()
        token = lab.token()
        n1_local = free_port()
        n1, n2 = _node(lab, "n1", token, n1_local), _node(lab, "n2", token)
        conf, ops = lab.root / "laptop.conf", lab.root / "ops.conf"
        lab.admin("client", "add", "--name", "laptop", "-o", str(conf))
        lab.admin("client", "add", "--name", "ops", "--role", "admin", "-o", str(ops))
        lab.wait_peers(n1, {"coordinator", "n2", "laptop", "ops"}, 15)
        n2_address = lab.address_of(n2)

        # Traffic between the nodes: the bytes counters grow, the handshake is fresh.
        assert lab.probe(n1, n2_address)["ok"]
        first = _bytes(_local(n1_local), "n2")
        assert first[0] > 0 and first[1] > 0
        assert lab.probe(n1, n2_address)["ok"]
        samples = _local(n1_local)
        second = _bytes(samples, "n2")
        assert second[0] > first[0] and second[1] > first[1]
        age = _value(samples, "pyralog_wireguard_peer_last_handshake_age_seconds", peer="n2")
        assert age is not None and 0 <= age < 30
        assert (_value(samples, "pyralog_wireguard_peers") or 0) >= 3

        # Garbage at the node's UDP port: counted by reason.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for _ in range(3):
                udp.sendto(b"\x09not wireguard", ("127.0.0.1", n1.port))

        def malformed() -> float:
            found = _value(_local(n1_local), "pyralog_wireguard_drops_total", reason="malformed")
            return found or 0

        assert wait_until(lambda: malformed() >= 3, 10), malformed()

        # Over the mesh: an admin member may scrape, a client (node:9092 only) may not.
        n1_address = lab.address_of(n1)

        async def over_mesh(path: str, address: str = n1_address) -> tuple[int, str]:
            net = await EmbeddedNetwork.start(load(path))
            try:
                return await _get(lambda: net.open_connection(address, 9100))
            finally:
                await net.close()

        status, body = asyncio.run(over_mesh(str(ops)))
        assert status == 200, body
        assert _value(_samples(body), "pyralog_wireguard_peer_sent_bytes_total", peer="n2")
        status, body = asyncio.run(over_mesh(str(conf)))
        assert status == 403, body
        # The coordinator's, over the mesh, to an admin (it has no path from a client).
        address = str(JoinToken.decode(token).coordinator_address)
        status, body = asyncio.run(over_mesh(str(ops), address))
        assert status == 200, body
        assert _value(_samples(body), "pyralog_mesh_enrollment_admitted_total") == 2

        # The coordinator: two admitted enrollments, then one with a wrong secret.
        coordinator = _local(coordinator_local)
        assert _value(coordinator, "pyralog_mesh_enrollment_admitted_total") == 2
        refused = "pyralog_mesh_enrollment_refused_total"
        assert _value(coordinator, refused, reason="no_token") == 0
        assert (_value(coordinator, "pyralog_wireguard_peer_received_bytes_total",
                       peer="n1") or 0) > 0  # fmt: skip
        wrong = dataclasses.replace(JoinToken.decode(token), secret=os.urandom(32)).encode()
        lab.start_node("intruder", wrong, wait=False)

        def refusals() -> float:
            return _value(_local(coordinator_local), refused, reason="no_token") or 0

        assert wait_until(lambda: refusals() >= 1, 20), refusals()
        assert _value(_local(coordinator_local), "pyralog_mesh_enrollment_admitted_total") == 2


def test_a_taken_local_port_is_one_clear_error() -> None:
    with mesh_lab() as lab, socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        lab.start_coordinator()
        extra = f'[metrics]\nlisten = "127.0.0.1:{taken}"\n'
        node = lab.start_node("n1", lab.token(), extra=extra, wait=False)
        assert node.process.wait(20) != 0
        assert f"wireguard.toml: [metrics] listen: 127.0.0.1:{taken}:" in node.output()


@pytest.mark.privileged
@pytest.mark.slow
@pytest.mark.skipif(bool(missing_tools()) or not shutil.which("curl"), reason="needs TUN tools")
def test_userspace_backend_exports_what_peers_gives(tmp_path: Path) -> None:
    """A TUN node (``pyralog-wg``): bytes and handshake age from ``Backend.peers()``,
    scraped with curl from the other node's namespace, through the kernel."""
    with tun_lab(tmp_path) as make:
        names = ["node-1", "node-2"]
        t = make(names)
        t.start_coordinator()
        t.start_nodes(names, t.mesh.token(reusable=True))
        for name in names:
            t.mesh.wait_peers(t.nodes[name], {"coordinator", *names} - {name}, ENROLL_TIMEOUT)
        target = t.address("node-2")
        url = f"http://{target}:9100/metrics"

        def scrape() -> Samples:
            done = t.namespaces["node-1"].run("curl", "-sS", "--max-time", "10", url)
            return _samples(done.stdout)

        scrape()  # the first one makes traffic between the two
        samples = scrape()
        rx, tx = _bytes(samples, "node-1")
        assert rx > 0 and tx > 0
        age = _value(samples, "pyralog_wireguard_peer_last_handshake_age_seconds", peer="node-1")
        assert age is not None and 0 <= age < 60
        assert not any(name.endswith("_packets_total") for name, _ in samples)
