"""``Link``: the one pump between a Device and its UDP sockets, shared by every runtime.

The pyralog-wg daemon (epoll) and the embedded tunnel (asyncio) own their event loops;
the link owns everything between the Device and the socket: batched reads (GRO) through
the inbound pipeline into the Device, the Device's datagrams through the outbound
pipeline to batched sends (GSO), the timers of the Device and of the transforms together,
the listen port and fwmark, and the atomic control path (``apply``).

A runtime attaches a ``SocketWatcher`` so the link can tell it which sockets to watch
(again when a ``listen_port`` change rebinds), calls ``receive`` when one is readable,
``flush`` after feeding the Device anything, and ``tick`` at ``next_deadline()``. Where no
transform rewrites a direction (none at all, or only identities) the per-datagram path
is exactly the Device's: the pipeline is skipped.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable
from typing import Protocol

from pyralog.link import control
from pyralog.link.transform import Datagram, Pipeline, Transform
from pyralog.udp import UdpTransport
from pyralog.wireguard.device import Device
from pyralog.wireguard.keys import PublicKey

log = logging.getLogger("pyralog.link")


class SocketWatcher(Protocol):
    """The runtime's event loop: start and stop watching a socket for readability."""

    def watch(self, sock: socket.socket) -> None: ...

    def unwatch(self, sock: socket.socket) -> None: ...


class Link:
    """Implements ``control.Interface`` (listen port, fwmark) for the control path."""

    def __init__(
        self,
        device: Device,
        udp: UdpTransport,
        transforms: Iterable[Transform] = (),
    ) -> None:
        self.device = device
        self.udp = udp
        self.pipeline = Pipeline(transforms)
        self._watcher: SocketWatcher | None = None

    def attach(self, watcher: SocketWatcher) -> None:
        """Have ``watcher`` (the runtime's event loop) watch the sockets, now and after
        every rebind."""
        self._watcher = watcher
        for sock in self.udp.sockets():
            watcher.watch(sock)

    # -- data --------------------------------------------------------------------------

    def receive(self, sock: socket.socket, now: float, limit: int) -> int:
        """Read up to ``limit`` datagrams from ``sock`` into the Device; how many were read.
        Call ``flush`` afterwards (once per wake-up, after every readable socket)."""
        batch = self.udp.receive_many(sock, limit)
        receive = self.device.receive_datagram
        if self.pipeline.rewrites_inbound:
            inbound = self.pipeline.inbound
            for data, endpoint in batch:
                result = inbound(data, endpoint, now)
                if result is not None:
                    receive(result[0], result[1], now)
        else:
            for data, endpoint in batch:
                receive(data, endpoint, now)
        return len(batch)

    def flush(self, now: float) -> None:
        """Send what the Device (and the transforms) have queued."""
        datagrams: list[Datagram] = self.device.datagrams_to_send()
        if self.pipeline.rewrites_outbound:
            # The batch may be empty: transforms' own datagrams (decoys...) still leave.
            datagrams = self.pipeline.outbound(datagrams, now)
        if datagrams:
            self.udp.send_many(datagrams)

    def next_deadline(self) -> float | None:
        deadline = self.device.next_deadline()
        if self.pipeline.has_timers:
            own = self.pipeline.next_deadline()
            if own is not None and (deadline is None or own < deadline):
                return own
        return deadline

    def tick(self, now: float) -> None:
        """Run the Device's and the transforms' timers due at ``now``, then flush."""
        self.device.tick(now)
        if self.pipeline.has_timers:
            self.pipeline.tick(now)
        self.flush(now)

    # -- control -----------------------------------------------------------------------

    def apply(self, change: control.SetRequest, now: float) -> None:
        """The atomic configuration change (see ``control``); then send what it queued
        (handshakes, keepalives)."""
        control.apply(self.device, self, change, now)
        self.flush(now)

    def rekey(self, public_key: PublicKey, now: float) -> bool:
        started = self.device.rekey(public_key, now)
        self.flush(now)
        return started

    # -- control.Interface ---------------------------------------------------------------

    def listen_port(self) -> int:
        return self.udp.port

    def set_listen_port(self, port: int) -> None:
        """Rebind (atomic: on error the old sockets stay bound and watched)."""
        watcher = self._watcher
        if watcher is None:
            self.udp.bind(port)
        else:
            # Unwatch before bind() closes the old sockets; watch whichever are bound after.
            for sock in self.udp.sockets():
                watcher.unwatch(sock)
            try:
                self.udp.bind(port)
            finally:
                for sock in self.udp.sockets():
                    watcher.watch(sock)
        log.info("listening on UDP port %d", self.udp.port)

    def fwmark(self) -> int:
        return self.udp.fwmark

    def set_fwmark(self, mark: int) -> None:
        self.udp.set_fwmark(mark)

    def close(self) -> None:
        if self._watcher is not None:
            for sock in self.udp.sockets():
                self._watcher.unwatch(sock)
        self.udp.close()
