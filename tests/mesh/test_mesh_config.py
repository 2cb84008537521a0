"""wireguard.toml: what the product document writes loads; everything else is refused
with one message naming the file, the section and the key."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from pyralog.mesh.config import DEFAULT_PORT, MeshConfigError, load, parse
from pyralog.wireguard.keys import PrivateKey

PEER = PrivateKey(bytes([3]) * 32).public_key

DOCUMENT_EXAMPLE = f"""
# /etc/dlog/wireguard.toml
[interface]
private_key_file = "/etc/dlog/wireguard-private.key"
address = "10.0.0.1/24"
listen_port = 51820
mtu = 1420

[bootstrap]
coordinator_endpoint = "bootstrap.dlog.example.com:9092"
cluster_id = "production-us-west"

[[peer]]
public_key = "{PEER.to_base64()}"
endpoint = "10.0.0.2:51820"
allowed_ips = ["10.0.0.2/32"]
persistent_keepalive = 25
"""


def test_the_documents_example_loads() -> None:
    c = parse(DOCUMENT_EXAMPLE, "wireguard.toml")
    assert c.backend == "auto" and c.interface_name == "pyralog0"
    assert c.private_key_file == Path("/etc/dlog/wireguard-private.key")
    assert c.addresses == (ipaddress.ip_interface("10.0.0.1/24"),)
    assert (c.listen_port, c.mtu) == (51820, 1420)
    assert c.bootstrap is not None
    assert c.bootstrap.coordinator_endpoints == (("bootstrap.dlog.example.com", 9092),)
    assert c.bootstrap.cluster_id == "production-us-west"
    (peer,) = c.peers
    assert peer.public_key == PEER and peer.endpoint == ("10.0.0.2", 51820)
    assert peer.allowed_ips == (ipaddress.ip_network("10.0.0.2/32"),)
    assert peer.persistent_keepalive == 25
    assert c.notices == ()


def test_minimal_file_gets_defaults() -> None:
    c = parse('[interface]\nprivate_key_file = "node.key"\n', "/etc/pyralog/wireguard.toml")
    assert c.private_key_file == Path("/etc/pyralog/node.key")  # relative to the file
    assert c.listen_port == DEFAULT_PORT and c.mtu == 1420
    assert c.addresses == () and c.bootstrap is None and c.peers == () and c.node_id is None


@pytest.mark.parametrize(
    ("backend", "expected", "notice"),
    [
        ("auto", "auto", None),
        ("kernel", "kernel", None),
        ("userspace", "userspace", None),
        ("embedded", "embedded", None),
        ("boringtun", "userspace", 'backend "boringtun" means "userspace"'),
    ],
)
def test_backends(backend: str, expected: str, notice: str | None) -> None:
    c = parse(f'[wireguard]\nbackend = "{backend}"\n[interface]\nprivate_key_file = "k"\n')
    assert c.backend == expected
    if notice is None:
        assert c.notices == ()
    else:
        assert len(c.notices) == 1 and notice in c.notices[0]


def test_reserved_sections_load_with_a_notice() -> None:
    text = (
        '[wireguard]\nbackend = "kernel"\n[interface]\nprivate_key_file = "k"\n'
        "[dpi_evasion]\nenabled = true\n[dpi_evasion.padding]\nmin_size = 64\n"
        '[quantum_resistance]\nenabled = true\nmode = "rosenpass"\n'
        "[rosenpass]\nexchange_interval_sec = 120\n"
        '[encryption]\nat_rest_cipher = "auto"\n[boringtun]\nthreads = 4\n'
        f'[[peer]]\nwireguard_public_key = "{PEER.to_base64()}"\n'
        'rosenpass_public_key = "pq"\nallowed_ips = ["10.0.0.2/32"]\n'
    )
    c = parse(text)
    assert c.peers[0].public_key == PEER
    for name in ("dpi_evasion", "quantum_resistance", "rosenpass", "encryption", "boringtun"):
        assert any(f"[{name}]" in n and "not supported yet" in n for n in c.notices), name
    assert any("rosenpass_public_key" in n for n in c.notices)


def test_several_coordinators() -> None:
    c = parse(
        '[interface]\nprivate_key_file = "k"\n'
        '[bootstrap]\ncoordinator_endpoint = ["c1.example:9092", "[fd00::1]:9092"]\n'
        'token_file = "join.token"\nnode_id = "node-7"\n',
        "/srv/wireguard.toml",
    )
    assert c.bootstrap is not None
    assert c.bootstrap.coordinator_endpoints == (("c1.example", 9092), ("fd00::1", 9092))
    assert c.bootstrap.token_file == Path("/srv/join.token")
    assert c.node_id == "node-7"


# -- environment ---------------------------------------------------------------------------


BASE = '[interface]\nprivate_key_file = "k"\nlisten_port = 51820\n'


def test_environment_overrides_win() -> None:
    env = {
        "PYRALOG_NODE_ID": "3",
        "PYRALOG_WIREGUARD_PORT": "51999",
        "PYRALOG_CLUSTER_BOOTSTRAP": "coord-a:9092, coord-b:9092",
    }
    c = parse(BASE, env=env)
    assert c.node_id == "3" and c.listen_port == 51999
    assert c.bootstrap is not None
    assert c.bootstrap.coordinator_endpoints == (("coord-a", 9092), ("coord-b", 9092))


def test_the_documents_dlog_spellings_are_aliases() -> None:
    env = {
        "DLOG_NODE_ID": "1",
        "DLOG_WIREGUARD_PORT": "51820",
        "DLOG_CLUSTER_BOOTSTRAP": "dlog-coordinator:9092",
    }
    c = parse(BASE, env=env)
    assert c.node_id == "1" and c.listen_port == 51820
    assert c.bootstrap is not None
    assert c.bootstrap.coordinator_endpoints == (("dlog-coordinator", 9092),)


def test_pyralog_spelling_wins_over_the_alias_with_a_notice() -> None:
    c = parse(BASE, env={"PYRALOG_NODE_ID": "a", "DLOG_NODE_ID": "b"})
    assert c.node_id == "a"
    assert any("DLOG_NODE_ID is ignored" in n for n in c.notices)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PYRALOG_WIREGUARD_PORT": "abc"},
         'environment PYRALOG_WIREGUARD_PORT: expected 1-65535, got "abc"'),
        ({"DLOG_WIREGUARD_PORT": "0"}, "environment DLOG_WIREGUARD_PORT: expected 1-65535"),
        ({"PYRALOG_CLUSTER_BOOTSTRAP": "no-port"},
         "environment PYRALOG_CLUSTER_BOOTSTRAP: endpoint 'no-port'"),
        ({"PYRALOG_CLUSTER_BOOTSTRAP": " , "},
         "environment PYRALOG_CLUSTER_BOOTSTRAP: expected HOST:PORT"),
        ({"PYRALOG_NODE_ID": "  "}, "node id is empty"),
    ],
)  # fmt: skip
def test_bad_environment_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(MeshConfigError) as info:
        parse(BASE, env=env)
    assert message in str(info.value)


# -- bad files -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[interface]\nprivate_key_file = "k"\nlisten_port = "abc"\n',
         'wireguard.toml: [interface] listen_port: expected an integer, got "abc"'),
        ('[interface]\nprivate_key_file = "k"\nlisten_port = 70000\n',
         "wireguard.toml: [interface] listen_port: expected 1-65535, got 70000"),
        ('[interface]\nprivate_key_file = "k"\nmtu = 576\n',
         "[interface] mtu: expected 1280-65535, got 576"),
        ('[interface]\nprivate_key_file = "k"\nlisten_port = true\n',
         "[interface] listen_port: expected an integer, got true"),
        ('[interface]\nprivate_key_file = "k"\naddress = "10.0.0.300/24"\n',
         '[interface] address: expected ADDRESS/PREFIX, got "10.0.0.300/24"'),
        ('[interface]\nprivate_key_file = "k"\nlisten-port = 1\n',
         "[interface] listen-port: unknown key"),
        ("[interface]\nlisten_port = 1\n", "[interface] private_key_file: missing"),
        ('[wireguard]\nbackend = "wireguard-go"\n[interface]\nprivate_key_file = "k"\n',
         '[wireguard] backend: expected one of "auto", "kernel", "userspace", "embedded"'),
        ('[wireguard]\ninterface_name = "way-too-long-name"\n[interface]\nprivate_key_file = "k"\n',
         "[wireguard] interface_name:"),
        ('[interface]\nprivate_key_file = "k"\n[telemetry]\nenabled = true\n',
         "wireguard.toml: [telemetry]: unknown section"),
        ('[wireguard]\n', "[interface]: missing"),
        ('interface = 3\n', "interface: expected a [interface] table"),
        ('[interface]\nprivate_key_file = "k"\n[peer]\npublic_key = "x"\n',
         "[peer]: peers are [[peer]] tables"),
        ('[interface]\nprivate_key_file = "k"\n[[peer]]\nendpoint = "1.2.3.4:5"\n',
         "[[peer]] #1 public_key: missing"),
        ('[interface]\nprivate_key_file = "k"\n[[peer]]\npublic_key = "short"\n',
         "[[peer]] #1 public_key:"),
        (f'[interface]\nprivate_key_file = "k"\n[[peer]]\npublic_key = "{PEER.to_base64()}"\n'
         'allowed_ips = ["10.0.0.2/33"]\n',
         '[[peer]] #1 allowed_ips: expected ADDRESS/PREFIX, got "10.0.0.2/33"'),
        (f'[interface]\nprivate_key_file = "k"\n[[peer]]\npublic_key = "{PEER.to_base64()}"\n'
         'allowed_ips = "10.0.0.2/32"\n',
         "[[peer]] #1 allowed_ips: expected an array"),
        (f'[interface]\nprivate_key_file = "k"\n[[peer]]\npublic_key = "{PEER.to_base64()}"\n'
         'endpoint = "[10.0.0.2]:1"\n',
         "[[peer]] #1 endpoint: endpoint '[10.0.0.2]:1'"),
        (f'[interface]\nprivate_key_file = "k"\n[[peer]]\npublic_key = "{PEER.to_base64()}"\n'
         "persistent_keepalive = -1\n",
         "[[peer]] #1 persistent_keepalive: expected 0-65535, got -1"),
        ('[interface]\nprivate_key_file = "k"\n[bootstrap]\ncluster_id = "x"\n',
         "[bootstrap] coordinator_endpoint: missing"),
        ('[interface]\nprivate_key_file = "k"\n[bootstrap]\ncoordinator_endpoint = "c:1"\n'
         'token = "t"\ntoken_file = "f"\n',
         "[bootstrap] token_file: give token or token_file, not both"),
        ('[interface]\nprivate_key_file = "k"\n[bootstrap]\ncoordinator_endpoint = [1, 2]\n',
         "[bootstrap] coordinator_endpoint: expected a string or an array of strings"),
        ("[interface\n", "wireguard.toml: not valid TOML"),
    ],
)  # fmt: skip
def test_bad_files_name_file_section_and_key(text: str, message: str) -> None:
    with pytest.raises(MeshConfigError) as info:
        parse(text, "wireguard.toml")
    assert message in str(info.value)
    assert "\n" not in str(info.value)  # one line


def test_load_reads_the_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "wireguard.toml"
    path.write_text(BASE)
    c = load(path, env={"PYRALOG_WIREGUARD_PORT": "40000"})
    assert c.listen_port == 40000 and c.path == str(path)
    assert c.private_key_file == tmp_path / "k"
    with pytest.raises(MeshConfigError, match="cannot read"):
        load(tmp_path / "missing.toml", env={})
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(MeshConfigError, match="not a UTF-8 text file"):
        load(tmp_path / "binary.toml", env={})


def test_join_token_from_the_environment_wins_over_the_file() -> None:
    text = (
        '[interface]\nprivate_key_file = "k"\n'
        '[bootstrap]\ncoordinator_endpoint = "c:1"\ntoken = "file"\n'
    )
    cfg = parse(text, env={"PYRALOG_JOIN_TOKEN": " env-token\n"})
    assert cfg.bootstrap is not None and cfg.bootstrap.token == "env-token"
    cfg = parse(text, env={"DLOG_JOIN_TOKEN": "alias"})
    assert cfg.bootstrap is not None and cfg.bootstrap.token == "alias"


def test_join_token_without_a_coordinator_is_an_error() -> None:
    with pytest.raises(MeshConfigError, match="PYRALOG_JOIN_TOKEN: a token needs a coordinator"):
        parse('[interface]\nprivate_key_file = "k"\n', env={"PYRALOG_JOIN_TOKEN": "t"})


LOG_BASE = '[interface]\nprivate_key_file = "k"\naddress = "10.0.0.1/24"\n'


def test_log_section_defaults_and_values() -> None:
    plain = parse(LOG_BASE, "/etc/pyralog/wireguard.toml")
    assert plain.log.enabled and plain.log.port == 9092 and plain.log.flush == "interval"
    assert plain.log.data_dir == Path("/etc/pyralog/data")
    c = parse(
        LOG_BASE + '[log]\nenabled = false\ndata_dir = "/srv/log"\nport = 19092\n'
        'flush = "always"\npartitions = 6\nauto_create_topics = false\n',
        "/etc/pyralog/wireguard.toml",
    )
    assert c.log.enabled is False and c.log.data_dir == Path("/srv/log")
    assert (c.log.port, c.log.flush, c.log.partitions, c.log.auto_create_topics) == (
        19092,
        "always",
        6,
        False,
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('flush = "sometimes"', '[log] flush: expected one of "always", "interval", "never"'),
        ("port = 0", "[log] port: expected 1-65535, got 0"),
        ("partitions = 0", "[log] partitions: expected 1-10000"),
        ('enabled = "yes"', "[log] enabled: expected true or false"),
        ("colour = 1", "[log] colour: unknown key"),
        ("port = true", "[log] port: expected an integer, got true"),
    ],
)
def test_log_section_errors_name_the_key(body: str, message: str) -> None:
    with pytest.raises(MeshConfigError, match=re.escape(message)):
        parse(LOG_BASE + "[log]\n" + body + "\n", "wireguard.toml")
