"""Sliding replay window for WireGuard transport-data counters (whitepaper 5.4.6).

This is the kernel's ``counter_validate`` (drivers/net/wireguard/receive.c), an RFC 6479
style bitmap: a ring of ``REPLAY_WORDS`` 64-bit words plus the greatest counter seen. When
a counter moves ahead, only the words it skips over are cleared (never more than the whole
ring), so no bit shifting is needed; one ring word of slack makes the usable window
``REPLAY_WINDOW_SIZE`` (8128) counters deep.

It is written by hand on purpose: it is about forty lines of protocol logic that must match
the reference implementation bit for bit (the kernel selftest table is reproduced in
``tests/wireguard/test_replay.py``), and no library provides it.

Like the kernel, the stored position is "one past the greatest counter accepted", so 0
means nothing has been accepted yet and counter 0 is accepted first; internally every
counter is therefore handled as ``counter + 1``.
"""

from __future__ import annotations

from pyralog.wireguard.constants import (
    REJECT_AFTER_MESSAGES,
    REPLAY_WINDOW_SIZE,
    REPLAY_WORD_BITS,
    REPLAY_WORDS,
)

__all__ = ["ReplayWindow"]

_WORD_SHIFT = REPLAY_WORD_BITS.bit_length() - 1  # log2(64) = 6
_BIT_MASK = REPLAY_WORD_BITS - 1
_RING_MASK = REPLAY_WORDS - 1
_ZEROS = (0,) * REPLAY_WORDS

assert 1 << _WORD_SHIFT == REPLAY_WORD_BITS, "word size must be a power of two"
assert REPLAY_WORDS & _RING_MASK == 0, "ring length must be a power of two"


class ReplayWindow:
    """Per-keypair receive counter window; not thread-safe (callers serialise per keypair)."""

    __slots__ = ("_next", "_words")

    _next: int  # greatest accepted counter + 1; 0 = nothing accepted yet
    _words: list[int]  # the ring of REPLAY_WORDS bitmap words

    def __init__(self) -> None:
        self._next = 0
        self._words = list(_ZEROS)

    def reset(self) -> None:
        """Forget every counter, as for a fresh keypair."""
        self._next = 0
        self._words[:] = _ZEROS

    @property
    def greatest(self) -> int | None:
        """The greatest counter accepted so far, or None before the first acceptance."""
        return self._next - 1 if self._next else None

    def check_and_update(self, counter: int) -> bool:
        """Accept and record ``counter`` (True) or reject it as reused/too old/out of range.

        A rejected counter leaves the window unchanged.
        """
        if not 0 <= counter < REJECT_AFTER_MESSAGES:
            return False
        n = counter + 1
        top = self._next
        if n + REPLAY_WINDOW_SIZE < top:
            return False  # too old: behind the window
        words = self._words
        index = n >> _WORD_SHIFT
        if n > top:
            # Moving ahead: clear the words skipped over, at most the whole ring.
            current = top >> _WORD_SHIFT
            skipped = index - current
            if skipped >= REPLAY_WORDS:
                words[:] = _ZEROS
            else:
                while skipped:
                    words[(current + skipped) & _RING_MASK] = 0
                    skipped -= 1
            self._next = n
        index &= _RING_MASK
        bit = 1 << (n & _BIT_MASK)
        word = words[index]
        if word & bit:
            return False  # duplicate
        words[index] = word | bit
        return True
