"""Identity is authorization: from a connection's mesh source address to who it is.

WireGuard accepts a packet only from the peer whose allowed IPs hold its source address,
so on a mesh socket the peer address names a member. The agent keeps this directory of
the members this node may see (pushed by the coordinator with its peers), and services
ask it: ``lookup(address)`` gives (node id, role), ``permits(address, port)`` applies the
cluster's role policy to a connection to this node. Unknown addresses are refused.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from pyralog.mesh.policy import Policy


@dataclass(frozen=True)
class Member:
    node_id: str
    role: str
    region: str | None
    public_key: str


class Directory:
    def __init__(self) -> None:
        self._by_address: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, Member] = {}
        self.policy = Policy.default()
        self.own_role = "node"

    def update(self, members: list[dict[str, Any]], policy: Policy, own_role: str) -> None:
        table = {}
        for m in members:
            table[ipaddress.ip_address(m["address"])] = Member(
                m["node_id"], m["role"], m.get("region"), m["public_key"]
            )
        self._by_address, self.policy, self.own_role = table, policy, own_role

    def lookup(self, address: str) -> Member | None:
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            return None
        return self._by_address.get(ip)

    def may_forward(self, source: bytes, destination: bytes) -> bool:
        """May a hub pass a packet between these two members (packed addresses)? Only
        between members whose roles the policy links: a client's route through a hub
        reaches the nodes it may, never another client."""
        a = self._by_address.get(ipaddress.ip_address(source))
        b = self._by_address.get(ipaddress.ip_address(destination))
        return a is not None and b is not None and self.policy.linked(a.role, b.role)

    def permits(self, address: str, port: int) -> bool:
        """May the member at ``address`` open ``port`` on this node?"""
        member = self.lookup(address)
        return member is not None and self.policy.permits(member.role, self.own_role, port)
