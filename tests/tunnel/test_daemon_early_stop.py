"""A stop signal that reaches pyralog-wg while it is still making its interface and UAPI
socket waits for the handlers that clean them up, then stops it: it must not kill the
daemon outright and leave /var/run/wireguard/NAME.sock behind (a node that dies while
its daemon starts sends exactly that, by its parent-death signal).

``build_runtime`` is replaced by one that sends the signal to its own process midway, in
a child Python (no TUN, no root): before, SIGTERM's default action ended it there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from types import SimpleNamespace
    from pyralog.cli import wg

    class Runtime:  # what wg.main uses of pyralog.tunnel.runtime.Runtime
        tun = SimpleNamespace(name="pwstop0")
        uapi = SimpleNamespace(path="/nonexistent/pwstop0.sock")
        stopped = ""

        def install_signal_handlers(self):
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, lambda n, _f: setattr(self, "stopped", signal.Signals(n).name))

        def run(self):
            return self.stopped or "not stopped"

        def close(self):
            print("closed", flush=True)

    def build_runtime(name):
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))  # the interface is half made
        return Runtime()

    wg.build_runtime = build_runtime
    sys.exit(wg.main(["-f", "pwstop0"]))
    """
)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_stop_signal_during_start_up_still_cleans_up(name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, name], capture_output=True, text=True, timeout=30,
        env={**os.environ, "LOG_LEVEL": "info"},
    )  # fmt: skip
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stdout == "closed\n"
    assert f"shutting down: {name}" in done.stderr
