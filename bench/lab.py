"""Namespaces, veth links, WireGuard daemons and iperf3 servers for the benchmark harness.

Everything here is named with a ``bn`` prefix and the harness's pid (in base 36), so
concurrent test suites and concurrent harness runs never clash: network namespaces
``bnb-<tag>-<name>``, interfaces ``bn<tag><name>`` (at most 15 bytes; the UAPI sockets in
/var/run/wireguard are shared by every namespace), underlay addresses in 172.29.0.0/16
and tunnel addresses in 10.29.0.0/16. Traffic only ever goes between our own namespaces.

A ``Lab`` records what it creates and removes all of it in ``close()``: processes it
started (by pid), any process left in its namespaces, the namespaces, UAPI sockets of
its interfaces and its temporary directory. ``reap_stale()`` removes what an earlier
harness run left behind when it was killed too hard to clean up (its pid is gone).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

UAPI_DIR = Path("/var/run/wireguard")
NS_PREFIX = "bnb-"
TMP_PREFIX = "bn-bench-"  # temporary directories: /tmp/bn-bench-<tag>-XXXX
PYRALOG_WG = str(Path(sys.executable).with_name("pyralog-wg"))
IMPLEMENTATIONS = {"py": PYRALOG_WG, "go": "wireguard-go"}
LONG_NAMES = {"py": "pyralog-wg", "go": "wireguard-go"}
# Variables that change how the daemons behave: never inherited by a benchmarked daemon.
DAEMON_VARIABLES = ("LOG_LEVEL", "WG_PROCESS_FOREGROUND", "PYRALOG_FORCE_UNDER_LOAD")
# Inherited on purpose: the benchmarks' knob for pyralog-wg's TUN queue (see
# ``note_daemon_knobs``, which the harnesses call so a run says when it is not the default).
DAEMON_KNOBS = ("PYRALOG_WG_TXQUEUELEN",)
CLK_TCK = os.sysconf("SC_CLK_TCK")


class CommandError(RuntimeError):
    pass


def run(argv: list[str], *, check: bool = True, timeout: float = 30, **kw) -> str:
    """Run a command, return its stdout; raise CommandError with its stderr on failure."""
    if "input" not in kw:
        kw.setdefault("stdin", subprocess.DEVNULL)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and done.returncode:
        raise CommandError(
            f"{' '.join(argv)} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}"
        )
    return done.stdout


def iperf_json(argv: list[str], seconds: float) -> dict:
    """Run an iperf3 client with -J; its parsed report, or {"error": why} (iperf3's own
    error, no output, a timeout or unparsable JSON)."""
    try:
        out = run(argv, check=False, timeout=seconds + 30)
        return json.loads(out) if out.strip() else {"error": "no output"}
    except (subprocess.TimeoutExpired, json.JSONDecodeError) as e:
        return {"error": f"{type(e).__name__}: {e}"}


def base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3 of proc(5)); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def daemon_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in DAEMON_VARIABLES}


def note_daemon_knobs() -> dict[str, str]:
    """The DAEMON_KNOBS set in this environment (benchmarked daemons inherit them),
    logged once; empty when every daemon runs with its defaults."""
    knobs = {k: os.environ[k] for k in DAEMON_KNOBS if os.environ.get(k)}
    for k, v in knobs.items():
        print(f"[{time.strftime('%H:%M:%S')}] daemons inherit {k}={v}", file=sys.stderr)
    return knobs


def stop_process(proc: subprocess.Popen, timeout: float = 5) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)


def netns_pids(ns: str) -> list[int]:
    out = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in out.split()]


def kill_namespace(ns: str) -> None:
    """Kill every process left in ``ns`` (ours by construction), then delete ``ns``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = netns_pids(ns)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.05)
    run(["ip", "netns", "del", ns], check=False)


def reap_stale() -> list[str]:
    """Remove namespaces and sockets of earlier harness runs whose process is gone."""
    removed = []
    for line in run(["ip", "netns", "list"], check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(NS_PREFIX + r"([0-9a-z]+)-.*", name)
        if m and not pid_alive(int(m.group(1), 36)):
            kill_namespace(name)
            removed.append(name)
    if UAPI_DIR.is_dir():
        for sock in UAPI_DIR.glob("bn*.sock"):
            m = re.fullmatch(r"bn([0-9a-z]+)[a-z]{3}\.sock", sock.name)
            if m and not pid_alive(int(m.group(1), 36)):
                with contextlib.suppress(OSError):
                    sock.unlink()
                removed.append(str(sock))
    for tmp in Path(tempfile.gettempdir()).glob(f"{TMP_PREFIX}*"):
        m = re.fullmatch(TMP_PREFIX + r"([0-9a-z]+)-\w+", tmp.name)
        if m and tmp.is_dir() and not pid_alive(int(m.group(1), 36)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(str(tmp))
    return removed


@dataclass
class Daemon:
    """One WireGuard interface served by ``impl`` ("py" or "go") in namespace ``ns``."""

    lab: Lab
    ns: str
    impl: str
    ifname: str
    proc: subprocess.Popen
    log: Path
    private_key: str = ""
    public_key: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def socket(self) -> Path:
        return UAPI_DIR / f"{self.ifname}.sock"

    def wg(self, *args: str, timeout: float = 120) -> str:
        return run(["ip", "netns", "exec", self.ns, "wg", *args], timeout=timeout)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class Lab:
    tag: str = field(default_factory=lambda: base36(os.getpid()))
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)
    sockets: list[Path] = field(default_factory=list)
    tmp: Path = field(init=False)

    def __post_init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{self.tag}-"))

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- names -----------------------------------------------------------------------

    def ns_name(self, name: str) -> str:
        return f"{NS_PREFIX}{self.tag}-{name}"

    def if_name(self, name: str) -> str:
        assert re.fullmatch("[a-z]{3}", name), name  # reap_stale() parses names back
        ifname = f"bn{self.tag}{name}"
        return ifname

    # -- building ----------------------------------------------------------------------

    def netns(self, name: str) -> str:
        ns = self.ns_name(name)
        run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        return ns

    def veth(self, a_ns: str, a_if: str, a_addr: str, b_ns: str, b_if: str, b_addr: str) -> None:
        """A veth pair between two namespaces, with one address (``x.x.x.x/len``) each."""
        run(
            [
                "ip",
                "link",
                "add",
                a_if,
                "netns",
                a_ns,
                "type",
                "veth",
                "peer",
                "name",
                b_if,
                "netns",
                b_ns,
            ]
        )
        for ns, ifname, addr in ((a_ns, a_if, a_addr), (b_ns, b_if, b_addr)):
            run(["ip", "-n", ns, "addr", "add", addr, "dev", ifname])
            run(["ip", "-n", ns, "link", "set", ifname, "up"])

    def popen(self, ns: str, argv: list[str], **kw) -> subprocess.Popen:
        """A process in ``ns`` (``ip netns exec`` execs, so the pid is the program's)."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        kw.setdefault("start_new_session", True)  # Ctrl-C reaches us; we stop it in order
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)
        self.procs.append(proc)
        return proc

    def daemon(self, ns: str, impl: str, name: str) -> Daemon:
        """Start ``impl`` in the foreground on a new interface; wait for its UAPI socket."""
        ifname = self.if_name(name)
        sock = UAPI_DIR / f"{ifname}.sock"
        self.sockets.append(sock)
        log = self.tmp / f"{ifname}.log"
        with open(log, "wb") as out:
            proc = self.popen(
                ns, [IMPLEMENTATIONS[impl], "-f", ifname], stdout=out, stderr=out, env=daemon_env()
            )
        d = Daemon(self, ns, impl, ifname, proc, log)
        deadline = time.monotonic() + 15
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise CommandError(f"{impl} daemon for {ifname} did not start: {d.log_tail()}")
            time.sleep(0.02)
        return d

    def genkey(self) -> tuple[str, str]:
        private = run(["wg", "genkey"]).strip()
        public = run(["wg", "pubkey"], input=private + "\n").strip()
        return private, public

    def write(self, name: str, text: str) -> Path:
        path = self.tmp / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path

    # -- teardown ----------------------------------------------------------------------

    def stop(self, proc: subprocess.Popen) -> None:
        stop_process(proc)
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)

    def close(self) -> None:
        # Ignore further Ctrl-C (and SIGTERM) while tearing down: nothing left half removed.
        old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for proc in reversed(self.procs):
                with contextlib.suppress(Exception):
                    stop_process(proc)
            self.procs.clear()
            for ns in reversed(self.namespaces):
                with contextlib.suppress(Exception):
                    kill_namespace(ns)
            self.namespaces.clear()
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.unlink()
            self.sockets.clear()
            shutil.rmtree(self.tmp, ignore_errors=True)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


def run_client(lab: Lab, ns: str, script: str, args: list[str], timeout: float) -> dict:
    """One load-generator script run in ``ns``: its last stdout line as JSON, plus
    ``process_cpu_s`` (user + sys of the whole process and its threads, from wait4) and
    ``wall_s``; CommandError with its stderr's tail if it fails or outlives ``timeout``."""
    argv = ["ip", "netns", "exec", ns, sys.executable, script, *args]
    errfile = lab.tmp / "client.err"
    t0 = time.perf_counter()
    with open(errfile, "wb") as err:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
            start_new_session=True,
        )  # fmt: skip
    lab.procs.append(proc)
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    try:
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)  # `ip netns exec` execs: this is the client
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        killer.cancel()
        with contextlib.suppress(ValueError):
            lab.procs.remove(proc)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = errfile.read_text(errors="replace")[-2000:]
        name = Path(script).stem
        raise CommandError(f"{name} {args[0]} failed ({proc.returncode}, {wall:.0f} s): {tail}")
    result = json.loads(out.splitlines()[-1])
    result["process_cpu_s"] = usage.ru_utime + usage.ru_stime
    result["wall_s"] = wall
    return result
