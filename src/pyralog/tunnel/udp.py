"""The UDP side: one IPv4 and one IPv6 socket on the same port, as wireguard-go binds them.

Endpoints are ``(host, port)`` tuples for both families (scoped IPv6 hosts keep their
``%scope``), so the Device sees one shape whatever socket a datagram came in on.
"""

from __future__ import annotations

import contextlib
import errno
import socket

SO_MARK = getattr(socket, "SO_MARK", 36)
SOCKET_BUFFER = 4 * 1024 * 1024


class UdpTransport:
    def __init__(self, port: int = 0, fwmark: int = 0) -> None:
        self._v4: socket.socket | None = None
        self._v6: socket.socket | None = None
        self._port = 0
        self._fwmark = 0
        self.bind(port)
        if fwmark:
            self.set_fwmark(fwmark)

    # -- binding ---------------------------------------------------------------------

    def bind(self, port: int) -> None:
        """(Re)bind both sockets to ``port`` (0: any free port). Atomic: on error the old
        sockets stay bound and OSError(EADDRINUSE, ...) propagates."""
        for _ in range(10 if port == 0 else 1):
            try:
                v4, v6, bound = self._open(port)
                break
            except OSError as e:
                if port == 0 and e.errno == errno.EADDRINUSE:
                    continue  # the v4 port was free, its v6 twin was not: try another
                raise
        else:
            raise OSError(errno.EADDRINUSE, "no port free on both IPv4 and IPv6")
        self.close()
        self._v4, self._v6, self._port = v4, v6, bound
        if self._fwmark:
            self.set_fwmark(self._fwmark)

    @staticmethod
    def _open(port: int) -> tuple[socket.socket, socket.socket | None, int]:
        v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            v4.bind(("0.0.0.0", port))
            bound = v4.getsockname()[1]
            v6: socket.socket | None = None
            if socket.has_ipv6:
                v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    v6.bind(("::", bound))
                except OSError as e:
                    v6.close()
                    v6 = None
                    if e.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                        raise
        except BaseException:
            v4.close()
            raise
        for s in (v4, v6):
            if s is not None:
                s.setblocking(False)
                for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                    with contextlib.suppress(OSError):
                        s.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        return v4, v6, bound

    @property
    def port(self) -> int:
        return self._port

    @property
    def fwmark(self) -> int:
        return self._fwmark

    def set_fwmark(self, mark: int) -> None:
        for s in self.sockets():
            s.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        self._fwmark = mark

    def sockets(self) -> list[socket.socket]:
        return [s for s in (self._v4, self._v6) if s is not None]

    # -- data ------------------------------------------------------------------------

    def send(self, data: bytes, endpoint: tuple[str, int]) -> None:
        sock = self._v6 if ":" in endpoint[0] else self._v4
        if sock is None:
            return
        try:
            sock.sendto(data, endpoint[:2])
        except (BlockingIOError, InterruptedError):
            pass  # socket buffer full: drop, like any congested link
        except OSError as e:
            # Unreachable networks and the like are the network's business, not a crash.
            if e.errno not in (
                errno.ENETUNREACH,
                errno.EHOSTUNREACH,
                errno.EADDRNOTAVAIL,
                errno.ECONNREFUSED,
                errno.EPERM,
                errno.EINVAL,
                errno.EMSGSIZE,
                errno.ENOBUFS,
            ):
                raise

    @staticmethod
    def receive(sock: socket.socket) -> tuple[bytes, tuple[str, int]] | None:
        try:
            data, address = sock.recvfrom(65535)
        except (BlockingIOError, InterruptedError):
            return None
        except ConnectionRefusedError:
            return None  # an ICMP error for an earlier send; nothing to read
        return data, (address[0], address[1])

    def close(self) -> None:
        for s in self.sockets():
            s.close()
        self._v4 = self._v6 = None
