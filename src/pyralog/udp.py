"""The UDP side: one IPv4 and one IPv6 socket on the same port, as wireguard-go binds them.

Both runtimes around the sans-IO Device use it, through the link (pyralog.link): the
pyralog-wg daemon (pyralog.tunnel) and the embedded tunnel (pyralog.netstack.embedded).
It sits below both and needs nothing of ours but the Endpoint type.

Endpoints are ``(host, port)`` tuples for both families (scoped IPv6 hosts keep their
``%scope``), so the Device sees one shape whatever socket a datagram came in on.

Syscalls, not crypto, bound a Python data plane, so both directions batch when the kernel
allows: runs of equal-sized datagrams to one endpoint leave in a single ``sendmsg`` with
UDP_SEGMENT (GSO), and with UDP_GRO enabled the kernel hands us coalesced datagrams with
their segment size in a control message. Either falls back to one datagram per syscall.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct

from pyralog.wireguard.endpoint import Endpoint

SO_MARK = getattr(socket, "SO_MARK", 36)
SOCKET_BUFFER = 1024 * 1024
UDP_SEGMENT = 103  # linux/udp.h
UDP_GRO = 104
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000
_GRO_CMSG_SPACE = socket.CMSG_SPACE(4)
_SEGMENT_SIZES = [struct.pack("=H", n) for n in range(65536)]


_TRANSIENT_SEND_ERRORS = frozenset(
    (
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
        errno.EADDRNOTAVAIL,
        errno.ECONNREFUSED,
        errno.EPERM,
        errno.EINVAL,
        errno.EMSGSIZE,
        errno.ENOBUFS,
    )
)


class UdpTransport:
    def __init__(self, port: int = 0, fwmark: int = 0, buffer: int = SOCKET_BUFFER) -> None:
        self._v4: socket.socket | None = None
        self._v6: socket.socket | None = None
        self._port = 0
        self._fwmark = 0
        self._buffer = buffer  # SO_RCVBUF/SO_SNDBUF asked for (the kernel caps it)
        self.gso = True  # switched off for good on the first kernel refusal
        self.gso_batches = 0  # sendmsg calls that carried more than one datagram
        self.bind(port)
        if fwmark:
            self.set_fwmark(fwmark)

    # -- binding ---------------------------------------------------------------------

    def bind(self, port: int) -> None:
        """(Re)bind both sockets to ``port`` (0: any free port). Atomic: on error the old
        sockets stay bound and OSError(EADDRINUSE, ...) propagates."""
        for _ in range(10 if port == 0 else 1):
            try:
                v4, v6, bound = self._open(port, self._buffer)
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
    def _open(port: int, buffer: int) -> tuple[socket.socket, socket.socket | None, int]:
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
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
                for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                    with contextlib.suppress(OSError):
                        s.setsockopt(socket.SOL_SOCKET, opt, buffer)
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
            if e.errno not in _TRANSIENT_SEND_ERRORS:
                raise

    def send_many(self, datagrams: list[tuple[bytes, Endpoint]]) -> None:
        """Send in order, coalescing runs to one endpoint into GSO batches."""
        n = len(datagrams)
        i = 0
        while i < n:
            data, endpoint = datagrams[i]
            size = len(data)
            j = i + 1
            if self.gso:
                total = size
                while j < n and j - i < GSO_MAX_SEGMENTS:
                    nxt, nxt_endpoint = datagrams[j]
                    m = len(nxt)
                    if nxt_endpoint != endpoint or m > size or total + m > GSO_MAX_BYTES:
                        break
                    total += m
                    j += 1
                    if m < size:
                        break  # only the last segment of a batch may be shorter
            if j - i == 1:
                self.send(data, endpoint)
            else:
                self._send_segments([d for d, _ in datagrams[i:j]], size, endpoint)
            i = j

    def _send_segments(self, segments: list[bytes], size: int, endpoint: Endpoint) -> None:
        sock = self._v6 if ":" in endpoint[0] else self._v4
        if sock is None:
            return
        try:
            sock.sendmsg(
                segments, [(socket.SOL_UDP, UDP_SEGMENT, _SEGMENT_SIZES[size])], 0, endpoint[:2]
            )
            self.gso_batches += 1
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                self.gso = False  # this kernel or route cannot segment: one by one from now
                for segment in segments:
                    self.send(segment, endpoint)
            elif e.errno not in _TRANSIENT_SEND_ERRORS:
                raise

    def receive_many(self, sock: socket.socket, limit: int) -> list[tuple[bytes, Endpoint]]:
        """Up to ``limit`` reads; coalesced (GRO) reads are split back into datagrams."""
        out: list[tuple[bytes, Endpoint]] = []
        recvmsg = sock.recvmsg
        for _ in range(limit):
            try:
                data, ancillary, _flags, address = recvmsg(65535, _GRO_CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # e.g. ECONNREFUSED from an earlier send: nothing to read
            endpoint = (address[0], address[1])
            segment = 0
            for level, kind, value in ancillary:
                if level == socket.SOL_UDP and kind == UDP_GRO:
                    segment = int.from_bytes(value[:4], "little")
            if segment and len(data) > segment:
                for offset in range(0, len(data), segment):
                    out.append((data[offset : offset + segment], endpoint))
            else:
                out.append((data, endpoint))
        return out

    def close(self) -> None:
        for s in self.sockets():
            s.close()
        self._v4 = self._v6 = None
