"""The load generators of bench/log.py: one client run per process, one JSON line out.

    python bench/logload.py kafka-produce --server HOST:PORT --topic T --count N --acks 1
    python bench/logload.py kafka-consume --server HOST:PORT --topic T --count N
    python bench/logload.py kafka-latency --server HOST:PORT --topic T --count N --acks all
    python bench/logload.py nats-publish  --server HOST:PORT --stream S --count N
    python bench/logload.py nats-consume  --server HOST:PORT --stream S --count N
    python bench/logload.py nats-latency  --server HOST:PORT --stream S --count N

(``--server`` may list several host:port, comma-separated: a cluster's bootstrap servers,
tried in order; ``--replicas N`` makes NATS streams of N replicas, bench/replication.py.)

Kafka runs use confluent-kafka (librdkafka, C): the fastest stock Kafka client for Python.
NATS runs use nats-py (pure Python, asyncio): JetStream publishes with acks, at most
``--window`` in flight (``publish_async``), a pull consumer (``fetch``) for reading.

Every record is ``RECORD_BYTES`` long: its index as 8 big-endian bytes, then the same
random padding. Readers check every record's index against its position, so a lost,
duplicated or reordered record shows. Each run prints one JSON object on stdout:
what it counted (``acked``, ``consumed``, ``errors``), the timed window (``seconds``)
and this process's CPU over that window (``cpu_s``, all threads); bench/log.py adds the
whole process's CPU from wait4(2). Set-up (connection, metadata, stream creation) is
outside the timed window, for both clients alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

RECORD_BYTES = 1024
INDEX_BYTES = 8
WARMUP = 50  # latency runs: records produced (and checked) before the samples
IDLE_LIMIT = 30.0  # seconds without a record before a reader gives up


def record(index: int, pad: bytes) -> bytes:
    return index.to_bytes(INDEX_BYTES, "big") + pad


def make_pad() -> bytes:
    return os.urandom(RECORD_BYTES - INDEX_BYTES)


class Window:
    """A timed window: wall seconds (perf_counter) and this process's CPU (all threads)."""

    def __enter__(self) -> Window:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.wall0
        self.cpu_s = time.process_time() - self.cpu0


class Offsets:
    """What the acknowledgements said: count, errors and the span of offsets (or seqs)."""

    def __init__(self) -> None:
        self.acked = 0
        self.errors: list[str] = []
        self.error_count = 0
        self.low: int | None = None
        self.high: int | None = None

    def ok(self, offset: int) -> None:
        self.acked += 1
        self.low = offset if self.low is None else min(self.low, offset)
        self.high = offset if self.high is None else max(self.high, offset)

    def error(self, what: object) -> None:
        self.error_count += 1
        if len(self.errors) < 5:
            self.errors.append(str(what))

    def report(self) -> dict[str, Any]:
        return {
            "acked": self.acked,
            "error_count": self.error_count,
            "errors": self.errors,
            "first_offset": self.low,
            "last_offset": self.high,
        }


class Reader:
    """Checks each record read: its length and its index, which must be the next one."""

    def __init__(self) -> None:
        self.consumed = 0
        self.bad: list[str] = []

    def check(self, value: bytes | None) -> None:
        if value is None or len(value) != RECORD_BYTES:
            self._bad(f"record {self.consumed}: {len(value or b'')} bytes")
        elif int.from_bytes(value[:INDEX_BYTES], "big") != self.consumed:
            index = int.from_bytes(value[:INDEX_BYTES], "big")
            self._bad(f"record {self.consumed} carries index {index}")
        self.consumed += 1

    def _bad(self, what: str) -> None:
        if len(self.bad) < 5:
            self.bad.append(what)

    def report(self) -> dict[str, Any]:
        return {"consumed": self.consumed, "bad": self.bad}


class Gaps:
    """The longest waits between two reads that returned records: a stall shows here."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.waits: list[tuple[float, int]] = []

    def mark(self, position: int) -> float:
        now = time.perf_counter()
        self.waits.append((now - self.last, position))
        self.last = now
        return now

    def report(self) -> dict[str, Any]:
        top = sorted(self.waits, reverse=True)[:3]
        return {"longest_waits": [{"seconds": s, "before_record": at} for s, at in top]}


# -- Kafka: confluent-kafka ------------------------------------------------------------------


def kafka_produce(a: argparse.Namespace) -> dict[str, Any]:
    from confluent_kafka import Producer

    # librdkafka's defaults otherwise (linger.ms 5, batches up to 1 MB, no compression).
    producer = Producer({"bootstrap.servers": a.server, "acks": a.acks})
    producer.list_topics(a.topic, timeout=10)  # connected, metadata known
    acks = Offsets()

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            acks.error(err)
        else:
            acks.ok(msg.offset())

    pad = make_pad()
    with Window() as w:
        for i in range(a.count):
            value = record(i, pad)
            while True:
                try:
                    producer.produce(a.topic, value, partition=0, on_delivery=delivered)
                    break
                except BufferError:  # the local queue is full: serve delivery reports
                    producer.poll(0.01)
            producer.poll(0)
        left = producer.flush(120)
    return {**acks.report(), "unflushed": left, "seconds": w.seconds, "cpu_s": w.cpu_s}


def kafka_consume(a: argparse.Namespace) -> dict[str, Any]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    config = {
        "bootstrap.servers": a.server,
        "group.id": "bench-reader",
        "enable.auto.commit": False,
    }
    consumer = Consumer({**config, **dict(kv.split("=", 1) for kv in a.kafka_config)})
    consumer.list_topics(a.topic, timeout=10)
    reader = Reader()
    errors: list[str] = []
    with Window() as w:
        consumer.assign([TopicPartition(a.topic, 0, OFFSET_BEGINNING)])  # no group
        idle_since = time.perf_counter()
        gaps = Gaps()
        while reader.consumed < a.count:
            msgs = consumer.consume(min(10000, a.count - reader.consumed), 1.0)
            if not msgs:
                if time.perf_counter() - idle_since > IDLE_LIMIT:
                    break
                continue
            idle_since = gaps.mark(reader.consumed)
            for m in msgs:
                if m.error() is not None:
                    errors.append(str(m.error()))
                    continue
                if m.offset() != reader.consumed and len(reader.bad) < 5:
                    reader.bad.append(f"record {reader.consumed} at offset {m.offset()}")
                reader.check(m.value())
    low, high = consumer.get_watermark_offsets(TopicPartition(a.topic, 0), timeout=10)
    consumer.close()
    return {
        **reader.report(),
        "errors": errors[:5],
        "error_count": len(errors),
        "log_start": low,
        "log_end": high,
        **gaps.report(),
        "seconds": w.seconds,
        "cpu_s": w.cpu_s,
    }


def kafka_latency(a: argparse.Namespace) -> dict[str, Any]:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": a.server, "acks": a.acks, "linger.ms": 0})
    producer.list_topics(a.topic, timeout=10)
    acks = Offsets()
    samples: list[float] = []
    pad = make_pad()
    done: list[Any] = []

    def delivered(err: Any, msg: Any) -> None:
        done.append(err)
        if err is not None:
            acks.error(err)
        else:
            acks.ok(msg.offset())

    with Window() as w:
        for i in range(WARMUP + a.count):
            done.clear()
            t0 = time.perf_counter()
            producer.produce(a.topic, record(i, pad), partition=0, on_delivery=delivered)
            while not done:
                producer.poll(1.0)
            t1 = time.perf_counter()
            if i >= WARMUP:
                samples.append((t1 - t0) * 1e6)
    return {**acks.report(), "samples_us": samples, "seconds": w.seconds, "cpu_s": w.cpu_s}


# -- NATS JetStream: nats-py -----------------------------------------------------------------


async def _nats(a: argparse.Namespace) -> Any:
    import nats

    # A comma-separated list (a cluster, bench/replication.py): tried in that order.
    servers = [f"nats://{s}" for s in a.server.split(",")]
    return await nats.connect(
        servers=servers, connect_timeout=10, max_reconnect_attempts=0, dont_randomize=True
    )


async def _add_stream(js: Any, name: str, replicas: int = 1) -> None:
    from nats.js.api import StorageType, StreamConfig

    config = StreamConfig(
        name=name, subjects=[name.lower()], storage=StorageType.FILE, num_replicas=replicas
    )
    await js.add_stream(config)


async def nats_publish(a: argparse.Namespace) -> dict[str, Any]:
    nc = await _nats(a)
    js = nc.jetstream(publish_async_max_pending=a.window)
    await _add_stream(js, a.stream, a.replicas)
    subject = a.stream.lower()
    acks = Offsets()
    pad = make_pad()
    futures = []
    with Window() as w:
        for i in range(a.count):
            # Waits while `window` publishes are unacknowledged, then sends this one.
            futures.append(await js.publish_async(subject, record(i, pad)))
        await asyncio.wait_for(js.publish_async_completed(), 120)
    for f in futures:
        if f.exception() is not None:
            acks.error(f.exception())
        else:
            acks.ok(f.result().seq)
    info = await js.stream_info(a.stream)
    await nc.close()
    return {
        **acks.report(),
        "stream_messages": info.state.messages,
        "seconds": w.seconds,
        "cpu_s": w.cpu_s,
    }


async def nats_consume(a: argparse.Namespace) -> dict[str, Any]:
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    nc = await _nats(a)
    js = nc.jetstream()
    # AckPolicy.ALL: one ack per fetched batch covers it (pull consumers need some ack
    # policy on nats-server 2.9); the batch is the consumer's max_ack_pending (1000).
    config = ConsumerConfig(ack_policy=AckPolicy.ALL, deliver_policy=DeliverPolicy.ALL)
    sub = await js.pull_subscribe(a.stream.lower(), durable="reader", config=config)
    reader = Reader()
    with Window() as w:
        idle_since = time.perf_counter()
        gaps = Gaps()
        while reader.consumed < a.count:
            try:
                msgs = await sub.fetch(batch=min(a.batch, a.count - reader.consumed), timeout=1.0)
            except NatsTimeout:
                if time.perf_counter() - idle_since > IDLE_LIMIT:
                    break
                continue
            idle_since = gaps.mark(reader.consumed)
            for m in msgs:
                reader.check(m.data)
            if msgs:
                await msgs[-1].ack()
    info = await js.stream_info(a.stream)
    consumer = await sub.consumer_info()
    await nc.close()
    return {
        **reader.report(),
        "errors": [],
        "error_count": 0,
        "stream_messages": info.state.messages,
        "pending": consumer.num_pending,
        **gaps.report(),
        "seconds": w.seconds,
        "cpu_s": w.cpu_s,
    }


async def nats_latency(a: argparse.Namespace) -> dict[str, Any]:
    nc = await _nats(a)
    js = nc.jetstream()
    await _add_stream(js, a.stream, a.replicas)
    subject = a.stream.lower()
    acks = Offsets()
    samples: list[float] = []
    pad = make_pad()
    with Window() as w:
        for i in range(WARMUP + a.count):
            t0 = time.perf_counter()
            try:
                ack = await js.publish(subject, record(i, pad), timeout=10)
            except Exception as e:
                acks.error(repr(e))
                continue
            t1 = time.perf_counter()
            acks.ok(ack.seq)
            if i >= WARMUP:
                samples.append((t1 - t0) * 1e6)
    info = await js.stream_info(a.stream)
    await nc.close()
    return {
        **acks.report(),
        "stream_messages": info.state.messages,
        "samples_us": samples,
        "seconds": w.seconds,
        "cpu_s": w.cpu_s,
    }


COMMANDS = {
    "kafka-produce": kafka_produce,
    "kafka-consume": kafka_consume,
    "kafka-latency": kafka_latency,
    "nats-publish": nats_publish,
    "nats-consume": nats_consume,
    "nats-latency": nats_latency,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="One load-generator run of bench/log.py.")
    p.add_argument("command", choices=sorted(COMMANDS))
    p.add_argument("--server", required=True, help="host:port")
    p.add_argument("--topic", default="bench", help="Kafka topic (partition 0)")
    p.add_argument("--stream", default="BENCH", help="JetStream stream (subject: lower case)")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--acks", default="1", choices=["1", "all"])
    p.add_argument(
        "--kafka-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra librdkafka consumer setting (diagnosis only; bench/log.py sets none)",
    )
    p.add_argument("--window", type=int, default=256, help="NATS publishes in flight")
    p.add_argument("--batch", type=int, default=1000, help="NATS pull consumer fetch size")
    p.add_argument("--replicas", type=int, default=1, help="NATS stream replicas")
    a = p.parse_args(argv)
    out = COMMANDS[a.command](a)
    if asyncio.iscoroutine(out):
        out = asyncio.run(out)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
