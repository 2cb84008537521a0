"""An append-only audit trail: hash-chained, every entry signed with ML-DSA-65.

One JSON object per line. Each entry carries its sequence number, time, kind
("enrolled", "revoked", "key-rotated", "policy-changed", "session", ...), data, the
SHA-256 of the previous entry's canonical bytes, and an ML-DSA-65 signature (FIPS 204,
from ``cryptography``) over its own canonical bytes without the signature. So:

- an edited entry fails its signature;
- a removed entry breaks the next one's ``prev`` hash and the sequence;
- reordered entries break both;
- a forged entry needs the writer's private key, which never leaves its machine (a
  0600 seed file); verifiers need only the public key (registered with the
  coordinator, or given by file).

``verify`` names the first bad entry and why. A torn last line (a crash mid-append) is
reported as such; ``AuditLog`` refuses to append after any damage, so nothing is ever
chained onto a bad entry. Sans-IO apart from the file appends in ``AuditLog``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa

GENESIS = "0" * 64  # the "previous hash" of the first entry


class AuditError(Exception):
    """The trail cannot be read or written; the message says where and why."""


def canonical(entry: dict[str, Any]) -> bytes:
    body = {k: v for k, v in entry.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(entry: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(entry)).hexdigest()


# -- keys ----------------------------------------------------------------------------------


def new_signing_key() -> mldsa.MLDSA65PrivateKey:
    return mldsa.MLDSA65PrivateKey.generate()


def load_or_create_signing_key(path: Path) -> mldsa.MLDSA65PrivateKey:
    """The 32-byte seed in ``path`` (0600), made on first use with its public key in
    ``audit.pub`` beside it."""
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise AuditError(f"{path}: readable by others; chmod 600 it")
        try:
            seed = base64.b64decode(path.read_text().strip(), validate=True)
            return mldsa.MLDSA65PrivateKey.from_seed_bytes(seed)
        except (ValueError, OSError) as e:
            raise AuditError(f"{path}: not an audit signing key ({e})") from None
    key = new_signing_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(key.private_bytes_raw()).decode() + "\n")
    # What verifiers need, beside it (pyralog-admin audit verify finds it there).
    path.with_name("audit.pub").write_text(public_text(key) + "\n", encoding="utf-8")
    return key


def public_text(key: mldsa.MLDSA65PrivateKey | mldsa.MLDSA65PublicKey) -> str:
    public = key.public_key() if isinstance(key, mldsa.MLDSA65PrivateKey) else key
    return base64.b64encode(public.public_bytes_raw()).decode()


def public_from_text(text: str) -> mldsa.MLDSA65PublicKey:
    try:
        return mldsa.MLDSA65PublicKey.from_public_bytes(
            base64.b64decode(text.strip(), validate=True)
        )
    except ValueError as e:
        raise AuditError(f"not an ML-DSA-65 public key ({e})") from None


# -- entries -------------------------------------------------------------------------------


def make_entry(key: mldsa.MLDSA65PrivateKey, seq: int, prev: str, now: float, kind: str,
               data: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    entry: dict[str, Any] = {"seq": seq, "time": round(now, 6), "kind": kind, "data": data,
                             "prev": prev}  # fmt: skip
    entry["sig"] = base64.b64encode(key.sign(canonical(entry))).decode()
    return entry


@dataclass(frozen=True)
class Finding:
    line: int  # 1-based line of the file
    seq: int | None
    why: str

    def __str__(self) -> str:
        what = f"entry {self.seq}" if self.seq is not None else "an entry"
        return f"line {self.line} ({what}): {self.why}"


def parse_lines(lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """(line number, entry or None, the reason it is not one)."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            yield n, None, "not a JSON entry (torn or edited)"
            continue
        if not isinstance(entry, dict) or not {"seq", "time", "kind", "prev", "sig"} <= set(entry):
            yield n, None, "not an audit entry (fields missing)"
            continue
        yield n, entry, ""


def verify(lines: Iterable[str], public: mldsa.MLDSA65PublicKey) -> tuple[int, Finding | None]:
    """How many entries verify in a row from the start, and the first bad one (None if
    the whole trail is good)."""
    prev, expected, good = GENESIS, 0, 0
    for n, entry, why in parse_lines(lines):
        if entry is None:
            return good, Finding(n, None, why)
        seq = entry.get("seq")
        try:
            public.verify(base64.b64decode(entry["sig"]), canonical(entry))
        except (InvalidSignature, ValueError, TypeError):
            return good, Finding(n, seq, "signature does not verify (edited or forged)")
        if seq != expected:
            how = "removed" if isinstance(seq, int) and seq > expected else "reordered"
            return good, Finding(n, seq, f"expected entry {expected}: entries {how}")
        if entry["prev"] != prev:
            return good, Finding(
                n, seq, "previous-entry hash does not match (removed or reordered)"
            )
        prev, expected, good = digest(entry), expected + 1, good + 1
    return good, None


def entries(lines: Iterable[str]) -> list[dict[str, Any]]:
    return [e for _, e, _ in parse_lines(lines) if e is not None]


class AuditLog:
    """Appends signed entries to a file, chained onto the last good one."""

    def __init__(self, path: Path, key: mldsa.MLDSA65PrivateKey) -> None:
        self.path = path
        self.key = key
        self.seq, self.prev = 0, GENESIS
        if path.exists():
            lines = path.read_text(encoding="utf-8").splitlines()
            good, bad = verify(lines, key.public_key())
            if bad is not None:
                raise AuditError(f"{path}: {bad}; not appending to a damaged trail")
            if good:
                last = entries(lines)[-1]
                self.seq, self.prev = good, digest(last)

    def append(self, kind: str, data: dict[str, Any], now: float) -> dict[str, Any]:
        entry = make_entry(self.key, self.seq, self.prev, now, kind, data)
        line = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self.seq, self.prev = self.seq + 1, digest(entry)
        return entry


# -- the compliance report -----------------------------------------------------------------


def report(lines: list[str], public: mldsa.MLDSA65PublicKey, start: float, end: float,
           ) -> dict[str, Any]:  # fmt: skip
    """The document's fields for [start, end): sessions ("session" entries: a peer, its
    handshakes and bytes, and whether it was encrypted), and an honest status."""
    good, bad = verify(lines, public)
    period = [e for e in entries(lines) if start <= float(e["time"]) < end]
    sessions = [e for e in period if e["kind"] == "session"]
    peers = {str(e["data"].get("peer")) for e in sessions}
    unencrypted = [e for e in sessions if e["data"].get("encrypted") is False]
    status = "compliant"
    reasons = []
    if bad is not None:
        status, reasons = "non-compliant", [f"the audit chain does not verify: {bad}"]
    if unencrypted:
        status = "non-compliant"
        reasons.append(f"{len(unencrypted)} sessions ran unencrypted")
    kinds = {
        k: sum(1 for e in period if e["kind"] == k) for k in sorted({e["kind"] for e in period})
    }
    return {
        "period": {"from": start, "to": end},
        "entries": len(period),
        "verified_entries": good,
        "total_connections": len(sessions),
        "unique_peers": len(peers),
        "encrypted_bytes": sum(
            int(e["data"].get("rx_bytes", 0)) + int(e["data"].get("tx_bytes", 0))
            for e in sessions
            if e["data"].get("encrypted", True)
        ),
        "handshakes": sum(int(e["data"].get("handshakes", 0)) for e in sessions),
        "events": kinds,
        "compliance_status": status,
        "reasons": reasons,
    }
