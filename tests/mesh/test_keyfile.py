"""The node's private key file and ``pyralog keygen``."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from processes import console_script
from pyralog.mesh.keyfile import KeyFileError, load_or_create, read_private_key, write_private_key
from pyralog.wireguard.keys import PrivateKey


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_boot_creates_the_key_then_reuses_it(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "wireguard-private.key"
    key, created = load_or_create(path)
    assert created and mode(path) == 0o600
    again, created_again = load_or_create(path)
    assert not created_again and again == key
    # The file is what wg genkey writes: one base64 line.
    assert path.read_text() == key.to_base64() + "\n"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_never_overwrites_without_force(tmp_path: Path) -> None:
    path = tmp_path / "k"
    first, second = PrivateKey.generate(), PrivateKey.generate()
    write_private_key(path, first)
    with pytest.raises(KeyFileError, match="exists; refusing to overwrite"):
        write_private_key(path, second)
    assert read_private_key(path) == first
    write_private_key(path, second, force=True)
    assert read_private_key(path) == second and mode(path) == 0o600


@pytest.mark.parametrize(
    ("content", "file_mode", "message"),
    [
        ("not a key\n", 0o600, "k:"),
        ("", 0o600, "k:"),
        (PrivateKey.generate().to_base64() + "\n", 0o644, "readable by others (mode 0644)"),
    ],
)
def test_unusable_key_files_are_refused(
    tmp_path: Path, content: str, file_mode: int, message: str
) -> None:
    path = tmp_path / "k"
    path.write_text(content)
    os.chmod(path, file_mode)
    with pytest.raises(KeyFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_private_key(path)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no such key file"):
        read_private_key(tmp_path / "nope")


def run_keygen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(console_script("pyralog")), "keygen", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_keygen_as_the_document_shows(tmp_path: Path) -> None:
    path = tmp_path / "wireguard-private.key"
    result = run_keygen("--node-id", "node-1", "--output", str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"Private key for node-1 written to {path}"
    key = read_private_key(path)
    assert lines[1] == f"Public key: {key.public_key.to_base64()}"
    assert mode(path) == 0o600
    # A second run refuses, with one line, and leaves the key alone.
    again = run_keygen("--output", str(path))
    assert again.returncode == 1
    assert again.stderr.strip() == (
        f"pyralog keygen: {path}: exists; refusing to overwrite a key (use --force)"
    )
    assert read_private_key(path) == key
    assert run_keygen("--output", str(path), "--force").returncode == 0
    assert read_private_key(path) != key


def test_keygen_into_a_missing_directory_says_so(tmp_path: Path) -> None:
    result = run_keygen("--output", str(tmp_path / "no" / "such" / "dir" / "k"))
    assert result.returncode == 1
    assert "cannot write" in result.stderr and "Traceback" not in result.stderr
