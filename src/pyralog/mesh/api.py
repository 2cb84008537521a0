"""The coordinator's HTTP API (version 1): routes, who may call them, and their answers.

Callers are known by where a request comes from, never by anything they claim:
- the local admin socket: full authority (``pyralog-admin`` on the coordinator's host);
- a mesh address: WireGuard's cryptokey routing binds it to a public key, which names a
  member and its role (``admin`` members get the admin routes) or a key still enrolling
  (provisional), which gets ``POST /v1/enroll`` and nothing else.

Routes: ``POST /v1/enroll``; ``GET /v1/mesh?since=VIEW&wait=SECONDS`` (a member's peers,
long-polled: it answers when the member's view differs from ``since``);
``POST /v1/report``; admin: ``GET|POST /v1/nodes``, ``DELETE /v1/nodes/ID``,
``GET|POST /v1/tokens``, ``DELETE /v1/tokens/ID``, ``POST /v1/clients``, ``GET /v1/status``,
``POST /v1/nodes/ID/revoke``, ``GET /v1/revoked``, ``PUT /v1/nodes/ID/key``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import TYPE_CHECKING, Any

from pyralog.mesh import store_remote
from pyralog.mesh.http import HttpError, Request, Response
from pyralog.mesh.model import RecordError, check_node_id, check_role
from pyralog.mesh.registry import Conflict, UnknownNode
from pyralog.mesh.store import StoreError
from pyralog.mesh.topology import PeerSpec
from pyralog.wireguard.endpoint import EndpointError, parse_endpoint
from pyralog.wireguard.keys import PrivateKey

if TYPE_CHECKING:
    from pyralog.mesh.coordinator import CoordinatorService

MAX_WAIT = 60.0
ADMIN = "admin"


def view_digest(view: dict[str, Any]) -> str:
    return hashlib.blake2s(json.dumps(view, sort_keys=True).encode(), digest_size=12).hexdigest()


def _ttl(value: object) -> float | None:
    """``3600``, ``"90s"``, ``"30m"``, ``"1h"``, ``"7d"``, or ``"never"``."""
    if value is None or value == "never":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        return float(number) * units[unit]
    except ValueError:
        raise RecordError(f"ttl {value!r}: expected e.g. 90s, 30m, 1h, 7d or never") from None


class CoordinatorApi:
    def __init__(self, service: CoordinatorService) -> None:
        self.service = service

    async def handle_admin_socket(self, request: Request) -> Response:
        return await self._route(request, caller=None, role=ADMIN, who=_local_user(request))

    async def handle_mesh(self, request: Request) -> Response:
        if request.peer is None:
            raise HttpError(403, "unknown caller")
        key = self.service.key_of(request.peer[0])
        if key is None:
            raise HttpError(403, "no WireGuard peer behind this address")
        if self.service.is_enrolling(key, request.peer[0]):
            if (request.method, request.path) != ("POST", "/v1/enroll"):
                raise HttpError(403, "an enrolling key may only call POST /v1/enroll")
            return await self._enroll(request, key)
        member = self.service.member(key)
        if member is None:
            raise HttpError(403, "this key is not a member of the cluster")
        return await self._route(
            request, caller=member.node_id, role=member.role, who=f"node {member.node_id}"
        )

    async def _route(
        self, request: Request, caller: str | None, role: str, who: str = "?"
    ) -> Response:
        method, path = request.method, request.path
        try:
            if path == "/v1/mesh" and method == "GET" and caller is not None:
                return await self._mesh(request, caller)
            if path == "/v1/report" and method == "POST" and caller is not None:
                self.service.save_report(caller, _report(request))
                return Response(204)
            if path == store_remote.PATH and method == "POST" and caller is not None:
                if role != "node":
                    raise HttpError(403, f"role {role!r} may not use the log's store")
                answer = await store_remote.serve(self.service.log_store, request.json())
                return Response(200, answer)
            if path == "/v1/enroll":
                raise HttpError(409, "already a member; nothing to enroll")
            if role != ADMIN:
                raise HttpError(403, f"role {role!r} may not call {method} {path}")
            return await self._admin(request, method, path, who)
        except UnknownNode as e:
            raise HttpError(404, str(e.args[0])) from None
        except (RecordError, ValueError) as e:
            raise HttpError(400, str(e)) from None
        except Conflict as e:
            raise HttpError(409, str(e)) from None
        except StoreError as e:
            raise HttpError(503, f"the coordinator's store is unavailable: {e}") from None

    async def _admin(self, request: Request, method: str, path: str, who: str) -> Response:
        registry = self.service.registry
        parts = path.strip("/").split("/")
        if parts[:2] == ["v1", "nodes"] and len(parts) == 2:
            if method == "GET":
                return Response(200, [n.__dict__ for n in await registry.nodes()])
            if method == "POST":
                return Response(201, await self._add_node(request.json()))
        if parts[:2] == ["v1", "nodes"] and len(parts) == 3 and method == "DELETE":
            removed = await registry.remove(check_node_id(parts[2]))
            if removed is None:
                raise HttpError(404, f"no node {parts[2]!r}")
            self.service.audit("node_removed", node_id=removed.node_id)
            return Response(200, removed.public())
        if parts[:2] == ["v1", "nodes"] and parts[3:] == ["revoke"] and method == "POST":
            revoked = await registry.revoke(parts[2], by=who, now=time.time())
            if revoked is None:
                raise HttpError(404, f"no node {parts[2]!r}")
            self.service.audit("node_revoked", **revoked.__dict__)
            return Response(200, revoked.__dict__)
        if parts[:2] == ["v1", "nodes"] and parts[3:] == ["key"] and method == "PUT":
            body = request.json()
            key = body.get("public_key") if isinstance(body, dict) else None
            if not isinstance(key, str):
                raise RecordError('expected {"public_key": "BASE64"}')
            record = await registry.replace_key(parts[2], key, now=time.time())
            self.service.audit(
                "node_key_replaced", node_id=record.node_id, public_key=record.public_key, by=who
            )
            return Response(200, record.public())
        if path == "/v1/revoked" and method == "GET":
            return Response(200, [r.__dict__ for r in await registry.revoked()])
        if parts[:2] == ["v1", "tokens"] and len(parts) == 2:
            if method == "GET":
                return Response(200, [t.public() for t in await registry.tokens()])
            if method == "POST":
                return Response(201, await self._create_token(request.json()))
        if parts[:2] == ["v1", "tokens"] and len(parts) == 3 and method == "DELETE":
            revoked = await registry.revoke_token(parts[2])
            if revoked is None:
                raise HttpError(404, f"no token {parts[2]!r}")
            await self.service.refresh_tokens()
            self.service.audit("token_revoked", token_id=revoked.id)
            return Response(200, revoked.public())
        if path == "/v1/clients" and method == "POST":
            return Response(201, await self._add_client(request.json()))
        if path == "/v1/status" and method == "GET":
            return Response(200, await self.service.status())
        raise HttpError(404, f"no route {method} {path}")

    # -- members ------------------------------------------------------------------------

    async def _mesh(self, request: Request, caller: str) -> Response:
        since = request.query.get("since")
        try:
            wait = min(float(request.query.get("wait", "0")), MAX_WAIT)
        except ValueError:
            raise HttpError(400, "wait: expected seconds") from None
        await self.service.observe_endpoint(caller)
        deadline = asyncio.get_running_loop().time() + max(wait, 0.0)
        while True:
            revision = await self.service.registry.store.revision()
            view = await self.service.view_of(caller)
            if view is None:
                raise HttpError(410, "this member was removed from the cluster")
            digest = view_digest(view)
            remaining = deadline - asyncio.get_running_loop().time()
            if digest != since or remaining <= 0:
                return Response(200, {**view, "view": digest})
            await self.service.registry.store.wait(revision, remaining)

    async def _enroll(self, request: Request, key: Any) -> Response:
        body = request.json()
        if not isinstance(body, dict):
            raise HttpError(400, "expected a JSON object")
        try:
            node_id = check_node_id(body.get("node_id"))
            port = body.get("listen_port")
            if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
                raise RecordError(f"listen_port {port!r}: expected 1-65535")
        except RecordError as e:
            raise HttpError(400, str(e)) from None
        try:
            record = await self.service.enroll(key, node_id, port)
        except Conflict as e:
            raise HttpError(409, str(e), after=lambda: self.service.forget_refused(key)) from None
        return Response(200, await self.service.welcome(record))

    # -- admin --------------------------------------------------------------------------

    async def _add_node(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise RecordError("expected a JSON object")
        endpoint = body.get("endpoint")
        if endpoint is not None and not isinstance(endpoint, str):
            raise RecordError("endpoint: expected HOST:PORT")
        if endpoint:
            try:
                parse_endpoint(endpoint, allow_names=True)
            except EndpointError as e:
                raise RecordError(str(e)) from None
        record = await self.service.registry.register(
            check_node_id(body.get("node_id")),
            str(body.get("public_key", "")),
            role=check_role(body.get("role", "node")),
            region=self._region(body.get("region")),
            endpoints=[endpoint] if endpoint else [],
            now=time.time(),
            state="provisioned",
            replace_key=bool(body.get("replace_key", False)),
            allow_revoked_key=bool(body.get("allow_revoked_key", False)),
        )
        self.service.audit("node_added", node_id=record.node_id, public_key=record.public_key)
        return {**record.public(), **await self.service.welcome(record)}

    def _region(self, region: object) -> str | None:
        if region is None:
            return None
        if not isinstance(region, str) or region not in self.service.settings.regions:
            raise RecordError(f"region {region!r} is not declared in the coordinator's config")
        return region

    async def _create_token(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise RecordError("expected a JSON object")
        text, record = await self.service.registry.create_token(
            role=check_role(body.get("role", "node")),
            now=time.time(),
            ttl=_ttl(body.get("ttl", 3600)),
            reusable=bool(body.get("reusable", False)),
            region=self._region(body.get("region")),
        )
        await self.service.refresh_tokens()
        self.service.audit("token_created", token_id=record.id, role=record.role)
        return {"token": text, **record.public()}

    async def _add_client(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise RecordError("expected a JSON object")
        role = check_role(body.get("role", "client"))
        if role not in ("client", "admin"):
            raise RecordError(f"role {role!r}: a client is 'client' or 'admin'")
        key = PrivateKey.generate()  # handed out once, never stored
        record = await self.service.registry.register(
            check_node_id(body.get("name")),
            key.public_key.to_base64(),
            role=role,
            region=self._region(body.get("region")),
            now=time.time(),
            state="provisioned",
            replace_key=False,
        )
        self.service.audit("client_added", node_id=record.node_id, role=role)
        view = await self.service.view_of(record.node_id)
        assert view is not None
        peers = [PeerSpec.from_json(p) for p in view["peers"]]
        return {
            **record.public(),
            "wg_quick": wg_quick(key, record.address, peers),
        }


def _local_user(request: Request) -> str:
    """The admin socket's caller for the audit trail: ``uid 1000 (alice)``."""
    uid = request.peer_uid
    if uid is None:
        return "the admin socket (caller unknown)"
    import pwd

    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _report(request: Request) -> dict[str, Any]:
    body = request.json()
    if not isinstance(body, dict) or not isinstance(body.get("peers"), list):
        raise RecordError('report: expected {"peers": [...]}')
    if len(body["peers"]) > 10_000:
        raise RecordError("report: too many peers")
    return {"peers": body["peers"], "backend": str(body.get("backend", ""))}


def wg_quick(key: PrivateKey, address: str, peers: list[PeerSpec]) -> str:
    """A standard wg-quick file for a stock WireGuard client."""
    lines = [
        "[Interface]",
        f"PrivateKey = {key.to_base64()}",
        f"Address = {address}/32",
        "",
    ]
    for peer in peers:
        lines += [f"# {peer.node_id} ({peer.role})", "[Peer]", f"PublicKey = {peer.public_key}"]
        if peer.endpoint:
            lines.append(f"Endpoint = {peer.endpoint}")
        lines += [f"AllowedIPs = {', '.join(peer.allowed_ips)}", "PersistentKeepalive = 25", ""]
    return "\n".join(lines)
