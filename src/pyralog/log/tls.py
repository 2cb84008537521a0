"""Mutual TLS for the Kafka listener and its clients: off unless asked for.

Pyralog's own connections run over WireGuard, which already authenticates and encrypts
every byte. This module exists for the clients that cannot join the mesh (and for the
benchmark that compares the two): ``pyralog broker --tls-cert FILE --tls-key FILE
--tls-ca FILE`` serves TLS 1.3 only and requires a client certificate signed by the CA;
the same three files give a broker's followers, and any ``PyralogClient``, the client
side. Everything is Python's ``ssl`` over kernel sockets; the files are checked here,
one at a time, so that a mistake is one line naming the flag and the file.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization


class TlsError(ValueError):
    """A TLS flag or file that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files: this end's certificate (chain) and key, and the CA that signs peers."""

    cert: Path
    key: Path
    ca: Path


FLAGS = ("--tls-cert", "--tls-key", "--tls-ca")


def tls_files(cert: str | None, key: str | None, ca: str | None) -> TlsFiles | None:
    """The three flags' files, checked; None when none was given (TLS off)."""
    given = dict(zip(FLAGS, (cert, key, ca), strict=True))
    if not any(given.values()):
        return None
    missing = [flag for flag, value in given.items() if not value]
    if missing:
        raise TlsError(f"{' and '.join(missing)} missing: TLS needs all of {', '.join(FLAGS)}")
    files = TlsFiles(Path(cert or ""), Path(key or ""), Path(ca or ""))
    _check(files)
    return files


def _read(flag: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise TlsError(f"{flag} {path}: {e.strerror or e}") from None


def _check(files: TlsFiles) -> None:
    """Each file readable and what its flag says it is, the key matching the certificate."""
    cert_pem = _read("--tls-cert", files.cert)
    key_pem = _read("--tls-key", files.key)
    ca_pem = _read("--tls-ca", files.ca)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise TlsError(f"--tls-cert {files.cert}: not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise TlsError(f"--tls-key {files.key}: not an unencrypted PEM private key") from None
    if key.public_key() != cert.public_key():
        raise TlsError(f"--tls-key {files.key}: does not match the certificate {files.cert}")
    try:
        x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise TlsError(f"--tls-ca {files.ca}: not a PEM certificate") from None


def _context(purpose: int, files: TlsFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as e:
        raise TlsError(f"--tls-cert {files.cert} / --tls-key {files.key}: {e}") from None
    try:
        ctx.load_verify_locations(cafile=files.ca)
    except (OSError, ssl.SSLError) as e:
        raise TlsError(f"--tls-ca {files.ca}: {e}") from None
    return ctx


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """TLS 1.3 only; a client certificate is required and must verify against the CA."""
    return _context(ssl.PROTOCOL_TLS_SERVER, files)


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """TLS 1.3 only, presenting our certificate; the broker's must verify against the CA
    and name the host we connect to (a DNS or IP subject alternative name)."""
    ctx = _context(ssl.PROTOCOL_TLS_CLIENT, files)
    ctx.check_hostname = True
    return ctx
