"""Talking to a userspace WireGuard daemon's UAPI socket (pyralog-wg, wireguard-go).

``format_set`` is the inverse of ``uapi.parse_set``: one ``SetRequest`` becomes one
``set=1`` exchange, which the daemon applies atomically. ``UapiClient.peers`` parses
``get=1``. Calls are blocking local socket round trips with a timeout; async callers run
them in a thread.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

from pyralog.link.control import ConfigChangeError, SetRequest
from pyralog.wireguard.endpoint import format_endpoint
from pyralog.wireguard.keys import PresharedKey, PublicKey

TIMEOUT = 5.0


def format_set(req: SetRequest) -> Iterator[str]:
    if req.clear_private_key:
        yield f"private_key={bytes(32).hex()}"
    elif req.private_key is not None:
        yield f"private_key={req.private_key.raw.hex()}"
    if req.listen_port is not None:
        yield f"listen_port={req.listen_port}"
    if req.fwmark is not None:
        yield f"fwmark={req.fwmark}"
    if req.replace_peers:
        yield "replace_peers=true"
    for peer in req.peers:
        yield f"public_key={peer.public_key.raw.hex()}"
        if peer.remove:
            yield "remove=true"
            continue
        if peer.update_only:
            yield "update_only=true"
        if peer.preshared_key is not None:
            yield f"preshared_key={peer.preshared_key.raw.hex()}"
        if peer.endpoint is not None:
            yield f"endpoint={format_endpoint(peer.endpoint)}"
        if peer.persistent_keepalive is not None:
            yield f"persistent_keepalive_interval={peer.persistent_keepalive}"
        if peer.replace_allowed_ips:
            yield "replace_allowed_ips=true"
        for network in peer.allowed_ips:
            yield f"allowed_ip={network}"


@dataclass
class UapiPeer:
    public_key: PublicKey
    endpoint: tuple[str, int] | None = None
    allowed_ips: list[str] = field(default_factory=list)
    last_handshake: float | None = None
    rx_bytes: int = 0
    tx_bytes: int = 0
    persistent_keepalive: int = 0
    preshared_key: PresharedKey | None = None  # None: none set (the daemon says zeros)


class UapiClient:
    def __init__(self, path: str) -> None:
        self.path = path

    def _exchange(self, request: str) -> tuple[list[str], int]:
        """The answer's lines (without the errno trailer) and its errno value."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(TIMEOUT)
            try:
                s.connect(self.path)
            except OSError as e:
                message = f"cannot reach the UAPI socket {self.path}: {e.strerror}"
                raise OSError(e.errno, message) from None
            s.sendall(request.encode())
            data = b""
            while not data.endswith(b"\n\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        lines = data.decode().splitlines()
        status = next((line for line in reversed(lines) if line.startswith("errno=")), None)
        if status is None:
            raise OSError(errno.EIO, f"{self.path}: the daemon closed without an answer")
        code = int(status.partition("=")[2])
        return [line for line in lines if line and not line.startswith("errno=")], code

    def set(self, req: SetRequest) -> None:
        body = "".join(line + "\n" for line in format_set(req))
        _, code = self._exchange("set=1\n" + body + "\n")
        if code != 0:
            raise ConfigChangeError(
                abs(code), f"{self.path}: the daemon refused the change (errno {code})"
            )

    def get(self) -> list[str]:
        """The lines of ``get=1`` (OSError if the socket fails or the daemon refuses)."""
        lines, code = self._exchange("get=1\n\n")
        if code != 0:
            raise OSError(abs(code), f"{self.path}: get=1 answered errno={code}")
        return lines

    def peers(self) -> list[UapiPeer]:
        peers: list[UapiPeer] = []
        peer: UapiPeer | None = None
        sec = nsec = 0
        for line in self.get():
            key, _, value = line.partition("=")
            if key == "public_key":
                peer = UapiPeer(PublicKey(bytes.fromhex(value)))
                peers.append(peer)
                sec = nsec = 0
            elif peer is None:
                continue
            elif key == "endpoint":
                host, _, port = value.rpartition(":")
                peer.endpoint = (host.strip("[]"), int(port))
            elif key == "allowed_ip":
                peer.allowed_ips.append(value)
            elif key == "last_handshake_time_sec":
                sec = int(value)
            elif key == "last_handshake_time_nsec":
                nsec = int(value)
                peer.last_handshake = sec + nsec / 1e9 if sec or nsec else None
            elif key == "rx_bytes":
                peer.rx_bytes = int(value)
            elif key == "tx_bytes":
                peer.tx_bytes = int(value)
            elif key == "persistent_keepalive_interval":
                peer.persistent_keepalive = int(value)
            elif key == "preshared_key" and value.strip("0"):
                peer.preshared_key = PresharedKey(bytes.fromhex(value))
        return peers
