"""The broker's replicas: makes each local partition lead or follow as the store says.

On every change of the `ClusterView` (controller.py), `Replication` brings the local
storage in line: topics this broker holds a replica of exist here (with the cluster's
topic id), topics deleted from the cluster go, and each partition is either the leader
(a `replica.LeaderState`, appends stamped with its epoch) or a follower (a
`fetcher.Fetcher` copying from the leader). Meanwhile it advances each led partition's
high watermark as followers report their log ends, and writes in-sync set changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from kio.schema.errors import ErrorCode as E

from pyralog.log.cluster_state import PartitionState, PlacementError, TopicRecord
from pyralog.log.context import Context, LivePartition
from pyralog.log.controller import Cluster, ClusterView
from pyralog.log.errors import InvalidTopic, TopicExists
from pyralog.log.fetcher import Fetcher
from pyralog.log.replica import LeaderState
from pyralog.log.storage import check_topic_name
from pyralog.log.topic_config import TopicConfig
from pyralog.mesh.store import StoreError
from pyralog.tasks import cancel_and_wait

log = logging.getLogger("pyralog.log.replication")

REPLICA_LAG_MAX = 10.0  # seconds; Kafka's replica.lag.time.max.ms is 30 s
ISR_CHECK = 0.25


class Replication:
    def __init__(
        self,
        ctx: Context,
        cluster: Cluster,
        network: Any = None,
        *,
        lag_max: float = REPLICA_LAG_MAX,
        default_replication_factor: int = 3,
        ssl: Any = None,
    ) -> None:
        """`ssl` (an ssl.SSLContext, client side) when the brokers listen with TLS."""
        self.ctx = ctx
        self.ssl = ssl
        self.cluster = cluster
        self.network = network
        self.lag_max = lag_max
        self.default_replication_factor = default_replication_factor
        self.me = cluster.broker_id
        self.fetchers: dict[tuple[str, int], Fetcher] = {}
        self._seen_topics: set[str] = set()
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.errors: list[str] = []
        # Told when this broker starts (True) or stops (False) leading a partition.
        self.role_listeners: list[Callable[[LivePartition, bool], None]] = []

    async def start(self) -> None:
        """Join the cluster; if its store does not answer yet, keep trying in the
        background (until then this broker leads nothing and says so to clients)."""
        self.cluster.listeners.append(lambda _: self._dirty.set())
        try:
            await self._join()
        except (StoreError, OSError) as e:
            log.warning("cluster store unreachable (%s); retrying in the background", e)
            self._tasks.append(asyncio.create_task(self._join_later()))

    async def _join(self) -> None:
        await self.cluster.start()
        await self._reconcile(self.cluster.view)
        self._tasks += [
            asyncio.create_task(self._reconciler()),
            asyncio.create_task(self._isr_loop()),
        ]

    async def _join_later(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._join()
                return
            except (StoreError, OSError):
                continue

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
        for fetcher in list(self.fetchers.values()):
            await fetcher.stop()
        self.fetchers.clear()
        await self.cluster.close()

    # -- following the store --------------------------------------------------------------

    async def _reconciler(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._reconcile(self.cluster.view)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.exception("replication: applying the cluster state failed")
                self.errors = [*self.errors[-9:], str(e)]
                await asyncio.sleep(0.5)
                self._dirty.set()

    async def _reconcile(self, view: ClusterView) -> None:
        for topic in view.topics.values():
            if any(self.me in replicas for replicas in topic.assignment):
                await self._ensure_topic(topic)
        for name in self._seen_topics - set(view.topics):
            await self._drop_topic(name)
        self._seen_topics = set(view.topics)
        for (name, index), state in view.partitions.items():
            if self.me not in state.replicas:
                continue
            live = self.ctx.partition(name, index)
            if live is None:
                continue
            if state.leader == self.me and not self.cluster.fenced:
                self._lead(live, state)
            else:
                await self._follow(live, state)
        for key in [k for k in self.fetchers if k not in view.partitions]:
            await self.fetchers.pop(key).stop()

    async def _ensure_topic(self, topic: TopicRecord) -> None:
        local = self.ctx.storage.topic(topic.name)
        if local is not None and local.topic_id == topic.topic_id:
            return
        if local is not None:
            # A topic of that name that the cluster deleted and created again.
            log.info("topic %s: replacing the local copy of an older topic", topic.name)
            await self._drop_topic(topic.name)
        with contextlib.suppress(TopicExists):
            await self.ctx.run_io(
                self.ctx.storage.create_topic, topic.name, topic.config, topic_id=topic.topic_id
            )
        for index in range(len(topic.assignment)):
            live = self.ctx.partition(topic.name, index)
            if live is not None:
                self._replicated(live)

    async def _drop_topic(self, name: str) -> None:
        for key in [k for k in self.fetchers if k[0] == name]:
            await self.fetchers.pop(key).stop()
        if self.ctx.storage.topic(name) is not None:
            with contextlib.suppress(KeyError):
                await self.ctx.run_io(self.ctx.storage.delete_topic, name)
            self.ctx.forget_topic(name)

    def _replicated(self, live: LivePartition) -> None:
        """The high watermark is the leader's to move from now on, starting low: what
        this log holds beyond what the replicas confirmed is not committed yet."""
        if live.log.follow_log_end:
            live.log.follow_log_end = False
            live.log.high_watermark = live.log.log_start_offset

    def _lead(self, live: LivePartition, state: PartitionState) -> None:
        self._replicated(live)
        key = (state.topic, state.partition)
        fetcher = self.fetchers.pop(key, None)
        if fetcher is not None:
            # Not awaited: an append it has in flight runs on the one storage thread,
            # so it lands before any append of ours.
            fetcher.task.cancel()
        leader = live.leader
        if leader is not None and leader.epoch == state.leader_epoch:
            if state.version != leader.state.version:
                leader.committed(state)
            live.state = state
            return
        if live.log.leader_epoch > state.leader_epoch:
            log.error(
                "%s: the store says epoch %d but this log has %d; not leading",
                live.log.name,
                state.leader_epoch,
                live.log.leader_epoch,
            )
            return
        live.log.leader_epoch = state.leader_epoch
        # Idempotence state is rebuilt from this log: as a follower it may have been cut.
        live.producers = None
        live.leader = LeaderState(self.me, state, time.monotonic(), self.lag_max)
        live.state = state
        log.info(
            "%s: leading at epoch %d, replicas %s, in-sync %s",
            live.log.name,
            state.leader_epoch,
            list(state.replicas),
            list(state.isr),
        )
        self.advance(live)
        live.notify()
        for listener in self.role_listeners:
            listener(live, True)

    async def _follow(self, live: LivePartition, state: PartitionState) -> None:
        self._replicated(live)
        if live.leader is not None:
            for listener in self.role_listeners:
                listener(live, False)
        live.leader = None
        live.state = state
        live.notify()  # produce requests waiting for acks=all give up now
        key = (state.topic, state.partition)
        fetcher = self.fetchers.get(key)
        if fetcher is not None and (fetcher.state.leader, fetcher.state.leader_epoch) == (
            state.leader,
            state.leader_epoch,
        ):
            return
        if fetcher is not None:
            # Not awaited: its connection may be to a leader that died, whose close
            # can take a while; the new fetcher need not wait for that.
            self.fetchers.pop(key).task.cancel()
        if state.leader < 0 or state.leader == self.me:
            return  # no leader, or this broker fenced: nothing to copy from
        self.fetchers[key] = Fetcher(
            self.ctx, live, state, self.me, self.address_of, self.network, self.ssl
        )

    def address_of(self, broker_id: int) -> tuple[str, int] | None:
        record = self.cluster.view.brokers.get(broker_id)
        return None if record is None else (record.host, record.port)

    # -- topics ---------------------------------------------------------------------------

    async def create_topic(
        self, name: str, config: TopicConfig, replication_factor: int = -1
    ) -> TopicRecord | E:
        """Create a replicated topic (CreateTopics, or auto-creation on Metadata) and wait
        until this broker has applied it; the record, or the error code for the client."""
        alive = len(self.cluster.view.alive)
        if replication_factor == -1:
            replication_factor = min(self.default_replication_factor, alive)
        if config.min_insync_replicas > replication_factor:
            # A default of 2 on a topic of one replica would refuse every acks=all.
            config = dataclasses.replace(config, min_insync_replicas=replication_factor)
        try:
            check_topic_name(name)
            record = await self.cluster.create_topic(name, config, replication_factor)
        except TopicExists:
            found = self.cluster.view.topics.get(name)
            return found if found is not None else E.topic_already_exists
        except InvalidTopic:
            return E.invalid_topic_exception
        except PlacementError as e:
            log.info("topic %s not created: %s", name, e)
            return E.invalid_replication_factor
        except (StoreError, OSError) as e:
            log.warning("topic %s not created: the cluster store failed: %s", name, e)
            return E.kafka_storage_error
        await self._reconcile(self.cluster.view)
        return record

    def report(self) -> dict[str, Any]:
        """The partitions this broker leads, with each follower's lag (for admins)."""
        now = time.monotonic()
        partitions = []
        for live in self.ctx.live_partitions():
            leader = live.leader
            if leader is None:
                continue
            end = live.log.log_end_offset
            partitions.append(
                {
                    "topic": live.log.topic,
                    "partition": live.log.partition,
                    "leader_epoch": leader.epoch,
                    "log_end_offset": end,
                    "high_watermark": live.log.high_watermark,
                    "isr": list(leader.isr),
                    "followers": {
                        str(r): {"lag_records": n, "lag_seconds": round(s, 3)}
                        for r, (n, s) in leader.lag(end, now).items()
                    },
                }
            )
        view = self.cluster.view
        return {
            "broker_id": self.me,
            "controller": view.controller,
            "fenced": self.cluster.fenced,
            "store": self.cluster.store.url,
            "partitions": sorted(partitions, key=lambda p: (p["topic"], p["partition"])),
        }

    # -- the leader's side ----------------------------------------------------------------

    def leader_of(self, live: LivePartition) -> LeaderState | None:
        """The partition's LeaderState if this broker may act as its leader now."""
        if live.leader is None or self.cluster.fenced:
            return None
        return live.leader

    def advance(self, live: LivePartition) -> None:
        """Move the high watermark as far as the in-sync replicas allow; wake waiters."""
        leader = live.leader
        if leader is None:
            return
        partition_log = live.log
        hw = leader.high_watermark(partition_log.log_end_offset, partition_log.high_watermark)
        if hw != partition_log.high_watermark:
            partition_log.high_watermark = hw
            live.notify()

    def on_replica_fetch(self, live: LivePartition, replica: int, offset: int) -> None:
        leader = live.leader
        if leader is None:
            return
        leader.on_fetch(replica, offset, live.log.log_end_offset, time.monotonic())
        self.advance(live)

    def check_replica(self, replica: int, peer_host: str | None) -> bool:
        """A fetch naming replica N must come from N's mesh address: WireGuard's
        cryptokey routing makes the source address proof of the sender's key."""
        record = self.cluster.view.brokers.get(replica)
        return record is not None and (peer_host is None or record.host == peer_host)

    async def _isr_loop(self) -> None:
        while True:
            await asyncio.sleep(ISR_CHECK)
            for live in list(self.ctx.live_partitions()):
                leader = live.leader
                if leader is None or self.cluster.fenced:
                    continue
                try:
                    await self._check_isr(live, leader)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    message = f"{live.log.name}: in-sync set change failed: {e}"
                    if message not in self.errors[-3:]:  # the store down: say it once
                        log.warning("%s", message)
                        self.errors = [*self.errors[-9:], message]

    async def _check_isr(self, live: LivePartition, leader: LeaderState) -> None:
        partition_log = live.log
        epoch_start = partition_log.end_offset_for_epoch(leader.epoch - 1)[1]
        if epoch_start < 0:
            epoch_start = partition_log.log_start_offset
        proposal = leader.isr_proposal(partition_log.high_watermark, epoch_start, time.monotonic())
        if proposal is None:
            return
        before = leader.state
        leader.pending = proposal
        self.advance(live)
        try:
            new = await self.cluster.change_isr(before, proposal)
        except BaseException:
            leader.pending = None
            raise
        if new is None:
            leader.pending = None
            return
        if live.leader is leader:
            leader.committed(new)
            live.state = new
            log.info(
                "%s: in-sync set %s -> %s", partition_log.name, list(before.isr), list(new.isr)
            )
            self.advance(live)
            live.notify()
