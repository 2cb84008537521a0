"""The Jepsen harness's client side: a script run inside the client's network namespace.

    python jepsen_client.py create  '{"bootstrap": ..., "topic": ..., "partitions": 2, ...}'
    python jepsen_client.py produce '{"bootstrap": ..., "topic": ..., "log": PATH, ...}'
    python jepsen_client.py read    '{"bootstrap": ..., "topic": ..., "partitions": [0, 1]}'

Only stock client code: confluent-kafka (librdkafka), nothing of Pyralog's.

``produce`` sends unique values (``PREFIX-N``) round-robin to the given partitions, one
every ``interval`` seconds, until the stop file appears or SIGTERM (or ``count`` values
were sent), then flushes. Every attempt and every delivery report goes to the log as a
JSON line, flushed at once:

    {"e": "attempt", "v": VALUE, "p": PARTITION, "t": WALL, "m": MONOTONIC}
    {"e": "ack", "v": VALUE, "p": PARTITION, "o": OFFSET, "t": ..., "m": ...}
    {"e": "fail", "v": VALUE, "p": PARTITION, "err": TEXT, "code": NAME, "t": ..., "m": ...}
    {"e": "error", "err": TEXT, "code": NAME, "fatal": BOOL, "t": ..., "m": ...}  (client-wide)
    {"e": "done", "undelivered": N, "t": ..., "m": ...}

``m`` is CLOCK_MONOTONIC, the same clock the test process reads, so fault moments and
acknowledgements compare directly. A fatal producer error (librdkafka gives up on the
idempotent producer) is logged and a new producer takes over.

``read`` prints, as JSON, every record of each partition from its log start up to the
high watermark it found first: ``{"0": [[OFFSET, VALUE], ...], ...}``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def create(cfg: dict[str, Any]) -> None:
    admin = AdminClient({"bootstrap.servers": cfg["bootstrap"], "socket.timeout.ms": 10000})
    topic = NewTopic(
        cfg["topic"],
        num_partitions=cfg["partitions"],
        replication_factor=cfg["replication_factor"],
        config={"min.insync.replicas": str(cfg["min_insync_replicas"])},
    )
    futures = admin.create_topics([topic], operation_timeout=20, request_timeout=30)
    futures[cfg["topic"]].result(timeout=60)
    print(json.dumps({"created": cfg["topic"]}))


class Log:
    def __init__(self, path: str) -> None:
        self._out = open(path, "a", buffering=1)  # noqa: SIM115 - open for the whole run
        self.fatal = False  # a fatal client error since the last producer started

    def write(self, event: str, **fields: Any) -> None:
        fields.update(e=event, t=time.time(), m=time.monotonic())
        self._out.write(json.dumps(fields) + "\n")
        self._out.flush()


def _producer(cfg: dict[str, Any], log: Log) -> Producer:
    def on_error(err: KafkaError) -> None:
        log.fatal = log.fatal or err.fatal()
        log.write("error", err=err.str(), code=err.name(), fatal=err.fatal())

    conf = {
        "bootstrap.servers": cfg["bootstrap"],
        "acks": "all",
        "enable.idempotence": cfg.get("idempotent", True),
        "message.timeout.ms": cfg.get("message_timeout_ms", 30000),
        # The broker's deadline for acks=all (librdkafka sends it in the request) ...
        "request.timeout.ms": cfg.get("request_timeout_ms", 5000),
        # ... and the client's own for any request. A node killed with its WireGuard
        # daemon sends no FIN or RST, like a crashed machine: without this the client
        # waits out TCP's retransmissions (tens of seconds) on a dead connection.
        "socket.timeout.ms": cfg.get("socket_timeout_ms", 6000),
        "retry.backoff.ms": 100,
        "retry.backoff.max.ms": 1000,
        "reconnect.backoff.ms": 100,
        "reconnect.backoff.max.ms": 1000,
        "socket.connection.setup.timeout.ms": 5000,
        "topic.metadata.refresh.interval.ms": 2000,
        "linger.ms": 10,
        "error_cb": on_error,
    }
    if cfg.get("debug"):  # librdkafka's own log, on stderr
        conf["debug"] = cfg["debug"]
    if not conf["enable.idempotence"]:
        conf["retries"] = cfg.get("retries", 2147483647)
    return Producer(conf)


def produce(cfg: dict[str, Any]) -> None:
    log = Log(cfg["log"])
    stop_file = cfg.get("stop_file")
    go_file = cfg.get("go_file")
    partitions = cfg.get("partitions", [0, 1])
    interval = cfg.get("interval", 0.02)
    count = cfg.get("count")
    stopping = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)

    def report(err: KafkaError | None, msg: Any) -> None:
        value = msg.value().decode()
        if err is None:
            log.write("ack", v=value, p=msg.partition(), o=msg.offset())
        else:
            log.write("fail", v=value, p=msg.partition(), err=err.str(), code=err.name())

    producer = _producer(cfg, log)
    if cfg.get("warm"):  # connect and learn the leaders before going
        producer.list_topics(cfg["topic"], timeout=20)
    log.write("ready")
    while go_file and not os.path.exists(go_file) and not stopping:
        time.sleep(0.005)
    sent = 0
    while not stopping and (count is None or sent < count):
        if stop_file and os.path.exists(stop_file):
            break
        value = f"{cfg['prefix']}-{sent}"
        partition = partitions[sent % len(partitions)]
        log.write("attempt", v=value, p=partition)
        while True:
            try:
                producer.produce(cfg["topic"], value.encode(), partition=partition,
                                 on_delivery=report)  # fmt: skip
                break
            except BufferError:
                producer.poll(0.1)
            except Exception as e:  # a fatal error: this producer is done
                log.write("error", err=f"produce: {e}", code=type(e).__name__, fatal=True)
                producer = _replace(producer, cfg, log)
        sent += 1
        producer.poll(0)
        if log.fatal:
            producer = _replace(producer, cfg, log)
        time.sleep(interval)
    left = producer.flush(cfg.get("flush_timeout", 40))
    log.write("done", undelivered=left, sent=sent)


def _replace(old: Producer, cfg: dict[str, Any], log: Log) -> Producer:
    """After a fatal error: flush what the old one still reports, start a new one."""
    old.flush(5)
    log.write("error", err="replacing the producer after a fatal error", code="", fatal=True)
    log.fatal = False
    return _producer(cfg, log)


def read(cfg: dict[str, Any]) -> None:
    consumer = Consumer(
        {
            "bootstrap.servers": cfg["bootstrap"],
            "group.id": f"jepsen-reader-{os.getpid()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    out: dict[str, list[list[Any]]] = {}
    ends: dict[int, int] = {}
    assign = []
    for p in cfg["partitions"]:
        low, high = consumer.get_watermark_offsets(TopicPartition(cfg["topic"], p), timeout=20)
        ends[p] = high
        out[str(p)] = []
        if high > low:
            assign.append(TopicPartition(cfg["topic"], p, OFFSET_BEGINNING))
    consumer.assign(assign)
    done = {p for p in cfg["partitions"] if ends[p] == 0}
    deadline = time.monotonic() + cfg.get("timeout", 60)
    while len(done) < len(cfg["partitions"]):
        if time.monotonic() > deadline:
            raise SystemExit(f"read: timed out; ends {ends}, got {[len(v) for v in out.values()]}")
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        if msg.error() is not None:
            if msg.error().code() == KafkaError._PARTITION_EOF:
                if msg.offset() >= ends[msg.partition()]:
                    done.add(msg.partition())
                continue
            raise SystemExit(f"read: {msg.error()}")
        if msg.offset() < ends[msg.partition()]:
            out[str(msg.partition())].append([msg.offset(), msg.value().decode()])
        if msg.offset() + 1 >= ends[msg.partition()]:
            done.add(msg.partition())
    consumer.close()
    print(json.dumps({"ends": {str(p): e for p, e in ends.items()}, "records": out}))


if __name__ == "__main__":
    command, config = sys.argv[1], json.loads(sys.argv[2])
    {"create": create, "produce": produce, "read": read}[command](config)
