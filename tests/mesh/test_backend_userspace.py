"""The userspace backend's control path, against a fake UAPI daemon (no root, no TUN).

A Unix socket in the test's directory answers ``get=1`` with one peer and records every
``set=1``, so what ``UserspaceBackend.rekey`` asks of a daemon (pyralog-wg,
wireguard-go) is checked line by line, and then fed to pyralog-wg's own UAPI handling.
The daemon's parent-death signal is checked with a stand-in child (``sleep``); waiting
for the UAPI socket, with a socket bound but not yet listening. The real daemons are
driven in test_mesh_tun.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from netns import pid_alive
from processes import wait_until
from pyralog.link.control import PeerChange, SetRequest
from pyralog.mesh.backend import GREETING_KEEPALIVE, BackendSpec
from pyralog.mesh.backend_userspace import UserspaceBackend
from pyralog.tunnel.uapi import handle_request
from pyralog.tunnel.uapi_client import UapiClient, format_set
from pyralog.tunnel.uapi_server import UapiListener
from pyralog.wireguard.device import Device
from pyralog.wireguard.keys import PresharedKey, PrivateKey

PEER = PrivateKey.generate().public_key
PSK = PresharedKey.generate()


@dataclass
class FakeDaemon:
    """One peer, as a daemon's ``get=1`` lists it; every ``set=1`` body, as lines."""

    path: Path
    keepalive: int = 0
    psk: PresharedKey | None = PSK
    sets: list[list[str]] = field(default_factory=list)

    def answer_get(self) -> str:
        psk = self.psk.raw.hex() if self.psk else "00" * 32
        return (
            "private_key=" + "11" * 32 + "\nlisten_port=51820\n"
            f"public_key={PEER.raw.hex()}\npreshared_key={psk}\n"
            "protocol_version=1\nendpoint=172.30.1.2:51821\n"
            "last_handshake_time_sec=0\nlast_handshake_time_nsec=0\n"
            "tx_bytes=0\nrx_bytes=0\n"
            f"persistent_keepalive_interval={self.keepalive}\n"
            "allowed_ip=10.77.0.5/32\nallowed_ip=10.78.0.0/16\nerrno=0\n\n"
        )

    def serve(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b"\n\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                lines = data.decode().splitlines()
                if lines[:1] == ["get=1"]:
                    conn.sendall(self.answer_get().encode())
                else:
                    self.sets.append([line for line in lines[1:] if line])
                    conn.sendall(b"errno=0\n\n")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[FakeDaemon]:
    fake = FakeDaemon(tmp_path / "pwtest0.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(fake.path))
    server.listen()
    thread = threading.Thread(target=fake.serve, args=(server,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(5)


def _backend(daemon: FakeDaemon) -> UserspaceBackend:
    spec = BackendSpec(
        PrivateKey.generate(), (ipaddress.ip_interface("10.77.0.2/16"),), 51820, 1420, "pwtest0"
    )
    # No daemon process: rekey and peers only talk to the UAPI socket.
    backend = UserspaceBackend(spec, cast(Any, SimpleNamespace(stdout=None)))
    backend.uapi = UapiClient(str(daemon.path))
    return backend


def test_uapi_client_reads_the_preshared_key(daemon: FakeDaemon) -> None:
    (peer,) = UapiClient(str(daemon.path)).peers()
    assert peer.preshared_key is not None and peer.preshared_key.raw == PSK.raw
    assert peer.allowed_ips == ["10.77.0.5/32", "10.78.0.0/16"]
    daemon.psk = None  # the daemon lists zeros: no preshared key
    (peer,) = UapiClient(str(daemon.path)).peers()
    assert peer.preshared_key is None


def test_rekey_starts_a_handshake_and_keeps_the_peer_as_it_was(daemon: FakeDaemon) -> None:
    backend = _backend(daemon)
    asyncio.run(backend.rekey(PEER))
    key = f"public_key={PEER.raw.hex()}"
    # One atomic set: remove (drops the session), add back with everything it had and a
    # keepalive switched on (the daemon sends one at once: a handshake), then its own
    # interval (none) back.
    assert daemon.sets == [
        [
            key,
            "remove=true",
            key,
            f"preshared_key={PSK.raw.hex()}",
            "endpoint=172.30.1.2:51821",
            f"persistent_keepalive_interval={GREETING_KEEPALIVE}",
            "allowed_ip=10.77.0.5/32",
            "allowed_ip=10.78.0.0/16",
            key,
            "update_only=true",
            "persistent_keepalive_interval=0",
        ]
    ]


def test_rekey_of_a_peer_with_a_keepalive_keeps_its_interval(daemon: FakeDaemon) -> None:
    daemon.keepalive, daemon.psk = 25, None
    asyncio.run(_backend(daemon).rekey(PEER))
    (lines,) = daemon.sets
    assert lines.count(f"public_key={PEER.raw.hex()}") == 2
    assert "persistent_keepalive_interval=25" in lines
    assert not any(line.startswith("preshared_key=") for line in lines)
    assert "update_only=true" not in lines


def test_rekey_of_an_unknown_peer_changes_nothing(daemon: FakeDaemon) -> None:
    asyncio.run(_backend(daemon).rekey(PrivateKey.generate().public_key))
    assert daemon.sets == []


PARENT = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from pyralog.mesh.backend_userspace import _die_with
    parent = os.getpid()
    child = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: _die_with(parent))
    print(child.pid, flush=True)
    time.sleep(60)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_daemon_dies_with_the_node_even_on_sigkill() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    )
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert pid_alive(child)
        parent.send_signal(signal.SIGKILL)  # nothing in the parent runs any more
        parent.wait(10)
        assert wait_until(lambda: not pid_alive(child), 5), "the child outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child and pid_alive(child):  # the child we started, by its pid
            os.kill(child, signal.SIGKILL)


class _Interface:
    """What ``handle_request`` asks of an interface, for a Device with no sockets."""

    def listen_port(self) -> int:
        return 51820

    def set_listen_port(self, port: int) -> None:
        pass

    def fwmark(self) -> int:
        return 0

    def set_fwmark(self, mark: int) -> None:
        pass


def test_pyralog_wg_takes_the_rekey_as_a_handshake_now(daemon: FakeDaemon) -> None:
    """The set ``rekey`` sends, through pyralog-wg's own UAPI handling: an initiation
    goes out at once, and the peer is as it was (preshared key, no keepalive)."""
    asyncio.run(_backend(daemon).rekey(PEER))
    (lines,) = daemon.sets
    device, iface = Device(PrivateKey.generate()), _Interface()
    setup = SetRequest(peers=[PeerChange(PEER, preshared_key=PSK, allowed_ips=["10.77.0.5/32"])])
    _, error = handle_request("set=1\n" + "".join(f"{x}\n" for x in format_set(setup)) + "\n",
                              device, iface, 0.0)  # fmt: skip
    assert error is None and device.datagrams_to_send() == []
    reply, error = handle_request("set=1\n" + "".join(f"{x}\n" for x in lines) + "\n",
                                  device, iface, 1.0)  # fmt: skip
    assert error is None, reply
    sent = device.datagrams_to_send()
    assert [(d[0], len(d), ep) for d, ep in sent] == [(1, 148, ("172.30.1.2", 51821))]
    reply, _ = handle_request("get=1\n\n", device, iface, 1.0)
    assert f"preshared_key={PSK.raw.hex()}" in reply
    assert "persistent_keepalive_interval=0" in reply
    assert "allowed_ip=10.78.0.0/16" in reply


def test_the_backend_waits_until_the_uapi_socket_listens(tmp_path: Path) -> None:
    """A socket file that exists but refuses connections (bound, not yet listening) is
    not a daemon ready to be configured."""
    path = tmp_path / "pwtest1.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    process = SimpleNamespace(stdout=None, poll=lambda: None)
    spec = BackendSpec(
        PrivateKey.generate(), (ipaddress.ip_interface("10.77.0.2/16"),), 51820, 1420, "pwtest1"
    )
    backend = UserspaceBackend(spec, cast(Any, process))
    backend.uapi = UapiClient(str(path))

    async def scenario() -> float:
        waiting = asyncio.create_task(backend._wait_for_socket())
        await asyncio.sleep(0.3)
        assert not waiting.done()  # the file is there, but nobody listens
        sock.listen(1)
        started = time.monotonic()
        await asyncio.wait_for(waiting, 5)
        return time.monotonic() - started

    try:
        assert asyncio.run(scenario()) < 2
    finally:
        sock.close()


def test_the_uapi_socket_appears_only_once_it_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "pwtest2.sock"
    seen: list[bool] = []
    listen = socket.socket.listen

    def spy(self: socket.socket, *args: Any) -> None:
        seen.append(path.exists())
        listen(self, *args)

    monkeypatch.setattr(socket.socket, "listen", spy)
    listener = UapiListener("pwtest2", directory=str(tmp_path))
    try:
        assert seen == [False]  # not there while it could not take a connection
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["pwtest2.sock"]  # no temporary
    finally:
        listener.close()
    assert not path.exists()
