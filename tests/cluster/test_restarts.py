"""The restart policy of ``pyralog up`` (sans-IO) and the cluster manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyralog.cluster.layout import ClusterDir, LayoutError, Manifest
from pyralog.cluster.restarts import Restarts, exit_text


def test_a_node_that_ran_a_while_restarts_after_the_delay() -> None:
    r = Restarts(delay=5, settled=30)
    r.started("node-1", 0)
    r.exited("node-1", 100, -9)
    assert r.describe("node-1", 101) == "restarting in 4 s (killed by SIGKILL)"
    assert r.due(104.9) == [] and r.due(105) == ["node-1"]
    r.started("node-1", 105)
    assert r.describe("node-1", 106) == "running" and r.child("node-1").restarts == 1


def test_quick_failures_back_off_then_give_up() -> None:
    r = Restarts(delay=1, longest=4, settled=30, give_up=4)
    now = 0.0
    waits = []
    for _ in range(3):
        r.started("n", now)
        r.exited("n", now + 1, 1)
        waits.append(r.child("n").restart_at - (now + 1))  # type: ignore[operator]
        now = r.child("n").restart_at  # type: ignore[assignment]
    assert waits == [1, 2, 4]
    r.started("n", now)
    r.exited("n", now + 1, 1)
    assert r.child("n").gave_up and r.due(now + 100) == []
    assert "gave up after 4 quick failures" in r.describe("n", now + 2)
    # A failure after a long run counts as a first one again.
    r2 = Restarts(delay=1, longest=4, settled=30)
    r2.started("n", 0)
    r2.exited("n", 1, 1)
    r2.started("n", 2)
    r2.exited("n", 100, 1)
    assert r2.child("n").restart_at == 101


def test_exit_text() -> None:
    assert exit_text(-9) == "killed by SIGKILL"
    assert exit_text(2) == "exit status 2"
    assert exit_text(None) == "not started"
    assert exit_text(-99) == "killed by signal 99"


def test_manifest_ports_and_factor(tmp_path: Path) -> None:
    m = Manifest("local", 5, 40000)
    assert m.replication_factor == 3 and Manifest("x", 2, 1).replication_factor == 2
    assert m.ports() == {"coordinator": 40000, **{f"node-{i}": 40000 + i for i in range(1, 6)}}
    d = ClusterDir(tmp_path / "c")
    d.create(m)
    assert d.manifest() == m
    assert d.grow(m, 7).nodes == 7 and d.manifest().nodes == 7


@pytest.mark.parametrize(
    "text, words",
    [
        ("[cluster\n", "not valid TOML"),
        ("[cluster]\nnodes = 3\n", "incomplete"),
        ('[cluster]\ncluster_id = "x"\nnodes = 99\nport = 4000\n', "out of range"),
        ('[cluster]\ncluster_id = "x"\nnodes = "three"\nport = 4000\n', "incomplete"),
    ],
)
def test_a_broken_manifest_is_named(tmp_path: Path, text: str, words: str) -> None:
    (tmp_path / "cluster.toml").write_text(text)
    with pytest.raises(LayoutError, match=words):
        ClusterDir(tmp_path).manifest()


def test_socket_paths_that_are_too_long(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 90)
    with pytest.raises(LayoutError, match="choose a shorter --dir"):
        ClusterDir(deep).check_new()
