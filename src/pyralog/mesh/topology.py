"""Which peers a member holds, and which addresses each peer carries: a pure function.

- ``full-mesh``: every member peers with every member it is linked with by policy, each
  carrying its own address.
- ``hub-and-spoke``: hubs (members with role ``gateway`` or listed in ``hubs``) peer with
  everyone; a spoke peers only with hubs, and its first hub (by node id) carries the
  whole mesh network, so spoke-to-spoke traffic goes through it (the hub forwards).
- ``regions``: a member peers with the members of its region; gateways (role
  ``gateway``) also peer with the other regions' gateways, and the first gateway of each
  region carries that region's network, for its own region's members (every other
  region) and for other regions' gateways (its region).

The coordinator (``Coordinator``) is a peer of every node and gateway (its API carries
membership) and of clients and admins the policy lets reach it. WireGuard's longest-prefix
match lets a /32 peer sit inside a network another peer carries.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from pyralog.mesh.model import NodeRecord
from pyralog.mesh.policy import MeshSettings

AGENT_ROLES = ("node", "gateway")  # members that run the agent (they need the coordinator)


@dataclass(frozen=True)
class Coordinator:
    public_key: str
    address: str
    endpoints: tuple[str, ...]


@dataclass(frozen=True)
class PeerSpec:
    node_id: str  # "coordinator" for the coordinator
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    role: str

    def to_json(self) -> dict[str, object]:
        return {
            "node_id": self.node_id,
            "public_key": self.public_key,
            "endpoint": self.endpoint,
            "allowed_ips": list(self.allowed_ips),
            "role": self.role,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> PeerSpec:
        return cls(
            str(data["node_id"]),
            str(data["public_key"]),
            None if data.get("endpoint") is None else str(data["endpoint"]),
            tuple(str(a) for a in data["allowed_ips"]),  # type: ignore[attr-defined]
            str(data["role"]),
        )


def host_network(address: str) -> str:
    ip = ipaddress.ip_address(address)
    return f"{ip}/{ip.max_prefixlen}"


def _spec(member: NodeRecord, allowed: Sequence[str]) -> PeerSpec:
    endpoint = member.endpoints[0] if member.endpoints else None
    return PeerSpec(member.node_id, member.public_key, endpoint, tuple(allowed), member.role)


def is_hub(member: NodeRecord, settings: MeshSettings) -> bool:
    return member.role == "gateway" or member.node_id in settings.hubs


def peers_for(
    me: NodeRecord,
    members: Sequence[NodeRecord],
    settings: MeshSettings,
    coordinator: Coordinator | None,
) -> list[PeerSpec]:
    """The peers ``me`` should hold, in node-id order, the coordinator first."""
    policy = settings.policy
    others = sorted(
        (m for m in members if m.node_id != me.node_id and m.public_key != me.public_key),
        key=lambda m: m.node_id,
    )
    linked = [m for m in others if policy.linked(me.role, m.role)]
    specs: list[PeerSpec] = []
    if coordinator is not None and (
        me.role in AGENT_ROLES or policy.reaches(me.role, "coordinator")
    ):
        specs.append(
            PeerSpec(
                "coordinator",
                coordinator.public_key,
                coordinator.endpoints[0] if coordinator.endpoints else None,
                (host_network(coordinator.address),),
                "coordinator",
            )
        )
    if settings.topology == "hub-and-spoke":
        specs += _hub_and_spoke(me, linked, settings)
    elif settings.topology == "regions":
        specs += _regions(me, linked, settings)
    else:
        specs += [_spec(m, [host_network(m.address)]) for m in linked]
    return specs


def _hub_and_spoke(
    me: NodeRecord, linked: Sequence[NodeRecord], settings: MeshSettings
) -> list[PeerSpec]:
    if is_hub(me, settings):
        return [_spec(m, [host_network(m.address)]) for m in linked]
    hubs = [m for m in linked if is_hub(m, settings)]
    specs = []
    for i, hub in enumerate(hubs):
        allowed = [str(settings.network)] if i == 0 else [host_network(hub.address)]
        specs.append(_spec(hub, allowed))
    return specs


def _regions(
    me: NodeRecord, linked: Sequence[NodeRecord], settings: MeshSettings
) -> list[PeerSpec]:
    mine = me.region
    gateways: dict[str | None, list[NodeRecord]] = {}
    for m in linked:
        if m.role == "gateway":
            gateways.setdefault(m.region, []).append(m)
    other_regions = [net for name, net in sorted(settings.regions.items()) if name != mine]
    specs = []
    for m in linked:
        allowed = [host_network(m.address)]
        if m.region == mine:
            # Our region's first gateway carries every other region's network for us
            # (a gateway itself reaches other regions through their own gateways).
            if m.role == "gateway" and me.role != "gateway" and m is gateways[mine][0]:
                allowed += [str(net) for net in other_regions]
            specs.append(_spec(m, allowed))
        elif me.role == "gateway" and m.role == "gateway":
            if m is gateways[m.region][0] and m.region in settings.regions:
                allowed = [str(settings.regions[m.region]), *allowed[1:]]
            specs.append(_spec(m, allowed))
    return specs
