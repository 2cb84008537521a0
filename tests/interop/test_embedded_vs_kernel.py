"""Embedded mode (``pyralog forward``, unprivileged) against wireguard-go and kernel sockets.

Two network namespaces joined by a veth pair::

    K  emk<pid> 172.28.0.1 --- veth --- 172.28.0.2 eme<pid>  E
       wireguard-go emwg<pid>                                pyralog forward, as uid 65534
       tunnel 10.28.0.1, fd28:28::1                          tunnel 10.28.0.2, fd28:28::2
       kernel TCP/UDP servers                                kernel clients on 127.0.0.1,
                                                             local services for --reverse

K is configured only with ``wg set`` and ``ip``. In E the forwarder runs WireGuard and
TCP/IP in-process: the only kernel socket it uses on the tunnel's behalf is one UDP
socket, so it runs as user nobody with no capabilities. Clients and servers are a small
agent script (below) that sends seeded pseudo-random data and checks sha256 digests in both
directions. Nothing leaves the two namespaces, and everything is torn down at the end,
whether or not a test failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from processes import NOBODY, as_nobody, console_script, needs_script, stop_process, wait_until
from pyralog.wireguard.keys import PrivateKey

PYRALOG = console_script("pyralog")
_MISSING = [t for t in ("ip", "wg", "wireguard-go", "ping", "setpriv") if not shutil.which(t)]

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(bool(_MISSING), reason=f"needs {', '.join(_MISSING)} on PATH"),
    pytest.mark.skipif(
        not os.path.exists("/dev/net/tun"), reason="wireguard-go needs /dev/net/tun"
    ),
    needs_script("pyralog"),
]

PID = os.getpid()
NS_K, NS_E = f"emK{PID}", f"emE{PID}"
VETH_K, VETH_E = f"emk{PID}", f"eme{PID}"
WG_IF = f"emwg{PID}"
UAPI_SOCKET = Path("/var/run/wireguard") / f"{WG_IF}.sock"

K4, E4 = "172.28.0.1", "172.28.0.2"  # veth
KT4, ET4, ET4_LOSSY = "10.28.0.1", "10.28.0.2", "10.28.0.3"  # tunnel
KT6, ET6 = "fd28:28::1", "fd28:28::2"
K_WG_PORT, E_WG_PORT, IMPAIR_PORT = 51820, 51821, 51900

# servers (agent "serve"): in K on every address, in E on 127.0.0.1 for --reverse;
# each also answers slowly after a half-close on TCP port + 2
K_TCP, K_UDP = 7001, 7002
E_TCP, E_UDP = 7101, 7102
# the forwarder's local ports in E, and its ports on the tunnel address
FWD_TCP, FWD_UDP, FWD_TCP6, FWD_SLOW, LOSSY_FWD_TCP = 6001, 6002, 6003, 6004, 6101
REV_TCP, REV_UDP = 8001, 8002

AGENT = textwrap.dedent(
    r'''
    """Test agent. serve HOST TCP UDP | xfer HOST PORT SIZE CONNS SEED TIMEOUT |
    udp HOST PORT COUNT SEED | halfclose HOST PORT CONNS SIZE |
    impair LHOST LPORT THOST TPORT LOSS DELAY REORDER SEED

    TCP transfer protocol: the client sends (size, seed) then `size` bytes of stream(seed)
    and half-closes; concurrently the server sends `size` bytes of stream(seed + 1), then,
    once the client's bytes and EOF have arrived, the sha256 of what it received, and closes.
    """
    import asyncio, hashlib, json, random, socket, struct, sys, time

    CHUNK = 1 << 16


    def stream(seed, size):
        rng, left = random.Random(seed), size
        while left:
            n = min(CHUNK, left)
            yield rng.randbytes(n)
            left -= n


    def digest(seed, size):
        h = hashlib.sha256()
        for chunk in stream(seed, size):
            h.update(chunk)
        return h.digest()


    async def send_stream(writer, seed, size):
        h = hashlib.sha256()
        for chunk in stream(seed, size):
            h.update(chunk)
            writer.write(chunk)
            await writer.drain()
        return h.digest()


    async def receive_hash(reader, size):
        h, left = hashlib.sha256(), size
        while left:
            data = await reader.read(min(CHUNK, left))
            if not data:
                raise EOFError(f"EOF with {left} of {size} bytes still to come")
            h.update(data)
            left -= len(data)
        return h.digest()


    async def handle(reader, writer):
        try:
            size, seed = struct.unpack("!QQ", await reader.readexactly(16))

            async def receive():
                got = await receive_hash(reader, size)
                if await reader.read(1):
                    raise ValueError("more bytes than announced")
                return got

            _, got = await asyncio.gather(send_stream(writer, seed + 1, size), receive())
            writer.write(got)
            await writer.drain()
        except Exception as e:
            print(f"server: {e!r}", file=sys.stderr, flush=True)
        finally:
            writer.close()


    async def handle_slow(reader, writer):
        """Read a request until the client half-closes, think, answer with its sha256."""
        try:
            request = await reader.read()
            await asyncio.sleep(3.0)
            writer.write(hashlib.sha256(request).digest())
            await writer.drain()
        finally:
            writer.close()


    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            self.transport.sendto(data, addr)


    async def serve(host, tcp_port, udp_port):
        loop = asyncio.get_running_loop()
        await asyncio.start_server(handle, None if host == "*" else host, tcp_port)
        await asyncio.start_server(handle_slow, None if host == "*" else host, tcp_port + 2)
        await loop.create_datagram_endpoint(
            Echo, local_addr=("0.0.0.0" if host == "*" else host, udp_port)
        )
        print("ready", flush=True)
        await asyncio.Event().wait()


    async def one(host, port, size, seed):
        start = time.monotonic()
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(struct.pack("!QQ", size, seed))

        async def send():
            sent = await send_stream(writer, seed, size)
            writer.write_eof()
            return sent

        done = {}

        async def receive():
            got = await receive_hash(reader, size)
            done["down"] = time.monotonic() - start
            theirs = await reader.readexactly(32)  # the server hashed all we sent
            done["up"] = time.monotonic() - start
            tail = await reader.read()
            return got, theirs, tail

        sent, (got, theirs, tail) = await asyncio.gather(send(), receive())
        writer.close()
        return {
            "up": theirs == sent,
            "down": got == digest(seed + 1, size),
            "tail": len(tail),
            "seconds": time.monotonic() - start,
            "down_seconds": done["down"],
            "up_seconds": done["up"],
        }


    async def xfer(host, port, size, conns, seed, timeout):
        async def guarded(i):
            try:
                return await one(host, port, size, seed + 2 * i)
            except Exception as e:
                return {"error": repr(e)}

        start = time.monotonic()
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(guarded(i) for i in range(conns))), timeout
            )
        except TimeoutError:
            results = [{"error": f"timed out after {timeout} s"}]
        print(json.dumps({"seconds": time.monotonic() - start, "results": results}))


    async def halfclose(host, port, conns, size):
        """Requests sent with a half-close; the (slow) replies must still arrive."""
        async def one(i):
            try:
                reader, writer = await asyncio.open_connection(host, port)
                request = random.Random(i).randbytes(size)
                writer.write(request)
                writer.write_eof()
                reply = await reader.read()
                writer.close()
                return reply == hashlib.sha256(request).digest() or f"reply {reply[:40]!r}"
            except Exception as e:
                return repr(e)

        results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(conns))), 30)
        print(json.dumps(results))


    def udp(host, port, count, seed):
        rng = random.Random(seed)
        sizes = [0, 1, 64, 512, 1000, 1300, 1388]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect((host, port))
        report = {"intact": 0, "lost": 0, "bad": [], "tries": 0}
        for i in range(count):
            payload = struct.pack("!I", i) + rng.randbytes(sizes[i % len(sizes)])
            for _ in range(4):  # the first datagram may wait for a handshake
                report["tries"] += 1
                sock.send(payload)
                deadline = time.monotonic() + 1.5
                reply = None
                while reply is None and time.monotonic() < deadline:
                    sock.settimeout(max(deadline - time.monotonic(), 0.01))
                    try:
                        data = sock.recv(4096)
                    except (TimeoutError, ConnectionRefusedError):
                        continue
                    if data[:4] == payload[:4]:
                        reply = data
                    elif len(data) < 4 or struct.unpack("!I", data[:4])[0] > i:
                        report["bad"].append(f"unexpected reply {data[:8].hex()}")
                if reply is not None:
                    break
            if reply is None:
                report["lost"] += 1
            elif reply == payload:
                report["intact"] += 1
            else:
                report["bad"].append(f"#{i}: sent {len(payload)} bytes, got {len(reply)}")
        print(json.dumps(report))


    async def impair(lhost, lport, thost, tport, loss, delay, reorder, seed):
        """A UDP relay that drops, delays and reorders like netem (loss, delay, reorder)."""
        loop = asyncio.get_running_loop()
        rng = random.Random(seed)
        client = []
        stats = {"dropped": 0, "early": 0, "delayed": 0}

        def relay(transport, data, addr):
            if rng.random() < loss:
                stats["dropped"] += 1
            elif rng.random() < reorder:
                stats["early"] += 1
                transport.sendto(data, addr)
            else:
                stats["delayed"] += 1
                loop.call_later(delay, transport.sendto, data, addr)

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                if client:
                    relay(front, data, client[-1])

        class Front(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                if not client or client[-1] != addr:
                    client.append(addr)
                relay(back, data, None)

        back, _ = await loop.create_datagram_endpoint(Back, remote_addr=(thost, tport))
        front, _ = await loop.create_datagram_endpoint(Front, local_addr=(lhost, lport))
        print("ready", flush=True)
        while True:
            await asyncio.sleep(1)
            print(json.dumps(stats), file=sys.stderr, flush=True)


    def main(argv):
        mode, args = argv[0], argv[1:]
        if mode == "serve":
            asyncio.run(serve(args[0], int(args[1]), int(args[2])))
        elif mode == "xfer":
            host, port, size, conns, seed, timeout = args
            asyncio.run(xfer(host, int(port), int(size), int(conns), int(seed), float(timeout)))
        elif mode == "halfclose":
            asyncio.run(halfclose(args[0], int(args[1]), int(args[2]), int(args[3])))
        elif mode == "udp":
            udp(args[0], int(args[1]), int(args[2]), int(args[3]))
        elif mode == "impair":
            lh, lp, th, tp, loss, delay, reorder, seed = args
            asyncio.run(
                impair(lh, int(lp), th, int(tp), float(loss), float(delay), float(reorder),
                       int(seed))
            )


    main(sys.argv[1:])
    '''
)


# -- plumbing -----------------------------------------------------------------------------------


def run(*argv: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
    )
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


@dataclass
class Lab:
    tmp: Path
    agent: Path
    k_key: PrivateKey
    e_key: PrivateKey
    lossy_key: PrivateKey
    procs: list[subprocess.Popen] = field(default_factory=list)
    forwarder: subprocess.Popen | None = None

    def popen(self, ns: str, *argv: str, log: str, ready: bool = False) -> subprocess.Popen:
        """A process in ``ns``, stderr (and stdout unless ``ready``) to tmp/``log``; with
        ``ready``, wait for it to print "ready" on stdout."""
        out = (self.tmp / log).open("ab")
        proc = subprocess.Popen(
            in_ns(ns, *argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if ready else out,
            stderr=out,
        )
        out.close()
        self.procs.append(proc)
        if ready:
            assert proc.stdout is not None
            readable, _, _ = select.select([proc.stdout], [], [], 15)
            line = proc.stdout.readline() if readable else b""
            if line.strip() != b"ready":
                stop_process(proc)
                raise RuntimeError(f"{argv} did not start: {line!r} {self.log(log)}")
        return proc

    def log(self, name: str) -> str:
        path = self.tmp / name
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def agent_run(self, ns: str, *args: str, timeout: float) -> dict:
        done = run(*in_ns(ns, sys.executable, str(self.agent), *args), check=False, timeout=timeout)
        assert done.returncode == 0, f"agent {args}: {done.returncode} {done.stderr[-3000:]}"
        return json.loads(done.stdout)

    def write_config(
        self, name: str, key: PrivateKey, address: str, endpoint: str, *extra: str
    ) -> Path:
        path = self.tmp / name
        path.write_text(
            "\n".join(
                [
                    "# E: embedded side of the interop lab",
                    "[Interface]",
                    f"PrivateKey = {key.to_base64()}",
                    f"Address = {address}",
                    *extra,
                    "",
                    "[Peer]",
                    f"PublicKey = {self.k_key.public_key.to_base64()}",
                    f"Endpoint = {endpoint}",
                    "AllowedIPs = 10.28.0.0/24, fd28:28::/64",
                    "",
                ]
            )
        )
        os.chown(path, NOBODY, NOBODY)
        path.chmod(0o600)
        return path

    def start_forwarder(self, config: Path, *specs: str, log: str) -> subprocess.Popen:
        """``pyralog forward`` in E as nobody; waits for its "tunnel up" log line."""
        proc = self.popen(
            NS_E, *as_nobody(str(PYRALOG), "forward", "--config", str(config), *specs), log=log
        )
        up = wait_until(lambda: "tunnel up" in self.log(log) or proc.poll() is not None, 20)
        if not up or proc.poll() is not None:
            raise RuntimeError(f"pyralog forward did not start ({proc.poll()}): {self.log(log)}")
        return proc


def _cleanup_namespaces() -> None:
    for ns in (NS_E, NS_K):
        # end whatever is still in our namespaces (only processes this module started)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = run("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), sig)
            if not pids or wait_until(
                lambda pids=pids: not any(os.path.exists(f"/proc/{p}") for p in pids), 3
            ):
                break
        run("ip", "netns", "del", ns, check=False)
    UAPI_SOCKET.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    _cleanup_namespaces()  # a namespace left by an earlier run with the same pid
    tmp = Path(tempfile.mkdtemp(prefix="em-interop-"))
    tmp.chmod(0o755)  # nobody must reach its config file
    agent = tmp / "agent.py"
    agent.write_text(AGENT)
    agent.chmod(0o644)
    lab = Lab(tmp, agent, PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate())
    try:
        for ns in (NS_K, NS_E):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "link", "add", VETH_K, "netns", NS_K, "type", "veth",
            "peer", "name", VETH_E, "netns", NS_E)  # fmt: skip
        for ns, dev, addr in ((NS_K, VETH_K, K4), (NS_E, VETH_E, E4)):
            run("ip", "-n", ns, "address", "add", f"{addr}/24", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")

        # K: wireguard-go, configured with wg set
        env = {k: v for k, v in os.environ.items() if k not in ("LOG_LEVEL",)}
        env["WG_PROCESS_FOREGROUND"] = "1"
        log = (tmp / "wireguard-go.log").open("ab")
        wg_argv = in_ns(NS_K, "wireguard-go", "-f", WG_IF)
        lab.procs.append(
            subprocess.Popen(wg_argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        )
        log.close()
        if not wait_until(UAPI_SOCKET.exists, 15):
            raise RuntimeError(f"wireguard-go did not start: {lab.log('wireguard-go.log')}")
        key_file = tmp / "k.key"
        key_file.write_text(lab.k_key.to_base64() + "\n")
        key_file.chmod(0o600)
        run(*in_ns(NS_K, "wg", "set", WG_IF, "private-key", str(key_file),
                   "listen-port", str(K_WG_PORT),
                   "peer", lab.e_key.public_key.to_base64(),
                   "allowed-ips", f"{ET4}/32,{ET6}/128", "endpoint", f"{E4}:{E_WG_PORT}",
                   "peer", lab.lossy_key.public_key.to_base64(),
                   "allowed-ips", f"{ET4_LOSSY}/32"))  # fmt: skip
        run("ip", "-n", NS_K, "address", "add", f"{KT4}/24", "dev", WG_IF)
        run("ip", "-n", NS_K, "-6", "address", "add", f"{KT6}/64", "dev", WG_IF, "nodad")
        run("ip", "-n", NS_K, "link", "set", WG_IF, "up")

        # servers: in K on every address, in E on 127.0.0.1 (targets of --reverse)
        agent_argv = (sys.executable, str(agent), "serve")
        lab.popen(NS_K, *agent_argv, "*", str(K_TCP), str(K_UDP), log="k-serve.log", ready=True)
        lab.popen(
            NS_E, *agent_argv, "127.0.0.1", str(E_TCP), str(E_UDP), log="e-serve.log", ready=True
        )

        # E: the forwarder, as nobody
        config = lab.write_config(
            "e.conf", lab.e_key, f"{ET4}/24, {ET6}/64", f"{K4}:{K_WG_PORT}",
            f"ListenPort = {E_WG_PORT}",
        )  # fmt: skip
        lab.forwarder = lab.start_forwarder(
            config,
            f"127.0.0.1:{FWD_TCP}:{KT4}:{K_TCP}",
            f"{FWD_UDP}:{KT4}:{K_UDP}/udp",
            f"127.0.0.1:{FWD_TCP6}:[{KT6}]:{K_TCP}",
            f"127.0.0.1:{FWD_SLOW}:{KT4}:{K_TCP + 2}",
            "--reverse", f"{REV_TCP}:127.0.0.1:{E_TCP}",
            "--reverse", f"{REV_UDP}:127.0.0.1:{E_UDP}/udp",
            log="forward.log",
        )  # fmt: skip
        yield lab
    finally:
        for proc in reversed(lab.procs):
            with contextlib.suppress(Exception):
                stop_process(proc)
        for name in ("forward.log", "forward-lossy.log", "wireguard-go.log", "k-serve.log"):
            if text := lab.log(name):
                print(f"--- {name} ---\n{text}")
        _cleanup_namespaces()
        shutil.rmtree(tmp, ignore_errors=True)


def check_transfer(report: dict, conns: int, size: int) -> float:
    """Assert every connection moved ``size`` bytes intact both ways; the wall time."""
    results = report["results"]
    errors = [r for r in results if "error" in r or not (r["up"] and r["down"]) or r["tail"]]
    assert not errors, f"{len(errors)} of {conns} connections failed: {errors[:5]}"
    assert len(results) == conns
    return report["seconds"]


def forwarder_alive(lab: Lab) -> None:
    assert lab.forwarder is not None
    assert lab.forwarder.poll() is None, f"forwarder exited: {lab.log('forward.log')}"


# -- tests --------------------------------------------------------------------------------------


def test_forwarder_is_unprivileged(lab: Lab) -> None:
    assert lab.forwarder is not None
    pid = lab.forwarder.pid  # ip netns exec and setpriv exec: the same pid
    status = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    assert "pyralog" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    assert status["Uid"].split() == [str(NOBODY)] * 4
    assert status["Gid"].split() == [str(NOBODY)] * 4
    assert status["Groups"].strip() == ""
    for cap in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
        assert int(status[cap], 16) == 0, f"{cap} = {status[cap]}"
    assert run("ip", "netns", "identify", str(pid)).stdout.strip() == NS_E


def test_tcp_forward_20mb_each_way(lab: Lab) -> None:
    size = 20 * 1000 * 1000
    report = lab.agent_run(
        NS_E, "xfer", "127.0.0.1", str(FWD_TCP), str(size), "1", "11", "60", timeout=75
    )
    seconds = check_transfer(report, 1, size)
    print(f"20 MB each way in {seconds:.2f} s: {size / seconds / 1e6:.2f} MB/s per direction")
    forwarder_alive(lab)


def test_tcp_forward_50_concurrent(lab: Lab) -> None:
    conns, size = 50, 200 * 1000
    report = lab.agent_run(
        NS_E, "xfer", "127.0.0.1", str(FWD_TCP), str(size), str(conns), "21", "60", timeout=75
    )
    seconds = check_transfer(report, conns, size)
    print(f"{conns} x 200 KB each way in {seconds:.2f} s")
    forwarder_alive(lab)


def test_tcp_forward_half_close_then_slow_reply(lab: Lab) -> None:
    """Clients that half-close and then wait for a slow reply (HTTP/1.0-style, `nc -N`): the
    forwarder must keep those connections alive while the server thinks, even when its
    garbage collector runs meanwhile (busy concurrent transfers make that likely)."""
    conns, rounds = 50, 2
    for _ in range(rounds):
        waiting = subprocess.Popen(
            in_ns(NS_E, sys.executable, str(lab.agent), "halfclose", "127.0.0.1",
                  str(FWD_SLOW), str(conns), "3000"),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            time.sleep(0.5)  # requests sent and half-closed; the server thinks for 3 s
            busy = lab.agent_run(
                NS_E, "xfer", "127.0.0.1", str(FWD_TCP), "150000", "50", "25", "40", timeout=50
            )
            out, err = waiting.communicate(timeout=40)
        finally:
            stop_process(waiting)
        assert waiting.returncode == 0, err
        failed = [r for r in json.loads(out) if r is not True]
        assert not failed, (
            f"{len(failed)} of {conns} half-closed connections lost their reply: {failed[:3]}; "
            f"forwarder log: {lab.log('forward.log')[-1500:]}"
        )
        check_transfer(busy, 50, 150000)


def test_tcp_forward_to_ipv6_target(lab: Lab) -> None:
    size = 1000 * 1000
    report = lab.agent_run(
        NS_E, "xfer", "127.0.0.1", str(FWD_TCP6), str(size), "2", "31", "30", timeout=40
    )
    check_transfer(report, 2, size)


def test_reverse_tcp(lab: Lab) -> None:
    """A kernel client in K reaches a service on 127.0.0.1 in E via E's tunnel address."""
    size = 5 * 1000 * 1000
    report = lab.agent_run(NS_K, "xfer", ET4, str(REV_TCP), str(size), "3", "41", "45", timeout=55)
    check_transfer(report, 3, size)
    report = lab.agent_run(NS_K, "xfer", ET6, str(REV_TCP), "100000", "2", "43", "30", timeout=40)
    check_transfer(report, 2, 100000)


def test_udp_forward(lab: Lab) -> None:
    report = lab.agent_run(NS_E, "udp", "127.0.0.1", str(FWD_UDP), "70", "51", timeout=60)
    assert report["intact"] == 70, report
    assert not report["bad"], report


def test_reverse_udp(lab: Lab) -> None:
    report = lab.agent_run(NS_K, "udp", ET4, str(REV_UDP), "70", "61", timeout=60)
    assert report["intact"] == 70, report
    assert not report["bad"], report


@pytest.mark.parametrize(("address", "flag"), [(ET4, "-4"), (ET6, "-6")])
def test_ping_embedded_stack(lab: Lab, address: str, flag: str) -> None:
    done = run(*in_ns(NS_K, "ping", flag, "-n", "-c", "3", "-W", "2", address), check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0% packet loss" in done.stdout, done.stdout
    big = run(
        *in_ns(NS_K, "ping", flag, "-n", "-c", "2", "-W", "2", "-s", "1300", address),
        check=False,
    )
    assert big.returncode == 0, big.stdout + big.stderr


# -- a lossy, slow, reordering link ---------------------------------------------------------

LOSSY_SIZE = 5 * 1000 * 1000
LOSSY_TIMEOUT = 60


def _netem_unavailable() -> str | None:
    """None if netem works on our veth (probe added and removed again), else why not."""
    probe = ("tc", "qdisc", "add", "dev", VETH_K, "root", "netem", "delay", "1ms")
    done = run(*in_ns(NS_K, *probe), check=False)
    if done.returncode != 0 and shutil.which("modprobe"):
        modprobe = run("modprobe", "sch_netem", check=False)
        if modprobe.returncode == 0:
            done = run(*in_ns(NS_K, *probe), check=False)
    if done.returncode == 0:
        run(*in_ns(NS_K, "tc", "qdisc", "del", "dev", VETH_K, "root"), check=False)
        return None
    return (
        f"tc netem is unavailable here ({done.stderr.strip()}; sch_netem could not be "
        "loaded); "
        "test_lossy_link_userspace applies the same loss/delay/reordering with a UDP relay"
    )


def test_lossy_link_netem(lab: Lab) -> None:
    """netem on both ends of the veth: 1% loss, 20 ms delay, 25% reordered, each way."""
    reason = _netem_unavailable()
    if reason:
        pytest.skip(reason)
    netem = ("root", "netem", "loss", "1%", "delay", "20ms", "reorder", "25%", "50%")
    try:
        for ns, dev in ((NS_K, VETH_K), (NS_E, VETH_E)):
            run(*in_ns(ns, "tc", "qdisc", "add", "dev", dev, *netem))
        report = lab.agent_run(
            NS_E, "xfer", "127.0.0.1", str(FWD_TCP), str(LOSSY_SIZE), "1", "71",
            str(LOSSY_TIMEOUT), timeout=LOSSY_TIMEOUT + 15,
        )  # fmt: skip
    finally:
        for ns, dev in ((NS_K, VETH_K), (NS_E, VETH_E)):
            run(*in_ns(ns, "tc", "qdisc", "del", "dev", dev, "root"), check=False)
    seconds = check_transfer(report, 1, LOSSY_SIZE)
    print(f"netem: 5 MB each way in {seconds:.1f} s")
    forwarder_alive(lab)


def test_lossy_link_userspace(lab: Lab) -> None:
    """The same impairment, netem-style, by a UDP relay in K between a second forwarder in E
    and wireguard-go: each WireGuard datagram either way is dropped with p=1%, else sent at
    once with p=25% or after 20 ms, so the early ones overtake the delayed ones."""
    relay = lab.popen(
        NS_K, sys.executable, str(lab.agent), "impair", K4, str(IMPAIR_PORT), "127.0.0.1",
        str(K_WG_PORT), "0.01", "0.02", "0.25", "81", log="impair.log", ready=True,
    )  # fmt: skip
    config = lab.write_config("lossy.conf", lab.lossy_key, f"{ET4_LOSSY}/24", f"{K4}:{IMPAIR_PORT}")
    forwarder = lab.start_forwarder(
        config, f"127.0.0.1:{LOSSY_FWD_TCP}:{KT4}:{K_TCP}", log="forward-lossy.log"
    )
    try:
        report = lab.agent_run(
            NS_E, "xfer", "127.0.0.1", str(LOSSY_FWD_TCP), str(LOSSY_SIZE), "1", "91",
            str(LOSSY_TIMEOUT), timeout=LOSSY_TIMEOUT + 15,
        )  # fmt: skip
        assert forwarder.poll() is None, lab.log("forward-lossy.log")
    finally:
        stop_process(forwarder)
        stop_process(relay)
    stats = [json.loads(line) for line in lab.log("impair.log").splitlines() if "{" in line]
    seconds = check_transfer(report, 1, LOSSY_SIZE)
    r = report["results"][0]
    print(
        f"userspace impairment: 5 MB each way in {seconds:.1f} s (to the kernel "
        f"{r['up_seconds']:.1f} s, from it {r['down_seconds']:.1f} s); relay: {stats[-1:]}"
    )
    assert stats and stats[-1]["dropped"] > 0 and stats[-1]["early"] > 0


def test_forwarder_survived(lab: Lab) -> None:
    forwarder_alive(lab)
    log = lab.log("forward.log")
    assert "Traceback" not in log, log
