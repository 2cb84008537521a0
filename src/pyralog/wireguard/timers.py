"""The per-peer timer rules of the whitepaper (section 6), as data the Device drives.

Each timer is a deadline (monotonic seconds) or None. Protocol events call the ``on_*``
methods, which arm or disarm deadlines exactly as the reference implementations do; the
Device asks ``expired(now)`` on every tick and performs the actions. Every armed deadline
is reported to ``schedule`` so the Device can keep a heap of wake-up times instead of
scanning all peers.

- retransmit_handshake: REKEY_TIMEOUT (+ jitter) after sending an initiation, resend;
  after MAX_TIMER_HANDSHAKES attempts (REKEY_ATTEMPT_TIME) give up.
- send_keepalive: KEEPALIVE_TIMEOUT after receiving data, if we sent nothing back.
- new_handshake: KEEPALIVE_TIMEOUT + REKEY_TIMEOUT (+ jitter) after sending data, if
  nothing came back: the session is probably dead, start a new handshake.
- zero_key_material: 3 x REJECT_AFTER_TIME after the last session was derived.
- persistent_keepalive: the configured interval after any authenticated packet.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from pyralog.wireguard.constants import (
    KEEPALIVE_TIMEOUT,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    ZERO_KEY_MATERIAL_AFTER,
)

RETRANSMIT_HANDSHAKE = "retransmit_handshake"
SEND_KEEPALIVE = "send_keepalive"
NEW_HANDSHAKE = "new_handshake"
ZERO_KEY_MATERIAL = "zero_key_material"
PERSISTENT_KEEPALIVE = "persistent_keepalive"

# Order in which expired timers act when several are due at the same tick.
TIMER_NAMES = (
    ZERO_KEY_MATERIAL,
    RETRANSMIT_HANDSHAKE,
    NEW_HANDSHAKE,
    SEND_KEEPALIVE,
    PERSISTENT_KEEPALIVE,
)


class PeerTimers:
    __slots__ = (
        "handshake_attempts",
        "need_another_keepalive",
        "new_handshake",
        "persistent_keepalive",
        "persistent_keepalive_interval",
        "retransmit_handshake",
        "rng",
        "schedule",
        "send_keepalive",
        "sent_last_minute_handshake",
        "zero_key_material",
    )

    def __init__(self, schedule: Callable[[float], None], rng: random.Random) -> None:
        self.schedule = schedule
        self.rng = rng
        self.retransmit_handshake: float | None = None
        self.send_keepalive: float | None = None
        self.new_handshake: float | None = None
        self.zero_key_material: float | None = None
        self.persistent_keepalive: float | None = None
        self.persistent_keepalive_interval = 0
        self.handshake_attempts = 0
        self.need_another_keepalive = False
        self.sent_last_minute_handshake = False

    def _jitter(self) -> float:
        return self.rng.uniform(0.0, REKEY_TIMEOUT_JITTER_MAX)

    def arm(self, name: str, deadline: float) -> None:
        setattr(self, name, deadline)
        self.schedule(deadline)

    # -- protocol events -------------------------------------------------------------

    def on_data_sent(self, now: float) -> None:
        if self.new_handshake is None:
            self.arm(NEW_HANDSHAKE, now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self._jitter())

    def on_data_received(self, now: float) -> None:
        if self.send_keepalive is None:
            self.arm(SEND_KEEPALIVE, now + KEEPALIVE_TIMEOUT)
        else:
            self.need_another_keepalive = True

    def on_authenticated_packet_sent(self) -> None:
        # Anything we send is as good as a keepalive.
        self.send_keepalive = None

    def on_authenticated_packet_received(self) -> None:
        # The session is alive: no need for a new handshake on its account.
        self.new_handshake = None

    def on_authenticated_packet_traversal(self, now: float) -> None:
        if self.persistent_keepalive_interval:
            deadline = now + self.persistent_keepalive_interval
            # Pushed later on every packet: the Device's heap only hears of earlier deadlines.
            if self.persistent_keepalive is None or deadline < self.persistent_keepalive:
                self.arm(PERSISTENT_KEEPALIVE, deadline)
            else:
                self.persistent_keepalive = deadline

    def on_handshake_initiated(self, now: float) -> None:
        self.arm(RETRANSMIT_HANDSHAKE, now + REKEY_TIMEOUT + self._jitter())

    def on_handshake_complete(self) -> None:
        self.retransmit_handshake = None
        self.handshake_attempts = 0
        self.sent_last_minute_handshake = False

    def on_session_derived(self, now: float) -> None:
        self.arm(ZERO_KEY_MATERIAL, now + ZERO_KEY_MATERIAL_AFTER)

    def set_persistent_keepalive(self, interval: int) -> None:
        self.persistent_keepalive_interval = interval
        if not interval:
            self.persistent_keepalive = None

    def stop_all(self) -> None:
        for name in TIMER_NAMES:
            setattr(self, name, None)

    # -- queries for the Device --------------------------------------------------------

    def earliest(self) -> float | None:
        best: float | None = None
        for name in TIMER_NAMES:
            d = getattr(self, name)
            if d is not None and (best is None or d < best):
                best = d
        return best

    def expired(self, now: float) -> list[str]:
        """Names of the timers due at ``now``, disarmed, in the order they should act."""
        due = []
        for name in TIMER_NAMES:
            d = getattr(self, name)
            if d is not None and d <= now:
                setattr(self, name, None)
                due.append(name)
        return due
