"""``pyralog up | status | down`` end to end, as an unprivileged user (nobody, when the
tests run as root): create, produce, kill -9 a node and see it restarted, refuse a
second ``up``, stop, resume with the data, stop on Ctrl-C; and bad input, one clear line
each, nothing deleted."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from processes import needs_script, wait_until
from pyralog.log.client import PyralogClient
from pyralog.net import EmbeddedNetwork
from pyralog.wireguard.config import load
from upcluster import UpCluster, alive, up_cluster

pytestmark = needs_script("pyralog")


def _produce_and_read(conf: Path, broker: str, values: list[bytes], create: bool) -> list[bytes]:
    async def main() -> list[bytes]:
        net = await EmbeddedNetwork.start(load(str(conf)))
        try:
            async with await PyralogClient.connect(f"{broker}:9092", network=net,
                                                   timeout=15) as c:  # fmt: skip
                if create:
                    await c.create_topic("up", partitions=1, configs={"min.insync.replicas": "2"})
                for v in values:
                    await c.produce("up", v, partition=0, acks=-1)
                return [m.value for m in await c.fetch("up", 0, 0, max_bytes=1 << 20)]
        finally:
            await net.close()

    return asyncio.run(asyncio.wait_for(main(), 90))


def _running(c: UpCluster) -> bool:
    nodes = c.status()["nodes"]
    return len(nodes) == c.nodes and all(n["state"] == "running" for n in nodes)


def _tree(root: Path) -> dict[str, str]:
    """Every file under root with a digest of its content (to prove nothing changed)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith((".sock", ".lock"))
    }


def test_up_detach_kill_restart_down_resume() -> None:
    with up_cluster() as c:
        started = time.monotonic()
        done = c.up("--detach", "--restart-delay", "4")
        took = time.monotonic() - started
        out = done.stdout
        # Progress: what is being done, in order, then ready and the table.
        steps = ["created a 3-node cluster", "starting the coordinator", "join token",
                 "enrolling node-1", "node-3 is a mesh member at 10.100.", "client config",
                 "forming the log cluster", "log cluster formed", "pyralog up: ready"]  # fmt: skip
        positions = [out.find(s) for s in steps]
        assert all(p >= 0 for p in positions) and positions == sorted(positions), out
        assert "running in the background" in out
        status = c.status()
        assert status["running"] and _running(c)
        nodes = {n["name"]: n for n in status["nodes"]}
        assert all(n["broker_id"] is not None and n["address"].startswith("10.100.")
                   for n in nodes.values())  # fmt: skip
        # Every node peers with the coordinator and the two others (sessions with the
        # others start with the first traffic to them).
        assert all(n["peers"] == 3 and n["peers_up"] >= 1 for n in nodes.values()), nodes
        if c.nobody:
            assert os.stat(c.root / "node-1" / "log-data").st_uid == 65534
        conf = c.root / "client.conf"
        assert oct(os.stat(conf).st_mode & 0o777) == "0o600"

        first = [b"a%d" % i for i in range(20)]
        broker = nodes["node-1"]["address"]
        assert _produce_and_read(conf, broker, first, create=True) == first
        assert wait_until(lambda: c.status()["partitions"], 10)
        part = c.status()["partitions"][0]
        assert (part["topic"], part["partition"], part["high_watermark"]) == ("up", 0, 20)
        assert sorted(part["isr"]) == ["node-1", "node-2", "node-3"]

        # A second up on the running cluster: one line, nothing started.
        again = c.up("--detach", check=False)
        assert again.returncode == 1
        assert "already running" in again.stderr and "pyralog down --dir" in again.stderr

        # kill -9 the leader's node: the supervisor says so and restarts it.
        victim = part["leader"]
        pid = c.pids()[victim]
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: "killed by SIGKILL" in _state_of(c, victim), 5)
        # Its partition fails over (the session timeout is 3 s) before it is back (4 s).
        assert wait_until(lambda: _leader_moved(c, victim), 10)
        assert wait_until(lambda: c.pids().get(victim, pid) != pid and _running(c), 20)
        assert wait_until(lambda: len(c.status()["partitions"][0]["isr"]) == 3, 30)
        log = (c.root / "supervisor.log").read_text()
        assert f"{victim} exited (killed by SIGKILL); restarting it in 4 s" in log
        assert f"restarting {victim}" in log

        pids = c.pids()
        done = c.down()
        assert done.returncode == 0 and "stopped" in done.stdout, done.stdout + done.stderr
        assert wait_until(lambda: not any(alive(p) for p in pids.values()), 10), pids
        assert not c.status()["running"]
        assert c.down().stdout.strip().endswith("not running")

        # Resume: the same cluster (same members, same keys), with its data.
        before = {n["name"]: n["address"] for n in c.status()["nodes"]}
        done = c.up("--detach")
        assert "resuming the 3-node cluster" in done.stdout
        assert "enrolling" not in done.stdout and "join token" not in done.stdout
        assert {n["name"]: n["address"] for n in c.status()["nodes"]} == before
        more = [b"b%d" % i for i in range(5)]
        assert _produce_and_read(conf, broker, more, create=False) == first + more
    print(f"pyralog up --detach: ready in {took:.1f} s")


def _state_of(c: UpCluster, name: str) -> str:
    return str(c.state().get("states", {}).get(name, ""))


def _leader_moved(c: UpCluster, victim: str) -> bool:
    parts = c.status()["partitions"]
    return bool(parts) and parts[0]["leader"] != victim


def test_foreground_up_stops_everything_on_ctrl_c() -> None:
    with up_cluster(nodes=1) as c:
        args = ["up", "--dir", str(c.root), "--nodes", "1", "--port", str(c.port)]
        proc = subprocess.Popen(c.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, stdin=subprocess.DEVNULL)  # fmt: skip
        lines: list[str] = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("pyralog up: ready"):
                    break
            assert any("replication factor 1" in ln for ln in lines), lines
            assert "Stop: Ctrl-C" in lines[-1]
            pids = c.pids()
            assert set(pids) == {"coordinator", "node-1"}
            proc.send_signal(signal.SIGINT)
            rest, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, "".join(lines) + rest
        assert "stopping node-1" in rest and "stopping coordinator" in rest
        assert "the data stays in" in rest
        assert not any(alive(p) for p in pids.values())
        assert not (c.root / "supervisor.pid").exists()


# -- bad input --------------------------------------------------------------------------


def _one_line(done: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert done.returncode == code, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_a_directory_that_cannot_be_written() -> None:
    with up_cluster() as c:
        locked = c.root.parent / "locked"
        locked.mkdir(mode=0o500)
        if not c.nobody:
            if os.geteuid() == 0:
                pytest.skip("as root without setpriv every directory is writable")
        else:
            os.chown(locked, 65534, 65534)
        done = c.run("up", "--dir", str(locked / "cluster"), "--port", str(c.port))
        _one_line(done, 2, "cannot create", "Permission denied")
        done = c.run("up", "--dir", str(locked), "--port", str(c.port))
        _one_line(done, 2, "not writable")


def test_ports_in_use_are_named_and_nothing_is_made() -> None:
    with up_cluster() as c:
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        holder.bind(("127.0.0.1", c.port + 2))
        try:
            done = c.up(check=False)
        finally:
            holder.close()
        _one_line(done, 1, f"UDP port {c.port + 2} (node-2) in use", "--port")
        assert not c.root.exists()


def test_ports_in_use_when_resuming() -> None:
    with up_cluster(nodes=1) as c:
        c.up("--detach")
        c.down()
        tree = _tree(c.root)
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        holder.bind(("0.0.0.0", c.port))
        try:
            done = c.up(check=False)
        finally:
            holder.close()
        assert done.returncode == 1
        assert f"UDP port {c.port} (coordinator) in use" in done.stderr, done.stderr
        assert _tree(c.root) == tree


def test_a_foreign_or_damaged_directory_is_left_alone() -> None:
    with up_cluster(nodes=1) as c:
        c.root.mkdir()
        if c.nobody:
            os.chown(c.root, 65534, 65534)
        (c.root / "notes.txt").write_text("mine")
        _one_line(c.up(check=False), 2, "not empty and not a Pyralog cluster", "notes.txt")
        assert (c.root / "notes.txt").read_text() == "mine"
        (c.root / "notes.txt").unlink()

        c.up("--detach")
        c.down()
        manifest = c.root / "cluster.toml"
        good = manifest.read_text()
        cases: list[tuple[str, Any]] = [
            ("not valid TOML", lambda: manifest.write_text("[cluster\n")),
            ("incomplete", lambda: manifest.write_text("[cluster]\nnodes = 1\n")),
            ("node-1/node.key: missing", lambda: (c.root / "node-1" / "node.key").rename(
                c.root / "node.key.away")),
            ("coordinator.toml", lambda: (c.root / "coordinator" / "coordinator.toml").write_text(
                "[coordinator]\nbogus = 1\n")),
        ]  # fmt: skip
        for words, damage in cases:
            saved = {p: (p.read_bytes(), p.stat()) for p in c.root.rglob("*") if p.is_file()}
            damage()
            tree = _tree(c.root)
            done = c.up(check=False)
            _one_line(done, 2, words)
            assert "nothing was changed" in done.stderr or "bogus" in done.stderr
            assert _tree(c.root) == tree, "a damaged cluster directory was changed"
            for p in list(c.root.rglob("*")):
                if p.is_file() and p not in saved:
                    p.unlink()
            for p, (data, st) in saved.items():
                p.write_bytes(data)
                os.chmod(p, st.st_mode & 0o777)
                os.chown(p, st.st_uid, st.st_gid)
        assert manifest.read_text() == good

        _one_line(c.up("--port", str(c.port + 50), check=False), 2, f"uses {c.port}")
        _one_line(c.run("up", "--dir", str(c.root), "--nodes", "0"), 2, "--nodes")
        two = c.run("down", "--dir", str(c.root.parent))
        _one_line(two, 2, "not a Pyralog cluster directory")
        _one_line(c.run("status", "--dir", str(c.root.parent)), 2, "cluster.toml")
        # And after all that, it still resumes.
        assert "resuming" in c.up("--detach").stdout
