"""``pyralog mirror`` between two real ``pyralog broker`` processes on loopback.

- ``test_once_copies_every_partition_exactly``: 3,000 records (null and empty keys and
  values, headers with null values, timestamps out of order, half of them zstd batches
  from confluent-kafka) over 3 partitions plus a second topic; ``--once`` makes the
  target equal to the source partition by partition, each record carrying one
  ``pyralog-mirror`` header naming its source offset; a second run copies nothing.
- ``test_kill9_mid_stream_loses_and_repeats_nothing``: while a producer keeps writing,
  the mirror is killed with SIGKILL three times at random moments and restarted; then
  ``--once``: no gap, no duplicate, order kept.
- ``test_two_racing_mirrors_still_copy_exactly``: two mirrors with the same source id
  write the same target at once; the sequence numbers fence them (one of two batches
  with the same sequence is refused or answered as a duplicate), so the copy is exact.
- ``test_target_broker_killed_and_restarted``: the target broker is killed with SIGKILL
  mid-stream and restarted on its port; the running mirror reconnects and catches up.
- ``test_bad_input``: each mistake is one line naming what was wrong.
- ``test_source_over_an_embedded_wireguard_tunnel``: the source is reachable only across
  WireGuard (``pyralog forward --reverse`` exposes it on a tunnel address); the mirror
  reaches it with ``--source-tunnel`` and copies it exactly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from logbroker import RunningBroker, kill9, running_broker, start_broker

from ports import free_port
from processes import console_script, stop_process, wait_until
from pyralog.log.client import PyralogClient
from pyralog.log.mirror import HEADER, Mirror, mark
from pyralog.log.records import Message
from pyralog.wireguard.keys import PrivateKey, PublicKey

BASE_TS = 1_700_000_000_000


# -- helpers ---------------------------------------------------------------------------------


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 60))


def _create(address: str, topic: str, partitions: int) -> None:
    async def go() -> None:
        async with await PyralogClient.connect(address) as client:
            await client.create_topic(topic, partitions=partitions)

    _run(go())


def _record(i: int) -> tuple[bytes | None, bytes, list[tuple[str, bytes | None]] | None, int]:
    key = None if i % 11 == 0 else b"" if i % 17 == 0 else f"key-{i}".encode()
    value = b"" if i % 13 == 0 else f"value-{i:06d}-".encode() * (1 + i % 5)
    headers = None if i % 4 == 0 else [("seq", str(i).encode()), ("trace", None), ("x", b"")]
    stamp = BASE_TS + (i * 7919) % 100_000  # not in order
    return key, value, headers, stamp


def _produce(address: str, topic: str, partitions: int, first: int, n: int, codec: str) -> None:
    from confluent_kafka import Producer

    errors: list[str] = []
    producer = Producer(
        {"bootstrap.servers": address, "acks": "all", "linger.ms": 2, "compression.type": codec}
    )
    for i in range(first, first + n):
        key, value, headers, stamp = _record(i)
        producer.produce(
            topic, value, key, partition=i % partitions, headers=headers, timestamp=stamp,
            on_delivery=lambda err, _m: err and errors.append(str(err)),
        )  # fmt: skip
        producer.poll(0)
    assert producer.flush(30) == 0 and not errors, errors[:3]


@contextmanager
def _producing(address: str, topic: str, partitions: int) -> Iterator[list[int]]:
    """A producer writing bursts to the topic until the block ends; yields [records sent]."""
    sent = [0]
    stop = threading.Event()
    failed: list[BaseException] = []

    def loop() -> None:
        try:
            while not stop.is_set():
                _produce(address, topic, partitions, sent[0], 300, "none")
                sent[0] += 300
                time.sleep(0.05)
        except BaseException as e:
            failed.append(e)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield sent
    finally:
        stop.set()
        thread.join(60)
    assert not failed, failed


async def _read(client: PyralogClient, topic: str, partition: int) -> list[Message]:
    out: list[Message] = []
    _, end = await client.offsets(topic, partition)
    while not out or out[-1].offset + 1 < end:
        out += await client.fetch(topic, partition, out[-1].offset + 1 if out else 0, max_wait_ms=0)
    return out


def _read_topic(address: str, topic: str) -> list[list[Message]]:
    async def go() -> list[list[Message]]:
        async with await PyralogClient.connect(address) as client:
            (info,) = await client.topics([topic])
            return [await _read(client, topic, p) for p in range(info.partitions)]

    return _run(go())


def _total(address: str, topic: str) -> int:
    async def go() -> int:
        async with await PyralogClient.connect(address) as client:
            (info,) = await client.topics([topic])
            return sum([(await client.offsets(topic, p))[1] for p in range(info.partitions)])

    try:
        return _run(go())
    except (OSError, EOFError):  # the broker is down just now
        return -1


def _assert_exact(source: str, target: str, topic: str, source_id: str) -> int:
    """The target's partitions equal the source's record for record; returns how many."""
    theirs, ours = _read_topic(source, topic), _read_topic(target, topic)
    assert len(ours) >= len(theirs)
    for p, (src, dst) in enumerate(zip(theirs, ours, strict=False)):
        assert len(dst) == len(src), f"{topic}-{p}: {len(src)} at the source, {len(dst)} copied"
        for s, d in zip(src, dst, strict=True):
            assert (d.key, d.value, d.timestamp_ms) == (s.key, s.value, s.timestamp_ms), (s, d)
            assert d.headers == (*s.headers, (HEADER, mark(source_id, topic, p, s.offset))), (s, d)
        assert [m.offset for m in dst] == list(range(len(dst)))
    return sum(map(len, theirs))


def _mirror(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(console_script("pyralog")), "mirror", *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _start_mirror(log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(console_script("pyralog")), "mirror", *args], stdout=out, stderr=out,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip


def _error(done: subprocess.CompletedProcess[str]) -> str:
    """The one-line error of a failed run."""
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("pyralog mirror: ") and "INFO" not in last, done.stderr
    return last


@contextmanager
def _two_brokers(tmp: Path) -> Iterator[tuple[RunningBroker, RunningBroker]]:
    with running_broker(tmp / "source") as s, running_broker(tmp / "target") as t:
        yield s, t


# -- the tests -------------------------------------------------------------------------------


def test_once_copies_every_partition_exactly(tmp_path: Path) -> None:
    with _two_brokers(tmp_path) as (s, t):
        _create(s.address, "events", 3)
        _create(s.address, "audit", 1)
        _produce(s.address, "events", 3, 0, 1500, "none")
        _produce(s.address, "events", 3, 1500, 1500, "zstd")
        _produce(s.address, "audit", 1, 0, 200, "gzip")
        args = ("--source", s.address, "--target", t.address, "--source-id", "dc-1")
        done = _mirror(*args, "--topic", "events", "--topic", "audit", "--once")
        assert done.returncode == 0, done.stderr
        assert "created topic events on the target with 3 partitions" in done.stderr
        assert "caught up: copied 3200 records" in done.stderr, done.stderr
        assert _assert_exact(s.address, t.address, "events", "dc-1") == 3000
        assert _assert_exact(s.address, t.address, "audit", "dc-1") == 200
        print(done.stderr.strip().splitlines()[-1])

        again = _mirror(*args, "--topic", "events", "--topic", "audit", "--once")
        assert again.returncode == 0, again.stderr
        assert "caught up: copied 0 records" in again.stderr, again.stderr
        assert _total(t.address, "events") == 3000


def test_kill9_mid_stream_loses_and_repeats_nothing(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    log = tmp_path / "mirror.log"
    with _two_brokers(tmp_path) as (s, t):
        _create(s.address, "orders", 3)
        args = ("--source", s.address, "--target", t.address, "--topic", "orders")
        kills = 0
        with _producing(s.address, "orders", 3) as sent:
            for _ in range(3):
                before = max(0, _total(t.address, "orders"))
                proc = _start_mirror(log, *args)
                try:
                    # Let it copy something, catch it with records still to copy, and
                    # kill it a random moment (up to 50 ms) later.
                    def busy(b: int = before) -> int:
                        copied = _total(t.address, "orders")
                        return max(0, _total(s.address, "orders") - copied) if copied > b else 0

                    lag = wait_until(busy, 20)
                    assert lag, log.read_text()
                    time.sleep(rng.uniform(0.0, 0.05))
                finally:
                    proc.kill()
                    proc.wait(10)
                kills += 1
                print(f"kill -9 #{kills}: {lag} records were left to copy just before")
        done = _mirror(*args, "--once")  # the last restart, after the producer stopped
        assert done.returncode == 0, done.stderr
        copied = _assert_exact(s.address, t.address, "orders", s.address)
        print(f"seed {seed}: {copied} records copied exactly, {kills} kill -9s and restarts")
        assert copied == sent[0]


def test_two_racing_mirrors_still_copy_exactly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with _two_brokers(tmp_path) as (s, t):
        _create(s.address, "race", 2)
        _produce(s.address, "race", 2, 0, 3000, "none")

        async def race() -> list[int]:
            # Batches of different sizes, so their sequence ranges overlap without being
            # equal: the broker refuses the second as out of order, not as a duplicate.
            mirrors = [
                Mirror(s.address, t.address, ["race"], source_id="dc", batch_bytes=size)
                for size in (4 << 10, 24 << 10)
            ]
            await asyncio.gather(*(m.run(once=True) for m in mirrors))
            return [m.records for m in mirrors]

        with caplog.at_level(logging.INFO, logger="pyralog.mirror"):
            counts = _run(race())
        refused = caplog.text.count("out_of_order_sequence_number")
        copied = _assert_exact(s.address, t.address, "race", "dc")
        print(f"two mirrors at once: {counts} records acknowledged to each, {refused} batches "
              f"refused as out of order, {copied} records in the target")  # fmt: skip
        assert copied == 3000
        assert refused > 0, caplog.text


def test_target_broker_killed_and_restarted(tmp_path: Path) -> None:
    log = tmp_path / "mirror.log"
    with running_broker(tmp_path / "source") as s:
        t = start_broker(tmp_path / "target")
        proc = None
        try:
            _create(s.address, "clicks", 3)
            args = ("--source", s.address, "--target", t.address, "--topic", "clicks")
            with _producing(s.address, "clicks", 3) as sent:
                proc = _start_mirror(log, *args)
                assert wait_until(lambda: _total(t.address, "clicks") > 300, 20), log.read_text()
                kill9(t)
                time.sleep(0.5)
                t = start_broker(t.data, port=t.port)
                assert wait_until(lambda: "retrying in" in log.read_text(), 10), log.read_text()
                at = _total(t.address, "clicks")
                assert wait_until(lambda: _total(t.address, "clicks") > at, 20), log.read_text()
            assert wait_until(lambda: _total(t.address, "clicks") == sent[0], 30), log.read_text()
            stop_process(proc, signal.SIGTERM, timeout=15)
            assert proc.returncode == 0, log.read_text()
            copied = _assert_exact(s.address, t.address, "clicks", s.address)
            warnings = [line for line in log.read_text().splitlines() if "WARNING" in line]
            print(f"target killed and restarted: {copied} records copied exactly; the mirror:")
            print("\n".join(warnings))
        finally:
            if proc is not None:
                stop_process(proc)
            stop_process(t.process, signal.SIGTERM, timeout=15)


def test_bad_input(tmp_path: Path) -> None:
    with _two_brokers(tmp_path) as (s, t):
        ends = ("--source", s.address, "--target", t.address)

        line = _error(_mirror(*ends, "--topic", "nope", "--once"))
        assert f"source topic 'nope' does not exist at {s.address}" in line

        _create(s.address, "wide", 3)
        _create(t.address, "wide", 1)
        line = _error(_mirror(*ends, "--topic", "wide", "--once"))
        assert "target topic 'wide' has 1 partitions but the source topic has 3" in line

        _create(s.address, "mixed", 2)
        _produce(s.address, "mixed", 2, 0, 40, "none")
        _create(t.address, "mixed", 2)
        _produce(t.address, "mixed", 2, 1, 1, "none")  # one foreign record, in partition 1
        line = _error(_mirror(*ends, "--topic", "mixed", "--once"))
        assert "target mixed-1 has records this mirror did not write" in line
        assert f"offset 0 has no {HEADER} header" in line and "--allow-foreign" in line
        done = _mirror(*ends, "--topic", "mixed", "--once", "--allow-foreign")
        assert done.returncode == 0, done.stderr
        copied = _read_topic(t.address, "mixed")
        assert [len(p) for p in copied] == [20, 21]
        assert HEADER not in dict(copied[1][0].headers)
        assert dict(copied[1][1].headers)[HEADER] == mark(s.address, "mixed", 1, 0)
        # The same target, seen by a mirror with another source id.
        line = _error(_mirror(*ends, "--topic", "mixed", "--once", "--source-id", "dc-9"))
        assert f"naming b'{s.address}/mixed/0/19', not dc-9" in line

        line = _error(_mirror("--source", "127.0.0.1:notaport", *ends[2:], "--topic", "x"))
        assert line == (
            "pyralog mirror: --source: broker address '127.0.0.1:notaport': expected host:port"
        )
        line = _error(_mirror(*ends[:2], "--target", "localhost:70000", "--topic", "x"))
        assert "--target: broker address 'localhost:70000'" in line
        line = _error(_mirror(*ends, "--topic", "x", "--target", s.address))
        assert "source and target are the same broker" in line

        missing = tmp_path / "absent.conf"
        line = _error(_mirror(*ends, "--topic", "x", "--source-tunnel", str(missing)))
        assert line == f"pyralog mirror: {missing}: cannot read: No such file or directory"
        broken = tmp_path / "broken.conf"
        broken.write_text("[Interface]\nPrivateKey = nope\n")
        line = _error(_mirror(*ends, "--topic", "x", "--target-tunnel", str(broken)))
        assert str(broken) in line and "PrivateKey" in line


def _tunnel_config(key: PrivateKey, ip: str, port: int, peer: PublicKey, peer_ip: str,
                   peer_port: int) -> str:  # fmt: skip
    return (
        f"[Interface]\nPrivateKey = {key.to_base64()}\nAddress = {ip}/32\nListenPort = {port}\n\n"
        f"[Peer]\nPublicKey = {peer.to_base64()}\nAllowedIPs = {peer_ip}/32\n"
        f"Endpoint = 127.0.0.1:{peer_port}\n"
    )


def test_source_over_an_embedded_wireguard_tunnel(tmp_path: Path) -> None:
    a_ip, b_ip = "10.45.0.1", "10.45.0.2"
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    port_a, port_b = (free_port(socket.SOCK_DGRAM, "0.0.0.0") for _ in range(2))
    a_conf, b_conf = tmp_path / "a.conf", tmp_path / "b.conf"
    a_conf.write_text(_tunnel_config(key_a, a_ip, port_a, key_b.public_key, b_ip, port_b))
    b_conf.write_text(_tunnel_config(key_b, b_ip, port_b, key_a.public_key, a_ip, port_a))
    with _two_brokers(tmp_path) as (s, t):
        _create(s.address, "far", 3)
        _produce(s.address, "far", 3, 0, 1500, "gzip")
        # The source broker, exposed as a_ip:9092 inside the tunnel (and only there).
        forward = subprocess.Popen(
            [str(console_script("pyralog")), "forward", "--config", str(a_conf),
             "--reverse", f"9092:127.0.0.1:{s.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert forward.stderr is not None
            up = b""
            while b"tunnel up" not in up:
                line = forward.stderr.readline()
                assert line, f"pyralog forward did not start: {up.decode()}"
                up += line
            done = _mirror(
                "--source", f"{a_ip}:9092", "--source-tunnel", str(b_conf),
                "--target", t.address, "--topic", "far", "--source-id", "far-dc", "--once",
            )  # fmt: skip
        finally:
            stop_process(forward)
        assert done.returncode == 0, done.stderr
        assert f"connected to the source at {a_ip}:9092 over WireGuard" in done.stderr
        assert _assert_exact(s.address, t.address, "far", "far-dc") == 1500
