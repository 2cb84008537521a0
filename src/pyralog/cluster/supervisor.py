"""The supervisor of ``pyralog up``: starts the coordinator and the nodes, enrolls the
nodes, watches them, restarts the ones that die, stops them all.

Each child is an ordinary ``pyralog coordinator`` or ``pyralog node`` process (on this
interpreter: ``python -m pyralog``), in its own directory with its own log, in its own
session (a Ctrl-C reaches the supervisor only, which stops the nodes before the
coordinator, so nothing is half-stopped), and with PR_SET_PDEATHSIG so that a supervisor
killed with ``kill -9`` takes its children with it rather than leaving them holding the
cluster's ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from pyralog.cluster.layout import ClusterDir, Manifest
from pyralog.cluster.restarts import Restarts, exit_text
from pyralog.cluster.status import Known, Snapshot, gather
from pyralog.mesh import http
from pyralog.mesh.keyfile import KeyFileError, write_secret

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
PR_SET_PDEATHSIG = 1


class StartError(Exception):
    """The cluster could not start; the message says which part and why."""


def _die_with_parent() -> None:
    # Runs in the child between fork and exec.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def child_environment() -> dict[str, str]:
    """Ours, without the variables that override a node's config (PYRALOG_NODE_ID and
    friends): the cluster's files say who each node is."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYRALOG_", "DLOG_"))}


def ports_in_use(manifest: Manifest) -> list[str]:
    """The cluster's UDP ports something else holds now, as "51901 (node-1)"."""
    taken = []
    for who, port in manifest.ports().items():
        for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    s.bind((host, port))
                except OSError as e:
                    if e.errno == 98:  # EADDRINUSE; no IPv6 at all is not our business
                        taken.append(f"{port} ({who})")
                        break
    return taken


def free_range(kind: int, count: int, start: int) -> int:
    """The first base port from ``start`` with ``count`` consecutive free ports."""
    for base in range(start, 65000, count + 1):
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket(socket.AF_INET, kind)
                socks.append(s)
                if kind == socket.SOCK_STREAM:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("0.0.0.0" if kind == socket.SOCK_DGRAM else "127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise OSError(f"no {count} consecutive free ports above {start}")


def last_lines(path: Any, n: int = 3) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


class Supervisor:
    def __init__(self, cdir: ClusterDir, manifest: Manifest, *,
                 say: Callable[[str], None], restart_delay: float = 3.0) -> None:  # fmt: skip
        self.cdir = cdir
        self.manifest = manifest
        self.say = say
        self.restarts = Restarts(delay=restart_delay)
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self.stopping = False
        self.snapshot = Snapshot()
        self.known = Known.from_json((cdir.read_state() or {}).get("known"))

    # -- children ---------------------------------------------------------------------------

    def _argv(self, name: str) -> list[str]:
        if name == "coordinator":
            return [sys.executable, "-m", "pyralog", "coordinator", "--config", "coordinator.toml"]
        return [sys.executable, "-m", "pyralog", "node", "--config", "wireguard.toml"]

    async def _spawn(self, name: str) -> None:
        directory = self.cdir.coordinator if name == "coordinator" else self.cdir.node(name)
        sock = self.cdir.socket_of(name)
        sock.unlink(missing_ok=True)  # a killed child leaves its socket behind
        with open(self.cdir.log_of(name), "ab") as log:
            log.write(f"--- started by pyralog up at {time.ctime()}\n".encode())
            log.flush()
            proc = await asyncio.create_subprocess_exec(
                *self._argv(name), cwd=directory, stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=asyncio.subprocess.STDOUT, env=child_environment(),
                start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        self.procs[name] = proc
        self.restarts.started(name, time.monotonic())
        self._watchers[name] = asyncio.create_task(self._watch(name, proc))

    async def _watch(self, name: str, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self.procs.get(name) is not proc or self.stopping:
            return
        self.restarts.exited(name, time.monotonic(), code)
        child = self.restarts.child(name)
        what = f"{name} exited ({exit_text(code)})"
        if child.gave_up:
            self.say(f"{what}; not restarting it: {last_lines(self.cdir.log_of(name))}")
        elif child.restart_at is not None:
            self.say(f"{what}; restarting it in {child.restart_at - time.monotonic():.0f} s")

    async def _wait_socket(self, name: str, timeout: float) -> None:
        sock = self.cdir.socket_of(name)
        deadline = time.monotonic() + timeout
        while not sock.exists():
            proc = self.procs[name]
            if proc.returncode is not None:
                raise StartError(
                    f"{name} exited during start-up ({exit_text(proc.returncode)}): "
                    f"{last_lines(self.cdir.log_of(name))} (log: {self.cdir.log_of(name)})"
                )
            if time.monotonic() > deadline:
                raise StartError(f"{name} did not start within {timeout:.0f} s "
                                 f"(log: {self.cdir.log_of(name)})")  # fmt: skip
            await asyncio.sleep(0.05)

    async def _admin(self, method: str, path: str, body: Any = None) -> Any:
        sock = str(self.cdir.coordinator_socket)
        return await http.call(lambda: asyncio.open_unix_connection(sock), method, path, body,
                               timeout=15.0)  # fmt: skip

    # -- start ------------------------------------------------------------------------------

    async def start(self) -> None:
        taken = ports_in_use(self.manifest)
        if taken:
            raise StartError(
                f"UDP port {', '.join(taken)} in use by another program; the cluster's ports "
                f"are {self.manifest.port}-{self.manifest.port + self.manifest.nodes} "
                f"(set when it was created: {self.cdir.manifest_path})"
            )
        self.say(f"starting the coordinator (UDP {self.manifest.host}:{self.manifest.port})")
        await self._spawn("coordinator")
        await self._wait_socket("coordinator", 30)
        names = self.manifest.node_names()
        new = [n for n in names if not self.cdir.enrolled(n)]
        if new:
            token = await self._admin("POST", "/v1/tokens",
                                      {"role": "node", "reusable": True, "ttl": "15m"})  # fmt: skip
            self.say(f"join token {token['id']} for {', '.join(new)} (reusable, 15 minutes)")
            for name in new:
                self.cdir.write_node(self.manifest, name)
                self.cdir.write_token(name, token["token"])
        for name in names:
            how = "enrolling" if name in new else "starting"
            port = self.manifest.node_port(name)
            self.say(f"{how} {name} (embedded WireGuard, UDP {self.manifest.host}:{port})")
            await self._spawn(name)
        for name in names:
            await self._wait_socket(name, 30)
            status = await self._node_status(name)
            addr = ", ".join(status.get("addresses", [])) if status else "?"
            self.say(f"{name} is a mesh member at {addr}")
        await self._client_config()
        self.say(f"forming the log cluster (replication factor {self.manifest.replication_factor})")
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            await self.refresh()
            if self.snapshot.formed(self.manifest):
                break
            for name, proc in self.procs.items():
                if proc.returncode is not None and not self.restarts.child(name).running:
                    raise StartError(
                        f"{name} exited during start-up ({exit_text(proc.returncode)}): "
                        f"{last_lines(self.cdir.log_of(name))}"
                    )
            if time.monotonic() > deadline:
                missing = [n.name for n in self.snapshot.nodes if n.broker_id is None]
                raise StartError(
                    f"the log cluster did not form within {START_TIMEOUT_S:.0f} s "
                    f"(no replicated broker yet on {', '.join(missing) or 'none'}; "
                    f"controller {self.snapshot.controller}); see the nodes' process.log"
                )
            await asyncio.sleep(0.25)
        self.say(f"log cluster formed: {self.manifest.nodes} brokers, controller "
                 f"{self.snapshot.controller}")  # fmt: skip

    async def _node_status(self, name: str) -> Any:
        sock = str(self.cdir.node_socket(name))
        with contextlib.suppress(http.HttpError, OSError, TimeoutError):
            return await http.call(lambda: asyncio.open_unix_connection(sock), "GET",
                                   "/v1/status", timeout=5.0)  # fmt: skip
        return None

    async def _client_config(self) -> None:
        path = self.cdir.client_config
        if path.exists():
            return
        for name in ("you", *(f"you-{i}" for i in range(2, 10))):
            try:
                data = await self._admin("POST", "/v1/clients", {"name": name, "role": "admin"})
            except http.HttpError as e:
                if e.status == 409:
                    continue
                raise StartError(f"cannot add the admin client: {e.message}") from None
            try:
                write_secret(path, data["wg_quick"].rstrip("\n"))
            except KeyFileError as e:
                raise StartError(str(e)) from None
            self.say(f"client config for {data['node_id']} at {data['address']}: {path}")
            return
        raise StartError("cannot add the admin client: names you .. you-9 are all taken")

    # -- running ----------------------------------------------------------------------------

    def states(self) -> tuple[dict[str, str], dict[str, int]]:
        now = time.monotonic()
        names = ["coordinator", *self.manifest.node_names()]
        states = {n: self.restarts.describe(n, now) for n in names}
        pids = {n: p.pid for n, p in self.procs.items() if p.returncode is None}
        return states, pids

    async def refresh(self) -> Snapshot:
        states, pids = self.states()
        self.snapshot = await gather(self.cdir, self.manifest, states, pids, self.known)
        with contextlib.suppress(OSError):
            self.cdir.write_state({
                "supervisor": os.getpid(), "updated": time.time(), "states": states,
                "pids": pids, "snapshot": self.snapshot.to_json(), "known": self.known.to_json(),
            })  # fmt: skip
        return self.snapshot

    async def run(self, stop: asyncio.Event, tick: Callable[[Snapshot], None]) -> None:
        """Until ``stop``: restart what died when its time comes, refresh the status."""
        while not stop.is_set():
            for name in self.restarts.due(time.monotonic()):
                self.say(f"restarting {name}")
                await self._spawn(name)
            tick(await self.refresh())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    # -- stop -------------------------------------------------------------------------------

    async def stop(self) -> None:
        """The nodes first (their brokers leave cleanly while the coordinator still
        answers), then the coordinator; SIGKILL for whoever outstays STOP_TIMEOUT_S."""
        self.stopping = True
        nodes = [n for n in self.manifest.node_names() if n in self.procs]
        for group in (nodes, ["coordinator"]):
            running = [n for n in group if n in self.procs and self.procs[n].returncode is None]
            if not running:
                continue
            self.say(f"stopping {', '.join(running)}")
            for name in running:
                with contextlib.suppress(ProcessLookupError):
                    self.procs[name].send_signal(signal.SIGTERM)
            waits = [self.procs[n].wait() for n in running]
            try:
                await asyncio.wait_for(asyncio.gather(*waits), STOP_TIMEOUT_S)
            except TimeoutError:
                for name in running:
                    if self.procs[name].returncode is None:
                        self.say(f"{name} did not stop in {STOP_TIMEOUT_S:.0f} s: killing it")
                        with contextlib.suppress(ProcessLookupError):
                            self.procs[name].kill()
                await asyncio.gather(*(self.procs[n].wait() for n in running))
        for task in self._watchers.values():
            task.cancel()
        await asyncio.gather(*self._watchers.values(), return_exceptions=True)
        if not self.procs:
            return
        states, _ = self.states()
        with contextlib.suppress(OSError):  # what the next start and `status` show
            self.cdir.write_state({"states": states, "pids": {}, "known": self.known.to_json()})
