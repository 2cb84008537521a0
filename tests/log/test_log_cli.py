"""`pyralog topic | produce | consume` against a real broker process, as a user runs them."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from logbroker import RunningBroker, running_broker

from ports import free_port
from processes import console_script


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    with running_broker(tmp_path_factory.mktemp("cli")) as b:
        yield b


def pyralog(
    *args: str, stdin: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(console_script("pyralog")), *args], input=stdin, capture_output=True, timeout=timeout
    )


def test_topic_lifecycle(broker: RunningBroker) -> None:
    b = ("-b", broker.address)
    made = pyralog("topic", "create", "orders", "-p", "3", "--config", "pyralog.flush=always", *b)
    assert made.returncode == 0, made.stderr
    listed = pyralog("topic", "list", *b)
    assert b"orders\t3 partitions" in listed.stdout
    described = pyralog("topic", "describe", "orders", *b).stdout.decode()
    assert "3 partitions" in described and "pyralog.flush = always" in described
    again = pyralog("topic", "create", "orders", *b)
    assert again.returncode == 1 and b"topic_already_exists" in again.stderr
    deleted = pyralog("topic", "delete", "orders", *b)
    assert deleted.returncode == 0
    assert b"orders" not in pyralog("topic", "list", *b).stdout


def test_bad_topic_config_names_the_key(broker: RunningBroker) -> None:
    bad = pyralog("topic", "create", "x", "--config", "retention.ms=soon", "-b", broker.address)
    assert bad.returncode == 1
    assert b"retention.ms" in bad.stderr and b"soon" in bad.stderr
    unknown = pyralog("topic", "create", "y", "--config", "colour=blue", "-b", broker.address)
    assert unknown.returncode == 1 and b"colour" in unknown.stderr
    shape = pyralog("topic", "create", "z", "--config", "novalue", "-b", broker.address)
    assert shape.returncode == 1 and b"KEY=VALUE" in shape.stderr


def test_produce_lines_then_consume_them(broker: RunningBroker) -> None:
    lines = b"".join(b"line %d\n" % i for i in range(5000))
    produced = pyralog("produce", "lines", "-b", broker.address, stdin=lines)
    assert produced.returncode == 0, produced.stderr
    assert b"produced 5000 records" in produced.stderr
    consumed = pyralog(
        "consume", "lines", "--from-beginning", "--count", "5000", "-b", broker.address
    )
    assert consumed.returncode == 0, consumed.stderr
    assert consumed.stdout == lines


def test_keyed_lines_and_offsets(broker: RunningBroker) -> None:
    produced = pyralog(
        "produce", "keyed", "-K", ":", "-b", broker.address, stdin=b"a:1\nb:2\nno separator\n"
    )
    assert produced.returncode == 0, produced.stderr
    out = pyralog(
        "consume",
        "keyed",
        "--from-beginning",
        "--count",
        "3",
        "--print-offsets",
        "-b",
        broker.address,
    ).stdout
    assert out == b"0:0\t1\n0:1\t2\n0:2\tno separator\n"


def test_group_consumer_resumes_from_its_commits(broker: RunningBroker) -> None:
    pyralog(
        "produce", "grouped", "-b", broker.address, stdin=b"".join(b"g%d\n" % i for i in range(100))
    )
    first = pyralog(
        "consume",
        "grouped",
        "--group",
        "readers",
        "--from-beginning",
        "--count",
        "60",
        "-b",
        broker.address,
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [b"g%d" % i for i in range(60)]
    # The group committed what it printed: a new member continues after it.
    second = pyralog(
        "consume", "grouped", "--group", "readers", "--count", "40", "-b", broker.address
    )
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == [b"g%d" % i for i in range(60, 100)]


def test_unreachable_broker_and_bad_address_are_one_clear_line(tmp_path: Path) -> None:
    port = free_port()
    down = pyralog("topic", "list", "-b", f"127.0.0.1:{port}", timeout=30)
    assert down.returncode == 1
    assert down.stderr.decode().startswith("pyralog topic list: 127.0.0.1:")
    assert len(down.stderr.splitlines()) == 1
    bad = pyralog("produce", "t", "-b", "nowhere:port", stdin=b"x\n")
    assert bad.returncode == 1 and b"expected host:port" in bad.stderr


def test_broker_refuses_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("not a directory")
    proc = pyralog("broker", "--data", str(target), "--listen", f"127.0.0.1:{free_port()}")
    assert proc.returncode == 1
    assert str(target).encode() in proc.stderr and b"Traceback" not in proc.stderr


def test_broker_refuses_damaged_state_files_with_one_line(tmp_path: Path) -> None:
    for name, junk in (("producer-ids", "twelve\n"), ("groups.sqlite", "not a database" * 100)):
        data = tmp_path / name.replace(".", "-")
        data.mkdir()
        (data / name).write_text(junk)
        proc = pyralog("broker", "--data", str(data), "--listen", f"127.0.0.1:{free_port()}")
        assert proc.returncode == 1, proc.stderr
        assert name.encode() in proc.stderr and b"Traceback" not in proc.stderr
