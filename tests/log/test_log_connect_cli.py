"""``pyralog connect``'s mistakes: one line on stderr each, exit 2 for usage and config,
1 for what goes wrong at run time; SIGTERM and SIGINT stop it with status 0.

No cluster is needed: the "no broker" cases point the tunnel at a peer that is not
there (a UDP port nobody listens on), which is what a dead mesh looks like.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from ports import free_port
from processes import console_script, wait_until
from pyralog.wireguard.keys import PrivateKey

PREFIX = "pyralog connect: "


def _run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    argv = [str(console_script("pyralog")), "connect", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(PREFIX), done.stderr
    return lines[0]


def _config(path: Path, *, address: bool = True, peer: str | None = "10.99.0.1/32") -> Path:
    lines = ["[Interface]", f"PrivateKey = {PrivateKey.generate().to_base64()}"]
    if address:
        lines.append("Address = 10.99.0.9/32")
    if peer is not None:
        lines += ["", "[Peer]", f"PublicKey = {PrivateKey.generate().public_key.to_base64()}",
                  f"Endpoint = 127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
                  f"AllowedIPs = {peer}"]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_missing_config_is_named(tmp_path: Path) -> None:
    done = _run("--config", str(tmp_path / "nope.conf"))
    assert done.returncode == 2
    assert (
        _one_line(done)
        == f"{PREFIX}{tmp_path / 'nope.conf'}: cannot read: No such file or directory"
    )


def test_an_unreadable_config_is_named(tmp_path: Path) -> None:
    done = _run("--config", str(tmp_path))
    assert done.returncode == 2
    assert _one_line(done) == f"{PREFIX}{tmp_path}: cannot read: Is a directory"
    binary = tmp_path / "binary.conf"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    done = _run("--config", str(binary))
    assert done.returncode == 2
    assert _one_line(done) == f"{PREFIX}{binary}: not a UTF-8 text file"


def test_a_malformed_config_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("[Interface]\nAddress = 10.99.0.9/32\nPrivateKey = not-a-key\n")
    done = _run("--config", str(bad))
    assert done.returncode == 2
    assert _one_line(done).startswith(f"{PREFIX}{bad}:3: PrivateKey")


def test_a_config_without_an_address(tmp_path: Path) -> None:
    conf = _config(tmp_path / "c.conf", address=False)
    done = _run("--config", str(conf))
    assert done.returncode == 2
    assert _one_line(done) == f"{PREFIX}{conf}: [Interface] needs an Address"


def test_a_config_with_no_peer_address_to_try(tmp_path: Path) -> None:
    conf = _config(tmp_path / "c.conf", peer="10.99.0.0/16")
    done = _run("--config", str(conf))
    assert done.returncode == 2
    assert "no peer has a single mesh address to try; give --bootstrap" in _one_line(done)


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("127.0.0.1", "--listen '127.0.0.1': expected HOST:PORT"),
        ("127.0.0.1:99999", "--listen '127.0.0.1:99999': '99999' is not a port (1-65535)"),
        ("kafka.example:9092", "--listen 'kafka.example:9092': 'kafka.example' is not an IP"),
        ("::1:9092", "--listen '::1:9092': write an IPv6 address as [ADDRESS]:PORT"),
    ],
)
def test_a_bad_listen_address(tmp_path: Path, listen: str, message: str) -> None:
    done = _run("--config", str(_config(tmp_path / "c.conf")), "--listen", listen)
    assert done.returncode == 2
    assert _one_line(done).startswith(PREFIX + message)


def test_a_bad_bootstrap_address(tmp_path: Path) -> None:
    conf = _config(tmp_path / "c.conf")
    done = _run("--config", str(conf), "--bootstrap", "10.99.0.1:http")
    assert done.returncode == 2
    assert (
        _one_line(done) == f"{PREFIX}--bootstrap '10.99.0.1:http': 'http' is not a port (1-65535)"
    )


def test_a_listen_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run("--config", str(_config(tmp_path / "c.conf")), "--listen",
                    f"127.0.0.1:{port}")  # fmt: skip
    assert done.returncode == 1
    assert _one_line(done).startswith(f"{PREFIX}cannot listen on 127.0.0.1:{port}: ")


def test_no_broker_reachable_names_what_was_tried(tmp_path: Path) -> None:
    conf = _config(tmp_path / "c.conf")
    started = time.monotonic()
    done = _run("--config", str(conf), "--listen", f"127.0.0.1:{free_port()}", "--timeout", "2")
    assert time.monotonic() - started < 15
    assert done.returncode == 1
    assert (
        _one_line(done)
        == f"{PREFIX}no broker answered within 2 s; tried 10.99.0.1:9092 (timed out)"
    )
    done = _run("--config", str(conf), "--listen", f"127.0.0.1:{free_port()}", "--timeout", "1",
                "--bootstrap", "10.99.0.1:9093", "--bootstrap", "10.99.0.1")  # fmt: skip
    assert done.returncode == 1
    line = _one_line(done)
    assert line.startswith(f"{PREFIX}no broker answered within 1 s; tried ")
    assert "10.99.0.1:9093 (timed out)" in line and "10.99.0.1:9092 (timed out)" in line


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_waiting_for_brokers_stops_it_cleanly(tmp_path: Path, sig: int) -> None:
    conf = _config(tmp_path / "c.conf")
    argv = [str(console_script("pyralog")), "connect", "--config", str(conf), "--listen",
            f"127.0.0.1:{free_port()}", "-v"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: _listening(argv[-2]), 10)
        proc.send_signal(sig)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _listening(listen: str) -> bool:
    host, port = listen.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True
