"""The coordinator's API against a real CoordinatorService (embedded tunnel on a loopback
UDP port, SQLite store in tmp_path), called in-process: admin routes through
``handle_admin_socket``, member and enrolling routes through ``handle_mesh``."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from ports import free_port
from pyralog.link.control import PeerChange, SetRequest
from pyralog.mesh import coordinator_config
from pyralog.mesh.api import CoordinatorApi, view_digest, wg_quick
from pyralog.mesh.coordinator import NO_PSK, CoordinatorService
from pyralog.mesh.enrollment import Pending, provisional_address
from pyralog.mesh.http import HttpError, Request, Response
from pyralog.mesh.token import JoinToken, enrollment_psk, proof_key
from pyralog.mesh.topology import PeerSpec
from pyralog.wireguard import config as wgconfig
from pyralog.wireguard.admission import UnknownInitiator
from pyralog.wireguard.keys import PrivateKey, PublicKey
from pyralog.wireguard.proof import proof_mac2

TIMEOUT = 15.0


def key(i: int) -> str:
    return PrivateKey(i.to_bytes(32, "big")).public_key.to_base64()


def write_config(directory: Path, extra: str = "") -> Path:
    port = free_port(socket.SOCK_DGRAM)
    path = directory / "coordinator.toml"
    path.write_text(
        f"""
[coordinator]
cluster_id = "unit"
network = "10.77.0.0/16"
listen_port = {port}
endpoints = ["127.0.0.1:{port}"]
api_port = 7700
{extra}
[regions.east]
network = "10.77.1.0/24"
"""
    )
    return path


@contextlib.asynccontextmanager
async def running(tmp_path: Path, extra: str = "") -> AsyncIterator[CoordinatorService]:
    # A Unix socket path must fit in 108 bytes; pytest's tmp_path may not.
    with tempfile.TemporaryDirectory(prefix="pyr", dir="/tmp") as short:
        config = coordinator_config.load(write_config(tmp_path, extra))
        config = coordinator_config.CoordinatorConfig(
            **{**config.__dict__, "admin_socket": Path(short) / "admin.sock"}
        )
        service = CoordinatorService(config)
        await service.start()
        try:
            yield service
        finally:
            await service.close()


def run(tmp_path: Path, body: Callable[[CoordinatorService], Awaitable[None]]) -> None:
    async def main() -> None:
        async with running(tmp_path) as service:
            await asyncio.wait_for(body(service), TIMEOUT)

    asyncio.run(main())


def request(
    method: str, path: str, body: Any = None, peer: tuple[str, int] | None = None
) -> Request:
    raw = b"" if body is None else json.dumps(body).encode()
    path, _, query = path.partition("?")
    fields = dict(item.split("=", 1) for item in query.split("&")) if query else {}
    return Request(method, path, fields, raw, peer)


async def admin(service: CoordinatorService, method: str, path: str, body: Any = None) -> Response:
    return await service.api.handle_admin_socket(request(method, path, body))


async def admin_error(
    service: CoordinatorService, method: str, path: str, body: Any = None
) -> HttpError:
    with pytest.raises(HttpError) as info:
        await admin(service, method, path, body)
    return info.value


async def settle(condition: Callable[[], bool]) -> None:
    for _ in range(300):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


def audit_events(service: CoordinatorService) -> list[dict[str, Any]]:
    """The trail's entries as events (kind, time, data), after checking the chain."""
    from pyralog.mesh import audit

    lines = service.config.audit_log.read_text().splitlines()
    public = audit.public_from_text(service.config.audit_log.with_name("audit.pub").read_text())
    assert audit.verify(lines, public)[1] is None
    return [{"event": e["kind"], "time": e["time"], **e["data"]} for e in audit.entries(lines)]


# -- start-up -------------------------------------------------------------------------


def test_the_service_starts_with_a_key_store_and_a_0600_admin_socket(tmp_path: Path) -> None:
    async def body(service: CoordinatorService) -> None:
        cfg = service.config
        assert cfg.private_key_file.exists()
        assert stat.S_IMODE(os.stat(cfg.private_key_file).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(cfg.admin_socket).st_mode) == 0o600
        assert service.tunnel is not None and service.tunnel.listen_port == cfg.listen_port
        assert (
            service.public_key
            == PrivateKey.from_base64(
                cfg.private_key_file.read_text().strip()
            ).public_key.to_base64()
        )
        assert service.registry is not None
        assert await service.registry.settings() == cfg.settings
        # The enrollment policy is wired, with the Device's wall-clock offset.
        device = service.tunnel.device
        assert device.unknown_initiator_policy == service.enrollment.admit
        assert device.mac2_proof_check == service.enrollment.pre_check
        assert service.enrollment.clock_offset == device.clock_offset

    run(tmp_path, body)


# -- tokens ----------------------------------------------------------------------------


def test_token_create_list_revoke(tmp_path: Path) -> None:
    async def body(service: CoordinatorService) -> None:
        before = time.time()
        created = await admin(service, "POST", "/v1/tokens", {"role": "gateway", "ttl": "30m"})
        assert created.status == 201
        data = created.body
        join = JoinToken.decode(data["token"])
        assert join.id == data["id"] and join.cluster_id == "unit"
        assert join.coordinator_key.to_base64() == service.public_key
        assert str(join.coordinator_address) == "10.77.0.1" and join.api_port == 7700
        assert join.endpoints == (("127.0.0.1", service.config.listen_port),)
        assert data["role"] == "gateway" and data["reusable"] is False
        assert before + 1800 <= data["expires_at"] <= time.time() + 1800
        assert "psk" not in data and "proof_key" not in data
        # The Device's policy learns of it with the next sync.
        await settle(lambda: service.enrollment.pre_check(b"", None) is False)
        listed = await admin(service, "GET", "/v1/tokens")
        assert listed.status == 200 and [t["id"] for t in listed.body] == [join.id]
        assert "proof_key" not in listed.body[0] and "psk" not in listed.body[0]
        revoked = await admin(service, "DELETE", f"/v1/tokens/{join.id}")
        assert revoked.status == 200 and revoked.body["revoked"] is True
        missing = await admin_error(service, "DELETE", "/v1/tokens/0123456789abcdef")
        assert missing.status == 404
        events = [e["event"] for e in audit_events(service)]
        assert events == ["token_created", "token_revoked"]

    run(tmp_path, body)


@pytest.mark.parametrize(
    "ttl, seconds",
    [("90s", 90), ("30m", 1800), ("1h", 3600), ("7d", 7 * 86400), (600, 600), ("never", None)],
)
def test_token_ttls(tmp_path: Path, ttl: object, seconds: int | None) -> None:
    async def body(service: CoordinatorService) -> None:
        data = (await admin(service, "POST", "/v1/tokens", {"ttl": ttl, "reusable": True})).body
        if seconds is None:
            assert data["expires_at"] is None
        else:
            assert data["expires_at"] - data["created_at"] == pytest.approx(seconds)
        assert data["reusable"] is True and data["role"] == "node"

    run(tmp_path, body)


def test_bad_token_requests_are_400(tmp_path: Path) -> None:
    async def body(service: CoordinatorService) -> None:
        for payload, words in [
            ({"ttl": "soon"}, "ttl 'soon'"),
            ({"ttl": "0s"}, "ttl"),
            ({"ttl": -5}, "ttl"),
            ({"ttl": "400d"}, "ttl"),
            ({"role": "root"}, "role 'root'"),
            ({"region": "west"}, "region 'west' is not declared"),
            ({"region": 5}, "region 5"),
            ([1, 2], "expected a JSON object"),
        ]:
            error = await admin_error(service, "POST", "/v1/tokens", payload)
            assert error.status == 400 and words in error.message, (payload, error.message)
        response = await admin(service, "POST", "/v1/tokens", {"region": "east"})
        assert response.body["region"] == "east"
        # Not JSON at all.
        with pytest.raises(HttpError) as info:
            await service.api.handle_admin_socket(Request("POST", "/v1/tokens", {}, b"{", None))
        assert info.value.status == 400

    run(tmp_path, body)


def test_an_expired_token_is_refused_at_the_handshake(tmp_path: Path) -> None:
    async def body(service: CoordinatorService) -> None:
        assert service.tunnel is not None
        text = (await admin(service, "POST", "/v1/tokens", {"ttl": "90s"})).body["token"]
        join = JoinToken.decode(text)
        await settle(lambda: bool(service.enrollment._tokens))
        body_and_mac1 = bytes(132)
        message = body_and_mac1 + proof_mac2(proof_key(join.secret), body_and_mac1, None)
        node = PrivateKey.generate().public_key
        now = service.tunnel.now()
        enrollment = service.enrollment
        assert enrollment.admit(UnknownInitiator(node, ("127.0.0.1", 9), message, now))
        enrollment.finish(node)
        late = UnknownInitiator(node, ("127.0.0.1", 9), message, now + 91)
        assert enrollment.admit(late) is None
        assert enrollment.counters["refused_expired"] == 1

    run(tmp_path, body)


# -- members ------------------------------------------------------------------------------


def test_node_add_list_remove(tmp_path: Path) -> None:
    async def body(service: CoordinatorService) -> None:
        assert service.tunnel is not None
        added = await admin(
            service,
            "POST",
            "/v1/nodes",
            {"node_id": "5", "public_key": key(1), "endpoint": "192.0.2.5:51820"},
        )
        assert added.status == 201
        data = added.body
        assert data["node_id"] == "5" and data["address"] == "10.77.0.5"
        assert data["endpoints"] == ["192.0.2.5:51820"] and data["role"] == "node"
        assert data["cluster_id"] == "unit" and data["network"] == "10.77.0.0/16"
        assert data["coordinator"]["public_key"] == service.public_key
        assert data["coordinator"]["api_port"] == 7700
        east = await admin(
            service,
            "POST",
            "/v1/nodes",
            {"node_id": "e1", "public_key": key(2), "region": "east", "role": "gateway"},
        )
        assert east.body["network"] == "10.77.1.0/24"
        assert east.body["address"].startswith("10.77.1.")
        # The coordinator's Device holds the new members as peers (the store watch syncs).
        device = service.tunnel.device
        await settle(lambda: device.get_peer(PublicKey.from_base64(key(1))) is not None)
        peer = device.get_peer(PublicKey.from_base64(key(1)))
        assert peer is not None and peer.endpoint == ("192.0.2.5", 51820)
        assert [str(n) for n in device.allowed_ips_of(PublicKey.from_base64(key(1)))] == [
            "10.77.0.5/32"
        ]
        assert service.key_of("10.77.0.5") == PublicKey.from_base64(key(1))
        listed = await admin(service, "GET", "/v1/nodes")
        assert sorted(n["node_id"] for n in listed.body) == ["5", "e1"]
        assert {n["node_id"]: n["state"] for n in listed.body} == {
            "5": "provisioned",
            "e1": "provisioned",
        }
        removed = await admin(service, "DELETE", "/v1/nodes/5")
        assert removed.status == 200 and removed.body["address"] == "10.77.0.5"
        assert (await admin_error(service, "DELETE", "/v1/nodes/5")).status == 404
        await settle(lambda: device.get_peer(PublicKey.from_base64(key(1))) is None)
        assert service.key_of("10.77.0.5") is None
        events = [e["event"] for e in audit_events(service)]
        assert events == ["node_added", "node_added", "node_removed"]

    run(tmp_path, body)


def test_bad_node_adds(tmp_path: Path) -> None:
    async def body(service: CoordinatorService) -> None:
        await admin(service, "POST", "/v1/nodes", {"node_id": "n1", "public_key": key(1)})
        cases: list[tuple[Any, int, str]] = [
            ({"node_id": "n2", "public_key": "not-a-key"}, 400, "not a base64 WireGuard"),
            ({"node_id": "n2", "public_key": base64.b64encode(bytes(31)).decode()}, 400, "key"),
            ({"node_id": "n2"}, 400, "public key"),
            ({"node_id": "bad id!", "public_key": key(2)}, 400, "node id"),
            ({"node_id": "", "public_key": key(2)}, 400, "node id"),
            ({"node_id": 7, "public_key": key(2)}, 400, "node id"),
            ({"public_key": key(2)}, 400, "node id"),
            ({"node_id": "n2", "public_key": key(2), "role": "boss"}, 400, "role"),
            ({"node_id": "n2", "public_key": key(2), "region": "west"}, 400, "region"),
            ({"node_id": "n2", "public_key": key(2), "endpoint": 5}, 400, "endpoint"),
            ({"node_id": "n2", "public_key": key(2), "endpoint": "nowhere"}, 400, "endpoint"),
            ({"node_id": "n2", "public_key": key(2), "endpoint": "1.2.3.4:0"}, 400, "port"),
            ({"node_id": "n2", "public_key": key(1)}, 409, "already belongs to node 'n1'"),
            ({"node_id": "n1", "public_key": key(3)}, 409, "exists with another public key"),
            ({"node_id": "n1", "public_key": key(1), "role": "gateway"}, 409, "remove it first"),
            ({"node_id": "n2", "public_key": service.public_key}, 409, "coordinator's own"),
            ("text", 400, "expected a JSON object"),
        ]
        for payload, status, words in cases:
            error = await admin_error(service, "POST", "/v1/nodes", payload)
            assert (error.status, words in error.message) == (status, True), (payload, error)
        replaced = await admin(
            service,
            "POST",
            "/v1/nodes",
            {"node_id": "n1", "public_key": key(3), "replace_key": True},
        )
        assert replaced.status == 201 and replaced.body["public_key"] == key(3)
        assert (await admin_error(service, "DELETE", "/v1/nodes/..")).status == 400
        assert [n["node_id"] for n in (await admin(service, "GET", "/v1/nodes")).body] == ["n1"]

    run(tmp_path, body)


def test_client_add_returns_a_wg_quick_file_that_parses(tmp_path: Path) -> None:
    async def body(service: CoordinatorService) -> None:
        n1 = await admin(
            service,
            "POST",
            "/v1/nodes",
            {"node_id": "n1", "public_key": key(1), "endpoint": "192.0.2.1:51820"},
        )
        await admin(service, "POST", "/v1/nodes", {"node_id": "n2", "public_key": key(2)})
        added = await admin(service, "POST", "/v1/clients", {"name": "laptop"})
        assert added.status == 201
        data = added.body
        assert data["role"] == "client"
        parsed = wgconfig.parse(data["wg_quick"], "laptop.conf")
        iface = parsed.interface
        assert iface.private_key.public_key.to_base64() == data["public_key"]
        assert [str(a) for a in iface.addresses] == [f"{data['address']}/32"]
        # Default policy: a client peers with nodes only (not the coordinator).
        peers = {p.public_key.to_base64(): p for p in parsed.peers}
        assert set(peers) == {key(1), key(2)}
        assert peers[key(1)].endpoint == ("192.0.2.1", 51820)
        assert peers[key(2)].endpoint is None
        assert [str(n) for n in peers[key(1)].allowed_ips] == [f"{n1.body['address']}/32"]
        assert all(p.persistent_keepalive == 25 for p in parsed.peers)
        # The private key is handed out once: the store has only the public key.
        raw = (service.config.base / "coordinator.db").read_bytes()
        assert iface.private_key.to_base64().encode() not in raw
        # An admin client gets the coordinator (its API) too.
        ops = (await admin(service, "POST", "/v1/clients", {"name": "ops", "role": "admin"})).body
        parsed = wgconfig.parse(ops["wg_quick"], "ops.conf")
        coordinator = next(
            p for p in parsed.peers if p.public_key.to_base64() == service.public_key
        )
        assert coordinator.endpoint == ("127.0.0.1", service.config.listen_port)
        assert [str(n) for n in coordinator.allowed_ips] == ["10.77.0.1/32"]
        for payload, status in [
            ({"name": "laptop"}, 409),
            ({"name": "x", "role": "node"}, 400),
            ({"name": "bad name"}, 400),
            ({}, 400),
            ({"name": "y", "region": "west"}, 400),
        ]:
            assert (await admin_error(service, "POST", "/v1/clients", payload)).status == status

    run(tmp_path, body)


def test_wg_quick_text() -> None:
    key_ = PrivateKey(bytes([4]) * 32)
    peers = [
        PeerSpec("coordinator", key(9), "127.0.0.1:5", ("10.0.0.1/32",), "coordinator"),
        PeerSpec("n1", key(8), None, ("10.0.0.0/16", "10.1.0.0/16"), "gateway"),
    ]
    text = wg_quick(key_, "10.0.0.9", peers)
    parsed = wgconfig.parse(text)
    assert parsed.interface.private_key == key_
    assert [p.public_key.to_base64() for p in parsed.peers] == [key(9), key(8)]
    assert [str(n) for n in parsed.peers[1].allowed_ips] == ["10.0.0.0/16", "10.1.0.0/16"]
    assert "# n1 (gateway)" in text


def test_status_and_unknown_routes(tmp_path: Path) -> None:
    async def body(service: CoordinatorService) -> None:
        await admin(service, "POST", "/v1/nodes", {"node_id": "n1", "public_key": key(1)})
        status = (await admin(service, "GET", "/v1/status")).body
        assert status["cluster_id"] == "unit"
        assert status["coordinator"]["listen_port"] == service.config.listen_port
        assert status["coordinator"]["address"] == "10.77.0.1"
        assert status["settings"]["network"] == "10.77.0.0/16"
        assert isinstance(status["enrollment"], dict) and isinstance(status["drops"], dict)
        (member,) = status["members"]
        assert member["node_id"] == "n1" and member["health"] == "pending"
        assert member["latest_handshake"] is None and member["rx_bytes"] == 0
        json.dumps(status)  # all of it is JSON
        for method, path, code in [
            ("GET", "/v1/nothing", 404),
            ("PUT", "/v1/nodes", 404),
            ("GET", "/v1/nodes/n1", 404),
            ("DELETE", "/v1/tokens", 404),
            ("GET", "/v1/mesh", 404),  # the admin socket is no member
            ("POST", "/v1/enroll", 409),
        ]:
            error = await admin_error(service, method, path)
            assert error.status == code, (method, path, error.message)

    run(tmp_path, body)


# -- over the mesh ------------------------------------------------------------------------


def test_mesh_callers_without_a_peer_are_403(tmp_path: Path) -> None:
    async def body(service: CoordinatorService) -> None:
        api: CoordinatorApi = service.api
        for peer in (None, ("10.77.0.99", 4000), ("not-an-ip", 1)):
            with pytest.raises(HttpError) as info:
                await api.handle_mesh(request("GET", "/v1/status", peer=peer))
            assert info.value.status == 403

    run(tmp_path, body)


def test_members_get_their_view_and_only_admins_get_admin_routes(tmp_path: Path) -> None:
    async def body(service: CoordinatorService) -> None:
        api = service.api
        assert service.tunnel is not None
        await admin(service, "POST", "/v1/nodes", {"node_id": "n1", "public_key": key(1)})
        await admin(service, "POST", "/v1/nodes", {"node_id": "n2", "public_key": key(2)})
        await admin(
            service, "POST", "/v1/nodes", {"node_id": "ops", "public_key": key(3), "role": "admin"}
        )
        nodes = {n["node_id"]: n for n in (await admin(service, "GET", "/v1/nodes")).body}
        await settle(
            lambda: (
                len(service._members) == 3 and service.key_of(nodes["ops"]["address"]) is not None
            )
        )
        n1 = (nodes["n1"]["address"], 40000)
        with pytest.raises(HttpError) as info:
            await api.handle_mesh(request("GET", "/v1/status", peer=n1))
        assert info.value.status == 403 and "role 'node'" in info.value.message
        with pytest.raises(HttpError) as info:
            await api.handle_mesh(request("POST", "/v1/enroll", {}, peer=n1))
        assert info.value.status == 409
        view = (await api.handle_mesh(request("GET", "/v1/mesh?wait=0", peer=n1))).body
        assert view["self"]["node_id"] == "n1"
        assert [p["node_id"] for p in view["peers"]] == ["coordinator", "n2", "ops"]
        assert view["peers"][0]["public_key"] == service.public_key
        assert view["view"] == view_digest({k: v for k, v in view.items() if k != "view"})
        # Long poll: an unchanged view is answered when the wait is over ...
        loop = asyncio.get_running_loop()
        start = loop.time()
        same = await api.handle_mesh(
            request("GET", f"/v1/mesh?since={view['view']}&wait=0.3", peer=n1)
        )
        assert loop.time() - start >= 0.25 and same.body["view"] == view["view"]
        # ... and a change answers at once.
        waiting = asyncio.create_task(
            api.handle_mesh(request("GET", f"/v1/mesh?since={view['view']}&wait=10", peer=n1))
        )
        await asyncio.sleep(0.05)
        await admin(service, "POST", "/v1/nodes", {"node_id": "n3", "public_key": key(4)})
        changed = (await asyncio.wait_for(waiting, 3.0)).body
        assert "n3" in [p["node_id"] for p in changed["peers"]]
        with pytest.raises(HttpError) as info:
            await api.handle_mesh(request("GET", "/v1/mesh?wait=soon", peer=n1))
        assert info.value.status == 400
        # Reports are kept (in memory: a store write would wake every long-poll).
        revision = await service.registry.store.revision()  # type: ignore[union-attr]
        report = {"peers": [{"public_key": key(2)}], "backend": "embedded"}
        assert (await api.handle_mesh(request("POST", "/v1/report", report, peer=n1))).status == 204
        with pytest.raises(HttpError) as info:
            await api.handle_mesh(request("POST", "/v1/report", {"peers": 5}, peer=n1))
        assert info.value.status == 400
        assert service.reports["n1"][0] == report
        assert await service.registry.store.revision() == revision  # type: ignore[union-attr]
        status_body = (await admin(service, "GET", "/v1/status")).body
        n1_status = next(m for m in status_body["members"] if m["node_id"] == "n1")
        assert n1_status["report"] == report
        # An admin member reaches the admin routes over the mesh.
        ops = (nodes["ops"]["address"], 40001)
        status = await api.handle_mesh(request("GET", "/v1/status", peer=ops))
        assert status.status == 200
        # A removed member's long poll ends with 410.
        await admin(service, "DELETE", "/v1/nodes/n1")
        with pytest.raises(HttpError) as info:
            await service.api._mesh(request("GET", "/v1/mesh"), "n1")
        assert info.value.status == 410

    run(tmp_path, body)


def test_an_enrolling_key_may_only_enroll(tmp_path: Path) -> None:
    async def body(service: CoordinatorService) -> None:
        api, tunnel = service.api, service.tunnel
        assert tunnel is not None and service.registry is not None
        created = (await admin(service, "POST", "/v1/tokens", {"role": "gateway"})).body
        join = JoinToken.decode(created["token"])
        node_key = PrivateKey.generate().public_key
        provisional = provisional_address(node_key)
        # As the Device does on admission: a provisional peer with the token's PSK.
        tunnel.apply(
            SetRequest(
                peers=[
                    PeerChange(
                        node_key,
                        preshared_key=enrollment_psk(join.secret),
                        endpoint=("127.0.0.1", 40100),
                        replace_allowed_ips=True,
                        allowed_ips=[f"{provisional}/32"],
                    )
                ]
            )
        )
        service.enrollment.pending[node_key] = Pending(join.id, provisional, tunnel.now())
        who = (str(provisional), 40100)
        for method, path in [("GET", "/v1/status"), ("GET", "/v1/mesh"), ("POST", "/v1/report")]:
            with pytest.raises(HttpError) as info:
                await api.handle_mesh(request(method, path, {}, peer=who))
            assert (
                info.value.status == 403 and "may only call POST /v1/enroll" in info.value.message
            )
        for payload in (
            {"node_id": "bad id", "listen_port": 51820},
            {"node_id": "gw1", "listen_port": 0},
            {"node_id": "gw1", "listen_port": True},
            {"node_id": "gw1"},
            [1],
        ):
            with pytest.raises(HttpError) as info:
                await api.handle_mesh(request("POST", "/v1/enroll", payload, peer=who))
            assert info.value.status == 400, payload
        welcome = await api.handle_mesh(
            request("POST", "/v1/enroll", {"node_id": "gw1", "listen_port": 51999}, peer=who)
        )
        assert welcome.status == 200
        node = welcome.body["node"]
        assert node["node_id"] == "gw1" and node["role"] == "gateway"
        assert node["endpoints"] == ["127.0.0.1:51999"]  # seen host, announced port
        assert welcome.body["coordinator"]["public_key"] == service.public_key
        assert node_key not in service.enrollment.pending
        peer = tunnel.device.get_peer(node_key)
        assert peer is not None and not peer.provisional
        assert peer.preshared_key in (None, NO_PSK)
        (token,) = await service.registry.tokens()
        assert token.uses == 1 and token.used_by == ["gw1"]

        # Until the grace period ends the reply can still reach the provisional address.
        def allowed() -> set[str]:
            return {str(n) for n in tunnel.device.allowed_ips_of(node_key)}

        await settle(lambda: f"{node['address']}/32" in allowed())
        assert allowed() == {f"{provisional}/32", f"{node['address']}/32"}
        assert tunnel.device.get_peer(node_key).endpoint == ("127.0.0.1", 40100)  # type: ignore[union-attr]
        # Now a member: enrolling again is a conflict.
        member_address = (node["address"], 40100)
        with pytest.raises(HttpError) as info:
            await api.handle_mesh(request("POST", "/v1/enroll", {}, peer=member_address))
        assert info.value.status == 409
        events = [e["event"] for e in audit_events(service)]
        assert "node_enrolled" in events

    run(tmp_path, body)


def test_enroll_with_a_token_revoked_after_the_handshake_is_409(tmp_path: Path) -> None:
    async def body(service: CoordinatorService) -> None:
        api, tunnel = service.api, service.tunnel
        assert tunnel is not None and service.registry is not None
        created = (await admin(service, "POST", "/v1/tokens", {})).body
        node_key = PrivateKey.generate().public_key
        provisional = provisional_address(node_key)
        tunnel.apply(
            SetRequest(
                peers=[
                    PeerChange(
                        node_key, replace_allowed_ips=True, allowed_ips=[f"{provisional}/32"]
                    )
                ]
            )
        )
        service.enrollment.pending[node_key] = Pending(created["id"], provisional, tunnel.now())
        await admin(service, "DELETE", f"/v1/tokens/{created['id']}")
        with pytest.raises(HttpError) as info:
            await api.handle_mesh(
                request(
                    "POST",
                    "/v1/enroll",
                    {"node_id": "n1", "listen_port": 51820},
                    peer=(str(provisional), 1),
                )
            )
        assert info.value.status == 409 and "revoked" in info.value.message
        assert await service.registry.nodes() == []

    run(tmp_path, body)
