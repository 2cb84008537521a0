"""The network and the servers of bench/replication.py: three server namespaces, a client
namespace and a store namespace on one LAN, a full mesh of pyralog-wg tunnels, etcd, and
either a three-broker Pyralog cluster or a three-server NATS JetStream cluster.

The LAN is a bridge in a namespace of its own (``lan``), with a veth into each member:
172.29.41.1-3 for the servers (``a``, ``b``, ``c``), .10 for the client (``d``), .20 for
etcd (``e``). Each of a, b, c and d runs one pyralog-wg interface (10.29.41.1-3, .10)
with the three others as peers: a full mesh of tunnels, the client having one to each
server. Pyralog brokers listen on their tunnel address only, and so replicate (followers
fetch from the leader) and answer clients through WireGuard; they reach etcd over the
LAN (etcd's client port is on 172.29.41.20). NATS servers listen for clients on their
tunnel address too, and route to each other over the LAN with mutual TLS (a throwaway CA
made here with ``cryptography``), as the NATS docs recommend for a cluster.

Everything is created in a bench/lab.py ``Lab`` (``bnb-`` names with the harness's pid),
which removes it all, and every process, when it closes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from certs import ThrowawayCA
from harness import PORT
from lab import CLK_TCK, CommandError, Daemon, Lab, cpu_seconds, run

SUBNET = 41  # 172.29.41.0/24 LAN, 10.29.41.0/24 tunnels
SERVERS = ("a", "b", "c")
CLIENT = "d"
STORE = "e"
HOST_NUMBER = {"a": 1, "b": 2, "c": 3, "d": 10, "e": 20}
KAFKA_PORT = 9092
NATS_PORT = 4222
NATS_ROUTE_PORT = 6222
NATS_MONITOR_PORT = 8222
ETCD_PORT = 2379
ETCD = "/usr/bin/etcd"
PYRALOG = str(Path(sys.executable).with_name("pyralog"))


def lan_ip(node: str) -> str:
    return f"172.29.{SUBNET}.{HOST_NUMBER[node]}"


def tunnel_ip(node: str) -> str:
    return f"10.29.{SUBNET}.{HOST_NUMBER[node]}"


def node_id(node: str) -> int:
    """The Pyralog broker id of a server namespace: a=1, b=2, c=3."""
    return SERVERS.index(node) + 1


def nats_name(node: str) -> str:
    return f"n{node_id(node)}"


@dataclass
class Net:
    lab: Lab
    ns: dict[str, str]  # node -> namespace
    daemons: dict[str, Daemon]  # node -> its pyralog-wg interface (a, b, c, d)

    def ns_inodes(self) -> set[int]:
        return {os.stat(f"/run/netns/{ns}").st_ino for ns in self.lab.namespaces}

    def wg_cpu(self) -> float:
        return sum(d.cpu() for d in self.daemons.values())

    def check_alive(self) -> None:
        for node, d in self.daemons.items():
            if not d.alive():
                raise CommandError(
                    f"pyralog-wg of {node} exited ({d.proc.returncode}): {d.log_tail(5)}"
                )


def build_net(lab: Lab) -> Net:
    """The LAN, the veths and the full mesh of tunnels, each tunnel checked with ping."""
    nodes = (*SERVERS, CLIENT, STORE)
    ns = {n: lab.netns(f"rp-{n}") for n in nodes}
    lan = lab.netns("rp-lan")
    bridge = lab.if_name("brg")
    run(["ip", "-n", lan, "link", "add", bridge, "type", "bridge"])
    run(["ip", "-n", lan, "link", "set", bridge, "up"])
    for n in nodes:
        outer, inner = lab.if_name(f"vb{n}"), lab.if_name(f"vn{n}")
        run(["ip", "link", "add", outer, "netns", lan, "type", "veth", "peer", "name", inner,
             "netns", ns[n]])  # fmt: skip
        run(["ip", "-n", lan, "link", "set", outer, "master", bridge])
        run(["ip", "-n", lan, "link", "set", outer, "up"])
        run(["ip", "-n", ns[n], "addr", "add", f"{lan_ip(n)}/24", "dev", inner])
        run(["ip", "-n", ns[n], "link", "set", inner, "up"])
    meshed = (*SERVERS, CLIENT)
    daemons = {n: lab.daemon(ns[n], "py", f"wg{n}") for n in meshed}
    keys = {n: lab.genkey() for n in meshed}
    for n in meshed:
        d = daemons[n]
        keyfile = lab.write(f"{d.ifname}.key", keys[n][0] + "\n")
        args = ["set", d.ifname, "private-key", str(keyfile), "listen-port", str(PORT)]
        for o in meshed:
            if o != n:
                args += ["peer", keys[o][1], "allowed-ips", f"{tunnel_ip(o)}/32"]
                args += ["endpoint", f"{lan_ip(o)}:{PORT}"]
        d.wg(*args)
        run(["ip", "-n", ns[n], "addr", "add", f"{tunnel_ip(n)}/24", "dev", d.ifname])
        run(["ip", "-n", ns[n], "link", "set", d.ifname, "up"])
    for i, n in enumerate(meshed):
        for o in meshed[i + 1 :]:
            ping = ["ip", "netns", "exec", ns[n], "ping", "-n", "-c", "2", "-i", "0.2"]
            out = run([*ping, "-w", "15", tunnel_ip(o)], check=False, timeout=30)
            if " 0 received" in out or "received" not in out:
                raise CommandError(f"no ping from {n} to {o} through the tunnel: {out[-200:]}")
    return Net(lab, ns, daemons)


def foreign_cpu(ours: set[int]) -> dict[int, tuple[float, bool]]:
    """CPU seconds (utime + stime) of every process that is not in one of our network
    namespaces ``ours`` (inode numbers) and is not this harness: pid -> (seconds, is a
    kernel thread). What other work on the machine takes while we measure."""
    me = os.getpid()
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino in ours:
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            seconds = (int(fields[11]) + int(fields[12])) / CLK_TCK
            kernel = fields[1] in ("0", "2")  # ppid 2: kthreadd's children; 0: kthreadd
        except (OSError, IndexError, ValueError):
            continue
        out[pid] = (seconds, kernel)
    return out


HTTP_GET = """
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as r:
        sys.stdout.write(r.read().decode())
except OSError as e:
    sys.stdout.write("")
"""

# Connect with TLS trusting only the CA, offer no client certificate, then read: a
# server that wants one refuses after the handshake (TLS 1.3: an alert on first read).
TLS_PROBE = """
import json, socket, ssl, sys
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = {"protocol": None, "server_certificate_verified": False, "refused": None}
ctx = ssl.create_default_context(cafile=ca)
try:
    with socket.create_connection((host, port), timeout=3) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            out["protocol"] = tls.version()
            out["server_certificate_verified"] = True
            try:
                data = tls.recv(1024)
                out["refused"] = "closed" if not data else None
            except ssl.SSLError as e:
                out["refused"] = str(e)
except (OSError, ssl.SSLError) as e:
    out["error"] = str(e)
print(json.dumps(out))
"""


def ns_python(ns: str, script: str, *args: str, timeout: float = 10) -> str:
    """A short Python script in namespace ``ns``; its stdout ("" if it failed)."""
    argv = ["ip", "netns", "exec", ns, sys.executable, "-c", script, *args]
    try:
        return run(argv, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return ""


# -- server processes ---------------------------------------------------------------------


class Proc:
    """A server process of ours, its log file, and what it logged that is not routine."""

    def __init__(self, name: str, proc: subprocess.Popen, logfile: Path, since: int = 0) -> None:
        self.name, self.proc, self.logfile = name, proc, logfile
        self.since = since  # where this process's lines begin (a restart appends)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu(self) -> float:
        try:
            return cpu_seconds(self.proc.pid)
        except (OSError, IndexError, ValueError):
            return 0.0

    def text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for(self, pattern: str, timeout: float = 30) -> None:
        """Until this process (not an earlier one of the same log) logs ``pattern``."""
        deadline = time.monotonic() + timeout
        while pattern not in self.text()[self.since :]:
            if not self.alive() or time.monotonic() > deadline:
                raise CommandError(
                    f"{self.name}: no {pattern!r} within {timeout:.0f} s "
                    f"(exit {self.proc.poll()}): {self.text()[-1500:]}"
                )
            time.sleep(0.05)

    def kill9(self) -> float:
        """SIGKILL (a crash: no goodbye); the monotonic time it was sent."""
        t = time.monotonic()
        os.kill(self.proc.pid, signal.SIGKILL)  # `ip netns exec` execs: this is the server
        self.proc.wait(timeout=10)
        return t


class LogWatch:
    """The lines servers log from now on, each stamped (CLOCK_MONOTONIC) when first
    seen: polled every few ms, this times what a server did after a kill (Pyralog's log
    lines carry no time of their own)."""

    def __init__(self, procs: list[Proc]) -> None:
        self.procs = procs
        self.offsets = {p.logfile: p.logfile.stat().st_size for p in procs}
        self.partial: dict[Path, bytes] = {}

    def poll(self) -> list[tuple[float, str, str]]:
        out = []
        now = time.monotonic()
        for p in self.procs:
            try:
                with open(p.logfile, "rb") as f:
                    f.seek(self.offsets[p.logfile])
                    data = f.read()
            except OSError:
                continue
            self.offsets[p.logfile] += len(data)
            data = self.partial.pop(p.logfile, b"") + data
            *lines, rest = data.split(b"\n")
            if rest:
                self.partial[p.logfile] = rest
            out += [(now, p.name, line.decode(errors="replace")) for line in lines]
        return out


def _start(lab: Lab, ns: str, name: str, argv: list[str], logfile: Path) -> Proc:
    since = len(logfile.read_text(errors="replace")) if logfile.exists() else 0
    with open(logfile, "ab") as out:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env = {k: v for k, v in env.items() if not k.startswith("ETCD")}
        proc = lab.popen(ns, argv, stdout=out, stderr=out, env=env)
    return Proc(name, proc, logfile, since)


def start_etcd(lab: Lab, net: Net) -> Proc:
    """One etcd member in the store namespace, its client port on the LAN; fast elections
    (as tests/etcd.py), though one member never holds one after its start."""
    data = lab.tmp / "etcd"
    client = f"http://{lan_ip(STORE)}:{ETCD_PORT}"
    peer = "http://127.0.0.1:2380"
    argv = [
        ETCD, "--name=bench", f"--data-dir={data}",
        f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=bench={peer}", "--initial-cluster-state=new",
        f"--initial-cluster-token=bench-{uuid.uuid4().hex[:8]}",
        "--heartbeat-interval=50", "--election-timeout=500",
        "--logger=zap", "--log-outputs=stderr",
    ]  # fmt: skip
    etcd = _start(lab, net.ns[STORE], "etcd", argv, lab.tmp / "etcd.log")
    deadline = time.monotonic() + 20
    while True:
        out = ns_python(net.ns[STORE], HTTP_GET, f"{client}/health", "1")
        if '"health":"true"' in out.replace(" ", ""):
            return etcd
        if not etcd.alive() or time.monotonic() > deadline:
            raise CommandError(f"etcd did not become healthy: {etcd.text()[-1500:]}")
        time.sleep(0.1)


@dataclass
class PyralogCluster:
    """Three ``pyralog broker`` processes sharing one etcd prefix, listening on
    ``host_of(node)`` (their tunnel address unless told otherwise: bench/transport.py
    puts them on the LAN), with ``extra`` arguments (e.g. TLS flags) per node."""

    lab: Lab
    net: Net
    store_url: str
    data: dict[str, Path]
    session_timeout_ms: int
    brokers: dict[str, Proc] = field(default_factory=dict)
    host_of: Callable[[str], str] = tunnel_ip
    extra: Callable[[str], list[str]] = lambda node: []

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.host_of(n)}:{KAFKA_PORT}" for n in SERVERS)

    def start(self, node: str) -> Proc:
        argv = [
            PYRALOG, "broker", "--data", str(self.data[node]),
            "--listen", f"{self.host_of(node)}:{KAFKA_PORT}", "--node-id", str(node_id(node)),
            "--cluster-store", self.store_url, "--replication-factor", "3",
            "--min-insync-replicas", "2", "--session-timeout-ms", str(self.session_timeout_ms),
            "--no-auto-create", *self.extra(node),
        ]  # fmt: skip
        logfile = self.data[node].with_suffix(".log")
        self.brokers[node] = _start(self.lab, self.net.ns[node], f"broker {node}", argv, logfile)
        return self.brokers[node]

    @property
    def by_node(self) -> dict[str, Proc]:
        return self.brokers

    def server_cpu(self) -> float:
        return sum(b.cpu() for b in self.brokers.values())

    def procs(self) -> list[Proc]:
        return list(self.brokers.values())


def etcd_url(tag: str) -> str:
    """A fresh prefix of the session's etcd: one cluster's state, never another's."""
    return f"etcd://{lan_ip(STORE)}:{ETCD_PORT}/bench-{tag}-{uuid.uuid4().hex[:8]}/"


def start_pyralog(
    lab: Lab,
    net: Net,
    tag: str,
    session_timeout_ms: int,
    host_of: Callable[[str], str] = tunnel_ip,
    extra: Callable[[str], list[str]] = lambda node: [],
) -> PyralogCluster:
    url = etcd_url(tag)
    data = {n: lab.tmp / f"pyralog-{tag}-{n}" for n in SERVERS}
    cluster = PyralogCluster(lab, net, url, data, session_timeout_ms, host_of=host_of, extra=extra)
    for n in SERVERS:
        cluster.start(n)
    for n in SERVERS:
        cluster.brokers[n].wait_for("listening on")
    return cluster


# -- NATS ------------------------------------------------------------------------------------


def make_certs(directory: Path) -> dict[str, Path]:
    """A throwaway CA (bench/certs.py) and, for each NATS server, a certificate for its
    LAN address (the routes' host) good for both ends of a route. Returns ``ca`` and
    ``<node>.crt`` / ``<node>.key`` paths."""
    ca = ThrowawayCA.create(directory)
    paths = {"ca": ca.ca}
    for n in SERVERS:
        paths[f"{n}.crt"], paths[f"{n}.key"] = ca.issue(n, [nats_name(n), lan_ip(n)])
    return paths


def nats_config(node: str, store_dir: Path, certs: dict[str, Path]) -> str:
    """nats-server's configuration for one member: clients on the tunnel address, routes
    on the LAN with mutual TLS, JetStream with file storage, monitoring on the tunnel."""
    routes = ", ".join(
        f'"nats-route://{lan_ip(o)}:{NATS_ROUTE_PORT}"' for o in SERVERS if o != node
    )
    return f"""server_name: {nats_name(node)}
listen: "{tunnel_ip(node)}:{NATS_PORT}"
http: "{tunnel_ip(node)}:{NATS_MONITOR_PORT}"
jetstream {{
  store_dir: "{store_dir}"
}}
cluster {{
  name: bench
  listen: "{lan_ip(node)}:{NATS_ROUTE_PORT}"
  routes: [{routes}]
  tls {{
    cert_file: "{certs[f"{node}.crt"]}"
    key_file: "{certs[f"{node}.key"]}"
    ca_file: "{certs["ca"]}"
    verify: true
    timeout: 2
  }}
}}
"""


@dataclass
class NatsCluster:
    lab: Lab
    net: Net
    configs: dict[str, Path]
    servers: dict[str, Proc] = field(default_factory=dict)

    @property
    def urls(self) -> list[str]:
        return [f"{tunnel_ip(n)}:{NATS_PORT}" for n in SERVERS]

    def start(self, node: str) -> Proc:
        argv = ["nats-server", "-c", str(self.configs[node])]
        logfile = self.configs[node].with_suffix(".log")
        name = f"nats-server {nats_name(node)}"
        self.servers[node] = _start(self.lab, self.net.ns[node], name, argv, logfile)
        return self.servers[node]

    @property
    def by_node(self) -> dict[str, Proc]:
        return self.servers

    def server_cpu(self) -> float:
        return sum(s.cpu() for s in self.servers.values())

    def procs(self) -> list[Proc]:
        return list(self.servers.values())

    def jsz(self, node: str) -> dict:
        """The monitoring endpoint's /jsz of one member (from the client namespace)."""
        url = f"http://{tunnel_ip(node)}:{NATS_MONITOR_PORT}/jsz"
        out = ns_python(self.net.ns[CLIENT], HTTP_GET, url, "2")
        try:
            return json.loads(out)
        except ValueError:
            return {}

    def probe_route_tls(self, node: str, certs: dict[str, Path]) -> dict:
        """Connect to a member's route port from the etcd namespace (on the LAN) with
        TLS, trusting only the throwaway CA and offering no client certificate: a route
        port with mutual TLS completes the handshake (its certificate verifies against
        the CA, for its LAN address) and then refuses us. The member logs the refusal
        as an [ERR] line ("client didn't provide a certificate")."""
        out = ns_python(self.net.ns[STORE], TLS_PROBE, lan_ip(node), str(NATS_ROUTE_PORT),
                        str(certs["ca"]))  # fmt: skip
        try:
            probe = json.loads(out)
        except ValueError:
            probe = {"error": f"no answer: {out!r}"}
        return {
            "server": nats_name(node),
            "protocol": probe.get("protocol"),
            "server_certificate_verified": bool(probe.get("server_certificate_verified")),
            "refused_without_client_certificate": bool(probe.get("refused")),
            "refusal": probe.get("refused") or probe.get("error"),
        }

    def check_route_tls(self, certs: dict[str, Path]) -> list[dict]:
        probes = [self.probe_route_tls(n, certs) for n in SERVERS]
        for p in probes:
            if not (p["server_certificate_verified"] and p["refused_without_client_certificate"]):
                raise CommandError(f"NATS routes without mutual TLS: {p}")
        return probes

    def wait_ready(self, timeout: float = 60) -> None:
        """Until every member is up and they agree on a JetStream meta leader."""
        for s in self.servers.values():
            s.wait_for("Server is ready", timeout)
        deadline = time.monotonic() + timeout
        while True:
            leaders = {n: (self.jsz(n).get("meta_cluster") or {}).get("leader") for n in SERVERS}
            values = set(leaders.values())
            if len(values) == 1 and None not in values and "" not in values:
                return
            if time.monotonic() > deadline:
                raise CommandError(f"NATS: no JetStream meta leader agreed on: {leaders}")
            time.sleep(0.2)


def start_nats(lab: Lab, net: Net, tag: str, certs: dict[str, Path]) -> NatsCluster:
    configs = {}
    for n in SERVERS:
        store = lab.tmp / f"nats-{tag}-{n}"
        configs[n] = lab.write(f"nats-{tag}-{n}.conf", nats_config(n, store, certs))
    cluster = NatsCluster(lab, net, configs)
    for n in SERVERS:
        cluster.start(n)
    cluster.wait_ready()
    return cluster
