"""``wireguard.toml``: a node's mesh configuration, read with ``tomllib``.

The sections and keys are the product document's (``[wireguard]``, ``[interface]``,
``[bootstrap]``, ``[[peer]]``) plus ``[log]`` (the node's broker) and ``[metrics]``
(Prometheus), checked strictly: an unknown section or key is an error, and every error
names the file, the section and the key, e.g.
``wireguard.toml: [interface] listen_port: expected 1-65535, got "abc"``. Sections of
features still to come (``[dpi_evasion]``, ``[quantum_resistance]``, ``[rosenpass]``,
``[encryption]``, and the document's ``[boringtun]``) are accepted and reported in
``notices`` as not supported yet, so a file written for the whole document loads.

Environment overrides, as in the document's Docker Compose example, win over the file:
``PYRALOG_NODE_ID``, ``PYRALOG_WIREGUARD_PORT``, ``PYRALOG_JOIN_TOKEN``,
``PYRALOG_CLUSTER_BOOTSTRAP`` (one or
more ``host:port``, comma-separated), each also spelled ``DLOG_*``.

``parse`` takes the text and the environment and does no IO; ``load`` reads the file.
Paths in the file (``private_key_file``, ``token_file``, a peer's ``preshared_key_file``)
are relative to its directory. ``address`` is one ``ADDRESS/PREFIX`` or an array of them.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyralog.mesh.tomlsection import ConfigError, Section, show
from pyralog.wireguard.constants import DEFAULT_MTU
from pyralog.wireguard.endpoint import EndpointError, parse_endpoint
from pyralog.wireguard.keys import InvalidKeyError, PublicKey

BACKENDS = ("auto", "kernel", "userspace", "embedded")
DEFAULT_PORT = 51820
DEFAULT_INTERFACE = "pyralog0"
RESERVED = {
    "dpi_evasion": "DPI resistance",
    "quantum_resistance": "post-quantum preshared keys",
    "rosenpass": "Rosenpass key exchange",
    "encryption": "encryption at rest",
    "boringtun": "BoringTun tuning (Pyralog's userspace backend has no such settings)",
}
ENVIRONMENT = {  # variable -> what it overrides; the DLOG_ spelling is an alias
    "PYRALOG_NODE_ID": "node id",
    "PYRALOG_WIREGUARD_PORT": "[interface] listen_port",
    "PYRALOG_CLUSTER_BOOTSTRAP": "[bootstrap] coordinator_endpoint",
    "PYRALOG_JOIN_TOKEN": "[bootstrap] token",
}

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


MeshConfigError = ConfigError  # a configuration that cannot be used; names file and key


@dataclass(frozen=True)
class StaticPeer:
    public_key: PublicKey
    endpoint: tuple[str, int] | None  # the host may be a name; resolve before use
    allowed_ips: tuple[Network, ...]
    persistent_keepalive: int = 0
    preshared_key_file: Path | None = None


@dataclass(frozen=True)
class Bootstrap:
    coordinator_endpoints: tuple[tuple[str, int], ...]
    cluster_id: str | None = None
    token: str | None = None
    token_file: Path | None = None


@dataclass(frozen=True)
class LogSettings:
    """``[log]``: the node's broker (served on its mesh address)."""

    enabled: bool = True
    data_dir: Path = Path("data")
    port: int = 9092
    flush: str = "interval"
    partitions: int = 1
    auto_create_topics: bool = True
    # Replication (docs/REPLICATION.md): off, the broker is a single node.
    replication: bool = False
    cluster_store: str = "coordinator"  # or etcd://HOST:PORT[,...][/PREFIX]
    replication_factor: int = 3  # default of new topics (at most the live brokers)
    min_insync_replicas: int = 2  # default of new topics (capped at their factor)
    session_timeout_ms: int = 4000
    replica_lag_time_max_ms: int = 10000
    rack: str | None = None


DEFAULT_METRICS_PORT = 9100


@dataclass(frozen=True)
class MetricsSettings:
    """``[metrics]`` (a node's and the coordinator's): Prometheus ``GET /metrics`` on the
    mesh address (``port``; who may scrape is the role policy's call), and, only if
    ``listen`` is set, on that local address too (e.g. ``127.0.0.1:9101``) for a
    scraper on the same host that is no mesh member."""

    enabled: bool = True
    port: int = DEFAULT_METRICS_PORT
    listen: tuple[str, int] | None = None


def metrics_section(path: str, table: Mapping[str, Any]) -> MetricsSettings:
    if not isinstance(table, Mapping):
        raise MeshConfigError(f"{path}: metrics: expected a [metrics] table")
    section = Section(path, "[metrics]", table)
    enabled = section.get("enabled", bool, True)
    port = section.integer("port", 1, 65535, DEFAULT_METRICS_PORT)
    text = section.get("listen", str)
    listen = None
    if text is not None:
        try:
            host, listen_port = parse_endpoint(text)
            ipaddress.ip_address(host)
        except (EndpointError, ValueError):
            raise section.error("listen", f"expected IP:PORT, got {show(text)}") from None
        listen = (host, listen_port)
    section.finish()
    return MetricsSettings(enabled, port, listen)


@dataclass(frozen=True)
class MeshConfig:
    path: str
    backend: str
    interface_name: str
    private_key_file: Path
    addresses: tuple[IPInterface, ...]
    listen_port: int
    mtu: int
    node_id: str | None
    bootstrap: Bootstrap | None
    peers: tuple[StaticPeer, ...]
    notices: tuple[str, ...] = field(default=())
    log: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)


def _port_text(where: str, text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= 65535:
        raise MeshConfigError(f'{where}: expected 1-65535, got "{text}"')
    return int(text)


def _endpoints(where: str, values: list[str]) -> tuple[tuple[str, int], ...]:
    out = []
    for value in values:
        try:
            out.append(parse_endpoint(value.strip(), allow_names=True))
        except EndpointError as e:
            raise MeshConfigError(f"{where}: {e}") from None
    return tuple(out)


def _environment(env: Mapping[str, str], notices: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in ENVIRONMENT:
        alias = "DLOG_" + name.removeprefix("PYRALOG_")
        value, alias_value = env.get(name), env.get(alias)
        if value is None and alias_value is not None:
            value, name_used = alias_value, alias
        else:
            name_used = name
            if value is not None and alias_value is not None and alias_value != value:
                notices.append(f"{alias} is ignored: {name} is set too and wins")
        if value is not None:
            found[name] = value
            found[name + ":name"] = name_used
    return found


def parse(
    text: str, path: str = "wireguard.toml", env: Mapping[str, str] | None = None
) -> MeshConfig:
    """Check a whole ``wireguard.toml``; the environment (default: none) overrides it."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise MeshConfigError(f"{path}: not valid TOML: {e}") from None
    notices: list[str] = []
    overrides = _environment(env or {}, notices)
    base = Path(path).parent

    known = {"wireguard", "interface", "bootstrap", "peer", "log", "metrics", *RESERVED}
    for name, value in doc.items():
        if name not in known:
            raise MeshConfigError(f"{path}: [{name}]: unknown section")
        if name == "peer":
            if not isinstance(value, list):
                raise MeshConfigError(f"{path}: [peer]: peers are [[peer]] tables")
        elif not isinstance(value, dict):
            raise MeshConfigError(f"{path}: {name}: expected a [{name}] table")
    for name, feature in RESERVED.items():
        if name in doc:
            notices.append(f"{path}: [{name}] ({feature}) is not supported yet; ignored")

    wg = Section(path, "[wireguard]", doc.get("wireguard", {}))
    backend = wg.get("backend", str, "auto")
    if backend == "boringtun":
        notices.append(f'{path}: [wireguard] backend "boringtun" means "userspace" here')
        backend = "userspace"
    if backend not in BACKENDS:
        choices = ", ".join(f'"{b}"' for b in BACKENDS)
        raise wg.error("backend", f"expected one of {choices}, got {show(backend)}")
    interface_name = wg.get("interface_name", str, DEFAULT_INTERFACE)
    _check_interface_name(wg, interface_name)
    wg.finish()

    if "interface" not in doc:
        raise MeshConfigError(f"{path}: [interface]: missing (it holds private_key_file)")
    iface = Section(path, "[interface]", doc["interface"])
    key_file = iface.get("private_key_file", str)
    if not key_file:
        raise iface.error("private_key_file", "missing")
    raw_address = iface.get("address", (str, list), [])
    addresses = []
    for item in [raw_address] if isinstance(raw_address, str) else raw_address:
        try:
            addresses.append(ipaddress.ip_interface(item))
        except (TypeError, ValueError):
            message = f"expected ADDRESS/PREFIX, got {show(item)}"
            raise iface.error("address", message) from None
    listen_port = iface.integer("listen_port", 1, 65535, DEFAULT_PORT)
    mtu = iface.integer("mtu", 1280, 65535, DEFAULT_MTU)
    iface.finish()
    if "PYRALOG_WIREGUARD_PORT" in overrides:
        where = f"environment {overrides['PYRALOG_WIREGUARD_PORT:name']}"
        listen_port = _port_text(where, overrides["PYRALOG_WIREGUARD_PORT"])

    node_id = overrides.get("PYRALOG_NODE_ID")
    bootstrap = None
    if "bootstrap" in doc:
        boot = Section(path, "[bootstrap]", doc["bootstrap"])
        raw = boot.get("coordinator_endpoint", (str, list))
        values = [raw] if isinstance(raw, str) else list(raw or [])
        if not all(isinstance(v, str) for v in values):
            raise boot.error("coordinator_endpoint", "expected a string or an array of strings")
        endpoints = _endpoints(f"{path}: [bootstrap] coordinator_endpoint", values)
        cluster_id = boot.get("cluster_id", str)
        token = boot.get("token", str)
        token_file = boot.get("token_file", str)
        if token is not None and token_file is not None:
            raise boot.error("token_file", "give token or token_file, not both")
        file_node_id = boot.get("node_id", str)
        boot.finish()
        node_id = node_id or file_node_id
        bootstrap = Bootstrap(
            endpoints, cluster_id, token, base / token_file if token_file else None
        )
    if "PYRALOG_CLUSTER_BOOTSTRAP" in overrides:
        where = f"environment {overrides['PYRALOG_CLUSTER_BOOTSTRAP:name']}"
        values = [v for v in overrides["PYRALOG_CLUSTER_BOOTSTRAP"].split(",") if v.strip()]
        if not values:
            raise MeshConfigError(f"{where}: expected HOST:PORT[,HOST:PORT...], got nothing")
        endpoints = _endpoints(where, values)
        bootstrap = Bootstrap(
            endpoints,
            bootstrap.cluster_id if bootstrap else None,
            bootstrap.token if bootstrap else None,
            bootstrap.token_file if bootstrap else None,
        )
    if "PYRALOG_JOIN_TOKEN" in overrides:
        where = f"environment {overrides['PYRALOG_JOIN_TOKEN:name']}"
        if bootstrap is None:
            raise MeshConfigError(
                f"{where}: a token needs a coordinator: set [bootstrap] coordinator_endpoint "
                "or PYRALOG_CLUSTER_BOOTSTRAP"
            )
        bootstrap = Bootstrap(
            bootstrap.coordinator_endpoints,
            bootstrap.cluster_id,
            overrides["PYRALOG_JOIN_TOKEN"].strip(),
            None,  # the environment wins over the file's token and token_file
        )
    if bootstrap is not None and not bootstrap.coordinator_endpoints:
        raise MeshConfigError(f"{path}: [bootstrap] coordinator_endpoint: missing")
    if node_id is not None and not node_id.strip():
        raise MeshConfigError(f"{path}: node id is empty")

    peers = tuple(
        _peer(path, base, i, table, notices) for i, table in enumerate(doc.get("peer", []))
    )
    return MeshConfig(
        path=path,
        backend=backend,
        interface_name=interface_name,
        private_key_file=base / key_file,
        addresses=tuple(addresses),
        listen_port=listen_port,
        mtu=mtu,
        node_id=node_id,
        bootstrap=bootstrap,
        peers=peers,
        notices=tuple(notices),
        log=_log_section(path, base, doc.get("log", {})),
        metrics=metrics_section(path, doc.get("metrics", {})),
    )


FLUSH_POLICIES = ("always", "interval", "never")


def _log_section(path: str, base: Path, table: Mapping[str, Any]) -> LogSettings:
    section = Section(path, "[log]", table)
    enabled = section.get("enabled", bool, True)
    data_dir = section.get("data_dir", str, "data")
    port = section.integer("port", 1, 65535, 9092)
    flush = section.get("flush", str, "interval")
    if flush not in FLUSH_POLICIES:
        choices = ", ".join(f'"{f}"' for f in FLUSH_POLICIES)
        raise section.error("flush", f"expected one of {choices}, got {show(flush)}")
    partitions = section.integer("partitions", 1, 10000, 1)
    auto = section.get("auto_create_topics", bool, True)
    replication = section.get("replication", bool, False)
    store = section.get("cluster_store", str, "coordinator")
    if store != "coordinator" and not store.startswith("etcd://"):
        raise section.error(
            "cluster_store", f'expected "coordinator" or "etcd://HOST:PORT", got {show(store)}'
        )
    factor = section.integer("replication_factor", 1, 16, 3)
    min_isr = section.integer("min_insync_replicas", 1, 16, 2)
    session = section.integer("session_timeout_ms", 500, 600_000, 4000)
    lag = section.integer("replica_lag_time_max_ms", 100, 3_600_000, 10000)
    rack = section.get("rack", str)
    section.finish()
    return LogSettings(
        enabled,
        base / data_dir,
        port,
        flush,
        partitions,
        auto,
        replication,
        store,
        factor,
        min_isr,
        session,
        lag,
        rack,
    )


def _check_interface_name(section: Section, name: str) -> None:
    from pyralog.tunnel.tun import validate_interface_name

    try:
        validate_interface_name(name)
    except ValueError as e:
        raise section.error("interface_name", str(e)) from None


def _peer(path: str, base: Path, index: int, table: Any, notices: list[str]) -> StaticPeer:
    if not isinstance(table, dict):
        raise MeshConfigError(f"{path}: [[peer]] #{index + 1}: expected a table")
    peer = Section(path, f"[[peer]] #{index + 1}", table)
    key_text = peer.get("public_key", str)
    alias = peer.get("wireguard_public_key", str)  # the document's post-quantum example
    if key_text is not None and alias is not None:
        raise peer.error("wireguard_public_key", "give public_key or this, not both")
    key_text = key_text or alias
    if key_text is None:
        raise peer.error("public_key", "missing")
    try:
        key = PublicKey.from_base64(key_text)
    except InvalidKeyError as e:
        raise peer.error("public_key", str(e)) from None
    if peer.get("rosenpass_public_key", str) is not None:
        notices.append(f"{path}: [[peer]] #{index + 1} rosenpass_public_key: not supported yet")
    endpoint = None
    endpoint_text = peer.get("endpoint", str)
    if endpoint_text is not None:
        endpoint = _endpoints(f"{path}: [[peer]] #{index + 1} endpoint", [endpoint_text])[0]
    allowed = peer.get("allowed_ips", list, [])
    networks = []
    for item in allowed:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except (TypeError, ValueError):
            raise peer.error("allowed_ips", f"expected ADDRESS/PREFIX, got {show(item)}") from None
    keepalive = peer.integer("persistent_keepalive", 0, 65535, 0)
    psk_file = peer.get("preshared_key_file", str)
    peer.finish()
    return StaticPeer(
        key, endpoint, tuple(networks), keepalive, base / psk_file if psk_file else None
    )


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> MeshConfig:
    """Read and check ``path``; ``env`` defaults to the process environment."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise MeshConfigError(f"{name}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise MeshConfigError(f"{name}: not a UTF-8 text file") from None
    return parse(text, name, os.environ if env is None else env)
