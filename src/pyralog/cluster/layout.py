"""The cluster directory of ``pyralog up``: what it holds and how it is checked.

    pyralog-cluster/
      cluster.toml             the cluster's shape: id, node count, UDP ports (written once)
      coordinator/             coordinator.toml, its key, coordinator.db, coordinator.sock
      node-1/ ... node-N/      wireguard.toml, node.key, join.token, log-data/, node.sock
      client.conf              a wg-quick config for an admin client (pyralog connect)
      supervisor.log           what the supervisor said (with --detach)
      .lock, supervisor.pid    held and written by the running supervisor

Every check runs before anything is started or written, so a directory that is not
ours, or one that lost a file, gets one line naming the file and is left as it was.
The node and coordinator configs are ordinary ones (``docs/MESH.md``): a cluster made
here can be taken apart and run by hand.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyralog.mesh import config as mesh_config
from pyralog.mesh import coordinator_config
from pyralog.mesh.state import NodeState, StateError
from pyralog.mesh.tomlsection import ConfigError

MANIFEST = "cluster.toml"
DEFAULT_PORT = 51900
MAX_NODES = 16
# AF_UNIX socket paths hold 107 bytes on Linux; the coordinator's is the longest we make.
SOCKET_PATH_MAX = 107


class LayoutError(Exception):
    """The directory cannot hold (or does not hold) a cluster; the message says why."""


@dataclass(frozen=True)
class Manifest:
    cluster_id: str
    nodes: int
    port: int  # the coordinator's UDP port; node-i listens on port + i
    host: str = "127.0.0.1"

    @property
    def replication_factor(self) -> int:
        return min(3, self.nodes)

    def node_names(self) -> list[str]:
        return [f"node-{i}" for i in range(1, self.nodes + 1)]

    def node_port(self, name: str) -> int:
        return self.port + int(name.removeprefix("node-"))

    def ports(self) -> dict[str, int]:
        """Every UDP port the cluster listens on, by who listens."""
        return {"coordinator": self.port, **{n: self.node_port(n) for n in self.node_names()}}


class ClusterDir:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()

    # -- paths ------------------------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def coordinator(self) -> Path:
        return self.root / "coordinator"

    @property
    def coordinator_config(self) -> Path:
        return self.coordinator / "coordinator.toml"

    @property
    def coordinator_socket(self) -> Path:
        return self.coordinator / "coordinator.sock"

    def node(self, name: str) -> Path:
        return self.root / name

    def node_config(self, name: str) -> Path:
        return self.node(name) / "wireguard.toml"

    def node_socket(self, name: str) -> Path:
        return self.node(name) / "node.sock"

    def socket_of(self, name: str) -> Path:
        return self.coordinator_socket if name == "coordinator" else self.node_socket(name)

    def log_of(self, name: str) -> Path:
        return (self.coordinator if name == "coordinator" else self.node(name)) / "process.log"

    @property
    def client_config(self) -> Path:
        return self.root / "client.conf"

    @property
    def supervisor_log(self) -> Path:
        return self.root / "supervisor.log"

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    # -- reading ----------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.manifest_path.exists()

    def manifest(self) -> Manifest:
        path = self.manifest_path
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            c = data["cluster"]
            manifest = Manifest(str(c["cluster_id"]), int(c["nodes"]), int(c["port"]),
                                str(c.get("host", "127.0.0.1")))  # fmt: skip
        except FileNotFoundError:
            raise LayoutError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise LayoutError(f"{path}: cannot read: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise LayoutError(f"{path}: not valid TOML ({e}); {_UNTOUCHED}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise LayoutError(
                f"{path}: [cluster] is incomplete or wrong ({e!r}); {_UNTOUCHED}"
            ) from None
        if not 1 <= manifest.nodes <= MAX_NODES or not 1 <= manifest.port <= 65535 - MAX_NODES:
            raise LayoutError(f"{path}: nodes or port out of range; {_UNTOUCHED}")
        return manifest

    def check(self, manifest: Manifest) -> None:
        """Everything a resumed cluster needs is there and readable: one LayoutError
        naming the first missing or broken file otherwise."""
        try:
            coordinator_config.load(self.coordinator_config)
        except ConfigError as e:
            raise LayoutError(f"{e}; {_UNTOUCHED}") from None
        if (self.coordinator / "coordinator.db").exists():
            _must_exist(self.coordinator / "coordinator.key")
        for name in manifest.node_names():
            try:
                cfg = mesh_config.load(self.node_config(name), env={})
                state = NodeState.load(NodeState.path_for(cfg.private_key_file))
            except (ConfigError, StateError) as e:
                raise LayoutError(f"{e}; {_UNTOUCHED}") from None
            if state is not None:
                _must_exist(cfg.private_key_file)
        self.check_socket_paths()

    def check_socket_paths(self) -> None:
        longest = max(len(str(self.coordinator_socket)), len(str(self.node_socket("node-16"))))
        if longest > SOCKET_PATH_MAX:
            raise LayoutError(
                f"{self.root}: path too long for the cluster's local sockets ({longest} > "
                f"{SOCKET_PATH_MAX} bytes); choose a shorter --dir"
            )

    def check_new(self) -> None:
        """A directory we may create a cluster in: missing, or empty (or holding only
        what an interrupted first start of ours left)."""
        if self.root.exists() and not self.root.is_dir():
            raise LayoutError(f"{self.root}: exists and is not a directory")
        if self.root.exists():
            others = sorted(p.name for p in self.root.iterdir() if p.name not in _OURS)
            if others:
                raise LayoutError(
                    f"{self.root}: not empty and not a Pyralog cluster (no {MANIFEST}; "
                    f"found {', '.join(others[:3])}); choose an empty or new directory"
                )
        self.check_socket_paths()

    # -- writing (first start) --------------------------------------------------------------

    def create(self, manifest: Manifest) -> None:
        """Write the manifest and the coordinator's config (once)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe.{os.getpid()}"
            probe.write_text("")
            probe.unlink()
            self.coordinator.mkdir(mode=0o700, exist_ok=True)
            self.coordinator_config.write_text(self._coordinator_toml(manifest), encoding="utf-8")
            # The manifest last: its presence says "a cluster lives here".
            self.manifest_path.write_text(self._manifest_toml(manifest), encoding="utf-8")
        except OSError as e:
            raise LayoutError(f"cannot create the cluster in {self.root}: {e.strerror}") from None

    def write_node(self, manifest: Manifest, name: str) -> None:
        """A node's wireguard.toml (embedded backend, replicated broker), if it has none."""
        path = self.node_config(name)
        if path.exists():
            return
        factor = manifest.replication_factor
        text = (
            f"# {name} of the cluster in {self.root} (written by pyralog up)\n"
            "[wireguard]\n"
            'backend = "embedded"\n\n'
            "[interface]\n"
            'private_key_file = "node.key"\n'
            f"listen_port = {manifest.node_port(name)}\n\n"
            "[bootstrap]\n"
            f'coordinator_endpoint = ["{manifest.host}:{manifest.port}"]\n'
            'token_file = "join.token"\n'
            f'node_id = "{name}"\n\n'
            "[log]\n"
            'data_dir = "log-data"\n'
            "replication = true\n"
            f"replication_factor = {factor}\n"
            f"min_insync_replicas = {min(2, factor)}\n"
            # Loopback never loses a heartbeat to the network: a short session timeout
            # makes failover quick without false suspicions.
            "session_timeout_ms = 2000\n"
            "replica_lag_time_max_ms = 6000\n"
        )
        try:
            self.node(name).mkdir(mode=0o700, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as e:
            raise LayoutError(f"cannot write {path}: {e.strerror}") from None

    def write_token(self, name: str, token: str) -> None:
        path = self.node(name) / "join.token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")

    def enrolled(self, name: str) -> bool:
        try:
            cfg = mesh_config.load(self.node_config(name), env={})
            return NodeState.load(NodeState.path_for(cfg.private_key_file)) is not None
        except (ConfigError, StateError):
            return False

    def write_state(self, state: dict[str, object]) -> None:
        tmp = self.state_path.with_name(f".state.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.state_path)

    def read_state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _manifest_toml(self, m: Manifest) -> str:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return (
            "# The cluster's shape, written once by `pyralog up` "
            "(pyralog up --nodes N adds nodes).\n"
            "[cluster]\n"
            f'cluster_id = "{m.cluster_id}"\n'
            f"nodes = {m.nodes}\n"
            f"port = {m.port}        # the coordinator's UDP port; node-i listens on port + i\n"
            f'host = "{m.host}"\n'
            f'created = "{now}"\n'
        )

    def grow(self, manifest: Manifest, nodes: int) -> Manifest:
        grown = Manifest(manifest.cluster_id, nodes, manifest.port, manifest.host)
        text = self.manifest_path.read_text(encoding="utf-8")
        text = text.replace(f"nodes = {manifest.nodes}\n", f"nodes = {nodes}\n", 1)
        self.manifest_path.write_text(text, encoding="utf-8")
        return grown

    def _coordinator_toml(self, m: Manifest) -> str:
        return (
            f"# The coordinator of the cluster in {self.root} (written by pyralog up)\n"
            "[coordinator]\n"
            f'cluster_id = "{m.cluster_id}"\n'
            'network = "10.100.0.0/16"\n'
            'private_key_file = "coordinator.key"\n'
            f"listen_port = {m.port}\n"
            f'endpoints = ["{m.host}:{m.port}"]\n'
            'store = "coordinator.db"\n'
            "\n[topology]\n"
            'kind = "full-mesh"\n'
        )


_UNTOUCHED = "the cluster directory is damaged; nothing was changed"
# What an interrupted first start may leave before the manifest is written.
_OURS = {"coordinator", ".lock", "supervisor.pid", "supervisor.log", "state.json"}


def _must_exist(path: Path) -> None:
    if not path.exists():
        raise LayoutError(f"{path}: missing; {_UNTOUCHED}")
