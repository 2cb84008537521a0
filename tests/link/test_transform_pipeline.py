"""The link's transform pipeline, sans-IO: order, swallowing, own datagrams, timers."""

from __future__ import annotations

import pytest

from pyralog.link.transform import REGISTRY, Datagram, Pipeline, Transform, from_names
from pyralog.wireguard.endpoint import Endpoint

EP = ("192.0.2.1", 51820)


class Tag(Transform):
    """Appends its tag outbound; inbound strips it, swallowing datagrams without it."""

    def __init__(self, tag: bytes) -> None:
        self.tag = tag

    def outbound(self, datagrams: list[Datagram], now: float) -> list[Datagram]:
        return [(d + self.tag, e) for d, e in datagrams]

    def inbound(self, data: bytes, endpoint: Endpoint, now: float) -> Datagram | None:
        if not data.endswith(self.tag):
            return None
        return data[: -len(self.tag)], endpoint


class Decoy(Transform):
    """Sends one decoy datagram at its deadline, and rewrites inbound endpoints."""

    def __init__(self, at: float) -> None:
        self.at: float | None = at
        self.pending: list[Datagram] = []

    def next_deadline(self) -> float | None:
        return self.at

    def tick(self, now: float) -> None:
        self.pending.append((b"decoy", EP))
        self.at = None

    def take_output(self) -> list[Datagram]:
        out, self.pending = self.pending, []
        return out

    def inbound(self, data: bytes, endpoint: Endpoint, now: float) -> Datagram | None:
        return data, (endpoint[0], 1)


def test_outbound_first_to_last_inbound_last_to_first() -> None:
    pipe = Pipeline([Tag(b"A"), Tag(b"B")])
    out = pipe.outbound([(b"x", EP), (b"y", EP)], 0.0)
    assert out == [(b"xAB", EP), (b"yAB", EP)]
    assert pipe.inbound(b"xAB", EP, 0.0) == (b"x", EP)
    assert pipe.inbound(b"xBA", EP, 0.0) is None  # wrapped in the wrong order
    assert pipe.inbound(b"x", EP, 0.0) is None  # a plain datagram never reaches the Device


def test_identity_and_empty_pipeline() -> None:
    assert not Pipeline()
    pipe = Pipeline([Transform()])
    assert pipe and len(pipe) == 1
    batch = [(b"a", EP)]
    assert pipe.outbound(batch, 0.0) == batch
    assert pipe.inbound(b"a", EP, 0.0) == (b"a", EP)
    assert pipe.next_deadline() is None


def test_own_datagrams_pass_through_the_transforms_after_it() -> None:
    decoy = Decoy(at=5.0)
    pipe = Pipeline([Tag(b"A"), decoy, Tag(b"B")])
    assert pipe.next_deadline() == 5.0
    pipe.tick(4.0)  # not due
    assert pipe.originated(4.0) == []
    pipe.tick(5.0)
    assert pipe.next_deadline() is None
    # Only the transform after the decoy wraps it; the one before never sees it.
    assert pipe.originated(5.0) == [(b"decoyB", EP)]
    assert pipe.originated(5.0) == []


def test_outbound_includes_what_transforms_originated() -> None:
    decoy = Decoy(at=1.0)
    pipe = Pipeline([decoy])
    pipe.tick(1.0)
    assert pipe.outbound([(b"data", EP)], 1.0) == [(b"data", EP), (b"decoy", EP)]


def test_inbound_may_change_the_endpoint() -> None:
    pipe = Pipeline([Decoy(at=1.0)])
    assert pipe.inbound(b"d", ("192.0.2.9", 4000), 0.0) == (b"d", ("192.0.2.9", 1))


def test_transforms_by_name() -> None:
    assert "identity" in REGISTRY
    transforms = from_names(" identity, identity ")
    assert len(transforms) == 2 and all(type(t) is Transform for t in transforms)
    assert from_names("") == []
    with pytest.raises(ValueError, match=r"unknown datagram transform 'rot13'.*identity"):
        from_names("identity,rot13")


class InboundOnly(Transform):
    def __init__(self) -> None:
        self.calls = 0

    def inbound(self, data: bytes, endpoint: Endpoint, now: float) -> Datagram | None:
        self.calls += 1
        return data[1:], endpoint


def test_each_direction_runs_only_the_transforms_that_rewrite_it() -> None:
    """The identity costs nothing: a direction nobody overrides is skipped whole."""
    assert not Pipeline([Transform(), Transform()]).rewrites_outbound
    assert not Pipeline([Transform()]).rewrites_inbound
    assert not Pipeline([Transform()]).has_timers
    only_in = InboundOnly()
    pipe = Pipeline([Transform(), only_in, Transform()])
    assert pipe.rewrites_inbound and not pipe.rewrites_outbound and not pipe.has_timers
    assert pipe.inbound(b"xdata", EP, 0.0) == (b"data", EP) and only_in.calls == 1
    assert Pipeline([Tag(b"A")]).rewrites_outbound
    assert Pipeline([Decoy(at=1.0)]).has_timers and Pipeline([Decoy(at=1.0)]).rewrites_outbound


def test_decoys_leave_even_when_the_device_sent_nothing() -> None:
    decoy = Decoy(at=1.0)
    pipe = Pipeline([decoy, Tag(b"B")])
    pipe.tick(1.0)
    assert pipe.outbound([], 1.0) == [(b"decoyB", EP)]
