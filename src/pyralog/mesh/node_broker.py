"""The node's broker: the log served on the node's mesh address (``[log]``).

Split from node.py (which composes the node) because it is the one part that knows the
log: storage opened off the event loop, the broker id from the mesh address, admission
by the mesh policy, and, with ``replication = true``, the cluster store (the
coordinator's log store over the mesh, or an etcd) and the node's region as its rack.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from pyralog.log.broker import Broker
from pyralog.log.context import BrokerConfig
from pyralog.log.errors import StorageError
from pyralog.log.storage import Storage
from pyralog.log.topic_config import TopicConfig
from pyralog.mesh.config import LogSettings
from pyralog.mesh.identity import Directory
from pyralog.mesh.store import Store, open_store
from pyralog.mesh.store_remote import RemoteStore
from pyralog.net import Network


def _log(message: str) -> None:
    from pyralog.mesh.node import _log as node_log

    node_log(message)


async def start_broker(
    settings: LogSettings,
    network: Network,
    *,
    state: Any,
    directory: Directory,
    agent: Any,
) -> Broker:
    """Open the storage, serve the broker on every mesh address, join the cluster."""
    from pyralog.mesh.node import NodeError

    address = network.addresses[0]
    defaults = dataclasses.replace(
        TopicConfig(),
        flush=settings.flush,
        partitions=settings.partitions,
        min_insync_replicas=settings.min_insync_replicas if settings.replication else 1,
    )
    storage = Storage(settings.data_dir, defaults)
    try:
        await asyncio.to_thread(storage.open)
    except StorageError as e:
        raise NodeError(f"[log] data_dir: {e}") from None
    for report in storage.recovery:
        _log(f"log: recovered {report}")
    config = BrokerConfig(
        # Kafka wants an integer broker id: the mesh address is unique in the mesh.
        node_id=int(address) & 0x7FFFFFFF,
        advertised_host=str(address),
        advertised_port=settings.port,
        # The mesh's cluster id (from enrollment; the file's [bootstrap] may not say).
        cluster_id=state.cluster_id if state is not None else "pyralog",
        auto_create_topics=settings.auto_create_topics,
        defaults=defaults,
    )
    port = settings.port

    def admit(host: str) -> bool:
        # A static mesh has no roles: cryptokey routing already chose who reaches us.
        return state is None or directory.permits(host, port)

    broker = Broker(storage, config, settings.data_dir, admit=admit)
    try:
        for a in network.addresses:
            await broker.start(str(a), port, network)
    except StorageError as e:
        raise NodeError(f"[log] data_dir: {e}") from None
    except OSError as e:
        raise NodeError(f"[log] port {port}: cannot listen: {e.strerror or e}") from None
    if settings.replication:
        replication = await broker.join_cluster(
            _cluster_store(settings, agent),
            network=network,
            region=settings.rack or _mesh_region(agent),
            session_timeout=settings.session_timeout_ms / 1000,
            lag_max=settings.replica_lag_time_max_ms / 1000,
            default_replication_factor=settings.replication_factor,
        )
        _log(f"log: replicated, cluster state in {replication.cluster.store.url}")
    return broker


def _mesh_region(agent: Any) -> str | None:
    """The region the coordinator gave this node: replicas spread across regions."""
    view = (agent.view if agent is not None else None) or {}
    region = (view.get("self") or {}).get("region")
    return region if isinstance(region, str) else None


def _cluster_store(settings: LogSettings, agent: Any) -> Store:
    """Where the brokers keep their cluster state: the coordinator's log store over the
    mesh, or an etcd of their own (``[log] cluster_store``)."""
    from pyralog.mesh.node import NodeError

    if settings.cluster_store != "coordinator":
        return open_store(settings.cluster_store)
    if agent is None:
        raise NodeError(
            '[log] replication with cluster_store = "coordinator" needs a coordinator '
            '([bootstrap]); a static mesh can use cluster_store = "etcd://HOST:PORT"'
        )
    return RemoteStore(agent.call, agent.coordinator_address)
