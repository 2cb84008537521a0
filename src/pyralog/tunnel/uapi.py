"""The cross-platform configuration protocol (UAPI) that ``wg`` speaks to userspace daemons.

Requests are ``get=1`` or ``set=1`` followed by ``key=value`` lines and a blank line; the
reply ends with ``errno=N`` and a blank line, N being 0 or a negated errno (as
wireguard-go writes it, and as ``wg`` expects). See https://www.wireguard.com/xplatform/.

Unlike wireguard-go, a ``set`` here is atomic: the whole request is parsed and checked
before anything changes, so invalid input gets its errno and leaves the device exactly
as it was. This module is pure text processing over a Device and an ``Interface``
(whatever owns the listening port and fwmark); the socket server lives in ``uapi_server``.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from pyralog.wireguard import endpoint
from pyralog.wireguard.device import ConfigError, Device
from pyralog.wireguard.endpoint import Endpoint, format_endpoint
from pyralog.wireguard.keys import (
    InvalidKeyError,
    PresharedKey,
    PrivateKey,
    PublicKey,
    is_low_order,
)

MAX_REQUEST_BYTES = 16 * 1024 * 1024  # generous: 10,000 peers with a few prefixes each


class UapiError(Exception):
    """A request that cannot be applied. ``code`` is a positive errno."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Interface(Protocol):
    """The runtime side of a device: its UDP port and firewall mark."""

    def listen_port(self) -> int: ...

    def set_listen_port(self, port: int) -> None:
        """Rebind; raise OSError(EADDRINUSE) if taken. Must leave the old binding on error."""

    def fwmark(self) -> int: ...

    def set_fwmark(self, mark: int) -> None: ...


def _invalid(message: str) -> UapiError:
    return UapiError(errno.EINVAL, message)


def _hex_key(value: str, what: str) -> bytes:
    if len(value) != 64:
        raise _invalid(f"{what} must be 64 hex characters, got {len(value)}")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise _invalid(f"{what} is not hexadecimal") from None


def _true(key: str, value: str) -> bool:
    if value != "true":
        raise _invalid(f"{key} only accepts 'true', got {value!r}")
    return True


def _int(key: str, value: str, low: int, high: int) -> int:
    if not value.isdigit():
        raise _invalid(f"{key} must be a number, got {value!r}")
    n = int(value)
    if not low <= n <= high:
        raise _invalid(f"{key} must be within {low}..{high}, got {n}")
    return n


def parse_endpoint(value: str) -> Endpoint:
    """``1.2.3.4:51820`` or ``[2001:db8::1]:51820`` (optionally ``%scope``) -> (host, port),
    in the canonical spelling the UDP layer reports sources in."""
    try:
        return endpoint.parse_endpoint(value)
    except endpoint.EndpointError as e:
        raise _invalid(str(e)) from None


@dataclass
class PeerChange:
    public_key: PublicKey
    remove: bool = False
    update_only: bool = False
    preshared_key: PresharedKey | None = None
    endpoint: tuple[str, int] | None = None
    persistent_keepalive: int | None = None
    replace_allowed_ips: bool = False
    allowed_ips: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)


@dataclass
class SetRequest:
    private_key: PrivateKey | None = None
    clear_private_key: bool = False
    listen_port: int | None = None
    fwmark: int | None = None
    replace_peers: bool = False
    peers: list[PeerChange] = field(default_factory=list)


def parse_set(lines: list[str]) -> SetRequest:
    """Parse the body of a ``set=1`` request (without the blank terminator)."""
    req = SetRequest()
    peer: PeerChange | None = None
    for number, line in enumerate(lines, 1):
        key, sep, value = line.partition("=")
        if not sep:
            raise _invalid(f"line {number}: expected key=value, got {line!r}")
        if key == "public_key":
            raw = _hex_key(value, "public_key")
            if is_low_order(raw):
                raise _invalid(f"line {number}: public_key is not a usable Curve25519 key")
            peer = PeerChange(PublicKey(raw))
            req.peers.append(peer)
        elif peer is None:
            if key == "private_key":
                raw = _hex_key(value, "private_key")
                if raw == bytes(32):
                    req.private_key, req.clear_private_key = None, True
                else:
                    req.private_key, req.clear_private_key = PrivateKey(raw), False
            elif key == "listen_port":
                req.listen_port = _int(key, value, 0, 65535)
            elif key == "fwmark":
                req.fwmark = 0 if value == "" else _int(key, value, 0, 0xFFFFFFFF)
            elif key == "replace_peers":
                req.replace_peers = _true(key, value)
            else:
                raise _invalid(f"line {number}: unknown interface key {key!r}")
        elif key == "remove":
            peer.remove = _true(key, value)
        elif key == "update_only":
            peer.update_only = _true(key, value)
        elif key == "preshared_key":
            peer.preshared_key = PresharedKey(_hex_key(value, "preshared_key"))
        elif key == "endpoint":
            peer.endpoint = parse_endpoint(value)
        elif key == "persistent_keepalive_interval":
            peer.persistent_keepalive = _int(key, value, 0, 65535)
        elif key == "replace_allowed_ips":
            peer.replace_allowed_ips = _true(key, value)
        elif key == "allowed_ip":
            try:
                peer.allowed_ips.append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                raise _invalid(f"line {number}: allowed_ip {value!r} is not ADDRESS/CIDR") from None
        elif key == "protocol_version":
            if value != "1":
                raise _invalid(f"line {number}: protocol_version {value!r} is not supported")
        else:
            raise _invalid(f"line {number}: unknown peer key {key!r}")
    return req


def apply_set(device: Device, interface: Interface, req: SetRequest, now: float) -> None:
    """Apply a parsed request. Everything that can fail is checked before the first change."""
    new_private = req.private_key if not req.clear_private_key else None
    own_key = new_private or (None if req.clear_private_key else device.private_key)
    own_public = own_key.public_key if own_key else None
    # Peers must not be ourselves, as the device would refuse mid-way.
    for change in req.peers:
        if own_public is not None and change.public_key == own_public and not change.remove:
            raise _invalid(f"peer {change.public_key} is this interface's own public key")
    # The listen port is the one change that can fail in the OS: do it first.
    if req.listen_port is not None and req.listen_port != interface.listen_port():
        try:
            interface.set_listen_port(req.listen_port)
        except OSError as e:
            raise UapiError(e.errno or errno.EIO, f"listen_port {req.listen_port}: {e}") from e
    try:
        if req.fwmark is not None:
            interface.set_fwmark(req.fwmark)
        if req.private_key is not None or req.clear_private_key:
            device.set_private_key(new_private, now)
        if req.replace_peers:
            device.clear_peers(now)
        for change in req.peers:
            _apply_peer(device, change, now)
    except (ConfigError, InvalidKeyError) as e:
        # Validation above should make this unreachable; report rather than half-apply silently.
        raise _invalid(str(e)) from e
    except OSError as e:
        raise UapiError(e.errno or errno.EIO, str(e)) from e


def _apply_peer(device: Device, change: PeerChange, now: float) -> None:
    key = change.public_key
    peer = device.get_peer(key)
    if change.remove:
        device.remove_peer(key, now)
        return
    if peer is None:
        if change.update_only:
            return
        device.add_peer(key, now)
    if change.preshared_key is not None:
        device.set_preshared_key(key, change.preshared_key, now)
    if change.endpoint is not None:
        device.set_endpoint(key, change.endpoint, now)
    if change.replace_allowed_ips:
        device.set_allowed_ips(key, change.allowed_ips)
    else:
        for network in change.allowed_ips:
            device.add_allowed_ip(key, network)
    if change.persistent_keepalive is not None:
        device.set_persistent_keepalive(key, change.persistent_keepalive, now)


def format_get(device: Device, interface: Interface) -> Iterator[str]:
    """The lines of a ``get=1`` reply, without the errno trailer."""
    if device.private_key is not None:
        yield f"private_key={device.private_key.raw.hex()}"
    port = interface.listen_port()
    if port:
        yield f"listen_port={port}"
    mark = interface.fwmark()
    if mark:
        yield f"fwmark={mark}"
    for peer in device.peers:
        yield f"public_key={peer.public_key.hex()}"
        yield f"preshared_key={peer.handshake.preshared_key.hex()}"
        yield "protocol_version=1"
        if peer.endpoint is not None:
            yield f"endpoint={format_endpoint(peer.endpoint)}"
        if peer.last_handshake is None:
            sec, nsec = 0, 0
        else:
            sec = int(peer.last_handshake)
            nsec = int((peer.last_handshake - sec) * 1_000_000_000)
        yield f"last_handshake_time_sec={sec}"
        yield f"last_handshake_time_nsec={nsec}"
        yield f"tx_bytes={peer.tx_bytes}"
        yield f"rx_bytes={peer.rx_bytes}"
        yield f"persistent_keepalive_interval={peer.persistent_keepalive}"
        for network in device.allowed_ips.entries(peer):
            yield f"allowed_ip={network}"


def handle_request(
    request: str, device: Device, interface: Interface, now: float
) -> tuple[str, UapiError | None]:
    """Answer one complete request (its text up to and including the blank line)."""
    lines = request.split("\n")
    # A request ends with "\n\n": drop the two empty strings the split leaves.
    while lines and lines[-1] == "":
        lines.pop()
    op, body = (lines[0], lines[1:]) if lines else ("", [])
    try:
        if op == "get=1":
            if body:
                raise _invalid("get=1 takes no arguments")
            text = "".join(f"{line}\n" for line in format_get(device, interface))
            return text + "errno=0\n\n", None
        if op == "set=1":
            apply_set(device, interface, parse_set(body), now)
            return "errno=0\n\n", None
        raise _invalid(f"unknown operation {op!r}")
    except UapiError as e:
        return f"errno={-e.code}\n\n", e
