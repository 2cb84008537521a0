"""The machine a benchmark ran on: CPU, memory, OS, versions, load (the results' "machine")."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import subprocess
from pathlib import Path

from lab import NS_PREFIX, run


def machine_info() -> dict:
    def version(argv: list[str], pattern: str) -> str | None:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        m = re.search(pattern, out.stdout + out.stderr)
        return m.group(1) if m else None

    cpu = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_total = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024

    import cryptography
    import nacl

    import pyralog

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu,
        "cpus": os.cpu_count(),
        "memory_bytes": mem_total,
        "kernel": platform.release(),
        "os": _os_release(),
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "pynacl": getattr(nacl, "__version__", None),
        "pyralog": pyralog.__version__,
        "wireguard_go": version(["wireguard-go", "--version"], r"wireguard-go (v\S+)"),
        "iperf3": version(["iperf3", "--version"], r"iperf (\S+)"),
        "wg": version(["wg", "--version"], r"wireguard-tools (v\S+)"),
        "loadavg_start": list(os.getloadavg()),
        "other_netns_at_start": other_namespaces(),
    }


def _os_release() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return None


def other_namespaces() -> int:
    """Network namespaces that are not the harness's own: a sign of other load."""
    out = run(["ip", "netns", "list"], check=False)
    return sum(1 for line in out.splitlines() if line.strip() and not line.startswith(NS_PREFIX))
