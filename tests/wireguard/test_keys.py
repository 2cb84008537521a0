"""Curve25519 keys: canonical base64, clamping, RFC 7748 vectors, low-order points, wg interop."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess

import pytest

from pyralog.wireguard.keys import (
    BASE64_KEY_LENGTH,
    InvalidKeyError,
    LowOrderPointError,
    PresharedKey,
    PrivateKey,
    PublicKey,
    clamp,
    dh,
    is_low_order,
    key_from_base64,
    key_to_base64,
)

B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

# RFC 7748, section 6.1.
ALICE_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIVATE = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED_SECRET = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

# Curve25519 u-coordinates that give the all-zero shared secret with every scalar
# (https://cr.yp.to/ecdh.html#validate; libsodium's and wireguard's blacklists).
LOW_ORDER_POINTS: dict[str, bytes] = {
    "zero": bytes(32),
    "one": (1).to_bytes(32, "little"),
    "order8-a": bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    "order8-b": bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    "p-1": bytes.fromhex("ec" + "ff" * 30 + "7f"),
    "p": bytes.fromhex("ed" + "ff" * 30 + "7f"),
    "p+1": bytes.fromhex("ee" + "ff" * 30 + "7f"),
}

WG = shutil.which("wg") or ("/usr/bin/wg" if os.path.exists("/usr/bin/wg") else None)
needs_wg = pytest.mark.skipif(WG is None, reason="wireguard-tools `wg` is not installed")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# --------------------------------------------------------------------------- base64


def test_round_trip_random_keys() -> None:
    for _ in range(50):
        raw = os.urandom(32)
        text = key_to_base64(raw)
        assert len(text) == BASE64_KEY_LENGTH == 44
        assert text.endswith("=") and not text.endswith("==")
        assert key_from_base64(text) == raw


def test_accepts_known_spellings() -> None:
    assert key_from_base64("A" * 43 + "=") == bytes(32)
    assert key_from_base64(_b64(b"\xff" * 32)) == b"\xff" * 32
    assert PublicKey.from_base64(_b64(ALICE_PUBLIC)).raw == ALICE_PUBLIC


@pytest.mark.parametrize(
    "text",
    [
        "",
        "=",
        "A" * 42 + "=",  # 43 characters
        "A" * 44 + "=",  # 45 characters
        "A" * 43 + "=\n",  # trailing newline is the caller's business
        " " + "A" * 43 + "=",
        _b64(bytes(33)),  # 48 characters
        _b64(bytes(31)),  # 44 characters but '==' padding
        "A" * 44,  # right length, no padding
        "A" * 42 + "==",
        "A" * 43 + "A",
        "A" * 42 + "=A",
        "=" + "A" * 43,
    ],
)
def test_rejects_wrong_length_or_padding(text: str) -> None:
    with pytest.raises(InvalidKeyError):
        key_from_base64(text)


@pytest.mark.parametrize("bad", ["!", "-", "_", " ", "\t", ".", "*", "\x00", "\u00e9", "\u0410"])
@pytest.mark.parametrize("position", [0, 20, 42])
def test_rejects_non_base64_characters(bad: str, position: int) -> None:
    good = list(_b64(os.urandom(32)))
    good[position] = bad
    text = "".join(good)
    assert len(text) == 44
    with pytest.raises(InvalidKeyError):
        key_from_base64(text)


def test_rejects_non_canonical_last_character() -> None:
    # The 43rd character carries 4 data bits and 2 padding bits that must be zero.
    for _ in range(20):
        text = _b64(os.urandom(32))
        value = B64_ALPHABET.index(text[42])
        assert value & 3 == 0
        for low in (1, 2, 3):
            spelled = text[:42] + B64_ALPHABET[value | low] + "="
            assert base64.b64decode(spelled) == base64.b64decode(text)  # same bytes...
            with pytest.raises(InvalidKeyError):  # ...but not the canonical spelling
                key_from_base64(spelled)
            with pytest.raises(InvalidKeyError):
                PrivateKey.from_base64(spelled)


@pytest.mark.parametrize("value", [b"A" * 43 + b"=", None, 44, bytearray(44), ["A" * 43 + "="]])
def test_rejects_non_str(value: object) -> None:
    with pytest.raises(InvalidKeyError):
        key_from_base64(value)  # type: ignore[arg-type]


def test_invalid_key_error_is_a_value_error_naming_the_key() -> None:
    assert issubclass(InvalidKeyError, ValueError)
    with pytest.raises(InvalidKeyError, match="preshared key"):
        PresharedKey.from_base64("nope")
    with pytest.raises(InvalidKeyError, match="public key"):
        PublicKey.from_base64("nope")
    with pytest.raises(InvalidKeyError, match="private key"):
        PrivateKey.from_base64("nope")


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_raw_keys_must_be_32_bytes(length: int) -> None:
    raw = bytes(length)
    for make in (PublicKey, PrivateKey, PresharedKey, key_to_base64):
        with pytest.raises(InvalidKeyError):
            make(raw)


# --------------------------------------------------------------------------- clamping


def _assert_clamped(raw: bytes) -> None:
    assert len(raw) == 32
    assert raw[0] & 0b111 == 0  # multiple of the cofactor 8
    assert raw[31] & 0x80 == 0  # bit 255 cleared
    assert raw[31] & 0x40 == 0x40  # bit 254 set


def test_generated_keys_are_clamped() -> None:
    for _ in range(100):
        key = PrivateKey.generate()
        _assert_clamped(key.raw)
        _assert_clamped(key_from_base64(key.to_base64()))


def test_clamp_follows_rfc7748() -> None:
    assert clamp(b"\xff" * 32) == b"\xf8" + b"\xff" * 30 + b"\x7f"
    assert clamp(bytes(32)) == bytes(31) + b"\x40"
    for _ in range(50):
        raw = os.urandom(32)
        out = clamp(raw)
        _assert_clamped(out)
        assert out[1:31] == raw[1:31]
        assert out[0] == raw[0] & 248
        assert out[31] == (raw[31] & 127) | 64
        assert clamp(out) == out


def test_private_key_stores_the_clamped_form() -> None:
    raw = b"\xff" * 32
    key = PrivateKey(raw)
    assert key.raw == clamp(raw)
    assert key == PrivateKey(clamp(raw))
    assert key.public_key == PrivateKey(clamp(raw)).public_key


def test_generated_keys_differ() -> None:
    assert len({PrivateKey.generate().raw for _ in range(20)}) == 20
    assert len({PresharedKey.generate().raw for _ in range(20)}) == 20


# --------------------------------------------------------------------------- RFC 7748


def test_rfc7748_public_keys() -> None:
    assert PrivateKey(ALICE_PRIVATE).public_key.raw == ALICE_PUBLIC
    assert PrivateKey(BOB_PRIVATE).public_key.raw == BOB_PUBLIC


def test_rfc7748_shared_secret() -> None:
    alice, bob = PrivateKey(ALICE_PRIVATE), PrivateKey(BOB_PRIVATE)
    assert alice.exchange(BOB_PUBLIC) == SHARED_SECRET
    assert bob.exchange(ALICE_PUBLIC) == SHARED_SECRET
    assert dh(alice.x25519, BOB_PUBLIC) == SHARED_SECRET


def test_rfc7748_keys_through_base64() -> None:
    alice = PrivateKey.from_base64(_b64(clamp(ALICE_PRIVATE)))
    assert alice.public_key == PublicKey.from_base64(_b64(ALICE_PUBLIC))
    assert str(alice.public_key) == _b64(ALICE_PUBLIC)


# --------------------------------------------------------------------------- repr, eq


def test_private_key_repr_hides_secret() -> None:
    key = PrivateKey.generate()
    secret = key.to_base64()
    for shown in (repr(key), str(key), f"{key}", f"{key!r}"):
        assert secret not in shown
        assert key.raw.hex() not in shown
        assert secret[:20] not in shown
    assert key.public_key.to_base64() in repr(key)


def test_preshared_key_repr_hides_secret() -> None:
    psk = PresharedKey.generate()
    secret = psk.to_base64()
    for shown in (repr(psk), str(psk), f"{psk}"):
        assert secret not in shown
        assert secret[:20] not in shown
        assert psk.raw.hex() not in shown
    assert "hidden" in repr(psk)
    assert "zero" in repr(PresharedKey.ZERO)


def test_public_key_shows_itself() -> None:
    pub = PublicKey(ALICE_PUBLIC)
    assert str(pub) == _b64(ALICE_PUBLIC)
    assert _b64(ALICE_PUBLIC) in repr(pub)
    assert pub.hex() == ALICE_PUBLIC.hex()


def test_equality_and_hash() -> None:
    a1, a2 = PublicKey(ALICE_PUBLIC), PublicKey(bytes(ALICE_PUBLIC))
    b = PublicKey(BOB_PUBLIC)
    assert a1 == a2 and hash(a1) == hash(a2)
    assert a1 != b
    assert len({a1, a2, b}) == 2
    assert a1 != ALICE_PUBLIC  # not equal to its raw bytes

    p1, p2 = PrivateKey(ALICE_PRIVATE), PrivateKey.from_base64(_b64(clamp(ALICE_PRIVATE)))
    assert p1 == p2 and hash(p1) == hash(p2)
    assert p1 != PrivateKey(BOB_PRIVATE)
    assert p1 != p1.public_key

    s1, s2 = PresharedKey(b"\x07" * 32), PresharedKey(b"\x07" * 32)
    assert s1 == s2 and hash(s1) == hash(s2)
    assert s1 != PresharedKey.ZERO
    assert PresharedKey(bytes(32)) == PresharedKey.ZERO
    assert PresharedKey.ZERO.is_zero and not s1.is_zero
    # Same 32 bytes, different kinds of key: never equal.
    assert PublicKey(b"\x07" * 32) != s1


def test_public_key_raw_is_immutable_copy() -> None:
    buf = bytearray(ALICE_PUBLIC)
    pub = PublicKey(bytes(buf))
    buf[0] ^= 1
    assert pub.raw == ALICE_PUBLIC
    assert isinstance(pub.raw, bytes)


# --------------------------------------------------------------------------- low order


@pytest.mark.parametrize("name", sorted(LOW_ORDER_POINTS))
def test_low_order_points_are_detected(name: str) -> None:
    point = LOW_ORDER_POINTS[name]
    assert is_low_order(point)
    for key in (PrivateKey.generate(), PrivateKey(ALICE_PRIVATE)):
        with pytest.raises(LowOrderPointError):
            key.exchange(point)
        with pytest.raises(LowOrderPointError):
            dh(key.x25519, point)


def test_low_order_point_error_is_a_value_error() -> None:
    assert issubclass(LowOrderPointError, ValueError)


def test_ordinary_public_keys_are_not_low_order() -> None:
    assert not is_low_order(ALICE_PUBLIC)
    assert not is_low_order(BOB_PUBLIC)
    assert not is_low_order((9).to_bytes(32, "little"))  # the base point
    for _ in range(20):
        pub = PrivateKey.generate().public_key.raw
        assert not is_low_order(pub)
    for _ in range(20):
        assert not is_low_order(os.urandom(32))


# --------------------------------------------------------------------------- wg interop


def _wg(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert WG is not None
    return subprocess.run(
        [WG, *args], input=stdin, capture_output=True, text=True, timeout=10, check=False
    )


@needs_wg
def test_wg_pubkey_of_our_keys() -> None:
    for _ in range(20):
        key = PrivateKey.generate()
        done = _wg("pubkey", stdin=key.to_base64() + "\n")
        assert done.returncode == 0, done.stderr
        assert done.stdout == key.public_key.to_base64() + "\n"


@needs_wg
def test_our_pubkey_of_wg_keys() -> None:
    for _ in range(20):
        gen = _wg("genkey")
        assert gen.returncode == 0
        text = gen.stdout.strip()
        key = PrivateKey.from_base64(text)
        assert key.to_base64() == text  # wg stores keys clamped, as we do
        _assert_clamped(key.raw)
        done = _wg("pubkey", stdin=gen.stdout)
        assert done.returncode == 0
        assert key.public_key.to_base64() == done.stdout.strip()
        assert PublicKey.from_base64(done.stdout.strip()) == key.public_key


@needs_wg
def test_wg_genpsk_parses() -> None:
    for _ in range(20):
        done = _wg("genpsk")
        assert done.returncode == 0
        text = done.stdout.strip()
        assert len(text) == 44
        assert PresharedKey.from_base64(text).to_base64() == text


@needs_wg
def test_wg_and_we_reject_the_same_non_canonical_spellings() -> None:
    text = PrivateKey.generate().to_base64()
    value = B64_ALPHABET.index(text[42])
    candidates = [text[:42] + B64_ALPHABET[value | low] + "=" for low in (1, 2, 3)]
    candidates += [text[:43], text[:42] + "==", "!" + text[1:]]
    for bad in candidates:
        assert _wg("pubkey", stdin=bad + "\n").returncode != 0, bad
        with pytest.raises(InvalidKeyError):
            PrivateKey.from_base64(bad)
    assert _wg("pubkey", stdin=text + "\n").returncode == 0
