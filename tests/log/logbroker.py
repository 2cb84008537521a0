"""Test support: a real `pyralog broker` process on a loopback port."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ports import free_port
from processes import console_script, stop_process


@dataclass
class RunningBroker:
    address: str
    data: Path
    process: subprocess.Popen[bytes]
    log: list[str]

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


def start_broker(data: Path, *extra: str, port: int | None = None) -> RunningBroker:
    port = port or free_port()
    address = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            str(console_script("pyralog")),
            "broker",
            "--data",
            str(data),
            "--listen",
            address,
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 20
    buffer = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if ready:
            chunk = os.read(proc.stderr.fileno(), 65536)
            if not chunk:
                break
            buffer += chunk
            *done, buffer = buffer.split(b"\n")
            lines += [d.decode(errors="replace") for d in done]
            if any("listening on" in line for line in lines):
                _drain(proc, lines)
                return RunningBroker(address, data, proc, lines)
        if proc.poll() is not None:
            break
    stop_process(proc)
    raise AssertionError(f"broker did not start: {[*lines, buffer.decode(errors='replace')]}")


def _drain(proc: subprocess.Popen[bytes], lines: list[str]) -> None:
    """Keep reading the broker's stderr so it never blocks on a full pipe."""
    import threading

    def pump() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            lines.append(raw.decode(errors="replace").rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()


@contextlib.contextmanager
def running_broker(data: Path, *extra: str) -> Iterator[RunningBroker]:
    broker = start_broker(data, *extra)
    try:
        yield broker
    finally:
        if broker.process.poll() is None:
            stop_process(broker.process, signal.SIGTERM, timeout=15)
        if broker.process.returncode not in (0, -signal.SIGKILL, None):
            print("\n".join(broker.log), file=sys.stderr)


def kill9(broker: RunningBroker) -> None:
    broker.process.kill()
    broker.process.wait(timeout=10)
