"""The audit trail: hash-chained, ML-DSA-65-signed entries; any edited, removed,
reordered, forged or torn entry is found and named, and nothing is chained onto it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyralog.mesh import audit


def _trail(tmp_path: Path, n: int = 6) -> tuple[Path, audit.AuditLog]:
    key = audit.load_or_create_signing_key(tmp_path / "audit.key")
    log = audit.AuditLog(tmp_path / "audit.jsonl", key)
    for i in range(n):
        kind = "session" if i % 2 else "enrolled"
        data = {"peer": f"node-{i % 3}", "handshakes": 2, "rx_bytes": 100, "tx_bytes": 50}
        log.append(kind, data if kind == "session" else {"node_id": f"node-{i}"}, 1000.0 + i)
    return tmp_path / "audit.jsonl", log


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_a_good_trail_verifies_and_resumes(tmp_path: Path) -> None:
    path, log = _trail(tmp_path)
    public = log.key.public_key()
    assert audit.verify(_lines(path), public) == (6, None)
    # A second writer on the same file (a restart) chains on where the first stopped.
    again = audit.AuditLog(path, audit.load_or_create_signing_key(tmp_path / "audit.key"))
    again.append("revoked", {"node_id": "node-9", "by": "root"}, 2000.0)
    assert audit.verify(_lines(path), public) == (7, None)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert oct(os.stat(tmp_path / "audit.key").st_mode & 0o777) == "0o600"


def _rewrite(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def test_an_edited_entry_is_named(tmp_path: Path) -> None:
    path, log = _trail(tmp_path)
    lines = _lines(path)
    entry = json.loads(lines[3])
    entry["data"]["rx_bytes"] = 1
    lines[3] = json.dumps(entry)
    _rewrite(path, lines)
    good, bad = audit.verify(_lines(path), log.key.public_key())
    assert good == 3 and bad is not None and bad.line == 4 and bad.seq == 3
    assert "signature does not verify" in str(bad)
    with pytest.raises(audit.AuditError, match=r"line 4 .*not appending to a damaged trail"):
        audit.AuditLog(path, log.key)


def test_a_removed_entry_is_named(tmp_path: Path) -> None:
    path, log = _trail(tmp_path)
    lines = _lines(path)
    del lines[2]
    _rewrite(path, lines)
    good, bad = audit.verify(_lines(path), log.key.public_key())
    assert good == 2 and bad is not None and bad.seq == 3 and "removed" in bad.why


def test_reordered_entries_are_named(tmp_path: Path) -> None:
    path, log = _trail(tmp_path)
    lines = _lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    _rewrite(path, lines)
    good, bad = audit.verify(_lines(path), log.key.public_key())
    assert good == 1 and bad is not None and bad.line == 2 and "expected entry 1" in bad.why


def test_the_last_entry_removed_and_a_replaced_chain(tmp_path: Path) -> None:
    path, log = _trail(tmp_path)
    # An entry made by another key (a forger) is refused even with the right hash.
    forger = audit.new_signing_key()
    lines = _lines(path)
    last = json.loads(lines[-1])
    forged = audit.make_entry(forger, 6, audit.digest(last), 3000.0, "revoked", {})
    _rewrite(path, [*lines, json.dumps(forged)])
    good, bad = audit.verify(_lines(path), log.key.public_key())
    assert good == 6 and bad is not None and bad.seq == 6 and "forged" in bad.why


def test_a_torn_last_line(tmp_path: Path) -> None:
    path, log = _trail(tmp_path)
    with open(path, "a") as f:
        f.write('{"seq": 6, "ti')
    good, bad = audit.verify(_lines(path), log.key.public_key())
    assert good == 6 and bad is not None and bad.line == 7 and "torn" in bad.why


def test_the_compliance_report(tmp_path: Path) -> None:
    path, log = _trail(tmp_path)
    public = log.key.public_key()
    r = audit.report(_lines(path), public, 1000.0, 1006.0)
    assert r["compliance_status"] == "compliant" and r["reasons"] == []
    assert (r["total_connections"], r["unique_peers"], r["handshakes"]) == (3, 3, 6)
    assert r["encrypted_bytes"] == 450 and r["events"] == {"enrolled": 3, "session": 3}
    assert audit.report(_lines(path), public, 1002.0, 1004.0)["total_connections"] == 1
    log.append("session", {"peer": "x", "encrypted": False}, 1005.5)
    r = audit.report(_lines(path), public, 1000.0, 1006.0)
    assert r["compliance_status"] == "non-compliant" and "unencrypted" in r["reasons"][0]
    lines = _lines(path)
    del lines[0]
    _rewrite(path, lines)
    r = audit.report(_lines(path), public, 0.0, 9999.0)
    assert r["compliance_status"] == "non-compliant" and "does not verify" in r["reasons"][0]


def test_bad_keys(tmp_path: Path) -> None:
    key_path = tmp_path / "audit.key"
    key_path.write_text("not base64!\n")
    os.chmod(key_path, 0o600)
    with pytest.raises(audit.AuditError, match="not an audit signing key"):
        audit.load_or_create_signing_key(key_path)
    os.chmod(key_path, 0o644)
    with pytest.raises(audit.AuditError, match="readable by others"):
        audit.load_or_create_signing_key(key_path)
    with pytest.raises(audit.AuditError, match="not an ML-DSA-65 public key"):
        audit.public_from_text("AAAA")
    key = audit.new_signing_key()
    assert audit.public_from_text(audit.public_text(key)).public_bytes_raw() == (
        key.public_key().public_bytes_raw()
    )


def _admin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyralog.cli.admin", "audit", *args],
                          capture_output=True, text=True, timeout=30)  # fmt: skip


def test_the_audit_commands(tmp_path: Path) -> None:
    path, _ = _trail(tmp_path)
    done = _admin("verify", "--file", str(path))
    assert done.returncode == 0 and "6 entries, chain and signatures verify" in done.stdout
    done = _admin("report", "--file", str(path), "--from", "1970-01-01", "--to", "1970-01-02")
    assert done.returncode == 0, done.stderr
    assert "| Total connections | 3 |" in done.stdout and "| Compliance status | compliant |" in (
        done.stdout
    )
    args = ["report", "--file", str(path), "--from", "1970-01-01", "--to", "1970-01-02"]
    report = json.loads(_admin(*args, "--format", "json").stdout)
    assert report["unique_peers"] == 3
    lines = _lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    _rewrite(path, lines)
    done = _admin("verify", "--file", str(path))
    assert done.returncode == 1 and "line 2 (entry 2)" in done.stderr, done.stderr
    assert _admin(*args).returncode == 1
    done = _admin("verify", "--file", str(tmp_path / "missing.jsonl"))
    assert done.returncode == 1 and "No such file" in done.stderr
    done = _admin(*args[:5], "--to", "Feb 1")
    assert done.returncode == 1 and "expected YYYY-MM-DD" in done.stderr
