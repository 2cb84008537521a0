"""Revocation, update-peer and health in a real cluster (``pyralog coordinator``,
embedded ``pyralog node`` processes, ``pyralog-admin``), each change timed from the
admin command to the moment every other node's peers show it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from meshlab import MeshLab, Proc, mesh_lab
from processes import console_script, wait_until
from pyralog.mesh.join import EnrollmentError, enroll
from pyralog.mesh.keyfile import read_private_key
from pyralog.mesh.token import JoinToken
from pyralog.wireguard.keys import PrivateKey

pytestmark = pytest.mark.slow
PROPAGATION_LIMIT = 2.0  # the bar for a membership change to reach every node


@pytest.fixture
def lab() -> Iterator[MeshLab]:
    with mesh_lab() as made:
        yield made


def _peer_keys(lab: MeshLab, proc: Proc) -> dict[str, str]:
    return {p["public_key"]: p["node_id"] for p in lab.node_status(proc)["peers"]}


def test_revoked_node_is_dropped_and_refused(lab: MeshLab) -> None:
    lab.start_coordinator()
    token = lab.token(reusable=True)
    nodes = [lab.start_node(f"node-{i}", token) for i in (1, 2, 3)]
    ids = {n.name for n in nodes}
    for n in nodes:
        lab.wait_peers(n, (ids - {n.name}) | {"coordinator"}, timeout=15)
    one, two, three = nodes
    assert lab.probe(three, lab.address_of(one))["ok"]
    revoked_key = next(n for n in lab.admin("node", "list") if n["node_id"] == "node-3")[
        "public_key"
    ]

    started = time.monotonic()
    lab.admin("node", "revoke", "--node-id", "node-3")
    took = {}
    for n in (one, two):
        lab.wait_peers(n, {"coordinator", *ids} - {n.name, "node-3"})
        took[n.name] = round(time.monotonic() - started, 3)  # from the command, not the poll
    print(f"revocation propagated (s from the command): {took}")
    assert max(took.values()) < PROPAGATION_LIMIT, took
    for n in (one, two):
        assert revoked_key not in _peer_keys(lab, n)

    # The revoked node still has its old peers, but nobody answers it any more.
    assert not lab.probe(three, lab.address_of(one), timeout=2)["ok"]
    assert not lab.probe(three, lab.address_of(two), timeout=2)["ok"]

    # Re-enrolling its key with a fresh token: silence, counted as a revoked key.
    key = read_private_key(three.directory / "node.key")
    fresh = JoinToken.decode(lab.token(reusable=False))
    with pytest.raises(EnrollmentError, match="no answer"):
        asyncio.run(enroll(key, fresh, "node-3", 51999, timeout=3.0))
    status = lab.status()
    assert status["enrollment"].get("refused_revoked_key", 0) >= 1, status["enrollment"]
    assert "node-3" not in {m["node_id"] for m in status["members"]}

    # node add of that key is refused too; the listing says who revoked it and when.
    done = lab.admin("node", "add", "--node-id", "node-3b", "--public-key", revoked_key,
                     check=False)  # fmt: skip
    assert done.returncode == 1 and "was revoked" in done.stderr
    [entry] = lab.admin("node", "list", "--revoked")
    assert entry["node_id"] == "node-3" and entry["public_key"] == revoked_key
    assert entry["revoked_by"].startswith(f"uid {os.geteuid()}")
    assert time.time() - 60 < entry["revoked_at"] <= time.time()

    # Revoking someone unknown: one line, exit 1.
    done = lab.admin("node", "revoke", "--node-id", "node-9", check=False)
    assert done.returncode == 1 and done.stderr == "pyralog-admin: no node 'node-9'\n"
    from pyralog.mesh import audit

    directory = lab.coordinator.directory  # type: ignore[union-attr]
    lines = (directory / "audit.log").read_text().splitlines()
    public = audit.public_from_text((directory / "audit.pub").read_text())
    assert audit.verify(lines, public)[1] is None
    assert "node_revoked" in [e["kind"] for e in audit.entries(lines)]


def test_update_peer_fixes_a_wrong_key(lab: MeshLab) -> None:
    lab.start_coordinator()
    token = lab.token(reusable=True)
    a, b = lab.start_node("a", token), lab.start_node("node-2", token)
    lab.wait_peers(a, {"node-2", "coordinator"}, timeout=15)
    address = lab.address_of(b)
    assert lab.probe(a, address)["ok"]
    real = next(k for k, n in _peer_keys(lab, a).items() if n == "node-2")
    wrong = PrivateKey.generate().public_key.to_base64()

    def timed_update(new_key: str) -> float:
        started = time.monotonic()
        lab.admin("wireguard", "update-peer", "--peer-id", "node-2", "--public-key", new_key)
        assert wait_until(lambda: _peer_keys(lab, a).get(new_key) == "node-2", 10, interval=0.02)
        return time.monotonic() - started

    took_wrong = timed_update(wrong)
    assert real not in _peer_keys(lab, a)
    assert not lab.probe(a, address, timeout=2)["ok"]
    took_fixed = timed_update(real)
    print(f"update-peer propagated: wrong key {took_wrong:.3f} s, fixed key {took_fixed:.3f} s")
    assert max(took_wrong, took_fixed) < PROPAGATION_LIMIT
    assert wait_until(lambda: lab.probe(a, address, timeout=2)["ok"], 15, interval=0.5)
    [member] = [n for n in lab.admin("node", "list") if n["node_id"] == "node-2"]
    assert member["public_key"] == real and member["address"] == address

    done = lab.admin("wireguard", "update-peer", "--peer-id", "node-2", "--public-key", "x",
                     check=False)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == "pyralog-admin: public key 'x' is not a base64 WireGuard public key\n"


def test_cluster_status_exits_1_with_a_member_down() -> None:
    """Short thresholds (4 s / 8 s): a killed node's handshake ages past them; the live
    node is restarted so that its own handshake is fresh again."""
    with mesh_lab("[health]\nhealthy_within = 4\ndown_after = 8\n") as lab:
        lab.start_coordinator()
        token = lab.token(reusable=True)
        a, b = lab.start_node("a", token), lab.start_node("b", token)
        lab.wait_peers(a, {"b", "coordinator"}, timeout=15)
        status = lab.status()
        assert {m["node_id"]: m["health"] for m in status["members"]} == {
            "a": "healthy",
            "b": "healthy",
        }
        assert status["health_thresholds"] == {"healthy_within": 4.0, "down_after": 8.0}
        argv = [str(console_script("pyralog-admin")), "--socket", str(lab.coordinator.socket)]  # type: ignore[union-attr]
        assert subprocess.run([*argv, "cluster", "status"], capture_output=True).returncode == 0

        b.process.send_signal(signal.SIGKILL)
        b.process.wait()
        time.sleep(8.5)
        a.process.send_signal(signal.SIGTERM)
        a.process.wait(20)
        a2 = lab.start_node("a", None)
        lab.wait_peers(a2, {"b", "coordinator"}, timeout=15)
        assert wait_until(
            lambda: (
                {m["node_id"]: m["health"] for m in lab.status()["members"]}
                == {"a": "healthy", "b": "down"}
            ),
            10,
        )
        done = subprocess.run([*argv, "cluster", "status"], capture_output=True, text=True)
        assert done.returncode == 1, done
        assert done.stdout.splitlines()[-1] == "down: b"

        # --watch: the same table, redrawn, until Ctrl-C; the exit code is the last one's.
        watch = subprocess.Popen([*argv, "cluster", "status", "--watch", "0.2"],
                                 stdout=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(1.5)
        watch.send_signal(signal.SIGINT)
        try:
            out, _ = watch.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            watch.kill()
            raise
        assert watch.returncode == 1
        assert out.count("-- every 0.2 s, Ctrl-C to stop") >= 2
        assert out.count("down: b") >= 2
