"""Two TCP endpoints on a fake clock, joined by a simulated link.

``Pair`` joins two ``TcpConnection``s by an instantaneous wire: ``pump`` moves segments
(through encode/decode, so checksums and options are on the wire) back and forth until
both are quiet, and a ``mangle`` function may alter or drop them; ``step``, ``run_until``
and ``run`` jump the clock from timer to timer. ``run_link`` drives two ends (connections
or whole ``Stack``s) through a link with delays instead: a ``transmit`` function decides
when each copy of what an end sends arrives, so it can delay, drop, duplicate and reorder.
Everything is deterministic: no sleeping, no network.

Importable by name from any test (``pythonpath = ["tests"]`` in pyproject.toml).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pyralog.netstack.stack import Stack
from pyralog.netstack.tcp import State, TcpConnection, TcpOwner
from pyralog.netstack.tcp_segment import Segment, decode

A_IP = bytes([10, 0, 0, 1])
B_IP = bytes([10, 0, 0, 2])
PORT_A = 40000
PORT_B = 80
MSS = 1000


def wire(seg: Segment, src: bytes = A_IP, dst: bytes = B_IP) -> Segment:
    """The segment as the far end decodes it (options and checksum really on the wire)."""
    return decode(seg.encode(src, dst), src, dst)


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now


class Owner(TcpOwner):
    """Records every upcall; optionally reads everything as soon as it is readable."""

    def __init__(self, clock: Clock, *, auto_read: bool = True) -> None:
        self.clock = clock
        self.auto_read = auto_read
        self.events: list[str] = []
        self.received = bytearray()
        self.errors: list[OSError | None] = []

    def tcp_connected(self, conn: TcpConnection) -> None:
        self.events.append("connected")

    def tcp_readable(self, conn: TcpConnection) -> None:
        self.events.append("readable")
        if self.auto_read:
            self.received += conn.read(1 << 30, self.clock.now)

    def tcp_eof(self, conn: TcpConnection) -> None:
        self.events.append("eof")

    def tcp_writable(self, conn: TcpConnection) -> None:
        self.events.append("writable")

    def tcp_closed(self, conn: TcpConnection, error: OSError | None) -> None:
        self.events.append("closed")
        self.errors.append(error)


class Writer:
    """An application that writes ``data`` as the send buffer allows, then closes."""

    def __init__(self, conn: TcpConnection, data: bytes, *, close: bool = True) -> None:
        self.conn = conn
        self.data = data
        self.offset = 0
        self.close = close
        self.closed = False

    def push(self, now: float) -> None:
        if self.conn.state not in (State.ESTABLISHED, State.CLOSE_WAIT) or self.closed:
            return
        if self.offset < len(self.data):
            self.offset += self.conn.send(memoryview(self.data)[self.offset :], now)
        if self.offset == len(self.data) and self.close:
            self.conn.close(now)
            self.closed = True


Mangle = Callable[[str, Segment], Segment | None]


class Pair:
    """Two connections joined by an instantaneous wire; ``mangle`` may alter or drop."""

    def __init__(self, clock: Clock, a: TcpConnection, b: TcpConnection) -> None:
        self.clock = clock
        self.a = a
        self.b = b
        self.oa = owner_of(a)
        self.ob = owner_of(b)
        self.log: list[tuple[str, Segment]] = []
        self.mangle: Mangle | None = None

    def pump(self, max_rounds: int = 2000) -> None:
        """Deliver segments back and forth until neither side has anything to send."""
        ends = (("a", self.a, self.b, A_IP, B_IP), ("b", self.b, self.a, B_IP, A_IP))
        for _ in range(max_rounds):
            moved = False
            for name, src, dst, sip, dip in ends:
                for out in src.segments_to_send():
                    moved = True
                    seg: Segment | None = wire(out, sip, dip)
                    assert seg is not None
                    self.log.append((name, seg))
                    if self.mangle is not None:
                        seg = self.mangle(name, seg)
                    if seg is not None:
                        dst.receive(seg, self.clock.now)
            if not moved:
                return
        raise AssertionError(f"no quiescence after {max_rounds} rounds")

    def deadline(self) -> float | None:
        ds = [d for d in (self.a.next_deadline(), self.b.next_deadline()) if d is not None]
        return min(ds) if ds else None

    def step(self) -> bool:
        """Advance the clock to the earliest timer and run it; False if none is set."""
        self.pump()
        d = self.deadline()
        if d is None:
            return False
        self.clock.now = max(self.clock.now, d)
        for c in (self.a, self.b):
            cd = c.next_deadline()
            if cd is not None and cd <= self.clock.now:
                c.tick(self.clock.now)
        self.pump()
        return True

    def run_until(self, t: float) -> None:
        self.pump()
        while (d := self.deadline()) is not None and d <= t:
            self.step()
        self.clock.now = max(self.clock.now, t)

    def run(self, writers: list[Writer], done: Callable[[], bool], limit: float = 600.0) -> None:
        start = self.clock.now
        while True:
            for w in writers:
                w.push(self.clock.now)
            self.pump()
            if done():
                return
            assert self.clock.now - start < limit, "transfer did not finish in time"
            if not self.step():
                for w in writers:
                    w.push(self.clock.now)
                self.pump()
                assert done(), "stalled: no timer set and nothing to send"
                return

    def run_over_link(
        self,
        writers: list[Writer],
        done: Callable[[], bool],
        arrivals: Callable[[str, Segment, float], list[float]],
        *,
        limit: float,
        max_in_flight: int | None = None,
    ) -> None:
        """Like ``run``, but over a link with delays (``run_link``, until ``done()`` with
        nothing in flight, and the clock below ``limit``): every segment is put on the wire
        and logged, then ``arrivals(name, seg, now)`` gives the time each copy of it
        arrives: none for a lost segment, two for a duplicated one."""
        sides = (("a", A_IP, B_IP), ("b", B_IP, A_IP))

        def transmit(index: int, out: Segment, now: float) -> list[tuple[float, Segment]]:
            name, sip, dip = sides[index]
            seg = wire(out, sip, dip)
            self.log.append((name, seg))
            return [
                (when, seg if copy == 0 else wire(out, sip, dip))
                for copy, when in enumerate(arrivals(name, seg, now))
            ]

        def push() -> None:
            for w in writers:
                w.push(self.clock.now)

        run_link(
            self.clock,
            (connection_end(self.a), connection_end(self.b)),
            transmit,
            done,
            before_round=push,
            limit=limit,
            max_in_flight=max_in_flight,
            describe=lambda: f"{self.a.state}/{self.b.state}",
        )

    def sent_by(self, name: str) -> list[Segment]:
        return [s for n, s in self.log if n == name]


def owner_of(conn: TcpConnection) -> Owner:
    assert isinstance(conn.owner, Owner)
    return conn.owner


def make_pair(
    clock: Clock | None = None,
    *,
    iss_a: int = 100_000,
    iss_b: int = 900_000,
    mss_a: int = MSS,
    mss_b: int = MSS,
    buf_a: int | None = None,
    buf_b: int | None = None,
    read_a: bool = True,
    read_b: bool = True,
    scaling: bool = True,
    establish: bool = True,
) -> Pair:
    clock = clock or Clock()
    kw_a = {"receive_buffer": buf_a} if buf_a else {}
    kw_b = {"receive_buffer": buf_b} if buf_b else {}
    a = TcpConnection(PORT_A, PORT_B, iss_a, mss_a, Owner(clock, auto_read=read_a), **kw_a)
    b = TcpConnection(PORT_B, PORT_A, iss_b, mss_b, Owner(clock, auto_read=read_b), **kw_b)
    pair = Pair(clock, a, b)
    if not establish:
        return pair
    a.connect(clock.now)
    [syn] = a.segments_to_send()
    syn = wire(syn)
    if not scaling:
        syn.wscale = None
    pair.log.append(("a", syn))
    b.accept(syn, clock.now)
    pair.pump()
    assert a.state is State.ESTABLISHED
    assert b.state is State.ESTABLISHED
    return pair


# -- a link with delays ----------------------------------------------------------------------


@dataclass
class End:
    """One end of a link: what it has to send, how it takes what arrives, its timers."""

    outgoing: Callable[[], Iterable[Any]]
    receive: Callable[[Any, float], None]
    next_deadline: Callable[[], float | None]
    tick: Callable[[float], None]


def connection_end(conn: TcpConnection) -> End:
    """A TcpConnection as an end; its timer runs only when it is due."""

    def tick(now: float) -> None:
        d = conn.next_deadline()
        if d is not None and d <= now:
            conn.tick(now)

    return End(conn.segments_to_send, conn.receive, conn.next_deadline, tick)


def stack_end(stack: Stack) -> End:
    """A Stack as an end: IP packets out and in; it runs its connections' due timers."""
    return End(stack.packets_to_send, stack.receive_packet, stack.next_deadline, stack.tick)


Transmit = Callable[[int, Any, float], Iterable[tuple[float, Any]]]


def run_link(
    clock: Clock,
    ends: Sequence[End],
    transmit: Transmit,
    done: Callable[[], bool],
    *,
    before_round: Callable[[], object] | None = None,
    limit: float,
    rounds: int = 100_000,
    drain: bool = True,
    max_in_flight: int | None = None,
    describe: Callable[[], str] = lambda: "",
) -> None:
    """Drive two ends through a link with delays on ``clock`` until ``done()``.

    Each round: ``before_round()``; each end in turn hands over all it has to send, and
    ``transmit(index of the sender, item, now)`` gives (arrival time, what arrives) for
    every copy that reaches the other end: none for a lost item, several for a duplicated
    one. Then, unless ``done()`` holds (and, with ``drain``, nothing is in flight), the
    clock jumps to the next arrival or timer, whatever is due arrives (in order of arrival
    time, then of sending) and each end runs its timers.

    Fails when nothing is in flight and no timer is set, when the clock reaches ``limit``,
    when ``max_in_flight`` copies are in flight at once, or after ``rounds`` rounds.
    """
    queue: list[tuple[float, int, int, Any]] = []  # (arrival, serial, destination, item)
    serial = 0
    for _ in range(rounds):
        if before_round is not None:
            before_round()
        for index, end in enumerate(ends):
            for item in end.outgoing():
                for when, arriving in transmit(index, item, clock.now):
                    serial += 1
                    heapq.heappush(queue, (when, serial, 1 - index, arriving))
        if max_in_flight is not None:
            assert len(queue) < max_in_flight, f"segment storm: {len(queue)} in flight, {queue[:4]}"
        if done() and not (drain and queue):
            return
        times = [t for t in (end.next_deadline() for end in ends) if t is not None]
        if queue:
            times.append(queue[0][0])
        assert times, f"stalled: nothing in flight and no timer set ({describe()})"
        clock.now = max(clock.now, min(times))
        assert clock.now < limit, f"not done after {limit} s ({describe()})"
        while queue and queue[0][0] <= clock.now:
            _, _, destination, arriving = heapq.heappop(queue)
            ends[destination].receive(arriving, clock.now)
        for end in ends:
            end.tick(clock.now)
    raise AssertionError(f"not done after {rounds} rounds ({describe()})")
