"""The identity directory (mesh source address -> member, and the policy applied to it)
and the node's saved state (round trip, 0600, and unusable files named)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pyralog.mesh.identity import Directory, Member
from pyralog.mesh.policy import Policy
from pyralog.mesh.state import NodeState, StateError

MEMBERS = [
    {"node_id": "n1", "role": "node", "address": "10.100.0.11", "public_key": "k1"},
    {
        "node_id": "gw",
        "role": "gateway",
        "region": "east",
        "address": "10.100.1.1",
        "public_key": "k2",
    },
    {"node_id": "laptop", "role": "client", "address": "fd00::30", "public_key": "k3"},
]


def directory(own_role: str = "node") -> Directory:
    d = Directory()
    d.update(MEMBERS, Policy.default(), own_role)
    return d


def test_lookup_names_members_by_their_mesh_address() -> None:
    d = directory()
    assert d.lookup("10.100.0.11") == Member("n1", "node", None, "k1")
    assert d.lookup("10.100.1.1") == Member("gw", "gateway", "east", "k2")
    assert d.lookup("fd00:0::30") == Member("laptop", "client", None, "k3")  # any spelling
    assert d.lookup("fd00::30%pyralog0") is not None  # a scoped source address
    for unknown in ("10.100.0.12", "not an address", "", "10.100.0.11:80"):
        assert d.lookup(unknown) is None


def test_permits_applies_the_policy_to_this_nodes_role() -> None:
    d = directory("node")
    assert d.permits("10.100.0.11", 22)  # node -> node: any port
    assert d.permits("fd00::30", 9092) and not d.permits("fd00::30", 22)  # client: 9092 only
    assert not d.permits("10.9.9.9", 9092)  # unknown addresses are refused
    # On a client, nodes may not open anything (the default policy gives nodes no rule).
    assert not directory("client").permits("10.100.0.11", 9092)


def test_update_replaces_the_whole_directory() -> None:
    d = directory()
    d.update(MEMBERS[:1], Policy.parse({"node": []}), "node")
    assert d.lookup("10.100.1.1") is None
    assert not d.permits("10.100.0.11", 22)  # the new policy took effect too


def state() -> NodeState:
    return NodeState(
        node_id="n1",
        public_key="k1",
        address="10.100.0.11",
        network="10.100.0.0/16",
        cluster_id="prod",
        coordinator={"public_key": "c", "address": "10.100.0.1", "endpoints": ["1.2.3.4:5"]},
        view={"peers": [], "view": "abc"},
    )


def test_state_round_trip_is_0600(tmp_path: Path) -> None:
    path = NodeState.path_for(tmp_path / "wireguard.key")
    assert path == tmp_path / "wireguard.key.mesh.json"
    assert NodeState.load(path) is None  # not enrolled yet
    state().save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert NodeState.load(path) == state()
    changed = state()
    changed.view = None
    changed.save(path)  # replaced atomically, no temporary file left behind
    assert NodeState.load(path) == changed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wireguard.key.mesh.json"]


@pytest.mark.parametrize(
    "content, words",
    [
        ("{not json", "unreadable mesh state"),
        ('{"node_id": "n1"}', "not a mesh state file"),
        ('{"unknown": 1}', "not a mesh state file"),
    ],
)
def test_unusable_state_files_are_named(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "k.mesh.json"
    path.write_text(content)
    with pytest.raises(StateError) as info:
        NodeState.load(path)
    message = str(info.value)
    assert message.startswith(str(path)) and words in message and "re-enroll" in message


def test_a_hub_forwards_only_between_members_the_policy_links() -> None:
    import ipaddress as ip

    from pyralog.mesh.identity import Directory
    from pyralog.mesh.policy import Policy

    d = Directory()
    members = [
        ("n1", "10.0.0.2", "node"),
        ("c1", "10.0.0.3", "client"),
        ("c2", "10.0.0.4", "client"),
    ]
    d.update(
        [{"node_id": i, "address": a, "role": r, "public_key": "k"} for i, a, r in members],
        Policy.default(),
        "node",
    )

    def packed(text: str) -> bytes:
        return ip.ip_address(text).packed

    assert d.may_forward(packed("10.0.0.3"), packed("10.0.0.2"))  # client -> node
    assert d.may_forward(packed("10.0.0.2"), packed("10.0.0.3"))  # and back
    assert not d.may_forward(packed("10.0.0.3"), packed("10.0.0.4"))  # client -> client
    assert not d.may_forward(packed("10.0.0.9"), packed("10.0.0.2"))  # stranger
