"""``pyralog up | down | status``: a whole cluster on this machine, as any user.

    pyralog up [--nodes 3] [--dir ./pyralog-cluster] [--port 51900] [--detach]
    pyralog status --dir ./pyralog-cluster [--json]
    pyralog down --dir ./pyralog-cluster

``up`` creates the cluster in ``--dir`` the first time and resumes it, with its data,
every time after. In the foreground it shows a live status table until Ctrl-C; with
``--detach`` it starts the supervisor in the background, shows its progress until the
cluster is ready, and returns. See ``pyralog.cluster``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

from pyralog.cluster.layout import DEFAULT_PORT, MAX_NODES, ClusterDir, LayoutError, Manifest
from pyralog.cluster.runlock import AlreadyRunning, RunLock

READY = "pyralog up: ready"
DEFAULT_DIR = "./pyralog-cluster"


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    up = sub.add_parser(
        "up",
        help="run a replicated cluster on this machine (embedded WireGuard, no root)",
        description="Create (the first time) or resume a Pyralog cluster in --dir: a "
        "coordinator and N nodes in embedded mode on loopback UDP ports, every node enrolled "
        "with a join token, one replicated log. Shows a live status until Ctrl-C.",
    )
    up.add_argument("--nodes", type=int, help="how many nodes (default 3; more adds nodes)")
    up.add_argument("--dir", default=DEFAULT_DIR, help=f"the cluster directory ({DEFAULT_DIR})")
    up.add_argument(
        "--port", type=int, help=f"the coordinator's UDP port; node-i uses PORT+i ({DEFAULT_PORT})"
    )
    up.add_argument("--detach", action="store_true", help="run in the background once ready")
    up.add_argument(
        "--restart-delay",
        type=float,
        default=5.0,
        help="seconds before a node that died is started again (5; its partitions fail over "
        "to the others meanwhile)",
    )
    up.add_argument("--supervise", action="store_true", help=argparse.SUPPRESS)
    down = sub.add_parser("down", help="stop the cluster `pyralog up --detach` started")
    down.add_argument("--dir", default=DEFAULT_DIR, help=f"the cluster directory ({DEFAULT_DIR})")
    status = sub.add_parser("status", help="the status table of a cluster `pyralog up` runs")
    status.add_argument("--dir", default=DEFAULT_DIR, help=f"the cluster directory ({DEFAULT_DIR})")
    status.add_argument("--json", action="store_true", help="machine-readable output")


def say(message: str) -> None:
    print(f"pyralog up: {message}", flush=True)


def fail(command: str, message: object, code: int = 1) -> int:
    print(f"pyralog {command}: {message}", file=sys.stderr, flush=True)
    return code


# -- up ------------------------------------------------------------------------------------


def plan(cdir: ClusterDir, nodes: int | None, port: int | None) -> tuple[Manifest, bool]:
    """The manifest to run and whether it is new; checks everything, writes nothing."""
    if nodes is not None and not 1 <= nodes <= MAX_NODES:
        raise LayoutError(f"--nodes: expected 1-{MAX_NODES}, got {nodes}")
    if port is not None and not 1024 <= port <= 65535 - MAX_NODES:
        raise LayoutError(f"--port: expected 1024-{65535 - MAX_NODES}, got {port}")
    if cdir.exists():
        manifest = cdir.manifest()
        if port is not None and port != manifest.port:
            raise LayoutError(
                f"--port {port}: the cluster in {cdir.root} uses {manifest.port} "
                f"(fixed when it was created)"
            )
        if nodes is not None and nodes < manifest.nodes:
            raise LayoutError(
                f"--nodes {nodes}: the cluster in {cdir.root} has {manifest.nodes} nodes; "
                "removing nodes is not supported"
            )
        cdir.check(manifest)
        if nodes is not None and nodes > manifest.nodes:
            return Manifest(manifest.cluster_id, nodes, manifest.port, manifest.host), False
        return manifest, False
    cdir.check_new()
    return Manifest("local", nodes or 3, port or DEFAULT_PORT), True


def run_up(args: argparse.Namespace) -> int:
    from pyralog.cluster.supervisor import ports_in_use

    cdir = ClusterDir(args.dir)
    try:
        manifest, new = plan(cdir, args.nodes, args.port)
    except LayoutError as e:
        return fail("up", e, 2)
    if RunLock(cdir.root).held_elsewhere():
        return fail("up", AlreadyRunning(cdir.root, RunLock(cdir.root).holder()))
    taken = ports_in_use(manifest)
    if taken:
        hint = (
            "choose other ports with --port"
            if new
            else f"the cluster's ports were fixed when it was created ({cdir.manifest_path})"
        )
        return fail("up", f"UDP port {', '.join(taken)} in use by another program; {hint}")
    try:
        cdir.root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return fail("up", f"cannot create {cdir.root}: {e.strerror}", 2)
    if not os.access(cdir.root, os.W_OK | os.X_OK):
        return fail("up", f"{cdir.root}: not writable by this user", 2)
    if args.detach and not args.supervise:
        return _detach(cdir, args)
    lock = RunLock(cdir.root)
    try:
        lock.acquire()
    except AlreadyRunning as e:
        return fail("up", e)
    try:
        if new:
            cdir.create(manifest)
            say(f"created a {manifest.nodes}-node cluster in {cdir.root}")
        elif manifest.nodes > cdir.manifest().nodes:
            say(f"growing the cluster in {cdir.root} to {manifest.nodes} nodes")
            cdir.grow(cdir.manifest(), manifest.nodes)
        else:
            say(f"resuming the {manifest.nodes}-node cluster in {cdir.root}")
        live = sys.stdout.isatty() and not args.supervise
        return asyncio.run(_supervise(cdir, manifest, args, live))
    except LayoutError as e:
        return fail("up", e)
    except KeyboardInterrupt:
        return 130
    finally:
        lock.release()


async def _supervise(cdir: ClusterDir, manifest: Manifest, args: argparse.Namespace,
                     live: bool) -> int:  # fmt: skip
    from pyralog.cli.stopping import stop_event
    from pyralog.cluster.status import Snapshot, plain, render
    from pyralog.cluster.supervisor import StartError, Supervisor

    stop = stop_event()
    sup = Supervisor(cdir, manifest, say=say, restart_delay=args.restart_delay)
    starting = asyncio.create_task(sup.start())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await sup.stop()
        say("interrupted during start-up; stopped")
        return 130
    stopped.cancel()
    error = starting.exception()
    if error is not None:
        await sup.stop()
        if isinstance(error, StartError | OSError):
            return fail("up", error)
        raise error
    how = "Ctrl-C" if not (args.detach or args.supervise) else f"pyralog down --dir {args.dir}"
    say(
        f"ready: {manifest.nodes} nodes, replication factor {manifest.replication_factor}. "
        f"Kafka clients: pyralog connect --config {cdir.client_config} (then "
        f"kcat -b 127.0.0.1:9092 -L). Stop: {how}"
    )
    title = f"pyralog cluster {cdir.root}"
    print(plain(sup.snapshot, title), flush=True)
    if live:
        from rich.console import Console
        from rich.live import Live

        with Live(render(sup.snapshot, title), console=Console(), refresh_per_second=2) as view:
            await sup.run(stop, lambda snap: view.update(render(snap, title)))
    else:

        def key(snap: Snapshot) -> str:
            return json.dumps(
                [[n.state, n.broker_id, n.leads, n.fenced] for n in snap.nodes]
                + [[p.topic, p.partition, p.leader, p.isr] for p in snap.partitions]
            )

        shape = [key(sup.snapshot)]

        def on_change(snap: Snapshot) -> None:
            # Logs and pipes get the table again only when something changed.
            if key(snap) != shape[0]:
                shape[0] = key(snap)
                print(plain(snap, title), flush=True)

        await sup.run(stop, on_change)
    await sup.stop()
    say(f"stopped; the data stays in {cdir.root} (pyralog up --dir {args.dir} resumes it)")
    return 0


def _detach(cdir: ClusterDir, args: argparse.Namespace) -> int:
    """Start ``pyralog up --supervise`` in its own session, echo its progress from its log
    until it says it is ready (exit 0) or exits (1)."""
    argv = [sys.executable, "-m", "pyralog", "up", "--supervise", "--detach", "--dir",
            str(cdir.root), "--restart-delay", str(args.restart_delay)]  # fmt: skip
    if args.nodes is not None:
        argv += ["--nodes", str(args.nodes)]
    if args.port is not None:
        argv += ["--port", str(args.port)]
    log_path = cdir.supervisor_log
    start = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    offset = start
    pending = ""
    deadline = time.monotonic() + 120
    while True:
        with open(log_path, "rb") as f:
            f.seek(offset)
            chunk = f.read().decode(errors="replace")
        offset += len(chunk.encode())
        pending += chunk
        *lines, pending = pending.split("\n")
        for line in lines:
            print(line, flush=True)
        if any(line.startswith(READY) for line in lines):
            # The table printed right after the ready line.
            time.sleep(0.3)
            with open(log_path, "rb") as f:
                f.seek(offset)
                print(f.read().decode(errors="replace"), end="", flush=True)
            print(f"pyralog up: running in the background (pid {child.pid}, log {log_path})")
            return 0
        if child.poll() is not None:
            if pending:
                print(pending, flush=True)
            return child.returncode or 1
        if time.monotonic() > deadline:
            child.terminate()
            return fail("up", f"not ready after 120 s; see {log_path}")
        time.sleep(0.1)


# -- down ----------------------------------------------------------------------------------


def run_down(args: argparse.Namespace) -> int:
    import signal

    cdir = ClusterDir(args.dir)
    if not cdir.exists():
        return fail("down", f"{cdir.root}: not a Pyralog cluster directory (no cluster.toml)", 2)
    lock = RunLock(cdir.root)
    if not lock.held_elsewhere():
        print(f"pyralog down: {cdir.root}: not running")
        return 0
    pid = lock.holder()
    if pid is None:
        return fail("down", f"{lock.pid_path}: missing; cannot tell which process to stop")
    print(f"pyralog down: stopping the cluster in {cdir.root} (supervisor pid {pid})", flush=True)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 40
    while lock.held_elsewhere():
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)  # its children follow it (PR_SET_PDEATHSIG)
            return fail("down", f"supervisor pid {pid} did not stop in 40 s: killed it")
        time.sleep(0.1)
    print("pyralog down: stopped")
    return 0


# -- status --------------------------------------------------------------------------------


def run_status(args: argparse.Namespace) -> int:
    from pyralog.cluster.status import Known, gather, plain, render

    cdir = ClusterDir(args.dir)
    try:
        manifest = cdir.manifest()
    except LayoutError as e:
        return fail("status", e, 2)
    running = RunLock(cdir.root).held_elsewhere()
    state: dict[str, Any] = cdir.read_state() or {}
    states = {str(k): str(v) for k, v in dict(state.get("states") or {}).items()} if running else {}
    pids = {str(k): int(v) for k, v in dict(state.get("pids") or {}).items()} if running else {}
    known = Known.from_json(state.get("known"))
    snap = asyncio.run(gather(cdir, manifest, states, pids, known))
    title = f"pyralog cluster {cdir.root}" + ("" if running else " (not running)")
    if args.json:
        print(json.dumps({"running": running, **snap.to_json()}, indent=2, sort_keys=True))
    elif sys.stdout.isatty():
        from rich.console import Console

        Console().print(render(snap, title))
    else:
        print(plain(snap, title))
    healthy = running and all(n.state == "running" for n in snap.nodes)
    return 0 if healthy else 1


def run(args: argparse.Namespace) -> int:
    if args.command == "up":
        return run_up(args)
    if args.command == "down":
        return run_down(args)
    return run_status(args)
