"""How one group's rebalance moves: the join phase, the next generation, departures, timers.

The coordinator (`groups`) validates requests and routes them here; `Rebalancer` holds
the transitions every path shares (a join, a leave, a session expiry all end up in
`rebalance` or `remove`) and answers tickets, queueing each one for the next poll.
Nothing here validates a request: callers only pass members that exist.
"""

from __future__ import annotations

from pyralog.log.group_state import (
    Completion,
    ErrorCode,
    Group,
    GroupState,
    JoinResult,
    JoinTicket,
    Member,
    SyncResult,
    SyncTicket,
    Timer,
)

# States from which a join or a departure starts a rebalance (Kafka's canRebalance).
_CAN_REBALANCE = (GroupState.STABLE, GroupState.COMPLETING_REBALANCE, GroupState.EMPTY)


class Rebalancer:
    """The shared group transitions, and the queue of tickets answered since the last poll."""

    def __init__(self, initial_delay: float) -> None:
        self.initial_delay = initial_delay
        self.done: list[Completion] = []

    # -- rebalancing --------------------------------------------------------------

    def rebalance(self, group: Group, now: float) -> None:
        """Start a rebalance unless one is under way; finish its join phase if it can."""
        if group.state in _CAN_REBALANCE:
            self.prepare(group, now)
        self.try_complete_join(group, now)

    def prepare(self, group: Group, now: float) -> None:
        """Enter PreparingRebalance; an Empty group first waits the initial delay."""
        for member in group.members.values():
            if member.sync is not None:
                # Followers waiting for this generation's assignment must rejoin.
                self.answer_sync(member.sync, SyncResult.failed(ErrorCode.rebalance_in_progress))
                member.sync = None
        if group.state is GroupState.COMPLETING_REBALANCE:
            for member in group.members.values():
                member.assignment = b""
        group.pending_sync.clear()
        group.sync_deadline = None
        timeout = group.rebalance_timeout()
        if group.state is GroupState.EMPTY:
            delay = min(self.initial_delay, timeout)
            group.initial_delay, group.new_member_added = True, False
            group.initial_remaining = timeout - delay
            group.join_deadline = now + delay
        else:
            group.initial_delay = False
            group.join_deadline = now + timeout
        group.state = GroupState.PREPARING_REBALANCE

    def try_complete_join(self, group: Group, now: float) -> None:
        # The initial delay is a wait for more members, so it does not end early.
        if (
            group.state is GroupState.PREPARING_REBALANCE
            and not group.initial_delay
            and group.all_joined()
        ):
            self.complete_join(group, now)

    def complete_join(self, group: Group, now: float) -> None:
        """End the join phase: drop who did not rejoin, start the next generation."""
        group.join_deadline = None
        group.initial_delay = group.new_member_added = False
        for member in list(group.members.values()):
            if member.join is None:
                self.drop(group, member)
        group.generation += 1
        if not group.members:
            group.state, group.protocol_name, group.leader = GroupState.EMPTY, None, None
            return
        if group.leader not in group.members:
            group.leader = next(iter(group.members))
        group.protocol_name = group.select_protocol()
        group.state = GroupState.COMPLETING_REBALANCE
        group.pending_sync = set(group.members)
        group.sync_deadline = now + group.rebalance_timeout()
        for member in group.members.values():
            assert member.join is not None
            self.answer_join(member.join, group.join_result(member.member_id))
            member.join = None
            member.last_heartbeat = now

    def remove(self, group: Group, member: Member, now: float) -> None:
        """A member leaves or expires; the rest rebalance (removeMemberAndUpdateGroup)."""
        self.drop(group, member)
        if group.state in (GroupState.STABLE, GroupState.COMPLETING_REBALANCE):
            self.prepare(group, now)
        self.try_complete_join(group, now)

    def drop(self, group: Group, member: Member) -> None:
        """Forget a member, answering its waiting requests so no ticket waits forever."""
        if member.join is not None:
            self.answer_join(
                member.join, JoinResult.failed(ErrorCode.unknown_member_id, member.member_id)
            )
        if member.sync is not None:
            self.answer_sync(member.sync, SyncResult.failed(ErrorCode.unknown_member_id))
        del group.members[member.member_id]
        group.pending_sync.discard(member.member_id)
        if group.leader == member.member_id:
            group.leader = next(iter(group.members), None)

    # -- timers -------------------------------------------------------------------

    def fire(self, group: Group, at: float, what: Timer, member_id: str) -> None:
        """Act on one due timer, at the time it was due."""
        if what is Timer.PENDING_MEMBER:
            del group.pending[member_id]
            self.try_complete_join(group, at)
        elif what is Timer.SESSION:
            self.remove(group, group.members[member_id], at)
        elif what is Timer.JOIN:
            if group.initial_delay and group.new_member_added and group.initial_remaining > 0:
                delay = min(self.initial_delay, group.initial_remaining)
                group.initial_remaining -= delay
                group.new_member_added = False
                group.join_deadline = at + delay
            else:
                self.complete_join(group, at)
        else:
            # Kafka's pending-sync timeout: who never sent SyncGroup is dropped.
            for missing in list(group.pending_sync):
                self.drop(group, group.members[missing])
            self.prepare(group, at)
            self.try_complete_join(group, at)

    def answer_join(self, ticket: JoinTicket, result: JoinResult) -> None:
        assert ticket.result is None, "a ticket is answered once"
        ticket.result = result
        self.done.append(ticket)

    def answer_sync(self, ticket: SyncTicket, result: SyncResult) -> None:
        assert ticket.result is None, "a ticket is answered once"
        ticket.result = result
        self.done.append(ticket)
