"""Multi-host test labs in network namespaces: veth links, WireGuard daemons, captures.

    with Lab() as lab:
        a, b = lab.namespace("a"), lab.namespace("b")
        link = lab.veth(a, b)                       # 172.31.X.1/24 <-> 172.31.X.2/24, fd00:31:X::
        ga = lab.wireguard(a, "go")                 # wireguard-go -f, unique interface name
        pb = lab.wireguard(b, "pyralog")            # pyralog-wg -f
        ga.configure(); pb.configure()              # private key + listen port, via `wg set`
        ga.add_peer(pb, endpoint=link.b4)           # `wg set ... peer ...`
        pb.add_peer(ga, endpoint=link.a4)
        ga.up(); pb.up()                            # tunnel addresses, link up
        assert a.ping(pb.ip4)

Everything a Lab creates (namespaces, daemons and any process left in its namespaces,
captures, UAPI sockets, temporary key files) is torn down when the ``with`` block ends,
whether or not the test failed; ``Lab.close`` then checks nothing was left behind.
Traffic only ever goes to the addresses of the lab's own namespaces.

Names are unique per process and call (prefix + pid + counter): namespaces are global,
and so is /var/run/wireguard, where each daemon's UAPI socket lives whatever its namespace,
so interface names (at most 15 bytes) are unique across namespaces and concurrent runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import itertools
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from processes import console_script, stop_process, wait_until

UAPI_DIR = Path("/var/run/wireguard")
PYRALOG_WG = str(console_script("pyralog-wg"))
IMPLEMENTATIONS = {"pyralog": PYRALOG_WG, "go": "wireguard-go"}
NS_PREFIX = "pyralog-t"
DEFAULT_PORT = 51820

_counter = itertools.count(1)
_subnets = itertools.count(1)


def missing_tools() -> list[str]:
    """The external tools a Lab needs that are not installed (empty when all are)."""
    missing = [t for t in ("ip", "wg", "wireguard-go", "ping") if shutil.which(t) is None]
    if not os.path.exists(PYRALOG_WG):
        missing.append(PYRALOG_WG)
    if not os.path.exists("/dev/net/tun"):
        missing.append("/dev/net/tun")
    return missing


def daemon_env(**extra: str) -> dict[str, str]:
    """The environment without the variables that change how WireGuard daemons behave."""
    env = {k: v for k, v in os.environ.items() if k not in _DAEMON_VARIABLES}
    env.update(extra)
    return env


_DAEMON_VARIABLES = (
    "LOG_LEVEL",
    "WG_PROCESS_FOREGROUND",
    "PYRALOG_FORCE_UNDER_LOAD",
    "PYRALOG_WG_TXQUEUELEN",
)


def endpoint_text(host: str, port: int) -> str:
    """``host:port`` as wg prints and parses it (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def unique(prefix: str) -> str:
    """``prefix`` + pid + "-" + counter: unique in this process and across concurrent runs."""
    return f"{prefix}{os.getpid()}-{next(_counter)}"


class CommandError(RuntimeError):
    pass


def run(
    argv: list[str], *, check: bool = True, timeout: float = 15, input: str | None = None, **kw
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, input=input, check=False, **kw
    )
    if check and done.returncode:
        raise CommandError(
            f"{' '.join(argv)} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}"
        )
    return done


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


# -- keys ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    private: str
    public: str


def genkey() -> KeyPair:
    private = run(["wg", "genkey"]).stdout.strip()
    return KeyPair(private, run(["wg", "pubkey"], input=private + "\n").stdout.strip())


def genpsk() -> str:
    return run(["wg", "genpsk"]).stdout.strip()


# -- namespaces and links -------------------------------------------------------------------


@dataclass
class Namespace:
    name: str
    lab: Lab

    def argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, **kw) -> subprocess.CompletedProcess[str]:
        return run(self.argv(*argv), **kw)

    def popen(self, *argv: str, **kw) -> subprocess.Popen:
        """A process in this namespace; stopped (SIGTERM, then SIGKILL) at teardown."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.argv(*argv), **kw)  # `ip netns exec` execs: same pid
        self.lab.defer(lambda: stop_process(proc))
        return proc

    def ip(self, *args: str, **kw) -> subprocess.CompletedProcess[str]:
        return run(["ip", "-n", self.name, *args], **kw)

    def pids(self) -> list[int]:
        """Every process whose network namespace is this one (`ip netns pids`)."""
        out = run(["ip", "netns", "pids", self.name], check=False).stdout
        return [int(p) for p in out.split()]

    def links(self) -> list[str]:
        out = self.ip("-o", "link", "show").stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]

    def ping(
        self,
        address: str,
        count: int = 3,
        *,
        interval: float = 0.2,
        wait: float = 1,
        deadline: float | None = None,
    ) -> bool:
        """True if ``address`` answered at least one of ``count`` echo requests.

        With ``deadline`` (seconds), keeps pinging until ``count`` replies or the deadline.
        """
        argv = ["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", str(wait)]
        if deadline is not None:
            argv += ["-w", str(deadline)]
        timeout = (deadline or count * interval + wait) + 10
        return self.run(*argv, address, check=False, timeout=timeout).returncode == 0

    def ping_stats(self, address: str, count: int, interval: float = 0.2) -> tuple[int, int]:
        """(sent, received) for ``count`` echo requests."""
        out = self.run(
            "ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "1", address,
            check=False, timeout=count * interval + 15,
        ).stdout  # fmt: skip
        return parse_ping(out)


def parse_ping(output: str) -> tuple[int, int]:
    """(transmitted, received) from ping's summary line."""
    for line in output.splitlines():
        if "packets transmitted" in line:
            parts = line.split(",")
            return int(parts[0].split()[0]), int(parts[1].split()[0])
    raise ValueError(f"no ping summary in {output!r}")


@dataclass(frozen=True)
class Veth:
    """A veth pair: ``a_if`` in namespace ``a`` with .1 addresses, ``b_if`` in ``b`` with .2."""

    a: Namespace
    b: Namespace
    a_if: str
    b_if: str
    net: int

    @property
    def a4(self) -> str:
        return f"172.31.{self.net}.1"

    @property
    def b4(self) -> str:
        return f"172.31.{self.net}.2"

    @property
    def a6(self) -> str:
        return f"fd00:31:{self.net}::1"

    @property
    def b6(self) -> str:
        return f"fd00:31:{self.net}::2"


# -- WireGuard daemons ------------------------------------------------------------------------


@dataclass
class PeerInfo:
    public_key: str
    preshared_key: str
    endpoint: str
    allowed_ips: str
    latest_handshake: int
    rx: int
    tx: int
    keepalive: str


@dataclass
class WireGuard:
    """One WireGuard interface served by ``impl`` ("pyralog" or "go") in ``ns``."""

    lab: Lab
    ns: Namespace
    impl: str
    ifname: str
    keys: KeyPair
    ip4: str
    ip6: str
    prefix4: int = 24
    prefix6: int = 64
    port: int = DEFAULT_PORT
    proc: subprocess.Popen | None = None
    log: Path | None = None

    @property
    def public_key(self) -> str:
        return self.keys.public

    @property
    def socket(self) -> Path:
        return UAPI_DIR / f"{self.ifname}.sock"

    def wg(self, *args: str, **kw) -> str:
        """``wg ARGS`` in this interface's namespace (configuration goes only through wg)."""
        return self.ns.run("wg", *args, **kw).stdout

    def set(self, *args: str, **kw) -> str:
        return self.wg("set", self.ifname, *args, **kw)

    def configure(self, listen_port: int | None = None) -> None:
        """Private key and listen port."""
        self.port = listen_port or self.port
        key = self.lab.write_secret(self.keys.private)
        self.set("private-key", str(key), "listen-port", str(self.port))

    def add_peer(
        self,
        other: WireGuard | str,
        *,
        endpoint: str | None = None,
        allowed_ips: list[str] | None = None,
        psk: str | None = None,
        keepalive: int | None = None,
        port: int | None = None,
    ) -> None:
        """``wg set IF peer KEY ...``. ``other``: a WireGuard (its tunnel addresses become
        the allowed IPs, its port the endpoint's) or a bare public key."""
        args = ["peer", other.public_key if isinstance(other, WireGuard) else other]
        if psk is not None:
            args += ["preshared-key", str(self.lab.write_secret(psk))]
        if allowed_ips is None and isinstance(other, WireGuard):
            allowed_ips = [f"{other.ip4}/32", f"{other.ip6}/128"]
        if allowed_ips:
            args += ["allowed-ips", ",".join(allowed_ips)]
        if endpoint is not None:
            port = port or (other.port if isinstance(other, WireGuard) else DEFAULT_PORT)
            args += ["endpoint", endpoint_text(endpoint, port)]
        if keepalive is not None:
            args += ["persistent-keepalive", str(keepalive)]
        self.set(*args)

    def up(self) -> None:
        """Tunnel addresses on the interface (IPv6 without DAD), then link up."""
        self.ns.ip("address", "add", f"{self.ip4}/{self.prefix4}", "dev", self.ifname)
        self.ns.ip(
            "-6", "address", "add", f"{self.ip6}/{self.prefix6}", "dev", self.ifname, "nodad"
        )
        self.ns.ip("link", "set", self.ifname, "up")

    def dump(self) -> list[PeerInfo]:
        lines = self.wg("show", self.ifname, "dump").splitlines()
        peers = []
        for line in lines[1:]:
            f = line.split("\t")
            peers.append(PeerInfo(f[0], f[1], f[2], f[3], int(f[4]), int(f[5]), int(f[6]), f[7]))
        return peers

    def peer(self, public_key: str) -> PeerInfo:
        found = [p for p in self.dump() if p.public_key == public_key]
        assert found, f"{self.ifname} has no peer {public_key}: {self.dump()}"
        return found[0]

    def handshake_with(self, other: WireGuard) -> int:
        return self.peer(other.public_key).latest_handshake

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


# -- packet capture ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Datagram:
    """One captured UDP datagram."""

    time: float
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes

    @property
    def type(self) -> int:
        return self.payload[0] if self.payload else -1


def parse_pcap(data: bytes) -> list[Datagram]:
    """The UDP datagrams in a pcap file (Ethernet, Linux cooked v1/v2 link types)."""
    if len(data) < 24:
        return []
    magic = data[:4]
    endian = {
        b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
        b"\xa1\xb2\xc3\xd4": (">", 1e-6),
        b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
        b"\xa1\xb2\x3c\x4d": (">", 1e-9),
    }.get(magic)
    if endian is None:
        raise ValueError(f"not a pcap file (magic {magic.hex()})")
    order, unit = endian
    linktype = struct.unpack_from(f"{order}I", data, 20)[0]
    out = []
    offset = 24
    while offset + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack_from(f"{order}IIII", data, offset)
        if offset + 16 + caplen > len(data):
            break  # a record tcpdump is still writing
        frame = data[offset + 16 : offset + 16 + caplen]
        offset += 16 + caplen
        if linktype == 1:  # Ethernet
            ethertype, ip = struct.unpack_from("!H", frame, 12)[0], frame[14:]
        elif linktype == 113:  # Linux cooked v1
            ethertype, ip = struct.unpack_from("!H", frame, 14)[0], frame[16:]
        elif linktype == 276:  # Linux cooked v2
            ethertype, ip = struct.unpack_from("!H", frame, 0)[0], frame[20:]
        else:
            raise ValueError(f"unsupported pcap link type {linktype}")
        datagram = _udp_in(ethertype, ip, sec + frac * unit)
        if datagram is not None:
            out.append(datagram)
    return out


def _udp_in(ethertype: int, ip: bytes, stamp: float) -> Datagram | None:
    if ethertype == 0x0800 and len(ip) >= 20 and ip[9] == 17:
        if struct.unpack_from("!H", ip, 6)[0] & 0x1FFF:
            return None  # a non-first fragment
        ihl = (ip[0] & 15) * 4
        src, dst = ip[12:16], ip[16:20]
    elif ethertype == 0x86DD and len(ip) >= 40 and ip[6] == 17:
        ihl = 40
        src, dst = ip[8:24], ip[24:40]
    else:
        return None
    sport, dport, length = struct.unpack_from("!HHH", ip, ihl)
    return Datagram(
        stamp,
        str(ipaddress.ip_address(src)),
        sport,
        str(ipaddress.ip_address(dst)),
        dport,
        ip[ihl + 8 : ihl + length],
    )


class Capture:
    """``tcpdump -i IFACE`` in a namespace, written to a pcap file; ``stop()`` parses it."""

    def __init__(self, ns: Namespace, iface: str, bpf: str = "udp") -> None:
        self.ns = ns
        self.path = ns.lab.tmp / f"{unique('cap')}.pcap"
        self._stderr: list[str] = []
        self._listening = threading.Event()
        self.proc = ns.popen(
            "tcpdump", "-i", iface, "-n", "-U", "--immediate-mode", "-Z", "root", "-s", "0",
            "-w", str(self.path), bpf,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        if not self._listening.wait(10):
            stop_process(self.proc)
            raise RuntimeError(f"tcpdump did not start: {''.join(self._stderr)}")

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)
            if "listening on" in line:
                self._listening.set()

    def _last_write(self) -> float:
        try:
            return self.path.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def datagrams(self) -> list[Datagram]:
        """What has been captured so far (tcpdump -U writes each packet as it comes)."""
        return parse_pcap(self.path.read_bytes()) if self.path.exists() else []

    def stop(self, settle: float = 0.2) -> list[Datagram]:
        """Stop after ``settle`` seconds without a new packet; all packets so far."""
        wait_until(lambda: time.time() - self._last_write() >= settle, 2, interval=0.05)
        stop_process(self.proc, signal.SIGINT)
        self._reader.join(5)
        return self.datagrams()


# -- TCP transfers ------------------------------------------------------------------------------

_RECEIVER = textwrap.dedent(
    """
    import hashlib, socket, sys
    host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, port))
    server.listen(1)
    server.settimeout(timeout)
    print("ready", flush=True)
    conn, _ = server.accept()
    conn.settimeout(timeout)
    digest, total = hashlib.sha256(), 0
    while True:
        chunk = conn.recv(1 << 16)
        if not chunk:
            break
        digest.update(chunk)
        total += len(chunk)
    print(total, digest.hexdigest(), flush=True)
    conn.close()
    """
)

_SENDER = textwrap.dedent(
    """
    import random, socket, sys
    host, port, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    timeout = float(sys.argv[5])
    rng = random.Random(seed)
    sock = socket.create_connection((host, port), timeout=timeout)
    left = size
    while left:
        chunk = rng.randbytes(min(1 << 16, left))
        sock.sendall(chunk)
        left -= len(chunk)
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)  # the receiver closes once it has counted everything
    """
)


def expected_digest(size: int, seed: int) -> str:
    """The sha256 of the bytes the sender script sends (same generator, same chunking)."""
    rng, digest, left = random.Random(seed), hashlib.sha256(), size
    while left:
        chunk = rng.randbytes(min(1 << 16, left))
        digest.update(chunk)
        left -= len(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Transfer:
    received: int
    digest: str
    seconds: float


def tcp_transfer(
    sender: Namespace,
    receiver: Namespace,
    address: str,
    size: int,
    *,
    seed: int = 213,
    port: int = 5201,
    timeout: float = 60,
) -> Transfer:
    """Send ``size`` seeded pseudo-random bytes over TCP from ``sender`` to ``address`` (in
    ``receiver``); the receiver counts and hashes what arrives."""
    server = receiver.popen(
        sys.executable, "-c", _RECEIVER, address, str(port), str(timeout),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert server.stdout is not None
    ready, _, _ = select.select([server.stdout], [], [], 10)
    line = server.stdout.readline() if ready else ""
    if line.strip() != "ready":
        stop_process(server)
        raise RuntimeError(f"TCP receiver did not start: {line!r} {server.stderr.read()!r}")
    start = time.monotonic()
    client = sender.run(
        sys.executable, "-c", _SENDER, address, str(port), str(size), str(seed), str(timeout),
        check=False, timeout=timeout + 5,
    )  # fmt: skip
    try:
        out, err = server.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(server)
        out, err = "", "receiver timed out"
    seconds = time.monotonic() - start
    if client.returncode or server.returncode:
        raise RuntimeError(
            f"TCP transfer failed: sender {client.returncode} {client.stderr.strip()!r}, "
            f"receiver {server.returncode} {err.strip()!r}"
        )
    count, digest = out.split()
    return Transfer(int(count), digest, seconds)


# -- the lab ----------------------------------------------------------------------------------


@dataclass
class Lab:
    """Owns everything a test creates; ``close()`` (or leaving ``with``) tears it all down."""

    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pyralog-netns-")))
    namespaces: list[Namespace] = field(default_factory=list)
    daemons: list[WireGuard] = field(default_factory=list)
    interfaces: list[str] = field(default_factory=list)
    _cleanups: list[Callable[[], object]] = field(default_factory=list)
    _tunnel_nets: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def defer(self, cleanup: Callable[[], object]) -> None:
        """Run ``cleanup`` at teardown (cleanups run last-registered first)."""
        self._cleanups.append(cleanup)

    def write_secret(self, text: str) -> Path:
        """A key file (mode 0600) in the lab's temporary directory, removed at teardown."""
        path = self.tmp / unique("key")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        return path

    def ifname(self, tag: str) -> str:
        """A globally unique interface name, registered so its UAPI socket is cleaned up."""
        name = unique(f"pw{tag}")
        assert len(name) <= 15, name
        self.interfaces.append(name)
        return name

    def namespace(self, label: str = "") -> Namespace:
        ns = Namespace(unique(f"{NS_PREFIX}{label}-"), self)
        run(["ip", "netns", "add", ns.name])
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def veth(self, a: Namespace, b: Namespace) -> Veth:
        """A veth pair between ``a`` and ``b`` with 172.31.X.{1,2}/24 and fd00:31:X::{1,2}/64."""
        net = next(_subnets) % 250 + 1
        n = next(_counter)
        a_if, b_if = f"pv{os.getpid()}-{n}a", f"pv{os.getpid()}-{n}b"
        run(
            ["ip", "link", "add", a_if, "netns", a.name, "type", "veth",
             "peer", "name", b_if, "netns", b.name]
        )  # fmt: skip
        link = Veth(a, b, a_if, b_if, net)
        for ns, name, v4, v6 in ((a, a_if, link.a4, link.a6), (b, b_if, link.b4, link.b6)):
            ns.ip("address", "add", f"{v4}/24", "dev", name)
            ns.ip("-6", "address", "add", f"{v6}/64", "dev", name, "nodad")
            ns.ip("link", "set", name, "up")
        return link

    def switch(self, members: list[Namespace]) -> list[str]:
        """One LAN for ``members``: a bridge in a namespace of its own, a veth from each
        member into it; member i gets 172.30.X.(i+1)/24. Returns the members' addresses."""
        hub = self.namespace("sw")
        hub.ip("link", "add", "br0", "type", "bridge")
        hub.ip("link", "set", "br0", "up")
        net = next(_subnets) % 250 + 1
        addresses = []
        for i, ns in enumerate(members):
            n = next(_counter)
            inner, outer = f"ps{os.getpid()}-{n}a", f"ps{os.getpid()}-{n}b"
            run(
                ["ip", "link", "add", inner, "netns", ns.name, "type", "veth",
                 "peer", "name", outer, "netns", hub.name]
            )  # fmt: skip
            hub.ip("link", "set", outer, "master", "br0")
            hub.ip("link", "set", outer, "up")
            address = f"172.30.{net}.{i + 1}"
            ns.ip("address", "add", f"{address}/24", "dev", inner)
            ns.ip("link", "set", inner, "up")
            addresses.append(address)
        return addresses

    def tunnel_net(self) -> int:
        """A fresh X for tunnel addresses 10.31.X.0/24 and fd00:131:X::/64."""
        return next(self._tunnel_nets)

    def wireguard(
        self,
        ns: Namespace,
        impl: str,
        *,
        net: int = 1,
        host: int = 1,
        env: dict[str, str] | None = None,
        keys: KeyPair | None = None,
    ) -> WireGuard:
        """Start ``impl`` in the foreground in ``ns`` on a fresh interface; wait for its
        UAPI socket. Tunnel addresses (added by ``up()``): 10.31.NET.HOST, fd00:131:NET::HOST."""
        ifname = self.ifname(impl[0])
        log = self.tmp / f"{ifname}.log"
        wg = WireGuard(
            self, ns, impl, ifname, keys or genkey(), f"10.31.{net}.{host}",
            f"fd00:131:{net}::{host:x}", log=log,
        )  # fmt: skip
        environment = daemon_env(WG_PROCESS_FOREGROUND="1", LOG_LEVEL="debug", **(env or {}))
        with log.open("wb") as out:
            wg.proc = ns.popen(
                IMPLEMENTATIONS[impl], "-f", ifname, stdout=out, stderr=subprocess.STDOUT,
                env=environment,
            )  # fmt: skip
        self.daemons.append(wg)
        if not wait_until(lambda: wg.socket.exists() or not wg.alive(), 15) or not wg.alive():
            raise RuntimeError(f"{impl} did not start on {ifname}: {wg.log_text()}")
        return wg

    def close(self) -> None:
        errors: list[BaseException] = []

        def attempt(step: Callable[[], object]) -> None:
            try:
                step()
            except Exception as e:  # keep tearing down; report the first error at the end
                errors.append(e)

        for daemon in self.daemons:
            if daemon.log_text():  # shown by pytest when the test fails
                print(f"--- {daemon.impl} {daemon.ifname} log ---\n{daemon.log_text()[-6000:]}")
        while self._cleanups:
            attempt(self._cleanups.pop())
        for ns in reversed(self.namespaces):
            attempt(lambda ns=ns: self._empty(ns))
            attempt(lambda ns=ns: run(["ip", "netns", "del", ns.name], check=False))
        for name in self.interfaces:
            attempt(lambda name=name: (UAPI_DIR / f"{name}.sock").unlink(missing_ok=True))
        attempt(lambda: shutil.rmtree(self.tmp, ignore_errors=True))
        attempt(self._check_clean)
        if errors:
            raise errors[0]

    @staticmethod
    def _empty(ns: Namespace) -> None:
        """End processes still in the namespace (e.g. daemons that detached): by pid."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = [p for p in ns.pids() if p != os.getpid()]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            if not wait_until(lambda pids=pids: not any(map(pid_alive, pids)), 3):
                continue
            return

    def _check_clean(self) -> None:
        listed = run(["ip", "netns", "list"], check=False).stdout.split()
        leaked = [ns.name for ns in self.namespaces if ns.name in listed]
        leaked += [str(s) for n in self.interfaces if (s := UAPI_DIR / f"{n}.sock").exists()]
        if leaked:
            raise RuntimeError(f"teardown left behind: {leaked}")
