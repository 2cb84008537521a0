"""Tests for the kernel-style transport counter replay window."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyralog.wireguard.constants import (
    REJECT_AFTER_MESSAGES,
    REPLAY_WINDOW_SIZE,
    REPLAY_WORD_BITS,
    REPLAY_WORDS,
)
from pyralog.wireguard.replay import ReplayWindow

RAM = REJECT_AFTER_MESSAGES
W = REPLAY_WINDOW_SIZE
T_LIM = W + 1
RING_BITS = REPLAY_WORDS * REPLAY_WORD_BITS  # 8192

Step = tuple[int, bool]


def _kernel_selftest_blocks() -> list[tuple[str, list[Step]]]:
    """drivers/net/wireguard/selftest/counter.c, one block per T_INIT (fresh window)."""
    blocks: list[tuple[str, list[Step]]] = []
    blocks.append(
        (
            "numbered",
            [
                (0, True),  # 1
                (1, True),
                (1, False),
                (9, True),
                (8, True),  # 5
                (7, True),
                (7, False),
                (T_LIM, True),
                (T_LIM - 1, True),
                (T_LIM - 1, False),  # 10
                (T_LIM - 2, True),
                (2, True),
                (2, False),
                (T_LIM + 16, True),
                (3, False),  # 15
                (T_LIM + 16, False),
                (T_LIM * 4, True),
                (T_LIM * 4 - (T_LIM - 1), True),
                (10, False),
                (T_LIM * 4 - T_LIM, False),  # 20
                (T_LIM * 4 - (T_LIM + 1), False),
                (T_LIM * 4 - (T_LIM - 2), True),
                (T_LIM * 4 + 1 - T_LIM, False),
                (0, False),
                (RAM, False),  # 25
                (RAM - 1, True),
                (RAM, False),
                (RAM - 1, False),
                (RAM - 2, True),
                (RAM + 1, False),  # 30
                (RAM + 2, False),
                (RAM - 2, False),
                (RAM - 3, True),
                (0, False),  # 34
            ],
        )
    )
    blocks.append(
        ("ascending-then-0", [(i, True) for i in range(1, W + 1)] + [(0, True), (0, False)])
    )
    blocks.append(
        ("ascending-from-2-then-1", [(i, True) for i in range(2, W + 2)] + [(1, True), (0, False)])
    )
    blocks.append(("descending-to-0", [(i, True) for i in range(W, -1, -1)]))
    blocks.append(("descending-from-W+1", [(i, True) for i in range(W + 1, 0, -1)] + [(0, False)]))
    blocks.append(
        ("descending-then-W+1", [(i, True) for i in range(W, 0, -1)] + [(W + 1, True), (0, False)])
    )
    blocks.append(
        ("descending-then-0-W+1", [(i, True) for i in range(W, 0, -1)] + [(0, True), (W + 1, True)])
    )
    return blocks


KERNEL_BLOCKS = _kernel_selftest_blocks()
_OFFSETS = [sum(len(steps) for _, steps in KERNEL_BLOCKS[:k]) for k in range(len(KERNEL_BLOCKS))]


@pytest.mark.parametrize(
    ("offset", "steps"),
    [(off, steps) for off, (_, steps) in zip(_OFFSETS, KERNEL_BLOCKS, strict=True)],
    ids=[name for name, _ in KERNEL_BLOCKS],
)
def test_kernel_selftest_table(offset: int, steps: list[Step]) -> None:
    window = ReplayWindow()
    for i, (counter, expected) in enumerate(steps):
        got = window.check_and_update(counter)
        assert got is expected, (
            f"step {i} of block (kernel test number {offset + i + 1}): "
            f"counter={counter} expected {expected}, got {got}"
        )


def test_kernel_table_size() -> None:
    # 34 numbered steps, then six looped blocks: five of W + 2 steps and one of W + 1.
    assert [len(s) for _, s in KERNEL_BLOCKS] == [34] + [W + 2] * 2 + [W + 1] + [W + 2] * 3


# --- independent naive model -------------------------------------------------------------


class NaiveReplay:
    """Set of every accepted counter plus the greatest; no bitmap, no ring."""

    def __init__(self) -> None:
        self.accepted: set[int] = set()
        self.greatest: int | None = None

    def check(self, counter: int) -> bool:
        if counter < 0 or counter > RAM - 1:
            return False
        if self.greatest is not None and self.greatest - counter > W:
            return False
        if counter in self.accepted:
            return False
        self.accepted.add(counter)
        if self.greatest is None or counter > self.greatest:
            self.greatest = counter
        return True


def _state(window: ReplayWindow) -> tuple[int, tuple[int, ...]]:
    return window._next, tuple(window._words)


def _run_both(window: ReplayWindow, model: NaiveReplay, counters: list[int]) -> list[bool]:
    """Feed both implementations; they must agree, and rejections must not touch state."""
    results = []
    for i, counter in enumerate(counters):
        before_next = window._next
        got = window.check_and_update(counter)
        want = model.check(counter)
        assert got is want, f"step {i}: counter={counter} window={got} model={want}"
        if not got:
            assert window._next == before_next, f"step {i}: rejected {counter} moved the top"
        results.append(got)
    assert window.greatest == model.greatest
    return results


_step = st.one_of(
    st.tuples(st.just("rel"), st.integers(-(W + 70), 70)),
    st.tuples(st.just("rel"), st.integers(-(2 * RING_BITS), 3 * RING_BITS)),
    st.tuples(st.just("rel"), st.sampled_from([-W - 1, -W, -W + 1, 63, 64, 65, W, RING_BITS])),
    st.tuples(st.just("abs"), st.integers(0, 300)),
    st.tuples(st.just("abs"), st.integers(-2, 2**64 + 2)),
    st.tuples(st.just("ram"), st.integers(-(W + 130), 3)),
)


@settings(max_examples=120, deadline=None)
@given(st.lists(_step, max_size=60))
def test_matches_naive_model(steps: list[tuple[str, int]]) -> None:
    window = ReplayWindow()
    model = NaiveReplay()
    for i, (kind, value) in enumerate(steps):
        base = model.greatest or 0
        counter = base + value if kind == "rel" else RAM + value if kind == "ram" else value
        before = _state(window)
        got = window.check_and_update(counter)
        want = model.check(counter)
        assert got is want, f"step {i}: counter={counter} window={got} model={want}"
        if not got:
            assert _state(window) == before
        assert window.greatest == model.greatest


# --- ring wrap-around ----------------------------------------------------------------------


# Word-sized strides, the window (127 words) and the ring (128 words) +-1, multiple laps.
JUMPS = [1, 62, 63, 64, 65, 127, 128, W - 1, W, W + 1, RING_BITS - 1, RING_BITS, RING_BITS + 1]
JUMPS += [RING_BITS + 64, 3 * RING_BITS + 17, 2**40]


@pytest.mark.parametrize("jump", JUMPS)
def test_advance_clears_skipped_words(jump: int) -> None:
    window = ReplayWindow()
    model = NaiveReplay()
    # Fill the whole live window (every ring word holds set bits), then jump ahead.
    start = 3 * RING_BITS + 5
    for counter in range(start - W, start + 1):
        assert window.check_and_update(counter)
        assert model.check(counter)
    top = start + jump
    assert window.check_and_update(top)
    model.check(top)
    # Every counter from just below the window up to the top, against the model ...
    probe = list(range(top - W - 2, top + 1))
    first = _run_both(window, model, probe)
    # ... unseen counters inside the window are accepted (stale ring bits were cleared),
    expected = [top - W <= c < top and not (start - W <= c <= start) for c in probe]
    assert first == expected
    # ... and nothing is accepted twice.
    assert not any(_run_both(window, model, probe))


def test_advance_by_exactly_the_ring_reuses_the_same_slot() -> None:
    window = ReplayWindow()
    assert window.check_and_update(100)
    # 100 + RING_BITS lands on the very same ring bit as 100; the stale bit must be cleared.
    assert window.check_and_update(100 + RING_BITS)
    assert not window.check_and_update(100 + RING_BITS)
    assert not window.check_and_update(100)  # now too old


def test_advance_by_window_keeps_oldest_word() -> None:
    window = ReplayWindow()
    model = NaiveReplay()
    _run_both(window, model, list(range(0, 200)))
    # Advancing by exactly W skips 127 words: the word holding 199 stays live.
    _run_both(window, model, [199 + W])
    assert _run_both(window, model, [198, 199, 200, 201]) == [False, False, True, True]


def test_word_boundaries_many_laps() -> None:
    window = ReplayWindow()
    model = NaiveReplay()
    counter = 0
    counters: list[int] = []
    # Strides straddling the 64-bit word size, for several laps around the ring.
    for lap in range(4 * REPLAY_WORDS):
        counter += (63, 64, 65)[lap % 3]
        counters += [counter, counter - 1, counter, counter - W, counter - W - 1]
    _run_both(window, model, counters)
    # Counters on either side of each internal word edge (internally counter + 1).
    edge = 64 * 1000 - 1
    _run_both(window, model, [edge - 1, edge, edge + 1, edge, edge - 1, edge + 1])


# --- rejection leaves state unchanged, misc API -------------------------------------------


@pytest.mark.parametrize("bad", [RAM, RAM + 1, 2**64, 2**80, -1])
def test_out_of_range_rejected_without_change(bad: int) -> None:
    window = ReplayWindow()
    assert window.check_and_update(5)
    before = _state(window)
    assert not window.check_and_update(bad)
    assert _state(window) == before
    assert window.greatest == 5


def test_rejections_leave_state_unchanged() -> None:
    window = ReplayWindow()
    for c in (0, 1, 2, 70, 5000, 10_000):
        assert window.check_and_update(c)
    before = _state(window)
    for c in (0, 70, 5000, 10_000, 10_000 - W - 1, 1, RAM):
        assert not window.check_and_update(c), c
        assert _state(window) == before, c
    assert window.greatest == 10_000


def test_fresh_reset_and_property() -> None:
    window = ReplayWindow()
    assert window.greatest is None
    assert window.check_and_update(RAM - 1)
    assert window.greatest == RAM - 1
    assert not window.check_and_update(0)
    window.reset()
    assert window.greatest is None
    assert _state(window) == _state(ReplayWindow())
    assert window.check_and_update(0)
    assert window.greatest == 0
    with pytest.raises(AttributeError):
        window.greatest = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        window.extra = 1  # type: ignore[attr-defined]
