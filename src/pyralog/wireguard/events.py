"""Events a Device reports to the layers above (metrics, health, audit, logs).

Small immutable classes, in the style of h11's events. They are produced on handshake and
session changes only, never per data packet, and the Device keeps a bounded queue of
them so a consumer that never drains it costs nothing but the newest few thousand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyralog.wireguard.keys import PublicKey

Endpoint = Any  # whatever the runtime uses as an address, e.g. ("192.0.2.1", 51820)


@dataclass(frozen=True, slots=True)
class Event:
    time: float


@dataclass(frozen=True, slots=True)
class HandshakeCompleted(Event):
    """A new session is usable in both directions. ``initiator``: we started it."""

    peer: PublicKey
    initiator: bool


@dataclass(frozen=True, slots=True)
class HandshakeFailed(Event):
    """We gave up after REKEY_ATTEMPT_TIME of unanswered initiations; queued packets dropped."""

    peer: PublicKey
    attempts: int
    dropped_packets: int


@dataclass(frozen=True, slots=True)
class SessionExpired(Event):
    """Key material zeroed after 3 x REJECT_AFTER_TIME without a new session."""

    peer: PublicKey


@dataclass(frozen=True, slots=True)
class EndpointChanged(Event):
    """The peer's endpoint now follows the source of its latest authenticated packet."""

    peer: PublicKey
    old: Endpoint
    new: Endpoint


@dataclass(frozen=True, slots=True)
class PeerAdded(Event):
    peer: PublicKey


@dataclass(frozen=True, slots=True)
class PeerRemoved(Event):
    peer: PublicKey


@dataclass(frozen=True, slots=True)
class UnknownPeerHandshake(Event):
    """A valid-mac1 initiation from a static key we have no peer for. Reported at most once
    per second per device, with the number dropped since the last report."""

    public_key: PublicKey
    endpoint: Endpoint
    dropped_since_last: int
