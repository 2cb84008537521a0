"""The node's agent: holds a watch on the coordinator and keeps the backend's peers current.

It long-polls ``GET /v1/mesh`` (the coordinator answers as soon as this member's view
changes, or after ``WAIT`` seconds), turns the answer into a diff (``pyralog.mesh.diff``)
and applies it through the backend's one control path. When the coordinator cannot be
reached it keeps the peers it has, moves to the next coordinator endpoint (a rekey
starts a handshake there at once) and retries with backoff; the last view is saved with
the node's state, so a restart without a coordinator still comes up meshed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable
from typing import Any

from pyralog.link.control import ConfigChangeError, PeerChange, SetRequest
from pyralog.mesh import http
from pyralog.mesh.backend import Backend
from pyralog.mesh.diff import Wanted, plan
from pyralog.mesh.identity import Directory
from pyralog.mesh.policy import MeshSettings
from pyralog.mesh.resolve import Resolver
from pyralog.mesh.topology import PeerSpec, host_network
from pyralog.wireguard.keys import PublicKey

# Long-poll seconds (the coordinator caps it at 60). Also how long a coordinator that
# died mid-poll goes unnoticed (plus GRACE), so kept short: 50 nodes make 5 polls/s.
WAIT = 10.0
GRACE = 3.0
REPORT_EVERY = 10.0
COORDINATOR_KEEPALIVE = 25
BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)


def _log(message: str) -> None:
    print(f"pyralog node: {message}", file=sys.stderr, flush=True)


class Agent:
    def __init__(
        self,
        backend: Backend,
        coordinator: dict[str, Any],
        *,
        endpoints: list[str],
        static: list[Wanted] = (),  # type: ignore[assignment]
        directory: Directory | None = None,
        on_view: Callable[[dict[str, Any]], None] | None = None,
        role: str = "node",
    ) -> None:
        self.backend = backend
        self.coordinator_key = str(coordinator["public_key"])
        self.coordinator_address = str(coordinator["address"])
        self.api_port = int(coordinator.get("api_port", 7700))
        self.endpoints = endpoints or list(coordinator["endpoints"])
        self._endpoint_index = 0
        self.static = list(static)
        self.directory = directory or Directory()
        self.on_view = on_view
        self.role = role
        self.applied: dict[str, Wanted] = {}
        self.resolver = Resolver()
        self.view: dict[str, Any] | None = None
        self.digest: str | None = None
        self.updates = 0  # views applied
        self.last_update: float | None = None
        self.failures = 0

    # -- peers ----------------------------------------------------------------------------

    def _coordinator_wanted(self) -> Wanted:
        return Wanted(
            self.coordinator_key,
            self.endpoints[self._endpoint_index % len(self.endpoints)],
            (host_network(self.coordinator_address),),
            COORDINATOR_KEEPALIVE,
        )

    async def _wanted(self, view: dict[str, Any] | None) -> list[Wanted]:
        """What the backend should hold, with every endpoint resolved to an address."""
        wanted = {w.public_key: w for w in self.static}
        if view is not None:
            for raw in view["peers"]:
                spec = PeerSpec.from_json(raw)
                if spec.public_key != self.coordinator_key:
                    wanted[spec.public_key] = Wanted(
                        spec.public_key, spec.endpoint, spec.allowed_ips
                    )
        wanted[self.coordinator_key] = self._coordinator_wanted()
        return [
            dataclasses.replace(w, endpoint=await self.resolver.resolve(w.endpoint))
            for w in wanted.values()
        ]

    async def apply_view(self, view: dict[str, Any] | None) -> bool:
        """Bring the backend to ``view``'s peers; True if anything changed."""
        change, applied = plan(self.applied, await self._wanted(view))
        if view is not None:
            settings = MeshSettings.from_json(view["settings"])
            self.directory.update(view["directory"], settings.policy, self.role)
            self.view = view
        if change is None:
            return False
        try:
            await self.backend.apply(change)
        except ConfigChangeError as e:
            _log(f"could not apply the coordinator's peers: {e}")
            return False
        self.applied = applied
        return True

    # -- the watch --------------------------------------------------------------------------

    def _open(self) -> Any:
        return self.backend.network.open_connection(self.coordinator_address, self.api_port)

    async def call(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        return await http.call(self._open, method, path, body, timeout=timeout)

    async def poll_once(self, wait: float = WAIT) -> bool:
        query = f"/v1/mesh?wait={wait:g}" + (f"&since={self.digest}" if self.digest else "")
        view = await self.call("GET", query, timeout=wait + GRACE)
        self.digest = view.get("view")
        changed = await self.apply_view(view)
        self.updates += 1
        self.last_update = time.time()
        if self.on_view is not None:
            self.on_view(view)
        return changed

    async def _fail_over(self) -> None:
        """No answer: move to the coordinator's next endpoint, if it has several, and
        handshake there at once. With one endpoint too: a coordinator that restarted has
        forgotten our session, and WireGuard would go on sending into it until its own
        timers give up (some 15 s more, after the watch's WAIT + GRACE)."""
        if len(self.endpoints) > 1:
            self._endpoint_index += 1
            endpoint = self.endpoints[self._endpoint_index % len(self.endpoints)]
            _log(f"coordinator unreachable; trying {endpoint}")
            change, self.applied = plan(self.applied, await self._wanted(self.view))
            if change is not None:
                with contextlib.suppress(ConfigChangeError):
                    await self.backend.apply(change)
        with contextlib.suppress(Exception):
            await self.backend.rekey(PublicKey.from_base64(self.coordinator_key))

    async def run(self) -> None:
        while True:
            try:
                await self.poll_once()
                if self.failures:
                    _log("coordinator reachable again")
                self.failures = 0
            except asyncio.CancelledError:
                raise
            except http.HttpError as e:
                if e.status == 410:
                    _log("this node was removed from the cluster; keeping no peers")
                    await self.apply_view({**(self.view or {}), "peers": []} if self.view else None)
                    await asyncio.sleep(5.0)
                    continue
                self.failures += 1
                if self.failures == 1 or self.failures % 10 == 0:
                    _log(f"watch failed ({e}); keeping the current peers")
                if e.status == 0:  # no answer at all: try the next coordinator endpoint
                    await self._fail_over()
                await asyncio.sleep(BACKOFF[min(self.failures - 1, len(BACKOFF) - 1)])

    async def report_loop(self) -> None:
        while True:
            await asyncio.sleep(REPORT_EVERY)
            try:
                peers = await self.backend.peers()
                await self.call(
                    "POST",
                    "/v1/report",
                    {
                        "backend": self.backend.name,
                        "peers": [
                            {
                                "public_key": p.public_key.to_base64(),
                                "endpoint": None
                                if p.endpoint is None
                                else f"{p.endpoint[0]}:{p.endpoint[1]}",
                                "latest_handshake": p.last_handshake,
                                "rx_bytes": p.rx_bytes,
                                "tx_bytes": p.tx_bytes,
                            }
                            for p in peers
                        ],
                    },
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                continue  # reports are best effort; the watch reports the outage


def remove_all(keys: list[str]) -> SetRequest:
    return SetRequest(peers=[PeerChange(PublicKey.from_base64(k), remove=True) for k in keys])
