"""Embedded mode (``pyralog forward``) against kernel TCP over wireguard-go, for bench/run.py.

Two namespaces joined by a veth link:

- K: wireguard-go (interface ``egk``, tunnel address 10.29.60.1) and an iperf3 server on it;
- E: (a) the reference, a second wireguard-go interface (``ege``, 10.29.60.2) carrying the
  kernel's TCP: iperf3 client in E -> 10.29.60.1:5201; (b) embedded mode,
  ``pyralog forward --config FILE 127.0.0.1:15201:10.29.60.1:5201`` (WireGuard and a
  userspace TCP/IP stack in one process, tunnel address 10.29.60.3, its own UDP port):
  iperf3 client in E -> 127.0.0.1:15201, forwarded across the tunnel (iperf3's control
  and data connections alike).

K's wireguard-go has both as peers, so the same daemon serves both paths. Each run moves
TCP one way (E→K: the iperf3 client sends; K→E: ``iperf3 -R``) and records the CPU time
(utime + stime from /proc) of the forwarder and of both wireguard-go daemons.

``measure()`` (called by bench/run.py) interleaves the runs and notes failures; the rest of
this module builds the set-up, runs one iperf3 measurement and summarizes the runs.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness import Settings, attempt, log
from lab import CommandError, Daemon, Lab, cpu_seconds, daemon_env, iperf_json, rss_bytes, run
from stats import fmt, present, ratio, spread

PYRALOG = str(Path(sys.executable).with_name("pyralog"))
WG_PORT = 51820  # both wireguard-go interfaces (one per namespace)
FORWARDER_WG_PORT = 51821  # the forwarder's UDP socket, in E next to E's wireguard-go
IPERF_PORT = 5201
LOCAL_PORT = 15201  # the forwarder's local TCP port in E
UNDER = {"k": "172.29.60.1", "e": "172.29.60.2"}
TUNNEL = {"k": "10.29.60.1", "e": "10.29.60.2", "forwarder": "10.29.60.3"}
PATHS = ("kernel", "embedded")
DIRECTIONS = ("forward", "reverse")  # forward: E→K (client sends); reverse: K→E (iperf3 -R)
DIRECTION_LABELS = {"forward": "E→K", "reverse": "K→E"}
FORWARD_SPEC = f"127.0.0.1:{LOCAL_PORT}:{TUNNEL['k']}:{IPERF_PORT}"


@dataclass
class Setup:
    lab: Lab
    ns: dict[str, str]  # "k"/"e" -> namespace
    k: Daemon  # wireguard-go in K
    e: Daemon  # wireguard-go in E (the reference path)
    forwarder: subprocess.Popen
    forwarder_log: Path
    server: subprocess.Popen | None = None

    def forwarder_tail(self, n: int = 10) -> str:
        try:
            return "\n".join(self.forwarder_log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        for what, d in (("wireguard-go in K", self.k), ("wireguard-go in E", self.e)):
            if not d.alive():
                raise CommandError(
                    f"{what} exited with status {d.proc.returncode}: {d.log_tail(5)!r}"
                )
        if self.forwarder.poll() is not None:
            raise CommandError(
                f"pyralog forward exited with status {self.forwarder.returncode}: "
                f"{self.forwarder_tail(5)!r}"
            )

    def pids(self) -> dict[str, int]:
        return {"forwarder": self.forwarder.pid, "k_wg": self.k.pid, "e_wg": self.e.pid}

    def restart_server(self) -> None:
        if self.server is not None:
            self.lab.stop(self.server)
        self.server = self.lab.popen(self.ns["k"], ["iperf3", "-s", "-p", str(IPERF_PORT)])
        time.sleep(0.3)


def _ping(ns: str, dst: str) -> None:
    out = run(
        ["ip", "netns", "exec", ns, "ping", "-n", "-c", "3", "-i", "0.2", "-w", "15", dst],
        check=False,
        timeout=30,
    )
    if " 0 received" in out or "received" not in out:
        raise CommandError(f"no ping from {ns} to {dst}: {out.strip()[-200:]}")


def build(lab: Lab) -> Setup:
    ns = {"k": lab.netns("emb-k"), "e": lab.netns("emb-e")}
    lab.veth(
        ns["k"],
        lab.if_name("xek"),
        f"{UNDER['k']}/24",
        ns["e"],
        lab.if_name("xee"),
        f"{UNDER['e']}/24",
    )
    k = lab.daemon(ns["k"], "go", "egk")
    e = lab.daemon(ns["e"], "go", "ege")
    keys = {name: lab.genkey() for name in ("k", "e", "forwarder")}
    k_key = lab.write(f"{k.ifname}.key", keys["k"][0] + "\n")
    e_key = lab.write(f"{e.ifname}.key", keys["e"][0] + "\n")
    # K: peers E's wireguard-go and the forwarder (both reached through E's veth address).
    k.wg(
        "set",
        k.ifname,
        "private-key",
        str(k_key),
        "listen-port",
        str(WG_PORT),
        "peer",
        keys["e"][1],
        "allowed-ips",
        f"{TUNNEL['e']}/32",
        "endpoint",
        f"{UNDER['e']}:{WG_PORT}",
        "peer",
        keys["forwarder"][1],
        "allowed-ips",
        f"{TUNNEL['forwarder']}/32",
        "endpoint",
        f"{UNDER['e']}:{FORWARDER_WG_PORT}",
    )
    e.wg(
        "set",
        e.ifname,
        "private-key",
        str(e_key),
        "listen-port",
        str(WG_PORT),
        "peer",
        keys["k"][1],
        "allowed-ips",
        f"{TUNNEL['k']}/32",
        "endpoint",
        f"{UNDER['k']}:{WG_PORT}",
    )
    for side, d in (("k", k), ("e", e)):
        run(["ip", "-n", ns[side], "addr", "add", f"{TUNNEL[side]}/24", "dev", d.ifname])
        run(["ip", "-n", ns[side], "link", "set", d.ifname, "up"])

    config = lab.write(
        "forward.conf",
        "[Interface]\n"
        f"PrivateKey = {keys['forwarder'][0]}\n"
        f"Address = {TUNNEL['forwarder']}/32\n"
        f"ListenPort = {FORWARDER_WG_PORT}\n"
        "\n[Peer]\n"
        f"PublicKey = {keys['k'][1]}\n"
        f"Endpoint = {UNDER['k']}:{WG_PORT}\n"
        f"AllowedIPs = {TUNNEL['k']}/32\n",
    )
    log = lab.tmp / "forward.log"
    with open(log, "wb") as out:
        forwarder = lab.popen(
            ns["e"],
            [PYRALOG, "forward", "--config", str(config), FORWARD_SPEC],
            stdout=out,
            stderr=out,
            env=daemon_env(),
        )
    setup = Setup(lab, ns, k, e, forwarder, log)
    deadline = time.monotonic() + 20
    while "tunnel up" not in setup.forwarder_tail(50):
        if forwarder.poll() is not None or time.monotonic() > deadline:
            raise CommandError(f"pyralog forward did not start: {setup.forwarder_tail()!r}")
        time.sleep(0.05)

    _ping(ns["e"], TUNNEL["k"])  # the reference path, through E's wireguard-go
    _ping(ns["k"], TUNNEL["forwarder"])  # the embedded stack answers ICMP echo
    setup.restart_server()
    return setup


def tcp_run(setup: Setup, path: str, direction: str, seconds: int) -> dict:
    """One iperf3 TCP run over ``path`` ("kernel"/"embedded") in ``direction``."""
    host, port = (TUNNEL["k"], IPERF_PORT) if path == "kernel" else ("127.0.0.1", LOCAL_PORT)
    argv = ["ip", "netns", "exec", setup.ns["e"], "iperf3", "-c", host, "-p", str(port)]
    argv += ["-J", "-t", str(seconds), "--connect-timeout", "3000"]
    if direction == "reverse":
        argv.append("-R")
    last = ""
    for tried in range(2):
        setup.check_alive()
        pids = setup.pids()
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        data = iperf_json(argv, seconds)
        if "error" not in data:
            setup.check_alive()
            cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
            received = data["end"]["sum_received"]
            moved = received["bytes"]
            gb = moved / 1e9
            return {
                "bits_per_second": received["bits_per_second"],
                "bytes": moved,
                "seconds": received["seconds"],
                "cpu_seconds": cpu,
                # The process in E that carries this path's WireGuard: the forwarder
                # (WireGuard + TCP/IP) or E's wireguard-go (WireGuard only; TCP in the kernel).
                "cpu_seconds_per_gb_e": (
                    (cpu["forwarder"] if path == "embedded" else cpu["e_wg"]) / gb if gb else None
                ),
                "cpu_seconds_per_gb_k_wg": cpu["k_wg"] / gb if gb else None,
            }
        last = data["error"]
        if tried == 0:
            setup.restart_server()
    setup.check_alive()
    raise CommandError(f"iperf3 {path} {DIRECTION_LABELS[direction]} failed: {last}")


def forwarder_rss(setup: Setup) -> int | None:
    if setup.forwarder.poll() is not None:
        return None
    try:
        return rss_bytes(setup.forwarder.pid)
    except (OSError, RuntimeError):
        return None


def measure(s: Settings, results: dict, errors: list[str]) -> None:
    """Both paths in both directions, ``s.tcp_runs`` times, interleaved: results["embedded"]."""
    raw: dict = {
        "forward_spec": FORWARD_SPEC,
        "forwarder_user": "root",
        "tunnel_addresses": dict(TUNNEL),
        "runs": {p: {d: [] for d in DIRECTIONS} for p in PATHS},
    }
    with Lab() as lab:
        log("building embedded set-up (wireguard-go in K; wireguard-go and pyralog forward in E)")
        setup = attempt(errors, "set-up of embedded", build, lab)
        if setup is not None:
            for r in range(s.tcp_runs):  # interleaved: run r of both paths and directions
                for direction in DIRECTIONS:
                    arrow = DIRECTION_LABELS[direction]
                    for path in PATHS:
                        log(f"TCP {path} {arrow} run {r + 1}/{s.tcp_runs}")
                        res = attempt(
                            errors,
                            f"embedded: TCP {path} {arrow}",
                            tcp_run,
                            setup,
                            path,
                            direction,
                            s.tcp_seconds,
                        )
                        if res is not None:
                            raw["runs"][path][direction].append(res)
                            log(
                                f"  {res['bits_per_second'] / 1e6:,.0f} Mbit/s, "
                                f"{fmt(res['cpu_seconds_per_gb_e'])} CPU s/GB (E side)"
                            )
                        time.sleep(0.5)
            raw["forwarder_rss_bytes_after"] = forwarder_rss(setup)
    raw.update(summarize(raw))
    results["embedded"] = raw


def summarize(raw: dict) -> dict:
    """Rows of embedded vs kernel figures; ``ratio`` is embedded ÷ kernel."""
    rows = []
    runs = raw["runs"]
    for direction in DIRECTIONS:
        arrow = DIRECTION_LABELS[direction]
        how = "iperf3 client sends" if direction == "forward" else "iperf3 -R"
        for key, label, unit, better, scale in (
            ("bits_per_second", f"TCP throughput {arrow} ({how})", "Mbit/s", "higher", 1e-6),
            (
                "cpu_seconds_per_gb_e",
                f"CPU per GB {arrow}, E side: forwarder vs E's wireguard-go",
                "CPU s/GB",
                "lower",
                1.0,
            ),
        ):
            sp = {p: spread([v * scale for v in present(runs[p][direction], key)]) for p in PATHS}
            rows.append(
                {
                    "key": f"{key}_{direction}",
                    "direction": direction,
                    "label": label,
                    "unit": unit,
                    "better": better,
                    "embedded": sp["embedded"]["median"],
                    "kernel": sp["kernel"]["median"],
                    "spread": {p: [sp[p]["min"], sp[p]["max"]] for p in PATHS},
                    "n": {p: sp[p]["n"] for p in PATHS},
                    "ratio": ratio(sp["embedded"]["median"], sp["kernel"]["median"]),
                }
            )
    throughput = {r["direction"]: r["ratio"] for r in rows if r["key"].startswith("bits_")}
    return {"rows": rows, "throughput_ratio": throughput}
