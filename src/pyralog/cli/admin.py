"""``pyralog-admin``: tokens, members, clients and status, from the coordinator's API.

It talks to the coordinator's local admin socket (``--socket``, or the one named by
``--config coordinator.toml``), or over the mesh from an admin member (``--url
http://MESH-ADDRESS:7700``: kernel sockets through a wg-quick interface). Plain text by
default, ``rich`` tables when a terminal is attached, ``--json`` for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pyralog.cli import admin_audit
from pyralog.mesh import http
from pyralog.mesh.keyfile import KeyFileError, write_secret
from pyralog.mesh.model import RecordError, check_node_id

DEFAULT_SOCKET = "coordinator.sock"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyralog-admin", description=__doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", help="the coordinator's admin socket")
    where.add_argument("--config", help="coordinator.toml (to find its admin socket)")
    where.add_argument("--url", help="http://COORDINATOR-MESH-ADDRESS:PORT, from an admin member")
    parser.add_argument(
        "--host",
        metavar="ADDRESS[:PORT]",
        help="a broker of the replicated log (port 9092 by default): cluster status, "
        "partition list and replication check ask the log cluster through it",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="area", metavar="AREA")

    token = sub.add_parser("token", help="join tokens").add_subparsers(dest="action")
    create = token.add_parser("create", help="print a new join token")
    create.add_argument("--role", default="node", choices=["node", "gateway", "client", "admin"])
    create.add_argument("--reusable", action="store_true", help="usable by many nodes")
    create.add_argument("--ttl", default="1h", help="lifetime: 90s, 30m, 1h, 7d, never")
    create.add_argument("--region", help="members joining with it belong to this region")
    token.add_parser("list", help="every token and its state")
    revoke = token.add_parser("revoke", help="revoke a token now")
    revoke.add_argument("token_id")

    node = sub.add_parser("node", help="members").add_subparsers(dest="action")
    add = node.add_parser("add", help="add a member by its public key (provisioning)")
    add.add_argument("--node-id", required=True)
    add.add_argument("--public-key", required=True)
    add.add_argument("--endpoint", help="HOST:PORT where peers reach it")
    add.add_argument("--role", default="node", choices=["node", "gateway", "client", "admin"])
    add.add_argument("--region")
    add.add_argument("--replace-key", action="store_true", help="give an existing id this key")
    add.add_argument(
        "--allow-revoked-key", action="store_true", help="admit a revoked key again (lifts it)"
    )
    nlist = node.add_parser("list", help="the coordinator's view of every member")
    nlist.add_argument("--revoked", action="store_true", help="revoked keys instead, who, when")
    remove = node.add_parser("remove", help="remove a member (its peers drop it at once)")
    remove.add_argument("node_id")
    nrevoke = node.add_parser("revoke", help="remove a member and refuse its key from now on")
    nrevoke.add_argument("--node-id", required=True)

    client = sub.add_parser("client", help="stock WireGuard clients").add_subparsers(dest="action")
    cadd = client.add_parser("add", help="register a client and print its wg-quick config")
    cadd.add_argument("--name", required=True)
    cadd.add_argument("--role", default="client", choices=["client", "admin"])
    cadd.add_argument("--region")
    cadd.add_argument(
        "--output",
        "-o",
        help="write the config to this file (mode 0600); with --json, the JSON then "
        "names the file instead of holding the config",
    )

    admin_audit.add_parser(sub)
    crevoke = client.add_parser("revoke", help="remove a client and refuse its key from now on")
    crevoke.add_argument("--name", dest="node_id", required=True)

    wg = sub.add_parser("wireguard", help="members' WireGuard keys").add_subparsers(dest="action")
    update = wg.add_parser("update-peer", help="replace a member's public key (id, address kept)")
    update.add_argument("--peer-id", required=True)
    update.add_argument("--public-key", required=True)

    cluster = sub.add_parser("cluster", help="the cluster").add_subparsers(dest="action")
    status = cluster.add_parser(
        "status",
        help="every member and its health, exit 1 if any is down "
        "(with --host: the log cluster's brokers and controller)",
    )
    status.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=2.0,
        metavar="SECONDS",
        help="refresh every SECONDS (2) until Ctrl-C",
    )
    partition = sub.add_parser("partition", help="the log's partitions (needs --host)")
    partition.add_subparsers(dest="action").add_parser(
        "list", help="leaders, replicas, in-sync sets, lag per follower"
    )
    replication = sub.add_parser("replication", help="the log's replication (needs --host)")
    replication.add_subparsers(dest="action").add_parser(
        "check", help="exit 1 if any partition is under-replicated or offline"
    )
    return parser


def _opener(args: argparse.Namespace) -> http.Opener:
    if args.url:
        parts = urlsplit(args.url)
        if parts.scheme != "http" or not parts.hostname:
            raise SystemExit("pyralog-admin: --url: expected http://ADDRESS:PORT")
        host, port = parts.hostname, parts.port or 7700
        return lambda: asyncio.open_connection(host, port)
    path = args.socket
    if path is None and args.config:
        from pyralog.mesh import coordinator_config

        path = str(coordinator_config.load(args.config).admin_socket)
    path = path or os.environ.get("PYRALOG_ADMIN_SOCKET", DEFAULT_SOCKET)
    if not Path(path).exists():
        raise SystemExit(
            f"pyralog-admin: {path}: no admin socket (is the coordinator running? "
            "give --socket or --config)"
        )
    return lambda: asyncio.open_unix_connection(path)


def ago(when: float | None, now: float) -> str:
    """``wg show``'s style: "1 minute, 5 seconds ago", "Never"."""
    if not when:
        return "Never"
    seconds = max(0, int(now - when))
    if seconds == 0:
        return "Now"
    parts = []
    for name, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        n, seconds = divmod(seconds, size)
        if n:
            parts.append(f"{n} {name}{'s' if n != 1 else ''}")
    return ", ".join(parts) + " ago"


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{n} B"


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _write_client_config(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    """``client add -o FILE``: the config (it holds the client's private key) goes to
    FILE, mode 0600; what is left to show names the file instead."""
    write_secret(Path(args.output), data["wg_quick"].rstrip("\n"), force=False)
    print(f"wrote {args.output} for {data['node_id']} at {data['address']}", file=sys.stderr)
    shown = {k: v for k, v in data.items() if k != "wg_quick"}
    return {**shown, "output": str(args.output)}


def _show(args: argparse.Namespace, data: Any) -> None:
    now = time.time()
    if args.area == "client" and getattr(args, "output", None):
        data = _write_client_config(args, data)
        if not args.json:
            return
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return
    if args.area == "token" and args.action == "create":
        print(data["token"])
        expires = data.get("expires_at")
        until = (
            "never"
            if expires is None
            else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(expires))
        )
        print(
            f"token {data['id']}: role {data['role']}, "
            f"{'reusable' if data['reusable'] else 'one-time'}, "
            f"expires {until}",
            file=sys.stderr,
        )
    elif args.area == "token" and args.action == "list":
        rows = []
        for t in data:
            why = (
                "revoked"
                if t["revoked"]
                else (
                    "expired"
                    if t["expires_at"] and t["expires_at"] <= now
                    else ("used" if not t["reusable"] and t["uses"] else "live")
                )
            )
            rows.append([t["id"], t["role"], "yes" if t["reusable"] else "no", str(t["uses"]), why])
        _table("tokens", ["ID", "ROLE", "REUSABLE", "USES", "STATE"], rows)
    elif args.area == "node" and args.action == "list" and args.revoked:
        rows = [
            [
                r["node_id"],
                r["role"],
                r["address"],
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["revoked_at"])),
                r["revoked_by"],
                r["public_key"],
            ]
            for r in data
        ]
        _table("revoked keys", ["NODE", "ROLE", "ADDRESS", "REVOKED", "BY", "PUBLIC KEY"], rows)
    elif args.action == "revoke" and args.area in ("node", "client"):
        print(f"revoked: {data['node_id']} ({data['role']}), key {data['public_key']}")
    elif args.area == "wireguard":
        print(f"update-peer: {data['node_id']} at {data['address']}, key {data['public_key']}")
    elif args.area == "node" and args.action == "list":
        rows = [
            [
                n["node_id"],
                n["role"],
                n["address"],
                ", ".join(n["endpoints"]) or "-",
                n.get("region") or "-",
                n["state"],
                n["public_key"],
            ]
            for n in data
        ]
        _table(
            "members",
            ["NODE", "ROLE", "ADDRESS", "ENDPOINT", "REGION", "STATE", "PUBLIC KEY"],
            rows,
        )
    elif args.area == "node":
        print(f"{args.action}: {data['node_id']} ({data['role']}) at {data['address']}")
    elif args.area == "client":
        print(data["wg_quick"], end="")
    elif args.area == "cluster":
        c = data["coordinator"]
        print(
            f"cluster {data['cluster_id']}: coordinator {c['address']} "
            f"({', '.join(c['endpoints'])}), topology {data['settings']['topology']}"
        )
        rows = [
            [
                m["node_id"],
                m["role"],
                m["address"],
                m["endpoint"] or "-",
                ago(m["latest_handshake"], now),
                f"{size(m['rx_bytes'])} received, {size(m['tx_bytes'])} sent",
                m["health"],
            ]
            for m in data["members"]
        ]
        _table(
            "members",
            ["NODE", "ROLE", "ADDRESS", "ENDPOINT", "LATEST HANDSHAKE", "TRANSFER", "HEALTH"],
            rows,
        )
        refused = {k: v for k, v in data["enrollment"].items() if k.startswith("refused")}
        if refused:
            print("enrollment refusals: " + ", ".join(f"{k[8:]} {v}" for k, v in refused.items()))
        down = members_down(data)
        if down:
            print(f"down: {', '.join(down)}")


def members_down(status: dict[str, Any]) -> list[str]:
    """The ids of members whose health is "down" (``cluster status`` then exits 1)."""
    return [m["node_id"] for m in status.get("members", []) if m.get("health") == "down"]


def _request(args: argparse.Namespace) -> tuple[str, str, Any]:
    area, action = args.area, getattr(args, "action", None)
    if area == "token" and action == "create":
        body = {"role": args.role, "reusable": args.reusable, "ttl": args.ttl}
        if args.region:
            body["region"] = args.region
        return "POST", "/v1/tokens", body
    if area == "token" and action == "list":
        return "GET", "/v1/tokens", None
    if area == "token" and action == "revoke":
        return "DELETE", f"/v1/tokens/{args.token_id}", None
    if area == "node" and action == "add":
        body = {
            "node_id": args.node_id,
            "public_key": args.public_key,
            "role": args.role,
            "replace_key": args.replace_key,
            "allow_revoked_key": args.allow_revoked_key,
        }
        if args.endpoint:
            body["endpoint"] = args.endpoint
        if args.region:
            body["region"] = args.region
        return "POST", "/v1/nodes", body
    if area == "node" and action == "list":
        return "GET", "/v1/revoked" if args.revoked else "/v1/nodes", None
    if area in ("node", "client") and action == "revoke":
        return "POST", f"/v1/nodes/{check_node_id(args.node_id)}/revoke", None
    if area == "wireguard" and action == "update-peer":
        body = {"public_key": args.public_key}
        return "PUT", f"/v1/nodes/{check_node_id(args.peer_id)}/key", body
    if area == "node" and action == "remove":
        return "DELETE", f"/v1/nodes/{args.node_id}", None
    if area == "client" and action == "add":
        body = {"name": args.name, "role": args.role}
        if args.region:
            body["region"] = args.region
        return "POST", "/v1/clients", body
    if area == "cluster" and action == "status":
        return "GET", "/v1/status", None
    raise SystemExit(f"pyralog-admin: say what to do (pyralog-admin {area or ''} --help)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.area is None:
        parser.print_help(sys.stderr)
        return 2
    action = (args.area, getattr(args, "action", None))
    if args.area == "audit":
        return admin_audit.run(args)
    log_actions = {("cluster", "status"), ("partition", "list"), ("replication", "check")}
    if args.host is not None and action in log_actions:
        from pyralog.cli import admin_log

        return admin_log.run(args, _table)
    if args.area in ("partition", "replication"):
        if action not in log_actions:
            raise SystemExit(f"pyralog-admin: say what to do (pyralog-admin {args.area} --help)")
        print(f"pyralog-admin: {args.area} {action[1]}: give --host BROKER", file=sys.stderr)
        return 2
    try:
        method, path, body = _request(args)
    except RecordError as e:  # an id that could not be in a path: refused before asking
        print(f"pyralog-admin: {e}", file=sys.stderr)
        return 1
    output = getattr(args, "output", None)
    if output and os.path.lexists(output):
        # Before the request: the coordinator keeps no copy of the client's private key.
        print(f"pyralog-admin: {output}: exists; refusing to overwrite it", file=sys.stderr)
        return 1
    watch = getattr(args, "watch", None) if action == ("cluster", "status") else None
    if watch is not None:
        return _watch(args, method, path, max(watch, 0.1))
    return _once(args, method, path, body)


def _once(args: argparse.Namespace, method: str, path: str, body: Any) -> int:
    try:
        opener = _opener(args)
        data = asyncio.run(http.call(opener, method, path, body, timeout=15.0))
    except http.HttpError as e:
        print(f"pyralog-admin: {e.message}", file=sys.stderr)
        return 1
    except Exception as e:  # config errors and the like: one line, no traceback
        if isinstance(e, SystemExit):
            raise
        print(f"pyralog-admin: {e}", file=sys.stderr)
        return 1
    try:
        _show(args, data)
    except KeyFileError as e:
        print(f"pyralog-admin: {e}", file=sys.stderr)
        return 1
    if (args.area, args.action) == ("cluster", "status") and members_down(data):
        return 1
    return 0


def _watch(args: argparse.Namespace, method: str, path: str, every: float) -> int:
    """``cluster status --watch``: the same table, redrawn until Ctrl-C; the exit code is
    the last refresh's."""
    code = 0
    # A shell's background job starts with SIGINT ignored, and Python keeps it so: Ctrl-C
    # (or a script's SIGINT) must stop the watch whatever started it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while True:
            if sys.stdout.isatty():
                print("\033[H\033[2J", end="")
            code = _once(args, method, path, None)
            print(f"-- every {every:g} s, Ctrl-C to stop", flush=True)
            time.sleep(every)
    except KeyboardInterrupt:
        return code


if __name__ == "__main__":
    sys.exit(main())
