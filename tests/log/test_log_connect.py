"""``pyralog connect`` end to end: stock clients on 127.0.0.1, a replicated mesh behind.

One cluster for the module (connectlab): three embedded nodes with replication, a client
member's wg-quick file, and ``pyralog connect`` on it. kcat, confluent-kafka,
kafka-python and aiokafka produce to and read from a replication-factor-3 topic through
the gateway's local ports; garbage from a local client closes only that connection; and
with a consumer group active the partition leader's node is killed with ``kill -9``:
producer (acks=all) and group consumer carry on through the gateway, and everything
acknowledged is consumed.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import stockclients
from connectlab import Cluster, connected_cluster

from processes import wait_until

N = 500


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with connected_cluster() as c:
        yield c


def _create_topic(listen: str, topic: str, **configs: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": listen})
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=1, replication_factor=3, config=configs)]
    )
    futures[topic].result(30)


def _leader(listen: str, topic: str) -> tuple[int, list[int]]:
    from confluent_kafka.admin import AdminClient

    meta = AdminClient({"bootstrap.servers": listen}).list_topics(topic, timeout=30)
    partition = meta.topics[topic].partitions[0]
    return partition.leader, list(partition.replicas)


def test_the_ready_line_and_one_mapping_per_broker(cluster: Cluster) -> None:
    out = cluster.gateway.output()
    assert f"pyralog connect: ready: Kafka clients use {cluster.gateway.listen}" in out
    mapped = re.findall(r"pyralog connect: broker (\d+) \((\S+):9092\) -> 127\.0\.0\.1:(\d+)", out)
    ids = {cluster.broker_id(n) for n in cluster.nodes}
    assert {int(i) for i, _, _ in mapped} == ids
    addresses = {cluster.lab.address_of(p) for p in cluster.nodes.values()}
    assert {a for _, a, _ in mapped} == addresses


@pytest.mark.parametrize("client", stockclients.CLIENTS)
def test_stock_clients_produce_and_read_back(cluster: Cluster, client: str) -> None:
    if reason := stockclients.missing(client):
        pytest.skip(reason)
    listen = cluster.gateway.listen
    topic = f"via-connect-{client}"
    _create_topic(listen, topic, **{"min.insync.replicas": "2"})
    _, replicas = _leader(listen, topic)
    assert sorted(replicas) == sorted(cluster.broker_id(n) for n in cluster.nodes)
    sent = stockclients.records(N, topic)
    stockclients.produce(client, listen, topic, sent)
    got = stockclients.read(client, listen, topic, N)
    assert [(o, k, v) for o, k, v in got] == [(i, k, v) for i, (k, v) in enumerate(sent)]


def test_kcat_lists_local_brokers_only(cluster: Cluster) -> None:
    done = subprocess.run(["kcat", "-u", "-L", "-b", cluster.gateway.listen], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    hosts = re.findall(r"broker \d+ at (\S+)", done.stdout)
    assert len(hosts) == 3 and all(h.startswith("127.0.0.1:") for h in hosts), done.stdout


def _closed_by_gateway(listen: str, data: bytes) -> bool:
    host, port = listen.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(data)
        try:
            return s.recv(1024) == b""
        except ConnectionResetError:
            return True


@pytest.mark.parametrize(
    ("data", "logged"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "exceeds the 104857600-byte bound"),
        ((200 * 1024 * 1024).to_bytes(4, "big"), "frame size 209715200 exceeds"),
        ((-5).to_bytes(4, "big", signed=True), "frame size -5 is below the smallest"),
        (b"\0\0\0\x03abc", "frame size 3 is below the smallest"),
        (b"\0\0\0\x08\xff\xff\0\0\0\0\0\x01", "not a request: api key -1"),
        (b"\0\0\0\x0a\0\x03\0\x63\0\0\0\x01\xff\xff", "api 3 v99: the gateway cannot rewrite"),
    ],
    ids=["http", "oversized", "negative", "short", "bad-api-key", "metadata-v99"],
)
def test_malformed_frames_close_that_connection_only(
    cluster: Cluster, data: bytes, logged: str
) -> None:
    assert _closed_by_gateway(cluster.gateway.listen, data)
    assert wait_until(lambda: logged in cluster.gateway.output(), 5), cluster.gateway.output()
    assert "closing the connection" in cluster.gateway.output()
    assert cluster.gateway.process.poll() is None
    assert _alive(cluster.gateway.listen) == 3


# -- a leader killed while a consumer group is active ------------------------------------


class Workload:
    """A producer (acks=all) and a group consumer, each in a thread of its own, that run
    until told to stop; what was acknowledged and what was consumed are recorded."""

    def __init__(self, produce: Callable[[Workload], None],
                 consume: Callable[[Workload], None]) -> None:  # fmt: skip
        self.acked: list[bytes] = []
        self.consumed: list[bytes] = []
        self.errors: list[str] = []
        self.stop_producing = threading.Event()
        self.stop_consuming = threading.Event()
        self.threads = [threading.Thread(target=f, args=(self,), daemon=True)
                        for f in (produce, consume)]  # fmt: skip

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self, timeout: float) -> None:
        self.stop_producing.set()
        self.threads[0].join(timeout)
        wait_until(lambda: set(self.acked) <= set(self.consumed), timeout, interval=0.2)
        self.stop_consuming.set()
        self.threads[1].join(timeout)


def _confluent(listen: str, topic: str) -> tuple[Any, Any]:
    from confluent_kafka import Consumer, Producer

    def produce(w: Workload) -> None:
        producer = Producer({"bootstrap.servers": listen, "acks": "all", "linger.ms": 5,
                             "enable.idempotence": True, "message.timeout.ms": 120000})  # fmt: skip

        def delivered(err: Any, msg: Any) -> None:
            if err is None:
                w.acked.append(msg.value())
            else:
                w.errors.append(str(err))

        i = 0
        while not w.stop_producing.is_set():
            producer.produce(topic, b"c%06d" % i, on_delivery=delivered)
            i += 1
            producer.poll(0.01)
        producer.flush(120)

    def consume(w: Workload) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": listen,
                "group.id": f"{topic}-group",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": True,
            }
        )
        consumer.subscribe([topic])
        while not w.stop_consuming.is_set():
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                w.consumed.append(msg.value())
        consumer.close()

    return produce, consume


def _kafka_python(listen: str, topic: str) -> tuple[Any, Any]:
    from kafka import KafkaConsumer, KafkaProducer

    def produce(w: Workload) -> None:
        producer = KafkaProducer(
            bootstrap_servers=listen,
            acks="all",
            linger_ms=5,
            retries=100,
            request_timeout_ms=30000,
            max_in_flight_requests_per_connection=1,
        )
        i = 0
        while not w.stop_producing.is_set():
            value = b"k%06d" % i
            future = producer.send(topic, value=value)
            future.add_callback(lambda _m, v=value: w.acked.append(v))
            future.add_errback(lambda e: w.errors.append(str(e)))
            i += 1
            time.sleep(0.01)
        producer.flush(120)
        producer.close()

    def consume(w: Workload) -> None:
        consumer = KafkaConsumer(topic, bootstrap_servers=listen, group_id=f"{topic}-group",
                                 auto_offset_reset="earliest")  # fmt: skip
        while not w.stop_consuming.is_set():
            for records in consumer.poll(timeout_ms=200).values():
                w.consumed += [r.value for r in records]
        consumer.close()

    return produce, consume


WORKLOADS = {"confluent": _confluent, "kafka-python": _kafka_python}


@pytest.mark.parametrize("client", list(WORKLOADS))
def test_a_killed_leader_mid_stream_loses_nothing_acknowledged(
    cluster: Cluster, client: str
) -> None:
    listen = cluster.gateway.listen
    topic = f"failover-{client}"
    _create_topic(listen, topic, **{"min.insync.replicas": "2"})
    workload = Workload(*WORKLOADS[client](listen, topic))
    workload.start()
    try:
        assert wait_until(lambda: len(workload.consumed) >= 100, 60), "no progress before the kill"
        leader, _ = _leader(listen, topic)
        victim = cluster.node_of(leader)
        cluster.nodes[victim].process.kill()
        cluster.nodes[victim].process.wait(10)
        killed_at, before = time.monotonic(), len(workload.acked)
        assert wait_until(lambda: len(workload.acked) >= before + 100, 90), (
            f"{client}: no acks after the kill\n{cluster.gateway.output()[-3000:]}"
        )
        recovered = time.monotonic() - killed_at
    finally:
        workload.finish(90)
    missing = set(workload.acked) - set(workload.consumed)
    assert not missing, f"{len(missing)} acknowledged records never consumed"
    new_leader, _ = _leader(listen, topic)
    assert new_leader != leader
    assert cluster.gateway.process.poll() is None
    print(f"{client}: writes acknowledged again {recovered:.1f} s after the kill; "
          f"{len(workload.acked)} acked, {len(workload.consumed)} consumed")  # fmt: skip
    # Bring the node back for the next case: a new RF-3 topic needs three brokers.
    since = len(cluster.nodes[victim].output())
    cluster.nodes[victim] = cluster.lab.start_node(victim, None)
    assert wait_until(lambda: "log: replicated" in cluster.nodes[victim].output()[since:], 30)
    assert wait_until(lambda: _alive(listen) == 3, 30)


def _alive(listen: str) -> int:
    from confluent_kafka.admin import AdminClient

    return len(AdminClient({"bootstrap.servers": listen}).list_topics(timeout=10).brokers)


def test_sigterm_stops_the_gateway_with_status_0(cluster: Cluster) -> None:
    """Last in the module: the module's gateway is gone after it."""
    cluster.gateway.process.send_signal(signal.SIGTERM)
    assert cluster.gateway.process.wait(10) == 0, cluster.gateway.output()
    assert "Traceback" not in cluster.gateway.output(), cluster.gateway.output()
