"""``pyralog forward``: its spec syntax, its refusals of bad input, and a clean start and
stop as a real process. The forwarding itself is proven against the kernel in
tests/interop/test_embedded_vs_kernel.py; nothing here needs root."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from ports import free_port
from processes import console_script, needs_script
from pyralog.cli.main import main
from pyralog.net.forward import Forward, SpecError, parse_forward, parse_reverse
from pyralog.wireguard.keys import PrivateKey

PYRALOG = console_script("pyralog")

# -- the spec syntax -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("8080:10.0.0.1:80", Forward("127.0.0.1", 8080, "10.0.0.1", 80)),
        ("0.0.0.0:8080:10.0.0.1:80", Forward("0.0.0.0", 8080, "10.0.0.1", 80)),
        ("localhost:8080:10.0.0.1:80/tcp", Forward("127.0.0.1", 8080, "10.0.0.1", 80)),
        ("5353:10.0.0.1:53/udp", Forward("127.0.0.1", 5353, "10.0.0.1", 53, udp=True)),
        ("[::1]:8080:[fd00::1]:80", Forward("::1", 8080, "fd00::1", 80)),
        ("8080:[FD00:0::1]:80", Forward("127.0.0.1", 8080, "fd00::1", 80)),
        ("1:10.0.0.1:65535", Forward("127.0.0.1", 1, "10.0.0.1", 65535)),
    ],
)
def test_forward_specs(spec: str, expected: Forward) -> None:
    assert parse_forward(spec) == expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("2222:127.0.0.1:22", Forward("", 2222, "127.0.0.1", 22)),
        ("53:127.0.0.1:5353/udp", Forward("", 53, "127.0.0.1", 5353, udp=True)),
        ("8080:[::1]:80", Forward("", 8080, "::1", 80)),
    ],
)
def test_reverse_specs(spec: str, expected: Forward) -> None:
    assert parse_reverse(spec) == expected


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("8080", "expected [LOCAL_HOST:]LOCAL_PORT:REMOTE_HOST:REMOTE_PORT"),
        ("8080:10.0.0.1", "expected [LOCAL_HOST:]LOCAL_PORT:REMOTE_HOST:REMOTE_PORT"),
        ("a:b:8080:10.0.0.1:80", "expected [LOCAL_HOST:]LOCAL_PORT:REMOTE_HOST:REMOTE_PORT"),
        ("0:10.0.0.1:80", "'0' is not a port (1-65535)"),
        ("8080:10.0.0.1:65536", "'65536' is not a port (1-65535)"),
        ("http:10.0.0.1:80", "'http' is not a port"),
        ("8080:10.0.0.1:-1", "'-1' is not a port"),
        ("8080:server.example:80", "'server.example' is not an IP address"),
        ("8080:10.0.0.300:80", "'10.0.0.300' is not an IP address"),
        ("8080:[fd00::1:80", "unclosed '['"),
        ("8080:[fd00::1]x:80", "expected ':' after ']'"),
        ("", "expected [LOCAL_HOST:]LOCAL_PORT"),
    ],
)
def test_bad_forward_specs_are_refused_naming_the_spec(spec: str, says: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_forward(spec)
    assert says in str(info.value)
    assert repr(spec) in str(info.value)


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("2222:127.0.0.1", "expected TUNNEL_PORT:LOCAL_HOST:LOCAL_PORT"),
        ("127.0.0.1:2222:127.0.0.1:22", "expected TUNNEL_PORT:LOCAL_HOST:LOCAL_PORT"),
        ("99999:127.0.0.1:22", "'99999' is not a port"),
        ("2222:nowhere:22", "'nowhere' is not an IP address"),
    ],
)
def test_bad_reverse_specs_are_refused_naming_the_spec(spec: str, says: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_reverse(spec)
    assert says in str(info.value)


# -- the command's refusals ------------------------------------------------------------------


def _config(tmp_path: Path, *, listen_port: int | None = None, address: bool = True) -> Path:
    peer = PrivateKey.generate().public_key
    lines = ["[Interface]", f"PrivateKey = {PrivateKey.generate().to_base64()}"]
    if address:
        lines.append("Address = 10.77.0.2/32")
    if listen_port is not None:
        lines.append(f"ListenPort = {listen_port}")
    lines += [
        "",
        "[Peer]",
        f"PublicKey = {peer.to_base64()}",
        "Endpoint = 127.0.0.1:9",  # discard: nothing answers, nothing is harmed
        "AllowedIPs = 10.77.0.1/32",
    ]
    path = tmp_path / "wg0.conf"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["forward", *argv])
    return code, capsys.readouterr().err


def test_bad_spec_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(capsys, "--config", str(_config(tmp_path)), "8080:10.0.0.1")
    assert code == 2
    assert "pyralog forward: '8080:10.0.0.1': expected" in err


def test_bad_reverse_spec_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(capsys, "--config", str(_config(tmp_path)), "--reverse", "22:host:22")
    assert code == 2
    assert "'host' is not an IP address" in err


def test_missing_config_file_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.conf"
    code, err = _run(capsys, "--config", str(missing), "8080:10.0.0.1:80")
    assert code == 2
    assert f"{missing}: cannot read" in err


def test_config_error_names_file_line_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path)
    text = path.read_text().replace("AllowedIPs = 10.77.0.1/32", "AllowedIPs = 10.77.0.1/33")
    path.write_text(text)
    line = text.splitlines().index("AllowedIPs = 10.77.0.1/33") + 1
    code, err = _run(capsys, "--config", str(path), "8080:10.0.0.1:80")
    assert code == 2
    assert str(path) in err
    assert f":{line}" in err
    assert "AllowedIPs" in err


def test_nothing_to_forward_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(capsys, "--config", str(_config(tmp_path)))
    assert code == 2
    assert "nothing to forward" in err


def test_config_without_address_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _config(tmp_path, address=False)
    code, err = _run(capsys, "--config", str(path), "8080:10.0.0.1:80")
    assert code == 2
    assert f"{path}: [Interface] needs an Address" in err


def test_udp_port_in_use_exits_1_saying_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("0.0.0.0", 0))
        port = busy.getsockname()[1]
        path = _config(tmp_path, listen_port=port)
        code, err = _run(capsys, "--config", str(path), f"{free_port()}:10.77.0.1:80")
    assert code == 1
    assert "cannot open the tunnel's UDP socket" in err
    assert "Address already in use" in err


def test_local_port_in_use_exits_1_saying_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = _config(tmp_path, listen_port=free_port(socket.SOCK_DGRAM))
        code, err = _run(capsys, "--config", str(path), f"{port}:10.77.0.1:80")
    assert code == 1
    assert "pyralog forward:" in err
    assert "in use" in err


# -- a real process: starts, listens, stops cleanly on SIGTERM ---------------------------------


@needs_script("pyralog")
def test_forward_process_starts_listens_and_stops_on_sigterm(tmp_path: Path) -> None:
    udp_port, tcp_port = free_port(socket.SOCK_DGRAM), free_port()
    path = _config(tmp_path, listen_port=udp_port)
    log = tmp_path / "forward.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(PYRALOG), "forward", "--config", str(path), f"{tcp_port}:10.77.0.1:80"],
            stdout=out,
            stderr=out,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + 20
        while "tunnel up" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        text = log.read_text()
        assert f"WireGuard on UDP port {udp_port}" in text
        assert f"forwarding 127.0.0.1:{tcp_port} -> 10.77.0.1:80" in text
        # The local port accepts connections (they wait for the tunnel, which has no peer
        # to answer here; the forwarder gives up on them later, not our concern).
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=5):
            pass
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert "shutting down" in log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
