"""One supervisor per cluster directory: an flock on ``.lock``, the holder's pid beside it.

The kernel drops an flock when its holder dies, even by ``kill -9``, so a lock that can
be taken is proof nobody runs the cluster: no stale pid file can block a restart, and
``pyralog down`` never signals a recycled pid (it signals only while the lock is held).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class AlreadyRunning(Exception):
    def __init__(self, root: Path, pid: int | None) -> None:
        who = f"supervisor pid {pid}" if pid else "another pyralog up"
        super().__init__(
            f"{root}: the cluster is already running ({who}); `pyralog down --dir {root}` stops it"
        )
        self.pid = pid


class RunLock:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / ".lock"
        self.pid_path = root / "supervisor.pid"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(self.root, self.holder()) from None
        self._fd = fd
        tmp = self.pid_path.with_name(f".supervisor.pid.{os.getpid()}")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, self.pid_path)

    def release(self) -> None:
        if self._fd is None:
            return
        self.pid_path.unlink(missing_ok=True)
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def held_elsewhere(self) -> bool:
        """Whether some other process holds the lock now."""
        if not self.path.exists():
            return False
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # also drops the shared lock if we got it
        return False

    def holder(self) -> int | None:
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
