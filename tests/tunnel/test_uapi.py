"""The UAPI text protocol against a real Device and a fake interface (no sockets, no root)."""

from __future__ import annotations

import errno
import ipaddress

import pytest

from pyralog.tunnel.uapi import (
    format_endpoint,
    handle_request,
    parse_endpoint,
)
from pyralog.wireguard.device import Device
from pyralog.wireguard.keys import PresharedKey, PrivateKey

PRIV = PrivateKey(bytes(range(1, 33)))
PEER1 = PrivateKey(bytes(range(2, 34))).public_key
PEER2 = PrivateKey(bytes(range(3, 35))).public_key
PSK = PresharedKey(bytes([7]) * 32)


class FakeInterface:
    def __init__(self) -> None:
        self.port = 0
        self.mark = 0
        self.busy_ports: set[int] = set()

    def listen_port(self) -> int:
        return self.port

    def set_listen_port(self, port: int) -> None:
        if port in self.busy_ports:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        self.port = port

    def fwmark(self) -> int:
        return self.mark

    def set_fwmark(self, mark: int) -> None:
        self.mark = mark


def request(device: Device, iface: FakeInterface, text: str) -> str:
    reply, _ = handle_request(text, device, iface, 0.0)
    return reply


def get(device: Device, iface: FakeInterface) -> list[str]:
    reply = request(device, iface, "get=1\n\n")
    assert reply.endswith("errno=0\n\n")
    return reply[: -len("errno=0\n\n")].splitlines()


def full_set() -> str:
    return (
        "set=1\n"
        f"private_key={PRIV.raw.hex()}\n"
        "listen_port=51820\n"
        "fwmark=42\n"
        "replace_peers=true\n"
        f"public_key={PEER1.hex()}\n"
        f"preshared_key={PSK.raw.hex()}\n"
        "endpoint=192.0.2.7:51821\n"
        "persistent_keepalive_interval=0\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=10.0.0.0/24\n"
        "allowed_ip=fd00::/64\n"
        "protocol_version=1\n"
        f"public_key={PEER2.hex()}\n"
        "endpoint=[2001:db8::1]:51822\n"
        "allowed_ip=10.0.1.5/32\n"
        "\n"
    )


def test_set_then_get_reports_everything_in_wireguard_go_order() -> None:
    device, iface = Device(), FakeInterface()
    assert request(device, iface, full_set()) == "errno=0\n\n"
    assert get(device, iface) == [
        f"private_key={PRIV.raw.hex()}",
        "listen_port=51820",
        "fwmark=42",
        f"public_key={PEER1.hex()}",
        f"preshared_key={PSK.raw.hex()}",
        "protocol_version=1",
        "endpoint=192.0.2.7:51821",
        "last_handshake_time_sec=0",
        "last_handshake_time_nsec=0",
        "tx_bytes=0",
        "rx_bytes=0",
        "persistent_keepalive_interval=0",
        "allowed_ip=10.0.0.0/24",
        "allowed_ip=fd00::/64",
        f"public_key={PEER2.hex()}",
        f"preshared_key={'00' * 32}",
        "protocol_version=1",
        "endpoint=[2001:db8::1]:51822",
        "last_handshake_time_sec=0",
        "last_handshake_time_nsec=0",
        "tx_bytes=0",
        "rx_bytes=0",
        "persistent_keepalive_interval=0",
        "allowed_ip=10.0.1.5/32",
    ]


def test_empty_device_get() -> None:
    assert get(Device(), FakeInterface()) == []


def test_remove_update_only_and_replace_allowed_ips() -> None:
    device, iface = Device(), FakeInterface()
    request(device, iface, full_set())
    reply = request(device, iface, f"set=1\npublic_key={PEER2.hex()}\nremove=true\n\n")
    assert reply == "errno=0\n\n"
    assert device.get_peer(PEER2) is None
    # update_only does not create a missing peer.
    request(device, iface, f"set=1\npublic_key={PEER2.hex()}\nupdate_only=true\n\n")
    assert device.get_peer(PEER2) is None
    # Appending allowed IPs keeps the old ones; replacing drops them.
    request(device, iface, f"set=1\npublic_key={PEER1.hex()}\nallowed_ip=10.9.0.0/16\n\n")
    assert len(device.allowed_ips_of(PEER1)) == 3
    request(
        device,
        iface,
        f"set=1\npublic_key={PEER1.hex()}\nreplace_allowed_ips=true\nallowed_ip=10.8.0.1/32\n\n",
    )
    assert device.allowed_ips_of(PEER1) == [ipaddress.ip_network("10.8.0.1/32")]


def test_zero_keys_clear_private_and_preshared_keys() -> None:
    device, iface = Device(), FakeInterface()
    request(device, iface, full_set())
    zero = "00" * 32
    body = f"set=1\nprivate_key={zero}\npublic_key={PEER1.hex()}\npreshared_key={zero}\n\n"
    assert request(device, iface, body) == "errno=0\n\n"
    assert device.private_key is None
    peer = device.get_peer(PEER1)
    assert peer is not None and peer.preshared_key == PresharedKey.ZERO


def test_persistent_keepalive_with_endpoint_starts_a_handshake() -> None:
    device, iface = Device(PRIV), FakeInterface()
    body = (
        f"set=1\npublic_key={PEER1.hex()}\nendpoint=192.0.2.7:51821\n"
        "persistent_keepalive_interval=25\n\n"
    )
    assert request(device, iface, body) == "errno=0\n\n"
    sent = device.datagrams_to_send()
    assert [(d[0], len(d), ep) for d, ep in sent] == [(1, 148, ("192.0.2.7", 51821))]


BAD_REQUESTS = [
    ("set=1\nprivate_key=zz\n\n", "private_key"),
    ("set=1\nprivate_key=" + "0" * 63 + "\n\n", "64 hex"),
    ("set=1\nlisten_port=65536\n\n", "listen_port"),
    ("set=1\nlisten_port=-1\n\n", "listen_port"),
    ("set=1\nbogus=1\n\n", "unknown interface key"),
    ("set=1\nreplace_peers=yes\n\n", "replace_peers"),
    ("set=1\nno equals sign\n\n", "key=value"),
    (f"set=1\npublic_key={PEER1.hex()}\nallowed_ip=10.0.0.300/24\n\n", "allowed_ip"),
    (f"set=1\npublic_key={PEER1.hex()}\nallowed_ip=10.0.0.0/33\n\n", "allowed_ip"),
    (f"set=1\npublic_key={PEER1.hex()}\nendpoint=nohost\n\n", "endpoint"),
    (f"set=1\npublic_key={PEER1.hex()}\nendpoint=example.com:51820\n\n", "not an IP"),
    (f"set=1\npublic_key={PEER1.hex()}\nendpoint=::1:51820\n\n", "brackets"),
    (f"set=1\npublic_key={PEER1.hex()}\nendpoint=1.2.3.4:0\n\n", "port"),
    (f"set=1\npublic_key={PEER1.hex()}\npersistent_keepalive_interval=70000\n\n", "keepalive"),
    (f"set=1\npublic_key={PEER1.hex()}\nprotocol_version=2\n\n", "protocol_version"),
    (f"set=1\npublic_key={PEER1.hex()}\nremove=1\n\n", "remove"),
    (f"set=1\npublic_key={PEER1.hex()}\nfrobnicate=1\n\n", "unknown peer key"),
    ("set=1\npublic_key=" + "00" * 32 + "\n\n", "not a usable"),
    (f"set=1\npublic_key={PRIV.public_key.hex()}\n\n", "own public key"),
    ("get=1\nextra=1\n\n", "no arguments"),
    ("frob=1\n\n", "unknown operation"),
]


@pytest.mark.parametrize(("text", "message"), BAD_REQUESTS)
def test_invalid_set_gets_einval_and_changes_nothing(text: str, message: str) -> None:
    device, iface = Device(), FakeInterface()
    request(device, iface, full_set())
    before = get(device, iface)
    # Prefix a valid change: atomicity means it must not be applied either.
    poisoned = text.replace("set=1\n", "set=1\nlisten_port=40000\n", 1)
    reply, error = handle_request(poisoned, device, iface, 0.0)
    assert reply == f"errno={-errno.EINVAL}\n\n"
    assert error is not None and message in str(error)
    assert get(device, iface) == before


def test_port_in_use_gets_eaddrinuse_and_changes_nothing() -> None:
    device, iface = Device(), FakeInterface()
    request(device, iface, full_set())
    before = get(device, iface)
    iface.busy_ports.add(40000)
    reply = request(
        device, iface, f"set=1\nlisten_port=40000\npublic_key={PEER2.hex()}\nremove=true\n\n"
    )
    assert reply == f"errno={-errno.EADDRINUSE}\n\n"
    assert get(device, iface) == before


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1:51820", ("192.0.2.1", 51820)),
        ("[2001:db8::1]:1", ("2001:db8::1", 1)),
        ("[fe80::1%eth0]:51820", ("fe80::1%eth0", 51820)),
    ],
)
def test_endpoint_round_trip(text: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(text) == expected
    assert format_endpoint(expected) == text
