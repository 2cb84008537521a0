"""The cluster-side client runs of bench/replication.py (beside bench/logload.py's
throughput and latency runs): creating and describing replicated topics and streams, the
continuous producer of the failover measure, and reading a whole topic back.

    python bench/replload.py kafka-create   --server BOOTSTRAP --topic T [--topic T2 ...]
    python bench/replload.py kafka-describe --server BOOTSTRAP --topic T
    python bench/replload.py kafka-failover --server BOOTSTRAP --topic T --rate R --out FILE
    python bench/replload.py kafka-readback --server BOOTSTRAP --topic T --out FILE
    python bench/replload.py nats-create    --server URLS --stream S [--stream S2 ...]
    python bench/replload.py nats-describe  --server URLS --stream S
    python bench/replload.py nats-failover  --server URLS --stream S --rate R --out FILE
    python bench/replload.py nats-readback  --server URLS --stream S --out FILE

BOOTSTRAP and URLS are comma-separated host:port lists (every server of the cluster).

The failover producers offer ``--rate`` records per second (the same 1 KiB records as
logload.py: an 8-byte index, then padding) until a line (or end of file) arrives on
stdin, then wait for what is still unacknowledged and write every acknowledgement, with
its CLOCK_MONOTONIC time (the same clock in every namespace, and the harness's), to
``--out``. Meanwhile they print a progress line every 0.1 s (acks so far, time of the
latest) so the harness can tell when writes flow again after it kills a leader.

- Kafka (confluent-kafka): ``acks=all`` and ``enable.idempotence=true``: librdkafka
  retries what a dead leader left unacknowledged, at the new leader, without duplicates;
  otherwise its defaults (reconnect.backoff.ms 100, retry.backoff.ms 100).
- NATS (nats-py): ``--workers`` concurrent publishers, each publishing its record with
  ``js.publish`` (a publish-ack round trip) and a ``Nats-Msg-Id`` header, and publishing
  it again (the server drops it as a duplicate if it had it) after a timeout or error
  until acknowledged. nats-py reconnects to another server of the list when its own
  dies; its reconnect_time_wait is set to 0.1 s (its default, 2 s, would add up to two
  seconds of the client's own to the failover; librdkafka's reconnect backoff is 0.1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from logload import IDLE_LIMIT, INDEX_BYTES, make_pad, record

PROGRESS_EVERY = 0.1  # seconds between progress lines of a failover producer
FLUSH_LIMIT = 90.0  # seconds a failover producer waits for its last acks once stopped


def index_of(value: bytes | None) -> int:
    if not value or len(value) < INDEX_BYTES:
        return -1
    return int.from_bytes(value[:INDEX_BYTES], "big")


class Progress:
    """Acks so far and the time of the latest: printed on stdout for the harness."""

    def __init__(self) -> None:
        self.acked = 0
        self.last_ack: float | None = None
        self.errors = 0
        self.next_print = 0.0

    def maybe_print(self, now: float, **extra: Any) -> None:
        if now >= self.next_print:
            self.next_print = now + PROGRESS_EVERY
            line = {"t": now, "acked": self.acked, "last_ack": self.last_ack, "errors": self.errors}
            line.update(extra)
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()


def stdin_stopper() -> threading.Event:
    """Set once stdin has a line or ends: the harness's word to stop offering records."""
    stop = threading.Event()

    def wait() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=wait, daemon=True).start()
    return stop


def write_out(path: str, out: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(out))


# -- Kafka ---------------------------------------------------------------------------------


def _partition(metadata: Any, topic: str) -> dict[str, Any]:
    t = metadata.topics.get(topic)
    if t is None or t.error is not None or 0 not in t.partitions:
        return {"topic": topic, "error": str(None if t is None else t.error), "leader": -1}
    p = t.partitions[0]
    return {
        "topic": topic,
        "leader": p.leader,
        "replicas": list(p.replicas),
        "isr": list(p.isrs),
        "error": None if p.error is None else str(p.error),
    }


def _metadata(admin: Any, topics: list[str]) -> tuple[Any, list[dict[str, Any]]]:
    """Metadata asked for topic by topic: an all-topics request (``list_topics()``
    without a topic) makes Pyralog close the connection (docs/REPLICATION_BENCHMARKS.md,
    "Problems found")."""
    metadata, parts = None, []
    for t in topics:
        metadata = admin.list_topics(t, timeout=10)
        parts.append(_partition(metadata, t))
    return metadata, parts


def kafka_describe(a: argparse.Namespace) -> dict[str, Any]:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": a.server})
    metadata, parts = _metadata(admin, a.topic)
    return {
        "controller": metadata.controller_id,
        "brokers": sorted(metadata.brokers),
        "partitions": parts,
    }


def kafka_create(a: argparse.Namespace) -> dict[str, Any]:
    """Create the topics (one partition, ``--replicas`` replicas, min.insync.replicas),
    then wait until each has a leader and every replica in sync."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": a.server})
    config = {"min.insync.replicas": str(a.min_isr)}
    new = [NewTopic(t, 1, a.replicas, config=config) for t in a.topic]
    for future in admin.create_topics(new, request_timeout=30).values():
        future.result(timeout=60)  # raises KafkaException with the broker's error
    deadline = time.monotonic() + 60
    while True:
        metadata, parts = _metadata(admin, a.topic)
        if all(p["leader"] >= 0 and len(p.get("isr", [])) == a.replicas for p in parts):
            return {"controller": metadata.controller_id, "partitions": parts}
        if time.monotonic() > deadline:
            raise SystemExit(f"topics not in sync after 60 s: {parts}")
        time.sleep(0.2)


def kafka_failover(a: argparse.Namespace) -> dict[str, Any]:
    from confluent_kafka import Producer

    config = {"bootstrap.servers": a.server, "acks": "all", "enable.idempotence": True}
    if a.kafka_debug:  # to stderr, with wall-clock times
        config.update({"debug": a.kafka_debug, "log_level": 7})
    producer = Producer(config)
    producer.list_topics(a.topic, timeout=10)
    acked: list[tuple[int, float, int]] = []
    errors: list[tuple[float, str]] = []
    progress = Progress()

    def delivered(err: Any, msg: Any) -> None:
        now = time.monotonic()
        if err is not None:
            progress.errors += 1
            errors.append((now, str(err)))
            return
        acked.append((index_of(msg.value()), now, msg.offset()))
        progress.acked += 1
        progress.last_ack = now

    stop = stdin_stopper()
    pad = make_pad()
    sent = 0
    started = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        due = int((now - started) * a.rate)
        while sent < due:
            try:
                producer.produce(a.topic, record(sent, pad), partition=0, on_delivery=delivered)
                sent += 1
            except BufferError:
                break
        producer.poll(0.001)
        progress.maybe_print(time.monotonic())
    stopped = time.monotonic()
    left = producer.flush(FLUSH_LIMIT)
    return {
        "sent": sent,
        "acked": acked,
        "errors": errors[:20],
        "error_count": len(errors),
        "unflushed": left,
        "started": started,
        "stopped": stopped,
    }


def kafka_readback(a: argparse.Namespace) -> dict[str, Any]:
    """Every record of partition 0, from its first offset to its end, in order."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": a.server, "group.id": "bench-readback", "enable.auto.commit": False}
    )
    tp = TopicPartition(a.topic, 0)
    low, high = consumer.get_watermark_offsets(tp, timeout=10)
    consumer.assign([TopicPartition(a.topic, 0, OFFSET_BEGINNING)])
    indices: list[int] = []
    errors: list[str] = []
    position = low
    idle_since = time.monotonic()
    while position < high:
        msgs = consumer.consume(10000, 1.0)
        if not msgs:
            if time.monotonic() - idle_since > IDLE_LIMIT:
                break
            continue
        idle_since = time.monotonic()
        for m in msgs:
            if m.error() is not None:
                errors.append(str(m.error()))
                continue
            indices.append(index_of(m.value()))
            position = m.offset() + 1
    consumer.close()
    return {"indices": indices, "log_start": low, "log_end": high, "errors": errors[:5]}


# -- NATS JetStream ---------------------------------------------------------------------------


def _servers(a: argparse.Namespace) -> list[str]:
    return [f"nats://{s}" for s in a.server.split(",")]


async def _connect(a: argparse.Namespace, reconnect: bool = False) -> Any:
    import nats

    if not reconnect:
        return await nats.connect(
            servers=_servers(a), connect_timeout=10, max_reconnect_attempts=0, dont_randomize=True
        )
    return await nats.connect(
        servers=_servers(a),
        connect_timeout=2,
        dont_randomize=True,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.1,
    )


def _stream_info(info: Any) -> dict[str, Any]:
    cluster = info.cluster
    replicas = [
        {"name": r.name, "current": bool(r.current), "lag": r.lag, "offline": bool(r.offline)}
        for r in (cluster.replicas or [])
    ] if cluster is not None else []  # fmt: skip
    return {
        "stream": info.config.name,
        "leader": cluster.leader if cluster is not None else None,
        "replicas": replicas,
        "messages": info.state.messages,
        "last_seq": info.state.last_seq,
    }


async def nats_describe(a: argparse.Namespace) -> dict[str, Any]:
    nc = await _connect(a)
    js = nc.jetstream(timeout=5)
    out = {"connected": nc.connected_url.netloc if nc.connected_url else None, "streams": []}
    for name in a.stream:
        out["streams"].append(_stream_info(await js.stream_info(name)))
    await nc.close()
    return out


async def nats_create(a: argparse.Namespace) -> dict[str, Any]:
    """Create the streams (file storage, ``--replicas``), then wait until each has a
    leader and every replica is current."""
    from nats.js.api import StorageType, StreamConfig

    nc = await _connect(a)
    js = nc.jetstream(timeout=10)
    for name in a.stream:
        config = StreamConfig(
            name=name, subjects=[name.lower()], storage=StorageType.FILE, num_replicas=a.replicas
        )
        await js.add_stream(config)
    deadline = time.monotonic() + 60
    while True:
        infos = [_stream_info(await js.stream_info(name)) for name in a.stream]
        ready = all(
            i["leader"]
            and len(i["replicas"]) == a.replicas - 1
            and all(r["current"] for r in i["replicas"])
            for i in infos
        )
        if ready:
            await nc.close()
            return {"streams": infos}
        if time.monotonic() > deadline:
            raise SystemExit(f"streams not ready after 60 s: {infos}")
        await asyncio.sleep(0.2)


async def nats_failover(a: argparse.Namespace) -> dict[str, Any]:
    nc = await _connect(a, reconnect=True)
    js = nc.jetstream()
    subject = a.stream.lower()
    pad = make_pad()
    acked: list[tuple[int, float, int]] = []
    errors: list[tuple[float, str]] = []
    progress = Progress()
    stop = stdin_stopper()
    state = {"next": 0, "duplicates": 0, "attempts": 0}
    started = time.monotonic()

    async def worker() -> None:
        while not stop.is_set():
            i = state["next"]
            state["next"] += 1
            due = started + i / a.rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if stop.is_set() and time.monotonic() >= due:
                state["unsent"] = state.get("unsent", 0) + 1
                return
            giveup = None
            while True:
                state["attempts"] += 1
                try:
                    ack = await js.publish(
                        subject,
                        record(i, pad),
                        timeout=a.attempt_timeout,
                        headers={"Nats-Msg-Id": str(i)},
                    )
                except Exception as e:
                    now = time.monotonic()
                    progress.errors += 1
                    if len(errors) < 50:
                        errors.append((now, f"{type(e).__name__}: {e}"))
                    if stop.is_set():
                        giveup = giveup or now + FLUSH_LIMIT
                        if now > giveup:
                            state["unacked"] = state.get("unacked", 0) + 1
                            return
                    await asyncio.sleep(0.05)
                    continue
                now = time.monotonic()
                acked.append((i, now, ack.seq))
                if ack.duplicate:
                    state["duplicates"] += 1
                progress.acked += 1
                progress.last_ack = now
                break

    async def reporter() -> None:
        while not stop.is_set():
            url = nc.connected_url
            progress.maybe_print(time.monotonic(), server=url.netloc if url else None)
            await asyncio.sleep(PROGRESS_EVERY / 2)

    tasks = [asyncio.create_task(worker()) for _ in range(a.workers)]
    report = asyncio.create_task(reporter())
    while not stop.is_set():
        await asyncio.sleep(0.05)
    stopped = time.monotonic()
    await asyncio.gather(*tasks)
    report.cancel()
    await nc.close()
    return {
        "sent": state["next"] - state.get("unsent", 0),
        "acked": acked,
        "errors": errors[:20],
        "error_count": progress.errors,
        "unflushed": state.get("unacked", 0),
        "server_duplicates": state["duplicates"],
        "attempts": state["attempts"],
        "started": started,
        "stopped": stopped,
    }


async def nats_readback(a: argparse.Namespace) -> dict[str, Any]:
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    nc = await _connect(a)
    js = nc.jetstream(timeout=10)
    info = await js.stream_info(a.stream)
    total = info.state.messages
    config = ConsumerConfig(ack_policy=AckPolicy.ALL, deliver_policy=DeliverPolicy.ALL)
    sub = await js.pull_subscribe(a.stream.lower(), durable="readback", config=config)
    indices: list[int] = []
    idle_since = time.monotonic()
    while len(indices) < total:
        try:
            msgs = await sub.fetch(batch=min(1000, total - len(indices)), timeout=1.0)
        except NatsTimeout:
            if time.monotonic() - idle_since > IDLE_LIMIT:
                break
            continue
        idle_since = time.monotonic()
        indices += [index_of(m.data) for m in msgs]
        if msgs:
            await msgs[-1].ack()
    await nc.close()
    return {
        "indices": indices,
        "log_start": info.state.first_seq,
        "log_end": info.state.last_seq,
        "stream_messages": total,
        "errors": [],
    }


COMMANDS = {
    "kafka-create": kafka_create,
    "kafka-describe": kafka_describe,
    "kafka-failover": kafka_failover,
    "kafka-readback": kafka_readback,
    "nats-create": nats_create,
    "nats-describe": nats_describe,
    "nats-failover": nats_failover,
    "nats-readback": nats_readback,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="One cluster-side client run of bench/replication.py.")
    p.add_argument("command", choices=sorted(COMMANDS))
    p.add_argument("--server", required=True, help="host:port[,host:port...]")
    p.add_argument("--topic", action="append", default=[], help="Kafka topic (repeatable)")
    p.add_argument("--stream", action="append", default=[], help="JetStream stream (repeatable)")
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--min-isr", type=int, default=2, help="Kafka min.insync.replicas")
    p.add_argument("--rate", type=float, default=1000.0, help="failover: records offered per s")
    p.add_argument("--workers", type=int, default=32, help="NATS failover: publishers at once")
    p.add_argument(
        "--attempt-timeout", type=float, default=0.5, help="NATS failover: s per publish attempt"
    )
    p.add_argument("--out", help="failover and readback: write the result JSON here")
    p.add_argument("--kafka-debug", help="kafka-failover: librdkafka debug contexts (diagnosis)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    needs_out = ("kafka-failover", "kafka-readback", "nats-failover", "nats-readback")
    if a.command in needs_out and not a.out:
        raise SystemExit(f"{a.command}: --out is needed")
    if a.command.startswith("kafka") and not a.topic:
        raise SystemExit(f"{a.command}: --topic is needed")
    if a.command.startswith("nats") and not a.stream:
        raise SystemExit(f"{a.command}: --stream is needed")
    if a.command in ("kafka-failover", "kafka-readback"):
        a.topic = a.topic[0]
    if a.command in ("nats-failover", "nats-readback"):
        a.stream = a.stream[0]
    out = COMMANDS[a.command](a)
    if asyncio.iscoroutine(out):
        out = asyncio.run(out)
    if a.out:
        write_out(a.out, out)
        out = {"written": a.out, "acked": len(out.get("acked", [])) if "acked" in out else None}
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
