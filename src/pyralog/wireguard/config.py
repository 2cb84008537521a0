"""wg-quick style configuration files: ``[Interface]`` and ``[Peer]`` sections.

``parse`` works on text and does no IO; ``load`` is the one function here that reads a
file, for callers' convenience. Every error names the file, the line and the key, e.g.
``wg0.conf:7: AllowedIPs: '10.0.0.300/32' is not an IP network``.
Keys that only wg-quick acts on (DNS, Table, PreUp, PostUp, ...) are accepted and kept in
``Interface.extra`` so one file can serve both wg-quick and embedded mode.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from pyralog.wireguard.constants import DEFAULT_MTU
from pyralog.wireguard.endpoint import Endpoint, parse_endpoint
from pyralog.wireguard.keys import InvalidKeyError, PresharedKey, PrivateKey, PublicKey

WG_QUICK_ONLY = {"dns", "table", "preup", "postup", "predown", "postdown", "saveconfig", "fwmark"}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class ConfigFileError(ValueError):
    """A configuration file that cannot be used; the message names file, line and key."""


@dataclass
class PeerConfig:
    public_key: PublicKey
    preshared_key: PresharedKey | None = None
    endpoint: Endpoint | None = None  # host may be a name; resolve before use
    allowed_ips: list[Network] = field(default_factory=list)
    persistent_keepalive: int = 0
    line: int = 0


@dataclass
class InterfaceConfig:
    private_key: PrivateKey
    addresses: list[IPInterface] = field(default_factory=list)
    listen_port: int | None = None
    mtu: int = DEFAULT_MTU
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class Config:
    interface: InterfaceConfig
    peers: list[PeerConfig]
    path: str = "<config>"


def _int(value: str, low: int, high: int) -> int:
    if not value.strip().isdigit() or not low <= int(value) <= high:
        raise ValueError(f"{value!r} is not a number from {low} to {high}")
    return int(value)


def _list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


REPEATABLE = {"address", "allowedips", "dns", "preup", "postup", "predown", "postdown"}

# key (lower case) -> every (value, line, key as written) given for it in one section
Section = dict[str, list[tuple[str, int, str]]]


def parse(text: str, path: str = "<config>") -> Config:
    interface: Section | None = None
    interface_line = 0
    peers: list[tuple[Section, int]] = []
    section: Section | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            name = line.strip("[]").strip().lower()
            if not line.endswith("]") or name not in ("interface", "peer"):
                raise ConfigFileError(f"{path}:{number}: unknown section {line!r}")
            section = {}
            if name == "interface":
                if interface is not None:
                    raise ConfigFileError(
                        f"{path}:{number}: second [Interface] (first at line {interface_line})"
                    )
                interface, interface_line = section, number
            else:
                peers.append((section, number))
            continue
        if section is None:
            raise ConfigFileError(f"{path}:{number}: {line!r} is outside any section")
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigFileError(f"{path}:{number}: expected Key = Value, got {line!r}")
        written = key.strip()
        key = written.lower()
        if key in section and key not in REPEATABLE:
            first = section[key][0][1]
            raise ConfigFileError(
                f"{path}:{number}: {written} given twice in one section (first at line {first})"
            )
        section.setdefault(key, []).append((value.strip(), number, written))
    if interface is None:
        raise ConfigFileError(f"{path}: no [Interface] section")
    return Config(
        _interface(interface, interface_line, path),
        [_peer(values, line, path) for values, line in peers],
        path,
    )


def _field(path: str, line: int, key: str, error: Exception) -> ConfigFileError:
    return ConfigFileError(f"{path}:{line}: {key}: {error}")


def _interface(values: Section, section_line: int, path: str) -> InterfaceConfig:
    if "privatekey" not in values:
        raise ConfigFileError(f"{path}:{section_line}: [Interface] has no PrivateKey")
    value, line, written = values["privatekey"][0]
    try:
        result = InterfaceConfig(PrivateKey.from_base64(value))
    except InvalidKeyError as e:
        raise _field(path, line, written, e) from None
    for key, entries in values.items():
        for value, line, written in entries:
            try:
                if key == "privatekey":
                    continue
                if key == "address":
                    result.addresses += [ipaddress.ip_interface(a) for a in _list(value)]
                elif key == "listenport":
                    result.listen_port = _int(value, 0, 65535)
                elif key == "mtu":
                    result.mtu = _int(value, 1280, 65535)
                elif key in WG_QUICK_ONLY:
                    old = result.extra.get(key)
                    # DNS is a list, hooks are commands run in order.
                    joiner = ", " if key == "dns" else "\n"
                    result.extra[key] = value if old is None else f"{old}{joiner}{value}"
                else:
                    raise ValueError("unknown key in [Interface]")
            except ValueError as e:
                raise _field(path, line, written, e) from None
    return result


def _peer(values: Section, section_line: int, path: str) -> PeerConfig:
    if "publickey" not in values:
        raise ConfigFileError(f"{path}:{section_line}: [Peer] has no PublicKey")
    value, line, written = values["publickey"][0]
    try:
        peer = PeerConfig(PublicKey.from_base64(value), line=section_line)
    except InvalidKeyError as e:
        raise _field(path, line, written, e) from None
    for key, entries in values.items():
        for value, line, written in entries:
            try:
                if key == "publickey":
                    continue
                if key == "presharedkey":
                    peer.preshared_key = PresharedKey.from_base64(value)
                elif key == "endpoint":
                    peer.endpoint = parse_endpoint(value, allow_names=True)
                elif key == "allowedips":
                    peer.allowed_ips += [
                        ipaddress.ip_network(n, strict=False) for n in _list(value)
                    ]
                elif key == "persistentkeepalive":
                    peer.persistent_keepalive = 0 if value == "off" else _int(value, 0, 65535)
                else:
                    raise ValueError("unknown key in [Peer]")
            except ValueError as e:  # InvalidKeyError is a ValueError
                raise _field(path, line, written, e) from None
    return peer


def load(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigFileError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigFileError(f"{path}: not a UTF-8 text file") from None
    return parse(text, path)
