"""``pyralog-admin audit verify | report``: check an audit trail and summarise it.

    pyralog-admin audit verify --file audit.jsonl [--public-key audit.pub]
    pyralog-admin audit report --file audit.jsonl --from 2026-01-01 --to 2026-02-01 \\
        [--format json|markdown]

Offline: they read the trail file and the writer's ML-DSA-65 public key (by default
``audit.pub`` beside the trail, which the writer keeps there), so an auditor can check a
copy anywhere. ``verify`` exits 1 and names the first bad entry; ``report`` says
"non-compliant" when the chain does not verify (``pyralog.mesh.audit``).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyralog.mesh import audit


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    area = sub.add_parser("audit", help="the signed audit trail").add_subparsers(dest="action")
    for name, text in (("verify", "check every entry's signature and the chain"),
                       ("report", "the compliance report for a period")):  # fmt: skip
        p = area.add_parser(name, help=text)
        p.add_argument("--file", required=True, type=Path, help="the trail (audit.jsonl)")
        p.add_argument(
            "--public-key", type=Path, help="the writer's key (default: audit.pub beside)"
        )
        if name == "report":
            p.add_argument("--from", dest="start", required=True, help="YYYY-MM-DD (UTC)")
            p.add_argument("--to", dest="end", required=True, help="YYYY-MM-DD (UTC), exclusive")
            p.add_argument("--format", choices=["json", "markdown"], default="markdown")


def _day(text: str, option: str) -> float:
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise audit.AuditError(f"{option} {text!r}: expected YYYY-MM-DD") from None


def _markdown(r: dict[str, Any], start: str, end: str) -> str:
    rows = [
        ("Period", f"{start} to {end}"),
        ("Total connections", r["total_connections"]),
        ("Unique peers", r["unique_peers"]),
        ("Encrypted bytes", r["encrypted_bytes"]),
        ("Handshakes", r["handshakes"]),
        ("Entries in period", r["entries"]),
        ("Verified entries (whole trail)", r["verified_entries"]),
        ("Compliance status", r["compliance_status"]),
    ]
    out = ["# Audit report", "", "| Field | Value |", "| --- | --- |"]
    out += [f"| {k} | {v} |" for k, v in rows]
    out += [f"\n- {why}" for why in r["reasons"]]
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    try:
        key_path = args.public_key or args.file.with_name("audit.pub")
        try:
            lines = args.file.read_text(encoding="utf-8").splitlines()
            public = audit.public_from_text(key_path.read_text(encoding="utf-8"))
        except OSError as e:
            raise audit.AuditError(f"{e.filename}: {e.strerror}") from None
        if args.action == "verify":
            good, bad = audit.verify(lines, public)
            if bad is not None:
                print(f"pyralog-admin: {args.file}: {bad} ({good} entries before it verify)",
                      file=sys.stderr)  # fmt: skip
                return 1
            print(f"{args.file}: {good} entries, chain and signatures verify")
            return 0
        if args.action == "report":
            r = audit.report(lines, public, _day(args.start, "--from"), _day(args.end, "--to"))
            if args.format == "json":
                print(json.dumps(r, indent=2, sort_keys=True))
            else:
                print(_markdown(r, args.start, args.end))
            return 0 if r["compliance_status"] == "compliant" else 1
    except audit.AuditError as e:
        print(f"pyralog-admin: {e}", file=sys.stderr)
        return 1
    print("pyralog-admin: say what to do (pyralog-admin audit --help)", file=sys.stderr)
    return 2
