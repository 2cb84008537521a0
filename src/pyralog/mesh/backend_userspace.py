"""The userspace backend: a TUN interface run by ``pyralog-wg`` (or wireguard-go).

The node starts the daemon in the foreground as its child (``PYRALOG_WG_DAEMON`` names
another UAPI daemon, e.g. ``wireguard-go``), configures keys and peers over its UAPI
socket (``pyralog.tunnel.uapi_client``) and the interface's address, MTU and state with
pyroute2, and gives services a ``KernelNetwork`` bound to the interface. What the
daemon logs goes on to the node's own log, line by line. Closing stops the daemon,
which removes the interface; so does the node's death, however it dies (the daemon is
started with a parent-death signal), so a killed node leaves no interface behind to
block its restart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO

from pyralog.link.control import SetRequest
from pyralog.mesh.backend import (
    BackendError,
    BackendSpec,
    PeerStatus,
    rekey_request,
    set_ip_forwarding,
)
from pyralog.net.kernel import KernelNetwork
from pyralog.net.peers import UAPI_DIR
from pyralog.tunnel.uapi_client import UapiClient
from pyralog.wireguard.keys import PublicKey

START_TIMEOUT = 10.0
PR_SET_PDEATHSIG = 1

try:  # loaded here, not in the forked child
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _die_with(parent: int) -> None:
    """Run in the daemon's child process before exec: SIGTERM when ``parent`` dies (the
    thread that forked; the node starts its daemon from the event loop's thread, which
    lives as long as the node). SIGTERM lets the daemon remove its interface."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the node died before the signal was armed
        os._exit(1)


def _daemon() -> list[str]:
    named = os.environ.get("PYRALOG_WG_DAEMON")
    if named:
        found = shutil.which(named)
        if found is None:
            raise BackendError(f"PYRALOG_WG_DAEMON={named}: not found")
        return [found, "-f"]
    local = Path(sys.executable).with_name("pyralog-wg")
    return [str(local) if local.exists() else "pyralog-wg", "-f"]


class DaemonLog:
    """Reads the daemon's output for as long as it runs: each line goes on to the node's
    stderr, and the last few are kept to say why the daemon stopped. Left unread, the
    pipe would fill (64 KiB: some 600 lines, and pyralog-wg in the foreground logs every
    peer change and handshake) and block the daemon, and the interface, on its next line."""

    KEPT = 20

    def __init__(self, stream: IO[bytes], name: str) -> None:
        self.last: deque[str] = deque(maxlen=self.KEPT)
        self._thread = threading.Thread(
            target=self._forward, args=(stream,), name=f"wg-log-{name}", daemon=True
        )
        self._thread.start()

    def _forward(self, stream: IO[bytes]) -> None:
        with stream:
            for raw in iter(stream.readline, b""):
                line = raw.decode(errors="replace").rstrip()
                if not line:
                    continue
                self.last.append(line)
                with contextlib.suppress(OSError, ValueError):  # our stderr gone: drain on
                    print(line, file=sys.stderr, flush=True)

    def finish(self, timeout: float = 2.0) -> None:
        """Wait for the rest of the output of a daemon that has exited."""
        self._thread.join(timeout)

    def reason(self) -> str:
        """The last line that says something (not a line of wireguard-go's boxed banner)."""
        said = [line for line in self.last if any(c.isalnum() for c in line)]
        return said[-1].strip() if said else "no message"


def _configure_link(spec: BackendSpec) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=spec.interface_name)
        if not found:
            raise BackendError(f"interface {spec.interface_name} vanished")
        index = found[0]
        ipr.link("set", index=index, mtu=spec.mtu)
        for address in spec.addresses:
            ipr.addr("add", index=index, address=str(address.ip), mask=address.network.prefixlen)
        ipr.link("set", index=index, state="up")
        for route in spec.routes:
            ipr.route("replace", dst=route, oif=index)


def _accepts(path: str) -> bool:
    """Whether the Unix socket at ``path`` takes a connection now."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


class UserspaceBackend:
    name = "userspace"

    def __init__(self, spec: BackendSpec, process: subprocess.Popen[bytes]) -> None:
        self.spec = spec
        self.process = process
        stream = process.stdout  # with its stderr
        self.log = None if stream is None else DaemonLog(stream, spec.interface_name)
        self.uapi = UapiClient(os.path.join(UAPI_DIR, f"{spec.interface_name}.sock"))
        self._network: KernelNetwork | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="uapi")

    @classmethod
    async def start(cls, spec: BackendSpec) -> UserspaceBackend:
        name = spec.interface_name
        if os.path.exists(f"/sys/class/net/{name}"):
            raise BackendError(f"interface {name} already exists (another node running?)")
        try:
            parent = os.getpid()
            process = subprocess.Popen(
                [*_daemon(), name],
                stdout=subprocess.PIPE,  # wireguard-go logs on stdout, pyralog-wg on stderr
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: _die_with(parent),
            )
        except OSError as e:
            raise BackendError(f"cannot start the WireGuard daemon: {e}") from None
        backend = cls(spec, process)
        try:
            await backend._wait_for_socket()
            await backend.apply(
                SetRequest(private_key=spec.private_key, listen_port=spec.listen_port)
            )
            await asyncio.get_running_loop().run_in_executor(backend._pool, _configure_link, spec)
            backend._network = await asyncio.get_running_loop().run_in_executor(
                backend._pool, KernelNetwork.for_interface, name
            )
        except BaseException:
            await backend.close()
            raise
        return backend

    async def _wait_for_socket(self) -> None:
        """Until the daemon's UAPI socket takes connections: a socket file may exist a
        moment before it listens (wireguard-go binds, then listens)."""
        deadline = time.monotonic() + START_TIMEOUT
        while not await asyncio.get_running_loop().run_in_executor(
            self._pool, _accepts, self.uapi.path
        ):
            if self.process.poll() is not None:
                why = "no message"
                if self.log is not None:
                    await asyncio.to_thread(self.log.finish)
                    why = self.log.reason()
                raise BackendError(f"the WireGuard daemon exited: {why}")
            if time.monotonic() > deadline:
                raise BackendError(
                    f"no UAPI socket taking connections at {self.uapi.path} after "
                    f"{START_TIMEOUT:g} s"
                )
            await asyncio.sleep(0.05)

    @property
    def network(self) -> KernelNetwork:
        if self._network is None:
            raise BackendError("the interface is not up")
        return self._network

    @property
    def listen_port(self) -> int:
        return self.spec.listen_port

    async def _run(self, fn, *args):  # type: ignore[no-untyped-def]
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def apply(self, change: SetRequest) -> None:
        await self._run(self.uapi.set, change)
        if self._network is not None:
            self._network.peers.refresh()  # type: ignore[attr-defined]

    async def rekey(self, peer: PublicKey) -> None:
        """Start a handshake with ``peer`` now (e.g. to greet peers after a restart):
        UAPI has no such command, see ``backend.rekey_request``. (A peer answers one
        initiation per 20 ms: a rekey right after a handshake is dropped as a flood, and
        then the peer has no session until WireGuard retries, 5 s later.)"""
        current = next((p for p in await self._run(self.uapi.peers) if p.public_key == peer), None)
        if current is None:
            return
        await self.apply(
            rekey_request(
                peer,
                current.endpoint,
                current.allowed_ips,
                current.persistent_keepalive,
                current.preshared_key,
            )
        )

    async def set_forwarding(self, on: bool, allow: object = None) -> None:
        # The kernel forwards here; ``allow`` (the role policy) is not enforced on it.
        await self._run(set_ip_forwarding, on)

    async def peers(self) -> list[PeerStatus]:
        found = await self._run(self.uapi.peers)
        return [
            PeerStatus(
                p.public_key,
                p.endpoint,
                tuple(p.allowed_ips),
                p.last_handshake,
                p.rx_bytes,
                p.tx_bytes,
                p.persistent_keepalive,
            )
            for p in found
        ]

    async def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.to_thread(self.process.wait), 5.0)
            except TimeoutError:
                self.process.kill()
                await asyncio.to_thread(self.process.wait)
        if self.log is not None:
            await asyncio.to_thread(self.log.finish)  # it closes the pipe at its end
        self._pool.shutdown(wait=False)
        if os.path.exists(f"/sys/class/net/{self.spec.interface_name}"):
            subprocess.run(
                ["ip", "link", "del", self.spec.interface_name], capture_output=True, check=False
            )
