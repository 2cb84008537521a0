"""``pyralog demo`` (what ``scripts/demo.sh`` runs, the README's main job), for real: as
user nobody with its default 20,000 records (when the tests run as root), and as the
user running the tests; it must end with the promised line and 0 lost."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from processes import as_nobody, console_script, needs_script

pytestmark = needs_script("pyralog")

LAST = re.compile(
    r"^demo: (\d+) records acknowledged, (\d+) consumed back, (\d+) lost, "
    r"leader failover in (\d+\.\d) s$"
)


def _demo(*args: str, nobody: bool) -> tuple[subprocess.CompletedProcess[str], float]:
    argv = [str(console_script("pyralog")), "demo", *args]
    started = time.monotonic()
    done = subprocess.run(as_nobody(*argv) if nobody else argv, capture_output=True, text=True,
                          timeout=300, cwd="/tmp", stdin=subprocess.DEVNULL)  # fmt: skip
    return done, time.monotonic() - started


def _check(done: subprocess.CompletedProcess[str], records: int) -> float:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    m = LAST.match(last)
    assert m, last
    acked, consumed, lost, failover = int(m[1]), int(m[2]), int(m[3]), float(m[4])
    assert (acked, consumed, lost) == (records, records, 0)
    # The leader really was killed and replaced, and the cluster status was shown.
    assert "== kill -9 node-" in done.stdout and "0 duplicates" in done.stdout
    assert "LATEST HANDSHAKE" in done.stdout and "controller:" in done.stdout
    return failover


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="runs the demo as user nobody: needs root and setpriv")  # fmt: skip
def test_the_demo_as_an_unprivileged_user() -> None:
    done, took = _demo(nobody=True)
    failover = _check(done, 20000)
    made = re.search(r"a 3-node cluster in (\S+) ", done.stdout)
    assert made and not Path(made[1]).parent.exists(), "the demo left its directory"
    print(f"pyralog demo as nobody: {took:.0f} s, leader failover {failover} s")


def test_the_demo_as_this_user_keeping_its_directory() -> None:
    root = Path(tempfile.mkdtemp(prefix="pyralog-demo-test-"))
    try:
        done, took = _demo("--records", "3000", "--dir", str(root / "kept"), nobody=False)
        failover = _check(done, 3000)
        assert (root / "kept" / "cluster.toml").exists()
        print(f"pyralog demo (3000 records): {took:.0f} s, leader failover {failover} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_bad_demo_arguments() -> None:
    done, _ = _demo("--records", "5", nobody=False)
    assert done.returncode == 2 and "--records" in done.stdout + done.stderr
    done, _ = _demo("--dir", "/tmp", nobody=False)
    assert done.returncode == 2 and "exists" in done.stdout + done.stderr
