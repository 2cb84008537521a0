"""The log broker against NATS JetStream: throughput, latency and CPU, loopback and tunnel.

    .venv/bin/python bench/log.py [--quick] [--out docs/log_benchmarks.json] [--wg py|go]
    .venv/bin/python -m bench.log ...       (the same)

For each round, interleaved (Pyralog, NATS, Pyralog, NATS, ...; the order in each pair
flips every round), for each Pyralog configuration (topic flush policy interval or always,
producer acks 1 or all) and each transport:

- a fresh ``pyralog broker`` (its own data directory), then, in client subprocesses
  (bench/logload.py, confluent-kafka): produce ``records`` 1 KiB records (throughput),
  read them back from offset 0 (consume throughput), then ``samples`` sequential
  produce-ack round trips into a second topic (latency), read back too;
- a fresh ``nats-server -js`` (file storage in its own directory, one replica), the same
  with nats-py and ``nats_records`` records (fewer: the Python client is slower, and runs
  of either system should last seconds): async publishes with acks, ``window`` in flight;
  a pull consumer; sequential publish-ack. CPU is compared per 100,000 records.

Transports: **loopback** (server and client in namespace A, 127.0.0.1) and **tunnel**
(server in A listening on its tunnel address only, client in namespace B, a veth link
between them and a WireGuard daemon in each: pyralog-wg, or wireguard-go with ``--wg go``).

Every run checks that what was read back is exactly what was acknowledged (count, order,
content); any difference stops the benchmark with a LostRecords error (exit status 1).
Beside each figure: the client process's CPU seconds over the timed window (all threads;
its whole-process total from wait4(2) is in the JSON), the server process's and, over the
tunnel, both WireGuard daemons'; the machine's steal time (a shared VM), and over the
tunnel the packets lost (TCP retransmits, TUN queue and UDP buffer drops). Readers also
record their longest waits between two deliveries, so a stall shows in the JSON.

``--summarize FILE`` redoes a results file's summary from its runs (no measurement).

Needs root (namespaces, TUN), nats-server, wireguard-go and wg (scripts/bootstrap.sh
installs them), confluent-kafka and nats-py (the test extras). Uses only namespaces,
interfaces and addresses of its own (bench/lab.py: ``bnb-`` prefix, 172.29.40.0/24,
10.29.40.0/24) and removes them, and every process it started, when it ends, also on
failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(BENCH) not in sys.path:  # the bench modules import one another by bare name
    sys.path.insert(0, str(BENCH))

from harness import finish, log, unwind_on_signals  # noqa: E402
from lab import (  # noqa: E402
    CLK_TCK,
    LONG_NAMES,
    CommandError,
    Lab,
    cpu_seconds,
    reap_stale,
    run,
    run_client,
)
from logstats import (  # noqa: E402
    NATS_CONFIG,
    PYRALOG_CONFIGS,
    TRANSPORTS,
    WARMUP,
    LostRecords,
    check_consumed,
    check_latency,
    check_produced,
    config_name,
    counter_delta,
    cpu_totals,
    fmt,
    latency_figures,
    net_counters,
    other_load,
    rate_figures,
    summarize,
    tables,
)
from pairs import Pair, build_pair  # noqa: E402

PYRALOG = str(Path(sys.executable).with_name("pyralog"))
LOADGEN = str(BENCH / "logload.py")
KAFKA_PORT = 9092
NATS_PORT = 4222
SUBNET = 40  # 172.29.40.0/24 underlay, 10.29.40.0/24 tunnel
TOPIC, LATENCY_TOPIC = "bench", "lat"
STREAM, LATENCY_STREAM = "BENCH", "LAT"


@dataclass(frozen=True)
class Settings:
    quick: bool
    rounds: int
    records: int  # per Pyralog throughput run
    nats_records: int  # per NATS throughput run (nats-py is slower: runs of similar length)
    samples: int  # per latency run (after logload.WARMUP unrecorded ones)
    window: int  # NATS publishes in flight
    fetch_batch: int  # NATS pull consumer batch
    wg: str  # "py" (pyralog-wg) or "go" (wireguard-go), both sides of the tunnel

    @classmethod
    def make(cls, quick: bool, wg: str = "py") -> Settings:
        if quick:
            return cls(True, 1, 40_000, 20_000, 300, 256, 1000, wg)
        return cls(False, 3, 200_000, 100_000, 2_000, 256, 1000, wg)


# -- processes ------------------------------------------------------------------------------


class Server:
    def __init__(self, name: str, proc: subprocess.Popen, logfile: Path, data: Path) -> None:
        self.name, self.proc, self.logfile, self.data = name, proc, logfile, data

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def check(self) -> None:
        """Raise if the server died or logged a traceback or an error (a server problem
        to report, not to work around)."""
        if self.proc.poll() is not None:
            raise CommandError(
                f"{self.name} exited ({self.proc.returncode}): {self.log_text()[-1500:]}"
            )
        text = self.log_text()
        if "Traceback" in text or re.search(r"\[ERR\]|\[FTL\]|panic:", text):
            raise CommandError(f"{self.name} logged an error:\n{text[-3000:]}")

    def notes(self) -> list[str]:
        """Log lines other than the usual start-up ones: warnings, kept in the results."""
        usual = ("pyralog broker: listening", "[INF]")
        return [
            line
            for line in self.log_text().splitlines()
            if line.strip() and not any(u in line for u in usual)
        ][:20]


def wait_for_line(server: Server, pattern: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while pattern not in server.log_text():
        if server.proc.poll() is not None or time.monotonic() > deadline:
            raise CommandError(f"{server.name} did not start: {server.log_text()[-1500:]}")
        time.sleep(0.05)


def start_pyralog(lab: Lab, ns: str, host: str, flush: str, tag: str) -> Server:
    data = lab.tmp / f"pyralog-{tag}"
    logfile = lab.tmp / f"pyralog-{tag}.log"
    argv = [PYRALOG, "broker", "--data", str(data), "--listen", f"{host}:{KAFKA_PORT}"]
    argv += ["--flush", flush, "--no-auto-create"]
    with open(logfile, "wb") as out:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = lab.popen(ns, argv, stdout=out, stderr=out, env=env)
    server = Server("pyralog broker", proc, logfile, data)
    wait_for_line(server, "listening on")
    for topic in (TOPIC, LATENCY_TOPIC):
        create = [PYRALOG, "topic", "create", topic, "-b", f"{host}:{KAFKA_PORT}"]
        run(["ip", "netns", "exec", ns, *create, "--config", f"pyralog.flush={flush}"], timeout=30)
    return server


def start_nats(lab: Lab, ns: str, host: str, tag: str) -> Server:
    data = lab.tmp / f"nats-{tag}"
    logfile = lab.tmp / f"nats-{tag}.log"
    argv = ["nats-server", "-js", "-sd", str(data), "-a", host, "-p", str(NATS_PORT)]
    with open(logfile, "wb") as out:
        proc = lab.popen(ns, argv, stdout=out, stderr=out)
    server = Server("nats-server", proc, logfile, data)
    wait_for_line(server, "Server is ready")
    return server


def stop_server(lab: Lab, server: Server) -> None:
    lab.stop(server.proc)
    shutil.rmtree(server.data, ignore_errors=True)


def client(lab: Lab, ns: str, args: list[str], timeout: float) -> dict[str, Any]:
    """One bench/logload.py run in ``ns`` (lab.run_client)."""
    return run_client(lab, ns, LOADGEN, args, timeout)


# -- one unit: a fresh server, throughput, read-back, latency -------------------------------


@dataclass
class Where:
    transport: str
    server_ns: str
    client_ns: str
    host: str


class Bench:
    def __init__(self, lab: Lab, s: Settings, pair: Pair | None) -> None:
        self.lab, self.s, self.pair = lab, s, pair
        self.runs: list[dict[str, Any]] = []

    def wg_cpu(self) -> float:
        if self.pair is None:
            return 0.0
        return sum(d.cpu() for d in self.pair.daemon.values())

    def net_counters(self) -> dict[str, dict[str, int]]:
        """Per side (a: server, b: client): TCP retransmitted segments, UDP receive-buffer
        drops and drops at the WireGuard interface's kernel queue (TUN tx)."""
        assert self.pair is not None
        out = {}
        for side, ns in self.pair.ns.items():
            snmp = run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"])
            link = run(["ip", "-n", ns, "-s", "-j", "link", "show", self.pair.daemon[side].ifname])
            out[side] = net_counters(snmp, link)
        return out

    def phase(
        self, server: Server, where: Where, args: list[str], timeout: float, tunnel: bool
    ) -> dict[str, Any]:
        s0, w0 = server.cpu(), self.wg_cpu() if tunnel else 0.0
        n0 = self.net_counters() if tunnel else None
        m0 = cpu_totals(Path("/proc/stat").read_text(), CLK_TCK)
        res = client(self.lab, where.client_ns, args, timeout)
        m1 = cpu_totals(Path("/proc/stat").read_text(), CLK_TCK)
        res["server_cpu_s"] = server.cpu() - s0
        res["wg_cpu_s"] = self.wg_cpu() - w0 if tunnel else None
        res["machine"] = other_load(m0, m1, res)
        if n0 is not None:
            res["net"] = counter_delta(n0, self.net_counters())
        if self.pair is not None and tunnel:
            self.pair.check_alive()
        server.check()
        return res

    def unit(self, system: str, flush: str, acks: str, where: Where, r: int, slot: str) -> None:
        s, tunnel = self.s, where.transport == "tunnel"
        config = config_name(flush, acks) if system == "pyralog" else NATS_CONFIG
        what = f"round {r + 1} {where.transport} {system} {config}"
        log(what)
        tag = f"{r}-{where.transport}-{system}-{flush}-{acks}"
        started = time.perf_counter()
        if system == "pyralog":
            server = start_pyralog(self.lab, where.server_ns, where.host, flush, tag)
        else:
            server = start_nats(self.lab, where.server_ns, where.host, tag)
        start_s = time.perf_counter() - started
        addr = ["--server", f"{where.host}:{KAFKA_PORT if system == 'pyralog' else NATS_PORT}"]
        n, m = (s.records if system == "pyralog" else s.nats_records), s.samples
        limit = 60 + n / 1000  # seconds: far beyond any healthy run (1,000 records/s)
        try:
            if system == "pyralog":
                main, lat = ["--topic", TOPIC], ["--topic", LATENCY_TOPIC]
                cmds = ("kafka-produce", "kafka-consume", "kafka-latency")
                extra = ["--acks", acks]
            else:
                main, lat = ["--stream", STREAM], ["--stream", LATENCY_STREAM]
                cmds = ("nats-publish", "nats-consume", "nats-latency")
                extra = ["--window", str(s.window), "--batch", str(s.fetch_batch)]

            def step(cmd: str, names: list[str], count: int) -> dict[str, Any]:
                args = [cmd, *addr, *names, "--count", str(count), *extra]
                return self.phase(server, where, args, limit, tunnel)

            prod = step(cmds[0], main, n)
            check_produced(prod, n, system, f"{what}: produce")
            cons = step(cmds[1], main, n)
            check_consumed(cons, n, f"{what}: consume")
            late = step(cmds[2], lat, m)
            check_latency(late, m, system, f"{what}: latency")
            back = step(cmds[1], lat, m + WARMUP)
            check_consumed(back, m + WARMUP, f"{what}: latency read-back")
            notes = server.notes()
        finally:
            stop_server(self.lab, server)
        unit = {
            "round": r,
            "transport": where.transport,
            "system": system,
            "config": config,
            "slot": slot,
            "server_start_s": start_s,
            "produce": rate_figures(prod, n),
            "consume": rate_figures(cons, n),
            "latency": latency_figures(late),
            "readback_records": back["consumed"],
            "server_log_notes": notes,
        }
        self.runs.append(unit)
        p, c, lt = unit["produce"], unit["consume"], unit["latency"]
        log(
            f"  produce {fmt(p['records_per_s'])}/s (client CPU {fmt(p['client_cpu_s'])} s, "
            f"server {fmt(p['server_cpu_s'])} s); consume {fmt(c['records_per_s'])}/s; "
            f"latency p50 {fmt(lt['p50_us'])} p99 {fmt(lt['p99_us'])} µs; all "
            f"{n + m + WARMUP:,} records read back"
        )


def versions(data: Path) -> dict[str, Any]:
    import importlib.metadata as md

    import confluent_kafka

    def out(argv: list[str], pattern: str) -> str | None:
        try:
            text = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
        found = re.search(pattern, text)
        return found.group(1) if found else None

    return {
        "confluent_kafka": md.version("confluent-kafka"),
        "librdkafka": confluent_kafka.libversion()[0],
        "nats_py": md.version("nats-py"),
        "nats_server": out(["nats-server", "--version"], r"v(\d\S*)"),
        "kio": md.version("kio"),
        "data_filesystem": out(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", str(data)], r"(.+)"),
    }


def resummarize(path: Path) -> int:
    """Recompute the summary of a results file from its runs (as this version of
    logstats.py summarizes), rewrite it and print the tables: no measurement."""
    results = json.loads(path.read_text())
    for run_ in results["runs"]:
        for phase in ("produce", "consume", "latency"):
            machine = run_[phase].get("machine") or {}
            run_[phase]["other_cpu_s"] = machine.get("other_s")
            run_[phase]["steal_s"] = machine.get("steal_s")
    results["summary"] = summarize(results["runs"])
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(tables(results["summary"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one short round (~75 s)")
    p.add_argument("--out", type=Path, help="write the results JSON here")
    p.add_argument("--wg", choices=["py", "go"], default="py", help="tunnel daemons (py)")
    p.add_argument("--rounds", type=int, help="override the rounds (full: 3)")
    p.add_argument("--records", type=int, help="override records per Pyralog throughput run")
    p.add_argument("--nats-records", type=int, help="override records per NATS throughput run")
    p.add_argument("--only", default=",".join(TRANSPORTS), help="loopback,tunnel")
    p.add_argument(
        "--summarize", type=Path, metavar="JSON", help="no run: redo a results file's summary"
    )
    a = p.parse_args(argv)
    if a.summarize:
        return resummarize(a.summarize)
    s = Settings.make(a.quick, a.wg)
    overrides = {"rounds": a.rounds, "records": a.records, "nats_records": a.nats_records}
    s = Settings(**{**asdict(s), **{k: v for k, v in overrides.items() if v}})
    transports = [t for t in TRANSPORTS if t in a.only.split(",")]
    if os.geteuid() != 0:
        print("bench/log.py: must run as root (network namespaces)", file=sys.stderr)
        return 2
    missing = [t for t in ("ip", "wg", "nats-server", "wireguard-go") if not shutil.which(t)]
    if missing:
        print(f"bench/log.py: missing {', '.join(missing)} (scripts/bootstrap.sh)", file=sys.stderr)
        return 2

    unwind_on_signals()
    from machine import machine_info

    stale = reap_stale()
    if stale:
        log(f"removed leftovers of an earlier run: {', '.join(stale)}")
    started = time.monotonic()
    machine = machine_info()
    failure = None
    with Lab() as lab:
        machine.update(versions(lab.tmp))
        name = f"{s.wg}-{s.wg}"
        log(f"building namespaces A and B, {LONG_NAMES[s.wg]} on both sides")
        pair = build_pair(lab, SUBNET, name, s.wg, s.wg, iperf=False)
        bench = Bench(lab, s, pair)
        where = {
            "loopback": Where("loopback", pair.ns["a"], pair.ns["a"], "127.0.0.1"),
            "tunnel": Where("tunnel", pair.ns["a"], pair.ns["b"], pair.tunnel_ip["a"]),
        }
        try:
            for r in range(s.rounds):
                for flush, acks in PYRALOG_CONFIGS:
                    for transport in transports:
                        slot = f"{r}-{transport}-{flush}-{acks}"
                        order = ("pyralog", "nats") if r % 2 == 0 else ("nats", "pyralog")
                        for system in order:
                            bench.unit(system, flush, acks, where[transport], r, slot)
        except LostRecords as e:
            failure = f"LOST RECORDS: {e}"
        except CommandError as e:
            failure = f"FAILED: {e}"
        except KeyboardInterrupt:
            log("interrupted: cleaned up; no results written")
            return 130
    machine["loadavg_end"] = list(os.getloadavg())
    results = {
        "benchmark": "log",
        "mode": "quick" if s.quick else "full",
        "settings": {**asdict(s), "record_bytes": 1024, "transports": transports},
        "machine": machine,
        "total_seconds": time.monotonic() - started,
        "failure": failure,
        "summary": summarize(bench.runs),
        "runs": bench.runs,
    }
    print(tables(results["summary"]))
    return finish(results, a.out, "log_benchmarks.json")


if __name__ == "__main__":
    sys.exit(main())
