"""Test support: etcd members and clusters of our own, on loopback ports that were free.

Never the system's etcd (Debian's etcd-server package may run one on 2379): every member
here listens on 127.0.0.1 ports from ``free_port``, keeps its data under the test's
temporary directory and is killed when the test ends, pass or fail.

Fixtures (registered for every test by ``pytest_plugins`` in tests/conftest.py):

- ``etcd_server``: one single-member etcd for the whole session (tests share it; give
  each test its own key prefix, ``unique_prefix`` makes one);
- ``etcd_cluster``: a fresh three-member cluster for one test, which may kill members.

``running_etcd(base, netns=NAME)`` runs the members inside a network namespace of the
test's own (``ip netns exec NAME``), on that namespace's loopback: reachable only by
the processes there (e.g. a coordinator in that namespace); its health checks run there
too.

Both skip, saying how to install it, when the etcd binary is missing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ports import free_port
from processes import stop_process, wait_until

ETCD = Path("/usr/bin/etcd")
START_TIMEOUT = 20.0  # seconds for a member (or a whole cluster) to report healthy


def etcd_binary() -> Path | None:
    """The etcd server binary: Debian's /usr/bin/etcd, else the first on PATH."""
    if ETCD.is_file() and os.access(ETCD, os.X_OK):
        return ETCD
    found = shutil.which("etcd")
    return Path(found) if found else None


def needs_etcd() -> Path:
    """The etcd binary, or skip the calling test saying how to get it."""
    binary = etcd_binary()
    if binary is None:
        pytest.skip(
            f"etcd server binary not found at {ETCD} or on PATH; install Debian's etcd-server"
            " package (scripts/bootstrap.sh does)"
        )
    return binary


# An HTTP POST or GET from inside a namespace: prints the JSON answer, exits 1 on failure.
_HTTP_IN_NAMESPACE = textwrap.dedent(
    """
    import sys, urllib.request
    data = sys.argv[2].encode() if len(sys.argv) > 2 else None
    request = urllib.request.Request(sys.argv[1], data=data, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=1) as response:
            sys.stdout.write(response.read().decode())
    except Exception as e:
        sys.exit(f"{e}")
    """
)


def _http_json(url: str, data: bytes | None = None, netns: str | None = None) -> object:
    """The JSON answer of GET (POST with ``data``) ``url``, None if there is none; from
    inside network namespace ``netns`` when given."""
    if netns is None:
        request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
        try:
            with urllib.request.urlopen(request, timeout=1) as response:
                return json.loads(response.read())
        except (OSError, ValueError, urllib.error.URLError):
            return None
    argv = ["ip", "netns", "exec", netns, sys.executable, "-c", _HTTP_IN_NAMESPACE, url]
    if data:
        argv.append(data.decode())
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        return json.loads(done.stdout) if done.returncode == 0 else None
    except (subprocess.TimeoutExpired, ValueError):
        return None


def unique_prefix(name: str = "test") -> str:
    """A key prefix no other test uses, for tests sharing one etcd."""
    return f"/{name}-{uuid.uuid4().hex[:12]}/"


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    netns: str | None = None  # the network namespace it runs in, None for this one

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        """Whether this member answers /health with a leader in its cluster."""
        answer = _http_json(f"http://{self.endpoint}/health", netns=self.netns)
        return isinstance(answer, dict) and answer.get("health") == "true"

    def keys(self, prefix: str) -> list[str] | None:
        """The keys under ``prefix`` (etcd's v3 JSON API), None if it did not answer."""
        encode = lambda b: base64.b64encode(b).decode()  # noqa: E731
        start = prefix.encode()
        end = start[:-1] + bytes([start[-1] + 1])  # the first key past the prefix
        body = json.dumps({"key": encode(start), "range_end": encode(end), "keys_only": True})
        answer = _http_json(f"http://{self.endpoint}/v3/kv/range", body.encode(), self.netns)
        if not isinstance(answer, dict):
            return None
        return [base64.b64decode(kv["key"]).decode() for kv in answer.get("kvs", [])]

    def kill(self) -> None:
        """SIGKILL, as a crash: no goodbye to the cluster or its clients."""
        if self.proc is not None:
            stop_process(self.proc, signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class EtcdCluster:
    members: list[EtcdMember] = field(default_factory=list)

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def url(self, prefix: str = "") -> str:
        """An ``etcd://`` store URL naming every member, with an optional key prefix."""
        return "etcd://" + ",".join(self.endpoints) + prefix

    def leader(self) -> EtcdMember | None:
        """The member that is the raft leader now, by asking each running member."""
        for member in self.members:
            if not member.running():
                continue
            url = f"http://{member.endpoint}/v3/maintenance/status"
            status = _http_json(url, b"{}", netns=member.netns)
            if not isinstance(status, dict):
                continue
            if status.get("leader") and status.get("leader") == status["header"]["member_id"]:
                return member
        return None


@contextlib.contextmanager
def running_etcd(base: Path, size: int = 1, netns: str | None = None) -> Iterator[EtcdCluster]:
    """Start an etcd cluster of ``size`` members under ``base``, inside network namespace
    ``netns`` if given (on its loopback); kill them all on exit."""
    binary = needs_etcd()
    cluster = EtcdCluster()
    prefix = [] if netns is None else ["ip", "netns", "exec", netns]
    for i in range(size):
        name = f"m{i}"
        data = base / f"etcd-{name}"
        member = EtcdMember(name, free_port(), free_port(), data / "data", data / "etcd.log")
        member.netns = netns
        cluster.members.append(member)
    initial = ",".join(f"{m.name}={m.peer_url}" for m in cluster.members)
    token = f"pyralog-test-{uuid.uuid4().hex[:8]}"
    try:
        for m in cluster.members:
            m.data_dir.mkdir(parents=True)
            client_url = f"http://{m.endpoint}"
            argv = [
                *prefix,
                str(binary),
                f"--name={m.name}",
                f"--data-dir={m.data_dir}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={m.peer_url}",
                f"--initial-advertise-peer-urls={m.peer_url}",
                f"--initial-cluster={initial}",
                "--initial-cluster-state=new",
                f"--initial-cluster-token={token}",
                # Fast elections, so killing the leader costs a test well under a second.
                "--heartbeat-interval=50",
                "--election-timeout=500",
                "--logger=zap",
                "--log-outputs=stderr",
            ]
            with m.log_path.open("wb") as log:
                m.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={k: v for k, v in os.environ.items() if not k.startswith("ETCD")},
                )
        deadline = time.monotonic() + START_TIMEOUT
        for m in cluster.members:
            ok = wait_until(
                lambda m=m: m.healthy() or not m.running(), max(0.1, deadline - time.monotonic())
            )
            if not ok or not m.running():
                raise RuntimeError(
                    f"etcd member {m.name} ({m.endpoint}) did not become healthy"
                    f" (exit code {m.proc.poll() if m.proc else None}); its log ends:\n"
                    + m.log_tail()
                )
        yield cluster
    finally:
        for m in cluster.members:
            m.kill()
        for m in cluster.members:  # the logs stay for a look after a failure; the data goes
            shutil.rmtree(m.data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One single-member etcd shared by the session's tests (each uses its own prefix)."""
    with running_etcd(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A three-member etcd cluster of this test's own; the test may kill members."""
    with running_etcd(tmp_path, size=3) as cluster:
        yield cluster
