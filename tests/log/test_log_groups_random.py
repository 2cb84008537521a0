"""GroupCoordinator under random sequences of requests and clock jumps (hypothesis).

Whatever the clients do, nothing raises, every ticket is answered exactly once and
reported by the poll after it, and once the clients fall silent every waiting ticket is
answered. The group invariants are checked white-box, on the coordinator's own state.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pyralog.log.group_state import Group
from pyralog.log.groups import Completion, ErrorCode, GroupCoordinator, GroupState, JoinTicket

GROUPS = ("g1", "g2")
PROTOCOLS = (
    [("range", b"r")],
    [("range", b"r2"), ("roundrobin", b"x")],
    [("roundrobin", b"y")],
    [("sticky", b"")],
)
MAX_TIMEOUT = 10.0  # seconds: the largest session or rebalance timeout below

# Weighted towards what real clients send (known members, the current generation), so
# runs reach Stable groups and later generations, not only errors.
groups = st.sampled_from(GROUPS)
members = st.sampled_from((0, 1, *range(2, 8), *range(2, 8), *range(2, 8)))
generations = st.sampled_from(("current",) * 6 + ("stale", "next", "none"))
protocol_choices = st.sampled_from((0, 0, 0, 0, 1, 1, 2, 3))


class Clients(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.coordinator = GroupCoordinator(initial_rebalance_delay_ms=300)
        self.tickets: list[Completion] = []
        self.reported: list[Completion] = []
        self.known: dict[str, list[str]] = {group: [] for group in GROUPS}
        self.generation: dict[str, int] = dict.fromkeys(GROUPS, 0)
        self.leader: dict[str, str] = dict.fromkeys(GROUPS, "")
        self.seen: dict[Group, int] = {}

    # -- what the clients send ------------------------------------------------------

    def member(self, group: str, who: int) -> str:
        known = self.known[group]
        if who == 0 or not known:
            return ""
        if who == 1:
            return "stranger"
        # Mostly the most recent ids: older ones have often expired.
        return known[-1 - (who - 2) % min(len(known), 4)]

    def gen(self, group: str, which: str) -> int:
        current = self.generation[group]
        return {"current": current, "stale": current - 1, "next": current + 1, "none": -1}[which]

    def settle(self) -> None:
        """What the adapter does after each call: poll, and learn from the answers."""
        for ticket in self.coordinator.poll(self.now):
            self.reported.append(ticket)
            if isinstance(ticket, JoinTicket) and ticket.result is not None:
                result = ticket.result
                if result.member_id and result.member_id not in self.known[ticket.group_id]:
                    self.known[ticket.group_id].append(result.member_id)
                if result.error_code == ErrorCode.none:
                    self.generation[ticket.group_id] = result.generation_id
                    self.leader[ticket.group_id] = result.leader_id
                    if result.members:
                        assert result.leader_id == result.member_id
                        assert result.member_id in [m.member_id for m in result.members]

    @rule(
        group=groups,
        who=members,
        protocols=protocol_choices,
        session_ms=st.sampled_from((6_000, 10_000)),
        rebalance_ms=st.sampled_from((0, 1_000, 10_000)),
        require_known=st.booleans(),
    )
    def join(
        self,
        group: str,
        who: int,
        protocols: int,
        session_ms: int,
        rebalance_ms: int,
        require_known: bool,
    ) -> None:
        ticket = self.coordinator.join(
            self.now,
            group,
            self.member(group, who),
            None,
            "consumer",
            PROTOCOLS[protocols],
            session_ms,
            rebalance_ms,
            "client",
            "host",
            require_known,
        )
        self.tickets.append(ticket)
        self.settle()

    @rule(group=groups, who=members, which=generations, assign=st.booleans())
    def sync(self, group: str, who: int, which: str, assign: bool) -> None:
        assignments = [(m, m.encode()) for m in self.known[group]] if assign else []
        member_id = self.member(group, who)
        self.tickets.append(
            self.coordinator.sync(self.now, group, self.gen(group, which), member_id, assignments)
        )
        self.settle()

    @rule(group=groups)
    def leader_sync(self, group: str) -> None:
        assignments = [(m, m.encode()) for m in self.known[group]]
        generation = self.generation[group]
        self.tickets.append(
            self.coordinator.sync(self.now, group, generation, self.leader[group], assignments)
        )
        self.settle()

    @rule(group=groups, who=members, which=generations)
    def heartbeat(self, group: str, who: int, which: str) -> None:
        member_id = self.member(group, who)
        self.coordinator.heartbeat(self.now, group, self.gen(group, which), member_id)
        self.settle()

    @rule(group=groups, who=st.lists(members, max_size=3))
    def leave(self, group: str, who: list[int]) -> None:
        ids = [self.member(group, w) for w in who]
        assert len(self.coordinator.leave(self.now, group, ids)) == len(ids)
        self.settle()

    @rule(group=groups, who=members, which=generations)
    def commit(self, group: str, who: int, which: str) -> None:
        member_id = self.member(group, who)
        self.coordinator.validate_commit(self.now, group, self.gen(group, which), member_id)
        self.settle()

    @rule(seconds=st.sampled_from((0.0, 0.01, 0.1, 0.1, 0.3, 0.3, 1.0, 1.0, 3.0, 7.0)))
    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.settle()

    # -- what must always hold ---------------------------------------------------------

    @invariant()
    def every_answer_is_reported_once(self) -> None:
        assert len({id(t) for t in self.reported}) == len(self.reported)
        assert all(t.done for t in self.reported)
        assert {id(t) for t in self.tickets if t.done} <= {id(t) for t in self.reported}

    @invariant()
    def groups_are_consistent(self) -> None:
        for group in self.coordinator._groups.values():
            if group.members:
                assert group.leader in group.members
                assert group.state is not GroupState.EMPTY
            else:
                assert group.leader is None
            assert group.generation >= self.seen.get(group, 0)
            self.seen[group] = group.generation
            for member in group.members.values():
                if member.join is not None:
                    assert group.state is GroupState.PREPARING_REBALANCE
                if member.sync is not None:
                    assert group.state is GroupState.COMPLETING_REBALANCE
            if group.state is GroupState.PREPARING_REBALANCE:
                assert group.join_deadline is not None
            deadline = self.coordinator.next_deadline()
            assert deadline is None or deadline >= self.now

    def teardown(self) -> None:
        # The clients fall silent; within a few timeouts every request is answered.
        for _ in range(6):
            self.now += 2 * MAX_TIMEOUT
            self.settle()
        assert all(t.done for t in self.tickets)
        assert {id(t) for t in self.tickets} == {id(t) for t in self.reported}
        for group in self.coordinator._groups.values():
            assert group.state is GroupState.EMPTY and group.has_offsets
        assert self.coordinator.next_deadline() is None


TestClients = Clients.TestCase
TestClients.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
