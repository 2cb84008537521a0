"""What the coordinator stores: members (nodes, gateways, clients, admins) and tokens.

Records are JSON in the store (``pyralog.mesh.store``) under ``nodes/<id>`` and
``tokens/<id>``; ``addresses/<ip>`` holds the id of the member an address is given to, so
two coordinators racing to give one address cannot both win (compare-and-set).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

ROLES = ("node", "gateway", "client", "admin")
# Ids become DNS-ish labels, file names and audit fields: keep them boring.
NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class RecordError(ValueError):
    """A record or request field that is not acceptable; the message names the field."""


def check_node_id(value: object) -> str:
    if not isinstance(value, str) or not NODE_ID.match(value):
        raise RecordError(
            f"node id {value!r}: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def check_role(value: object) -> str:
    if value not in ROLES:
        raise RecordError(f"role {value!r}: expected one of {', '.join(ROLES)}")
    return str(value)


@dataclass
class NodeRecord:
    node_id: str
    public_key: str  # base64, as wg prints it
    address: str  # the mesh address, no prefix
    role: str = "node"
    region: str | None = None
    endpoints: list[str] = field(default_factory=list)  # HOST:PORT where peers reach it
    state: str = "active"  # "active" | "provisioned" (added by hand, never seen yet)
    created_at: float = 0.0
    updated_at: float = 0.0
    token_id: str | None = None  # the token it enrolled with, if any

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> NodeRecord:
        return cls(**json.loads(data))

    def public(self) -> dict[str, Any]:
        """What other members may see of this one."""
        return {
            "node_id": self.node_id,
            "public_key": self.public_key,
            "address": self.address,
            "role": self.role,
            "region": self.region,
            "endpoints": list(self.endpoints),
        }


@dataclass
class RevokedKey:
    """A public key that may never be a member again (``revoked/<hex key>``): what it was,
    and who revoked it when, for the audit trail and ``pyralog-admin node list --revoked``."""

    public_key: str
    node_id: str
    address: str
    role: str
    revoked_at: float
    revoked_by: str

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RevokedKey:
        return cls(**json.loads(data))


@dataclass
class TokenRecord:
    id: str
    role: str
    proof_key: str  # hex; derived from the secret, which is never stored
    psk: str  # base64; the enrollment session's preshared key, derived likewise
    created_at: float
    expires_at: float | None = None
    reusable: bool = False
    revoked: bool = False
    uses: int = 0
    region: str | None = None
    used_by: list[str] = field(default_factory=list)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> TokenRecord:
        return cls(**json.loads(data))

    def refusal(self, now: float) -> str | None:
        """Why this token cannot admit anyone now, or None if it can."""
        if self.revoked:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        if not self.reusable and self.uses > 0:
            return "used"
        return None

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        del data["proof_key"], data["psk"]
        return data
