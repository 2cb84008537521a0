"""One configured peer: its keys, endpoint, sessions, timers, queue and counters.

Plain state; the rules that change it live in ``device.py`` (which owns the index table
and the output queues), ``handshake.py`` and ``timers.py``.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable

from pyralog.wireguard.constants import MAX_STAGED_PACKETS
from pyralog.wireguard.cookie import CookieGenerator
from pyralog.wireguard.endpoint import Endpoint
from pyralog.wireguard.handshake import Handshake
from pyralog.wireguard.keypair import Keypairs
from pyralog.wireguard.keys import PresharedKey, PublicKey
from pyralog.wireguard.psk import Rollover
from pyralog.wireguard.timers import PeerTimers


class Peer:
    __slots__ = (
        "cookies",
        "endpoint",
        "handshake",
        "handshake_failures",
        "handshake_initiations",
        "keypairs",
        "last_handshake",
        "provisional",
        "psk_rejected_at",
        "public_key",
        "removed",
        "rollover",
        "rx_bytes",
        "rx_packets",
        "staged",
        "timers",
        "tx_bytes",
        "tx_packets",
        "wake",
    )

    def __init__(
        self,
        public_key: PublicKey,
        schedule: Callable[[Peer, float], None],
        rng: random.Random,
    ) -> None:
        self.public_key = public_key
        self.handshake = Handshake(public_key.raw, owner=self)
        self.cookies = CookieGenerator(public_key.raw)
        self.keypairs = Keypairs()
        self.timers = PeerTimers(lambda deadline: schedule(self, deadline), rng)
        self.endpoint: Endpoint | None = None
        # Packets waiting for a session; bounded, oldest dropped first.
        self.staged: deque[bytes] = deque(maxlen=MAX_STAGED_PACKETS)
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.rx_packets = 0
        self.tx_packets = 0
        # Cumulative, for metrics: initiations sent, and attempts given up (REKEY_ATTEMPT_TIME
        # unanswered). ``timers.handshake_attempts`` is per attempt and resets.
        self.handshake_initiations = 0
        self.handshake_failures = 0
        self.last_handshake: float | None = None  # wall-clock seconds, for `wg show`
        self.wake = math.inf  # earliest deadline already in the Device's heap
        self.removed = False
        # Admitted by the unknown-initiator policy and not yet confirmed by its owner.
        self.provisional = False
        self.rollover: Rollover | None = None  # a PSK change under way (see psk.py)
        self.psk_rejected_at: float | None = None  # the initiation last reported rejected

    @property
    def preshared_key(self) -> PresharedKey:
        return PresharedKey(self.handshake.preshared_key)

    @property
    def persistent_keepalive(self) -> int:
        return self.timers.persistent_keepalive_interval

    def __repr__(self) -> str:
        return f"<Peer {self.public_key.to_base64()} endpoint={self.endpoint!r}>"
