"""pyralog-admin: its wording (``ago``, ``size``), and ``main`` against a real coordinator's
admin socket in this process (the service runs in the event loop, the CLI in a thread)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from test_coordinator_api import running  # tests/mesh is on sys.path under pytest

from pyralog.cli import admin as cli
from pyralog.cli.admin import ago, size
from pyralog.mesh.coordinator import CoordinatorService
from pyralog.mesh.token import JoinToken
from pyralog.wireguard import config as wgconfig
from pyralog.wireguard.keys import PrivateKey

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    "when, expected",
    [
        (None, "Never"),
        (0, "Never"),
        (NOW, "Now"),
        (NOW + 30, "Now"),  # a clock a little ahead is not "in the future"
        (NOW - 0.4, "Now"),
        (NOW - 1, "1 second ago"),
        (NOW - 2, "2 seconds ago"),
        (NOW - 60, "1 minute ago"),
        (NOW - 65, "1 minute, 5 seconds ago"),
        (NOW - 125, "2 minutes, 5 seconds ago"),
        (NOW - 3600, "1 hour ago"),
        (NOW - 3601, "1 hour, 1 second ago"),
        (NOW - 90061, "1 day, 1 hour, 1 minute, 1 second ago"),
        (NOW - 2 * 86400 - 7200.9, "2 days, 2 hours ago"),
    ],
)
def test_ago(when: float | None, expected: str) -> None:
    assert ago(when, NOW) == expected


@pytest.mark.parametrize(
    "n, expected",
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1.00 KiB"),
        (1536, "1.50 KiB"),
        (1024 * 1024 - 1, "1024.00 KiB"),
        (5 * 1024**2, "5.00 MiB"),
        (3 * 1024**3, "3.00 GiB"),
        (1024**4, "1024.00 GiB"),
    ],
)
def test_size(n: int, expected: str) -> None:
    assert size(n) == expected


def test_no_area_prints_help_and_returns_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage: pyralog-admin" in capsys.readouterr().err


def test_an_area_without_an_action_says_what_to_do() -> None:
    with pytest.raises(SystemExit, match="say what to do"):
        cli.main(["--socket", "/nonexistent", "node"])


def test_a_missing_socket_is_explained(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no admin socket"):
        cli.main(["--socket", str(tmp_path / "nope.sock"), "token", "list"])


def test_a_bad_url_is_refused() -> None:
    with pytest.raises(SystemExit, match="--url"):
        cli.main(["--url", "https://10.0.0.1", "token", "list"])


def test_nobody_at_the_url_is_one_line_and_1(capsys: pytest.CaptureFixture[str]) -> None:
    from ports import free_port

    assert cli.main(["--url", f"http://127.0.0.1:{free_port()}", "token", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pyralog-admin: ") and len(err.splitlines()) == 1


def with_cli(
    tmp_path: Path,
    body: Callable[[CoordinatorService, Callable[..., Awaitable[int]]], Awaitable[None]],
) -> None:
    async def main() -> None:
        async with running(tmp_path) as service:
            sock = str(service.config.admin_socket)

            async def admin(*argv: str) -> int:
                return await asyncio.to_thread(cli.main, ["--socket", sock, *argv])

            await asyncio.wait_for(body(service, admin), 30)

    asyncio.run(main())


def test_main_against_a_real_coordinator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node_key = PrivateKey(bytes([8]) * 32).public_key.to_base64()

    async def body(service: CoordinatorService, admin: Callable[..., Awaitable[int]]) -> None:
        capsys.readouterr()
        assert await admin("token", "create", "--ttl", "90s", "--role", "gateway") == 0
        out, err = capsys.readouterr()
        token = JoinToken.decode(out.strip())
        assert token.coordinator_key.to_base64() == service.public_key
        assert f"token {token.id}: role gateway, one-time, expires" in err

        assert await admin("token", "list") == 0
        out = capsys.readouterr().out
        header, row = out.splitlines()
        assert header.split() == ["ID", "ROLE", "REUSABLE", "USES", "STATE"]
        assert row.split() == [token.id, "gateway", "no", "0", "live"]

        assert (
            await admin(
                "node",
                "add",
                "--node-id",
                "n1",
                "--public-key",
                node_key,
                "--endpoint",
                "192.0.2.1:51820",
            )
            == 0
        )
        out = capsys.readouterr().out
        assert out.startswith("add: n1 (node) at 10.77.")

        assert await admin("node", "list") == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split()[:3] == ["NODE", "ROLE", "ADDRESS"]
        assert lines[1].split()[0] == "n1" and "192.0.2.1:51820" in lines[1]
        assert "provisioned" in lines[1] and node_key in lines[1]

        # A refused request: one line on stderr and exit status 1.
        assert await admin("node", "add", "--node-id", "n2", "--public-key", node_key) == 1
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("pyralog-admin: public key already belongs")

        conf = tmp_path / "laptop.conf"
        assert await admin("client", "add", "--name", "laptop", "-o", str(conf)) == 0
        err = capsys.readouterr().err
        assert f"wrote {conf} for laptop" in err
        assert stat.S_IMODE(os.stat(conf).st_mode) == 0o600
        parsed = wgconfig.parse(conf.read_text(), str(conf))
        assert [p.public_key.to_base64() for p in parsed.peers] == [node_key]
        assert await admin("client", "add", "--name", "laptop2") == 0
        assert "[Interface]" in capsys.readouterr().out

        assert await admin("cluster", "status") == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].startswith("cluster unit: coordinator 10.77.0.1 (127.0.0.1:")
        assert out[0].endswith("topology full-mesh")
        rows = {line.split()[0]: line for line in out[2:]}
        assert set(rows) == {"n1", "laptop", "laptop2"}
        assert "Never" in rows["n1"] and "pending" in rows["n1"]
        assert "0 B received, 0 B sent" in rows["n1"]

        assert await admin("--json", "token", "list") == 0
        listed = json.loads(capsys.readouterr().out)
        assert [t["id"] for t in listed] == [token.id]

        assert await admin("token", "revoke", token.id) == 0
        capsys.readouterr()
        assert await admin("token", "list") == 0
        assert capsys.readouterr().out.splitlines()[1].split()[-1] == "revoked"
        assert await admin("token", "revoke", "ffffffffffffffff") == 1
        assert "no token" in capsys.readouterr().err

        assert await admin("node", "remove", "n1") == 0
        assert capsys.readouterr().out.startswith("remove: n1 (node) at 10.77.")
        assert await admin("node", "remove", "n1") == 1
        assert "no node 'n1'" in capsys.readouterr().err

    with_cli(tmp_path, body)


def test_config_finds_the_socket(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def body(service: CoordinatorService, admin: Callable[..., Awaitable[int]]) -> None:
        # --config reads coordinator.toml for the socket; this one names the service's.
        path = tmp_path / "other.toml"
        path.write_text(f'[coordinator]\nadmin_socket = "{service.config.admin_socket}"\n')
        code = await asyncio.to_thread(cli.main, ["--config", str(path), "--json", "node", "list"])
        assert code == 0 and json.loads(capsys.readouterr().out) == []

    with_cli(tmp_path, body)


@pytest.mark.parametrize("as_json", [False, True])
def test_client_add_writes_the_config_to_the_file_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    """The client's private key exists only in this answer (the coordinator keeps none):
    ``-o`` writes it whatever the output format, and nothing else shows it."""

    async def body(service: CoordinatorService, admin: Callable[..., Awaitable[int]]) -> None:
        conf = tmp_path / "laptop.conf"
        capsys.readouterr()
        flags = ["--json"] if as_json else []
        assert await admin(*flags, "client", "add", "--name", "laptop", "-o", str(conf)) == 0
        out, err = capsys.readouterr()
        assert stat.S_IMODE(os.stat(conf).st_mode) == 0o600
        assert wgconfig.parse(conf.read_text(), str(conf)).interface.private_key is not None
        assert f"wrote {conf} for laptop" in err
        assert "PrivateKey" not in out
        if as_json:
            shown = json.loads(out)
            assert shown["node_id"] == "laptop" and shown["output"] == str(conf)
            assert "wg_quick" not in shown
        else:
            assert out == ""

    with_cli(tmp_path, body)


def test_client_add_refuses_an_existing_file_before_registering(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before the request: after it, the new client's key would be lost."""

    async def body(service: CoordinatorService, admin: Callable[..., Awaitable[int]]) -> None:
        conf = tmp_path / "taken.conf"
        conf.write_text("keep me\n")
        capsys.readouterr()
        assert await admin("client", "add", "--name", "phone", "-o", str(conf)) == 1
        assert capsys.readouterr().err == (
            f"pyralog-admin: {conf}: exists; refusing to overwrite it\n"
        )
        assert conf.read_text() == "keep me\n"
        assert await admin("--json", "node", "list") == 0
        assert "phone" not in {n["node_id"] for n in json.loads(capsys.readouterr().out)}

    with_cli(tmp_path, body)
