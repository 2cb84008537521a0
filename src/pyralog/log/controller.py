"""A broker's place in the replicated cluster: heartbeat, watch, and the controller duty.

Every broker writes its record (`brokers/<id>`) once a heartbeat, watches the store, and
keeps a `ClusterView` of brokers, topics and partition states. One of them, the holder
of the `controller` key, also elects partition leaders: when a leader's heartbeat goes
silent for `session_timeout` (judged on this process's clock, see `Liveness`) it picks
the next one from the in-sync set (`cluster_state.elect`) and writes it with
compare-and-set. The controller is alive exactly while its broker is: a broker takes
the key over when the holder's broker record goes silent or shows a new incarnation
(it restarted). Consensus is the store's (etcd's Raft, or the one coordinator owning
its SQLite file): nothing here votes.

A broker that cannot heartbeat for `session_timeout` is `fenced`: it knows the others
may have replaced it, so it stops answering as a leader until its heartbeat succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from pyralog.log.cluster_state import (
    BROKERS,
    CONTROLLER,
    PARTITIONS,
    TOPICS,
    BrokerRecord,
    Liveness,
    PartitionState,
    StateError,
    TopicRecord,
    elect,
    initial_state,
    partition_key,
    place,
)
from pyralog.log.errors import TopicExists, UnknownTopic
from pyralog.log.topic_config import TopicConfig
from pyralog.mesh.store import Entry, Store, StoreError
from pyralog.tasks import cancel_and_wait

log = logging.getLogger("pyralog.log.controller")

PRODUCER_IDS = "producer-ids"
PRODUCER_ID_BLOCK = 1000
HEARTBEAT = 1.0
SESSION_TIMEOUT = 4.0


@dataclass
class ClusterView:
    """What this broker last read from the store."""

    brokers: dict[int, BrokerRecord] = field(default_factory=dict)
    alive: set[int] = field(default_factory=set)
    topics: dict[str, TopicRecord] = field(default_factory=dict)
    partitions: dict[tuple[str, int], PartitionState] = field(default_factory=dict)
    controller: int | None = None
    revision: int = -1

    def leader_of(self, topic: str, partition: int) -> int | None:
        state = self.partitions.get((topic, partition))
        return None if state is None else state.leader


class Cluster:
    def __init__(
        self,
        store: Store,
        me: BrokerRecord,
        *,
        heartbeat: float = HEARTBEAT,
        session_timeout: float = SESSION_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.me = replace(me, incarnation=me.incarnation or uuid.uuid4().hex)
        # Several beats per session timeout, so one late beat is not a death.
        self.heartbeat = min(heartbeat, session_timeout / 4)
        self.session_timeout = session_timeout
        self.clock = clock
        self.view = ClusterView()
        self.liveness = Liveness(session_timeout)
        self.listeners: list[Callable[[ClusterView], None]] = []
        self._changed = asyncio.Event()
        self._refreshing = asyncio.Lock()
        self._last_beat = clock()
        self._beat = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._warned: set[str] = set()
        self.elections = 0  # leader changes this broker wrote as controller
        self._pids = (0, 0)  # the block of producer ids this broker hands out: [next, limit)

    @property
    def broker_id(self) -> int:
        return self.me.broker_id

    @property
    def fenced(self) -> bool:
        return self.clock() - self._last_beat > self.session_timeout

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await self._write_beat()
        await self.refresh()
        self._tasks = [
            asyncio.create_task(self._heartbeats()),
            asyncio.create_task(self._watch()),
        ]
        log.info(
            "broker %s joined the cluster (store %s): %d brokers, %d topics",
            self.broker_id,
            self.store.url,
            len(self.view.brokers),
            len(self.view.topics),
        )

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
        # A clean stop leaves at once, so the controller need not wait out the timeout.
        with contextlib.suppress(StoreError, OSError):
            entry = await self.store.get(self.me.key())
            if entry is not None:
                record = BrokerRecord.decode(entry.key, entry.value)
                if record.incarnation == self.me.incarnation:
                    await self.store.delete(entry.key, expect=entry.version)

    async def _write_beat(self) -> None:
        self._beat += 1
        await self.store.put(self.me.key(), replace(self.me, beat=self._beat).encode())
        self._last_beat = self.clock()

    async def _heartbeats(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                await self._write_beat()
                if failures:
                    log.info("heartbeat: the store answers again")
                failures = 0
            except (StoreError, OSError) as e:
                failures += 1
                if failures == 1 or self.fenced:
                    log.warning("heartbeat failed (%s)%s", e, "; fenced" if self.fenced else "")

    async def _watch(self) -> None:
        while True:
            try:
                self.view.revision = await self.store.wait(self.view.revision, self.heartbeat)
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except (StoreError, OSError) as e:
                log.warning("cluster store: %s", e)
                await asyncio.sleep(self.heartbeat)

    # -- reading the store ----------------------------------------------------------------

    async def refresh(self) -> ClusterView:
        async with self._refreshing:
            return await self._refresh()

    async def _refresh(self) -> ClusterView:
        entries = await self.store.scan("")
        now = self.clock()
        view = ClusterView(revision=self.view.revision)
        brokers: list[tuple[BrokerRecord, int]] = []
        controller: Entry | None = None
        for entry in entries:
            try:
                if entry.key.startswith(BROKERS):
                    brokers.append((BrokerRecord.decode(entry.key, entry.value), entry.version))
                elif entry.key.startswith(TOPICS):
                    topic = TopicRecord.decode(entry.key, entry.value)
                    view.topics[topic.name] = topic
                elif entry.key.startswith(PARTITIONS):
                    state = PartitionState.decode(entry.key, entry.value, entry.version)
                    view.partitions[(state.topic, state.partition)] = state
                elif entry.key == CONTROLLER:
                    controller = entry
            except StateError as e:
                if str(e) not in self._warned:
                    self._warned.add(str(e))
                    log.error("cluster store: ignoring a bad record: %s", e)
        self.liveness.observe(brokers, now)
        view.brokers = {r.broker_id: r for r, _ in brokers}
        view.alive = self.liveness.alive(now)
        if not self.fenced:
            view.alive.add(self.broker_id)
        view.controller = self._controller_of(controller, view)
        self.view = view
        if view.controller is None:
            await self._take_controller(controller)
        if self.view.controller == self.broker_id and not self.fenced:
            await self._control()
        for listener in self.listeners:
            listener(self.view)
        self._changed.set()
        self._changed = asyncio.Event()
        return self.view

    def _controller_of(self, entry: Entry | None, view: ClusterView) -> int | None:
        """The live controller's broker id, None if there is none."""
        if entry is None:
            return None
        try:
            obj = json.loads(entry.value)
            holder, incarnation = int(obj["id"]), str(obj["incarnation"])
        except (ValueError, KeyError, TypeError):
            return None
        record = view.brokers.get(holder)
        if record is None or record.incarnation != incarnation or holder not in view.alive:
            return None
        return holder

    async def _take_controller(self, current: Entry | None) -> None:
        if self.fenced:
            return
        value = json.dumps({"id": self.broker_id, "incarnation": self.me.incarnation}).encode()
        expect = 0 if current is None else current.version
        if await self.store.put(CONTROLLER, value, expect=expect):
            log.info("broker %s is the controller", self.broker_id)
            self.view.controller = self.broker_id

    async def wait_change(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._changed.wait()

    # -- the controller's work ------------------------------------------------------------

    async def _control(self) -> None:
        view = self.view
        for topic in view.topics.values():
            for index, replicas in enumerate(topic.assignment):
                if (topic.name, index) not in view.partitions:
                    # The creator died between writing the topic and its partitions.
                    state = initial_state(topic.name, index, replicas)
                    await self.store.put(state.key(), state.encode(), expect=0)
        for (name, _), state in list(view.partitions.items()):
            topic = view.topics.get(name)
            if topic is None:
                continue
            new = elect(state, view.alive, topic.config.unclean)
            if new is None:
                continue
            if await self.store.put(new.key(), new.encode(), expect=state.version):
                self.elections += 1
                if new.leader < 0:
                    log.error(
                        "%s-%d is offline: no in-sync replica is alive (in-sync %s)",
                        name,
                        state.partition,
                        list(state.isr),
                    )
                else:
                    log.info(
                        "%s-%d: broker %d leads at epoch %d (was %d), in-sync %s",
                        name,
                        state.partition,
                        new.leader,
                        new.leader_epoch,
                        state.leader,
                        list(new.isr),
                    )

    # -- writes any broker makes ----------------------------------------------------------

    async def create_topic(
        self, name: str, config: TopicConfig, replication_factor: int
    ) -> TopicRecord:
        """Place and record a new topic; PlacementError, TopicExists, StoreError."""
        alive = [self.view.brokers[b] for b in sorted(self.view.alive) if b in self.view.brokers]
        assignment = place(
            config.partitions, replication_factor, alive, start=len(self.view.topics)
        )
        record = TopicRecord(name, uuid.uuid4(), config, assignment)
        if not await self.store.put(record.key(), record.encode(), expect=0):
            raise TopicExists(f"topic {name!r} already exists")
        for index, replicas in enumerate(assignment):
            state = initial_state(name, index, replicas)
            await self.store.put(state.key(), state.encode(), expect=0)
        await self.refresh()
        return record

    async def delete_topic(self, name: str) -> None:
        topic = self.view.topics.get(name)
        if topic is None:
            raise UnknownTopic(f"no topic {name!r}")
        await self.store.delete(topic.key())
        for index in range(len(topic.assignment)):
            await self.store.delete(partition_key(name, index))
        await self.refresh()

    async def producer_id(self) -> int:
        """A producer id no broker of the cluster ever hands out again: each broker
        reserves blocks of them in the store (compare-and-set on one counter)."""
        next_id, limit = self._pids
        while next_id >= limit:
            entry = await self.store.get(PRODUCER_IDS)
            start = int(entry.value) if entry is not None else 0
            expect = entry.version if entry is not None else 0
            if await self.store.put(
                PRODUCER_IDS, str(start + PRODUCER_ID_BLOCK).encode(), expect=expect
            ):
                next_id, limit = start, start + PRODUCER_ID_BLOCK
        self._pids = (next_id + 1, limit)
        return next_id

    async def change_isr(
        self, state: PartitionState, isr: tuple[int, ...]
    ) -> PartitionState | None:
        """The leader's in-sync set change, written only if the partition's state is
        still `state` (same leader, epoch and version); the new state, or None."""
        if self.fenced:
            return None
        new = replace(state, isr=isr)
        if not await self.store.put(new.key(), new.encode(), expect=state.version):
            return None
        entry = await self.store.get(new.key())
        if entry is None:
            return None
        return PartitionState.decode(entry.key, entry.value, entry.version)
