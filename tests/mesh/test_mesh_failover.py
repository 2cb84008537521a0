"""Two coordinators on one etcd serve one cluster: kill one (and an etcd member), the
nodes carry on with the other, and membership changes still reach them."""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator

import pytest

from etcd import EtcdCluster
from meshlab import MeshLab, mesh_lab
from ports import free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def lab() -> Iterator[MeshLab]:
    with mesh_lab() as made:
        yield made


def test_coordinator_failover_on_etcd(lab: MeshLab, etcd_cluster: EtcdCluster) -> None:
    store = etcd_cluster.url("/failover")
    p1, p2 = free_port(kind=2), free_port(kind=2)
    endpoints = [f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"]
    c1 = lab.start_coordinator(port=p1, store=store, endpoints=endpoints)
    # The second coordinator shares the first one's identity (key) and store.
    d2 = lab._dir("coordinator-2")
    shutil.copy2(c1.directory / "coordinator.key", d2 / "coordinator.key")
    if lab.nobody:
        shutil.chown(d2 / "coordinator.key", "nobody", "nogroup")
    c2 = lab.start_coordinator(port=p2, store=store, endpoints=endpoints, directory=d2,
                               name="coordinator-2")  # fmt: skip
    token = lab.token(reusable=True)
    nodes = [lab.start_node(n, token, coordinators=endpoints) for n in ("a", "b", "c")]
    for n in nodes:
        lab.wait_peers(n, {"a", "b", "c", "coordinator"} - {n.name}, timeout=15)
    # Both coordinators see the same members.
    lab.coordinator = c2
    assert {m["node_id"] for m in lab.admin("node", "list")} == {"a", "b", "c"}

    # Kill the coordinator the nodes talk to, and the etcd leader with it.
    c1.process.send_signal(signal.SIGKILL)
    c1.process.wait()
    leader = etcd_cluster.leader()
    assert leader is not None
    leader.kill()
    assert lab.probe(nodes[0], lab.address_of(nodes[1]))["ok"]  # the mesh carries on

    # A member enrolled through the survivor reaches every node through it.
    started = time.monotonic()
    d = lab.start_node("d", lab.token(reusable=True), coordinators=[endpoints[1]])
    for n in nodes:
        lab.wait_peers(n, {"a", "b", "c", "d", "coordinator"} - {n.name}, timeout=30)
    took = time.monotonic() - started
    print(f"failover: a change through the second coordinator reached all nodes in {took:.1f} s")
    assert lab.probe(nodes[2], lab.address_of(d))["ok"]
    statuses = [lab.node_status(n) for n in nodes]
    assert all(s["coordinator_failures"] == 0 for s in statuses)  # recovered
