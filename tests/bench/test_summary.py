"""bench/summary.py: summarize() on hand-built results, and on the published results.

The hand-built cases check columns, ratios, which way is better, and what missing,
skipped and failed measures leave. The last tests feed the raw data of
docs/benchmarks.json back in: the summary must come out exactly as it is stored there
(it was written by the harness before it was split into modules).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import embedded
import pytest
from summary import COLUMNS, REFERENCE, ping_summary, summarize

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = ROOT / "docs" / "benchmarks.json"
DERIVED = ("summary", "implementations", "core_summary")
PY, GO = "pyralog-wg", "wireguard-go"

PAIR_ROW_BETTER = {
    "tcp_mbps": "higher",
    "tcp_retransmits": "lower",
    "cpu_s_per_gb": "lower",
    "udp64_pps": "higher",
    "udp64_loss": "lower",
    "udp1392_pps": "higher",
    "udp1392_loss": "lower",
    "ping_idle_p50": "lower",
    "ping_idle_p99": "lower",
    "ping_load_p50": "lower",
    "ping_load_p99": "lower",
}
IMPL_ROW_BETTER = {
    "hs_handshakes_per_second": "higher",
    "hs_responder_cpu_us_per_handshake": "lower",
    "hs_latency_p50_ms": "lower",
    "rss_0": "lower",
    "rss_1": "lower",
    "rss_100": "lower",
    "rss_10000": "lower",
    "bytes_per_peer": "lower",
    "apply_10000": "lower",
    "show_10000": "lower",
}


# -- building results by hand ---------------------------------------------------------------


def tcp(mbps: float, retransmits: int | None = None, cpu: float | None = None) -> dict:
    return {"bits_per_second": mbps * 1e6, "retransmits": retransmits, "cpu_seconds_per_gb": cpu}


def udp(pps: float, loss: float | None = None) -> dict:
    return {"received_pps": pps, "loss_percent": loss}


def ping(*rtts: float, sent: int | None = None) -> dict:
    return {"sent": len(rtts) if sent is None else sent, "received": len(rtts), "rtt_ms": [*rtts]}


def pair(a: str, b: str, **kw) -> dict:
    """A pair's raw results; ``tcp_a=[...]``, ``udp64_b=[...]``, ``ping_idle={...}``."""
    return {
        "a": a,
        "b": b,
        "tcp": {"a": kw.get("tcp_a", []), "b": kw.get("tcp_b", [])},
        "udp": {
            str(n): {"a": kw.get(f"udp{n}_a", []), "b": kw.get(f"udp{n}_b", [])} for n in (64, 1392)
        },
        "ping_idle": kw.get("ping_idle", {}),
        "ping_load": kw.get("ping_load", {}),
        "failures": [],
    }


def results(**parts) -> dict:
    return {"settings": {"tcp_seconds": 10}, "errors": [], **parts}


def rows_by_key(summary: dict) -> dict[str, dict]:
    return {r["key"]: r for r in summary["summary"]["rows"]}


def impl_by_key(summary: dict) -> dict[str, dict]:
    return {r["key"]: r for r in summary["implementations"]["rows"]}


# -- the shape --------------------------------------------------------------------------------


def test_summary_has_its_three_entries_and_every_row() -> None:
    out = summarize(results())
    assert list(out) == ["summary", "implementations", "core_summary"]
    assert out["summary"]["columns"] == ["py-py", "go-go", "py→go", "go→py"]
    assert list(COLUMNS) == out["summary"]["columns"]
    assert out["summary"]["reference"] == REFERENCE == "go-go"
    assert [r["key"] for r in out["summary"]["rows"]] == list(PAIR_ROW_BETTER)
    assert [r["key"] for r in out["implementations"]["rows"]] == list(IMPL_ROW_BETTER)


def test_which_way_is_better() -> None:
    out = summarize(results())
    assert {k: r["better"] for k, r in rows_by_key(out).items()} == PAIR_ROW_BETTER
    assert {k: r["better"] for k, r in impl_by_key(out).items()} == IMPL_ROW_BETTER


def test_labels_and_units() -> None:
    out = summarize({"settings": {"tcp_seconds": 3}})
    rows = rows_by_key(out)
    assert rows["tcp_mbps"]["unit"] == "Mbit/s"
    assert rows["tcp_retransmits"]["label"] == "TCP retransmits per 3 s run"
    assert rows["udp1392_pps"]["label"] == "UDP 1392-byte payload, received"
    assert rows["udp64_loss"]["unit"] == "%"
    assert rows["ping_load_p99"]["label"] == "Ping p99, under TCP load"
    impl = impl_by_key(out)
    assert impl["rss_10000"]["label"] == "RSS with 10,000 peers"
    assert impl["rss_10000"]["unit"] == "MiB"
    assert impl["apply_10000"]["label"] == "Time to add 9,900 peers (one wg addconf)"
    assert impl["show_10000"]["label"] == "Time to read 10,000 peers back (wg show IF peers)"


def test_summarize_leaves_its_input_alone() -> None:
    res = results(pairs={"go-go": pair(GO, GO, tcp_a=[tcp(100)], ping_idle={"a": ping(1.0)})})
    before = copy.deepcopy(res)
    summarize(res)
    assert res == before


# -- per pair: columns, medians, spreads, ratios ---------------------------------------------


def three_pairs() -> dict:
    return results(
        pairs={
            "go-go": pair(GO, GO, tcp_a=[tcp(1000, 10, 2.0)], tcp_b=[tcp(3000, 30, 4.0)]),
            "py-py": pair(PY, PY, tcp_a=[tcp(1000, 5, 9.0)]),
            # a = pyralog-wg sends in column py→go, b = wireguard-go in go→py.
            "py-go": pair(
                PY, GO, tcp_a=[tcp(500, 1, 1.0), tcp(700, 3, 3.0), tcp(600, 2, 2.0)],
                tcp_b=[tcp(4000, 40, 6.0)],
            ),
        }
    )  # fmt: skip


def test_tcp_throughput_pools_same_implementation_pairs_and_splits_mixed_ones() -> None:
    row = rows_by_key(summarize(three_pairs()))["tcp_mbps"]
    # go-go: both directions pooled, median of 1000 and 3000.
    assert row["values"] == pytest.approx(
        {"py-py": 1000, "go-go": 2000, "py→go": 600, "go→py": 4000}
    )
    assert row["spread"]["go-go"] == pytest.approx([1000, 3000])
    assert row["spread"]["py-py"] == pytest.approx([1000, 1000])
    assert row["spread"]["py→go"] == pytest.approx([500, 700])
    assert row["spread"]["go→py"] == pytest.approx([4000, 4000])
    assert row["ratios"] == pytest.approx({"py-py": 0.5, "go-go": 1.0, "py→go": 0.3, "go→py": 2.0})


def test_lower_is_better_rows_have_the_same_ratio_direction() -> None:
    # The ratio is always the column's figure ÷ go-go's; "better" only says how to read it.
    rows = rows_by_key(summarize(three_pairs()))
    cpu = rows["cpu_s_per_gb"]
    assert cpu["values"] == {"py-py": 9.0, "go-go": 3.0, "py→go": 2.0, "go→py": 6.0}
    assert cpu["spread"] == {
        "py-py": [9.0, 9.0],
        "go-go": [2.0, 4.0],
        "py→go": [1.0, 3.0],
        "go→py": [6.0, 6.0],
    }
    assert cpu["ratios"] == {"py-py": 3.0, "go-go": 1.0, "py→go": 2 / 3, "go→py": 2.0}
    rtx = rows["tcp_retransmits"]
    assert rtx["values"] == {"py-py": 5, "go-go": 20.0, "py→go": 2, "go→py": 40}
    assert rtx["ratios"] == {"py-py": 0.25, "go-go": 1.0, "py→go": 0.1, "go→py": 2.0}


def test_none_in_a_run_is_left_out_of_that_figure_only() -> None:
    res = results(
        pairs={
            "go-go": pair(GO, GO, tcp_a=[tcp(1000, 4, 2.0), tcp(2000, None, None)]),
            "py-py": pair(PY, PY, tcp_a=[tcp(3000, None, None)]),
        }
    )
    rows = rows_by_key(summarize(res))
    assert rows["tcp_mbps"]["values"]["go-go"] == pytest.approx(1500)
    assert rows["tcp_retransmits"]["values"]["go-go"] == 4
    assert rows["cpu_s_per_gb"]["spread"]["go-go"] == [2.0, 2.0]
    # py-py moved data but has no retransmit or CPU figure: None, and no ratio.
    assert rows["tcp_mbps"]["ratios"]["py-py"] == pytest.approx(2.0)
    assert rows["tcp_retransmits"]["values"]["py-py"] is None
    assert rows["tcp_retransmits"]["spread"]["py-py"] == [None, None]
    assert rows["tcp_retransmits"]["ratios"]["py-py"] is None
    assert rows["cpu_s_per_gb"]["ratios"]["py-py"] is None


def test_a_pair_that_failed_to_build_leaves_its_columns_empty() -> None:
    # py-go's set-up failed: it is not in results["pairs"] at all.
    res = results(
        pairs={
            "go-go": pair(GO, GO, tcp_a=[tcp(1000)], udp64_a=[udp(100.0, 1.0)]),
            "py-py": pair(PY, PY, tcp_a=[tcp(800)], udp64_b=[udp(50.0, 3.0)]),
        }
    )
    rows = rows_by_key(summarize(res))
    for key in ("tcp_mbps", "udp64_pps"):
        for col in ("py→go", "go→py"):
            assert rows[key]["values"][col] is None
            assert rows[key]["spread"][col] == [None, None]
            assert rows[key]["ratios"][col] is None
    assert rows["udp64_pps"]["ratios"]["py-py"] == 0.5
    assert rows["udp64_loss"]["values"] == {
        "py-py": 3.0,
        "go-go": 1.0,
        "py→go": None,
        "go→py": None,
    }
    assert rows["udp64_loss"]["ratios"]["py-py"] == 3.0
    assert rows["udp64_loss"]["spread"] == {}  # loss rows carry no [min, max]
    assert rows["udp1392_pps"]["values"] == dict.fromkeys(COLUMNS)


def test_without_the_reference_there_are_no_ratios() -> None:
    res = results(pairs={"py-py": pair(PY, PY, tcp_a=[tcp(800)], tcp_b=[tcp(1200)])})
    row = rows_by_key(summarize(res))["tcp_mbps"]
    assert row["values"]["py-py"] == pytest.approx(1000)
    assert row["values"]["go-go"] is None
    assert row["ratios"] == dict.fromkeys(COLUMNS)


def test_a_zero_reference_gives_no_ratio() -> None:
    res = results(
        pairs={
            "go-go": pair(GO, GO, tcp_a=[tcp(1000, 0)], tcp_b=[tcp(1000, 0)]),
            "py-py": pair(PY, PY, tcp_a=[tcp(1000, 7)]),
        }
    )
    row = rows_by_key(summarize(res))["tcp_retransmits"]
    assert row["values"]["go-go"] == 0.0
    assert row["values"]["py-py"] == 7
    assert row["ratios"] == dict.fromkeys(COLUMNS)


def test_udp_rows_per_payload_size() -> None:
    res = results(
        pairs={
            "go-go": pair(GO, GO, udp64_a=[udp(1000.0, 10.0)], udp64_b=[udp(3000.0, 30.0)],
                          udp1392_a=[udp(500.0, 0.0)]),
            "py-go": pair(PY, GO, udp64_a=[udp(400.0, 50.0), udp(600.0, 70.0)],
                          udp1392_b=[udp(250.0, 5.0)]),
        }
    )  # fmt: skip
    rows = rows_by_key(summarize(res))
    assert rows["udp64_pps"]["values"] == {
        "py-py": None,
        "go-go": 2000.0,
        "py→go": 500.0,
        "go→py": None,
    }
    assert rows["udp64_pps"]["spread"]["py→go"] == [400.0, 600.0]
    assert rows["udp64_pps"]["ratios"]["py→go"] == 0.25
    assert rows["udp64_loss"]["values"]["go-go"] == 20.0
    assert rows["udp64_loss"]["values"]["py→go"] == 60.0
    assert rows["udp1392_pps"]["values"]["go→py"] == 250.0
    assert rows["udp1392_pps"]["ratios"]["go→py"] == 0.5
    # A zero loss on the reference: no loss ratio.
    assert rows["udp1392_loss"]["values"]["go→py"] == 5.0
    assert rows["udp1392_loss"]["ratios"]["go→py"] is None


def test_ping_rows_pool_every_sample_of_a_column() -> None:
    res = results(
        pairs={
            "go-go": pair(GO, GO, ping_idle={"a": ping(1.0, 3.0, 2.0), "b": ping(4.0)},
                          ping_load={"a": ping(8.0)}),
            "py-go": pair(PY, GO, ping_idle={"a": ping(20.0, 10.0), "b": ping(5.0)}),
            # py-py's load pings failed: no "ping_load" entry for it at all.
            "py-py": {**pair(PY, PY, ping_idle={"b": ping(6.0)}), "ping_load": {}},
        }
    )  # fmt: skip
    rows = rows_by_key(summarize(res))
    # go-go idle: 1, 2, 3, 4 pooled; nearest rank: p50 is the 2nd, p99 the 4th.
    assert rows["ping_idle_p50"]["values"] == {
        "py-py": 6.0,
        "go-go": 2.0,
        "py→go": 10.0,
        "go→py": 5.0,
    }
    assert rows["ping_idle_p99"]["values"] == {
        "py-py": 6.0,
        "go-go": 4.0,
        "py→go": 20.0,
        "go→py": 5.0,
    }
    assert rows["ping_idle_p50"]["ratios"] == {
        "py-py": 3.0,
        "go-go": 1.0,
        "py→go": 5.0,
        "go→py": 2.5,
    }
    assert rows["ping_idle_p50"]["spread"] == {}
    assert rows["ping_load_p50"]["values"] == {
        "py-py": None,
        "go-go": 8.0,
        "py→go": None,
        "go→py": None,
    }
    assert rows["ping_load_p99"]["ratios"] == {
        "py-py": None,
        "go-go": 1.0,
        "py→go": None,
        "go→py": None,
    }


def test_ping_summary() -> None:
    s = ping_summary([ping(1.0, 2.0, sent=5), ping(3.0, 4.0, 5.0, sent=5)])
    assert s == {"p50_ms": 3.0, "p99_ms": 5.0, "sent": 10, "received": 5, "loss_percent": 50.0}
    empty = ping_summary([])
    assert empty == {"p50_ms": None, "p99_ms": None, "sent": 0, "received": 0, "loss_percent": None}
    lost = ping_summary([ping(sent=3)])
    assert lost["p50_ms"] is None
    assert lost["loss_percent"] == 100.0


# -- per implementation ------------------------------------------------------------------------


def memory_result(rss_mib: list[float], per_peer: float, apply: float, show: float | None) -> dict:
    return {
        "rss_bytes": {
            k: int(m * 2**20) for k, m in zip(("0", "1", "100", "10000"), rss_mib, strict=True)
        },
        "apply_seconds": {"1": 0.01, "100": 0.02, "10000": apply},
        "bytes_per_peer": per_peer,
        "show_seconds": show,
        "show_timeout_seconds": 20,
        "peers_reported": None if show is None else 10_000,
    }


def test_implementation_rows() -> None:
    res = results(
        handshake={
            "identities": 128,
            "py": {"handshakes_per_second": 300.0, "responder_cpu_us_per_handshake": 900.0,
                   "latency_p50_ms": 4.0},
            "go": {"handshakes_per_second": 1200.0, "responder_cpu_us_per_handshake": 300.0,
                   "latency_p50_ms": 1.0},
        },
        memory={
            "peer_counts": [1, 100, 10000],
            "py": memory_result([30.0, 30.0, 31.0, 60.0], 3000.0, 8.0, 2.0),
            "go": memory_result([6.0, 6.0, 6.5, 12.0], 600.0, 0.5, 0.25),
        },
    )  # fmt: skip
    impl = impl_by_key(summarize(res))
    assert impl["hs_handshakes_per_second"]["py"] == 300.0
    assert impl["hs_handshakes_per_second"]["go"] == 1200.0
    assert impl["hs_handshakes_per_second"]["ratio"] == 0.25
    assert impl["hs_responder_cpu_us_per_handshake"]["ratio"] == 3.0
    assert impl["hs_latency_p50_ms"]["ratio"] == 4.0
    # RSS in MiB from bytes.
    assert (impl["rss_0"]["py"], impl["rss_0"]["go"], impl["rss_0"]["ratio"]) == (30.0, 6.0, 5.0)
    assert (impl["rss_100"]["py"], impl["rss_100"]["go"]) == (31.0, 6.5)
    assert impl["rss_10000"]["ratio"] == 5.0
    assert impl["bytes_per_peer"]["ratio"] == 5.0
    assert (impl["apply_10000"]["py"], impl["apply_10000"]["ratio"]) == (8.0, 16.0)
    assert (impl["show_10000"]["py"], impl["show_10000"]["ratio"]) == (2.0, 8.0)
    assert not any("text" in row for row in impl.values())


def test_a_failed_implementation_leaves_none_and_no_ratio() -> None:
    # The py handshake flood failed (attempt() noted the error, no "py" entry), and py's
    # memory measure never ran to the end (no "py" entry either).
    res = results(
        errors=["handshakes pyralog-wg: boom", "memory pyralog-wg: boom"],
        handshake={"identities": 128, "go": {"handshakes_per_second": 1200.0}},
        memory={"peer_counts": [1, 100, 10000], "go": memory_result([6, 6, 6, 12], 600, 0.5, 0.25)},
    )
    impl = impl_by_key(summarize(res))
    hs = impl["hs_handshakes_per_second"]
    assert (hs["py"], hs["go"], hs["ratio"]) == (None, 1200.0, None)
    lat = impl["hs_latency_p50_ms"]  # go's result lacks the key: None too
    assert (lat["py"], lat["go"], lat["ratio"]) == (None, None, None)
    assert (impl["rss_1"]["py"], impl["rss_1"]["go"], impl["rss_1"]["ratio"]) == (None, 6.0, None)
    assert "text" not in impl["show_10000"]


def test_a_daemon_that_did_not_answer_wg_show_gets_a_text() -> None:
    res = results(
        memory={
            "peer_counts": [1, 100, 10000],
            "py": memory_result([30, 30, 31, 60], 3000, 8.0, None),
            "go": memory_result([6, 6, 6.5, 12], 600, 0.5, 0.25),
        }
    )
    show = impl_by_key(summarize(res))["show_10000"]
    assert (show["py"], show["go"], show["ratio"]) == (None, 0.25, None)
    assert show["text"] == {"py": "> 20 (no answer)"}


def test_skipped_measures_leave_every_figure_none() -> None:
    # `--only core` with the core failing too: results["core"] is None, nothing else ran.
    out = summarize(results(core=None))
    for row in out["summary"]["rows"]:
        assert row["values"] == dict.fromkeys(COLUMNS), row["key"]
        assert row["ratios"] == dict.fromkeys(COLUMNS), row["key"]
    for row in out["implementations"]["rows"]:
        assert (row["py"], row["go"], row["ratio"]) == (None, None, None), row["key"]
        assert "text" not in row
    assert out["core_summary"] == []


# -- the core alone -----------------------------------------------------------------------------


def core_result() -> dict:
    return {
        "sizes": {
            "1420": {"encrypt_pps": 100_000.0, "decrypt_pps": 50_000.0},
            "64": {"encrypt_pps": 200_000.0, "decrypt_pps": 100_000.0},
        }
    }


def test_core_rows_against_go_go() -> None:
    res = results(
        core=core_result(),
        pairs={"go-go": pair(GO, GO, tcp_a=[tcp(2272)], udp64_a=[udp(400_000.0)])},
    )
    rows = summarize(res)["core_summary"]
    assert [(r["size"], r["path"]) for r in rows] == [
        (1420, "encrypt"),
        (1420, "decrypt"),
        (64, "encrypt"),
        (64, "decrypt"),
    ]
    # 1420 B: Mbit/s (pps x 1420 x 8 / 1e6) against go-go's TCP Mbit/s (2272).
    assert rows[0]["pps"] == 100_000.0
    assert rows[0]["mbit_s"] == pytest.approx(1136.0)
    assert rows[0]["reference"] == "go-go TCP Mbit/s"
    assert rows[0]["ratio"] == pytest.approx(0.5)
    assert rows[1]["ratio"] == pytest.approx(0.25)
    # 64 B: packets/s against go-go's received UDP 64-byte packets/s (400,000).
    assert rows[2]["mbit_s"] == pytest.approx(102.4)
    assert rows[2]["reference"] == "go-go UDP 64 B pkt/s received"
    assert rows[2]["ratio"] == 0.5
    assert rows[3]["ratio"] == 0.25


def test_core_rows_without_pairs_have_no_ratio() -> None:
    rows = summarize(results(core=core_result()))["core_summary"]
    assert len(rows) == 4
    assert [r["ratio"] for r in rows] == [None] * 4
    assert rows[3]["mbit_s"] == pytest.approx(51.2)


# -- the published results ----------------------------------------------------------------------


def published() -> dict:
    return json.loads(PUBLISHED.read_text())


def as_json(value: object) -> str:
    # The text, not just ==: 3 and 3.0 are equal in Python but not in the JSON file.
    return json.dumps(value, indent=1, ensure_ascii=False)


def test_the_published_summary_is_what_summarize_computes_from_its_raw_data() -> None:
    stored = published()
    raw = {k: v for k, v in stored.items() if k not in DERIVED}
    out = summarize(raw)
    for key in DERIVED:
        assert out[key] == stored[key], key
        assert as_json(out[key]) == as_json(stored[key]), key
    # run.py merges the entries after the raw data: the whole file comes out the same.
    assert as_json({**raw, **out}) == PUBLISHED.read_text().rstrip("\n")


def test_the_published_embedded_summary_is_what_embedded_summarize_computes() -> None:
    stored = published()["embedded"]
    raw = {k: v for k, v in stored.items() if k not in ("rows", "throughput_ratio")}
    out = embedded.summarize(raw)
    assert as_json(out["rows"]) == as_json(stored["rows"])
    assert out["throughput_ratio"] == stored["throughput_ratio"]
    assert set(out["throughput_ratio"]) == {"forward", "reverse"}
