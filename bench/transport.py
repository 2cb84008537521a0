"""WireGuard against TLS: one replicated Pyralog cluster, four ways of carrying its bytes.

    .venv/bin/python bench/transport.py [--quick] [--out docs/transport_benchmarks.json]
    .venv/bin/python bench/transport.py --summarize docs/transport_benchmarks.json

The network is bench/replab.py's (its own subnet here: 172.29.47.0/24 LAN, 10.29.47.0/24
pyralog-wg tunnels, 10.29.48.0/24 embedded tunnels, which exist only inside processes):
server namespaces a, b, c, client d, etcd e, one LAN bridge. Each unit is a fresh
three-broker cluster (a fresh etcd prefix, replication factor 3, min.insync.replicas=2)
whose node→node and client→node connections run

- ``wg``: over the pyralog-wg interfaces (``pyralog broker`` on the tunnel address);
- ``embedded``: over embedded WireGuard: each server is a ``pyralog node`` (embedded
  backend, static mesh, ``[log] replication = true``, the same etcd) whose Device and
  TCP/IP stack run in the broker's own process, its UDP on the same LAN; the client
  runs its own embedded tunnel (PyralogClient with an EmbeddedNetwork);
- ``tls``: mutual TLS 1.3 on the LAN (``pyralog broker --tls-cert/--tls-key/--tls-ca``,
  a throwaway CA made in the run, bench/certs.py);
- ``plain``: plain TCP on the LAN, the floor.

The same load generator for all (bench/transload.py, PyralogClient): produce
throughput (1 KiB records, acks=all), sequential produce round trips (acks=1, then
acks=all), and fresh connections timed to their first answer: warm (for WireGuard, the
session exists) and, for WireGuard, cold (pyralog-wg: the client's peer removed and
added again before each sample; embedded: a new tunnel per sample, so each pays a
handshake). CPU over the produce window: brokers (embedded: nodes, WireGuard included),
the four pyralog-wg daemons (``wg`` only; idle otherwise), the client. The order of the
transports is reversed every other round; figures are medians over rounds, with ranges.

Needs root (namespaces, TUN), /usr/bin/etcd and wg. Cleans up its namespaces and
processes (bench/lab.py, ``bnb-`` prefix with the harness's pid) on exit and failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import replab  # noqa: E402
from certs import ThrowawayCA  # noqa: E402
from harness import PORT, finish, log, unwind_on_signals  # noqa: E402
from lab import CommandError, Lab, note_daemon_knobs, reap_stale, run_client  # noqa: E402
from replab import (  # noqa: E402
    CLIENT,
    HOST_NUMBER,
    KAFKA_PORT,
    PYRALOG,
    SERVERS,
    Net,
    Proc,
    _start,
    build_net,
    etcd_url,
    foreign_cpu,
    lan_ip,
    start_etcd,
    start_pyralog,
    tunnel_ip,
)
from replication import check_servers  # noqa: E402
from replstats import foreign_delta  # noqa: E402
from stats import fmt  # noqa: E402
from transtats import LABELS, PATHS, order, summarize, tables, unit_figures  # noqa: E402

# Our own subnets: 172.29.47.0/24 LAN, 10.29.47.0/24 pyralog-wg tunnels (replab's lan_ip
# and tunnel_ip read replab.SUBNET, set in main(); replication.py's is 41).
SUBNET = 47
TRANSLOAD = str(BENCH / "transload.py")
EMBEDDED_PORT = 51821  # the embedded tunnels' UDP port, beside pyralog-wg's 51820
TOPIC, LATENCY_TOPIC = "tput", "lat"


def embedded_ip(node: str) -> str:
    return f"10.29.48.{HOST_NUMBER[node]}"


@dataclass(frozen=True)
class Settings:
    quick: bool
    rounds: int
    records: int  # per throughput run
    batch: int  # records per produce batch
    window: int  # batches in flight
    samples: int  # per latency run and acks setting
    connects: int  # warm fresh connections per unit
    cold: int  # cold WireGuard connections per unit
    session_timeout_ms: int

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if quick:
            return cls(True, 1, 5_000, 32, 8, 100, 10, 3, 4000)
        return cls(False, 4, 30_000, 32, 8, 500, 30, 8, 4000)


# -- the embedded cluster ------------------------------------------------------------------


@dataclass
class EmbeddedCluster:
    """Three ``pyralog node`` processes (embedded backend, static mesh) sharing an etcd
    prefix: broker and WireGuard in one process per server."""

    lab: Lab
    net: Net
    configs: dict[str, Path]
    nodes: dict[str, Proc]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{embedded_ip(n)}:{KAFKA_PORT}" for n in SERVERS)

    def start(self, node: str) -> Proc:
        argv = [PYRALOG, "node", "--config", str(self.configs[node])]
        logfile = self.configs[node].with_suffix(".log")
        self.nodes[node] = _start(self.lab, self.net.ns[node], f"node {node}", argv, logfile)
        return self.nodes[node]

    def server_cpu(self) -> float:
        return sum(p.cpu() for p in self.nodes.values())

    def procs(self) -> list[Proc]:
        return list(self.nodes.values())


def _peers(me: str, keys: dict[str, tuple[str, str]], toml: bool) -> str:
    out = []
    for o in (*SERVERS, CLIENT):
        if o == me:
            continue
        if toml:
            out.append(f'[[peer]]\npublic_key = "{keys[o][1]}"\n'
                       f'endpoint = "{lan_ip(o)}:{EMBEDDED_PORT}"\n'
                       f'allowed_ips = ["{embedded_ip(o)}/32"]\n')  # fmt: skip
        else:
            out.append(f"[Peer]\nPublicKey = {keys[o][1]}\n"
                       f"Endpoint = {lan_ip(o)}:{EMBEDDED_PORT}\n"
                       f"AllowedIPs = {embedded_ip(o)}/32\n")  # fmt: skip
    return "\n".join(out)


def start_embedded(lab: Lab, net: Net, tag: str, keys: dict[str, tuple[str, str]],
                   session_timeout_ms: int) -> EmbeddedCluster:  # fmt: skip
    url = etcd_url(tag)
    configs = {}
    for n in SERVERS:
        d = lab.tmp / f"emb-{tag}-{n}"
        d.mkdir()
        key = d / "node.key"
        key.write_text(keys[n][0] + "\n")
        key.chmod(0o600)
        configs[n] = d / "wireguard.toml"
        configs[n].write_text(
            f'[wireguard]\nbackend = "embedded"\n\n[interface]\nprivate_key_file = "{key}"\n'
            f'address = "{embedded_ip(n)}/24"\nlisten_port = {EMBEDDED_PORT}\n\n'
            f"{_peers(n, keys, True)}\n"
            f'[log]\ndata_dir = "{d / "data"}"\nreplication = true\ncluster_store = "{url}"\n'
            f"replication_factor = 3\nmin_insync_replicas = 2\nauto_create_topics = false\n"
            f"session_timeout_ms = {session_timeout_ms}\n"
        )
    cluster = EmbeddedCluster(lab, net, configs, {})
    for n in SERVERS:
        cluster.start(n)
    for n in SERVERS:
        cluster.nodes[n].wait_for("log: replicated", 60)
    return cluster


# -- a session --------------------------------------------------------------------------------


@dataclass
class Session:
    lab: Lab
    net: Net
    s: Settings
    ca: ThrowawayCA
    certs: dict[str, tuple[Path, Path]]  # node -> (cert, key); the client's under CLIENT
    keys: dict[str, tuple[str, str]]  # embedded tunnels' key pairs
    client_conf: Path  # the client's embedded tunnel (wg-quick file)

    def transport_args(self, path: str) -> list[str]:
        if path == "embedded":
            return ["--tunnel", str(self.client_conf)]
        if path == "tls":
            cert, key = self.certs[CLIENT]
            return ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(self.ca.ca)]
        return []

    def load(self, path: str, cmd: str, server: str, args: list[str], timeout: float = 300
             ) -> dict[str, Any]:  # fmt: skip
        argv = [cmd, "--server", server, *args, *self.transport_args(path)]
        return run_client(self.lab, self.net.ns[CLIENT], TRANSLOAD, argv, timeout)

    def start(self, path: str, tag: str) -> Any:
        s = self.s
        if path == "embedded":
            return start_embedded(self.lab, self.net, tag, self.keys, s.session_timeout_ms)
        if path == "wg":
            return start_pyralog(self.lab, self.net, tag, s.session_timeout_ms)

        def tls(node: str) -> list[str]:
            cert, key = self.certs[node]
            return ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(self.ca.ca)]

        extra = tls if path == "tls" else (lambda node: [])
        return start_pyralog(self.lab, self.net, tag, s.session_timeout_ms, lan_ip, extra)

    def reset_wg_session(self, server: str) -> None:
        """Make the client's pyralog-wg forget its session with ``server``: remove the
        peer and add it again, so the next packet to it starts a handshake."""
        d = self.net.daemons[CLIENT]
        lines = d.wg("show", d.ifname, "endpoints").splitlines()
        endpoints = dict(line.split("\t") for line in lines if line)
        key = next(k for k, e in endpoints.items() if e.startswith(f"{lan_ip(server)}:"))
        d.wg("set", d.ifname, "peer", key, "remove")
        d.wg("set", d.ifname, "peer", key, "allowed-ips", f"{tunnel_ip(server)}/32",
             "endpoint", f"{lan_ip(server)}:{PORT}")  # fmt: skip

    def unit(self, path: str, r: int) -> dict[str, Any]:
        s = self.s
        tag = f"{r}-{path}"
        log(f"round {r + 1}: {LABELS[path]}")
        started = time.monotonic()
        cluster = self.start(path, tag)
        try:
            boot = cluster.bootstrap
            first = boot.split(",")[0]
            self.load(path, "create", boot, ["--topic", TOPIC, "--topic", LATENCY_TOPIC], 120)
            start_s = time.monotonic() - started
            ours = self.net.ns_inodes()
            s0, w0, f0 = cluster.server_cpu(), self.net.wg_cpu(), foreign_cpu(ours)
            prod = self.load(path, "produce", boot, ["--topic", TOPIC, "--count", str(s.records),
                             "--batch", str(s.batch), "--window", str(s.window)])  # fmt: skip
            cpu = {"server": cluster.server_cpu() - s0, "wg": self.net.wg_cpu() - w0}
            foreign = foreign_delta(f0, foreign_cpu(ours))
            lat = self.load(path, "latency", boot, ["--topic", LATENCY_TOPIC,
                                                    "--count", str(s.samples)])  # fmt: skip
            warm = self.load(path, "connect", first, ["--count", str(s.connects)])
            cold: list[float] | None = None
            if path == "wg":
                cold = []
                for _ in range(s.cold):
                    self.reset_wg_session(SERVERS[0])
                    cold += self.load(path, "connect", first, ["--count", "1"])["samples"]
            elif path == "embedded":
                cold = self.load(path, "connect", first, ["--count", str(s.cold),
                                                          "--fresh-tunnel"])["samples"]  # fmt: skip
            self.net.check_alive()
            check_servers("pyralog", cluster.procs())
        finally:
            for p in cluster.procs():
                self.lab.stop(p.proc)
            for n in SERVERS:
                shutil.rmtree(self.lab.tmp / f"pyralog-{tag}-{n}", ignore_errors=True)
                shutil.rmtree(self.lab.tmp / f"emb-{tag}-{n}", ignore_errors=True)
        u = unit_figures(path, prod, cpu, lat, warm, cold)
        u.update(round=r, cluster_start_s=start_s, produce=prod, latency=lat,
                 connect_warm_samples_us=warm["samples"], cpu_s=cpu,
                 foreign_processes_s=foreign["processes_s"])  # fmt: skip
        log(f"  {fmt(u['records_per_s'])} records/s ({fmt(u['mb_per_s'])} MB/s), "
            f"{fmt(u['cpu_s_per_gb'])} CPU s/GB; acks=1 p50/p99 {fmt(u['acks1_p50_us'])}/"
            f"{fmt(u['acks1_p99_us'])} µs, acks=all {fmt(u['acksall_p50_us'])}/"
            f"{fmt(u['acksall_p99_us'])} µs; connect {fmt(u['connect_us'])} µs warm, "
            f"{fmt(u['connect_cold_us'])} µs cold; other processes "
            f"{fmt(foreign['processes_s'])} CPU s during produce")  # fmt: skip
        return u


def make_session(lab: Lab, s: Settings) -> Session:
    log("building namespaces a, b, c (servers), d (client), e (etcd), a LAN and a full mesh "
        "of pyralog-wg tunnels (172.29.47.0/24, 10.29.47.0/24)")  # fmt: skip
    net = build_net(lab)
    start_etcd(lab, net)
    ca = ThrowawayCA.create(lab.tmp / "certs", "transport bench CA")
    certs = {n: ca.issue(f"broker-{n}", [lan_ip(n)]) for n in SERVERS}
    certs[CLIENT] = ca.issue("client", [lan_ip(CLIENT)])
    keys = {n: lab.genkey() for n in (*SERVERS, CLIENT)}
    conf = lab.write(
        "client-embedded.conf",
        f"[Interface]\nPrivateKey = {keys[CLIENT][0]}\nAddress = {embedded_ip(CLIENT)}/32\n"
        f"ListenPort = {EMBEDDED_PORT}\n\n{_peers(CLIENT, keys, False)}",
    )
    return Session(lab, net, s, ca, certs, keys, conf)


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one short round (~2-3 min)")
    p.add_argument("--out", type=Path, help="write the results JSON here")
    p.add_argument("--rounds", type=int, help="override the rounds (normal: 4)")
    p.add_argument("--records", type=int, help="override records per throughput run")
    p.add_argument("--paths", help=f"a comma-separated subset of {','.join(PATHS)}")
    p.add_argument("--summarize", type=Path, metavar="JSON", help="no run: redo a summary")
    return p.parse_args(argv)


def settings(a: argparse.Namespace) -> Settings:
    s = Settings.make(a.quick)
    overrides = {"rounds": a.rounds, "records": a.records}
    return Settings(**{**asdict(s), **{k: v for k, v in overrides.items() if v}})


def chosen_paths(a: argparse.Namespace) -> tuple[str, ...]:
    if not a.paths:
        return PATHS
    paths = tuple(p.strip() for p in a.paths.split(","))
    bad = [p for p in paths if p not in PATHS]
    if bad:
        raise SystemExit(f"--paths: unknown {', '.join(bad)} (choose from {', '.join(PATHS)})")
    return paths


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.summarize:
        results = json.loads(a.summarize.read_text())
        results["summary"] = summarize(results["units"])
        a.summarize.write_text(json.dumps(results, indent=1) + "\n")
        print(tables(results["summary"]))
        return 0
    s, paths = settings(a), chosen_paths(a)
    if os.geteuid() != 0:
        print("bench/transport.py: must run as root (network namespaces)", file=sys.stderr)
        return 2
    missing = [t for t in ("ip", "wg", "/usr/bin/etcd") if not shutil.which(t)]
    if missing:
        print(f"bench/transport.py: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    unwind_on_signals()
    replab.SUBNET = SUBNET
    from machine import machine_info

    stale = reap_stale()
    if stale:
        log(f"removed leftovers of an earlier run: {', '.join(stale)}")
    knobs = note_daemon_knobs()
    started = time.monotonic()
    machine = machine_info()
    units: list[dict[str, Any]] = []
    failure = None
    try:
        with Lab() as lab:
            session = make_session(lab, s)
            try:
                for r in range(s.rounds):
                    for path in order(r):
                        if path in paths:
                            units.append(session.unit(path, r))
            except CommandError as e:
                failure = f"FAILED: {e}"
    except KeyboardInterrupt:
        log("interrupted: cleaned up; no results written")
        return 130
    machine["loadavg_end"] = list(os.getloadavg())
    results = {
        "benchmark": "transport",
        "mode": "quick" if s.quick else "normal",
        "settings": {
            **asdict(s),
            "record_bytes": 1024,
            "replication_factor": 3,
            "min_insync_replicas": 2,
            "paths": list(paths),
            **({"daemon_knobs": knobs} if knobs else {}),
        },
        "machine": machine,
        "total_seconds": time.monotonic() - started,
        "failure": failure,
        "summary": summarize(units),
        "units": units,
    }
    print(tables(results["summary"]))
    return finish(results, a.out, "transport_benchmarks.json")


if __name__ == "__main__":
    sys.exit(main())
