"""A node's data directory: its topics, each a topic.json and one log per partition.

Layout::

    <data_dir>/
      .lock                          flock()ed while a Storage has the directory open
      topics/<topic>/topic.json      {"format": 1, "name", "topic_id", "config": {...}}
      topics/<topic>/<topic>-<p>/    partition p's segments (see partition.py)
      staging/                       a topic being created, renamed into topics/ when whole
      trash/                         a topic being deleted, renamed here first

Creating or deleting a topic is one rename, so after a crash it is whole or absent;
open() empties staging/ and trash/. topic.json is replaced atomically (temporary file,
fsync, rename, fsync of the directory), so an alter survives whole or not at all.
The partition directory repeats the topic's name, as Kafka's does, so a partition copied
elsewhere still says what it is.

Durability of records, by `pyralog.flush` (partition.py has the details): every policy
survives ``kill -9`` of the process with everything acknowledged, since the page cache is
the kernel's. Across a power loss, "always" keeps everything acknowledged, "interval"
may lose up to flush.ms / flush.messages of it, "never" keeps what the OS had written
back. Topic creation, deletion and config changes are fsynced before they return.

Hand-written: the layout is ours (Kafka's, simplified: no log-dir checkpoints, the log
start offset is the first segment's base), and there is nothing to borrow in Python.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pyralog.log.errors import (
    InvalidTopic,
    StorageError,
    TopicExists,
    UnknownTopic,
)
from pyralog.log.fileio import fsync_dir
from pyralog.log.partition import PartitionLog
from pyralog.log.recovery import RecoveryReport
from pyralog.log.topic_config import TopicConfig

FORMAT = 1
TOPIC_FILE = "topic.json"
DEFAULT_CONFIG = TopicConfig()

_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


@dataclass(eq=False)
class Topic:
    name: str
    topic_id: uuid.UUID
    config: TopicConfig
    partitions: list[PartitionLog]
    path: Path


def check_topic_name(name: str) -> None:
    """Kafka's rule for topic names; InvalidTopic saying what is wrong."""
    if name in (".", ".."):
        raise InvalidTopic(f"topic name {name!r} is not allowed")
    if not _TOPIC_NAME.fullmatch(name):
        raise InvalidTopic(
            f"topic name {name!r}: must be 1 to 249 of the characters a-z A-Z 0-9 . _ -"
        )


class Storage:
    """The topics of one data directory. open() before use, close() when done."""

    def __init__(
        self,
        data_dir: Path,
        defaults: TopicConfig = DEFAULT_CONFIG,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.defaults = defaults
        # What opening each partition found, where it was more than a clean load.
        self.recovery: list[RecoveryReport] = []
        self._clock = clock
        self._topics: dict[str, Topic] = {}
        self._lock = threading.Lock()
        self._lock_fd = -1

    @property
    def _topics_dir(self) -> Path:
        return self.data_dir / "topics"

    def __enter__(self) -> Storage:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- opening and closing ------------------------------------------------------------

    def open(self) -> None:
        """Load every topic; StorageError naming the path if the directory is unusable."""
        with self._lock:
            if self._lock_fd >= 0:
                raise StorageError(f"{self.data_dir}: already open")
            self._check_data_dir()
            self._take_lock()
            try:
                for sub in ("topics", "staging", "trash"):
                    (self.data_dir / sub).mkdir(exist_ok=True)
                    if sub != "topics":
                        _empty(self.data_dir / sub)
                for entry in sorted(self._topics_dir.iterdir()):
                    if entry.is_dir():
                        topic = self._load_topic(entry)
                        self._topics[topic.name] = topic
            except OSError as e:
                self._abandon()
                raise StorageError(f"{e.filename or self.data_dir}: {e.strerror}") from e
            except BaseException:
                self._abandon()
                raise
            self.recovery = [
                p.recovery
                for t in self._topics.values()
                for p in t.partitions
                if p.recovery is not None and p.recovery.eventful
            ]

    def _check_data_dir(self) -> None:
        path = self.data_dir
        try:
            path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise StorageError(f"{path}: not a directory") from None
        except OSError as e:
            raise StorageError(f"{path}: cannot create the data directory: {e.strerror}") from e
        if not path.is_dir():
            raise StorageError(f"{path}: not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            read_only = os.statvfs(path).f_flag & os.ST_RDONLY
            why = "on a read-only file system" if read_only else "permission denied"
            raise StorageError(f"{path}: data directory not writable ({why})")

    def _take_lock(self) -> None:
        path = self.data_dir / ".lock"
        try:
            # Read-only: a lock needs no write access, and so does not pin the mount.
            fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError as e:
            raise StorageError(f"{path}: cannot create the lock file: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StorageError(f"{self.data_dir}: in use: another Storage holds its lock") from None
        self._lock_fd = fd

    def _load_topic(self, directory: Path) -> Topic:
        path = directory / TOPIC_FILE
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
            if obj.get("format") != FORMAT:
                raise ValueError(f"unknown format {obj.get('format')!r}")
            name = obj["name"]
            if name != directory.name:
                raise ValueError(f"names topic {name!r}, not {directory.name!r}")
            topic_id = uuid.UUID(obj["topic_id"])
            config = TopicConfig.from_json(obj["config"])
        except FileNotFoundError:
            raise StorageError(f"{path}: missing, so {directory} is not a topic") from None
        except OSError as e:
            raise StorageError(f"{path}: cannot read: {e.strerror}") from e
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise StorageError(f"{path}: not a valid topic file: {e}") from e
        partitions: list[PartitionLog] = []
        try:
            for i in range(config.partitions):
                if not (directory / f"{name}-{i}").is_dir():
                    raise StorageError(
                        f"{directory / f'{name}-{i}'}: missing; {path} has "
                        f"{config.partitions} partitions"
                    )
                partitions.append(PartitionLog(directory, name, i, config, self._clock))
                partitions[-1].open()
        except BaseException:
            for p in partitions:
                p.close()
            raise
        return Topic(name, topic_id, config, partitions, directory)

    def close(self) -> None:
        """Close every partition cleanly (see PartitionLog.close) and unlock."""
        with self._lock:
            errors = []
            for topic in self._topics.values():
                for p in topic.partitions:
                    try:
                        p.close()
                    except StorageError as e:
                        errors.append(str(e))
            self._topics.clear()
            self._unlock()
            if errors:
                raise StorageError("; ".join(errors))

    def _abandon(self) -> None:
        for topic in self._topics.values():
            for p in topic.partitions:
                p.close()
        self._topics.clear()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _check_open(self) -> None:
        if self._lock_fd < 0:
            raise StorageError(f"{self.data_dir}: storage is not open")

    # -- topics -------------------------------------------------------------------------

    def topic(self, name: str) -> Topic | None:
        return self._topics.get(name)

    def topics(self) -> list[Topic]:
        with self._lock:
            return sorted(self._topics.values(), key=lambda t: t.name)

    def partition(self, topic: str, index: int) -> PartitionLog | None:
        t = self._topics.get(topic)
        if t is None or not 0 <= index < len(t.partitions):
            return None
        return t.partitions[index]

    def create_topic(
        self, name: str, config: TopicConfig | None = None, *, topic_id: uuid.UUID | None = None
    ) -> Topic:
        """A new topic with `config` (default: this storage's defaults), durable on return.
        A replicated topic passes the cluster's `topic_id`, the same on every replica."""
        check_topic_name(name)
        config = self.defaults if config is None else config
        with self._lock:
            self._check_open()
            if name in self._topics:
                raise TopicExists(f"topic {name!r} already exists")
            topic_id = uuid.uuid4() if topic_id is None else topic_id
            final = self._topics_dir / name
            stage = self.data_dir / "staging" / topic_id.hex
            try:
                # Built aside and renamed in whole, so a crash never leaves half a topic.
                stage.mkdir()
                _write_topic_file(stage, name, topic_id, config)
                for i in range(config.partitions):
                    (stage / f"{name}-{i}").mkdir()
                fsync_dir(stage)
                os.rename(stage, final)
                fsync_dir(self._topics_dir)
            except OSError as e:
                shutil.rmtree(stage, ignore_errors=True)
                raise StorageError(
                    f"{e.filename or final}: cannot create topic {name!r}: {e.strerror}"
                ) from e
            partitions: list[PartitionLog] = []
            try:
                for i in range(config.partitions):
                    partitions.append(PartitionLog(final, name, i, config, self._clock))
                    partitions[-1].open()
            except StorageError:
                for p in partitions:
                    p.delete()
                with contextlib.suppress(StorageError):
                    self._discard(final, topic_id)  # the first error is the one to report
                raise
            topic = Topic(name, topic_id, config, partitions, final)
            self._topics[name] = topic
            return topic

    def delete_topic(self, name: str) -> None:
        """Remove a topic and all its data; it is gone (durably) on return."""
        with self._lock:
            self._check_open()
            topic = self._topics.get(name)
            if topic is None:
                raise UnknownTopic(f"topic {name!r} does not exist")
            self._discard(topic.path, topic.topic_id)
            del self._topics[name]
            for p in topic.partitions:
                p.delete()  # closes its files; the directory is in trash/ already

    def _discard(self, path: Path, topic_id: uuid.UUID) -> None:
        trash = self.data_dir / "trash" / topic_id.hex
        try:
            os.rename(path, trash)
            fsync_dir(self._topics_dir)
        except OSError as e:
            raise StorageError(f"{path}: cannot delete the topic: {e.strerror}") from e
        # What is left if this fails goes at the next open().
        shutil.rmtree(trash, ignore_errors=True)

    def alter_config(
        self, name: str, configs: Mapping[str, str | None], *, validate_only: bool = False
    ) -> TopicConfig:
        """Apply Kafka-named changes to a topic (incrementally: other keys keep their
        values; a None value resets a key to this storage's default) and persist them."""
        with self._lock:
            self._check_open()
            topic = self._topics.get(name)
            if topic is None:
                raise UnknownTopic(f"topic {name!r} does not exist")
            defaults = self.defaults.to_kafka()
            resolved = {k: defaults.get(k) if v is None else v for k, v in configs.items()}
            config = TopicConfig.from_kafka(resolved, base=topic.config)
            if validate_only:
                return config
            try:
                _write_topic_file(topic.path, name, topic.topic_id, config)
            except OSError as e:
                raise StorageError(f"{topic.path / TOPIC_FILE}: cannot write: {e.strerror}") from e
            topic.config = config
            for p in topic.partitions:
                p.reconfigure(config)
            return config

    # -- periodic work ------------------------------------------------------------------

    def _all_partitions(self) -> list[PartitionLog]:
        with self._lock:
            return [p for t in self._topics.values() for p in t.partitions]

    def maybe_flush(self, now_ms: int) -> int:
        """The "interval" flush policy's clock for every partition; how many fsynced."""
        return self._each(lambda p: int(p.maybe_flush(now_ms)))

    def enforce_retention(self, now_ms: int) -> int:
        """Retention for every partition; how many segments were deleted."""
        return self._each(lambda p: p.enforce_retention(now_ms))

    def _each(self, work: Callable[[PartitionLog], int]) -> int:
        # One partition's failure (its disk is full) must not stop the others'.
        total, errors = 0, []
        for p in self._all_partitions():
            try:
                total += work(p)
            except StorageError as e:
                errors.append(str(e))
        if errors:
            raise StorageError("; ".join(errors))
        return total


def _write_topic_file(directory: Path, name: str, topic_id: uuid.UUID, config: TopicConfig) -> None:
    obj = {"format": FORMAT, "name": name, "topic_id": str(topic_id), "config": config.to_json()}
    data = (json.dumps(obj, indent=2) + "\n").encode()
    path = directory / TOPIC_FILE
    tmp = directory / f".{TOPIC_FILE}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(directory)


def _empty(directory: Path) -> None:
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
