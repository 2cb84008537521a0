"""The one control path: an atomic, validated configuration change to a Device and its link.

``SetRequest`` carries what a UAPI ``set=1`` can say (private key, listen port, fwmark,
peers added, changed or removed, preshared keys, endpoints, allowed IPs, keepalives).
Every runtime applies it the same way, through ``Link.apply``: the UAPI socket of
pyralog-wg (``tunnel.uapi`` only parses text into a SetRequest), the embedded tunnel, and
the mesh agent pushing peer updates.

A change is atomic: ``apply`` checks the whole request first and changes nothing if any
part is wrong (``ConfigChangeError``, with an errno for UAPI and a message naming the
part); the listen port, the one change the OS can refuse, is made before anything else
and left as it was on failure. Sans-IO apart from that rebind, which the ``Interface``
(the link) performs.
"""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass, field
from typing import Protocol

from pyralog.wireguard.device import ConfigError, Device
from pyralog.wireguard.endpoint import Endpoint, EndpointError, canonical
from pyralog.wireguard.keys import (
    InvalidKeyError,
    PresharedKey,
    PrivateKey,
    PublicKey,
    is_low_order,
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigChangeError(Exception):
    """A change that cannot be applied; nothing was changed. ``code`` is a positive errno."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def invalid(message: str) -> ConfigChangeError:
    return ConfigChangeError(errno.EINVAL, message)


class Interface(Protocol):
    """The runtime side of a device: its UDP port and firewall mark (the Link)."""

    def listen_port(self) -> int: ...

    def set_listen_port(self, port: int) -> None:
        """Rebind; raise OSError(EADDRINUSE) if taken. Must leave the old binding on error."""

    def fwmark(self) -> int: ...

    def set_fwmark(self, mark: int) -> None: ...


@dataclass
class PeerChange:
    public_key: PublicKey
    remove: bool = False
    update_only: bool = False  # change the peer only if it exists; never add it
    preshared_key: PresharedKey | None = None
    endpoint: Endpoint | None = None
    persistent_keepalive: int | None = None
    replace_allowed_ips: bool = False
    allowed_ips: list[Network] = field(default_factory=list)


@dataclass
class SetRequest:
    private_key: PrivateKey | None = None
    clear_private_key: bool = False
    listen_port: int | None = None
    fwmark: int | None = None
    replace_peers: bool = False
    peers: list[PeerChange] = field(default_factory=list)


def validate(device: Device, req: SetRequest) -> None:
    """Everything ``apply`` could trip over, checked without changing anything. Normalizes
    programmatic input in place (allowed IPs given as text, endpoints in any spelling)."""
    if req.listen_port is not None and not 0 <= req.listen_port <= 65535:
        raise invalid(f"listen_port must be within 0..65535, got {req.listen_port}")
    if req.fwmark is not None and not 0 <= req.fwmark <= 0xFFFFFFFF:
        raise invalid(f"fwmark must be within 0..4294967295, got {req.fwmark}")
    new_private = req.private_key if not req.clear_private_key else None
    own_key = new_private or (None if req.clear_private_key else device.private_key)
    own_public = own_key.public_key if own_key else None
    for change in req.peers:
        key = change.public_key
        if is_low_order(key.raw):
            raise invalid(f"peer {key} is not a usable Curve25519 key")
        if own_public is not None and key == own_public and not change.remove:
            raise invalid(f"peer {key} is this interface's own public key")
        keepalive = change.persistent_keepalive
        if keepalive is not None and not 0 <= keepalive <= 65535:
            raise invalid(f"peer {key}: persistent keepalive must be 0..65535, got {keepalive}")
        if change.endpoint is not None:
            try:
                change.endpoint = canonical(change.endpoint[0], int(change.endpoint[1]))
            except (EndpointError, ValueError, TypeError, IndexError):
                raise invalid(
                    f"peer {key}: endpoint {change.endpoint!r} is not (IP, port)"
                ) from None
            if not 1 <= change.endpoint[1] <= 65535:
                raise invalid(f"peer {key}: endpoint port {change.endpoint[1]} is not 1-65535")
        networks: list[Network] = []
        for network in change.allowed_ips:
            try:
                networks.append(ipaddress.ip_network(network, strict=False))
            except (TypeError, ValueError):
                raise invalid(f"peer {key}: allowed IP {network!r} is not ADDRESS/CIDR") from None
        change.allowed_ips = networks


def apply(device: Device, interface: Interface, req: SetRequest, now: float) -> None:
    """Apply ``req`` whole, or raise ConfigChangeError and change nothing."""
    validate(device, req)
    # The listen port is the one change that can fail in the OS: do it first.
    if req.listen_port is not None and req.listen_port != interface.listen_port():
        try:
            interface.set_listen_port(req.listen_port)
        except OSError as e:
            raise ConfigChangeError(
                e.errno or errno.EIO, f"listen_port {req.listen_port}: {e}"
            ) from e
    try:
        if req.fwmark is not None:
            interface.set_fwmark(req.fwmark)
        if req.private_key is not None or req.clear_private_key:
            device.set_private_key(None if req.clear_private_key else req.private_key, now)
        if req.replace_peers:
            device.clear_peers(now)
        for change in req.peers:
            _apply_peer(device, change, now)
    except (ConfigError, InvalidKeyError) as e:
        # validate() should make this unreachable; report rather than half-apply silently.
        raise invalid(str(e)) from e
    except OSError as e:
        raise ConfigChangeError(e.errno or errno.EIO, str(e)) from e


def _apply_peer(device: Device, change: PeerChange, now: float) -> None:
    key = change.public_key
    if change.remove:
        device.remove_peer(key, now)
        return
    if device.get_peer(key) is None:
        if change.update_only:
            return
        # A new peer starts with its preshared key: no roll-over from "none" to it.
        device.add_peer(
            key,
            now,
            preshared_key=change.preshared_key,
            endpoint=change.endpoint,
            allowed_ips=change.allowed_ips,
            persistent_keepalive=change.persistent_keepalive or 0,
        )
        return
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
