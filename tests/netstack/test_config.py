"""The wg-quick style config parser, and ``pyralog forward``'s argument errors.

No privileges needed: parsing works on text and temporary files, and the CLI tests only
run the console script on inputs it must reject before it opens any socket.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from processes import as_nobody, console_script, needs_script
from pyralog.wireguard.config import ConfigFileError, load, parse
from pyralog.wireguard.constants import DEFAULT_MTU
from pyralog.wireguard.keys import PresharedKey, PrivateKey

PRIV = PrivateKey.generate()
PEER1 = PrivateKey.generate().public_key
PEER2 = PrivateKey.generate().public_key
PEER3 = PrivateKey.generate().public_key
PSK = PresharedKey.from_base64(PrivateKey.generate().to_base64())

PYRALOG = console_script("pyralog")

FULL = f"""\
# A full wg-quick file: comments, blank lines, odd spacing and case.

[Interface]   # trailing comment on a section line
PrivateKey = {PRIV.to_base64()}
Address = 10.28.0.2/24, fd28:28::2/64
Address = 10.28.1.2/32
ListenPort = 51821
MTU = 1380
DNS = 10.28.0.53
DNS = fd28:28::53
Table = off
PostUp = echo up
PreDown = echo down
SaveConfig = false

[Peer]
PublicKey = {PEER1.to_base64()}
PresharedKey = {PSK.to_base64()}
Endpoint = [fd28:1::1]:51820
AllowedIPs = 10.28.0.0/24
AllowedIPs = fd28:28::/64, 10.28.5.7/32
persistentkeepalive = 25

[peer]
publickey={PEER2.to_base64()}
endpoint=vpn.example.test:4500
allowedips=0.0.0.0/0,::/0
PersistentKeepalive = off

[Peer]
PublicKey = {PEER3.to_base64()}
Endpoint = 172.28.0.1:51820
"""


def write(tmp_path: Path, text: str | bytes, name: str = "wg0.conf") -> str:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


def interface(*lines: str) -> str:
    return "\n".join(["[Interface]", f"PrivateKey = {PRIV.to_base64()}", *lines]) + "\n"


def peer(*lines: str) -> str:
    return "\n".join(["[Peer]", f"PublicKey = {PEER1.to_base64()}", *lines]) + "\n"


def error_of(tmp_path: Path, text: str | bytes) -> tuple[str, str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigFileError) as info:
        load(path)
    return path, str(info.value)


# -- a valid file ---------------------------------------------------------------------------


def test_full_file(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    config = load(path)
    assert config.path == path
    iface = config.interface
    assert iface.private_key == PRIV
    assert iface.addresses == [
        ipaddress.ip_interface("10.28.0.2/24"),
        ipaddress.ip_interface("fd28:28::2/64"),
        ipaddress.ip_interface("10.28.1.2/32"),
    ]
    assert iface.listen_port == 51821
    assert iface.mtu == 1380
    # wg-quick-only keys are kept (repeated DNS lines joined), not interpreted
    assert set(iface.extra) == {"dns", "table", "postup", "predown", "saveconfig"}
    assert [d.strip() for d in iface.extra["dns"].split(",")] == ["10.28.0.53", "fd28:28::53"]
    assert iface.extra["table"] == "off"
    assert iface.extra["postup"] == "echo up"
    assert iface.extra["predown"] == "echo down"

    assert len(config.peers) == 3
    p1, p2, p3 = config.peers
    assert p1.public_key == PEER1
    assert p1.preshared_key == PSK
    assert p1.endpoint == ("fd28:1::1", 51820)
    assert p1.allowed_ips == [
        ipaddress.ip_network("10.28.0.0/24"),
        ipaddress.ip_network("fd28:28::/64"),
        ipaddress.ip_network("10.28.5.7/32"),
    ]
    assert p1.persistent_keepalive == 25
    assert p1.line == FULL.splitlines().index("[Peer]") + 1

    assert p2.public_key == PEER2
    assert p2.preshared_key is None
    assert p2.endpoint == ("vpn.example.test", 4500)  # names are resolved later, at start
    assert p2.allowed_ips == [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
    assert p2.persistent_keepalive == 0

    assert p3.endpoint == ("172.28.0.1", 51820)
    assert p3.allowed_ips == []


def test_defaults(tmp_path: Path) -> None:
    config = load(write(tmp_path, interface()))
    assert config.peers == []
    assert config.interface.addresses == []
    assert config.interface.listen_port is None
    assert config.interface.mtu == DEFAULT_MTU
    assert config.interface.extra == {}


def test_parse_text_directly() -> None:
    config = parse(interface("Address = 10.28.0.2/24") + peer(), "inline.conf")
    assert config.path == "inline.conf"
    assert config.peers[0].public_key == PEER1


def test_crlf_line_endings(tmp_path: Path) -> None:
    text = interface("Address = 10.28.0.2/24") + peer("AllowedIPs = 10.28.0.0/24")
    config = load(write(tmp_path, text.replace("\n", "\r\n").encode()))
    assert config.peers[0].allowed_ips == [ipaddress.ip_network("10.28.0.0/24")]


def test_repeated_wg_quick_hooks_accepted(tmp_path: Path) -> None:
    """wg-quick(8): PreUp/PostUp/PreDown/PostDown "may be specified multiple times", and are
    run in order; a file that wg-quick accepts must load here too."""
    text = interface("PostUp = echo one", "PostUp = echo two", "PreDown = echo three")
    config = load(write(tmp_path, text))
    assert "echo one" in config.interface.extra["postup"]
    assert "echo two" in config.interface.extra["postup"]


# -- errors: each names the file, the line and the key -------------------------------------


def line_of(text: str, needle: str, nth: int = 1) -> int:
    hits = [n for n, line in enumerate(text.splitlines(), 1) if needle in line]
    return hits[nth - 1]


def assert_names(message: str, path: str, line: int | None, key: str | None) -> None:
    prefix = f"{path}:{line}:" if line is not None else f"{path}:"
    assert message.startswith(prefix), f"{message!r} does not start with {prefix!r}"
    if key is not None:
        assert key.lower() in message.lower(), f"{message!r} does not name {key}"
    assert "\n" not in message


@pytest.mark.parametrize(
    ("bad_line", "key"),
    [
        ("PrivateKey = not-a-key", "PrivateKey"),
        ("PrivateKey = " + "A" * 43 + "==", "PrivateKey"),  # wrong length
        ("PrivateKey = " + "A" * 42 + "B=", "PrivateKey"),  # non-canonical padding bits
        ("PrivateKey = " + "A" * 42 + "!=", "PrivateKey"),  # not base64
    ],
)
def test_bad_private_key(tmp_path: Path, bad_line: str, key: str) -> None:
    text = f"# comment\n[Interface]\n{bad_line}\nAddress = 10.28.0.2/24\n"
    path, message = error_of(tmp_path, text)
    assert_names(message, path, 3, key)


@pytest.mark.parametrize("key", ["PublicKey", "PresharedKey"])
def test_bad_peer_key(tmp_path: Path, key: str) -> None:
    lines = ["[Peer]"]
    if key != "PublicKey":
        lines.append(f"PublicKey = {PEER1.to_base64()}")
    lines.append(f"{key} = c2hvcnQ=")
    text = interface() + "\n".join(lines) + "\n"
    path, message = error_of(tmp_path, text)
    assert_names(message, path, line_of(text, "c2hvcnQ="), key)


def test_missing_private_key(tmp_path: Path) -> None:
    """The [Interface] line is where the missing key belongs: name it."""
    text = "# comment\n\n[Interface]\nAddress = 10.28.0.2/24\n" + peer()
    path, message = error_of(tmp_path, text)
    assert_names(message, path, 3, "PrivateKey")


def test_missing_public_key(tmp_path: Path) -> None:
    text = interface() + peer() + "\n[Peer]\nAllowedIPs = 10.28.9.0/24\n"
    path, message = error_of(tmp_path, text)
    assert_names(message, path, line_of(text, "[Peer]", 2), "PublicKey")
    assert "[Peer]" in message


def test_missing_interface(tmp_path: Path) -> None:
    path, message = error_of(tmp_path, peer())
    assert_names(message, path, None, "[Interface]")


def test_second_interface(tmp_path: Path) -> None:
    text = interface() + interface()
    path, message = error_of(tmp_path, text)
    assert_names(message, path, line_of(text, "[Interface]", 2), "[Interface]")


@pytest.mark.parametrize("section", ["[Peers]", "[Interface", "[wireguard]", "[]"])
def test_unknown_section(tmp_path: Path, section: str) -> None:
    text = interface() + f"{section}\nPublicKey = {PEER1.to_base64()}\n"
    path, message = error_of(tmp_path, text)
    assert_names(message, path, text.splitlines().index(section) + 1, section)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (interface("Adress = 10.28.0.2/24"), "Adress"),
        (interface() + peer("Endpoints = 172.28.0.1:51820"), "Endpoints"),
        (interface() + peer("Address = 10.28.0.2/24"), "Address"),  # right key, wrong section
        (interface("AllowedIPs = 10.28.0.0/24"), "AllowedIPs"),
    ],
)
def test_unknown_key(tmp_path: Path, text: str, key: str) -> None:
    path, message = error_of(tmp_path, text)
    assert_names(message, path, line_of(text, key + " ="), key)
    assert "unknown" in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (interface("ListenPort = 1", "listenport = 2"), "ListenPort"),
        (interface(f"PrivateKey = {PRIV.to_base64()}"), "PrivateKey"),
        (interface("MTU = 1400", "MTU = 1400"), "MTU"),
        (interface() + peer(f"PublicKey = {PEER2.to_base64()}"), "PublicKey"),
        (interface() + peer("Endpoint = 1.2.3.4:5", "Endpoint = 1.2.3.4:6"), "Endpoint"),
        (interface() + peer("PersistentKeepalive = 5", "PersistentKeepalive = 6"), "Keepalive"),
    ],
)
def test_duplicate_key(tmp_path: Path, text: str, key: str) -> None:
    path, message = error_of(tmp_path, text)
    assert_names(message, path, len(text.splitlines()), key)  # the repeat is the last line
    assert "twice" in message


def test_duplicate_key_in_different_peers_is_fine(tmp_path: Path) -> None:
    text = interface() + peer("Endpoint = 172.28.0.1:1") + peer("Endpoint = 172.28.0.1:2")
    path = write(tmp_path, text.replace(PEER1.to_base64(), PEER2.to_base64(), 1))
    assert [p.endpoint for p in load(path).peers] == [("172.28.0.1", 1), ("172.28.0.1", 2)]


@pytest.mark.parametrize(
    "value", ["10.28.0.300/32", "10.28.0.0/33", "fd28::/129", "not-a-net", "10.28.0.0/24;"]
)
def test_bad_allowed_ips(tmp_path: Path, value: str) -> None:
    text = interface() + peer(f"AllowedIPs = 10.28.0.0/24, {value}")
    path, message = error_of(tmp_path, text)
    assert_names(message, path, line_of(text, "AllowedIPs"), "AllowedIPs")
    assert value in message


def test_bad_allowed_ips_on_first_of_repeated_lines(tmp_path: Path) -> None:
    """Repeated AllowedIPs lines are joined; an error must still name the line that holds
    the bad value, not the last AllowedIPs line."""
    text = interface() + peer("AllowedIPs = 10.28.0.300/32", "AllowedIPs = 10.28.1.0/24")
    path, message = error_of(tmp_path, text)
    assert_names(message, path, line_of(text, "10.28.0.300"), "AllowedIPs")


def test_bad_address_on_first_of_repeated_lines(tmp_path: Path) -> None:
    text = interface("Address = 10.28.0.2/99", "Address = 10.28.1.2/24")
    path, message = error_of(tmp_path, text)
    assert_names(message, path, line_of(text, "10.28.0.2/99"), "Address")


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("ListenPort = 65536", "ListenPort"),
        ("ListenPort = -1", "ListenPort"),
        ("ListenPort = port", "ListenPort"),
        ("MTU = 100", "MTU"),
    ],
)
def test_bad_interface_number(tmp_path: Path, line: str, key: str) -> None:
    text = interface("Address = 10.28.0.2/24", line)
    path, message = error_of(tmp_path, text)
    assert_names(message, path, line_of(text, line), key)


@pytest.mark.parametrize(
    "endpoint",
    [
        "172.28.0.1:0",
        "172.28.0.1:65536",
        "172.28.0.1:http",
        "172.28.0.1",
        ":51820",
        "[fd28::1]:99999",
        "[fd28::1]",
        "host.example.test:",
    ],
)
def test_bad_endpoint(tmp_path: Path, endpoint: str) -> None:
    text = interface() + peer(f"Endpoint = {endpoint}")
    path, message = error_of(tmp_path, text)
    assert_names(message, path, line_of(text, "Endpoint"), "Endpoint")


def test_bad_keepalive(tmp_path: Path) -> None:
    text = interface() + peer("PersistentKeepalive = 65536")
    path, message = error_of(tmp_path, text)
    assert_names(message, path, line_of(text, "Keepalive"), "PersistentKeepalive")


@pytest.mark.parametrize("endpoint", ["fd28::1:51820", "::1:51820", "fe80::1%eth0:51820"])
def test_ipv6_endpoint_needs_brackets(tmp_path: Path, endpoint: str) -> None:
    text = interface() + peer(f"Endpoint = {endpoint}")
    path, message = error_of(tmp_path, text)
    assert_names(message, path, line_of(text, "Endpoint"), "Endpoint")
    assert "bracket" in message


@pytest.mark.parametrize("stray", ["PrivateKey = x", "hello", "  = value"])
def test_text_outside_sections(tmp_path: Path, stray: str) -> None:
    text = f"# header comment\n\n{stray}\n" + interface()
    path, message = error_of(tmp_path, text)
    assert_names(message, path, 3, None)
    assert "outside" in message


def test_line_without_equals(tmp_path: Path) -> None:
    text = interface("Address 10.28.0.2/24")
    path, message = error_of(tmp_path, text)
    assert_names(message, path, line_of(text, "Address"), "Address")


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.conf")
    with pytest.raises(ConfigFileError) as info:
        load(path)
    assert_names(str(info.value), path, None, None)
    assert "No such file" in str(info.value)


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError) as info:
        load(str(tmp_path))
    assert_names(str(info.value), str(tmp_path), None, None)
    assert "cannot read" in str(info.value)


_LOAD = """
import sys
from pyralog.wireguard.config import ConfigFileError, load
try:
    load(sys.argv[1])
except ConfigFileError as e:
    print(e)
"""


def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, interface())
    os.chmod(path, 0)
    if os.geteuid() != 0:
        with pytest.raises(ConfigFileError) as info:
            load(path)
        message = str(info.value)
    else:  # root reads anything: ask an ordinary user (nobody) instead
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv (util-linux) is missing")
        os.chmod(tmp_path, 0o755)
        done = subprocess.run(
            as_nobody(sys.executable, "-c", _LOAD, path),
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if "Permission denied" in done.stderr and "Traceback" in done.stderr:
            pytest.skip(f"user nobody cannot run {sys.executable}")
        message = done.stdout.strip()
    assert_names(message, path, None, None)
    assert "Permission denied" in message


@pytest.mark.parametrize(
    "data",
    [
        b"[Interface]\nPrivateKey = \xff\xfe\n",
        "[Interface]\n# caf\u00e9\n".encode("latin-1"),
        "[Interface]\n".encode("utf-16"),
    ],
)
def test_non_utf8_file(tmp_path: Path, data: bytes) -> None:
    path, message = error_of(tmp_path, data)
    assert_names(message, path, None, None)
    assert "UTF-8" in message


# -- `pyralog forward` argument errors ------------------------------------------------------


def forward(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PYRALOG), "forward", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture
def good_config(tmp_path: Path) -> str:
    return write(
        tmp_path,
        interface("Address = 10.28.0.2/24")
        + peer("Endpoint = 127.0.0.1:9", "AllowedIPs = 10.28.0.0/24"),
        "good.conf",
    )


def assert_usage_error(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, f"want one stderr line, got {lines!r}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


needs_cli = needs_script("pyralog")


@needs_cli
@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("8080", "8080"),
        ("8080:10.28.0.1", "8080:10.28.0.1"),
        ("0:10.28.0.1:80", "'0'"),
        ("8080:10.28.0.1:70000", "70000"),
        ("8080:not-an-ip:80", "not-an-ip"),
        ("1.2.3.4:5:6:7:8:9", "1.2.3.4:5:6:7:8:9"),
        ("8080:[fd28::1:80", "["),
        ("8080:10.28.0.1:80/sctp", "sctp"),
    ],
)
def test_cli_bad_forward_spec(tmp_path: Path, good_config: str, spec: str, needle: str) -> None:
    done = forward("--config", good_config, spec, cwd=tmp_path)
    assert_usage_error(done, "pyralog forward", needle)


@needs_cli
@pytest.mark.parametrize("spec", ["80:10.28.0.1", "x:127.0.0.1:22", "2222:127.0.0.1:22:1"])
def test_cli_bad_reverse_spec(tmp_path: Path, good_config: str, spec: str) -> None:
    done = forward("--config", good_config, "--reverse", spec, cwd=tmp_path)
    assert_usage_error(done, "pyralog forward", spec)


@needs_cli
def test_cli_missing_config_file(tmp_path: Path) -> None:
    done = forward("--config", "absent.conf", "8080:10.28.0.1:80", cwd=tmp_path)
    assert_usage_error(done, "pyralog forward", "absent.conf")


@needs_cli
def test_cli_bad_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, interface("Adress = 10.28.0.2/24"))
    done = forward("--config", path, "8080:10.28.0.1:80", cwd=tmp_path)
    line = assert_usage_error(done, "pyralog forward", f"{path}:3:")
    assert "adress" in line.lower()


@needs_cli
def test_cli_config_without_address(tmp_path: Path) -> None:
    path = write(tmp_path, interface() + peer("Endpoint = 127.0.0.1:9"))
    done = forward("--config", path, "8080:10.28.0.1:80", cwd=tmp_path)
    assert_usage_error(done, "pyralog forward", path, "Address")


@needs_cli
def test_cli_no_forwards(tmp_path: Path, good_config: str) -> None:
    done = forward("--config", good_config, cwd=tmp_path)
    assert_usage_error(done, "pyralog forward", "nothing to forward")


@needs_cli
def test_cli_no_config_option(tmp_path: Path) -> None:
    """argparse's own error: exit 2, usage and the message, no traceback."""
    done = forward("8080:10.28.0.1:80", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert re.search(r"error: .*--config", done.stderr), done.stderr
