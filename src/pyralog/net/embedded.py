"""``EmbeddedNetwork``: the Network API over the in-process netstack.

The embedded tunnel implements the interface itself (``EmbeddedTunnel.open_connection``
and the rest take asyncio's arguments, ``peer_of`` asks its Device), so this is a name,
not a wrapper: ``await EmbeddedNetwork.start(load("wg0.conf"))``.
"""

from __future__ import annotations

from pyralog.netstack.embedded import EmbeddedTunnel

EmbeddedNetwork = EmbeddedTunnel

__all__ = ["EmbeddedNetwork"]
