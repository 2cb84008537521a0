"""Who may reach whom: the coordinator's topology and role policy, pushed to every member.

``[policy]`` in coordinator.toml maps a role to what it may reach: a role (any port) or
``ROLE:PORT[,PORT...]``. The target ``coordinator`` is the coordinator's API. A member
gets a WireGuard peer only for members its role may reach or that may reach it (WireGuard
is symmetric; the port half is for services: ``Policy.permits``), so a client holds no
path at all to another client. Topology (``full-mesh``, ``hub-and-spoke``, ``regions``)
is in ``pyralog.mesh.topology``; both travel as one ``MeshSettings`` through the store,
so a change reaches every member with the next membership push.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pyralog.mesh.model import ROLES

TOPOLOGIES = ("full-mesh", "hub-and-spoke", "regions")
TARGETS = (*ROLES, "coordinator")
ANY_PORT = None

DEFAULT_POLICY: dict[str, list[str]] = {
    "node": ["node", "gateway", "coordinator"],
    "gateway": ["node", "gateway", "coordinator"],
    "client": ["node:9092", "gateway:9092"],
    "admin": ["node", "gateway", "coordinator"],
}


class PolicyError(ValueError):
    """A policy or topology setting that cannot be used; the message names it."""


@dataclass(frozen=True)
class Rule:
    target: str
    ports: frozenset[int] | None  # None: any port


@dataclass(frozen=True)
class Policy:
    rules: Mapping[str, tuple[Rule, ...]]

    @classmethod
    def parse(cls, table: Mapping[str, Any], where: str = "[policy]") -> Policy:
        rules: dict[str, tuple[Rule, ...]] = {}
        for role, entries in table.items():
            if role not in ROLES:
                raise PolicyError(f"{where} {role}: not a role (expected {', '.join(ROLES)})")
            if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
                raise PolicyError(f"{where} {role}: expected an array of strings")
            rules[role] = tuple(_rule(f"{where} {role}", e) for e in entries)
        for role in ROLES:
            rules.setdefault(role, ())
        return cls(rules)

    @classmethod
    def default(cls) -> Policy:
        return cls.parse(DEFAULT_POLICY)

    def to_json(self) -> dict[str, list[str]]:
        return {
            role: [
                r.target
                if r.ports is None
                else f"{r.target}:{','.join(str(p) for p in sorted(r.ports))}"
                for r in rules
            ]
            for role, rules in self.rules.items()
        }

    def reaches(self, source: str, target: str) -> bool:
        return any(r.target == target for r in self.rules.get(source, ()))

    def permits(self, source: str, target: str, port: int) -> bool:
        """May a member with role ``source`` open ``port`` on one with role ``target``?"""
        return any(
            r.target == target and (r.ports is None or port in r.ports)
            for r in self.rules.get(source, ())
        )

    def linked(self, a: str, b: str) -> bool:
        """Do members with these roles need a WireGuard peer for each other?"""
        return self.reaches(a, b) or self.reaches(b, a)


def _rule(where: str, text: str) -> Rule:
    target, sep, ports = text.partition(":")
    if target not in TARGETS:
        raise PolicyError(f"{where}: {text!r}: {target!r} is not one of {', '.join(TARGETS)}")
    if not sep:
        return Rule(target, None)
    found: set[int] = set()
    for item in ports.split(","):
        if not item.strip().isdigit() or not 1 <= int(item) <= 65535:
            raise PolicyError(f"{where}: {text!r}: port {item!r} is not 1-65535")
        found.add(int(item))
    return Rule(target, frozenset(found))


@dataclass(frozen=True)
class MeshSettings:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    topology: str = "full-mesh"
    hubs: tuple[str, ...] = ()
    regions: Mapping[str, ipaddress.IPv4Network | ipaddress.IPv6Network] = field(
        default_factory=dict
    )
    policy: Policy = field(default_factory=Policy.default)

    def to_json(self) -> dict[str, Any]:
        return {
            "network": str(self.network),
            "topology": self.topology,
            "hubs": list(self.hubs),
            "regions": {name: str(net) for name, net in self.regions.items()},
            "policy": self.policy.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MeshSettings:
        return cls(
            ipaddress.ip_network(data["network"]),
            data["topology"],
            tuple(data["hubs"]),
            {name: ipaddress.ip_network(net) for name, net in data["regions"].items()},
            Policy.parse(data["policy"]),
        )

    def network_for(self, region: str | None) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """Where a member of ``region`` gets its address (its region's, else the mesh's)."""
        if region is not None and region in self.regions:
            return self.regions[region]
        return self.network
