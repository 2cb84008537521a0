"""``pyralog coordinator``: the cluster's source of truth, itself a WireGuard peer.

It runs embedded (its own Device and netstack in this process, no privileges): members
reach it over UDP whatever their own backend. Its API (``pyralog.mesh.api``) listens
only on its mesh address, inside the tunnel, plus a local Unix socket for
``pyralog-admin``. Its Device admits enrolling nodes through ``pyralog.mesh.enrollment``
and holds every member as a peer, kept in step with the store by the same diff the
agents use. State is in the store, so a restart (or a second coordinator on one etcd)
carries on where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from pyralog.link.control import PeerChange, SetRequest
from pyralog.mesh import http
from pyralog.mesh.api import CoordinatorApi
from pyralog.mesh.audit_service import AuditTrail
from pyralog.mesh.audit_sessions import PeerCounters
from pyralog.mesh.coordinator_config import CoordinatorConfig
from pyralog.mesh.diff import Wanted, plan
from pyralog.mesh.enrollment import Enrollment
from pyralog.mesh.health import health
from pyralog.mesh.keyfile import load_or_create
from pyralog.mesh.model import NodeRecord
from pyralog.mesh.policy import MeshSettings
from pyralog.mesh.registry import Conflict, Identity, Registry
from pyralog.mesh.store import Store, open_log_store, open_store
from pyralog.mesh.topology import Coordinator, host_network, peers_for
from pyralog.netstack.embedded import EmbeddedTunnel
from pyralog.tasks import cancel_and_wait
from pyralog.wireguard.config import Config, InterfaceConfig
from pyralog.wireguard.keys import PresharedKey, PublicKey

HOUSEKEEPING = 1.0
ENROLLED_GRACE = 10.0  # a new member keeps its provisional address this long
REFUSAL_LINGER = 1.0  # a refused enrollment's peer outlives the refusal this long
NO_PSK = PresharedKey(bytes(32))


def _log(message: str) -> None:
    print(f"pyralog coordinator: {message}", file=sys.stderr, flush=True)


class CoordinatorService:
    def __init__(self, config: CoordinatorConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock  # wall-clock time for status (handshake ages); tests pass a fake
        self.settings: MeshSettings = config.settings
        self.enrollment = Enrollment()
        self.api = CoordinatorApi(self)
        self.tunnel: EmbeddedTunnel | None = None
        self.registry: Registry | None = None  # type: ignore[assignment]
        self._members: dict[str, NodeRecord] = {}  # public key -> record
        self._applied: dict[str, Wanted] = {}
        # Members' reports of their peers, for status only. Kept here, not in the store:
        # a store write wakes every long-poll, and 50 members reporting every 10 s made
        # the coordinator recompute 250 views a second (bench/mesh.py found it).
        self.reports: dict[str, tuple[dict[str, Any], float]] = {}
        self.log_store: Store | None = None  # brokers' cluster state (store_remote.py)
        self._nodes_cache: tuple[int, list[NodeRecord]] | None = None
        self._recent: dict[str, tuple[str, float]] = {}  # key -> (provisional address, until)
        self._tasks: list[asyncio.Task[None]] = []
        self._servers: list[Any] = []
        self.trail = AuditTrail(None, "not started")
        self.public_key = ""
        self.metrics: Any = None  # pyralog.mesh.metrics.MetricsEndpoint, if enabled

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        key, created = load_or_create(cfg.private_key_file)
        if created:
            _log(f"made a new key pair: {cfg.private_key_file}")
        self.public_key = key.public_key.to_base64()
        identity = Identity(
            cfg.cluster_id,
            Coordinator(self.public_key, str(cfg.address), cfg.endpoints),
            cfg.api_port,
        )
        store = open_store(cfg.store, cfg.base)
        self.registry = Registry(store, identity)
        self.log_store = open_log_store(cfg.store, cfg.base)
        if await self.registry.publish_settings(self.settings):
            _log("published topology and policy to the store")
        self.trail = AuditTrail.open(cfg.audit_log)
        if self.trail.trail is None:
            _log(f"audit trail disabled: {self.trail.reason}")
        prefix = cfg.settings.network.prefixlen
        interface = InterfaceConfig(
            key,
            addresses=[ipaddress.ip_interface(f"{cfg.address}/{prefix}")],
            listen_port=cfg.listen_port,
        )
        self.tunnel = await EmbeddedTunnel.start(Config(interface, [], path=cfg.path))
        device = self.tunnel.device
        self.enrollment.clock_offset = device.clock_offset
        device.unknown_initiator_policy = self.enrollment.admit
        device.mac2_proof_check = self.enrollment.pre_check
        await self._sync()
        server = await self.tunnel.start_server(
            lambda r, w: http.serve_connection(r, w, self.api.handle_mesh),
            host=str(cfg.address),
            port=cfg.api_port,
        )
        self._servers.append(server)
        await self._serve_metrics()
        cfg.admin_socket.unlink(missing_ok=True)
        old_umask = os.umask(0o177)  # the socket is born 0600: admin authority
        try:
            admin = await asyncio.start_unix_server(
                lambda r, w: http.serve_connection(r, w, self.api.handle_admin_socket),
                path=str(cfg.admin_socket),
            )
        finally:
            os.umask(old_umask)
        self._servers.append(admin)
        self._tasks = [
            asyncio.create_task(self._watch_store()),
            asyncio.create_task(self._housekeeping()),
            asyncio.create_task(self.trail.run_sessions(self._peer_counters)),
        ]
        _log(
            f"cluster {cfg.cluster_id!r}, mesh {cfg.settings.network}, public key {self.public_key}"
        )
        _log(
            f"WireGuard on UDP {self.tunnel.listen_port}, API on {cfg.address}:{cfg.api_port} "
            f"(mesh only), admin socket {cfg.admin_socket}, store {store.url}"
        )

    async def _serve_metrics(self) -> None:
        """Prometheus ``GET /metrics`` (``[metrics]``): the Device's counters and the
        enrollment decisions, on the mesh address (members whose role the policy lets
        reach the port) and on ``listen`` if set."""
        settings = self.config.metrics
        if not settings.enabled:
            return
        from pyralog.mesh import metrics

        assert self.tunnel is not None
        self.metrics = metrics.MetricsEndpoint([
            metrics.DeviceCollector(self.tunnel.device, self._names),
            metrics.EnrollmentCollector(lambda: self.enrollment.counters),
        ])  # fmt: skip
        server = await self.tunnel.start_server(
            lambda r, w: http.serve_connection(r, w, self._metrics_mesh),
            host=str(self.config.address),
            port=settings.port,
        )
        self._servers.append(server)
        if settings.listen is not None:
            self._servers.append(await self.metrics.serve_local(settings.listen, self.config.path))
            host, port = settings.listen
            _log(f"metrics on {host}:{port} (local) and port {settings.port}")

    def _names(self) -> dict[str, str]:
        return {key: record.node_id for key, record in self._members.items()}

    async def _metrics_mesh(self, request: http.Request) -> http.Response:
        """Only members whose role the policy lets reach this port on the coordinator."""
        key = self.key_of(request.peer[0]) if request.peer else None
        member = self.member(key) if key is not None else None
        port = self.config.metrics.port
        if member is None or not self.settings.policy.permits(member.role, "coordinator", port):
            return http.Response(403, {"error": f"may not reach port {port} here"})
        return await self.metrics.handle(request)

    async def reload(self) -> None:
        """SIGHUP: re-read the topology and policy from the config file and push them
        (through the store, so every member's view changes within one update)."""
        from pyralog.mesh import coordinator_config
        from pyralog.mesh.tomlsection import ConfigError

        assert self.registry is not None
        try:
            fresh = coordinator_config.load(self.config.path)
        except ConfigError as e:
            _log(f"reload refused, keeping the running settings: {e}")
            return
        if fresh.settings.network != self.config.settings.network:
            _log("reload: [coordinator] network cannot change at runtime; ignored")
            return
        if await self.registry.publish_settings(fresh.settings):
            self.settings = fresh.settings
            self.audit("settings_changed", topology=fresh.settings.topology)
            _log(f"reloaded topology {fresh.settings.topology!r} and policy; pushing")
        else:
            _log("reload: topology and policy unchanged")

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
        for server in self._servers:
            server.close()
        if self.tunnel is not None:
            await self.tunnel.close()
        if self.registry is not None:
            await self.registry.store.close()
        if self.log_store is not None:
            await self.log_store.close()
        self.config.admin_socket.unlink(missing_ok=True)

    # -- keeping the Device in step with the store ---------------------------------------

    async def _watch_store(self) -> None:
        assert self.registry is not None
        revision = -1
        while True:
            try:
                revision = await self.registry.store.wait(revision, 5.0)
                await self._sync()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the store may be down: keep the last state, retry
                _log(f"store: {e}")
                await asyncio.sleep(1.0)

    async def _sync(self) -> None:
        assert self.registry is not None and self.tunnel is not None
        nodes = await self.registry.nodes()
        self.enrollment.update_tokens(await self.registry.tokens())
        revoked = [PublicKey.from_base64(r.public_key) for r in await self.registry.revoked()]
        self.enrollment.update_revoked(revoked)
        with contextlib.suppress(Conflict):
            self.settings = await self.registry.settings()
        self._members = {n.public_key: n for n in nodes}
        wanted = []
        for n in nodes:
            recent = self._recent.get(n.public_key)
            if recent is not None:  # just enrolled: see ``enroll``
                allowed = (host_network(n.address), host_network(recent[0]))
                wanted.append(Wanted(n.public_key, None, allowed))
            else:
                endpoint = n.endpoints[0] if n.endpoints else None
                wanted.append(Wanted(n.public_key, endpoint, (host_network(n.address),)))
        keep = [k.to_base64() for k in self.enrollment.pending]
        change, self._applied = plan(self._applied, wanted, keep=keep)
        if change is not None:
            self.tunnel.apply(change)

    async def _housekeeping(self) -> None:
        assert self.tunnel is not None
        while True:
            await asyncio.sleep(HOUSEKEEPING)
            now = self.tunnel.now()
            expired = self.enrollment.expired(now)
            for key in expired:
                if key.to_base64() not in self._members:
                    self.tunnel.apply(SetRequest(peers=[PeerChange(key, remove=True)]))
                    self.audit("enrollment_abandoned", public_key=key.to_base64())
            done = [k for k, (_, until) in self._recent.items() if until <= now]
            for k in done:
                del self._recent[k]
            if done:
                await self._sync()
            for line in self.enrollment.drain_audit():
                self._write_audit(line)
            self.tunnel.device.events()  # drained: the coordinator reads peers directly

    # -- audit --------------------------------------------------------------------------

    def audit(self, event: str, **fields: Any) -> None:
        self._write_audit({"event": event, **fields})

    def _write_audit(self, line: dict[str, Any]) -> None:
        fields = {k: v for k, v in line.items() if k != "event"}
        self.trail.record(str(line["event"]), fields)
        if str(line.get("event", "")).startswith("enrollment_refused"):
            _log(f"{line['event']}: key {line.get('public_key')} from {line.get('endpoint')}")

    async def _peer_counters(self) -> list[PeerCounters]:
        """Each member's session counters, for the audit trail's session entries."""
        assert self.tunnel is not None
        out = []
        for peer in self.tunnel.device.peers():
            key = peer.public_key.to_base64()
            member = self._members.get(key)
            name = member.node_id if member is not None else key
            out.append(PeerCounters(name, key, peer.last_handshake, peer.rx_bytes, peer.tx_bytes))
        return out

    # -- what the API asks --------------------------------------------------------------

    def key_of(self, address: str) -> PublicKey | None:
        assert self.tunnel is not None
        return self.tunnel.peer_of(address)

    def is_enrolling(self, key: PublicKey, address: str) -> bool:
        pending = self.enrollment.pending.get(key)
        return pending is not None and str(pending.address) == address

    def member(self, key: PublicKey) -> NodeRecord | None:
        return self._members.get(key.to_base64())

    def coordinator(self) -> Coordinator:
        assert self.registry is not None
        return self.registry.identity.coordinator

    def save_report(self, node_id: str, report: dict[str, Any]) -> None:
        self.reports[node_id] = (report, time.time())

    async def nodes_now(self) -> list[NodeRecord]:
        """Every member, read once per store revision however many polls ask."""
        assert self.registry is not None
        revision = await self.registry.store.revision()
        cached = self._nodes_cache
        if cached is not None and cached[0] == revision:
            return cached[1]
        nodes = await self.registry.nodes()
        self._nodes_cache = (revision, nodes)
        return nodes

    async def view_of(self, node_id: str) -> dict[str, Any] | None:
        assert self.registry is not None
        nodes = await self.nodes_now()
        me = next((n for n in nodes if n.node_id == node_id), None)
        if me is None:
            return None
        settings = self.settings
        peers = peers_for(me, nodes, settings, self.coordinator())
        directory = [n.public() for n in nodes if settings.policy.linked(me.role, n.role)]
        return {
            "self": me.public(),
            "peers": [p.to_json() for p in peers],
            "directory": directory,
            "settings": settings.to_json(),
        }

    async def welcome(self, record: NodeRecord) -> dict[str, Any]:
        coordinator = self.coordinator()
        return {
            "node": record.public(),
            "cluster_id": self.config.cluster_id,
            "network": str(self.settings.network_for(record.region)),
            "coordinator": {
                "public_key": coordinator.public_key,
                "address": coordinator.address,
                "endpoints": list(coordinator.endpoints),
                "api_port": self.config.api_port,
            },
        }

    def _observed_endpoint(self, key: str, port: int | None = None) -> str | None:
        assert self.tunnel is not None
        peer = self.tunnel.device.get_peer(PublicKey.from_base64(key))
        if peer is None or peer.endpoint is None:
            return None
        host, seen_port = peer.endpoint[0], peer.endpoint[1]
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{port or seen_port}"

    async def observe_endpoint(self, node_id: str) -> None:
        """Record where the member's packets really come from (roaming, NAT)."""
        assert self.registry is not None
        record = await self.registry.node(node_id)
        if record is None:
            return
        seen = self._observed_endpoint(record.public_key)
        if seen is not None and (record.endpoints[:1] != [seen] or record.state != "active"):
            await self.registry.update_endpoints(node_id, [seen], time.time())

    async def enroll(self, key: PublicKey, node_id: str, listen_port: int) -> NodeRecord:
        assert self.registry is not None and self.tunnel is not None
        pending = self.enrollment.pending.get(key)
        if pending is None:
            raise Conflict("no enrollment in progress for this key")
        token = next((t for t in await self.registry.tokens() if t.id == pending.token_id), None)
        if token is None:
            raise Conflict("the token was deleted")
        why = token.refusal(time.time())
        if why is not None:
            # Admitted before another coordinator (or request) used the token up.
            self._drop_provisional(key)
            raise Conflict(f"token {token.id} is {why}")
        existing = await self.registry.node(node_id)
        existed = existing is not None
        if existing is not None and existing.public_key != key.to_base64() and token.reusable:
            # Two machines configured with one id, or a hijack attempt: only a one-time
            # token (issued for exactly this node) may give an existing id a new key.
            self._drop_provisional(key)
            raise Conflict(
                f"node id {node_id!r} belongs to another key; re-enroll it with a one-time "
                f"token, or remove it first (pyralog-admin node remove {node_id})"
            )
        # Before the store changes (a sync may run at once): the answer to this request
        # still goes to the provisional address and the enrollment tunnel's port, so
        # both stay for ENROLLED_GRACE (see _sync).
        self._recent[key.to_base64()] = (str(pending.address), self.tunnel.now() + ENROLLED_GRACE)
        try:
            return await self._register_enrolled(key, node_id, listen_port, token, existed)
        except BaseException:
            self._recent.pop(key.to_base64(), None)
            raise

    async def _register_enrolled(
        self, key: PublicKey, node_id: str, listen_port: int, token: Any, existed: bool
    ) -> NodeRecord:
        assert self.registry is not None and self.tunnel is not None
        endpoint = self._observed_endpoint(key.to_base64(), listen_port)
        record = await self.registry.register(
            node_id,
            key.to_base64(),
            role=token.role,
            region=token.region,
            endpoints=[endpoint] if endpoint else [],
            token_id=token.id,
            now=time.time(),
        )
        try:
            await self.registry.use_token(token.id, node_id, time.time())
        except Conflict:
            if not existed:
                await self.registry.remove(node_id)
            self._drop_provisional(key)
            raise
        finally:
            await self.refresh_tokens()  # a used-up token must not admit anyone else
        self.enrollment.finish(key)
        self.tunnel.device.confirm_peer(key)
        # The provisional session used the token's PSK; the member's own use none (the
        # old key stays valid for the PSK grace period, so this session goes on).
        self.tunnel.apply(SetRequest(peers=[PeerChange(key, preshared_key=NO_PSK)]))
        self._members[key.to_base64()] = record
        self.audit(
            "node_enrolled",
            node_id=node_id,
            public_key=key.to_base64(),
            token_id=token.id,
            address=record.address,
        )
        _log(f"enrolled {node_id} ({token.role}) at {record.address}")
        return record

    def _drop_provisional(self, key: PublicKey) -> None:
        """Forget a refused enrollment. The peer itself goes once the refusal is sent
        (``forget_refused``, run by the API after its answer), or else it would never
        reach the node."""
        self.enrollment.finish(key)

    def forget_refused(self, key: PublicKey) -> None:
        # Written is not yet sent: the netstack encrypts on its next turn and may have to
        # retransmit, so the peer stays a moment longer.
        def drop() -> None:
            busy = key.to_base64() in self._members or key in self.enrollment.pending
            if self.tunnel is not None and not busy:
                self.tunnel.apply(SetRequest(peers=[PeerChange(key, remove=True)]))

        asyncio.get_running_loop().call_later(REFUSAL_LINGER, drop)

    async def refresh_tokens(self) -> None:
        assert self.registry is not None
        self.enrollment.update_tokens(await self.registry.tokens())

    async def status(self) -> dict[str, Any]:
        assert self.registry is not None and self.tunnel is not None
        device = self.tunnel.device
        now = self.clock()
        members = []
        for node in await self.registry.nodes():
            peer = device.get_peer(PublicKey.from_base64(node.public_key))
            handshake = peer.last_handshake if peer else None
            members.append(
                {
                    **node.public(),
                    "state": node.state,
                    "endpoint": self._observed_endpoint(node.public_key),
                    "latest_handshake": handshake,
                    "rx_bytes": peer.rx_bytes if peer else 0,
                    "tx_bytes": peer.tx_bytes if peer else 0,
                    "health": health(handshake, node.state, now, self.config.health),
                    "report": self.reports.get(node.node_id, (None, None))[0],
                    "reported_at": self.reports.get(node.node_id, (None, None))[1],
                }
            )
        return {
            "cluster_id": self.config.cluster_id,
            "now": now,
            "coordinator": {
                **self.welcome_coordinator(),
                "listen_port": self.tunnel.listen_port,
            },
            "settings": self.settings.to_json(),
            "health_thresholds": dict(self.config.health.__dict__),
            "enrollment": dict(self.enrollment.counters),
            "drops": {k: v for k, v in device.drops.items() if v},
            "members": members,
        }

    def welcome_coordinator(self) -> dict[str, Any]:
        c = self.coordinator()
        return {"public_key": c.public_key, "address": c.address, "endpoints": list(c.endpoints)}


async def run(config: CoordinatorConfig, stop: asyncio.Event) -> None:
    service = CoordinatorService(config)
    await service.start()
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        task = asyncio.create_task(service.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGHUP)
        await service.close()
