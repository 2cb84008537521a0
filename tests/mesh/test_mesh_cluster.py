"""A real cluster, fully embedded and unprivileged: a coordinator and nodes as processes.

Everything here is what a user runs: ``pyralog coordinator``, ``pyralog node`` (embedded
backend, run as user nobody when the tests run as root), ``pyralog-admin``. The node's
local socket gives its peers and ``probe`` (a TCP connection over the mesh from inside
the node to another node's identity service).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from meshlab import MeshLab, mesh_lab
from pyralog.mesh.join import EnrollmentError, enroll
from pyralog.mesh.token import JoinToken
from pyralog.wireguard.keys import PrivateKey

pytestmark = pytest.mark.slow
PROPAGATION_LIMIT = 2.0  # the bar for a membership change to reach every node


@pytest.fixture
def lab() -> Iterator[MeshLab]:
    with mesh_lab() as made:
        yield made


def test_four_nodes_enroll_mesh_and_follow_membership(lab: MeshLab) -> None:
    lab.start_coordinator()
    token = lab.token(reusable=True)
    nodes = [lab.start_node(f"node-{i}", token) for i in range(1, 5)]
    ids = {n.name for n in nodes}
    for n in nodes:
        lab.wait_peers(n, (ids - {n.name}) | {"coordinator"}, timeout=15)
    addresses = {n.name: lab.address_of(n) for n in nodes}
    assert len(set(addresses.values())) == 4
    assert all(a.startswith("10.77.") for a in addresses.values())
    # Every ordered pair: TCP over the mesh, and the callee names the caller correctly.
    for a, b in itertools.permutations(nodes, 2):
        answer = lab.probe(a, addresses[b.name])
        assert answer["ok"], (a.name, b.name, answer)
        assert answer["answer"]["you"]["node_id"] == a.name
        assert answer["answer"]["me"]["node_id"] == b.name
    status = lab.status()
    assert {m["node_id"]: m["health"] for m in status["members"]} == dict.fromkeys(ids, "healthy")

    # A fifth node enrolls: every node gets it as a peer and reaches it.
    fifth = lab.start_node("node-5", token)
    for n in nodes:
        lab.wait_peers(n, (ids | {"node-5", "coordinator"}) - {n.name})
    assert lab.probe(nodes[0], lab.address_of(fifth))["ok"]

    # Membership changes reach every node within the limit, timed from the change.
    def everyone_sees(expected: set[str], since: float) -> list[float]:
        for n in nodes:
            lab.wait_peers(n, expected - {n.name}, timeout=10)
        return [time.monotonic() - since]

    started = time.monotonic()
    lab.admin("node", "remove", "node-5")
    took = everyone_sees(ids | {"coordinator"}, started)
    assert max(took) < PROPAGATION_LIMIT, took
    assert not lab.probe(nodes[0], lab.address_of(fifth), timeout=2)["ok"]
    started = time.monotonic()
    key = PrivateKey.generate().public_key.to_base64()
    lab.admin("node", "add", "--node-id", "manual", "--public-key", key,
              "--endpoint", "127.0.0.1:9")  # fmt: skip
    took = everyone_sees(ids | {"coordinator", "manual"}, started)
    assert max(took) < PROPAGATION_LIMIT, took


def test_nodes_keep_working_without_the_coordinator_and_state_survives(lab: MeshLab) -> None:
    coord = lab.start_coordinator()
    token = lab.token(reusable=True)
    a, b = lab.start_node("a", token), lab.start_node("b", token)
    lab.wait_peers(a, {"b", "coordinator"}, timeout=15)
    before = {n["node_id"]: n["address"] for n in lab.admin("node", "list")}
    coord.process.send_signal(signal.SIGKILL)
    coord.process.wait()
    assert lab.probe(a, lab.address_of(b))["ok"]  # the mesh does not need the coordinator
    # A node restarted while the coordinator is down comes up with its last peers.
    b.process.send_signal(signal.SIGKILL)
    b.process.wait()
    b2 = lab.start_node("b", None)
    lab.wait_peers(b2, {"a", "coordinator"}, timeout=10)
    assert lab.probe(a, lab.address_of(b2))["ok"]
    # The coordinator restarts on the same store: same members, same addresses.
    lab.coordinator = None
    lab.start_coordinator(port=coord.port, directory=coord.directory)
    assert {n["node_id"]: n["address"] for n in lab.admin("node", "list")} == before
    c = lab.start_node("c", token)
    for n in (a, b2):
        lab.wait_peers(n, {"a", "b", "c", "coordinator"} - {n.name.split("-")[0]}, timeout=15)
    assert lab.probe(c, before["a"])["ok"]


def test_reenrolling_with_a_new_key_replaces_the_old_key(lab: MeshLab) -> None:
    lab.start_coordinator()
    token = lab.token(reusable=True)
    a, b = lab.start_node("a", token), lab.start_node("b", token)
    lab.wait_peers(a, {"b", "coordinator"}, timeout=15)
    old_key = next(p["public_key"] for p in lab.node_status(a)["peers"] if p["node_id"] == "b")
    address = lab.address_of(b)
    b.process.send_signal(signal.SIGKILL)
    b.process.wait()
    for leftover in ("node.key", "node.key.mesh.json"):
        (b.directory / leftover).unlink()
    # A reusable token cannot take over an existing id (two machines, one id) ...
    dup = lab.start_node("b", token, wait=False)
    assert dup.process.wait(30) == 1
    assert "belongs to another key; re-enroll it with a one-time token" in dup.output()
    # ... a one-time token, issued for this, can.
    b2 = lab.start_node("b", lab.token(reusable=False))
    assert lab.address_of(b2) == address

    def new_key_installed() -> bool:
        keys = {p["public_key"] for p in lab.node_status(a)["peers"]}
        return old_key not in keys and len(keys) == 2

    from processes import wait_until

    assert wait_until(new_key_installed, 5)
    assert lab.probe(a, address)["ok"]


def _enroll(token: str, node_id: str, timeout: float = 3.0) -> dict:
    return asyncio.run(
        enroll(PrivateKey.generate(), JoinToken.decode(token), node_id, 51999, timeout=timeout)
    )


def test_token_abuse_gets_silence_and_is_counted(lab: MeshLab) -> None:
    coord = lab.start_coordinator()
    once = lab.token(reusable=False)
    assert _enroll(once, "first")["node"]["node_id"] == "first"
    with pytest.raises(EnrollmentError, match="no answer"):
        _enroll(once, "second")  # one-time: dead after its use
    short = lab.token(ttl="1s")
    time.sleep(1.5)
    with pytest.raises(EnrollmentError, match="no answer"):
        _enroll(short, "late")
    revoked = lab.admin("token", "create", "--reusable")
    lab.admin("token", "revoke", revoked["id"])
    with pytest.raises(EnrollmentError, match="no answer"):
        _enroll(revoked["token"], "revoked")
    # Right coordinator key, wrong secret.
    real = JoinToken.decode(lab.token())
    forged = JoinToken(os.urandom(32), real.coordinator_key, real.coordinator_address,
                       real.endpoints, real.cluster_id, real.api_port)  # fmt: skip
    with pytest.raises(EnrollmentError, match="no answer"):
        _enroll(forged.encode(), "forged")
    # Random bytes and a bare 148-byte initiation look-alike: nothing comes back.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        for payload in (os.urandom(64), b"\x01\x00\x00\x00" + os.urandom(144), b""):
            if payload:
                s.sendto(payload, ("127.0.0.1", coord.port))
        with pytest.raises(TimeoutError):
            s.recvfrom(2048)
    counters = lab.status()["enrollment"]
    assert counters["refused_used"] >= 1
    assert counters["refused_expired"] >= 1
    assert counters["refused_revoked"] >= 1
    assert counters["refused_no_token"] >= 1
    audit = (coord.directory / "audit.log").read_text()
    for event in (
        "enrollment_refused_used",
        "enrollment_refused_expired",
        "enrollment_refused_revoked",
        "enrollment_refused_no_token",
        "node_enrolled",
    ):
        assert event in audit, event  # fmt: skip


def test_bad_node_configs_fail_with_one_clear_line(lab: MeshLab) -> None:
    lab.start_coordinator()
    d, _ = lab.node_config("bad", "not-a-token")
    proc = lab.start_node("bad", None, wait=False)
    assert proc.process.wait(20) == 1
    out = proc.output().strip().splitlines()
    assert out[-1].startswith("pyralog node: ") and "not a join token" in out[-1], out
    (d / "wireguard.toml").write_text('[interface]\nprivate_key_file = "k"\nlisten_port = "abc"\n')
    proc = lab.start_node("bad", None, wait=False)
    assert proc.process.wait(20) == 1
    assert '[interface] listen_port: expected an integer, got "abc"' in proc.output()
