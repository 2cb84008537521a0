"""``pyralog-admin --host ADDRESS cluster status | partition list | replication check``.

The replicated log as one of its brokers sees it, over the mesh from an admin member:
Kafka's Metadata from ``ADDRESS:9092`` (brokers, controller, each partition's leader,
replicas and in-sync set), then each live broker's ``GET /v1/log/replication`` on its
identity service (port 7701), which tells what that broker leads, its log end and high
watermark and each follower's lag in records and seconds. A broker that does not
answer that (not a mesh node, or the policy keeps the admin out) shows "?" for lag.

``replication check`` exits 1 when any partition is under-replicated (fewer in-sync
replicas than replicas), has a replica on a broker that is down, or is offline (no
leader); 2 when the cluster cannot be asked,
so a deploy script can wait for it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from pyralog.log.client import parse_address
from pyralog.log.connection import Connection
from pyralog.mesh import http
from pyralog.net import Network

INFO_PORT = 7701
TIMEOUT = 10.0


@dataclass
class PartitionView:
    topic: str
    partition: int
    leader: int
    leader_epoch: int
    replicas: list[int]
    isr: list[int]
    offline: list[int]
    log_end: int | None = None
    high_watermark: int | None = None
    lag: dict[int, tuple[int, float]] = field(default_factory=dict)

    @property
    def under_replicated(self) -> bool:
        return len(self.isr) < len(self.replicas)

    @property
    def problem(self) -> str:
        if self.leader < 0:
            return "offline"
        if self.under_replicated:
            out = sorted(set(self.replicas) - set(self.isr))
            return f"under-replicated (out of sync: {', '.join(map(str, out))})"
        if self.offline:
            # Still counted in sync (its lag window has not run out), but not running.
            return f"replica {', '.join(map(str, self.offline))} offline"
        return ""


@dataclass
class ClusterReport:
    asked: str
    cluster_id: str | None
    controller: int
    brokers: dict[int, tuple[str, int]]
    partitions: list[PartitionView]
    unreachable: list[int] = field(default_factory=list)

    def problems(self) -> list[PartitionView]:
        return [p for p in self.partitions if p.problem]

    def to_json(self) -> dict[str, Any]:
        return {
            "asked": self.asked,
            "cluster_id": self.cluster_id,
            "controller": self.controller,
            "brokers": {str(b): f"{h}:{p}" for b, (h, p) in sorted(self.brokers.items())},
            "unreachable": self.unreachable,
            "partitions": [
                {
                    "topic": p.topic,
                    "partition": p.partition,
                    "leader": p.leader,
                    "leader_epoch": p.leader_epoch,
                    "replicas": p.replicas,
                    "isr": p.isr,
                    "offline_replicas": p.offline,
                    "log_end_offset": p.log_end,
                    "high_watermark": p.high_watermark,
                    "lag": {str(r): {"records": n, "seconds": s} for r, (n, s) in p.lag.items()},
                    "problem": p.problem or None,
                }
                for p in self.partitions
            ],
        }


async def gather(
    address: str, info_port: int = INFO_PORT, network: Network | None = None
) -> ClusterReport:
    """Ask the cluster through the broker at `address` (kernel sockets, or `network`)."""
    host, port = parse_address(address)
    conn = await Connection.open(
        host, port, network=network, client_id="pyralog-admin", timeout=TIMEOUT
    )
    try:
        body = await conn.call(
            3,
            {
                "topics": None,
                "allow_auto_topic_creation": False,
                "include_cluster_authorized_operations": False,
                "include_topic_authorized_operations": False,
            },
        )
    finally:
        await conn.close()
    brokers = {b.node_id: (b.host, b.port) for b in body.brokers}
    partitions = [
        PartitionView(
            t.name,
            p.partition_index,
            p.leader_id,
            p.leader_epoch,
            list(p.replica_nodes),
            list(p.isr_nodes),
            list(p.offline_replicas),
        )
        for t in sorted(body.topics, key=lambda t: t.name)
        for p in sorted(t.partitions, key=lambda p: p.partition_index)
    ]
    report = ClusterReport(
        f"{host}:{port}", body.cluster_id, body.controller_id, brokers, partitions
    )
    stats = await asyncio.gather(
        *(_stats(h, info_port, network) for h, _ in brokers.values()), return_exceptions=True
    )
    by_key = {(p.topic, p.partition): p for p in partitions}
    for broker, answer in zip(brokers, stats, strict=True):
        if not isinstance(answer, dict):
            report.unreachable.append(broker)
            continue
        for item in answer.get("partitions", []):
            view = by_key.get((item.get("topic"), item.get("partition")))
            if view is None or view.leader != broker:
                continue
            view.log_end = item.get("log_end_offset")
            view.high_watermark = item.get("high_watermark")
            for replica, lag in item.get("followers", {}).items():
                view.lag[int(replica)] = (int(lag["lag_records"]), float(lag["lag_seconds"]))
    return report


async def _stats(host: str, port: int, network: Network | None) -> Any:
    def opener() -> Any:
        if network is None:
            return asyncio.open_connection(host, port)
        return network.open_connection(host, port)

    return await http.call(
        opener,
        "GET",
        "/v1/log/replication",
        host=host,
        timeout=TIMEOUT,
    )


def _lag(p: PartitionView) -> str:
    if p.log_end is None:
        return "?"
    followers = [r for r in p.replicas if r != p.leader]
    if not followers:
        return "-"
    parts = []
    for r in followers:
        if r in p.lag:
            n, s = p.lag[r]
            parts.append(f"{r}: {n} ({s:.1f} s)")
        else:
            parts.append(f"{r}: ?")
    return ", ".join(parts)


def run(args: Any, table: Any) -> int:
    """The three commands; `table(title, columns, rows)` prints (admin.py's)."""
    try:
        report = asyncio.run(gather(args.host))
    except (OSError, TimeoutError, ValueError, ConnectionError) as e:
        print(f"pyralog-admin: {args.host}: cannot ask the cluster: {e}")
        return 2
    action = (args.area, args.action)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    elif action == ("cluster", "status"):
        problems = report.problems()
        rows = [
            [
                str(b),
                f"{h}:{p}",
                "controller" if b == report.controller else "",
                str(sum(1 for x in report.partitions if x.leader == b)),
                "?" if b in report.unreachable else "ok",
            ]
            for b, (h, p) in sorted(report.brokers.items())
        ]
        table(
            f"cluster {report.cluster_id} (asked {report.asked})",
            ["broker", "address", "role", "leads", "stats"],
            rows,
        )
        print(f"{len(report.partitions)} partitions, {len(problems)} under-replicated or offline")
    elif action == ("partition", "list"):
        rows = [
            [
                f"{p.topic}-{p.partition}",
                str(p.leader) if p.leader >= 0 else "none",
                str(p.leader_epoch),
                ",".join(map(str, p.replicas)),
                ",".join(map(str, p.isr)),
                "?" if p.high_watermark is None else str(p.high_watermark),
                _lag(p),
                p.problem,
            ]
            for p in report.partitions
        ]
        table(
            "partitions",
            ["partition", "leader", "epoch", "replicas", "in-sync", "hw", "lag", "problem"],
            rows,
        )
    if action == ("replication", "check"):
        problems = report.problems()
        if not args.json:
            for p in problems:
                print(f"{p.topic}-{p.partition}: {p.problem}")
            if not problems:
                print(f"all {len(report.partitions)} partitions fully replicated")
        return 1 if problems else 0
    return 0
