"""Converting between wg-quick files and ``wireguard.toml`` (``pyralog wg-import`` and
``pyralog wg-export``).

wg-quick keeps keys inline; ``wireguard.toml`` keeps them in files (mode 0600), so an
import writes the private key and any preshared keys to files beside the new config, and
an export reads them back. Keys only wg-quick acts on (DNS, Table, PreUp/PostUp/...,
SaveConfig, FwMark) have no place in ``wireguard.toml``: an import drops them and says
so. Text in, text out: the callers do the file IO.
"""

from __future__ import annotations

import json

from pyralog.mesh.config import DEFAULT_PORT, MeshConfig
from pyralog.wireguard.config import Config
from pyralog.wireguard.constants import DEFAULT_MTU
from pyralog.wireguard.endpoint import format_endpoint
from pyralog.wireguard.keys import PresharedKey, PrivateKey


def _q(text: str) -> str:
    return json.dumps(text)  # a TOML basic string: JSON's escapes are TOML's


def _array(items: list[str]) -> str:
    return "[" + ", ".join(_q(i) for i in items) + "]"


def to_toml(config: Config, key_file: str, psk_files: list[str | None]) -> tuple[str, list[str]]:
    """``wireguard.toml`` text for a parsed wg-quick file, and notices about what it could
    not carry. ``psk_files[i]`` names peer i's preshared key file (None: it has none)."""
    iface = config.interface
    notices = [
        f"{config.path}: {key} is for wg-quick only; not imported" for key in sorted(iface.extra)
    ]
    lines = ["[wireguard]", 'backend = "auto"', "", "[interface]"]
    lines.append(f"private_key_file = {_q(key_file)}")
    if iface.addresses:
        addresses = [str(a) for a in iface.addresses]
        lines.append(f"address = {_q(addresses[0]) if len(addresses) == 1 else _array(addresses)}")
    if iface.listen_port:
        lines.append(f"listen_port = {iface.listen_port}")
    else:
        notices.append(f"{config.path}: no ListenPort; the node will listen on {DEFAULT_PORT}")
    if iface.mtu != DEFAULT_MTU:
        lines.append(f"mtu = {iface.mtu}")
    for peer, psk_file in zip(config.peers, psk_files, strict=True):
        lines += ["", "[[peer]]", f"public_key = {_q(peer.public_key.to_base64())}"]
        if peer.endpoint is not None:
            lines.append(f"endpoint = {_q(format_endpoint(peer.endpoint))}")
        lines.append(f"allowed_ips = {_array([str(n) for n in peer.allowed_ips])}")
        if peer.persistent_keepalive:
            lines.append(f"persistent_keepalive = {peer.persistent_keepalive}")
        if psk_file is not None:
            lines.append(f"preshared_key_file = {_q(psk_file)}")
    return "\n".join(lines) + "\n", notices


def to_ini(config: MeshConfig, private_key: PrivateKey, psks: list[PresharedKey | None]) -> str:
    """A wg-quick file for a ``wireguard.toml`` with its keys read (``psks[i]``: peer i's)."""
    lines = ["[Interface]", f"PrivateKey = {private_key.to_base64()}"]
    if config.addresses:
        lines.append("Address = " + ", ".join(str(a) for a in config.addresses))
    lines.append(f"ListenPort = {config.listen_port}")
    if config.mtu != DEFAULT_MTU:
        lines.append(f"MTU = {config.mtu}")
    for peer, psk in zip(config.peers, psks, strict=True):
        lines += ["", "[Peer]", f"PublicKey = {peer.public_key.to_base64()}"]
        if psk is not None:
            lines.append(f"PresharedKey = {psk.to_base64()}")
        if peer.endpoint is not None:
            lines.append(f"Endpoint = {format_endpoint(peer.endpoint)}")
        if peer.allowed_ips:
            lines.append("AllowedIPs = " + ", ".join(str(n) for n in peer.allowed_ips))
        if peer.persistent_keepalive:
            lines.append(f"PersistentKeepalive = {peer.persistent_keepalive}")
    return "\n".join(lines) + "\n"
