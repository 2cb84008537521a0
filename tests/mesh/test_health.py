"""Member health from the latest handshake's age: the 120 s / 180 s rules at their edges,
the config knobs that shorten them for tests, and ``cluster status``'s exit code with a
fake clock against a real in-process coordinator."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from test_admin_cli import with_cli  # tests/mesh is on sys.path under pytest

from pyralog.mesh import coordinator_config
from pyralog.mesh.coordinator import CoordinatorService
from pyralog.mesh.health import DOWN_AFTER, HEALTHY_WITHIN, HealthThresholds, health
from pyralog.mesh.tomlsection import ConfigError
from pyralog.wireguard.keys import PrivateKey, PublicKey

NOW = 1_700_000_000.0


def test_the_defaults_are_the_documents() -> None:
    assert (HEALTHY_WITHIN, DOWN_AFTER) == (120.0, 180.0)


@pytest.mark.parametrize(
    "age, expected",
    [(0, "healthy"), (119, "healthy"), (121, "degraded"), (179, "degraded"), (181, "down")],
)
def test_health_by_handshake_age(age: float, expected: str) -> None:
    assert health(NOW - age, "active", NOW) == expected


def test_never_handshook_is_pending_if_provisioned_else_down() -> None:
    assert health(None, "provisioned", NOW) == "pending"
    assert health(None, "active", NOW) == "down"


def test_thresholds_shortened() -> None:
    short = HealthThresholds(1.0, 2.0)
    assert [health(NOW - a, "active", NOW, short) for a in (0.5, 1.5, 2.5)] == [
        "healthy",
        "degraded",
        "down",
    ]
    with pytest.raises(ValueError, match="healthy_within"):
        HealthThresholds(5.0, 2.0)


def test_health_table_in_coordinator_toml() -> None:
    assert coordinator_config.parse("").health == HealthThresholds()
    parsed = coordinator_config.parse("[health]\nhealthy_within = 2\ndown_after = 4.5\n")
    assert parsed.health == HealthThresholds(2.0, 4.5)
    with pytest.raises(ConfigError, match=r"\[health\] down_after: expected an integer or"):
        coordinator_config.parse('[health]\ndown_after = "3m"\n')
    with pytest.raises(ConfigError, match=r"\[health\] healthy_within: .*<= down_after"):
        coordinator_config.parse("[health]\nhealthy_within = 10\ndown_after = 5\n")
    with pytest.raises(ConfigError, match=r"\[health\] stale: unknown key"):
        coordinator_config.parse("[health]\nstale = 1\n")


def test_cluster_status_exit_code_follows_health(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One member whose latest handshake is set on the coordinator's own peer, a fake
    clock moved past each threshold: exit 0 until it is down, then 1 and its name."""
    node_key = PrivateKey(bytes([9]) * 32).public_key

    async def body(service: CoordinatorService, admin: Callable[..., Awaitable[int]]) -> None:
        args = ["node", "add", "--node-id", "n1", "--public-key", node_key.to_base64(),
                "--endpoint", "127.0.0.1:9"]  # fmt: skip
        assert await admin(*args) == 0
        await service._sync()
        peer = service.tunnel.device.get_peer(PublicKey.from_base64(node_key.to_base64()))
        assert peer is not None
        peer.last_handshake = NOW
        for age, expected, code in [
            (119, "healthy", 0),
            (121, "degraded", 0),
            (179, "degraded", 0),
            (181, "down", 1),
        ]:
            service.clock = lambda age=age: NOW + age
            capsys.readouterr()
            assert await admin("--json", "cluster", "status") == code, age
            shown = json.loads(capsys.readouterr().out)
            assert shown["members"][0]["health"] == expected, age
        assert await admin("cluster", "status") == 1
        out = capsys.readouterr().out
        assert out.splitlines()[-1] == "down: n1"
        assert "degraded" not in out and " down" in out

    with_cli(tmp_path, body)
