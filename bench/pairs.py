"""Namespace pairs: TCP throughput and UDP packet rate (iperf3) and ping, for bench/run.py.

A pair is two network namespaces joined by a veth link with one WireGuard implementation
in each (py = pyralog-wg, go = wireguard-go) and an iperf3 server on both sides. The
pairs are go-go, py-py and py-go; traffic goes both ways, so py-go gives the columns
py→go and go→py. Runs are interleaved across pairs and directions, so a slow drift in
the machine's load spreads over all of them alike.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import subprocess
import time
from dataclasses import dataclass, field

from harness import PORT, Settings, Skip, attempt, log
from lab import LONG_NAMES, CommandError, Daemon, Lab, iperf_json, run

PAIRS = (("go-go", "go", "go"), ("py-py", "py", "py"), ("py-go", "py", "go"))
IPERF_PORT = 5201
# 64 bytes, and the largest UDP payload that fits the tunnel MTU of 1420 without
# fragmenting (1420 - 20 IPv4 - 8 UDP). A 1400-byte payload would be 1428-byte packets,
# split in two by the sender's IP layer, so it would measure fragmentation instead.
UDP_SIZES = (64, 1392)


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


def build_pair(
    lab: Lab, k: int, name: str, a_impl: str, b_impl: str, *, iperf: bool = True
) -> Pair:
    """Two namespaces, a veth link (172.29.k.0/24), a tunnel (10.29.k.0/24) checked with
    ping and, with ``iperf``, an iperf3 server on each side (bench/log.py needs none)."""
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
    if not iperf:
        return pair
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
    for tried in range(2):
        pair.check_alive()
        data = iperf_json(argv, seconds)
        if "error" not in data:
            return data
        last = data["error"]
        if tried == 0:
            restart_iperf_server(lab, pair, pair.other(side))
    pair.check_alive()
    raise Skip(f"iperf3 {pair.direction(side)} failed: {last}")


def link_stats(pair: Pair, side: str) -> dict:
    """``side``'s tunnel interface (``ip -s -j link show``): its kernel transmit queue
    length and the packets dropped there so far (for a TUN device: waiting for its
    daemon to read them)."""
    d = pair.daemon[side]
    out = run(["ip", "-n", pair.ns[side], "-s", "-j", "link", "show", "dev", d.ifname])
    link = json.loads(out)[0]
    return {
        "txqlen": link.get("txqlen"),
        "tx_dropped": link.get("stats64", {}).get("tx", {}).get("dropped", 0),
    }


def tcp_run(lab: Lab, pair: Pair, side: str, seconds: int) -> dict:
    cpu0 = {s: pair.daemon[s].cpu() for s in "ab"}
    dropped0 = link_stats(pair, side)["tx_dropped"]
    data = iperf(lab, pair, side, seconds, [])
    cpu = {s: pair.daemon[s].cpu() - cpu0[s] for s in "ab"}
    dropped = link_stats(pair, side)["tx_dropped"] - dropped0
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
        "tun_tx_dropped_sender": dropped,
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
    dropped0 = link_stats(pair, side)["tx_dropped"]
    try:
        time.sleep(1.0)
        result = ping_samples(pair, side, count, interval)
        result["tun_tx_dropped_sender"] = link_stats(pair, side)["tx_dropped"] - dropped0
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


def measure(s: Settings, results: dict, errors: list[str]) -> None:
    """Every pair: TCP runs, then UDP runs per size, then pings, interleaved: results["pairs"]."""
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
            raw[pair.name]["tunnel_link_at_end"] = {
                side: attempt(errors, f"link stats {pair.name}", link_stats, pair, side)
                for side in sides
            }
            raw[pair.name]["daemon_rss_bytes_after"] = {
                side: (d.rss() if d.alive() else None) for side, d in pair.daemon.items()
            }
    results["pairs"] = raw
