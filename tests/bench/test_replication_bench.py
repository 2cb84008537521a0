"""bench/replication.py's argument parsing and pure helpers (bench/replstats.py, the
addresses and NATS configuration of bench/replab.py, bench/replload.py's parser). The
benchmark itself needs root and minutes; it is not run here."""

from __future__ import annotations

import datetime

import pytest
import replab
import replication
import replload
from logstats import LostRecords
from replstats import (
    check_failover_readback,
    failover_figures,
    foreign_delta,
    irq_seconds,
    rows,
    summarize,
    tables,
)

# -- settings and arguments ---------------------------------------------------------------------


def test_quick_and_normal_settings() -> None:
    quick = replication.settings(replication.parse_args(["--quick"]))
    normal = replication.settings(replication.parse_args([]))
    assert quick.quick and not normal.quick
    assert (quick.rounds, quick.failovers) == (1, 2)
    assert (normal.rounds, normal.failovers) == (4, 3)
    assert normal.records > quick.records and normal.samples > quick.samples
    assert normal.session_timeout_ms == 4000


def test_overrides() -> None:
    a = replication.parse_args(["--quick", "--rounds", "2", "--failovers", "4", "--records", "7"])
    s = replication.settings(a)
    assert (s.rounds, s.failovers, s.records, s.quick) == (2, 4, 7, True)
    assert replication.parse_args(["--only", "nats"]).only == "nats"
    with pytest.raises(SystemExit):
        replication.parse_args(["--only", "kafka"])


def test_the_order_flips_every_round() -> None:
    assert replication.order(0) == ("pyralog", "nats")
    assert replication.order(1) == ("nats", "pyralog")
    assert replication.order(2) == ("pyralog", "nats")


def test_load_generator_arguments() -> None:
    a = replload.parser().parse_args(
        ["kafka-failover", "--server", "h:1,h:2", "--topic", "t", "--rate", "500", "--out", "f"]
    )
    assert (a.command, a.server, a.topic, a.rate, a.out) == ("kafka-failover", "h:1,h:2", ["t"],
                                                             500.0, "f")  # fmt: skip
    with pytest.raises(SystemExit, match="--out is needed"):
        replload.main(["nats-failover", "--server", "h:1", "--stream", "S"])
    with pytest.raises(SystemExit, match="--topic is needed"):
        replload.main(["kafka-describe", "--server", "h:1"])


def test_index_of() -> None:
    pad = replload.make_pad()
    assert replload.index_of(replload.record(12345, pad)) == 12345
    assert replload.index_of(b"abc") == -1
    assert replload.index_of(None) == -1


# -- addresses and NATS configuration -------------------------------------------------------------


def test_addresses_and_names() -> None:
    assert [replab.tunnel_ip(n) for n in replab.SERVERS] == ["10.29.41.1", "10.29.41.2",
                                                             "10.29.41.3"]  # fmt: skip
    assert replab.lan_ip(replab.STORE) == "172.29.41.20"
    assert replab.tunnel_ip(replab.CLIENT) == "10.29.41.10"
    assert [replab.node_id(n) for n in replab.SERVERS] == [1, 2, 3]
    assert [replab.nats_name(n) for n in replab.SERVERS] == ["n1", "n2", "n3"]
    assert replication.leader_first("n2").split(",")[0] == "10.29.41.2:4222"
    assert len(replication.leader_first(None).split(",")) == 3


def test_certificates_chain_to_the_throwaway_ca(tmp_path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    paths = replab.make_certs(tmp_path / "certs")
    ca = x509.load_pem_x509_certificate(paths["ca"].read_bytes())
    now = datetime.datetime.now(datetime.UTC)
    for n in replab.SERVERS:
        cert = x509.load_pem_x509_certificate(paths[f"{n}.crt"].read_bytes())
        assert cert.issuer == ca.subject
        ca.public_key().verify(
            cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
        )
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert replab.lan_ip(n) in [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
        assert cert.not_valid_before_utc < now < cert.not_valid_after_utc
        assert paths[f"{n}.key"].stat().st_mode & 0o077 == 0


def test_nats_config_routes_over_the_lan_with_mutual_tls(tmp_path) -> None:
    paths = {"ca": tmp_path / "ca.pem", "a.crt": tmp_path / "a.crt", "a.key": tmp_path / "a.key"}
    text = replab.nats_config("a", tmp_path / "js", paths)
    assert 'listen: "10.29.41.1:4222"' in text  # clients: the tunnel address
    assert 'listen: "172.29.41.1:6222"' in text  # routes: the LAN
    assert "nats-route://172.29.41.2:6222" in text and "nats-route://172.29.41.3:6222" in text
    assert '172.29.41.1:6222"]' not in text.split("routes:")[1].split("\n")[0]
    assert "verify: true" in text and f'ca_file: "{paths["ca"]}"' in text


# -- the failover measure -------------------------------------------------------------------------


def test_failover_is_from_the_kill_to_the_ack_ending_the_pause() -> None:
    acks = [9.0, 9.5, 9.99, 14.2, 14.21, 14.22]
    f = failover_figures(acks, kill=10.0)
    assert f["failover_s"] == pytest.approx(4.2)
    assert f["outage_s"] == pytest.approx(4.21)
    assert f["acks_in_flight"] == 0
    assert f["last_ack_before_s"] == pytest.approx(-0.01)


def test_an_ack_in_flight_from_the_dead_leader_does_not_end_the_outage() -> None:
    acks = [9.9, 9.99, 10.001, 10.002, 15.0, 15.001]
    f = failover_figures(acks, kill=10.0)
    assert f["failover_s"] == pytest.approx(5.0)
    assert f["acks_in_flight"] == 2


def test_later_pauses_are_left_out_by_the_restart_bound() -> None:
    acks = [9.9, 12.0, 12.1, 12.2, 30.0]  # 30.0: after the restart (another kill's outage)
    assert failover_figures(acks, kill=10.0, until=20.0)["failover_s"] == pytest.approx(2.0)
    assert failover_figures(acks, kill=10.0)["failover_s"] == pytest.approx(20.0)


def test_no_ack_after_the_kill() -> None:
    f = failover_figures([1.0, 2.0], kill=3.0)
    assert f["failover_s"] is None and f["acks_after"] == 0
    # Nothing acknowledged in the second before the kill: from the kill itself.
    assert failover_figures([1.0, 7.0, 7.1], kill=5.0)["failover_s"] == pytest.approx(2.0)


def test_readback_must_hold_every_acknowledged_record() -> None:
    ok = check_failover_readback([0, 1, 2], [0, 1, 2, 3], "x", ordered=True)
    assert ok["unacked_present"] == 1 and ok["problems"] == []
    with pytest.raises(LostRecords, match=r"1 of 3 acknowledged records not read back"):
        check_failover_readback([0, 1, 2], [0, 2], "x", ordered=True)


def test_readback_reports_duplicates_and_order() -> None:
    res = check_failover_readback([0, 1, 2], [0, 2, 1, 1], "x", ordered=True)
    assert res["duplicates"] == 1 and res["reordered"] == 2
    assert len(res["problems"]) == 2
    # Concurrent NATS publishers keep no order: not a problem there.
    assert check_failover_readback([0, 1], [1, 0], "x", ordered=False)["problems"] == []


# -- summary ------------------------------------------------------------------------------------


def unit(system: str, r: int, rate: float, p50: float, failovers: list[float]) -> dict:
    return {
        "system": system,
        "round": r,
        "slot": str(r),
        "produce": {"records_per_s": rate, "mb_per_s": rate * 1024 / 1e6},
        "consume": {"records_per_s": 2 * rate},
        "latency": {"p50_us": p50, "p99_us": 3 * p50},
        "failover": {
            "kills": [{"failover_s": f, "outage_s": f, "rejoin_s": 1.0} for f in failovers],
            "readback": {"problems": []},
        },
    }


def test_summary_ratios_and_tables() -> None:
    units = [
        unit("pyralog", 0, 6000, 3000, [4.0, 4.2]),
        unit("nats", 0, 10000, 1000, [6.0, 7.0]),
        unit("nats", 1, 12000, 1000, [5.0]),
        unit("pyralog", 1, 6000, 2000, [3.8]),
    ]
    s = summarize(units)
    assert s["systems"]["pyralog"]["failover_s"]["n"] == 3
    assert s["systems"]["nats"]["failover_s"]["median"] == 6.0
    assert s["ratios"]["produce_records_per_s"]["ratio"] == pytest.approx(6000 / 11000)
    # round by round: 0.6 and 0.5
    assert s["ratios"]["produce_records_per_s"]["paired"] == pytest.approx(0.55)
    assert s["ratios"]["failover_s"]["ratio"] == pytest.approx(4.0 / 6.0)
    assert s["ratios"]["failover_s"]["paired"] == pytest.approx((4.1 / 6.5 + 3.8 / 5.0) / 2)
    body = rows(s)
    assert body[0][0].startswith("Produce") and body[0][1] == "6,000"
    assert body[-1][1] == "4.00 [3.80, 4.20]"
    text = tables(s)
    assert text.startswith("| figure: median [min, max] |") and "0.55x" in text


def test_server_notes_fold_repeated_lines(tmp_path) -> None:
    log = tmp_path / "n1.log"
    log.write_text(
        "[1] 2026/01/01 00:00:00.1 [INF] Server is ready\n"
        "[1] 2026/01/01 00:00:01.1 [ERR] Error trying to connect to route (attempt 1): x\n"
        "[1] 2026/01/01 00:00:02.1 [ERR] Error trying to connect to route (attempt 2): x\n"
    )
    proc = replab.Proc("nats-server n1", None, log)  # type: ignore[arg-type]
    notes = replication.server_notes("nats", [proc])
    assert notes["nats-server n1"]["counts"] == {"ERR": 2}
    assert notes["nats-server n1"]["first"] == [
        "[ERR] Error trying to connect to route (attempt N): x"
    ]


def test_other_load() -> None:
    before = {1: (10.0, False), 2: (5.0, True), 3: (1.0, False)}
    after = {1: (12.5, False), 2: (5.5, True), 4: (0.25, False)}  # 3 exited, 4 started
    assert foreign_delta(before, after) == {"processes_s": 2.75, "kernel_threads_s": 0.5}
    stat = "cpu  100 0 50 1000 0 30 20 5 0 0\ncpu0 1 2 3\n"
    assert irq_seconds(stat, 100) == pytest.approx(0.5)
