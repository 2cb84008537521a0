"""What a node remembers between runs: its membership and its last known peers.

Kept next to its private key (``<key file>.mesh.json``, mode 0600, written atomically),
so a restarted node reconnects without a token, and a node that cannot reach the
coordinator comes up with the peers it last had and keeps working.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class StateError(ValueError):
    """A state file that cannot be used; the message names it."""


@dataclass
class NodeState:
    node_id: str
    public_key: str
    address: str
    network: str
    cluster_id: str
    coordinator: dict[str, Any]  # public_key, address, endpoints, api_port
    role: str = "node"
    view: dict[str, Any] | None = None  # the last answer of GET /v1/mesh
    extra: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def path_for(private_key_file: Path) -> Path:
        return private_key_file.with_name(private_key_file.name + ".mesh.json")

    @classmethod
    def load(cls, path: Path) -> NodeState | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            why = f"unreadable mesh state ({e})"
            raise StateError(f"{path}: {why}; delete it to re-enroll") from None
        try:
            return cls(**data)
        except TypeError as e:
            why = f"not a mesh state file ({e})"
            raise StateError(f"{path}: {why}; delete it to re-enroll") from None

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
