"""Session records for the audit trail from peer counter snapshots (sans-IO)."""

from __future__ import annotations

from pyralog.mesh.audit_sessions import PeerCounters, Sessions


def _p(hs: float | None, rx: int, tx: int, key: str = "K1") -> PeerCounters:
    return PeerCounters("node-2", key, hs, rx, tx)


def test_records_cover_each_window_once() -> None:
    s = Sessions(interval=60)
    assert s.observe(0, [_p(None, 0, 0)]) == []
    assert s.observe(10, [_p(5, 100, 50)]) == []
    assert s.observe(30, [_p(25, 300, 80)]) == []  # a second handshake in the window
    [r] = s.observe(60, [_p(25, 400, 100)])
    assert (r["peer"], r["handshakes"], r["rx_bytes"], r["tx_bytes"]) == ("node-2", 2, 400, 100)
    assert r["encrypted"] is True
    # Next window: only what happened since.
    assert s.observe(90, [_p(25, 450, 100)]) == []
    [r] = s.observe(120, [_p(25, 500, 130)])
    assert (r["handshakes"], r["rx_bytes"], r["tx_bytes"]) == (0, 100, 30)
    # An idle window writes nothing.
    assert s.observe(180, [_p(25, 500, 130)]) == []


def test_counters_that_go_backwards_start_over() -> None:
    s = Sessions(interval=10)
    s.observe(0, [_p(1, 0, 0)])
    s.observe(10, [_p(1, 1000, 1000)])
    [r] = s.observe(20, [_p(15, 40, 30)])  # the peer was re-added: counters restarted
    assert (r["rx_bytes"], r["tx_bytes"], r["handshakes"]) == (40, 30, 1)


def test_several_peers() -> None:
    s = Sessions(interval=10)
    s.observe(0, [_p(None, 0, 0, "A"), _p(None, 0, 0, "B")])
    records = s.observe(10, [_p(3, 10, 0, "A"), _p(None, 0, 0, "B")])
    assert [r["public_key"] for r in records] == ["A"]
