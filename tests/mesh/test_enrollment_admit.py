"""Enrollment: the coordinator's policy for unknown initiators, fed real initiations made
by the project's Device (with a token's handshake proof in mac2), and a whole
coordinator Device that stays silent to a wrong token and answers a right one."""

from __future__ import annotations

import base64
import ipaddress
import random

import pytest

from pyralog.mesh.enrollment import (
    AUDIT_PER_SECOND,
    MAX_PROVISIONAL,
    PROVISIONAL_NETWORK,
    PROVISIONAL_TTL,
    Enrollment,
    provisional_address,
)
from pyralog.mesh.model import TokenRecord
from pyralog.mesh.token import enrollment_psk, proof_key, token_id
from pyralog.wireguard.admission import Admission, UnknownInitiator
from pyralog.wireguard.constants import MESSAGE_COOKIE_REPLY, MESSAGE_INITIATION, MESSAGE_RESPONSE
from pyralog.wireguard.device import Device
from pyralog.wireguard.keys import PresharedKey, PrivateKey, PublicKey

from wgsim import A_EP, B_EP, WALL_OFFSET, Net, ipv4_packet

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
COORD_ADDRESS = "10.100.0.1"
NOW = 1000.25  # Device time (monotonic); wall time is NOW + WALL_OFFSET


def token(secret: bytes = SECRET, **kw: object) -> TokenRecord:
    fields: dict[str, object] = {
        "id": token_id(secret),
        "role": "node",
        "proof_key": proof_key(secret).hex(),
        "psk": base64.b64encode(enrollment_psk(secret).raw).decode(),
        "created_at": WALL_OFFSET,
        "expires_at": WALL_OFFSET + 3600,
    }
    fields.update(kw)
    return TokenRecord(**fields)  # type: ignore[arg-type]


class World:
    """A coordinator Device (no peers) and an enrolling node's Device on one Net."""

    def __init__(
        self, secret: bytes | None = SECRET, seed: int = 1, psk: PresharedKey | None = None
    ) -> None:
        rng = random.Random(seed)
        self.node_key = PrivateKey(rng.randbytes(32))
        self.coord_key = PrivateKey(rng.randbytes(32))
        self.node = Device(self.node_key, rng=random.Random(seed + 1), clock_offset=WALL_OFFSET)
        self.coord = Device(self.coord_key, rng=random.Random(seed + 2), clock_offset=WALL_OFFSET)
        self.net = Net(now=NOW)
        self.net.attach(A_EP, self.node)
        self.net.attach(B_EP, self.coord)
        self.source = str(provisional_address(self.node_key.public_key))
        if psk is None and secret is not None:
            psk = enrollment_psk(secret)
        self._initiation: bytes | None = None
        self.node.add_peer(
            self.coord_key.public_key,
            NOW,
            preshared_key=psk,
            endpoint=B_EP,
            allowed_ips=[f"{COORD_ADDRESS}/32"],
        )
        if secret is not None:
            self.node.set_handshake_proof(self.coord_key.public_key, proof_key(secret))

    def initiation(self) -> bytes:
        """The node's initiation datagram, as the coordinator would receive it."""
        if self._initiation is None:
            self.node.send_packet(ipv4_packet(self.source, COORD_ADDRESS, b"enroll"), NOW)
            ((data, dst),) = self.node.datagrams_to_send()
            assert dst == B_EP and data[0] == MESSAGE_INITIATION
            self._initiation = data
        return self._initiation

    def who(
        self, *, now: float = NOW, key: PublicKey | None = None, message: bytes | None = None
    ) -> UnknownInitiator:
        return UnknownInitiator(
            key or self.node_key.public_key,
            A_EP,
            message if message is not None else self.initiation(),
            now,
        )


def enrollment(*records: TokenRecord) -> Enrollment:
    e = Enrollment(clock_offset=WALL_OFFSET)
    e.update_tokens(list(records))
    return e


def keys_sharing_a_provisional_address() -> tuple[PublicKey, PublicKey]:
    rng = random.Random(7)
    seen: dict[ipaddress.IPv4Address, PublicKey] = {}
    while True:
        key = PublicKey(rng.randbytes(32))
        address = provisional_address(key)
        if address in seen:
            return seen[address], key
        seen[address] = key


# -- provisional addresses ----------------------------------------------------------------


def test_provisional_addresses_are_stable_and_never_edge_addresses() -> None:
    rng = random.Random(3)
    for _ in range(2000):
        key = PublicKey(rng.randbytes(32))
        address = provisional_address(key)
        assert address == provisional_address(PublicKey(key.raw))
        assert address in PROVISIONAL_NETWORK
        third, fourth = address.packed[2], address.packed[3]
        assert 1 <= third <= 254 and 1 <= fourth <= 254


# -- admit ----------------------------------------------------------------------------------


def test_a_live_token_is_admitted_with_its_psk_and_the_provisional_address() -> None:
    world = World()
    e = enrollment(token(OTHER_SECRET), token())
    who = world.who()
    admission = e.admit(who)
    assert isinstance(admission, Admission)
    assert admission.preshared_key == enrollment_psk(SECRET)
    assert list(admission.allowed_ips) == [f"{world.source}/32"]
    pending = e.pending[world.node_key.public_key]
    assert pending.token_id == token_id(SECRET)
    assert str(pending.address) == world.source and pending.admitted_at == NOW
    assert e.counters == {"admitted": 1}
    (line,) = e.drain_audit()
    assert line == {
        "event": "enrollment_admitted",
        "public_key": world.node_key.public_key.to_base64(),
        "endpoint": f"{A_EP[0]}:{A_EP[1]}",
        "token_id": token_id(SECRET),
    }
    assert e.drain_audit() == []
    # The same key trying again (a retried handshake) is admitted again, not "busy".
    assert e.admit(world.who(now=NOW + 5)) is not None
    assert e.counters["admitted"] == 2 and len(e.pending) == 1


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"expires_at": WALL_OFFSET + NOW}, "expired"),  # expires exactly now
        ({"expires_at": WALL_OFFSET + 10}, "expired"),
        ({"revoked": True}, "revoked"),
        ({"uses": 1}, "used"),
        ({"revoked": True, "expires_at": WALL_OFFSET + 10}, "revoked"),
    ],
)
def test_dead_tokens_are_refused(changes: dict[str, object], reason: str) -> None:
    world = World()
    e = enrollment(token(**changes))
    assert e.admit(world.who()) is None
    assert e.counters == {f"refused_{reason}": 1}
    assert e.pending == {}
    (line,) = e.drain_audit()
    assert line["event"] == f"enrollment_refused_{reason}"
    assert line["token_id"] == token_id(SECRET)
    assert line["public_key"] == world.node_key.public_key.to_base64()


def test_expiry_is_wall_clock_time_not_the_devices_monotonic_clock() -> None:
    # The Device's ``now`` is small (monotonic); the token expired long ago in wall time.
    world = World()
    e = enrollment(token(expires_at=WALL_OFFSET - 1))
    assert e.admit(world.who()) is None and e.counters == {"refused_expired": 1}
    # And a live token is not refused because the monotonic clock is "before" creation.
    e = enrollment(token(expires_at=WALL_OFFSET + NOW + 1))
    assert e.admit(world.who()) is not None


def test_a_reusable_token_admits_after_uses() -> None:
    world = World()
    e = enrollment(token(reusable=True, uses=7, expires_at=None))
    assert e.admit(world.who()) is not None


def test_a_wrong_secret_or_no_proof_is_no_token() -> None:
    e = enrollment(token())
    for world in (World(OTHER_SECRET), World(None)):
        assert e.admit(world.who()) is None
    assert e.counters == {"refused_no_token": 2}
    lines = e.drain_audit()
    assert [line["event"] for line in lines] == ["enrollment_refused_no_token"] * 2
    assert all(line["token_id"] is None for line in lines)
    assert e.pending == {}


def test_no_tokens_at_all() -> None:
    world = World()
    e = Enrollment()
    assert e.admit(world.who()) is None and e.counters == {"refused_no_token": 1}
    e.update_tokens([token()])
    assert e.admit(world.who()) is not None
    e.update_tokens([])  # the token was deleted
    assert e.admit(world.who()) is None


def test_a_proof_does_not_survive_a_changed_message() -> None:
    world = World()
    e = enrollment(token())
    message = bytearray(world.initiation())
    message[10] ^= 1
    assert e.admit(world.who(message=bytes(message))) is None
    assert e.counters == {"refused_no_token": 1}


def test_a_provisional_address_collision_is_busy() -> None:
    first, second = keys_sharing_a_provisional_address()
    world = World()
    message = world.initiation()
    e = enrollment(token(reusable=True))
    assert e.admit(world.who(key=first, message=message)) is not None
    assert e.admit(world.who(key=second, message=message)) is None
    assert e.counters["refused_busy"] == 1
    assert list(e.pending) == [first]
    busy = e.drain_audit()[-1]
    assert busy["event"] == "enrollment_refused_busy" and busy["token_id"] == token_id(SECRET)
    # Once the first finishes, the second is admitted.
    finished = e.finish(first)
    assert finished is not None and finished.address == provisional_address(first)
    assert e.finish(first) is None
    assert e.admit(world.who(key=second, message=message)) is not None


def test_pending_is_bounded() -> None:
    world = World()
    message = world.initiation()
    e = enrollment(token(reusable=True))
    rng = random.Random(11)
    admitted = 0
    while len(e.pending) < MAX_PROVISIONAL:
        admitted += (
            e.admit(world.who(key=PublicKey(rng.randbytes(32)), message=message)) is not None
        )
    assert admitted == MAX_PROVISIONAL
    assert e.admit(world.who(key=PublicKey(rng.randbytes(32)), message=message)) is None
    assert e.counters["refused_too_many_pending"] == 1
    # A key already pending is still answered (its handshake retries).
    known = next(iter(e.pending))
    assert e.admit(world.who(key=known, message=message)) is not None


def test_expired_removes_pending_after_the_ttl() -> None:
    world = World()
    e = enrollment(token(reusable=True))
    e.admit(world.who())
    assert e.expired(NOW + PROVISIONAL_TTL) == []  # exactly the TTL: still pending
    assert world.node_key.public_key in e.pending
    assert e.expired(NOW + PROVISIONAL_TTL + 0.01) == [world.node_key.public_key]
    assert e.pending == {} and e.counters["provisional_expired"] == 1
    assert e.expired(NOW + 10 * PROVISIONAL_TTL) == []


def test_audit_is_rate_limited_and_says_how_much_it_suppressed() -> None:
    world = World(OTHER_SECRET)
    message = world.initiation()
    e = enrollment(token())
    extra = 7
    for i in range(AUDIT_PER_SECOND + extra):
        who = UnknownInitiator(world.node_key.public_key, A_EP, message, 50.0 + i / 1000)
        assert e.admit(who) is None
    assert e.counters["refused_no_token"] == AUDIT_PER_SECOND + extra  # counters count all
    lines = e.drain_audit()
    assert len(lines) == AUDIT_PER_SECOND
    assert all(line["event"] == "enrollment_refused_no_token" for line in lines)
    # The next event, a second later, first says what was left out.
    e.admit(UnknownInitiator(world.node_key.public_key, A_EP, message, 51.5))
    lines = e.drain_audit()
    assert lines[0] == {"event": "audit_suppressed", "count": extra}
    assert lines[1]["event"] == "enrollment_refused_no_token"
    # And then nothing is suppressed any more.
    e.admit(UnknownInitiator(world.node_key.public_key, A_EP, message, 52.5))
    assert [line["event"] for line in e.drain_audit()] == ["enrollment_refused_no_token"]


def test_pre_check_accepts_only_a_proof_with_the_cookie() -> None:
    world = World()
    e = enrollment(token())
    message = world.initiation()
    # Without load the node keys mac2 with the proof key alone.
    assert e.pre_check(message, None)
    assert not e.pre_check(message, bytes(16))
    assert not enrollment(token(OTHER_SECRET)).pre_check(message, None)
    assert not Enrollment().pre_check(message, None)


# -- a whole coordinator Device --------------------------------------------------------


def coordinator_world(
    secret: bytes | None, *records: TokenRecord, psk: PresharedKey | None = None
) -> tuple[World, Enrollment]:
    world = World(secret, psk=psk)
    e = enrollment(*records)
    world.coord.unknown_initiator_policy = e.admit
    world.coord.mac2_proof_check = e.pre_check
    return world, e


def send_and_pump(world: World, now: float = NOW) -> None:
    world.net.now = now
    world.node.send_packet(ipv4_packet(world.source, COORD_ADDRESS, b"enroll"), now)
    world.net.pump()


@pytest.mark.parametrize(
    "secret, record",
    [
        (OTHER_SECRET, token()),
        (None, token()),
        (SECRET, token(revoked=True)),
        (SECRET, token(expires_at=WALL_OFFSET - 5)),
        (SECRET, token(uses=1)),
    ],
)
def test_the_coordinator_device_says_nothing_to_a_wrong_or_dead_token(
    secret: bytes | None, record: TokenRecord
) -> None:
    world, e = coordinator_world(secret, record)
    send_and_pump(world)
    world.net.advance(NOW + 12)  # the node's retries too
    assert world.net.log, "the node sent nothing"
    assert {s.src for s in world.net.log} == {A_EP}, "the coordinator answered"
    assert all(s.kind == MESSAGE_INITIATION for s in world.net.log)
    assert world.coord.peers == [] and e.pending == {}
    assert sum(v for k, v in e.counters.items() if k.startswith("refused_")) == len(world.net.log)


def test_the_coordinator_device_completes_the_handshake_for_a_right_token() -> None:
    world, e = coordinator_world(SECRET, token())
    send_and_pump(world)
    assert [s.kind for s in world.net.log][:2] == [MESSAGE_INITIATION, MESSAGE_RESPONSE]
    peer = world.coord.get_peer(world.node_key.public_key)
    assert peer is not None and peer.provisional
    assert peer.preshared_key == enrollment_psk(SECRET)
    assert [str(n) for n in world.coord.allowed_ips_of(world.node_key.public_key)] == [
        f"{world.source}/32"
    ]
    # The enrolling node's first packet arrives, from its provisional address only.
    assert world.net.delivered[B_EP] == [ipv4_packet(world.source, COORD_ADDRESS, b"enroll")]
    world.node.send_packet(ipv4_packet("10.100.0.77", COORD_ADDRESS, b"spoofed"), NOW)
    world.net.pump()
    assert len(world.net.delivered[B_EP]) == 1
    assert e.counters == {"admitted": 1}


def test_a_right_secret_with_the_wrong_psk_gets_no_session() -> None:
    # The token's proof admits the key, but the session itself needs the token's PSK.
    world, e = coordinator_world(SECRET, token(), psk=PresharedKey(bytes([1]) * 32))
    send_and_pump(world)
    assert e.counters == {"admitted": 1}
    assert MESSAGE_RESPONSE in [s.kind for s in world.net.log]
    assert world.net.delivered[B_EP] == []


def test_under_load_a_right_token_gets_a_cookie_then_a_handshake() -> None:
    world, e = coordinator_world(SECRET, token())
    world.coord.force_under_load = True
    send_and_pump(world)
    assert [s.kind for s in world.net.log] == [MESSAGE_INITIATION, MESSAGE_COOKIE_REPLY]
    assert e.counters == {} and world.coord.peers == []  # no Curve25519 work yet
    world.net.now = NOW + 6
    world.node.rekey(world.coord_key.public_key, NOW + 6)
    world.net.pump()
    assert [s.kind for s in world.net.log][2:4] == [MESSAGE_INITIATION, MESSAGE_RESPONSE]
    assert e.counters == {"admitted": 1}
    assert world.coord.get_peer(world.node_key.public_key) is not None


def test_under_load_a_wrong_token_gets_only_cookie_replies() -> None:
    world, e = coordinator_world(OTHER_SECRET, token())
    world.coord.force_under_load = True
    send_and_pump(world)
    world.net.now = NOW + 6
    world.node.rekey(world.coord_key.public_key, NOW + 6)
    world.net.pump()
    kinds = [s.kind for s in world.net.log]
    assert MESSAGE_RESPONSE not in kinds
    assert kinds.count(MESSAGE_COOKIE_REPLY) == 2
    # pre_check refused it before any Curve25519 work: the policy never even saw it.
    assert e.counters == {} and world.coord.peers == []
