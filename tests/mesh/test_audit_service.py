"""A process's audit trail: events and session records appended and verifiable; a
damaged trail is left alone (and said so), never chained onto."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pyralog.mesh import audit
from pyralog.mesh.audit_service import AuditTrail
from pyralog.mesh.audit_sessions import PeerCounters


def test_events_and_sessions_land_in_a_verifiable_trail(tmp_path: Path) -> None:
    trail = AuditTrail.open(tmp_path / "audit.jsonl")
    assert trail.trail is not None and trail.public_key
    trail.record("enrolled", {"node_id": "node-1"})
    counters = {"rx": 0}

    async def peers() -> list[PeerCounters]:
        counters["rx"] += 100
        return [PeerCounters("node-2", "K", 1.0, counters["rx"], 10)]

    async def main() -> None:
        task = asyncio.create_task(trail.run_sessions(peers, interval=0.05, tick=0.01))
        await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    public = audit.public_from_text((tmp_path / "audit.pub").read_text())
    good, bad = audit.verify(lines, public)
    assert bad is None and good >= 3
    kinds = [e["kind"] for e in audit.entries(lines)]
    assert kinds[0] == "enrolled" and set(kinds[1:]) == {"session"}
    total = sum(e["data"]["rx_bytes"] for e in audit.entries(lines)[1:])
    assert total <= counters["rx"] and total > 0


def test_a_damaged_trail_disables_the_trail_and_says_why(tmp_path: Path) -> None:
    AuditTrail.open(tmp_path / "audit.jsonl").record("enrolled", {"node_id": "a"})
    AuditTrail.open(tmp_path / "audit.jsonl").record("enrolled", {"node_id": "b"})
    path = tmp_path / "audit.jsonl"
    lines = path.read_text().splitlines()
    path.write_text(lines[1] + "\n")  # the first entry removed
    trail = AuditTrail.open(tmp_path / "audit.jsonl")
    assert trail.trail is None and "line 1" in trail.reason
    trail.record("enrolled", {"node_id": "c"})  # nothing appended
    assert path.read_text().splitlines() == [lines[1]]


def test_an_old_unsigned_log_is_moved_aside(tmp_path: Path) -> None:
    old = tmp_path / "audit.log"
    old.write_text('{"event": "node_enrolled", "time": 1}\n')
    trail = AuditTrail.open(old)
    trail.record("node_enrolled", {"node_id": "a"})
    assert (tmp_path / "audit.log.unsigned").read_text().startswith('{"event"')
    public = audit.public_from_text((tmp_path / "audit.pub").read_text())
    assert audit.verify(old.read_text().splitlines(), public) == (1, None)


def test_the_coordinator_signs_its_trail() -> None:
    import subprocess
    import sys

    from meshlab import mesh_lab

    with mesh_lab() as lab:
        coordinator = lab.start_coordinator()
        token = lab.token()
        node = lab.start_node("node-1", token)
        lab.wait_peers(node, {"coordinator"}, 15)
        lab.admin("node", "remove", "node-1")
        trail = coordinator.directory / "audit.log"
        done = subprocess.run([sys.executable, "-m", "pyralog.cli.admin", "audit", "verify",
                               "--file", str(trail)], capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr
        kinds = [e["kind"] for e in audit.entries(trail.read_text().splitlines())]
        assert "node_enrolled" in kinds and "node_removed" in kinds, kinds
        assert oct((coordinator.directory / "audit.key").stat().st_mode & 0o777) == "0o600"
        # The node keeps its own trail, signed with its own key, beside its WireGuard key.
        mine = node.directory / "audit.log"
        public = audit.public_from_text((node.directory / "audit.pub").read_text())
        lines = mine.read_text().splitlines()
        assert audit.verify(lines, public) == (len(lines), None)
        assert audit.entries(lines)[0]["kind"] == "started"
