"""bench/harness.py Settings: the "settings" of the results JSON keep their keys and values."""

from __future__ import annotations

import json
from pathlib import Path

from harness import Settings

PUBLISHED = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.json"


def test_full_settings_are_those_of_the_published_full_run() -> None:
    stored = json.loads(PUBLISHED.read_text())["settings"]
    assert stored["quick"] is False
    own = Settings.make(False).__dict__
    # run.py writes these first, in this order, then the lists it adds.
    assert list(stored)[: len(own)] == list(own)
    assert {k: stored[k] for k in own} == own


def test_quick_settings() -> None:
    s = Settings.make(True)
    assert s.quick is True
    assert (s.tcp_runs, s.tcp_seconds, s.udp_runs, s.udp_seconds) == (1, 3, 1, 2)
    assert (s.pings, s.hs_identities, s.hs_seconds, s.settle) == (100, 128, 2.0, 1.0)
