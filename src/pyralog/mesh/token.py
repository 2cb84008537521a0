"""Join tokens: what ``pyralog-admin token create`` prints and an enrolling node needs.

A token carries everything a new node needs to reach the coordinator over WireGuard and
prove itself there, and nothing the coordinator must keep secret from it:

- a 32-byte secret (the only secret part);
- the coordinator's WireGuard public key, its mesh address, API port and UDP endpoints;
- the cluster id.

Text form: ``pyralog-join-1.`` + base64url (no padding) of a compact binary encoding,
so it survives shells, YAML and environment variables. From the secret come, with
BLAKE2s and distinct labels: the token's id (public, shown in listings and audit lines),
the handshake proof key (``pyralog.wireguard.proof``: mac2 of the node's initiations) and
the preshared key of the enrollment session. The coordinator stores only those derived
values, never the secret, so a leaked store does not yield usable token text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
import struct
from dataclasses import dataclass

from pyralog.wireguard.endpoint import EndpointError, parse_endpoint
from pyralog.wireguard.keys import InvalidKeyError, PresharedKey, PublicKey, is_low_order

PREFIX = "pyralog-join-1."
SECRET_SIZE = 32
MAX_TEXT = 4096  # a token is ~200 characters; anything far longer is not one
# base64url without padding; the decoder would otherwise skip other characters silently.
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


class TokenError(ValueError):
    """A token that cannot be used; the message says what is wrong with it."""


def _derive(label: bytes, secret: bytes) -> bytes:
    return hashlib.blake2s(secret, key=label, digest_size=32).digest()


def token_id(secret: bytes) -> str:
    return _derive(b"pyralog token id", secret)[:8].hex()


def proof_key(secret: bytes) -> bytes:
    return _derive(b"pyralog token mac2", secret)


def enrollment_psk(secret: bytes) -> PresharedKey:
    return PresharedKey(_derive(b"pyralog token psk", secret))


@dataclass(frozen=True)
class JoinToken:
    secret: bytes
    coordinator_key: PublicKey
    coordinator_address: ipaddress.IPv4Address | ipaddress.IPv6Address
    endpoints: tuple[tuple[str, int], ...]
    cluster_id: str
    api_port: int = 7700

    @property
    def id(self) -> str:
        return token_id(self.secret)

    def encode(self) -> str:
        addr = self.coordinator_address.packed
        cluster = self.cluster_id.encode()
        parts = [
            self.secret,
            self.coordinator_key.raw,
            struct.pack("!B", len(addr)),
            addr,
            struct.pack("!H", self.api_port),
            struct.pack("!B", len(cluster)),
            cluster,
            struct.pack("!B", len(self.endpoints)),
        ]
        for host, port in self.endpoints:
            text = host.encode()
            parts += [struct.pack("!BH", len(text), port), text]
        body = b"".join(parts)
        return PREFIX + base64.urlsafe_b64encode(body).rstrip(b"=").decode()

    @classmethod
    def decode(cls, text: str) -> JoinToken:
        text = text.strip()
        if len(text) > MAX_TEXT:
            raise TokenError(f"token is {len(text)} characters long; not a join token")
        if not text.startswith(PREFIX):
            raise TokenError(f"not a join token (it must start with {PREFIX!r})")
        encoded = text[len(PREFIX) :]
        if not _BASE64URL.fullmatch(encoded) or len(encoded) % 4 == 1:
            raise TokenError("join token is not valid base64url")
        try:
            body = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (ValueError, binascii.Error):
            raise TokenError("join token is not valid base64url") from None
        try:
            return cls._unpack(body)
        except (IndexError, struct.error, UnicodeDecodeError):
            raise TokenError("join token is truncated or corrupt") from None

    @classmethod
    def _unpack(cls, body: bytes) -> JoinToken:
        pos = 0

        def take(n: int) -> bytes:
            nonlocal pos
            if pos + n > len(body):
                raise IndexError
            chunk = body[pos : pos + n]
            pos += n
            return chunk

        secret = take(SECRET_SIZE)
        try:
            key = PublicKey(take(32))
        except InvalidKeyError as e:
            raise TokenError(f"join token: coordinator key: {e}") from None
        if is_low_order(key.raw):
            raise TokenError("join token: coordinator key is a low-order point (not a key)")
        addr_len = take(1)[0]
        if addr_len not in (4, 16):
            raise TokenError("join token: coordinator address is neither IPv4 nor IPv6")
        address = ipaddress.ip_address(take(addr_len))
        (api_port,) = struct.unpack("!H", take(2))
        if api_port == 0:
            raise TokenError("join token: API port 0")
        cluster = take(take(1)[0]).decode()
        endpoints = []
        for _ in range(take(1)[0]):
            length, port = struct.unpack("!BH", take(3))
            host = take(length).decode()
            try:
                spelled = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                parse_endpoint(spelled, allow_names=True)
            except EndpointError as e:
                raise TokenError(f"join token: endpoint {host}:{port}: {e}") from None
            endpoints.append((host, port))
        if pos != len(body):
            raise TokenError("join token has trailing bytes")
        if not endpoints:
            raise TokenError("join token names no coordinator endpoint")
        return cls(secret, key, address, tuple(endpoints), cluster, api_port)
