"""bench/mesh.py's pure parts: node log events, start-up stages, distributions, /proc CPU
and the text table."""

from __future__ import annotations

import pytest

from mesh import (
    Settings,
    distribution,
    event_times,
    fmt_ms,
    parse_event,
    per_minute,
    stale_owner,
    start_stages,
    stat_cpu_seconds,
    table,
)

# Lines as ``pyralog node`` prints them (pyralog.mesh.node, first boot then restart).
FIRST_BOOT = [
    (10.30, "pyralog node: made a new key pair: /tmp/n/node.key (public abc=)"),
    (10.31, "pyralog node: enrolling new-0 with token t1 ..."),
    (10.35, "pyralog node: enrolled as new-0 (node) at 10.77.1.2"),
    (10.36, "pyralog node: backend embedded (as configured)"),
    (10.38, "pyralog node: up: 10.77.1.2/16 on UDP 4000, identity service on port 7701, ..."),
]
RESTART = [
    (20.30, "pyralog node: member new-0 at 10.77.1.2 (state /tmp/n/node.state)"),
    (20.31, "pyralog node: backend embedded (as configured)"),
    (20.33, "pyralog node: up: 10.77.1.2/16 on UDP 4000, ..."),
]


def test_parse_event_names_each_start_up_line() -> None:
    assert [parse_event(line) for _, line in FIRST_BOOT] == [
        "key",
        "enrolling",
        "enrolled",
        "backend",
        "up",
    ]
    assert [parse_event(line) for _, line in RESTART] == ["member", "backend", "up"]


@pytest.mark.parametrize(
    "line",
    [
        "",
        "pyralog coordinator: enrolled new-0 (node) at 10.77.1.2",  # another program
        "pyralog node: coordinator not reachable yet (...); starting with the last known peers",
        "pyralog node: watch failed (...); keeping the current peers",
        "  pyralog node: up: indented is not a log line",
        "Traceback (most recent call last):",
    ],
)
def test_parse_event_ignores_other_lines(line: str) -> None:
    assert parse_event(line) is None


def test_event_times_are_from_the_spawn_and_keep_the_first_of_each() -> None:
    lines = [(10.0, "some warning from Python"), *FIRST_BOOT, (11.0, FIRST_BOOT[-1][1])]
    times = event_times(lines, 10.0)
    assert times["first_line"] == 0.0  # any line, even one that is no event
    assert times["up"] == pytest.approx(0.38)  # the first "up", not the repeat
    assert times["enrolled"] == pytest.approx(0.35)
    assert "member" not in times
    assert event_times([], 1.0) == {}


def test_start_stages_first_boot() -> None:
    times = {**event_times(FIRST_BOOT, 10.0), "tcp": 0.40}
    stages = start_stages(times)
    assert stages["to_first_line"] == pytest.approx(0.30)
    assert stages["to_enrolled"] == pytest.approx(0.35)
    assert stages["to_up"] == pytest.approx(0.38)
    assert stages["to_tcp"] == pytest.approx(0.40)
    assert stages["enrollment"] == pytest.approx(0.04)
    assert stages["enrolled_to_up"] == pytest.approx(0.03)
    assert stages["up_to_tcp"] == pytest.approx(0.02)


def test_start_stages_restart_has_no_enrollment() -> None:
    stages = start_stages({**event_times(RESTART, 20.0), "tcp": 0.35})
    assert stages["enrollment"] is None
    assert stages["to_enrolled"] == pytest.approx(0.30)  # the "member" line stands in
    assert stages["enrolled_to_up"] == pytest.approx(0.03)
    assert stages["up_to_tcp"] == pytest.approx(0.02)


def test_start_stages_of_a_node_that_never_came_up() -> None:
    stages = start_stages(event_times(FIRST_BOOT[:2], 10.0))
    assert stages["to_up"] is None and stages["to_tcp"] is None
    assert stages["enrollment"] is None and stages["up_to_tcp"] is None


def test_distribution_nearest_rank() -> None:
    values = [float(i) for i in range(1, 51)]  # 50 agents
    assert distribution(values) == {"min": 1.0, "p50": 25.0, "p95": 48.0, "max": 50.0, "n": 50}
    assert distribution([3.0]) == {"min": 3.0, "p50": 3.0, "p95": 3.0, "max": 3.0, "n": 1}


def test_distribution_of_nothing() -> None:
    assert distribution([]) == {"min": None, "p50": None, "p95": None, "max": None, "n": 0}


def test_stat_cpu_seconds_reads_utime_and_stime() -> None:
    # proc(5): pid (comm) state ppid ... utime (14) stime (15); comm may hold ") ".
    fields = ["S", *[str(i) for i in range(4, 14)], "250", "50", *["0"] * 30]
    stat = "4242 (py) thon (x)) " + " ".join(fields)
    assert stat_cpu_seconds(stat, clk_tck=100) == 3.0


def test_stat_cpu_seconds_of_this_process_is_plausible() -> None:
    with open("/proc/self/stat") as f:
        value = stat_cpu_seconds(f.read())
    assert 0 <= value < 3600


def test_per_minute() -> None:
    assert per_minute(1.5, 10.0) == pytest.approx(9.0)
    assert per_minute(1.0, 0.0) is None


def test_fmt_ms() -> None:
    assert fmt_ms(None) == "-"
    assert fmt_ms(0.0123) == "12.3"
    assert fmt_ms(1.23456) == "1,235"


def test_table_aligns_columns() -> None:
    text = table(["", "a", "bb"], [["row one", "1", "22"], ["x", "333", "4"]])
    assert text.splitlines() == [
        "           a  bb",
        "-------  ---  --",
        "row one    1  22",
        "x        333   4",
    ]


def test_quick_mode_is_smaller_but_keeps_the_idle_window() -> None:
    quick, full = Settings.for_mode(True), Settings.for_mode(False)
    assert (quick.start_runs, quick.changes) == (2, 2)
    assert (full.start_runs, full.changes) == (5, 5)
    assert quick.agents == full.agents == 50
    assert quick.idle_window == full.idle_window == 10.0  # one long-poll and report period


def test_stale_owner_reads_the_pid_of_our_directories_only() -> None:
    assert stale_owner("pyralog-mesh-bench-4242-abc123") == 4242
    assert stale_owner("pyralog-mesh-bench-abc123") is None  # no pid: not ours to judge
    assert stale_owner("pyralog-mesh-bench-4242") is None
    assert stale_owner("pyralog-mesh-7phn3454") is None  # the test suite's MeshLab
    assert stale_owner("bn-bench-x-4242-abc") is None
