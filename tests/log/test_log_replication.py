"""A replicated cluster of real `pyralog broker` processes on loopback, stock clients.

Three brokers share one SQLite cluster store (``--cluster-store sqlite:///...``: the
brokers-on-one-machine form; the mesh and etcd forms are in test_log_replication_mesh
and test_log_jepsen). librdkafka (kcat, confluent-kafka) produces with acks=all; a
leader or a group coordinator is killed with ``kill -9``; nothing acknowledged is lost,
clients find the new leader by themselves, a consumer group carries on.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from logbroker import RunningBroker, start_broker

from ports import free_port
from processes import stop_process, wait_until
from pyralog.log.connection import Connection
from pyralog.log.group_log import TOPIC as GROUP_TOPIC

confluent_kafka = pytest.importorskip("confluent_kafka")
kafka_admin = pytest.importorskip("confluent_kafka.admin")

SESSION_MS = 1500


class Cluster:
    def __init__(self, root: Path, size: int = 3, store: str | None = None) -> None:
        self.root = root
        self.store = store or f"sqlite://{root / 'cluster.db'}"
        self.ports = {i: free_port() for i in range(1, size + 1)}
        self.brokers: dict[int, RunningBroker] = {}

    def start(self, node: int) -> RunningBroker:
        data = self.root / f"broker-{node}"
        broker = start_broker(
            data,
            "--node-id", str(node), "--cluster-store", self.store,
            "--session-timeout-ms", str(SESSION_MS), "--replica-lag-time-max-ms", "3000",
            port=self.ports[node],
        )  # fmt: skip
        self.brokers[node] = broker
        return broker

    def kill(self, node: int) -> None:
        broker = self.brokers.pop(node)
        broker.process.send_signal(signal.SIGKILL)
        broker.process.wait(10)

    @property
    def bootstrap(self) -> str:
        return ",".join(b.address for b in self.brokers.values())

    def metadata(self, topic: str | None = None, via: str | None = None) -> dict[str, Any]:
        argv = ["kcat", "-b", via or self.bootstrap, "-L", "-J", "-m", "5"]
        done = subprocess.run([*argv, *(["-t", topic] if topic else [])], capture_output=True,
                              text=True, timeout=20)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def partitions(self, topic: str, via: str | None = None) -> list[dict[str, Any]]:
        for t in self.metadata(topic, via)["topics"]:
            if t["topic"] == topic:
                return t["partitions"]
        return []

    def in_sync(self, topic: str, size: int) -> bool:
        """As every live broker tells it."""
        for b in self.brokers.values():
            parts = self.partitions(topic, b.address)
            if not parts or not all(len(p["isrs"]) == size for p in parts):
                return False
        return True

    def close(self) -> None:
        for broker in self.brokers.values():
            stop_process(broker.process, signal.SIGTERM, timeout=15)


@pytest.fixture(params=["sqlite"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """Three brokers on one store: SQLite, or (parametrized "etcd") a real etcd."""
    store = None
    if request.param == "etcd":
        from etcd import unique_prefix

        store = request.getfixturevalue("etcd_server").url(unique_prefix("replication"))
    c = Cluster(tmp_path, store=store)
    try:
        for node in c.ports:
            c.start(node)
        # Every broker has seen the others' heartbeats.
        for b in c.brokers.values():
            assert wait_until(
                lambda b=b: len(c.metadata(via=b.address)["brokers"]) == len(c.ports), 20
            )
        yield c
    finally:
        c.close()
        for b in c.brokers.values():
            if b.process.returncode not in (0, None):
                print("--- broker log ---\n" + "\n".join(b.log[-40:]))


def _producer(cluster: Cluster, **extra: Any) -> Any:
    return confluent_kafka.Producer(
        {"bootstrap.servers": cluster.bootstrap, "acks": "all", "enable.idempotence": True,
         "message.timeout.ms": 30000, "topic.metadata.refresh.interval.ms": 1000, **extra}
    )  # fmt: skip


def _produce(producer: Any, topic: str, values: list[bytes], partition: int = 0) -> dict:
    acked: dict[bytes, int] = {}
    errors: list[str] = []

    def report(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            acked[msg.value()] = msg.offset()

    for v in values:
        while True:
            try:
                producer.produce(topic, v, partition=partition, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not errors, errors[:5]
    return acked


def _read_all(cluster: Cluster, topic: str, partition: int, count: int) -> list[bytes]:
    consumer = confluent_kafka.Consumer(
        {"bootstrap.servers": cluster.bootstrap, "group.id": f"reader-{time.time()}",
         "enable.auto.commit": False, "auto.offset.reset": "earliest"}
    )  # fmt: skip
    try:
        consumer.assign([confluent_kafka.TopicPartition(topic, partition, 0)])
        got: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(got) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append(msg.value())
        return got
    finally:
        consumer.close()


def _create(cluster: Cluster, topic: str, partitions: int = 1) -> None:
    admin = kafka_admin.AdminClient({"bootstrap.servers": cluster.bootstrap})
    new = kafka_admin.NewTopic(topic, partitions, 3,
                                         config={"min.insync.replicas": "2"})  # fmt: skip
    admin.create_topics([new])[topic].result(30)
    assert wait_until(lambda: cluster.in_sync(topic, 3), 20)


def _leader(cluster: Cluster, topic: str, partition: int = 0) -> int:
    return int(cluster.partitions(topic)[partition]["leader"])


@pytest.mark.parametrize("cluster", ["sqlite", "etcd"], indirect=True)
def test_acks_all_survive_killing_the_leader_and_it_catches_up(cluster: Cluster) -> None:
    _create(cluster, "orders")
    producer = _producer(cluster)
    first = [b"a%d" % i for i in range(2000)]
    acked = _produce(producer, "orders", first)
    assert sorted(acked.values()) == list(range(2000))
    victim = _leader(cluster, "orders")
    cluster.kill(victim)
    killed = time.monotonic()
    second = [b"b%d" % i for i in range(500)]
    acked.update(_produce(producer, "orders", second))
    recovered = time.monotonic() - killed
    producer.flush(10)
    assert _leader(cluster, "orders") != victim
    got = _read_all(cluster, "orders", 0, 2500)
    assert got == first + second  # one order, nothing lost, nothing twice
    assert all(got[offset] == value for value, offset in acked.items())
    cluster.start(victim)
    assert wait_until(lambda: cluster.in_sync("orders", 3), 30), cluster.partitions("orders")
    print(f"{cluster.store}: leader {victim} killed: the next 500 acks=all records took "
          f"{recovered:.2f} s")  # fmt: skip


def test_not_enough_replicas_is_refused_not_silently_accepted(cluster: Cluster) -> None:
    _create(cluster, "strict")
    leader = _leader(cluster, "strict")
    for node in [n for n in list(cluster.brokers) if n != leader]:
        cluster.kill(node)

    async def produce_once() -> tuple[int, int]:
        host, port = cluster.brokers[leader].address.split(":")
        conn = await Connection.open(host, int(port))
        try:
            from pyralog.log.records import build_batch

            deadline = time.monotonic() + 20
            while True:
                payload = build_batch([(None, b"x")], timestamp_ms=int(time.time() * 1000))
                body = await conn.call(0, {
                    "transactional_id": None, "acks": -1, "timeout": 2000,
                    "topic_data": [{"name": "strict",
                                    "partition_data": [{"index": 0, "records": payload}]}],
                })  # fmt: skip
                code = body.responses[0].partition_responses[0].error_code
                if code == 19 or time.monotonic() > deadline:
                    acks1 = await conn.call(0, {
                        "transactional_id": None, "acks": 1, "timeout": 2000,
                        "topic_data": [{"name": "strict",
                                        "partition_data": [{"index": 0, "records": payload}]}],
                    })  # fmt: skip
                    return code, acks1.responses[0].partition_responses[0].error_code
                await asyncio.sleep(0.3)
        finally:
            await conn.close()

    acks_all, acks_one = asyncio.run(produce_once())
    # Once the leader dropped the dead followers from its in-sync set, acks=all is
    # refused (NOT_ENOUGH_REPLICAS); acks=1 is still taken, as in Kafka.
    assert (acks_all, acks_one) == (19, 0)


def test_a_consumer_group_carries_on_when_its_coordinator_is_killed(cluster: Cluster) -> None:
    _create(cluster, "events", partitions=2)
    producer = _producer(cluster)
    for p in (0, 1):
        _produce(producer, "events", [b"%d-%d" % (p, i) for i in range(300)], partition=p)
    conf = {"bootstrap.servers": cluster.bootstrap, "group.id": "billing",
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "session.timeout.ms": 6000, "heartbeat.interval.ms": 500}  # fmt: skip
    consumer = confluent_kafka.Consumer(conf)
    consumer.subscribe(["events"])
    seen: list[bytes] = []

    def consume_until(n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(seen) < n and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                seen.append(msg.value())
                if len(seen) % 50 == 0 or len(seen) == n:
                    consumer.commit(asynchronous=False)
        assert len(seen) >= n, f"consumed {len(seen)} of {n}"

    try:
        consume_until(400)
        committed_before = {
            tp.partition: tp.offset
            for tp in consumer.committed([confluent_kafka.TopicPartition("events", p)
                                          for p in (0, 1)], timeout=10)
        }  # fmt: skip
        coordinator = _group_coordinator(cluster, "billing")
        cluster.kill(coordinator)
        for p in (0, 1):
            _produce(producer, "events", [b"%d-late-%d" % (p, i) for i in range(100)], p)
        consume_until(800)
        successor = _group_coordinator(cluster, "billing")
        assert successor != coordinator
        # It took the group over from __consumer_offsets (its generation and offsets).
        took_over = [line for line in cluster.brokers[successor].log
                     if "coordinating 1 groups" in line]  # fmt: skip
        assert took_over, cluster.brokers[successor].log[-20:]
        committed_after = {
            tp.partition: tp.offset
            for tp in consumer.committed([confluent_kafka.TopicPartition("events", p)
                                          for p in (0, 1)], timeout=10)
        }  # fmt: skip
        assert sum(committed_after.values()) == 800
        assert all(committed_after[p] >= committed_before[p] for p in (0, 1))
    finally:
        consumer.close()
    # Exactly the 800 records, each once: no re-read from the start after the failover.
    assert sorted(seen) == sorted(
        [b"%d-%d" % (p, i) for p in (0, 1) for i in range(300)]
        + [b"%d-late-%d" % (p, i) for p in (0, 1) for i in range(100)]
    )
    # A new member of the group starts where the group committed: nothing left to read.
    late = confluent_kafka.Consumer(conf)
    try:
        late.subscribe(["events"])
        extra = [m for m in (late.poll(1.0) for _ in range(8)) if m is not None and not m.error()]
        assert extra == []
    finally:
        late.close()


def _group_coordinator(cluster: Cluster, group: str) -> int:
    async def ask() -> int:
        host, port = next(iter(cluster.brokers.values())).address.split(":")
        conn = await Connection.open(host, int(port))
        try:
            for _ in range(50):
                body = await conn.call(10, {"key": group, "key_type": 0})
                if body.error_code == 0:
                    return int(body.node_id)
                await asyncio.sleep(0.2)
            raise AssertionError(f"no coordinator for {group}: {body}")
        finally:
            await conn.close()

    return asyncio.run(ask())


def test_internal_topic_and_bad_replication_requests(cluster: Cluster) -> None:
    admin = kafka_admin.AdminClient({"bootstrap.servers": cluster.bootstrap})
    too_many = kafka_admin.NewTopic("wide", 1, 5)
    with pytest.raises(confluent_kafka.KafkaException, match="INVALID_REPLICATION_FACTOR"):
        admin.create_topics([too_many])["wide"].result(30)

    # A fetch claiming to be a replica that no broker record backs is refused.
    async def fake_replica() -> int:
        host, port = next(iter(cluster.brokers.values())).address.split(":")
        conn = await Connection.open(host, int(port))
        try:
            body = await conn.call(1, {
                "replica_id": 424242, "max_wait": 0, "min_bytes": 1, "max_bytes": 1024,
                "isolation_level": 0, "session_id": 0, "session_epoch": -1,
                "topics": [], "forgotten_topics_data": [], "rack_id": "",
            })  # fmt: skip
            return int(body.error_code)
        finally:
            await conn.close()

    assert asyncio.run(fake_replica()) == 31  # CLUSTER_AUTHORIZATION_FAILED
    _group_coordinator(cluster, "any")  # creates the groups' topic
    assert wait_until(lambda: cluster.in_sync(GROUP_TOPIC, 3), 20)
    parts = cluster.partitions(GROUP_TOPIC)
    assert len(parts) == 3 and all(len(p["replicas"]) == 3 for p in parts)


def _admin(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    from processes import console_script

    via = next(iter(cluster.brokers.values())).address
    argv = [str(console_script("pyralog-admin")), "--host", via, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_admin_commands_show_the_cluster_and_gate_on_replication(cluster: Cluster) -> None:
    _create(cluster, "audit", partitions=2)
    status = _admin(cluster, "cluster", "status")
    assert status.returncode == 0, status.stderr
    assert "controller" in status.stdout and "2 partitions, 0 under-replicated" in status.stdout
    listing = _admin(cluster, "partition", "list")
    assert listing.returncode == 0 and "audit-0" in listing.stdout and "audit-1" in listing.stdout
    ok = _admin(cluster, "replication", "check")
    assert (ok.returncode, ok.stdout.strip()) == (0, "all 2 partitions fully replicated")
    follower = next(n for n in cluster.brokers if n != _leader(cluster, "audit", 0))
    cluster.kill(follower)

    def flagged() -> subprocess.CompletedProcess[str] | None:
        done = _admin(cluster, "replication", "check")
        return done if done.returncode == 1 else None

    bad = wait_until(flagged, 20, interval=0.5)
    assert bad, "replication check never noticed the dead follower"
    assert f"replica {follower} offline" in bad.stdout or "under-replicated" in bad.stdout
    as_json = json.loads(_admin(cluster, "--json", "replication", "check").stdout)
    assert {p["topic"] for p in as_json["partitions"]} == {"audit"}
    assert all(p["problem"] for p in as_json["partitions"] if p["topic"] == "audit")
    # Nobody to ask, or nothing to ask it: a clear line and exit 2.
    argv_free = f"127.0.0.1:{free_port()}"
    from processes import console_script

    dead = subprocess.run([str(console_script("pyralog-admin")), "--host", argv_free,
                           "replication", "check"], capture_output=True, text=True,
                          timeout=30)  # fmt: skip
    assert dead.returncode == 2 and "cannot ask the cluster" in dead.stdout
    no_host = subprocess.run([str(console_script("pyralog-admin")), "partition", "list"],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    assert no_host.returncode == 2 and "give --host BROKER" in no_host.stderr


@pytest.mark.parametrize("client", ["kafka-python", "aiokafka", "kcat"])
def test_stock_clients_find_the_new_leader(cluster: Cluster, client: str) -> None:
    import stockclients

    if reason := stockclients.missing(client):
        pytest.skip(reason)
    topic = f"moving-{client}"
    _create(cluster, topic)
    before, after = stockclients.records(300, "before"), stockclients.records(300, "after")
    stockclients.produce(client, cluster.bootstrap, topic, before)
    victim = _leader(cluster, topic)
    cluster.kill(victim)
    assert wait_until(lambda: _leader(cluster, topic) not in (victim, -1), 20)
    stockclients.produce(client, cluster.bootstrap, topic, after)
    got = stockclients.read(client, cluster.bootstrap, topic, 600)
    assert [(k, v) for _, k, v in got] == before + after
    assert [o for o, _, _ in got] == list(range(600))
