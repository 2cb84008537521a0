"""The lookup of the project's console scripts (tests/processes.py) that the CLI and interop
tests run: next to ``sys.executable``, else on PATH, else a skip saying how to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from processes import console_script, needs_script, script_missing


def test_the_pyralog_script_is_found_and_runs() -> None:
    missing = script_missing("pyralog")
    if missing is not None:
        pytest.fail(missing)
    done = subprocess.run(
        [str(console_script("pyralog")), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: pyralog"), done.stdout


def _script(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_lookup_prefers_the_interpreters_bin_then_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv_bin, path_bin = tmp_path / "venv" / "bin", tmp_path / "elsewhere"
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    monkeypatch.setenv("PATH", str(path_bin))
    on_path = _script(path_bin, "tool")
    beside = _script(venv_bin, "tool")
    assert console_script("tool") == beside
    beside.chmod(0o644)  # not executable: passed over
    assert console_script("tool") == on_path
    beside.unlink()
    assert console_script("tool") == on_path
    assert script_missing("tool") is None
    on_path.unlink()
    assert console_script("tool") == beside  # where it would be; it does not exist
    reason = script_missing("tool")
    assert reason is not None
    assert str(venv_bin / "python") in reason
    assert "pip install -e ." in reason
    assert needs_script("tool").kwargs["reason"] == reason
