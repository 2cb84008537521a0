"""The four stock Kafka clients, unmodified, against a real `pyralog broker` process.

kcat (librdkafka), confluent-kafka (librdkafka), kafka-python and aiokafka each:
produce 10,000 records with acks=all, uncompressed and with every codec they support,
read them back in order byte for byte by partition offset (and with Pyralog's own
client), and consume through a consumer group whose second member joins mid-stream.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import stockclients
from logbroker import RunningBroker, running_broker

from processes import console_script, wait_until
from pyralog.log.client import PyralogClient

N = 10_000
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    with running_broker(tmp_path_factory.mktemp("clients"), "--flush", "interval") as b:
        yield b


def _own_client_read(address: str, topic: str, n: int) -> list[tuple[int, bytes, bytes]]:
    async def main() -> list[tuple[int, bytes, bytes]]:
        async with await PyralogClient.connect(address) as client:
            out: list[tuple[int, bytes, bytes]] = []
            while len(out) < n:
                got = await client.fetch(topic, 0, len(out), max_wait_ms=200)
                assert got, f"no records after offset {len(out)}"
                out += [(m.offset, m.key or b"", m.value or b"") for m in got]
            return out

    return asyncio.run(main())


@pytest.mark.parametrize("codec", stockclients.CODECS)
@pytest.mark.parametrize("client", stockclients.CLIENTS)
def test_produce_acks_all_and_read_back_in_order(
    broker: RunningBroker, client: str, codec: str
) -> None:
    if reason := stockclients.missing(client):
        pytest.skip(reason)
    topic = f"{client}-{codec}"
    sent = stockclients.records(N, topic)
    stockclients.produce(client, broker.address, topic, sent, codec)
    got = stockclients.read(client, broker.address, topic, N)
    assert [o for o, _, _ in got] == list(range(N))
    assert [(k, v) for _, k, v in got] == sent
    # The stored batches decode the same with Pyralog's client (every codec).
    assert _own_client_read(broker.address, topic, N) == got


class Member:
    """One group member process of a stock client, its output collected."""

    def __init__(self, client: str, broker: str, topic: str, group: str) -> None:
        self.records: dict[tuple[int, int], str] = {}
        self.assignments: list[set[int]] = []
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "groupmember.py"), client, broker, topic, group],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.errors: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._errors, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            kind, _, rest = line.rstrip("\n").partition(" ")
            if kind == "A":
                self.assignments.append({int(p) for p in rest.split(",") if p})
            elif kind == "R":
                p, o, value = rest.split(" ", 2)
                self.records[(int(p), int(o))] = value

    def _errors(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.errors.append(line)

    @property
    def assigned(self) -> set[int]:
        return self.assignments[-1] if self.assignments else set()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.mark.parametrize("client", stockclients.CLIENTS)
def test_consumer_group_with_two_members_rebalancing(broker: RunningBroker, client: str) -> None:
    if reason := stockclients.missing(client):
        pytest.skip(reason)
    topic, group = f"group-{client}", f"g-{client}"
    asyncio.run(_create(broker.address, topic, 4))
    half = N // 2 // 4
    first = {p: stockclients.records(half, f"{topic}-a{p}") for p in range(4)}
    second = {p: stockclients.records(half, f"{topic}-b{p}") for p in range(4)}
    for p, recs in first.items():
        stockclients.produce("confluent", broker.address, topic, recs, partition=p)
    a = Member(client, broker.address, topic, group)
    b: Member | None = None
    try:
        assert wait_until(lambda: len(a.records) >= 4 * half, timeout=60), (
            len(a.records),
            a.assignments,
            a.errors[-5:],
        )
        assert a.assigned == {0, 1, 2, 3}
        b = Member(client, broker.address, topic, group)
        # The group rebalances: the two members split the four partitions.
        assert wait_until(
            lambda: (
                b.assigned
                and a.assigned
                and not (a.assigned & b.assigned)
                and a.assigned | b.assigned == {0, 1, 2, 3}
            ),
            timeout=60,
        ), (a.assignments, b.assignments, b.errors[-5:])
        for p, recs in second.items():
            stockclients.produce("confluent", broker.address, topic, recs, partition=p)
        wanted = {(p, o) for p in range(4) for o in range(2 * half)}
        assert wait_until(lambda: wanted <= set(a.records) | set(b.records), timeout=60), (
            len(a.records),
            len(b.records),
            a.assignments,
            b.assignments,
        )
        # Each member consumed the second half of exactly its own partitions.
        for member in (a, b):
            late = {p for (p, o) in member.records if o >= half}
            assert late and late <= member.assigned
        expected = {
            (p, i): v.decode() for p in range(4) for i, (_, v) in enumerate(first[p] + second[p])
        }
        merged = {**a.records, **b.records}
        assert {k: merged[k] for k in wanted} == {k: expected[k] for k in wanted}
    finally:
        for m in (a, b):
            if m is not None:
                m.stop()
    # Committed offsets survive: the group's position is at the end of every partition.
    committed = asyncio.run(_committed(broker.address, group, topic))
    assert all(committed[p] == 2 * half for p in range(4)), committed


async def _create(address: str, topic: str, partitions: int) -> None:
    async with await PyralogClient.connect(address) as client:
        await client.create_topic(topic, partitions=partitions)


async def _committed(address: str, group: str, topic: str) -> dict[int, int]:
    async with await PyralogClient.connect(address) as client:
        body = await client.connection.call(
            9, {"group_id": group, "topics": [{"name": topic, "partition_indexes": [0, 1, 2, 3]}]}
        )
        return {p.partition_index: p.committed_offset for t in body.topics for p in t.partitions}


def test_pyralog_consumer_shares_a_group_with_a_kcat_member(broker: RunningBroker) -> None:
    if reason := stockclients.missing("kcat"):
        pytest.skip(reason)
    topic, group = "mixed-group", "g-mixed"
    asyncio.run(_create(broker.address, topic, 4))
    kcat = Member("kcat", broker.address, topic, group)
    ours = subprocess.Popen(
        [
            str(console_script("pyralog")),
            "consume",
            topic,
            "--group",
            group,
            "--from-beginning",
            "--print-offsets",
            "-b",
            broker.address,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: dict[tuple[int, int], str] = {}

    def read() -> None:
        assert ours.stdout is not None
        for line in ours.stdout:
            where, _, value = line.rstrip("\n").partition("\t")
            p, o = where.split(":")
            seen[(int(p), int(o))] = value

    threading.Thread(target=read, daemon=True).start()
    try:
        # Both members in one generation: kcat holds some of the four partitions.
        assert wait_until(lambda: kcat.assigned and len(kcat.assigned) < 4, timeout=60), (
            kcat.assignments
        )
        time.sleep(1)
        recs = {p: stockclients.records(200, f"{topic}-{p}") for p in range(4)}
        for p, r in recs.items():
            stockclients.produce("confluent", broker.address, topic, r, partition=p)
        wanted = {(p, o) for p in range(4) for o in range(200)}
        assert wait_until(lambda: wanted <= set(seen) | set(kcat.records), timeout=60), (
            len(seen),
            len(kcat.records),
            kcat.assignments,
        )
        ours_parts = {p for p, _ in seen}
        assert ours_parts and ours_parts.isdisjoint(kcat.assigned)
        assert ours_parts | kcat.assigned == {0, 1, 2, 3}
    finally:
        kcat.stop()
        ours.terminate()
        ours.wait(timeout=20)


def test_confluent_kafka_lists_every_topic(broker: RunningBroker) -> None:
    """librdkafka 2.16's all-topics Metadata v12 has three bytes after its body; Kafka
    ignores them, and so do we (the connection was closed before)."""
    confluent_kafka = pytest.importorskip("confluent_kafka")
    from confluent_kafka.admin import AdminClient

    producer = confluent_kafka.Producer({"bootstrap.servers": broker.address})
    producer.produce("listed-topic", b"x")
    assert producer.flush(10) == 0
    listed = AdminClient({"bootstrap.servers": broker.address}).list_topics(timeout=10)
    assert "listed-topic" in listed.topics
    assert "listed-topic" in producer.list_topics(timeout=10).topics
