"""The audit trail of a running coordinator or node: its files, its events, its sessions.

``AuditTrail.open(path)`` keeps the trail at ``path`` (the coordinator's ``audit_log``),
``audit.key`` (the ML-DSA-65 seed, 0600) and ``audit.pub`` beside it. ``record``
appends an event at once (enrolments, removals, revocations, key changes, policy
changes); ``run_sessions`` appends per-peer session records every
``interval`` seconds from the backend's counters (``audit_sessions``). A trail that
does not verify at start-up is not appended to: the process says so and goes on
without an audit trail rather than chaining onto a damaged one, and ``pyralog-admin
audit verify`` names the bad entry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pyralog.mesh import audit
from pyralog.mesh.audit_sessions import PeerCounters, Sessions

log = logging.getLogger("pyralog.audit")

PeersSource = Callable[[], Awaitable[list[PeerCounters]]]


class AuditTrail:
    def __init__(self, trail: audit.AuditLog | None, reason: str = "") -> None:
        self.trail = trail
        self.reason = reason
        self.sessions = Sessions()

    @classmethod
    def open(cls, path: Path) -> AuditTrail:
        """The trail at ``path``, its key (``audit.key``) and ``audit.pub`` beside it. A
        file of unsigned lines (what coordinators wrote before the trail was signed) is
        moved aside to ``<name>.unsigned`` and a new trail begins."""
        try:
            _move_unsigned(path)
            key = audit.load_or_create_signing_key(path.with_name("audit.key"))
            return cls(audit.AuditLog(path, key))
        except (audit.AuditError, OSError) as e:
            log.error("audit trail disabled: %s", e)
            return cls(None, str(e))

    @property
    def public_key(self) -> str | None:
        return None if self.trail is None else audit.public_text(self.trail.key)

    def record(self, kind: str, data: dict[str, Any], now: float | None = None) -> None:
        if self.trail is None:
            return
        try:
            self.trail.append(kind, data, time.time() if now is None else now)
        except OSError as e:
            log.error("audit trail: cannot append %s: %s", kind, e)

    async def run_sessions(self, peers: PeersSource, interval: float = 60.0,
                           tick: float = 5.0) -> None:  # fmt: skip
        """Forever (cancel it): session records every ``interval`` seconds."""
        self.sessions.interval = interval
        while True:
            try:
                snapshot = await peers()
            except Exception as e:  # a backend hiccup must not end the trail
                log.warning("audit trail: cannot read peer counters: %s", e)
            else:
                for data in self.sessions.observe(time.time(), snapshot):
                    self.record("session", data)
            await asyncio.sleep(tick)


def _move_unsigned(path: Path) -> None:
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
    except FileNotFoundError:
        return
    if first.strip() and '"sig"' not in first:
        aside = path.with_name(path.name + ".unsigned")
        path.rename(aside)
        log.warning("audit trail: %s held unsigned lines; moved to %s", path, aside)


async def backend_counters(backend: Any, names: Callable[[], dict[str, str]]) -> list[PeerCounters]:
    """A node's peers as its backend reports them (any of the three), named by node id."""
    known = names()
    out = []
    for p in await backend.peers():
        key = p.public_key.to_base64()
        out.append(PeerCounters(known.get(key, key), key, p.last_handshake, p.rx_bytes,
                                p.tx_bytes))  # fmt: skip
    return out
