"""When a child of ``pyralog up`` that exited is started again (sans-IO: ``now`` in,
decisions out).

A node that dies is restarted after ``delay`` seconds: long enough that its partitions
fail over to the others first (what a real machine's reboot looks like), short enough
that the cluster is whole again soon. A child that keeps dying right after it starts
waits twice as long each time, up to ``longest``; one that ran for ``settled`` seconds
has its next failure treated as a first one again. After ``give_up`` quick failures in
a row it is left down, and the status says so (a crash loop is a bug or a broken
config, and restarting it forever only hides the message in its log).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Child:
    started_at: float | None = None
    exited_at: float | None = None
    exit_code: int | None = None
    restart_at: float | None = None
    quick_failures: int = 0
    restarts: int = 0
    gave_up: bool = False

    @property
    def running(self) -> bool:
        return self.started_at is not None and self.exited_at is None


class Restarts:
    def __init__(self, delay: float = 3.0, longest: float = 30.0, settled: float = 30.0,
                 give_up: int = 5) -> None:  # fmt: skip
        self.delay = delay
        self.longest = longest
        self.settled = settled
        self.give_up = give_up
        self.children: dict[str, Child] = {}

    def child(self, name: str) -> Child:
        return self.children.setdefault(name, Child())

    def started(self, name: str, now: float) -> None:
        c = self.child(name)
        if c.started_at is not None:
            c.restarts += 1
        c.started_at, c.exited_at, c.exit_code, c.restart_at = now, None, None, None

    def exited(self, name: str, now: float, code: int) -> None:
        """``code`` as asyncio reports it: negative for a signal."""
        c = self.child(name)
        ran = now - (c.started_at if c.started_at is not None else now)
        c.exited_at, c.exit_code = now, code
        c.quick_failures = 0 if ran >= self.settled else c.quick_failures + 1
        if c.quick_failures >= self.give_up:
            c.gave_up, c.restart_at = True, None
            return
        wait = self.delay * 2 ** max(0, c.quick_failures - 1)
        c.restart_at = now + min(self.longest, wait)

    def due(self, now: float) -> list[str]:
        """The children to start again now."""
        return [
            name
            for name, c in self.children.items()
            if c.restart_at is not None and c.restart_at <= now and not c.gave_up
        ]

    def describe(self, name: str, now: float) -> str:
        c = self.child(name)
        if c.running:
            return "running"
        if c.gave_up:
            return f"down ({exit_text(c.exit_code)}, gave up after {self.give_up} quick failures)"
        if c.restart_at is not None:
            return f"restarting in {max(0.0, c.restart_at - now):.0f} s ({exit_text(c.exit_code)})"
        return "stopped"


def exit_text(code: int | None) -> str:
    if code is None:
        return "not started"
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
