"""Replication's moving parts, each against the real thing: the leader's follower
bookkeeping (`LeaderState`: high watermark, in-sync set, KIP-841 maximal ISR), a
follower's log (`PartitionLog.append_replica`, `truncate_to`), the cluster's store
records (`Cluster` over an in-process SqliteStore, time driven by a fake clock), and
the follower's `Fetcher` (against a leader PartitionLog answering its two requests)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kio.schema.errors import ErrorCode as E
from logbatches import BASE_TS, numbered, read_all

from pyralog.log import batch as v2
from pyralog.log import epochs
from pyralog.log import fetcher as fetcher_module
from pyralog.log.cluster_state import (
    CONTROLLER,
    NO_LEADER,
    BrokerRecord,
    PartitionState,
    PlacementError,
    TopicRecord,
    partition_key,
)
from pyralog.log.controller import PRODUCER_ID_BLOCK, Cluster
from pyralog.log.epochs import EpochEntry
from pyralog.log.errors import StorageError, TopicExists, UnknownTopic
from pyralog.log.fetcher import Fetcher
from pyralog.log.partition import PartitionLog
from pyralog.log.replica import LeaderState
from pyralog.log.topic_config import TopicConfig
from pyralog.mesh.store_sqlite import SqliteStore

# -- LeaderState ----------------------------------------------------------------------------


def leading(
    isr: tuple[int, ...] = (1, 2, 3),
    replicas: tuple[int, ...] = (1, 2, 3),
    *,
    me: int = 1,
    lag_max: float = 10.0,
    now: float = 0.0,
) -> LeaderState:
    state = PartitionState("t", 0, me, 3, replicas, isr, version=1)
    return LeaderState(me, state, now, lag_max)


def test_hw_waits_until_every_isr_member_fetched_once() -> None:
    leader = leading()
    assert leader.high_watermark(10, 0) == 0  # nobody fetched: log ends unknown
    leader.on_fetch(2, 8, 10, 1.0)
    assert leader.high_watermark(10, 0) == 0  # 3 still unknown
    assert leader.high_watermark(10, 4) == 4  # ... and the current one stays
    leader.on_fetch(3, 6, 10, 1.0)
    assert leader.high_watermark(10, 0) == 6  # min(leader 10, 8, 6)
    leader.on_fetch(3, 10, 10, 2.0)
    assert leader.high_watermark(10, 6) == 8
    leader.on_fetch(2, 10, 10, 2.0)
    assert leader.high_watermark(10, 8) == 10
    assert leader.high_watermark(15, 10) == 10  # the leader appended: followers have 10
    assert leader.high_watermark(15, 10) <= 15


def test_hw_is_the_leader_end_for_a_single_replica() -> None:
    leader = leading(isr=(1,), replicas=(1,))
    assert leader.high_watermark(7, 0) == 7
    assert leader.followers == {}


def test_hw_counts_only_the_isr() -> None:
    leader = leading(isr=(1, 2))
    leader.on_fetch(2, 7, 10, 1.0)  # 3 is out of sync and never fetched
    assert leader.high_watermark(10, 0) == 7
    leader.on_fetch(3, 1, 10, 1.0)  # far behind, but not in the set
    assert leader.high_watermark(10, 7) == 7
    # The leader's own log end counts even when a follower reports more.
    leader.on_fetch(2, 12, 10, 2.0)
    assert leader.high_watermark(10, 7) == 10


def test_hw_never_goes_back() -> None:
    leader = leading(isr=(1, 2))
    leader.on_fetch(2, 10, 10, 1.0)
    hw = leader.high_watermark(10, 0)
    assert hw == 10
    leader.on_fetch(2, 4, 10, 2.0)  # the follower reports less (it truncated)
    assert leader.high_watermark(10, hw) == 10
    assert leader.high_watermark(12, 11) == 11  # the current one wins over a lower min


def test_maximal_isr_a_shrink_raises_the_hw_only_once_committed() -> None:
    leader = leading()
    leader.on_fetch(2, 10, 10, 1.0)
    leader.on_fetch(3, 2, 10, 1.0)  # 3 is stuck at 2
    assert leader.high_watermark(10, 0) == 2
    leader.pending = (1, 2)  # the leader is writing a shrink without 3
    assert leader.high_watermark(10, 2) == 2  # not yet: the store still names 3
    assert leader.isr_proposal(2, 0, 100.0) is None  # one change at a time
    leader.committed(replace(leader.state, isr=(1, 2), version=2))
    assert leader.pending is None and leader.isr == (1, 2)
    assert leader.high_watermark(10, 2) == 10


def test_maximal_isr_an_expansion_counts_the_new_member_at_once() -> None:
    leader = leading(isr=(1, 2))
    leader.on_fetch(2, 10, 10, 1.0)
    assert leader.high_watermark(10, 5) == 10
    leader = leading(isr=(1, 2))
    leader.on_fetch(2, 10, 10, 1.0)
    leader.on_fetch(3, 6, 10, 1.0)
    leader.pending = (1, 2, 3)
    assert leader.high_watermark(10, 5) == 6  # the joining member holds it back already
    leader.committed(replace(leader.state, isr=(1, 2, 3), version=2))
    assert leader.high_watermark(10, 6) == 6
    # A pending member that never fetched keeps the high watermark where it is.
    fresh = leading(isr=(1, 2))
    fresh.on_fetch(2, 10, 10, 1.0)
    fresh.pending = (1, 2, 3)
    assert fresh.high_watermark(10, 3) == 3


def test_a_follower_slightly_behind_under_steady_load_stays_in_sync() -> None:
    leader = leading(lag_max=3.0)
    end = 0
    seen = {2: 0, 3: 0}  # what each follower has: the leader's end at its last fetch
    hw = 0
    for step in range(1, 121):  # 60 s, a fetch every 0.5 s, 100 records a second
        now = step * 0.5
        end += 50
        for follower in (2, 3):
            leader.on_fetch(follower, seen[follower], end, now)
            seen[follower] = end  # the response brings it up to the leader's end
        hw = leader.high_watermark(end, hw)
        assert leader.isr_proposal(hw, 0, now) is None, f"dropped at {now}"
        behind, seconds = leader.lag(end, now)[2]
        assert behind == 50 and seconds == 0.5  # never at the end, never falling behind
    assert hw == end - 50


def test_a_stuck_follower_drops_out_after_lag_max() -> None:
    leader = leading(lag_max=3.0)
    end = 0
    have = 0
    for step in range(1, 9):
        now = step * 0.5
        end += 10
        leader.on_fetch(2, have, end, now)
        have = end
        leader.on_fetch(3, 0, end, now)  # fetches, but gets nowhere
        proposal = leader.isr_proposal(0, 0, now)
        if now <= 3.0:
            assert proposal is None, now
        else:
            assert proposal == (1, 2), now
            break
    else:
        pytest.fail("follower 3 was never dropped")
    assert leader.lag(end, 3.5)[3] == (end, 3.5)


def test_a_follower_that_stops_fetching_drops_out_lag_max_after_its_last_catch_up() -> None:
    leader = leading(isr=(1, 2), lag_max=2.0)
    leader.on_fetch(2, 10, 10, 5.0)  # caught up at 5, then silence
    assert leader.isr_proposal(10, 0, 7.0) is None
    assert leader.isr_proposal(10, 0, 7.01) == (1,)


def test_a_follower_falling_slowly_behind_drops_out() -> None:
    """It makes progress at every fetch, but never reaches the end the leader had at its
    previous fetch: that is falling behind, not keeping up."""
    leader = leading(isr=(1, 2), lag_max=3.0)
    end, have = 100, 0
    dropped_at = None
    for step in range(1, 41):
        now = step * 0.5
        end += 20
        leader.on_fetch(2, have, end, now)
        have += 10  # half the leader's rate
        if leader.isr_proposal(0, 0, now) == (1,):
            dropped_at = now
            break
    assert dropped_at is not None and 3.0 < dropped_at <= 4.0


def test_every_member_gets_lag_max_to_show_up_under_a_new_leader() -> None:
    leader = leading(lag_max=5.0, now=100.0)
    assert leader.isr_proposal(0, 0, 105.0) is None
    assert leader.isr_proposal(0, 0, 105.5) == (1,)  # the leader never drops itself
    assert leader.lag(40, 105.5) == {2: (40, 5.5), 3: (40, 5.5)}


def test_the_leader_keeps_itself_wherever_it_sits_in_the_replicas() -> None:
    leader = leading(isr=(3, 1, 2), replicas=(3, 1, 2), me=2, lag_max=1.0)
    assert set(leader.followers) == {1, 3}
    assert leader.isr_proposal(0, 0, 2.0) == (2,)


def test_rejoin_needs_the_hw_the_epoch_start_and_being_caught_up() -> None:
    leader = leading(isr=(1, 2), replicas=(3, 1, 2), lag_max=3.0)
    leader.on_fetch(2, 30, 30, 1.0)
    hw, epoch_start = 20, 25
    # First fetch: behind the leader's end, so not caught up; and below the epoch start.
    leader.on_fetch(3, 22, 30, 1.0)
    assert leader.isr_proposal(hw, epoch_start, 1.0) is None
    # Caught up (it reached the leader's end at its previous fetch) but still below the
    # start of this leader's epoch: it has records of an older leader only.
    leader.on_fetch(3, 24, 24, 1.5)
    leader.on_fetch(3, 24, 40, 2.0)
    assert leader.followers[3].caught_up == 1.5
    assert leader.isr_proposal(hw, epoch_start, 2.0) is None
    # At the leader's end (40 >= max(HW, epoch start)): back in, in replica order.
    leader.on_fetch(3, 40, 40, 2.5)
    assert leader.isr_proposal(hw, epoch_start, 2.5) == (3, 1, 2)


def test_rejoin_needs_the_hw_even_when_caught_up() -> None:
    leader = leading(isr=(1, 2), lag_max=3.0)
    leader.on_fetch(2, 50, 50, 1.0)
    leader.on_fetch(3, 18, 18, 1.0)  # at the leader's end then
    leader.on_fetch(3, 18, 50, 1.5)  # still caught up (by the previous fetch's end)
    assert leader.isr_proposal(20, 10, 1.5) is None  # 18 < HW 20
    assert leader.isr_proposal(18, 10, 1.5) == (1, 2, 3)


def test_rejoin_needs_a_recent_catch_up_not_just_the_offset() -> None:
    leader = leading(isr=(1, 2), lag_max=3.0)
    leader.on_fetch(2, 40, 40, 10.0)
    leader.on_fetch(3, 27, 40, 10.0)  # first fetch at 10 s, behind: not caught up
    assert leader.isr_proposal(20, 0, 10.0) is None  # 27 >= HW, but last caught up at 0
    leader.on_fetch(3, 40, 45, 11.0)  # reaches the end the leader had at its last fetch
    assert leader.followers[3].caught_up == 10.0
    assert leader.isr_proposal(20, 0, 11.0) == (1, 2, 3)


def test_committed_clears_pending_and_settles_the_proposal() -> None:
    leader = leading(isr=(1, 2))
    leader.on_fetch(2, 5, 5, 1.0)
    leader.on_fetch(3, 5, 5, 1.0)
    proposal = leader.isr_proposal(5, 0, 1.0)
    assert proposal == (1, 2, 3)
    leader.pending = proposal
    assert leader.isr_proposal(5, 0, 1.0) is None
    leader.committed(replace(leader.state, isr=proposal, version=9))
    assert leader.pending is None and leader.state.version == 9 and leader.epoch == 3
    assert leader.isr_proposal(5, 0, 1.0) is None  # the set is right now


def test_lag_figures() -> None:
    leader = leading(lag_max=30.0, now=0.0)
    assert leader.lag(100, 2.0) == {2: (100, 2.0), 3: (100, 2.0)}  # unknown log ends
    leader.on_fetch(2, 60, 100, 3.0)
    leader.on_fetch(3, 100, 100, 3.0)
    assert leader.lag(100, 4.0) == {2: (40, 4.0), 3: (0, 1.0)}
    leader.on_fetch(2, 105, 100, 5.0)  # more than the leader: never negative
    assert leader.lag(100, 5.0)[2] == (0, 0.0)


def test_a_fetch_from_a_broker_that_is_no_replica_is_ignored() -> None:
    leader = leading(isr=(1, 2))
    leader.on_fetch(9, 100, 100, 1.0)
    assert set(leader.followers) == {2, 3}
    assert leader.high_watermark(100, 0) == 0
    assert 9 not in leader.lag(100, 1.0)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 5)),
        st.tuples(st.just("fetch"), st.sampled_from([2, 3]), st.integers(0, 6)),
        st.tuples(st.just("fetch"), st.sampled_from([2, 3]), st.just(10**6)),  # all of it
        st.tuples(st.just("tick"), st.floats(0.1, 3.0)),
        st.tuples(st.just("propose")),
        st.tuples(st.just("commit")),
        st.tuples(st.just("lost")),
    ),
    max_size=80,
)


@settings(max_examples=600, deadline=None)
@given(isr=st.sampled_from([(1, 2, 3), (1, 2), (1, 3), (1,)]), ops=ops)
def test_hw_is_always_on_every_member_the_store_names(
    isr: tuple[int, ...], ops: list[tuple[Any, ...]]
) -> None:
    """Whatever the fetches, appends, time and ISR writes do: the high watermark never
    goes back, never passes the leader's end, and every member of the committed in-sync
    set (and of a pending one) has reported holding everything below it."""
    leader = leading(isr, lag_max=2.0)
    end, hw, now, version = 0, 0, 0.0, 1
    have = {2: 0, 3: 0}  # what each follower really holds
    for op in ops:
        if op[0] == "append":
            end += op[1]
        elif op[0] == "fetch":
            follower = op[1]
            leader.on_fetch(follower, have[follower], end, now)
            have[follower] = min(end, have[follower] + op[2])
        elif op[0] == "tick":
            now += op[1]
        elif op[0] == "propose":
            proposal = leader.isr_proposal(hw, 0, now)
            if proposal is not None:
                assert 1 in proposal
                leader.pending = proposal
        elif op[0] == "commit" and leader.pending is not None:
            version += 1
            leader.committed(replace(leader.state, isr=leader.pending, version=version))
        elif op[0] == "lost":
            leader.pending = None  # the compare-and-set lost: nothing changed
        new = leader.high_watermark(end, hw)
        assert hw <= new <= end
        hw = new
        for member in set(leader.isr) | set(leader.pending or ()):
            if member != 1:
                # What it told the leader it holds (it may hold more by now).
                reported = leader.followers[member].log_end
                assert reported >= hw or (reported < 0 and hw == 0), (member, reported, hw)
                assert have[member] >= reported


# -- PartitionLog.append_replica ------------------------------------------------------------


def open_log(directory: Path, **config: Any) -> PartitionLog:
    directory.mkdir(exist_ok=True)
    log = PartitionLog(directory, "t", 0, TopicConfig(**config), lambda: BASE_TS / 1000)
    log.open()
    return log


def log_bytes(log: PartitionLog) -> bytes:
    return b"".join(s.path.read_bytes()[: s.size] for s in log.segments)


def snapshot(log: PartitionLog) -> tuple[Any, ...]:
    return (log.log_end_offset, log.size, log.epochs.entries, log.leader_epoch, log_bytes(log))


def everything(log: PartitionLog, at: int = 0, max_bytes: int = 1 << 20) -> bytes:
    return log.read(at, max_bytes, limit=log.log_end_offset)


def stamped(first: int, epoch: int, count: int = 1) -> bytes:
    """A batch as a leader stores it: offsets from `first`, `epoch` in its header."""
    data = bytearray(numbered(first, count))
    v2.assign(data, first, leader_epoch=epoch)
    return bytes(data)


@pytest.fixture
def logs(tmp_path: Path) -> Any:
    opened: list[PartitionLog] = []

    def make(name: str, **config: Any) -> PartitionLog:
        log = open_log(tmp_path / name, **config)
        opened.append(log)
        return log

    yield make
    for log in opened:
        log.close()


def test_replica_copy_is_byte_identical_and_keeps_epochs(logs: Any, tmp_path: Path) -> None:
    leader, follower = logs("leader"), logs("follower")
    leader.append(numbered(0, 1))
    leader.append(numbered(1, 2))  # epochs 0, 0
    leader.leader_epoch = 2
    leader.append(numbered(3, 3))  # epoch 2 from offset 3
    assert leader.epochs.entries == [EpochEntry(0, 0), EpochEntry(2, 3)]
    headers = follower.append_replica(everything(leader))
    assert [(h.base_offset, h.leader_epoch) for h in headers] == [(0, 0), (1, 0), (3, 2)]
    assert log_bytes(follower) == log_bytes(leader)
    assert read_all(follower) == read_all(leader)
    assert follower.log_end_offset == 6
    assert follower.epochs.entries == [EpochEntry(0, 0), EpochEntry(2, 3)]
    assert follower.leader_epoch == 2  # a later lead would not go back below it
    assert follower.end_offset_for_epoch(1) == (0, 3)
    # Checkpointed already, not only rebuilt from the batches at the next open.
    saved = epochs.load(follower.path)
    assert saved is not None and saved.entries == follower.epochs.entries
    follower.close()
    again = open_log(tmp_path / "follower")
    try:
        assert again.epochs.entries == [EpochEntry(0, 0), EpochEntry(2, 3)]
        assert again.log_end_offset == 6 and again.leader_epoch == 2
        assert read_all(again) == read_all(leader)
    finally:
        again.close()


def test_replica_copy_in_small_fetches_across_segment_rolls(logs: Any) -> None:
    leader = logs("leader", segment_bytes=1024)
    follower = logs("follower", segment_bytes=1024)
    for n, epoch in enumerate([0, 0, 1, 1, 1, 4, 4, 7, 7, 7, 7, 9]):
        leader.leader_epoch = epoch
        leader.append(numbered(leader.log_end_offset, 1 + n % 3, size=100))
    assert len(leader.segments) > 2
    fetches = 0
    while follower.log_end_offset < leader.log_end_offset:
        follower.append_replica(everything(leader, follower.log_end_offset, max_bytes=300))
        fetches += 1
    assert fetches > 3
    assert log_bytes(follower) == log_bytes(leader)
    assert follower.epochs.entries == leader.epochs.entries
    assert [e.epoch for e in follower.epochs.entries] == [0, 1, 4, 7, 9]
    for epoch in range(10):
        assert follower.end_offset_for_epoch(epoch) == leader.end_offset_for_epoch(epoch)


def test_replica_batches_must_continue_the_log(logs: Any) -> None:
    follower = logs("follower")
    follower.append_replica(stamped(0, 0, 2) + stamped(2, 2, 1))
    before = snapshot(follower)
    checkpoint = (follower.path / epochs.FILE_NAME).read_bytes()
    bad = {
        "a gap": (stamped(5, 2), "replica batch at offset 5, expected 3"),
        "a repeat": (stamped(0, 2), "replica batch at offset 0, expected 3"),
        "an overlap": (stamped(2, 2), "replica batch at offset 2, expected 3"),
        "a gap after a good batch": (stamped(3, 2) + stamped(5, 2), "offset 5, expected 4"),
        "an epoch going back": (stamped(3, 1), "replica batch of epoch 1 after epoch 2"),
        "a new epoch, then back": (stamped(3, 3) + stamped(4, 2), "epoch 2 after epoch 3"),
    }
    for name, (payload, match) in bad.items():
        with pytest.raises(v2.CorruptBatch, match=match):
            follower.append_replica(payload)
        assert snapshot(follower) == before, name
        assert (follower.path / epochs.FILE_NAME).read_bytes() == checkpoint, name
        assert follower.leader_epoch == 2, name
    damaged = bytearray(stamped(3, 2))
    damaged[-1] ^= 0xFF
    with pytest.raises(v2.CorruptBatch, match="CRC"):
        follower.append_replica(bytes(damaged))
    assert follower.log_end_offset == 3
    follower.append_replica(stamped(3, 2) + stamped(4, 5))  # the right continuation works
    assert follower.log_end_offset == 5
    assert follower.epochs.entries == [EpochEntry(0, 0), EpochEntry(2, 2), EpochEntry(5, 4)]


def test_replica_append_leaves_the_high_watermark_to_replication(logs: Any) -> None:
    follower = logs("follower")
    follower.follow_log_end = False
    follower.high_watermark = 0
    follower.append_replica(stamped(0, 0, 3))
    assert (follower.log_end_offset, follower.high_watermark) == (3, 0)
    assert follower.read(0, 1 << 20) == b""  # consumers see nothing uncommitted


def test_replica_append_to_a_closed_log_fails(logs: Any) -> None:
    follower = logs("follower")
    follower.close()
    with pytest.raises(StorageError, match="not open"):
        follower.append_replica(stamped(0, 0))


def test_truncate_then_copy_after_divergence(logs: Any, tmp_path: Path) -> None:
    """A leader at epoch 1 wrote records nobody copied; the new leader (epoch 2) wrote
    others at the same offsets. The old one cuts where epoch 1 ended on the new leader
    (KIP-101) and copies from there: the logs are the same again."""
    new, old = logs("new"), logs("old")
    new.append(numbered(0, 3))
    old.append_replica(everything(new))  # both hold 0-2 at epoch 0
    old.leader_epoch = 1
    old.append(numbered(100, 2))  # 3-4, epoch 1: never replicated
    old.append(numbered(102, 2))  # 5-6
    new.leader_epoch = 2
    new.append(numbered(3, 2))  # 3-4, epoch 2, other records
    with pytest.raises(v2.CorruptBatch, match="offset 3, expected 7"):
        old.append_replica(everything(new, 3))
    # Where did the old log's latest epoch (1) end on the new leader?
    latest = old.epochs.latest
    assert latest is not None and latest.epoch == 1
    leader_epoch, leader_end = new.end_offset_for_epoch(latest.epoch)
    assert (leader_epoch, leader_end) == (0, 3)
    cut = min(leader_end, old.end_offset_for_epoch(leader_epoch)[1])
    old.truncate_to(cut)
    assert old.log_end_offset == 3 and old.epochs.entries == [EpochEntry(0, 0)]
    old.append_replica(everything(new, 3))
    assert log_bytes(old) == log_bytes(new)
    assert old.epochs.entries == new.epochs.entries == [EpochEntry(0, 0), EpochEntry(2, 3)]
    saved = epochs.load(old.path)
    assert saved is not None and saved.entries == old.epochs.entries
    # Truncating inside a batch drops the whole batch, and the epoch that began there.
    old.truncate_to(4)
    assert old.log_end_offset == 3 and old.epochs.entries == [EpochEntry(0, 0)]
    old.append_replica(everything(new, 3))
    assert log_bytes(old) == log_bytes(new)


# -- Cluster over a SqliteStore ------------------------------------------------------------


class Clock:
    """Monotonic seconds, moved by hand: liveness and fencing without sleeping."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


SESSION = 4.0


def run(test: Callable[[SqliteStore, Clock], Coroutine[Any, Any, None]], path: Path) -> None:
    async def main() -> None:
        store = SqliteStore(path / "cluster.db")
        try:
            await test(store, Clock())
        finally:
            await store.close()

    asyncio.run(main())


def member(store: SqliteStore, broker_id: int, clock: Clock, incarnation: str = "") -> Cluster:
    record = BrokerRecord(broker_id, f"10.0.0.{broker_id}", 9092, incarnation)
    return Cluster(store, record, heartbeat=1.0, session_timeout=SESSION, clock=clock)


async def beat(*clusters: Cluster) -> None:
    """One heartbeat each: what the background `_heartbeats` task does every second."""
    for cluster in clusters:
        await cluster._write_beat()


async def stored(store: SqliteStore, topic: str, index: int) -> PartitionState | None:
    entry = await store.get(partition_key(topic, index))
    return None if entry is None else PartitionState.decode(entry.key, entry.value, entry.version)


async def controller_entry(store: SqliteStore) -> dict[str, Any] | None:
    entry = await store.get(CONTROLLER)
    return None if entry is None else json.loads(entry.value)


def test_cluster_the_first_broker_becomes_the_controller(tmp_path: Path) -> None:
    async def test(store: SqliteStore, clock: Clock) -> None:
        a, b = member(store, 1, clock), member(store, 2, clock)
        assert a.me.incarnation and a.me.incarnation != b.me.incarnation
        await beat(a, b)
        view = await a.refresh()
        assert view.controller == 1 and view.alive == {1, 2}
        assert set(view.brokers) == {1, 2}
        assert await controller_entry(store) == {"id": 1, "incarnation": a.me.incarnation}
        for _ in range(3):
            clock.advance(1.0)
            await beat(a, b)
            assert (await b.refresh()).controller == 1  # a live controller stays
            assert (await a.refresh()).controller == 1
        assert await controller_entry(store) == {"id": 1, "incarnation": a.me.incarnation}
        assert a.elections == b.elections == 0

    run(test, tmp_path)


def test_cluster_controller_failover_elects_new_leaders(tmp_path: Path) -> None:
    async def test(store: SqliteStore, clock: Clock) -> None:
        a, b, c = (member(store, i, clock) for i in (1, 2, 3))
        await beat(a, b, c)
        await a.refresh()
        topic = await a.create_topic("t", TopicConfig(partitions=3), 2)
        assert topic.assignment == ((1, 2), (2, 3), (3, 1))
        await b.refresh()
        await c.refresh()
        assert b.view.controller == c.view.controller == 1
        start = clock.t
        taken_at = None
        for _ in range(8):  # a is silent from now on; b and c beat every second
            clock.advance(1.0)
            await beat(b, c)
            await b.refresh()
            await c.refresh()
            if b.view.controller == 2:
                taken_at = clock.t
                break
            assert b.view.controller == c.view.controller == 1
        assert taken_at == start + SESSION + 1  # silent for more than the session timeout
        assert b.elections == 1 and c.elections == 0
        p0 = await stored(store, "t", 0)
        assert p0 is not None
        assert (p0.leader, p0.leader_epoch, p0.isr, p0.replicas) == (2, 1, (2,), (1, 2))
        for index, leader in ((1, 2), (2, 3)):  # their leaders are alive: untouched
            state = await stored(store, "t", index)
            assert state is not None and (state.leader, state.leader_epoch) == (leader, 0)
        assert await controller_entry(store) == {"id": 2, "incarnation": b.me.incarnation}
        assert (await c.refresh()).controller == 2
        assert c.view.leader_of("t", 0) == 2
        assert (await b.refresh()).leader_of("t", 0) == 2
        # The old controller, fenced by its own clock, agrees and does nothing.
        assert a.fenced
        view = await a.refresh()
        assert view.controller == 2 and 1 not in view.alive and a.elections == 0
        # Calm: another round elects nothing more.
        clock.advance(1.0)
        await beat(b, c)
        await b.refresh()
        assert b.elections == 1

    run(test, tmp_path)


def test_cluster_a_restarted_controller_is_replaced_at_once(tmp_path: Path) -> None:
    async def test(store: SqliteStore, clock: Clock) -> None:
        a, b = member(store, 1, clock), member(store, 2, clock)
        await beat(a, b)
        await a.refresh()
        await b.refresh()
        assert b.view.controller == 1
        restarted = member(store, 1, clock)  # same broker id, new incarnation
        await beat(restarted)
        view = await b.refresh()  # no timeout to wait: the record says it restarted
        assert view.controller == 2
        assert await controller_entry(store) == {"id": 2, "incarnation": b.me.incarnation}
        assert (await restarted.refresh()).controller == 2

    run(test, tmp_path)


def test_cluster_a_clean_close_hands_over_without_waiting(tmp_path: Path) -> None:
    async def test(store: SqliteStore, clock: Clock) -> None:
        a, b = member(store, 1, clock), member(store, 2, clock)
        await beat(a, b)
        await a.refresh()
        await a.create_topic("t", TopicConfig(partitions=1), 2)
        await b.refresh()
        await a.close()  # removes its broker record (it started no tasks)
        assert await store.get("brokers/1") is None
        view = await b.refresh()  # same instant: no session timeout to wait out
        assert view.controller == 2 and view.alive == {2}
        state = await stored(store, "t", 0)
        assert state is not None and (state.leader, state.leader_epoch, state.isr) == (2, 1, (2,))

    run(test, tmp_path)


def test_cluster_offline_partition_comes_back_with_its_isr(tmp_path: Path) -> None:
    async def test(store: SqliteStore, clock: Clock) -> None:
        a, b, c = (member(store, i, clock) for i in (1, 2, 3))
        await beat(a, b, c)
        await c.refresh()  # c is the controller
        await c.create_topic("clean", TopicConfig(partitions=1), 3)
        await c.create_topic("dirty", TopicConfig(partitions=1, unclean_leader_election="true"), 3)
        assert c.view.leader_of("clean", 0) == 1 and c.view.leader_of("dirty", 0) == 2
        # Make broker 1 the only in-sync member of both, led by 1.
        for name in ("clean", "dirty"):
            state = c.view.partitions[(name, 0)]
            if state.leader != 1:
                moved = replace(state, leader=1)
                assert await store.put(moved.key(), moved.encode(), expect=state.version)
                state = await stored(store, name, 0)
                assert state is not None
            assert await a.change_isr(state, (1,)) is not None
        await c.refresh()
        for _ in range(int(SESSION) + 1):  # 1 and 2 go silent
            clock.advance(1.0)
            await beat(c)
            await c.refresh()
        clean, dirty = await stored(store, "clean", 0), await stored(store, "dirty", 0)
        assert clean is not None and dirty is not None
        assert (clean.leader, clean.isr, clean.leader_epoch) == (NO_LEADER, (1,), 0)
        assert (dirty.leader, dirty.isr, dirty.leader_epoch) == (3, (3,), 1)  # unclean
        elections = c.elections
        clock.advance(1.0)
        await beat(c)
        await c.refresh()
        assert c.elections == elections  # offline stays offline: nothing rewritten
        await beat(a)  # the in-sync member returns
        await c.refresh()
        clean = await stored(store, "clean", 0)
        assert clean is not None
        assert (clean.leader, clean.isr, clean.leader_epoch) == (1, (1,), 1)

    run(test, tmp_path)


def test_cluster_change_isr_with_a_stale_version_is_refused(tmp_path: Path) -> None:
    async def test(store: SqliteStore, clock: Clock) -> None:
        a, b, c = (member(store, i, clock) for i in (1, 2, 3))
        await beat(a, b, c)
        await a.refresh()
        await a.create_topic("t", TopicConfig(partitions=1), 3)
        state = a.view.partitions[("t", 0)]
        assert state.isr == (1, 2, 3)
        shrunk = await a.change_isr(state, (1, 2))
        assert shrunk is not None
        assert shrunk.isr == (1, 2) and shrunk.version > state.version
        assert (shrunk.leader, shrunk.leader_epoch, shrunk.replicas) == (1, 0, (1, 2, 3))
        assert await a.change_isr(state, (1,)) is None  # the old version: refused
        now = await stored(store, "t", 0)
        assert now is not None and now.isr == (1, 2) and now.version == shrunk.version
        # After a leader change by the controller, the deposed leader's state is stale.
        moved = replace(shrunk, leader=2, leader_epoch=1)
        assert await store.put(moved.key(), moved.encode(), expect=shrunk.version)
        assert await a.change_isr(shrunk, (1,)) is None
        now = await stored(store, "t", 0)
        assert now is not None and (now.leader, now.isr) == (2, (1, 2))

    run(test, tmp_path)


def test_cluster_a_fenced_broker_takes_nothing(tmp_path: Path) -> None:
    async def test(store: SqliteStore, clock: Clock) -> None:
        a, b = member(store, 1, clock), member(store, 2, clock)
        await beat(a, b)
        await a.refresh()
        await a.create_topic("t", TopicConfig(partitions=1), 2)
        await b.refresh()
        before = await stored(store, "t", 0)
        assert before is not None and before.leader == 1
        clock.advance(SESSION + 0.5)  # nobody could heartbeat meanwhile
        assert a.fenced and b.fenced
        view = await b.refresh()
        assert view.controller is None  # a is dead, and b may not take over
        assert view.alive == set()  # b does not count itself either
        assert await controller_entry(store) == {"id": 1, "incarnation": a.me.incarnation}
        assert b.elections == 0
        assert await b.change_isr(before, (2,)) is None
        after = await stored(store, "t", 0)
        assert after is not None and after.version == before.version
        assert (after.leader, after.isr) == (1, (1, 2))
        await beat(b)  # its heartbeat succeeds again
        assert not b.fenced
        view = await b.refresh()
        assert view.controller == 2 and b.elections == 1
        elected = await stored(store, "t", 0)
        assert elected is not None and (elected.leader, elected.leader_epoch) == (2, 1)
        assert await b.change_isr(elected, (2,)) is not None  # (already (2,): rewritten)

    run(test, tmp_path)


class YieldingStore:
    """The same SqliteStore, but every call gives the event loop a turn first and after,
    as a networked store (etcd) does: concurrent read-then-write sequences interleave."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.url = store.url

    async def get(self, key: str) -> Any:
        await asyncio.sleep(0)
        entry = await self.store.get(key)
        await asyncio.sleep(0)
        return entry

    async def put(self, key: str, value: bytes, *, expect: int | None = None) -> bool:
        await asyncio.sleep(0)
        done = await self.store.put(key, value, expect=expect)
        await asyncio.sleep(0)
        return done


def test_cluster_producer_ids_never_collide(tmp_path: Path) -> None:
    async def test(sqlite: SqliteStore, clock: Clock) -> None:
        store: Any = YieldingStore(sqlite)
        a, b = member(store, 1, clock), member(store, 2, clock)
        # Both start at once: each reads the counter before either has written it.
        first = await asyncio.gather(*(c.producer_id() for c in (a, b) * 10))
        got: dict[int, list[int]] = {1: [], 2: []}
        for _ in range(3000):
            got[1].append(await a.producer_id())
            got[2].append(await b.producer_id())
        more = await asyncio.gather(*(c.producer_id() for c in (a, b) * 10))
        restarted = member(store, 1, clock)  # a fresh process: a fresh block
        later = [await restarted.producer_id() for _ in range(10)]
        every = [*first, *got[1], *got[2], *more, *later]
        assert len(every) == len(set(every)) == 6050
        assert min(every) >= 0
        for ids in got.values():
            assert ids == sorted(ids)  # each broker counts up through its blocks
        blocks = {i // PRODUCER_ID_BLOCK for i in got[1]} & {i // PRODUCER_ID_BLOCK for i in got[2]}
        assert not blocks  # no block is shared
        assert min(later) > max(every[:-10])
        entry = await sqlite.get("producer-ids")
        assert entry is not None and int(entry.value) > max(every)

    run(test, tmp_path)


def test_cluster_create_topic_places_and_refuses(tmp_path: Path) -> None:
    async def test(store: SqliteStore, clock: Clock) -> None:
        a, b, c = (member(store, i, clock) for i in (1, 2, 3))
        await beat(a, b, c)
        await a.refresh()
        first = await a.create_topic("t", TopicConfig(partitions=2), 2)
        assert a.view.topics["t"] == first
        for index, replicas in enumerate(first.assignment):
            state = await stored(store, "t", index)
            assert state is not None
            assert (state.leader, state.replicas, state.isr) == (replicas[0], replicas, replicas)
        with pytest.raises(TopicExists, match="'t' already exists"):
            await a.create_topic("t", TopicConfig(partitions=5), 1)
        entry = await store.get("topics/t")
        assert entry is not None
        assert TopicRecord.decode(entry.key, entry.value) == first  # not overwritten
        assert await stored(store, "t", 2) is None
        second = await a.create_topic("u", TopicConfig(partitions=2), 2)
        assert second.assignment[0][0] != first.assignment[0][0]  # leaders rotate
        # Broker 3 goes silent: two live brokers cannot hold three replicas.
        for _ in range(int(SESSION) + 1):
            clock.advance(1.0)
            await beat(a, b)
        await a.refresh()
        assert a.view.alive == {1, 2} and set(a.view.brokers) == {1, 2, 3}
        with pytest.raises(PlacementError, match="replication factor 3 is larger than the 2"):
            await a.create_topic("v", TopicConfig(), 3)
        assert await store.get("topics/v") is None
        assert await store.scan("partitions/v/") == []

    run(test, tmp_path)


def test_cluster_delete_topic_removes_it_and_its_partitions(tmp_path: Path) -> None:
    async def test(store: SqliteStore, clock: Clock) -> None:
        a, b = member(store, 1, clock), member(store, 2, clock)
        await beat(a, b)
        await a.refresh()
        await a.create_topic("t", TopicConfig(partitions=3), 2)
        await a.create_topic("t2", TopicConfig(partitions=1), 1)
        assert len(await store.scan("partitions/t/")) == 3
        await a.delete_topic("t")
        assert await store.get("topics/t") is None
        assert await store.scan("partitions/t/") == []
        assert [e.key for e in await store.scan("partitions/")] == ["partitions/t2/0"]
        assert "t" not in a.view.topics and ("t", 0) not in a.view.partitions
        assert "t2" in a.view.topics
        view = await b.refresh()
        assert set(view.topics) == {"t2"}
        with pytest.raises(UnknownTopic, match="no topic 't'"):
            await a.delete_topic("t")
        # The controller does not bring deleted partitions back.
        await a.refresh()
        assert await store.scan("partitions/t/") == []

    run(test, tmp_path)


def test_cluster_controller_writes_partitions_a_dead_creator_left_out(tmp_path: Path) -> None:
    async def test(store: SqliteStore, clock: Clock) -> None:
        a = member(store, 1, clock)
        await beat(a)
        await a.refresh()
        record = TopicRecord("t", uuid.uuid4(), TopicConfig(partitions=2), ((1,), (1,)))
        assert await store.put(record.key(), record.encode(), expect=0)  # then it died
        await a.refresh()
        for index in (0, 1):
            state = await stored(store, "t", index)
            assert state is not None
            assert (state.leader, state.leader_epoch, state.isr) == (1, 0, (1,))

    run(test, tmp_path)


def test_cluster_bad_records_are_skipped_not_fatal(tmp_path: Path) -> None:
    async def test(store: SqliteStore, clock: Clock) -> None:
        a = member(store, 1, clock)
        await beat(a)
        await store.put("topics/junk", b"{not json")
        await store.put("partitions/junk/0", b"[]")
        await store.put("brokers/9", b'{"id": "nine"}')
        # A topic whose partition has no replicas: the controller would have to write
        # its initial state (leader = replicas[0]); refresh must not fail on it.
        empty = TopicRecord("empty", uuid.uuid4(), TopicConfig(), ((1,),))
        value = json.loads(empty.encode())
        value["assignment"] = [[]]
        await store.put(empty.key(), json.dumps(value).encode())
        view = await a.refresh()
        assert view.controller == 1 and set(view.brokers) == {1}
        assert view.topics == {} and view.partitions == {}
        assert await store.scan("partitions/empty/") == []

    run(test, tmp_path)


def test_cluster_start_and_close_run_heartbeat_and_watch(tmp_path: Path) -> None:
    """The background tasks for real, with a short heartbeat and the real clock."""

    async def main() -> None:
        store = SqliteStore(tmp_path / "cluster.db")
        a = Cluster(store, BrokerRecord(1, "h1", 1, ""), heartbeat=0.02, session_timeout=0.5)
        b = Cluster(store, BrokerRecord(2, "h2", 1, ""), heartbeat=0.02, session_timeout=0.5)
        try:
            await a.start()
            await b.start()
            async with asyncio.timeout(2.0):
                while a.view.alive != {1, 2}:  # a's watch sees b join
                    await a.wait_change(0.1)
            assert a.view.controller == 1 and b.view.controller == 1
            await a.create_topic("t", TopicConfig(partitions=1), 2)
            async with asyncio.timeout(2.0):
                while "t" not in b.view.topics:  # b's watch sees it
                    await b.wait_change(0.1)
                first = (await store.get("brokers/2")).version  # type: ignore[union-attr]
                while (await store.get("brokers/2")).version == first:  # type: ignore[union-attr]
                    await asyncio.sleep(0.01)  # b's heartbeat task rewrites its record
            await a.close()
            async with asyncio.timeout(2.0):
                while b.view.controller != 2 or b.view.leader_of("t", 0) != 2:
                    await b.wait_change(0.1)
            assert await store.get("brokers/1") is None
            assert all(t.done() for t in a._tasks)
        finally:
            await b.close()
            await a.close()
            await store.close()

    asyncio.run(main())


# -- Fetcher ----------------------------------------------------------------------------------


class LeaderConnection:
    """Stands in for the network and the leader broker's Fetch and
    OffsetsForLeaderEpoch handlers, answering from a real leader PartitionLog."""

    def __init__(self, log: PartitionLog, epoch: int) -> None:
        self.log = log
        self.epoch = epoch
        self.closed = False
        self.calls: Counter[int] = Counter()

    async def call(self, api_key: int, body: dict[str, Any]) -> Any:
        self.calls[api_key] += 1
        await asyncio.sleep(0)
        p = body["topics"][0]["partitions"][0]
        assert p["current_leader_epoch"] == self.epoch
        if api_key == 23:
            epoch, end = self.log.end_offset_for_epoch(p["leader_epoch"])
            answer = SimpleNamespace(error_code=E.none, leader_epoch=epoch, end_offset=end)
            return SimpleNamespace(topics=[SimpleNamespace(partitions=[answer])])
        assert api_key == 1 and body["replica_id"] >= 0
        offset, log = p["fetch_offset"], self.log
        entry = SimpleNamespace(
            error_code=E.none,
            high_watermark=log.high_watermark,
            log_start_offset=log.log_start_offset,
            records=b"",
        )
        if not log.log_start_offset <= offset <= log.log_end_offset:
            entry.error_code = E.offset_out_of_range
        else:
            entry.records = log.read(offset, p["partition_max_bytes"], limit=log.log_end_offset)
            if not entry.records:
                await asyncio.sleep(0.005)  # the long poll's wait, shortened
        return SimpleNamespace(error_code=E.none, responses=[SimpleNamespace(partitions=[entry])])

    async def close(self) -> None:
        self.closed = True


class FollowerContext:
    async def run_io(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)

    def __init__(self) -> None:
        async def wait_change(timeout: float) -> None:
            await asyncio.sleep(min(timeout, 0.01))

        self.replication = SimpleNamespace(cluster=SimpleNamespace(wait_change=wait_change))


def replicate(
    monkeypatch: pytest.MonkeyPatch,
    leader: PartitionLog,
    follower: PartitionLog,
    epoch: int,
    timeout: float = 1.0,
) -> tuple[LeaderConnection, Fetcher]:
    """Run a Fetcher copying `leader` into `follower` until the two logs span the same
    offsets (or `timeout` passes), then stop it."""
    conn = LeaderConnection(leader, epoch)

    async def connect(*target: Any, **options: Any) -> LeaderConnection:
        return conn

    monkeypatch.setattr(fetcher_module.Connection, "open", connect)
    state = PartitionState("t", 0, 1, epoch, (1, 2), (1, 2))
    follower.follow_log_end = False  # as Replication does: the leader's HW is the one
    follower.high_watermark = follower.log_start_offset

    def same() -> bool:
        return (follower.log_start_offset, follower.log_end_offset) == (
            leader.log_start_offset,
            leader.log_end_offset,
        )

    async def main() -> Fetcher:
        fetcher = Fetcher(
            FollowerContext(),
            SimpleNamespace(log=follower),
            state,
            2,
            lambda broker: ("10.0.0.1", 9092),
            None,
        )
        try:
            async with asyncio.timeout(timeout):
                while not same() or follower.high_watermark < leader.high_watermark:
                    await asyncio.sleep(0.005)
        except TimeoutError:
            pass
        finally:
            await fetcher.stop()
        return fetcher

    return conn, asyncio.run(main())


def test_fetcher_truncates_a_diverged_log_then_copies(
    logs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    new, old = logs("new"), logs("old")
    new.append(numbered(0, 3))
    old.append_replica(everything(new))
    old.leader_epoch = 1
    old.append(numbered(100, 4))  # 3-6 at epoch 1, which the new leader never had
    new.leader_epoch = 2
    for n in range(5):
        new.append(numbered(3 + n, 2))  # 3-12 at epoch 2
    conn, fetcher = replicate(monkeypatch, new, old, epoch=2)
    assert conn.calls[23] == 1  # asked once where epoch 1 ended
    assert fetcher.truncated == 4  # 3-6 went
    assert log_bytes(old) == log_bytes(new)
    assert old.epochs.entries == [EpochEntry(0, 0), EpochEntry(2, 3)]
    assert old.log_end_offset == 13 and old.high_watermark == new.high_watermark == 13


def test_fetcher_starts_over_at_the_leaders_log_start(
    logs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    leader = logs("leader", segment_bytes=1024, retention_bytes=0)
    follower = logs("follower", segment_bytes=1024)
    for n in range(12):
        leader.append(numbered(n, 1, size=300))
    assert leader.enforce_retention(BASE_TS) > 0
    assert leader.log_start_offset > 0
    conn, _ = replicate(monkeypatch, leader, follower, epoch=0, timeout=0.3)
    assert (follower.log_start_offset, follower.log_end_offset) == (
        leader.log_start_offset,
        leader.log_end_offset,
    ), f"{conn.calls[1]} fetches in 0.3 s, the follower still at {follower!r}"
    assert log_bytes(follower) == log_bytes(leader)
