"""``pyralog wg-import`` and ``pyralog wg-export``: wg-quick files to and from
``wireguard.toml`` (see ``pyralog.mesh.wgquick``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pyralog.mesh.config import MeshConfigError
from pyralog.mesh.config import load as load_mesh
from pyralog.mesh.keyfile import KeyFileError, read_private_key, write_private_key, write_secret
from pyralog.mesh.wgquick import to_ini, to_toml
from pyralog.wireguard.config import ConfigFileError
from pyralog.wireguard.config import load as load_ini
from pyralog.wireguard.keys import InvalidKeyError, PresharedKey


def add_parsers(sub: argparse._SubParsersAction) -> None:
    imp = sub.add_parser("wg-import", help="convert a wg-quick file into wireguard.toml")
    imp.add_argument("conf", help="the wg-quick file, e.g. wg0.conf")
    imp.add_argument("--output", "-o", default="wireguard.toml", help="the TOML file to write")
    imp.add_argument(
        "--key-file",
        default="wireguard-private.key",
        help="where the private key goes, relative to the output (default %(default)s)",
    )
    imp.add_argument("--force", action="store_true", help="overwrite existing files")
    exp = sub.add_parser("wg-export", help="print wireguard.toml as a wg-quick file")
    exp.add_argument("--config", "-c", default="wireguard.toml", help="the TOML file to read")


def _fail(command: str, message: str) -> int:
    print(f"pyralog {command}: {message}", file=sys.stderr)
    return 1


def run_import(args: argparse.Namespace) -> int:
    try:
        config = load_ini(args.conf)
    except ConfigFileError as e:
        return _fail("wg-import", str(e))
    output = Path(args.output)
    if output.exists() and not args.force:
        return _fail("wg-import", f"{output}: exists; refusing to overwrite (use --force)")
    stem = output.stem
    psk_files = [
        f"{stem}-peer-{i + 1}.psk" if peer.preshared_key is not None else None
        for i, peer in enumerate(config.peers)
    ]
    text, notices = to_toml(config, args.key_file, psk_files)
    base = output.parent
    try:
        write_private_key(base / args.key_file, config.interface.private_key, force=args.force)
        for peer, name in zip(config.peers, psk_files, strict=True):
            if name is not None and peer.preshared_key is not None:
                write_secret(base / name, peer.preshared_key.to_base64(), force=args.force)
        output.write_text(text, encoding="utf-8")
    except (KeyFileError, OSError) as e:
        return _fail("wg-import", str(e))
    for notice in notices:
        print(f"pyralog wg-import: {notice}", file=sys.stderr)
    print(f"wrote {output} (private key in {base / args.key_file})")
    return 0


def run_export(args: argparse.Namespace) -> int:
    try:
        config = load_mesh(args.config)
        key = read_private_key(config.private_key_file)
        psks = []
        for peer in config.peers:
            if peer.preshared_key_file is None:
                psks.append(None)
                continue
            try:
                text = peer.preshared_key_file.read_text().strip()
                psks.append(PresharedKey.from_base64(text))
            except OSError as e:
                raise KeyFileError(
                    f"{peer.preshared_key_file}: cannot read: {e.strerror}"
                ) from None
            except InvalidKeyError as e:
                raise KeyFileError(f"{peer.preshared_key_file}: {e}") from None
    except (MeshConfigError, KeyFileError) as e:
        return _fail("wg-export", str(e))
    sys.stdout.write(to_ini(config, key, psks))
    return 0
