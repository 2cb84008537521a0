"""A consumer-group member of one stock client, run as its own process by the tests.

    python groupmember.py CLIENT BROKER TOPIC GROUP

Prints "A p,p,..." whenever its assignment changes and "R partition offset value" for
each record, flushing every line, until it is sent SIGTERM (then it leaves the group).
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import threading

stop = threading.Event()


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run_confluent(broker: str, topic: str, group: str) -> None:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": broker,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 1000,
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 200,
        }
    )
    consumer.subscribe(
        [topic],
        on_assign=lambda c, ps: out("A " + ",".join(str(p.partition) for p in ps)),
        on_revoke=lambda c, ps: out("A "),
    )
    while not stop.is_set():
        msg = consumer.poll(0.2)
        if msg is None or msg.error():
            continue
        out(f"R {msg.partition()} {msg.offset()} {msg.value().decode()}")
    consumer.close()


def run_kafka_python(broker: str, topic: str, group: str) -> None:
    from kafka import ConsumerRebalanceListener, KafkaConsumer

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):  # type: ignore[no-untyped-def]
            out("A ")

        def on_partitions_assigned(self, assigned):  # type: ignore[no-untyped-def]
            out("A " + ",".join(str(p.partition) for p in assigned))

    consumer = KafkaConsumer(
        bootstrap_servers=broker,
        group_id=group,
        auto_offset_reset="earliest",
        session_timeout_ms=10000,
        heartbeat_interval_ms=1000,
        auto_commit_interval_ms=200,
    )
    consumer.subscribe([topic], listener=Listener())
    while not stop.is_set():
        for records in consumer.poll(timeout_ms=200).values():
            for msg in records:
                out(f"R {msg.partition} {msg.offset} {msg.value.decode()}")
    consumer.close()


def run_aiokafka(broker: str, topic: str, group: str) -> None:
    from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

    class Listener(ConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked):  # type: ignore[no-untyped-def]
            out("A ")

        async def on_partitions_assigned(self, assigned):  # type: ignore[no-untyped-def]
            out("A " + ",".join(str(p.partition) for p in assigned))

    async def main() -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=broker,
            group_id=group,
            auto_offset_reset="earliest",
            session_timeout_ms=10000,
            heartbeat_interval_ms=1000,
            auto_commit_interval_ms=200,
        )
        await consumer.start()
        consumer.subscribe([topic], listener=Listener())
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for msg in records:
                        out(f"R {msg.partition} {msg.offset} {msg.value.decode()}")
        finally:
            await consumer.stop()

    asyncio.run(main())


def run_kcat(broker: str, topic: str, group: str) -> None:
    proc = subprocess.Popen(
        [
            "kcat",
            "-u",  # unbuffered: a pipe would otherwise hold the last records back
            "-b",
            broker,
            "-G",
            group,
            "-f",
            "R %p %o %s\\n",
            "-X",
            "auto.offset.reset=earliest",
            "-X",
            "session.timeout.ms=10000",
            "-X",
            "heartbeat.interval.ms=1000",
            "-X",
            "auto.commit.interval.ms=200",
            topic,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assigned = re.compile(r"rebalanced.*: assigned: (.*)")

    def errors() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            m = assigned.search(line)
            if m:
                out("A " + ",".join(re.findall(r"\[(\d+)\]", m.group(1))))
            elif "revoked" in line:
                out("A ")

    threading.Thread(target=errors, daemon=True).start()
    threading.Thread(target=lambda: (stop.wait(), proc.terminate()), daemon=True).start()
    assert proc.stdout is not None
    for line in proc.stdout:
        out(line.rstrip("\n"))
    proc.wait()


RUNNERS = {
    "confluent": run_confluent,
    "kafka-python": run_kafka_python,
    "aiokafka": run_aiokafka,
    "kcat": run_kcat,
}

if __name__ == "__main__":
    client, broker, topic, group = sys.argv[1:5]
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    RUNNERS[client](broker, topic, group)
