"""pyralog-wg's TUN transmit queue: TX_QUEUE_PACKETS unless PYRALOG_WG_TXQUEUELEN says
otherwise; a bad value is refused with one line before anything is created."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest

from netns import Lab, missing_tools
from processes import console_script
from pyralog.cli import wg

PYRALOG_WG = str(console_script("pyralog-wg"))


def test_default_is_the_constant() -> None:
    assert wg.tx_queue_packets({}) == wg.TX_QUEUE_PACKETS
    assert wg.tx_queue_packets({wg.TX_QUEUE_VARIABLE: ""}) == wg.TX_QUEUE_PACKETS


@pytest.mark.parametrize(("text", "packets"), [("64", 64), (" 1000 ", 1000), ("1", 1)])
def test_override(text: str, packets: int) -> None:
    assert wg.tx_queue_packets({wg.TX_QUEUE_VARIABLE: text}) == packets


@pytest.mark.parametrize("text", ["0", "-5", "abc", "1e3", "12.5", "²"])
def test_bad_values_are_refused(text: str) -> None:
    with pytest.raises(wg.StartupError, match=wg.TX_QUEUE_VARIABLE):
        wg.tx_queue_packets({wg.TX_QUEUE_VARIABLE: text})


def test_bad_value_stops_the_daemon_before_it_creates_the_interface() -> None:
    env = {**os.environ, wg.TX_QUEUE_VARIABLE: "lots"}
    result = subprocess.run(
        [PYRALOG_WG, "-f", "wgbadtxq0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and wg.TX_QUEUE_VARIABLE in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists("/sys/class/net/wgbadtxq0")


_MISSING = missing_tools()


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


@pytest.mark.privileged
@pytest.mark.skipif(bool(_MISSING), reason=f"needs {', '.join(_MISSING)}")
@pytest.mark.parametrize("override", [None, "777"])
def test_the_interface_gets_the_queue(lab: Lab, override: str | None) -> None:
    ns = lab.namespace("txq")
    env = {wg.TX_QUEUE_VARIABLE: override} if override else {}
    daemon = lab.wireguard(ns, "pyralog", env=env)
    link = json.loads(ns.ip("-j", "link", "show", "dev", daemon.ifname).stdout)[0]
    assert link["txqlen"] == (int(override) if override else wg.TX_QUEUE_PACKETS)
