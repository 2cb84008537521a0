"""Endpoints given by name (``coord-a.example:51820``) made into addresses for WireGuard.

WireGuard peers take IP endpoints; configs and the product document name hosts. The
agent resolves every non-literal endpoint before it plans a change, through the event
loop's resolver, with a small cache (``TTL``) so a long-poll answer does not cost one
lookup per peer. A name that does not resolve keeps the last address it had (or none),
and is reported once per failure streak, not on every update.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
import time

from pyralog.wireguard.endpoint import EndpointError, format_endpoint, parse_endpoint

TTL = 60.0


class Resolver:
    def __init__(self) -> None:
        self._cache: dict[str, tuple[str, float]] = {}
        self._failing: set[str] = set()

    async def resolve(self, text: str | None) -> str | None:
        """``HOST:PORT`` as ``IP:PORT`` (IPv6 in brackets); literals pass unchanged."""
        if text is None:
            return None
        try:
            host, port = parse_endpoint(text, allow_names=True)
        except EndpointError:
            return None
        try:
            ipaddress.ip_address(host.partition("%")[0])
            return text
        except ValueError:
            pass
        cached = self._cache.get(text)
        if cached is not None and time.monotonic() - cached[1] < TTL:
            return cached[0]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            address = infos[0][4]
            resolved = format_endpoint((str(address[0]), int(address[1])))
        except (OSError, IndexError) as e:
            if text not in self._failing:
                self._failing.add(text)
                print(f"pyralog node: cannot resolve endpoint {text}: {e}", file=sys.stderr)
            return cached[0] if cached else None
        self._failing.discard(text)
        self._cache[text] = (resolved, time.monotonic())
        return resolved
