"""The cross-platform configuration protocol (UAPI) that ``wg`` speaks to userspace daemons.

Requests are ``get=1`` or ``set=1`` followed by ``key=value`` lines and a blank line; the
reply ends with ``errno=N`` and a blank line, N being 0 or a negated errno (as
wireguard-go writes it, and as ``wg`` expects). See https://www.wireguard.com/xplatform/.

Unlike wireguard-go, a ``set`` here is atomic: the whole request is parsed and checked
before anything changes, so invalid input gets its errno and leaves the device exactly
as it was. This module is pure text processing: ``parse_set`` turns text into the control
path's ``SetRequest`` and ``pyralog.link.control.apply`` applies it to a Device and an
``Interface`` (the link, owner of the listening port and fwmark); the socket server lives
in ``uapi_server``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from pyralog.link.control import (
    ConfigChangeError,
    Interface,
    PeerChange,
    SetRequest,
    invalid,
)
from pyralog.link.control import apply as apply_change
from pyralog.wireguard import endpoint
from pyralog.wireguard.device import Device
from pyralog.wireguard.endpoint import Endpoint, format_endpoint
from pyralog.wireguard.keys import (
    PresharedKey,
    PrivateKey,
    PublicKey,
    is_low_order,
)

MAX_REQUEST_BYTES = 16 * 1024 * 1024  # generous: 10,000 peers with a few prefixes each

UapiError = ConfigChangeError  # a request that cannot be applied; ``code`` is a positive errno

__all__ = [
    "MAX_REQUEST_BYTES",
    "Interface",
    "PeerChange",
    "SetRequest",
    "UapiError",
    "format_endpoint",
    "format_get",
    "handle_request",
    "parse_endpoint",
    "parse_set",
]


def _hex_key(value: str, what: str) -> bytes:
    if len(value) != 64:
        raise invalid(f"{what} must be 64 hex characters, got {len(value)}")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise invalid(f"{what} is not hexadecimal") from None


def _true(key: str, value: str) -> bool:
    if value != "true":
        raise invalid(f"{key} only accepts 'true', got {value!r}")
    return True


def _int(key: str, value: str, low: int, high: int) -> int:
    if not value.isdigit():
        raise invalid(f"{key} must be a number, got {value!r}")
    n = int(value)
    if not low <= n <= high:
        raise invalid(f"{key} must be within {low}..{high}, got {n}")
    return n


def parse_endpoint(value: str) -> Endpoint:
    """``1.2.3.4:51820`` or ``[2001:db8::1]:51820`` (optionally ``%scope``) -> (host, port),
    in the canonical spelling the UDP layer reports sources in."""
    try:
        return endpoint.parse_endpoint(value)
    except endpoint.EndpointError as e:
        raise invalid(str(e)) from None


def parse_set(lines: list[str]) -> SetRequest:
    """Parse the body of a ``set=1`` request (without the blank terminator)."""
    req = SetRequest()
    peer: PeerChange | None = None
    for number, line in enumerate(lines, 1):
        key, sep, value = line.partition("=")
        if not sep:
            raise invalid(f"line {number}: expected key=value, got {line!r}")
        if key == "public_key":
            raw = _hex_key(value, "public_key")
            if is_low_order(raw):
                raise invalid(f"line {number}: public_key is not a usable Curve25519 key")
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
                raise invalid(f"line {number}: unknown interface key {key!r}")
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
                raise invalid(f"line {number}: allowed_ip {value!r} is not ADDRESS/CIDR") from None
        elif key == "protocol_version":
            if value != "1":
                raise invalid(f"line {number}: protocol_version {value!r} is not supported")
        else:
            raise invalid(f"line {number}: unknown peer key {key!r}")
    return req


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
                raise invalid("get=1 takes no arguments")
            text = "".join(f"{line}\n" for line in format_get(device, interface))
            return text + "errno=0\n\n", None
        if op == "set=1":
            apply_change(device, interface, parse_set(body), now)
            return "errno=0\n\n", None
        raise invalid(f"unknown operation {op!r}")
    except UapiError as e:
        return f"errno={-e.code}\n\n", e
