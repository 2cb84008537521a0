"""Revocation and update-peer through ``pyralog-admin`` against a real in-process
coordinator: the registry's refusals, who revoked and when, one-line errors, and that
the revocation is in the store (so a restarted coordinator still refuses the key)."""

from __future__ import annotations

import json
import os
import pwd
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from test_admin_cli import with_cli  # tests/mesh is on sys.path under pytest

from pyralog.mesh.coordinator import CoordinatorService
from pyralog.mesh.registry import REVOKED
from pyralog.wireguard.admission import UnknownInitiator
from pyralog.wireguard.keys import PrivateKey, PublicKey

Admin = Callable[..., Awaitable[int]]


def key(i: int) -> str:
    return PrivateKey(bytes([i]) * 32).public_key.to_base64()


def test_revoke_records_who_and_when_and_refuses_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def body(service: CoordinatorService, admin: Admin) -> None:
        assert await admin("node", "add", "--node-id", "n1", "--public-key", key(1)) == 0
        assert await admin("node", "revoke", "--node-id", "n1") == 0
        out = capsys.readouterr().out
        assert out.splitlines()[-1] == f"revoked: n1 (node), key {key(1)}"
        assert await admin("--json", "node", "list") == 0
        assert json.loads(capsys.readouterr().out) == []

        assert await admin("--json", "node", "list", "--revoked") == 0
        [revoked] = json.loads(capsys.readouterr().out)
        user = pwd.getpwuid(os.geteuid()).pw_name
        assert revoked["node_id"] == "n1" and revoked["public_key"] == key(1)
        assert revoked["revoked_by"] == f"uid {os.geteuid()} ({user})"
        assert abs(revoked["revoked_at"] - time.time()) < 30
        assert await admin("node", "list", "--revoked") == 0
        header, row = capsys.readouterr().out.splitlines()
        assert header.split()[:5] == ["NODE", "ROLE", "ADDRESS", "REVOKED", "BY"]
        assert row.split()[0] == "n1" and f"uid {os.geteuid()} ({user})" in row

        # In the store, not only in memory.
        assert await service.registry.store.get(REVOKED + PublicKey.from_base64(key(1)).hex())

        # node add of the revoked key: refused in one line, unless explicitly allowed.
        assert await admin("node", "add", "--node-id", "n2", "--public-key", key(1)) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"pyralog-admin: public key {key(1)} was revoked (node 'n1', by uid")
        assert "--allow-revoked-key" in err and len(err.splitlines()) == 1
        args = ["node", "add", "--node-id", "n2", "--public-key", key(1), "--allow-revoked-key"]
        assert await admin(*args) == 0
        capsys.readouterr()
        assert await admin("--json", "node", "list", "--revoked") == 0
        assert json.loads(capsys.readouterr().out) == []

        # The enrollment policy refuses the revoked key before looking at tokens.
        assert await admin("client", "add", "--name", "phone") == 0
        capsys.readouterr()
        assert await admin("--json", "node", "list") == 0
        phone = next(n for n in json.loads(capsys.readouterr().out) if n["node_id"] == "phone")
        assert await admin("client", "revoke", "--name", "phone") == 0
        await service._sync()
        who = UnknownInitiator(
            PublicKey.from_base64(phone["public_key"]), ("127.0.0.1", 9), b"\x01" * 148, 1.0
        )
        assert service.enrollment.admit(who) is None
        assert service.enrollment.counters["refused_revoked_key"] == 1

    with_cli(tmp_path, body)


def test_revoking_an_unknown_member_is_one_line_and_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def body(service: CoordinatorService, admin: Admin) -> None:
        capsys.readouterr()
        assert await admin("node", "revoke", "--node-id", "ghost") == 1
        out, err = capsys.readouterr()
        assert out == "" and err == "pyralog-admin: no node 'ghost'\n"
        assert await admin("client", "revoke", "--name", "bad/name") == 1
        assert capsys.readouterr().err.startswith("pyralog-admin: node id 'bad/name'")

    with_cli(tmp_path, body)


def test_update_peer_keeps_everything_but_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def body(service: CoordinatorService, admin: Admin) -> None:
        args = ["--json", "node", "add", "--node-id", "node-2", "--public-key", key(2),
                "--region", "east", "--endpoint", "192.0.2.2:51820"]  # fmt: skip
        assert await admin(*args) == 0
        before = json.loads(capsys.readouterr().out)
        update = ["wireguard", "update-peer", "--peer-id", "node-2", "--public-key"]
        assert await admin(*update, key(3)) == 0
        assert capsys.readouterr().out == (
            f"update-peer: node-2 at {before['address']}, key {key(3)}\n"
        )
        [after] = await service.registry.nodes()
        assert (after.public_key, after.address, after.role, after.region, after.endpoints) == (
            key(3), before["address"], "node", "east", ["192.0.2.2:51820"]
        )  # fmt: skip
        # The old key is free again (its keys/ claim went with it).
        assert await admin("node", "add", "--node-id", "other", "--public-key", key(2)) == 0
        capsys.readouterr()
        assert await admin(*update, "not-a-key") == 1
        err = capsys.readouterr().err
        assert err == (
            "pyralog-admin: public key 'not-a-key' is not a base64 WireGuard public key\n"
        )
        assert await admin(*update, key(2)) == 1  # another member's key
        assert "already belongs to node 'other'" in capsys.readouterr().err
        assert await admin("wireguard", "update-peer", "--peer-id", "nope",
                           "--public-key", key(4)) == 1  # fmt: skip
        assert capsys.readouterr().err == "pyralog-admin: no node 'nope'\n"

    with_cli(tmp_path, body)
