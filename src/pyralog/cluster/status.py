"""What ``pyralog up`` shows: the nodes, their mesh addresses and handshakes, the
partitions and their leaders, gathered from the processes' local sockets.

Nothing here crosses the mesh: each node answers on its own 0600 Unix socket
(``/v1/status``: its WireGuard peers with their latest handshakes; ``/v1/log/replication``:
the partitions its broker leads, with their in-sync sets), so the table works as long as
the processes run, whatever the mesh is doing, and shows a node's own view of its peers.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyralog.cluster.layout import ClusterDir, Manifest
from pyralog.mesh import http

# A peer whose latest handshake is older than this has no live session (WireGuard
# rekeys every 2 minutes while traffic flows; sessions expire at 3).
LIVE_SESSION_S = 180.0


@dataclass
class NodeRow:
    name: str
    state: str
    pid: int | None = None
    address: str = "-"
    broker_id: int | None = None
    peers_up: int = 0
    peers: int = 0
    oldest_handshake_s: float | None = None
    leads: int = 0
    fenced: bool = False


@dataclass
class PartitionRow:
    topic: str
    partition: int
    leader: str
    epoch: int
    isr: list[str]
    high_watermark: int
    log_end: int


@dataclass
class Known:
    brokers: dict[int, str] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        brokers = {str(k): v for k, v in self.brokers.items()}
        return {"brokers": brokers, "addresses": self.addresses}

    @classmethod
    def from_json(cls, data: Any) -> Known:
        data = data if isinstance(data, dict) else {}
        brokers = {int(k): str(v) for k, v in dict(data.get("brokers") or {}).items()}
        return cls(brokers, {str(k): str(v) for k, v in dict(data.get("addresses") or {}).items()})


@dataclass
class Snapshot:
    nodes: list[NodeRow] = field(default_factory=list)
    partitions: list[PartitionRow] = field(default_factory=list)
    controller: str | None = None
    coordinator_state: str = "stopped"

    def formed(self, manifest: Manifest) -> bool:
        """Every node's broker is up and replicated, and a controller is in place."""
        brokers = [n for n in self.nodes if n.broker_id is not None]
        return len(brokers) == manifest.nodes and self.controller is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "coordinator": self.coordinator_state,
            "controller": self.controller,
            "nodes": [n.__dict__ for n in self.nodes],
            "partitions": [p.__dict__ for p in self.partitions],
        }


async def _ask(path: Path, target: str) -> Any:
    if not path.exists():
        return None
    try:
        return await http.call(
            lambda: asyncio.open_unix_connection(str(path)), "GET", target, timeout=2.0
        )
    except (http.HttpError, OSError, TimeoutError):
        return None


async def gather(cdir: ClusterDir, manifest: Manifest, states: dict[str, str],
                 pids: dict[str, int], known: Known | None = None) -> Snapshot:  # fmt: skip
    """``states``: what the supervisor says of each child ("running", "restarting in
    2 s (killed by SIGKILL)"), by name; ``pids``: the running ones'; ``known``: names
    of brokers and addresses of nodes seen before, kept up to date here, so that a node
    that is down still has its name in the in-sync sets and its address in the table."""
    known = known if known is not None else Known()
    wall = time.time()
    names = manifest.node_names()
    statuses = await asyncio.gather(*(_ask(cdir.node_socket(n), "/v1/status") for n in names))
    reports = await asyncio.gather(
        *(_ask(cdir.node_socket(n), "/v1/log/replication") for n in names)
    )
    snap = Snapshot(coordinator_state=states.get("coordinator", "stopped"))
    by_broker = known.brokers
    for name, status, report in zip(names, statuses, reports, strict=True):
        row = NodeRow(name, states.get(name, "stopped"), pids.get(name))
        if status:
            known.addresses[name] = ", ".join(status.get("addresses") or ["-"])
            mesh = [p for p in status.get("peers", []) if p.get("role") in ("node", "coordinator")]
            ages = [wall - p["latest_handshake"] for p in mesh if p.get("latest_handshake")]
            live = [a for a in ages if a < LIVE_SESSION_S]
            row.peers, row.peers_up = len(mesh), len(live)
            row.oldest_handshake_s = max(live) if live else None
        row.address = known.addresses.get(name, "-")
        if report and row.state == "running":
            row.broker_id = int(report["broker_id"])
            row.fenced = bool(report.get("fenced"))
            row.leads = len(report.get("partitions", []))
            by_broker[row.broker_id] = name
        snap.nodes.append(row)
    best: dict[tuple[str, int], tuple[int, PartitionRow]] = {}
    for report in reports:
        if not report:
            continue
        if report.get("controller") is not None and snap.controller is None:
            snap.controller = by_broker.get(report["controller"], str(report["controller"]))
        for p in report.get("partitions", []):
            key = (p["topic"], p["partition"])
            leader = by_broker.get(report["broker_id"], str(report["broker_id"]))
            row = PartitionRow(
                p["topic"], p["partition"], leader, p["leader_epoch"],
                sorted(by_broker.get(r, str(r)) for r in p["isr"]),
                p["high_watermark"], p["log_end_offset"],
            )  # fmt: skip
            # Two claim a partition only while a deposed leader has not heard yet:
            # the higher epoch is the true one.
            if key not in best or best[key][0] < p["leader_epoch"]:
                best[key] = (p["leader_epoch"], row)
    # Users' topics first, the consumer-offsets topic after them.
    snap.partitions = [
        r for _, (_, r) in sorted(best.items(), key=lambda kv: (kv[0][0].startswith("__"), kv[0]))
    ]
    return snap


def age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"


def node_rows(snap: Snapshot) -> tuple[list[str], list[list[str]]]:
    columns = ["NODE", "STATE", "PID", "MESH ADDRESS", "BROKER", "SESSIONS", "OLDEST HANDSHAKE",
               "LEADS"]  # fmt: skip
    rows = [
        [
            n.name,
            n.state + (" (fenced)" if n.fenced else ""),
            str(n.pid) if n.pid and n.state == "running" else "-",
            n.address,
            "-" if n.broker_id is None else str(n.broker_id),
            f"{n.peers_up}/{n.peers}",
            age(n.oldest_handshake_s),
            str(n.leads),
        ]
        for n in snap.nodes
    ]
    return columns, rows


def partition_rows(snap: Snapshot) -> tuple[list[str], list[list[str]]]:
    columns = ["TOPIC", "PARTITION", "LEADER", "EPOCH", "IN SYNC", "HIGH WATERMARK"]
    rows = [
        [p.topic, str(p.partition), p.leader, str(p.epoch), ", ".join(p.isr), str(p.high_watermark)]
        for p in snap.partitions
    ]
    return columns, rows


def render(snap: Snapshot, title: str) -> Any:
    """A rich renderable: the two tables."""
    from rich.console import Group
    from rich.table import Table

    nodes = Table(title=title, title_justify="left")
    columns, rows = node_rows(snap)
    for c in columns:
        nodes.add_column(c)
    for r in rows:
        nodes.add_row(*r)
    parts: list[Any] = [nodes]
    if snap.partitions:
        table = Table(title=f"partitions (controller {snap.controller or '-'})",
                      title_justify="left")  # fmt: skip
        columns, rows = partition_rows(snap)
        for c in columns:
            table.add_column(c)
        for r in rows:
            table.add_row(*r)
        parts.append(table)
    return Group(*parts)


def plain(snap: Snapshot, title: str) -> str:
    """The same tables as text (logs, pipes, ``pyralog status`` without a terminal)."""
    out = [title]
    for columns, rows in (node_rows(snap), partition_rows(snap)):
        if not rows:
            continue
        widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
        out.append("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
        for r in rows:
            out.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    if snap.partitions:
        out.append(f"controller: {snap.controller or '-'}")
    return "\n".join(out)
