"""Per-peer session records for the audit trail (sans-IO: snapshots in, entries out).

Every ``interval`` seconds a node (or the coordinator) hands ``Sessions.observe`` what
its backend says of each peer (latest handshake, bytes received and sent); for every
peer that had traffic or handshakes since the last record it returns one "session"
entry's data: the peer, its handshakes in the window (each change of the latest
handshake time is one; WireGuard rekeys every 2 minutes, so a window shorter than that
misses none), bytes in each direction, and ``encrypted: true`` (a WireGuard session
carries nothing in the clear; the field is there so that a report over a mixed
deployment can say otherwise). Counters that went backwards (the peer was removed and
added again, the process restarted) start a new baseline rather than a negative delta.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PeerCounters:
    peer: str  # node id where known, else the public key
    public_key: str
    latest_handshake: float | None
    rx_bytes: int
    tx_bytes: int


@dataclass
class _Last:
    handshake: float | None
    rx: int
    tx: int


class Sessions:
    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._last: dict[str, _Last] = {}
        self._handshakes: dict[str, int] = {}
        self._due: float | None = None

    def observe(self, now: float, peers: list[PeerCounters]) -> list[dict[str, Any]]:
        """Take a snapshot; at most every ``interval`` seconds, the session records of the
        window that ends now (call often: handshakes are counted at every call)."""
        deltas: dict[str, tuple[PeerCounters, int, int]] = {}
        for p in peers:
            last = self._last.get(p.public_key)
            if last is None or p.rx_bytes < last.rx or p.tx_bytes < last.tx:
                last = _Last(None, 0, 0)
            if p.latest_handshake is not None and p.latest_handshake != last.handshake:
                self._handshakes[p.public_key] = self._handshakes.get(p.public_key, 0) + 1
            rx, tx = p.rx_bytes - last.rx, p.tx_bytes - last.tx
            deltas[p.public_key] = (p, rx, tx)
        if self._due is None:
            self._due = now + self.interval
        if now < self._due:
            self._remember_handshakes(peers)
            return []
        self._due = now + self.interval
        records = []
        for key, (p, rx, tx) in sorted(deltas.items()):
            handshakes = self._handshakes.pop(key, 0)
            if rx or tx or handshakes:
                records.append({"peer": p.peer, "public_key": key, "handshakes": handshakes,
                                "rx_bytes": rx, "tx_bytes": tx, "encrypted": True,
                                "latest_handshake": p.latest_handshake})  # fmt: skip
            self._last[key] = _Last(p.latest_handshake, p.rx_bytes, p.tx_bytes)
        return records

    def _remember_handshakes(self, peers: list[PeerCounters]) -> None:
        # Between records only the handshake time moves on; bytes stay at the last record.
        for p in peers:
            last = self._last.get(p.public_key)
            if last is None:
                self._last[p.public_key] = _Last(p.latest_handshake, 0, 0)
            else:
                last.handshake = p.latest_handshake
