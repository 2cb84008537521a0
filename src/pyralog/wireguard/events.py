"""Events a Device reports to the layers above (metrics, health, audit, logs).

Small immutable classes, in the style of h11's events. They are produced on handshake and
session changes only, never per data packet. The Device keeps a bounded queue of them; a
consumer that falls behind loses the newest, never silently: the next drain ends with an
``EventsLost`` marker saying how many, and ``Device.events_lost`` counts them all.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyralog.wireguard.endpoint import Endpoint
from pyralog.wireguard.keys import PublicKey

__all__ = ["Endpoint"]


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


@dataclass(frozen=True, slots=True)
class PresharedKeyConfirmed(Event):
    """The first handshake under a newly set preshared key completed: both sides hold it."""

    peer: PublicKey


@dataclass(frozen=True, slots=True)
class PresharedKeyRejected(Event):
    """The peer's handshake response opened under none of our preshared keys (the current
    one, nor the previous one while it is still accepted): the two sides disagree."""

    peer: PublicKey


@dataclass(frozen=True, slots=True)
class PeerAdmitted(Event):
    """The unknown-initiator policy admitted this key as a provisional peer."""

    peer: PublicKey
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class EventsLost(Event):
    """The queue was full: ``count`` events after the ones before this marker were lost.
    ``time`` is when the first of them was."""

    count: int
