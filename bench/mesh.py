"""The mesh control plane's two user-facing latencies, on loopback, without root.

1. **Node start → first mesh TCP.** A real coordinator (``pyralog coordinator``) and one
   running node B. We spawn ``pyralog node`` for a new node (embedded backend, no key
   yet: it makes one, then enrolls with a join token) and time, from the spawn, its log
   lines (``enrolling``, ``enrolled as``, ``up:``) and the first successful probe of B
   over the mesh (``GET /v1/probe`` on the node's local socket: a TCP connection from
   inside the node to B's identity service and one HTTP request on it). Then the same
   node is stopped and started again (already a member: no enrollment). Each is
   repeated; the node is removed from the cluster between repetitions. Interpreter
   start-up and imports are part of what a user waits for; ``python -c "import
   pyralog.mesh.node"`` is timed separately so the reader sees their share.
   Baseline, same run: from this process, a fresh embedded tunnel with a member's key
   making its first call to the coordinator (one WireGuard handshake, one TCP connection,
   one ``GET /v1/mesh``), and the second call on the established session.

2. **Membership change → 50 nodes.** A second coordinator and 50 simulated members in
   this one process: each is a real WireGuard member (an ``EmbeddedTunnel`` with its own
   key, added with ``POST /v1/nodes`` on the admin socket) running the node's own
   ``Agent`` (long-poll ``GET /v1/mesh?wait=10&since=VIEW`` over its tunnel) on an
   ``EmbeddedBackend``. We add a member, later remove it, on the admin socket and time,
   for each agent, from just before the admin call until its applied peer set has (or no
   longer has) that member: first with the agents just started, then in the running
   cluster's state, once every agent runs the node's 10 s status report (spread over the
   period, as nodes started at different times) and the coordinator holds one from each.
   Baseline, same run: one ``GET /v1/mesh?wait=0`` round trip over an agent's tunnel
   while the long-polls are parked and no report has been made. Also the coordinator's
   CPU (``/proc/PID/stat``) over idle windows: without members, with the 50 reporting,
   with their long-polls alone.

    .venv/bin/python bench/mesh.py [--quick] [--out FILE.json]

Every process it starts is stopped when it ends, also on Ctrl-C, SIGTERM or failure
(and, through PR_SET_PDEATHSIG, if this process is killed outright). Two cores: the 50
tunnels of part 2 run in this process and compete with the coordinator for CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from stats import median, percentile, ratio, spread

from pyralog.mesh import http
from pyralog.mesh.agent import REPORT_EVERY, Agent
from pyralog.mesh.backend_embedded import EmbeddedBackend
from pyralog.mesh.node import INFO_PORT
from pyralog.netstack.embedded import EmbeddedTunnel
from pyralog.wireguard.config import Config, InterfaceConfig
from pyralog.wireguard.keys import PrivateKey

PYRALOG = str(Path(sys.executable).with_name("pyralog"))
HOST = "127.0.0.1"
NETWORK = "10.77.0.0/16"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1
TMP_PREFIX = "pyralog-mesh-bench-"  # temporary directories: /tmp/pyralog-mesh-bench-<pid>-XXXX


@dataclass(frozen=True)
class Settings:
    quick: bool
    start_runs: int  # node start measurements (first boot, restart)
    import_runs: int
    agents: int
    changes: int  # membership changes of each kind (add, remove)
    rtt_samples: int
    idle_window: float  # seconds, with the agents (one long-poll and report period)
    polls_only_window: float  # seconds, the agents' long-polls without their reports
    empty_window: float  # seconds, the coordinator without members

    @classmethod
    def for_mode(cls, quick: bool, agents: int = 50) -> Settings:
        if quick:
            return cls(True, 2, 3, agents, 2, 10, 10.0, 10.0, 3.0)
        return cls(False, 5, 5, agents, 5, 30, 10.0, 10.0, 5.0)


# -- pure helpers (tests/bench/test_mesh_bench.py) ------------------------------------------

NODE_PREFIX = "pyralog node: "
# (event, how the node's log message starts), in start-up order; see pyralog.mesh.node.
NODE_EVENTS = (
    ("key", "made a new key pair"),
    ("member", "member "),  # a restart: the saved state, no enrollment
    ("enrolling", "enrolling "),
    ("enrolled", "enrolled as "),
    ("backend", "backend "),
    ("up", "up: "),
)


def parse_event(line: str) -> str | None:
    """The start-up event a node's stderr line reports (``NODE_EVENTS``), or None."""
    if not line.startswith(NODE_PREFIX):
        return None
    message = line[len(NODE_PREFIX) :]
    for event, start in NODE_EVENTS:
        if message.startswith(start):
            return event
    return None


def event_times(lines: Iterable[tuple[float, str]], t0: float) -> dict[str, float]:
    """Seconds from ``t0`` to the first line of each event; also ``first_line``."""
    times: dict[str, float] = {}
    for at, line in lines:
        times.setdefault("first_line", at - t0)
        event = parse_event(line)
        if event is not None:
            times.setdefault(event, at - t0)
    return times


def start_stages(times: dict[str, float]) -> dict[str, float | None]:
    """A node start's cumulative times (``to_*``, from the spawn) and the steps between
    them, from ``event_times`` plus ``tcp`` (the first successful probe's answer)."""

    def between(a: str, b: str) -> float | None:
        return times[b] - times[a] if a in times and b in times else None

    return {
        "to_first_line": times.get("first_line"),
        "to_enrolled": times.get("enrolled", times.get("member")),
        "to_up": times.get("up"),
        "to_tcp": times.get("tcp"),
        "enrollment": between("enrolling", "enrolled"),
        "enrolled_to_up": between("enrolled" if "enrolled" in times else "member", "up"),
        "up_to_tcp": between("up", "tcp"),
    }


def distribution(values: Sequence[float]) -> dict[str, float | int | None]:
    """min, p50, p95 (nearest rank, ``stats.percentile``) and max of ``values``."""
    return {
        "min": min(values) if values else None,
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "max": max(values) if values else None,
        "n": len(values),
    }


def stat_cpu_seconds(stat: str, clk_tck: int = CLK_TCK) -> float:
    """utime + stime, in seconds, from the text of ``/proc/PID/stat``."""
    fields = stat.rsplit(")", 1)[1].split()  # the name (field 2) may hold spaces and ')'
    return (int(fields[11]) + int(fields[12])) / clk_tck


def per_minute(cpu_seconds: float, wall_seconds: float) -> float | None:
    return None if wall_seconds <= 0 else cpu_seconds * 60.0 / wall_seconds


def fmt_ms(seconds: float | None) -> str:
    """Milliseconds: one decimal under a second, thousands separated above."""
    if seconds is None:
        return "-"
    return f"{seconds * 1000:,.0f}" if seconds >= 1 else f"{seconds * 1000:.1f}"


def fmt_x(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for n, row in enumerate([header, *rows]):
        cells = [
            str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i])
            for i, c in enumerate(row)
        ]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


# -- processes ----------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when this benchmark dies, however it dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    directory: Path
    popen: subprocess.Popen[bytes]
    started: float  # perf_counter just before the spawn
    log: TextIO
    lines: list[tuple[float, str]] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def socket(self) -> Path:
        return self.directory / ("node.sock" if self.name != "coordinator" else "coordinator.sock")

    def read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            at = time.perf_counter()
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append((at, line))
            with contextlib.suppress(ValueError):
                self.log.write(f"{at - self.started:9.4f} {line}\n")
                self.log.flush()

    def tail(self, n: int = 15) -> str:
        return "\n".join(line for _, line in self.lines[-n:])

    def has(self, event: str) -> bool:
        return any(parse_event(line) == event for _, line in list(self.lines))


class Processes:
    """Every process the benchmark started; ``stop_all`` ends each one, by its pid."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def spawn(self, name: str, directory: Path, argv: list[str]) -> Child:
        log = open(directory / "process.log", "a", encoding="utf-8")  # noqa: SIM115
        started = time.perf_counter()
        popen = subprocess.Popen(
            argv,
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us; we stop the children in order
            preexec_fn=_die_with_parent,
        )
        child = Child(name, directory, popen, started, log)
        child.reader = threading.Thread(target=child.read, daemon=True)
        child.reader.start()
        self.children.append(child)
        return child

    def stop(self, child: Child, timeout: float = 5.0) -> None:
        if child.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.popen.send_signal(signal.SIGTERM)
            try:
                child.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    child.popen.kill()
                child.popen.wait(timeout)
        if child.reader is not None:
            child.reader.join(2.0)
        child.log.close()
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            with contextlib.suppress(Exception):
                self.stop(child)


class BenchError(RuntimeError):
    pass


def stale_owner(name: str, prefix: str = TMP_PREFIX) -> int | None:
    """The pid in a temporary directory's name (``TMP_PREFIX<pid>-XXXX``), or None."""
    if not name.startswith(prefix):
        return None
    pid, _, rest = name[len(prefix) :].partition("-")
    return int(pid) if pid.isdigit() and rest else None


def reap_stale_directories() -> None:
    """Remove what a run killed outright (SIGKILL: no clean-up) left in the temp dir.
    Its processes ended with it (PR_SET_PDEATHSIG); only their directories stay."""
    for path in Path(tempfile.gettempdir()).glob(f"{TMP_PREFIX}*"):
        pid = stale_owner(path.name)
        if pid is None or pid == os.getpid() or Path(f"/proc/{pid}").exists():
            continue
        shutil.rmtree(path, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    return stat_cpu_seconds(Path(f"/proc/{pid}/stat").read_text())


def free_udp_ports(n: int) -> list[int]:
    """``n`` distinct UDP ports free on loopback a moment ago (all bound at once)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


async def until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.005
) -> Any:
    deadline = time.perf_counter() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.perf_counter() >= deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


async def call_socket(
    path: Path, method: str, target: str, body: Any = None, timeout: float = 10.0
) -> Any:
    return await http.call(
        lambda: asyncio.open_unix_connection(str(path)), method, target, body, timeout=timeout
    )


# -- the cluster ------------------------------------------------------------------------------


@dataclass
class Coordinator:
    child: Child
    port: int

    @property
    def pid(self) -> int:
        return self.child.popen.pid

    async def admin(self, method: str, target: str, body: Any = None) -> Any:
        return await call_socket(self.child.socket, method, target, body)


async def start_coordinator(procs: Processes, directory: Path) -> Coordinator:
    directory.mkdir(parents=True)
    (port,) = free_udp_ports(1)
    (directory / "coordinator.toml").write_text(
        "[coordinator]\n"
        'cluster_id = "bench"\n'
        f'network = "{NETWORK}"\n'
        f"listen_port = {port}\n"
        f'endpoints = ["{HOST}:{port}"]\n'
        'store = "coordinator.db"\n'
        'private_key_file = "coordinator.key"\n'
    )
    child = procs.spawn(
        "coordinator", directory, [PYRALOG, "coordinator", "--config", "coordinator.toml"]
    )
    await until(
        lambda: child.socket.exists() or child.popen.poll() is not None, 30, "the coordinator"
    )
    if child.popen.poll() is not None:
        raise BenchError(f"the coordinator exited:\n{child.tail()}")
    return Coordinator(child, port)


def write_node_config(directory: Path, node_id: str, token: str, coordinator_port: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (port,) = free_udp_ports(1)
    (directory / "token").write_text(token)
    (directory / "wireguard.toml").write_text(
        "[wireguard]\n"
        'backend = "embedded"\n'
        "[interface]\n"
        'private_key_file = "node.key"\n'
        f"listen_port = {port}\n"
        "[bootstrap]\n"
        f'coordinator_endpoint = ["{HOST}:{coordinator_port}"]\n'
        f'node_id = "{node_id}"\n'
        'token_file = "token"\n'
    )


def spawn_node(procs: Processes, directory: Path, node_id: str) -> Child:
    (directory / "node.sock").unlink(missing_ok=True)  # a stopped node's socket may stay
    return procs.spawn(node_id, directory, [PYRALOG, "node", "--config", "wireguard.toml"])


async def wait_node_up(child: Child, timeout: float = 30.0) -> None:
    await until(
        lambda: (child.socket.exists() and child.has("up")) or child.popen.poll() is not None,
        timeout,
        f"{child.name} to come up",
        interval=0.002,
    )
    if child.popen.poll() is not None:
        raise BenchError(f"{child.name} exited {child.popen.returncode}:\n{child.tail()}")


# -- 1. node start -> first mesh TCP --------------------------------------------------------


async def first_tcp(child: Child, address: str, timeout: float = 30.0) -> dict[str, Any]:
    """Probe ``address`` from ``child`` until a probe succeeds: the time of its answer
    (perf_counter), the attempts and the successful probe's own round trip."""
    await until(
        lambda: child.socket.exists() or child.popen.poll() is not None,
        timeout,
        f"{child.name}'s local socket",
        interval=0.002,
    )
    deadline = time.perf_counter() + timeout
    attempts = 0
    last: Any = None
    target = f"/v1/probe?address={address}&port={INFO_PORT}&timeout=2"
    while time.perf_counter() < deadline:
        if child.popen.poll() is not None:
            raise BenchError(f"{child.name} exited:\n{child.tail()}")
        attempts += 1
        sent = time.perf_counter()
        try:
            last = await call_socket(child.socket, "GET", target, timeout=5)
        except http.HttpError as e:
            last = {"ok": False, "error": str(e)}
        if isinstance(last, dict) and last.get("ok"):
            return {
                "at": time.perf_counter(),
                "sent": sent,
                "attempts": attempts,
                "probe_ms": last.get("rtt_ms"),
            }
        await asyncio.sleep(0.005)
    raise BenchError(f"{child.name}: no probe of {address} succeeded in {timeout:g} s: {last}")


async def one_start(
    procs: Processes, directory: Path, node_id: str, b_address: str
) -> tuple[Child, dict[str, Any]]:
    child = spawn_node(procs, directory, node_id)
    tcp = await first_tcp(child, b_address)
    times = event_times(list(child.lines), child.started)
    times["tcp"] = tcp["at"] - child.started
    run = {
        **start_stages(times),
        "attempts": tcp["attempts"],
        "probe_ms": tcp["probe_ms"],
        "events": times,
    }
    return child, run


async def member_calls(coord: Coordinator, node_id: str) -> dict[str, float]:
    """The baseline: a fresh member's key in a fresh embedded tunnel in this process.
    ``cold``: tunnel start to the first ``GET /v1/mesh?wait=0`` answer (handshake, TCP,
    HTTP); ``warm``: the next call on the established session (TCP, HTTP)."""
    key = PrivateKey.generate()
    (port,) = free_udp_ports(1)
    answer = await coord.admin(
        "POST",
        "/v1/nodes",
        {
            "node_id": node_id,
            "public_key": key.public_key.to_base64(),
            "endpoint": f"{HOST}:{port}",
        },
    )
    try:
        t0 = time.perf_counter()
        tunnel = await start_member_tunnel(key, answer, port)
        try:
            agent = Agent(EmbeddedBackend(tunnel), answer["coordinator"], endpoints=[])
            await agent.apply_view(None)
            await agent.call("GET", "/v1/mesh?wait=0")
            t1 = time.perf_counter()
            await agent.call("GET", "/v1/mesh?wait=0")
            t2 = time.perf_counter()
        finally:
            await tunnel.close()
    finally:
        await coord.admin("DELETE", f"/v1/nodes/{node_id}")
    return {"cold": t1 - t0, "warm": t2 - t1}


async def start_member_tunnel(key: PrivateKey, answer: dict[str, Any], port: int) -> EmbeddedTunnel:
    prefix = ipaddress.ip_network(answer["network"]).prefixlen
    address = ipaddress.ip_interface(f"{answer['address']}/{prefix}")
    config = Config(
        InterfaceConfig(key, addresses=[address], listen_port=port), [], path=answer["node_id"]
    )
    return await EmbeddedTunnel.start(config)


def time_command(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, capture_output=True)
        times.append(time.perf_counter() - t0)
    return times


async def bench_node_start(procs: Processes, root: Path, settings: Settings) -> dict[str, Any]:
    log("1. node start -> first mesh TCP")
    imports = {
        "python_bare": spread(time_command([sys.executable, "-c", "pass"], settings.import_runs)),
        "import_mesh_node": spread(
            time_command([sys.executable, "-c", "import pyralog.mesh.node"], settings.import_runs)
        ),
        "import_cli_and_node": spread(
            time_command(
                [sys.executable, "-c", "import pyralog.cli.main, pyralog.mesh.node"],
                settings.import_runs,
            )
        ),
    }
    coord = await start_coordinator(procs, root / "coordinator")
    token = (
        await coord.admin("POST", "/v1/tokens", {"role": "node", "ttl": "1h", "reusable": True})
    )["token"]
    b_dir = root / "node-b"
    write_node_config(b_dir, "node-b", token, coord.port)
    b = spawn_node(procs, b_dir, "node-b")
    await wait_node_up(b)
    b_address = (await call_socket(b.socket, "GET", "/v1/status"))["addresses"][0]
    log(f"   coordinator pid {coord.pid}, node B at {b_address}")

    baseline = []
    for i in range(settings.start_runs):
        baseline.append(await member_calls(coord, f"ref-{i}"))
    first_boot: list[dict[str, Any]] = []
    restart: list[dict[str, Any]] = []
    for i in range(settings.start_runs):
        node_id = f"new-{i}"
        directory = root / node_id
        write_node_config(directory, node_id, token, coord.port)
        child, run = await one_start(procs, directory, node_id, b_address)
        first_boot.append(run)
        procs.stop(child)
        child, run = await one_start(procs, directory, node_id, b_address)
        restart.append(run)
        procs.stop(child)
        await coord.admin("DELETE", f"/v1/nodes/{node_id}")
        log(
            f"   run {i + 1}/{settings.start_runs}: first boot "
            f"{fmt_ms(first_boot[-1]['to_tcp'])} ms, restart {fmt_ms(restart[-1]['to_tcp'])} ms"
        )
        await asyncio.sleep(0.3)  # B drops the removed member before the next run
    drops = (await coord.admin("GET", "/v1/status"))["drops"]
    procs.stop(b)
    procs.stop(coord.child)

    keys = ("to_first_line", "to_enrolled", "to_up", "to_tcp", "enrollment", "enrolled_to_up",
            "up_to_tcp")  # fmt: skip
    cold = spread([r["cold"] for r in baseline])
    warm = spread([r["warm"] for r in baseline])
    boot = {k: spread([r[k] for r in first_boot]) for k in keys}
    again = {k: spread([r[k] for r in restart]) for k in keys}
    return {
        "imports": imports,
        "coordinator_drops": drops,
        "baseline": {"handshake_and_call": cold, "call": warm, "runs": baseline},
        "first_boot": {"summary": boot, "runs": first_boot},
        "restart": {"summary": again, "runs": restart},
        "ratios": {
            "enrollment_to_handshake_and_call": ratio(boot["enrollment"]["median"], cold["median"]),
            "first_boot_to_tcp_to_handshake_and_call": ratio(
                boot["to_tcp"]["median"], cold["median"]
            ),
            "restart_to_tcp_to_handshake_and_call": ratio(
                again["to_tcp"]["median"], cold["median"]
            ),
            # Interpreter start-up, imports, config and key, before the node logs anything.
            "first_line_share_of_first_boot": ratio(
                boot["to_first_line"]["median"], boot["to_tcp"]["median"]
            ),
        },
    }


# -- 2. membership change -> 50 agents ------------------------------------------------------


@dataclass
class Sim:
    """One simulated member: its tunnel and the node's own Agent on it."""

    node_id: str
    tunnel: EmbeddedTunnel
    agent: Agent
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    reports: asyncio.Task[None] | None = None
    watch: tuple[str, bool] | None = None  # (public key, wanted present)
    seen_at: float | None = None
    last_view_at: float = 0.0

    def on_view(self, view: dict[str, Any]) -> None:
        now = time.perf_counter()
        self.last_view_at = now
        if self.watch is not None and self.seen_at is None:
            key, present = self.watch
            if (key in self.agent.applied) == present:
                self.seen_at = now


async def start_sims(coord: Coordinator, n: int) -> list[Sim]:
    keys = [PrivateKey.generate() for _ in range(n)]
    ports = free_udp_ports(n)
    answers = []
    for i, (key, port) in enumerate(zip(keys, ports, strict=True)):
        answers.append(
            await coord.admin(
                "POST",
                "/v1/nodes",
                {
                    "node_id": f"sim-{i:02d}",
                    "public_key": key.public_key.to_base64(),
                    "endpoint": f"{HOST}:{port}",
                },
            )
        )
    sims = []
    for key, port, answer in zip(keys, ports, answers, strict=True):
        tunnel = await start_member_tunnel(key, answer, port)
        agent = Agent(EmbeddedBackend(tunnel), answer["coordinator"], endpoints=[])
        sim = Sim(answer["node_id"], tunnel, agent)
        agent.on_view = sim.on_view
        await agent.apply_view(None)  # the coordinator as the one peer, as a node starts
        sims.append(sim)
    for sim in sims:  # as MeshNode.start: the watch (the reports: start_reports)
        sim.tasks = [asyncio.create_task(sim.agent.run())]
    return sims


def start_reports(sims: list[Sim]) -> None:
    """Each agent's 10 s status report, as a node runs it. Real nodes start at unrelated
    times: the reports are spread evenly over the period."""
    for i, sim in enumerate(sims):
        phase = i * REPORT_EVERY / len(sims)
        sim.reports = asyncio.create_task(_reports(sim.agent, phase))
        sim.tasks.append(sim.reports)


def stop_reports(sims: list[Sim]) -> None:
    for sim in sims:
        if sim.reports is not None:
            sim.reports.cancel()


async def _reports(agent: Agent, phase: float) -> None:
    await asyncio.sleep(phase)
    await agent.report_loop()


async def until_reported(coord: Coordinator, sims: list[Sim], timeout: float = 60.0) -> float:
    """Until the coordinator holds a report from every agent (a running cluster's state;
    ``cluster status`` shows them); the seconds that took."""
    t0 = time.perf_counter()
    ids = {sim.node_id for sim in sims}
    while True:
        status = await coord.admin("GET", "/v1/status")
        if all(m.get("reported_at") for m in status["members"] if m["node_id"] in ids):
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            raise BenchError(f"not every agent reported within {timeout:g} s")
        await asyncio.sleep(0.5)


async def stop_sims(sims: list[Sim]) -> None:
    pending = {task for sim in sims for task in sim.tasks}
    for _ in range(3):  # bounded, and cancelled again: a lost cancellation cannot hang us
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=2.0)
    if pending:
        log(f"   {len(pending)} agent tasks did not stop when cancelled")
    for sim in sims:
        with contextlib.suppress(Exception):
            await sim.tunnel.close()


async def settle(sims: list[Sim], quiet: float = 1.0, timeout: float = 60.0) -> None:
    """Until every agent has a view and none got one for ``quiet`` seconds."""
    await until(lambda: all(s.agent.updates > 0 for s in sims), timeout, "every agent's first view")
    await until(
        lambda: time.perf_counter() - max(s.last_view_at for s in sims) >= quiet,
        timeout,
        "the agents to settle",
        interval=0.05,
    )


async def change(
    coord: Coordinator,
    sims: list[Sim],
    key: str,
    present: bool,
    admin: tuple[str, str, Any],  # the admin call making the change: method, target, body
    timeout: float = 15.0,  # a long-poll's wait (10 s) and then some
) -> dict[str, Any]:
    for sim in sims:
        sim.watch, sim.seen_at = (key, present), None
    cpu0 = cpu_seconds(coord.pid)
    t0 = time.perf_counter()
    await coord.admin(*admin)
    admin_call = time.perf_counter() - t0
    with contextlib.suppress(BenchError):  # an agent that never sees it is counted, below
        await until(lambda: all(s.seen_at is not None for s in sims), timeout, "", 0.002)
    for sim in sims:
        sim.watch = None
    cpu = cpu_seconds(coord.pid) - cpu0  # includes up to 2 ms after the last agent
    times = [s.seen_at - t0 for s in sims if s.seen_at is not None]
    return {
        **distribution(times),
        "missed": len(sims) - len(times),
        "admin_call": admin_call,
        "coordinator_cpu": cpu,
        "times": times,
    }


async def mesh_rtt(sims: list[Sim], samples: int) -> list[float]:
    times = []
    for i in range(samples):
        agent = sims[(i * 7) % len(sims)].agent
        t0 = time.perf_counter()
        await agent.call("GET", "/v1/mesh?wait=0")
        times.append(time.perf_counter() - t0)
        await asyncio.sleep(0.02)
    return times


async def cpu_window(pid: int, seconds: float) -> dict[str, float | None]:
    c0, s0, w0 = cpu_seconds(pid), time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    c1, s1, w1 = cpu_seconds(pid), time.process_time(), time.perf_counter()
    return {
        "seconds": w1 - w0,
        "coordinator_cpu_s_per_min": per_minute(c1 - c0, w1 - w0),
        "bench_process_cpu_s_per_min": per_minute(s1 - s0, w1 - w0),
    }


async def run_changes(
    coord: Coordinator, sims: list[Sim], count: int, tag: str
) -> dict[str, list[dict[str, Any]]]:
    """``count`` times: add a member, then remove it, each timed at every agent."""
    runs: dict[str, list[dict[str, Any]]] = {"add": [], "remove": []}
    for r in range(count):
        await asyncio.sleep(1.0)  # every agent parked in its next long-poll
        node_id = f"change-{tag}-{r}"
        key = PrivateKey.generate().public_key.to_base64()
        body = {"node_id": node_id, "public_key": key, "endpoint": f"{HOST}:9"}
        add = await change(coord, sims, key, True, ("POST", "/v1/nodes", body))
        await asyncio.sleep(1.0)
        remove = await change(coord, sims, key, False, ("DELETE", f"/v1/nodes/{node_id}", None))
        runs["add"].append(add)
        runs["remove"].append(remove)
        log(
            f"   {tag} {r + 1}/{count}: add p50 {fmt_ms(add['p50'])} max {fmt_ms(add['max'])} "
            f"ms; remove p50 {fmt_ms(remove['p50'])} max {fmt_ms(remove['max'])} ms"
        )
    return runs


def summarize_changes(runs: list[dict[str, Any]], rtt_p50: float | None) -> dict[str, Any]:
    pooled = [t for run in runs for t in run["times"]]
    summary = distribution(pooled)
    return {
        "pooled": summary,
        "per_change": [{k: v for k, v in run.items() if k != "times"} for run in runs],
        "per_change_max": spread([run["max"] for run in runs]),
        "coordinator_cpu_per_change": spread([run["coordinator_cpu"] for run in runs]),
        "ratio_to_rtt": {k: ratio(summary[k], rtt_p50) for k in ("p50", "p95", "max")},
        "times": [run["times"] for run in runs],
    }


async def bench_propagation(procs: Processes, root: Path, settings: Settings) -> dict[str, Any]:
    log(f"2. membership change -> {settings.agents} agents")
    coord = await start_coordinator(procs, root / "coordinator-2")
    empty = await cpu_window(coord.pid, settings.empty_window)
    t0 = time.perf_counter()
    sims = await start_sims(coord, settings.agents)
    try:
        await settle(sims)
        log(f"   {len(sims)} agents long-polling after {time.perf_counter() - t0:.1f} s")
        # A: before any report (small records, no report traffic): the fan-out alone.
        fresh_rtt = await mesh_rtt(sims, settings.rtt_samples)
        fresh = await run_changes(coord, sims, settings.changes, "before-reports")
        # B: the running cluster: every agent reports every 10 s.
        start_reports(sims)
        took = await until_reported(coord, sims)
        log(f"   every agent reported after {took:.1f} s")
        rtt = await mesh_rtt(sims, settings.rtt_samples)
        steady = await run_changes(coord, sims, settings.changes, "reporting")
        await asyncio.sleep(1.0)
        idle = await cpu_window(coord.pid, settings.idle_window)
        stop_reports(sims)  # what the long-polls cost alone
        await asyncio.sleep(1.0)
        polls_only = await cpu_window(coord.pid, settings.polls_only_window)
        failures = sum(s.agent.failures for s in sims)
    finally:
        await stop_sims(sims)
        procs.stop(coord.child)

    # The reference: one round trip while the coordinator is not busy (before any report).
    reference = percentile(fresh_rtt, 50)

    def phase(rtts: list[float], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        return {
            "mesh_call_rtt": {**distribution(rtts), "median": median(rtts), "times": rtts},
            **{name: summarize_changes(v, reference) for name, v in runs.items()},
        }

    return {
        "agents": settings.agents,
        "reporting": phase(rtt, steady),
        "before_reports": phase(fresh_rtt, fresh),
        "idle": {"no_members": empty, "agents": idle, "agents_without_reports": polls_only},
        "agent_failures": failures,
    }


# -- report ---------------------------------------------------------------------------------


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Mesh control plane benchmark ({results['mode']}), {m.get('date')}",
        f"machine: {m.get('cpu_model')} x {m.get('cpus')}, {m.get('os')}, kernel "
        f"{m.get('kernel')}, Python {m.get('python')}, pyralog {m.get('pyralog')}",
        "load average at start / end: "
        + " / ".join(", ".join(f"{x:.2f}" for x in m[k]) for k in ("loadavg_start", "loadavg_end")),
        *(f"NOTE: {n}" for n in results["notes"]),
        "",
    ]
    s = results.get("node_start")
    if s:
        imp = s["imports"]
        lines += ["1. Node start -> first mesh TCP (ms from the spawn; median [min-max])", ""]

        def cell(x: dict[str, Any]) -> str:
            if x["median"] is None:
                return "-"
            return f"{fmt_ms(x['median'])} [{fmt_ms(x['min'])}-{fmt_ms(x['max'])}]"

        stages = (
            ("first log line", "to_first_line"),
            ("enrolled / member", "to_enrolled"),
            ("up", "to_up"),
            ("first mesh TCP (probe answered)", "to_tcp"),
            ("  step: enrollment (enrolling -> enrolled)", "enrollment"),
            ("  step: enrolled -> up", "enrolled_to_up"),
            ("  step: up -> first TCP", "up_to_tcp"),
        )
        rows = [
            [label, cell(s["first_boot"]["summary"][key]), cell(s["restart"]["summary"][key])]
            for label, key in stages
        ]
        lines.append(table(["", "first boot (enrolls)", "restart (member)"], rows))
        base = s["baseline"]
        r = s["ratios"]
        lines += [
            "",
            table(
                ["reference, same run", "median [min-max] ms"],
                [
                    ["python -c pass", cell(imp["python_bare"])],
                    ["python -c 'import pyralog.mesh.node'", cell(imp["import_mesh_node"])],
                    [
                        "python -c 'import pyralog.cli.main, pyralog.mesh.node'",
                        cell(imp["import_cli_and_node"]),
                    ],
                    [
                        "fresh tunnel: handshake + TCP + GET /v1/mesh",
                        cell(base["handshake_and_call"]),
                    ],
                    ["same session: TCP + GET /v1/mesh", cell(base["call"])],
                ],
            ),
            "",
            f"enrollment step = {fmt_x(r['enrollment_to_handshake_and_call'])} a handshake + call; "
            f"first boot to TCP = {fmt_x(r['first_boot_to_tcp_to_handshake_and_call'])}, "
            f"restart to TCP = {fmt_x(r['restart_to_tcp_to_handshake_and_call'])}; "
            f"the node's first log line (interpreter, imports, config, key) comes at "
            f"{100 * (r['first_line_share_of_first_boot'] or 0):.0f}% of first boot to TCP",
            "",
        ]
    p = results.get("propagation")
    if p:
        lines += [
            f"2. Membership change -> {p['agents']} agents (ms from just before the admin call "
            "until the agent's applied peers changed; all changes pooled)",
            "",
        ]
        rows = []
        for label, part, name in (
            ("add", p["reporting"], "add"),
            ("remove", p["reporting"], "remove"),
            ("add, before any report", p["before_reports"], "add"),
            ("remove, before any report", p["before_reports"], "remove"),
        ):
            d, x = part[name]["pooled"], part[name]["ratio_to_rtt"]
            rows.append(
                [
                    label,
                    fmt_ms(d["min"]),
                    fmt_ms(d["p50"]),
                    fmt_ms(d["p95"]),
                    fmt_ms(d["max"]),
                    f"{fmt_x(x['p50'])} / {fmt_x(x['p95'])} / {fmt_x(x['max'])}",
                    fmt_ms(part[name]["coordinator_cpu_per_change"]["median"]),
                    str(d["n"]),
                    str(sum(run["missed"] for run in part[name]["per_change"])),
                ]
            )
        header = ["change", "first", "p50", "p95", "max", "x RTT (p50/p95/max)"]
        lines.append(table([*header, "coord CPU ms", "n", "missed"], rows))
        rtt, fresh = p["reporting"]["mesh_call_rtt"], p["before_reports"]["mesh_call_rtt"]
        idle = p["idle"]
        windows = (
            ("coordinator, no members", idle["no_members"]),
            (f"{p['agents']} agents: long-polls + 10 s reports", idle["agents"]),
            (f"{p['agents']} agents: long-polls only", idle["agents_without_reports"]),
        )
        lines += [
            "",
            "add/remove: the running cluster (every agent reports every 10 s; each member's "
            "coordinator holds its last report); before any report: the same agents just started.",
            f"baseline RTT: one GET /v1/mesh?wait=0 over an agent's tunnel, session up, the "
            f"long-polls parked: p50 {fmt_ms(rtt['p50'])} ms, p95 {fmt_ms(rtt['p95'])} ms "
            f"(before any report: p50 {fmt_ms(fresh['p50'])} ms, p95 {fmt_ms(fresh['p95'])} ms);"
            " x RTT is over the RTT before any report (the coordinator not busy). coord CPU: "
            "the coordinator's CPU from the admin call to the last agent (median over changes).",
            "",
            table(
                ["idle window", "coordinator CPU s/min", "this process CPU s/min", "seconds"],
                [
                    [
                        label,
                        f"{w['coordinator_cpu_s_per_min']:.2f}",
                        f"{w['bench_process_cpu_s_per_min']:.2f}",
                        f"{w['seconds']:.0f}",
                    ]
                    for label, w in windows
                ],
            ),
            f"agent watch failures: {p['agent_failures']}",
        ]
    lines.append(f"\ntotal {results['total_seconds']:.0f} s")
    return "\n".join(lines)


async def run_all(
    procs: Processes, root: Path, settings: Settings, only: set[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "start" in only:
        out["node_start"] = await bench_node_start(procs, root / "start", settings)
    if "propagation" in only:
        out["propagation"] = await bench_propagation(procs, root / "propagation", settings)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (~1 minute)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--only", default="start,propagation", help="start,propagation")
    parser.add_argument("--agents", type=int, default=50, help="simulated members (50)")
    args = parser.parse_args(argv)
    settings = Settings.for_mode(args.quick, args.agents)
    only = set(args.only.split(","))

    from machine import machine_info  # imports lab, which is heavier: not for the tests

    started = time.perf_counter()
    machine = machine_info()
    reap_stale_directories()
    root = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-"))
    procs = Processes()

    def terminate(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    try:
        parts = asyncio.run(run_all(procs, root, settings, only))
    except (BenchError, http.HttpError) as e:
        log(f"mesh benchmark failed: {e}")
        return 1
    except KeyboardInterrupt:
        log("mesh benchmark interrupted; its processes are stopped")
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    machine["loadavg_end"] = list(os.getloadavg())
    results = {
        "benchmark": "mesh",
        "mode": "quick" if args.quick else "full",
        "settings": settings.__dict__,
        "machine": machine,
        "total_seconds": time.perf_counter() - started,
        "notes": [
            f"{machine.get('cpus')} CPUs: the coordinator, the nodes and this process share them; "
            f"in part 2 this one process runs all {settings.agents} tunnels and agents and "
            "competes with the coordinator for CPU, so the tail is partly this process's.",
            "Times are taken in this process (perf_counter); a node's log events when this "
            "process read the line from the node's stderr pipe.",
        ],
        **parts,
    }
    print(render(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
