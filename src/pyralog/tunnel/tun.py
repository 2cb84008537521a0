"""A Linux TUN interface: the kernel side of the "interface side" packet seam.

Opens ``/dev/net/tun`` with IFF_TUN | IFF_NO_PI, so each read returns exactly one IP
packet and each write injects one. The interface is not persistent: closing the file
descriptor removes it, which is how the daemon cleans up even when it is killed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFNAMSIZ = 16
TUN_PATH = "/dev/net/tun"
EMBEDDED_HINT = (
    "creating a network interface needs root or CAP_NET_ADMIN; without them, use "
    "embedded mode: `pyralog forward` (README, 'Without root')"
)


class TunError(OSError):
    """Creating or using the TUN interface failed; the message says why and what to do."""


def validate_interface_name(name: str) -> str:
    if not name or len(name.encode()) >= IFNAMSIZ:
        raise ValueError(f"interface name {name!r} must be 1 to {IFNAMSIZ - 1} bytes")
    if name in (".", "..") or any(c in name for c in "/:% \t\n") or not name.isprintable():
        raise ValueError(f"interface name {name!r} contains characters Linux does not allow")
    return name


class TunInterface:
    """One TUN interface. ``read()`` returns a packet or None when none is waiting."""

    def __init__(self, name: str) -> None:
        validate_interface_name(name)
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise TunError(errno.ENOENT, f"{TUN_PATH} does not exist (no TUN support)") from None
        except PermissionError:
            raise TunError(errno.EACCES, f"cannot open {TUN_PATH}: {EMBEDDED_HINT}") from None
        try:
            ifr = struct.pack(f"{IFNAMSIZ}sH22x", name.encode(), IFF_TUN | IFF_NO_PI)
            result = fcntl.ioctl(fd, TUNSETIFF, ifr)
        except OSError as e:
            os.close(fd)
            if e.errno == errno.EPERM:
                raise TunError(
                    e.errno, f"cannot create interface {name!r}: {EMBEDDED_HINT}"
                ) from None
            if e.errno == errno.EBUSY:
                raise TunError(
                    e.errno, f"interface {name!r} already exists and is in use"
                ) from None
            raise TunError(e.errno, f"cannot create interface {name!r}: {e.strerror}") from None
        self.name = result[:IFNAMSIZ].rstrip(b"\0").decode()
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def read(self, size: int = 65535) -> bytes | None:
        try:
            return os.read(self._fd, size)
        except BlockingIOError:
            return None

    def write(self, packet: bytes) -> None:
        try:
            os.write(self._fd, packet)
        except BlockingIOError:
            pass  # the kernel queue is full: drop, as a NIC would
        except OSError as e:
            # EINVAL / EIO for a packet the kernel refuses: drop it, keep running.
            if e.errno not in (errno.EINVAL, errno.EIO, errno.ENOBUFS):
                raise

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
