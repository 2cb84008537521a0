"""Test support: a three-node replicated mesh cluster and ``pyralog connect`` in front.

The nodes are embedded (unprivileged; user nobody when the tests run as root), as in
test_log_replication_mesh.py; a client member enrolled with ``pyralog-admin client add``
gets a wg-quick file, and ``pyralog connect`` runs on it as a subprocess, its stderr in
a file the tests read.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from meshlab import MeshLab, Proc, mesh_lab
from ports import free_port
from processes import console_script, stop_process, wait_until

LOG_SECTION = """
[log]
data_dir = "log-data"
replication = true
session_timeout_ms = 2000
replica_lag_time_max_ms = 4000
"""
NAMES = ["b1", "b2", "b3"]


@dataclass
class Connect:
    process: subprocess.Popen[bytes]
    log: Path
    listen: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Cluster:
    lab: MeshLab
    nodes: dict[str, Proc]
    conf: Path
    gateway: Connect

    def broker_id(self, name: str) -> int:
        """A node's broker id: its mesh address's low 31 bits."""
        return int(ipaddress.ip_address(self.lab.address_of(self.nodes[name]))) & 0x7FFFFFFF

    def node_of(self, broker_id: int) -> str:
        return next(n for n in self.nodes if self.broker_id(n) == broker_id)


def start_connect(conf: Path, log: Path, *args: str, listen: str | None = None) -> Connect:
    listen = listen or f"127.0.0.1:{free_port()}"
    argv = [str(console_script("pyralog")), "connect", "--config", str(conf), "--listen", listen]
    with open(log, "ab") as out:
        process = subprocess.Popen([*argv, *args], stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)  # fmt: skip
    return Connect(process, log, listen)


def wait_ready(gateway: Connect, timeout: float = 60) -> None:
    ok = wait_until(
        lambda: "pyralog connect: ready" in gateway.output() or gateway.process.poll() is not None,
        timeout,
    )
    assert ok and gateway.process.poll() is None, gateway.output()


@contextmanager
def connected_cluster() -> Iterator[Cluster]:
    with mesh_lab() as lab:
        lab.start_coordinator()
        token = lab.token()
        for name in NAMES:
            lab.node_config(name, token, extra=LOG_SECTION)
        nodes = {name: lab.start_node(name, None) for name in NAMES}
        for node in nodes.values():
            assert wait_until(lambda n=node: "log: replicated" in n.output(), 30), node.output()
        conf = lab.root / "laptop.conf"
        lab.admin("client", "add", "--name", "laptop", "-o", str(conf))
        for node in nodes.values():
            lab.wait_peers(node, {"coordinator", "laptop", *(set(NAMES) - {node.name})}, 15)
        gateway = start_connect(conf, lab.root / "connect.log")
        try:
            wait_ready(gateway)
            yield Cluster(lab, nodes, conf, gateway)
        finally:
            stop_process(gateway.process)
