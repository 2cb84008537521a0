"""Test support for running programs: the project's console scripts, user nobody, polling
for a condition and stopping a process a test started.

Importable by name from any test (``pythonpath = ["tests"]`` in pyproject.toml).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

NOBODY = 65534  # uid and gid of user nobody

INSTALL_HINT = "install Pyralog into this environment: pip install -e . (scripts/bootstrap.sh does)"


# -- the project's console scripts -------------------------------------------------------------


def _runnable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def console_script(name: str) -> Path:
    """The console script ``name`` (``pyralog``, ``pyralog-wg``) of this environment.

    Next to ``sys.executable`` (the bin directory of the virtualenv running the tests),
    else the first on PATH. When neither has it, the path it would have next to
    ``sys.executable``, which does not exist: mark the tests that run it with
    ``needs_script(name)``, which skips them and says how to install it.
    """
    beside = Path(sys.executable).with_name(name)
    if _runnable(beside):
        return beside
    found = shutil.which(name)
    return Path(found) if found else beside


def script_missing(name: str) -> str | None:
    """Why the console script ``name`` cannot be run here, or None when it can."""
    if _runnable(console_script(name)):
        return None
    return (
        f"console script {name!r} is neither next to {sys.executable} nor on PATH; {INSTALL_HINT}"
    )


def needs_script(name: str) -> pytest.MarkDecorator:
    """Skip, saying how to install it, when the console script ``name`` is not installed."""
    reason = script_missing(name)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


# -- processes ---------------------------------------------------------------------------------


def as_nobody(*argv: str) -> list[str]:
    """``argv`` run as user nobody, with no supplementary groups (needs root and setpriv)."""
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy (returned) or ``timeout`` passes (falsy result)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 5) -> None:
    """Signal one process we started, then kill it if it does not exit in time."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
