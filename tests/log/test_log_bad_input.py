"""Hostile and broken input, end to end against a real `pyralog broker` process.

Bad frame sizes, corrupt and garbage batches, two batches where one belongs, bad acks,
transactions, unknown partitions, offsets past the end, records over max.message.bytes;
1,000 pipelined requests, 200 connections at once, half frames; idempotent producing
(duplicates, gaps, fenced epochs, dedupe across kill -9, confluent-kafka with
enable.idempotence); a full disk and a read-only data directory (both as root, on a
real tmpfs).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stockclients
from brokerthread import FrameClient, create_data, fetch_data, produce_data
from logbatches import validate_storage
from logbroker import RunningBroker, kill9, running_broker, start_broker

from ports import free_port
from processes import console_script, stop_process, wait_until
from pyralog.log import batch as v2
from pyralog.log import protocol
from pyralog.log.records import build_batch, read_messages

NONE = 0
OFFSET_OUT_OF_RANGE = 1
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
MESSAGE_TOO_LARGE = 10
INVALID_REQUIRED_ACKS = 21
INVALID_REQUEST = 42
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
INVALID_PRODUCER_EPOCH = 47
KAFKA_STORAGE_ERROR = 56
INVALID_RECORD = 87

TOPIC = "bad-input"
NOW_MS = int(time.time() * 1000)
NO_AUTO = {
    "allow_auto_topic_creation": False,
    "include_cluster_authorized_operations": False,
    "include_topic_authorized_operations": False,
}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    with running_broker(tmp_path_factory.mktemp("bad-input")) as b:
        with FrameClient(b.port) as c:
            assert create(c, TOPIC, 2) == NONE
            assert create(c, "small-messages", 1, {"max.message.bytes": "1000"}) == NONE
        yield b


@pytest.fixture
def client(broker: RunningBroker) -> Iterator[FrameClient]:
    with FrameClient(broker.port) as c:
        yield c


# --- requests ---------------------------------------------------------------------------


def create(
    c: FrameClient, name: str, partitions: int, configs: dict[str, str] | None = None
) -> int:
    return int(c.call(19, 5, create_data(name, partitions, configs)).topics[0].error_code)


def produce(
    c: FrameClient,
    topic: str,
    records: bytes | None,
    partition: int = 0,
    version: int = 9,
    **kw: Any,
) -> Any:
    """The partition's result of one Produce request."""
    body = c.call(0, version, produce_data(topic, partition, records, **kw))
    return body.responses[0].partition_responses[0]


def end_offset(c: FrameClient, topic: str, partition: int = 0) -> int:
    data = {
        "replica_id": -1,
        "isolation_level": 0,
        "topics": [
            {"name": topic, "partitions": [{"partition_index": partition, "timestamp": -1}]}
        ],
    }
    p = c.call(2, 5, data).topics[0].partitions[0]
    assert p.error_code == NONE
    return int(p.offset)


def fetch(c: FrameClient, topic: str, offset: int, partition: int = 0) -> Any:
    return c.call(1, 11, fetch_data(topic, partition, offset)).responses[0].partitions[0]


def values(c: FrameClient, topic: str, partition: int = 0) -> list[bytes | None]:
    """Every record value of the partition, in order."""
    out: list[bytes | None] = []
    offset = 0
    while offset < end_offset(c, topic, partition):
        got = list(read_messages(topic, partition, fetch(c, topic, offset, partition).records))
        assert got, offset
        out += [m.value for m in got if m.offset >= offset]
        offset = got[-1].offset + 1
    return out


def batch(tag: str, n: int = 3, **kw: int) -> bytes:
    return build_batch([(None, f"{tag}-{i}".encode()) for i in range(n)], timestamp_ms=NOW_MS, **kw)


def api_versions_ok(c: FrameClient) -> None:
    assert (
        c.call(18, 3, {"client_software_name": "t", "client_software_version": "1"}).error_code == 0
    )


# --- framing ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 3, -1, -(2**31), 2**31 - 1])
def test_bad_frame_size_closes_that_connection_only(broker: RunningBroker, size: int) -> None:
    with FrameClient(broker.port) as good, FrameClient(broker.port) as bad:
        api_versions_ok(good)
        bad.send(struct.pack(">i", size) + b"\x00" * 8)
        assert bad.closed_by_peer(timeout=5)
        api_versions_ok(good)
    with FrameClient(broker.port) as fresh:
        api_versions_ok(fresh)


def test_half_a_frame_then_disconnect_does_no_harm(broker: RunningBroker) -> None:
    fds = len(os.listdir(f"/proc/{broker.process.pid}/fd"))
    frame = protocol.encode_request(
        18,
        3,
        1,
        "half",
        protocol.request(18, 3, {"client_software_name": "h", "client_software_version": "1"}),
    )
    for cut in (1, 3, 4, 6, len(frame) - 1):
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", broker.port)) as s:
                s.sendall(frame[:cut])
    big = struct.pack(">i", 1 << 20) + b"x" * 1000  # a large frame, mostly unsent
    for _ in range(10):
        with socket.create_connection(("127.0.0.1", broker.port)) as s:
            s.sendall(big)
    with FrameClient(broker.port) as c:
        api_versions_ok(c)
    # Every one of those connections is closed on the broker's side too.
    assert wait_until(lambda: len(os.listdir(f"/proc/{broker.process.pid}/fd")) <= fds, 10)


def test_1000_pipelined_requests_get_1000_answers_in_order(client: FrameClient) -> None:
    records = batch("pipelined", 1)
    frames, expected = [], []
    for i in range(1000):
        correlation = 10_000 + i
        key, version, data = [
            (18, 3, {"client_software_name": "p", "client_software_version": "1"}),
            (3, 9, {"topics": [{"name": TOPIC}], **NO_AUTO}),
            (0, 8, produce_data(TOPIC, 1, records, acks=1)),
        ][i % 3]
        body = protocol.request(key, version, data)
        frames.append(protocol.encode_request(key, version, correlation, "p", body))
        expected.append((key, version, correlation))
    start = end_offset(client, TOPIC, 1)
    # Sent from another thread: the broker reads only so far ahead of its answers.
    sender = threading.Thread(target=client.send, args=(b"".join(frames),))
    sender.start()
    produced = []
    for key, version, correlation in expected:
        frame = client.read_frame()
        assert frame is not None
        got, body = protocol.decode_response(key, version, frame)
        assert got == correlation
        if key == 0:
            result = body.responses[0].partition_responses[0]
            assert result.error_code == NONE
            produced.append(result.base_offset)
    sender.join(30)
    assert produced == list(range(start, start + len(produced))) and len(produced) == 333


def test_200_connections_at_once_are_each_served(broker: RunningBroker) -> None:
    async def one(i: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        try:
            data = {"topics": [{"name": TOPIC}], **NO_AUTO}
            body = protocol.request(3, 9, data)
            writer.write(protocol.encode_request(3, 9, i, f"c{i}", body))
            await writer.drain()
            (size,) = struct.unpack(">i", await reader.readexactly(4))
            correlation, answer = protocol.decode_response(3, 9, await reader.readexactly(size))
            assert correlation == i and answer.topics[0].error_code == NONE
            return len(answer.topics[0].partitions)
        finally:
            writer.close()

    async def main() -> list[int]:
        async with asyncio.timeout(60):
            return await asyncio.gather(*(one(i) for i in range(200)))

    assert asyncio.run(main()) == [2] * 200


# --- bad produce requests -------------------------------------------------------------------


def test_wrong_crc_is_corrupt_message_and_nothing_is_stored(client: FrameClient) -> None:
    good = bytearray(batch("crc"))
    good[-1] ^= 0xFF  # a record byte: the CRC-32C no longer matches
    before = end_offset(client, TOPIC)
    result = produce(client, TOPIC, bytes(good))
    assert result.error_code == CORRUPT_MESSAGE and "CRC" in (result.error_message or "")
    assert end_offset(client, TOPIC) == before
    api_versions_ok(client)


@pytest.mark.parametrize(
    "records",
    [b"garbage", b"\x00" * 61, b"\xff" * 200, b"", None],
    ids=["text", "zeros", "ones", "empty", "null"],
)
def test_garbage_records_get_an_error_and_nothing_is_stored(
    client: FrameClient, records: bytes | None
) -> None:
    before = end_offset(client, TOPIC)
    result = produce(client, TOPIC, records)
    assert result.error_code in (CORRUPT_MESSAGE, INVALID_RECORD), result
    assert result.base_offset == -1
    assert end_offset(client, TOPIC) == before


@pytest.mark.parametrize("version", [3, 9])
def test_two_batches_in_one_partition_are_invalid_record(client: FrameClient, version: int) -> None:
    before = end_offset(client, TOPIC)
    result = produce(client, TOPIC, batch("one") + batch("two"), version=version)
    assert result.error_code == INVALID_RECORD
    assert end_offset(client, TOPIC) == before


@pytest.mark.parametrize("acks", [5, 2, -2])
def test_bad_acks_are_invalid_required_acks(client: FrameClient, acks: int) -> None:
    before = end_offset(client, TOPIC)
    assert produce(client, TOPIC, batch("acks"), acks=acks).error_code == INVALID_REQUIRED_ACKS
    assert end_offset(client, TOPIC) == before


def test_transactions_are_refused(client: FrameClient) -> None:
    before = end_offset(client, TOPIC)
    txn_batch = bytearray(batch("txn", producer_id=1, producer_epoch=0, base_sequence=0))
    attributes = struct.unpack_from(">h", txn_batch, 21)[0] | v2.TRANSACTIONAL
    struct.pack_into(">h", txn_batch, 21, attributes)
    struct.pack_into(">I", txn_batch, 17, v2.crc_of(txn_batch, 0, v2.read_header(txn_batch)))
    v2.validate(txn_batch)  # a well-formed transactional batch
    assert produce(client, TOPIC, bytes(txn_batch)).error_code == INVALID_RECORD
    assert produce(client, TOPIC, batch("id"), txn="my-txn").error_code == INVALID_REQUEST
    assert end_offset(client, TOPIC) == before


def test_unknown_topic_or_partition(client: FrameClient) -> None:
    for topic, partition in (("no-such-topic", 0), (TOPIC, 2), (TOPIC, -1)):
        result = produce(client, topic, batch("nowhere"), partition=partition)
        assert result.error_code == UNKNOWN_TOPIC_OR_PARTITION
        assert fetch(client, topic, 0, partition).error_code == UNKNOWN_TOPIC_OR_PARTITION
    meta = client.call(3, 9, {"topics": None, **NO_AUTO})
    assert "no-such-topic" not in {t.name for t in meta.topics}


def test_fetch_beyond_the_end_is_offset_out_of_range(client: FrameClient) -> None:
    end = produce(client, TOPIC, batch("end")).base_offset + 3
    assert fetch(client, TOPIC, end).error_code == NONE  # the end itself: nothing yet
    for offset in (end + 1, end + 1000, -5):
        assert fetch(client, TOPIC, offset).error_code == OFFSET_OUT_OF_RANGE


def test_record_over_max_message_bytes_is_message_too_large(client: FrameClient) -> None:
    big = build_batch([(None, b"x" * 2000)], timestamp_ms=NOW_MS)
    result = produce(client, "small-messages", big)
    assert result.error_code == MESSAGE_TOO_LARGE and "max.message.bytes" in result.error_message
    assert end_offset(client, "small-messages") == 0
    small = build_batch([(None, b"x" * 500)], timestamp_ms=NOW_MS)
    assert produce(client, "small-messages", small).error_code == NONE


# --- idempotent producing -----------------------------------------------------------------


def producer_id(c: FrameClient, pid: int = -1, epoch: int = -1) -> tuple[int, int]:
    data = {
        "transactional_id": None,
        "transaction_timeout": 60_000,
        "producer_id": pid,
        "producer_epoch": epoch,
    }
    body = c.call(22, 4, data)
    assert body.error_code == NONE
    return int(body.producer_id), int(body.producer_epoch)


def test_idempotent_duplicates_gaps_and_fenced_epochs(client: FrameClient) -> None:
    topic = "idempotent"
    assert create(client, topic, 1) == NONE
    pid, epoch = producer_id(client)
    first = batch("first", 5, producer_id=pid, producer_epoch=epoch, base_sequence=0)
    assert produce(client, topic, first).base_offset == 0
    # A retry of the same batch: the offset it got, and it is not stored again.
    again = produce(client, topic, first)
    assert (again.error_code, again.base_offset) == (NONE, 0)
    assert end_offset(client, topic) == 5
    second = batch("second", 2, producer_id=pid, producer_epoch=epoch, base_sequence=5)
    assert produce(client, topic, second).base_offset == 5
    assert produce(client, topic, first).base_offset == 0  # still a known duplicate
    gap = batch("gap", 1, producer_id=pid, producer_epoch=epoch, base_sequence=9)
    assert produce(client, topic, gap).error_code == OUT_OF_ORDER_SEQUENCE_NUMBER
    # The epoch is bumped (KIP-360); the old epoch is fenced from then on.
    pid2, epoch2 = producer_id(client, pid, epoch)
    assert (pid2, epoch2) == (pid, epoch + 1)
    newer = batch("newer", 1, producer_id=pid, producer_epoch=epoch2, base_sequence=0)
    assert produce(client, topic, newer).base_offset == 7
    stale = batch("stale", 1, producer_id=pid, producer_epoch=epoch, base_sequence=7)
    assert produce(client, topic, stale).error_code == INVALID_PRODUCER_EPOCH
    assert values(client, topic) == [
        *(f"first-{i}".encode() for i in range(5)),
        b"second-0",
        b"second-1",
        b"newer-0",
    ]


def test_dedupe_survives_kill_9(tmp_path: Path) -> None:
    data = tmp_path / "data"
    broker = start_broker(data)
    try:
        with FrameClient(broker.port) as c:
            assert create(c, "dedupe", 1) == NONE
            pid, epoch = producer_id(c)
            for seq in range(0, 30, 3):
                sent = batch(f"b{seq}", 3, producer_id=pid, producer_epoch=epoch, base_sequence=seq)
                assert produce(c, "dedupe", sent).base_offset == seq
        kill9(broker)
    finally:
        stop_process(broker.process)
    with running_broker(data) as again, FrameClient(again.port) as c:
        # The retry of the last batch (its answer was lost with the broker) is known.
        result = produce(c, "dedupe", sent)
        assert (result.error_code, result.base_offset) == (NONE, 27)
        assert end_offset(c, "dedupe") == 30
        nxt = batch("next", 1, producer_id=pid, producer_epoch=epoch, base_sequence=30)
        assert produce(c, "dedupe", nxt).base_offset == 30
        gap = batch("gap", 1, producer_id=pid, producer_epoch=epoch, base_sequence=40)
        assert produce(c, "dedupe", gap).error_code == OUT_OF_ORDER_SEQUENCE_NUMBER


def test_confluent_idempotent_producer_10000_records_without_duplicates(
    broker: RunningBroker,
) -> None:
    from confluent_kafka import Producer

    topic, n = "confluent-idempotent", 10_000
    errors: list[str] = []
    producer = Producer(
        {
            "bootstrap.servers": broker.address,
            "enable.idempotence": True,
            "linger.ms": 5,
            "batch.num.messages": 500,
        }
    )
    for i in range(n):
        while True:
            try:
                producer.produce(
                    topic,
                    f"v{i:05d}".encode(),
                    partition=0,
                    on_delivery=lambda err, _m: err and errors.append(str(err)),
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0 and not errors, errors[:3]
    got = stockclients.read("confluent", broker.address, topic, n + 10)
    assert [o for o, _, _ in got] == list(range(n))
    assert [v for _, _, v in got] == [f"v{i:05d}".encode() for i in range(n)]


# --- the disk -------------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of `size` at `where` (root only), always unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (a real full or read-only disk)")
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


def test_full_disk(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", "2m") as mnt:
        data = mnt / "data"
        with running_broker(data) as broker, FrameClient(broker.port) as c:
            assert create(c, "big", 1) == NONE and create(c, "small", 1) == NONE
            assert produce(c, "small", batch("before", 10)).error_code == NONE
            payload = build_batch([(None, os.urandom(60_000))], timestamp_ms=NOW_MS)
            results = []
            for _ in range(100):
                result = produce(c, "big", payload)
                results.append(result)
                if result.error_code != NONE:
                    break
            failed = results[-1]
            assert failed.error_code == KAFKA_STORAGE_ERROR, [r.error_code for r in results]
            assert str(data) in failed.error_message and "ENOSPC" in failed.error_message
            stored = len(results) - 1
            assert stored > 5  # most of the 2 MiB held records first
            # The operator is told too, in the broker's log.
            assert wait_until(lambda: any("storage" in line for line in broker.log), 5)
            assert any(str(data) in line and "No space left" in line for line in broker.log)
            assert end_offset(c, "big") == stored
            # The other topic on the same disk fails the same way, and is left as it was.
            assert produce(c, "small", payload).error_code == KAFKA_STORAGE_ERROR
            assert end_offset(c, "small") == 10
        # Stopped on a full disk and reopened: no segment is damaged, nothing is lost.
        assert validate_storage(data)[1] == stored + 10
        with running_broker(data) as broker, FrameClient(broker.port) as c:
            assert not [line for line in broker.log if "recovered" in line]
            deleted = c.call(20, 4, {"topic_names": ["big"], "timeout": 30_000})
            assert deleted.responses[0].error_code == NONE
            # Space is back: producing works again.
            assert produce(c, "small", payload).error_code == NONE
            assert produce(c, "small", batch("after", 1)).base_offset == 11
        assert validate_storage(data)[1] == 12


def test_read_only_data_dir_exits_1_with_one_clear_line(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", "1m") as mnt:
        data = mnt / "data"
        data.mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        try:
            proc = subprocess.run(
                [
                    str(console_script("pyralog")),
                    "broker",
                    "--data",
                    str(data),
                    "--listen",
                    f"127.0.0.1:{free_port()}",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1, lines
    assert str(data) in lines[0] and "read-only" in lines[0]


def test_stopping_with_clients_connected_prints_no_traceback(tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "data")
    try:
        conns = [FrameClient(broker.port) for _ in range(3)]
        for c in conns:
            api_versions_ok(c)
        stop_process(broker.process, timeout=15)
        assert broker.process.returncode == 0
        assert wait_until(lambda: any("listening" in line for line in broker.log), 5)
        time.sleep(0.2)  # the log pump reads what was left
        assert not [line for line in broker.log if "Traceback" in line], broker.log
        for c in conns:
            c.close()
    finally:
        stop_process(broker.process)
