"""The whitepaper's primitives (section 5.4) against published test vectors.

Sources of the constants below:

* RFC 7693, Appendix B: BLAKE2s-256("abc").
* BLAKE2 reference package, testvectors/blake2s-kat.txt (keyed, key = 00..1f, input =
  00..(n-1)); the same values appear in Bouncy Castle's Blake2sDigestTest and the Linux
  kernel's crypto test manager.
* RFC 8439, section 2.8.2 and Appendix A.5: ChaCha20-Poly1305 AEAD.
* draft-irtf-cfrg-xchacha-03, Appendix A.3.1: XChaCha20-Poly1305 AEAD.
* The Noise initial chaining key and hash that every WireGuard implementation hard codes
  (wireguard-go's InitialChainKey/InitialHash, the kernel's noise_init, boringtun).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from pyralog.wireguard import tai64n
from pyralog.wireguard.constants import CONSTRUCTION, IDENTIFIER, MAC_SIZE
from pyralog.wireguard.crypto import (
    AuthenticationError,
    aead_decrypt,
    aead_encrypt,
    aead_nonce,
    hash_,
    hmac,
    kdf1,
    kdf2,
    kdf3,
    mac,
    xaead_decrypt,
    xaead_encrypt,
)

# --------------------------------------------------------------------------- BLAKE2s

# RFC 7693 Appendix B.
RFC7693_ABC = bytes.fromhex("508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982")

# blake2s-kat.txt, keyed: key = 00..1f, input = bytes(range(n)), 32-byte output.
KAT_KEY = bytes(range(32))
KEYED_KAT: dict[int, bytes] = {
    0: bytes.fromhex("48a8997da407876b3d79c0d92325ad3b89cbb754d86ab71aee047ad345fd2c49"),
    1: bytes.fromhex("40d15fee7c328830166ac3f918650f807e7e01e177258cdc0a39b11f598066f1"),
    2: bytes.fromhex("6bb71300644cd3991b26ccd4d274acd1adeab8b1d7914546c1198bbe9fc9d803"),
    65: bytes.fromhex("21fe0ceb0052be7fb0f004187cacd7de67fa6eb0938d927677f2398c132317a8"),
}


def test_hash_rfc7693_abc() -> None:
    assert hash_(b"abc") == RFC7693_ABC


def test_hash_concatenates_its_parts() -> None:
    assert hash_(b"a", b"", b"bc") == RFC7693_ABC
    assert hash_() == hashlib.blake2s(b"").digest()
    assert len(hash_(b"x")) == 32


@pytest.mark.parametrize("n", sorted(KEYED_KAT))
def test_keyed_blake2s_reference_kat(n: int) -> None:
    # Pins the keyed mode of the BLAKE2s that ``mac`` is built on.
    data = bytes(range(n))
    assert hashlib.blake2s(data, key=KAT_KEY).digest() == KEYED_KAT[n]


@pytest.mark.parametrize("n", sorted(KEYED_KAT))
def test_mac_is_keyed_blake2s_with_16_byte_output(n: int) -> None:
    data = bytes(range(n))
    out = mac(KAT_KEY, data)
    assert len(out) == MAC_SIZE == 16
    assert out == hashlib.blake2s(data, key=KAT_KEY, digest_size=16).digest()
    # The output length is a BLAKE2s parameter, not a truncation of the 32-byte digest.
    assert out != KEYED_KAT[n][:16]


def test_mac_depends_on_key_and_data() -> None:
    key = bytes(32)
    assert mac(key, b"a") != mac(key, b"b")
    assert mac(key, b"a") != mac(b"\x01" + key[1:], b"a")


# --------------------------------------------------------------------------- HMAC, KDF


def rfc2104_hmac_blake2s(key: bytes, data: bytes) -> bytes:
    """HMAC-BLAKE2s-256 from scratch: RFC 2104 with BLAKE2s's 64-byte block."""
    block = 64
    if len(key) > block:
        key = hashlib.blake2s(key).digest()
    key = key.ljust(block, b"\x00")
    ipad = bytes(b ^ 0x36 for b in key)
    opad = bytes(b ^ 0x5C for b in key)
    inner = hashlib.blake2s(ipad + data).digest()
    return hashlib.blake2s(opad + inner).digest()


HMAC_CASES: list[tuple[bytes, bytes]] = [
    (b"", b""),
    (b"key", b"The quick brown fox jumps over the lazy dog"),
    (bytes(32), b"\x01"),
    (bytes(range(64)), bytes(range(200))),  # key exactly one block
    (bytes(range(65)), b"data"),  # one byte over: hashed first
    (bytes(range(100)), b""),
    (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First"),
    (os.urandom(32), os.urandom(1000)),
]


@pytest.mark.parametrize(("key", "data"), HMAC_CASES)
def test_hmac_matches_rfc2104_construction(key: bytes, data: bytes) -> None:
    assert hmac(key, data) == rfc2104_hmac_blake2s(key, data)
    assert len(hmac(key, data)) == 32


def test_hmac_long_key_equals_hmac_with_hashed_key() -> None:
    long_key = os.urandom(100)
    assert hmac(long_key, b"m") == hmac(hashlib.blake2s(long_key).digest(), b"m")


def whitepaper_kdf(key: bytes, data: bytes, n: int) -> list[bytes]:
    """KDF_n per whitepaper 5.4: tau0 = HMAC(key, input), tau_i = HMAC(tau0, tau_{i-1} || i)."""
    t0 = rfc2104_hmac_blake2s(key, data)
    out: list[bytes] = []
    prev = b""
    for i in range(1, n + 1):
        prev = rfc2104_hmac_blake2s(t0, prev + bytes([i]))
        out.append(prev)
    return out


KDF_CASES: list[tuple[bytes, bytes]] = [
    (bytes(32), b""),
    (hashlib.blake2s(CONSTRUCTION).digest(), bytes(range(32))),
    (os.urandom(32), os.urandom(32)),
    (os.urandom(32), os.urandom(77)),
]


@pytest.mark.parametrize(("key", "data"), KDF_CASES)
def test_kdf_matches_whitepaper_definition(key: bytes, data: bytes) -> None:
    t1, t2, t3 = whitepaper_kdf(key, data, 3)
    assert kdf1(key, data) == t1
    assert kdf2(key, data) == (t1, t2)
    assert kdf3(key, data) == (t1, t2, t3)
    assert len({t1, t2, t3}) == 3


# --------------------------------------------------------------------------- AEAD

# RFC 8439 section 2.8.2. Its nonce (07000000 || 4041424344454647) does not start with
# 32 zero bits, so it is checked against the library directly.
RFC8439_282_KEY = bytes(range(0x80, 0xA0))
RFC8439_282_NONCE = bytes.fromhex("070000004041424344454647")
RFC8439_282_AAD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
SUNSCREEN = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
    b"the future, sunscreen would be it."
)
RFC8439_282_CT = bytes.fromhex(
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
    "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
    "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
    "3ff4def08e4b7a9de576d26586cec64b6116"
)
RFC8439_282_TAG = bytes.fromhex("1ae10b594f09e26a7e902ecbd0600691")

# RFC 8439 Appendix A.5. Its nonce is 00000000 || 0102030405060708: exactly the protocol
# layout (32 zero bits, then a 64-bit little-endian counter), counter 0x0807060504030201.
A5_KEY = bytes.fromhex("1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0")
A5_NONCE = bytes.fromhex("000000000102030405060708")
A5_COUNTER = 0x0807060504030201
A5_AAD = bytes.fromhex("f33388860000000000004e91")
A5_PLAINTEXT = bytes.fromhex(
    "496e7465726e65742d4472616674732061726520647261667420646f63756d65"
    "6e74732076616c696420666f722061206d6178696d756d206f6620736978206d"
    "6f6e74687320616e64206d617920626520757064617465642c207265706c6163"
    "65642c206f72206f62736f6c65746564206279206f7468657220646f63756d65"
    "6e747320617420616e792074696d652e20497420697320696e617070726f7072"
    "6961746520746f2075736520496e7465726e65742d4472616674732061732072"
    "65666572656e6365206d6174657269616c206f7220746f206369746520746865"
    "6d206f74686572207468616e206173202fe2809c776f726b20696e2070726f67"
    "726573732e2fe2809d"
)
A5_CT = bytes.fromhex(
    "64a0861575861af460f062c79be643bd5e805cfd345cf389f108670ac76c8cb2"
    "4c6cfc18755d43eea09ee94e382d26b0bdb7b73c321b0100d4f03b7f355894cf"
    "332f830e710b97ce98c8a84abd0b948114ad176e008d33bd60f982b1ff37c855"
    "9797a06ef4f0ef61c186324e2b3506383606907b6a7c02b0f9f6157b53c867e4"
    "b9166c767b804d46a59b5216cde7a4e99040c5a40433225ee282a1b0a06c523e"
    "af4534d7f83fa1155b0047718cbc546a0d072b04b3564eea1b422273f548271a"
    "0bb2316053fa76991955ebd63159434ecebb4e466dae5a1073a6727627097a10"
    "49e617d91d361094fa68f0ff77987130305beaba2eda04df997b714d6c6f2c29"
    "a6ad5cb4022b02709b"
)
A5_TAG = bytes.fromhex("eead9d67890cbb22392336fea1851f38")


def test_rfc8439_282_vector_with_the_library() -> None:
    aead = ChaCha20Poly1305(RFC8439_282_KEY)
    sealed = aead.encrypt(RFC8439_282_NONCE, SUNSCREEN, RFC8439_282_AAD)
    assert sealed == RFC8439_282_CT + RFC8439_282_TAG


def test_aead_nonce_layout() -> None:
    assert aead_nonce(0) == bytes(12)
    assert aead_nonce(1) == bytes(4) + b"\x01" + bytes(7)
    assert aead_nonce(0x0102) == bytes(4) + b"\x02\x01" + bytes(6)
    assert aead_nonce(2**64 - 1) == bytes(4) + b"\xff" * 8
    assert aead_nonce(A5_COUNTER) == A5_NONCE
    for counter in (0, 7, 2**32, 2**60, 2**64 - 2**13 - 1):
        nonce = aead_nonce(counter)
        assert len(nonce) == 12
        assert nonce[:4] == bytes(4)
        assert struct.unpack("<Q", nonce[4:])[0] == counter


def test_aead_rfc8439_a5_decrypts() -> None:
    assert aead_decrypt(A5_KEY, A5_COUNTER, A5_CT + A5_TAG, A5_AAD) == A5_PLAINTEXT


def test_aead_rfc8439_a5_encrypts() -> None:
    assert aead_encrypt(A5_KEY, A5_COUNTER, A5_PLAINTEXT, A5_AAD) == A5_CT + A5_TAG


def test_aead_agrees_with_library_on_protocol_nonce() -> None:
    key = os.urandom(32)
    for counter in (0, 1, 255, 2**63 + 5):
        sealed = aead_encrypt(key, counter, b"payload", b"ad")
        assert sealed == ChaCha20Poly1305(key).encrypt(aead_nonce(counter), b"payload", b"ad")


def test_aead_empty_plaintext_is_a_bare_tag() -> None:
    key = os.urandom(32)
    sealed = aead_encrypt(key, 3, b"", b"")
    assert len(sealed) == 16
    assert aead_decrypt(key, 3, sealed, b"") == b""


def test_aead_tampered_ciphertext_or_tag_fails() -> None:
    sealed = A5_CT + A5_TAG
    for i in range(len(sealed)):
        for bit in (0x01, 0x80):
            bad = bytearray(sealed)
            bad[i] ^= bit
            with pytest.raises(AuthenticationError):
                aead_decrypt(A5_KEY, A5_COUNTER, bytes(bad), A5_AAD)


def test_aead_tampered_ad_fails() -> None:
    sealed = A5_CT + A5_TAG
    for i in range(len(A5_AAD)):
        bad = bytearray(A5_AAD)
        bad[i] ^= 0x01
        with pytest.raises(AuthenticationError):
            aead_decrypt(A5_KEY, A5_COUNTER, sealed, bytes(bad))
    with pytest.raises(AuthenticationError):
        aead_decrypt(A5_KEY, A5_COUNTER, sealed, A5_AAD + b"\x00")
    with pytest.raises(AuthenticationError):
        aead_decrypt(A5_KEY, A5_COUNTER, sealed, b"")


def test_aead_wrong_counter_key_or_truncation_fails() -> None:
    sealed = A5_CT + A5_TAG
    with pytest.raises(AuthenticationError):
        aead_decrypt(A5_KEY, A5_COUNTER + 1, sealed, A5_AAD)
    with pytest.raises(AuthenticationError):
        aead_decrypt(bytes(32), A5_COUNTER, sealed, A5_AAD)
    with pytest.raises(AuthenticationError):
        aead_decrypt(A5_KEY, A5_COUNTER, sealed[:-1], A5_AAD)
    with pytest.raises(AuthenticationError):
        aead_decrypt(A5_KEY, A5_COUNTER, b"", A5_AAD)


# --------------------------------------------------------------------------- XAEAD

# draft-irtf-cfrg-xchacha-03, Appendix A.3.1.
X_KEY = bytes(range(0x80, 0xA0))
X_NONCE = bytes(range(0x40, 0x58))
X_AAD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
X_CT = bytes.fromhex(
    "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
    "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
    "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
    "21f9664c97637da9768812f615c68b13b52e"
)
X_TAG = bytes.fromhex("c0875924c1c7987947deafd8780acf49")


def test_xaead_draft_a31_encrypts() -> None:
    assert len(X_NONCE) == 24
    assert xaead_encrypt(X_KEY, X_NONCE, SUNSCREEN, X_AAD) == X_CT + X_TAG


def test_xaead_draft_a31_decrypts() -> None:
    assert xaead_decrypt(X_KEY, X_NONCE, X_CT + X_TAG, X_AAD) == SUNSCREEN


def test_xaead_tampering_fails() -> None:
    sealed = X_CT + X_TAG
    for i in range(len(sealed)):
        bad = bytearray(sealed)
        bad[i] ^= 0x04
        with pytest.raises(AuthenticationError):
            xaead_decrypt(X_KEY, X_NONCE, bytes(bad), X_AAD)
    for i in range(len(X_AAD)):
        bad_ad = bytearray(X_AAD)
        bad_ad[i] ^= 0x04
        with pytest.raises(AuthenticationError):
            xaead_decrypt(X_KEY, X_NONCE, sealed, bytes(bad_ad))
    for i in range(len(X_NONCE)):
        bad_nonce = bytearray(X_NONCE)
        bad_nonce[i] ^= 0x04
        with pytest.raises(AuthenticationError):
            xaead_decrypt(X_KEY, bytes(bad_nonce), sealed, X_AAD)
    with pytest.raises(AuthenticationError):
        xaead_decrypt(bytes(32), X_NONCE, sealed, X_AAD)


def test_xaead_cookie_sized_round_trip() -> None:
    key, nonce, cookie, ad = os.urandom(32), os.urandom(24), os.urandom(16), os.urandom(16)
    sealed = xaead_encrypt(key, nonce, cookie, ad)
    assert len(sealed) == 32  # the encrypted_cookie field of a cookie reply
    assert xaead_decrypt(key, nonce, sealed, ad) == cookie


# --------------------------------------------------------------------------- Noise init

INITIAL_CHAIN_KEY_HEX = "60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36"
INITIAL_HASH_HEX = "2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3"


def test_protocol_names() -> None:
    assert CONSTRUCTION == b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
    assert IDENTIFIER == b"WireGuard v1 zx2c4 Jason@zx2c4.com"


def test_noise_initial_values_recomputed_with_hashlib() -> None:
    ck = hashlib.blake2s(CONSTRUCTION).digest()
    assert ck.hex() == INITIAL_CHAIN_KEY_HEX
    assert hashlib.blake2s(ck + IDENTIFIER).digest().hex() == INITIAL_HASH_HEX
    assert hash_(CONSTRUCTION).hex() == INITIAL_CHAIN_KEY_HEX
    assert hash_(hash_(CONSTRUCTION), IDENTIFIER).hex() == INITIAL_HASH_HEX


def test_handshake_initial_values() -> None:
    from pyralog.wireguard import handshake  # imported here: a broken module fails one test

    assert handshake.INITIAL_CHAIN_KEY.hex() == INITIAL_CHAIN_KEY_HEX
    assert handshake.INITIAL_HASH.hex() == INITIAL_HASH_HEX


# --------------------------------------------------------------------------- TAI64N

WHITENER = 2**24


def test_tai64n_unix_epoch() -> None:
    stamp = tai64n.tai64n(0)
    assert stamp == bytes.fromhex("400000000000000a00000000")
    assert tai64n.SIZE == len(stamp) == 12
    assert tai64n.parse(stamp) == (0, 0)


@pytest.mark.parametrize(
    ("unix_time", "expected"),
    [
        (1, "400000000000000b00000000"),
        # 1_700_000_000 = 0x6553f100; 0.5 s = 500_000_000 ns -> 29 * 2**24 = 0x1d000000.
        (1_700_000_000.5, "400000006553f10a1d000000"),
        # 0.75 s = 750_000_000 ns -> 44 * 2**24 = 738_197_504 = 0x2c000000.
        (10.75, "40000000000000142c000000"),
        # Just under one whitening step rounds down to zero nanoseconds.
        (5 + (WHITENER - 1) / 1e9, "400000000000000f00000000"),
    ],
)
def test_tai64n_known_values(unix_time: float, expected: str) -> None:
    assert tai64n.tai64n(unix_time).hex() == expected


@pytest.mark.parametrize("unix_time", [0.001, 0.123456789, 0.5, 0.999999, 1_700_000_000.987654])
def test_tai64n_nanos_rounded_down_to_whitener(unix_time: float) -> None:
    secs, nanos = tai64n.parse(tai64n.tai64n(unix_time))
    exact = round((unix_time - int(unix_time)) * 1e9)
    assert secs == int(unix_time)
    assert nanos % WHITENER == 0
    assert nanos <= exact < nanos + WHITENER + 1000  # 1 us slack for float error
    assert nanos < 1_000_000_000


def test_tai64n_byte_order_is_time_order() -> None:
    times = [0.0, 0.02, 0.5, 0.99, 1.0, 1.02, 255.0, 256.0, 65_536.5, 1_700_000_000.0]
    times += [1_700_000_000.0 + 0.017 * i for i in range(1, 200)]
    times += [2.0**32, 2.0**32 + 0.5]
    stamps = [tai64n.tai64n(t) for t in times]
    # Each step is at least 2**24 ns, so every stamp is strictly greater than the last.
    assert all(a < b for a, b in itertools.pairwise(stamps))


def test_tai64n_close_times_never_decrease() -> None:
    base = 1_700_000_123.0
    stamps = [tai64n.tai64n(base + i * 0.001) for i in range(100)]
    assert all(a <= b for a, b in itertools.pairwise(stamps))
    assert len(set(stamps)) < len(stamps)  # 1 ms steps collapse within a 16.7 ms bucket


@pytest.mark.parametrize("unix_time", [0, 1, 59.25, 1_234_567_890.75, 4_000_000_000.5])
def test_tai64n_parse_round_trip(unix_time: float) -> None:
    stamp = tai64n.tai64n(unix_time)
    secs, nanos = tai64n.parse(stamp)
    assert secs == int(unix_time)
    assert nanos == int((unix_time - int(unix_time)) * 1e9) & ~(WHITENER - 1)
    assert stamp == struct.pack(">QI", 0x400000000000000A + secs, nanos)


@pytest.mark.parametrize("length", [0, 1, 11, 13, 16])
def test_tai64n_parse_rejects_wrong_length(length: int) -> None:
    with pytest.raises(ValueError):
        tai64n.parse(bytes(length))
