"""The UAPI unix socket, ``/var/run/wireguard/NAME.sock``, served from the daemon's loop.

Non-blocking: each connection accumulates bytes until a request is complete (a blank
line ends it), then the loop answers it. A connection may send several requests.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat

from pyralog.tunnel.uapi import MAX_REQUEST_BYTES

SOCKET_DIRECTORY = "/var/run/wireguard"


class SocketInUseError(OSError):
    pass


class UapiListener:
    def __init__(self, name: str, directory: str = SOCKET_DIRECTORY) -> None:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        self.path = os.path.join(directory, f"{name}.sock")
        self._claim_path()
        # Bound under a temporary name and renamed once listening: whoever waits for the
        # path to appear (a node starting its daemon, a script after `pyralog-wg -f`)
        # must not find a socket that refuses connections. Not *.sock: `wg show all`
        # lists those.
        temporary = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old_umask = os.umask(0o077)  # only root (the owner) may configure the interface
            try:
                sock.bind(temporary)
            finally:
                os.umask(old_umask)
            sock.listen(16)
            os.rename(temporary, self.path)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        sock.setblocking(False)
        self.sock = sock
        self._inode = os.stat(self.path).st_ino

    def _claim_path(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketInUseError(f"{self.path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.path)
        except OSError:
            os.unlink(self.path)  # stale socket from a daemon that died
            return
        finally:
            probe.close()
        raise SocketInUseError(f"{self.path} is in use: is the interface already running?")

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> UapiConnection | None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        conn.setblocking(False)
        return UapiConnection(conn)

    def close(self) -> None:
        self.sock.close()
        # Only remove the path if it is still ours (a new daemon may have taken it).
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)


class UapiConnection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""
        self._outgoing = b""
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_requests(self) -> list[str]:
        """Read what is available; return complete requests. Sets ``closed`` on EOF/error."""
        try:
            chunk = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            self.closed = True
            return []
        if not chunk:
            self.closed = True
            return []
        self._buffer += chunk
        if len(self._buffer) > MAX_REQUEST_BYTES:
            self.closed = True
            return []
        requests = []
        while True:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                break
            raw, self._buffer = self._buffer[: end + 2], self._buffer[end + 2 :]
            requests.append(raw.decode("utf-8", "replace"))
        return requests

    def send(self, text: str) -> None:
        self._outgoing += text.encode()
        self.flush()

    def flush(self) -> None:
        while self._outgoing:
            try:
                n = self.sock.send(self._outgoing)
            except (BlockingIOError, InterruptedError):
                # A reader that does not read: give it a moment with a blocking send.
                self.sock.settimeout(2.0)
                try:
                    n = self.sock.send(self._outgoing)
                except OSError:
                    self.closed = True
                    return
                finally:
                    self.sock.setblocking(False)
            except OSError:
                self.closed = True
                return
            self._outgoing = self._outgoing[n:]

    def close(self) -> None:
        self.closed = True
        self.sock.close()
