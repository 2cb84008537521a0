"""Replication under faults, Jepsen-style: real processes, network namespaces, stock clients.

Three TUN nodes replicate a topic of two partitions (RF 3, min.insync.replicas 2) while
a confluent-kafka producer (acks=all, idempotent) in a stock WireGuard client's
namespace writes unique values and logs every attempt and acknowledgement. A nemesis
kills the leader (again and again, with either cluster store), isolates it, cuts it off
from the cluster store only (split brain), slows a follower, or kills the whole cluster
at once; then the checker (``jepsen.JepsenCluster.check``)
heals everything and proves from two independent readers and the three replicas' own
files that nothing acknowledged was lost, moved or duplicated, that nothing was read
that was never sent, and that the replicas agree record for record. The measured times
(failover, election, rejoin, recovery) are printed with the report.

The kill tests' moments and orders are random, from a seed printed with the run (shown
when a test fails); set JEPSEN_SEED to repeat them.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from jepsen import NODES, JepsenCluster, PartitionView, jepsen_cluster, tools_missing

from netns import missing_tools
from processes import script_missing, wait_until

_MISSING = missing_tools()
_NO_TOOLS = tools_missing()
_NO_SCRIPTS = script_missing("pyralog-admin") or script_missing("pyralog")
pytestmark = [
    pytest.mark.privileged,
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(_MISSING), reason=f"the Jepsen tests need {', '.join(_MISSING)} (bootstrap.sh)"
    ),
    pytest.mark.skipif(_NO_TOOLS is not None, reason=_NO_TOOLS or ""),
    pytest.mark.skipif(_NO_SCRIPTS is not None, reason=_NO_SCRIPTS or ""),
]

KILLS = 5
ELECTION_LIMIT = 10.0  # isolation -> a new leader, the bar
FAILOVER_LIMIT = 15.0  # kill -> the survivors name a new leader
RECOVERY_LIMIT = 20.0  # a fault -> the first acknowledged write after it
REJOIN_LIMIT = 30.0  # restart / heal / restore -> back in the in-sync set


def _seed() -> int:
    text = os.environ.get("JEPSEN_SEED")
    return int(text) if text else random.SystemRandom().randrange(1 << 31)


def _check_recoveries(report_faults: list[dict], kinds: set[str]) -> None:
    for f in report_faults:
        if f["kind"] not in kinds:
            continue
        for partition, took in f["recovery_s"].items():
            assert took is not None, f"no write was acknowledged after {f}"
            assert took < RECOVERY_LIMIT, f"partition {partition} took {took} s after {f}"


@pytest.mark.parametrize("store", ["sqlite", "etcd"])
def test_kill_9_the_leader_again_and_again_loses_nothing(tmp_path: Path, store: str) -> None:
    seed = _seed()
    print(f"seed {seed} (JEPSEN_SEED={seed} repeats these moments), store {store}")
    rng = random.Random(seed)
    with jepsen_cluster(tmp_path, store) as c:
        c.create_topic()
        w = c.start_workload()
        c.wait_acks(w, 50)
        timings = []
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.2, 3.0))
            victim = c.leader_of(0)
            assert victim is not None, c.metadata()
            fault = c.kill(victim)
            c.wait_leader_moved(0, victim, timeout=FAILOVER_LIMIT)
            failover = time.monotonic() - fault.at
            restart = c.restart(victim)
            c.wait_in_sync(timeout=REJOIN_LIMIT)
            rejoin = time.monotonic() - fault.at
            fault.notes.update(failover_s=round(failover, 2), restart_s=round(restart, 2),
                               in_sync_s=round(rejoin, 2))  # fmt: skip
            timings.append((victim, failover, restart, rejoin))
        c.wait_acks(w, len(w.acks()) + 50)  # still writing after the last fault
        if store == "etcd":  # the brokers' cluster state really is in etcd
            keys = c.store_keys()
            assert keys is not None and "/jepsen-log/partitions/jepsen/0" in keys, keys
        report = c.check([w])
    print(report.text())
    for victim, failover, restart, rejoin in timings:
        print(
            f"kill -9 {victim}: new leader of partition 0 named {failover:.2f} s later; "
            f"restarted in {restart:.2f} s; all in sync {rejoin:.2f} s after the kill"
        )
    assert report.kills >= KILLS
    _check_recoveries(report.faults, {"kill"})


def test_an_isolated_leader_is_replaced_and_its_writes_are_never_acknowledged(
    tmp_path: Path,
) -> None:
    with jepsen_cluster(tmp_path) as c:
        c.create_topic()
        w = c.start_workload()
        c.wait_acks(w, 50)
        old = c.leader_of(0)
        assert old is not None
        others = [n for n in NODES if n != old]
        # A second producer in the old leader's own namespace, knowing only it: once the
        # node is cut off, nothing else can reach it. Not idempotent (that needs a
        # producer id from the cluster store, out of reach), a short delivery timeout.
        go = tmp_path / "go"
        direct = c.start_workload(
            "direct", ns=c.ns(old), bootstrap=c.bootstrap([old]), partitions=[0],
            idempotent=False, message_timeout_ms=5000, request_timeout_ms=3000, count=20,
            interval=0.05, go_file=str(go), warm=True,
        )  # fmt: skip
        assert wait_until(lambda: any(e["e"] == "ready" for e in direct.events()), 30), (
            direct.error_output()
        )
        fault = c.isolate(old)
        go.touch()
        c.wait_leader_moved(0, old, timeout=ELECTION_LIMIT + 5)
        elected = time.monotonic() - fault.at
        new = c.leader_of(0, via=others)
        print(f"isolated {old}: {new} leads partition 0 {elected:.2f} s later")
        assert elected < ELECTION_LIMIT, elected
        # The direct producer ends while the old leader is still cut off: every one of
        # its acks=all writes failed.
        direct.proc.wait(60)
        sent = [e for e in direct.events() if e["e"] == "attempt"]
        acked = [e for e in direct.events() if e["e"] == "ack"]
        failed = [e for e in direct.events() if e["e"] == "fail"]
        codes = sorted({e["code"] for e in failed})
        print(
            f"direct writes to the isolated {old}: {len(sent)} sent, {len(acked)} "
            f"acknowledged, {len(failed)} failed ({codes})"
        )
        assert sent and not acked, acked
        assert len(failed) == len(sent)
        c.wait_acks(w, len(w.acks()) + 30)  # the majority side goes on writing
        before = len(c.node_log(old))
        healed = time.monotonic()
        c.heal(old)
        c.wait_in_sync(timeout=REJOIN_LIMIT)
        rejoined = time.monotonic() - healed
        fault.notes.update(elected_s=round(elected, 2), in_sync_after_heal_s=round(rejoined, 2))
        log = c.node_log(old)[before:]
        truncations = [line for line in log.splitlines() if "truncated" in line]
        print(f"healed {old}: back in the in-sync set {rejoined:.2f} s later; {truncations}")
        assert truncations, f"{old} never truncated its own writes:\n{log[-3000:]}"
        report = c.check([w, direct])
    print(report.text())
    direct_values = {e["v"] for e in sent}
    assert report.read, report
    # The old leader's own writes were never on the new leader: none survived.
    _assert_not_read(c, direct_values)
    _check_recoveries(report.faults, {"isolate"})


def test_a_leader_cut_off_from_the_cluster_store_fences_itself(tmp_path: Path) -> None:
    """Split brain: the leader of partition 0 loses only the coordinator (the cluster
    store); it still reaches its followers and the clients. It cannot heartbeat, so the
    controller names another leader while it is alive, and it must fence itself first:
    a producer (not idempotent) bootstrapped from the old leader alone keeps writing
    throughout, and every write anyone got acknowledged is in the final log where it
    was acknowledged. The main producer, connected to the old leader, must find the new
    one (a fenced broker gives no metadata from its stale view) and go on writing."""
    with jepsen_cluster(tmp_path) as c:
        c.create_topic()
        w = c.start_workload()
        c.wait_acks(w, 50)
        for round_ in range(2):
            old = c.leader_of(0)
            assert old is not None
            direct = c.start_workload(
                f"direct{round_}", ns=c.ns(old), bootstrap=c.bootstrap([old]),
                partitions=[0], idempotent=False, message_timeout_ms=8000,
                request_timeout_ms=3000, interval=0.05,
            )  # fmt: skip
            c.wait_acks(direct, 5)
            fault = c.cut_from_store(old)
            c.wait_leader_moved(0, old, timeout=ELECTION_LIMIT + 5)
            elected = time.monotonic() - fault.at
            assert elected < ELECTION_LIMIT, elected
            c.wait_acks(w, len(w.acks()) + 30)  # the others go on
            direct.stop()
            acked = [e for e in direct.acks() if e["m"] > fault.at]
            c.heal(old)
            c.wait_in_sync(timeout=REJOIN_LIMIT)
            rejoined = time.monotonic() - fault.at
            fault.notes.update(elected_s=round(elected, 2), in_sync_s=round(rejoined, 2),
                               direct_acked_after_cut=len(acked))  # fmt: skip
            print(
                f"{old} cut from the store: another leader named {elected:.2f} s later; "
                f"of the writes sent to it, {len(acked)} acknowledged after the cut (by it "
                f"before it fenced itself, or by the new leader the producer then found); "
                f"back in sync {rejoined:.2f} s after the cut"
            )
        report = c.check(c.workloads)
    print(report.text())
    _check_recoveries(report.faults, {"cut-from-store"})


def _assert_not_read(c: JepsenCluster, values: set[str]) -> None:
    found = [v for p, recs in c.last_read.items() for _, v in recs if v in values]
    assert not found, f"writes only the isolated leader had survived: {found[:5]}"


def test_a_slow_follower_leaves_the_in_sync_set_and_comes_back(tmp_path: Path) -> None:
    with jepsen_cluster(tmp_path) as c:
        c.create_topic()
        w = c.start_workload(interval=0.01)
        c.wait_acks(w, 50)
        meta = c.metadata()
        assert meta is not None
        leaders = {c.node_of(v.leader) for v in meta.values()}
        slow = next((n for n in NODES if n not in leaders), None) or next(
            n for n in NODES if n != c.node_of(meta[0].leader)
        )
        others = [n for n in NODES if n != slow]
        me = c.ids[slow]

        def out(m: dict[int, PartitionView]) -> bool:
            return all(me not in v.isr for p, v in m.items() if me != v.leader)

        def back(m: dict[int, PartitionView]) -> bool:
            return c.all_in_sync(m)

        fault = c.slow(slow, rate="16kbit")
        c.wait_metadata(out, timeout=30, via=others)
        dropped = time.monotonic() - fault.at
        c.wait_acks(w, len(w.acks()) + 50)  # writes go on without it
        restored = time.monotonic()
        c.restore(slow)
        c.wait_metadata(back, timeout=REJOIN_LIMIT)
        rejoined = time.monotonic() - restored
        fault.notes.update(out_of_sync_s=round(dropped, 2), rejoined_s=round(rejoined, 2))
        print(
            f"slowed {slow}'s link to 16 kbit/s: out of the in-sync set {dropped:.2f} s "
            f"later; restored, back in {rejoined:.2f} s"
        )
        report = c.check([w])
    print(report.text())
    _check_recoveries(report.faults, {"slow"})


def test_the_whole_cluster_killed_at_once_comes_back_with_everything(tmp_path: Path) -> None:
    """kill -9 of all three nodes at the same moment, down long enough (4 s, twice the
    session timeout) that a leader not back soon is judged dead: the partitions stay
    with the in-sync set they had (offline, not handed to a replica that may lack
    acknowledged records), the first of it to return leads, and nothing is lost."""
    seed = _seed()
    print(f"seed {seed} (JEPSEN_SEED={seed} repeats the restart orders)")
    rng = random.Random(seed)
    with jepsen_cluster(tmp_path) as c:
        c.create_topic()
        w = c.start_workload()
        c.wait_acks(w, 50)
        for _ in range(2):
            # Not at once: the nodes note where the client reaches them every 2 s (to
            # greet it after a restart); a crash sooner costs it WireGuard's 15 s.
            time.sleep(rng.uniform(2.5, 4.0))
            fault = c.kill_all()
            time.sleep(4)
            order = rng.sample(NODES, len(NODES))
            restart = c.restart_all(order)
            c.wait_in_sync(timeout=REJOIN_LIMIT)
            back = time.monotonic() - fault.at
            c.wait_acks(w, len(w.acks()) + 50)
            fault.notes.update(order=order, restart_s=round(restart, 2), in_sync_s=round(back, 2))
            print(f"all killed; restarted in order {order} in {restart:.2f} s, all in sync "
                  f"{back:.2f} s after the kill")  # fmt: skip
        report = c.check([w])
    print(report.text())
    assert report.kills == 2 * len(NODES)
    _check_recoveries(report.faults, {"kill-all"})
