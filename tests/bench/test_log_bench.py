"""bench/log.py's pure parts (bench/logstats.py, bench/logload.py's record checks): the
lost-record checks, one run's figures, the summary's medians and ratios, the tables."""

from __future__ import annotations

import logload
import pytest
from logstats import (
    PYRALOG_CONFIGS,
    RECORD_BYTES,
    WARMUP,
    LostRecords,
    check_consumed,
    check_latency,
    check_produced,
    config_name,
    counter_delta,
    cpu_totals,
    latency_figures,
    markdown,
    net_counters,
    other_load,
    paired_ratios,
    rate_figures,
    summarize,
    tables,
)
from stats import median


def test_constants_match_the_load_generator() -> None:
    assert RECORD_BYTES == logload.RECORD_BYTES
    assert WARMUP == logload.WARMUP
    pad = logload.make_pad()
    assert len(logload.record(7, pad)) == RECORD_BYTES


# -- the checks ------------------------------------------------------------------------------


def kafka_acks(n: int, **over: object) -> dict:
    return {"acked": n, "error_count": 0, "first_offset": 0, "last_offset": n - 1, **over}


def test_check_produced_accepts_a_complete_run() -> None:
    check_produced(kafka_acks(10, unflushed=0), 10, "pyralog", "x")
    nats = {"acked": 10, "error_count": 0, "first_offset": 1, "last_offset": 10}
    check_produced({**nats, "stream_messages": 10}, 10, "nats", "x")


@pytest.mark.parametrize(
    ("res", "message"),
    [
        (kafka_acks(9, last_offset=9), "9 of 10 acknowledged"),
        (kafka_acks(10, error_count=1, errors=["boom"]), "1 errors"),
        (kafka_acks(10, first_offset=1, last_offset=10), "offsets 1..10, expected 0..9"),
        (kafka_acks(10, unflushed=3), "3 records still queued"),
        (kafka_acks(10, stream_messages=11), "holds 11 messages"),
    ],
)
def test_check_produced_names_what_is_missing(res: dict, message: str) -> None:
    with pytest.raises(LostRecords, match=message):
        check_produced(res, 10, "pyralog", "round 1 produce")


def test_check_produced_wants_stream_sequences_from_one_for_nats() -> None:
    with pytest.raises(LostRecords, match=r"expected 1\.\.10"):
        check_produced(kafka_acks(10), 10, "nats", "x")


def test_check_consumed() -> None:
    good = {"consumed": 5, "bad": [], "error_count": 0, "log_start": 0, "log_end": 5}
    check_consumed(good, 5, "x")
    check_consumed({"consumed": 5, "bad": [], "stream_messages": 5, "pending": 0}, 5, "x")
    for bad, message in [
        ({**good, "consumed": 4}, "4 of 5 records read back"),
        ({**good, "bad": ["record 3 carries index 4"]}, "carries index 4"),
        ({**good, "log_end": 6}, r"offsets 0..6"),
        ({"consumed": 5, "bad": [], "pending": 2}, "2 messages still pending"),
    ]:
        with pytest.raises(LostRecords, match=message):
            check_consumed(bad, 5, "x")


def test_check_latency_counts_the_warm_up_records() -> None:
    n = 20
    res = kafka_acks(n + WARMUP, samples_us=[1.0] * n)
    check_latency(res, n, "pyralog", "x")
    with pytest.raises(LostRecords, match="19 of 20 samples"):
        check_latency({**res, "samples_us": [1.0] * 19}, n, "pyralog", "x")


def test_reader_checks_length_and_index() -> None:
    pad = logload.make_pad()
    reader = logload.Reader()
    for i in (0, 1, 3):
        reader.check(logload.record(i, pad))
    reader.check(b"short")
    assert reader.consumed == 4
    assert reader.bad == ["record 2 carries index 3", "record 3: 5 bytes"]


def test_offsets_keep_the_span_and_the_first_errors() -> None:
    acks = logload.Offsets()
    for off in (3, 1, 2):
        acks.ok(off)
    for e in range(7):
        acks.error(e)
    rep = acks.report()
    assert (rep["acked"], rep["first_offset"], rep["last_offset"]) == (3, 1, 3)
    assert rep["error_count"] == 7 and rep["errors"] == ["0", "1", "2", "3", "4"]


# -- figures and summary ---------------------------------------------------------------------


def test_rate_figures() -> None:
    f = rate_figures({"seconds": 2.0, "cpu_s": 1.0, "server_cpu_s": 0.5}, 100_000)
    assert f["records_per_s"] == 50_000
    assert f["mb_per_s"] == pytest.approx(100_000 * 1024 / 2 / 1e6)
    assert (f["client_busy"], f["server_busy"]) == (0.5, 0.25)
    assert f["client_cpu_per_100k"] == 1.0
    g = rate_figures({"seconds": 1.0, "cpu_s": 1.0, "wg_cpu_s": 3.0}, 200_000)
    assert (g["client_cpu_per_100k"], g["wg_cpu_per_100k"], g["server_cpu_per_100k"]) == (
        0.5,
        1.5,
        None,
    )


SNMP = """Ip: Forwarding DefaultTTL
Ip: 1 64
Tcp: RtoAlgorithm RtoMin MaxConn RetransSegs
Tcp: 1 200 -1 17
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors
Udp: 10 0 3 9 3
"""
LINK = '[{"ifname": "bnxppa", "stats64": {"rx": {"dropped": 0}, "tx": {"dropped": 5}}}]'


def test_net_counters_and_their_deltas() -> None:
    c = net_counters(SNMP, LINK)
    assert c == {"tcp_retrans_segs": 17, "udp_rcvbuf_errors": 3, "tun_tx_dropped": 5}
    later = {"a": {**c, "tcp_retrans_segs": 20}, "b": c}
    assert counter_delta({"a": c, "b": c}, later) == {
        "a": {"tcp_retrans_segs": 3, "udp_rcvbuf_errors": 0, "tun_tx_dropped": 0},
        "b": {"tcp_retrans_segs": 0, "udp_rcvbuf_errors": 0, "tun_tx_dropped": 0},
    }


def test_latency_figures_use_nearest_rank_percentiles() -> None:
    f = latency_figures({"samples_us": [float(x) for x in range(1, 101)], "cpu_s": 0.1})
    assert (f["p50_us"], f["p99_us"], f["max_us"], f["samples"]) == (50.0, 99.0, 100.0, 100)


def run(system: str, transport: str, rnd: int, config: str, rate: float, p50: float) -> dict:
    slot = f"{rnd}-{transport}-{config}"
    figures = {"records_per_s": rate, "mb_per_s": rate * 1024 / 1e6, "client_cpu_per_100k": 1.0}
    return {
        "system": system,
        "transport": transport,
        "round": rnd,
        "config": config if system == "pyralog" else "js-file-r1",
        "slot": slot,
        "produce": figures,
        "consume": figures,
        "latency": {"p50_us": p50, "p99_us": 2 * p50, "client_cpu_s": 0.1},
    }


def fake_runs() -> list[dict]:
    runs = []
    for rnd, (p, n) in enumerate([(100.0, 50.0), (120.0, 40.0), (90.0, 60.0)]):
        for flush, acks in PYRALOG_CONFIGS:
            c = config_name(flush, acks)
            for transport, scale in (("loopback", 1.0), ("tunnel", 0.5)):
                runs.append(run("pyralog", transport, rnd, c, p * scale, 300 / scale))
                runs.append(run("nats", transport, rnd, c, n * scale, 200 / scale))
    return runs


def test_summary_ratios_of_medians_and_paired_ratios() -> None:
    s = summarize(fake_runs())
    row = next(
        r
        for r in s["rows"]
        if (r["transport"], r["phase"], r["config"])
        == ("loopback", "produce", "flush=always acks=1")
    )
    assert row["pyralog"]["records_per_s"] == 100.0
    assert row["nats"]["records_per_s"] == 50.0  # every NATS run over loopback
    assert row["ratio"]["records_per_s"] == 2.0
    assert row["paired_ratio"]["records_per_s"] == 2.0  # median of 2.0, 3.0 and 1.5
    assert row["pyralog_spread"]["records_per_s"] == {
        "median": 100.0,
        "min": 90.0,
        "max": 120.0,
        "n": 3,
    }
    lat = next(r for r in s["rows"] if r["phase"] == "latency" and r["transport"] == "tunnel")
    assert lat["ratio"] == {"p50_us": 1.5, "p99_us": 1.5}
    assert len(s["rows"]) == 2 * 3 * len(PYRALOG_CONFIGS)


def test_summary_tunnel_over_loopback() -> None:
    s = summarize(fake_runs())
    by = {(r["system"], r["phase"]): r for r in s["tunnel_over_loopback"]}
    assert by[("nats", "produce")]["records_per_s"] == 0.5
    assert by[("nats", "latency")]["p50_us"] == 2.0


def test_paired_ratios_skip_runs_without_a_partner() -> None:
    runs = [*fake_runs()[:2], run("pyralog", "loopback", 9, "x", 1.0, 1.0)]
    assert paired_ratios(runs, "produce", "records_per_s") == [2.0]


def test_summary_of_a_partial_run() -> None:
    only_loopback = [r for r in fake_runs() if r["transport"] == "loopback"]
    s = summarize(only_loopback)
    assert {r["transport"] for r in s["rows"]} == {"loopback"}
    assert s["tunnel_over_loopback"] == []
    assert "tunnel" not in tables(s)


def test_tables_render_every_phase() -> None:
    text = tables(summarize(fake_runs()))
    assert text.count("| flush=interval acks=1 |") == 6
    assert "**Tunnel / loopback (ratio of medians)**" in text
    assert "| NATS | produce | 0.50x |" in text
    assert "| 300 / 600 | 200 / 400 | 1.50x / 1.50x |" in text


def test_markdown_table() -> None:
    assert markdown(["a", "b"], [["x", "1"]]).splitlines() == [
        "| a | b |",
        "| :--- | ---: |",
        "| x | 1 |",
    ]


def test_cpu_totals_and_other_load() -> None:
    before = cpu_totals("cpu  100 0 50 900 7 0 10 5 0 0\ncpu0 1 2 3\n", 100)
    assert before == {"busy_s": 1.6, "steal_s": 0.05}
    after = {"busy_s": 5.6, "steal_s": 0.25}
    res = {"process_cpu_s": 1.0, "server_cpu_s": 0.5, "wg_cpu_s": None}
    load = other_load(before, after, res)
    assert load == pytest.approx({"busy_s": 4.0, "steal_s": 0.2, "other_s": 2.5})
    assert other_load(before, before, res)["other_s"] == 0.0  # never negative


def test_tunnel_losses_are_medians_per_side() -> None:
    runs = fake_runs()
    for i, r in enumerate(r for r in runs if r["transport"] == "tunnel"):
        for phase in ("produce", "consume"):
            net = {"tcp_retrans_segs": i, "tun_tx_dropped": 2 * i, "udp_rcvbuf_errors": 0}
            r[phase] = {
                **r[phase],
                "records": 100,
                "net": {"a": net, "b": {**net, "tcp_retrans_segs": 0}},
            }
    rows = summarize(runs)["tunnel_losses"]
    nats = next(r for r in rows if r["system"] == "nats" and r["phase"] == "consume")
    assert nats["records"] == 100
    assert nats["a"]["tcp_retrans_segs"] == median(range(1, 24, 2))  # NATS runs are odd
    assert nats["b"]["tcp_retrans_segs"] == 0
    assert nats["a"]["tun_tx_dropped"] == 2 * nats["a"]["tcp_retrans_segs"]
    assert len(rows) == 2 * (len(PYRALOG_CONFIGS) + 1)
