"""The data of consumer groups: results and tickets the broker sees, and per-group state.

Split from `groups` (the coordinator's rules) so that module stays readable: here are the
plain types (a join or sync result, the ticket that carries it, a DescribeGroups
summary) and `Group`/`Member`, which know only facts about themselves (protocol
candidates, the next timer due), never the rules that change them.

Times are seconds on the caller's monotonic clock; timeouts arrive from the wire in
milliseconds and are stored as seconds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple

from kio.schema.errors import ErrorCode

__all__ = [
    "Completion",
    "ErrorCode",
    "Group",
    "GroupDescription",
    "GroupSnapshot",
    "GroupState",
    "JoinResult",
    "JoinTicket",
    "JoinedMember",
    "Member",
    "MemberDescription",
    "SnapshotMember",
    "SyncResult",
    "SyncTicket",
]


class GroupState(enum.StrEnum):
    """Kafka's group states, spelled as DescribeGroups and ListGroups report them."""

    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    COMPLETING_REBALANCE = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


class JoinedMember(NamedTuple):
    """One entry of the member list the leader gets in its JoinGroup response."""

    member_id: str
    group_instance_id: str | None
    metadata: bytes


@dataclass(frozen=True, slots=True)
class JoinResult:
    """A JoinGroup response's content. `members` is filled for the leader only.

    protocol_type/protocol_name are None on errors (null on v7+, "" before that).
    """

    error_code: ErrorCode
    generation_id: int
    protocol_type: str | None
    protocol_name: str | None
    leader_id: str
    member_id: str
    members: tuple[JoinedMember, ...] = ()

    @classmethod
    def failed(cls, error_code: ErrorCode, member_id: str) -> JoinResult:
        return cls(error_code, -1, None, None, "", member_id)


@dataclass(frozen=True, slots=True)
class SyncResult:
    """A SyncGroup response's content: this member's assignment bytes."""

    error_code: ErrorCode
    protocol_type: str | None
    protocol_name: str | None
    assignment: bytes

    @classmethod
    def failed(cls, error_code: ErrorCode) -> SyncResult:
        return cls(error_code, None, None, b"")


@dataclass(eq=False, slots=True)
class JoinTicket:
    """One JoinGroup request. `result` is None while the request waits for the rebalance.

    Compared and hashed by identity, so an adapter can key a Future by it.
    """

    group_id: str
    member_id: str
    result: JoinResult | None = None

    @property
    def done(self) -> bool:
        return self.result is not None


@dataclass(eq=False, slots=True)
class SyncTicket:
    """One SyncGroup request. `result` is None while a follower waits for the leader."""

    group_id: str
    member_id: str
    result: SyncResult | None = None

    @property
    def done(self) -> bool:
        return self.result is not None


Completion = JoinTicket | SyncTicket


@dataclass(frozen=True, slots=True)
class MemberDescription:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    metadata: bytes
    assignment: bytes


@dataclass(frozen=True, slots=True)
class GroupDescription:
    """DescribeGroups' answer for one group; an unknown group is Dead with no members."""

    error_code: ErrorCode
    group_id: str
    state: GroupState
    protocol_type: str
    protocol_name: str
    members: tuple[MemberDescription, ...]


class SnapshotMember(NamedTuple):
    """A member as written to the group log (times in seconds)."""

    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    session_timeout: float
    rebalance_timeout: float
    protocols: tuple[tuple[str, bytes], ...]
    assignment: bytes


class GroupSnapshot(NamedTuple):
    """A Stable group as the next coordinator needs it (group_log.py writes it)."""

    group_id: str
    generation: int
    protocol_type: str
    protocol_name: str
    leader: str
    members: tuple[SnapshotMember, ...]


@dataclass(eq=False, slots=True)
class Member:
    """A joined member: what it last sent in JoinGroup, its timers and waiting tickets."""

    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    session_timeout: float
    rebalance_timeout: float
    protocols: list[tuple[str, bytes]]
    last_heartbeat: float
    assignment: bytes = b""
    join: JoinTicket | None = None
    sync: SyncTicket | None = None

    def protocol_names(self) -> list[str]:
        return [name for name, _ in self.protocols]

    def metadata(self, protocol: str | None) -> bytes:
        for name, data in self.protocols:
            if name == protocol:
                return data
        return b""

    def matches(self, protocols: list[tuple[str, bytes]]) -> bool:
        return self.protocols == list(protocols)

    def session_deadline(self) -> float | None:
        # A member waiting in JoinGroup or SyncGroup cannot heartbeat; the rebalance and
        # pending-sync timers bound that wait instead (as Kafka does).
        if self.join is not None or self.sync is not None:
            return None
        return self.last_heartbeat + self.session_timeout


class Timer(enum.Enum):
    """What a group's next due timer is about."""

    PENDING_MEMBER = "pending member expired"
    SESSION = "session timeout"
    JOIN = "rebalance join phase ended"
    SYNC = "members did not sync in time"


@dataclass(eq=False, slots=True)
class Group:
    """One group's state. Member dicts keep join order, which picks a successor leader."""

    group_id: str
    state: GroupState = GroupState.EMPTY
    generation: int = 0
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader: str | None = None
    members: dict[str, Member] = field(default_factory=dict)
    # KIP-394: member ids handed out with MEMBER_ID_REQUIRED, with their expiry.
    pending: dict[str, float] = field(default_factory=dict)
    join_deadline: float | None = None
    # The initial rebalance of an Empty group waits, and waits again while members arrive.
    initial_delay: bool = False
    initial_remaining: float = 0.0
    new_member_added: bool = False
    # Members handed a generation that have not sent SyncGroup yet, and their deadline.
    pending_sync: set[str] = field(default_factory=set)
    sync_deadline: float | None = None
    has_offsets: bool = False

    def candidates(self, excluding: str | None = None) -> set[str] | None:
        """Protocols every member (but `excluding`) supports; None if there is no one."""
        common: set[str] | None = None
        for member in self.members.values():
            if member.member_id == excluding:
                continue
            names = set(member.protocol_names())
            common = names if common is None else common & names
        return common

    def supports(self, member_id: str, protocol_type: str, names: list[str]) -> bool:
        """Whether a member with these protocols may join (Kafka's supportsProtocols)."""
        if not protocol_type or not names:
            return False
        others = self.candidates(excluding=member_id)
        if others is None:
            return True
        return protocol_type == self.protocol_type and bool(others.intersection(names))

    def select_protocol(self) -> str | None:
        """Each member votes for its most preferred common protocol; most votes wins.

        Ties go to the leader's preference, so the choice is deterministic.
        """
        common = self.candidates() or set()
        votes: dict[str, int] = {}
        for member in self.members.values():
            vote = next((name for name in member.protocol_names() if name in common), None)
            if vote is not None:
                votes[vote] = votes.get(vote, 0) + 1
        if not votes:
            return None
        leader = self.members.get(self.leader or "")
        order = leader.protocol_names() if leader else []
        rank = {name: i for i, name in enumerate(order)}
        return max(votes, key=lambda name: (votes[name], -rank.get(name, len(rank))))

    def all_joined(self) -> bool:
        return not self.pending and all(m.join is not None for m in self.members.values())

    def rebalance_timeout(self) -> float:
        return max((m.rebalance_timeout for m in self.members.values()), default=0.0)

    def joined_members(self) -> tuple[JoinedMember, ...]:
        return tuple(
            JoinedMember(m.member_id, m.group_instance_id, m.metadata(self.protocol_name))
            for m in self.members.values()
        )

    def join_result(self, member_id: str, *, members: bool = True) -> JoinResult:
        """The current generation as a JoinGroup answer; the leader gets the members."""
        leader = self.leader or ""
        joined = self.joined_members() if members and member_id == leader else ()
        return JoinResult(
            ErrorCode.none,
            self.generation,
            self.protocol_type,
            self.protocol_name,
            leader,
            member_id,
            joined,
        )

    def sync_result(self, member: Member) -> SyncResult:
        return SyncResult(ErrorCode.none, self.protocol_type, self.protocol_name, member.assignment)

    def next_timer(self) -> tuple[float, Timer, str] | None:
        """The earliest timer of this group: (when, what, member id or "")."""
        timers: list[tuple[float, Timer, str]] = [
            (at, Timer.PENDING_MEMBER, member_id) for member_id, at in self.pending.items()
        ]
        for member in self.members.values():
            at = member.session_deadline()
            if at is not None:
                timers.append((at, Timer.SESSION, member.member_id))
        if self.join_deadline is not None:
            timers.append((self.join_deadline, Timer.JOIN, ""))
        if self.sync_deadline is not None:
            timers.append((self.sync_deadline, Timer.SYNC, ""))
        return min(timers, key=lambda timer: timer[0], default=None)
