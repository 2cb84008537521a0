"""A small Jepsen-style harness for the replicated log: a cluster, a workload, a nemesis
and a checker, all in real processes in network namespaces.

    with jepsen_cluster(tmp_path, store="etcd") as c:   # or store="sqlite" (the default)
        c.create_topic()
        w = c.start_workload()                        # confluent-kafka, in the client's namespace
        c.wait_acks(w, 50)
        fault = c.kill(c.leader_of(0)); c.restart(fault.node)
        report = c.check([w])                         # AssertionError listing every violation
        print(report.text())

The cluster: a coordinator and three TUN nodes (n1..n3, ``tunmesh``) whose brokers
replicate (``[log] replication = true``, ``LOG_TOML``), keeping their cluster state in the
coordinator's log store: SQLite beside its own (default), or etcd (a member run inside
the coordinator's namespace, on its loopback). A fourth namespace holds a stock
WireGuard client (wireguard-go, role "client", from ``pyralog-admin client add``), where
the workload, the readers and kcat run. Everything goes only between the lab's own
namespaces.

The nemesis: ``kill`` (SIGKILL the node process) and ``restart``, ``kill_all`` and
``restart_all`` (the whole cluster at once); ``isolate`` (nft drops
every packet on the node's LAN interface) or ``cut_from_store`` (only what goes to and
from the coordinator) and ``heal``; ``slow`` (tbf on both directions
of its LAN link) and ``restore``. Each fault is recorded with its moment (CLOCK_MONOTONIC,
which the workload's log uses too) and the partitions the node led then.

The checker (``check``): heal everything, wait until every partition has all three
replicas in sync, read every partition from the start with two independent consumers
(confluent-kafka ``assign()`` and ``kcat -C -e``), and check

- both saw exactly the same records at the same offsets (one order for all readers);
- every acknowledged value is at exactly the (partition, offset) it was acknowledged at;
- every value read was sent (it is in some producer's attempt log), and none of an
  idempotent producer twice;
- each idempotent producer's values are in each partition in the order it sent them;

then stop the nodes cleanly and read each one's data_dir directly (``Storage``,
``PartitionLog.read``, ``read_messages``): the three replicas hold identical records at
identical offsets up to the shortest log end, and every log covers every acknowledged
offset (and what the readers saw). It returns a `Report`: counts, faults and their
recovery times (fault moment -> first acknowledged write after it on each partition the
node led, past the answers already in flight then, ``IN_FLIGHT``; and the longest gap
between acknowledgements around the fault), client errors.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etcd import EtcdCluster, running_etcd
from meshlab import Proc
from netns import UAPI_DIR, Namespace
from processes import stop_process, wait_until
from pyralog.log.records import read_messages
from pyralog.log.storage import Storage
from tunmesh import TunMesh, bring_up_client, client_config, tun_lab

NODES = ["n1", "n2", "n3"]
CLIENT = "client"
TOPIC = "jepsen"
PARTITIONS = [0, 1]
BROKER_PORT = 9092
DATA_DIR = "log-data"
LOG_TOML = f"""
[log]
data_dir = "{DATA_DIR}"
replication = true
replication_factor = 3
min_insync_replicas = 2
session_timeout_ms = 2000
replica_lag_time_max_ms = 3000
"""
CLIENT_SCRIPT = Path(__file__).with_name("jepsen_client.py")
NFT_TABLE = "jepsen"
ETCD_PREFIX = "/jepsen/"  # the coordinator's; the brokers' state is in /jepsen-log/
UP_MARKER = "log: replicated"
# Acknowledgements this soon after a fault were on their way before it (sent by a
# leader just killed or cut off): recovery times start counting after them.
IN_FLIGHT = 0.2


def tools_missing() -> str | None:
    """Why the harness cannot run here (kcat, nft or tc missing), None when it can."""
    missing = [t for t in ("kcat", "nft", "tc") if shutil.which(t) is None]
    return f"the Jepsen tests need {', '.join(missing)} (scripts/bootstrap.sh)" if missing else None


# -- what the cluster says ------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionView:
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


@dataclass
class Fault:
    kind: str  # "kill", "kill-all", "isolate", "cut-from-store", "slow"
    node: str
    at: float  # CLOCK_MONOTONIC
    led: list[int]  # the partitions the node led at that moment
    healed: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Workload:
    name: str
    log: Path
    stop_file: Path
    proc: subprocess.Popen[bytes]
    stderr: Path
    prefix: str  # of its values: PREFIX-N, N counting up in the order sent
    idempotent: bool = True

    def events(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(ValueError):  # a line being written
                out.append(json.loads(line))
        return out

    def acks(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["e"] == "ack"]

    def stop(self, timeout: float = 60) -> None:
        """Ask it to stop (stop file), wait for its flush; SIGTERM, SIGKILL if it hangs."""
        self.stop_file.touch()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_process(self.proc, signal.SIGTERM, timeout=10)

    def error_output(self) -> str:
        return self.stderr.read_text(errors="replace")[-3000:] if self.stderr.exists() else ""


# -- the report ---------------------------------------------------------------------------------


@dataclass
class Report:
    attempted: int = 0
    acknowledged: int = 0
    failed: int = 0
    indeterminate: int = 0  # neither acknowledged nor failed when the producer stopped
    read: dict[int, int] = field(default_factory=dict)  # partition -> records read
    log_ends: dict[str, dict[int, int]] = field(default_factory=dict)  # node -> partition -> end
    kills: int = 0
    faults: list[dict[str, Any]] = field(default_factory=list)
    client_errors: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)  # delivery error -> count
    failed_but_written: int = 0  # failed deliveries the log holds all the same (allowed)
    duplicates_allowed: int = 0  # values of non-idempotent producers written twice
    in_sync_s: float = 0.0  # heal -> all replicas in sync, at the check

    def text(self) -> str:
        lines = [
            f"attempted {self.attempted}, acknowledged {self.acknowledged}, failed "
            f"{self.failed} (of which written all the same {self.failed_but_written}), "
            f"indeterminate {self.indeterminate}; read per partition {self.read}; kills "
            f"{self.kills}"
            + (
                f"; written twice by non-idempotent producers {self.duplicates_allowed}"
                if self.duplicates_allowed
                else ""
            ),
            f"replica log ends {self.log_ends}; all in sync {self.in_sync_s:.2f} s after healing",
        ]
        for f in self.faults:
            lines.append(
                f"  {f['kind']} {f['node']} at +{f['at']:.2f} s for {f['lasted_s']} s "
                f"(led {f['led']}): "
                f"recovery (fault -> first ack after it) {f['recovery_s']}, longest ack gap "
                f"{f['gap_s']}" + (f", {f['notes']}" if f["notes"] else "")
            )
        if self.failures:
            lines.append(f"failed deliveries: {dict(self.failures)}")
        if self.client_errors:
            lines.append(f"client errors: {dict(self.client_errors)}")
        return "\n".join(lines)


# -- the cluster ----------------------------------------------------------------------------------


class JepsenCluster:
    def __init__(self, t: TunMesh, root: Path, etcd: EtcdCluster | None = None) -> None:
        self.t = t
        self.root = root
        self.etcd = etcd  # the coordinator's store, when it is etcd
        self.client: Namespace = t.namespaces[CLIENT]
        self.addresses = {n: t.address(n) for n in NODES}
        self.ids = {n: int(ipaddress.ip_address(a)) & 0x7FFFFFFF for n, a in self.addresses.items()}
        self.faults: list[Fault] = []
        self.workloads: list[Workload] = []
        self.started = time.monotonic()
        self._isolated: set[str] = set()
        self._slowed: dict[str, list[tuple[Namespace, str]]] = {}
        self._seq = 0
        self.last_read: dict[int, list[tuple[int, str]]] = {}  # what check's reader saw

    # -- names ----------------------------------------------------------------------------

    def node_of(self, broker_id: int) -> str | None:
        return next((n for n, b in self.ids.items() if b == broker_id), None)

    def bootstrap(self, names: list[str] | None = None) -> str:
        return ",".join(f"{self.addresses[n]}:{BROKER_PORT}" for n in names or NODES)

    def ns(self, name: str) -> Namespace:
        return self.t.namespaces[name]

    def lan_interface(self, name: str) -> str:
        (link,) = [x for x in self.ns(name).links() if x.startswith("ps")]
        return link

    def node_log(self, name: str) -> str:
        return self.t.nodes[name].output()

    # -- metadata through kcat ------------------------------------------------------------

    def metadata(self, via: list[str] | None = None) -> dict[int, PartitionView] | None:
        """Each partition's leader, replicas and in-sync set as ``kcat -L -J`` from the
        client's namespace shows them, asking each broker of ``via`` (default all) on
        its own: their common answer, None if they differ, one did not answer or the
        topic is not there (yet). Each alone, because a broker that was cut off from the
        cluster store answers from its last view until it reads the store again."""
        views = [self.metadata_of(name) for name in via or NODES]
        if views[0] is None or any(v != views[0] for v in views[1:]):
            return None
        return views[0]

    def metadata_of(self, name: str) -> dict[int, PartitionView] | None:
        """What broker ``name`` alone says (see ``metadata``)."""
        done = self.client.run(
            "kcat", "-u", "-L", "-J", "-b", self.bootstrap([name]), "-t", TOPIC, "-m", "3",
            check=False, timeout=20,
        )  # fmt: skip
        if done.returncode != 0:
            return None
        try:
            meta = json.loads(done.stdout)
            (topic,) = [x for x in meta["topics"] if x["topic"] == TOPIC]
            if topic.get("error"):
                return None
            return {
                p["partition"]: PartitionView(
                    p["leader"],
                    tuple(r["id"] for r in p["replicas"]),
                    tuple(r["id"] for r in p["isrs"]),
                )
                for p in topic["partitions"]
            }
        except (ValueError, KeyError, TypeError):
            return None

    def wait_metadata(
        self,
        predicate: Callable[[dict[int, PartitionView]], bool],
        timeout: float,
        via: list[str] | None = None,
    ) -> float:
        """Seconds until the brokers ``via`` (default all) agree on metadata that
        satisfies ``predicate``; AssertionError on timeout."""
        started = time.monotonic()
        last: list[Any] = [None]

        def ok() -> bool:
            last[0] = self.metadata(via)
            return last[0] is not None and predicate(last[0])

        if not wait_until(ok, timeout, interval=0.1):
            raise AssertionError(f"metadata never got there in {timeout} s; last: {last[0]}")
        return time.monotonic() - started

    def all_in_sync(self, meta: dict[int, PartitionView]) -> bool:
        return sorted(meta) == PARTITIONS and all(
            v.leader >= 0 and len(v.replicas) == 3 and set(v.isr) == set(v.replicas)
            for v in meta.values()
        )

    def wait_in_sync(self, timeout: float = 60) -> float:
        return self.wait_metadata(self.all_in_sync, timeout)

    def leader_of(self, partition: int, via: list[str] | None = None) -> str | None:
        """The node the brokers ``via`` agree leads ``partition`` (waiting up to 10 s
        for them to agree), None if they never do or name no leader."""
        meta = wait_until(lambda: self.metadata(via), 10, interval=0.1)
        if not meta or partition not in meta:
            return None
        return self.node_of(meta[partition].leader)

    def led_by(self, name: str) -> list[int]:
        others = [n for n in NODES if n != name]
        meta = wait_until(lambda: self.metadata(others), 10, interval=0.1) or {}
        return [p for p, v in sorted(meta.items()) if self.node_of(v.leader) == name]

    def wait_leader_moved(self, partition: int, old: str, timeout: float = 15) -> float:
        """Seconds until the brokers other than ``old`` agree that one of them leads."""
        others = [n for n in NODES if n != old]

        def moved(meta: dict[int, PartitionView]) -> bool:
            leader = self.node_of(meta[partition].leader) if partition in meta else None
            return leader is not None and leader != old

        return self.wait_metadata(moved, timeout, via=others)

    # -- the client's namespace -------------------------------------------------------------

    def client_script(self, command: str, cfg: dict[str, Any], ns: Namespace | None = None,
                      timeout: float = 90) -> Any:  # fmt: skip
        done = (ns or self.client).run(
            sys.executable, str(CLIENT_SCRIPT), command, json.dumps(cfg), check=False,
            timeout=timeout,
        )  # fmt: skip
        assert done.returncode == 0, f"jepsen_client {command}: {done.stderr[-3000:]}"
        return json.loads(done.stdout)

    def create_topic(self) -> None:
        """The test topic: 2 partitions, 3 replicas each, min.insync.replicas=2; returns
        once every partition has a leader and all three in sync."""
        self.client_script(
            "create",
            {"bootstrap": self.bootstrap(), "topic": TOPIC, "partitions": len(PARTITIONS),
             "replication_factor": 3, "min_insync_replicas": 2},
        )  # fmt: skip
        self.wait_in_sync(30)

    def start_workload(self, name: str = "w", ns: Namespace | None = None,
                       **cfg: Any) -> Workload:  # fmt: skip
        """The producer (jepsen_client.py produce) in the client's namespace (or ``ns``),
        until ``Workload.stop``; ``cfg`` overrides its settings."""
        self._seq += 1
        log = self.root / f"workload-{name}-{self._seq}.jsonl"
        stop_file = self.root / f"workload-{name}-{self._seq}.stop"
        settings = {"bootstrap": self.bootstrap(), "topic": TOPIC, "partitions": PARTITIONS,
                    "log": str(log), "stop_file": str(stop_file), "prefix": f"{name}{self._seq}",
                    "interval": 0.02, **cfg}  # fmt: skip
        if os.environ.get("JEPSEN_RDKAFKA_DEBUG"):  # e.g. "eos,msg,broker,protocol"
            settings.setdefault("debug", os.environ["JEPSEN_RDKAFKA_DEBUG"])
        stderr = self.root / f"workload-{name}-{self._seq}.err"
        with stderr.open("wb") as err:
            proc = (ns or self.client).popen(
                sys.executable, str(CLIENT_SCRIPT), "produce", json.dumps(settings),
                stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        w = Workload(name, log, stop_file, proc, stderr, f"{settings['prefix']}-",
                     settings.get("idempotent", True))  # fmt: skip
        self.workloads.append(w)
        return w

    def wait_acks(self, w: Workload, count: int, timeout: float = 30) -> None:
        def enough() -> bool:
            assert w.proc.poll() is None, f"workload exited: {w.error_output()}"
            return len(w.acks()) >= count

        assert wait_until(enough, timeout, interval=0.1), (
            f"{len(w.acks())} of {count} acknowledgements in {timeout} s: {w.events()[-5:]}"
        )

    # -- the nemesis ------------------------------------------------------------------------

    def _fault(self, kind: str, name: str, led: list[int]) -> Fault:
        fault = Fault(kind, name, time.monotonic(), led)
        self.faults.append(fault)
        return fault

    def kill(self, name: str) -> Fault:
        """SIGKILL the node process (no cleanup at all); returns once its namespace is
        empty (its pyralog-wg and interface gone), so that it can restart."""
        led = self.led_by(name)
        node = self.t.nodes[name].process
        node.send_signal(signal.SIGKILL)
        fault = self._fault("kill", name, led)
        node.wait(10)
        self._wait_empty(name)
        return fault

    def kill_all(self) -> Fault:
        """SIGKILL every node at the same moment (a whole-cluster crash); returns once
        their namespaces are empty. ``restart_all`` brings them back."""
        processes = [self.t.nodes[n].process for n in NODES]
        for process in processes:
            process.send_signal(signal.SIGKILL)
        fault = self._fault("kill-all", ",".join(NODES), list(PARTITIONS))
        for process in processes:
            process.wait(10)
        for name in NODES:
            self._wait_empty(name)
        return fault

    def restart_all(self, order: list[str]) -> float:
        """Restart every node, one after the other in ``order``; seconds it took."""
        started = time.monotonic()
        for name in order:
            self.restart(name)
        self._healed("kill-all", ",".join(NODES))
        return time.monotonic() - started

    def _wait_empty(self, name: str) -> None:
        ns, ifname = self.ns(name), self.t.interfaces[name]

        def gone() -> bool:
            return (
                not ns.pids()
                and ifname not in ns.links()
                and not (UAPI_DIR / f"{ifname}.sock").exists()
            )

        assert wait_until(gone, 15), f"left behind by the killed {name}: {self.t.leftovers()}"

    def restart(self, name: str) -> float:
        """Start the node again on its config and data; seconds until its broker joined."""
        started = time.monotonic()
        before = len(self.node_log(name))
        self.t.nodes[name] = self.t.mesh.start_node(
            name, None, prefix=self.ns(name).argv(), nobody=False
        )
        _wait_joined(self.t.nodes[name], before)
        self._healed("kill", name)
        return time.monotonic() - started

    def isolate(self, name: str) -> Fault:
        """Drop every packet in and out of the node's LAN interface (nft): it reaches no
        one, not the coordinator, not the other nodes, not the client."""
        led = self.led_by(name)
        lan = self.lan_interface(name)
        rules = (
            f"table inet {NFT_TABLE} {{\n"
            f"  chain input {{ type filter hook input priority -10; policy accept;"
            f' iifname "{lan}" drop; }}\n'
            f"  chain output {{ type filter hook output priority -10; policy accept;"
            f' oifname "{lan}" drop; }}\n'
            "}\n"
        )
        self.ns(name).run("nft", "-f", "-", input=rules)
        self._isolated.add(name)
        return self._fault("isolate", name, led)

    def cut_from_store(self, name: str) -> Fault:
        """Drop only what goes between the node and the coordinator (nft): it still
        reaches the other nodes and the client, but not the cluster store, so it cannot
        heartbeat. The split-brain case: a leader alive, reachable, and replaced."""
        led = self.led_by(name)
        lan, coordinator = self.lan_interface(name), self.t.lan["coordinator"]
        rules = (
            f"table inet {NFT_TABLE} {{\n"
            f"  chain input {{ type filter hook input priority -10; policy accept;"
            f' iifname "{lan}" ip saddr {coordinator} drop; }}\n'
            f"  chain output {{ type filter hook output priority -10; policy accept;"
            f' oifname "{lan}" ip daddr {coordinator} drop; }}\n'
            "}\n"
        )
        self.ns(name).run("nft", "-f", "-", input=rules)
        self._isolated.add(name)
        return self._fault("cut-from-store", name, led)

    def heal(self, name: str) -> None:
        if name in self._isolated:
            self.ns(name).run("nft", "delete", "table", "inet", NFT_TABLE)
            self._isolated.discard(name)
            self._healed("isolate", name)
            self._healed("cut-from-store", name)

    def slow(self, name: str, rate: str = "16kbit") -> Fault:
        """tbf on both directions of the node's LAN link: its own side (what it sends)
        and the switch's side (what it receives)."""
        led = self.led_by(name)
        inner = self.lan_interface(name)
        outer = inner[:-1] + "b"  # Lab.switch names the pair ...a (member) / ...b (switch)
        (switch,) = [ns for ns in self.t.lab.namespaces if outer in ns.links()]
        applied = []
        for ns, dev in ((self.ns(name), inner), (switch, outer)):
            ns.run("tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                   "burst", "1600", "latency", "500ms")  # fmt: skip
            applied.append((ns, dev))
        self._slowed[name] = applied
        return self._fault("slow", name, led)

    def restore(self, name: str) -> None:
        for ns, dev in self._slowed.pop(name, []):
            ns.run("tc", "qdisc", "del", "dev", dev, "root", check=False)
        self._healed("slow", name)

    def _healed(self, kind: str, name: str) -> None:
        for fault in reversed(self.faults):
            if fault.node == name and fault.kind == kind and fault.healed is None:
                fault.healed = time.monotonic()
                return

    def heal_all(self) -> None:
        for name in list(self._isolated):
            self.heal(name)
        for name in list(self._slowed):
            self.restore(name)
        for name in NODES:
            if self.t.nodes[name].process.poll() is not None:
                self.restart(name)

    def store_keys(self) -> list[str] | None:
        """The brokers' cluster state keys in etcd (None with the SQLite store)."""
        if self.etcd is None:
            return None
        return self.etcd.members[0].keys(ETCD_PREFIX.rstrip("/") + "-log/")

    def close(self) -> None:
        """Stop what this harness started in the namespaces (the lab stops the rest);
        shows the producers' own complaints (pytest prints them when the test failed)."""
        for w in self.workloads:
            stop_process(w.proc, signal.SIGTERM, timeout=10)
            if w.error_output():
                print(f"--- workload {w.name} stderr ---\n{w.error_output()}")
        with contextlib.suppress(Exception):
            for name in list(self._isolated):
                self.heal(name)

    # -- the checker ------------------------------------------------------------------------

    def read_kcat(self, partition: int) -> list[tuple[int, str]]:
        done = self.client.run(
            "kcat", "-C", "-q", "-e", "-b", self.bootstrap(), "-t", TOPIC, "-p", str(partition),
            "-o", "beginning", "-f", "%o %s\\n", check=False, timeout=90,
        )  # fmt: skip
        assert done.returncode == 0, f"kcat -C {TOPIC}-{partition}: {done.stderr[-2000:]}"
        out = []
        for line in done.stdout.splitlines():
            offset, _, value = line.partition(" ")
            out.append((int(offset), value))
        return out

    def read_confluent(self) -> tuple[dict[int, int], dict[int, list[tuple[int, str]]]]:
        got = self.client_script(
            "read", {"bootstrap": self.bootstrap(), "topic": TOPIC, "partitions": PARTITIONS}
        )
        ends = {int(p): e for p, e in got["ends"].items()}
        return ends, {int(p): [(o, v) for o, v in recs] for p, recs in got["records"].items()}

    def stop_nodes(self) -> None:
        """SIGTERM every node; each must exit cleanly (not need SIGKILL)."""
        for name in NODES:
            process = self.t.nodes[name].process
            stop_process(process, signal.SIGTERM, timeout=20)
            assert process.returncode in (0, -signal.SIGTERM), (
                f"{name} exited {process.returncode} on SIGTERM:\n{self.node_log(name)[-3000:]}"
            )

    def stored(self, name: str) -> dict[int, list[tuple[int, str]]]:
        """Every record of every partition in the node's data_dir, read directly."""
        out: dict[int, list[tuple[int, str]]] = {}
        with Storage(self.root / name / DATA_DIR) as storage:
            for p in PARTITIONS:
                plog = storage.partition(TOPIC, p)
                assert plog is not None, f"{name} has no {TOPIC}-{p}"
                records: list[tuple[int, str]] = []
                offset, end = plog.log_start_offset, plog.log_end_offset
                assert offset == 0, f"{name}: {TOPIC}-{p} starts at {offset}"
                while offset < end:
                    data = plog.read(offset, 1 << 20, limit=end)
                    messages = list(read_messages(TOPIC, p, data, from_offset=offset))
                    assert messages, f"{name}: {TOPIC}-{p}: nothing readable at {offset} < {end}"
                    records += [(m.offset, (m.value or b"").decode()) for m in messages]
                    offset = messages[-1].offset + 1
                out[p] = records
        return out

    def check(self, workloads: list[Workload], in_sync_timeout: float = 60) -> Report:
        """Heal, stop the workloads, read back, check everything; AssertionError naming
        every violation found."""
        report = Report()
        healed_at = time.monotonic()
        self.heal_all()
        self.wait_in_sync(in_sync_timeout)
        report.in_sync_s = time.monotonic() - healed_at
        for w in workloads:
            w.stop()
        events = [e for w in workloads for e in w.events()]
        problems: list[str] = []
        for w in workloads:
            if w.proc.returncode != 0:
                problems.append(f"workload {w.name} exited {w.proc.returncode}: {w.error_output()}")
        attempts = {e["v"]: e for e in events if e["e"] == "attempt"}
        acks = {e["v"]: e for e in events if e["e"] == "ack"}
        fails = {e["v"]: e for e in events if e["e"] == "fail"}
        report.attempted, report.acknowledged, report.failed = len(attempts), len(acks), len(fails)
        report.indeterminate = len(set(attempts) - set(acks) - set(fails))
        report.failures = Counter(e["code"] for e in fails.values())
        report.client_errors = Counter(
            f"{e['code']}{' (fatal)' if e.get('fatal') else ''}"
            for e in events
            if e["e"] == "error"
        )
        report.kills = sum({"kill": 1, "kill-all": len(NODES)}.get(f.kind, 0) for f in self.faults)
        if len(acks) < 1:
            problems.append("nothing was acknowledged at all")
        twice = [v for v, n in Counter(e["v"] for e in events if e["e"] == "ack").items() if n > 1]
        if twice:
            problems.append(f"acknowledged twice: {twice[:10]}")
        both = set(acks) & set(fails)
        if both:
            problems.append(f"both acknowledged and failed: {sorted(both)[:10]}")

        # Two independent readers, the same sequence.
        self.wait_in_sync(in_sync_timeout)
        ends, confluent = self.read_confluent()
        self.last_read = confluent
        kcat = {p: self.read_kcat(p) for p in PARTITIONS}
        for p in PARTITIONS:
            report.read[p] = len(confluent[p])
            k = kcat[p]  # every producer has stopped: both read up to the same end
            if confluent[p] != k:
                diff = next(
                    (i for i, (a, b) in enumerate(zip(confluent[p], k, strict=False)) if a != b),
                    min(len(confluent[p]), len(k)),
                )
                problems.append(
                    f"partition {p}: the readers disagree from index {diff}: confluent "
                    f"{confluent[p][diff : diff + 3]} ({len(confluent[p])}), kcat "
                    f"{k[diff : diff + 3]} ({len(k)})"
                )
            offsets = [o for o, _ in confluent[p]]
            if offsets != list(range(ends[p])):
                problems.append(f"partition {p}: offsets are not 0..{ends[p] - 1} without gaps")
        read_at = {(p, o): v for p in PARTITIONS for o, v in confluent[p]}
        seen = Counter(v for (_, _), v in read_at.items())
        # Idempotent producers write each value once; the others may write one twice
        # (a retry of a write whose answer was lost): allowed, and counted.
        idempotent = tuple(w.prefix for w in workloads if w.idempotent)
        twice_read = [v for v, n in seen.items() if n > 1]
        dup = [v for v in twice_read if v.startswith(idempotent)]
        report.duplicates_allowed = len(twice_read) - len(dup)
        if dup:
            timed_out = report.failures.get("_MSG_TIMED_OUT", 0)
            problems.append(
                f"read more than once (idempotence): {len(dup)}, e.g. {dup[:5]}"
                + (f" ({timed_out} deliveries timed out: librdkafka re-sends the rest of a "
                   "timed-out request under a new epoch)" if timed_out else "")
            )  # fmt: skip
        unsent = [v for v in seen if v not in attempts]
        if unsent:
            problems.append(f"read but never sent: {len(unsent)}, e.g. {unsent[:5]}")
        # Idempotence keeps each producer's order within a partition across retries.
        for w in workloads:
            if not w.idempotent:
                continue
            for p in PARTITIONS:
                sent = [int(v.removeprefix(w.prefix)) for _, v in confluent[p]
                        if v.startswith(w.prefix)]  # fmt: skip
                if sent != sorted(sent):
                    i = next(i for i, (a, b) in enumerate(itertools.pairwise(sent)) if a > b)
                    problems.append(
                        f"partition {p}: {w.name}'s values out of the order sent: "
                        f"{sent[i : i + 3]} at index {i}"
                    )
        for v, ack in acks.items():
            at = read_at.get((ack["p"], ack["o"]))
            if at != v:
                problems.append(
                    f"acknowledged {v} at {ack['p']}/{ack['o']}, but that offset holds {at!r}"
                )
            if ack["p"] != attempts.get(v, {}).get("p"):
                problems.append(f"acknowledged {v} on partition {ack['p']}, sent to another")
        # A failed delivery may still have been written (its answer was lost): allowed.
        lost_failed = [v for v in fails if v in seen]

        # The replicas themselves, read from disk after a clean stop.
        self.stop_nodes()
        stored = {name: self.stored(name) for name in NODES}
        report.log_ends = {n: {p: len(r) for p, r in s.items()} for n, s in stored.items()}
        for p in PARTITIONS:
            shortest = min(len(stored[n][p]) for n in NODES)
            reference = stored[NODES[0]][p][:shortest]
            for n in NODES[1:]:
                if stored[n][p][:shortest] != reference:
                    i = next(
                        i
                        for i, (a, b) in enumerate(zip(stored[n][p], reference, strict=False))
                        if a != b
                    )
                    problems.append(
                        f"partition {p}: {n} and {NODES[0]} differ at offset {i}: "
                        f"{stored[n][p][i]} vs {reference[i]}"
                    )
            need = max([a["o"] + 1 for a in acks.values() if a["p"] == p] + [ends[p]])
            for n in NODES:
                if len(stored[n][p]) < need:
                    problems.append(
                        f"partition {p}: {n}'s log ends at {len(stored[n][p])}, before the "
                        f"acknowledged or read offset {need - 1}"
                    )
                if stored[n][p][: ends[p]] != confluent[p]:
                    problems.append(f"partition {p}: {n}'s log is not what the readers read")

        # Recovery: fault moment -> first acknowledgement after it, per partition the node
        # led (all, if none), not counting answers that were already on their way then.
        ack_times = {p: sorted(a["m"] for a in acks.values() if a["p"] == p) for p in PARTITIONS}
        for i, f in enumerate(self.faults):
            end = self.faults[i + 1].at if i + 1 < len(self.faults) else float("inf")
            recovery, gap = {}, {}
            for p in f.led or PARTITIONS:
                after = [m for m in ack_times[p] if m > f.at + IN_FLIGHT]
                recovery[p] = round(after[0] - f.at, 3) if after else None
                # Gaps that open between a second before the fault and the next fault
                # (one still open then ends at the first acknowledgement after it).
                window = [m for m in ack_times[p] if f.at - 1 <= m]
                gaps = [b - a for a, b in itertools.pairwise(window) if a < end]
                gap[p] = round(max(gaps), 3) if gaps else None
            report.faults.append(
                {
                    "kind": f.kind,
                    "node": f.node,
                    "at": f.at - self.started,
                    "lasted_s": None if f.healed is None else round(f.healed - f.at, 2),
                    "led": f.led,
                    "recovery_s": recovery,
                    "gap_s": gap,
                    "notes": f.notes,
                }
            )
        report.failed_but_written = len(lost_failed)
        if problems:
            raise AssertionError(
                "the checker found violations:\n  " + "\n  ".join(problems[:40])
                + f"\n{report.text()}"
            )  # fmt: skip
        return report


def _wait_joined(node: Proc, since: int = 0, timeout: float = 45) -> None:
    def joined() -> bool:
        return UP_MARKER in node.output()[since:] or node.process.poll() is not None

    assert wait_until(joined, timeout), f"{node.name} never joined:\n{node.output()[-3000:]}"
    assert UP_MARKER in node.output()[since:], f"{node.name} exited:\n{node.output()[-3000:]}"


@contextlib.contextmanager
def jepsen_cluster(root: Path, store: str = "sqlite") -> Iterator[JepsenCluster]:
    """Coordinator (its store: "sqlite" or "etcd"), n1..n3 replicating, a stock client;
    everything stopped and removed on exit, whatever happened."""
    with tun_lab(root) as make:
        t = make([*NODES, CLIENT])
        with contextlib.ExitStack() as stack:
            url, etcd = "coordinator.db", None
            if store == "etcd":
                where = t.namespaces["coordinator"].name
                etcd = stack.enter_context(running_etcd(root / "etcd", netns=where))
                url = etcd.url(ETCD_PREFIX)
            # Nodes and coordinator stop before etcd does (LIFO).
            stack.callback(t.mesh.close)
            t.start_coordinator(store=url)
            t.start_nodes(NODES, t.mesh.token(reusable=True), extra=LOG_TOML)
            for name in NODES:
                _wait_joined(t.nodes[name])
            conf = client_config(t, CLIENT, "client")
            bring_up_client(t, t.namespaces[CLIENT], conf)
            for name in NODES:
                peers = {"coordinator", CLIENT, *NODES} - {name}
                t.mesh.wait_peers(t.nodes[name], peers, timeout=20)
            cluster = JepsenCluster(t, root, etcd)
            stack.callback(cluster.close)
            yield cluster
