"""A node's Prometheus endpoint (``[metrics]``): on its mesh address for the members the
role policy lets reach the port, and on a local ``listen`` address if set. Collectors
are in ``pyralog.mesh.metrics``; this is only where a node serves them."""

from __future__ import annotations

import functools

from pyralog.mesh import http

# node.py imports this module only when a node starts, so node.py is complete by then.
from pyralog.mesh.node import MeshNode, NodeError, _log


async def serve(node: MeshNode) -> None:
    """Prometheus ``GET /metrics`` (``[metrics]``): on the mesh address for members
    the role policy lets reach the port, and on ``listen`` if set (a local scraper)."""
    settings = node.config.metrics
    if not settings.enabled:
        return
    from pyralog.mesh import metrics
    from pyralog.mesh.backend_embedded import EmbeddedBackend

    assert node.backend is not None
    backend = node.backend
    if isinstance(backend, EmbeddedBackend):
        node.metrics = metrics.MetricsEndpoint([metrics.DeviceCollector(
            backend.tunnel.device, node._names)])  # fmt: skip
    else:
        peers = metrics.PeersCollector(node._names)

        async def refresh() -> None:
            peers.snapshot = await backend.peers()

        node.metrics = metrics.MetricsEndpoint([peers], refresh)
    for address in backend.network.addresses:
        try:
            server = await backend.network.start_server(
                lambda r, w: http.serve_connection(r, w, functools.partial(_mesh, node)),
                host=str(address),
                port=settings.port,
            )
        except OSError as e:  # a host socket (userspace, kernel): the port may be taken
            where = f"{node.config.path}: [metrics] port: {address}:{settings.port}"
            raise NodeError(f"{where}: {e.strerror or e}") from None
        node._servers.append(server)
    if settings.listen is not None:
        try:
            node._servers.append(await node.metrics.serve_local(settings.listen, node.config.path))
        except OSError as e:
            raise NodeError(e.strerror) from None
        host, port = settings.listen
        _log(f"metrics on {host}:{port} (local) and port {settings.port}")


async def _mesh(node: MeshNode, request: http.Request) -> http.Response:
    """Metrics over the mesh: the same check as the identity service's."""
    peer = request.peer[0] if request.peer else ""
    port = node.config.metrics.port
    if node.state is not None and not node.directory.permits(peer, port):
        return http.Response(403, {"error": f"{peer} may not reach port {port} here"})
    return await node.metrics.handle(request)
