"""``pyralog wg-import`` / ``wg-export``: wg-quick files to wireguard.toml and back, keys
moved into 0600 files, nothing lost that both formats can say."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from processes import console_script
from pyralog.mesh.config import load as load_mesh
from pyralog.wireguard.config import parse as parse_ini
from pyralog.wireguard.keys import PresharedKey, PrivateKey

KEY = PrivateKey(bytes([11]) * 32)
PEER_1 = PrivateKey(bytes([12]) * 32).public_key
PEER_2 = PrivateKey(bytes([13]) * 32).public_key
PSK = PresharedKey(bytes([14]) * 32)

WG0 = f"""[Interface]
PrivateKey = {KEY.to_base64()}
Address = 10.0.0.1/24, fd00::1/64
ListenPort = 51821
MTU = 1380
DNS = 10.0.0.53
PostUp = echo up

[Peer]
PublicKey = {PEER_1.to_base64()}
PresharedKey = {PSK.to_base64()}
Endpoint = 192.0.2.7:51820
AllowedIPs = 10.0.0.2/32, fd00::2/128
PersistentKeepalive = 25

[Peer]
PublicKey = {PEER_2.to_base64()}
AllowedIPs = 10.0.0.3/32
"""


def pyralog(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(console_script("pyralog")), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin"},  # no PYRALOG_* overrides from the caller
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_import_then_export_round_trips(tmp_path: Path) -> None:
    (tmp_path / "wg0.conf").write_text(WG0)
    result = pyralog("wg-import", "wg0.conf", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # What wireguard.toml cannot say is reported, not silently dropped.
    assert "dns is for wg-quick only" in result.stderr
    assert "postup is for wg-quick only" in result.stderr
    key_file, psk_file = tmp_path / "wireguard-private.key", tmp_path / "wireguard-peer-1.psk"
    assert mode(key_file) == 0o600 and mode(psk_file) == 0o600
    assert KEY.to_base64() not in (tmp_path / "wireguard.toml").read_text()  # keys in files

    mesh = load_mesh(tmp_path / "wireguard.toml", env={})
    assert [str(a) for a in mesh.addresses] == ["10.0.0.1/24", "fd00::1/64"]
    assert (mesh.listen_port, mesh.mtu) == (51821, 1380)
    assert [p.public_key for p in mesh.peers] == [PEER_1, PEER_2]
    assert mesh.peers[0].preshared_key_file == psk_file
    assert mesh.peers[1].preshared_key_file is None

    exported = pyralog("wg-export", "--config", "wireguard.toml", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    back = parse_ini(exported.stdout, "exported.conf")
    original = parse_ini(WG0, "wg0.conf")
    assert back.interface.private_key == original.interface.private_key
    assert back.interface.addresses == original.interface.addresses
    assert (back.interface.listen_port, back.interface.mtu) == (51821, 1380)
    for got, want in zip(back.peers, original.peers, strict=True):
        assert got.public_key == want.public_key
        assert got.preshared_key == want.preshared_key
        assert got.endpoint == want.endpoint
        assert got.allowed_ips == want.allowed_ips
        assert got.persistent_keepalive == want.persistent_keepalive


def test_import_refuses_to_overwrite_and_reports_bad_input(tmp_path: Path) -> None:
    (tmp_path / "wg0.conf").write_text(WG0)
    assert pyralog("wg-import", "wg0.conf", cwd=tmp_path).returncode == 0
    again = pyralog("wg-import", "wg0.conf", cwd=tmp_path)
    assert again.returncode == 1
    assert "wireguard.toml: exists; refusing to overwrite (use --force)" in again.stderr
    assert pyralog("wg-import", "wg0.conf", "--force", cwd=tmp_path).returncode == 0

    (tmp_path / "bad.conf").write_text("[Interface]\nPrivateKey = nope\n")
    bad = pyralog("wg-import", "bad.conf", "-o", "other.toml", cwd=tmp_path)
    assert bad.returncode == 1 and "bad.conf:2: PrivateKey:" in bad.stderr
    assert not (tmp_path / "other.toml").exists()
    assert "Traceback" not in bad.stderr


def test_export_names_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "wireguard.toml").write_text('[interface]\nprivate_key_file = "missing.key"\n')
    result = pyralog("wg-export", cwd=tmp_path)
    assert result.returncode == 1
    assert "missing.key: no such key file" in result.stderr
    (tmp_path / "wireguard.toml").write_text("[interface]\nlisten_port = 1\n")
    result = pyralog("wg-export", cwd=tmp_path)
    assert result.returncode == 1 and "private_key_file: missing" in result.stderr
