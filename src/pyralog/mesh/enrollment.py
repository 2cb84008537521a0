"""Admitting enrolling nodes: the coordinator's policy for unknown WireGuard initiators.

An enrolling node knows the coordinator's public key (so its mac1 is valid) and a join
token's secret, from which it keys a handshake proof in its initiation's mac2
(``pyralog.wireguard.proof``). For an initiation from a key it has no peer for, the
coordinator's Device asks ``Enrollment.admit``, which checks that proof against every
token it knows, *before anything is answered*:

- a live token's proof: admitted as a provisional peer with the token's preshared key
  (so the session itself depends on the secret), allowed only one provisional address
  (in ``PROVISIONAL_NETWORK``, derived from the key, which the node computes too), and
  from there only the enrollment API is served;
- a dead token's proof (expired, revoked, used up), no proof, or a wrong one: silence on
  the wire, a counter, and an audit line;
- a revoked public key (``pyralog-admin node revoke``): the same silence, whatever token
  it proves, counted as ``refused_revoked_key`` (``refused_revoked`` is a revoked token).

Under load the Device demands cookies first (standard WireGuard: an initiation without
a valid cookie gets a cookie reply, and only from someone who knows our public key);
the node then keys its proof with HASH(cookie || proof key), which ``pre_check`` accepts
before any Curve25519 work and ``admit`` checks again. Checking costs one BLAKE2s per
known token.

Sans-IO: the token list comes in through ``update_tokens``; decisions come out as
counters, ``audit`` lines (drained by the coordinator) and the provisional map.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections import Counter
from dataclasses import dataclass

from pyralog.mesh.model import TokenRecord
from pyralog.wireguard.admission import Admission, UnknownInitiator
from pyralog.wireguard.keys import PresharedKey, PublicKey
from pyralog.wireguard.proof import check_proof

PROVISIONAL_NETWORK = ipaddress.ip_network("169.254.0.0/16")
PROVISIONAL_TTL = 60.0  # an admitted key that has not registered by then is dropped
MAX_PROVISIONAL = 1024  # bounded: a token holder cannot fill the coordinator's memory
AUDIT_PER_SECOND = 20


def provisional_address(public_key: PublicKey) -> ipaddress.IPv4Address:
    """The one address an enrolling key may use until it is registered."""
    digest = hashlib.blake2s(public_key.raw, digest_size=4, person=b"pyr-prov").digest()
    # .0.x, .255.x and host 0/255 are avoided: never a network or broadcast look-alike.
    high = 1 + digest[0] % 254
    low = 1 + digest[1] % 254
    return ipaddress.IPv4Address(int(PROVISIONAL_NETWORK.network_address) + (high << 8) + low)


@dataclass(frozen=True)
class Pending:
    token_id: str
    address: ipaddress.IPv4Address
    admitted_at: float


class Enrollment:
    def __init__(self, clock_offset: float = 0.0) -> None:
        # The Device's ``now`` is monotonic; token expiry is wall-clock time.
        self.clock_offset = clock_offset
        self._tokens: list[tuple[bytes, TokenRecord]] = []
        self._revoked: frozenset[PublicKey] = frozenset()
        self.pending: dict[PublicKey, Pending] = {}
        self.counters: Counter[str] = Counter()
        self.audit: list[dict[str, object]] = []
        self._audit_second = 0
        self._audit_count = 0
        self._suppressed = 0

    def update_tokens(self, records: list[TokenRecord]) -> None:
        self._tokens = [(bytes.fromhex(r.proof_key), r) for r in records]

    def update_revoked(self, keys: list[PublicKey]) -> None:
        self._revoked = frozenset(keys)
        for key in self._revoked & self.pending.keys():
            del self.pending[key]

    def _match(self, who: UnknownInitiator) -> TokenRecord | None:
        for key, record in self._tokens:
            if check_proof(key, who.message, who.cookie):
                return record
        return None

    def pre_check(self, message: bytes, cookie: bytes | None) -> bool:
        """Under load, before Curve25519: does mac2 prove some token (with the cookie)?"""
        return any(check_proof(key, message, cookie) for key, _ in self._tokens)

    def admit(self, who: UnknownInitiator) -> Admission | None:
        if who.public_key in self._revoked:
            return self._refuse(who, "revoked_key", None)
        record = self._match(who)
        if record is None:
            return self._refuse(who, "no_token", None)
        why = record.refusal(who.now + self.clock_offset)
        if why is not None:
            return self._refuse(who, why, record.id)
        address = provisional_address(who.public_key)
        holder = next(
            (k for k, p in self.pending.items() if p.address == address and k != who.public_key),
            None,
        )
        if holder is not None:
            # Another key is enrolling under the same provisional address; this one is
            # answered once that finishes (its handshake is retried every 5 seconds).
            return self._refuse(who, "busy", record.id)
        if len(self.pending) >= MAX_PROVISIONAL and who.public_key not in self.pending:
            return self._refuse(who, "too_many_pending", record.id)
        self.pending[who.public_key] = Pending(record.id, address, who.now)
        self.counters["admitted"] += 1
        self._audit(who, "admitted", record.id)
        return Admission(
            preshared_key=PresharedKey(base64.b64decode(record.psk)),
            allowed_ips=[f"{address}/32"],
        )

    def expired(self, now: float) -> list[PublicKey]:
        """Provisional keys past PROVISIONAL_TTL: forget them (the caller removes the peer)."""
        gone = [k for k, p in self.pending.items() if now - p.admitted_at > PROVISIONAL_TTL]
        for key in gone:
            del self.pending[key]
            self.counters["provisional_expired"] += 1
        return gone

    def finish(self, public_key: PublicKey) -> Pending | None:
        return self.pending.pop(public_key, None)

    def _refuse(self, who: UnknownInitiator, reason: str, token_id: str | None) -> None:
        self.counters[f"refused_{reason}"] += 1
        self._audit(who, f"refused_{reason}", token_id)
        return None

    def _audit(self, who: UnknownInitiator, outcome: str, token_id: str | None) -> None:
        second = int(who.now)
        if second != self._audit_second:
            if self._suppressed:
                self.audit.append({"event": "audit_suppressed", "count": self._suppressed})
            self._audit_second, self._audit_count, self._suppressed = second, 0, 0
        self._audit_count += 1
        if self._audit_count > AUDIT_PER_SECOND:
            self._suppressed += 1
            return
        self.audit.append(
            {
                "event": "enrollment_" + outcome,
                "public_key": who.public_key.to_base64(),
                "endpoint": f"{who.endpoint[0]}:{who.endpoint[1]}",
                "token_id": token_id,
            }
        )

    def drain_audit(self) -> list[dict[str, object]]:
        lines, self.audit = self.audit, []
        return lines
