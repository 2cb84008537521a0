"""A node's private key file: made once (mode 0600), read on every boot.

The file holds one base64 key, as ``wg genkey`` writes it, so it is interchangeable with
wg's tools. Creating it uses O_EXCL with mode 0600, so the key is never readable by
others, not even for an instant, and an existing key is never overwritten by accident.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pyralog.wireguard.keys import InvalidKeyError, PrivateKey


class KeyFileError(ValueError):
    """A key file that cannot be used; the message names the file."""


def write_private_key(path: Path, key: PrivateKey, *, force: bool = False) -> None:
    """Write ``key`` to a new file (mode 0600); an existing file only with ``force``."""
    write_secret(path, key.to_base64(), force=force)


def write_secret(path: Path, text: str, *, force: bool = False) -> None:
    """One line of secret text (a key) to ``path``, mode 0600, atomically."""
    if path.exists() and not force:
        raise KeyFileError(f"{path}: exists; refusing to overwrite a key (use --force)")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        # Whole or not at all, even on a crash mid-write; without force, link() also
        # refuses atomically if the key appeared meanwhile.
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    except FileExistsError:
        raise KeyFileError(f"{path}: exists; refusing to overwrite a key (use --force)") from None
    except OSError as e:
        raise KeyFileError(f"{path}: cannot write: {e.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)


def read_private_key(path: Path) -> PrivateKey:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file") from None
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not a base64 key file") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: readable by others (mode {stat.S_IMODE(mode):04o}); chmod 600 it"
        )
    try:
        return PrivateKey.from_base64(text.strip())
    except InvalidKeyError as e:
        raise KeyFileError(f"{path}: {e}") from None


def load_or_create(path: Path) -> tuple[PrivateKey, bool]:
    """The node's key, generated and written on first boot. (key, created)."""
    if path.exists():
        return read_private_key(path), False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = PrivateKey.generate()
    write_private_key(path, key)
    return key, True
