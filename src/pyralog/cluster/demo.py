"""``pyralog demo``: the whole promise in two minutes, checked.

A 3-node cluster (``pyralog up``), a topic with replication factor 3, a stock Kafka
client (confluent-kafka, i.e. librdkafka) reaching it through ``pyralog connect``,
producing with acks=all and idempotence while the partition leader's node is killed with
``kill -9`` (``pyralog up`` restarts it), then everything consumed back and compared
with what was acknowledged. Every connection on the way is WireGuard: client to node
(the gateway's embedded tunnel), node to node (replication), node to coordinator.

The failover figure is the time from the kill to the first acknowledgement of a record
handed to the producer after the kill: the dead leader cannot have acknowledged that
one, so it is an honest upper bound on how long writes were held up.

Processes are children of this one (PR_SET_PDEATHSIG: killing the demo takes them
along); the cluster directory is a temporary one, removed at the end unless ``--dir``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyralog.cluster.layout import ClusterDir
from pyralog.cluster.supervisor import _die_with_parent, child_environment, free_range

TOPIC = "demo"
# librdkafka logs every connection a failover breaks ("Disconnected", "Connect ...
# failed") to stderr; the demo says what happens itself.
QUIET = {"log_level": 2, "log.connection.close": False}


class DemoError(Exception):
    pass


def say(message: str) -> None:
    print(message, flush=True)


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pyralog", *argv], stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, env=child_environment(), preexec_fn=_die_with_parent,
        )  # fmt: skip


def _follow(name: str, proc: subprocess.Popen[bytes], log: Path, ready: str,
            timeout: float) -> None:  # fmt: skip
    """Echo ``log`` as it grows until a line starts with ``ready``."""
    offset, pending = 0, ""
    deadline = time.monotonic() + timeout
    while True:
        with open(log, "rb") as f:
            f.seek(offset)
            chunk = f.read()
        offset += len(chunk)
        pending += chunk.decode(errors="replace")
        *lines, pending = pending.split("\n")
        for line in lines:
            say(f"  {line}")
            if line.startswith(ready):
                return
        if proc.poll() is not None:
            raise DemoError(f"{name} exited ({proc.returncode}); see {log}")
        if time.monotonic() > deadline:
            raise DemoError(f"{name}: not ready after {timeout:.0f} s; see {log}")
        time.sleep(0.05)


@dataclass
class Run:
    records: int
    acked: dict[int, int] = field(default_factory=dict)  # record index -> offset
    failed: dict[int, str] = field(default_factory=dict)
    killed_at: float | None = None
    first_after_kill: float | None = None
    produced_after_kill: set[int] = field(default_factory=set)


def _leader(cdir: ClusterDir) -> tuple[str, int] | None:
    state = cdir.read_state() or {}
    parts = [p for p in state.get("snapshot", {}).get("partitions", []) if p["topic"] == TOPIC]
    if not parts:
        return None
    leader = parts[0]["leader"]
    pid = state.get("pids", {}).get(leader)
    return (leader, int(pid)) if pid else None


def _in_sync(cdir: ClusterDir) -> list[str]:
    state = cdir.read_state() or {}
    parts = [p for p in state.get("snapshot", {}).get("partitions", []) if p["topic"] == TOPIC]
    return list(parts[0]["isr"]) if parts else []


def produce(bootstrap: str, cdir: ClusterDir, run: Run) -> str:
    """Produce ``run.records`` records, killing the leader's node a third of the way in;
    returns the name of the node killed."""
    from confluent_kafka import KafkaException, Producer

    producer = Producer({
        "bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
        "linger.ms": 5, "message.timeout.ms": 90000, "request.timeout.ms": 15000,
        "socket.connection.setup.timeout.ms": 5000, "topic.metadata.refresh.interval.ms": 1000,
        **QUIET,
    })  # fmt: skip

    def report(i: int) -> Any:
        def done(err: Any, msg: Any) -> None:
            if err is not None:
                run.failed[i] = str(err)
                return
            run.acked[i] = msg.offset()
            if i in run.produced_after_kill and run.first_after_kill is None:
                run.first_after_kill = time.monotonic()

        return done

    victim = ""
    kill_after = run.records // 3
    window = 2000
    for i in range(run.records):
        if not victim and len(run.acked) >= kill_after:
            found = _leader(cdir)
            if found is None:
                raise DemoError("no leader of the demo topic in the cluster's status")
            victim, pid = found
            os.kill(pid, signal.SIGKILL)
            run.killed_at = time.monotonic()
            say(f"== kill -9 {victim} (pid {pid}), the partition's leader, at "
                f"{len(run.acked)} acknowledged")  # fmt: skip
        if run.killed_at is not None:
            run.produced_after_kill.add(i)
        while i - len(run.acked) - len(run.failed) >= window:
            producer.poll(0.05)
        value = b"demo-%06d" % i
        while True:
            try:
                producer.produce(TOPIC, value, key=b"%d" % i, on_delivery=report(i))
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    try:
        left = producer.flush(120)
    except KafkaException as e:
        raise DemoError(f"the producer failed: {e}") from None
    if left:
        raise DemoError(f"{left} records still unacknowledged after 120 s")
    return victim


def consume(bootstrap: str, expected: int) -> dict[int, list[int]]:
    """Read the topic from the start with a consumer group: index -> offsets seen."""
    from confluent_kafka import Consumer

    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"demo-check-{os.getpid()}",
        "auto.offset.reset": "earliest", "enable.auto.commit": True, **QUIET,
    })  # fmt: skip
    consumer.subscribe([TOPIC])
    seen: dict[int, list[int]] = {}
    progress = time.monotonic()
    complete_at: float | None = None
    try:
        while True:
            msg = consumer.poll(0.5)
            now = time.monotonic()
            if (
                msg is not None
                and msg.error() is None
                and (msg.value() or b"").startswith(b"demo-")
            ):
                seen.setdefault(int(msg.value()[5:]), []).append(msg.offset())
                progress = now
            if complete_at is None and len(seen) >= expected:
                complete_at = now  # then a moment more: duplicates would be right behind
            if (complete_at is not None and now - complete_at > 2) or now - progress > 30:
                break
    finally:
        consumer.close()
    return seen


def run_demo(records: int, keep: Path | None) -> int:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        print("pyralog demo: needs confluent-kafka (pip install 'pyralog[demo]')", file=sys.stderr)
        return 2
    started = time.monotonic()
    root = keep or Path(tempfile.mkdtemp(prefix="pyralog-demo-")) / "cluster"
    cdir = ClusterDir(root)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        say(f"== pyralog up: a 3-node cluster in {root} (embedded WireGuard, no root)")
        udp = free_range(socket.SOCK_DGRAM, 4, 51900)
        root.mkdir(parents=True, exist_ok=True)
        up_log = root.parent / f"{root.name}-up.log"
        up = _spawn(["up", "--dir", str(root), "--nodes", "3", "--port", str(udp)], up_log)
        procs.append(up)
        _follow("pyralog up", up, up_log, "pyralog up: ready", 90)

        tcp = free_range(socket.SOCK_STREAM, 4, 19092)
        bootstrap = f"127.0.0.1:{tcp}"
        say(f"== pyralog connect: stock Kafka clients at {bootstrap}, over WireGuard")
        connect_log = root.parent / f"{root.name}-connect.log"
        connect = _spawn(["connect", "--config", str(cdir.client_config), "--listen", bootstrap],
                         connect_log)  # fmt: skip
        procs.append(connect)
        _follow("pyralog connect", connect, connect_log, "pyralog connect: ready", 60)

        from confluent_kafka.admin import AdminClient, NewTopic

        say(f"== topic {TOPIC!r}: 1 partition, replication factor 3, min.insync.replicas 2")
        admin = AdminClient({"bootstrap.servers": bootstrap, **QUIET})
        futures = admin.create_topics([NewTopic(TOPIC, 1, 3, config={"min.insync.replicas": "2"})])
        futures[TOPIC].result(30)
        del admin, futures  # closed now, not when the cluster is stopped under it
        deadline = time.monotonic() + 20
        while _leader(cdir) is None:
            if time.monotonic() > deadline:
                raise DemoError("the topic has no leader 20 s after its creation")
            time.sleep(0.2)

        say(f"== confluent-kafka: {records} records, acks=all, idempotent")
        run = Run(records)
        t0 = time.monotonic()
        victim = produce(bootstrap, cdir, run)
        produce_s = time.monotonic() - t0
        say(f"   {len(run.acked)} acknowledged, {len(run.failed)} failed, in {produce_s:.1f} s")

        say(f"== waiting for {victim} (restarted by pyralog up) to be back in sync")
        deadline = time.monotonic() + 60
        while victim not in _in_sync(cdir):
            if time.monotonic() > deadline:
                raise DemoError(f"{victim} was not back in sync 60 s after the kill")
            time.sleep(0.25)
        if run.killed_at is not None:
            say(f"   back in sync {time.monotonic() - run.killed_at:.1f} s after the kill")

        say("== reading everything back (a new consumer group)")
        seen = consume(bootstrap, len(run.acked))
        lost = sorted(set(run.acked) - set(seen))
        dups = sum(len(v) - 1 for v in seen.values())
        moved = [i for i, offs in seen.items() if i in run.acked and run.acked[i] not in offs]
        unsent = sorted(set(seen) - set(range(records)))
        say(f"   {sum(len(v) for v in seen.values())} records read, {dups} duplicates, "
            f"{len(moved)} at another offset than acknowledged")  # fmt: skip

        say("== pyralog-admin cluster status")
        subprocess.run([sys.executable, "-m", "pyralog.cli.admin", "--config",
                        str(cdir.coordinator_config), "cluster", "status"],
                       env=child_environment(), check=False)  # fmt: skip
        say("== pyralog status")
        subprocess.run([sys.executable, "-m", "pyralog", "status", "--dir", str(root)],
                       check=False)  # fmt: skip

        failover = (
            f"{run.first_after_kill - run.killed_at:.1f} s"
            if run.first_after_kill is not None and run.killed_at is not None
            else "not measured"
        )
        ok = not lost and not run.failed and not moved and not unsent and not dups
        say(f"   demo ran {time.monotonic() - started:.0f} s")
        if run.failed:
            say(f"   {len(run.failed)} records refused: {next(iter(run.failed.values()))}")
        say(f"demo: {len(run.acked)} records acknowledged, {len(seen)} consumed back, "
            f"{len(lost)} lost, leader failover in {failover}")  # fmt: skip
        return 0 if ok else 1
    except (DemoError, OSError) as e:
        print(f"pyralog demo: {e}", file=sys.stderr)
        return 1
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(30)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if keep is None:
            shutil.rmtree(root.parent, ignore_errors=True)
