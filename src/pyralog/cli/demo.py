"""``pyralog demo``: a 3-node cluster, a stock Kafka client, the leader killed, nothing
lost (``pyralog.cluster.demo``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo",
        help="run a 3-node cluster, produce through a stock Kafka client while the leader "
        "is killed, and check that nothing acknowledged was lost",
    )
    p.add_argument("--records", type=int, default=20000, help="how many records (20000)")
    p.add_argument(
        "--dir", type=Path, help="keep the cluster in this new directory (default: a temporary "
        "one, removed at the end)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from pyralog.cluster.demo import run_demo

    if not 10 <= args.records <= 10_000_000:
        print("pyralog demo: --records: expected 10 to 10000000", file=sys.stderr)
        return 2
    if args.dir is not None and args.dir.exists():
        print(f"pyralog demo: {args.dir}: exists; give a new directory", file=sys.stderr)
        return 2
    return run_demo(args.records, args.dir.absolute() if args.dir else None)
