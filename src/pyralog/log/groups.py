"""Kafka consumer groups, sans-IO: the classic JoinGroup/SyncGroup/Heartbeat protocol.

The broker's group handlers call `GroupCoordinator`; it never does IO or reads a clock.
Every call takes `now` (monotonic seconds) and first runs the timers due by then, so the
state never depends on how punctually the adapter polls. The broker only relays the
leader's assignment bytes, so eager and cooperative clients both work.

JoinGroup and SyncGroup may have to wait (for the other members, for the leader); such a
request is a ticket whose `result` is filled in later by someone else's call or by a
timer. Every ticket answered, at once or as a side effect, is also queued, and
`poll(now)` hands the queue out. An asyncio adapter keeps a Future per waiting ticket:

    ticket = coordinator.join(now, ...)    # require_known_member_id: JoinGroup v4+
    if not ticket.done:
        futures[ticket] = loop.create_future()
    for done in coordinator.poll(now):     # after every call, and from the timer
        if (future := futures.pop(done, None)) is not None:
            future.set_result(done.result)
    # then (re)arm one timer for coordinator.next_deadline() that runs the same loop

Semantics follow Kafka's GroupCoordinator: KIP-394 (MEMBER_ID_REQUIRED), the initial
rebalance delay, the pending-sync timeout, voting on the protocol. Static membership is
not implemented: group.instance.id is recorded and reported but changes nothing. Nor are
the new-member join timeout or group.max.size.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from pyralog.log.group_state import (
    Completion,
    ErrorCode,
    Group,
    GroupDescription,
    GroupSnapshot,
    GroupState,
    JoinedMember,
    JoinResult,
    JoinTicket,
    Member,
    MemberDescription,
    SnapshotMember,
    SyncResult,
    SyncTicket,
    Timer,
)
from pyralog.log.rebalance import Rebalancer

__all__ = [
    "Completion",
    "ErrorCode",
    "GroupCoordinator",
    "GroupDescription",
    "GroupState",
    "JoinResult",
    "JoinTicket",
    "JoinedMember",
    "MemberDescription",
    "SyncResult",
    "SyncTicket",
]

_MS = 1000.0


class GroupCoordinator:
    """Every consumer group of one broker. Not thread-safe: call it from the event loop."""

    def __init__(
        self,
        *,
        initial_rebalance_delay_ms: int = 3000,
        min_session_timeout_ms: int = 6000,
        max_session_timeout_ms: int = 1_800_000,
        groups_with_offsets: Iterable[str] = (),
    ) -> None:
        """`groups_with_offsets` (OffsetStore.groups()) are listed as Empty groups."""
        self._machine = Rebalancer(initial_rebalance_delay_ms / _MS)
        self._min_session_ms = min_session_timeout_ms
        self._max_session_ms = max_session_timeout_ms
        self._groups: dict[str, Group] = {}
        self._last_now = float("-inf")
        self._closed = False
        for group_id in groups_with_offsets:
            self._groups[group_id] = Group(group_id, has_offsets=True)

    # -- the requests ---------------------------------------------------------------

    def join(
        self,
        now: float,
        group_id: str,
        member_id: str,
        group_instance_id: str | None,
        protocol_type: str,
        protocols: list[tuple[str, bytes]],
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        client_id: str,
        client_host: str,
        require_known_member_id: bool,
    ) -> JoinTicket:
        """JoinGroup. rebalance_timeout_ms <= 0 (v0 has none) means the session timeout."""
        self._advance(now)
        ticket = JoinTicket(group_id, member_id)
        if rebalance_timeout_ms <= 0:
            rebalance_timeout_ms = session_timeout_ms
        member = Member(
            member_id,
            group_instance_id,
            client_id,
            client_host,
            session_timeout_ms / _MS,
            rebalance_timeout_ms / _MS,
            list(protocols),
            now,
            join=ticket,
        )
        error = self._join(now, ticket, member, protocol_type, require_known_member_id)
        if error is not None:
            self._machine.answer_join(ticket, JoinResult.failed(error, ticket.member_id))
        self._collect(group_id)
        return ticket

    def sync(
        self,
        now: float,
        group_id: str,
        generation_id: int,
        member_id: str,
        assignments: list[tuple[str, bytes]],
    ) -> SyncTicket:
        """SyncGroup. Only the leader's `assignments` count; followers send none."""
        self._advance(now)
        ticket = SyncTicket(group_id, member_id)
        error = self._sync(now, ticket, generation_id, assignments)
        if error is not None:
            self._machine.answer_sync(ticket, SyncResult.failed(error))
        return ticket

    def heartbeat(self, now: float, group_id: str, generation_id: int, member_id: str) -> int:
        self._advance(now)
        group, error = self._current_member(group_id, generation_id, member_id)
        if group is None:
            return error
        group.members[member_id].last_heartbeat = now
        if group.state is GroupState.PREPARING_REBALANCE:
            return ErrorCode.rebalance_in_progress
        return ErrorCode.none

    def leave(self, now: float, group_id: str, members: list[str]) -> list[int]:
        """LeaveGroup for each member id; the rest of the group rebalances."""
        self._advance(now)
        if self._closed:
            return [ErrorCode.not_coordinator] * len(members)
        group = self._groups.get(group_id)
        errors: list[int] = []
        for member_id in members:
            if group is not None and group.pending.pop(member_id, None) is not None:
                self._machine.try_complete_join(group, now)
                errors.append(ErrorCode.none)
            elif group is not None and member_id in group.members:
                self._machine.remove(group, group.members[member_id], now)
                errors.append(ErrorCode.none)
            else:
                errors.append(ErrorCode.unknown_member_id)
        self._collect(group_id)
        return errors

    def validate_commit(self, now: float, group_id: str, generation_id: int, member_id: str) -> int:
        """May this OffsetCommit be stored? NONE marks the group as having offsets.

        Generation -1 with no member id is a simple (non-group) commit, allowed while
        the group has no members. A member's commit counts as a heartbeat.
        """
        self._advance(now)
        if self._closed:
            return ErrorCode.not_coordinator
        if not group_id:
            return ErrorCode.invalid_group_id
        group = self._groups.get(group_id)
        if generation_id < 0 and not member_id:
            if group is not None and group.members:
                return ErrorCode.unknown_member_id
        elif group is None:
            # As Kafka: a group commit for a group unknown here is from an old generation.
            return ErrorCode.illegal_generation
        else:
            group, error = self._current_member(group_id, generation_id, member_id)
            if group is None:
                return error
            if group.state is GroupState.COMPLETING_REBALANCE:
                return ErrorCode.rebalance_in_progress
            group.members[member_id].last_heartbeat = now
        if group is None:
            group = self._groups[group_id] = Group(group_id)
        group.has_offsets = True
        return ErrorCode.none

    # -- timers and results -------------------------------------------------------

    def poll(self, now: float) -> list[Completion]:
        """Run the timers due by `now`; every ticket completed since the last poll."""
        self._advance(now)
        done, self._machine.done = self._machine.done, []
        return done

    def next_deadline(self) -> float | None:
        """When poll has work next: a timer, or at once if completions are queued."""
        deadlines = [t[0] for g in self._groups.values() if (t := g.next_timer()) is not None]
        if self._machine.done:
            deadlines.append(self._last_now)
        return min(deadlines, default=None)

    def close(self) -> None:
        """The broker stops coordinating: waiting tickets get NOT_COORDINATOR (poll them)."""
        self.drop(list(self._groups))
        self._closed = True

    # -- moving between coordinators (replicated groups, group_log.py) -------------

    def snapshot(self, group_id: str) -> GroupSnapshot | None:
        """A Stable group's generation, members and assignments, to be written down so
        that the next coordinator can carry on with it; None for any other state."""
        group = self._groups.get(group_id)
        if group is None or group.state is not GroupState.STABLE:
            return None
        return GroupSnapshot(
            group_id,
            group.generation,
            group.protocol_type or "",
            group.protocol_name or "",
            group.leader or "",
            tuple(
                SnapshotMember(
                    m.member_id,
                    m.group_instance_id,
                    m.client_id,
                    m.client_host,
                    m.session_timeout,
                    m.rebalance_timeout,
                    tuple(m.protocols),
                    m.assignment,
                )
                for m in group.members.values()
            ),
        )

    def restore(self, now: float, snapshot: GroupSnapshot | None, *, offsets: bool) -> None:
        """Take over a group another coordinator ran: Stable at its generation, every
        member given a fresh session (they heartbeat here once they find us), or just
        listed as Empty if it only has committed offsets."""
        self._advance(now)
        if snapshot is None:
            return
        group = Group(
            snapshot.group_id,
            state=GroupState.STABLE if snapshot.members else GroupState.EMPTY,
            generation=snapshot.generation,
            protocol_type=snapshot.protocol_type or None,
            protocol_name=snapshot.protocol_name or None,
            leader=snapshot.leader or None,
            has_offsets=offsets,
        )
        for m in snapshot.members:
            group.members[m.member_id] = Member(
                m.member_id,
                m.group_instance_id,
                m.client_id,
                m.client_host,
                m.session_timeout,
                m.rebalance_timeout,
                list(m.protocols),
                now,
                assignment=m.assignment,
            )
        self._groups[snapshot.group_id] = group

    def note_offsets(self, group_ids: Iterable[str]) -> None:
        """Groups known only by committed offsets (listed as Empty)."""
        for group_id in group_ids:
            self._groups.setdefault(group_id, Group(group_id)).has_offsets = True

    def drop(self, group_ids: Iterable[str]) -> None:
        """Another broker coordinates these groups now: waiting tickets get
        NOT_COORDINATOR (poll them), and the groups are forgotten here."""
        for group_id in list(group_ids):
            group = self._groups.pop(group_id, None)
            if group is None:
                continue
            for member in group.members.values():
                if member.join is not None:
                    self._machine.answer_join(
                        member.join, JoinResult.failed(ErrorCode.not_coordinator, member.member_id)
                    )
                if member.sync is not None:
                    self._machine.answer_sync(
                        member.sync, SyncResult.failed(ErrorCode.not_coordinator)
                    )

    def group_ids(self) -> list[str]:
        return list(self._groups)

    # -- ListGroups and DescribeGroups ---------------------------------------------

    def list_groups(self) -> list[tuple[str, str, str]]:
        """(group_id, protocol_type, state) of every group, offsets-only ones as Empty."""
        return [(g.group_id, g.protocol_type or "", str(g.state)) for g in self._groups.values()]

    def describe(self, group_id: str) -> GroupDescription:
        """Like Kafka, metadata and assignments are shown only for a Stable group."""
        group = self._groups.get(group_id)
        if group is None:
            error = ErrorCode.not_coordinator if self._closed else ErrorCode.none
            return GroupDescription(error, group_id, GroupState.DEAD, "", "", ())
        stable = group.state is GroupState.STABLE
        members = tuple(
            MemberDescription(
                m.member_id,
                m.group_instance_id,
                m.client_id,
                m.client_host,
                m.metadata(group.protocol_name) if stable else b"",
                m.assignment if stable else b"",
            )
            for m in group.members.values()
        )
        protocol = (group.protocol_name or "") if stable else ""
        return GroupDescription(
            ErrorCode.none,
            group_id,
            group.state,
            group.protocol_type or "",
            protocol,
            members,
        )

    # -- JoinGroup and SyncGroup ----------------------------------------------------

    def _join(
        self,
        now: float,
        ticket: JoinTicket,
        joining: Member,
        protocol_type: str,
        require_known_member_id: bool,
    ) -> ErrorCode | None:
        """Start or complete `ticket`; an error code instead when it fails at once."""
        if self._closed:
            return ErrorCode.not_coordinator
        if not ticket.group_id:
            return ErrorCode.invalid_group_id
        if not self._min_session_ms <= joining.session_timeout * _MS <= self._max_session_ms:
            return ErrorCode.invalid_session_timeout
        group = self._groups.get(ticket.group_id)
        if group is None:
            if joining.member_id:
                return ErrorCode.unknown_member_id
            group = self._groups[ticket.group_id] = Group(ticket.group_id)
        if not group.supports(joining.member_id, protocol_type, joining.protocol_names()):
            return ErrorCode.inconsistent_group_protocol
        if not joining.member_id:
            joining.member_id = ticket.member_id = f"{joining.client_id}-{uuid.uuid4()}"
            if require_known_member_id:
                # The client rejoins with this id; until then it counts as a member that
                # has not joined, so a rebalance waits for it (up to its session timeout).
                group.pending[joining.member_id] = now + joining.session_timeout
                return ErrorCode.member_id_required
            self._add(group, joining, protocol_type, now)
            return None
        if group.pending.pop(joining.member_id, None) is not None:
            self._add(group, joining, protocol_type, now)
            return None
        member = group.members.get(joining.member_id)
        if member is None:
            return ErrorCode.unknown_member_id
        member.last_heartbeat = now
        same = member.matches(joining.protocols)
        if group.state is GroupState.PREPARING_REBALANCE:
            self._update(group, member, joining, now)
        elif group.state is GroupState.COMPLETING_REBALANCE and same:
            # The member lost our join response: send it again.
            self._machine.answer_join(ticket, group.join_result(member.member_id))
        elif group.state is GroupState.STABLE and same and member.member_id != group.leader:
            # Nothing changed for a follower: it can sync with the current generation.
            self._machine.answer_join(ticket, group.join_result(member.member_id, members=False))
        else:
            self._update(group, member, joining, now)
        return None

    def _add(self, group: Group, member: Member, protocol_type: str, now: float) -> None:
        if not group.members:
            group.protocol_type = protocol_type
        group.members[member.member_id] = member
        if group.leader is None:
            group.leader = member.member_id
        if group.state is GroupState.PREPARING_REBALANCE and group.initial_delay:
            group.new_member_added = True
        self._machine.rebalance(group, now)

    def _update(self, group: Group, member: Member, joining: Member, now: float) -> None:
        """A known member rejoins: take its new protocols and timeouts, then rebalance."""
        if member.join is not None:
            # A retry supersedes the earlier request, whose client gave up on it.
            self._machine.answer_join(
                member.join, JoinResult.failed(ErrorCode.rebalance_in_progress, member.member_id)
            )
        member.group_instance_id = joining.group_instance_id
        member.client_id, member.client_host = joining.client_id, joining.client_host
        member.session_timeout = joining.session_timeout
        member.rebalance_timeout = joining.rebalance_timeout
        member.protocols = joining.protocols
        member.join = joining.join
        self._machine.rebalance(group, now)

    def _sync(
        self,
        now: float,
        ticket: SyncTicket,
        generation_id: int,
        assignments: list[tuple[str, bytes]],
    ) -> ErrorCode | None:
        group, error = self._current_member(ticket.group_id, generation_id, ticket.member_id)
        if group is None:
            return error
        if group.state is GroupState.PREPARING_REBALANCE:
            return ErrorCode.rebalance_in_progress
        member = group.members[ticket.member_id]
        member.last_heartbeat = now
        group.pending_sync.discard(member.member_id)
        if not group.pending_sync:
            group.sync_deadline = None
        if group.state is GroupState.STABLE:
            self._machine.answer_sync(ticket, group.sync_result(member))
            return None
        if member.sync is not None:
            self._machine.answer_sync(
                member.sync, SyncResult.failed(ErrorCode.rebalance_in_progress)
            )
        member.sync = ticket
        if member.member_id == group.leader:
            given = dict(assignments)
            group.state = GroupState.STABLE
            for each in group.members.values():
                each.assignment = given.get(each.member_id, b"")
                if each.sync is not None:
                    self._machine.answer_sync(each.sync, group.sync_result(each))
                    each.sync = None
                    each.last_heartbeat = now
        return None

    def _current_member(
        self, group_id: str, generation_id: int, member_id: str
    ) -> tuple[Group | None, ErrorCode]:
        """The group if `member_id` is its member in `generation_id`, else why not."""
        if self._closed:
            return None, ErrorCode.not_coordinator
        group = self._groups.get(group_id)
        if group is None or member_id not in group.members:
            return None, ErrorCode.unknown_member_id
        if generation_id != group.generation:
            return None, ErrorCode.illegal_generation
        return group, ErrorCode.none

    # -- timers -------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        """Fire every timer due by `now`, earliest first, each at its own time."""
        self._last_now = max(self._last_now, now)
        while True:
            due: tuple[Group, float, Timer, str] | None = None
            for group in self._groups.values():
                timer = group.next_timer()
                if timer is not None and timer[0] <= now and (due is None or timer[0] < due[1]):
                    due = (group, *timer)
            if due is None:
                return
            group, at, what, member_id = due
            self._machine.fire(group, at, what, member_id)
            self._collect(group.group_id)

    def _collect(self, group_id: str) -> None:
        """Forget a group with nothing left: no members, none pending, no offsets."""
        group = self._groups.get(group_id)
        if (
            group is not None
            and group.state is GroupState.EMPTY
            and not group.members
            and not group.pending
            and not group.has_offsets
        ):
            del self._groups[group_id]
