"""The daemon's event loop: TUN, UDP, UAPI and interface events around one Link.

A single thread owns the Device, so the core needs no locks. One epoll loop waits on
every file descriptor with a timeout of the link's next deadline (the Device's and the
transforms' timers); each readable TUN or UDP descriptor is drained in a batch before
the outputs are flushed. What happens between the Device and UDP is the link's
(``pyralog.link``), shared with the embedded tunnel; this module adds TUN, UAPI and the
interface's own events. Per packet there is no logging and no allocation beyond the
packet itself.
"""

from __future__ import annotations

import contextlib
import logging
import select
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from pyralog.link import Link
from pyralog.tunnel.linkwatch import LinkWatch
from pyralog.tunnel.tun import TunInterface
from pyralog.tunnel.uapi import handle_request
from pyralog.tunnel.uapi_server import UapiConnection, UapiListener
from pyralog.wireguard import events as ev
from pyralog.wireguard.endpoint import format_endpoint

log = logging.getLogger("pyralog.wg")

BATCH = 64  # packets handled per readable descriptor before flushing outputs
# A descriptor that becomes readable again within BUSY_GAP of its last read is busy: drain
# it in batches. Otherwise read one packet and go back to epoll (level-triggered, so
# anything left wakes us at once): an idle tunnel's packet then costs no extra read that
# fails with EAGAIN, which in Python means raising and catching an exception.
BUSY_GAP = 0.001
REPORT_INTERVAL = 1.0  # drop counters are looked at no more often than this
DROP_REPORT_INTERVAL = 10.0


class Runtime:
    """Also the link's ``SocketWatcher``: UDP sockets join the epoll set through it."""

    def __init__(
        self,
        link: Link,
        tun: TunInterface,
        uapi: UapiListener,
        links: LinkWatch | None,
    ) -> None:
        self.link = link
        self.device = device = link.device
        self.tun = tun
        self.uapi = uapi
        self.links = links
        self._poll = select.epoll()
        self._handlers: dict[int, Callable[[], None]] = {}  # fd -> what to do when readable
        self._stopping = False
        self._stop_reason = ""
        self._connections: set[UapiConnection] = set()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._last_drops: dict[str, int] = dict(device.drops)
        self._last_drop_report = 0.0
        self._tun_last_read = 0.0
        if links is not None:
            device.mtu = links.mtu

    # -- link.SocketWatcher ---------------------------------------------------------------

    def watch(self, sock: socket.socket) -> None:
        self._register(sock, self._make_udp_reader(sock))

    def unwatch(self, sock: socket.socket) -> None:
        self._unregister(sock)

    # -- lifecycle -----------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        """Ask the loop to exit; safe from a signal handler."""
        self._stopping = True
        self._stop_reason = reason
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, _frame: self.stop(signal.Signals(signum).name))

    def _register(self, fileobj: Any, handler: Callable[[], None]) -> None:
        fd = fileobj.fileno()
        self._handlers[fd] = handler
        self._poll.register(fd, select.EPOLLIN)

    def _unregister(self, fileobj: Any) -> None:
        fd = fileobj.fileno()
        if self._handlers.pop(fd, None) is not None:
            self._poll.unregister(fd)

    def run(self) -> str:
        """Serve until stopped. Returns why it stopped."""
        self._register(self.tun, self._on_tun)
        self.link.attach(self)
        self._register(self.uapi, self._on_accept)
        self._register(self._wake_r, self._on_wake)
        if self.links is not None:
            self._register(self.links, self._on_link)
        device, link = self.device, self.link
        handlers = self._handlers
        poll = self._poll.poll
        monotonic = time.monotonic
        # Plain epoll and a dict of handlers: per wake-up, the least Python we can manage
        # (latency through the tunnel is mostly this loop's overhead per packet).
        next_report = 0.0
        while not self._stopping:
            deadline = link.next_deadline()
            timeout = 1.0 if deadline is None else min(1.0, max(0.0, deadline - monotonic()))
            for fd, _ in poll(timeout):
                handler = handlers.get(fd)  # an earlier handler may have removed it
                if handler is not None:
                    handler()
                if self._stopping:
                    break
            now = monotonic()
            if deadline is not None and now >= deadline:
                link.tick(now)
                self._deliver()
            if device.has_events or now >= next_report:
                next_report = now + REPORT_INTERVAL
                self._report(now)
        self._report(monotonic())
        return self._stop_reason

    def close(self) -> None:
        for conn in list(self._connections):
            conn.close()
        self.link.close()  # unwatches its sockets: before the epoll set goes
        self._poll.close()
        self.uapi.close()
        if self.links is not None:
            self.links.close()
        self.tun.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- handlers -------------------------------------------------------------------------

    def _on_tun(self) -> None:
        device, read = self.device, self.tun.read
        now = time.monotonic()
        limit = BATCH if now - self._tun_last_read < BUSY_GAP else 1
        self._tun_last_read = now
        for _ in range(limit):
            packet = read()
            if packet is None:
                break
            device.send_packet(packet, now)
        self.link.flush(now)

    def _make_udp_reader(self, sock: socket.socket) -> Callable[[], None]:
        link = self.link
        last_read = 0.0

        def on_udp() -> None:
            nonlocal last_read
            now = time.monotonic()
            limit = BATCH if now - last_read < BUSY_GAP else 1
            last_read = now
            link.receive(sock, now, limit)
            link.flush(now)
            self._deliver()

        return on_udp

    def _deliver(self) -> None:
        """Write the packets the Device decrypted to the TUN interface."""
        write = self.tun.write
        for packet in self.device.packets_to_deliver():
            write(packet)

    def _on_accept(self) -> None:
        conn = self.uapi.accept()
        if conn is None:
            return
        self._connections.add(conn)
        self._register(conn, lambda: self._on_uapi(conn))

    def _on_uapi(self, conn: UapiConnection) -> None:
        for request in conn.read_requests():
            reply, error = handle_request(request, self.device, self.link, time.monotonic())
            if error is not None:
                log.error("UAPI request refused: %s", error)
            conn.send(reply)
            if conn.closed:
                break
        self.link.flush(time.monotonic())  # a set may have queued handshakes or keepalives
        self._deliver()
        if conn.closed:
            self._unregister(conn)
            self._connections.discard(conn)
            conn.close()

    def _on_wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_r.recv(64)

    def _on_link(self) -> None:
        assert self.links is not None
        deleted, mtu = self.links.poll()
        if deleted:
            self.stop(f"interface {self.tun.name} was deleted")
        elif mtu is not None:
            log.info("MTU of %s is now %d", self.tun.name, mtu)
            self.device.mtu = mtu

    # -- reporting (off the hot path) ----------------------------------------------------

    def _report(self, now: float) -> None:
        for event in self.device.events():
            _log_event(event)
        if now - self._last_drop_report >= DROP_REPORT_INTERVAL and log.isEnabledFor(logging.DEBUG):
            self._last_drop_report = now
            drops = self.device.drops
            changed = {
                k: v - self._last_drops[k] for k, v in drops.items() if v != self._last_drops[k]
            }
            if changed:
                log.debug("dropped in the last %ds: %s", int(DROP_REPORT_INTERVAL), changed)
            self._last_drops = dict(drops)


def _log_event(event: Any) -> None:
    if isinstance(event, ev.HandshakeCompleted):
        role = "initiated by us" if event.initiator else "initiated by peer"
        log.info("peer %s: handshake completed (%s)", event.peer, role)
    elif isinstance(event, ev.EndpointChanged):
        log.info("peer %s: endpoint now %s", event.peer, format_endpoint(event.new))
    elif isinstance(event, ev.HandshakeFailed):
        log.info(
            "peer %s: no handshake answer after %d attempts; dropped %d queued packets",
            event.peer,
            event.attempts,
            event.dropped_packets,
        )
    elif isinstance(event, ev.SessionExpired):
        log.debug("peer %s: session keys zeroed", event.peer)
    elif isinstance(event, ev.PeerAdded):
        log.info("peer %s: added", event.peer)
    elif isinstance(event, ev.PeerRemoved):
        log.info("peer %s: removed", event.peer)
    elif isinstance(event, ev.PresharedKeyConfirmed):
        log.info("peer %s: new preshared key confirmed", event.peer)
    elif isinstance(event, ev.PresharedKeyRejected):
        log.warning("peer %s: handshake response fits none of our preshared keys", event.peer)
    elif isinstance(event, ev.PeerAdmitted):
        log.info(
            "peer %s: admitted as provisional from %s", event.peer, format_endpoint(event.endpoint)
        )
    elif isinstance(event, ev.EventsLost):
        log.warning("%d events were lost (queue full)", event.count)
    elif isinstance(event, ev.UnknownPeerHandshake):
        log.debug(
            "ignored %d handshake(s) from unknown keys (latest %s)",
            event.dropped_since_last,
            event.public_key,
        )
