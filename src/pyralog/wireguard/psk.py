"""Preshared-key roll-over: a peer's PSK replaced while the other side may not have it yet.

WireGuard mixes the PSK into the handshake response only, so the two peers must hold the
same one; a mesh (post-quantum rotation, a coordinator's push) never replaces it on both
at the same instant. For ``grace`` seconds after a change the replaced key still counts:

- as initiator, a response is opened under the new key, or else the old one;
- as responder, we answer under the new key, and under the old one when the peer
  initiates again after an answer it never used (its retry after REKEY_TIMEOUT), so
  whichever side switched first, a handshake forms within one retry;
- the first handshake known to have used the new key on both sides confirms it and
  retires the old one (``PresharedKeyConfirmed``); once ``grace`` has passed the old key
  is forgotten and a peer still on it is rejected (``PresharedKeyRejected``).

A Peer holds a ``Rollover`` only while one is under way; an ordinary peer pays nothing.
"""

from __future__ import annotations


class Rollover:
    __slots__ = ("previous", "response_pending", "response_used_previous", "until")

    def __init__(self, previous: bytes, until: float) -> None:
        self.previous: bytes | None = previous
        self.until = until
        self.response_pending = False  # our last response is not yet confirmed
        self.response_used_previous = False  # ... and it was sealed under the old key

    def previous_key(self, now: float) -> bytes | None:
        """The old key while it still counts; forgotten for good once ``until`` passes (the
        roll-over itself stays until the new key is confirmed, to report it then)."""
        if self.previous is not None and now >= self.until:
            self.previous = None
        return self.previous

    def keys_to_open_response(self, current: bytes, now: float) -> tuple[bytes, ...]:
        """As initiator: the keys to try, current first."""
        previous = self.previous_key(now)
        return (current,) if previous is None else (current, previous)

    def key_to_answer(self, current: bytes, now: float) -> tuple[bytes, bool]:
        """As responder: (the key to seal the response under, whether it is the old one).
        The old one only when the peer retried after our answer under the current key."""
        previous = self.previous_key(now)
        if previous is not None and self.response_pending and not self.response_used_previous:
            return previous, True
        return current, False

    def answered(self, used_previous: bool) -> None:
        self.response_pending = True
        self.response_used_previous = used_previous

    def answer_confirmed(self) -> bool:
        """The peer used our last response. True if that confirms the new key."""
        if not self.response_pending:
            return False
        self.response_pending = False
        return not self.response_used_previous
