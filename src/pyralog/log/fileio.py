"""The few file primitives the storage modules share: whole preads and pwrites, and the
directory fsync that makes a created, renamed or removed name durable.

Plain os calls on descriptors (no buffered file objects) so that every byte's position
is the caller's to choose and a failed write can be undone by truncating.
"""

from __future__ import annotations

import os
from pathlib import Path


def pread_all(fd: int, size: int, position: int = 0) -> bytes:
    """Exactly `size` bytes from `position`, fewer only where the file ends."""
    parts = []
    while size > 0:
        chunk = os.pread(fd, size, position)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
        position += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, position: int) -> None:
    """All of `data` at `position`, looping over short writes (a filling disk gives them)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, position)
        view = view[written:]
        position += written


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
