"""``pyralog node``: one member of the mesh, from ``wireguard.toml`` to live peers.

Start-up: load and check the config; load the private key (made on first boot); enroll
with the token if this key is not a member yet (``pyralog.mesh.join``), else reconnect
with the saved state; bring up the backend (``[wireguard] backend``, ``auto`` explained
in the log); run the agent. A config without ``[bootstrap]`` is a static mesh: its
``[interface] address`` and ``[[peer]]`` tables, as wg-quick would do.

The node serves on its mesh address a small identity service (``INFO_PORT``:
``GET /v1/whoami`` answers who the caller is, as cryptokey routing and the directory say,
and refuses roles the policy keeps out), and on a local Unix socket (``node.sock`` next
to the config, 0600) its status and ``GET /v1/probe?address=A&port=P``, which opens a
TCP connection over the mesh from this node.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import ipaddress
import os
import sys
import time
from pathlib import Path
from typing import Any

from pyralog.link.control import ConfigChangeError, PeerChange, SetRequest
from pyralog.mesh import http
from pyralog.mesh.agent import Agent
from pyralog.mesh.audit_service import AuditTrail, backend_counters
from pyralog.mesh.backend import Backend, BackendSpec, choose, start_backend
from pyralog.mesh.config import MeshConfig, MeshConfigError
from pyralog.mesh.diff import Wanted
from pyralog.mesh.identity import Directory
from pyralog.mesh.join import enroll
from pyralog.mesh.keyfile import load_or_create
from pyralog.mesh.resolve import Resolver
from pyralog.mesh.state import NodeState
from pyralog.mesh.token import JoinToken, TokenError
from pyralog.tasks import cancel_and_wait
from pyralog.wireguard.endpoint import EndpointError, parse_endpoint
from pyralog.wireguard.keys import PresharedKey, PrivateKey, PublicKey

INFO_PORT = 7701
ROAMING_CHECK = 2.0  # seconds between looks at where roaming peers (stock clients) are
ROAMING_KEY = "roaming_endpoints"  # in NodeState.extra


def _log(message: str) -> None:
    print(f"pyralog node: {message}", file=sys.stderr, flush=True)


def _endpoint_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_endpoint(text: str) -> tuple[str, int] | None:
    try:
        return parse_endpoint(text)
    except EndpointError:
        return None


class NodeError(Exception):
    """The node cannot start; the message says why."""


class MeshNode:
    def __init__(self, config: MeshConfig) -> None:
        self.config = config
        self.key: PrivateKey | None = None
        self.state: NodeState | None = None
        self.backend: Backend | None = None
        self.agent: Agent | None = None
        self.directory = Directory()
        self.socket_path = Path(config.path).resolve().parent / "node.sock"
        self._servers: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.started_at = time.time()
        self.forwarding = False
        self.broker: Any = None
        self.metrics: Any = None  # pyralog.mesh.metrics.MetricsEndpoint, if [metrics] enabled

    # -- start-up -------------------------------------------------------------------------

    def _token(self) -> JoinToken | None:
        boot = self.config.bootstrap
        if boot is None:
            return None
        text = boot.token
        if text is None and boot.token_file is not None:
            try:
                text = boot.token_file.read_text(encoding="utf-8")
            except OSError as e:
                raise NodeError(f"{boot.token_file}: cannot read the token: {e}") from None
        if text is None:
            return None
        try:
            token = JoinToken.decode(text)
        except TokenError as e:
            where = boot.token_file or f"{self.config.path}: [bootstrap] token"
            raise NodeError(f"{where}: {e}") from None
        if boot.cluster_id is not None and boot.cluster_id != token.cluster_id:
            raise NodeError(
                f"{self.config.path}: [bootstrap] cluster_id is {boot.cluster_id!r} but the "
                f"token is for cluster {token.cluster_id!r}"
            )
        return token

    async def _membership(self, key: PrivateKey) -> NodeState:
        path = NodeState.path_for(self.config.private_key_file)
        state = NodeState.load(path)
        public = key.public_key.to_base64()
        if state is not None and state.public_key == public:
            if self.config.node_id and state.node_id != self.config.node_id:
                raise NodeError(
                    f"this key is enrolled as {state.node_id!r}, not {self.config.node_id!r}; "
                    f"delete {path} to enroll again"
                )
            _log(f"member {state.node_id} at {state.address} (state {path})")
            return state
        token = self._token()
        if token is None:
            raise NodeError(
                f"{self.config.path}: not enrolled yet and no token: set [bootstrap] token "
                "or token_file (pyralog-admin token create prints one)"
            )
        node_id = self.config.node_id or os.uname().nodename
        boot = self.config.bootstrap
        endpoints = boot.coordinator_endpoints if boot else ()
        _log(f"enrolling {node_id} with token {token.id} ...")
        welcome = await enroll(
            key, token, node_id, self.config.listen_port, endpoints=tuple(endpoints)
        )
        node = welcome["node"]
        state = NodeState(
            node_id=node["node_id"],
            public_key=public,
            address=node["address"],
            network=welcome["network"],
            cluster_id=welcome["cluster_id"],
            coordinator=welcome["coordinator"],
            role=node["role"],
        )
        state.save(path)
        _log(f"enrolled as {state.node_id} ({state.role}) at {state.address}")
        return state

    def _static_peers(self) -> list[Wanted]:
        peers = []
        for p in self.config.peers:
            endpoint = _endpoint_text(*p.endpoint) if p.endpoint else None
            peers.append(
                Wanted(
                    p.public_key.to_base64(),
                    endpoint,
                    tuple(str(n) for n in p.allowed_ips),
                    p.persistent_keepalive,
                )
            )
        return peers

    async def start(self) -> None:
        cfg = self.config
        for notice in cfg.notices:
            _log(notice)
        key, created = load_or_create(cfg.private_key_file)
        self.key = key
        if created:
            _log(f"made a new key pair: {cfg.private_key_file} (public {key.public_key})")
        kind, why = choose(cfg.backend)
        if cfg.bootstrap is not None:
            self.state = await self._membership(key)
            network = ipaddress.ip_network(self.state.network)
            addresses = (ipaddress.ip_interface(f"{self.state.address}/{network.prefixlen}"),)
            if cfg.addresses and cfg.addresses[0].ip != addresses[0].ip:
                _log(
                    f"[interface] address {cfg.addresses[0]} ignored: the coordinator gave "
                    f"{self.state.address}"
                )
        else:
            if not cfg.addresses:
                raise MeshConfigError(
                    f"{cfg.path}: [interface] address: required without [bootstrap]"
                )
            addresses = cfg.addresses
        spec = BackendSpec(key, addresses, cfg.listen_port, cfg.mtu, cfg.interface_name)
        _log(f"backend {kind} ({why})")
        self.backend = await start_backend(kind, spec)
        await self._static_psks()
        if self.state is not None:
            boot = cfg.bootstrap
            endpoints = (
                [_endpoint_text(h, p) for h, p in boot.coordinator_endpoints] if boot else []
            )
            self.agent = Agent(
                self.backend,
                self.state.coordinator,
                endpoints=endpoints,
                static=self._static_peers(),
                directory=self.directory,
                on_view=self._save_view,
                role=self.state.role,
            )
            # The last known peers first: a node whose coordinator is down still meshes.
            await self.agent.apply_view(self.state.view)
            # Then the current ones, before we say we are up, so that peers which already
            # know us are not left waiting for a handshake retry (5 s).
            try:
                await self.agent.poll_once(wait=0)
            except http.HttpError as e:
                _log(f"coordinator not reachable yet ({e}); starting with the last known peers")
            await self._greet_peers()
            # The node's own signed trail (its sessions with each peer), beside its key.
            trail = AuditTrail.open(cfg.private_key_file.with_name("audit.log"))
            trail.record("started", {"node_id": self.state.node_id, "address": self.state.address})
            counters = functools.partial(backend_counters, self.backend, self._names)
            self._tasks += [
                asyncio.create_task(self.agent.run()),
                asyncio.create_task(self.agent.report_loop()),
                asyncio.create_task(self._remember_roaming()),
                asyncio.create_task(trail.run_sessions(counters)),
            ]
        else:
            from pyralog.mesh.diff import plan

            resolver = Resolver()
            static = [
                dataclasses.replace(w, endpoint=await resolver.resolve(w.endpoint))
                for w in self._static_peers()
            ]
            change, _ = plan({}, static)
            if change is not None:
                await self.backend.apply(change)
        await self._serve()
        await self._start_broker()
        broker = f", log broker on port {self.config.log.port}" if self.broker else ""
        _log(
            f"up: {', '.join(str(a) for a in addresses)} on UDP {self.backend.listen_port}, "
            f"identity service on port {INFO_PORT}{broker}, local socket {self.socket_path}"
        )

    async def _start_broker(self) -> None:
        """The node's Kafka-protocol broker on its mesh address (``[log]``)."""
        if not self.config.log.enabled:
            return
        from pyralog.mesh.node_broker import start_broker

        assert self.backend is not None
        self.broker = await start_broker(
            self.config.log,
            self.backend.network,
            state=self.state,
            directory=self.directory,
            agent=self.agent,
        )

    async def _greet_peers(self) -> None:
        """Handshake with every peer now. After a restart our peers still hold sessions
        we forgot; without this they would send into them until WireGuard gives up on
        them (15 s). Where the backend can start a handshake (embedded: directly;
        userspace: over UAPI, see ``UserspaceBackend.rekey``). Not the kernel backend:
        its rekey is untested against a real kernel, so it is not used at start-up.

        Not the peers we already have a session with (the coordinator, reached a moment
        ago): a second initiation so soon (a peer answers one per 20 ms) would be
        dropped as a flood, and our session with it, until WireGuard retries (5 s)."""
        assert self.backend is not None and self.agent is not None
        if self.backend.name not in ("embedded", "userspace"):
            return
        met = {p.public_key.to_base64() for p in await self.backend.peers() if p.last_handshake}
        # Roaming peers (stock clients: the coordinator has no endpoint for them) where
        # they last reached us; they too hold a session we forgot.
        remembered = {
            key: endpoint
            for key, text in self._roaming().items()
            if (w := self.agent.applied.get(key)) is not None and w.endpoint is None
            and key not in met and (endpoint := _parse_endpoint(text)) is not None
        }  # fmt: skip
        if remembered:
            changes = [PeerChange(PublicKey.from_base64(k), update_only=True, endpoint=e)
                       for k, e in remembered.items()]  # fmt: skip
            with contextlib.suppress(ConfigChangeError):
                await self.backend.apply(SetRequest(peers=changes))
        for key, wanted in self.agent.applied.items():
            if (wanted.endpoint is not None or key in remembered) and key not in met:
                await self.backend.rekey(PublicKey.from_base64(key))

    def _roaming(self) -> dict[str, str]:
        """Public key -> ``host:port`` of each roaming peer as last seen (node state)."""
        if self.state is None:
            return {}
        found = self.state.extra.get(ROAMING_KEY)
        return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}

    async def _remember_roaming(self) -> None:
        """Keep in the node state where each roaming peer last reached us (a stock
        client, whose endpoint only its own packets tell), so that a restarted node can
        greet it too: without that the client goes on sending into the session this
        node forgot until its WireGuard gives up on it (15 s) and handshakes again."""
        while True:
            await asyncio.sleep(ROAMING_CHECK)
            with contextlib.suppress(Exception):  # best effort, like the reports
                await self._note_roaming()

    async def _note_roaming(self) -> None:
        assert self.backend is not None and self.agent is not None
        roaming = {k for k, w in self.agent.applied.items() if w.endpoint is None}
        seen = {
            key: _endpoint_text(*p.endpoint)
            for p in await self.backend.peers()
            if (key := p.public_key.to_base64()) in roaming
            and p.endpoint is not None and p.last_handshake
        }  # fmt: skip
        known = self._roaming()
        now = {k: v for k, v in {**known, **seen}.items() if k in roaming}
        if now != known and self.state is not None:
            self.state.extra[ROAMING_KEY] = now
            self.state.save(NodeState.path_for(self.config.private_key_file))

    async def _static_psks(self) -> None:
        assert self.backend is not None
        changes = []
        for p in self.config.peers:
            if p.preshared_key_file is not None:
                try:
                    text = p.preshared_key_file.read_text(encoding="ascii").strip()
                    psk = PresharedKey.from_base64(text)
                except (OSError, ValueError) as e:
                    raise NodeError(f"{p.preshared_key_file}: {e}") from None
                changes.append(PeerChange(p.public_key, preshared_key=psk))
        if changes:
            await self.backend.apply(SetRequest(peers=changes))

    def _save_view(self, view: dict[str, Any]) -> None:
        if self.state is None:
            return
        self.state.view = view
        self.state.save(NodeState.path_for(self.config.private_key_file))
        settings = view["settings"]
        me = view["self"]
        hub = settings["topology"] != "full-mesh" and (
            me["role"] == "gateway" or me["node_id"] in settings["hubs"]
        )
        if hub != self.forwarding and self.backend is not None:
            self.forwarding = hub
            what = "forwarding" if hub else "not forwarding"
            _log(f"{what} between peers ({settings['topology']})")
            forward = self.backend.set_forwarding(hub, self.directory.may_forward)
            self._tasks.append(asyncio.create_task(forward))

    async def _serve(self) -> None:
        assert self.backend is not None
        network = self.backend.network
        for address in network.addresses:
            server = await network.start_server(
                lambda r, w: http.serve_connection(r, w, self._info),
                host=str(address),
                port=INFO_PORT,
            )
            self._servers.append(server)
        from pyralog.mesh import node_metrics

        await node_metrics.serve(self)
        self.socket_path.unlink(missing_ok=True)
        old = os.umask(0o177)
        try:
            local = await asyncio.start_unix_server(
                lambda r, w: http.serve_connection(r, w, self._local),
                path=str(self.socket_path),
            )
        finally:
            os.umask(old)
        self._servers.append(local)

    def _names(self) -> dict[str, str]:
        """Public key -> node id of the peers this node knows (metrics' ``peer`` label)."""
        if self.agent is None:
            return {}
        names = {p["public_key"]: p["node_id"] for p in (self.agent.view or {}).get("peers", [])}
        names[self.agent.coordinator_key] = "coordinator"
        return names

    # -- services ------------------------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        return {
            "node_id": self.state.node_id if self.state else None,
            "role": self.state.role if self.state else None,
            "addresses": [str(a) for a in self.backend.network.addresses] if self.backend else [],
        }

    async def _info(self, request: http.Request) -> http.Response:
        routes = (("GET", "/v1/whoami"), ("GET", "/v1/log/replication"))
        if (request.method, request.path) not in routes:
            return http.Response(404, {"error": f"no route {request.method} {request.path}"})
        peer = request.peer[0] if request.peer else ""
        member = self.directory.lookup(peer)
        if self.state is not None and not self.directory.permits(peer, INFO_PORT):
            return http.Response(403, {"error": f"{peer} may not reach port {INFO_PORT} here"})
        if request.path == "/v1/log/replication":
            return self._replication()
        you = None if member is None else member.__dict__
        return http.Response(200, {"you": you, "address": peer, "me": self.whoami()})

    def _replication(self) -> http.Response:
        """What this broker leads, with each follower's lag (``pyralog-admin --host`` over
        the mesh; ``pyralog up``'s status on the local socket)."""
        replication = self.broker.ctx.replication if self.broker is not None else None
        if replication is None:
            return http.Response(404, {"error": "this node's broker is not replicated"})
        return http.Response(200, replication.report())

    async def _local(self, request: http.Request) -> http.Response:
        assert self.backend is not None
        if request.method == "GET" and request.path == "/v1/status":
            return http.Response(200, await self.status())
        if request.method == "GET" and request.path == "/v1/probe":
            return http.Response(200, await self.probe(request.query))
        if request.method == "GET" and request.path == "/v1/log/replication":
            return self._replication()
        return http.Response(404, {"error": f"no route {request.method} {request.path}"})

    async def probe(self, query: dict[str, str]) -> dict[str, Any]:
        assert self.backend is not None
        address = query.get("address", "")
        try:
            ipaddress.ip_address(address)
            port = int(query.get("port", INFO_PORT))
        except ValueError:
            raise http.HttpError(400, "probe: expected address=IP and port=N") from None
        network = self.backend.network
        started = time.perf_counter()
        try:
            answer = await http.call(
                lambda: network.open_connection(address, port),
                "GET",
                "/v1/whoami",
                timeout=float(query.get("timeout", "5")),
            )
        except http.HttpError as e:
            return {"ok": False, "error": e.message, "status": e.status}
        return {"ok": True, "rtt_ms": (time.perf_counter() - started) * 1000, "answer": answer}

    async def status(self) -> dict[str, Any]:
        assert self.backend is not None
        peers = await self.backend.peers()
        names: dict[str, dict[str, Any]] = {}
        if self.agent is not None:
            if self.agent.view:
                names = {p["public_key"]: p for p in self.agent.view["peers"]}
            coordinator = {"node_id": "coordinator", "role": "coordinator"}
            names[self.agent.coordinator_key] = coordinator
        return {
            **self.whoami(),
            "backend": self.backend.name,
            "listen_port": self.backend.listen_port,
            "updates": self.agent.updates if self.agent else 0,
            "last_update": self.agent.last_update if self.agent else None,
            "coordinator_failures": self.agent.failures if self.agent else 0,
            "peers": [
                {
                    "node_id": names.get(p.public_key.to_base64(), {}).get("node_id"),
                    "role": names.get(p.public_key.to_base64(), {}).get("role"),
                    "public_key": p.public_key.to_base64(),
                    "endpoint": None if p.endpoint is None else _endpoint_text(*p.endpoint),
                    "allowed_ips": list(p.allowed_ips),
                    "latest_handshake": p.last_handshake,
                    "rx_bytes": p.rx_bytes,
                    "tx_bytes": p.tx_bytes,
                }
                for p in peers
            ],
        }

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
        for server in self._servers:
            server.close()
        if self.broker is not None:
            await self.broker.close()
        if self.backend is not None:
            await self.backend.close()
        self.socket_path.unlink(missing_ok=True)


async def run(config: MeshConfig, stop: asyncio.Event) -> None:
    node = MeshNode(config)
    try:
        await node.start()
        await stop.wait()
    finally:
        await node.close()
