"""pyralog-wg refuses bad start-up conditions with one clear line, never a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from processes import as_nobody, console_script

PYRALOG_WG = str(console_script("pyralog-wg"))


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=False, **kwargs)


def unprivileged(cmd: list[str]) -> list[str]:
    """The command as an unprivileged user: drop to nobody when we are root."""
    if os.geteuid() != 0:
        return cmd
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is needed to drop root privileges")
    return as_nobody(*cmd)


def test_without_privileges_names_the_problem_and_points_to_embedded_mode() -> None:
    result = run(unprivileged([PYRALOG_WG, "-f", "wgnopriv0"]))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pyralog-wg: ")
    assert "CAP_NET_ADMIN" in lines[0] and "embedded mode" in lines[0]
    assert "Traceback" not in result.stderr


def test_without_privileges_in_background_mode_reports_through_the_parent() -> None:
    result = run(unprivileged([PYRALOG_WG, "wgnopriv1"]), env={**os.environ, "LOG_LEVEL": ""})
    assert result.returncode == 1
    assert "CAP_NET_ADMIN" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("name", ["", "thisnameiswaytoolong", "bad/name", "sp ace"])
def test_invalid_interface_names(name: str) -> None:
    result = run([PYRALOG_WG, "-f", name])
    assert result.returncode != 0
    assert "interface name" in result.stderr or "usage" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_transform_is_refused_before_anything_is_created() -> None:
    env = {**os.environ, "PYRALOG_TRANSFORMS": "identity,rot13"}
    result = run([PYRALOG_WG, "-f", "wgbadxform0"], env=env)
    assert result.returncode == 1
    assert "PYRALOG_TRANSFORMS" in result.stderr and "'rot13'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists("/sys/class/net/wgbadxform0")
