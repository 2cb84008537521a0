"""Who is behind a mesh address: cryptokey routing read back as ``address -> public key``.

WireGuard accepts a packet from a tunnel only if its source lies in the sending peer's
allowed IPs, so on a socket bound to the mesh interface the source address names the
peer. An in-process Device answers that itself (``Device.peer_for_address``, which the
embedded tunnel uses); ``UapiPeers`` reads it from any userspace daemon's UAPI socket
(pyralog-wg, wireguard-go), re-read when an address is not found or the copy is older
than ``ttl``.
"""

from __future__ import annotations

import ipaddress
import os
import time
from typing import Protocol

from pyralog.tunnel.uapi_client import UapiClient
from pyralog.wireguard.allowedips import AllowedIPs
from pyralog.wireguard.keys import PublicKey

UAPI_DIR = "/var/run/wireguard"
MISS_INTERVAL = 0.1  # seconds between re-reads prompted by unknown addresses


class PeerDirectory(Protocol):
    def peer_of(self, address: str) -> PublicKey | None: ...


def _packed(address: str) -> bytes | None:
    try:
        return ipaddress.ip_address(address.partition("%")[0]).packed
    except ValueError:
        return None


class CachedPeers:
    """A copy of an interface's ``allowed IP -> public key`` table, read by ``refresh``
    (a subclass's), again when older than ``ttl`` and on a miss at most every
    ``MISS_INTERVAL``. ``peer_of`` fails closed: a read that fails raises OSError."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._table: AllowedIPs[PublicKey] = AllowedIPs()
        self._read_at = -float("inf")

    def peer_of(self, address: str) -> PublicKey | None:
        packed = _packed(address)
        if packed is None:
            return None
        if time.monotonic() - self._read_at >= self.ttl:
            self.refresh()
        found = self._table.lookup(packed)
        # A miss re-reads (a peer may just have been added), but not more often than
        # MISS_INTERVAL: a stream of strangers must not turn into a stream of reads.
        if found is None and time.monotonic() - self._read_at >= MISS_INTERVAL:
            self.refresh()
            found = self._table.lookup(packed)
        return found

    def refresh(self) -> None:
        raise NotImplementedError

    def _replace(self, table: AllowedIPs[PublicKey]) -> None:
        self._table = table
        self._read_at = time.monotonic()


class UapiPeers(CachedPeers):
    """Peers of a userspace WireGuard interface, from ``get=1`` on its UAPI socket.

    ``peer_of`` fails closed: if the socket cannot be reached it raises OSError (naming
    the socket) rather than answering "no peer". The read is a local socket round trip,
    done in the caller's thread (a 2-second timeout bounds a daemon that hangs)."""

    def __init__(self, interface: str, *, uapi_dir: str = UAPI_DIR, ttl: float = 1.0) -> None:
        super().__init__(ttl)
        self.path = os.path.join(uapi_dir, f"{interface}.sock")

    def refresh(self) -> None:
        """Re-read the interface's peers (OSError if its UAPI socket cannot be reached)."""
        table: AllowedIPs[PublicKey] = AllowedIPs()
        for peer in UapiClient(self.path).peers():
            for network in peer.allowed_ips:
                table.insert(ipaddress.ip_network(network, strict=False), peer.public_key)
        self._replace(table)
