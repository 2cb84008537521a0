"""Fuzz the broker's request path with mutated real requests from the four stock clients.

A TCP proxy in front of an in-process broker records every frame kcat, confluent-kafka,
kafka-python and aiokafka send while they produce (with and without compression,
idempotently too), read back, consume in a group and commit, and list metadata. Then
hypothesis picks captured frames and mutates them (flipped bytes, truncation, junk on
the end, the api key, version, correlation id or size overwritten, int16/int32/varint
lengths inside overwritten, two frames spliced) and feeds them to the same broker, both
straight into `Broker._answer` and over TCP. Properties:

- `_answer` returns a well-formed response frame whose correlation id matches (or None
  for acks=0), or raises ConnectionResetError; nothing else, and no handler error logged;
- over TCP, every answer is a whole frame in request order, and the broker closes the
  connection once the client is done (or at the first frame it refuses);
- a size prefix that is negative, below a header or over MAX_FRAME_BYTES is refused
  before any body is read;
- afterwards no task or connection is left over, memory stayed bounded, a normal client
  still produces and consumes, and every stored batch of the reopened storage validates.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stockclients
from brokerthread import BrokerThread, FrameClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from kio.index import load_response_schema
from kio.serial import entity_reader
from logbatches import validate_storage

from processes import wait_until
from pyralog.log import protocol
from pyralog.log.client import PyralogClient
from pyralog.log.context import BrokerConfig
from pyralog.log.handlers import SUPPORTED
from pyralog.log.records import build_batch

HERE = Path(__file__).parent
PEER = ("127.0.0.1", 40000)
# Requests that may legitimately wait (long-poll Fetch, a rebalance in JoinGroup or
# SyncGroup): a time-out answering them is not a failure.
WAITING = {1, 11, 14}
# How long an answer may take: short for those that may wait by right, generous for
# the rest (a slow disk under CI load must not look like a hang).
WAIT_TIMEOUT = 1.0
ANSWER_TIMEOUT = 15.0
RECORDS = 20
# Peak memory may grow this much over the whole fuzz run (frames are small; an
# unbounded allocation from a hostile length would be far larger).
MEMORY_SLACK = 256 << 20


class Proxy:
    """Forwards client connections to the broker, recording each client→broker frame."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.label = ""
        self.frames: list[tuple[str, bytes]] = []  # (client, size prefix + frame)
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        label = self.label
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return

        async def requests() -> None:
            try:
                while True:
                    prefix = await reader.readexactly(4)
                    (size,) = struct.unpack(">i", prefix)
                    frame = prefix + await reader.readexactly(size)
                    self.frames.append((label, frame))
                    up_writer.write(frame)
                    await up_writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                up_writer.close()

        async def responses() -> None:
            try:
                while data := await up_reader.read(1 << 16):
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()

        try:
            await asyncio.gather(requests(), responses())
        finally:
            self._tasks.discard(task)


@dataclasses.dataclass
class Fuzzed:
    broker: BrokerThread
    corpus: list[bytes] = dataclasses.field(repr=False)  # size prefix + request frame
    clients: dict[str, set[int]]  # client → api keys it sent
    tasks: int  # the broker loop's tasks once idle
    peak_rss_kib: int
    errors: list[str]  # handler failures logged, loop exceptions
    closed: bool = False


class _Errors(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(self.format(record))


def _group_member(client: str, address: str, topic: str, group: str, want: int) -> None:
    """Consume `want` records as a group member (groupmember.py), commit, leave."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "groupmember.py"), client, address, topic, group],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    seen: set[str] = set()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("R "):
                seen.add(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert wait_until(lambda: len(seen) >= want, timeout=60), (client, len(seen))
        time.sleep(0.6)  # a few auto-commit intervals
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(5)


def _idempotent_confluent(address: str, topic: str) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": address, "enable.idempotence": True})
    for key, value in stockclients.records(RECORDS, "idempotent"):
        producer.produce(topic, value, key, partition=0)
    assert producer.flush(30) == 0


def _admin_confluent(address: str) -> None:
    """The admin APIs, as librdkafka's AdminClient sends them."""
    from confluent_kafka import TopicCollection, TopicPartition
    from confluent_kafka.admin import (
        AdminClient,
        ConfigResource,
        NewTopic,
        OffsetSpec,
        ResourceType,
    )

    admin = AdminClient({"bootstrap.servers": address})
    new = NewTopic("fuzz-admin", 2, 1, config={"retention.ms": "3600000"})
    for future in admin.create_topics([new]).values():
        future.result(30)
    for future in admin.describe_configs(
        [ConfigResource(ResourceType.TOPIC, "fuzz-admin")]
    ).values():
        assert future.result(30)
    assert admin.list_consumer_groups().result(30).valid
    for future in admin.describe_consumer_groups(["fuzz-group-confluent"]).values():
        future.result(30)
    spec = {TopicPartition("fuzz-confluent", 0): OffsetSpec.earliest()}
    for future in admin.list_offsets(spec).values():
        future.result(30)
    for future in admin.describe_topics(TopicCollection(["fuzz-admin"])).values():
        future.result(30)
    for future in admin.delete_topics(["fuzz-admin"]).values():
        future.result(30)


def _capture(address: str, proxy: Proxy) -> None:
    codecs = {"kcat": "snappy", "confluent": "zstd", "kafka-python": "gzip", "aiokafka": "lz4"}
    for client in stockclients.CLIENTS:
        if stockclients.missing(client):
            continue
        proxy.label = client
        topic = f"fuzz-{client}"
        for codec in ("none", codecs[client]):
            recs = stockclients.records(RECORDS, f"{client}-{codec}", size=40)
            stockclients.produce(client, address, topic, recs, codec)
        assert len(stockclients.read(client, address, topic, 2 * RECORDS)) == 2 * RECORDS
        _group_member(client, address, topic, f"fuzz-group-{client}", 2 * RECORDS)
        if client == "kcat":
            listed = subprocess.run(["kcat", "-L", "-b", address], capture_output=True, timeout=60)
            assert listed.returncode == 0, listed.stderr
        if client == "confluent":
            _idempotent_confluent(address, topic)
            _admin_confluent(address)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    errors: list[str] = []
    handler = _Errors(errors)
    logging.getLogger("pyralog.log").addHandler(handler)
    broker = BrokerThread(
        tmp_path_factory.mktemp("fuzz"), BrokerConfig(initial_rebalance_delay_ms=0)
    )
    broker.loop.set_exception_handler(lambda _loop, ctx: errors.append(str(ctx.get("message"))))
    port = broker.start()
    proxy = Proxy(port)
    proxy_port = broker.run(proxy.start())
    config = broker.broker.ctx.config
    # Clients learn the proxy from Metadata, so every connection they make is recorded.
    broker.broker.ctx.config = dataclasses.replace(config, advertised_port=proxy_port)
    state = Fuzzed(broker, [], {}, 0, 0, errors)
    try:
        _capture(f"127.0.0.1:{proxy_port}", proxy)
        broker.run(proxy.close())
        broker.broker.ctx.config = dataclasses.replace(config, advertised_port=port)
        seen: dict[tuple[str, int, int], int] = {}
        for client, frame in proxy.frames:
            key, version, _ = protocol.peek(frame[4:])
            state.clients.setdefault(client, set()).add(key)
            # A few of each (client, api, version): Fetch and Heartbeat would crowd out
            # the rest.
            n = seen.get((client, key, version), 0)
            if n < 4:
                seen[(client, key, version)] = n + 1
                state.corpus.append(frame)
        assert wait_until(lambda: broker.broker.connections == 0, timeout=20)
        state.tasks = broker.tasks()
        state.peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        yield state
    finally:
        logging.getLogger("pyralog.log").removeHandler(handler)
        if not state.closed:
            broker.close()


# --- mutations ----------------------------------------------------------------------------

INTERESTING_32 = [-(2**31), -2, -1, 0, 1, 2, 127, 255, 0x7FFF, 0xFFFF, 2**31 - 1]
INTERESTING_16 = [-(2**15), -1, 0, 1, 2, 0x7F, 0x7FFF]
VARINTS = [b"\x00", b"\x01", b"\x7f", b"\x80\x01", b"\xff\xff\xff\xff\x0f", b"\xff" * 10]


def _mutations(corpus: list[bytes]) -> st.SearchStrategy[tuple[bytes, bool]]:
    position = st.integers(0, 1 << 16)
    int32 = st.one_of(st.sampled_from(INTERESTING_32), st.integers(-(2**31), 2**31 - 1))
    int16 = st.one_of(st.sampled_from(INTERESTING_16), st.integers(-(2**15), 2**15 - 1))
    op = st.one_of(
        st.tuples(st.just("flip"), position, st.integers(1, 255)),
        st.tuples(st.just("truncate"), position),
        st.tuples(st.just("extend"), st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("api_key"), st.one_of(st.sampled_from(sorted(SUPPORTED)), int16)),
        st.tuples(st.just("api_version"), st.one_of(st.integers(-1, 20), int16)),
        st.tuples(st.just("correlation"), int32),
        st.tuples(st.just("int32"), position, int32),
        st.tuples(st.just("int16"), position, int16),
        st.tuples(st.just("varint"), position, st.sampled_from(VARINTS)),
        st.tuples(st.just("splice"), st.sampled_from(corpus), position, position),
        st.tuples(st.just("size"), int32),
        # Decoded, one field set to a hostile value, encoded again: a valid frame with
        # values a handler must cope with (listed twice: drawn twice as often).
        st.tuples(st.just("field"), position, position),
        st.tuples(st.just("field"), position, position),
    )
    return st.tuples(
        st.sampled_from(corpus),
        st.lists(op, min_size=1, max_size=3),
        st.booleans(),  # keep the size prefix honest, so the body reaches the decoder
    ).map(lambda t: _apply(*t))


def _apply(frame: bytes, ops: list[tuple[Any, ...]], honest: bool) -> tuple[bytes, bool]:
    data = bytearray(frame)
    lied = False
    for name, *args in ops:
        at = args[0] % max(1, len(data)) if args and isinstance(args[0], int) else 0
        if name == "flip" and data:
            data[at] ^= args[1]
        elif name == "truncate":
            del data[args[0] % (len(data) + 1) :]
        elif name == "extend":
            data += args[0]
        elif name in ("api_key", "api_version", "correlation"):
            offset, fmt = {"api_key": (4, ">h"), "api_version": (6, ">h")}.get(name, (8, ">i"))
            _overwrite(data, offset, struct.pack(fmt, args[0]))
        elif name == "int32":
            _overwrite(data, at, struct.pack(">i", args[1]))
        elif name == "int16":
            _overwrite(data, at, struct.pack(">h", args[1]))
        elif name == "varint":
            _overwrite(data, at, args[1])
        elif name == "splice":
            other = args[0]
            data = data[: args[1] % (len(data) + 1)] + other[args[2] % (len(other) + 1) :]
        elif name == "field":
            data = bytearray(_mutate_field(bytes(data), args[0], args[1]))
        elif name == "size":
            _overwrite(data, 0, struct.pack(">i", args[0]))
            lied = True
    if honest and not lied and len(data) >= 4:
        struct.pack_into(">i", data, 0, len(data) - 4)
    return bytes(data), honest and not lied


_BITS = {"int8": 8, "int16": 16, "int32": 32, "int64": 64}
_STRINGS = ["", ".", "x" * 300, "\u00e9\u0000/../", "a" * 250, None]
_BYTES = [b"", bytes(100), b"\xff" * 61, None]
FieldPath = tuple[tuple[str, int | None], ...]


def _hostile(kind: str | None, current: Any, choice: int) -> Any:
    """An edge value of a field's kind (the choice indexes a small pool)."""
    pool: list[Any]
    if kind in _BITS:
        top = 2 ** (_BITS[kind] - 1)
        pool = [-top, -2, -1, 0, 1, 2, top - 1, top - 2]
    elif kind in ("timedelta_i32", "timedelta_i64"):
        pool = [datetime.timedelta(milliseconds=m) for m in (0, -1, 1, 2**31 - 1, -(2**31))]
    elif kind == "string":
        pool = _STRINGS
    elif kind in ("bytes", "records"):
        pool = _BYTES
    elif kind == "bool":
        pool = [not current]
    elif kind == "uuid":
        pool = [uuid.UUID(int=0), uuid.UUID(int=choice), None]
    elif isinstance(current, tuple):  # an array: emptied, doubled, a lot of one, null
        pool = [(), current * 2, current[:1] * 200, None]
    else:
        pool = [None]
    return pool[choice % len(pool)]


def _leaves(entity: Any, path: FieldPath = ()) -> list[tuple[FieldPath, str | None, Any]]:
    """Every field of a decoded request, nested ones and array elements included."""
    out: list[tuple[FieldPath, str | None, Any]] = []
    for f in dataclasses.fields(entity):
        value = getattr(entity, f.name)
        kind = f.metadata.get("kafka_type")
        out.append(((*path, (f.name, None)), None if isinstance(value, tuple) else kind, value))
        items = value if isinstance(value, tuple) else ()
        for i, item in enumerate(items):
            where = (*path, (f.name, i))
            if dataclasses.is_dataclass(item):
                out += _leaves(item, where)
            else:
                out.append((where, kind, item))
        if dataclasses.is_dataclass(value):
            out += _leaves(value, (*path, (f.name, None)))
    return out


def _set(entity: Any, path: FieldPath, value: Any) -> Any:
    (name, index), rest = path[0], path[1:]
    current = getattr(entity, name)
    if index is None:
        new = _set(current, rest, value) if rest else value
    else:
        items = list(current)
        items[index] = _set(items[index], rest, value) if rest else value
        new = tuple(items)
    return dataclasses.replace(entity, **{name: new})


def _mutate_field(data: bytes, which: int, choice: int) -> bytes:
    """`data` (a framed request) with one decoded field replaced; unchanged if it does
    not decode, or kio cannot encode the new value."""
    try:
        request = protocol.decode_request(data[4:], SUPPORTED)
        leaves = _leaves(request.body)
        path, kind, current = leaves[which % len(leaves)]
        body = _set(request.body, path, _hostile(kind, current, choice))
        return protocol.encode_request(
            request.api_key, request.api_version, request.correlation_id, request.client_id, body
        )
    except Exception:
        return data


def _overwrite(data: bytearray, at: int, raw: bytes) -> None:
    if len(data) < at + len(raw):
        data.extend(bytes(at + len(raw) - len(data)))
    data[at : at + len(raw)] = raw


# --- checking answers -----------------------------------------------------------------------


def _response_version(api_key: int, version: int) -> int:
    span = SUPPORTED.get(api_key)
    if api_key == protocol.API_VERSIONS_KEY and (span is None or not span[0] <= version <= span[1]):
        return 0  # KIP-511
    return version


def check_response(request: bytes, out: bytes) -> None:
    """`out` is one whole response frame to `request` (no size prefix), parseable to its
    end by the schema of the version it answers."""
    (size,) = struct.unpack_from(">i", out)
    assert size == len(out) - 4
    api_key, version, correlation = protocol.peek(request)
    schema = load_response_schema(api_key, _response_version(api_key, version))
    header, used = entity_reader(schema.__header_schema__)(out, 4)
    assert header.correlation_id == correlation
    _, body_used = entity_reader(schema)(out, 4 + used)
    assert 4 + used + body_used == len(out), "trailing bytes after the response"


def answer(fuzz: Fuzzed, frame: bytes) -> bytes | str | None:
    """What `_answer` made of `frame`: bytes, None, "closed" or "waiting"."""

    key = protocol.peek(frame)[0] if len(frame) >= 8 else None
    limit = WAIT_TIMEOUT if key in WAITING else ANSWER_TIMEOUT

    async def go() -> bytes | str | None:
        try:
            async with asyncio.timeout(limit):
                return await fuzz.broker.broker._answer(frame, PEER)
        except ConnectionResetError:
            return "closed"
        except TimeoutError:
            return "waiting"

    return fuzz.broker.run(go())


def check_direct(fuzz: Fuzzed, frame: bytes) -> str:
    """Check `_answer`'s outcome for `frame`; which it was (for the statistics)."""
    out = answer(fuzz, frame)
    if out == "closed":
        return "closed"
    api_key, _, _ = protocol.peek(frame)
    if out == "waiting":
        assert api_key in WAITING, f"api {api_key} did not answer in {ANSWER_TIMEOUT}s"
    elif out is None:
        request = protocol.decode_request(frame, SUPPORTED)
        assert request.api_key == 0 and request.body.acks == 0, "no answer to a request"
    else:
        assert isinstance(out, bytes)
        check_response(frame, out)
    return "waiting" if out == "waiting" else "no answer" if out is None else "answered"


def split_stream(data: bytes) -> tuple[list[bytes], bool]:
    """The frames the broker reads from `data`, and whether it refuses one's size."""
    frames, at = [], 0
    while len(data) - at >= 4:
        (size,) = struct.unpack_from(">i", data, at)
        if not 8 <= size <= protocol.MAX_FRAME_BYTES:
            return frames, True
        if len(data) - at - 4 < size:
            break
        frames.append(data[at + 4 : at + 4 + size])
        at += 4 + size
    return frames, False


def check_tcp(fuzz: Fuzzed, data: bytes) -> None:
    """Send `data` and a valid ApiVersions request, half-close, read every answer."""
    probe = protocol.encode_request(
        18, 0, 2**31 - 7, "probe", protocol.request(18, 0, {"client_software_name": "x"})
    )
    stream = data + probe
    frames, _ = split_stream(stream)
    waiting = any(len(f) >= 2 and struct.unpack_from(">h", f)[0] in WAITING for f in frames)
    limit = 2 * WAIT_TIMEOUT if waiting else ANSWER_TIMEOUT
    with FrameClient(fuzz.broker.port, timeout=limit) as conn:
        with contextlib.suppress(ConnectionError):
            conn.send(stream)
            conn.sock.shutdown(socket.SHUT_WR)
        answers: list[bytes] = []
        finished = False
        deadline = time.monotonic() + limit
        while not finished and time.monotonic() < deadline:
            try:
                frame = conn.read_frame()
            except TimeoutError:
                break
            if frame is None:
                finished = True
            else:
                answers.append(frame)
    assert finished or waiting, "the broker kept the connection open"
    # Answers come in request order: each matches the next request that gets one.
    pending = iter(frames)
    for out in answers:
        (correlation,) = struct.unpack_from(">i", out)
        request = next((f for f in pending if protocol.peek(f)[2] == correlation), None)
        assert request is not None, f"answer {correlation} matches no request, in order"
        check_response(request, struct.pack(">i", len(out)) + out)


def _check_no_errors(fuzz: Fuzzed) -> None:
    assert not fuzz.errors, fuzz.errors[:3]


# --- the tests --------------------------------------------------------------------------------


def test_capture_has_every_client_and_the_main_apis(fuzzed: Fuzzed) -> None:
    expected = {name for name in stockclients.CLIENTS if not stockclients.missing(name)}
    assert set(fuzzed.clients) == expected
    for client, keys in fuzzed.clients.items():
        # Metadata, Produce, Fetch, group join/sync/heartbeat, offset commit and fetch.
        assert {0, 1, 3, 11, 14, 8, 9} <= keys, (client, sorted(keys))
    every = set().union(*fuzzed.clients.values())
    assert {2, 10, 12, 13, 15, 16, 18, 19, 20, 22, 32} <= every
    for frame in fuzzed.corpus:  # each replays cleanly before it is mutated
        assert frame[:4] == struct.pack(">i", len(frame) - 4)


@pytest.mark.parametrize("size", [-(2**31), -1, 0, 3, 7, protocol.MAX_FRAME_BYTES + 1, 2**31 - 1])
def test_size_prefix_is_refused_before_the_body(fuzzed: Fuzzed, size: int) -> None:
    with FrameClient(fuzzed.broker.port) as conn:
        conn.send(struct.pack(">i", size))  # and no body: a broker reading it would wait
        started = time.monotonic()
        assert conn.closed_by_peer(timeout=5)
        assert time.monotonic() - started < 2
    _check_no_errors(fuzzed)


def test_null_required_array_is_refused(fuzzed: Fuzzed) -> None:
    """Found by the fuzzer: kio reads a length -1 array as None even where the schema
    says not nullable, and DescribeConfigs then failed iterating it."""

    def frame(api_key: int, version: int, body: bytes) -> bytes:
        return struct.pack(">hhih", api_key, version, 7, 1) + b"x" + body

    null = struct.pack(">i", -1)
    # DescribeConfigs v1 resources; DescribeGroups v0 groups (of strings); ListOffsets
    # v1 topics[0].partitions, nested.
    for request in (
        frame(32, 1, null + b"\x00"),
        frame(15, 0, null),
        frame(2, 1, struct.pack(">ii", -1, 1) + struct.pack(">h", 1) + b"t" + null),
    ):
        assert answer(fuzzed, request) == "closed"
    _check_no_errors(fuzzed)


def test_fetch_response_is_capped(fuzzed: Fuzzed, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the fuzzer: one partition named 200 times, each with a large
    partition_max_bytes, built a response of 200 copies; the broker caps a response at
    its fetch.max.bytes as Kafka does (lowered here so a small log shows it)."""
    from pyralog.log.handlers import fetch

    monkeypatch.setattr(fetch, "FETCH_MAX_BYTES", 64 * 1024)
    with FrameClient(fuzzed.broker.port) as conn:
        for i in range(20):
            records = build_batch([(None, bytes(8000))], timestamp_ms=int(time.time() * 1000))
            data = {
                "acks": -1,
                "timeout": 10_000,
                "topic_data": [
                    {"name": "fuzz-cap", "partition_data": [{"index": 0, "records": records}]}
                ],
            }
            if i == 0:
                conn.call(
                    3, 4, {"topics": [{"name": "fuzz-cap"}], "allow_auto_topic_creation": True}
                )
            body = conn.call(0, 7, data)
            assert body.responses[0].partition_responses[0].error_code == 0
        part = {"partition": 0, "fetch_offset": 0, "partition_max_bytes": 2**31 - 1}
        body = conn.call(
            1,
            11,
            {
                "replica_id": -1,
                "max_wait": 0,
                "min_bytes": 0,
                "max_bytes": 2**31 - 1,
                "isolation_level": 0,
                "session_epoch": -1,
                "topics": [{"topic": "fuzz-cap", "partitions": [part] * 200}],
                "rack_id": "",
            },
        )
        sizes = [len(p.records or b"") for t in body.responses for p in t.partitions]
        assert len(sizes) == 200 and sizes[0] > 0
        assert sum(sizes) <= 64 * 1024 + 8200  # the cap, and the first batch regardless


def test_replayed_frames_are_answered(fuzzed: Fuzzed) -> None:
    for frame in fuzzed.corpus:
        check_direct(fuzzed, frame[4:])
    _check_no_errors(fuzzed)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_mutated_frames(fuzzed: Fuzzed, data: st.DataObject) -> None:
    fuzzed.errors.clear()  # an earlier example's failure is reported there, once
    framed, honest = data.draw(_mutations(fuzzed.corpus), label="frame")
    if len(framed) > 4:
        outcome = check_direct(fuzzed, framed[4:])
        key = protocol.peek(framed[4:])[0] if len(framed) >= 12 else None
        event(f"api {key if key in SUPPORTED else 'other'}: {outcome}")
    if honest or data.draw(st.booleans(), label="over tcp"):
        check_tcp(fuzzed, framed)
    _check_no_errors(fuzzed)


def test_the_broker_is_intact_afterwards(fuzzed: Fuzzed) -> None:
    broker = fuzzed.broker
    assert wait_until(lambda: broker.broker.connections == 0, timeout=20)
    assert wait_until(lambda: broker.tasks() <= fuzzed.tasks, timeout=20), (
        broker.tasks(),
        fuzzed.tasks,
    )
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - fuzzed.peak_rss_kib
    assert grown * 1024 < MEMORY_SLACK, f"peak memory grew {grown} KiB"
    # A normal client and a stock client still produce and consume.
    sent = stockclients.records(50, "after-fuzz")
    stockclients.produce("kafka-python", broker.address, "after-fuzz", sent)
    got = stockclients.read("kafka-python", broker.address, "after-fuzz", 50)
    assert [(k, v) for _, k, v in got] == sent

    async def own() -> None:
        async with await PyralogClient.connect(broker.address) as client:
            offset = await client.produce("after-fuzz", b"own", key=b"k")
            (message,) = await client.fetch("after-fuzz", 0, offset, max_wait_ms=100)
            assert (message.offset, message.value) == (offset, b"own")

    asyncio.run(own())
    _check_no_errors(fuzzed)
    fuzzed.closed = True
    broker.close()
    # Reopened, every stored batch of every partition validates, CRC included.
    batches, _, recovered = validate_storage(broker.data_dir)
    assert not recovered, recovered
    assert batches >= 2 * len(fuzzed.clients)
