"""Join tokens: the text form round-trips, derived values are distinct and stable, and
anything that is not a token is refused with a TokenError that says why (never any
other exception)."""

from __future__ import annotations

import base64
import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyralog.mesh.token import (
    MAX_TEXT,
    PREFIX,
    SECRET_SIZE,
    JoinToken,
    TokenError,
    enrollment_psk,
    proof_key,
    token_id,
)
from pyralog.wireguard.keys import PrivateKey, PublicKey

SECRET = bytes(range(SECRET_SIZE))
KEY = PrivateKey(bytes([5]) * 32).public_key
# A point of order 8 on Curve25519 (and the all-zero point): no DH with them is possible.
LOW_ORDER = [
    bytes(32),
    bytes([1]) + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
]


def make(
    *,
    address: str = "10.100.0.1",
    endpoints: tuple[tuple[str, int], ...] = (("198.51.100.7", 51820),),
    cluster: str = "prod",
    api_port: int = 7700,
    secret: bytes = SECRET,
) -> JoinToken:
    return JoinToken(secret, KEY, ipaddress.ip_address(address), endpoints, cluster, api_port)


def body_of(token: JoinToken) -> bytes:
    text = token.encode()[len(PREFIX) :]
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def text_of(body: bytes) -> str:
    return PREFIX + base64.urlsafe_b64encode(body).rstrip(b"=").decode()


def refused(text: str) -> str:
    with pytest.raises(TokenError) as info:
        JoinToken.decode(text)
    assert type(info.value) is TokenError
    return str(info.value)


# -- round trip ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, endpoints",
    [
        ("10.100.0.1", (("198.51.100.7", 51820),)),
        (
            "fd00:100::1",
            (
                ("198.51.100.7", 51820),
                ("coordinator.example.net", 443),
                ("2001:db8::7", 51821),
                ("fe80::1%eth0", 1),
            ),
        ),
        ("10.0.0.1", tuple((f"node-{i}.example", 1000 + i) for i in range(20))),
    ],
)
def test_encode_decode_round_trip(address: str, endpoints: tuple[tuple[str, int], ...]) -> None:
    token = make(address=address, endpoints=endpoints, api_port=65535, cluster="us-west-2")
    text = token.encode()
    assert text.startswith(PREFIX)
    # Safe in shells, YAML and environment variables: base64url, no padding.
    assert set(text[len(PREFIX) :]) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )
    back = JoinToken.decode(text)
    assert back == token
    assert back.coordinator_address == ipaddress.ip_address(address)
    assert back.endpoints == endpoints
    # Whitespace around it (a pasted line) does not matter.
    assert JoinToken.decode(f"  {text}\n") == token


def test_every_body_length_mod_4_round_trips() -> None:
    # base64 without padding: each of the lengths needs a different amount put back.
    for n in range(8):
        token = make(cluster="c" * (1 + n))
        assert JoinToken.decode(token.encode()) == token


def test_a_unicode_cluster_id_round_trips() -> None:
    token = make(cluster="prod-ü-集群")
    assert JoinToken.decode(token.encode()).cluster_id == "prod-ü-集群"


def test_derived_values_are_distinct_and_stable() -> None:
    derived = [token_id(SECRET), proof_key(SECRET).hex(), enrollment_psk(SECRET).raw.hex()]
    assert len(token_id(SECRET)) == 16 and int(token_id(SECRET), 16) >= 0
    assert len(proof_key(SECRET)) == 32 and len(enrollment_psk(SECRET).raw) == 32
    # Each comes from its own label: none is a prefix of another nor the secret itself.
    assert len({d[:16] for d in derived}) == 3
    assert SECRET.hex() not in derived and SECRET.hex()[:16] not in derived
    assert proof_key(SECRET) != enrollment_psk(SECRET).raw
    # Stable: pinned values (they are what a coordinator stored for a token).
    assert token_id(SECRET) == token_id(bytes(range(32)))
    assert proof_key(SECRET) == proof_key(bytes(range(32)))
    assert make().id == token_id(SECRET)
    other = bytes([1]) + SECRET[1:]
    assert token_id(other) != token_id(SECRET)
    assert proof_key(other) != proof_key(SECRET)
    assert enrollment_psk(other) != enrollment_psk(SECRET)


def test_the_text_carries_the_secret_but_not_the_derived_values() -> None:
    body = body_of(make())
    assert body[:SECRET_SIZE] == SECRET
    assert proof_key(SECRET) not in body and enrollment_psk(SECRET).raw not in body


# -- refused ------------------------------------------------------------------------------


def test_wrong_prefix() -> None:
    text = make().encode()
    assert "must start with" in refused(text.replace("pyralog-join-1.", "pyralog-join-2."))
    assert "must start with" in refused(text[len(PREFIX) :])
    assert "must start with" in refused("")


@pytest.mark.parametrize("junk", ["!", "*", " ", "\n", "=", "+", "/", "é"])
def test_characters_outside_base64url_are_refused(junk: str) -> None:
    text = make().encode()
    middle = len(PREFIX) + 20
    message = refused(text[:middle] + junk + text[middle:])
    assert "base64url" in message


def test_impossible_base64_length() -> None:
    assert "base64url" in refused(PREFIX + "A")
    assert "base64url" in refused(PREFIX + "AAAAA")


def test_truncated_at_every_length() -> None:
    body = body_of(make(address="fd00::1", endpoints=(("a.example", 1), ("192.0.2.1", 2))))
    for n in range(len(body)):
        message = refused(text_of(body[:n]))
        assert "truncated" in message or "corrupt" in message or "no coordinator" in message, (
            n,
            message,
        )


def test_trailing_bytes() -> None:
    body = body_of(make())
    assert "trailing bytes" in refused(text_of(body + b"\0"))
    assert "trailing bytes" in refused(text_of(body + b"more bytes here"))


def test_overlong_text() -> None:
    text = make().encode()
    assert "characters long" in refused(text + "A" * MAX_TEXT)
    assert "characters long" in refused("x" * (MAX_TEXT + 1))


def test_zero_endpoints() -> None:
    assert "no coordinator endpoint" in refused(make(endpoints=()).encode())


@pytest.mark.parametrize("raw", LOW_ORDER)
def test_low_order_coordinator_key(raw: bytes) -> None:
    body = body_of(make())
    bad = body[:SECRET_SIZE] + raw + body[SECRET_SIZE + 32 :]
    assert "coordinator key" in refused(text_of(bad))


def test_port_zero() -> None:
    assert "API port 0" in refused(make(api_port=0).encode())
    assert "port" in refused(make(endpoints=(("192.0.2.1", 0),)).encode())


def test_address_length_neither_4_nor_16() -> None:
    body = bytearray(body_of(make()))
    body[64] = 5
    assert "neither IPv4 nor IPv6" in refused(text_of(bytes(body)))


@pytest.mark.parametrize(
    "host",
    ["", "[2001:db8::1]", "2001:db8::zz", "bad:host"],
)
def test_bad_endpoint_hosts(host: str) -> None:
    message = refused(make(endpoints=((host, 51820),)).encode())
    assert message.startswith("join token: endpoint"), message


def test_bad_utf8_in_the_cluster_id() -> None:
    body = body_of(make(cluster="ab"))
    at = body.index(b"\x02ab")
    bad = body[:at] + b"\x02\xff\xfe" + body[at + 3 :]
    assert "corrupt" in refused(text_of(bad))


def test_endpoint_count_larger_than_what_follows() -> None:
    body = body_of(make())
    count_at = len(body) - (3 + len(b"198.51.100.7")) - 1
    assert body[count_at] == 1
    bad = body[:count_at] + struct.pack("!B", 2) + body[count_at + 1 :]
    assert "truncated" in refused(text_of(bad))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_after_the_prefix_give_only_token_errors(data: bytes) -> None:
    text = text_of(data)
    try:
        token = JoinToken.decode(text)
    except TokenError as e:
        assert str(e)
    else:
        assert isinstance(token.coordinator_key, PublicKey)
        assert token.endpoints


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_random_text_after_the_prefix_gives_only_token_errors(data: str) -> None:
    try:
        JoinToken.decode(PREFIX + data)
    except TokenError as e:
        assert str(e)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 200), st.binary(min_size=1, max_size=8))
def test_corrupting_a_valid_token_gives_only_token_errors(at: int, junk: bytes) -> None:
    body = body_of(make(address="fd00::1", endpoints=(("a.example", 1), ("192.0.2.1", 2))))
    at %= len(body)
    corrupt = body[:at] + junk + body[at + len(junk) :]
    try:
        JoinToken.decode(text_of(corrupt))
    except TokenError as e:
        assert str(e)
