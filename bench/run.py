"""Data-plane benchmark: pyralog-wg against wireguard-go, in one command.

    .venv/bin/python bench/run.py [--quick] [--out docs/benchmarks.json]

Builds pairs of network namespaces joined by a veth link, one WireGuard implementation in
each (py = pyralog-wg, go = wireguard-go), and measures for the pairs py-py, go-go and
py-go (both directions):

- TCP throughput (iperf3), several runs per direction, interleaved across pairs, and the
  daemons' CPU seconds (utime + stime) per GB moved during those runs;
- UDP packet rate at a small and a full-MTU payload (iperf3 -u -b 0), received packets/s
  and loss;
- ping round trip p50/p99, idle and while an iperf3 TCP stream runs the same way;

then embedded mode (bench/embedded.py): TCP throughput through ``pyralog forward``
(WireGuard and a userspace TCP/IP stack in one process) against kernel TCP over
wireguard-go on the same path, both directions, and the forwarder's CPU seconds per GB;

then, per implementation:

- handshakes per second a responder completes (bench/hsload.py: many initiator
  identities, one source address each, cookie replies handled);
- resident memory (VmRSS) with 1, 100 and 10,000 configured peers, idle;

and the sans-IO core alone (bench/core.py). Every figure is also given as a ratio to
wireguard-go (go-go) measured in the same run. Results go to JSON; bench/render.py turns
them into docs/BENCHMARKS.md and docs/benchmarks.png.

Needs root, iperf3, ping, ip, wg and wireguard-go. Uses only namespaces, interfaces and
addresses of its own (``bn`` prefix, 172.29.0.0/16, 10.29.0.0/16) and removes them all
when it ends, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import core  # noqa: E402
import embedded  # noqa: E402
import hsload  # noqa: E402
from lab import LONG_NAMES, CommandError, Daemon, Lab, reap_stale, run  # noqa: E402

PAIRS = (("go-go", "go", "go"), ("py-py", "py", "py"), ("py-go", "py", "go"))
COLUMNS = ("py-py", "go-go", "py→go", "go→py")
REFERENCE = "go-go"
PORT = 51820
IPERF_PORT = 5201
# 64 bytes, and the largest UDP payload that fits the tunnel MTU of 1420 without
# fragmenting (1420 - 20 IPv4 - 8 UDP). A 1400-byte payload would be 1428-byte packets,
# split in two by the sender's IP layer, so it would measure fragmentation instead.
UDP_SIZES = (64, 1392)
MEMORY_PEERS = (1, 100, 10_000)
SHOW_TIMEOUT = 20  # seconds to wait for `wg show IF peers` with 10,000 peers


class Skip(Exception):
    """A measure could not be taken; the message says why (kept in the results)."""


@dataclass
class Settings:
    quick: bool
    tcp_runs: int
    tcp_seconds: int
    udp_runs: int
    udp_seconds: int
    pings: int
    ping_interval: float
    hs_identities: int
    hs_warmup: float
    hs_seconds: float
    settle: float

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if quick:
            return cls(True, 1, 3, 1, 2, 100, 0.01, 128, 1.0, 2.0, 1.0)
        return cls(False, 3, 10, 2, 5, 200, 0.01, 512, 1.0, 4.0, 2.0)


def log(msg: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {msg}", file=sys.stderr, flush=True)


# -- statistics ---------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def med(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


# -- machine ------------------------------------------------------------------------------


def machine_info() -> dict:
    def version(argv: list[str], pattern: str) -> str | None:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        m = re.search(pattern, out.stdout + out.stderr)
        return m.group(1) if m else None

    cpu = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_total = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024

    import cryptography
    import nacl

    import pyralog

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu,
        "cpus": os.cpu_count(),
        "memory_bytes": mem_total,
        "kernel": platform.release(),
        "os": _os_release(),
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "pynacl": getattr(nacl, "__version__", None),
        "pyralog": pyralog.__version__,
        "wireguard_go": version(["wireguard-go", "--version"], r"wireguard-go (v\S+)"),
        "iperf3": version(["iperf3", "--version"], r"iperf (\S+)"),
        "wg": version(["wg", "--version"], r"wireguard-tools (v\S+)"),
        "loadavg_start": list(os.getloadavg()),
        "other_netns_at_start": _other_namespaces(),
    }


def _os_release() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return None


def _other_namespaces() -> int:
    out = run(["ip", "netns", "list"], check=False)
    return sum(1 for line in out.splitlines() if line.strip() and not line.startswith("bnb-"))


# -- pairs --------------------------------------------------------------------------------


@dataclass
class Pair:
    name: str
    impl: dict[str, str]  # side ("a"/"b") -> "py"/"go"
    ns: dict[str, str]
    daemon: dict[str, Daemon]
    tunnel_ip: dict[str, str]
    servers: dict[str, subprocess.Popen] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @staticmethod
    def other(side: str) -> str:
        return "b" if side == "a" else "a"

    def column(self, side: str) -> str:
        """The results column for traffic sent from ``side``."""
        if self.impl["a"] == self.impl["b"]:
            return self.name
        return f"{self.impl[side]}→{self.impl[self.other(side)]}"

    def direction(self, side: str) -> str:
        return f"{self.impl[side]}({side})→{self.impl[self.other(side)]}({self.other(side)})"

    def check_alive(self) -> None:
        for side, d in self.daemon.items():
            if not d.alive():
                msg = (
                    f"{LONG_NAMES[d.impl]} ({side} side of {self.name}) exited with status "
                    f"{d.proc.returncode}; log: {d.log_tail(5)!r}"
                )
                if msg not in self.failures:
                    self.failures.append(msg)
                raise Skip(msg)


def build_pair(lab: Lab, k: int, name: str, a_impl: str, b_impl: str) -> Pair:
    short = {"go-go": "g", "py-py": "p", "py-go": "m"}[name]
    ns = {"a": lab.netns(f"{name}-a"), "b": lab.netns(f"{name}-b")}
    under = {"a": f"172.29.{k}.1", "b": f"172.29.{k}.2"}
    tunnel = {"a": f"10.29.{k}.1", "b": f"10.29.{k}.2"}
    lab.veth(
        ns["a"],
        lab.if_name(f"x{short}a"),
        f"{under['a']}/24",
        ns["b"],
        lab.if_name(f"x{short}b"),
        f"{under['b']}/24",
    )
    impl = {"a": a_impl, "b": b_impl}
    tun_short = {"go-go": "gg", "py-py": "pp", "py-go": "pg"}[name]
    daemons = {s: lab.daemon(ns[s], impl[s], f"{tun_short}{s}") for s in "ab"}
    keys = {s: lab.genkey() for s in "ab"}
    for s in "ab":
        o = Pair.other(s)
        d = daemons[s]
        keyfile = lab.write(f"{d.ifname}.key", keys[s][0] + "\n")
        d.wg(
            "set",
            d.ifname,
            "private-key",
            str(keyfile),
            "listen-port",
            str(PORT),
            "peer",
            keys[o][1],
            "allowed-ips",
            f"{tunnel[o]}/32",
            "endpoint",
            f"{under[o]}:{PORT}",
        )
        run(["ip", "-n", ns[s], "addr", "add", f"{tunnel[s]}/24", "dev", d.ifname])
        run(["ip", "-n", ns[s], "link", "set", d.ifname, "up"])
    pair = Pair(name, impl, ns, daemons, tunnel)
    out = run(
        [
            "ip",
            "netns",
            "exec",
            ns["a"],
            "ping",
            "-n",
            "-c",
            "3",
            "-i",
            "0.2",
            "-w",
            "15",
            tunnel["b"],
        ],
        check=False,
        timeout=30,
    )
    if " 0 received" in out or "received" not in out:
        raise CommandError(f"{name}: no ping through the tunnel: {out.strip()[-200:]}")
    for s in "ab":
        pair.servers[s] = start_iperf_server(lab, ns[s])
    time.sleep(0.3)
    return pair


def start_iperf_server(lab: Lab, ns: str) -> subprocess.Popen:
    return lab.popen(ns, ["iperf3", "-s", "-p", str(IPERF_PORT)])


def restart_iperf_server(lab: Lab, pair: Pair, side: str) -> None:
    lab.stop(pair.servers[side])
    pair.servers[side] = start_iperf_server(lab, pair.ns[side])
    time.sleep(0.3)


def iperf(lab: Lab, pair: Pair, side: str, seconds: float, extra: list[str]) -> dict:
    """iperf3 client in ``side``'s namespace to the other side's server; parsed JSON."""
    dst = pair.tunnel_ip[pair.other(side)]
    argv = [
        "ip",
        "netns",
        "exec",
        pair.ns[side],
        "iperf3",
        "-c",
        dst,
        "-p",
        str(IPERF_PORT),
        "-J",
        "-t",
        str(seconds),
        "--connect-timeout",
        "3000",
        *extra,
    ]
    last = ""
    for attempt in range(2):
        pair.check_alive()
        try:
            out = run(argv, check=False, timeout=seconds + 30)
            data = json.loads(out) if out.strip() else {"error": "no output"}
        except (subprocess.TimeoutExpired, json.JSONDecodeError) as e:
            data = {"error": f"{type(e).__name__}: {e}"}
        if "error" not in data:
            return data
        last = data["error"]
        if attempt == 0:
            restart_iperf_server(lab, pair, pair.other(side))
    pair.check_alive()
    raise Skip(f"iperf3 {pair.direction(side)} failed: {last}")


def tcp_run(lab: Lab, pair: Pair, side: str, seconds: int) -> dict:
    cpu0 = {s: pair.daemon[s].cpu() for s in "ab"}
    data = iperf(lab, pair, side, seconds, [])
    cpu = {s: pair.daemon[s].cpu() - cpu0[s] for s in "ab"}
    end = data["end"]
    received = end["sum_received"]
    moved = received["bytes"]
    sender_cpu = cpu[side]
    receiver_cpu = cpu[pair.other(side)]
    return {
        "bits_per_second": received["bits_per_second"],
        "bytes": moved,
        "seconds": received["seconds"],
        "retransmits": end.get("sum_sent", {}).get("retransmits"),
        "cpu_seconds_sender_daemon": sender_cpu,
        "cpu_seconds_receiver_daemon": receiver_cpu,
        "cpu_seconds_per_gb": (sender_cpu + receiver_cpu) / (moved / 1e9) if moved else None,
    }


def udp_run(lab: Lab, pair: Pair, side: str, seconds: int, size: int) -> dict:
    cpu0 = {s: pair.daemon[s].cpu() for s in "ab"}
    data = iperf(lab, pair, side, seconds, ["-u", "-b", "0", "-l", str(size)])
    cpu = {s: pair.daemon[s].cpu() - cpu0[s] for s in "ab"}
    end = data["end"]
    sent = end["sum_sent"]
    received = end["sum_received"]
    packets = received.get("packets", sent.get("packets", 0))
    lost = received.get("lost_packets", 0)
    got = max(0, packets - lost)
    secs = received.get("seconds") or sent.get("seconds") or seconds
    return {
        "payload_bytes": size,
        "sent_packets": packets,
        "lost_packets": lost,
        "received_packets": got,
        "seconds": secs,
        "sent_pps": packets / secs,
        "received_pps": got / secs,
        "loss_percent": 100.0 * lost / packets if packets else None,
        "cpu_seconds_sender_daemon": cpu[side],
        "cpu_seconds_receiver_daemon": cpu[pair.other(side)],
    }


_PING_TIME = re.compile(r"time=([\d.]+) ms")


def ping_samples(pair: Pair, side: str, count: int, interval: float) -> dict:
    pair.check_alive()
    dst = pair.tunnel_ip[pair.other(side)]
    out = run(
        [
            "ip",
            "netns",
            "exec",
            pair.ns[side],
            "ping",
            "-n",
            "-c",
            str(count),
            "-i",
            str(interval),
            "-W",
            "1",
            dst,
        ],
        check=False,
        timeout=count * interval + 30,
    )
    rtts = [float(m) for m in _PING_TIME.findall(out)]
    return {"sent": count, "received": len(rtts), "rtt_ms": rtts}


def ping_under_load(lab: Lab, pair: Pair, side: str, count: int, interval: float) -> dict:
    """Ping from ``side`` while an iperf3 TCP stream runs from ``side`` to the other."""
    pair.check_alive()
    seconds = math.ceil(count * interval * 1.5) + 3
    dst = pair.tunnel_ip[pair.other(side)]
    load = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            pair.ns[side],
            "iperf3",
            "-c",
            dst,
            "-p",
            str(IPERF_PORT),
            "-t",
            str(seconds),
            "-J",
            "--connect-timeout",
            "3000",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lab.procs.append(load)
    try:
        time.sleep(1.0)
        result = ping_samples(pair, side, count, interval)
        try:
            out, _ = load.communicate(timeout=seconds + 30)
            data = json.loads(out)
            result["load_bits_per_second"] = data["end"]["sum_received"]["bits_per_second"]
        except (subprocess.TimeoutExpired, json.JSONDecodeError, KeyError) as e:
            result["load_error"] = f"iperf3 load stream: {type(e).__name__}: {e}"
            restart_iperf_server(lab, pair, pair.other(side))
    finally:
        lab.stop(load)
    return result


def ping_summary(samples: list[dict]) -> dict:
    rtts = [r for s in samples for r in s["rtt_ms"]]
    sent = sum(s["sent"] for s in samples)
    got = sum(s["received"] for s in samples)
    return {
        "p50_ms": percentile(rtts, 50),
        "p99_ms": percentile(rtts, 99),
        "sent": sent,
        "received": got,
        "loss_percent": 100.0 * (sent - got) / sent if sent else None,
    }


def spread(runs: list[dict], key: str) -> dict:
    values = [r[key] for r in runs if r.get(key) is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": med(values), "min": min(values), "max": max(values), "n": len(values)}


def attempt(errors: list[str], what: str, fn, *args, **kw):
    """Run one measure; on failure note why and go on with the next."""
    try:
        return fn(*args, **kw)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        msg = f"{what}: {e}" if isinstance(e, Skip | CommandError) else f"{what}: {e!r}"
        log(f"FAILED {msg}")
        if not isinstance(e, Skip | CommandError):
            traceback.print_exc(file=sys.stderr)
        errors.append(msg)
        return None


def measure_pairs(s: Settings, results: dict, errors: list[str]) -> None:
    raw: dict = {}
    with Lab() as lab:
        pairs: list[Pair] = []
        for k, (name, a, b) in enumerate(PAIRS, start=1):
            log(f"building {name} (a={LONG_NAMES[a]}, b={LONG_NAMES[b]})")
            pair = attempt(errors, f"set-up of {name}", build_pair, lab, k, name, a, b)
            if pair is not None:
                pairs.append(pair)
                raw[name] = {
                    "a": LONG_NAMES[a],
                    "b": LONG_NAMES[b],
                    "tcp": {"a": [], "b": []},
                    "udp": {str(n): {"a": [], "b": []} for n in UDP_SIZES},
                    "ping_idle": {},
                    "ping_load": {},
                }
        sides = ("a", "b")

        for r in range(s.tcp_runs):  # interleaved: run r of every pair and direction
            for pair in pairs:
                for side in sides:
                    log(f"TCP {pair.name} {pair.direction(side)} run {r + 1}/{s.tcp_runs}")
                    res = attempt(
                        errors,
                        f"TCP {pair.name} {pair.direction(side)}",
                        tcp_run,
                        lab,
                        pair,
                        side,
                        s.tcp_seconds,
                    )
                    if res is not None:
                        raw[pair.name]["tcp"][side].append(res)
                        log(f"  {res['bits_per_second'] / 1e6:,.0f} Mbit/s")
                    time.sleep(0.5)

        for size in UDP_SIZES:
            for r in range(s.udp_runs):
                for pair in pairs:
                    for side in sides:
                        log(f"UDP {size} B {pair.name} {pair.direction(side)} run {r + 1}")
                        res = attempt(
                            errors,
                            f"UDP {size} B {pair.name} {pair.direction(side)}",
                            udp_run,
                            lab,
                            pair,
                            side,
                            s.udp_seconds,
                            size,
                        )
                        if res is not None:
                            raw[pair.name]["udp"][str(size)][side].append(res)
                            log(
                                f"  {res['received_pps']:,.0f} pkt/s received, "
                                f"{res['loss_percent']:.1f}% lost"
                            )
                        time.sleep(1.0)  # let queues drain after a flood

        for pair in pairs:
            for side in sides:
                log(f"ping {pair.name} from {pair.direction(side)}: idle, then under load")
                res = attempt(
                    errors,
                    f"ping idle {pair.name} {pair.direction(side)}",
                    ping_samples,
                    pair,
                    side,
                    s.pings,
                    s.ping_interval,
                )
                if res is not None:
                    raw[pair.name]["ping_idle"][side] = res
                res = attempt(
                    errors,
                    f"ping under load {pair.name} {pair.direction(side)}",
                    ping_under_load,
                    lab,
                    pair,
                    side,
                    s.pings,
                    s.ping_interval,
                )
                if res is not None:
                    raw[pair.name]["ping_load"][side] = res
                    if "load_error" in res:
                        errors.append(f"ping under load {pair.name}: {res['load_error']}")

        for pair in pairs:
            with contextlib.suppress(Skip):
                pair.check_alive()
            raw[pair.name]["failures"] = pair.failures
            raw[pair.name]["daemon_rss_bytes_after"] = {
                side: (d.rss() if d.alive() else None) for side, d in pair.daemon.items()
            }
    results["pairs"] = raw


# -- embedded mode ------------------------------------------------------------------------


def measure_embedded(s: Settings, results: dict, errors: list[str]) -> None:
    """``pyralog forward`` against kernel TCP over wireguard-go (see bench/embedded.py)."""
    raw: dict = {
        "forward_spec": embedded.FORWARD_SPEC,
        "forwarder_user": "root",
        "tunnel_addresses": dict(embedded.TUNNEL),
        "runs": {p: {d: [] for d in embedded.DIRECTIONS} for p in embedded.PATHS},
    }
    with Lab() as lab:
        log("building embedded set-up (wireguard-go in K; wireguard-go and pyralog forward in E)")
        setup = attempt(errors, "set-up of embedded", embedded.build, lab)
        if setup is not None:
            for r in range(s.tcp_runs):  # interleaved: run r of both paths and directions
                for direction in embedded.DIRECTIONS:
                    arrow = embedded.DIRECTION_LABELS[direction]
                    for path in embedded.PATHS:
                        log(f"TCP {path} {arrow} run {r + 1}/{s.tcp_runs}")
                        res = attempt(
                            errors,
                            f"embedded: TCP {path} {arrow}",
                            embedded.tcp_run,
                            setup,
                            path,
                            direction,
                            s.tcp_seconds,
                        )
                        if res is not None:
                            raw["runs"][path][direction].append(res)
                            log(
                                f"  {res['bits_per_second'] / 1e6:,.0f} Mbit/s, "
                                f"{_fmt(res['cpu_seconds_per_gb_e'])} CPU s/GB (E side)"
                            )
                        time.sleep(0.5)
            raw["forwarder_rss_bytes_after"] = embedded.forwarder_rss(setup)
    raw.update(embedded.summarize(raw))
    results["embedded"] = raw


# -- handshakes -----------------------------------------------------------------------------


def measure_handshakes(s: Settings, results: dict, errors: list[str]) -> None:
    per_identity = math.ceil((s.hs_warmup + s.hs_seconds) / hsload.DEFAULT_PACE) + 8
    log(f"preparing {s.hs_identities} x {per_identity} handshake initiations")
    t = time.monotonic()
    pool = hsload.prepare(s.hs_identities, per_identity)
    prepare_seconds = time.monotonic() - t
    out: dict = {
        "identities": s.hs_identities,
        "initiations_prepared": s.hs_identities * per_identity,
        "prepare_seconds": prepare_seconds,
    }
    for impl in ("go", "py"):
        log(f"handshakes/s, responder {LONG_NAMES[impl]}")
        res = attempt(errors, f"handshakes {LONG_NAMES[impl]}", _handshake_one, s, pool, impl)
        if res is not None:
            out[impl] = res
            log(
                f"  {res['handshakes_per_second']:,.0f} handshakes/s "
                f"({res['responder_cpu_us_per_handshake'] or 0:,.0f} us CPU each)"
            )
    results["handshake"] = out


def _handshake_one(s: Settings, pool: hsload.Pool, impl: str) -> dict:
    with Lab() as lab:
        r = lab.netns(f"hs{impl}-r")
        g = lab.netns(f"hs{impl}-g")
        r_if, g_if = lab.if_name("xhr"), lab.if_name("xhg")
        lab.veth(r, r_if, "172.29.100.1/24", g, g_if, "172.29.100.2/24")
        # The identities' addresses: /32s on the generator's veth, routed on the responder
        # side through the generator (one neighbour entry instead of hundreds).
        first = "172.29.128.1"
        sources = hsload.sources_from(first, len(pool.identities))
        batch = lab.write("addrs", "".join(f"address add {a}/32 dev {g_if}\n" for a in sources))
        run(["ip", "-n", g, "-batch", str(batch)])
        run(["ip", "-n", r, "route", "add", "172.29.128.0/17", "via", "172.29.100.2"])
        d = lab.daemon(r, impl, "hsr")
        conf = lab.write("responder.conf", pool.responder_config(PORT))
        d.wg("setconf", d.ifname, str(conf))
        run(["ip", "-n", r, "link", "set", d.ifname, "up"])
        pool_file = lab.tmp / "pool.pickle"
        pool.save(str(pool_file))
        time.sleep(0.5)
        cpu0 = d.cpu()
        seconds = s.hs_warmup + s.hs_seconds
        out = run(
            [
                "ip",
                "netns",
                "exec",
                g,
                sys.executable,
                str(BENCH / "hsload.py"),
                "run",
                "--pool",
                str(pool_file),
                "--target",
                f"172.29.100.1:{PORT}",
                "--first-source",
                first,
                "--warmup",
                str(s.hs_warmup),
                "--duration",
                str(s.hs_seconds),
            ],
            timeout=seconds + 60,
        )
        cpu = d.cpu() - cpu0
        if not d.alive():
            raise Skip(f"{LONG_NAMES[impl]} exited during the handshake flood: {d.log_tail(5)}")
        res = json.loads(out)
        res["responder_cpu_seconds"] = cpu
        res["responder_cpu_us_per_handshake"] = (
            cpu / res["responses"] * 1e6 if res["responses"] else None
        )
        res["responder_rss_bytes_after"] = d.rss()
        return res


# -- memory ----------------------------------------------------------------------------------


def random_public_keys(n: int) -> list[str]:
    """``n`` random 32-byte Curve25519 public keys that are not low-order points."""
    from pyralog.wireguard.keys import is_low_order, key_to_base64

    keys: list[str] = []
    seen: set[bytes] = set()
    while len(keys) < n:
        raw = os.urandom(32)
        if raw in seen or is_low_order(raw):
            continue
        seen.add(raw)
        keys.append(key_to_base64(raw))
    return keys


def peer_conf(keys: list[str], start: int) -> str:
    """[Peer] sections, each with its own /32 from 10.29.0.0/16 (index ``start`` on)."""
    out = []
    for i, key in enumerate(keys, start=start):
        out.append(f"[Peer]\nPublicKey = {key}\nAllowedIPs = 10.29.{i >> 8}.{i & 255}/32\n")
    return "\n".join(out)


def measure_memory(s: Settings, results: dict, errors: list[str]) -> None:
    keys = random_public_keys(MEMORY_PEERS[-1])
    out: dict = {"peer_counts": list(MEMORY_PEERS)}
    for impl in ("go", "py"):
        log(f"memory, {LONG_NAMES[impl]}: {', '.join(map(str, MEMORY_PEERS))} peers")
        res = attempt(errors, f"memory {LONG_NAMES[impl]}", _memory_one, s, keys, impl)
        if res is not None:
            out[impl] = res
            log(
                f"  RSS {', '.join(f'{v / 2**20:.1f}' for v in res['rss_bytes'].values())} MiB;"
                f" {res['bytes_per_peer']:,.0f} bytes/peer"
            )
    results["memory"] = out


def _settled_rss(d: Daemon, settle: float) -> int:
    time.sleep(settle)
    samples = []
    for _ in range(5):
        samples.append(d.rss())
        time.sleep(0.1)
    return int(statistics.median(samples))


def _memory_one(s: Settings, keys: list[str], impl: str) -> dict:
    with Lab() as lab:
        ns = lab.netns(f"mem{impl}")
        d = lab.daemon(ns, impl, "mem")
        rss: dict[str, int] = {"0": _settled_rss(d, s.settle)}
        apply_seconds: dict[str, float] = {}
        private = lab.genkey()[0]
        done = 0
        for count in MEMORY_PEERS:
            batch = keys[done:count]
            if done == 0:
                text = f"[Interface]\nPrivateKey = {private}\nListenPort = {PORT}\n\n"
                text += peer_conf(batch, done)
                verb = "setconf"
            else:
                text = peer_conf(batch, done)
                verb = "addconf"
            conf = lab.write(f"peers-{count}.conf", text)
            t = time.monotonic()
            d.wg(verb, d.ifname, str(conf), timeout=600)
            apply_seconds[str(count)] = time.monotonic() - t
            if done == 0:
                run(["ip", "-n", ns, "link", "set", d.ifname, "up"])
            done = count
            if not d.alive():
                raise Skip(f"{LONG_NAMES[impl]} exited after {count} peers: {d.log_tail(5)}")
            rss[str(count)] = _settled_rss(d, s.settle)
        # Last (it may allocate and so change RSS): read the configuration back, timed.
        # A daemon that has not answered in SHOW_TIMEOUT seconds is noted, not waited for.
        show_seconds: float | None = None
        configured: int | None = None
        t = time.monotonic()
        try:
            dump = d.wg("show", d.ifname, "peers", timeout=SHOW_TIMEOUT)
            show_seconds = time.monotonic() - t
            configured = len(dump.split())
        except subprocess.TimeoutExpired:
            pass
        if configured is not None and configured != MEMORY_PEERS[-1]:
            raise Skip(f"{LONG_NAMES[impl]} reports {configured} peers, not {MEMORY_PEERS[-1]}")
        lo, hi = str(MEMORY_PEERS[0]), str(MEMORY_PEERS[-1])
        return {
            "rss_bytes": rss,
            "apply_seconds": apply_seconds,
            "bytes_per_peer": (rss[hi] - rss[lo]) / (MEMORY_PEERS[-1] - MEMORY_PEERS[0]),
            "show_seconds": show_seconds,
            "show_timeout_seconds": SHOW_TIMEOUT,
            "peers_reported": configured,
        }


# -- core --------------------------------------------------------------------------------------


def measure_core(s: Settings, results: dict, errors: list[str]) -> None:
    log("sans-IO core micro-benchmark")
    res = attempt(errors, "core micro-benchmark", core.run, s.quick)
    if res is not None:
        for size, r in res["sizes"].items():
            log(f"  {size} B: encrypt {r['encrypt_pps']:,.0f}/s, decrypt {r['decrypt_pps']:,.0f}/s")
    results["core"] = res


# -- summary and ratios ---------------------------------------------------------------------------


def _column_runs(results: dict, kind: str, column: str, size: str | None = None) -> list[dict]:
    """Every run of ``kind`` ("tcp"/"udp") that belongs in ``column``."""
    pairs = results.get("pairs", {})
    out: list[dict] = []
    for name, p in pairs.items():
        for side in ("a", "b"):
            impl_self = "py" if p[side] == "pyralog-wg" else "go"
            other = "b" if side == "a" else "a"
            impl_other = "py" if p[other] == "pyralog-wg" else "go"
            col = name if impl_self == impl_other else f"{impl_self}→{impl_other}"
            if col != column:
                continue
            runs = p[kind][side] if size is None else p[kind][size][side]
            out.extend(runs)
    return out


def _column_pings(results: dict, kind: str, column: str) -> list[dict]:
    out = []
    for name, p in results.get("pairs", {}).items():
        for side, sample in p.get(kind, {}).items():
            other = "b" if side == "a" else "a"
            a = "py" if p[side] == "pyralog-wg" else "go"
            b = "py" if p[other] == "pyralog-wg" else "go"
            col = name if a == b else f"{a}→{b}"
            if col == column:
                out.append(sample)
    return out


def summarize(results: dict) -> None:
    rows: list[dict] = []

    def add(key, label, unit, better, values: dict, spreads: dict | None = None, note=""):
        ref = values.get(REFERENCE)
        rows.append(
            {
                "key": key,
                "label": label,
                "unit": unit,
                "better": better,
                "note": note,
                "values": values,
                "spread": spreads or {},
                "ratios": {c: ratio(v, ref) for c, v in values.items()},
            }
        )

    tcp = {c: _column_runs(results, "tcp", c) for c in COLUMNS}
    sp = {c: spread(r, "bits_per_second") for c, r in tcp.items()}
    add(
        "tcp_mbps",
        "TCP throughput",
        "Mbit/s",
        "higher",
        {c: _scale(sp[c]["median"], 1e-6) for c in COLUMNS},
        {c: [_scale(sp[c]["min"], 1e-6), _scale(sp[c]["max"], 1e-6)] for c in COLUMNS},
    )
    rtx = {c: spread(r, "retransmits") for c, r in tcp.items()}
    add(
        "tcp_retransmits",
        f"TCP retransmits per {results['settings']['tcp_seconds']} s run",
        "segments",
        "lower",
        {c: rtx[c]["median"] for c in COLUMNS},
        {c: [rtx[c]["min"], rtx[c]["max"]] for c in COLUMNS},
    )
    cpu = {c: spread(r, "cpu_seconds_per_gb") for c, r in tcp.items()}
    add(
        "cpu_s_per_gb",
        "CPU per GB moved (both daemons, TCP)",
        "CPU s/GB",
        "lower",
        {c: cpu[c]["median"] for c in COLUMNS},
        {c: [cpu[c]["min"], cpu[c]["max"]] for c in COLUMNS},
    )
    for size in UDP_SIZES:
        udp = {c: _column_runs(results, "udp", c, str(size)) for c in COLUMNS}
        pps = {c: spread(r, "received_pps") for c, r in udp.items()}
        add(
            f"udp{size}_pps",
            f"UDP {size}-byte payload, received",
            "pkt/s",
            "higher",
            {c: pps[c]["median"] for c in COLUMNS},
            {c: [pps[c]["min"], pps[c]["max"]] for c in COLUMNS},
        )
        loss = {c: spread(r, "loss_percent") for c, r in udp.items()}
        add(
            f"udp{size}_loss",
            f"UDP {size}-byte payload, lost",
            "%",
            "lower",
            {c: loss[c]["median"] for c in COLUMNS},
        )
    for kind, label in (("ping_idle", "idle"), ("ping_load", "under TCP load")):
        summ = {c: ping_summary(_column_pings(results, kind, c)) for c in COLUMNS}
        for q in ("p50", "p99"):
            add(
                f"{kind}_{q}",
                f"Ping {q}, {label}",
                "ms",
                "lower",
                {c: summ[c][f"{q}_ms"] for c in COLUMNS},
            )
    results["summary"] = {"columns": list(COLUMNS), "reference": REFERENCE, "rows": rows}

    # Per implementation: pyralog-wg vs wireguard-go.
    impl_rows: list[dict] = []

    def add_impl(key, label, unit, better, py, go):
        impl_rows.append(
            {
                "key": key,
                "label": label,
                "unit": unit,
                "better": better,
                "py": py,
                "go": go,
                "ratio": ratio(py, go),
            }
        )

    hs = results.get("handshake", {})
    for key, label, unit, better in (
        ("handshakes_per_second", "Handshakes completed by a responder", "per s", "higher"),
        ("responder_cpu_us_per_handshake", "Responder CPU per handshake", "µs", "lower"),
        ("latency_p50_ms", "Handshake latency under flood, p50", "ms", "lower"),
    ):
        add_impl(
            f"hs_{key}", label, unit, better, hs.get("py", {}).get(key), hs.get("go", {}).get(key)
        )
    mem = results.get("memory", {})
    for count in ("0", *map(str, MEMORY_PEERS)):
        add_impl(
            f"rss_{count}",
            f"RSS with {int(count):,} peers",
            "MiB",
            "lower",
            _scale(mem.get("py", {}).get("rss_bytes", {}).get(count), 2**-20),
            _scale(mem.get("go", {}).get("rss_bytes", {}).get(count), 2**-20),
        )
    add_impl(
        "bytes_per_peer",
        "Memory per peer (RSS_10000 - RSS_1) / 9999",
        "bytes",
        "lower",
        mem.get("py", {}).get("bytes_per_peer"),
        mem.get("go", {}).get("bytes_per_peer"),
    )
    last = str(MEMORY_PEERS[-1])
    add_impl(
        "apply_10000",
        f"Time to add {MEMORY_PEERS[-1] - MEMORY_PEERS[-2]:,} peers (one wg addconf)",
        "s",
        "lower",
        mem.get("py", {}).get("apply_seconds", {}).get(last),
        mem.get("go", {}).get("apply_seconds", {}).get(last),
    )
    add_impl(
        "show_10000",
        f"Time to read {MEMORY_PEERS[-1]:,} peers back (wg show IF peers)",
        "s",
        "lower",
        mem.get("py", {}).get("show_seconds"),
        mem.get("go", {}).get("show_seconds"),
    )
    for impl in ("py", "go"):
        m = mem.get(impl)
        if m and m.get("show_seconds") is None:
            impl_rows[-1].setdefault("text", {})[impl] = (
                f"> {m['show_timeout_seconds']} (no answer)"
            )
    results["implementations"] = {"rows": impl_rows}

    # The core alone, against what wireguard-go moves through the whole stack.
    c = results.get("core") or {}
    go_tcp = next((r["values"].get(REFERENCE) for r in rows if r["key"] == "tcp_mbps"), None)
    go_udp64 = next((r["values"].get(REFERENCE) for r in rows if r["key"] == "udp64_pps"), None)
    core_rows = []
    for size, r in (c.get("sizes") or {}).items():
        for path in ("encrypt", "decrypt"):
            pps = r[f"{path}_pps"]
            mbps = pps * int(size) * 8 / 1e6
            if int(size) >= 1000:
                ref, ref_label = go_tcp, "go-go TCP Mbit/s"
                value_for_ratio = mbps
            else:
                ref, ref_label = go_udp64, "go-go UDP 64 B pkt/s received"
                value_for_ratio = pps
            core_rows.append(
                {
                    "size": int(size),
                    "path": path,
                    "pps": pps,
                    "mbit_s": mbps,
                    "reference": ref_label,
                    "ratio": ratio(value_for_ratio, ref),
                }
            )
    results["core_summary"] = core_rows


def _scale(v: float | None, k: float) -> float | None:
    return None if v is None else v * k


# -- main --------------------------------------------------------------------------------------


def check_requirements() -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (network namespaces, TUN devices)")
    for tool in ("ip", "wg", "wireguard-go", "iperf3", "ping"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} is not installed (scripts/bench.sh installs it)")
    if not Path(sys.executable).with_name("pyralog-wg").exists():
        problems.append("pyralog-wg is not installed next to this Python (use .venv/bin/python)")
    if not Path("/dev/net/tun").exists():
        problems.append("/dev/net/tun is missing")
    return problems


MEASURES = ("core", "pairs", "embedded", "handshake", "memory")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Benchmark pyralog-wg against wireguard-go (needs root).",
    )
    p.add_argument("--quick", action="store_true", help="one short run of everything (~2 min)")
    p.add_argument(
        "--out", default=str(BENCH.parent / "docs" / "benchmarks.json"), help="JSON output"
    )
    p.add_argument(
        "--only",
        default=",".join(MEASURES),
        help=f"comma-separated subset of {','.join(MEASURES)} (default: all)",
    )
    args = p.parse_args(argv)
    only = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = set(only) - set(MEASURES)
    if unknown:
        p.error(f"unknown measure(s): {', '.join(sorted(unknown))}")
    problems = check_requirements()
    if problems:
        for problem in problems:
            print(f"bench: {problem}", file=sys.stderr)
        return 2

    # Ctrl-C, SIGTERM and SIGHUP unwind the stack, so every Lab cleans up after itself
    # (also when started with SIGINT ignored, as background jobs of a script are).
    def interrupt(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)

    stale = reap_stale()
    if stale:
        log(f"removed leftovers of an earlier run: {', '.join(stale)}")
    s = Settings.make(args.quick)
    started = time.monotonic()
    errors: list[str] = []
    results: dict = {
        "schema": 1,
        "machine": machine_info(),
        "settings": {
            **s.__dict__,
            "udp_payload_bytes": list(UDP_SIZES),
            "memory_peers": list(MEMORY_PEERS),
            "pairs": [p[0] for p in PAIRS],
            "measures": only,
        },
        "errors": errors,
    }
    try:
        if "core" in only:
            measure_core(s, results, errors)
        if "pairs" in only:
            measure_pairs(s, results, errors)
        if "embedded" in only:
            measure_embedded(s, results, errors)
        if "handshake" in only:
            measure_handshakes(s, results, errors)
        if "memory" in only:
            measure_memory(s, results, errors)
    except KeyboardInterrupt:
        log("interrupted: cleaned up; no results written")
        return 130
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["machine"]["other_netns_at_end"] = _other_namespaces()
    results["elapsed_seconds"] = time.monotonic() - started
    summarize(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    log(f"done in {results['elapsed_seconds']:.0f} s; results in {out}")
    print_summary(results)
    if errors:
        log(f"{len(errors)} measure(s) failed:")
        for e in errors:
            log(f"  {e}")
    return 0


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def print_summary(results: dict) -> None:
    cols = results["summary"]["columns"]
    print(f"{'measure':44} " + " ".join(f"{c:>18}" for c in cols))
    for row in results["summary"]["rows"]:
        cells = []
        for c in cols:
            v, r = row["values"].get(c), row["ratios"].get(c)
            cells.append(f"{_fmt(v)} ({_fmt(r)}x)" if r is not None else _fmt(v))
        print(
            f"{row['label'] + ' [' + row['unit'] + ']':44} " + " ".join(f"{x:>18}" for x in cells)
        )
    print(f"\n{'per implementation':52} {'pyralog-wg':>12} {'wireguard-go':>12} {'ratio':>8}")
    for row in results["implementations"]["rows"]:
        text = row.get("text", {})
        py, go = text.get("py", _fmt(row["py"])), text.get("go", _fmt(row["go"]))
        print(
            f"{row['label'] + ' [' + row['unit'] + ']':52} {py:>12} {go:>12} "
            f"{_fmt(row['ratio']):>8}"
        )
    emb = results.get("embedded")
    if emb and emb.get("rows"):
        print(f"\n{'embedded mode':68} {'embedded':>10} {'kernel':>10} {'ratio':>8}")
        for row in emb["rows"]:
            print(
                f"{row['label'] + ' [' + row['unit'] + ']':68} {_fmt(row['embedded']):>10} "
                f"{_fmt(row['kernel']):>10} {_fmt(row['ratio']):>8}"
            )
    if results.get("core_summary"):
        print(f"\n{'core (sans-IO)':20} {'pkt/s':>12} {'Mbit/s':>10} {'ratio':>8}  reference")
        for r in results["core_summary"]:
            print(
                f"{str(r['size']) + ' B ' + r['path']:20} {_fmt(r['pps']):>12} "
                f"{_fmt(r['mbit_s']):>10} {_fmt(r['ratio']):>8}  {r['reference']}"
            )


if __name__ == "__main__":
    sys.exit(main())
