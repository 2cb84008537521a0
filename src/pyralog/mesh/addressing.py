"""Mesh addresses from node ids: deterministic, stable, never silently shared.

A node's address inside the cluster's CIDR comes from its id alone, so it is the same on
every coordinator and on every restart:

- a numeric id N names host N of the network (``10.0.0.0/24``: node ``3`` is
  ``10.0.0.3``), as the product document's examples number their nodes;
- any other id is hashed (BLAKE2s) to a host index.

If that address is taken (another id hashed there, or a numeric id already used), the
next free host is used, wrapping round. The caller, the coordinator, passes the
addresses already assigned and persists what it gets back: derivation picks an address
once, and the store keeps it from then on (a later collision moves the newcomer, never
an existing node). Network and broadcast addresses, and any ``reserved`` ones (the
coordinator's own), are never handed out. Sans-IO: no store, no clock.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Collection

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressError(ValueError):
    """No address can be given; the message says why."""


def _host_range(network: Network) -> tuple[int, int]:
    """(first, count) of the assignable host offsets within ``network``."""
    size = network.num_addresses
    if isinstance(network, ipaddress.IPv4Network) and network.prefixlen < 31:
        return 1, size - 2  # not the network or broadcast address
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen < 127:
        return 1, size - 1  # not the subnet-router anycast address
    return 0, size


def preferred_offset(node_id: str, network: Network) -> int:
    """The host offset node ``node_id`` gets when nothing is in its way."""
    first, count = _host_range(network)
    if count <= 0:
        raise AddressError(f"{network} has no host addresses")
    if node_id.isdigit() and first <= int(node_id) < first + count:
        return int(node_id)
    digest = hashlib.blake2s(node_id.encode(), digest_size=16, person=b"pyr-addr").digest()
    return first + int.from_bytes(digest, "big") % count


def derive_address(
    node_id: str,
    network: Network,
    taken: Collection[Address] = (),
    reserved: Collection[Address] = (),
) -> Address:
    """The address for ``node_id``: its preferred one, else the next free one."""
    if not node_id or not node_id.strip():
        raise AddressError("a node id cannot be empty")
    first, count = _host_range(network)
    start = preferred_offset(node_id, network)
    unavailable = set(taken) | set(reserved)
    base = int(network.network_address)
    # Linear probing from the preferred offset; bounded by the number of used addresses,
    # so a nearly empty /8 costs nothing and a full /24 is detected, not looped on.
    for step in range(min(count, len(unavailable) + 1)):
        offset = first + (start - first + step) % count
        candidate = ipaddress.ip_address(base + offset)
        if candidate not in unavailable:
            return candidate
    raise AddressError(f"no free address left in {network} for node {node_id!r}")
