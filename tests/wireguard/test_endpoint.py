"""One endpoint parser: config files and UAPI agree on every IP literal's spelling."""

from __future__ import annotations

import pytest

from pyralog.tunnel.uapi import UapiError
from pyralog.tunnel.uapi import parse_endpoint as uapi_parse
from pyralog.wireguard.config import parse
from pyralog.wireguard.endpoint import (
    EndpointError,
    canonical,
    format_endpoint,
    parse_endpoint,
)
from pyralog.wireguard.keys import PrivateKey

KEY = PrivateKey(bytes([9]) * 32)
PEER = PrivateKey(bytes([10]) * 32).public_key


def from_config(text: str) -> tuple[str, int] | None:
    config = parse(
        f"[Interface]\nPrivateKey = {KEY.to_base64()}\n"
        f"[Peer]\nPublicKey = {PEER.to_base64()}\nEndpoint = {text}\n",
        "t.conf",
    )
    return config.peers[0].endpoint


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1:51820", ("192.0.2.1", 51820)),
        ("[2001:DB8:0:0::1]:1", ("2001:db8::1", 1)),
        ("[fe80::1%eth0]:51820", ("fe80::1%eth0", 51820)),
        ("[::ffff:192.0.2.7]:9", ("192.0.2.7", 9)),  # as the v4 socket reports it
    ],
)
def test_config_and_uapi_give_the_same_canonical_endpoint(
    text: str, expected: tuple[str, int]
) -> None:
    assert parse_endpoint(text) == expected
    assert uapi_parse(text) == expected
    assert from_config(text) == expected


def test_names_only_where_allowed() -> None:
    assert parse_endpoint("vpn.example.net:51820", allow_names=True) == ("vpn.example.net", 51820)
    assert from_config("vpn.example.net:51820") == ("vpn.example.net", 51820)
    with pytest.raises(EndpointError, match="not an IP address"):
        parse_endpoint("vpn.example.net:51820")
    with pytest.raises(UapiError):
        uapi_parse("vpn.example.net:51820")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("192.0.2.1", "expected HOST:PORT"),
        (":51820", "expected HOST:PORT"),
        ("192.0.2.1:0", "not 1-65535"),
        ("192.0.2.1:65536", "not 1-65535"),
        ("2001:db8::1:51820", "brackets"),
        ("[192.0.2.1]:51820", "only IPv6"),
        ("[2001:db8::1]", "expected \\[IPv6\\]:PORT"),
        ("[name.example]:1", "not an IP address"),
    ],
)
def test_bad_endpoints_say_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(EndpointError, match=why) as info:
        parse_endpoint(text, allow_names=True)
    assert repr(text) in str(info.value)


def test_canonical_socket_addresses_and_format() -> None:
    assert canonical("::ffff:10.0.0.1", 5) == ("10.0.0.1", 5)
    assert canonical("2001:0db8::0001", 5) == ("2001:db8::1", 5)
    assert format_endpoint(("2001:db8::1", 5)) == "[2001:db8::1]:5"
    assert format_endpoint(("10.0.0.1", 5)) == "10.0.0.1:5"
