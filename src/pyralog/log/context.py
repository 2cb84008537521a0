"""What every request handler may touch: storage, live partition state, groups, ids.

One `Context` per broker. Blocking storage work (appends, fsync, topic files, offset
commits) runs on one worker thread per broker through `run_io`, so the event loop
never waits on a disk; reads of recently written data come from the page cache and
stay on the loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pyralog.log.partition import PartitionLog
from pyralog.log.producers import ProducerIds, ProducerTable
from pyralog.log.storage import Storage
from pyralog.log.topic_config import TopicConfig

T = TypeVar("T")
log = logging.getLogger("pyralog.log")


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """How the broker names itself to clients, and its topic defaults."""

    node_id: int = 0
    advertised_host: str = "127.0.0.1"
    advertised_port: int = 9092
    cluster_id: str = "pyralog"
    auto_create_topics: bool = True
    defaults: TopicConfig = field(default_factory=TopicConfig)
    # Kafka's group.initial.rebalance.delay.ms: how long a new group waits for members.
    initial_rebalance_delay_ms: int = 3000
    flush_check_ms: int = 100
    retention_check_ms: int = 30_000


class LivePartition:
    """A partition's log with its in-memory broker state."""

    def __init__(self, log: PartitionLog) -> None:
        self.log = log
        # Rebuilt from the log's batch headers on first produce, off the event loop
        # (`Context.producers`): a long log takes a while to scan.
        self.producers: ProducerTable | None = None
        # Appends to one partition are serialized, in arrival order (asyncio.Lock is FIFO).
        self.append_lock = asyncio.Lock()
        # Set by replication.py when the topic is replicated: the store's state of the
        # partition, and the LeaderState while this broker leads it.
        self.state: Any = None
        self.leader: Any = None
        self._waiters: set[asyncio.Future[None]] = set()

    def waiter(self) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(future)
        future.add_done_callback(self._waiters.discard)
        return future

    def notify(self) -> None:
        """Wake every long-polling Fetch waiting on this partition."""
        for future in list(self._waiters):
            if not future.done():
                future.set_result(None)


class Context:
    def __init__(self, storage: Storage, config: BrokerConfig, data_dir: Path) -> None:
        self.storage = storage
        self.config = config
        self.data_dir = data_dir
        self.producer_ids = ProducerIds(data_dir / "producer-ids")
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pyralog-log-io")
        self._live: dict[tuple[str, int], LivePartition] = {}
        self.topic_ids: dict[uuid.UUID, str] = {}
        self.started = time.monotonic()
        self.groups: Any = None  # the GroupService, set by the broker
        self.replication: Any = None  # replication.Replication, in a replicated cluster
        self.storage_errors: list[str] = []

    def log_storage_error(self, error: Exception) -> None:
        """Tell the operator (log, status) about a failed write; the producer got it too."""
        message = str(error)
        if not self.storage_errors or self.storage_errors[-1] != message:
            log.error("storage: %s", message)
            self.storage_errors = [*self.storage_errors[-9:], message]

    async def run_io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, functools.partial(fn, *args, **kwargs))

    def partition(self, topic: str, index: int) -> LivePartition | None:
        key = (topic, index)
        live = self._live.get(key)
        if live is None or live.log is not self.storage.partition(topic, index):
            log = self.storage.partition(topic, index)
            if log is None:
                self._live.pop(key, None)
                return None
            live = LivePartition(log)
            self._live[key] = live
        return live

    def missing(self, topic: str, partition: int) -> int:
        """The error for a partition this broker does not hold: in a replicated cluster,
        one that exists on other brokers is NOT_LEADER_OR_FOLLOWER (look again)."""
        if self.replication is not None:
            record = self.replication.cluster.view.topics.get(topic)
            if record is not None and 0 <= partition < len(record.assignment):
                return 6  # NOT_LEADER_OR_FOLLOWER
        return 3  # UNKNOWN_TOPIC_OR_PARTITION

    def live_partitions(self) -> list[LivePartition]:
        return list(self._live.values())

    async def producers(self, live: LivePartition) -> ProducerTable:
        """The partition's idempotence state (call with its append lock held)."""
        if live.producers is None:
            live.producers = await self.run_io(lambda: ProducerTable.rebuild(live.log.headers()))
        return live.producers

    def forget_topic(self, topic: str) -> None:
        for key in [k for k in self._live if k[0] == topic]:
            self._live.pop(key).notify()

    def close(self) -> None:
        self._io.shutdown(wait=True)
