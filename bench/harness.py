"""What every measure of bench/run.py shares: its settings, Skip, attempt() and log lines."""

from __future__ import annotations

import json
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import CommandError

PORT = 51820  # WireGuard's listen port, in every namespace the measures build


class Skip(Exception):
    """A measure could not be taken; the message says why (kept in the results)."""


@dataclass
class Settings:
    # The field order is the order of "settings" in the results JSON.
    quick: bool
    tcp_runs: int
    tcp_seconds: int
    udp_runs: int
    udp_seconds: int
    pings: int
    ping_interval: float
    hs_identities: int
    hs_warmup: float
    hs_seconds: float
    settle: float

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if quick:
            return cls(True, 1, 3, 1, 2, 100, 0.01, 128, 1.0, 2.0, 1.0)
        return cls(False, 3, 10, 2, 5, 200, 0.01, 512, 1.0, 4.0, 2.0)


def unwind_on_signals() -> None:
    """Ctrl-C, SIGTERM and SIGHUP unwind the stack as KeyboardInterrupt, so every Lab
    cleans up after itself (also when started with SIGINT ignored, as background jobs
    of a script are)."""

    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


def log(msg: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {msg}", file=sys.stderr, flush=True)


def attempt(errors: list[str], what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """Run one measure; on failure note why and go on with the next."""
    try:
        return fn(*args, **kw)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        msg = f"{what}: {e}" if isinstance(e, Skip | CommandError) else f"{what}: {e!r}"
        log(f"FAILED {msg}")
        if not isinstance(e, Skip | CommandError):
            traceback.print_exc(file=sys.stderr)
        errors.append(msg)
        return None


def finish(results: dict[str, Any], out: Path | None, default: str) -> int:
    """Write a benchmark's results (to ``out``, or on failure to ``*.failed.json`` beside
    ``out`` or ``default``, never over the published results) and its exit status."""
    failure = results.get("failure")
    path = out or Path(default)
    if failure is not None:
        path = path.with_suffix(".failed.json")
    if out or failure:
        path.write_text(json.dumps(results, indent=1) + "\n")
        log(f"wrote {path}")
    log(f"total {results['total_seconds']:.0f} s")
    if failure:
        log(failure)
        return 1
    return 0
