"""The coordinator's membership logic over its store: tokens, enrollment, manual adds.

Every change is a compare-and-set on the store (``pyralog.mesh.store``), retried when
another coordinator sharing the store wrote first, so two coordinators on one etcd never
hand out one address twice, or one one-time token twice.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

from pyralog.mesh import token as tokens
from pyralog.mesh.addressing import AddressError, derive_address
from pyralog.mesh.model import (
    NodeRecord,
    RecordError,
    RevokedKey,
    TokenRecord,
    check_node_id,
    check_role,
)
from pyralog.mesh.policy import MeshSettings
from pyralog.mesh.store import Store
from pyralog.mesh.topology import Coordinator
from pyralog.wireguard.keys import InvalidKeyError, PublicKey

NODES = "nodes/"
TOKENS = "tokens/"
ADDRESSES = "addresses/"
KEYS = "keys/"  # hex public key -> node id: one key, one member, by compare-and-set
REVOKED = "revoked/"  # hex public key -> RevokedKey: never a member again
SETTINGS = "settings/mesh"
RETRIES = 20
MAX_TTL = 366 * 86400


class Conflict(Exception):
    """A request that contradicts the cluster's state (e.g. a public key already used by
    another node); the message says what."""


class UnknownNode(LookupError):
    """A request naming a member that does not exist (the API answers 404)."""


@dataclass(frozen=True)
class Identity:
    """The coordinator as members see it, and where tokens send them."""

    cluster_id: str
    coordinator: Coordinator
    api_port: int = 7700


def _key(text: object, what: str = "public key") -> str:
    try:
        return PublicKey.from_base64(str(text)).to_base64()
    except (InvalidKeyError, ValueError):
        raise RecordError(f"{what} {text!r} is not a base64 WireGuard public key") from None


class Registry:
    def __init__(self, store: Store, identity: Identity) -> None:
        self.store = store
        self.identity = identity

    # -- settings ---------------------------------------------------------------------------

    async def settings(self) -> MeshSettings:
        entry = await self.store.get(SETTINGS)
        if entry is None:
            raise Conflict("the cluster has no settings yet (the coordinator writes them)")
        return MeshSettings.from_json(json.loads(entry.value))

    async def publish_settings(self, settings: MeshSettings) -> bool:
        """Store ``settings`` if they differ from the stored ones; True if changed."""
        value = json.dumps(settings.to_json(), sort_keys=True).encode()
        for _ in range(RETRIES):
            entry = await self.store.get(SETTINGS)
            if entry is not None and entry.value == value:
                return False
            if await self.store.put(SETTINGS, value, expect=entry.version if entry else 0):
                return True
        raise Conflict("settings changed under us too often; try again")

    # -- members ----------------------------------------------------------------------------

    async def nodes(self) -> list[NodeRecord]:
        return [NodeRecord.from_json(e.value) for e in await self.store.scan(NODES)]

    async def node(self, node_id: str) -> NodeRecord | None:
        entry = await self.store.get(NODES + node_id)
        return NodeRecord.from_json(entry.value) if entry else None

    async def by_key(self, public_key: str) -> NodeRecord | None:
        for node in await self.nodes():
            if node.public_key == public_key:
                return node
        return None

    async def register(
        self,
        node_id: str,
        public_key: str,
        *,
        role: str,
        now: float,
        region: str | None = None,
        endpoints: Sequence[str] = (),
        token_id: str | None = None,
        state: str = "active",
        replace_key: bool = True,
        allow_revoked_key: bool = False,
    ) -> NodeRecord:
        """Add a member, or update one: the same key updates its endpoints; a new key
        for an existing id replaces the old key (re-enrollment) if ``replace_key``.
        The address is kept for an existing id, else derived and reserved. A revoked
        key is refused unless ``allow_revoked_key`` (an admin's explicit choice, which
        lifts the revocation)."""
        check_node_id(node_id)
        check_role(role)
        public_key = _key(public_key)
        if public_key == self.identity.coordinator.public_key:
            raise Conflict("that public key is the coordinator's own")
        revoked = await self.revocation(public_key)
        if revoked is not None and not allow_revoked_key:
            raise Conflict(
                f"public key {public_key} was revoked (node {revoked.node_id!r}, by "
                f"{revoked.revoked_by}); give --allow-revoked-key to admit it again"
            )
        settings = await self.settings()
        network = settings.network_for(region)
        for _ in range(RETRIES):
            nodes = await self.nodes()
            holder = next((n for n in nodes if n.public_key == public_key), None)
            if holder is not None and holder.node_id != node_id:
                raise Conflict(f"public key already belongs to node {holder.node_id!r}")
            entry = await self.store.get(NODES + node_id)
            old = NodeRecord.from_json(entry.value) if entry else None
            if old is not None and old.public_key != public_key and not replace_key:
                raise Conflict(f"node {node_id!r} exists with another public key")
            if old is not None and (old.role != role or old.region != region):
                raise Conflict(
                    f"node {node_id!r} exists as role {old.role!r} region {old.region!r}; "
                    "remove it first to change that"
                )
            claimed = await self._claim_key(public_key, node_id)
            if old is not None:
                record = NodeRecord(**{**old.__dict__})
                record.public_key = public_key
                record.endpoints = list(endpoints) or old.endpoints
                record.state = state if state == "active" else old.state
                record.updated_at = now
                record.token_id = token_id or old.token_id
            else:
                address = await self._reserve_address(node_id, network, nodes)
                record = NodeRecord(
                    node_id,
                    public_key,
                    address,
                    role=role,
                    region=region,
                    endpoints=list(endpoints),
                    state=state,
                    created_at=now,
                    updated_at=now,
                    token_id=token_id,
                )
            if await self.store.put(
                NODES + node_id, record.to_json(), expect=entry.version if entry else 0
            ):
                if old is not None and old.public_key != public_key:
                    await self.store.delete(KEYS + _hex(old.public_key))
                if revoked is not None:
                    await self.store.delete(REVOKED + _hex(public_key))
                return record
            if old is None:  # lost a race: give the address back and try again
                await self.store.delete(ADDRESSES + record.address)
            if claimed:
                await self.store.delete(KEYS + _hex(public_key))
        raise Conflict(f"node {node_id!r} changed under us too often; try again")

    async def _claim_key(self, public_key: str, node_id: str) -> bool:
        """Make ``public_key`` this node's in the store (True if this call claimed it);
        Conflict if another node holds it."""
        entry = await self.store.get(KEYS + _hex(public_key))
        if entry is not None:
            holder = entry.value.decode()
            if holder != node_id:
                raise Conflict(f"public key already belongs to node {holder!r}")
            return False
        if not await self.store.put(KEYS + _hex(public_key), node_id.encode(), expect=0):
            entry = await self.store.get(KEYS + _hex(public_key))
            holder = entry.value.decode() if entry else "?"
            if holder != node_id:
                raise Conflict(f"public key already belongs to node {holder!r}")
            return False
        return True

    async def _reserve_address(
        self, node_id: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network, nodes: list
    ) -> str:
        reserved = {ipaddress.ip_address(self.identity.coordinator.address)}
        for _ in range(RETRIES):
            taken = {
                ipaddress.ip_address(e.key.removeprefix(ADDRESSES))
                for e in await self.store.scan(ADDRESSES)
            }
            taken |= {ipaddress.ip_address(n.address) for n in nodes}
            try:
                address = str(derive_address(node_id, network, taken, reserved))
            except AddressError as e:
                raise Conflict(str(e)) from None
            if await self.store.put(ADDRESSES + address, node_id.encode(), expect=0):
                return address
        raise Conflict(f"could not reserve an address for {node_id!r}; try again")

    async def update_endpoints(self, node_id: str, endpoints: list[str], now: float) -> bool:
        for _ in range(RETRIES):
            entry = await self.store.get(NODES + node_id)
            if entry is None:
                return False
            record = NodeRecord.from_json(entry.value)
            if record.endpoints == endpoints and record.state == "active":
                return False
            record.endpoints = endpoints
            record.state = "active"
            record.updated_at = now
            if await self.store.put(NODES + node_id, record.to_json(), expect=entry.version):
                return True
        return False

    async def remove(self, node_id: str) -> NodeRecord | None:
        entry = await self.store.get(NODES + node_id)
        if entry is None:
            return None
        record = NodeRecord.from_json(entry.value)
        if not await self.store.delete(NODES + node_id, expect=entry.version):
            raise Conflict(f"node {node_id!r} changed while being removed; try again")
        await self.store.delete(ADDRESSES + record.address)
        await self.store.delete(KEYS + _hex(record.public_key))
        return record

    async def replace_key(self, node_id: str, public_key: str, now: float) -> NodeRecord:
        """Give an existing member another public key, keeping its id, address, role,
        region and endpoints (``wireguard update-peer``; ``node add --replace-key`` is
        the same change through ``register``)."""
        old = await self.node(check_node_id(node_id))
        if old is None:
            raise UnknownNode(f"no node {node_id!r}")
        return await self.register(
            node_id,
            public_key,
            role=old.role,
            region=old.region,
            endpoints=old.endpoints,
            token_id=old.token_id,
            state=old.state,
            now=now,
            replace_key=True,
        )

    # -- revocation -------------------------------------------------------------------------

    async def revoke(self, node_id: str, by: str, now: float) -> RevokedKey | None:
        """Remove a member and record its key as revoked (None: no such member). The
        revocation is written first: there is no moment where the member is gone and
        its key could enroll again."""
        record = await self.node(check_node_id(node_id))
        if record is None:
            return None
        revoked = RevokedKey(
            record.public_key, record.node_id, record.address, record.role, now, by
        )
        await self.store.put(REVOKED + _hex(record.public_key), revoked.to_json())
        await self.remove(node_id)
        return revoked

    async def revoked(self) -> list[RevokedKey]:
        return [RevokedKey.from_json(e.value) for e in await self.store.scan(REVOKED)]

    async def revocation(self, public_key: str) -> RevokedKey | None:
        entry = await self.store.get(REVOKED + _hex(public_key))
        return RevokedKey.from_json(entry.value) if entry else None

    # -- tokens -----------------------------------------------------------------------------

    async def create_token(
        self,
        *,
        role: str,
        now: float,
        ttl: float | None = 3600.0,
        reusable: bool = False,
        region: str | None = None,
    ) -> tuple[str, TokenRecord]:
        check_role(role)
        if ttl is not None and not 0 < ttl <= MAX_TTL:
            raise RecordError(f"ttl {ttl!r}: expected 1 second to 366 days")
        settings = await self.settings()
        if region is not None and region not in settings.regions:
            raise RecordError(f"region {region!r} is not declared in the coordinator's config")
        secret = os.urandom(tokens.SECRET_SIZE)
        coord = self.identity.coordinator
        join = tokens.JoinToken(
            secret,
            PublicKey.from_base64(coord.public_key),
            ipaddress.ip_address(coord.address),
            tuple(_split_endpoint(e) for e in coord.endpoints),
            self.identity.cluster_id,
            self.identity.api_port,
        )
        record = TokenRecord(
            id=join.id,
            role=role,
            proof_key=tokens.proof_key(secret).hex(),
            psk=base64.b64encode(tokens.enrollment_psk(secret).raw).decode(),
            created_at=now,
            expires_at=None if ttl is None else now + ttl,
            reusable=reusable,
            region=region,
        )
        if not await self.store.put(TOKENS + record.id, record.to_json(), expect=0):
            raise Conflict("token id collision (try again)")
        return join.encode(), record

    async def tokens(self) -> list[TokenRecord]:
        return [TokenRecord.from_json(e.value) for e in await self.store.scan(TOKENS)]

    async def revoke_token(self, token_id: str) -> TokenRecord | None:
        for _ in range(RETRIES):
            entry = await self.store.get(TOKENS + token_id)
            if entry is None:
                return None
            record = TokenRecord.from_json(entry.value)
            record.revoked = True
            if await self.store.put(TOKENS + token_id, record.to_json(), expect=entry.version):
                return record
        raise Conflict("token changed under us too often; try again")

    async def use_token(self, token_id: str, node_id: str, now: float) -> TokenRecord:
        """Count one use of the token for ``node_id``; raises Conflict if it can no longer
        be used (a one-time token is dead after this)."""
        for _ in range(RETRIES):
            entry = await self.store.get(TOKENS + token_id)
            if entry is None:
                raise Conflict("token no longer exists")
            record = TokenRecord.from_json(entry.value)
            why = record.refusal(now)
            if why is not None:
                raise Conflict(f"token {token_id} is {why}")
            record.uses += 1
            record.used_by = [*record.used_by[-99:], node_id]
            if await self.store.put(TOKENS + token_id, record.to_json(), expect=entry.version):
                return record
        raise Conflict("token changed under us too often; try again")


def _hex(public_key: str) -> str:
    return PublicKey.from_base64(public_key).hex()


def _split_endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)
