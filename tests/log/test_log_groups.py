"""GroupCoordinator driven with a fake clock, one Kafka group scenario per test:
joins, rebalances, expiries, departures, the error codes clients branch on."""

from __future__ import annotations

from pyralog.log.groups import (
    Completion,
    ErrorCode,
    GroupCoordinator,
    GroupState,
    JoinResult,
    JoinTicket,
    SyncResult,
    SyncTicket,
)

DELAY_MS = 100
RANGE = [("range", b"meta-range")]


class Clients:
    """A coordinator and the polls an adapter would make after each call."""

    def __init__(self) -> None:
        self.coordinator = GroupCoordinator(initial_rebalance_delay_ms=DELAY_MS)
        self.completed: list[Completion] = []

    def poll(self, now: float) -> list[Completion]:
        done = self.coordinator.poll(now)
        self.completed.extend(done)
        return done

    def join(
        self,
        now: float,
        member_id: str = "",
        *,
        group: str = "g",
        protocols: list[tuple[str, bytes]] = RANGE,
        protocol_type: str = "consumer",
        session_ms: int = 10_000,
        rebalance_ms: int = 30_000,
        client: str = "client",
        require_known: bool = False,
    ) -> JoinTicket:
        ticket = self.coordinator.join(
            now,
            group,
            member_id,
            None,
            protocol_type,
            protocols,
            session_ms,
            rebalance_ms,
            client,
            "/127.0.0.1",
            require_known,
        )
        self.poll(now)
        return ticket

    def sync(
        self,
        now: float,
        member_id: str,
        generation: int,
        assignments: list[tuple[str, bytes]] | None = None,
        group: str = "g",
    ) -> SyncTicket:
        ticket = self.coordinator.sync(now, group, generation, member_id, assignments or [])
        self.poll(now)
        return ticket

    def heartbeat(self, now: float, member_id: str, generation: int, group: str = "g") -> int:
        return self.coordinator.heartbeat(now, group, generation, member_id)

    def stable_pair(self, session_ms: int = 10_000, rebalance_ms: int = 30_000) -> tuple[str, str]:
        """Two members in a Stable generation 1 at t=1.0: (leader, follower)."""
        timeouts = {"session_ms": session_ms, "rebalance_ms": rebalance_ms}
        a, b = self.join(0.0, **timeouts), self.join(0.01, client="b", **timeouts)
        self.poll(1.0)
        leader, follower = joined(a), joined(b)
        self.sync(1.0, follower.member_id, 1)
        self.sync(1.0, leader.member_id, 1, [(leader.member_id, b"A"), (follower.member_id, b"B")])
        assert self.coordinator.describe("g").state is GroupState.STABLE
        return leader.member_id, follower.member_id


def joined(ticket: JoinTicket) -> JoinResult:
    assert ticket.result is not None, "join still pending"
    assert ticket.result.error_code == ErrorCode.none, ticket.result
    return ticket.result


def synced(ticket: SyncTicket) -> SyncResult:
    assert ticket.result is not None, "sync still pending"
    return ticket.result


def test_single_member_join_sync_stable() -> None:
    c = Clients()
    ticket = c.join(0.0, client="solo")
    assert not ticket.done
    assert c.coordinator.describe("g").state is GroupState.PREPARING_REBALANCE
    assert c.coordinator.next_deadline() == DELAY_MS / 1000
    assert c.poll(0.05) == []
    assert c.poll(0.1) == [ticket]
    result = joined(ticket)
    assert result.member_id.startswith("solo-")
    assert (result.generation_id, result.leader_id) == (1, result.member_id)
    assert (result.protocol_type, result.protocol_name) == ("consumer", "range")
    assert result.members == ((result.member_id, None, b"meta-range"),)
    assert c.coordinator.describe("g").state is GroupState.COMPLETING_REBALANCE

    sync = c.sync(0.2, result.member_id, 1, [(result.member_id, b"all partitions")])
    assert synced(sync) == SyncResult(ErrorCode.none, "consumer", "range", b"all partitions")
    assert c.completed == [ticket, sync]
    assert c.heartbeat(0.3, result.member_id, 1) == ErrorCode.none
    description = c.coordinator.describe("g")
    assert (description.state, description.protocol_name) == (GroupState.STABLE, "range")
    [member] = description.members
    assert (member.client_id, member.client_host) == ("solo", "/127.0.0.1")
    assert (member.metadata, member.assignment) == (b"meta-range", b"all partitions")
    assert c.coordinator.list_groups() == [("g", "consumer", "Stable")]


def test_two_members_within_the_initial_delay_share_one_generation() -> None:
    c = Clients()
    a = c.join(0.0, client="a")
    b = c.join(0.05, client="b")
    # The second arrival extends the delay by another 100 ms.
    assert c.poll(0.1) == []
    assert set(c.poll(0.2)) == {a, b}
    first, second = joined(a), joined(b)
    assert first.generation_id == second.generation_id == 1
    assert first.leader_id == second.leader_id == first.member_id
    assert [m.member_id for m in first.members] == [first.member_id, second.member_id]
    assert second.members == ()

    follower = c.sync(0.3, second.member_id, 1)
    assert not follower.done
    leader = c.sync(0.4, first.member_id, 1, [(first.member_id, b"A"), (second.member_id, b"B")])
    assert synced(leader).assignment == b"A"
    assert synced(follower).assignment == b"B"
    assert set(c.completed[-2:]) == {follower, leader}


def test_initial_delay_is_bounded_by_the_rebalance_timeout() -> None:
    c = Clients()
    tickets = [c.join(0.0, rebalance_ms=300)]
    for i in range(1, 10):
        tickets.append(c.join(i * 0.05, client=f"c{i}"))
        if any(t.done for t in tickets):
            break
    assert all(t.done for t in tickets[:-1])
    assert joined(tickets[0]).generation_id == 1
    assert len(tickets) <= 8  # done by 0.3 s, though members kept arriving


def test_third_member_triggers_a_rebalance_everyone_rejoins() -> None:
    c = Clients()
    a, b = c.stable_pair()
    newcomer = c.join(2.0, client="c", protocols=[("range", b"meta-c")])
    assert not newcomer.done
    assert c.heartbeat(2.1, a, 1) == ErrorCode.rebalance_in_progress
    assert c.heartbeat(2.1, b, 1) == ErrorCode.rebalance_in_progress
    rejoin_a = c.join(2.2, a)
    assert not rejoin_a.done
    rejoin_b = c.join(2.3, b, protocols=[("range", b"meta-b2")])
    assert set(c.completed[-3:]) == {newcomer, rejoin_a, rejoin_b}
    leader = joined(rejoin_a)
    assert leader.generation_id == joined(rejoin_b).generation_id == 2
    assert joined(newcomer).generation_id == 2
    assert leader.leader_id == a
    assert {m.member_id: m.metadata for m in leader.members} == {
        a: b"meta-range",
        b: b"meta-b2",
        joined(newcomer).member_id: b"meta-c",
    }
    assert c.heartbeat(2.4, a, 1) == ErrorCode.illegal_generation
    assert c.heartbeat(2.4, a, 2) == ErrorCode.none


def test_member_that_never_rejoins_is_removed_at_the_rebalance_timeout() -> None:
    c = Clients()
    a, b = c.stable_pair(rebalance_ms=5_000, session_ms=30_000)
    newcomer = c.join(2.0, client="c", rebalance_ms=5_000)
    rejoin_a = c.join(2.1, a)
    # b keeps heartbeating (so its session holds) but never rejoins.
    assert c.heartbeat(4.0, b, 1) == ErrorCode.rebalance_in_progress
    assert c.poll(6.9) == []
    assert set(c.poll(7.0)) == {newcomer, rejoin_a}
    assert [m.member_id for m in joined(rejoin_a).members] == [a, joined(newcomer).member_id]
    assert c.heartbeat(7.1, b, 1) == ErrorCode.unknown_member_id


def test_session_expiry_removes_a_silent_member_and_rebalances() -> None:
    c = Clients()
    a, b = c.stable_pair()
    for t in (4.0, 8.0):
        assert c.heartbeat(t, a, 1) == ErrorCode.none
    assert c.coordinator.next_deadline() == 11.0  # b: last seen at 1.0, 10 s session
    c.poll(11.0)
    assert [m.member_id for m in c.coordinator.describe("g").members] == [a]
    assert c.heartbeat(11.5, a, 1) == ErrorCode.rebalance_in_progress
    rejoin = c.join(11.6, a)
    assert joined(rejoin).generation_id == 2  # the only member left, so at once
    assert c.heartbeat(11.7, b, 1) == ErrorCode.unknown_member_id


def test_leave_triggers_a_rebalance_and_the_last_leave_empties_the_group() -> None:
    c = Clients()
    a, b = c.stable_pair()
    assert c.coordinator.leave(2.0, "g", [b, "nobody"]) == [
        ErrorCode.none,
        ErrorCode.unknown_member_id,
    ]
    assert c.heartbeat(2.1, a, 1) == ErrorCode.rebalance_in_progress
    assert joined(c.join(2.2, a)).generation_id == 2
    assert c.coordinator.leave(3.0, "g", [a]) == [ErrorCode.none]
    # No members and no offsets: the group is gone, which Kafka reports as Dead.
    assert c.coordinator.list_groups() == []
    assert c.coordinator.describe("g").state is GroupState.DEAD
    assert c.coordinator.leave(3.0, "g", [a]) == [ErrorCode.unknown_member_id]


def test_leave_while_others_wait_completes_their_join() -> None:
    c = Clients()
    a, b = c.stable_pair()
    rejoin_a = c.join(2.0, a, protocols=[("range", b"changed")])
    assert not rejoin_a.done
    c.coordinator.leave(2.1, "g", [b])
    assert c.poll(2.1) == [rejoin_a]
    assert joined(rejoin_a).members == ((a, None, b"changed"),)


def test_member_id_required_flow() -> None:
    c = Clients()
    first = c.join(0.0, client="kip394", require_known=True)
    assert first.result is not None
    assert first.result.error_code == ErrorCode.member_id_required
    member_id = first.result.member_id
    assert member_id.startswith("kip394-") and first.member_id == member_id
    assert c.coordinator.describe("g").state is GroupState.EMPTY
    second = c.join(0.5, member_id, client="kip394")
    c.poll(0.6)
    assert joined(second).member_id == member_id
    assert joined(second).leader_id == member_id


def test_a_pending_member_id_holds_a_rebalance_until_it_expires() -> None:
    c = Clients()
    a, b = c.stable_pair()
    c.coordinator.leave(1.0, "g", [b])
    rejoin_a = c.join(1.1, a)
    assert joined(rejoin_a).generation_id == 2
    c.sync(1.1, a, 2, [(a, b"A")])
    pending = c.join(2.0, require_known=True, session_ms=6_000)
    assert pending.result is not None
    assert pending.result.error_code == ErrorCode.member_id_required
    leader_rejoin = c.join(2.5, a)  # a leader rejoin always rebalances
    assert not leader_rejoin.done
    assert c.poll(7.9) == []
    assert c.poll(8.0) == [leader_rejoin]
    assert joined(leader_rejoin).generation_id == 3
    assert c.join(8.5, pending.result.member_id).result == JoinResult.failed(
        ErrorCode.unknown_member_id, pending.result.member_id
    )


def test_inconsistent_group_protocol() -> None:
    c = Clients()
    c.join(0.0, protocols=[("range", b""), ("roundrobin", b"")])
    for protocols, protocol_type in (
        ([("sticky", b"")], "consumer"),
        (RANGE, "connect"),
        ([], "consumer"),
    ):
        ticket = c.join(0.01, protocols=protocols, protocol_type=protocol_type)
        assert ticket.result is not None
        assert ticket.result.error_code == ErrorCode.inconsistent_group_protocol
    assert c.join(0.0, group="empty", protocols=[]).result is not None
    assert c.coordinator.describe("empty").state is GroupState.DEAD


def test_the_protocol_is_chosen_by_vote_among_common_ones() -> None:
    c = Clients()
    both = [("range", b""), ("roundrobin", b"")]
    tickets = [
        c.join(0.0, protocols=[("roundrobin", b""), ("range", b"")]),
        c.join(0.0, protocols=both),
        c.join(0.0, protocols=both),
        c.join(0.0, protocols=[("range", b""), ("roundrobin", b""), ("sticky", b"")]),
    ]
    c.poll(1.0)
    assert {joined(t).protocol_name for t in tickets} == {"range"}
    only = c.join(1.0, group="h", protocols=both)
    other = c.join(1.0, group="h", protocols=[("roundrobin", b"")])
    c.poll(2.0)
    assert joined(only).protocol_name == joined(other).protocol_name == "roundrobin"


def test_wrong_generation_and_unknown_member_errors() -> None:
    c = Clients()
    a, _ = c.stable_pair()
    for call in (
        lambda gen, member, group="g": synced(c.sync(2.0, member, gen, group=group)).error_code,
        lambda gen, member, group="g": c.heartbeat(2.0, member, gen, group=group),
        lambda gen, member, group="g": c.coordinator.validate_commit(2.0, group, gen, member),
    ):
        assert call(1, a) == ErrorCode.none
        assert call(0, a) == ErrorCode.illegal_generation
        assert call(1, "stranger") == ErrorCode.unknown_member_id
        assert call(1, a, "elsewhere") in (
            ErrorCode.unknown_member_id,
            ErrorCode.illegal_generation,
        )
    assert c.join(2.0, "stranger").result == JoinResult.failed(
        ErrorCode.unknown_member_id, "stranger"
    )
    assert c.join(2.0, "x", group="nowhere").result is not None
    assert c.join(2.0, session_ms=1_000).result == JoinResult.failed(
        ErrorCode.invalid_session_timeout, ""
    )
    assert c.join(2.0, group="").result == JoinResult.failed(ErrorCode.invalid_group_id, "")


def test_sync_during_a_rebalance_and_a_pending_sync_overtaken_by_one() -> None:
    c = Clients()
    a = c.join(0.0)
    b = c.join(0.0, client="b")
    c.poll(1.0)
    follower = c.sync(1.1, joined(b).member_id, 1)
    assert not follower.done
    newcomer = c.join(1.2, client="c")
    # The generation moved on before the leader synced: the follower must rejoin.
    assert synced(follower).error_code == ErrorCode.rebalance_in_progress
    assert c.completed[-1] is follower and not newcomer.done
    late = c.sync(1.3, joined(a).member_id, 1, [])
    assert synced(late).error_code == ErrorCode.rebalance_in_progress


def test_leader_that_never_syncs_is_dropped_at_the_rebalance_timeout() -> None:
    c = Clients()
    a = c.join(0.0, rebalance_ms=2_000)
    b = c.join(0.0, client="b", rebalance_ms=2_000)
    c.poll(1.0)  # the join phase ended at 0.2 (b's arrival extended the delay)
    follower = c.sync(1.1, joined(b).member_id, 1)
    assert c.poll(2.15) == []
    assert c.poll(2.25) == [follower]
    assert synced(follower).error_code == ErrorCode.rebalance_in_progress
    assert [m.member_id for m in c.coordinator.describe("g").members] == [joined(b).member_id]
    assert c.heartbeat(2.3, joined(a).member_id, 1) == ErrorCode.unknown_member_id
    rejoin = c.join(2.4, joined(b).member_id)
    assert joined(rejoin).leader_id == joined(b).member_id


def test_offset_commit_validation() -> None:
    c = Clients()
    # Simple (non-group) commits: allowed while there are no members.
    assert c.coordinator.validate_commit(0.0, "simple", -1, "") == ErrorCode.none
    assert c.coordinator.list_groups() == [("simple", "", "Empty")]
    # As Kafka: a group commit to a group this coordinator does not know.
    assert c.coordinator.validate_commit(0.0, "nowhere", 3, "m") == ErrorCode.illegal_generation
    a = c.join(0.0)
    assert c.coordinator.validate_commit(0.0, "g", -1, "") == ErrorCode.unknown_member_id
    c.poll(0.1)
    member = joined(a).member_id
    assert c.coordinator.validate_commit(0.2, "g", 1, member) == ErrorCode.rebalance_in_progress
    c.sync(0.3, member, 1, [(member, b"")])
    # Commits alone keep a member alive: they count as heartbeats.
    for t in range(5, 60, 5):
        assert c.coordinator.validate_commit(float(t), "g", 1, member) == ErrorCode.none
    assert c.coordinator.describe("g").state is GroupState.STABLE
    # A rebalance in progress still accepts the current generation's commits.
    c.join(60.0, client="other")
    assert c.coordinator.validate_commit(60.1, "g", 1, member) == ErrorCode.none
    # After everyone leaves, a group with commits stays listed as Empty.
    c.coordinator.leave(61.0, "g", [member])
    c.poll(100.0)
    assert ("g", "consumer", "Empty") in c.coordinator.list_groups()
    restarted = GroupCoordinator(groups_with_offsets=["old"])
    assert restarted.list_groups() == [("old", "", "Empty")]


def test_follower_rejoin_without_changes_keeps_the_generation() -> None:
    c = Clients()
    a, b = c.stable_pair()
    again = c.join(2.0, b)
    assert joined(again).generation_id == 1 and joined(again).members == ()
    assert c.coordinator.describe("g").state is GroupState.STABLE
    changed = c.join(2.1, b, protocols=[("range", b"new topics")])
    assert not changed.done
    assert c.heartbeat(2.2, a, 1) == ErrorCode.rebalance_in_progress


def test_a_retried_join_supersedes_the_waiting_one() -> None:
    c = Clients()
    a, b = c.stable_pair()
    first = c.join(2.0, a)
    retry = c.join(2.5, a)
    assert first.result == JoinResult.failed(ErrorCode.rebalance_in_progress, a)
    c.join(2.6, b)
    assert joined(retry).generation_id == 2


def test_close_answers_every_waiting_ticket() -> None:
    c = Clients()
    waiting = c.join(0.0)
    c.coordinator.close()
    assert c.poll(0.0) == [waiting]
    assert waiting.result is not None and waiting.result.error_code == ErrorCode.not_coordinator
    assert c.heartbeat(0.1, "m", 1) == ErrorCode.not_coordinator
    assert c.coordinator.next_deadline() is None


def test_next_deadline_is_now_while_completions_are_queued() -> None:
    coordinator = GroupCoordinator(initial_rebalance_delay_ms=0)
    assert coordinator.next_deadline() is None
    ticket = coordinator.join(5.0, "g", "", None, "consumer", RANGE, 10_000, 0, "c", "h", False)
    assert coordinator.next_deadline() == 5.0  # an initial delay of 0: due at once
    assert coordinator.poll(5.0) == [ticket]
    assert coordinator.next_deadline() == 5.0 + 10.0  # the pending-sync timeout (= session)
