"""From the peers a member should hold to the one ``SetRequest`` that gets it there.

Sans-IO. The plan is a diff against what was last applied, never a reset: peers that stay
keep their sessions, a changed peer gets only what changed, and an endpoint is set only
when the coordinator's value for it changed, so one WireGuard learned by roaming (a
peer's new source address) is not overwritten by a stale record on every update.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pyralog.link.control import PeerChange, SetRequest
from pyralog.wireguard.endpoint import EndpointError, parse_endpoint
from pyralog.wireguard.keys import PublicKey


@dataclass(frozen=True)
class Wanted:
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    persistent_keepalive: int = 0


def _endpoint(text: str) -> tuple[str, int] | None:
    try:
        return parse_endpoint(text)
    except EndpointError:
        return None  # a name: the caller resolves names before planning


def plan(
    applied: dict[str, Wanted], wanted: Iterable[Wanted], *, keep: Iterable[str] = ()
) -> tuple[SetRequest | None, dict[str, Wanted]]:
    """(the change to apply or None, the new ``applied``). Keys in ``keep`` are never
    removed (e.g. provisional peers the enrollment owns)."""
    target = {w.public_key: w for w in wanted}
    keep_set = set(keep)
    changes: list[PeerChange] = []
    for key in sorted(set(applied) - set(target) - keep_set):
        changes.append(PeerChange(PublicKey.from_base64(key), remove=True))
    for key, want in sorted(target.items()):
        before = applied.get(key)
        if before == want:
            continue
        change = PeerChange(PublicKey.from_base64(key))
        moved = before is None or before.endpoint != want.endpoint
        if moved and want.endpoint is not None:
            change.endpoint = _endpoint(want.endpoint)
        if before is None or before.allowed_ips != want.allowed_ips:
            change.replace_allowed_ips = True
            change.allowed_ips = list(want.allowed_ips)
        if before is None or before.persistent_keepalive != want.persistent_keepalive:
            change.persistent_keepalive = want.persistent_keepalive
        changes.append(change)
    if not changes:
        return None, applied
    return SetRequest(peers=changes), target
