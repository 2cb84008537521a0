"""Role policy, mesh settings and coordinator.toml: defaults, the JSON round trip, what
``permits`` and ``linked`` mean, and errors that name the file, table and key."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from pyralog.mesh import coordinator_config
from pyralog.mesh.coordinator_config import DEFAULT_API_PORT, default_text, load, parse
from pyralog.mesh.model import ROLES
from pyralog.mesh.policy import DEFAULT_POLICY, MeshSettings, Policy, PolicyError, Rule
from pyralog.mesh.tomlsection import ConfigError

PATH = "/etc/pyralog/coordinator.toml"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, PATH)
    message = str(info.value)
    assert message.startswith(f"{PATH}: "), message
    return message


# -- Policy ---------------------------------------------------------------------------------


def test_default_policy() -> None:
    policy = Policy.default()
    assert set(policy.rules) == set(ROLES)
    assert policy.to_json() == DEFAULT_POLICY
    # Nodes and gateways reach each other and the coordinator on any port.
    for a in ("node", "gateway"):
        for b in ("node", "gateway", "coordinator"):
            assert policy.reaches(a, b)
            assert policy.permits(a, b, 1) and policy.permits(a, b, 65535)
    # Clients: only the log's port on nodes and gateways; not the coordinator, not clients.
    assert policy.permits("client", "node", 9092) and policy.permits("client", "gateway", 9092)
    assert not policy.permits("client", "node", 22)
    assert not policy.reaches("client", "coordinator")
    assert not policy.reaches("client", "client")
    assert not policy.permits("client", "client", 9092)
    # Admins reach everything but clients.
    assert policy.reaches("admin", "coordinator") and not policy.reaches("admin", "client")


def test_permits_is_directional_linked_is_symmetric() -> None:
    policy = Policy.parse({"client": ["node:9092,9093"], "node": []})
    assert policy.permits("client", "node", 9093)
    assert not policy.permits("node", "client", 9092)  # nodes may not open ports on clients
    assert policy.linked("client", "node") and policy.linked("node", "client")
    assert not policy.linked("node", "node")  # an empty list: nodes reach nobody
    assert not policy.linked("client", "client")
    assert not policy.linked("gateway", "admin")  # roles not in the table get no rules
    assert policy.rules["gateway"] == ()


def test_rules_parse_ports() -> None:
    policy = Policy.parse({"node": ["node", "gateway:80,443", "coordinator:7700"]})
    assert policy.rules["node"] == (
        Rule("node", None),
        Rule("gateway", frozenset({80, 443})),
        Rule("coordinator", frozenset({7700})),
    )
    assert policy.to_json()["node"] == ["node", "gateway:80,443", "coordinator:7700"]


@pytest.mark.parametrize(
    "table, expected",
    [
        ({"superuser": ["node"]}, "[policy] superuser: not a role"),
        ({"client": "node"}, "[policy] client: expected an array of strings"),
        ({"client": [9092]}, "[policy] client: expected an array of strings"),
        ({"client": ["database"]}, "'database' is not one of"),
        ({"client": ["coordinator:"]}, "port '' is not 1-65535"),
        ({"client": ["node:0"]}, "port '0' is not 1-65535"),
        ({"client": ["node:65536"]}, "port '65536' is not 1-65535"),
        ({"client": ["node:http"]}, "port 'http' is not 1-65535"),
        ({"client": ["node:80,"]}, "port '' is not 1-65535"),
        ({"client": ["node:-1"]}, "port '-1' is not 1-65535"),
    ],
)
def test_bad_policies(table: dict[str, object], expected: str) -> None:
    with pytest.raises(PolicyError, match=r"^\[policy\]") as info:
        Policy.parse(table)
    assert expected in str(info.value)


# -- MeshSettings -------------------------------------------------------------------------


def test_settings_json_round_trip() -> None:
    settings = MeshSettings(
        ipaddress.ip_network("10.100.0.0/16"),
        "regions",
        ("hub-1", "hub-2"),
        {
            "us-east": ipaddress.ip_network("10.100.1.0/24"),
            "eu-west": ipaddress.ip_network("10.100.2.0/24"),
        },
        Policy.parse({"client": ["node:9092,9093"], "admin": ["coordinator"]}),
    )
    data = settings.to_json()
    assert data["regions"] == {"us-east": "10.100.1.0/24", "eu-west": "10.100.2.0/24"}
    back = MeshSettings.from_json(data)
    assert back == settings
    assert back.to_json() == data


def test_settings_defaults_and_ipv6_round_trip() -> None:
    settings = MeshSettings(ipaddress.ip_network("fd00:100::/64"))
    assert settings.topology == "full-mesh" and settings.hubs == () and settings.regions == {}
    assert settings.policy == Policy.default()
    assert MeshSettings.from_json(settings.to_json()) == settings


def test_network_for_a_region() -> None:
    east = ipaddress.ip_network("10.100.1.0/24")
    settings = MeshSettings(ipaddress.ip_network("10.100.0.0/16"), regions={"us-east": east})
    assert settings.network_for("us-east") == east
    assert settings.network_for(None) == settings.network
    assert settings.network_for("mars") == settings.network


# -- coordinator.toml ---------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    c = parse("", str(tmp_path / "coordinator.toml"))
    assert c.cluster_id == "pyralog"
    assert c.address == ipaddress.ip_address("10.100.0.1")
    assert c.settings.network == ipaddress.ip_network("10.100.0.0/16")
    assert c.listen_port == 51820 and c.api_port == DEFAULT_API_PORT == 7700
    assert c.endpoints == ("127.0.0.1:51820",)
    assert c.store == "coordinator.db"
    # Paths are relative to the file's directory.
    assert c.base == tmp_path
    assert c.private_key_file == tmp_path / "coordinator.key"
    assert c.admin_socket == tmp_path / "coordinator.sock"
    assert c.audit_log == tmp_path / "audit.log"
    assert c.settings.topology == "full-mesh" and c.settings.policy == Policy.default()


def test_a_full_file(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.toml"
    path.write_text(
        """
[coordinator]
cluster_id = "prod"
network = "10.100.0.0/16"
address = "10.100.0.9"
private_key_file = "keys/coordinator.key"
listen_port = 51999
endpoints = ["198.51.100.7:51999", "[2001:db8::7]:51999", "coord.example.net:51999"]
store = "etcd://10.0.0.5:2379"
api_port = 7788
admin_socket = "/run/pyralog/admin.sock"
audit_log = "logs/audit.log"

[topology]
kind = "regions"
hubs = ["hub-1"]

[regions.us-east]
network = "10.100.1.0/24"

[regions.eu-west]
network = "10.100.2.0/24"

[policy]
client = ["node:9092,9093"]
"""
    )
    c = load(path)
    assert (c.cluster_id, str(c.address), c.listen_port, c.api_port) == (
        "prod",
        "10.100.0.9",
        51999,
        7788,
    )
    assert c.endpoints[1] == "[2001:db8::7]:51999"
    assert c.private_key_file == tmp_path / "keys" / "coordinator.key"
    assert c.admin_socket == Path("/run/pyralog/admin.sock")
    assert c.audit_log == tmp_path / "logs" / "audit.log"
    assert c.store == "etcd://10.0.0.5:2379"
    s = c.settings
    assert s.topology == "regions" and s.hubs == ("hub-1",)
    assert s.regions == {
        "us-east": ipaddress.ip_network("10.100.1.0/24"),
        "eu-west": ipaddress.ip_network("10.100.2.0/24"),
    }
    # A [policy] table changes the roles it names; the others keep their defaults.
    assert s.policy.to_json()["client"] == ["node:9092,9093"]
    assert s.policy.to_json()["node"] == DEFAULT_POLICY["node"]


def test_default_text_parses() -> None:
    c = parse(default_text("lab", "10.9.0.0/24"), PATH)
    assert c.cluster_id == "lab" and str(c.settings.network) == "10.9.0.0/24"
    assert str(c.address) == "10.9.0.1"


def test_ipv6_mesh() -> None:
    c = parse('[coordinator]\nnetwork = "fd00:100::/64"\n', PATH)
    assert str(c.address) == "fd00:100::1"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[coordinator\n", "not valid TOML"),
        ("[bootstrap]\n", "[bootstrap]: unknown section"),
        ("[coordinator]\ncolor = 1\n", "[coordinator] color: unknown key"),
        ("[topology]\nkind = 'star'\nextra = 1\n", "[topology] kind: expected one of"),
        ("[topology]\nkind = 'full-mesh'\nextra = 1\n", "[topology] extra: unknown key"),
        ("[coordinator]\ncluster_id = ''\n", "[coordinator] cluster_id: expected 1-255 bytes"),
        (f"[coordinator]\ncluster_id = '{'x' * 256}'\n", "cluster_id: expected 1-255 bytes"),
        ("[coordinator]\ncluster_id = 7\n", "[coordinator] cluster_id: expected a string"),
        ("[coordinator]\nnetwork = '10.100.0.0/33'\n", "[coordinator] network: not a network"),
        ("[coordinator]\nnetwork = '10.100.0.1/16'\n", "[coordinator] network: not a network"),
        ("[coordinator]\nnetwork = '10.0.0.0/31'\n", "[coordinator] network: 10.0.0.0/31 is too"),
        ("[coordinator]\naddress = 'ten'\n", "[coordinator] address:"),
        ("[coordinator]\naddress = '10.200.0.1'\n", "address: 10.200.0.1 is not inside"),
        ("[coordinator]\naddress = '10.100.0.0'\n", "address: 10.100.0.0 is not a host"),
        ("[coordinator]\naddress = '10.100.255.255'\n", "address: 10.100.255.255 is not a host"),
        ("[coordinator]\nlisten_port = 0\n", "[coordinator] listen_port: expected 1-65535"),
        ("[coordinator]\nlisten_port = true\n", "[coordinator] listen_port: expected an integer"),
        ("[coordinator]\napi_port = 70000\n", "[coordinator] api_port: expected 1-65535"),
        ("[coordinator]\nendpoints = []\n", "[coordinator] endpoints: name at least one"),
        ("[coordinator]\nendpoints = [1]\n", "[coordinator] endpoints: expected strings"),
        ("[coordinator]\nendpoints = ['nohost']\n", "[coordinator] endpoints: endpoint 'nohost'"),
        ("[coordinator]\nendpoints = '1.2.3.4:5'\n", "[coordinator] endpoints: expected an array"),
        ("[topology]\nhubs = [1]\n", "[topology] hubs: expected an array of node ids"),
        ("[topology]\nkind = 'regions'\n", '[topology] kind: "regions" needs at least one'),
        ("regions = 1\n", "[regions]: expected tables"),
        ("[regions]\neast = 1\n", "[regions.east]: expected a table"),
        ("[regions.east]\n", "[regions.east] network: not a network"),
        ("[regions.east]\nnetwork = 'nope'\n", "[regions.east] network: not a network"),
        (
            "[regions.east]\nnetwork = '10.200.0.0/24'\n",
            "[regions.east] network: 10.200.0.0/24 is not inside the mesh network",
        ),
        (
            "[regions.east]\nnetwork = 'fd00::/64'\n",
            "[regions.east] network: fd00::/64 is not the mesh network's IP version",
        ),
        (
            "[regions.east]\nnetwork = '10.100.0.0/16'\n"
            "[regions.west]\nnetwork = '10.100.3.0/24'\n",
            "[regions.west] network: 10.100.3.0/24 overlaps region 'east'",
        ),
        (
            "[regions.east]\nnetwork = '10.100.1.0/24'\ncolor = 'red'\n",
            "[regions.east] color: unknown key",
        ),
        ("policy = 1\n", "[policy]: expected a table"),
        ("[policy]\nroot = ['node']\n", "[policy] root: not a role"),
        ("[policy]\nclient = ['printer']\n", "[policy] client: 'printer': 'printer' is not one"),
        ("[policy]\nclient = ['node:99999']\n", "[policy] client: 'node:99999': port '99999'"),
        ("[policy]\nclient = 'node'\n", "[policy] client: expected an array of strings"),
    ],
)
def test_errors_name_file_table_and_key(text: str, expected: str) -> None:
    message = error_of(text)
    assert expected in message, message


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="cannot read"):
        load(bad)
    assert coordinator_config.DEFAULT_API_PORT == 7700
