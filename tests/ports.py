"""Test support: local ports that are free to bind.

Importable by name from any test (``pythonpath = ["tests"]`` in pyproject.toml).
"""

from __future__ import annotations

import socket


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """An IPv4 port of type ``kind`` that was free on ``host`` a moment ago: the one the
    kernel picks for a bind to port 0. Someone may take it before the caller binds it."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
