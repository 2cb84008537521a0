"""The load generator of bench/transport.py: one Python client (PyralogClient) for every
transport, so that the four paths compared differ in how bytes travel and nothing else.

    transload.py create  --server H:P --topic T [--topic T2] [transport]
    transload.py produce --server H:P --topic T --count N [--batch B --window W] [transport]
    transload.py latency --server H:P --topic T --count N [transport]
    transload.py connect --server H:P --count N [--fresh-tunnel] [transport]
    transport: nothing (kernel TCP, also over a pyralog-wg interface), --tunnel CONF (an
    embedded WireGuard tunnel in this process, a wg-quick file), or --tls-cert/--tls-key/
    --tls-ca (mutual TLS 1.3)

A stock client (librdkafka) cannot ride the embedded tunnel, hence PyralogClient for
all. Prints one JSON line. ``client_cpu_s`` is this process's CPU (all threads, the
embedded tunnel included) over the timed window only, not its start-up.
``connect`` times a fresh connection from the TCP connect to the answer of its first
request (ApiVersions): TLS's handshake is inside it; with ``--fresh-tunnel`` each sample
also starts a new embedded tunnel first, so it pays WireGuard's handshake (cold).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from stats import percentile  # noqa: E402

from pyralog.log.client import PyralogClient, parse_address  # noqa: E402
from pyralog.log.connection import Connection  # noqa: E402

RECORD = 1024
WARMUP = 50


def cpu_now() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def ssl_context(a: argparse.Namespace) -> Any:
    if not a.tls_cert:
        return None
    from pyralog.log.tls import TlsFiles, client_context, tls_files

    files = tls_files(a.tls_cert, a.tls_key, a.tls_ca)
    assert isinstance(files, TlsFiles)
    return client_context(files)


async def tunnel(a: argparse.Namespace) -> Any:
    if not a.tunnel:
        return None
    from pyralog.net import EmbeddedNetwork
    from pyralog.wireguard.config import load

    return await EmbeddedNetwork.start(load(a.tunnel))


async def client(a: argparse.Namespace, net: Any) -> PyralogClient:
    return await PyralogClient.connect(a.server.split(",")[0], network=net, ssl=ssl_context(a),
                                       timeout=30)  # fmt: skip


async def create(a: argparse.Namespace, net: Any) -> dict[str, Any]:
    """The topics (one partition, replication factor 3, min.insync.replicas=2), then
    until every replica is in sync; the leaders."""
    async with await client(a, net) as c:
        for t in a.topic:
            await c.create_topic(t, partitions=1, configs={"min.insync.replicas": "2"})
        deadline = time.monotonic() + 60
        while True:
            meta = await c._metadata(a.topic, create=False)
            parts = [p for t in meta.topics for p in t.partitions]
            if len(parts) == len(a.topic) and all(len(p.isr_nodes) == 3 for p in parts):
                return {"leaders": {t.name: t.partitions[0].leader_id for t in meta.topics}}
            if time.monotonic() > deadline:
                raise SystemExit(f"replicas not in sync after 60 s: {meta}")
            await asyncio.sleep(0.2)


async def produce(a: argparse.Namespace, net: Any) -> dict[str, Any]:
    """``count`` 1 KiB records, acks=all, in batches of ``batch`` with ``window`` batches
    in flight (the connection pipelines them), timed from the first send to the last ack."""
    pad = b"x" * RECORD
    batches = [a.batch] * (a.count // a.batch) + ([a.count % a.batch] if a.count % a.batch else [])
    async with await client(a, net) as c:
        await c.produce_batch(a.topic[0], [(None, pad)], acks=-1)  # finds the leader
        queue = iter(batches)
        offsets: list[int] = []

        async def worker() -> None:
            for n in queue:
                offsets.append(await c.produce_batch(a.topic[0], [(None, pad)] * n, acks=-1))

        cpu0, t0 = cpu_now(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(a.window)))
        wall, cpu = time.perf_counter() - t0, cpu_now() - cpu0
        end = await c.offsets(a.topic[0], 0)
    if end[1] != a.count + 1:
        raise SystemExit(f"log end {end[1]}, expected {a.count + 1}")
    return {
        "records": a.count,
        "seconds": wall,
        "records_per_s": a.count / wall,
        "mb_per_s": a.count * RECORD / wall / 1e6,
        "client_cpu_s": cpu,
        "batches": len(offsets),
    }


async def latency(a: argparse.Namespace, net: Any) -> dict[str, Any]:
    """Sequential produce round trips of one 1 KiB record: acks=1 (the client's hop to
    the leader), then acks=all (plus the followers' fetch), each after WARMUP unrecorded."""
    pad = b"y" * RECORD
    out: dict[str, Any] = {}
    async with await client(a, net) as c:
        for name, acks in (("acks1", 1), ("acksall", -1)):
            samples = []
            for i in range(WARMUP + a.count):
                t0 = time.perf_counter()
                await c.produce(a.topic[0], pad, acks=acks)
                if i >= WARMUP:
                    samples.append((time.perf_counter() - t0) * 1e6)
            out[name] = {
                "samples": len(samples),
                "p50_us": percentile(samples, 50),
                "p99_us": percentile(samples, 99),
                "mean_us": sum(samples) / len(samples),
            }
    return out


async def connect(a: argparse.Namespace, net: Any) -> dict[str, Any]:
    """``count`` fresh connections, each timed from its TCP connect to the answer of
    its first request (ApiVersions), then closed."""
    host, port = parse_address(a.server.split(",")[0])
    ctx = ssl_context(a)
    samples = []
    for _ in range(a.count):
        fresh = await tunnel(a) if a.fresh_tunnel else None
        try:
            t0 = time.perf_counter()
            conn = await Connection.open(
                host, port, network=fresh if fresh is not None else net, ssl=ctx, timeout=30
            )
            samples.append((time.perf_counter() - t0) * 1e6)
            await conn.close()
        finally:
            if fresh is not None:
                await fresh.close()
        await asyncio.sleep(0.05)
    return {
        "samples": samples,
        "p50_us": percentile(samples, 50),
        "max_us": max(samples),
    }


COMMANDS = {"create": create, "produce": produce, "latency": latency, "connect": connect}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=sorted(COMMANDS))
    p.add_argument("--server", required=True, help="host:port[,host:port...]")
    p.add_argument("--topic", action="append", default=[])
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32, help="records per produce batch")
    p.add_argument("--window", type=int, default=8, help="batches in flight")
    p.add_argument("--tunnel", help="an embedded WireGuard tunnel (wg-quick file)")
    p.add_argument("--fresh-tunnel", action="store_true", help="connect: a new tunnel per sample")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--tls-ca")
    return p


async def amain(a: argparse.Namespace) -> dict[str, Any]:
    net = None if a.fresh_tunnel else await tunnel(a)
    try:
        return await COMMANDS[a.command](a, net)
    finally:
        if net is not None:
            await net.close()


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.command in ("create", "produce", "latency") and not a.topic:
        raise SystemExit(f"{a.command}: --topic is needed")
    print(json.dumps(asyncio.run(amain(a))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
