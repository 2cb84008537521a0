"""Running ``pyralog up | status | down`` in tests, as user nobody when the tests run as
root (``pyralog up`` needs no privilege, and that proves it).

    with up_cluster() as c:
        c.up("--detach")
        assert c.status()["nodes"][0]["state"] == "running"

``close`` stops the cluster (``pyralog down``, then SIGKILL for whatever its state file
names) even after a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from processes import as_nobody, console_script
from pyralog.cluster.supervisor import free_range


def free_port_range(count: int) -> int:
    """A base port with ``count`` consecutive UDP ports free on every address, from a
    random start (tests run side by side)."""
    return free_range(socket.SOCK_DGRAM, count, random.randrange(20000, 60000))


class UpCluster:
    def __init__(self, root: Path, nodes: int = 3) -> None:
        self.root = root
        self.nodes = nodes
        self.port = free_port_range(nodes + 1)
        self.nobody = os.geteuid() == 0 and shutil.which("setpriv") is not None
        if self.nobody:
            user = pwd.getpwnam("nobody")
            os.chown(root.parent, user.pw_uid, user.pw_gid)

    def argv(self, *args: str) -> list[str]:
        argv = [str(console_script("pyralog")), *args]
        return as_nobody(*argv) if self.nobody else argv

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)  # fmt: skip

    def up(self, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        args = ["up", "--dir", str(self.root), "--nodes", str(self.nodes), "--port",
                str(self.port), *extra]  # fmt: skip
        done = self.run(*args)
        if check:
            assert done.returncode == 0, done.stdout + done.stderr
        return done

    def status(self) -> dict[str, Any]:
        done = self.run("status", "--dir", str(self.root), "--json")
        return json.loads(done.stdout)

    def state(self) -> dict[str, Any]:
        try:
            return json.loads((self.root / "state.json").read_text())
        except (OSError, ValueError):
            return {}

    def pids(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.state().get("pids", {}).items()}

    def down(self) -> subprocess.CompletedProcess[str]:
        return self.run("down", "--dir", str(self.root), timeout=60)

    def close(self) -> None:
        pids = self.pids()
        if (self.root / "cluster.toml").exists():
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.down()
        supervisor = self.state().get("supervisor")
        for pid in [*pids.values(), *([supervisor] if supervisor else [])]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(pid), signal.SIGKILL)


@contextlib.contextmanager
def up_cluster(nodes: int = 3) -> Iterator[UpCluster]:
    """An UpCluster in a directory of its own (``<tmp>/c``, not created yet), removed
    with every process afterwards. Not under pytest's tmp_path: its parents are 0700
    root, closed to user nobody."""
    parent = Path(tempfile.mkdtemp(prefix="pyralog-up-"))
    os.chmod(parent, 0o755)
    cluster = UpCluster(parent / "c", nodes)
    try:
        yield cluster
    finally:
        cluster.close()
        shutil.rmtree(parent, ignore_errors=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie of ours is dead too.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return False
    return True
