"""``pyralog genkey | pubkey | genpsk``: the same contract as ``wg genkey/pubkey/genpsk``.

Keys go to stdout as one base64 line. ``pubkey`` reads a private key on stdin; like
``wg pubkey`` it allows trailing whitespace but nothing else around the key. Like ``wg``,
the generators warn when stdout is a file other users can read (the shell created it
before we ran, so warning is all we can do: ``umask 077`` first).
"""

from __future__ import annotations

import os
import stat
import sys
from typing import TextIO

from pyralog.wireguard.keys import InvalidKeyError, PresharedKey, PrivateKey


def _warn_if_world_readable(out: TextIO) -> None:
    # wg prints this when stdout is a file others can read.
    try:
        mode = os.fstat(out.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return
    if stat.S_ISREG(mode) and mode & stat.S_IRWXO:
        print("Warning: writing to world accessible file.", file=sys.stderr)
        print("Consider setting the umask to 077 and trying again.", file=sys.stderr)


def genkey(out: TextIO) -> int:
    _warn_if_world_readable(out)
    out.write(PrivateKey.generate().to_base64() + "\n")
    return 0


def genpsk(out: TextIO) -> int:
    _warn_if_world_readable(out)
    out.write(PresharedKey.generate().to_base64() + "\n")
    return 0


def pubkey(inp: TextIO, out: TextIO, err: TextIO) -> int:
    try:
        text = inp.read(4096)
    except (OSError, UnicodeDecodeError):
        err.write("pyralog pubkey: could not read a private key from standard input\n")
        return 1
    try:
        key = PrivateKey.from_base64(text.rstrip())
    except InvalidKeyError as e:
        err.write(f"pyralog pubkey: invalid private key on standard input: {e}\n")
        return 1
    out.write(key.public_key.to_base64() + "\n")
    return 0


def keygen(output: str, node_id: str | None, force: bool, out: TextIO, err: TextIO) -> int:
    """``pyralog keygen --output FILE``: a node's key file, as the product document shows."""
    from pathlib import Path

    from pyralog.mesh.keyfile import KeyFileError, write_private_key

    key = PrivateKey.generate()
    try:
        write_private_key(Path(output), key, force=force)
    except KeyFileError as e:
        err.write(f"pyralog keygen: {e}\n")
        return 1
    who = f" for {node_id}" if node_id else ""
    out.write(f"Private key{who} written to {output}\n")
    out.write(f"Public key: {key.public_key.to_base64()}\n")
    return 0
