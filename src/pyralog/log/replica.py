"""A leader's view of its followers: their log ends, the in-sync set, the high watermark.

Sans-IO: the broker calls `on_fetch` when a follower fetches (its fetch offset is its
log end), `high_watermark` after every append or fetch, and `isr_proposal` now and
then; it writes accepted proposals to the store and hands the result back through
`committed`. Time is the `now` passed in (monotonic seconds).

The rules are Kafka's:

- the high watermark is the smallest log end over the in-sync set (the leader's
  included); it never goes back. Until every member has fetched once under this leader
  it stays where it is, since an unknown log end could be anything;
- while a change of the in-sync set is being written, the high watermark counts the
  larger of the old and new sets ("maximal ISR", KIP-841): a shrink only takes effect
  once the store has it, so an acknowledged record is always on every member the
  store names;
- a follower is caught up at a fetch that reached the leader's log end, or the log end
  the leader had at the follower's previous fetch (under steady load a follower is
  always a little behind; this is how Kafka tells "keeping up" from "falling behind").
  One not caught up for `lag_max` seconds leaves the in-sync set; one whose log end
  reaches both the high watermark and the start of this leader's epoch rejoins it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyralog.log.cluster_state import PartitionState


@dataclass(slots=True)
class FollowerProgress:
    log_end: int = -1  # unknown until its first fetch
    last_fetch: float = 0.0
    end_at_last_fetch: int = 0  # the leader's log end at that fetch
    caught_up: float = 0.0


class LeaderState:
    def __init__(self, me: int, state: PartitionState, now: float, lag_max: float) -> None:
        self.me = me
        self.lag_max = lag_max
        self.state = state
        self.pending: tuple[int, ...] | None = None  # an in-sync set being written
        # Every member counts as caught up at the start of a leadership (Kafka does the
        # same), so a follower gets lag_max to show up before it is dropped.
        self.followers = {r: FollowerProgress(caught_up=now) for r in state.replicas if r != me}

    @property
    def epoch(self) -> int:
        return self.state.leader_epoch

    @property
    def isr(self) -> tuple[int, ...]:
        return self.state.isr

    def _maximal(self) -> set[int]:
        return set(self.state.isr) | set(self.pending or ())

    def on_fetch(self, follower: int, offset: int, leader_end: int, now: float) -> None:
        progress = self.followers.get(follower)
        if progress is None:
            return
        if offset >= leader_end:
            progress.caught_up = now
        elif offset >= progress.end_at_last_fetch and progress.log_end >= 0:
            progress.caught_up = max(progress.caught_up, progress.last_fetch)
        progress.log_end = offset
        progress.last_fetch = now
        progress.end_at_last_fetch = leader_end

    def high_watermark(self, leader_end: int, current: int) -> int:
        ends = [leader_end]
        for member in self._maximal():
            if member == self.me:
                continue
            progress = self.followers.get(member)
            if progress is None or progress.log_end < 0:
                return current
            ends.append(progress.log_end)
        return max(current, min(ends))

    def isr_proposal(
        self, high_watermark: int, epoch_start: int, now: float
    ) -> tuple[int, ...] | None:
        """The in-sync set as it should be now, or None if it is right (or a change is
        already being written)."""
        if self.pending is not None:
            return None
        isr = [self.me]
        for replica in self.state.replicas:
            if replica == self.me:
                continue
            progress = self.followers[replica]
            if replica in self.state.isr:
                if now - progress.caught_up <= self.lag_max:
                    isr.append(replica)
            elif progress.log_end >= max(high_watermark, epoch_start) and (
                now - progress.caught_up <= self.lag_max
            ):
                isr.append(replica)
        ordered = tuple(r for r in self.state.replicas if r in isr)
        if set(ordered) == set(self.state.isr):
            return None
        return ordered

    def lag(self, leader_end: int, now: float) -> dict[int, tuple[int, float]]:
        """Each follower's lag: (records behind the leader's log end, seconds since it
        was last caught up)."""
        out = {}
        for replica, progress in self.followers.items():
            behind = leader_end - progress.log_end if progress.log_end >= 0 else leader_end
            out[replica] = (max(0, behind), max(0.0, now - progress.caught_up))
        return out

    def committed(self, state: PartitionState) -> None:
        """The store's state of this partition, as last read or written."""
        self.state = state
        self.pending = None
