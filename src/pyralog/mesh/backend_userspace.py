"""The userspace backend: a TUN interface run by ``pyralog-wg`` (or wireguard-go).

The node starts the daemon in the foreground as its child (``PYRALOG_WG_DAEMON`` names
another UAPI daemon, e.g. ``wireguard-go``), configures keys and peers over its UAPI
socket (``pyralog.tunnel.uapi_client``) and the interface's address, MTU and state with
pyroute2, and gives services a ``KernelNetwork`` bound to the interface. Closing stops
the daemon, which removes the interface.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from pyralog.link.control import PeerChange, SetRequest
from pyralog.mesh.backend import BackendError, BackendSpec, PeerStatus
from pyralog.net.kernel import KernelNetwork
from pyralog.net.peers import UAPI_DIR
from pyralog.tunnel.uapi_client import UapiClient
from pyralog.wireguard.keys import PublicKey

START_TIMEOUT = 10.0


def _daemon() -> list[str]:
    named = os.environ.get("PYRALOG_WG_DAEMON")
    if named:
        found = shutil.which(named)
        if found is None:
            raise BackendError(f"PYRALOG_WG_DAEMON={named}: not found")
        return [found, "-f"]
    local = Path(sys.executable).with_name("pyralog-wg")
    return [str(local) if local.exists() else "pyralog-wg", "-f"]


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


def _set_forwarding(on: bool) -> None:
    value = b"1" if on else b"0"
    for path in ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"):
        try:
            with open(path, "wb") as f:
                f.write(value)
        except OSError:
            continue


class UserspaceBackend:
    name = "userspace"

    def __init__(self, spec: BackendSpec, process: subprocess.Popen[bytes]) -> None:
        self.spec = spec
        self.process = process
        self.uapi = UapiClient(os.path.join(UAPI_DIR, f"{spec.interface_name}.sock"))
        self._network: KernelNetwork | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="uapi")

    @classmethod
    async def start(cls, spec: BackendSpec) -> UserspaceBackend:
        name = spec.interface_name
        if os.path.exists(f"/sys/class/net/{name}"):
            raise BackendError(f"interface {name} already exists (another node running?)")
        try:
            process = subprocess.Popen(
                [*_daemon(), name], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
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
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(self.uapi.path):
            if self.process.poll() is not None:
                err = (self.process.stderr.read() if self.process.stderr else b"").decode()
                last = err.strip().splitlines()[-1:] or ["no message"]
                raise BackendError(f"the WireGuard daemon exited: {last[0]}")
            if time.monotonic() > deadline:
                raise BackendError(f"no UAPI socket {self.uapi.path} after {START_TIMEOUT:g} s")
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
        # UAPI has no "handshake now": removing the peer and adding it back, in one
        # atomic set, drops its session, so the next packet starts a handshake at once.
        current = next((p for p in await self._run(self.uapi.peers) if p.public_key == peer), None)
        if current is None:
            return
        again = PeerChange(
            peer,
            endpoint=current.endpoint,
            persistent_keepalive=current.persistent_keepalive,
            allowed_ips=list(current.allowed_ips),
        )
        await self.apply(SetRequest(peers=[PeerChange(peer, remove=True), again]))

    async def set_forwarding(self, on: bool, allow: object = None) -> None:
        # The kernel forwards here; ``allow`` (the role policy) is not enforced on it.
        await self._run(_set_forwarding, on)

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
        if self.process.stderr is not None:
            self.process.stderr.close()
        self._pool.shutdown(wait=False)
        if os.path.exists(f"/sys/class/net/{self.spec.interface_name}"):
            subprocess.run(
                ["ip", "link", "del", self.spec.interface_name], capture_output=True, check=False
            )
