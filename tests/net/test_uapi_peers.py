"""UapiPeers' reading and caching, against a small UAPI responder on a Unix socket (the
real daemons, pyralog-wg and wireguard-go, are covered by test_network_api's kernel
pairs)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyralog.net.peers import MISS_INTERVAL, UapiPeers
from pyralog.wireguard.keys import PrivateKey

KEY_1 = PrivateKey(bytes([1]) * 32).public_key
KEY_2 = PrivateKey(bytes([2]) * 32).public_key


class Responder:
    """Answers every ``get=1`` with ``self.reply``; counts the requests."""

    def __init__(self, path: Path) -> None:
        self.reply = "errno=0\n\n"
        self.requests = 0
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b"\n\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                assert data == b"get=1\n\n"
                self.requests += 1
                conn.sendall(self.reply.encode())

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def responder(tmp_path: Path) -> Iterator[Responder]:
    r = Responder(tmp_path / "wgtest.sock")
    yield r
    r.close()


def peers_text(*entries: tuple[bytes, list[str]]) -> str:
    lines = ["private_key=" + "11" * 32, "listen_port=51820"]
    for raw, allowed in entries:
        lines += [f"public_key={raw.hex()}", "protocol_version=1"]
        lines += [f"allowed_ip={a}" for a in allowed]
    return "\n".join(lines) + "\nerrno=0\n\n"


def test_longest_prefix_names_the_peer(responder: Responder, tmp_path: Path) -> None:
    responder.reply = peers_text(
        (KEY_1.raw, ["10.9.0.0/24", "fd00::/64"]), (KEY_2.raw, ["10.9.0.7/32"])
    )
    peers = UapiPeers("wgtest", uapi_dir=str(tmp_path))
    assert peers.peer_of("10.9.0.1") == KEY_1
    assert peers.peer_of("10.9.0.7") == KEY_2  # the /32 wins over the /24
    assert peers.peer_of("fd00::5") == KEY_1
    assert peers.peer_of("192.0.2.1") is None
    assert peers.peer_of("garbage") is None


def test_hits_are_cached_and_misses_reread_at_a_bounded_rate(
    responder: Responder, tmp_path: Path
) -> None:
    responder.reply = peers_text((KEY_1.raw, ["10.9.0.1/32"]))
    peers = UapiPeers("wgtest", uapi_dir=str(tmp_path), ttl=60.0)
    for _ in range(50):
        assert peers.peer_of("10.9.0.1") == KEY_1
    assert responder.requests == 1
    for _ in range(50):  # strangers, within MISS_INTERVAL of the last read
        assert peers.peer_of("10.9.0.99") is None
    assert responder.requests == 1
    # A peer added since: found once MISS_INTERVAL has passed.
    responder.reply = peers_text((KEY_1.raw, ["10.9.0.1/32"]), (KEY_2.raw, ["10.9.0.2/32"]))
    time.sleep(MISS_INTERVAL + 0.02)
    assert peers.peer_of("10.9.0.2") == KEY_2
    assert responder.requests == 2


def test_a_removed_peer_is_gone_after_the_ttl(responder: Responder, tmp_path: Path) -> None:
    responder.reply = peers_text((KEY_1.raw, ["10.9.0.1/32"]))
    peers = UapiPeers("wgtest", uapi_dir=str(tmp_path), ttl=0.05)
    assert peers.peer_of("10.9.0.1") == KEY_1
    responder.reply = peers_text()
    time.sleep(0.06)
    assert peers.peer_of("10.9.0.1") is None


def test_an_error_reply_is_an_error(responder: Responder, tmp_path: Path) -> None:
    responder.reply = "errno=-13\n\n"
    peers = UapiPeers("wgtest", uapi_dir=str(tmp_path))
    with pytest.raises(OSError, match="errno=-13"):
        peers.peer_of("10.9.0.1")
