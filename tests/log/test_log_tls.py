"""`pyralog broker --tls-cert/--tls-key/--tls-ca`: mutual TLS 1.3 on the Kafka listener.

Real broker processes on loopback with a throwaway CA made in the test (bench/certs.py,
``cryptography``): librdkafka and PyralogClient with a CA-signed certificate get in; no
certificate, or one from another CA, is refused; three TLS brokers on one SQLite store
replicate to each other over TLS; bad flag combinations and unusable files are one line.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from logbroker import RunningBroker, start_broker

from ports import free_port
from processes import console_script, stop_process, wait_until
from pyralog.log.client import PyralogClient
from pyralog.log.connection import Connection
from pyralog.log.tls import TlsError, TlsFiles, client_context, tls_files

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
# bench/certs.py: the one throwaway-CA maker (the benchmarks use it too).
from certs import ThrowawayCA

confluent_kafka = pytest.importorskip("confluent_kafka")
kafka_admin = pytest.importorskip("confluent_kafka.admin")


class Pki:
    def __init__(self, root: Path) -> None:
        self.ca = ThrowawayCA.create(root / "ca", "test CA")
        self.other = ThrowawayCA.create(root / "other", "other CA")
        self.broker = self.files(self.ca, "broker")
        self.client = self.files(self.ca, "client")
        self.stranger = self.files(self.other, "stranger")

    @staticmethod
    def files(ca: ThrowawayCA, name: str) -> TlsFiles:
        cert, key = ca.issue(name, ["127.0.0.1", "localhost"])
        return TlsFiles(cert, key, ca.ca)

    def flags(self, files: TlsFiles | None = None) -> list[str]:
        f = files or self.broker
        return ["--tls-cert", str(f.cert), "--tls-key", str(f.key), "--tls-ca", str(f.ca)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker(pki: Pki, tmp_path: Path) -> Iterator[RunningBroker]:
    b = start_broker(tmp_path / "data", *pki.flags())
    try:
        yield b
    finally:
        stop_process(b.process)


def _ssl_conf(files: TlsFiles | None, ca: Path) -> dict[str, str]:
    conf = {"security.protocol": "ssl", "ssl.ca.location": str(ca)}
    if files is not None:
        conf |= {"ssl.certificate.location": str(files.cert), "ssl.key.location": str(files.key)}
    return conf


def test_librdkafka_with_a_ca_signed_certificate_produces_and_consumes(
    pki: Pki, broker: RunningBroker
) -> None:
    assert any("mutual TLS 1.3" in line for line in broker.log)
    conf = {"bootstrap.servers": broker.address, **_ssl_conf(pki.client, pki.ca.ca)}
    producer = confluent_kafka.Producer({**conf, "acks": "all"})
    for i in range(50):
        producer.produce("secure", b"v%d" % i)
    assert producer.flush(20) == 0
    consumer = confluent_kafka.Consumer(
        {**conf, "group.id": "g", "auto.offset.reset": "earliest", "enable.auto.commit": False}
    )
    try:
        consumer.assign([confluent_kafka.TopicPartition("secure", 0, 0)])
        got: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(got) < 50 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append(msg.value())
    finally:
        consumer.close()
    assert got == [b"v%d" % i for i in range(50)]


def test_pyralog_client_over_tls(pki: Pki, broker: RunningBroker) -> None:
    async def go() -> list[bytes]:
        ctx = client_context(pki.client)
        async with await PyralogClient.connect(broker.address, ssl=ctx) as client:
            for i in range(5):
                await client.produce("pc", b"m%d" % i)
            out = []
            async for message in client.consume("pc", from_beginning=True):
                out.append(message.value)
                if len(out) == 5:
                    return out
        return out

    assert asyncio.run(go()) == [b"m%d" % i for i in range(5)]


def _pyralog_refused(broker: RunningBroker, ctx: ssl.SSLContext) -> BaseException | None:
    async def go() -> BaseException | None:
        host, port = broker.address.rsplit(":", 1)
        try:
            conn = await Connection.open(host, int(port), ssl=ctx, timeout=5)
        except (OSError, ConnectionError, TimeoutError, asyncio.IncompleteReadError) as e:
            return e
        await conn.close()
        return None

    return asyncio.run(go())


def test_refuses_a_client_without_a_certificate(pki: Pki, broker: RunningBroker) -> None:
    bare = ssl.create_default_context(cafile=str(pki.ca.ca))
    assert _pyralog_refused(broker, bare) is not None
    conf = {"bootstrap.servers": broker.address, **_ssl_conf(None, pki.ca.ca)}
    admin = kafka_admin.AdminClient(conf)
    with pytest.raises(confluent_kafka.KafkaException):
        admin.list_topics(timeout=3)


def test_refuses_a_certificate_from_another_ca(pki: Pki, broker: RunningBroker) -> None:
    # The stranger trusts our CA (it could verify the broker) but is signed by another.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki.ca.ca))
    ctx.load_cert_chain(pki.stranger.cert, pki.stranger.key)
    assert _pyralog_refused(broker, ctx) is not None
    conf = {"bootstrap.servers": broker.address, **_ssl_conf(pki.stranger, pki.ca.ca)}
    admin = kafka_admin.AdminClient(conf)
    with pytest.raises(confluent_kafka.KafkaException):
        admin.list_topics(timeout=3)


def test_a_plain_client_gets_nothing(broker: RunningBroker) -> None:
    admin = kafka_admin.AdminClient({"bootstrap.servers": broker.address})
    with pytest.raises(confluent_kafka.KafkaException):
        admin.list_topics(timeout=3)


def test_three_tls_brokers_replicate(pki: Pki, tmp_path: Path) -> None:
    store = f"sqlite://{tmp_path / 'cluster.db'}"
    ports = {n: free_port() for n in (1, 2, 3)}
    brokers = []
    try:
        for n, port in ports.items():
            brokers.append(start_broker(
                tmp_path / f"b{n}", "--node-id", str(n), "--cluster-store", store,
                "--session-timeout-ms", "1500", *pki.flags(), port=port,
            ))  # fmt: skip
        conf = {
            "bootstrap.servers": ",".join(b.address for b in brokers),
            **_ssl_conf(pki.client, pki.ca.ca),
        }
        admin = kafka_admin.AdminClient(conf)
        assert wait_until(lambda: len(admin.list_topics(timeout=5).brokers) == 3, 20)
        new = kafka_admin.NewTopic("rep", 1, 3, config={"min.insync.replicas": "2"})

        def created() -> bool:
            # Every broker in Metadata is not yet every broker the creator counts alive.
            try:
                admin.create_topics([new])["rep"].result(30)
            except confluent_kafka.KafkaException as e:
                if e.args[0].code() == confluent_kafka.KafkaError.INVALID_REPLICATION_FACTOR:
                    return False
                raise
            return True

        assert wait_until(created, 20)

        def isr() -> list[int]:
            parts = admin.list_topics("rep", timeout=5).topics["rep"].partitions
            return sorted(parts[0].isrs) if parts else []

        assert wait_until(lambda: isr() == [1, 2, 3], 20), isr()
        producer = confluent_kafka.Producer({**conf, "acks": "all"})
        for i in range(200):
            producer.produce("rep", b"r%d" % i, partition=0)
        assert producer.flush(30) == 0  # acks=all: the followers fetched it over TLS
        assert isr() == [1, 2, 3]
        for b in brokers:  # every follower's log holds the records
            logs = list((b.data / "topics" / "rep" / "rep-0").glob("*.log"))
            assert wait_until(lambda logs=logs: sum(p.stat().st_size for p in logs) > 200 * 2, 10)
        assert not any("Traceback" in line for b in brokers for line in b.log)
    finally:
        for b in brokers:
            stop_process(b.process)


# -- flags ----------------------------------------------------------------------------------


def _broker_cli(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    argv = [str(console_script("pyralog")), "broker", "--data", str(tmp_path / "d"),
            "--listen", f"127.0.0.1:{free_port()}", *flags]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_bad_flag_combinations_are_one_line(pki: Pki, tmp_path: Path) -> None:
    f = pki.broker
    done = _broker_cli(tmp_path, "--tls-cert", str(f.cert), "--tls-key", str(f.key))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "pyralog broker: --tls-ca missing: TLS needs all of --tls-cert, --tls-key, --tls-ca"
    ]
    done = _broker_cli(tmp_path, "--tls-ca", str(f.ca))
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "--tls-cert and --tls-key missing" in done.stderr
    assert not (tmp_path / "d").exists()  # refused before any side effect


def test_unusable_files_are_one_line_naming_the_file(pki: Pki, tmp_path: Path) -> None:
    f = pki.broker
    missing = tmp_path / "nope.pem"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = {
        "--tls-cert": (
            ["--tls-cert", str(missing), "--tls-key", str(f.key), "--tls-ca", str(f.ca)],
            missing,
        ),
        "--tls-key": (
            ["--tls-cert", str(f.cert), "--tls-key", str(garbage), "--tls-ca", str(f.ca)],
            garbage,
        ),
        "--tls-ca": (
            ["--tls-cert", str(f.cert), "--tls-key", str(f.key), "--tls-ca", str(garbage)],
            garbage,
        ),
        "mismatch": (
            ["--tls-cert", str(f.cert), "--tls-key", str(pki.client.key), "--tls-ca", str(f.ca)],
            pki.client.key,
        ),
    }
    for what, (flags, bad) in cases.items():
        done = _broker_cli(tmp_path, *flags)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1, (what, done.stderr)
        assert len(lines) == 1 and str(bad) in lines[0], (what, lines)
        assert lines[0].startswith("pyralog broker: --tls-"), lines
    # Unreadable even for root: a directory where the key should be.
    with pytest.raises(TlsError, match=r"^--tls-key .*: Is a directory$"):
        tls_files(str(f.cert), str(tmp_path), str(f.ca))


def test_no_flags_no_tls() -> None:
    assert tls_files(None, None, None) is None
