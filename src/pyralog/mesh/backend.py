"""A node's WireGuard backend, whichever runs it: the seam between the mesh and WireGuard.

The agent changes peers only through ``Backend.apply`` (one atomic ``SetRequest``, the
link's control path) and reads them back with ``Backend.peers``; services above use
``Backend.network`` (``pyralog.net.Network``) and never learn which backend it is.

Three implementations, picked by ``[wireguard] backend`` (``choose`` explains ``auto``):
``embedded`` (the in-process Device and netstack; no privileges),
``userspace`` (a TUN interface run by ``pyralog-wg``, configured over its UAPI socket),
``kernel`` (the kernel's WireGuard module, configured over netlink with pyroute2).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pyralog.link.control import PeerChange, SetRequest
from pyralog.net.api import Network
from pyralog.wireguard.endpoint import Endpoint
from pyralog.wireguard.keys import PresharedKey, PrivateKey, PublicKey

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class BackendError(Exception):
    """A backend that cannot start or take a change; the message says why."""


@dataclass(frozen=True)
class PeerStatus:
    public_key: PublicKey
    endpoint: Endpoint | None
    allowed_ips: tuple[str, ...]
    last_handshake: float | None  # wall-clock seconds; None: never
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int = 0


@dataclass(frozen=True)
class BackendSpec:
    """What every backend needs to come up."""

    private_key: PrivateKey
    addresses: tuple[IPInterface, ...]  # the node's mesh address(es), with the mesh prefix
    listen_port: int
    mtu: int
    interface_name: str
    routes: tuple[str, ...] = field(default=())  # extra CIDRs routed into the mesh


class Backend(Protocol):
    name: str

    @property
    def network(self) -> Network: ...

    @property
    def listen_port(self) -> int: ...

    async def apply(self, change: SetRequest) -> None:
        """Raises ``ConfigChangeError`` (nothing changed) or ``BackendError``."""
        ...

    async def rekey(self, peer: PublicKey) -> None: ...

    async def set_forwarding(
        self, on: bool, allow: Callable[[bytes, bytes], bool] | None = None
    ) -> None:
        """Route packets between peers (a hub or gateway does); ``allow(source,
        destination)`` may refuse some (the embedded backend applies it)."""
        ...

    async def peers(self) -> list[PeerStatus]: ...

    async def close(self) -> None: ...


GREETING_KEEPALIVE = 25  # seconds; set for a moment by ``rekey_request`` (see there)


def rekey_request(
    peer: PublicKey,
    endpoint: Endpoint | None,
    allowed_ips: Sequence[str],
    persistent_keepalive: int,
    preshared_key: PresharedKey | None = None,
) -> SetRequest:
    """ "Handshake now" for daemons that have no such command (UAPI, kernel netlink).

    Removing the peer and adding it back drops its session; adding it with a persistent
    keepalive makes the daemon send a keepalive at once (pyralog-wg, wireguard-go and
    the kernel all do when the interval goes from 0 to non-zero), and without a session
    that keepalive starts a handshake. A third change puts the peer's own interval back.
    One atomic set, keeping endpoint, allowed IPs and (if given) the preshared key."""
    again = PeerChange(
        peer,
        preshared_key=preshared_key,
        endpoint=endpoint,
        persistent_keepalive=persistent_keepalive or GREETING_KEEPALIVE,
        allowed_ips=list(allowed_ips),
    )
    changes = [PeerChange(peer, remove=True), again]
    if not persistent_keepalive:
        changes.append(PeerChange(peer, update_only=True, persistent_keepalive=0))
    return SetRequest(peers=changes)


def set_ip_forwarding(on: bool) -> None:
    """The host's IPv4 and IPv6 forwarding (a TUN or kernel hub's kernel forwards)."""
    value = b"1" if on else b"0"
    for path in ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"):
        try:
            with open(path, "wb") as f:
                f.write(value)
        except OSError:
            continue


def kernel_available() -> bool:
    return os.path.isdir("/sys/module/wireguard")


def can_create_interfaces() -> bool:
    """Whether this process may open /dev/net/tun and configure interfaces."""
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        return False
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 12))  # CAP_NET_ADMIN
    except OSError:
        return False
    return False


def choose(requested: str) -> tuple[str, str]:
    """(backend, why) for ``[wireguard] backend``."""
    if requested == "boringtun":
        return "userspace", "boringtun is a synonym of userspace (pyralog-wg)"
    if requested != "auto":
        return requested, "as configured"
    if kernel_available():
        return "kernel", "auto: /sys/module/wireguard exists"
    if can_create_interfaces():
        return "userspace", "auto: no kernel WireGuard module, but this process has CAP_NET_ADMIN"
    return "embedded", "auto: no kernel WireGuard module and no CAP_NET_ADMIN (runs unprivileged)"


async def start_backend(kind: str, spec: BackendSpec) -> Backend:
    if kind == "embedded":
        from pyralog.mesh.backend_embedded import EmbeddedBackend

        return await EmbeddedBackend.start(spec)
    if kind == "userspace":
        from pyralog.mesh.backend_userspace import UserspaceBackend

        return await UserspaceBackend.start(spec)
    if kind == "kernel":
        from pyralog.mesh.backend_kernel import KernelBackend

        return await KernelBackend.start(spec)
    raise BackendError(f"unknown backend {kind!r}")
