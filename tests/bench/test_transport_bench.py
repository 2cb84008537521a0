"""bench/transport.py: its arguments and figures (pure), and its quick mode for real
(root only: namespaces and TUN devices; about 40 s)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import replab
import transload
import transport
from lab import base36
from transtats import PATHS, order, summarize, tables, unit_figures

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_quick_and_normal_settings() -> None:
    quick = transport.settings(transport.parse_args(["--quick"]))
    normal = transport.settings(transport.parse_args([]))
    assert (quick.rounds, normal.rounds) == (1, 4)
    assert normal.records > quick.records and normal.samples > quick.samples
    s = transport.settings(transport.parse_args(["--quick", "--rounds", "3", "--records", "7"]))
    assert (s.rounds, s.records, s.quick) == (3, 7, True)


def test_paths_and_the_order_flips_every_round() -> None:
    assert transport.chosen_paths(transport.parse_args([])) == PATHS
    assert transport.chosen_paths(transport.parse_args(["--paths", "tls,wg"])) == ("tls", "wg")
    with pytest.raises(SystemExit, match="unknown kernel"):
        transport.chosen_paths(transport.parse_args(["--paths", "kernel"]))
    assert order(0) == ("wg", "embedded", "tls", "plain")
    assert order(1) == ("plain", "tls", "embedded", "wg")


@pytest.fixture
def own_subnet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replab, "SUBNET", transport.SUBNET)  # as transport.main() does


def test_our_own_addresses(own_subnet: None) -> None:
    assert transport.lan_ip("a") == "172.29.47.1"  # not replication.py's 172.29.41.x
    assert transport.tunnel_ip("d") == "10.29.47.10"
    assert transport.embedded_ip("c") == "10.29.48.3"


def test_load_generator_arguments() -> None:
    a = transload.parser().parse_args(["connect", "--server", "h:1", "--fresh-tunnel",
                                       "--tunnel", "c.conf"])  # fmt: skip
    assert (a.command, a.fresh_tunnel, a.tunnel, a.count) == ("connect", True, "c.conf", 1000)
    with pytest.raises(SystemExit, match="--topic is needed"):
        transload.main(["produce", "--server", "h:1"])


def _unit(path: str, r: int, scale: float) -> dict:
    prod = {"records": 10_000, "records_per_s": 1000 * scale, "mb_per_s": scale,
            "client_cpu_s": 1.0}  # fmt: skip
    lat = {"acks1": {"p50_us": 100 / scale, "p99_us": 300 / scale},
           "acksall": {"p50_us": 200 / scale, "p99_us": 600 / scale}}  # fmt: skip
    cold = [5000.0, 7000.0] if path in ("wg", "embedded") else None
    u = unit_figures(path, prod, {"server": 2.0, "wg": 1.0}, lat, {"p50_us": 1000.0}, cold)
    u["round"] = r
    return u


def test_figures_and_ratios() -> None:
    scale = {"wg": 0.5, "embedded": 0.25, "tls": 0.8, "plain": 1.0}
    units = [_unit(p, r, scale[p]) for r in range(2) for p in PATHS]
    u = units[0]
    gb = 10_000 * 1024 / 1e9
    assert u["cpu_s_per_gb"] == pytest.approx(4.0 / gb)  # brokers + daemons + client
    assert units[2]["wg_cpu_s_per_gb"] is None  # the daemons idle for TLS: not counted
    assert u["connect_cold_us"] == 6000.0
    s = summarize(units)
    assert s["paths"]["wg"]["records_per_s"] == {"median": 500, "min": 500, "max": 500, "n": 2}
    assert s["ratios"]["wg/plain"]["records_per_s"]["ratio"] == pytest.approx(0.5)
    assert s["ratios"]["wg/tls"]["acks1_p50_us"]["paired"] == pytest.approx(0.8 / 0.5)
    assert "tls/wg" not in s["ratios"] and "plain/tls" not in s["ratios"]
    assert s["connect_vs_tls"]["wg"] == {"warm": 1.0, "cold": 6.0}
    text = tables(s)
    assert "| throughput, acks=all (records/s) | 500 [500, 500] |" in text
    assert "6.00x with a fresh handshake" in text


def test_embedded_configs_name_every_other_member(own_subnet: None) -> None:
    keys = {n: (f"priv-{n}", f"pub-{n}") for n in ("a", "b", "c", "d")}
    server = transport._peers("a", keys, toml=True)
    assert server.count("[[peer]]") == 3 and "pub-a" not in server
    assert 'allowed_ips = ["10.29.48.10/32"]' in server  # the client
    client = transport._peers("d", keys, toml=False)
    assert client.count("[Peer]") == 3 and "Endpoint = 172.29.47.2:51821" in client


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "wg", "/usr/bin/etcd")),
    reason="needs root (network namespaces, TUN), wg and /usr/bin/etcd",
)


@needs_root
def test_quick_mode_runs_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    argv = [sys.executable, str(BENCH / "transport.py"), "--quick", "--out", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.terminate()  # it cleans up on SIGTERM
            proc.wait(30)
    assert proc.returncode == 0, stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["failure"] is None
    assert sorted(u["path"] for u in results["units"]) == sorted(PATHS)
    for u in results["units"]:
        assert u["records_per_s"] > 0 and u["acksall_p50_us"] > 0 and u["connect_us"] > 0
        assert (u["connect_cold_us"] is not None) == (u["path"] in ("wg", "embedded"))
    assert "| plain TCP |" in stdout
    # Its namespaces were bnb-<its pid in base 36>-*: all gone.
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"bnb-{base36(proc.pid)}-" not in left
