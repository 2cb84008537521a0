"""Mirroring topics from one cluster to another (the Cluster → Cluster path).

    mirror = Mirror("10.1.0.5:9092", "10.2.0.5:9092", ["orders"], source_id="dc1")
    await mirror.run(once=True)          # copy what the source holds now, then return

Design. Partition p of each source topic is copied to partition p of the same topic on
the target, in order, with each record's key, value, headers and timestamp as they were.
Every copied record gets one header more, ``pyralog-mirror``, naming where it came from:
``<source-id>/<topic>/<partition>/<offset>``.

There is no offset store: on start, and after every error (connection loss, timeout,
broker error; retried with backoff), where to go on is read back from the target. For
each target partition ListOffsets gives its end, a Fetch at end-1 serves the batch that
holds the last record, and its header names the last source offset copied. Progress is
committed by the same append as the data: a ``kill -9`` loses and repeats nothing.

Per partition one batch is in flight at a time, produced with acks=all; the next one is
sent only after its acknowledgement. An answer that never came is settled by reading
the target again. What that alone cannot settle is a request still on its way while the
target is re-read (a stalled broker, or a restarted mirror racing its predecessor's last
request). Idempotent producing closes that: every batch carries a producer id derived
from the source id (the same in every run) and, per partition, the sequence number that
continues the target's last mirrored batch. Of two batches with the same sequence only
one is appended: the other is a duplicate (the same records, answered with the first
one's offsets) or out of order, which sends the mirror back to re-read the target.

What retrying cannot fix raises MirrorError: an unknown source topic, a target topic with
fewer partitions, records in a target partition that this mirror did not write (unless
``allow_foreign``: then it looks back past them for its own last record), a target that
is ahead of its source. The mirror must be the only writer of its target topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pyralog.log.client import PyralogClient, parse_address
from pyralog.log.connection import Connection, KafkaError
from pyralog.log.records import Message, encode_batch, read_batches
from pyralog.net import Network

HEADER = "pyralog-mirror"
SEQUENCE_SPACE = 1 << 31
BATCH_BYTES = 512 << 10  # per produced batch: well under the default max.message.bytes (1 MiB)
FETCH_BYTES = 1 << 20  # per partition and fetch

OFFSET_OUT_OF_RANGE = 1
UNKNOWN_TOPIC = 3
TOPIC_EXISTS = 36
SEQUENCE_ERRORS = frozenset({45, 46})  # out of order, duplicate sequence
FATAL_ERRORS = frozenset({2, 10, 87})  # corrupt message, message too large, invalid record

Key = tuple[str, int]

log = logging.getLogger("pyralog.mirror")


class MirrorError(Exception):
    """A problem that retrying cannot fix; the message says what and where."""


class _Resync(Exception):
    """The target is not where the mirror thought it was: read its tail again."""


@dataclass
class PartitionStats:
    topic: str
    partition: int
    next_offset: int = -1  # the next source offset to copy (-1: not resumed yet)
    source_end: int = -1  # the source partition's high watermark, as last seen
    records: int = 0  # acknowledged to this Mirror (duplicates of another's batches too)
    bytes: int = 0  # of keys, values and headers copied

    @property
    def lag(self) -> int | None:
        if self.next_offset < 0 or self.source_end < 0:
            return None
        return max(0, self.source_end - self.next_offset)


def mark(source_id: str, topic: str, partition: int, offset: int) -> bytes:
    """The ``pyralog-mirror`` header value of a copied record."""
    return f"{source_id}/{topic}/{partition}/{offset}".encode()


def parse_mark(value: bytes | None) -> tuple[str, str, int, int] | None:
    """(source id, topic, partition, offset) of a header value, None if it is not one."""
    try:
        # Topic names have no '/', so the last three fields are unambiguous.
        source_id, topic, partition, offset = (value or b"").decode().rsplit("/", 3)
        return source_id, topic, int(partition), int(offset)
    except (UnicodeDecodeError, ValueError):
        return None


def producer_id_for(source_id: str) -> int:
    """The producer id every run of a mirror from this source uses: in [2^62, 2^62 + 2^61),
    far above the ids brokers hand out (counting up from 0)."""
    digest = hashlib.sha256(f"{HEADER}/{source_id}".encode()).digest()
    return (1 << 62) | (int.from_bytes(digest[:8], "big") >> 3)


def record_size(m: Message) -> int:
    """What a record carries: its key, value and headers, in bytes."""
    headers = sum(len(k.encode()) + len(v or b"") for k, v in m.headers)
    return len(m.key or b"") + len(m.value or b"") + headers


async def _fetch(
    client: PyralogClient, wanted: dict[Key, int], max_wait_ms: int
) -> dict[Key, tuple[int, int, bytes]]:
    """One Fetch for several partitions: {(topic, partition): (error, high watermark, bytes)}."""
    # One request per leader: in a replicated cluster the partitions lead on several brokers.
    by_leader: dict[int, tuple[Connection, dict[Key, int]]] = {}
    for key, offset in wanted.items():
        conn = await client.leader(*key)
        by_leader.setdefault(id(conn), (conn, {}))[1][key] = offset
    answers = await asyncio.gather(
        *(_fetch_from(conn, part, max_wait_ms) for conn, part in by_leader.values())
    )
    return {k: v for answer in answers for k, v in answer.items()}


async def _fetch_from(
    conn: Connection, wanted: dict[Key, int], max_wait_ms: int
) -> dict[Key, tuple[int, int, bytes]]:
    topics: dict[str, list[dict[str, int]]] = {}
    for (topic, p), offset in wanted.items():
        topics.setdefault(topic, []).append(
            {"partition": p, "fetch_offset": offset, "partition_max_bytes": FETCH_BYTES}
        )
    body = await conn.call(
        1,
        {
            "replica_id": -1, "max_wait": max_wait_ms, "min_bytes": 1,
            "max_bytes": FETCH_BYTES * len(wanted), "isolation_level": 0, "session_id": 0,
            "session_epoch": -1, "forgotten_topics_data": [], "rack_id": "",
            "topics": [{"topic": t, "partitions": ps} for t, ps in topics.items()],
        },
    )  # fmt: skip
    return {
        (t.topic, int(p.partition_index)): (int(p.error_code), int(p.high_watermark), p.records)
        for t in body.responses
        for p in t.partitions
    }


def _chunks(messages: list[Message], limit: int = BATCH_BYTES) -> Iterable[list[Message]]:
    chunk: list[Message] = []
    size = 0
    for m in messages:
        n = record_size(m) + 96  # framing and the mirror header
        if chunk and size + n > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append(m)
        size += n
    if chunk:
        yield chunk


class Mirror:
    """Copies topics from a source broker to a target broker, exactly once, resumable."""

    def __init__(
        self,
        source: str,
        target: str,
        topics: Sequence[str],
        *,
        source_id: str | None = None,
        source_network: Network | None = None,
        target_network: Network | None = None,
        allow_foreign: bool = False,
        fetch_wait_ms: int = 500,
        batch_bytes: int = BATCH_BYTES,
        timeout: float = 30.0,
        backoff: tuple[float, float] = (0.2, 10.0),
        report_every: float = 10.0,
    ) -> None:
        src, dst = parse_address(source), parse_address(target)  # ValueError naming it
        if not topics:
            raise ValueError("no topics to mirror")
        if src == dst and source_network is target_network:
            raise ValueError(f"source and target are the same broker ({source})")
        self.source, self.target = source, target
        self.topics = list(dict.fromkeys(topics))
        self.source_id = source_id if source_id is not None else f"{src[0]}:{src[1]}"
        if not self.source_id or "\n" in self.source_id:
            raise ValueError(f"source id {self.source_id!r}: expected a non-empty name")
        self.producer_id = producer_id_for(self.source_id)
        self.allow_foreign = allow_foreign
        self._networks = {"source": source_network, "target": target_network}
        self._fetch_wait_ms = fetch_wait_ms
        self._batch_bytes = batch_bytes
        self._timeout = timeout
        self._backoff = backoff
        self._report_every = report_every
        self._next_report = 0.0
        self._stats: dict[Key, PartitionStats] = {}
        self._sequence: dict[Key, int] = {}
        self._goal: dict[Key, int] = {}  # once: the source's ends when we first looked

    @property
    def stats(self) -> list[PartitionStats]:
        return [self._stats[k] for k in sorted(self._stats)]

    @property
    def records(self) -> int:
        return sum(s.records for s in self._stats.values())

    def summary(self) -> str:
        size = sum(s.bytes for s in self._stats.values())
        lags = ", ".join(f"{s.topic}-{s.partition}={s.lag}" for s in self.stats)
        return f"copied {self.records} records ({size} bytes); lag {lags or 'unknown'}"

    async def run(self, *, once: bool = False, stop: asyncio.Event | None = None) -> bool:
        """Mirror until `stop` is set, or with `once` until everything the source held when
        first seen is copied. True when caught up (once), False when stopped."""
        work = asyncio.ensure_future(self._run(once))
        waiters = {work}
        if stop is not None:
            waiters.add(asyncio.ensure_future(stop.wait()))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waiters:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        if work.cancelled():
            log.info("stopped: %s", self.summary())
            return False
        return work.result()

    async def _run(self, once: bool) -> bool:
        delay, first = self._backoff[0], True
        while True:
            clients: dict[str, PyralogClient] = {}
            try:
                for side in ("source", "target"):
                    clients[side] = await self._open(side, first)
                first = False
                await self._start(clients["source"], clients["target"], once)
                delay = self._backoff[0]
                await self._copy(clients["source"], clients["target"], once)
                log.info("caught up: %s", self.summary())
                return True
            except (OSError, EOFError, KafkaError, _Resync) as e:
                why = str(e) or (
                    f"no answer in {self._timeout:g} s" if isinstance(e, TimeoutError) else repr(e)
                )
                lost = [
                    f"{k} {self._address(k)}" for k, c in clients.items() if c.connection.closed
                ]
                log.warning("%s; retrying in %.1f s", ": ".join([*lost[:1], why]), delay)
            finally:
                for client in clients.values():
                    await client.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff[1])

    def _address(self, side: str) -> str:
        return self.source if side == "source" else self.target

    async def _open(self, side: str, first: bool) -> PyralogClient:
        address, network = self._address(side), self._networks[side]
        try:
            client = await PyralogClient.connect(
                address, network=network, client_id="pyralog-mirror", timeout=self._timeout
            )
        except socket.gaierror as e:
            if first:
                raise MirrorError(f"{side} {address}: cannot resolve the host: {e}") from None
            raise
        except TimeoutError:
            raise TimeoutError(f"{side} {address}: no answer") from None
        except OSError as e:
            reason = os.strerror(e.errno) if e.errno else str(e)
            raise ConnectionError(f"{side} {address}: cannot connect: {reason}") from None
        log.info("connected to the %s at %s%s", side, address, " over WireGuard" * bool(network))
        return client

    async def _start(self, source: PyralogClient, target: PyralogClient, once: bool) -> None:
        """Partition counts, target topics, and where each partition resumes."""
        for topic in self.topics:
            count = await self._prepare(source, target, topic)
            for p in range(count):
                key = (topic, p)
                stats = self._stats.setdefault(key, PartitionStats(topic, p))
                last, self._sequence[key] = await self._resume(target, topic, p)
                first, end = await source.offsets(topic, p)
                nxt = first if last is None else last + 1
                if nxt > end:
                    raise MirrorError(
                        f"target {topic}-{p} holds source offset {last} but the source "
                        f"partition ends at {end}: was the source topic recreated?"
                    )
                if nxt < first:
                    log.warning(
                        "source %s-%d starts at %d: offsets %d..%d were deleted before they "
                        "were copied", topic, p, first, nxt, first - 1,
                    )  # fmt: skip
                    nxt = first
                stats.next_offset, stats.source_end = nxt, end
                self._goal.setdefault(key, end)
                log.info("%s-%d: resuming at source offset %d of %d", topic, p, nxt, end)

    async def _prepare(self, source: PyralogClient, target: PyralogClient, topic: str) -> int:
        (info,) = await source.topics([topic])
        if info.error == UNKNOWN_TOPIC:
            raise MirrorError(f"source topic {topic!r} does not exist at {self.source}")
        if info.error:
            raise KafkaError(info.error, f"source topic {topic!r}")
        count = info.partitions
        (there,) = await target.topics([topic])
        if there.error == UNKNOWN_TOPIC:
            try:
                await target.create_topic(topic, partitions=count)
                log.info("created topic %s on the target with %d partitions", topic, count)
            except KafkaError as e:
                if e.code != TOPIC_EXISTS:  # else someone was quicker
                    raise
            (there,) = await target.topics([topic])
        if there.error:
            raise KafkaError(there.error, f"target topic {topic!r}")
        if there.partitions < count:
            raise MirrorError(
                f"target topic {topic!r} has {there.partitions} partitions but the source "
                f"topic has {count}: partition p is copied to partition p, so the target "
                f"needs at least {count}"
            )
        return count

    async def _resume(self, target: PyralogClient, topic: str, p: int) -> tuple[int | None, int]:
        """(the last source offset copied, or None; the next sequence) from the target's tail."""
        earliest, end = await target.offsets(topic, p)
        if end <= earliest:
            if end > 0:
                raise MirrorError(
                    f"target {topic}-{p} has no records left (all {end} deleted by retention): "
                    "cannot tell where mirroring stopped"
                )
            return None, 0
        bound, foreign = end, 0
        while bound > earliest:
            error, _, data = (await _fetch(target, {(topic, p): bound - 1}, 0))[(topic, p)]
            if error:
                raise KafkaError(error, f"read back target {topic}-{p} at {bound - 1}")
            batches = [(h, ms) for h, ms in read_batches(topic, p, data) if h.base_offset < bound]
            if not batches:
                raise _Resync(f"target {topic}-{p}: no batch served at offset {bound - 1}")
            for header, messages in reversed(batches):
                for m in reversed([m for m in messages if m.offset < bound]):
                    marks = [v for k, v in m.headers if k == HEADER]
                    origin = parse_mark(marks[-1]) if marks else None
                    if origin is not None and origin[:3] == (self.source_id, topic, p):
                        if foreign:
                            log.warning(
                                "target %s-%d: passed %d foreign records", topic, p, foreign
                            )
                        ours = header.producer_id == self.producer_id and header.base_sequence >= 0
                        seq = header.base_sequence + m.offset - header.base_offset + 1
                        return origin[3], seq % SEQUENCE_SPACE if ours else 0
                    if not self.allow_foreign:
                        what = (
                            f"a {HEADER} header naming {marks[-1]!r}, not {self.source_id}"
                            if marks
                            else f"no {HEADER} header"
                        )
                        raise MirrorError(
                            f"target {topic}-{p} has records this mirror did not write (offset "
                            f"{m.offset} has {what}); mirror into a topic nothing else writes, "
                            "or allow foreign records (--allow-foreign)"
                        )
                    foreign += 1
            bound = batches[0][0].base_offset
        log.warning("target %s-%d: %d foreign records, none mirrored yet", topic, p, foreign)
        return None, 0

    async def _copy(self, source: PyralogClient, target: PyralogClient, once: bool) -> None:
        wait = 100 if once else self._fetch_wait_ms
        while True:
            wanted = {
                k: s.next_offset
                for k, s in self._stats.items()
                if not once or s.next_offset < self._goal[k]
            }
            if not wanted:
                return
            self._report()
            fetched = await asyncio.wait_for(_fetch(source, wanted, wait), self._timeout)
            work = []
            for key, (error, high_watermark, data) in fetched.items():
                if key not in wanted:
                    continue
                where = f"source {key[0]}-{key[1]} at {wanted[key]}"
                if error == OFFSET_OUT_OF_RANGE:
                    raise _Resync(f"{where}: offset out of range")
                if error:
                    raise KafkaError(error, f"fetch {where}")
                self._stats[key].source_end = high_watermark
                try:
                    batches = read_batches(*key, data or b"")
                except ValueError as e:  # a corrupt batch, or a codec we cannot decompress
                    raise MirrorError(f"{where}: {e}") from None
                messages = [m for _, ms in batches for m in ms if m.offset >= wanted[key]]
                if messages:
                    work.append(self._put(target, key, messages))
                elif batches:  # control batches only: nothing to copy in them
                    self._stats[key].next_offset = batches[-1][0].next_offset
            results = await asyncio.gather(*work, return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise next((e for e in errors if isinstance(e, MirrorError)), errors[0])

    async def _put(self, target: PyralogClient, key: Key, messages: list[Message]) -> None:
        """Append the records to the target partition, one acknowledged batch at a time."""
        (topic, p), sid, stats = key, self.source_id, self._stats[key]
        for chunk in _chunks(messages, self._batch_bytes):
            records = [
                (m.timestamp_ms, m.key, m.value, (*m.headers, (HEADER, mark(sid, *key, m.offset))))
                for m in chunk
            ]
            seq = self._sequence[key]
            payload = encode_batch(
                records, producer_id=self.producer_id, producer_epoch=0, base_sequence=seq
            )
            await asyncio.wait_for(self._produce(target, topic, p, payload), self._timeout)
            stats.next_offset = chunk[-1].offset + 1
            self._sequence[key] = (seq + len(chunk)) % SEQUENCE_SPACE
            stats.records += len(chunk)
            stats.bytes += sum(record_size(m) for m in chunk)

    async def _produce(self, target: PyralogClient, topic: str, p: int, payload: bytes) -> None:
        conn = await target.leader(topic, p)
        body = await conn.call(
            0,
            {
                "transactional_id": None, "acks": -1, "timeout": int(self._timeout * 1000),
                "topic_data": [
                    {"name": topic, "partition_data": [{"index": p, "records": payload}]}
                ],
            },
        )  # fmt: skip
        result = body.responses[0].partition_responses[0]
        code = int(result.error_code)
        if code == 0:
            return
        error = KafkaError(code, f"produce to target {topic}-{p}", result.error_message)
        if code in SEQUENCE_ERRORS:
            raise _Resync(f"{error} (another batch landed first)")
        if code in FATAL_ERRORS:
            raise MirrorError(str(error))
        raise error

    def _report(self) -> None:
        now = time.monotonic()
        if now >= self._next_report:
            if self._next_report:
                log.info("%s", self.summary())
            self._next_report = now + self._report_every


__all__ = ["HEADER", "Mirror", "MirrorError", "PartitionStats", "mark", "parse_mark"]
