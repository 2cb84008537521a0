"""kill -9 the broker in the middle of a produce stream: nothing acknowledged is lost.

A stock producer (confluent-kafka, acks=all) streams records into a `pyralog broker`
process with flush=always; the broker is killed with SIGKILL mid-stream; half a batch
is then appended to the active segment, as a write torn by a power cut would leave it.
The restarted broker reports the truncation, serves every acknowledged record at the
offset it was acknowledged with, and takes new records after them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from logbroker import kill9, running_broker, start_broker

from processes import stop_process, wait_until
from pyralog.log import batch
from pyralog.log.client import PyralogClient
from pyralog.log.records import build_batch

TOPIC = "crash"


def _stream(address: str, acked: dict[int, bytes], stop: threading.Event) -> None:
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": address,
            "acks": "all",
            "linger.ms": 2,
            "message.timeout.ms": 3000,
            "retries": 0,
            "enable.idempotence": False,
        }
    )

    def delivered(err: object, msg: object) -> None:
        if err is None:
            acked[msg.offset()] = msg.value()  # type: ignore[attr-defined]

    i = 0
    while not stop.is_set():
        try:
            producer.produce(
                TOPIC, f"record-{i:08d}".encode() * 8, partition=0, on_delivery=delivered
            )
            i += 1
        except BufferError:
            pass
        producer.poll(0.001 if i % 100 == 0 else 0)
    producer.flush(5)


def _read_all(address: str, end: int) -> dict[int, bytes]:
    async def main() -> dict[int, bytes]:
        async with await PyralogClient.connect(address) as client:
            got: dict[int, bytes] = {}
            offset = 0
            while offset < end:
                messages = await client.fetch(TOPIC, 0, offset, max_wait_ms=100)
                assert messages, f"nothing at offset {offset} of {end}"
                for m in messages:
                    got[m.offset] = m.value or b""
                offset = messages[-1].offset + 1
            return got

    return asyncio.run(main())


def test_kill_9_mid_stream_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    broker = start_broker(data, "--flush", "always")
    acked: dict[int, bytes] = {}
    stop = threading.Event()
    producer = threading.Thread(target=_stream, args=(broker.address, acked, stop))
    producer.start()
    try:
        assert wait_until(lambda: len(acked) >= 3000, timeout=60), len(acked)
        kill9(broker)  # mid-stream: records are in flight
    finally:
        time.sleep(0.5)
        stop.set()
        producer.join(30)
        stop_process(broker.process)

    segment = sorted((data / "topics" / TOPIC / f"{TOPIC}-0").glob("*.log"))[-1]
    intact = segment.stat().st_size
    torn = build_batch([(None, b"torn" * 100)] * 20, timestamp_ms=int(time.time() * 1000))
    with segment.open("ab") as f:
        f.write(torn[: len(torn) // 2])

    with running_broker(data) as again:
        assert any("truncated" in line or "recovered" in line for line in again.log), again.log
        assert segment.stat().st_size == intact  # the torn tail is gone
        end = max(acked) + 1
        stored = _read_all(again.address, end)
        for offset, value in acked.items():
            assert stored.get(offset) == value, f"acknowledged offset {offset} lost or changed"
        # Every stored byte is a whole, valid batch; new records follow the old ones.
        raw = segment.read_bytes()
        batch.split(raw)
        next_offset = asyncio.run(_produce_one(again.address))
        assert next_offset >= end


async def _produce_one(address: str) -> int:
    async with await PyralogClient.connect(address) as client:
        return await client.produce(TOPIC, b"after the crash")
