"""``coordinator.toml``: the coordinator's identity, store, topology and role policy.

    [coordinator]
    cluster_id = "prod"
    network = "10.100.0.0/16"          # the mesh; members get addresses from their ids
    address = "10.100.0.1"             # the coordinator's own (default: first host)
    private_key_file = "coordinator.key"   # made on first start, 0600
    listen_port = 51820
    endpoints = ["198.51.100.7:51820"]  # where members reach it (tokens carry these)
    store = "coordinator.db"           # or "etcd://10.0.0.5:2379,10.0.0.6:2379"
    api_port = 7700                    # on the mesh address only
    admin_socket = "coordinator.sock"  # local admin API (pyralog-admin), mode 0600
    audit_log = "audit.log"

    [topology]
    kind = "full-mesh"                 # or "hub-and-spoke", "regions"
    hubs = ["hub-1"]                   # hub-and-spoke: hubs besides role=gateway members

    [regions.us-east]
    network = "10.100.1.0/24"

    [policy]                           # what each role may reach (see pyralog.mesh.policy)
    client = ["node:9092"]

    [metrics]                          # Prometheus GET /metrics (see pyralog.mesh.metrics)
    enabled = true
    port = 9100                        # on the mesh address; the policy decides who
    listen = "127.0.0.1:9101"          # also here (default: not served locally)

    [health]                           # cluster status: latest handshake's age, seconds
    healthy_within = 120               # under this: healthy
    down_after = 180                   # up to this: degraded; older: down

Paths are relative to the file's directory. Every error names the file, table and key.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyralog.mesh.config import MetricsSettings, metrics_section
from pyralog.mesh.health import DOWN_AFTER, HEALTHY_WITHIN, HealthThresholds
from pyralog.mesh.policy import DEFAULT_POLICY, TOPOLOGIES, MeshSettings, Policy, PolicyError
from pyralog.mesh.tomlsection import ConfigError, Section
from pyralog.wireguard.endpoint import EndpointError, parse_endpoint

DEFAULT_API_PORT = 7700


@dataclass(frozen=True)
class CoordinatorConfig:
    path: str
    cluster_id: str
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    private_key_file: Path
    listen_port: int
    endpoints: tuple[str, ...]
    store: str
    base: Path
    api_port: int
    admin_socket: Path
    audit_log: Path
    settings: MeshSettings
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    health: HealthThresholds = HealthThresholds()  # noqa: RUF009 (frozen, shared)


def parse(text: str, path: str = "coordinator.toml", base: Path | None = None) -> CoordinatorConfig:
    base = base or Path(path).resolve().parent
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    unknown = sorted(
        set(data) - {"coordinator", "topology", "regions", "policy", "metrics", "health"}
    )
    if unknown:
        raise ConfigError(f"{path}: [{unknown[0]}]: unknown section")
    c = Section(path, "[coordinator]", data.get("coordinator", {}))
    cluster_id = c.get("cluster_id", str, "pyralog")
    if not cluster_id or len(cluster_id.encode()) > 255:
        raise c.error("cluster_id", "expected 1-255 bytes")
    try:
        network = ipaddress.ip_network(c.get("network", str, "10.100.0.0/16"))
    except ValueError as e:
        raise c.error("network", f"not a network: {e}") from None
    if network.num_addresses < 4:
        raise c.error("network", f"{network} is too small for a mesh")
    try:
        address = ipaddress.ip_address(c.get("address", str, str(network.network_address + 1)))
    except ValueError as e:
        raise c.error("address", str(e)) from None
    if address not in network:
        raise c.error("address", f"{address} is not inside network {network}")
    if address == network.network_address or (
        address.version == 4 and address == network.broadcast_address
    ):
        raise c.error("address", f"{address} is not a host address of {network}")
    listen_port = c.integer("listen_port", 1, 65535, 51820)
    endpoints = tuple(c.get("endpoints", list, [f"127.0.0.1:{listen_port}"]))
    for text_ep in endpoints:
        if not isinstance(text_ep, str):
            raise c.error("endpoints", f"expected strings, got {text_ep!r}")
        try:
            parse_endpoint(text_ep, allow_names=True)
        except EndpointError as e:
            raise c.error("endpoints", str(e)) from None
    if not endpoints:
        raise c.error("endpoints", "name at least one HOST:PORT")
    api_port = c.integer("api_port", 1, 65535, DEFAULT_API_PORT)
    private_key_file = base / c.get("private_key_file", str, "coordinator.key")
    store = c.get("store", str, "coordinator.db")
    admin_socket = base / c.get("admin_socket", str, "coordinator.sock")
    audit_log = base / c.get("audit_log", str, "audit.log")
    c.finish()

    t = Section(path, "[topology]", data.get("topology", {}))
    kind = t.get("kind", str, "full-mesh")
    if kind not in TOPOLOGIES:
        raise t.error("kind", f"expected one of {', '.join(TOPOLOGIES)}, got {kind!r}")
    hubs = t.get("hubs", list, [])
    if not all(isinstance(h, str) for h in hubs):
        raise t.error("hubs", "expected an array of node ids")
    t.finish()

    regions = {}
    raw_regions = data.get("regions", {})
    if not isinstance(raw_regions, Mapping):
        raise ConfigError(f"{path}: [regions]: expected tables like [regions.us-east]")
    for name, table in raw_regions.items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"{path}: [regions.{name}]: expected a table")
        r = Section(path, f"[regions.{name}]", table)
        try:
            net = ipaddress.ip_network(r.get("network", str, ""))
        except ValueError as e:
            raise r.error("network", f"not a network: {e}") from None
        if net.version != network.version:
            raise r.error("network", f"{net} is not the mesh network's IP version ({network})")
        if not net.subnet_of(network):  # type: ignore[arg-type]
            raise r.error("network", f"{net} is not inside the mesh network {network}")
        for other_name, other in regions.items():
            if net.overlaps(other):
                raise r.error("network", f"{net} overlaps region {other_name!r} ({other})")
        r.finish()
        regions[name] = net
    if kind == "regions" and not regions:
        raise t.error("kind", '"regions" needs at least one [regions.NAME] table')

    policy_table = data.get("policy", {})
    if not isinstance(policy_table, Mapping):
        raise ConfigError(f"{path}: [policy]: expected a table")
    try:
        policy = Policy.parse({**DEFAULT_POLICY, **policy_table}, f"{path}: [policy]")
    except PolicyError as e:
        raise ConfigError(str(e)) from None
    settings = MeshSettings(network, kind, tuple(hubs), regions, policy)
    metrics = metrics_section(path, data.get("metrics", {}))
    h = Section(path, "[health]", data.get("health", {}))
    healthy_within = h.get("healthy_within", (int, float), HEALTHY_WITHIN)
    down_after = h.get("down_after", (int, float), DOWN_AFTER)
    h.finish()
    try:
        health = HealthThresholds(float(healthy_within), float(down_after))
    except ValueError as e:
        raise h.error("healthy_within", str(e)) from None
    return CoordinatorConfig(
        path,
        cluster_id,
        address,
        private_key_file,
        listen_port,
        endpoints,
        store,
        base,
        api_port,
        admin_socket,
        audit_log,
        settings,
        metrics,
        health,
    )


def load(path: str | os.PathLike[str]) -> CoordinatorConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read: {e}") from None
    return parse(text, str(p), p.resolve().parent)


def default_text(cluster_id: str = "pyralog", network: str = "10.100.0.0/16", **_: Any) -> str:
    """A starting coordinator.toml (``pyralog coordinator --init``)."""
    return (
        "[coordinator]\n"
        f'cluster_id = "{cluster_id}"\n'
        f'network = "{network}"\n'
        'private_key_file = "coordinator.key"\n'
        "listen_port = 51820\n"
        'endpoints = ["127.0.0.1:51820"]\n'
        'store = "coordinator.db"\n'
        f"api_port = {DEFAULT_API_PORT}\n"
        "\n[topology]\n"
        'kind = "full-mesh"\n'
    )
