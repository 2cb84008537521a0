"""Disk faults: a full disk (a real 256 KiB tmpfs, as root), a read-only file system (a
tmpfs remounted read-only, as root), and injected write, truncate and fsync errors. A
failed append leaves the segment byte for byte as it was and raises StorageError naming
the partition, the file and the error; once the fault clears, appends carry on."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from logbatches import numbered, read_all

from pyralog.log.errors import StorageError
from pyralog.log.partition import PartitionLog
from pyralog.log.storage import Storage
from pyralog.log.topic_config import TopicConfig


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a disk that really fills up. Needs root (mount)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a 256 KiB tmpfs (a real full disk)")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def segment_files(log: PartitionLog) -> dict[str, bytes]:
    """The non-empty .log files (a roll may leave an empty new one: that is no change)."""
    files = {p.name: p.read_bytes() for p in sorted(log.path.glob("*.log"))}
    return {name: data for name, data in files.items() if data}


@pytest.mark.parametrize("segment_bytes", [1 << 20, 8192])  # the second rolls when full
def test_full_disk(small_fs: Path, segment_bytes: int) -> None:
    filler = small_fs / "filler"
    filler.write_bytes(b"x" * 64 * 1024)
    config = TopicConfig(segment_bytes=segment_bytes, index_interval_bytes=512)
    log = PartitionLog(small_fs, "t", 0, config)
    log.open()
    try:
        with pytest.raises(StorageError) as info:
            for _ in range(1000):
                before = (segment_files(log), log.log_end_offset, read_all(log))
                log.append(numbered(log.log_end_offset, 2, size=1000))
        message = str(info.value)
        assert "t-0" in message and str(log.path) in message and "ENOSPC" in message
        files, end, contents = before
        assert segment_files(log) == files
        assert log.log_end_offset == end and read_all(log) == contents
        filler.unlink()  # space comes back
        assert log.append(numbered(end, 2, size=1000)).base_offset == end
        assert [o for o, _ in read_all(log)] == list(range(end + 2))
    finally:
        log.close()
    again = PartitionLog(small_fs, "t", 0, config)
    again.open()
    assert [o for o, _ in read_all(again)] == list(range(end + 2))
    again.close()


def test_read_only_file_system(small_fs: Path) -> None:
    with Storage(small_fs / "data") as storage:
        topic = storage.create_topic("t", TopicConfig(partitions=2))
        topic.partitions[0].append(numbered(0))
    empty = Storage(small_fs / "empty")
    empty.open()  # holds only a read-only lock file, so the remount is allowed
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
        with pytest.raises(StorageError, match="Read-only file system"):
            empty.create_topic("x")
        with pytest.raises(StorageError, match=r"not writable \(on a read-only file system\)"):
            Storage(small_fs / "data").open()
        log = PartitionLog(small_fs / "data" / "topics" / "t", "t", 0, TopicConfig())
        with pytest.raises(StorageError, match=r"t-0: cannot open .*\(EROFS\)"):
            log.open()
    finally:
        empty.close()
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    with Storage(small_fs / "data") as storage:
        part = storage.partition("t", 0)
        assert part is not None and part.log_end_offset == 1


class Faults:
    """os.pwrite that writes `budget` more bytes, then fails like a filling disk: one
    short write, then OSError(code)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.budget: int | None = None
        self.code = errno.ENOSPC
        self.real = os.pwrite
        monkeypatch.setattr(os, "pwrite", self.pwrite)

    def pwrite(self, fd: int, data: bytes | memoryview, position: int) -> int:
        if self.budget is None or self.budget >= len(data):
            if self.budget is not None:
                self.budget -= len(data)
            return self.real(fd, data, position)
        if self.budget > 0:
            written = self.real(fd, memoryview(data)[: self.budget], position)
            self.budget = 0
            return written
        raise OSError(self.code, os.strerror(self.code))


@pytest.fixture
def log(tmp_path: Path) -> Iterator[PartitionLog]:
    log = PartitionLog(tmp_path, "t", 0, TopicConfig(index_interval_bytes=0))
    log.open()
    for i in range(5):
        log.append(numbered(i, size=100))
    yield log
    log.close()


@pytest.mark.parametrize("code", [errno.EIO, errno.EROFS, errno.ENOSPC])
@pytest.mark.parametrize("extra", [None, -60, 0, 4])  # bytes past the batch's own size
def test_failed_write_leaves_the_segment_as_it_was(
    log: PartitionLog, monkeypatch: pytest.MonkeyPatch, code: int, extra: int | None
) -> None:
    faults = Faults(monkeypatch)
    before = segment_files(log)
    batch = numbered(5, size=100)
    # Nothing written; part of the batch; the batch but no index entry; half an entry.
    faults.budget, faults.code = (0 if extra is None else len(batch) + extra), code
    with pytest.raises(StorageError) as info:
        log.append(batch)
    assert errno.errorcode[code] in str(info.value) and "t-0" in str(info.value)
    assert segment_files(log) == before and log.log_end_offset == 5
    assert len(log.segments[-1].offset_index) == 4
    faults.budget = None
    assert log.append(numbered(5, size=100)).base_offset == 5
    assert [o for o, _ in read_all(log)] == list(range(6))


def test_failed_truncate_is_retried_by_the_next_append(
    tmp_path: Path, log: PartitionLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults = Faults(monkeypatch)
    real_ftruncate = os.ftruncate

    def refuse(fd: int, size: int) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "ftruncate", refuse)
    faults.budget = 60
    with pytest.raises(StorageError):
        log.append(numbered(5, size=100))
    # The half batch is still in the file, but nobody reads past the recorded size.
    assert [o for o, _ in read_all(log)] == list(range(5))
    monkeypatch.setattr(os, "ftruncate", real_ftruncate)
    faults.budget = None
    log.append(numbered(5, size=3))  # shorter than what the failed write left
    assert [o for o, _ in read_all(log)] == list(range(6))
    log.close()
    (log.path / ".clean").unlink()  # and a crash now finds no stale bytes either
    again = PartitionLog(tmp_path, "t", 0, TopicConfig())
    assert again.open().truncated_bytes == 0
    assert [o for o, _ in read_all(again)] == list(range(6))
    again.close()


def test_failed_fsync_is_reported(log: PartitionLog, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    log.append(numbered(5))
    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(StorageError, match=r"t-0: cannot fsync .*\(EIO\)"):
        log.flush()
    assert log.segments[-1].dirty  # still owed a flush
    monkeypatch.undo()
    log.flush()
    assert not log.segments[-1].dirty
