"""``pyralog broker``, ``pyralog topic``, ``pyralog produce``, ``pyralog consume``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path

from pyralog.cli.stopping import stop_event

DEFAULT_BROKER = "127.0.0.1:9092"


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    broker = sub.add_parser("broker", help="run a Kafka-protocol broker")
    broker.add_argument("--data", "-d", required=True, help="the data directory")
    broker.add_argument("--listen", default=DEFAULT_BROKER, help="host:port (default %(default)s)")
    broker.add_argument("--advertise", help="host:port clients are told to use (default: --listen)")
    broker.add_argument("--node-id", type=int, default=0)
    broker.add_argument(
        "--flush",
        choices=["always", "interval", "never"],
        help="default flush policy for new topics (default: interval)",
    )
    broker.add_argument("--partitions", type=int, help="default partitions of new topics")
    broker.add_argument(
        "--no-auto-create", action="store_true", help="refuse to create topics on first use"
    )
    repl = broker.add_argument_group("replication (docs/REPLICATION.md)")
    repl.add_argument(
        "--cluster-store",
        metavar="URL",
        help="join the brokers sharing this store: etcd://HOST:PORT[,...][/PREFIX], or "
        "sqlite:///PATH for brokers on one machine (needs a distinct --node-id each)",
    )
    repl.add_argument("--replication-factor", type=int, default=3, metavar="N")
    repl.add_argument("--min-insync-replicas", type=int, default=2, metavar="N")
    repl.add_argument("--rack", help="this broker's region or rack (replicas spread across)")
    repl.add_argument("--session-timeout-ms", type=int, default=4000, metavar="MS")
    repl.add_argument("--replica-lag-time-max-ms", type=int, default=10000, metavar="MS")
    tls = broker.add_argument_group(
        "mutual TLS 1.3 (off by default; for clients that cannot run WireGuard)"
    )
    tls.add_argument("--tls-cert", metavar="FILE", help="this broker's certificate (PEM)")
    tls.add_argument("--tls-key", metavar="FILE", help="its private key (PEM, unencrypted)")
    tls.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="the CA clients' and other brokers' certificates must be signed by (PEM)",
    )

    def with_broker(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--broker",
            "-b",
            default=os.environ.get("PYRALOG_BROKER", DEFAULT_BROKER),
            help="broker host:port (default $PYRALOG_BROKER or %(default)s)",
        )
        return p

    topic = sub.add_parser("topic", help="create, list, describe or delete topics")
    tsub = topic.add_subparsers(dest="topic_command", metavar="ACTION", required=True)
    create = with_broker(tsub.add_parser("create", help="create a topic"))
    create.add_argument("name")
    create.add_argument("--partitions", "-p", type=int, default=1)
    create.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a topic config, e.g. pyralog.flush=always (repeatable)",
    )
    with_broker(tsub.add_parser("list", help="list topics"))
    describe = with_broker(tsub.add_parser("describe", help="a topic's partitions and configs"))
    describe.add_argument("name")
    delete = with_broker(tsub.add_parser("delete", help="delete a topic and its data"))
    delete.add_argument("name")

    produce = with_broker(sub.add_parser("produce", help="append lines from stdin to a topic"))
    produce.add_argument("topic")
    produce.add_argument("--partition", "-p", type=int, default=0)
    produce.add_argument("--acks", type=int, choices=[-1, 0, 1], default=-1)
    produce.add_argument("--key-separator", "-K", help="split each line into key SEP value")

    consume = with_broker(sub.add_parser("consume", help="print a topic's records"))
    consume.add_argument("topic")
    consume.add_argument("--from-beginning", action="store_true")
    consume.add_argument("--group", "-g", help="join this consumer group (commits offsets)")
    consume.add_argument(
        "--partition",
        "-p",
        type=int,
        action="append",
        help="only these partitions (repeatable; not with --group)",
    )
    consume.add_argument("--count", "-c", type=int, help="exit after this many records")
    consume.add_argument(
        "--print-offsets", action="store_true", help="prefix each value with partition:offset"
    )


def _fail(command: str, message: object) -> int:
    print(f"pyralog {command}: {message}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    from pyralog.log.client import parse_address
    from pyralog.log.connection import ConnectionClosed, KafkaError
    from pyralog.log.errors import StorageError, TopicConfigError
    from pyralog.mesh.store import StoreError

    command = args.command if args.command != "topic" else f"topic {args.topic_command}"
    try:
        if args.command == "broker":
            return asyncio.run(_broker(args))
        parse_address(args.broker)
        return asyncio.run(_client_command(args))
    except (
        KafkaError,
        StorageError,
        StoreError,
        TopicConfigError,
        ValueError,
        ConnectionClosed,
    ) as e:
        return _fail(command, e)
    except TimeoutError:
        return _fail(command, f"no answer from the broker at {args.broker}")
    except OSError as e:
        where = getattr(args, "broker", None) or getattr(args, "listen", "")
        return _fail(command, f"{where}: {e.strerror or e}")


async def _broker(args: argparse.Namespace) -> int:
    import dataclasses

    from pyralog.log.broker import Broker
    from pyralog.log.client import parse_address
    from pyralog.log.context import BrokerConfig
    from pyralog.log.storage import Storage
    from pyralog.log.tls import client_context, server_context, tls_files
    from pyralog.log.topic_config import TopicConfig

    tls = tls_files(args.tls_cert, args.tls_key, args.tls_ca)  # before any side effect
    server_tls = server_context(tls) if tls else None
    client_tls = client_context(tls) if tls else None
    # The broker's own log lines (refused or malformed connections, storage errors).
    logging.basicConfig(
        level=logging.INFO, format="pyralog broker: %(levelname)s: %(message)s", stream=sys.stderr
    )
    host, port = parse_address(args.listen)
    adv_host, adv_port = parse_address(args.advertise) if args.advertise else (host, port)
    defaults = TopicConfig()
    if args.flush:
        defaults = dataclasses.replace(defaults, flush=args.flush)
    if args.partitions:
        defaults = dataclasses.replace(defaults, partitions=args.partitions)
    if args.cluster_store:
        if not 1 <= args.min_insync_replicas <= 16 or not 1 <= args.replication_factor <= 16:
            raise ValueError("--replication-factor and --min-insync-replicas: expected 1-16")
        defaults = dataclasses.replace(defaults, min_insync_replicas=args.min_insync_replicas)
    data = Path(args.data)
    storage = Storage(data, defaults)
    storage.open()
    for report in storage.recovery:
        print(f"pyralog broker: recovered {report}", file=sys.stderr)
    config = BrokerConfig(
        node_id=args.node_id,
        advertised_host=adv_host,
        advertised_port=adv_port,
        auto_create_topics=not args.no_auto_create,
        defaults=defaults,
    )
    broker = Broker(storage, config, data)
    try:
        bound = await broker.start(host, port, ssl=server_tls)
        if adv_port == 0:
            broker.ctx.config = dataclasses.replace(config, advertised_port=bound[0][1])
        if args.cluster_store:
            from pyralog.mesh.store import open_store

            await broker.join_cluster(
                open_store(args.cluster_store),
                region=args.rack,
                session_timeout=args.session_timeout_ms / 1000,
                lag_max=args.replica_lag_time_max_ms / 1000,
                default_replication_factor=args.replication_factor,
                ssl=client_tls,
            )
        print(
            f"pyralog broker: listening on {', '.join(f'{h}:{p}' for h, p in bound)}"
            f"{' (mutual TLS 1.3)' if tls else ''}, data in {data}",
            file=sys.stderr,
            flush=True,
        )
        stop = stop_event()
        await stop.wait()
    finally:
        await broker.close()
    return 0


async def _client_command(args: argparse.Namespace) -> int:
    from pyralog.log.client import PyralogClient

    async with await PyralogClient.connect(args.broker) as client:
        if args.command == "topic":
            return await _topic(client, args)
        if args.command == "produce":
            return await _produce(client, args)
        return await _consume(client, args)


async def _topic(client: object, args: argparse.Namespace) -> int:
    from pyralog.log.client import PyralogClient

    assert isinstance(client, PyralogClient)
    action = args.topic_command
    if action == "create":
        configs = {}
        for item in args.config:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"--config {item!r}: expected KEY=VALUE")
            configs[key] = value
        await client.create_topic(args.name, partitions=args.partitions, configs=configs)
        print(f"created topic {args.name} ({args.partitions} partitions)")
    elif action == "list":
        for topic in sorted(await client.topics(), key=lambda t: t.name):
            print(f"{topic.name}\t{topic.partitions} partitions")
    elif action == "describe":
        info = await client.topics([args.name])
        if not info or info[0].error:
            from pyralog.log.connection import KafkaError

            raise KafkaError(info[0].error if info else 3, f"topic {args.name!r}")
        print(f"topic {args.name}: {info[0].partitions} partitions")
        for p in range(info[0].partitions):
            first, last = await client.offsets(args.name, p)
            print(f"  partition {p}: offsets {first}..{last}")
        for key, value in sorted((await client.describe_topic(args.name)).items()):
            print(f"  {key} = {value}")
    else:
        await client.delete_topic(args.name)
        print(f"deleted topic {args.name}")
    return 0


async def _produce(client: object, args: argparse.Namespace) -> int:
    from pyralog.log.client import PyralogClient

    assert isinstance(client, PyralogClient)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=16 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    count = 0
    partial = b""
    while True:
        # Whatever stdin has ready goes out as one batch: one request per burst of lines.
        chunk = await reader.read(1 << 20)
        lines = (partial + chunk).split(b"\n")
        partial = lines.pop() if chunk else b""
        records = [
            _record(line.rstrip(b"\r"), args.key_separator) for line in lines if chunk or line
        ]
        for part in _slices(records):
            await client.produce_batch(args.topic, part, partition=args.partition, acks=args.acks)
            count += len(part)
        if not chunk:
            break
    print(f"produced {count} records to {args.topic}-{args.partition}", file=sys.stderr)
    return 0


def _slices(
    records: list[tuple[bytes | None, bytes | None]], limit: int = 256 << 10
) -> list[list[tuple[bytes | None, bytes | None]]]:
    """Records in batches of at most `limit` bytes (under the topic's max.message.bytes)."""
    out: list[list[tuple[bytes | None, bytes | None]]] = []
    size = limit
    for record in records:
        n = len(record[0] or b"") + len(record[1] or b"") + 16
        if size + n > limit:
            out.append([])
            size = 0
        out[-1].append(record)
        size += n
    return out


def _record(line: bytes, separator: str | None) -> tuple[bytes | None, bytes | None]:
    if separator is None:
        return None, line
    key, sep, value = line.partition(separator.encode())
    return (key, value) if sep else (None, line)


async def _consume(client: object, args: argparse.Namespace) -> int:
    from pyralog.log.client import PyralogClient

    assert isinstance(client, PyralogClient)
    if args.group and args.partition:
        raise ValueError("--partition and --group cannot be combined")
    seen = 0
    out = sys.stdout.buffer
    stream = client.consume(
        args.topic, partitions=args.partition, from_beginning=args.from_beginning, group=args.group
    )
    # Closing the stream commits what was printed (with --group) and leaves the group.
    async with contextlib.aclosing(stream):
        async for message in stream:
            if args.print_offsets:
                out.write(f"{message.partition}:{message.offset}\t".encode())
            out.write((message.value or b"") + b"\n")
            out.flush()
            seen += 1
            if args.count is not None and seen >= args.count:
                break
    return 0
