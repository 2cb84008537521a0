"""A mesh cluster in real processes: one coordinator and nodes, each in its own directory.

    lab = MeshLab(tmp_path)
    lab.start_coordinator()
    token = lab.token(reusable=True)
    n1 = lab.start_node("node-1", token)
    lab.wait_member(n1)
    assert lab.probe(n1, lab.address_of("node-2"))["ok"]

Processes run as user nobody when the tests run as root (the embedded mode needs no
privilege, and that proves it), optionally inside a network namespace (``ns``) for TUN
nodes. ``close`` stops every process (SIGTERM, then SIGKILL) even after a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ports import free_port
from processes import as_nobody, console_script, stop_process, wait_until
from pyralog.mesh import http


def call_socket(path: Path, method: str, target: str, body: Any = None, timeout: float = 10) -> Any:
    return asyncio.run(
        http.call(lambda: asyncio.open_unix_connection(str(path)), method, target, body,
                  timeout=timeout)
    )  # fmt: skip


@dataclass
class Proc:
    name: str
    directory: Path
    process: subprocess.Popen[bytes]
    log: Path
    port: int = 0
    socket: Path = field(default_factory=Path)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class MeshLab:
    def __init__(
        self,
        root: Path,
        *,
        unprivileged: bool = True,
        coordinator_toml: str = "",
        host: str = "127.0.0.1",
    ) -> None:
        self.root = root
        self.host = host
        self.nobody = unprivileged and os.geteuid() == 0 and shutil.which("setpriv") is not None
        self.extra = coordinator_toml
        self.procs: list[Proc] = []
        self.coordinator: Proc | None = None
        self.coordinator_port = 0
        if self.nobody:
            nobody = pwd.getpwnam("nobody")
            os.chown(root, nobody.pw_uid, nobody.pw_gid)

    def _dir(self, name: str) -> Path:
        d = self.root / name
        d.mkdir(exist_ok=True)
        if self.nobody:
            nobody = pwd.getpwnam("nobody")
            os.chown(d, nobody.pw_uid, nobody.pw_gid)
        return d

    def _spawn(self, name: str, directory: Path, argv: list[str], prefix: list[str] = (),
               env: dict[str, str] | None = None, nobody: bool | None = None) -> Proc:  # fmt: skip
        log = directory / "process.log"
        with open(log, "ab") as out:
            run_as = self.nobody if nobody is None else nobody
            full = [*prefix, *(as_nobody(*argv) if run_as else argv)]
            process = subprocess.Popen(
                full, cwd=directory, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
            )  # fmt: skip
        proc = Proc(name, directory, process, log)
        self.procs.append(proc)
        return proc

    # -- coordinator -------------------------------------------------------------------------

    def start_coordinator(self, port: int | None = None, name: str = "coordinator",
                          prefix: list[str] = (), store: str = "coordinator.db",
                          key_file: str = "coordinator.key", endpoints: list[str] | None = None,
                          directory: Path | None = None) -> Proc:  # fmt: skip
        d = directory or self._dir(name)
        self.coordinator_port = port = port or free_port(kind=2)
        endpoints = endpoints or [f"{self.host}:{port}"]
        (d / "coordinator.toml").write_text(
            "[coordinator]\n"
            'cluster_id = "test"\n'
            'network = "10.77.0.0/16"\n'
            f"listen_port = {port}\n"
            f"endpoints = {json.dumps(endpoints)}\n"
            f'store = "{store}"\n'
            f'private_key_file = "{key_file}"\n' + self.extra
        )
        argv = [str(console_script("pyralog")), "coordinator", "--config", "coordinator.toml"]
        (d / "coordinator.sock").unlink(missing_ok=True)
        proc = self._spawn(name, d, argv, prefix)
        proc.socket = d / "coordinator.sock"
        proc.port = port
        if not wait_until(lambda: proc.socket.exists() or proc.process.poll() is not None, 20):
            raise AssertionError(f"coordinator did not start:\n{proc.output()}")
        if proc.process.poll() is not None:
            raise AssertionError(f"coordinator exited:\n{proc.output()}")
        if self.coordinator is None:
            self.coordinator = proc
        return proc

    def admin(self, *args: str, check: bool = True) -> Any:
        assert self.coordinator is not None
        argv = [str(console_script("pyralog-admin")), "--socket", str(self.coordinator.socket),
                "--json", *args]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if check and done.returncode:
            raise AssertionError(f"pyralog-admin {' '.join(args)}: {done.stderr}")
        return json.loads(done.stdout) if done.returncode == 0 else done

    def token(self, role: str = "node", reusable: bool = True, ttl: str = "1h") -> str:
        args = ["token", "create", "--role", role, "--ttl", ttl]
        return self.admin(*args, *(["--reusable"] if reusable else []))["token"]

    def status(self) -> dict[str, Any]:
        """``cluster status``'s JSON, also when it exits 1 because a member is down."""
        done = self.admin("cluster", "status", check=False)
        if isinstance(done, subprocess.CompletedProcess):
            if done.returncode != 1 or not done.stdout.strip():
                raise AssertionError(f"pyralog-admin cluster status: {done.stderr}")
            return json.loads(done.stdout)
        return done

    # -- nodes ------------------------------------------------------------------------------

    def node_config(
        self, node_id: str, token: str | None, *, backend: str = "embedded",
        port: int | None = None, interface: str | None = None,
        coordinators: list[str] | None = None, extra: str = "",
    ) -> tuple[Path, int]:  # fmt: skip
        d = self._dir(node_id)
        port = port or free_port(kind=2)
        endpoints = coordinators or [f"{self.host}:{self.coordinator_port}"]
        lines = ["[wireguard]", f'backend = "{backend}"']
        if interface:
            lines.append(f'interface_name = "{interface}"')
        lines += ["[interface]", 'private_key_file = "node.key"', f"listen_port = {port}",
                  "[bootstrap]", f"coordinator_endpoint = {json.dumps(endpoints)}",
                  f'node_id = "{node_id}"']  # fmt: skip
        if token is not None:
            (d / "token").write_text(token)
            lines.append('token_file = "token"')
        (d / "wireguard.toml").write_text("\n".join(lines) + "\n" + extra)
        return d, port

    def start_node(self, node_id: str, token: str | None, *, backend: str = "embedded",
                   prefix: list[str] = (), interface: str | None = None,
                   coordinators: list[str] | None = None, nobody: bool | None = None,
                   wait: bool = True, extra: str = "") -> Proc:  # fmt: skip
        """Start ``pyralog node`` for ``node_id``: with ``token``, on a fresh config
        (``extra``: TOML appended to it, e.g. a ``[log]`` section); with None, on the
        config already there (a restart, or one written by ``node_config``)."""
        existing = self.root / node_id / "wireguard.toml"
        if existing.exists() and token is None:
            d, port = self.root / node_id, 0
        else:
            d, port = self.node_config(node_id, token, backend=backend, interface=interface,
                                       coordinators=coordinators, extra=extra)  # fmt: skip
        argv = [str(console_script("pyralog")), "node", "--config", "wireguard.toml"]
        (d / "node.sock").unlink(missing_ok=True)  # a killed node's socket stays behind
        proc = self._spawn(node_id, d, argv, prefix, nobody=nobody)
        proc.socket = d / "node.sock"
        proc.port = port
        if wait:
            self.wait_up(proc)
        return proc

    def wait_up(self, proc: Proc, timeout: float = 30) -> None:
        if not wait_until(lambda: proc.socket.exists() or proc.process.poll() is not None,
                          timeout):  # fmt: skip
            raise AssertionError(f"{proc.name} did not come up:\n{proc.output()}")
        if proc.process.poll() is not None:
            raise AssertionError(f"{proc.name} exited {proc.process.returncode}:\n{proc.output()}")

    def node_status(self, proc: Proc) -> dict[str, Any]:
        return call_socket(proc.socket, "GET", "/v1/status")

    def peer_ids(self, proc: Proc) -> set[str]:
        return {p["node_id"] for p in self.node_status(proc)["peers"] if p["node_id"]}

    def address_of(self, proc: Proc) -> str:
        return self.node_status(proc)["addresses"][0]

    def probe(self, proc: Proc, address: str, port: int = 7701, timeout: float = 5) -> Any:
        return call_socket(
            proc.socket, "GET", f"/v1/probe?address={address}&port={port}&timeout={timeout}",
            timeout=timeout + 5,
        )  # fmt: skip

    def wait_peers(self, proc: Proc, expected: set[str], timeout: float = 10) -> float:
        """Seconds until ``proc``'s peers are exactly ``expected`` (AssertionError if never)."""
        start = time.monotonic()
        seen: set[str] = set()

        def matches() -> bool:
            nonlocal seen
            seen = self.peer_ids(proc)
            return seen == expected

        if not wait_until(matches, timeout, interval=0.02):
            raise AssertionError(f"{proc.name}: peers {sorted(seen)}, expected {sorted(expected)}")
        return time.monotonic() - start

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc.process)


@contextlib.contextmanager
def mesh_lab(coordinator_toml: str = "") -> Iterator[MeshLab]:
    """A MeshLab in a directory of its own, removed with every process the lab started.
    Not under pytest's tmp_path: its parents are 0700 root, closed to user nobody."""
    root = Path(tempfile.mkdtemp(prefix="pyralog-mesh-"))
    os.chmod(root, 0o755)
    lab = MeshLab(root, coordinator_toml=coordinator_toml)
    try:
        yield lab
    finally:
        lab.close()
        shutil.rmtree(root, ignore_errors=True)
