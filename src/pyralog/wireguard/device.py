"""The Device: peers, the index table, cryptokey routing and the timer heap, sans-IO.

Feed it what happens and read back what to do:

- ``receive_datagram(data, endpoint, now)``: a UDP payload arrived from ``endpoint``;
- ``send_packet(packet, now)``: the interface side wants an IP packet sent;
- ``tick(now)``: time passed; call it at ``next_deadline()`` (or more often);

then drain ``datagrams_to_send()`` (``(bytes, endpoint)`` pairs for the UDP socket),
``packets_to_deliver()`` (decrypted IP packets for the interface side) and ``events()``.

Nothing here reads a clock: ``now`` is monotonic seconds from the caller, and wall-clock
time (for TAI64N and ``last_handshake``) is ``now + clock_offset``, which the runtime sets.
Malformed, unauthenticated or unexpected input never raises: it is dropped and counted in
``drops`` (reason -> count), and gets no reply.

Runtime changes go through the configuration methods (the atomic, validated path over
them is ``pyralog.link.control``). Two of them need care across the two peers:
``set_preshared_key`` keeps the replaced key for ``psk_grace`` seconds so the sides may
switch at different moments (``psk``), and ``unknown_initiator_policy`` (``admission``)
may admit a handshake from a key it has no peer for.

This module is long (about 950 lines) for one reason: the Device alone owns the index
table, the timer heap and the output queues, and every path (configuration, sending,
each message type received, timers) changes them together. The concepts it applies
live in their own modules (handshake, cookie, keypair, timers, psk, admission, ...);
what stays here is the bookkeeping that ties them to those shared tables.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import math
import os
import random
from collections.abc import Callable, Iterable, Iterator

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from pyralog.wireguard import events as ev
from pyralog.wireguard.admission import Admission, UnknownInitiator, UnknownInitiatorPolicy
from pyralog.wireguard.allowedips import AllowedIPs
from pyralog.wireguard.constants import (
    DEFAULT_MTU,
    INITIATION_SIZE,
    KEEPALIVE_TIMEOUT,
    MAX_TIMER_HANDSHAKES,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME,
    REKEY_ON_RECEIVE_AGE,
    REKEY_TIMEOUT,
    ZERO_KEY_MATERIAL_AFTER,
)
from pyralog.wireguard.cookie import CookieChecker
from pyralog.wireguard.endpoint import Endpoint
from pyralog.wireguard.handshake import (
    Handshake,
    HandshakeRejected,
    ResponderContext,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
    derive_transport_keys,
    open_initiation_static,
)
from pyralog.wireguard.keypair import Keypair
from pyralog.wireguard.keys import (
    InvalidKeyError,
    PresharedKey,
    PrivateKey,
    PublicKey,
    is_low_order,
)
from pyralog.wireguard.messages import (
    TRANSPORT_HEADER,
    CookieReply,
    Initiation,
    Response,
    message_type,
)
from pyralog.wireguard.peer import Peer
from pyralog.wireguard.psk import Rollover
from pyralog.wireguard.ratelimiter import RateLimiter
from pyralog.wireguard.tai64n import tai64n
from pyralog.wireguard.timers import (
    NEW_HANDSHAKE,
    PERSISTENT_KEEPALIVE,
    RETRANSMIT_HANDSHAKE,
    SEND_KEEPALIVE,
    ZERO_KEY_MATERIAL,
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network | str

# Handshake messages per second above which we demand cookies (mac2) from initiators.
UNDER_LOAD_HANDSHAKES_PER_SECOND = 128
UNDER_LOAD_HOLD = 1.0
MAX_EVENTS = 4096
# How long a replaced preshared key still opens handshakes: long enough for a peer that
# switches later to be told and for one handshake retry cycle, short enough that an old
# (say, pre-quantum-rotation) key soon stops counting.
PSK_GRACE = REKEY_ATTEMPT_TIME

_TRANSPORT_TYPE = MESSAGE_TRANSPORT
_NONCE_PREFIX = bytes(4)
_HEADER_PACK = TRANSPORT_HEADER.pack
_HEADER_UNPACK = TRANSPORT_HEADER.unpack_from
_PADDING = bytes(16)

DROP_REASONS = (
    "malformed",  # not a WireGuard message: unknown type, bad size, nonzero reserved bytes
    "bad_mac1",
    "cookie_sent",  # under load, answered with a cookie reply instead
    "rate_limited",
    "no_private_key",
    "unknown_peer",
    "initiation_decrypt_failed",
    "initiation_replayed",
    "initiation_flood",
    "invalid_static_key",
    "unexpected_response",
    "no_initiation_to_answer",
    "no_session_to_derive",
    "response_decrypt_failed",
    "low_order_ephemeral",
    "bad_cookie_reply",
    "unknown_index",
    "expired_keypair",
    "decrypt_failed",
    "replayed",
    "bad_inner_packet",
    "source_not_allowed",
    "no_route",  # outbound packet with no peer for its destination
    "too_large",  # outbound packet larger than the MTU
    "no_endpoint",
    "staged_overflow",
    "handshake_gave_up",
    "admission_refused",  # the unknown-initiator policy admitted a key the Device refused
    "internal_error",  # a bug: never expected, always counted
)


class ConfigError(ValueError):
    """A configuration change was refused; the message says what was wrong."""


def _endpoint_source(endpoint: Endpoint) -> tuple[bytes, bytes]:
    """(IP bytes, IP+port bytes) of an endpoint, for rate limiting and cookies."""
    try:
        ip = ipaddress.ip_address(endpoint[0].split("%", 1)[0]).packed
        return ip, ip + int(endpoint[1]).to_bytes(2, "big")
    except (TypeError, ValueError, IndexError, AttributeError):
        # Opaque endpoints (tests, custom transports): use their repr as the address.
        raw = repr(endpoint).encode()
        return raw, raw


class Device:
    def __init__(
        self,
        private_key: PrivateKey | None = None,
        *,
        mtu: int = DEFAULT_MTU,
        clock_offset: float = 0.0,
        rng: random.Random | None = None,
        urandom=os.urandom,
    ) -> None:
        # Session indices come from the system's CSPRNG. Timer jitter only needs to be
        # unpredictable enough to de-synchronise peers: a seeded PRNG spares a getrandom()
        # syscall on every packet that arms the new-handshake timer.
        self._rng = rng if rng is not None else random.SystemRandom()
        self._jitter_rng = rng if rng is not None else random.Random(urandom(16))
        self._urandom = urandom
        self.mtu = mtu
        self.clock_offset = clock_offset
        self.private_key: PrivateKey | None = None
        self._responder: ResponderContext | None = None
        self._cookie_checker: CookieChecker | None = None
        self._peers: dict[PublicKey, Peer] = {}
        self._indices: dict[int, Keypair | Handshake] = {}
        self.allowed_ips: AllowedIPs[Peer] = AllowedIPs()
        self._rate_limiter = RateLimiter()
        self._heap: list[tuple[float, int, Peer]] = []
        self._heap_seq = itertools.count()
        self._out_datagrams: list[tuple[bytes, Endpoint]] = []
        self._out_packets: list[bytes] = []
        self._events: list[ev.Event] = []
        self.max_events = MAX_EVENTS
        self.events_lost = 0  # ever; the queue's EventsLost marker says how many per drain
        self._lost_pending = 0
        self._lost_since = 0.0
        self.psk_grace = PSK_GRACE
        self.unknown_initiator_policy: UnknownInitiatorPolicy | None = None
        # Under load, a mac2 that is not the sender's cookie MAC may still pass if this
        # says so, given the message and the sender's cookie: a handshake proof (see
        # ``proof``) that the policy will check again. Pre-DH, so it must be cheap.
        self.mac2_proof_check: Callable[[bytes, bytes | None], bool] | None = None
        self.drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        # A test and operations knob: demand cookies regardless of the measured load.
        self.force_under_load = False
        self._load_window_start = -math.inf
        self._load_count = 0
        self._under_load_until = -math.inf
        self._unknown_reported_at = -math.inf
        self._unknown_since_report = 0
        if private_key is not None:
            self.set_private_key(private_key, 0.0)

    # -- outputs -----------------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Endpoint]]:
        out = self._out_datagrams
        self._out_datagrams = []
        return out

    def packets_to_deliver(self) -> list[bytes]:
        out = self._out_packets
        self._out_packets = []
        return out

    @property
    def has_events(self) -> bool:
        return bool(self._events) or self._lost_pending > 0

    def events(self) -> list[ev.Event]:
        """What happened since the last call, oldest first; if the queue overflowed, an
        ``EventsLost`` marker comes last."""
        out = self._events
        self._events = []
        if self._lost_pending:
            out.append(ev.EventsLost(self._lost_since, self._lost_pending))
            self._lost_pending = 0
        return out

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    # -- configuration (the seams UAPI and the mesh use) -------------------------------

    @property
    def public_key(self) -> PublicKey | None:
        return self.private_key.public_key if self.private_key else None

    @property
    def peers(self) -> list[Peer]:
        return list(self._peers.values())

    def get_peer(self, public_key: PublicKey) -> Peer | None:
        return self._peers.get(public_key)

    def set_private_key(self, private_key: PrivateKey | None, now: float) -> None:
        """Change our identity. Sessions keyed to the old identity stop being used."""
        if private_key == self.private_key:
            return
        self.private_key = private_key
        if private_key is None:
            self._responder = None
            self._cookie_checker = None
        else:
            # A peer with our own public key would be talking to itself; drop it.
            own = self._peers.get(private_key.public_key)
            if own is not None:
                self.remove_peer(own.public_key, now)
            self._responder = ResponderContext(private_key)
            self._cookie_checker = CookieChecker(private_key.public_key.raw, self._urandom)
        for peer in self._peers.values():
            peer.handshake.set_static_static(private_key)
            self._forget_handshake(peer)
            self._expire_current_keypair(peer)

    def add_peer(
        self,
        public_key: PublicKey,
        now: float,
        *,
        preshared_key: PresharedKey | None = None,
        endpoint: Endpoint | None = None,
        persistent_keepalive: int = 0,
        allowed_ips: Iterable[Network] = (),
    ) -> Peer:
        if public_key in self._peers:
            raise ConfigError(f"peer {public_key} already exists")
        if self.private_key is not None and public_key == self.private_key.public_key:
            raise ConfigError(f"peer {public_key} is this device's own public key")
        _check_keepalive(persistent_keepalive)
        networks = [self._parse_network(n) for n in allowed_ips]
        peer = Peer(public_key, self._schedule, self._jitter_rng)
        peer.handshake.set_static_static(self.private_key)
        # The precomputed DH doubles as the low-order check (an all-zero result), which
        # spares a second X25519 per peer: 10,000 peers in one `wg addconf` feel it.
        if (
            peer.handshake.static_static == bytes(32)
            if self.private_key is not None
            else is_low_order(public_key.raw)
        ):
            raise InvalidKeyError(f"public key {public_key} is a low-order point")
        if preshared_key is not None:
            peer.handshake.preshared_key = preshared_key.raw
        peer.endpoint = endpoint
        self._peers[public_key] = peer
        for n in networks:
            self.allowed_ips.insert(n, peer)
        self._event(ev.PeerAdded(self._wall(now), public_key))
        if persistent_keepalive:
            self.set_persistent_keepalive(public_key, persistent_keepalive, now)
        return peer

    def remove_peer(self, public_key: PublicKey, now: float) -> bool:
        peer = self._peers.pop(public_key, None)
        if peer is None:
            return False
        peer.removed = True
        self.allowed_ips.remove_value(peer)
        self._forget_handshake(peer)
        self._drop_keypairs(peer.keypairs.clear())
        peer.staged.clear()
        peer.timers.stop_all()
        self._event(ev.PeerRemoved(self._wall(now), public_key))
        return True

    def clear_peers(self, now: float) -> None:
        for key in list(self._peers):
            self.remove_peer(key, now)

    def set_preshared_key(
        self, public_key: PublicKey, preshared_key: PresharedKey | None, now: float
    ) -> None:
        """Takes effect at the next handshake; the running session is not interrupted.
        The replaced key still counts for ``psk_grace`` seconds, so the peer may switch
        later (see ``psk``): ``PresharedKeyConfirmed`` once both use the new key,
        ``PresharedKeyRejected`` for a response that opens under neither."""
        peer = self._require(public_key)
        new = (preshared_key or PresharedKey.ZERO).raw
        hs = peer.handshake
        if new == hs.preshared_key:
            return
        peer.rollover = Rollover(hs.preshared_key, now + self.psk_grace)
        hs.preshared_key = new

    def rekey(self, public_key: PublicKey, now: float) -> bool:
        """Start a new handshake with the peer now; the current session carries traffic
        until the new one is confirmed. False if an initiation went out less than
        REKEY_TIMEOUT ago (the protocol's limit; that handshake is still under way) or
        cannot be sent (no private key or no endpoint, counted in ``drops``)."""
        return self._send_initiation(self._require(public_key), now, is_retry=False)

    def confirm_peer(self, public_key: PublicKey) -> None:
        """A provisional peer (admitted by the unknown-initiator policy) becomes ordinary."""
        self._require(public_key).provisional = False

    def set_endpoint(self, public_key: PublicKey, endpoint: Endpoint | None, now: float) -> None:
        peer = self._require(public_key)
        peer.endpoint = endpoint
        if endpoint is not None and peer.staged and peer.keypairs.current is None:
            self._send_initiation(peer, now, is_retry=False)

    def set_persistent_keepalive(self, public_key: PublicKey, interval: int, now: float) -> None:
        _check_keepalive(interval)
        peer = self._require(public_key)
        previous = peer.timers.persistent_keepalive_interval
        peer.timers.set_persistent_keepalive(interval)
        # Turning it on sends a keepalive at once, so a peer behind NAT becomes reachable
        # (and a handshake starts) without waiting for traffic.
        if interval and not previous and peer.endpoint is not None:
            self._send_keepalive(peer, now)

    def set_allowed_ips(self, public_key: PublicKey, networks: Iterable[Network]) -> None:
        """Replace the peer's allowed IPs. Prefixes owned by other peers move to this one."""
        peer = self._require(public_key)
        parsed = [self._parse_network(n) for n in networks]
        self.allowed_ips.remove_value(peer)
        for n in parsed:
            self.allowed_ips.insert(n, peer)

    def add_allowed_ip(self, public_key: PublicKey, network: Network) -> None:
        self.allowed_ips.insert(self._parse_network(network), self._require(public_key))

    def allowed_ips_of(
        self, public_key: PublicKey
    ) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return self.allowed_ips.entries(self._require(public_key))

    def peer_for_address(self, address: str) -> PublicKey | None:
        """The peer whose allowed IPs hold ``address`` (cryptokey routing read backwards:
        the only peer a packet from that source can have come from), or None."""
        try:
            packed = ipaddress.ip_address(address.partition("%")[0]).packed
        except ValueError:
            return None
        peer = self.allowed_ips.lookup(packed)
        return None if peer is None else peer.public_key

    def _require(self, public_key: PublicKey) -> Peer:
        peer = self._peers.get(public_key)
        if peer is None:
            raise ConfigError(f"no peer with public key {public_key}")
        return peer

    @staticmethod
    def _parse_network(network: Network) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        if isinstance(network, ipaddress.IPv4Network | ipaddress.IPv6Network):
            return network
        try:
            return ipaddress.ip_network(network, strict=False)
        except (TypeError, ValueError):
            raise ConfigError(f"invalid allowed IP {network!r}: expected ADDRESS/CIDR") from None

    # -- inputs ------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, endpoint: Endpoint, now: float) -> None:
        """Process one UDP payload. Never raises; bad input is counted in ``drops``."""
        try:
            kind = message_type(data)
            if kind == _TRANSPORT_TYPE:
                self._receive_transport(data, endpoint, now)
            elif kind == MESSAGE_INITIATION:
                self._receive_initiation(data, endpoint, now)
            elif kind == MESSAGE_RESPONSE:
                self._receive_response(data, endpoint, now)
            elif kind == MESSAGE_COOKIE_REPLY:
                self._receive_cookie_reply(data, now)
            else:
                self.drops["malformed"] += 1
        except Exception:
            self.drops["internal_error"] += 1

    def send_packet(self, packet: bytes, now: float) -> None:
        """Route one outbound IP packet to its peer by destination and send or queue it."""
        try:
            n = len(packet)
            if n >= 20 and packet[0] >> 4 == 4:
                peer = self.allowed_ips.lookup(packet[16:20])
            elif n >= 40 and packet[0] >> 4 == 6:
                peer = self.allowed_ips.lookup(packet[24:40])
            else:
                self.drops["bad_inner_packet"] += 1
                return
            if peer is None:
                self.drops["no_route"] += 1
                return
            if self.mtu and n > self.mtu:
                self.drops["too_large"] += 1
                return
            self.send_to_peer(peer, packet, now)
        except Exception:
            self.drops["internal_error"] += 1

    def send_to_peer(self, peer: Peer, packet: bytes, now: float) -> None:
        """Send ``packet`` (an IP packet, or b"" for a keepalive) to ``peer``."""
        kp = peer.keypairs.current
        if (
            peer.staged
            or kp is None
            or now - kp.created >= REJECT_AFTER_TIME
            or kp.send_counter >= REJECT_AFTER_MESSAGES
        ):
            if len(peer.staged) == peer.staged.maxlen:
                self.drops["staged_overflow"] += 1
            peer.staged.append(packet)
            self._send_staged(peer, now)
            return
        self._encrypt_and_send(peer, kp, packet, now)
        self._keep_key_fresh_sending(peer, kp, now)

    def tick(self, now: float) -> None:
        """Run every timer due at ``now``."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, peer = heapq.heappop(heap)
            if peer.removed:
                continue
            if deadline == peer.wake:
                peer.wake = math.inf
            try:
                for name in peer.timers.expired(now):
                    self._timer_fired(peer, name, now)
            except Exception:
                self.drops["internal_error"] += 1
            nxt = peer.timers.earliest()
            if nxt is not None and nxt < peer.wake:
                self._schedule(peer, nxt)

    # -- timers ------------------------------------------------------------------------

    def _schedule(self, peer: Peer, deadline: float) -> None:
        if deadline < peer.wake:
            peer.wake = deadline
            heapq.heappush(self._heap, (deadline, next(self._heap_seq), peer))

    def _timer_fired(self, peer: Peer, name: str, now: float) -> None:
        timers = peer.timers
        if name == RETRANSMIT_HANDSHAKE:
            if timers.handshake_attempts >= MAX_TIMER_HANDSHAKES:
                self._give_up_handshake(peer, now)
            else:
                self._send_initiation(peer, now, is_retry=True)
        elif name == SEND_KEEPALIVE:
            self._send_keepalive(peer, now)
            if timers.need_another_keepalive:
                timers.need_another_keepalive = False
                timers.arm(SEND_KEEPALIVE, now + KEEPALIVE_TIMEOUT)
        elif name == NEW_HANDSHAKE:
            # We sent data and heard nothing for KEEPALIVE + REKEY_TIMEOUT: try anew.
            self._send_initiation(peer, now, is_retry=False)
        elif name == ZERO_KEY_MATERIAL:
            self._forget_handshake(peer)
            dropped = peer.keypairs.clear()
            if dropped:
                self._drop_keypairs(dropped)
                self._event(ev.SessionExpired(self._wall(now), peer.public_key))
        elif name == PERSISTENT_KEEPALIVE and timers.persistent_keepalive_interval:
            self._send_keepalive(peer, now)

    def _give_up_handshake(self, peer: Peer, now: float) -> None:
        timers = peer.timers
        dropped = len(peer.staged)
        self.drops["handshake_gave_up"] += dropped
        peer.handshake_failures += 1
        peer.staged.clear()
        timers.send_keepalive = None
        self._forget_handshake(peer)
        if timers.zero_key_material is None:
            timers.arm(ZERO_KEY_MATERIAL, now + ZERO_KEY_MATERIAL_AFTER)
        self._event(
            ev.HandshakeFailed(self._wall(now), peer.public_key, timers.handshake_attempts, dropped)
        )

    # -- sending -----------------------------------------------------------------------

    def _send_keepalive(self, peer: Peer, now: float) -> None:
        if not peer.staged:
            peer.staged.append(b"")
        self._send_staged(peer, now)

    def _send_staged(self, peer: Peer, now: float) -> None:
        kp = peer.keypairs.current
        if (
            kp is None
            or now - kp.created >= REJECT_AFTER_TIME
            or kp.send_counter >= REJECT_AFTER_MESSAGES
        ):
            self._send_initiation(peer, now, is_retry=False)
            return
        while peer.staged:
            self._encrypt_and_send(peer, kp, peer.staged.popleft(), now)
        self._keep_key_fresh_sending(peer, kp, now)

    def _encrypt_and_send(self, peer: Peer, kp: Keypair, packet: bytes, now: float) -> None:
        endpoint = peer.endpoint
        if endpoint is None:
            self.drops["no_endpoint"] += 1
            return
        counter = kp.send_counter
        kp.send_counter = counter + 1
        n = len(packet)
        if n:
            pad = _padding(n, self.mtu)
            if pad:
                packet = packet + _PADDING[:pad]
        datagram = _HEADER_PACK(_TRANSPORT_TYPE, kp.remote_index, counter) + kp.sender.encrypt(
            _NONCE_PREFIX + counter.to_bytes(8, "little"), packet, None
        )
        self._out_datagrams.append((datagram, endpoint))
        peer.tx_bytes += len(datagram)
        peer.tx_packets += 1
        timers = peer.timers
        timers.on_authenticated_packet_traversal(now)
        timers.on_authenticated_packet_sent()
        if n:
            timers.on_data_sent(now)

    def _keep_key_fresh_sending(self, peer: Peer, kp: Keypair, now: float) -> None:
        if kp.send_counter > REKEY_AFTER_MESSAGES or (
            kp.is_initiator and now - kp.created >= REKEY_AFTER_TIME
        ):
            self._send_initiation(peer, now, is_retry=False)

    def _send_initiation(self, peer: Peer, now: float, *, is_retry: bool) -> bool:
        hs = peer.handshake
        timers = peer.timers
        if not is_retry:
            timers.handshake_attempts = 0
        if hs.last_sent is not None and now - hs.last_sent < REKEY_TIMEOUT:
            return False  # at most one initiation per REKEY_TIMEOUT
        if self.private_key is None or peer.endpoint is None:
            self.drops["no_private_key" if self.private_key is None else "no_endpoint"] += 1
            return False
        if is_retry:
            timers.handshake_attempts += 1
        else:
            timers.handshake_attempts = 1
        hs.last_sent = now
        self._forget_handshake(peer)
        index = self._new_index(hs)
        try:
            msg = create_initiation(
                self.private_key, hs, index, tai64n(self._wall(now)), self._ephemeral()
            )
        except HandshakeRejected as e:
            del self._indices[index]
            self.drops[e.reason] += 1
            return False
        datagram = peer.cookies.add_macs(msg.pack(), now)
        self._transmit_handshake(peer, datagram, now)
        peer.handshake_initiations += 1
        timers.on_handshake_initiated(now)
        return True

    def _ephemeral(self) -> X25519PrivateKey:
        # From the injectable urandom, so a test can make handshakes reproducible.
        return X25519PrivateKey.from_private_bytes(self._urandom(32))

    def _transmit_handshake(self, peer: Peer, datagram: bytes, now: float) -> None:
        self._out_datagrams.append((datagram, peer.endpoint))
        peer.tx_bytes += len(datagram)
        peer.tx_packets += 1
        peer.timers.on_authenticated_packet_traversal(now)
        peer.timers.on_authenticated_packet_sent()

    # -- receiving ---------------------------------------------------------------------

    def _receive_transport(self, data: bytes, endpoint: Endpoint, now: float) -> None:
        _, index, counter = _HEADER_UNPACK(data)
        kp = self._indices.get(index)
        if kp is None or kp.__class__ is not Keypair:
            self.drops["unknown_index"] += 1
            return
        if now - kp.created >= REJECT_AFTER_TIME or counter >= REJECT_AFTER_MESSAGES:
            self.drops["expired_keypair"] += 1
            return
        try:
            plaintext = kp.receiver.decrypt(_NONCE_PREFIX + data[8:16], memoryview(data)[16:], None)
        except Exception:
            self.drops["decrypt_failed"] += 1
            return
        if not kp.replay.check_and_update(counter):
            self.drops["replayed"] += 1
            return
        peer: Peer = kp.peer  # type: ignore[assignment]
        keypairs = peer.keypairs
        if kp is keypairs.next:
            dropped = keypairs.confirm(kp)
            if dropped:
                self._drop_keypairs(dropped)
            rollover = peer.rollover
            if rollover is not None and rollover.answer_confirmed():
                self._psk_confirmed(peer, now)
            self._handshake_complete(peer, now, initiator=False)
            if peer.staged:
                self._send_staged(peer, now)
        timers = peer.timers
        # The initiator of an aging session rekeys on receive, once, before it is rejected.
        current = keypairs.current
        if (
            current is not None
            and current.is_initiator
            and not timers.sent_last_minute_handshake
            and now - current.created >= REKEY_ON_RECEIVE_AGE
        ):
            timers.sent_last_minute_handshake = True
            self._send_initiation(peer, now, is_retry=False)
        timers.on_authenticated_packet_traversal(now)
        timers.on_authenticated_packet_received()
        if peer.endpoint != endpoint:
            self._roam(peer, endpoint, now)
        peer.rx_bytes += len(data)
        peer.rx_packets += 1
        if not plaintext:
            return  # keepalive
        timers.on_data_received(now)
        self._deliver(peer, plaintext)

    def _deliver(self, peer: Peer, plaintext: bytes) -> None:
        n = len(plaintext)
        version = plaintext[0] >> 4
        if version == 4 and n >= 20:
            length = int.from_bytes(plaintext[2:4], "big")
            source = plaintext[12:16]
            minimum = 20
        elif version == 6 and n >= 40:
            length = 40 + int.from_bytes(plaintext[4:6], "big")
            source = plaintext[8:24]
            minimum = 40
        else:
            self.drops["bad_inner_packet"] += 1
            return
        if length < minimum or length > n:
            self.drops["bad_inner_packet"] += 1
            return
        if self.allowed_ips.lookup(source) is not peer:
            self.drops["source_not_allowed"] += 1
            return
        self._out_packets.append(plaintext if length == n else plaintext[:length])

    def _check_handshake_macs(
        self, data: bytes, receiver: int, endpoint: Endpoint, now: float
    ) -> bool:
        """mac1 always; under load, mac2 (else send a cookie reply) and the rate limit."""
        checker = self._cookie_checker
        if checker is None:
            self.drops["no_private_key"] += 1
            return False
        if not checker.check_mac1(data):
            self.drops["bad_mac1"] += 1
            return False
        if self._under_load(now):
            ip, source = _endpoint_source(endpoint)
            if not checker.check_mac2(data, source, now) and not self._proof_passes(
                data, checker.cookie_for(source, now)
            ):
                reply = checker.create_reply(data, receiver, source, now)
                self._out_datagrams.append((reply, endpoint))
                self.drops["cookie_sent"] += 1
                return False
            if not self._rate_limiter.allow(ip, now):
                self.drops["rate_limited"] += 1
                return False
        return True

    def _proof_passes(self, data: bytes, cookie: bytes | None) -> bool:
        check = self.mac2_proof_check
        if check is None or cookie is None:
            return False  # no cookie given yet: the sender must fetch one first
        try:
            return bool(check(data, cookie))
        except Exception:
            self.drops["internal_error"] += 1
            return False

    def under_load(self, now: float) -> bool:
        """Whether handshakes must carry a cookie right now (without counting one)."""
        return self.force_under_load or now < self._under_load_until

    def cookie_for(self, endpoint: Endpoint, now: float) -> bytes | None:
        """The cookie a sender at ``endpoint`` holds if it took our latest cookie reply."""
        if self._cookie_checker is None:
            return None
        return self._cookie_checker.cookie_for(_endpoint_source(endpoint)[1], now)

    def set_handshake_proof(self, public_key: PublicKey, proof_key: bytes | None) -> None:
        """Our initiations to this peer carry a handshake proof keyed by ``proof_key`` in
        mac2 (``pyralog.wireguard.proof``); None returns to plain cookies."""
        self._require(public_key).cookies.proof_key = proof_key

    def _under_load(self, now: float) -> bool:
        if now - self._load_window_start >= 1.0:
            self._load_window_start = now
            self._load_count = 0
        self._load_count += 1
        if self._load_count > UNDER_LOAD_HANDSHAKES_PER_SECOND:
            self._under_load_until = now + UNDER_LOAD_HOLD
        return self.force_under_load or now < self._under_load_until

    def _receive_initiation(self, data: bytes, endpoint: Endpoint, now: float) -> None:
        msg = Initiation.parse(data)
        if not self._check_handshake_macs(data, msg.sender, endpoint, now):
            return
        assert self._responder is not None  # checked with the cookie checker
        try:
            chaining_key, hash_value, remote_static = open_initiation_static(self._responder, msg)
        except HandshakeRejected as e:
            self.drops[e.reason] += 1
            return
        peer = self._peers.get(PublicKey(remote_static))
        if peer is None:
            peer = self._admit(remote_static, data, endpoint, now)
            if peer is None:
                return
        elif peer.provisional and not self._readmit(peer, data, endpoint, now):
            return
        hs = peer.handshake
        try:
            consume_initiation(hs, msg, chaining_key, hash_value, now)
        except HandshakeRejected as e:
            self.drops[e.reason] += 1
            return
        peer.rx_bytes += INITIATION_SIZE
        peer.rx_packets += 1
        if peer.endpoint != endpoint:
            self._roam(peer, endpoint, now)
        peer.timers.on_authenticated_packet_traversal(now)
        peer.timers.on_authenticated_packet_received()

        old_index = hs.local_index
        if self._indices.get(old_index) is hs:
            del self._indices[old_index]
        index = self._new_index(hs)
        rollover = peer.rollover
        psk, used_previous = hs.preshared_key, False
        if rollover is not None:
            psk, used_previous = rollover.key_to_answer(psk, now)
        try:
            response = create_response(hs, index, self._ephemeral(), psk)
        except HandshakeRejected as e:
            del self._indices[index]
            hs.clear()
            self.drops[e.reason] += 1
            return
        datagram = peer.cookies.add_macs(response.pack(), now)
        if rollover is not None:
            rollover.answered(used_previous)
        self._begin_session(peer, now)
        peer.timers.on_session_derived(now)
        self._transmit_handshake(peer, datagram, now)

    def _receive_response(self, data: bytes, endpoint: Endpoint, now: float) -> None:
        msg = Response.parse(data)
        if not self._check_handshake_macs(data, msg.sender, endpoint, now):
            return
        hs = self._indices.get(msg.receiver)
        if hs is None or hs.__class__ is not Handshake:
            self.drops["unknown_index"] += 1
            return
        assert self.private_key is not None
        peer: Peer = hs.owner  # type: ignore[assignment]
        rollover = peer.rollover
        keys = (
            (hs.preshared_key,)
            if rollover is None
            else rollover.keys_to_open_response(hs.preshared_key, now)
        )
        try:
            position = consume_response(self.private_key, hs, msg, keys)
        except HandshakeRejected as e:
            self.drops[e.reason] += 1
            # Once per initiation: a forged response (mac1 needs only our public key)
            # must not become a stream of alarms.
            if e.reason == "response_decrypt_failed" and hs.last_sent != peer.psk_rejected_at:
                peer.psk_rejected_at = hs.last_sent
                self._event(ev.PresharedKeyRejected(self._wall(now), peer.public_key))
            return
        if rollover is not None and position == 0:
            self._psk_confirmed(peer, now)
        peer.rx_bytes += len(data)
        peer.rx_packets += 1
        if peer.endpoint != endpoint:
            self._roam(peer, endpoint, now)
        peer.timers.on_authenticated_packet_traversal(now)
        peer.timers.on_authenticated_packet_received()
        self._begin_session(peer, now)
        peer.timers.on_session_derived(now)
        self._handshake_complete(peer, now, initiator=True)
        # Confirm the session to the responder: queued packets, or else a keepalive.
        self._send_keepalive(peer, now)

    def _receive_cookie_reply(self, data: bytes, now: float) -> None:
        msg = CookieReply.parse(data)
        entry = self._indices.get(msg.receiver)
        if entry is None:
            self.drops["unknown_index"] += 1
            return
        peer: Peer = entry.peer if entry.__class__ is Keypair else entry.owner  # type: ignore[union-attr,assignment]
        if not peer.cookies.consume_reply(msg.nonce, msg.encrypted_cookie, now):
            self.drops["bad_cookie_reply"] += 1

    # -- sessions and the index table --------------------------------------------------

    def _begin_session(self, peer: Peer, now: float) -> None:
        hs = peer.handshake
        index, remote_index = hs.local_index, hs.remote_index
        send_key, receive_key, is_initiator = derive_transport_keys(hs)
        kp = Keypair(send_key, receive_key, is_initiator, index, remote_index, now, peer)
        self._indices[index] = kp  # the index now names the session, not the handshake
        if is_initiator:
            dropped = peer.keypairs.install_initiator(kp)
        else:
            dropped = peer.keypairs.install_responder(kp)
        self._drop_keypairs(dropped)

    def _handshake_complete(self, peer: Peer, now: float, *, initiator: bool) -> None:
        peer.timers.on_handshake_complete()
        peer.last_handshake = self._wall(now)
        self._event(ev.HandshakeCompleted(self._wall(now), peer.public_key, initiator))

    def _drop_keypairs(self, keypairs: Iterable[Keypair]) -> None:
        for kp in keypairs:
            if self._indices.get(kp.local_index) is kp:
                del self._indices[kp.local_index]

    def _forget_handshake(self, peer: Peer) -> None:
        hs = peer.handshake
        if self._indices.get(hs.local_index) is hs:
            del self._indices[hs.local_index]
        hs.clear()

    def _expire_current_keypair(self, peer: Peer) -> None:
        # Stop sending with it; the next packet starts a handshake under the new identity.
        kp = peer.keypairs.current
        if kp is not None:
            kp.send_counter = REJECT_AFTER_MESSAGES

    def _new_index(self, hs: Handshake) -> int:
        while True:
            index = self._rng.getrandbits(32)
            if index not in self._indices:
                self._indices[index] = hs
                return index

    # -- preshared key roll-over and admission -----------------------------------------

    def _psk_confirmed(self, peer: Peer, now: float) -> None:
        peer.rollover = None  # the old key is retired
        self._event(ev.PresharedKeyConfirmed(self._wall(now), peer.public_key))

    def _admit(
        self, remote_static: bytes, data: bytes, endpoint: Endpoint, now: float
    ) -> Peer | None:
        policy = self.unknown_initiator_policy
        if policy is None:
            self._unknown_peer(remote_static, endpoint, now)
            return None
        key = PublicKey(remote_static)
        cookie = self.cookie_for(endpoint, now) if self.under_load(now) else None
        decision = policy(UnknownInitiator(key, endpoint, bytes(data), now, cookie))
        if not isinstance(decision, Admission):
            self._unknown_peer(remote_static, endpoint, now)
            return None
        try:  # add_peer checks everything before it adds anything
            peer = self.add_peer(
                key,
                now,
                preshared_key=decision.preshared_key,
                endpoint=endpoint,
                allowed_ips=decision.allowed_ips,
                persistent_keepalive=decision.persistent_keepalive,
            )
        except (ConfigError, InvalidKeyError):
            self.drops["admission_refused"] += 1
            return None
        peer.provisional = True
        self._event(ev.PeerAdmitted(self._wall(now), key, endpoint))
        return peer

    def _readmit(self, peer: Peer, data: bytes, endpoint: Endpoint, now: float) -> bool:
        """A provisional peer is not trusted yet: each of its initiations must convince the
        policy again (e.g. a key that retries with another token gets that token's PSK)."""
        policy = self.unknown_initiator_policy
        if policy is None:
            return True
        cookie = self.cookie_for(endpoint, now) if self.under_load(now) else None
        try:
            decision = policy(UnknownInitiator(peer.public_key, endpoint, bytes(data), now, cookie))
        except Exception:
            self.drops["internal_error"] += 1
            return False
        if not isinstance(decision, Admission):
            self._unknown_peer(peer.public_key.raw, endpoint, now)
            return False
        psk = decision.preshared_key
        peer.handshake.preshared_key = psk.raw if psk is not None else bytes(32)
        return True

    # -- misc --------------------------------------------------------------------------

    def _roam(self, peer: Peer, endpoint: Endpoint, now: float) -> None:
        old = peer.endpoint
        peer.endpoint = endpoint
        self._event(ev.EndpointChanged(self._wall(now), peer.public_key, old, endpoint))

    def _unknown_peer(self, remote_static: bytes, endpoint: Endpoint, now: float) -> None:
        self.drops["unknown_peer"] += 1
        self._unknown_since_report += 1
        if now - self._unknown_reported_at >= 1.0:
            self._unknown_reported_at = now
            self._event(
                ev.UnknownPeerHandshake(
                    self._wall(now), PublicKey(remote_static), endpoint, self._unknown_since_report
                )
            )
            self._unknown_since_report = 0

    def _event(self, event: ev.Event) -> None:
        if len(self._events) < self.max_events:
            self._events.append(event)
            return
        if not self._lost_pending:
            self._lost_since = event.time
        self._lost_pending += 1
        self.events_lost += 1

    def _wall(self, now: float) -> float:
        return now + self.clock_offset

    def index_count(self) -> int:
        """Entries in the receiver-index table (handshakes and keypairs in flight)."""
        return len(self._indices)

    def __iter__(self) -> Iterator[Peer]:
        return iter(list(self._peers.values()))


def _check_keepalive(interval: int) -> None:
    if not 0 <= interval <= 65535:
        raise ConfigError(f"persistent keepalive must be 0..65535 seconds, got {interval}")


def _padding(n: int, mtu: int) -> int:
    """Zero bytes to append so the plaintext is a multiple of 16, without exceeding the MTU."""
    if not mtu:
        return -n & 15
    last = n % mtu if n > mtu else n
    padded = (last + 15) & ~15
    if padded > mtu:
        padded = mtu
    return padded - last
