"""Sequence arithmetic (tcp_seq, RFC 9293 3.4), defined once and re-exported by tcp and
tcp_sack."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pyralog.netstack import tcp, tcp_sack
from pyralog.netstack.tcp_seq import MASK, seq_diff, seq_le, seq_lt

u32 = st.integers(0, MASK)
near = st.integers(-(2**31) + 1, 2**31 - 1)


def test_one_definition_everywhere() -> None:
    assert tcp.seq_diff is seq_diff and tcp.seq_lt is seq_lt and tcp.seq_le is seq_le
    assert tcp.MASK == tcp_sack.MASK == MASK == 0xFFFFFFFF


def test_wrap_around() -> None:
    assert seq_lt(0xFFFFFFF0, 0x10)
    assert not seq_lt(0x10, 0xFFFFFFF0)
    assert seq_diff(0x10, 0xFFFFFFF0) == 0x20
    assert seq_diff(0xFFFFFFF0, 0x10) == -0x20
    assert seq_le(5, 5) and not seq_lt(5, 5)


@given(u32, near)
def test_diff_inverts_offset(a: int, d: int) -> None:
    b = (a + d) & MASK
    assert seq_diff(b, a) == d
    assert seq_lt(a, b) is (d > 0)
    assert seq_le(a, b) is (d >= 0)
