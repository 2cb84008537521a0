"""Replicated logs over WireGuard: Pyralog RF=3 against NATS JetStream R3, between namespaces.

    .venv/bin/python bench/replication.py [--quick] [--out docs/replication_benchmarks.json]
    .venv/bin/python -m bench.replication ...      (the same)

The network (bench/replab.py): three server namespaces a, b, c, a client namespace d and
an etcd namespace e on one LAN (a bridge), and a full mesh of pyralog-wg tunnels between
a, b, c and d. Each round, interleaved (Pyralog then NATS, NATS then Pyralog in the next
round), one unit per system:

- **Pyralog**: three fresh ``pyralog broker --cluster-store etcd://... --replication-factor
  3 --min-insync-replicas 2`` (one per server namespace, listening on its tunnel address
  only, so followers fetch from the leader through WireGuard), a fresh etcd prefix of
  the session's one etcd member; topics of one partition, replication factor 3,
  min.insync.replicas=2, created with confluent-kafka's AdminClient.
- **NATS**: three fresh ``nats-server`` (JetStream, file storage) in the same
  namespaces, clients on the tunnel address, cluster routes over the LAN with mutual TLS
  (a throwaway CA made at run time); streams with ``num_replicas: 3``. NATS clients list
  the stream leader's server first, so that, as a Kafka client does with the partition
  leader, they publish to the leader (client connections: no TLS, through WireGuard).

In each unit, from the client namespace (bench/logload.py and bench/replload.py, one
subprocess each): produce ``records`` 1 KiB records with acks=all (NATS: async publishes
with acks, ``window`` in flight), read them all back from the start, ``samples``
sequential produce-ack round trips (and read those back), then the failover measure:
a producer offering ``rate`` records/s (acks=all; idempotent for Kafka, message ids for
NATS) while the partition's (stream's) leader is killed with SIGKILL ``failovers``
times; each time, the time from the kill to the first acknowledgement after the outage
(bench/replstats.py, ``failover_figures``); then the killed server is restarted and we
wait for it to be in sync again (in the ISR; a current stream replica). At the end
everything the failover producer had acknowledged must read back.

Every run checks what was read back against what was acknowledged (count, order,
content; for the failover runs, that every acknowledged record is there); a missing
record stops the benchmark with a LostRecords error (exit status 1, results in
``*.failed.json``). CPU over each timed window: the client process, the three servers,
etcd (Pyralog's store), the four WireGuard daemons; and the machine's other load (this VM
is shared): every process outside our namespaces, irq and softirq time, steal. Before each
unit the harness waits (``quiet_wait_s`` at most) for other processes to calm down.
``--txqueuelen N`` (diagnosis) sets the tunnel interfaces' kernel queue.

``--summarize FILE`` redoes a results file's summary from its units (no measurement).

Needs root (namespaces, TUN), nats-server, /usr/bin/etcd, wg, confluent-kafka and nats-py
(scripts/bootstrap.sh). Uses only namespaces, interfaces and addresses of its own
(bench/lab.py's ``bnb-`` prefix, 172.29.41.0/24, 10.29.41.0/24) and removes them, and
every process it started, when it ends, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(BENCH) not in sys.path:  # the bench modules import one another by bare name
    sys.path.insert(0, str(BENCH))

from harness import finish, log, unwind_on_signals  # noqa: E402
from lab import CLK_TCK, CommandError, Lab, reap_stale, run, run_client  # noqa: E402
from logstats import (  # noqa: E402
    WARMUP,
    LostRecords,
    check_consumed,
    check_latency,
    check_produced,
    counter_delta,
    cpu_totals,
    latency_figures,
    net_counters,
    other_load,
    per_100k,
    rate_figures,
)
from replab import (  # noqa: E402
    CLIENT,
    NATS_PORT,
    SERVERS,
    LogWatch,
    Net,
    Proc,
    build_net,
    foreign_cpu,
    make_certs,
    nats_name,
    start_etcd,
    start_nats,
    start_pyralog,
    tunnel_ip,
)
from replstats import (  # noqa: E402
    SYSTEMS,
    check_failover_readback,
    failover_figures,
    foreign_delta,
    irq_seconds,
    summarize,
    tables,
)
from stats import fmt  # noqa: E402

LOGLOAD = str(BENCH / "logload.py")
REPLLOAD = str(BENCH / "replload.py")
TOPIC, LATENCY_TOPIC, FAILOVER_TOPIC = "bench", "lat", "failover"
STREAM, LATENCY_STREAM, FAILOVER_STREAM = "BENCH", "LAT", "FAILOVER"
# What the surviving servers log after a leader's kill, timed from the kill (seen in
# their logs within a few ms): the controller's election of a new leader and the new
# leader taking over (Pyralog); the stream's new leader and a new meta leader (NATS).
EVENTS = {
    "pyralog": {
        "controller_took_over": "is the controller",
        "elected": "{name}-0: broker",  # "... broker N leads at epoch E (was M)"
        "leading": "{name}-0: leading at epoch",
    },
    "nats": {
        "leading": "new stream leader for '$G > {name}'",
        "meta_leader": "new metadata leader",
    },
}
RECOVER_LIMIT = 60.0  # seconds after a kill before a failover counts as stalled
QUIET_CORES = 0.2  # other processes' load (cores) under which a unit may start
REJOIN_LIMIT = 90.0  # seconds after a restart to be in sync again


@dataclass(frozen=True)
class Settings:
    quick: bool
    rounds: int
    records: int  # per Pyralog throughput run
    nats_records: int  # per NATS throughput run
    samples: int  # per latency run (after logload.WARMUP unrecorded ones)
    window: int  # NATS async publishes in flight
    fetch_batch: int  # NATS pull consumer batch
    failovers: int  # leader kills per unit
    rate: float  # records/s offered by the failover producer
    steady_s: float  # seconds of steady writes before each kill
    after_s: float  # seconds of writes after the recovery, before the restart
    session_timeout_ms: int  # Pyralog brokers' --session-timeout-ms
    quiet_wait_s: float  # at most this long before a unit for other work to calm down

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if quick:
            return cls(True, 1, 20_000, 10_000, 300, 256, 1000, 2, 1000.0, 2.0, 1.0, 4000, 30.0)
        return cls(False, 4, 100_000, 50_000, 2_000, 256, 1000, 3, 1000.0, 3.0, 1.0, 4000, 240.0)


# -- client subprocesses ----------------------------------------------------------------------


def client(lab: Lab, net: Net, script: str, args: list[str], timeout: float) -> dict[str, Any]:
    """One bench/logload.py or bench/replload.py run in the client namespace
    (lab.run_client)."""
    return run_client(lab, net.ns[CLIENT], script, args, timeout)


class Producer:
    """The failover producer (replload.py kafka-failover / nats-failover) in the client
    namespace, and its latest progress line."""

    def __init__(self, lab: Lab, net: Net, args: list[str], out: Path) -> None:
        self.lab, self.out = lab, out
        argv = ["ip", "netns", "exec", net.ns[CLIENT], sys.executable, REPLLOAD, *args]
        argv += ["--out", str(out)]
        self.errfile = lab.tmp / "producer.err"
        with open(self.errfile, "wb") as err:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                start_new_session=True,
            )  # fmt: skip
        lab.procs.append(self.proc)
        self.latest: dict[str, Any] = {}
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.latest = json.loads(line)

    def check(self) -> None:
        if self.proc.poll() is not None:
            tail = self.errfile.read_text(errors="replace")[-2000:]
            raise CommandError(f"the failover producer exited ({self.proc.returncode}): {tail}")

    def wait_steady(self, seconds: float, rate: float) -> None:
        """``seconds`` of writes, acks arriving at the end (within 0.5 s)."""
        deadline = time.monotonic() + seconds + RECOVER_LIMIT
        start = time.monotonic()
        while True:
            self.check()
            now = time.monotonic()
            last = self.latest.get("last_ack")
            if now - start >= seconds and last is not None and now - last < 0.5:
                return
            if now > deadline:
                raise CommandError(f"the failover producer gets no acks: {self.latest}")
            time.sleep(0.05)

    def wait_recovered(
        self, kill: float, acked_at_kill: int, need: int, watch: Any = None
    ) -> float | None:
        """Until ``need`` more acks than at the kill came, the latest after it; the time
        it took, or None after RECOVER_LIMIT s (a stall). ``watch()`` is called on the
        way (the servers' log lines)."""
        while True:
            if watch is not None:
                watch()
            self.check()
            p = self.latest
            if p.get("acked", 0) >= acked_at_kill + need and (p.get("last_ack") or 0) > kill:
                return time.monotonic() - kill
            if time.monotonic() - kill > RECOVER_LIMIT:
                return None
            time.sleep(0.02)

    def stop(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write("stop\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=150)
        finally:
            with contextlib.suppress(ValueError):
                self.lab.procs.remove(self.proc)
        self.check_exit()
        return json.loads(self.out.read_text())

    def check_exit(self) -> None:
        if self.proc.returncode != 0:
            tail = self.errfile.read_text(errors="replace")[-2000:]
            raise CommandError(f"the failover producer failed ({self.proc.returncode}): {tail}")


# -- server health -------------------------------------------------------------------------------

_NATS_STAMP = re.compile(r"^\[\d+\] \S+ \S+ ")


def server_notes(system: str, procs: list[Proc]) -> dict[str, Any]:
    """What the servers logged beyond routine lines: per level, a count and the first
    distinct lines (timestamps and pids cut, so repeats fold)."""
    out: dict[str, Any] = {}
    for p in procs:
        counts: dict[str, int] = {}
        first: list[str] = []
        for line in p.text().splitlines():
            if system == "pyralog":
                m = re.match(r"pyralog broker: (WARNING|ERROR|CRITICAL): ", line)
                level = m.group(1) if m else ("Traceback" if "Traceback" in line else None)
            else:
                m = re.search(r"\[(WRN|ERR|FTL)\]", line)
                level = m.group(1) if m else ("panic" if "panic:" in line else None)
            if level is None:
                continue
            counts[level] = counts.get(level, 0) + 1
            text = _NATS_STAMP.sub("", line)
            text = re.sub(r"\(attempt \d+\)", "(attempt N)", text)
            if text not in first and len(first) < 8:
                first.append(text)
        if counts:
            out[p.name] = {"counts": counts, "first": first}
    return out


def check_servers(system: str, procs: list[Proc]) -> None:
    """Raise if a server died or logged a crash (a problem to report, not to work around)."""
    for p in procs:
        if not p.alive():
            raise CommandError(f"{p.name} exited ({p.proc.returncode}): {p.text()[-1500:]}")
        text = p.text()
        bad = "Traceback" in text if system == "pyralog" else re.search(r"\[FTL\]|panic:", text)
        if bad:
            raise CommandError(f"{p.name} logged a crash:\n{text[-3000:]}")


# -- one unit ---------------------------------------------------------------------------------


@dataclass
class Session:
    lab: Lab
    net: Net
    s: Settings
    etcd: Proc
    certs: dict[str, Path]
    units: list[dict[str, Any]] = field(default_factory=list)
    route_tls: list[dict[str, Any]] = field(default_factory=list)

    def net_counters(self) -> dict[str, dict[str, int]]:
        out = {}
        for node, d in self.net.daemons.items():
            snmp = run(["ip", "netns", "exec", self.net.ns[node], "cat", "/proc/net/snmp"])
            link = run(["ip", "-n", self.net.ns[node], "-s", "-j", "link", "show", d.ifname])
            out[node] = net_counters(snmp, link)
        return out

    def phase(self, cluster: Any, system: str, script: str, args: list[str], timeout: float,
              ) -> dict[str, Any]:  # fmt: skip
        store = system == "pyralog"
        s0, e0, w0 = cluster.server_cpu(), self.etcd.cpu() if store else 0.0, self.net.wg_cpu()
        n0 = self.net_counters()
        ours = self.net.ns_inodes()
        f0 = foreign_cpu(ours)
        stat0 = Path("/proc/stat").read_text()
        res = client(self.lab, self.net, script, args, timeout)
        stat1 = Path("/proc/stat").read_text()
        f1 = foreign_cpu(ours)
        m0, m1 = cpu_totals(stat0, CLK_TCK), cpu_totals(stat1, CLK_TCK)
        res["server_cpu_s"] = cluster.server_cpu() - s0
        res["store_cpu_s"] = (self.etcd.cpu() - e0) if store else None
        res["wg_cpu_s"] = self.net.wg_cpu() - w0
        both = {**res, "server_cpu_s": res["server_cpu_s"] + (res["store_cpu_s"] or 0.0)}
        res["machine"] = other_load(m0, m1, both)
        res["machine"]["irq_s"] = irq_seconds(stat1, CLK_TCK) - irq_seconds(stat0, CLK_TCK)
        res["machine"]["foreign"] = foreign_delta(f0, f1)
        res["net"] = counter_delta(n0, self.net_counters())
        self.net.check_alive()
        check_servers(system, cluster.procs())
        return res

    def wait_quiet(self) -> dict[str, float]:
        """Before a unit: wait (at most ``quiet_wait_s``) until processes outside our
        namespaces use under QUIET_CORES for a 2 s sample; this machine is shared."""
        ours = self.net.ns_inodes()
        started = time.monotonic()
        said = False
        while True:
            f0 = foreign_cpu(ours)
            time.sleep(2.0)
            load = foreign_delta(f0, foreign_cpu(ours))["processes_s"] / 2.0
            waited = time.monotonic() - started - 2.0
            if load < QUIET_CORES or waited >= self.s.quiet_wait_s:
                if said or load >= QUIET_CORES:
                    log(f"  other processes use {load:.2f} cores (waited {waited:.0f} s)")
                return {"waited_s": waited, "other_cores": load}
            if not said:
                log(f"  other processes use {load:.2f} cores: waiting for them to calm down")
                said = True

    def unit(self, system: str, r: int) -> None:
        s = self.s
        what = f"round {r + 1} {system}"
        log(what)
        quiet = self.wait_quiet()
        tag = f"{r}-{system}"
        started = time.perf_counter()
        if system == "pyralog":
            cluster: Any = start_pyralog(self.lab, self.net, tag, s.session_timeout_ms)
        else:
            cluster = start_nats(self.lab, self.net, tag, self.certs)
            if not self.route_tls:  # once a session: each probe leaves an [ERR] line
                self.route_tls = cluster.check_route_tls(self.certs)
                log(f"  NATS routes: mutual TLS ({self.route_tls[0]['protocol']}), checked")
        try:
            self._unit(system, r, cluster, started, what)
            self.units[-1]["before_unit"] = quiet
        finally:
            for p in cluster.procs():
                self.lab.stop(p.proc)
            for path in getattr(cluster, "data", {}).values():
                shutil.rmtree(path, ignore_errors=True)
            for node in SERVERS:
                shutil.rmtree(self.lab.tmp / f"nats-{tag}-{node}", ignore_errors=True)

    def _unit(self, system: str, r: int, cluster: Any, started: float, what: str) -> None:
        s = self.s
        kafka = system == "pyralog"
        if kafka:
            boot = cluster.bootstrap
            made = client(self.lab, self.net, REPLLOAD, [
                "kafka-create", "--server", boot, "--topic", TOPIC, "--topic", LATENCY_TOPIC,
                "--topic", FAILOVER_TOPIC, "--replicas", "3", "--min-isr", "2"], 120)  # fmt: skip
            leaders = {p["topic"]: p["leader"] for p in made["partitions"]}
            servers = {t: boot for t in (TOPIC, LATENCY_TOPIC, FAILOVER_TOPIC)}
        else:
            made = client(self.lab, self.net, REPLLOAD, [
                "nats-create", "--server", ",".join(cluster.urls), "--stream", STREAM,
                "--stream", LATENCY_STREAM, "--stream", FAILOVER_STREAM, "--replicas", "3",
            ], 120)  # fmt: skip
            leaders = {i["stream"]: i["leader"] for i in made["streams"]}
            servers = {name: leader_first(leader) for name, leader in leaders.items()}
        start_s = time.perf_counter() - started
        n, m = (s.records if kafka else s.nats_records), s.samples
        limit = 120 + n / 200  # seconds: far beyond any healthy run (200 records/s)
        if kafka:
            main, lat = ["--topic", TOPIC], ["--topic", LATENCY_TOPIC]
            cmds = ("kafka-produce", "kafka-consume", "kafka-latency")
            extra = ["--acks", "all"]
            addr = {TOPIC: servers[TOPIC], LATENCY_TOPIC: servers[LATENCY_TOPIC]}
        else:
            main, lat = ["--stream", STREAM], ["--stream", LATENCY_STREAM]
            cmds = ("nats-publish", "nats-consume", "nats-latency")
            extra = ["--window", str(s.window), "--batch", str(s.fetch_batch), "--replicas", "3"]
            addr = {TOPIC: servers[STREAM], LATENCY_TOPIC: servers[LATENCY_STREAM]}

        def step(cmd: str, names: list[str], server: str, count: int) -> dict[str, Any]:
            args = [cmd, "--server", server, *names, "--count", str(count), *extra]
            return self.phase(cluster, system, LOGLOAD, args, limit)

        prod = step(cmds[0], main, addr[TOPIC], n)
        check_produced(prod, n, system, f"{what}: produce")
        cons = step(cmds[1], main, addr[TOPIC], n)
        check_consumed(cons, n, f"{what}: consume")
        late = step(cmds[2], lat, addr[LATENCY_TOPIC], m)
        check_latency(late, m, system, f"{what}: latency")
        back = step(cmds[1], lat, addr[LATENCY_TOPIC], m + WARMUP)
        check_consumed(back, m + WARMUP, f"{what}: latency read-back")
        failover = self.failover(system, cluster, servers, what)
        notes = server_notes(system, cluster.procs())
        unit = {
            "round": r,
            "system": system,
            "slot": str(r),
            "cluster_start_s": start_s,
            "leaders_at_start": leaders,
            "produce": figures(rate_figures(prod, n), prod, n),
            "consume": figures(rate_figures(cons, n), cons, n),
            "latency": figures(latency_figures(late), late, None),
            "readback_records": back["consumed"],
            "failover": failover,
            "server_log_notes": notes,
        }
        self.units.append(unit)
        p, c, lt = unit["produce"], unit["consume"], unit["latency"]
        fo = [k["failover_s"] for k in failover["kills"]]
        log(
            f"  produce {fmt(p['records_per_s'])}/s ({fmt(p['mb_per_s'])} MB/s; servers "
            f"{fmt(p['server_cpu_s'])} CPU s); read back {fmt(c['records_per_s'])}/s; latency "
            f"p50 {fmt(lt['p50_us'])} p99 {fmt(lt['p99_us'])} µs; failover "
            f"{', '.join('-' if x is None else f'{x:.2f}' for x in fo)} s; all "
            f"{n + m + WARMUP:,} + {failover['readback']['acked']:,} acknowledged records "
            f"read back; during produce: other processes {fmt(p['foreign_processes_s'])} CPU s,"
            f" irq+softirq {fmt(p['irq_s'])} s, steal {fmt(p['steal_s'])} s"
        )

    # -- failover ---------------------------------------------------------------------------

    def describe(self, system: str, cluster: Any, name: str) -> dict[str, Any]:
        """The partition's (stream's) leader as a server namespace, its in-sync replicas
        (namespaces) and the controller (Pyralog) or JetStream meta leader (NATS)."""
        if system == "pyralog":
            d = client(self.lab, self.net, REPLLOAD, [
                "kafka-describe", "--server", cluster.bootstrap, "--topic", name], 60)  # fmt: skip
            p = d["partitions"][0]
            by_id = {i + 1: n for i, n in enumerate(SERVERS)}
            return {
                "leader": by_id.get(p["leader"]),
                "in_sync": sorted(by_id[b] for b in p.get("isr", []) if b in by_id),
                "controller": by_id.get(d["controller"]),
            }
        d = client(self.lab, self.net, REPLLOAD, [
            "nats-describe", "--server", ",".join(cluster.urls), "--stream", name], 60)  # fmt: skip
        info = d["streams"][0]
        by_name = {nats_name(n): n for n in SERVERS}
        in_sync = [by_name.get(info["leader"])] if info["leader"] else []
        in_sync += [by_name[r["name"]] for r in info["replicas"] if r["current"]]
        metas = {(cluster.jsz(n).get("meta_cluster") or {}).get("leader")
                 for n in SERVERS if cluster.servers[n].alive()}  # fmt: skip
        metas.discard(None)
        return {
            "leader": by_name.get(info["leader"]),
            "in_sync": sorted(x for x in in_sync if x),
            "controller": by_name.get(next(iter(metas))) if len(metas) == 1 else None,
        }

    def failover(self, system: str, cluster: Any, servers: dict[str, str], what: str
                 ) -> dict[str, Any]:  # fmt: skip
        s = self.s
        kafka = system == "pyralog"
        name = FAILOVER_TOPIC if kafka else FAILOVER_STREAM
        state = self.describe(system, cluster, name)
        if kafka:
            args = ["kafka-failover", "--server", servers[name], "--topic", name]
        else:
            # The leader first: the producer is connected to the server about to die.
            args = ["nats-failover", "--server", leader_first(nats_name(state["leader"])),
                    "--stream", name]  # fmt: skip
        out = self.lab.tmp / f"failover-{system}.json"
        producer = Producer(self.lab, self.net, [*args, "--rate", str(s.rate)], out)
        kills: list[dict[str, Any]] = []
        problems: list[str] = []
        try:
            for k in range(s.failovers):
                producer.wait_steady(s.steady_s, s.rate)
                state = self.describe(system, cluster, name)
                victim = state["leader"]
                if victim is None:
                    raise CommandError(f"{what}: {name} has no leader before kill {k + 1}")
                connected = producer.latest.get("server")
                acked_at_kill = producer.latest.get("acked", 0)
                survivors = [p for n, p in cluster.by_node.items() if n != victim]
                logs = LogWatch(survivors)
                events: dict[str, float] = {}
                kill = cluster.by_node[victim].kill9()
                log(f"  kill -9 {system} leader {victim} ({k + 1}/{s.failovers})")

                def watch(logs: LogWatch = logs, events: dict = events, kill: float = kill) -> None:
                    for t, _, line in logs.poll():
                        for key, pattern in EVENTS[system].items():
                            if key not in events and pattern.format(name=name) in line:
                                events[key] = t - kill

                need = max(50, int(s.rate / 2))
                seen = producer.wait_recovered(kill, acked_at_kill, need, watch)
                watch()
                if seen is None:
                    problems.append(
                        f"kill {k + 1} ({victim}): no acknowledgement within {RECOVER_LIMIT:.0f} s"
                        f" (producer: {producer.latest})"
                    )
                    log(f"  STALL: {problems[-1]}")
                time.sleep(s.after_s)
                after = self.describe(system, cluster, name)
                restart = time.monotonic()
                proc = cluster.start(victim)
                proc.wait_for("listening on" if kafka else "Server is ready", 60)
                rejoin = self.wait_in_sync(system, cluster, name, victim, restart)
                kills.append({
                    "victim": victim,
                    "victim_was_controller": state["controller"] == victim,
                    "controller_before": state["controller"],
                    "client_connected_to": connected,
                    "new_leader": after["leader"],
                    "in_sync_after_kill": after["in_sync"],
                    "kill_at": kill,
                    "restart_at": restart,
                    "rejoin_s": rejoin,
                    "acked_at_kill": acked_at_kill,
                    "server_events_s": events,
                })  # fmt: skip
                if rejoin is None:
                    problems.append(f"kill {k + 1}: {victim} not back in sync in {REJOIN_LIMIT} s")
            result = producer.stop()
        finally:
            if producer.proc.poll() is None:
                self.lab.stop(producer.proc)
        times = [t for _, t, _ in result["acked"]]
        for k in kills:
            k.update(failover_figures(times, k["kill_at"], k["restart_at"]))
            if k["failover_s"] is not None:
                seen = ", ".join(f"{e} {t:.2f} s" for e, t in k["server_events_s"].items())
                log(
                    f"  {k['victim']} killed: first ack after {k['failover_s']:.2f} s "
                    f"(pause {fmt(k['outage_s'])} s; new leader {k['new_leader']}; logged: "
                    f"{seen or '-'}); in sync again {fmt(k['rejoin_s'])} s after its restart"
                )
        back = client(self.lab, self.net, REPLLOAD, [
            f"{'kafka' if kafka else 'nats'}-readback", "--server", servers.get(name, ""),
            "--topic" if kafka else "--stream", name,
            "--out", str(self.lab.tmp / f"readback-{system}.json")], 300)  # fmt: skip
        read = json.loads(Path(back["written"]).read_text())
        acked = [i for i, _, _ in result["acked"]]
        check = check_failover_readback(acked, read["indices"], f"{what}: failover", ordered=kafka)
        problems += check["problems"]
        if result.get("error_count") and kafka:
            problems.append(f"{result['error_count']} delivery errors, e.g. {result['errors'][:3]}")
        if result.get("unflushed"):
            problems.append(f"{result['unflushed']} records never acknowledged")
        return {
            "topic": name,
            "kills": kills,
            "producer": {
                k: v for k, v in result.items() if k not in ("acked", "errors")
            } | {"acked": len(acked), "first_errors": result.get("errors", [])[:5]},
            "readback": {**check, "log_start": read.get("log_start"),
                         "log_end": read.get("log_end")},
            "problems": problems,
        }  # fmt: skip

    def wait_in_sync(self, system: str, cluster: Any, name: str, node: str, since: float
                     ) -> float | None:  # fmt: skip
        while time.monotonic() - since < REJOIN_LIMIT:
            state = self.describe(system, cluster, name)
            if len(state["in_sync"]) == 3 and node in state["in_sync"]:
                return time.monotonic() - since
            time.sleep(0.25)
        return None


def leader_first(leader: str | None) -> str:
    """The NATS servers' client URLs, the named one (``n1``..``n3``) first."""
    order = sorted(SERVERS, key=lambda n: nats_name(n) != leader)
    return ",".join(f"{tunnel_ip(n)}:{NATS_PORT}" for n in order)


def figures(base: dict[str, Any], res: dict[str, Any], count: int | None) -> dict[str, Any]:
    """logstats.rate_figures (or latency_figures) plus etcd's CPU (Pyralog's cluster
    store) and the machine's other load: other processes' CPU, irq and softirq time."""
    machine = res.get("machine") or {}
    out = {
        **base,
        "store_cpu_s": res.get("store_cpu_s"),
        "foreign_processes_s": (machine.get("foreign") or {}).get("processes_s"),
        "foreign_kernel_threads_s": (machine.get("foreign") or {}).get("kernel_threads_s"),
        "irq_s": machine.get("irq_s"),
    }
    if count is not None:
        out["store_cpu_per_100k"] = per_100k(res.get("store_cpu_s"), count)
    return out


# -- the session ------------------------------------------------------------------------------


def versions(data: Path) -> dict[str, Any]:
    import importlib.metadata as md

    import confluent_kafka

    def out(argv: list[str], pattern: str) -> str | None:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        found = re.search(pattern, done.stdout + done.stderr)
        return found.group(1) if found else None

    return {
        "confluent_kafka": md.version("confluent-kafka"),
        "librdkafka": confluent_kafka.libversion()[0],
        "nats_py": md.version("nats-py"),
        "nats_server": out(["nats-server", "--version"], r"v(\d\S*)"),
        "etcd": out(["/usr/bin/etcd", "--version"], r"etcd Version: (\S+)"),
        "kio": md.version("kio"),
        "data_filesystem": out(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", str(data)], r"(.+)"),
    }


def rich_table(summary: dict[str, Any]) -> None:
    """The headline figures as a table on the terminal (stdout)."""
    from replstats import HEADER, rows
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Replicated logs over WireGuard: Pyralog RF=3 / NATS JetStream R3")
    for i, h in enumerate(HEADER):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows(summary):
        table.add_row(*row)
    Console(width=140).print(table)


def resummarize(path: Path) -> int:
    results = json.loads(path.read_text())
    results["summary"] = summarize(results["units"])
    path.write_text(json.dumps(results, indent=1) + "\n")
    rich_table(results["summary"])
    print(tables(results["summary"]))
    return 0


def order(r: int) -> tuple[str, str]:
    """The systems of round ``r`` in the order they run: flipped every round."""
    return SYSTEMS if r % 2 == 0 else SYSTEMS[::-1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one short round (~2 min)")
    p.add_argument("--out", type=Path, help="write the results JSON here")
    p.add_argument("--rounds", type=int, help="override the rounds (normal: 4)")
    p.add_argument("--records", type=int, help="override records per Pyralog throughput run")
    p.add_argument("--nats-records", type=int, help="override records per NATS throughput run")
    p.add_argument("--failovers", type=int, help="override leader kills per unit (normal: 3)")
    p.add_argument("--only", choices=SYSTEMS, help="one system only (diagnosis: no ratios)")
    p.add_argument(
        "--txqueuelen",
        type=int,
        help="diagnosis: set the tunnel interfaces' kernel queue (pyralog-wg sets 64)",
    )
    p.add_argument(
        "--summarize", type=Path, metavar="JSON", help="no run: redo a results file's summary"
    )
    return p.parse_args(argv)


def settings(a: argparse.Namespace) -> Settings:
    s = Settings.make(a.quick)
    overrides = {
        "rounds": a.rounds,
        "records": a.records,
        "nats_records": a.nats_records,
        "failovers": a.failovers,
    }
    return Settings(**{**asdict(s), **{k: v for k, v in overrides.items() if v}})


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.summarize:
        return resummarize(a.summarize)
    s = settings(a)
    if os.geteuid() != 0:
        print("bench/replication.py: must run as root (network namespaces)", file=sys.stderr)
        return 2
    needed = ("ip", "wg", "nats-server", "/usr/bin/etcd")
    missing = [t for t in needed if not shutil.which(t)]
    if missing:
        print(f"bench/replication.py: missing {', '.join(missing)} (scripts/bootstrap.sh)",
              file=sys.stderr)  # fmt: skip
        return 2

    unwind_on_signals()
    from machine import machine_info

    stale = reap_stale()
    if stale:
        log(f"removed leftovers of an earlier run: {', '.join(stale)}")
    started = time.monotonic()
    machine = machine_info()
    failure = None
    units: list[dict[str, Any]] = []
    session: Session | None = None
    try:
        with Lab() as lab:
            machine.update(versions(lab.tmp))
            log("building namespaces a, b, c (servers), d (client), e (etcd), a LAN and a full "
                "mesh of pyralog-wg tunnels")  # fmt: skip
            net = build_net(lab)
            if a.txqueuelen:
                for node, d in net.daemons.items():
                    run(["ip", "-n", net.ns[node], "link", "set", d.ifname, "txqueuelen",
                         str(a.txqueuelen)])  # fmt: skip
                log(f"tunnel interfaces' txqueuelen set to {a.txqueuelen} (diagnosis)")
            etcd = start_etcd(lab, net)
            certs = make_certs(lab.tmp / "certs")
            session = Session(lab, net, s, etcd, certs, units)
            try:
                for r in range(s.rounds):
                    for system in order(r):
                        if a.only in (None, system):
                            session.unit(system, r)
            except LostRecords as e:
                failure = f"LOST RECORDS: {e}"
            except CommandError as e:
                failure = f"FAILED: {e}"
    except KeyboardInterrupt:
        log("interrupted: cleaned up; no results written")
        return 130
    machine["loadavg_end"] = list(os.getloadavg())
    results = {
        "benchmark": "replication",
        "mode": "quick" if s.quick else "normal",
        "settings": {
            **asdict(s),
            "record_bytes": 1024,
            "replication_factor": 3,
            "min_insync_replicas": 2,
            "nats_client_tls": False,
            "nats_route_tls": True,
            "txqueuelen": a.txqueuelen,
        },
        "machine": machine,
        "total_seconds": time.monotonic() - started,
        "failure": failure,
        "nats_route_tls_probe": session.route_tls if session is not None else [],
        "summary": summarize(units),
        "units": units,
    }
    rich_table(results["summary"])
    print(tables(results["summary"]))
    for u in units:
        for p in u["failover"]["problems"]:
            log(f"PROBLEM: round {u['round'] + 1} {u['system']}: {p}")
    return finish(results, a.out, "replication_benchmarks.json")


if __name__ == "__main__":
    sys.exit(main())
