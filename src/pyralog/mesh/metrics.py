"""Prometheus metrics of a node or the coordinator: WireGuard peers, drops, enrollments.

Collectors, not global metrics: each computes its families from the live state at
scrape time (a Device, a backend's ``peers()``, the coordinator's ``Enrollment``), so
nothing is updated on the packet path and nothing can drift from what ``wg show`` or
``/v1/status`` say. Each process builds its own ``CollectorRegistry`` (never the
default global one), so tests can run several in one process.

What a backend can tell differs: the embedded backend's Device is read directly (bytes,
packets, handshake initiations and failures, drops by reason, cookie replies); for the
userspace and kernel backends only what ``Backend.peers()`` gives (bytes and the latest
handshake) is exported. docs/MESH.md ("Metrics") has the table of names.

``MetricsEndpoint`` answers ``GET /metrics`` for the mesh's h11 server (``http.py``);
who may ask over the mesh is the caller's business (the node and the coordinator apply
their role policy first).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pyralog.mesh import http
from pyralog.mesh.backend import PeerStatus
from pyralog.wireguard.device import Device

PEER_LABELS = ("peer", "public_key")
# Enrollment.admit's reasons (``refused_<reason>`` in its counters).
REFUSALS = ("no_token", "revoked", "expired", "used", "busy", "too_many_pending")
Names = Callable[[], Mapping[str, str]]  # public key (base64) -> node id, where known
Clock = Callable[[], float]  # wall-clock seconds (handshake times are wall-clock)


def _labels(names: Mapping[str, str], key: str) -> list[str]:
    return [names.get(key, key), key]


def _counter(name: str, documentation: str) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, labels=PEER_LABELS)


def _age(last: float | None, now: float) -> float:
    """Seconds since the latest handshake; NaN when there never was one (no fake 0)."""
    return math.nan if not last else max(0.0, now - last)


class _PeerFamilies:
    """The per-peer families both collectors fill, built once per scrape."""

    def __init__(self, packets: bool) -> None:
        p = "pyralog_wireguard_peer_"
        self.rx = _counter(p + "received_bytes", "Bytes received from the peer (UDP payloads)")
        self.tx = _counter(p + "sent_bytes", "Bytes sent to the peer (UDP payloads)")
        self.age = GaugeMetricFamily(
            p + "last_handshake_age_seconds",
            "Seconds since the latest completed handshake; NaN if none",
            labels=PEER_LABELS,
        )
        self.packets = packets
        self.rx_packets = _counter(p + "received_packets", "Datagrams received from the peer")
        self.tx_packets = _counter(p + "sent_packets", "Datagrams sent to the peer")
        self.initiations = _counter(
            p + "handshake_initiations", "Handshake initiations sent to the peer"
        )
        self.failures = _counter(
            p + "handshake_failures", "Handshake attempts given up (no answer within 90 s)"
        )
        self.count = 0

    def add(self, labels: list[str], rx: int, tx: int, last: float | None, now: float) -> None:
        self.count += 1
        self.rx.add_metric(labels, rx)
        self.tx.add_metric(labels, tx)
        self.age.add_metric(labels, _age(last, now))

    def families(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("pyralog_wireguard_peers", "Peers configured", value=self.count)
        yield from (self.rx, self.tx, self.age)
        if self.packets:
            yield from (self.rx_packets, self.tx_packets, self.initiations, self.failures)


class DeviceCollector(Collector):
    """Everything a sans-IO Device counts (the embedded backend, the coordinator)."""

    def __init__(self, device: Device, names: Names = dict, clock: Clock = time.time) -> None:
        self.device, self.names, self.clock = device, names, clock

    def collect(self) -> Iterable[Metric]:
        names, now = self.names(), self.clock()
        peers = _PeerFamilies(packets=True)
        for p in self.device.peers:
            labels = _labels(names, p.public_key.to_base64())
            peers.add(labels, p.rx_bytes, p.tx_bytes, p.last_handshake, now)
            peers.rx_packets.add_metric(labels, p.rx_packets)
            peers.tx_packets.add_metric(labels, p.tx_packets)
            peers.initiations.add_metric(labels, p.handshake_initiations)
            peers.failures.add_metric(labels, p.handshake_failures)
        yield from peers.families()
        drops = CounterMetricFamily(
            "pyralog_wireguard_drops", "Datagrams and packets dropped, by reason", labels=["reason"]
        )
        for reason, count in self.device.drops.items():
            drops.add_metric([reason], count)
        yield drops
        yield CounterMetricFamily(
            "pyralog_wireguard_cookie_replies_sent",
            "Cookie replies sent instead of answering a handshake (under load)",
            value=self.device.drops.get("cookie_sent", 0),
        )


class PeersCollector(Collector):
    """What ``Backend.peers()`` gives (userspace, kernel): bytes and handshake age.

    ``peers()`` is a coroutine and ``collect`` is not, so the endpoint refreshes this
    snapshot just before each scrape (``MetricsEndpoint``)."""

    def __init__(self, names: Names = dict, clock: Clock = time.time) -> None:
        self.names, self.clock = names, clock
        self.snapshot: list[PeerStatus] = []

    def collect(self) -> Iterable[Metric]:
        names, now = self.names(), self.clock()
        peers = _PeerFamilies(packets=False)
        for p in self.snapshot:
            labels = _labels(names, p.public_key.to_base64())
            peers.add(labels, p.rx_bytes, p.tx_bytes, p.last_handshake, now)
        yield from peers.families()


class EnrollmentCollector(Collector):
    """The coordinator's enrollment decisions (``Enrollment.counters``)."""

    def __init__(self, counters: Callable[[], Mapping[str, int]]) -> None:
        self.counters = counters

    def collect(self) -> Iterable[Metric]:
        counts = self.counters()
        yield CounterMetricFamily(
            "pyralog_mesh_enrollment_admitted",
            "Enrolling keys admitted with a live token's proof",
            value=counts.get("admitted", 0),
        )
        refused = CounterMetricFamily(
            "pyralog_mesh_enrollment_refused",
            "Enrolling initiations refused, by reason",
            labels=["reason"],
        )
        # The known reasons always (a zero is data too), and any other the counters hold.
        reasons = {f"refused_{r}": r for r in REFUSALS}
        reasons |= {k: k.removeprefix("refused_") for k in counts if k.startswith("refused_")}
        for key, reason in reasons.items():
            refused.add_metric([reason], counts.get(key, 0))
        yield refused
        yield CounterMetricFamily(
            "pyralog_mesh_enrollment_expired",
            "Admitted keys that never registered (dropped after the provisional TTL)",
            value=counts.get("provisional_expired", 0),
        )


class MetricsEndpoint:
    """``GET /metrics`` in the Prometheus text format, from one process's registry."""

    def __init__(
        self, collectors: Iterable[Collector], refresh: Callable[[], Awaitable[Any]] | None = None
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        for collector in collectors:
            self.registry.register(collector)
        self.refresh = refresh

    async def handle(self, request: http.Request) -> http.Response:
        if (request.method, request.path) != ("GET", "/metrics"):
            return http.Response(404, {"error": f"no route {request.method} {request.path}"})
        return await self.response()

    async def response(self) -> http.Response:
        if self.refresh is not None:
            await self.refresh()
        return http.Response(200, generate_latest(self.registry), content_type=CONTENT_TYPE_LATEST)

    async def serve_local(self, listen: tuple[str, int], config_path: object) -> asyncio.Server:
        """The endpoint on a local address too (``[metrics] listen``); an OSError that names
        the config key if the address cannot be bound."""
        host, port = listen
        try:
            return await asyncio.start_server(
                lambda r, w: http.serve_connection(r, w, self.handle), host, port
            )
        except OSError as e:
            where = f"{config_path}: [metrics] listen: {host}:{port}"
            raise OSError(e.errno, f"{where}: {e.strerror or e}") from None
