"""Test support: produce and read back with each of the four stock Kafka clients.

Every function takes the broker address, a topic and the records, and raises with the
client's own error when anything was not acknowledged.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess

CLIENTS = ["kcat", "confluent", "kafka-python", "aiokafka"]
CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]

Records = list[tuple[bytes, bytes]]


def records(n: int, tag: str, size: int = 100) -> Records:
    pad = "x" * max(0, size - 20)
    return [(f"k{i}".encode(), f"{tag}-{i:06d}-{pad}".encode()) for i in range(n)]


def missing(client: str) -> str | None:
    if client == "kcat" and shutil.which("kcat") is None:
        return "kcat is not installed (Debian package kcat; scripts/bootstrap.sh installs it)"
    return None


# --- producing ---------------------------------------------------------------------


def produce(
    client: str, broker: str, topic: str, recs: Records, codec: str = "none", partition: int = 0
) -> None:
    {
        "kcat": _produce_kcat,
        "confluent": _produce_confluent,
        "kafka-python": _produce_kafka_python,
        "aiokafka": _produce_aiokafka,
    }[client](broker, topic, recs, codec, partition)


def _produce_kcat(broker: str, topic: str, recs: Records, codec: str, partition: int) -> None:
    data = b"".join(k + b"\t" + v + b"\n" for k, v in recs)
    proc = subprocess.run(
        [
            "kcat",
            "-P",
            "-b",
            broker,
            "-t",
            topic,
            "-p",
            str(partition),
            "-K",
            "\t",
            "-z",
            codec,
            "-X",
            "acks=all",
            "-X",
            "linger.ms=5",
        ],
        input=data,
        capture_output=True,
        timeout=120,
    )
    if proc.returncode != 0 or b"failed" in proc.stderr.lower():
        raise AssertionError(f"kcat produce failed ({proc.returncode}): {proc.stderr.decode()}")


def _produce_confluent(broker: str, topic: str, recs: Records, codec: str, partition: int) -> None:
    from confluent_kafka import Producer

    errors: list[str] = []
    producer = Producer(
        {"bootstrap.servers": broker, "acks": "all", "linger.ms": 5, "compression.type": codec}
    )
    for key, value in recs:
        while True:
            try:
                producer.produce(
                    topic,
                    value,
                    key,
                    partition=partition,
                    on_delivery=lambda err, _m: err and errors.append(str(err)),
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(60)
    assert left == 0 and not errors, f"confluent-kafka: {left} unflushed, errors {errors[:3]}"


def _produce_kafka_python(
    broker: str, topic: str, recs: Records, codec: str, partition: int
) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=broker,
        acks="all",
        linger_ms=5,
        compression_type=None if codec == "none" else codec,
    )
    futures = [producer.send(topic, value=v, key=k, partition=partition) for k, v in recs]
    producer.flush(60)
    for f in futures:
        f.get(timeout=60)
    producer.close()


def _produce_aiokafka(broker: str, topic: str, recs: Records, codec: str, partition: int) -> None:
    from aiokafka import AIOKafkaProducer

    async def main() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=broker,
            acks="all",
            linger_ms=5,
            compression_type=None if codec == "none" else codec,
        )
        await producer.start()
        try:
            futures = [
                await producer.send(topic, value=v, key=k, partition=partition) for k, v in recs
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(main())


# --- reading by partition offset -----------------------------------------------------


def read(
    client: str, broker: str, topic: str, n: int, partition: int = 0
) -> list[tuple[int, bytes, bytes]]:
    """The first n records of the partition from offset 0: (offset, key, value)."""
    return {
        "kcat": _read_kcat,
        "confluent": _read_confluent,
        "kafka-python": _read_kafka_python,
        "aiokafka": _read_aiokafka,
    }[client](broker, topic, n, partition)


def _read_kcat(broker: str, topic: str, n: int, partition: int) -> list[tuple[int, bytes, bytes]]:
    proc = subprocess.run(
        [
            "kcat",
            "-C",
            "-b",
            broker,
            "-t",
            topic,
            "-p",
            str(partition),
            "-o",
            "beginning",
            "-c",
            str(n),
            "-e",
            "-q",
            "-f",
            "%o\t%k\t%s\n",
        ],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    out = []
    for line in proc.stdout.splitlines():
        offset, key, value = line.split(b"\t", 2)
        out.append((int(offset), key, value))
    return out


def _read_confluent(
    broker: str, topic: str, n: int, partition: int
) -> list[tuple[int, bytes, bytes]]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": broker, "group.id": "reader", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
    out: list[tuple[int, bytes, bytes]] = []
    idle = 0
    while len(out) < n and idle < 50:
        msgs = consumer.consume(1000, 0.2)
        idle = 0 if msgs else idle + 1
        for m in msgs:
            assert m.error() is None, m.error()
            out.append((m.offset(), m.key(), m.value()))
    consumer.close()
    return out[:n]


def _read_kafka_python(
    broker: str, topic: str, n: int, partition: int
) -> list[tuple[int, bytes, bytes]]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False)
    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    out: list[tuple[int, bytes, bytes]] = []
    idle = 0
    while len(out) < n and idle < 50:
        got = consumer.poll(timeout_ms=200, max_records=5000)
        idle = 0 if got else idle + 1
        for msgs in got.values():
            out += [(m.offset, m.key, m.value) for m in msgs]
    consumer.close()
    return out[:n]


def _read_aiokafka(
    broker: str, topic: str, n: int, partition: int
) -> list[tuple[int, bytes, bytes]]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def main() -> list[tuple[int, bytes, bytes]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            out: list[tuple[int, bytes, bytes]] = []
            idle = 0
            while len(out) < n and idle < 50:
                got = await consumer.getmany(tp, timeout_ms=200, max_records=5000)
                idle = 0 if got else idle + 1
                for msgs in got.values():
                    out += [(m.offset, m.key, m.value) for m in msgs]
            return out[:n]
        finally:
            await consumer.stop()

    return asyncio.run(main())
