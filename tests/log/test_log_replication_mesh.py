"""Replication on mesh nodes, unprivileged: three embedded nodes, their coordinator's store.

Each node (``pyralog node``, embedded backend, run as user nobody when the tests run as
root) serves its broker on its mesh address with ``[log] replication = true``; the
brokers keep their cluster state in the coordinator's log store, reached over the mesh
(``POST /v1/log/store``). A client enrolled with ``pyralog-admin client add`` produces
through an embedded tunnel. The leader's node is killed with ``kill -9``; a new leader
takes over, nothing acknowledged is lost, and the killed node, restarted, catches up
and rejoins the in-sync set.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from meshlab import MeshLab, Proc, mesh_lab
from processes import wait_until
from pyralog.cli import admin_log
from pyralog.log.client import PyralogClient
from pyralog.net import EmbeddedNetwork
from pyralog.wireguard.config import load

LOG_SECTION = """
[log]
data_dir = "log-data"
replication = true
session_timeout_ms = 2000
replica_lag_time_max_ms = 4000
"""
NAMES = ["b1", "b2", "b3"]
TOPIC = "replicated"


def _up(node: Proc, since: int = 0) -> None:
    marker = "log: replicated"
    assert wait_until(lambda: marker in node.output()[since:] or node.process.poll() is not None,
                      30)  # fmt: skip
    assert marker in node.output()[since:], node.output()


def _start(lab: MeshLab, name: str) -> Proc:
    node = lab.start_node(name, None)
    _up(node)
    return node


async def _metadata(client: PyralogClient) -> Any:
    return await client._metadata([TOPIC], create=False)


def _by_address(lab: MeshLab, nodes: dict[str, Proc]) -> dict[str, str]:
    return {lab.address_of(p): name for name, p in nodes.items()}


def test_a_killed_leader_is_replaced_and_loses_nothing_acknowledged() -> None:
    with mesh_lab() as lab:
        lab.start_coordinator()
        token = lab.token()
        for name in NAMES:
            lab.node_config(name, token, extra=LOG_SECTION)
        nodes = {name: _start(lab, name) for name in NAMES}
        addresses = _by_address(lab, nodes)
        conf, ops = lab.root / "laptop.conf", lab.root / "ops.conf"
        lab.admin("client", "add", "--name", "laptop", "-o", str(conf))
        lab.admin("client", "add", "--name", "ops", "--role", "admin", "-o", str(ops))
        for node in nodes.values():
            lab.wait_peers(node, {"coordinator", "laptop", "ops", *(set(NAMES) - {node.name})},
                           15)  # fmt: skip
        first = lab.address_of(nodes["b1"])
        report: dict[str, Any] = {}

        async def before_kill(net: EmbeddedNetwork) -> dict[int, int]:
            async with await PyralogClient.connect(f"{first}:9092", network=net, timeout=15) as c:
                await c.create_topic(TOPIC, partitions=2, configs={"min.insync.replicas": "2"})
                acked = {}
                for i in range(100):
                    acked[i] = await c.produce(TOPIC, b"v%d" % i, partition=0, acks=-1)
                meta = await _metadata(c)
                assert len(meta.brokers) == 3
                for p in meta.topics[0].partitions:
                    assert sorted(p.replica_nodes) == sorted(b.node_id for b in meta.brokers)
                    assert sorted(p.isr_nodes) == sorted(p.replica_nodes)
                report["leader"] = next(
                    b.host for b in meta.brokers
                    if b.node_id == meta.topics[0].partitions[0].leader_id
                )  # fmt: skip
                return acked

        async def after_kill(net: EmbeddedNetwork, survivor: str) -> None:
            async with await PyralogClient.connect(f"{survivor}:9092", network=net,
                                                   timeout=15) as c:  # fmt: skip
                offset = await c.produce(TOPIC, b"after", partition=0, acks=-1)
                report["retries"] = c.retries
                assert offset == 100
                got = await c.fetch(TOPIC, 0, 0, max_bytes=1 << 20)
                assert [m.value for m in got] == [b"v%d" % i for i in range(100)] + [b"after"]
                meta = await _metadata(c)
                p0 = meta.topics[0].partitions[0]
                assert addresses[report["leader"]] not in {
                    addresses[b.host] for b in meta.brokers if b.node_id == p0.leader_id
                }
                assert len(p0.isr_nodes) == 2

        async def rejoined(net: EmbeddedNetwork, survivor: str) -> bool:
            async with await PyralogClient.connect(f"{survivor}:9092", network=net,
                                                   timeout=15) as c:  # fmt: skip
                meta = await _metadata(c)
                return len(meta.brokers) == 3 and all(
                    len(p.isr_nodes) == 3 for p in meta.topics[0].partitions
                )

        async def main() -> None:
            net = await EmbeddedNetwork.start(load(str(conf)))
            try:
                acked = await before_kill(net)
                assert list(acked.values()) == list(range(100))
                victim = addresses[report["leader"]]
                nodes[victim].process.kill()
                nodes[victim].process.wait(10)
                killed_at = time.monotonic()
                survivor = next(a for a, n in addresses.items() if n != victim)
                await after_kill(net, survivor)
                report["failover_s"] = time.monotonic() - killed_at
                before = len(nodes[victim].output())
                nodes[victim] = lab.start_node(victim, None)
                _up(nodes[victim], before)
                deadline = time.monotonic() + 30
                while not await rejoined(net, survivor):
                    assert time.monotonic() < deadline, "the restarted node never rejoined"
                    await asyncio.sleep(0.5)
                report["rejoined_s"] = time.monotonic() - killed_at
                # An admin member asks the cluster through any broker, over the mesh:
                # every leader reports its followers' lag (pyralog-admin --host).
                admin_net = await EmbeddedNetwork.start(load(str(ops)))
                try:
                    cluster = await admin_log.gather(f"{survivor}:9092", network=admin_net)
                finally:
                    await admin_net.close()
                assert cluster.unreachable == [] and not cluster.problems()
                p0 = next(p for p in cluster.partitions if (p.topic, p.partition) == (TOPIC, 0))
                assert p0.log_end == p0.high_watermark == 101
                assert set(p0.lag) == set(p0.replicas) - {p0.leader}
                assert all(n == 0 for n, _ in p0.lag.values()), p0.lag
            finally:
                await net.close()

        asyncio.run(asyncio.wait_for(main(), 150))
        print(
            f"leader {addresses[report['leader']]} killed: first acks=all write on the new "
            f"leader {report['failover_s']:.2f} s later ({report['retries']} client retries); "
            f"restarted node back in sync {report['rejoined_s']:.2f} s after the kill"
        )
        for node in nodes.values():
            assert node.process.poll() is None, node.output()
