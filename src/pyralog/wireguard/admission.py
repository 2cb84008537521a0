"""Handshakes from unknown keys: the policy hook that may admit one as a provisional peer.

By default a Device answers nobody it has no peer for (the protocol's silence). A policy
changes that for initiators it can vouch for, e.g. a node enrolling with a token: it
sees the initiator's static public key, where the initiation came from, and the whole
initiation datagram (so it can check a proof carried in it, such as its ``mac2`` field)
before anything is answered. It returns an ``Admission`` to add the key as a provisional
peer with the given preshared key and allowed IPs (the handshake then completes as with
any peer), or None to stay silent.

The policy runs after mac1 and, under load, after the cookie check and the rate limit,
so it only ever sees initiations that are well-formed and addressed to us. It must be
quick and must not do IO: it runs inside ``Device.receive_datagram`` (an exception
from it drops the initiation and counts as ``internal_error``). Its owner decides
what "provisional" means (``Device.confirm_peer`` makes the peer ordinary, removing it
ends it); the Device only marks it and reports ``PeerAdmitted``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pyralog.wireguard.endpoint import Endpoint
from pyralog.wireguard.keys import PresharedKey, PublicKey

Network = ipaddress.IPv4Network | ipaddress.IPv6Network | str


@dataclass(frozen=True, slots=True)
class UnknownInitiator:
    public_key: PublicKey
    endpoint: Endpoint
    message: bytes  # the initiation datagram as received, macs included
    now: float
    # Under load, the cookie the sender proved it holds (mac2 then mixes it into any
    # handshake proof, see ``pyralog.wireguard.proof``); None otherwise.
    cookie: bytes | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    preshared_key: PresharedKey | None = None
    allowed_ips: Sequence[Network] = ()
    persistent_keepalive: int = 0


UnknownInitiatorPolicy = Callable[[UnknownInitiator], Admission | None]
